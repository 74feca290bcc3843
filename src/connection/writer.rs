//! What a connection sends, and in which order: the connection's outbound side.
//!
//! [`Outbound`] holds the bytes encoded for the client and not yet written, and the acks
//! waiting for the store. It lives in the connection's one task next to the reader (no
//! writer task, no channels: an idle connection is one small future). The reader encodes
//! control packets (CONNACK, SUBACK, PINGRESP, ...) straight into it; each QoS 1/2
//! PUBLISH's PUBACK/PUBREC waits in `acks` until the store has made the message durable,
//! and goes out in the order the PUBLISHes arrived [MQTT-4.6.0-2], so one publisher's
//! messages share fsyncs instead of waiting for one each. Deliveries from the session
//! queue are encoded, many per `write`, whenever everything before them has been written.
//!
//! Backpressure: the reader stops reading while [`Outbound::has_room`] is false (the
//! client does not read what we send, or the store is slow), so nothing here is
//! unbounded.

use super::{Ack, AckKind, Connection, Exit};
use crate::broker::Broker;
use crate::dead_letter::DeadLetterReason;
use crate::message::now_ms;
use crate::metrics as metric;
use crate::protocol::{self, reason, OutboundPublish, Packet, ProtocolVersion, PubResponse, QoS};
use crate::session::{Delivery, Outgoing};
use crate::store::{CommitTicket, Record, StoreError};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// Most packets encoded from the session queue before one `write`.
const WRITE_BATCH: usize = 256;
/// Encoded bytes not yet written above which the reader stops reading: a client that
/// does not read cannot make us buffer its answers without bound.
const OUT_LIMIT: usize = 64 * 1024;

/// An accepted QoS 1/2 PUBLISH (or PUBREL) waiting for the store before its ack.
pub(super) struct PendingAck {
    /// Commits still to wait for (spent ones are removed).
    pub tickets: Vec<CommitTicket>,
    /// PUBACK, PUBREC or PUBCOMP, success (or 0x10) as if the commits succeed.
    pub ack: Ack,
    /// When the packet it answers was read, for the PUBACK latency histogram (only on
    /// the sampled acks).
    pub received: Option<Instant>,
}

/// The connection's outbound state. Buffers are allocated while there is something to
/// send and released before the connection waits idle.
pub(super) struct Outbound {
    version: ProtocolVersion,
    /// Encoded, not yet written.
    pub out: BytesMut,
    /// Acks waiting for the store, in arrival order.
    pub acks: VecDeque<PendingAck>,
    /// At most this many acks wait at once (the broker's receive maximum).
    ack_window: usize,
    /// Deliveries taken from the session, reused between batches while busy.
    outgoing: Vec<Outgoing>,
    /// Counts acks so one in LATENCY_SAMPLE_EVERY is timed.
    ack_tick: u32,
    /// Counts live deliveries so one in LATENCY_SAMPLE_EVERY is timed.
    sample_tick: u32,
    /// The last batch was full: more may be queued without a new notification.
    more_queued: bool,
}

impl Outbound {
    pub fn new(version: ProtocolVersion, ack_window: usize) -> Outbound {
        Outbound {
            version,
            out: BytesMut::new(),
            acks: VecDeque::new(),
            ack_window: ack_window.max(1),
            outgoing: Vec::new(),
            ack_tick: 0,
            sample_tick: 0,
            more_queued: true,
        }
    }

    /// Whether the reader may take another packet: its answer has somewhere to go.
    pub fn has_room(&self) -> bool {
        self.out.len() < OUT_LIMIT && self.acks.len() < self.ack_window
    }

    /// Whether deliveries may be taken from the session now: everything encoded before
    /// has been written (a client that reads slowly holds one batch, not its queue).
    pub fn wants_deliveries(&self) -> bool {
        self.out.is_empty()
    }

    pub fn packet(&mut self, packet: &Packet) {
        protocol::encode(packet, self.version, &mut self.out);
    }

    /// Queues `ack` to go out once `tickets` are durable, after the acks before it.
    pub fn ack(&mut self, tickets: Vec<CommitTicket>, ack: Ack) {
        // One ack in LATENCY_SAMPLE_EVERY carries its start time for the latency histogram.
        let sampled = self.ack_tick.is_multiple_of(metric::LATENCY_SAMPLE_EVERY);
        self.ack_tick = self.ack_tick.wrapping_add(1);
        self.acks.push_back(PendingAck {
            tickets,
            ack,
            received: sampled.then(Instant::now),
        });
    }

