//! The handshake: reading CONNECT within its time limit, validating it, authenticating the
//! client, and attaching its session, up to the CONNACK the reader then sends. Everything
//! that can refuse a CONNECT without looking at sessions ([`Connection::authorize`]) comes
//! before the session is attached ([`Connection::attach`]), and the caller claims a
//! session from another node only in between, for a CONNECT that will be accepted.

use super::*;
use crate::auth::PasswordCheck;

static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

/// A client id for a client that sent none (3.1.1 clean session, or v5).
fn assign_client_id() -> String {
    let n = ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed);
    format!("sluice-{:x}-{n}", now_ms())
}

pub(super) enum ConnectFailure {
    /// Answer with this CONNACK, then close.
    Answer {
        connack: Box<ConnAck>,
        version: ProtocolVersion,
        why: String,
    },
    Close(String),
}

/// Reads until one CONNECT is decoded, by `deadline` (the configured connect timeout)
/// [MQTT-3.1.0-1].
pub(super) async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    broker: &Broker,
    deadline: Instant,
) -> Result<Box<Connect>, ConnectFailure> {
    let limits = &broker.config.limits;
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

type Refusal = Box<(ConnAck, ProtocolVersion, String)>;

/// Checks who the client is: a certificate identity (when the listener uses it as the
/// username), a username and password against the password file, or anonymous where
/// the listener allows it. Returns the username ACLs will see. The password is never
/// logged. A password is hashed on the bounded hashing pool (src/auth/check.rs); a client
/// still waiting for a slot at `deadline` is refused as busy.
async fn authenticate(
    connect: &Connect,
    broker: &Broker,
    info: &ConnInfo,
    deadline: Instant,
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
    if files.passwords.is_some() {
        let password = connect.password.as_deref().unwrap_or_default();
        let check = broker.password_checks.verify(&files, username, password);
        match tokio::time::timeout_at(deadline, check).await {
            Ok(PasswordCheck::Valid) => {}
            Ok(PasswordCheck::Invalid) => {
                return Err(fail(
                    reason::BAD_USER_NAME_OR_PASSWORD,
                    &format!("bad username or password for user {username:?}"),
                    "password",
                ))
            }
            Err(_) => {
                metrics::counter!(metric::PASSWORD_CHECKS, "result" => "busy").increment(1);
                // 0x89 Server busy (MQTT 5 3.2.2.2); a 3.1.1 client gets 3, Server unavailable.
                return Err(refuse(
                    v,
                    reason::SERVER_BUSY,
                    format!("no password check slot for user {username:?} in time"),
                ));
            }
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

/// A CONNECT that will be accepted: validated, its client authenticated and its will
/// authorized, with what attaching its session needs. Nothing about sessions has been
/// touched to make one, so a refusal before this point costs no session state, no store
/// write and no cluster round trip.
pub(super) struct Authorized {
    connect: Box<Connect>,
    /// The client's id, or the one assigned to it when it sent none.
    pub(super) client_id: String,
    /// Whether `client_id` was assigned here (such a session is new everywhere).
    pub(super) assigned: bool,
    username: Option<String>,
    keep_alive: u16,
    clean_start: bool,
    expiry_secs: u32,
    link: LinkLimits,
    props: ConnAckProperties,
}

impl Authorized {
    pub(super) fn connect(&self) -> &Connect {
        &self.connect
    }
}

impl Connection {
    /// Validates CONNECT and authenticates and authorizes its client: every refusal
    /// that does not depend on session state is decided here, before the session is
    /// looked at (and, in a cluster, before it is claimed from another node). Waits for
    /// a password check on the bounded hashing pool, at most until `deadline`.
    pub(super) async fn authorize(
        connect: Box<Connect>,
        broker: &Arc<Broker>,
        info: &ConnInfo,
        deadline: Instant,
    ) -> Result<Authorized, Refusal> {
        let cfg = &broker.config;
        let limits = &cfg.limits;
        let v = connect.version;
        let mut props = ConnAckProperties::default();

        let mut client_id = connect.client_id.clone();
        let assigned = client_id.is_empty();
        if assigned {
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
        let username = authenticate(&connect, broker, info, deadline).await?;
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
        Ok(Authorized {
            connect,
            client_id,
            assigned,
            username,
            keep_alive,
            clean_start,
            expiry_secs,
            link,
            props,
        })
    }

    /// Attaches (or creates, or takes over) the session of an authorized CONNECT and
    /// prepares the CONNACK. `imported` is the session another node handed over.
    pub(super) fn attach(
        authorized: Authorized,
        broker: &Arc<Broker>,
        info: &ConnInfo,
        imported: Option<crate::session::persist::PersistedSession>,
    ) -> Connection {
        let Authorized {
            connect,
            client_id,
            assigned: _,
            username,
            keep_alive,
            clean_start,
            expiry_secs,
            link,
            mut props,
        } = authorized;
        let limits = &broker.config.limits;
        let v = connect.version;
        let conn_id = next_connection_id();
        let (kick_tx, kick_rx) = oneshot::channel();
        let client_id: Arc<str> = Arc::from(client_id);
        let (session, mut present, mut records, discarded) = attach_session(
            broker,
            &client_id,
            clean_start,
            expiry_secs,
            conn_id,
            kick_tx,
            link,
        );
        session.set_client(
            conn_id,
            ClientInfo {
                username: username.clone(),
                peer: info.peer,
                listener: info.listener.config.scheme(),
                protocol: v.label(),
                connected_at_ms: crate::message::now_ms(),
                keep_alive_secs: keep_alive,
            },
        );
        if let Some(state) = imported.filter(|_| !present && !clean_start) {
            // The session another node handed over: its subscriptions continue here and
            // its queued messages follow through this node's inbox.
            for (filter, record) in state.subscriptions {
                if broker
                    .router
                    .subscribe(&session, &filter, record.options, record.identifier)
                    .is_ok()
                {
                    session.add_subscription(&filter, record);
                }
            }
            if session.is_persistent() {
                records.push(session_record(&session));
            }
            present = true;
        }

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
        Connection {
            version: v,
            conn_id,
            session,
            keep_alive: Duration::from_secs(u64::from(keep_alive)),
            will: connect.will.map(Box::new),
            expiry_secs,
            kick: kick_rx,
            connack: Box::new(ConnAck {
                session_present: present,
                code: reason::SUCCESS,
                properties: props,
            }),
            aliases: HashMap::new(),
            client_id,
            records,
            discarded,
            username,
        }
    }
}
