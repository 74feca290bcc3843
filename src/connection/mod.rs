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

mod lifecycle;
mod writer;

pub use lifecycle::schedule_expiry;
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

static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

/// A client id for a client that sent none (3.1.1 clean session, or v5).
fn assign_client_id() -> String {
    let n = ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed);
    format!("sluice-{:x}-{n}", now_ms())
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
        let conn = match Connection::handshake(connect, &broker, &info) {
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

enum ConnectFailure {
    /// Answer with this CONNACK, then close.
    Answer {
        connack: Box<ConnAck>,
        version: ProtocolVersion,
        why: String,
    },
    Close(String),
}

/// Reads until one CONNECT is decoded, within the configured time [MQTT-3.1.0-1].
async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    broker: &Broker,
) -> Result<Box<Connect>, ConnectFailure> {
    let limits = &broker.config.limits;
    let deadline = Instant::now() + Duration::from_secs(limits.connect_timeout_secs);
    loop {
        match protocol::decode(buf, None, limits.max_packet_size as usize) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                return Err(ConnectFailure::Close(format!(
                    "[MQTT-3.1.0-1] first packet was {}, not CONNECT",
                    other.name()
                )))
            }
            Ok(None) => {}
            Err(e) if e.reason_code() == reason::UNSUPPORTED_PROTOCOL_VERSION => {
                metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "protocol").increment(1);
                // A 3.1.1-format CONNACK with return code 1 is what every client
                // version understands [MQTT-3.1.2-2].
                return Err(ConnectFailure::Answer {
                    connack: Box::new(ConnAck {
                        session_present: false,
                        code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                        properties: ConnAckProperties::default(),
                    }),
                    version: ProtocolVersion::V3_1_1,
                    why: e.to_string(),
                });
            }
            Err(e) => {
                metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "protocol").increment(1);
                return Err(ConnectFailure::Close(e.to_string()));
            }
        }
        match tokio::time::timeout_at(deadline, read_some(rd, buf)).await {
            Err(_) => {
                metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "timeout").increment(1);
                return Err(ConnectFailure::Close(format!(
                    "no CONNECT within {}s",
                    limits.connect_timeout_secs
                )));
            }
            Ok(Ok(0)) => return Err(ConnectFailure::Close("peer closed".into())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ConnectFailure::Close(e.to_string())),
        }
    }
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

type Refusal = Box<(ConnAck, ProtocolVersion, String)>;

/// Checks who the client is: a certificate identity (when the listener uses it as the
/// username), a username and password against the password file, or anonymous where
/// the listener allows it. Returns the username ACLs will see. The password is never
/// logged.
fn authenticate(
    connect: &Connect,
    broker: &Broker,
    info: &ConnInfo,
) -> Result<Option<String>, Refusal> {
    let v = connect.version;
    let listener = &info.listener.config;
    let fail = |code: u8, why: &str, reason: &'static str| {
        metrics::counter!(metric::AUTH_FAILURES, "reason" => reason).increment(1);
        refuse(v, code, why.to_string())
    };
    if listener.use_identity_as_username {
        return match &info.tls_identity {
            Some(identity) => Ok(Some(identity.clone())),
            None => Err(fail(
                reason::NOT_AUTHORIZED,
                "use_identity_as_username: the client presented no certificate",
                "no_identity",
            )),
        };
    }
    let Some(username) = &connect.username else {
        if listener.anonymous_allowed() {
            return Ok(None);
        }
        return Err(fail(
            reason::NOT_AUTHORIZED,
            "anonymous clients are not allowed on this listener",
            "anonymous",
        ));
    };
    let files = broker.auth_files();
    if let Some(passwords) = &files.passwords {
        let password = connect.password.as_deref().unwrap_or_default();
        if !passwords.verify(username, password) {
            return Err(fail(
                reason::BAD_USER_NAME_OR_PASSWORD,
                &format!("bad username or password for user {username:?}"),
                "password",
            ));
        }
    }
    Ok(Some(username.clone()))
}

