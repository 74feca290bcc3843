//! The router: who is subscribed to what, and the retained messages.
//!
//! Owns the subscription tries (plain and `$share/group/...`) and the retained message
//! map. `connection` calls [`Router::subscribe`], [`Router::unsubscribe`] and
//! [`Router::route`]; `route` matches the topic, merges overlapping subscriptions of
//! one session into one delivery and picks one member per shared group; the broker then
//! makes the message durable and offers it to each target session's queue. The trie locks are never held while a session
//! lock is taken (targets are collected first), so the session → router lock order holds.

pub mod retained;
/// Topic names and filters: syntax and matching (a protocol leaf; re-exported here,
/// where routing uses it).
pub use crate::protocol::topic;
pub mod trie;

use crate::message::Message;
use crate::protocol::SubscriptionOptions;
use crate::session::{Delivery, Session};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use topic::{FilterKind, TopicError};
use trie::TopicTrie;

/// Targets of one message up to which duplicates are found by a linear scan.
const LINEAR_TARGETS: usize = 16;

/// One subscription in a trie.
#[derive(Debug, Clone)]
struct Entry {
    session: Arc<Session>,
    /// The filter as subscribed (`$share/group/filter` for a group member), kept where
    /// interest is tracked (cluster mode: [`Router::route_part`] needs it), as the
    /// interest map's string.
    filter: Option<Arc<str>>,
    options: SubscriptionOptions,
    identifier: Option<u32>,
    /// Counted as durable interest (persistent session, QoS ≥ 1) when it was made.
    durable: bool,
}

/// A session a message reaches, from [`Router::route_part`].
#[derive(Debug)]
pub struct Target {
    pub session: Arc<Session>,
    /// What the subscriptions served make of the message for this session.
    pub delivery: Delivery,
    /// The highest QoS any of the session's matching plain subscriptions (served or
    /// not) and its group subscriptions served give the message.
    pub overall_qos: crate::protocol::QoS,
    /// Whether a served subscription matched (targets without one are dropped).
    served: bool,
}

/// A change in this node's interest: the set of distinct filters (plain or
/// `$share/group/filter`) some session holds, each marked durable when at least one
/// of its subscribers is a persistent session at QoS ≥ 1. The cluster mirrors it on
/// NATS; nothing else listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterestChange {
    Upsert { filter: Arc<str>, durable: bool },
    Removed { filter: Arc<str> },
}

/// Sessions holding one filter, and how many of them durably.
#[derive(Debug, Default, Clone, Copy)]
struct FilterInterest {
    sessions: usize,
    durable: usize,
}

/// Shared subscriptions are keyed by the whole `$share/group/filter` string and the
/// member's client id, so members of one group are recognised when they match.
type SharedKey = (Arc<str>, Arc<str>);

#[derive(Debug)]
pub struct Router {
    plain: RwLock<TopicTrie<Arc<str>, Entry>>,
    shared: RwLock<TopicTrie<SharedKey, Entry>>,
    retained: RwLock<retained::RetainedStore>,
    /// Rotates the tie-break among equally loaded shared-group members.
    round_robin: AtomicUsize,
    max_topic_levels: usize,
    /// Whether `interest` is kept (cluster mode only: it costs a map entry per filter).
    track_interest: bool,
    /// A session whose subscriptions are not interest (the node's own dead-letter
    /// session: each node collects its own dead letters).
    untracked_client: Option<Arc<str>>,
    /// Per distinct filter, who holds it (for the cluster's interest).
    interest: parking_lot::Mutex<HashMap<Arc<str>, FilterInterest>>,
    /// Where interest changes go, once a cluster listens.
    interest_observer: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<InterestChange>>,
}

impl Router {
    pub fn new(max_topic_levels: usize) -> Router {
        Router {
            plain: RwLock::new(TopicTrie::new()),
            shared: RwLock::new(TopicTrie::new()),
            retained: RwLock::new(retained::RetainedStore::default()),
            round_robin: AtomicUsize::new(0),
            max_topic_levels,
            track_interest: false,
            untracked_client: None,
            interest: parking_lot::Mutex::new(HashMap::new()),
            interest_observer: std::sync::OnceLock::new(),
        }
    }

