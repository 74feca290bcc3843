//! One client connection: handshake, reading, writing, keepalive and shutdown.
//!
//! Owns the socket, its read and write buffers, the keepalive deadline, inbound topic
//! aliases and the will. Everything runs in the one task that calls [`serve`]: it reads
//! and handles packets, encodes its answers and the session's deliveries into
//! [`writer::Outbound`], and writes them, all from one `select!` that also listens for
//! the store's commits, the kick of a takeover, keepalive and shutdown. One task and no
//! channels keep an idle connection small (see README, Performance); rare work (the
//! handshake's store commit, non-PUBLISH packets, the cleanup) is boxed so its state is
//! not part of every connection's future.

use crate::broker::lifecycle::{
    append_records, attach_session, dead_letter_remains, end_or_schedule_expiry, publish_will,
    session_record,
};
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
    next_connection_id, ClientInfo, LinkLimits, Session, SubscriptionRecord, EXPIRY_NEVER,
};
use crate::store::Record;
use bytes::{Buf, BytesMut};
use handlers::PublishNext;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use writer::{front_ticket, Outbound};

mod handlers;
mod handshake;

use handshake::{read_connect, ConnectFailure};
mod writer;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// Read buffer to allocate when bytes arrive on a connection that holds none.
const READ_BUFFER: usize = 4 * 1024;
/// What a connection without a buffer reads into first (on the stack of `poll`, not in
/// the connection's future); also the read size below which a connection counts as
/// quiet and gives its buffer back when the socket has nothing more.
const SMALL_READ: usize = 512;

/// Reads what the socket has into `buf`. A connection that holds no buffer reads into a
/// small array on the stack first and allocates only once bytes exist; a quiet one
/// (`release`) frees its empty buffer when the socket has nothing, so a waiting
/// connection holds no read buffer. A busy one keeps it between reads.
fn poll_read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    release: bool,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() == 0 {
        let mut first = [0u8; SMALL_READ];
        let mut rb = ReadBuf::new(&mut first);
        ready!(Pin::new(rd).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        buf.reserve(READ_BUFFER.max(n));
        buf.extend_from_slice(rb.filled());
        return Poll::Ready(Ok(n));
    }
    if buf.capacity() - buf.len() < SMALL_READ {
        buf.reserve(READ_BUFFER);
    }
    let polled = tokio_util::io::poll_read_buf(Pin::new(rd), cx, buf);
    if polled.is_pending() && release && buf.is_empty() {
        *buf = BytesMut::new();
    }
    polled
}

/// [`poll_read_some`] as a future, keeping the buffer (the handshake's reads).
async fn read_some<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(rd, buf, false, cx)).await
}

/// How long the cleanup waits for pending acks, and then for the last bytes to be
/// written, before it gives up on a client.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// How long a connection that sent a DISCONNECT keeps reading (and discarding) after
/// shutting down its write side, waiting for the client to close. Closing a socket
/// with unread input makes the kernel send a reset, which can destroy the DISCONNECT
/// before the client reads it.
const DISCONNECT_LINGER: Duration = Duration::from_secs(1);

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
    /// The session's kick fired: a takeover (0x8E) or an operator's disconnect (0x98).
    Kicked(u8),
    Shutdown,
    /// A write to the client failed.
    WriterGone,
    /// The store failed to make a message durable and the client cannot be told (3.x,
    /// or a PUBCOMP): it gets no ack and the connection closes.
    StoreFailed,
    /// Even without its optional properties the CONNACK exceeds the client's Maximum
    /// Packet Size: the connection closes without one [MQTT-3.1.2-24], and without the
    /// will (the client was never told it is connected).
    ConnAckTooLarge,
}

impl Exit {
    fn publishes_will(&self) -> bool {
        match self {
            Exit::Disconnect { will } => *will,
            Exit::ConnAckTooLarge => false,
            _ => true,
        }
    }

    fn disconnect_code(&self) -> Option<u8> {
        match self {
            Exit::Disconnect { .. } | Exit::Lost(_) | Exit::WriterGone | Exit::ConnAckTooLarge => {
                None
            }
            Exit::KeepAlive => Some(reason::KEEP_ALIVE_TIMEOUT),
            Exit::Protocol(e) => Some(e.reason_code()),
            Exit::Refused { code, .. } => Some(*code),
            Exit::Kicked(code) => Some(*code),
            Exit::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            Exit::StoreFailed => Some(reason::UNSPECIFIED_ERROR),
        }
    }
}

