//! Per-client state that outlives a connection, and the registry of all sessions.
//!
//! A [`Session`] owns its subscriptions (as the client asked for them), its queue of
//! messages waiting to be sent, the inflight window of QoS 1/2 messages sent but not yet
//! acknowledged, the outgoing packet ids, and the inbound QoS 2 packet ids awaiting
//! PUBREL. The connection that currently owns the session drains the queue through
//! [`Session::take_deliveries`]; the router fills it through [`Session::enqueue`].
//!
//! Memory: what a session holds (queue and inflight) is charged to the broker-wide
//! [`QueueBudget`]; every method that changes it settles the difference before it returns
//! (and `Drop` releases the rest), so the budget's total is always the sum of the
//! sessions' shares.
//!
//! Locking: the state sits behind a synchronous `parking_lot::Mutex` because every
//! critical section is short and none spans an `.await`. Lock order is session → router:
//! the router never takes a session lock while holding its own.

pub mod persist;
mod queue;

pub use queue::Priorities;
use queue::SessionQueue;

use crate::dead_letter::DeadLetterReason;
use crate::limits::QueueBudget;
use crate::message::{now_ms, Message};
use crate::protocol::{QoS, SubscriptionOptions};
use dashmap::DashMap;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};

/// What one queued or inflight entry costs beyond its topic and payload: the delivery
/// record in the queue and the message record it points to. Charged to the broker-wide
/// [`QueueBudget`] so it tracks memory even for the small messages sensors send, where
/// bookkeeping outweighs payload.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Delivery>() + std::mem::size_of::<Message>();

/// Session Expiry Interval value meaning "never expires" (MQTT 5 §3.1.2.11.2).
pub const EXPIRY_NEVER: u32 = u32::MAX;

/// A message waiting for, or in, delivery to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The lower of the published QoS and the subscription's.
    pub qos: QoS,
    /// The retain flag to send (retain-as-published, or a retained message on subscribe).
    pub retain: bool,
    /// v5 subscription identifiers of every matching subscription.
    pub subscription_ids: Vec<u32>,
    /// Times this message was sent to this subscriber without being acknowledged.
    pub attempts: u32,
    /// The store holds an Enqueue record for it: its completion must append an Ack.
    pub durable: bool,
}

/// Where an outbound QoS 1/2 message is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct Inflight {
    packet_id: u16,
    delivery: Delivery,
    stage: Stage,
    /// A copy from the retained store (see [`RetainedFeed`]): never dead-lettered.
    retained_copy: bool,
}

/// What the writer must send next.
#[derive(Debug)]
pub enum Outgoing {
    Publish {
        delivery: Delivery,
        packet_id: u16,
        dup: bool,
    },
    PubRel {
        packet_id: u16,
    },
}

/// What happened to a message offered to a session.
#[derive(Debug, Default)]
pub struct EnqueueOutcome {
    pub queued: bool,
    /// Deliveries pushed out to respect the queue limits (oldest first), or the offered
    /// one itself when it could not be queued. They are the caller's to dead-letter.
    pub evicted: Vec<Delivery>,
}

/// Retained messages a SUBSCRIBE matched, waiting to be sent [MQTT-3.3.1-9]. They reach
/// the client as its inflight window allows, never through the queue: they are copies of
/// what the retained store keeps, so they are neither charged to the queue limits nor
/// ever dead-lettered (a wildcard matching more retained messages than the queue holds
/// must not turn them into `queue_full` dead letters). Each waiting message costs one
/// pointer.
#[derive(Debug)]
struct RetainedFeed {
    messages: VecDeque<Arc<Message>>,
    /// The subscription's maximum QoS.
    qos: QoS,
    subscription_ids: Vec<u32>,
}

/// A subscription as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// The connection currently attached to a session.
#[derive(Debug)]
struct Owner {
    conn_id: u64,
    /// Fires once to make the owning connection leave (takeover, an operator's kick);
    /// carries the v5 DISCONNECT reason.
    kick: Option<oneshot::Sender<u8>>,
    /// Who is connected, for the admin API; set right after the attach.
    client: Option<Arc<ClientInfo>>,
}

/// What the admin API reports about the connection attached to a session.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub username: Option<String>,
    pub peer: std::net::SocketAddr,
    /// The listener's scheme: "mqtt" or "mqtts".
    pub listener: &'static str,
    /// "3.1", "3.1.1" or "5.0".
    pub protocol: &'static str,
    pub connected_at_ms: u64,
    pub keep_alive_secs: u16,
}

/// A session as the admin API reports it, read under one lock.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub client_id: Arc<str>,
    pub client: Option<Arc<ClientInfo>>,
    pub persistent: bool,
    pub expiry_secs: u32,
    pub queued: usize,
    pub queued_bytes: usize,
    pub inflight: usize,
    /// Arrival time of the oldest message still queued or inflight.
    pub oldest_queued_ms: Option<u64>,
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
}

/// Delivery limits of the connection currently attached.
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    /// Inflight window: min(broker max_inflight, client Receive Maximum).
    pub window: u16,
    /// The client's v5 Maximum Packet Size, if it set one.
    pub max_packet_size: Option<u32>,
}

