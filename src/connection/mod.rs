//! One client connection: handshake, reader, writer, keepalive and shutdown.
//!
//! Owns the socket, its read and write buffers, the keepalive deadline, inbound topic
//! aliases and the will. The task that calls [`serve`] reads and handles packets; a
//! second task (the writer) owns the write half and sends, in order, the control packets
//! the reader hands it (CONNACK, acks, SUBACK, ...) and then whatever the session queue
//! holds, within the inflight window, several packets per `write`.
//!
//! The reader only ever waits on the socket, the writer's channel (backpressure when the
//! client does not read), the kick of a takeover, and shutdown — all in one `select!`.

use crate::broker::Broker;
use crate::listener::Listener;
use crate::message::{now_ms, Message};
use crate::metrics as metric;
use crate::protocol::{
    self, reason, ConnAck, ConnAckProperties, Connect, Disconnect, LastWill, Packet, ProtocolError,
    ProtocolVersion, PubResponse, Publish, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use crate::router::topic;
use crate::session::{
    next_connection_id, Delivery, LinkLimits, Session, SubscriptionRecord, EXPIRY_NEVER,
};
use crate::store::Record;
use bytes::BytesMut;
use lifecycle::{
    append_records, attach_session, end_or_schedule_expiry, finish_discard, publish_will,
    session_record,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use writer::{run_acker, run_writer, PendingAck, WriterCtx};

mod handlers;
mod handshake;

use handshake::{read_connect, ConnectFailure};
mod lifecycle;
mod writer;

pub use lifecycle::schedule_expiry;
pub(crate) use lifecycle::{discard_session, finish_discard_now};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Control packets the reader may queue for the writer before it stops reading.
const CONTROL_CAPACITY: usize = 256;
/// Read buffer to start with and to shrink back to when idle.
const READ_BUFFER: usize = 4 * 1024;
/// Without a byte for this long, an empty read buffer is freed.
const IDLE_RELEASE: Duration = Duration::from_secs(2);
/// What a connection without a buffer reads into first.
const SMALL_READ: usize = 512;

/// Reads what the socket has into `buf`. With an allocated buffer this is one
/// `read_buf`; without one, the bytes land in a small array on the task first and the
/// buffer is allocated only once they exist, so a waiting connection holds no buffer.
async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() >= SMALL_READ {
        return rd.read_buf(buf).await;
    }
    if buf.capacity() > 0 {
        buf.reserve(READ_BUFFER);
        return rd.read_buf(buf).await;
    }
    let mut first = [0u8; SMALL_READ];
    let n = rd.read(&mut first).await?;
    buf.reserve(READ_BUFFER.max(n));
    buf.extend_from_slice(&first[..n]);
    Ok(n)
}

/// How long the reader waits for the writer to flush its last packets.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// What the reader asks of the writer. Kept small (acks by value, rare packets boxed):
/// every connection's channel preallocates a block of these.
enum Control {
    Ack(Ack),
    Packet(Box<Packet>),
    /// Retained messages for a new subscription: queued after its SUBACK is encoded.
    Enqueue(Vec<Delivery>),
    /// Send this DISCONNECT (v5) if any, flush, and close.
    Close(Option<Box<Disconnect>>),
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP without properties: the broker's acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckKind {
    /// PUBACK
    Ack,
    /// PUBREC
    Rec,
    /// PUBREL
    Rel,
    /// PUBCOMP
    Comp,
}

#[derive(Debug, Clone, Copy)]
struct Ack {
    kind: AckKind,
    packet_id: u16,
    /// MQTT 5 reason code (dropped on the wire for 3.x).
    reason: u8,
}

impl Ack {
    fn new(kind: AckKind, packet_id: u16, reason: u8) -> Ack {
        Ack {
            kind,
            packet_id,
            reason,
        }
    }

    fn packet(self) -> Packet {
        let r = PubResponse {
            reason: self.reason,
            ..PubResponse::success(self.packet_id)
        };
        match self.kind {
            AckKind::Ack => Packet::PubAck(r),
            AckKind::Rec => Packet::PubRec(r),
            AckKind::Rel => Packet::PubRel(r),
            AckKind::Comp => Packet::PubComp(r),
        }
    }
}

/// Why the connection ends.
#[derive(Debug)]
enum Exit {
    /// The client sent DISCONNECT; `will` is true for v5 reason 0x04.
    Disconnect {
        will: bool,
    },
    /// The socket closed or failed without a DISCONNECT.
    Lost(String),
    KeepAlive,
    Protocol(ProtocolError),
    /// The broker refuses something; v5 clients get DISCONNECT with `code`.
    Refused {
        code: u8,
        why: String,
    },
    TakenOver,
    Shutdown,
    WriterGone,
}

impl Exit {
    fn publishes_will(&self) -> bool {
        match self {
            Exit::Disconnect { will } => *will,
            _ => true,
        }
    }

    fn disconnect_code(&self) -> Option<u8> {
        match self {
            Exit::Disconnect { .. } | Exit::Lost(_) | Exit::WriterGone => None,
            Exit::KeepAlive => Some(reason::KEEP_ALIVE_TIMEOUT),
            Exit::Protocol(e) => Some(e.reason_code()),
            Exit::Refused { code, .. } => Some(*code),
            Exit::TakenOver => Some(reason::SESSION_TAKEN_OVER),
            Exit::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
        }
    }
}

/// Where a connection came in, and who TLS says the client is.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<Listener>,
    /// CN (or first DNS name) of a verified client certificate.
    pub tls_identity: Option<String>,
}