    /// A router that keeps the per-filter interest a cluster node announces (set before
    /// any subscription is restored, so none is missed).
    pub fn tracking_interest(mut self, except_client: Option<&str>) -> Router {
        self.track_interest = true;
        self.untracked_client = except_client.map(Arc::from);
        self
    }

    /// Starts sending [`InterestChange`]s to `tx`; returns the interest as it stands,
    /// taken under the same lock, so no change falls between the snapshot and the feed.
    pub fn observe_interest(
        &self,
        tx: tokio::sync::mpsc::UnboundedSender<InterestChange>,
    ) -> Vec<(Arc<str>, bool)> {
        let interest = self.interest.lock();
        let _ = self.interest_observer.set(tx);
        interest
            .iter()
            .map(|(f, i)| (Arc::clone(f), i.durable > 0))
            .collect()
    }

    /// The string the interest map keys `filter` by (a new one if it has none yet);
    /// `None` where interest is not tracked.
    fn interest_key(&self, client_id: &str, filter: &str) -> Option<Arc<str>> {
        if !self.track_interest || self.untracked_client.as_deref() == Some(client_id) {
            return None;
        }
        let interest = self.interest.lock();
        Some(
            interest
                .get_key_value(filter)
                .map_or_else(|| Arc::from(filter), |(k, _)| Arc::clone(k)),
        )
    }

    fn interest_changed(
        &self,
        client_id: &str,
        filter: &str,
        key: Option<Arc<str>>,
        added: Option<bool>,
        removed: Option<bool>,
    ) {
        if !self.track_interest || self.untracked_client.as_deref() == Some(client_id) {
            return;
        }
        let mut interest = self.interest.lock();
        let (before, after, key) = {
            let key = match interest.get_key_value(filter) {
                Some((k, _)) => Arc::clone(k),
                None => key.unwrap_or_else(|| Arc::from(filter)),
            };
            let entry = interest.entry(Arc::clone(&key)).or_default();
            let before = (entry.sessions > 0, entry.durable > 0);
            if let Some(d) = removed {
                entry.sessions = entry.sessions.saturating_sub(1);
                entry.durable = entry.durable.saturating_sub(usize::from(d));
            }
            if let Some(d) = added {
                entry.sessions += 1;
                entry.durable += usize::from(d);
            }
            (before, (entry.sessions > 0, entry.durable > 0), key)
        };
        if !after.0 {
            interest.remove(&key);
        }
        if before == after {
            return;
        }
        if let Some(tx) = self.interest_observer.get() {
            let change = if after.0 {
                InterestChange::Upsert {
                    filter: key,
                    durable: after.1,
                }
            } else {
                InterestChange::Removed { filter: key }
            };
            let _ = tx.send(change);
        }
    }

    pub fn max_topic_levels(&self) -> usize {
        self.max_topic_levels
    }