fn refuse(version: ProtocolVersion, code: u8, why: impl Into<String>) -> Refusal {
    Box::new((
        ConnAck {
            session_present: false,
            code,
            properties: ConnAckProperties::default(),
        },
        version,
        why.into(),
    ))
}

impl Connection {
    /// Validates CONNECT, attaches (or creates, or takes over) the session, and prepares
    /// the CONNACK.
    fn handshake(
        connect: Box<Connect>,
        broker: &Arc<Broker>,
        info: &ConnInfo,
    ) -> Result<Connection, Refusal> {
        let cfg = &broker.config;
        let limits = &cfg.limits;
        let v = connect.version;
        let mut props = ConnAckProperties::default();

        let mut client_id = connect.client_id.clone();
        if client_id.is_empty() {
            let may_assign = match v {
                ProtocolVersion::V5 => true,
                ProtocolVersion::V3_1_1 => connect.clean_start,
                ProtocolVersion::V3_1 => false,
            };
            if !may_assign {
                return Err(refuse(
                    v,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    "[MQTT-3.1.3-8] empty client id needs clean session",
                ));
            }
            client_id = assign_client_id();
            if v.is_v5() {
                props.assigned_client_identifier = Some(client_id.clone());
            }
        }
        if client_id.len() > limits.max_client_id_len {
            return Err(refuse(
                v,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
                format!(
                    "[MQTT-3.1.3-5] client id of {} bytes is over max_client_id_len {}",
                    client_id.len(),
                    limits.max_client_id_len
                ),
            ));
        }
        let username = authenticate(&connect, broker, info)?;
        let files = broker.auth_files();
        if let Some(will) = &connect.will {
            // A will is a publish made on the client's behalf: the ACL applies to it as it
            // would to the client, and a will it could never send is refused up front.
            if !files.may_write(&client_id, username.as_deref(), &will.topic) {
                metrics::counter!(metric::ACL_DENIED, "access" => "will").increment(1);
                return Err(refuse(
                    v,
                    reason::NOT_AUTHORIZED,
                    format!("will topic {:?} denied by the ACL", will.topic),
                ));
            }
        }
        if broker.is_dead_letter_session(&client_id) {
            // Attaching the dead-letter session means draining it: only a client that may
            // read the dead letters may take it, or the deliveries it may not read would be
            // lost to everyone.
            let filter = format!("{}/#", broker.config.dead_letter.topic_prefix);
            if !files.may_subscribe(&client_id, username.as_deref(), &filter) {
                metrics::counter!(metric::ACL_DENIED, "access" => "dead_letter_session")
                    .increment(1);
                return Err(refuse(
                    v,
                    reason::NOT_AUTHORIZED,
                    format!("the dead-letter session needs read access to {filter}"),
                ));
            }
        }
        if connect.properties.authentication_method.is_some() {
            return Err(refuse(
                v,
                reason::BAD_AUTHENTICATION_METHOD,
                "[MQTT-4.12.0-1] enhanced authentication is not supported",
            ));
        }
        if let Some(will) = &connect.will {
            if let Err(e) = topic::validate_topic_name(&will.topic, limits.max_topic_levels) {
                return Err(refuse(
                    v,
                    reason::TOPIC_NAME_INVALID,
                    format!("will topic: {e}"),
                ));
            }
            if will.topic.starts_with('$') {
                return Err(refuse(
                    v,
                    reason::NOT_AUTHORIZED,
                    "will topics starting with '$' are reserved for the broker",
                ));
            }
        }
        let mut keep_alive = connect.keep_alive;
        if limits.max_keepalive_secs > 0
            && (keep_alive == 0 || keep_alive > limits.max_keepalive_secs)
        {
            if v.is_v5() {
                keep_alive = limits.max_keepalive_secs;
                props.server_keep_alive = Some(keep_alive);
            } else {
                return Err(refuse(
                    v,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                    format!(
                        "keepalive {keep_alive}s is over max_keepalive_secs {}",
                        limits.max_keepalive_secs
                    ),
                ));
            }
        }

        let dead_letter_session = broker.is_dead_letter_session(&client_id);
        let clean_start = connect.clean_start && !dead_letter_session;
        let expiry_secs = if dead_letter_session {
            // The dead-letter session always resumes and never expires, whatever the
            // operator's client asks: draining it must not discard it.
            EXPIRY_NEVER
        } else if v.is_v5() {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if clean_start {
            0
        } else if cfg.session.persistent_session_expiry_secs == 0 {
            EXPIRY_NEVER
        } else {
            cfg.session.persistent_session_expiry_secs
        };
        let link = LinkLimits {
            window: limits
                .max_inflight
                .min(connect.properties.receive_maximum.unwrap_or(u16::MAX)),
            max_packet_size: connect.properties.maximum_packet_size,
        };
        let conn_id = next_connection_id();
        let (kick_tx, kick_rx) = oneshot::channel();
        let client_id: Arc<str> = Arc::from(client_id);
        let (session, present, records, discarded) = attach_session(
            broker,
            &client_id,
            clean_start,
            expiry_secs,
            conn_id,
            kick_tx,
            link,
        );

        if v.is_v5() {
            props.receive_maximum = Some(limits.receive_maximum);
            props.maximum_packet_size = Some(limits.max_packet_size);
            if limits.topic_alias_maximum > 0 {
                props.topic_alias_maximum = Some(limits.topic_alias_maximum);
            }
        }
        info!(
            client_id = %client_id,
            version = v.label(),
            clean_start = clean_start,
            keep_alive,
            session_present = present,
            "client connected"
        );
        Ok(Connection {
            version: v,
            conn_id,
            session,
            keep_alive: Duration::from_secs(u64::from(keep_alive)),
            will: connect.will,
            expiry_secs,
            kick: kick_rx,
            connack: ConnAck {
                session_present: present,
                code: reason::SUCCESS,
                properties: props,
            },
            aliases: HashMap::new(),
            client_id,
            records,
            discarded,
            username,
        })
    }

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
        loop {
            loop {
                match protocol::decode(buf, Some(self.version), max_packet) {
                    Ok(Some(packet)) => {
                        deadline = Instant::now() + grace;
                        // PUBLISH is handled inline (the hot path); the other packets'
                        // handling is boxed so it does not grow every connection's task.
                        let exit = match packet {
                            Packet::Publish(p) => self.on_publish(p, broker, io).await,
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
                    Ok(_) => {}
                    Err(e) => return Exit::Lost(e.to_string()),
                },
            }
        }
    }

    /// Handles one packet; returns why to stop, if it must.
    async fn handle(&mut self, packet: Packet, broker: &Arc<Broker>, io: &Io<'_>) -> Option<Exit> {
        let ctrl = io.ctrl;
        match packet {
            Packet::Publish(p) => return self.on_publish(p, broker, io).await,
            Packet::PubAck(a) => match self.session.puback(a.packet_id) {
                Some(done) if done.durable => broker.ack_durable(&self.session, &done).await,
                Some(_) => {}
                None => debug!(packet_id = a.packet_id, "PUBACK for unknown packet id"),
            },
            Packet::PubRec(a) => {
                let known = self.session.pubrec(a.packet_id);
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                let rel = Ack::new(AckKind::Rel, a.packet_id, code);
                // A PUBREC with an error code ends the flow: no PUBREL (MQTT 5 §4.3.3).
                if a.reason >= 0x80 {
                    if let Some(done) = self.session.pubcomp(a.packet_id) {
                        if done.durable {
                            broker.ack_durable(&self.session, &done).await;
                        }
                    }
                } else if ctrl.send(Control::Ack(rel)).await.is_err() {
                    return Some(Exit::WriterGone);
                }
            }
            Packet::PubComp(a) => match self.session.pubcomp(a.packet_id) {
                Some(done) if done.durable => broker.ack_durable(&self.session, &done).await,
                Some(_) => {}
                None => debug!(packet_id = a.packet_id, "PUBCOMP for unknown packet id"),
            },
            Packet::PubRel(a) => {
                let mut comp = Ack::new(AckKind::Comp, a.packet_id, reason::SUCCESS);
                let mut tickets = Vec::new();
                if !self.session.release_inbound_qos2(a.packet_id) {
                    comp.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                } else if self.session.is_persisted() {
                    // PUBCOMP frees the packet id for the client's next message, so the
                    // release must be durable first: a restart that still remembered
                    // the id would take the next message with that id for a resend and
                    // drop it.
                    let released = Record::Qos2Released {
                        session: self.client_id.to_string(),
                        packet_id: a.packet_id,
                    };
                    match broker.store.submit(vec![released]).await {
                        Ok(t) => tickets.push(t),
                        Err(e) => {
                            return Some(Exit::Refused {
                                code: reason::UNSPECIFIED_ERROR,
                                why: format!("QoS 2 release not stored: {e}"),
                            })
                        }
                    }
                }
                return queue_ack(io, tickets, comp).await;
            }
            Packet::Subscribe(s) => return self.on_subscribe(s, broker, io).await,
            Packet::Unsubscribe(u) => return self.on_unsubscribe(u, broker, io).await,
            Packet::PingReq => {
                if ctrl
                    .send(Control::Packet(Box::new(Packet::PingResp)))
                    .await
                    .is_err()
                {
                    return Some(Exit::WriterGone);
                }
            }
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.session_expiry_interval {
                    if self.expiry_secs == 0 && expiry != 0 {
                        return Some(Exit::Refused {
                            code: reason::PROTOCOL_ERROR,
                            why: "[MQTT-3.14.2-2] session expiry set on DISCONNECT after 0 in CONNECT".into(),
                        });
                    }
                    self.expiry_secs = expiry;
                    self.session.set_expiry_secs(expiry);
                    if self.session.is_persisted() && expiry != 0 {
                        append_records(broker, vec![session_record(&self.session)]).await;
                    }
                }
                return Some(Exit::Disconnect {
                    will: d.reason == reason::DISCONNECT_WITH_WILL,
                });
            }
            Packet::Auth(_) => {
                return Some(Exit::Refused {
                    code: reason::PROTOCOL_ERROR,
                    why: "[MQTT-4.12.0-1] AUTH without an authentication method in CONNECT".into(),
                })
            }
            other => {
                return Some(Exit::Refused {
                    code: reason::PROTOCOL_ERROR,
                    why: format!("[MQTT-2.1.2] a client may not send {}", other.name()),
                })
            }
        }
        None
    }

    async fn on_publish(
        &mut self,
        mut p: Publish,
        broker: &Arc<Broker>,
        io: &Io<'_>,
    ) -> Option<Exit> {
        let limits = &broker.config.limits;
        metric::hot().received(p.qos, p.payload.len());
        if let Some(alias) = p.topic_alias.take() {
            if alias == 0 || alias > limits.topic_alias_maximum {
                return Some(Exit::Refused {
                    code: reason::TOPIC_ALIAS_INVALID,
                    why: format!(
                        "[MQTT-3.3.2-9] topic alias {alias} outside 1..={}",
                        limits.topic_alias_maximum
                    ),
                });
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Some(Exit::Refused {
                            code: reason::PROTOCOL_ERROR,
                            why: format!("topic alias {alias} was never set (MQTT 5 §3.3.2.3.4)"),
                        })
                    }
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if let Err(e) = topic::validate_topic_name(&p.topic, limits.max_topic_levels) {
            return Some(Exit::Refused {
                code: reason::TOPIC_NAME_INVALID,
                why: e.to_string(),
            });
        }
        let mut extra = Vec::new();
        if p.qos == QoS::ExactlyOnce {
            if self.session.is_awaiting_release(p.packet_id) {
                // A resent PUBLISH whose first copy we already routed [MQTT-4.3.3-10].
                let rec = Ack::new(AckKind::Rec, p.packet_id, reason::SUCCESS);
                return queue_ack(io, Vec::new(), rec).await;
            }
            // Checked before the id is remembered, so a refused message's resend is
            // routed rather than mistaken for a duplicate.
            if self.session.inbound_qos2_count() >= usize::from(limits.receive_maximum) {
                return Some(Exit::Refused {
                    code: reason::RECEIVE_MAXIMUM_EXCEEDED,
                    why: format!(
                        "[MQTT-3.3.4-9] more than receive_maximum {} QoS 2 messages unreleased",
                        limits.receive_maximum
                    ),
                });
            }
            self.session.begin_inbound_qos2(p.packet_id);
            if self.session.is_persistent() {
                // Remembered across a restart, so a resent copy is not routed twice.
                extra.push(Record::Qos2Received {
                    session: self.client_id.to_string(),
                    packet_id: p.packet_id,
                });
            }
        }
        let mut code = reason::SUCCESS;
        let mut tickets = Vec::new();
        if p.topic.starts_with('$') {
            // `$` topics are the broker's ($SYS, $DLQ): clients may read, not write.
            warn!(topic = %p.topic, "PUBLISH to a reserved '$' topic refused");
            code = reason::NOT_AUTHORIZED;
        } else if !broker.auth_files().may_write(
            &self.client_id,
            self.username.as_deref(),
            &p.topic,
        ) {
            // v5 learns why from the ack; 3.x gets a normal ack and the message is
            // dropped, as mosquitto does.
            metrics::counter!(metric::ACL_DENIED, "access" => "write").increment(1);
            warn!(topic = %p.topic, "PUBLISH denied by the ACL");
            code = reason::NOT_AUTHORIZED;
        } else {
            let now = now_ms();
            let message = Arc::new(Message {
                id: broker.next_message_id(),
                expires_at_ms: p
                    .properties
                    .message_expiry_interval
                    .map(|s| now + u64::from(s) * 1000),
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: p.properties,
                publisher: Arc::clone(&self.client_id),
                received_at_ms: now,
            });
            match broker.accept(&message, extra).await {
                Ok(accepted) => {
                    if accepted.matched == 0 {
                        code = reason::NO_MATCHING_SUBSCRIBERS;
                    }
                    tickets = accepted.tickets;
                }
                Err(e) => {
                    warn!(error = %e, topic = %message.topic, "message not accepted: store unavailable");
                    if !self.version.is_v5() && p.qos != QoS::AtMostOnce {
                        return Some(Exit::Refused {
                            code: reason::UNSPECIFIED_ERROR,
                            why: "the store failed; the message was not acknowledged".into(),
                        });
                    }
                    code = match e {
                        crate::store::StoreError::DiskFull => reason::QUOTA_EXCEEDED,
                        _ => reason::UNSPECIFIED_ERROR,
                    };
                }
            }
        }
        let kind = match p.qos {
            // A QoS 0 message needs no answer; a retained one is stored without waiting.
            QoS::AtMostOnce => return None,
            QoS::AtLeastOnce => AckKind::Ack,
            QoS::ExactlyOnce => {
                if code >= 0x80 {
                    // Refused: the flow ends here, no PUBREL will come.
                    self.session.release_inbound_qos2(p.packet_id);
                }
                AckKind::Rec
            }
        };
        queue_ack(io, tickets, Ack::new(kind, p.packet_id, code)).await
    }

    /// Commits the session's state if it is persistent (before SUBACK/UNSUBACK).
    async fn persist_session(&self, broker: &Arc<Broker>) -> Option<Exit> {
        if !self.session.is_persistent() {
            return None;
        }
        match broker
            .store
            .commit(vec![session_record(&self.session)])
            .await
        {
            Ok(()) => {
                self.session.set_persisted(true);
                None
            }
            Err(e) => Some(Exit::Refused {
                code: reason::UNSPECIFIED_ERROR,
                why: format!("session state not stored: {e}"),
            }),
        }
    }

    async fn on_subscribe(
        &mut self,
        s: Subscribe,
        broker: &Arc<Broker>,
        io: &Io<'_>,
    ) -> Option<Exit> {
        let ctrl = io.ctrl;
        let limits = &broker.config.limits;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            let shared = f.filter.starts_with("$share/");
            if shared && f.options.no_local && self.version.is_v5() {
                return Some(Exit::Refused {
                    code: reason::PROTOCOL_ERROR,
                    why: "[MQTT-3.8.3-4] no local on a shared subscription".into(),
                });
            }
            let record = SubscriptionRecord {
                options: f.options,
                identifier: s.subscription_identifier,
            };
            if !broker.auth_files().may_subscribe(
                &self.client_id,
                self.username.as_deref(),
                &f.filter,
            ) {
                metrics::counter!(metric::ACL_DENIED, "access" => "subscribe").increment(1);
                warn!(filter = %f.filter, "SUBSCRIBE denied by the ACL");
                reasons.push(reason::NOT_AUTHORIZED);
                continue;
            }
            let existing = self.session.has_subscription(&f.filter);
            if !existing && self.session.subscription_count() >= limits.max_subscriptions_per_client
            {
                warn!(filter = %f.filter, "subscription refused: max_subscriptions_per_client");
                reasons.push(reason::QUOTA_EXCEEDED);
                continue;
            }
            match broker.router.subscribe(
                &self.session,
                &f.filter,
                f.options,
                s.subscription_identifier,
            ) {
                Ok(_) => {}
                Err(e) => {
                    info!(filter = %f.filter, error = %e, "subscription refused");
                    reasons.push(reason::TOPIC_FILTER_INVALID);
                    continue;
                }
            }
            let existed = self.session.add_subscription(&f.filter, record);
            reasons.push(f.options.qos as u8);
            let send_retained = !shared
                && match f.options.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                for m in broker.router.retained_matching(&f.filter) {
                    retained.push(Delivery {
                        qos: m.qos.min(f.options.qos),
                        message: m,
                        retain: true,
                        subscription_ids: s.subscription_identifier.into_iter().collect(),
                        attempts: 0,
                        durable: false,
                    });
                }
            }
        }
        // A granted subscription of a persistent session survives a restart.
        if let Some(exit) = self.persist_session(broker).await {
            return Some(exit);
        }
        let ack = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            reason_string: None,
            user_properties: Vec::new(),
        });
        if ctrl.send(Control::Packet(Box::new(ack))).await.is_err() {
            return Some(Exit::WriterGone);
        }
        if !retained.is_empty() && ctrl.send(Control::Enqueue(retained)).await.is_err() {
            return Some(Exit::WriterGone);
        }
        None
    }

    async fn on_unsubscribe(
        &mut self,
        u: Unsubscribe,
        broker: &Arc<Broker>,
        io: &Io<'_>,
    ) -> Option<Exit> {
        let ctrl = io.ctrl;
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let had = self.session.remove_subscription(f);
            broker.router.unsubscribe(&self.session.client_id, f);
            reasons.push(if had {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        if let Some(exit) = self.persist_session(broker).await {
            return Some(exit);
        }
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            reason_string: None,
            user_properties: Vec::new(),
        });
        ctrl.send(Control::Packet(Box::new(ack)))
            .await
            .err()
            .map(|_| Exit::WriterGone)
    }
}

/// Hands an ack to the acker, which sends it once `ticket` (if any) is durable, in the
/// order PUBLISHes arrived.
async fn queue_ack(
    io: &Io<'_>,
    tickets: Vec<crate::store::CommitTicket>,
    ack: Ack,
) -> Option<Exit> {
    // One ack in LATENCY_SAMPLE_EVERY carries its start time for the latency histogram.
    let sampled = io
        .ack_tick
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(metric::LATENCY_SAMPLE_EVERY);
    io.acks
        .send(PendingAck {
            tickets,
            ack,
            received: sampled.then(std::time::Instant::now),
        })
        .await
        .err()
        .map(|_| Exit::WriterGone)
}