/// Serves one accepted connection until it closes.
pub async fn serve<S>(stream: S, peer: SocketAddr, broker: Arc<Broker>, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        metrics::counter!(metric::CONNECTIONS_ACCEPTED).increment(1);
        let Ok(pending) = Arc::clone(&broker.pending_connect_permits).try_acquire_owned() else {
            metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "pending_limit")
                .increment(1);
            warn!("connection closed: max_pending_connects connections are waiting to CONNECT");
            return;
        };
        let (mut rd, mut wr) = tokio::io::split(stream);
        // The read buffer is allocated when bytes arrive (see `read_some`), so a connection
        // that is only waiting costs no buffer.
        let mut buf = BytesMut::new();
        let connect = read_connect(&mut rd, &mut buf, &broker).await;
        drop(pending);
        let connect = match connect {
            Ok(c) => c,
            Err(ConnectFailure::Answer {
                connack,
                version,
                why,
            }) => {
                info!(reason = %why, "CONNECT refused");
                let mut out = BytesMut::new();
                protocol::encode(&Packet::ConnAck(*connack), version, &mut out);
                let _ = wr.write_all(&out).await;
                let _ = wr.shutdown().await;
                return;
            }
            Err(ConnectFailure::Close(why)) => {
                info!(reason = %why, "connection closed before CONNECT completed");
                return;
            }
        };
        // In a cluster, a session owned by another node comes here first (its client
        // there is disconnected with 0x8E) [MQTT-3.1.4-3].
        let imported = match broker.cluster() {
            Some(cluster)
                if !connect.client_id.is_empty()
                    && !broker.is_dead_letter_session(&connect.client_id) =>
            {
                Box::pin(cluster.claim(&connect.client_id, connect.clean_start)).await
            }
            _ => None,
        };
        let conn = match Connection::handshake(connect, &broker, &info, imported) {
            Ok(c) => c,
            Err(refusal) => {
                let (connack, version, why) = *refusal;
                info!(reason = %why, "CONNECT refused");
                metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "connect").increment(1);
                let mut out = BytesMut::new();
                protocol::encode(&Packet::ConnAck(connack), version, &mut out);
                let _ = wr.write_all(&out).await;
                let _ = wr.shutdown().await;
                return;
            }
        };
        tracing::Span::current().record("client_id", &*conn.session.client_id);
        conn.run(rd, wr, buf, broker).await;
    }
    .instrument(span)
    .await
}

/// The helper tasks of a connection and the channels to them, for the cleanup.
struct Tasks {
    ctrl_tx: mpsc::Sender<Control>,
    acks_tx: mpsc::Sender<PendingAck>,
    writer: tokio::task::JoinHandle<()>,
    acker: tokio::task::JoinHandle<()>,
    store_failed: CancellationToken,
}

/// The channels a reader uses, bundled.
struct Io<'a> {
    /// Control packets for the writer, in order.
    ctrl: &'a mpsc::Sender<Control>,
    /// Accepted QoS 1/2 PUBLISHes waiting for the store, for the acker.
    acks: &'a mpsc::Sender<PendingAck>,
    writer_done: &'a CancellationToken,
    store_failed: &'a CancellationToken,
    /// Counts acks so one in LATENCY_SAMPLE_EVERY is timed.
    ack_tick: std::sync::atomic::AtomicU32,
}

/// State of an established connection, owned by its reader.
struct Connection {
    version: ProtocolVersion,
    conn_id: u64,
    session: Arc<Session>,
    keep_alive: Duration,
    will: Option<LastWill>,
    /// Session expiry asked for in CONNECT (v5 DISCONNECT may change it, not from 0).
    expiry_secs: u32,
    kick: oneshot::Receiver<u8>,
    connack: ConnAck,
    /// Inbound topic aliases (v5), at most `topic_alias_maximum`.
    aliases: HashMap<u16, String>,
    client_id: Arc<str>,
    /// Store records the handshake produced, committed before CONNACK.
    records: Vec<Record>,
    /// Sessions the handshake ended (clean start), whose messages become dead letters.
    discarded: Vec<lifecycle::Discarded>,
    /// The authenticated username (or certificate identity), for ACL checks.
    username: Option<String>,
}