/// Where a connection came in, and who TLS says the client is.
#[derive(Debug)]
pub struct ConnInfo {
    pub listener: Arc<Listener>,
    pub peer: SocketAddr,
    /// CN (or first DNS name) of a verified client certificate.
    pub tls_identity: Option<String>,
}

/// Serves one accepted connection until it closes. `info` is boxed: it is needed only
/// until CONNECT is answered, and an argument is part of the connection's future for its
/// whole life.
pub async fn serve<S>(stream: S, broker: Arc<Broker>, info: Box<ConnInfo>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let span = tracing::info_span!("conn", peer = %info.peer, client_id = tracing::field::Empty);
    // Boxed: the handshake's state is only needed until CONNECT is answered, and would
    // otherwise be part of every connection's future for its whole life.
    let accepted = Box::pin(accept_connect(stream, &broker, &info).instrument(span.clone())).await;
    let by_listener =
        metrics::gauge!(metric::LISTENER_CONNECTIONS, "listener" => info.listener.config.scheme());
    drop(info);
    if let Some((conn, rd, wr, buf)) = accepted {
        by_listener.increment(1.0);
        conn.run(rd, wr, buf, broker).instrument(span).await;
        by_listener.decrement(1.0);
    }
}

/// The connection's halves and what it has read but not yet handled.
type Accepted<S> = (Box<Connection>, ReadHalf<S>, WriteHalf<S>, BytesMut);

/// Reads CONNECT and makes the connection, or answers the refusal and closes.
async fn accept_connect<S>(stream: S, broker: &Arc<Broker>, info: &ConnInfo) -> Option<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    metrics::counter!(metric::CONNECTIONS_ACCEPTED).increment(1);
    let Ok(pending) = Arc::clone(&broker.pending_connect_permits).try_acquire_owned() else {
        metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "pending_limit").increment(1);
        warn!("connection closed: max_pending_connects connections are waiting to CONNECT");
        return None;
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    // The read buffer is allocated when bytes arrive (see `poll_read_some`), so a
    // connection that is only waiting costs no buffer.
    let mut buf = BytesMut::new();
    // Reading CONNECT and checking its password share the connect timeout.
    let deadline = Instant::now() + Duration::from_secs(broker.config.limits.connect_timeout_secs);
    let connect = read_connect(&mut rd, &mut buf, broker, deadline).await;
    let refusal = match connect {
        Ok(connect) => {
            // A connection waiting for its password check still counts as pending, so a
            // flood of CONNECTs queues at most max_pending_connects checks.
            let authorized = Connection::authorize(connect, broker, info, deadline).await;
            drop(pending);
            match authorized {
                Ok(authorized) => {
                    // In a cluster, a session owned by another node comes here first (its
                    // client there is disconnected with 0x8E) [MQTT-3.1.4-3]. Only for a
                    // CONNECT that will be accepted: a client that fails authentication must
                    // not be able to end someone else's session by naming its client id.
                    let imported = match broker.cluster() {
                        Some(cluster)
                            if !authorized.assigned
                                && !broker.is_dead_letter_session(&authorized.client_id) =>
                        {
                            Box::pin(
                                cluster
                                    .claim(&authorized.client_id, authorized.connect().clean_start),
                            )
                            .await
                        }
                        _ => None,
                    };
                    let conn = Connection::attach(authorized, broker, info, imported);
                    tracing::Span::current().record("client_id", &*conn.session.client_id);
                    // On the heap: the connection's future then holds a pointer to it.
                    return Some((Box::new(conn), rd, wr, buf));
                }
                Err(refusal) => {
                    metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "connect")
                        .increment(1);
                    let (connack, version, why) = *refusal;
                    (Box::new(connack), version, why)
                }
            }
        }
        Err(ConnectFailure::Answer {
            connack,
            version,
            why,
        }) => (connack, version, why),
        Err(ConnectFailure::Close(why)) => {
            info!(reason = %why, "connection closed before CONNECT completed");
            return None;
        }
    };
    let (connack, version, why) = refusal;
    info!(reason = %why, "CONNECT refused");
    let mut out = BytesMut::new();
    protocol::encode(&Packet::ConnAck(*connack), version, &mut out);
    let _ = wr.write_all(&out).await;
    let _ = wr.shutdown().await;
    None
}