    /// Adds or replaces `session`'s subscription to `filter` (which may be a
    /// `$share/group/filter`). Returns whether it is shared.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> Result<bool, TopicError> {
        let durable = session.is_persistent() && options.qos != crate::protocol::QoS::AtMostOnce;
        let key = self.interest_key(&session.client_id, filter);
        let entry = Entry {
            session: Arc::clone(session),
            filter: key.clone(),
            options,
            identifier,
            durable,
        };
        let (shared, old) = match topic::parse_filter(filter, self.max_topic_levels)? {
            FilterKind::Plain(f) => {
                let old = self
                    .plain
                    .write()
                    .insert(f, Arc::clone(&session.client_id), entry);
                (false, old)
            }
            FilterKind::Shared { filter: f, .. } => {
                let key = (Arc::from(filter), Arc::clone(&session.client_id));
                (true, self.shared.write().insert(f, key, entry))
            }
        };
        self.interest_changed(
            &session.client_id,
            filter,
            key,
            Some(durable),
            old.map(|o| o.durable),
        );
        Ok(shared)
    }

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&self, client_id: &Arc<str>, filter: &str) -> bool {
        let old = match topic::parse_filter(filter, self.max_topic_levels) {
            Ok(FilterKind::Plain(f)) => self.plain.write().remove(f, client_id),
            Ok(FilterKind::Shared { filter: f, .. }) => {
                let key = (Arc::from(filter), Arc::clone(client_id));
                self.shared.write().remove(f, &key)
            }
            Err(_) => None,
        };
        match old {
            Some(old) => {
                self.interest_changed(client_id, filter, None, None, Some(old.durable));
                true
            }
            None => false,
        }
    }

    /// Removes every subscription `session` holds (it ended or was replaced).
    pub fn remove_session(&self, session: &Session) {
        for (filter, _) in session.subscriptions() {
            self.unsubscribe(&session.client_id, &filter);
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.plain.read().len() + self.shared.read().len()
    }

    /// Every session `message` should reach, with the delivery each gets: overlapping
    /// subscriptions of one session merge into one delivery (highest QoS, every
    /// subscription identifier), and each shared group contributes one member. Nothing
    /// is queued yet: the caller makes the message durable first, then queues it.
    pub fn route(&self, message: &Arc<Message>) -> Vec<(Arc<Session>, Delivery)> {
        self.route_with(message, &mut |_| true)
    }

    /// [`Router::route`], asking `share_here` for each shared group (by its
    /// `$share/group/filter` string) that matched whether a member on this node takes
    /// the message: in a cluster, another node's member may be the one chosen.
    pub fn route_with(
        &self,
        message: &Arc<Message>,
        share_here: &mut dyn FnMut(&str) -> bool,
    ) -> Vec<(Arc<Session>, Delivery)> {
        self.route_part(message, share_here, &|_| true)
            .into_iter()
            .map(|t| (t.session, t.delivery))
            .collect()
    }

    /// [`Router::route_with`] for the part of the subscriptions `serves` accepts (by
    /// filter as subscribed: `$share/group/filter` for a group): only they make
    /// deliveries, merged per session as usual; each target also says the QoS the
    /// session gets from all its matching plain subscriptions together. A cluster node
    /// receives a message once per NATS subscription it matches, and each copy serves
    /// the filters of its subscription (see `cluster`).
    pub fn route_part(
        &self,
        message: &Arc<Message>,
        share_here: &mut dyn FnMut(&str) -> bool,
        serves: &dyn Fn(&str) -> bool,
    ) -> Vec<Target> {
        let mut targets: Vec<Target> = Vec::new();
        // Overlapping subscriptions of one session are found by a linear scan while the
        // target list is short (the common case: no allocation per message), and by an
        // index once it is long (wide fan-out).
        let mut index: Option<HashMap<*const Session, usize>> = None;
        let mut add = |entry: &Entry, retain: bool, served: bool| {
            let qos = message.qos.min(entry.options.qos);
            let key = Arc::as_ptr(&entry.session);
            let found = match &index {
                Some(ix) => ix.get(&key).copied(),
                None => targets.iter().position(|t| Arc::as_ptr(&t.session) == key),
            };
            match found {
                Some(i) => {
                    let t = &mut targets[i];
                    t.overall_qos = t.overall_qos.max(qos);
                    if served {
                        let d = &mut t.delivery;
                        d.qos = if t.served { d.qos.max(qos) } else { qos };
                        d.retain |= retain;
                        d.subscription_ids.extend(entry.identifier);
                        t.served = true;
                    }
                }
                None => {
                    match &mut index {
                        Some(ix) => {
                            ix.insert(key, targets.len());
                        }
                        None if targets.len() >= LINEAR_TARGETS => {
                            let mut ix: HashMap<*const Session, usize> = targets
                                .iter()
                                .enumerate()
                                .map(|(i, t)| (Arc::as_ptr(&t.session), i))
                                .collect();
                            ix.insert(key, targets.len());
                            index = Some(ix);
                        }
                        None => {}
                    }
                    targets.push(Target {
                        session: Arc::clone(&entry.session),
                        delivery: Delivery {
                            message: Arc::clone(message),
                            qos,
                            retain: served && retain,
                            subscription_ids: if served {
                                entry.identifier.into_iter().collect()
                            } else {
                                Vec::new()
                            },
                            attempts: 0,
                            durable: false,
                        },
                        overall_qos: qos,
                        served,
                    });
                }
            }
        };
        {
            let plain = self.plain.read();
            plain.for_each_match(&message.topic, |client_id, entry| {
                if entry.options.no_local && **client_id == *message.publisher {
                    return;
                }
                add(
                    entry,
                    entry.options.retain_as_published && message.retain,
                    entry.filter.as_deref().is_none_or(serves),
                );
            });
        }
        let mut groups: HashMap<Arc<str>, Vec<Entry>> = HashMap::new();
        {
            let shared = self.shared.read();
            shared.for_each_match(&message.topic, |(share, _), entry| {
                groups
                    .entry(Arc::clone(share))
                    .or_default()
                    .push(entry.clone());
            });
        }
        for (share, members) in &groups {
            if !serves(share) || !share_here(share) {
                continue;
            }
            if let Some(member) = self.pick_member(members) {
                add(member, false, true);
            }
        }
        targets.retain(|t| t.served);
        targets
    }

    /// The least loaded online member (ties broken round robin); an offline member only
    /// when no member is online, so its persistent session keeps the message.
    fn pick_member<'a>(&self, members: &'a [Entry]) -> Option<&'a Entry> {
        if members.is_empty() {
            return None;
        }
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed) % members.len();
        let mut best: Option<(&Entry, usize)> = None;
        for i in 0..members.len() {
            let m = &members[(start + i) % members.len()];
            if !m.session.is_online() {
                continue;
            }
            let (queued, inflight) = m.session.depth();
            let load = queued + inflight;
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((m, load));
            }
        }
        best.map(|(m, _)| m).or(Some(&members[start]))
    }

    /// Stores (or, with an empty payload, clears) the retained message for its topic
    /// [MQTT-3.3.1-5], [MQTT-3.3.1-10].
    pub fn retain(&self, message: &Arc<Message>) {
        let mut retained = self.retained.write();
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(Arc::clone(message));
        }
    }

    /// Removes the retained message on `topic` (another node cleared it).
    pub fn clear_retained(&self, topic: &str) {
        self.retained.write().remove(topic);
    }

    /// Retained messages whose topic matches `filter` (a plain filter).
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained.read().matching(filter)
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Restores a retained message at start-up.
    pub fn restore_retained(&self, message: Arc<Message>) {
        self.retained.write().insert(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};
    use crate::session::{QueueLimits, EXPIRY_NEVER};
    use bytes::Bytes;

    fn session(id: &str) -> Arc<Session> {
        Arc::new(Session::new(
            Arc::from(id),
            EXPIRY_NEVER,
            QueueLimits {
                max_messages: 10,
                max_bytes: 1 << 20,
                queue_qos0_offline: false,
                drop_newest: false,
                max_delivery_attempts: 0,
                budget: crate::limits::QueueBudget::unlimited(),
                priorities: Default::default(),
            },
        ))
    }

    fn message(topic: &str, qos: QoS) -> Arc<Message> {
        Arc::new(Message {
            id: 1,
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            publisher: Arc::from("p"),
            received_at_ms: 0,
            expires_at_ms: None,
        })
    }

    /// Overlapping subscriptions of one session merge into one delivery (highest QoS,
    /// every identifier), both below and above the size where the index takes over.
    #[test]
    fn overlapping_subscriptions_merge_at_any_fan_out() {
        for others in [0, 3, LINEAR_TARGETS + 5] {
            let router = Router::new(64);
            for i in 0..others {
                let s = session(&format!("other-{i}"));
                router
                    .subscribe(&s, "a/#", SubscriptionOptions::default(), None)
                    .expect("valid filter");
            }
            let twice = session("twice");
            let at = |qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            };
            router
                .subscribe(&twice, "a/+", at(QoS::AtMostOnce), Some(1))
                .expect("valid");
            router
                .subscribe(&twice, "a/#", at(QoS::AtLeastOnce), Some(2))
                .expect("valid");
            let targets = router.route(&message("a/b", QoS::ExactlyOnce));
            assert_eq!(targets.len(), others + 1, "one delivery per session");
            let (_, d) = targets
                .iter()
                .find(|(s, _)| &*s.client_id == "twice")
                .expect("routed");
            assert_eq!(d.qos, QoS::AtLeastOnce);
            let mut ids = d.subscription_ids.clone();
            ids.sort_unstable();
            assert_eq!(ids, vec![1, 2]);
        }
    }

    /// A part of the subscriptions makes deliveries from what those subscriptions give;
    /// the others only count towards the session's overall QoS.
    #[test]
    fn a_part_of_the_subscriptions_serves_and_the_rest_only_counts() {
        let router = Router::new(64).tracking_interest(None);
        let at = |qos| SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let both = session("both");
        router
            .subscribe(&both, "a/#", at(QoS::AtLeastOnce), Some(1))
            .expect("valid");
        router
            .subscribe(&both, "a/+", at(QoS::AtMostOnce), Some(2))
            .expect("valid");
        let wide = session("wide");
        router
            .subscribe(&wide, "a/#", at(QoS::AtLeastOnce), None)
            .expect("valid");
        let member = session("member");
        router
            .subscribe(&member, "$share/g/a/+", at(QoS::AtLeastOnce), None)
            .expect("valid");
        let m = message("a/b", QoS::ExactlyOnce);
        let targets = router.route_part(&m, &mut |_| true, &|f| f.ends_with('+'));
        let mut got: Vec<_> = targets
            .iter()
            .map(|t| {
                (
                    t.session.client_id.to_string(),
                    t.delivery.qos,
                    t.delivery.subscription_ids.clone(),
                    t.overall_qos,
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    "both".to_string(),
                    QoS::AtMostOnce,
                    vec![2],
                    QoS::AtLeastOnce
                ),
                (
                    "member".to_string(),
                    QoS::AtLeastOnce,
                    vec![],
                    QoS::AtLeastOnce
                ),
            ]
        );
    }

    /// The interest a cluster node announces changes only when a filter appears, turns
    /// durable or not, or disappears, whoever holds it.
    #[test]
    fn interest_changes_are_reported_once_per_transition() {
        let router = Router::new(64).tracking_interest(Some("dlq"));
        let persistent = session("p");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let snapshot = router.observe_interest(tx);
        assert!(snapshot.is_empty());
        let qos = |qos| SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let f: Arc<str> = Arc::from("a/#");
        router
            .subscribe(&persistent, "a/#", qos(QoS::AtMostOnce), None)
            .expect("valid");
        assert_eq!(
            rx.try_recv().ok(),
            Some(InterestChange::Upsert {
                filter: Arc::clone(&f),
                durable: false
            })
        );
        let other = session("q");
        router
            .subscribe(&other, "a/#", qos(QoS::AtMostOnce), None)
            .expect("valid");
        assert!(rx.try_recv().is_err(), "a second holder changes nothing");
        router
            .subscribe(&persistent, "a/#", qos(QoS::AtLeastOnce), None)
            .expect("valid");
        assert_eq!(
            rx.try_recv().ok(),
            Some(InterestChange::Upsert {
                filter: Arc::clone(&f),
                durable: true
            })
        );
        assert!(router.unsubscribe(&persistent.client_id, "a/#"));
        assert_eq!(
            rx.try_recv().ok(),
            Some(InterestChange::Upsert {
                filter: Arc::clone(&f),
                durable: false
            })
        );
        assert!(router.unsubscribe(&other.client_id, "a/#"));
        assert_eq!(
            rx.try_recv().ok(),
            Some(InterestChange::Removed { filter: f })
        );
        assert!(rx.try_recv().is_err());
        router
            .subscribe(&session("dlq"), "$DLQ/#", qos(QoS::AtLeastOnce), None)
            .expect("valid");
        assert!(
            rx.try_recv().is_err(),
            "the dead-letter session is not interest"
        );
    }
}