    /// Whether the oldest ack still waits for a commit.
    pub fn waits_for_store(&self) -> bool {
        self.acks.front().is_some_and(|p| !p.tickets.is_empty())
    }

    /// Applies the outcome of the oldest ack's last ticket (see [`front_ticket`]), then
    /// sends every ack that is ready, in order. Err: the connection must close (the store
    /// failed and the client cannot be told).
    pub fn ticket_done(
        &mut self,
        result: Result<(), StoreError>,
        session: &crate::session::Session,
    ) -> Result<(), Exit> {
        if let Some(front) = self.acks.front_mut() {
            front.tickets.pop();
            apply(front, result, self.version, session)?;
        }
        self.settle(session)
    }

    /// Sends, in order, every ack whose commits are already settled.
    pub fn settle(&mut self, session: &crate::session::Session) -> Result<(), Exit> {
        while let Some(front) = self.acks.front_mut() {
            while let Some(ticket) = front.tickets.last_mut() {
                let Some(result) = ticket.try_result() else {
                    return Ok(());
                };
                front.tickets.pop();
                apply(front, result, self.version, session)?;
            }
            let Some(done) = self.acks.pop_front() else {
                break;
            };
            if let (Some(received), AckKind::Ack | AckKind::Rec) = (done.received, done.ack.kind) {
                metric::hot()
                    .puback_latency
                    .record(received.elapsed().as_secs_f64());
            }
            protocol::encode(&done.ack.packet(), self.version, &mut self.out);
        }
        if self.acks.is_empty() && self.acks.capacity() > 0 {
            // Idle again: give the queue's memory back.
            self.acks = VecDeque::new();
        }
        Ok(())
    }

    /// Releases the buffers when there is nothing left to send.
    pub fn release_if_idle(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = BytesMut::new();
        }
        if self.outgoing.capacity() > 0 && !self.more_queued {
            self.outgoing = Vec::new();
        }
    }

    /// The session signalled new deliveries (or a free inflight slot).
    pub fn notified(&mut self) {
        self.more_queued = true;
    }

    /// Whether a fill may find something without waiting for a notification.
    pub fn more_queued(&self) -> bool {
        self.more_queued
    }
}

/// What a commit's outcome does to its ack. When the store fails, v5 clients get the ack
/// with a failure reason (0x97 quota exceeded for a full disk, 0x80 otherwise); 3.x
/// clients cannot be told, so they get no ack and the connection closes.
fn apply(
    pending: &mut PendingAck,
    result: Result<(), StoreError>,
    version: ProtocolVersion,
    session: &crate::session::Session,
) -> Result<(), Exit> {
    let Err(e) = result else {
        return Ok(());
    };
    metric::hot().puback_failed.increment(1);
    warn!(error = %e, "message not made durable; not acknowledging it as stored");
    // 3.x acks carry no reason, and a PUBCOMP cannot report a failure: the connection
    // closes without the ack instead.
    if !version.is_v5() || pending.ack.kind == AckKind::Comp {
        return Err(Exit::StoreFailed);
    }
    pending.ack.reason = match e {
        StoreError::DiskFull => reason::QUOTA_EXCEEDED,
        _ => reason::UNSPECIFIED_ERROR,
    };
    if pending.ack.kind == AckKind::Rec {
        // The flow ends with a failed PUBREC: no PUBREL follows.
        session.release_inbound_qos2(pending.ack.packet_id);
    }
    Ok(())
}

/// Waits for the oldest ack's last ticket; never resolves when there is none. Cancel
/// safe: the ticket stays in place until it has resolved.
pub(super) async fn front_ticket(acks: &mut VecDeque<PendingAck>) -> Result<(), StoreError> {
    match acks.front_mut().and_then(|p| p.tickets.last_mut()) {
        Some(ticket) => ticket.ready().await,
        None => std::future::pending().await,
    }
}