#[derive(Debug)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub queue_qos0_offline: bool,
    /// When full, refuse the newest message instead of evicting the oldest.
    pub drop_newest: bool,
    /// Sends without a PUBACK after which a message is given up (0: never).
    pub max_delivery_attempts: u32,
    /// The broker-wide budget this session's queue and inflight bytes are charged to.
    pub budget: Arc<QueueBudget>,
    /// The operator's `[[priority]]` levels.
    pub priorities: Arc<Priorities>,
}

#[derive(Debug)]
struct SessionState {
    expiry_secs: u32,
    owner: Option<Owner>,
    /// Set when the session is discarded (clean start, expiry); nothing is queued after.
    ended: bool,
    subscriptions: HashMap<String, SubscriptionRecord>,
    queue: SessionQueue,
    queued_bytes: usize,
    /// Retained messages matched by SUBSCRIBEs, sent before the queue.
    retained: VecDeque<RetainedFeed>,
    inflight: VecDeque<Inflight>,
    /// Message cost (topic + payload) of the inflight entries.
    inflight_bytes: usize,
    /// What this session has charged to the queue budget, as of the last settle.
    charged: usize,
    /// Inflight entries to send again (with DUP) before anything new, after a reconnect.
    resend: bool,
    next_packet_id: u16,
    awaiting_rel: HashSet<u16>,
    link: LinkLimits,
    /// Bumped on every attach/detach so delayed work (expiry, delayed wills) can tell
    /// whether the session was resumed meanwhile.
    generation: u64,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// Wakes the owning connection's writer when there is something to send.
    notify: Notify,
    limits: QueueLimits,
    /// The store holds a Session record for it (so ending it must write SessionRemove).
    persisted: AtomicBool,
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for a connection, used to tell session owners apart.
pub fn next_connection_id() -> u64 {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_secs: u32, limits: QueueLimits) -> Session {
        Session {
            client_id,
            state: Mutex::new(SessionState {
                expiry_secs,
                owner: None,
                ended: false,
                subscriptions: HashMap::new(),
                queue: SessionQueue::default(),
                queued_bytes: 0,
                retained: VecDeque::new(),
                inflight: VecDeque::new(),
                inflight_bytes: 0,
                charged: 0,
                resend: false,
                next_packet_id: 1,
                awaiting_rel: HashSet::new(),
                link: LinkLimits {
                    window: 1,
                    max_packet_size: None,
                },
                generation: 0,
            }),
            notify: Notify::new(),
            limits,
            persisted: AtomicBool::new(false),
        }
    }

    /// Whether the session outlives its connection (and so keeps its queue on disk).
    pub fn is_persistent(&self) -> bool {
        let st = self.state.lock();
        st.expiry_secs > 0 && !st.ended
    }

    pub fn is_persisted(&self) -> bool {
        self.persisted.load(Ordering::Acquire)
    }

    pub fn set_persisted(&self, persisted: bool) {
        self.persisted.store(persisted, Ordering::Release);
    }

    /// Its state as the store keeps it.
    pub fn persisted_state(&self) -> bytes::Bytes {
        let st = self.state.lock();
        let mut subs: Vec<(String, SubscriptionRecord)> = st
            .subscriptions
            .iter()
            .map(|(f, r)| (f.clone(), r.clone()))
            .collect();
        subs.sort_by(|a, b| a.0.cmp(&b.0));
        persist::encode_state(st.expiry_secs, &subs)
    }

    /// Makes `conn_id` the owner. Returns the previous owner's kick (the caller fires it)
    /// and marks inflight messages for redelivery with DUP [MQTT-4.4.0-1].
    pub fn attach(
        &self,
        conn_id: u64,
        kick: oneshot::Sender<u8>,
        link: LinkLimits,
        expiry_secs: u32,
    ) -> Option<oneshot::Sender<u8>> {
        let mut st = self.state.lock();
        let previous = st.owner.take().and_then(|o| o.kick);
        st.owner = Some(Owner {
            conn_id,
            kick: Some(kick),
            client: None,
        });
        st.link = link;
        st.expiry_secs = expiry_secs;
        st.resend = !st.inflight.is_empty();
        st.generation += 1;
        drop(st);
        self.notify.notify_one();
        previous
    }

    /// Records who the owning connection `conn_id` is (no-op if it no longer owns it).
    pub fn set_client(&self, conn_id: u64, client: ClientInfo) {
        let mut st = self.state.lock();
        if let Some(owner) = st.owner.as_mut().filter(|o| o.conn_id == conn_id) {
            owner.client = Some(Arc::new(client));
        }
    }

    /// Takes the kick of the current owner (for a clean-start replacement of the session).
    pub fn take_owner_kick(&self) -> Option<oneshot::Sender<u8>> {
        self.state.lock().owner.as_mut().and_then(|o| o.kick.take())
    }