impl Connection {
    async fn run<R, W>(
        mut self,
        mut rd: ReadHalf<R>,
        wr: WriteHalf<W>,
        mut buf: BytesMut,
        broker: Arc<Broker>,
    ) where
        R: AsyncRead + Send + 'static,
        W: AsyncWrite + Send + 'static,
        ReadHalf<R>: Unpin,
        WriteHalf<W>: Unpin + Send + 'static,
    {
        metrics::gauge!(metric::CONNECTIONS).increment(1.0);
        // What a restart must see about this session is durable before CONNACK.
        let mut refused = false;
        let records = std::mem::take(&mut self.records);
        if !records.is_empty() {
            if let Err(e) = Box::pin(broker.store.commit(records)).await {
                warn!(error = %e, "session state not stored; refusing the connection");
                self.connack = ConnAck {
                    session_present: false,
                    code: reason::SERVER_UNAVAILABLE,
                    properties: ConnAckProperties::default(),
                };
                refused = true;
            }
        }
        Box::pin(finish_discard(&broker, std::mem::take(&mut self.discarded))).await;
        let (ctrl_tx, ctrl_rx) = mpsc::channel(CONTROL_CAPACITY);
        let writer_done = CancellationToken::new();
        // The CONNACK goes first: the writer drains control packets before the queue.
        let _ = ctrl_tx
            .send(Control::Packet(Box::new(Packet::ConnAck(
                self.connack.clone(),
            ))))
            .await;
        let writer = tokio::spawn(
            run_writer(
                wr,
                WriterCtx {
                    session: Arc::clone(&self.session),
                    conn_id: self.conn_id,
                    version: self.version,
                    broker: Arc::clone(&broker),
                    username: self.username.clone(),
                },
                ctrl_rx,
                writer_done.clone(),
            )
            .in_current_span(),
        );
        let window = usize::from(broker.config.limits.receive_maximum).max(1);
        let (acks_tx, acks_rx) = mpsc::channel(window);
        let store_failed = CancellationToken::new();
        let acker = tokio::spawn(
            run_acker(
                acks_rx,
                ctrl_tx.clone(),
                self.version,
                Arc::clone(&self.session),
                store_failed.clone(),
            )
            .in_current_span(),
        );

        let exit = if refused {
            Exit::Refused {
                code: reason::SERVER_UNAVAILABLE,
                why: "store unavailable".into(),
            }
        } else {
            let io = Io {
                ctrl: &ctrl_tx,
                acks: &acks_tx,
                writer_done: &writer_done,
                store_failed: &store_failed,
                ack_tick: std::sync::atomic::AtomicU32::new(0),
            };
            self.read_loop(&mut rd, &mut buf, &broker, &io).await
        };
        match &exit {
            Exit::Disconnect { .. } => info!("client disconnected"),
            Exit::Lost(why) => info!(reason = %why, "connection lost"),
            Exit::KeepAlive => info!("keepalive expired [MQTT-3.1.2-24]"),
            Exit::Protocol(e) => warn!(error = %e, "protocol error; closing"),
            Exit::Refused { why, .. } => warn!(reason = %why, "closing"),
            Exit::TakenOver => info!("session taken over by a new connection"),
            Exit::Shutdown => debug!("closing for shutdown"),
            Exit::WriterGone => info!("write failed; closing"),
        }
        let tasks = Tasks {
            ctrl_tx,
            acks_tx,
            writer,
            acker,
            store_failed,
        };
        // Boxed: the cleanup's futures would otherwise be part of every connection's
        // task for its whole life.
        Box::pin(self.finish(exit, refused, tasks, &broker)).await;
        metrics::gauge!(metric::CONNECTIONS).decrement(1.0);
    }

