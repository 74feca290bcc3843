//! The two helper tasks of a connection.
//!
//! The writer owns the socket's write half: it sends, in order, the control packets the
//! reader queued (CONNACK, acks, SUBACK, ...), then whatever the session queue holds
//! within the inflight window, many packets per `write`. The acker turns each accepted
//! QoS 1/2 PUBLISH into its PUBACK/PUBREC once the store has made it durable, in the
//! order the PUBLISHes arrived [MQTT-4.6.0-2], so one publisher's messages share fsyncs
//! instead of waiting for one each.

use super::{Ack, AckKind, Control};
use crate::broker::Broker;
use crate::dead_letter::DeadLetterReason;
use crate::message::now_ms;
use crate::metrics as metric;
use crate::protocol::{
    self, reason, Disconnect, OutboundPublish, Packet, ProtocolVersion, PubResponse,
};
use crate::session::{Delivery, Outgoing, Session};
use crate::store::{CommitTicket, StoreError};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Most packets the writer encodes before one `write`.
const WRITE_BATCH: usize = 256;

/// Who the writer writes for.
pub(super) struct WriterCtx {
    pub session: Arc<Session>,
    pub conn_id: u64,
    pub version: ProtocolVersion,
    pub broker: Arc<Broker>,
    /// For the ACL check at delivery.
    pub username: Option<String>,
}