    /// Detaches `conn_id` if it still owns the session. Returns the generation to pass to
    /// delayed work, or None when another connection has taken over.
    pub fn detach(&self, conn_id: u64, expiry_override: Option<u32>) -> Option<u64> {
        let mut st = self.state.lock();
        if st.owner.as_ref().map(|o| o.conn_id) != Some(conn_id) {
            return None;
        }
        st.owner = None;
        if let Some(expiry) = expiry_override {
            st.expiry_secs = expiry;
        }
        st.generation += 1;
        // QoS 0 messages are not kept for an offline session unless configured.
        if !self.limits.queue_qos0_offline {
            let before = st.queue.len();
            st.queue.retain(|d| d.qos != QoS::AtMostOnce);
            if st.queue.len() != before {
                st.queued_bytes = st.queue.iter().map(|d| d.message.cost()).sum();
            }
            st.retained.retain(|f| f.qos != QoS::AtMostOnce);
        }
        self.settle(&mut st);
        Some(st.generation)
    }

    pub fn is_owned_by(&self, conn_id: u64) -> bool {
        self.state.lock().owner.as_ref().map(|o| o.conn_id) == Some(conn_id)
    }

    pub fn is_online(&self) -> bool {
        self.state.lock().owner.is_some()
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    pub fn expiry_secs(&self) -> u32 {
        self.state.lock().expiry_secs
    }

    pub fn set_expiry_secs(&self, secs: u32) {
        self.state.lock().expiry_secs = secs;
    }

    /// Marks the session discarded; returns what was still queued or inflight.
    pub fn end(&self) -> Vec<Delivery> {
        let mut st = self.state.lock();
        st.ended = true;
        st.queued_bytes = 0;
        st.inflight_bytes = 0;
        st.retained.clear();
        let mut left: Vec<Delivery> = st
            .inflight
            .drain(..)
            .filter(|i| !i.retained_copy)
            .map(|i| i.delivery)
            .collect();
        left.extend(st.queue.drain());
        self.settle(&mut st);
        left
    }

    pub fn is_ended(&self) -> bool {
        self.state.lock().ended
    }

    pub fn subscriptions(&self) -> Vec<(String, SubscriptionRecord)> {
        self.state
            .lock()
            .subscriptions
            .iter()
            .map(|(f, r)| (f.clone(), r.clone()))
            .collect()
    }

    pub fn has_subscription(&self, filter: &str) -> bool {
        self.state.lock().subscriptions.contains_key(filter)
    }

    pub fn subscription_count(&self) -> usize {
        self.state.lock().subscriptions.len()
    }

    /// Records a subscription; returns whether it already existed (retain handling 1).
    pub fn add_subscription(&self, filter: &str, record: SubscriptionRecord) -> bool {
        self.state
            .lock()
            .subscriptions
            .insert(filter.to_owned(), record)
            .is_some()
    }

    pub fn remove_subscription(&self, filter: &str) -> bool {
        self.state.lock().subscriptions.remove(filter).is_some()
    }

    /// Offers a message. An online session always queues (the writer drains it); an
    /// offline one keeps QoS ≥ 1 (and QoS 0 if configured). Over the limits, the oldest
    /// queued messages make room and are handed back for dead-lettering.
    pub fn enqueue(&self, delivery: Delivery) -> EnqueueOutcome {
        let mut out = EnqueueOutcome::default();
        let mut st = self.state.lock();
        if st.ended {
            out.evicted.push(delivery);
            return out;
        }
        if st.owner.is_none() && delivery.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline
        {
            return out;
        }
        let cost = delivery.message.cost();
        if cost > self.limits.max_bytes {
            out.evicted.push(delivery);
            return out;
        }
        let full = |st: &SessionState| {
            st.queue.len() >= self.limits.max_messages
                || st.queued_bytes + cost > self.limits.max_bytes
        };
        if self.limits.drop_newest && full(&st) {
            out.evicted.push(delivery);
            return out;
        }
        while !st.queue.is_empty() && full(&st) {
            if let Some(old) = st.queue.pop_lowest() {
                st.queued_bytes -= old.message.cost();
                out.evicted.push(old);
            }
        }
        st.queued_bytes += cost;
        let level = self.limits.priorities.level(&delivery.message.topic);
        st.queue.push_back(delivery, level);
        out.queued = true;
        self.settle(&mut st);
        let online = st.owner.is_some();
        drop(st);
        if online {
            self.notify.notify_one();
        }
        out
    }

    /// Adds the retained messages a SUBSCRIBE matched, to be sent as the window allows
    /// (see [`RetainedFeed`]).
    pub fn offer_retained(
        &self,
        messages: Vec<Arc<Message>>,
        qos: QoS,
        subscription_ids: Vec<u32>,
    ) {
        if messages.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        if st.ended {
            return;
        }
        st.retained.push_back(RetainedFeed {
            messages: messages.into(),
            qos,
            subscription_ids,
        });
        let online = st.owner.is_some();
        drop(st);
        if online {
            self.notify.notify_one();
        }
    }

    /// Puts recovered or handed-over deliveries at the back of the queue without limits.
    pub fn restore(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        let mut st = self.state.lock();
        for d in deliveries {
            st.queued_bytes += d.message.cost();
            let level = self.limits.priorities.level(&d.message.topic);
            st.queue.push_back(d, level);
        }
        self.settle(&mut st);
    }

    /// Waits until the writer may have something to send.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Moves what may be sent now into `out`: first inflight messages to resend after a
    /// reconnect, then queued messages as the inflight window allows (QoS 0 needs no
    /// slot). Expired messages and ones larger than the client accepts are returned in
    /// `dropped` with why. Does nothing unless `conn_id` owns the session.
    pub fn take_deliveries(
        &self,
        conn_id: u64,
        max: usize,
        out: &mut Vec<Outgoing>,
        dropped: &mut Vec<(Delivery, Option<DeadLetterReason>)>,
        encoded_len: impl Fn(&Delivery) -> usize,
        may_read: impl Fn(&Delivery) -> bool,
    ) {
        let mut st = self.state.lock();
        if st.owner.as_ref().map(|o| o.conn_id) != Some(conn_id) {
            return;
        }
        let now = now_ms();
        let max_attempts = self.limits.max_delivery_attempts;
        let exhausted = |d: &Delivery| max_attempts > 0 && d.attempts >= max_attempts;
        if st.resend {
            st.resend = false;
            // A message sent max_delivery_attempts times without a PUBACK is a poison
            // message: it leaves the window instead of being sent again.
            let mut i = 0;
            while i < st.inflight.len() {
                let entry = &st.inflight[i];
                if entry.stage == Stage::Published && exhausted(&entry.delivery) {
                    if let Some(e) = st.inflight.remove(i) {
                        st.inflight_bytes -= e.delivery.message.cost();
                        dropped.push((e.delivery, Some(DeadLetterReason::MaxAttempts)));
                    }
                    continue;
                }
                i += 1;
            }
            for entry in st.inflight.iter_mut() {
                match entry.stage {
                    Stage::Published => {
                        entry.delivery.attempts += 1;
                        out.push(Outgoing::Publish {
                            delivery: entry.delivery.clone(),
                            packet_id: entry.packet_id,
                            dup: true,
                        });
                    }
                    Stage::Released => out.push(Outgoing::PubRel {
                        packet_id: entry.packet_id,
                    }),
                }
            }
        }
        let window = usize::from(st.link.window);
        let max_packet = st.link.max_packet_size;
        let too_large =
            |d: &Delivery| max_packet.is_some_and(|limit| encoded_len(d) > limit as usize);
        while out.len() < max {
            let st = &mut *st;
            let Some(feed) = st.retained.front_mut() else {
                break;
            };
            let Some(message) = feed.messages.front() else {
                st.retained.pop_front();
                continue;
            };
            let qos = message.qos.min(feed.qos);
            if qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let Some(message) = feed.messages.pop_front() else {
                continue;
            };
            let delivery = Delivery {
                message,
                qos,
                retain: true,
                subscription_ids: feed.subscription_ids.clone(),
                attempts: 0,
                durable: false,
            };
            // A retained copy the client cannot have is skipped, not dead-lettered: the
            // retained store still holds the message [MQTT-3.1.2-25].
            if delivery.message.is_expired(now) || !may_read(&delivery) || too_large(&delivery) {
                continue;
            }
            send_now(st, delivery, true, out);
        }
        // Empty feeds were popped above: one left means the window filled while retained
        // copies wait, and they go first.
        let retained_waiting = !st.retained.is_empty();
        while out.len() < max && !retained_waiting {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= window {
                break;
            }
            let Some(delivery) = st.queue.pop_front() else {
                break;
            };
            st.queued_bytes -= delivery.message.cost();
            if delivery.message.is_expired(now) {
                dropped.push((delivery, Some(DeadLetterReason::Expired)));
                continue;
            }
            if delivery.qos != QoS::AtMostOnce && exhausted(&delivery) {
                dropped.push((delivery, Some(DeadLetterReason::MaxAttempts)));
                continue;
            }
            // The ACL may have changed since the message was queued: it is checked
            // again at delivery. A denied message is not this subscriber's to have.
            if !may_read(&delivery) {
                dropped.push((delivery, None));
                continue;
            }
            if too_large(&delivery) {
                dropped.push((delivery, Some(DeadLetterReason::TooLarge)));
                continue;
            }
            send_now(&mut st, delivery, false, out);
        }
        self.settle(&mut st);
    }

    /// The QoS of the inflight message with `packet_id`, if there is one: an ack of the
    /// other flow's kind is a protocol error (MQTT 5 §4.3).
    pub fn inflight_qos(&self, packet_id: u16) -> Option<QoS> {
        let st = self.state.lock();
        st.inflight
            .iter()
            .find(|e| e.packet_id == packet_id)
            .map(|e| e.delivery.qos)
    }

    /// The client's v5 Maximum Packet Size, as the attached connection announced it.
    pub fn max_packet_size(&self) -> Option<u32> {
        self.state.lock().link.max_packet_size
    }

    /// PUBACK from the subscriber: the QoS 1 message is done.
    pub fn puback(&self, packet_id: u16) -> Option<Delivery> {
        self.complete(packet_id, |s| s == Stage::Published, QoS::AtLeastOnce)
    }

    /// PUBREC from the subscriber: the QoS 2 message moves to awaiting PUBCOMP. Returns
    /// whether the packet id was known (the caller answers PUBREL either way, with 0x92
    /// for an unknown id in v5).
    pub fn pubrec(&self, packet_id: u16) -> bool {
        let mut st = self.state.lock();
        match st
            .inflight
            .iter_mut()
            .find(|e| e.packet_id == packet_id && e.delivery.qos == QoS::ExactlyOnce)
        {
            Some(entry) => {
                entry.stage = Stage::Released;
                true
            }
            None => false,
        }
    }

    /// The message id of the durable QoS 2 delivery `packet_id` once its PUBREC came
    /// back, for the store's [`crate::store::Record::Outbound`] record.
    pub fn released_durable(&self, packet_id: u16) -> Option<u64> {
        self.state
            .lock()
            .inflight
            .iter()
            .find(|e| e.packet_id == packet_id && e.stage == Stage::Released)
            .filter(|e| e.delivery.durable)
            .map(|e| e.delivery.message.id)
    }

    /// Puts a recovered QoS 2 delivery back in flight under the packet id it was sent
    /// with, at the stage the store recorded: after a restart the subscriber gets the
    /// same PUBLISH again with DUP, or the PUBREL, never a new PUBLISH [MQTT-4.4.0-1].
    pub fn restore_inflight(&self, delivery: Delivery, packet_id: u16, released: bool) {
        let mut st = self.state.lock();
        st.inflight_bytes += delivery.message.cost();
        st.inflight.push_back(Inflight {
            packet_id,
            delivery,
            stage: if released {
                Stage::Released
            } else {
                Stage::Published
            },
            retained_copy: false,
        });
        self.settle(&mut st);
    }

    /// PUBCOMP from the subscriber: the QoS 2 message is done.
    pub fn pubcomp(&self, packet_id: u16) -> Option<Delivery> {
        self.complete(packet_id, |s| s == Stage::Released, QoS::ExactlyOnce)
    }

    fn complete(
        &self,
        packet_id: u16,
        stage_ok: impl Fn(Stage) -> bool,
        qos: QoS,
    ) -> Option<Delivery> {
        let mut st = self.state.lock();
        let pos = st
            .inflight
            .iter()
            .position(|e| e.packet_id == packet_id && e.delivery.qos == qos && stage_ok(e.stage))?;
        let entry = st.inflight.remove(pos)?;
        st.inflight_bytes -= entry.delivery.message.cost();
        self.settle(&mut st);
        drop(st);
        // A window slot opened.
        self.notify.notify_one();
        Some(entry.delivery)
    }

    /// Inbound QoS 2: remembers `packet_id` until PUBREL. Returns false when it was
    /// already there (a resent PUBLISH: do not route it again) [MQTT-4.3.3-10].
    pub fn begin_inbound_qos2(&self, packet_id: u16) -> bool {
        self.state.lock().awaiting_rel.insert(packet_id)
    }

    pub fn is_awaiting_release(&self, packet_id: u16) -> bool {
        self.state.lock().awaiting_rel.contains(&packet_id)
    }

    pub fn inbound_qos2_count(&self) -> usize {
        self.state.lock().awaiting_rel.len()
    }

    /// Inbound PUBREL: returns whether the packet id was awaiting release.
    pub fn release_inbound_qos2(&self, packet_id: u16) -> bool {
        self.state.lock().awaiting_rel.remove(&packet_id)
    }

    /// Attempt counts of durable inflight messages, to persist when the owner leaves so
    /// a poison message is recognised across reconnects and restarts.
    pub fn inflight_attempts(&self) -> Vec<(u64, u32)> {
        self.state
            .lock()
            .inflight
            .iter()
            .filter(|e| e.delivery.durable && e.stage == Stage::Published)
            .map(|e| (e.delivery.message.id, e.delivery.attempts))
            .collect()
    }

    /// Queued (not yet sent) and inflight message counts.
    pub fn depth(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.queue.len(), st.inflight.len())
    }