/// State of an established connection, owned by its reader.
struct Connection {
    version: ProtocolVersion,
    conn_id: u64,
    session: Arc<Session>,
    keep_alive: Duration,
    /// Boxed, like `connack`: few connections have one, and every connection's state
    /// would otherwise carry its space.
    will: Option<Box<LastWill>>,
    /// Session expiry asked for in CONNECT (v5 DISCONNECT may change it, not from 0).
    expiry_secs: u32,
    kick: oneshot::Receiver<u8>,
    /// Sent once, first.
    connack: Box<ConnAck>,
    /// Inbound topic aliases (v5), at most `topic_alias_maximum`.
    aliases: HashMap<u16, String>,
    client_id: Arc<str>,
    /// Store records the handshake produced, committed before CONNACK.
    records: Vec<Record>,
    /// Sessions the handshake ended (clean start), whose messages become dead letters.
    discarded: Vec<crate::broker::lifecycle::Discarded>,
    /// The authenticated username (or certificate identity), for ACL checks.
    username: Option<String>,
}

impl Connection {
    async fn run<R, W>(
        mut self: Box<Self>,
        mut rd: ReadHalf<R>,
        mut wr: WriteHalf<W>,
        mut buf: BytesMut,
        broker: Arc<Broker>,
    ) where
        R: AsyncRead + Send + 'static,
        W: AsyncWrite + Send + 'static,
        ReadHalf<R>: Unpin,
        WriteHalf<W>: Unpin,
    {
        metrics::gauge!(metric::CONNECTIONS).increment(1.0);
        let window = usize::from(broker.config.limits.receive_maximum);
        let mut ob = Outbound::new(self.version, window);
        // Boxed: the commit's future is only needed once per connection.
        let refused = Box::pin(self.commit_handshake(&broker)).await;
        // The CONNACK goes first, if it fits the client's Maximum Packet Size.
        let mut connack = (*self.connack).clone();
        let fits = match self.session.max_packet_size() {
            Some(max) if self.version.is_v5() => {
                protocol::fit_connack(&mut connack, self.version, max as usize)
            }
            _ => true,
        };
        if fits {
            ob.packet(&Packet::ConnAck(connack));
        }
        let exit = if !fits {
            Exit::ConnAckTooLarge
        } else if refused {
            Exit::Refused {
                code: reason::SERVER_UNAVAILABLE,
                why: "store unavailable".into(),
            }
        } else {
            self.read_loop(&mut rd, &mut wr, &mut buf, &broker, &mut ob)
                .await
        };
        drop(buf);
        match &exit {
            Exit::Disconnect { .. } => info!("client disconnected"),
            Exit::Lost(why) => info!(reason = %why, "connection lost"),
            Exit::KeepAlive => info!("keepalive expired [MQTT-3.1.2-24]"),
            Exit::Protocol(e) => warn!(error = %e, "protocol error; closing"),
            Exit::Refused { why, .. } => warn!(reason = %why, "closing"),
            Exit::Kicked(reason::SESSION_TAKEN_OVER) => {
                info!("session taken over by a new connection")
            }
            Exit::Kicked(code) => info!(reason = code, "disconnected by the broker"),
            Exit::Shutdown => debug!("closing for shutdown"),
            Exit::WriterGone => info!("write failed; closing"),
            Exit::StoreFailed => {
                warn!("the store failed; a message could not be acknowledged; closing")
            }
            Exit::ConnAckTooLarge => warn!(
                "[MQTT-3.1.2-24] the CONNACK exceeds the client's Maximum Packet Size; \
                 closing without it"
            ),
        }
        // Boxed: the cleanup's futures would otherwise be part of every connection's
        // task for its whole life.
        Box::pin(self.finish(exit, refused, rd, wr, ob, &broker)).await;
        metrics::gauge!(metric::CONNECTIONS).decrement(1.0);
    }

    /// Makes what a restart must see about this session durable before CONNACK, and
    /// dead-letters what the sessions a clean start ended still held. Returns true when
    /// the store failed and the connection is refused.
    async fn commit_handshake(&mut self, broker: &Arc<Broker>) -> bool {
        let mut refused = false;
        // What the sessions a clean start ended still held becomes durable dead letters
        // first; their removal goes in the same batch as the new session's record.
        let mut records = dead_letter_remains(broker, std::mem::take(&mut self.discarded)).await;
        records.append(&mut self.records);
        if !records.is_empty() {
            if let Err(e) = broker.store.commit(records).await {
                warn!(error = %e, "session state not stored; refusing the connection");
                *self.connack = ConnAck {
                    session_present: false,
                    code: reason::SERVER_UNAVAILABLE,
                    properties: ConnAckProperties::default(),
                };
                refused = true;
            }
        }
        refused
    }