    /// After the read loop: flush pending acks, record attempts, detach the session (and
    /// end it or schedule its expiry), publish the will, then close the socket.
    async fn finish(&mut self, exit: Exit, refused: bool, tasks: Tasks, broker: &Arc<Broker>) {
        let Tasks {
            ctrl_tx,
            acks_tx,
            mut writer,
            acker,
            store_failed,
        } = tasks;
        // Acks still waiting for the disk go out before the writer closes.
        drop(acks_tx);
        if !store_failed.is_cancelled() {
            let _ = tokio::time::timeout(WRITER_DRAIN, acker).await;
        }
        let expiry = self.session.expiry_secs();
        if self.session.is_owned_by(self.conn_id) && self.session.is_persisted() {
            // Attempt counts survive the reconnect (and a restart), so a message that
            // crashes its consumer every time is recognised as poison.
            let attempts: Vec<Record> = self
                .session
                .inflight_attempts()
                .into_iter()
                .map(|(message_id, attempts)| Record::Attempt {
                    session: self.client_id.to_string(),
                    message_id,
                    attempts,
                })
                .collect();
            append_records(broker, attempts).await;
        }
        let generation = self.session.detach(self.conn_id, None);
        if exit.publishes_will() {
            if let Some(will) = self.will.take() {
                publish_will(broker, &self.session, will, expiry, generation).await;
            }
        }
        if let Some(generation) = generation {
            end_or_schedule_expiry(broker, &self.session, generation, expiry).await;
        }
        // The socket closes only after the session is detached (and, with expiry 0,
        // gone): a client that reconnects the moment it sees the close must not find
        // the old session still there [MQTT-3.1.2-23].
        let disconnect = match exit.disconnect_code() {
            Some(code) if self.version.is_v5() && !refused => Some(Disconnect {
                reason: code,
                ..Disconnect::default()
            }),
            _ => None,
        };
        let closed = tokio::time::timeout(WRITER_DRAIN, async {
            let _ = ctrl_tx.send(Control::Close(disconnect.map(Box::new))).await;
            drop(ctrl_tx);
            let _ = (&mut writer).await;
        })
        .await;
        if closed.is_err() {
            debug!("writer did not finish in time; aborting it");
            writer.abort();
        }
    }

    async fn read_loop<R: AsyncRead>(
        &mut self,
        rd: &mut ReadHalf<R>,
        buf: &mut BytesMut,
        broker: &Arc<Broker>,
        io: &Io<'_>,
    ) -> Exit
    where
        ReadHalf<R>: Unpin,
    {
        let max_packet = broker.config.limits.max_packet_size as usize;
        // Keepalive: one and a half times the interval without any packet [MQTT-3.1.2-24].
        let grace = self.keep_alive + self.keep_alive / 2;
        let mut deadline = Instant::now() + grace;
        let mut gate = crate::limits::ReadGate::new(&broker.config.limits);
        loop {
            loop {
                match protocol::decode(buf, Some(self.version), max_packet) {
                    Ok(Some(packet)) => {
                        deadline = Instant::now() + grace;
                        // PUBLISH is handled inline (the hot path); the other packets'
                        // handling is boxed so it does not grow every connection's task.
                        let exit = match packet {
                            Packet::Publish(p) => {
                                gate.saw_publish();
                                self.on_publish(p, broker, io).await
                            }
                            other => Box::pin(self.handle(other, broker, io)).await,
                        };
                        if let Some(exit) = exit {
                            return exit;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Exit::Protocol(e),
                }
            }
            // Resource limits (src/limits.rs): the queue budget pauses publishers, the
            // inbound byte rate throttles fast senders. Boxed: only a waiting connection
            // pays for the wait's state.
            let budget = &broker.guards.queue_budget;
            if gate.must_wait(budget) {
                let paused = Instant::now();
                tokio::select! {
                    biased;
                    _ = broker.shutdown.cancelled() => return Exit::Shutdown,
                    _ = &mut self.kick => return Exit::TakenOver,
                    _ = io.writer_done.cancelled() => return Exit::WriterGone,
                    _ = Box::pin(gate.wait(budget)) => {}
                }
                // The broker paused, not the client: not counted against its keepalive.
                deadline += paused.elapsed();
            }
            // An idle connection gives its buffer back: after IDLE_RELEASE without a byte,
            // an empty buffer is freed and the next read allocates again.
            let releasable = buf.is_empty() && buf.capacity() > 0;
            let idle = async {
                if releasable {
                    tokio::time::sleep(IDLE_RELEASE).await
                } else {
                    std::future::pending::<()>().await
                }
            };
            let keepalive = async {
                if grace.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep_until(deadline).await
                }
            };
            tokio::select! {
                biased;
                _ = broker.shutdown.cancelled() => return Exit::Shutdown,
                _ = &mut self.kick => return Exit::TakenOver,
                _ = io.writer_done.cancelled() => return Exit::WriterGone,
                _ = io.store_failed.cancelled() => return Exit::Refused {
                    code: reason::UNSPECIFIED_ERROR,
                    why: "the store failed; a message could not be acknowledged".into(),
                },
                _ = keepalive => return Exit::KeepAlive,
                _ = idle => {
                    *buf = BytesMut::new();
                    continue;
                }
                read = read_some(rd, buf) => match read {
                    Ok(0) => return Exit::Lost("peer closed the connection".into()),
                    Ok(n) => gate.consumed(n),
                    Err(e) => return Exit::Lost(e.to_string()),
                },
            }
        }
    }
}