    /// What the admin API reports, under one lock.
    pub fn view(&self) -> SessionView {
        let st = self.state.lock();
        let oldest = st
            .inflight
            .iter()
            .filter(|i| !i.retained_copy)
            .map(|i| i.delivery.message.received_at_ms)
            .chain(st.queue.front().map(|d| d.message.received_at_ms))
            .min();
        let mut subscriptions: Vec<(String, SubscriptionRecord)> = st
            .subscriptions
            .iter()
            .map(|(f, r)| (f.clone(), r.clone()))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        SessionView {
            client_id: Arc::clone(&self.client_id),
            client: st.owner.as_ref().and_then(|o| o.client.clone()),
            persistent: st.expiry_secs > 0 && !st.ended,
            expiry_secs: st.expiry_secs,
            queued: st.queue.len(),
            queued_bytes: st.queued_bytes,
            inflight: st.inflight.len(),
            oldest_queued_ms: oldest,
            subscriptions,
        }
    }

    /// Clones of the queued (not yet sent) deliveries, oldest first.
    pub fn queued(&self) -> Vec<Delivery> {
        self.state.lock().queue.iter().cloned().collect()
    }

    /// Takes the queued deliveries whose message id `select` picks out of the queue
    /// (oldest first). The caller owns them: it settles each in the store, or hands it
    /// back with [`Session::restore_front`].
    pub fn take_queued(&self, mut select: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let mut st = self.state.lock();
        let mut taken = Vec::new();
        let mut kept = SessionQueue::default();
        for d in st.queue.drain() {
            if select(&d) {
                taken.push(d);
            } else {
                let level = self.limits.priorities.level(&d.message.topic);
                kept.push_back(d, level);
            }
        }
        st.queue = kept;
        st.queued_bytes = st.queue.iter().map(|d| d.message.cost()).sum();
        self.settle(&mut st);
        taken
    }