    /// After the read loop: send the acks still waiting for the disk, record attempts,
    /// detach the session (and end it or schedule its expiry), publish the will, then
    /// flush and close the socket (after a DISCONNECT, once the client closed too or
    /// [`DISCONNECT_LINGER`] passed).
    async fn finish<R, W>(
        &mut self,
        exit: Exit,
        refused: bool,
        mut rd: ReadHalf<R>,
        mut wr: WriteHalf<W>,
        mut ob: Outbound,
        broker: &Arc<Broker>,
    ) where
        R: AsyncRead,
        W: AsyncWrite,
        ReadHalf<R>: Unpin,
        WriteHalf<W>: Unpin,
    {
        // Acks still waiting for the disk go out before the socket closes.
        if !matches!(exit, Exit::StoreFailed) {
            let drained = tokio::time::timeout(WRITER_DRAIN, async {
                while ob.waits_for_store() {
                    let result = front_ticket(&mut ob.acks).await;
                    if ob.ticket_done(result, &self.session).is_err() {
                        return;
                    }
                }
                let _ = ob.settle(&self.session);
            })
            .await;
            if drained.is_err() {
                debug!("acks still waiting for the store after the drain time; not sent");
            }
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
                publish_will(broker, &self.session, *will, expiry, generation).await;
            }
        }
        if let Some(generation) = generation {
            end_or_schedule_expiry(broker, &self.session, generation, expiry).await;
        }
        // The socket closes only after the session is detached (and, with expiry 0,
        // gone): a client that reconnects the moment it sees the close must not find
        // the old session still there [MQTT-3.1.2-23].
        let mut disconnect_sent = false;
        if let Some(code) = exit.disconnect_code() {
            if self.version.is_v5() && !refused {
                ob.packet(&Packet::Disconnect(Disconnect {
                    reason: code,
                    ..Disconnect::default()
                }));
                disconnect_sent = true;
            }
        }
        let closed = tokio::time::timeout(WRITER_DRAIN, async {
            if !matches!(exit, Exit::WriterGone) && !ob.out.is_empty() {
                let _ = wr.write_all(&ob.out).await;
            }
            let _ = wr.shutdown().await;
        })
        .await;
        if closed.is_err() {
            debug!("client did not take the last bytes in time; closing anyway");
        } else if disconnect_sent {
            // The write side is shut: the client reads the DISCONNECT, then the end of
            // the stream. What it still sends is read and discarded until it closes, so
            // that closing this socket does not reset the connection under the
            // DISCONNECT it has not read yet.
            let _ = tokio::time::timeout(DISCONNECT_LINGER, async {
                let mut discard = [0u8; 1024];
                while let Ok(n) = rd.read(&mut discard).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Decodes the next packet in `buf` and does for a PUBLISH what needs no waiting.
    /// Synchronous, so the decoded packet is never part of the connection's future.
    fn next_packet(
        &mut self,
        buf: &mut BytesMut,
        max_packet: usize,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Result<Option<PublishNext>, ProtocolError> {
        Ok(
            match protocol::decode(buf, Some(self.version), max_packet)? {
                None => None,
                Some(Packet::Publish(p)) => Some(self.on_publish(p, broker, ob)),
                Some(other) => Some(PublishNext::Other(Box::new(other))),
            },
        )
    }

    /// Reads, handles and answers packets until the connection must end.
    async fn read_loop<R: AsyncRead, W: AsyncWrite>(
        &mut self,
        rd: &mut ReadHalf<R>,
        wr: &mut WriteHalf<W>,
        buf: &mut BytesMut,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Exit
    where
        ReadHalf<R>: Unpin,
        WriteHalf<W>: Unpin,
    {
        let max_packet = broker.config.limits.max_packet_size as usize;
        // Keepalive: one and a half times the interval without any packet [MQTT-3.1.2-24].
        let grace = self.keep_alive + self.keep_alive / 2;
        let mut deadline = Instant::now() + grace;
        // A quiet connection (its last read was small) frees its read buffer while it
        // waits; a busy one keeps it.
        let mut quiet = true;
        let mut gate = crate::limits::ReadGate::new(&broker.config.limits);
        loop {
            // Packets already read, as long as their answers have room.
            loop {
                if !ob.has_room() {
                    if let Err(exit) = ob.settle(&self.session) {
                        return exit;
                    }
                    if !ob.has_room() {
                        break;
                    }
                }
                // PUBLISH is handled inline (the hot path); the other packets' handling
                // is boxed so it does not grow every connection's task.
                let exit = match self.next_packet(buf, max_packet, broker, ob) {
                    Ok(Some(next)) => {
                        deadline = Instant::now() + grace;
                        if !matches!(next, PublishNext::Other(_)) {
                            gate.saw_publish();
                        }
                        match next {
                            PublishNext::Done(exit) => exit,
                            PublishNext::Route(r) => self.route(r, broker, ob).await,
                            PublishNext::Other(packet) => {
                                Box::pin(self.handle(*packet, broker, ob)).await
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Exit::Protocol(e),
                };
                if let Some(exit) = exit {
                    return exit;
                }
            }
            if let Err(exit) = ob.settle(&self.session) {
                return exit;
            }
            if ob.wants_deliveries() && ob.more_queued() {
                self.fill(ob, broker).await;
            }
            ob.release_if_idle();
            // Resource limits (src/limits.rs): the queue budget pauses publishers, the
            // inbound byte rate throttles fast senders. A paused connection stops reading
            // but still writes (its deliveries and acks drain queues); the broker paused,
            // not the client, so the pause does not count against its keepalive.
            let budget = &broker.guards.queue_budget;
            let gated = gate.must_wait(budget);
            let paused = gated.then(Instant::now);
            let may_read = ob.has_room() && !gated;
            let may_write = !ob.out.is_empty();
            let waits_for_store = ob.waits_for_store();
            let wants_deliveries = ob.wants_deliveries();
            // Boxed when it runs: only a waiting connection pays for the wait's state.
            let ungated = async { Box::pin(gate.wait(budget)).await };
            let keepalive = async {
                if grace.is_zero() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep_until(deadline).await
                }
            };
            let release = quiet;
            let read = std::future::poll_fn(|cx| poll_read_some(rd, buf, release, cx));
            tokio::select! {
                biased;
                _ = broker.shutdown.cancelled() => return Exit::Shutdown,
                code = &mut self.kick => {
                    return Exit::Kicked(code.unwrap_or(reason::SESSION_TAKEN_OVER))
                }
                _ = keepalive, if !gated => return Exit::KeepAlive,
                _ = ungated, if gated => {
                    if let Some(paused) = paused {
                        deadline += paused.elapsed();
                    }
                }
                result = front_ticket(&mut ob.acks), if waits_for_store => {
                    if let Err(exit) = ob.ticket_done(result, &self.session) {
                        return exit;
                    }
                }
                written = wr.write(&ob.out), if may_write => match written {
                    Ok(0) => return Exit::WriterGone,
                    Ok(n) => ob.out.advance(n),
                    Err(e) => {
                        debug!(error = %e, "write failed");
                        return Exit::WriterGone;
                    }
                },
                _ = self.session.notified(), if wants_deliveries => ob.notified(),
                read = read, if may_read => match read {
                    Ok(0) => return Exit::Lost("peer closed the connection".into()),
                    Ok(n) => {
                        quiet = n < SMALL_READ;
                        gate.consumed(n);
                    }
                    Err(e) => return Exit::Lost(e.to_string()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// Every connection's task is one allocation of its future's size, for as long as
    /// the connection lives: most of what an idle connection costs (README,
    /// Performance). A rare path awaited inline, or a big value held across an await,
    /// grows it for every connection; box it instead.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        let broker = Broker::open(config).expect("broker opens on an empty dir");
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("bound address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = socket.accept().await.expect("accept");
        let listener = Arc::new(
            Listener::new(crate::config::ListenerConfig::tcp(addr)).expect("tcp listener"),
        );
        let permit = Arc::clone(&broker.connection_permits)
            .try_acquire_owned()
            .expect("a free connection slot");
        let task =
            crate::listener::serve_accepted(stream, peer, listener, Arc::clone(&broker), permit);
        let size = std::mem::size_of_val(&task);
        // 1,568 B in a release build when this was written (5,216 B plus a writer and
        // an acker task before).
        assert!(size <= 2048, "a connection's task future is {size} B");
    }
}