/// The writer task: sends control packets in order, then the session's deliveries.
pub(super) async fn run_writer<W>(
    mut wr: WriteHalf<W>,
    ctx: WriterCtx,
    mut ctrl: mpsc::Receiver<Control>,
    done: CancellationToken,
) where
    W: AsyncWrite + Send + 'static,
    WriteHalf<W>: Unpin,
{
    let WriterCtx {
        session,
        conn_id,
        version,
        broker,
        username,
    } = ctx;
    // Allocated while there is something to write, released before waiting, so an idle
    // connection holds no write buffer.
    let mut out = BytesMut::new();
    let mut outgoing = Vec::new();
    let mut dropped = Vec::new();
    let mut next: Option<Control> = None;
    // Counts live deliveries so one in LATENCY_SAMPLE_EVERY is timed.
    let mut sample_tick: u32 = 0;
    let mut closing: Option<Option<Disconnect>> = None;
    loop {
        // Control packets first, in the order the reader queued them.
        loop {
            let item = match next.take() {
                Some(c) => c,
                None => match ctrl.try_recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            match item {
                Control::Ack(a) => protocol::encode(&a.packet(), version, &mut out),
                Control::Packet(p) => protocol::encode(&p, version, &mut out),
                Control::Enqueue(deliveries) => {
                    for d in deliveries {
                        for evicted in session.enqueue(d).evicted {
                            broker
                                .undeliverable(&session, evicted, DeadLetterReason::QueueFull)
                                .await;
                        }
                    }
                }
                Control::Close(d) => {
                    closing = Some(d.map(|d| *d));
                    break;
                }
            }
        }
        let mut full_batch = false;
        if closing.is_none() {
            let auth = broker.auth_files();
            let now = now_ms();
            session.take_deliveries(
                conn_id,
                WRITE_BATCH,
                &mut outgoing,
                &mut dropped,
                |d| protocol::outbound_len(&outbound_publish(d, 1, false, version, now), version),
                |d| auth.may_read(&session.client_id, username.as_deref(), &d.message.topic),
            );
            full_batch = outgoing.len() >= WRITE_BATCH;
            let hot = crate::metrics::hot();
            // Counted per batch, not per message: one add per counter per write.
            let (mut sent, mut sent_bytes) = ([0u64; 3], [0u64; 3]);
            for o in outgoing.drain(..) {
                match o {
                    Outgoing::Publish {
                        delivery,
                        packet_id,
                        dup,
                    } => {
                        sent[delivery.qos as usize] += 1;
                        sent_bytes[delivery.qos as usize] += delivery.message.payload.len() as u64;
                        // First sends of live messages only: a resend or a retained
                        // message replayed on SUBSCRIBE says nothing about delivery speed.
                        if !dup && !delivery.retain {
                            let sampled =
                                sample_tick.is_multiple_of(crate::metrics::LATENCY_SAMPLE_EVERY);
                            sample_tick = sample_tick.wrapping_add(1);
                            if sampled {
                                let ms = now.saturating_sub(delivery.message.received_at_ms);
                                hot.delivery_latency.record(ms as f64 / 1000.0);
                            }
                        }
                        let publish = outbound_publish(&delivery, packet_id, dup, version, now);
                        protocol::encode_outbound(&publish, version, &mut out);
                    }
                    Outgoing::PubRel { packet_id } => {
                        let rel = Packet::PubRel(PubResponse::success(packet_id));
                        protocol::encode(&rel, version, &mut out);
                    }
                }
            }
            hot.sent_batch(&sent, &sent_bytes);
            for (d, why) in dropped.drain(..) {
                match why {
                    Some(reason) => {
                        broker.undeliverable(&session, d, reason).await;
                    }
                    None => {
                        metrics::counter!(metric::ACL_DENIED, "access" => "read").increment(1);
                        info!(topic = %d.message.topic, "delivery denied by the ACL; not sent to this client");
                        if d.durable {
                            broker.ack_durable(&session, &d).await;
                        }
                    }
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = wr.write_all(&out).await {
                debug!(error = %e, "write failed");
                done.cancel();
                return;
            }
            out.clear();
        }
        if let Some(disconnect) = closing.take() {
            if let Some(d) = disconnect {
                protocol::encode(&Packet::Disconnect(d), version, &mut out);
                let _ = wr.write_all(&out).await;
            }
            let _ = wr.shutdown().await;
            done.cancel();
            return;
        }
        // A full batch means more may be waiting: the session only notifies on change.
        if full_batch {
            continue;
        }
        out = BytesMut::new();
        tokio::select! {
            c = ctrl.recv() => match c {
                Some(c) => next = Some(c),
                None => {
                    let _ = wr.shutdown().await;
                    done.cancel();
                    return;
                }
            },
            _ = session.notified() => {}
        }
    }
}

/// An accepted QoS 1/2 PUBLISH waiting for its acknowledgement.
pub(super) struct PendingAck {
    pub tickets: Vec<CommitTicket>,
    /// PUBACK, PUBREC or PUBCOMP, success (or 0x10) as if the commit succeeds.
    pub ack: Ack,
    /// When the packet it answers was read, for the PUBACK latency histogram (only on
    /// the sampled acks).
    pub received: Option<Instant>,
}

/// The acker task: waits for each commit in arrival order and forwards the ack to the
/// writer. When the store fails, v5 clients get the ack with a failure reason (0x97
/// quota exceeded for a full disk, 0x80 otherwise); 3.x clients cannot be told, so they
/// get no ack and the connection closes (`failed` is cancelled).
pub(super) async fn run_acker(
    mut pending: mpsc::Receiver<PendingAck>,
    ctrl: mpsc::Sender<Control>,
    version: ProtocolVersion,
    session: Arc<Session>,
    failed: CancellationToken,
) {
    let hot = crate::metrics::hot();
    while let Some(PendingAck {
        tickets,
        mut ack,
        received,
    }) = pending.recv().await
    {
        for ticket in tickets {
            if let Err(e) = ticket.wait().await {
                hot.puback_failed.increment(1);
                warn!(error = %e, "message not made durable; not acknowledging it as stored");
                // 3.x acks carry no reason, and a PUBCOMP cannot report a failure: the
                // connection closes without the ack instead.
                if !version.is_v5() || ack.kind == AckKind::Comp {
                    failed.cancel();
                    return;
                }
                let code = match e {
                    StoreError::DiskFull => reason::QUOTA_EXCEEDED,
                    _ => reason::UNSPECIFIED_ERROR,
                };
                ack.reason = code;
                if ack.kind == AckKind::Rec {
                    // The flow ends with a failed PUBREC: no PUBREL follows.
                    session.release_inbound_qos2(ack.packet_id);
                }
            }
        }
        if let (Some(received), AckKind::Ack | AckKind::Rec) = (received, ack.kind) {
            hot.puback_latency.record(received.elapsed().as_secs_f64());
        }
        if ctrl.send(Control::Ack(ack)).await.is_err() {
            return;
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