    /// Puts deliveries taken with [`Session::take_queued`] back in front of the queue.
    pub fn restore_front(&self, deliveries: Vec<Delivery>) {
        let mut st = self.state.lock();
        for d in deliveries.into_iter().rev() {
            st.queued_bytes += d.message.cost();
            let level = self.limits.priorities.level(&d.message.topic);
            st.queue.push_front(d, level);
        }
        self.settle(&mut st);
        let online = st.owner.is_some();
        drop(st);
        if online {
            self.notify.notify_one();
        }
    }

    /// What the metrics sampler reads, under one lock: online, queued messages, queued
    /// bytes, inflight messages.
    pub fn gauges(&self) -> SessionGauges {
        let st = self.state.lock();
        let oldest_ms = st
            .queue
            .oldest_received_ms()
            .into_iter()
            .chain(
                st.inflight
                    .iter()
                    .map(|e| e.delivery.message.received_at_ms),
            )
            .min();
        SessionGauges {
            online: st.owner.is_some(),
            queued: st.queue.len(),
            queued_bytes: st.queued_bytes,
            inflight: st.inflight.len(),
            oldest_ms,
        }
    }
}

impl Session {
    /// Charges (or releases) the queue budget for what the session holds now: the cost
    /// of its queued and inflight messages plus [`ENTRY_OVERHEAD`] per entry. Called
    /// under the state lock by every method that changes them.
    fn settle(&self, st: &mut SessionState) {
        let held = st.queued_bytes
            + st.inflight_bytes
            + (st.queue.len() + st.inflight.len()) * ENTRY_OVERHEAD;
        if held != st.charged {
            self.limits.budget.adjust(st.charged, held);
            st.charged = held;
        }
    }
}