impl Connection {
    /// Encodes what the session may send now (resends first, then its queue within the
    /// inflight window), up to one batch.
    pub(super) async fn fill(&mut self, ob: &mut Outbound, broker: &Arc<Broker>) {
        let version = self.version;
        let now = now_ms();
        let mut dropped = Vec::new();
        {
            let auth = broker.auth_files();
            let session = &self.session;
            let username = self.username.as_deref();
            session.take_deliveries(
                self.conn_id,
                WRITE_BATCH,
                &mut ob.outgoing,
                &mut dropped,
                |d| protocol::outbound_len(&outbound_publish(d, 1, false, version, now), version),
                |d| auth.may_read(&session.client_id, username, &d.message.topic),
            );
        }
        ob.more_queued = ob.outgoing.len() >= WRITE_BATCH;
        // A durable QoS 2 message is sent only once its packet id is durable (committed
        // in `after_fill`, before the batch reaches the socket), so that a
        // restart sends the same id again and the subscriber, which may have stored the
        // message under it, recognises the duplicate [MQTT-4.3.3-10], [MQTT-4.4.0-1].
        let first_qos2: Vec<Record> = ob
            .outgoing
            .iter()
            .filter_map(|o| match o {
                Outgoing::Publish {
                    delivery,
                    packet_id,
                    dup: false,
                } if delivery.durable && delivery.qos == QoS::ExactlyOnce => {
                    Some(Record::Outbound {
                        session: self.client_id.to_string(),
                        message_id: delivery.message.id,
                        packet_id: *packet_id,
                        released: false,
                    })
                }
                _ => None,
            })
            .collect();

        let hot = metric::hot();
        // Counted per batch, not per message: one add per counter per write.
        let (mut sent, mut sent_bytes) = ([0u64; 3], [0u64; 3]);
        for o in ob.outgoing.drain(..) {
            match o {
                Outgoing::Publish {
                    delivery,
                    packet_id,
                    dup,
                } => {
                    sent[delivery.qos as usize] += 1;
                    sent_bytes[delivery.qos as usize] += delivery.message.payload.len() as u64;
                    // First sends of live messages only: a resend or a retained message
                    // replayed on SUBSCRIBE says nothing about delivery speed.
                    if !dup && !delivery.retain {
                        let sampled = ob.sample_tick.is_multiple_of(metric::LATENCY_SAMPLE_EVERY);
                        ob.sample_tick = ob.sample_tick.wrapping_add(1);
                        if sampled {
                            let ms = now.saturating_sub(delivery.message.received_at_ms);
                            hot.delivery_latency.record(ms as f64 / 1000.0);
                        }
                    }
                    let publish = outbound_publish(&delivery, packet_id, dup, version, now);
                    protocol::encode_outbound(&publish, version, &mut ob.out);
                }
                Outgoing::PubRel { packet_id } => {
                    let rel = Packet::PubRel(PubResponse::success(packet_id));
                    protocol::encode(&rel, version, &mut ob.out);
                }
            }
        }
        hot.sent_batch(&sent, &sent_bytes);
        if !dropped.is_empty() || !first_qos2.is_empty() {
            // Rare (expiry, size, ACL, QoS 2): boxed so its futures do not grow every
            // connection.
            Box::pin(self.after_fill(dropped, first_qos2, broker)).await;
        }
    }

    /// What a batch needs beyond encoding: the packet ids of first QoS 2 sends made
    /// durable (the batch is written to the socket only after this returns), and the
    /// deliveries the session gave up.
    async fn after_fill(
        &self,
        dropped: Vec<(Delivery, Option<DeadLetterReason>)>,
        first_qos2: Vec<Record>,
        broker: &Arc<Broker>,
    ) {
        if !first_qos2.is_empty() {
            if let Err(e) = broker.store.commit(first_qos2).await {
                warn!(error = %e, "outbound QoS 2 packet ids not stored; a restart may send them anew");
            }
        }
        if !dropped.is_empty() {
            self.not_sent(dropped, broker).await;
        }
    }

    /// Deliveries the session gave up instead of sending: dead letters, or (denied by the
    /// ACL) acknowledged as if delivered.
    async fn not_sent(
        &self,
        dropped: Vec<(Delivery, Option<DeadLetterReason>)>,
        broker: &Arc<Broker>,
    ) {
        for (d, why) in dropped {
            match why {
                Some(reason) => {
                    broker.undeliverable(&self.session, d, reason).await;
                }
                None => {
                    metrics::counter!(metric::ACL_DENIED, "access" => "read").increment(1);
                    info!(topic = %d.message.topic, "delivery denied by the ACL; not sent to this client");
                    if d.durable {
                        broker.ack_durable(&self.session, &d).await;
                    }
                }
            }
        }
    }
}

/// The PUBLISH one subscriber receives for `delivery`, borrowing the shared message.
pub(super) fn outbound_publish(
    d: &Delivery,
    packet_id: u16,
    dup: bool,
    version: ProtocolVersion,
    now_ms: u64,
) -> OutboundPublish<'_> {
    let m = &d.message;
    let v5 = version.is_v5();
    OutboundPublish {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic: &m.topic,
        packet_id,
        payload: &m.payload,
        properties: &m.properties,
        message_expiry_interval: if v5 {
            m.remaining_expiry_secs(now_ms)
        } else {
            None
        },
        subscription_identifiers: if v5 { &d.subscription_ids } else { &[] },
    }
}