impl Drop for Session {
    /// A session dropped without `end` (replaced, or the broker stopping) still gives its
    /// share of the queue budget back.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        self.limits.budget.adjust(st.charged, 0);
        st.charged = 0;
    }
}

/// Sends `delivery` now: QoS 0 as it is, QoS 1/2 into the inflight window under a free
/// packet id, counted as one more attempt.
fn send_now(
    st: &mut SessionState,
    mut delivery: Delivery,
    retained_copy: bool,
    out: &mut Vec<Outgoing>,
) {
    if delivery.qos == QoS::AtMostOnce {
        out.push(Outgoing::Publish {
            delivery,
            packet_id: 0,
            dup: false,
        });
        return;
    }
    let packet_id = next_free_packet_id(st);
    delivery.attempts += 1;
    st.inflight_bytes += delivery.message.cost();
    st.inflight.push_back(Inflight {
        packet_id,
        delivery: delivery.clone(),
        stage: Stage::Published,
        retained_copy,
    });
    out.push(Outgoing::Publish {
        delivery,
        packet_id,
        dup: false,
    });
}

fn next_free_packet_id(st: &mut SessionState) -> u16 {
    // The window is at most 65535 wide, so a free id always exists; the loop is bounded
    // by the inflight count.
    loop {
        let id = st.next_packet_id;
        st.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
        if !st.inflight.iter().any(|e| e.packet_id == id) {
            return id;
        }
    }
}

/// A session's state as the metrics sampler sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionGauges {
    pub online: bool,
    pub queued: usize,
    pub queued_bytes: usize,
    pub inflight: usize,
    /// When the oldest message still queued or unacknowledged was received (Unix ms).
    pub oldest_ms: Option<u64>,
}

/// Every session, online or offline, by client id.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    sessions: DashMap<Arc<str>, Arc<Session>>,
}

impl SessionRegistry {
    pub fn get(&self, client_id: &str) -> Option<Arc<Session>> {
        self.sessions.get(client_id).map(|s| Arc::clone(s.value()))
    }

    /// Installs `session` under its client id, returning the one it replaced.
    pub fn insert(&self, session: Arc<Session>) -> Option<Arc<Session>> {
        self.sessions
            .insert(Arc::clone(&session.client_id), session)
    }

    /// Removes the session only if it is still `session` (not a newer replacement).
    pub fn remove_if_same(&self, session: &Arc<Session>) -> bool {
        self.sessions
            .remove_if(&*session.client_id, |_, s| Arc::ptr_eq(s, session))
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_overhead_is_what_the_config_file_says() {
        // config/sluice.toml and the README say "~0.3 KiB of bookkeeping per entry".
        assert!((200..=400).contains(&ENTRY_OVERHEAD), "{ENTRY_OVERHEAD}");
    }
    use crate::protocol::MessageProperties;
    use bytes::Bytes;

    fn msg(id: u64, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            id,
            topic: "t".into(),
            payload: Bytes::from_static(b"0123456789"),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            publisher: Arc::from("p"),
            received_at_ms: 0,
            expires_at_ms: None,
        })
    }

    pub(super) fn delivery(id: u64, qos: QoS) -> Delivery {
        Delivery {
            message: msg(id, qos),
            qos,
            retain: false,
            subscription_ids: vec![],
            attempts: 0,
            durable: false,
        }
    }

    fn session(max_messages: usize) -> Session {
        session_on(max_messages, QueueBudget::unlimited())
    }

    fn session_on(max_messages: usize, budget: Arc<QueueBudget>) -> Session {
        Session::new(
            Arc::from("c"),
            EXPIRY_NEVER,
            QueueLimits {
                max_messages,
                max_bytes: 1 << 20,
                queue_qos0_offline: false,
                drop_newest: false,
                max_delivery_attempts: 3,
                budget,
                priorities: Default::default(),
            },
        )
    }

    impl Session {
        /// What the session holds, counted from scratch.
        fn held_from_scratch(&self) -> usize {
            let st = self.state.lock();
            let queued: usize = st.queue.iter().map(|d| d.message.cost()).sum();
            let inflight: usize = st.inflight.iter().map(|e| e.delivery.message.cost()).sum();
            queued + inflight + (st.queue.len() + st.inflight.len()) * ENTRY_OVERHEAD
        }
    }

    /// Every path that adds or removes a message keeps the broker-wide budget equal to
    /// the sum of what the sessions hold: enqueue, eviction, QoS 0 leaving on detach,
    /// send (QoS 0 leaves, QoS 1/2 stay inflight), PUBACK, PUBREC + PUBCOMP, expiry,
    /// poison messages, takeover with resend, end, and dropping a session.
    #[test]
    fn budget_equals_the_sum_of_what_sessions_hold() {
        let budget = Arc::new(QueueBudget::new(usize::MAX));
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut sessions: Vec<Session> =
            (0..4).map(|_| session_on(8, Arc::clone(&budget))).collect();
        let mut conn = [0u64; 4];
        let mut next_conn = 1u64;
        let mut id = 0u64;
        for step in 0..20_000 {
            let i = next(4) as usize;
            let s = &sessions[i];
            match next(10) {
                0..=2 => {
                    id += 1;
                    let qos =
                        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][next(3) as usize];
                    let mut d = delivery(id, qos);
                    if next(8) == 0 {
                        d.message = Arc::new(Message {
                            expires_at_ms: Some(1),
                            ..Message::clone_fields(&d.message)
                        });
                    }
                    // Evicted deliveries leave the session: they are the caller's now.
                    drop(s.enqueue(d));
                }
                3 => {
                    if conn[i] == 0 || next(2) == 0 {
                        let (tx, _rx) = oneshot::channel();
                        conn[i] = next_conn;
                        next_conn += 1;
                        s.attach(conn[i], tx, link(1 + next(5) as u16), EXPIRY_NEVER);
                    } else {
                        s.detach(conn[i], None);
                        conn[i] = 0;
                    }
                }
                4 | 5 => {
                    let mut out = Vec::new();
                    let mut dropped = Vec::new();
                    let max = 1 + next(4) as usize;
                    let readable = next(20) != 0;
                    s.take_deliveries(conn[i], max, &mut out, &mut dropped, |_| 10, |_| readable);
                }
                6 | 7 => {
                    let pid = 1 + next(12) as u16;
                    if s.puback(pid).is_none() && s.pubrec(pid) {
                        s.pubcomp(pid);
                    }
                }
                8 => {
                    if next(50) == 0 {
                        drop(s.end());
                    }
                }
                _ => {
                    if next(200) == 0 {
                        sessions[i] = session_on(8, Arc::clone(&budget));
                        conn[i] = 0;
                    }
                }
            }
            let sum: usize = sessions.iter().map(|s| s.held_from_scratch()).sum();
            assert_eq!(budget.used(), sum, "after step {step}");
        }
        let held: usize = sessions.iter().map(|s| s.held_from_scratch()).sum();
        assert!(held > 0, "the walk should leave something held");
        for s in &sessions {
            drop(s.end());
        }
        assert_eq!(budget.used(), 0, "ended sessions hold nothing");
        sessions[0].enqueue(delivery(1, QoS::AtLeastOnce));
        let alive = session_on(8, Arc::clone(&budget));
        alive.restore([delivery(2, QoS::AtLeastOnce)]);
        assert!(budget.used() > 0);
        drop(alive);
        drop(sessions);
        assert_eq!(budget.used(), 0, "a dropped session gives its share back");
    }

    fn link(window: u16) -> LinkLimits {
        LinkLimits {
            window,
            max_packet_size: None,
        }
    }

    fn take(s: &Session, conn: u64) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut dropped = Vec::new();
        s.take_deliveries(conn, 1000, &mut out, &mut dropped, |_| 10, |_| true);
        out
    }

    fn ids(out: &[Outgoing]) -> Vec<(u64, u16, bool)> {
        out.iter()
            .filter_map(|o| match o {
                Outgoing::Publish {
                    delivery,
                    packet_id,
                    dup,
                } => Some((delivery.message.id, *packet_id, *dup)),
                Outgoing::PubRel { .. } => None,
            })
            .collect()
    }

    #[test]
    fn window_limits_inflight_and_ack_opens_it() {
        let s = session(100);
        let (tx, _rx) = oneshot::channel();
        s.attach(1, tx, link(2), EXPIRY_NEVER);
        for i in 0..5 {
            assert!(s.enqueue(delivery(i, QoS::AtLeastOnce)).queued);
        }
        assert_eq!(ids(&take(&s, 1)), vec![(0, 1, false), (1, 2, false)]);
        assert!(take(&s, 1).is_empty());
        assert!(s.puback(1).is_some());
        assert!(
            s.puback(1).is_none(),
            "second ack of the same id is unknown"
        );
        assert_eq!(ids(&take(&s, 1)), vec![(2, 3, false)]);
    }

    #[test]
    fn reattach_resends_inflight_with_dup_first() {
        let s = session(100);
        let (tx, _rx) = oneshot::channel();
        s.attach(1, tx, link(10), EXPIRY_NEVER);
        s.enqueue(delivery(7, QoS::AtLeastOnce));
        s.enqueue(delivery(8, QoS::ExactlyOnce));
        assert_eq!(take(&s, 1).len(), 2);
        assert!(s.pubrec(2));
        assert!(s.detach(1, None).is_some());
        s.enqueue(delivery(9, QoS::AtLeastOnce));
        let (tx, _rx) = oneshot::channel();
        assert!(s.attach(2, tx, link(10), EXPIRY_NEVER).is_none());
        assert!(take(&s, 1).is_empty(), "old connection gets nothing");
        let out = take(&s, 2);
        assert_eq!(ids(&out), vec![(7, 1, true), (9, 3, false)]);
        assert!(matches!(out[1], Outgoing::PubRel { packet_id: 2 }));
        assert!(s.pubcomp(2).is_some());
    }

    #[test]
    fn full_queue_evicts_oldest() {
        let s = session(3);
        for i in 0..5 {
            let outcome = s.enqueue(delivery(i, QoS::AtLeastOnce));
            assert!(outcome.queued);
            if i >= 3 {
                assert_eq!(outcome.evicted.len(), 1);
                assert_eq!(outcome.evicted[0].message.id, i - 3);
            }
        }
        assert_eq!(s.depth(), (3, 0));
    }

    #[test]
    fn poison_message_leaves_after_max_attempts() {
        let s = session(10);
        s.enqueue(delivery(1, QoS::AtLeastOnce));
        for conn in 1..=3 {
            let (tx, _rx) = oneshot::channel();
            s.attach(conn, tx, link(10), EXPIRY_NEVER);
            let mut out = Vec::new();
            let mut dropped = Vec::new();
            s.take_deliveries(conn, 10, &mut out, &mut dropped, |_| 10, |_| true);
            assert_eq!(ids(&out).len(), 1, "attempt {conn} is sent");
            assert!(dropped.is_empty());
            s.detach(conn, None);
        }
        let (tx, _rx) = oneshot::channel();
        s.attach(4, tx, link(10), EXPIRY_NEVER);
        let mut out = Vec::new();
        let mut dropped = Vec::new();
        s.take_deliveries(4, 10, &mut out, &mut dropped, |_| 10, |_| true);
        assert!(out.is_empty());
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].1, Some(DeadLetterReason::MaxAttempts));
        assert_eq!(dropped[0].0.attempts, 3);
    }

    #[test]
    fn offline_session_skips_qos0() {
        let s = session(10);
        assert!(!s.enqueue(delivery(1, QoS::AtMostOnce)).queued);
        assert!(s.enqueue(delivery(2, QoS::AtLeastOnce)).queued);
    }

    #[test]
    fn inbound_qos2_dedup() {
        let s = session(10);
        assert!(s.begin_inbound_qos2(5));
        assert!(!s.begin_inbound_qos2(5));
        assert!(s.release_inbound_qos2(5));
        assert!(!s.release_inbound_qos2(5));
    }

    #[test]
    fn expired_and_too_large_are_dropped_with_reason() {
        let s = session(10);
        let (tx, _rx) = oneshot::channel();
        s.attach(
            1,
            tx,
            LinkLimits {
                window: 10,
                max_packet_size: Some(5),
            },
            0,
        );
        let mut expired = delivery(1, QoS::AtLeastOnce);
        expired.message = Arc::new(Message {
            expires_at_ms: Some(1),
            ..Message::clone_fields(&expired.message)
        });
        s.enqueue(expired);
        s.enqueue(delivery(2, QoS::AtLeastOnce));
        let mut out = Vec::new();
        let mut dropped = Vec::new();
        s.take_deliveries(1, 10, &mut out, &mut dropped, |_| 10, |_| true);
        assert!(out.is_empty());
        let reasons: Vec<_> = dropped.iter().map(|(_, r)| *r).collect();
        assert_eq!(
            reasons,
            vec![
                Some(DeadLetterReason::Expired),
                Some(DeadLetterReason::TooLarge)
            ]
        );
    }

    impl Message {
        fn clone_fields(m: &Message) -> Message {
            Message {
                id: m.id,
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                qos: m.qos,
                retain: m.retain,
                properties: m.properties.clone(),
                publisher: m.publisher.clone(),
                received_at_ms: m.received_at_ms,
                expires_at_ms: m.expires_at_ms,
            }
        }
    }
}
