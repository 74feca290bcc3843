//! The parsed, validated configuration tree.
//!
//! Owns nothing at run time: `main` loads a [`Config`] (from the embedded defaults, a
//! TOML file, and command-line overrides), calls [`Config::validate`], and hands it to the
//! broker. Every option is documented with its default in `config/sluice.toml`, which is
//! embedded here so `sluice config` prints it and a test keeps it equal to `Default`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The commented default configuration file, printed by `sluice config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/sluice.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub shutdown_grace_secs: u64,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    pub session: SessionConfig,
    pub store: StoreSettings,
    pub dead_letter: DeadLetterConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub delayed: DelayedConfig,
    /// `[[priority]]`: topic filters whose messages jump a session's queue.
    #[serde(rename = "priority")]
    pub priorities: Vec<PriorityConfig>,
}

/// `[delayed]`: `$delayed/<seconds>/<topic>` publishes (EMQX's convention).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayedConfig {
    pub enabled: bool,
    /// Longest delay accepted. Default 7 days: long enough for scheduled commands and
    /// retries, short enough that a mistyped delay is refused rather than parked for
    /// years.
    pub max_delay_secs: u32,
    /// Delayed messages waiting at once. Each waits in memory until due (and on disk at
    /// QoS ≥ 1), so this bounds the memory they take: 100,000 messages of 200 bytes are
    /// about 50 MB.
    pub max_messages: usize,
}

impl Default for DelayedConfig {
    fn default() -> Self {
        DelayedConfig {
            enabled: true,
            max_delay_secs: 7 * 24 * 3600,
            max_messages: 100_000,
        }
    }
}

/// Whether `name` can be one NATS token (node names, the subject prefix's parts).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Highest `[[priority]]` level.
pub const MAX_PRIORITY: u8 = 9;

/// One `[[priority]]` table: messages on topics matching `filter` are queued at `level`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorityConfig {
    pub filter: String,
    /// 0 (default for every other topic) to 9 (drained first).
    pub level: u8,
}

/// `[cluster]`: several sluice nodes acting as one broker through a NATS cluster. Off by
/// default; when off, sluice never touches NATS.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// This node's name, unique in the cluster: one NATS token (`[A-Za-z0-9_-]`).
    pub node: String,
    /// NATS servers to connect to (any of them; the client fails over between them).
    pub nats_urls: Vec<String>,
    /// First token of every subject and name sluice uses on NATS, so several sluice
    /// clusters can share one NATS.
    pub subject_prefix: String,
    /// NATS credentials: user and password, a token, or a `.creds` file.
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    pub nats_token: Option<String>,
    pub nats_creds_file: Option<PathBuf>,
    /// PEM CA bundle to verify the NATS servers with; setting it requires TLS.
    pub nats_tls_ca_file: Option<PathBuf>,
    /// JetStream replicas of sluice's stream and buckets (3 on a 3-server NATS cluster).
    pub replicas: usize,
    /// How long a PUBACK waits for another node's queue (JetStream) to take a message
    /// before the publish fails (v5 0x80; 3.x: the connection closes, unacknowledged).
    pub forward_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node: String::new(),
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            subject_prefix: "sluice".into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds_file: None,
            nats_tls_ca_file: None,
            replicas: 1,
            forward_timeout_ms: 5000,
        }
    }
}

/// Which end of a full queue spills to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spill {
    Oldest,
    Newest,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    pub topic_prefix: String,
    pub client_id: String,
    pub max_messages: usize,
    pub max_bytes: usize,
    pub no_subscribers: bool,
    pub max_delivery_attempts: u32,
    pub queue_full_spill: Spill,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            topic_prefix: "$DLQ".into(),
            client_id: "sluice-dlq".into(),
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
            no_subscribers: true,
            max_delivery_attempts: 5,
            queue_full_spill: Spill::Oldest,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
    Tls,
    /// MQTT over WebSocket (MQTT 5 §6, 3.1.1 §6).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// Whether the listener speaks TLS first (`tls`, `wss`).
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether MQTT travels in WebSocket messages (`ws`, `wss`).
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// The WebSocket path when a `ws`/`wss` listener sets none.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    #[serde(default = "default_listener_kind")]
    pub kind: ListenerKind,
    /// Anonymous clients (no username, no certificate identity) may connect. Default:
    /// allowed on loopback binds only (mosquitto 2.x's secure default).
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// TLS: PEM certificate chain.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// TLS: PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// TLS: PEM CA bundle for client certificates; enables mutual TLS.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// TLS: refuse clients without a certificate signed by `client_ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
    /// TLS: the client certificate's CN (or first DNS SAN) becomes the username.
    #[serde(default)]
    pub use_identity_as_username: bool,
    /// TLS: PEM certificate revocation lists for client certificates.
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
    /// Everything before MQTT (PROXY header, TLS handshake, WebSocket upgrade) not
    /// finished within this many seconds is cut off.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// ws/wss: the HTTP path of the upgrade request (default `/mqtt`).
    #[serde(default)]
    pub path: Option<String>,
    /// ws/wss: browser origins allowed to connect (`Origin` header, e.g.
    /// `https://dash.example.com`). Empty: every origin. A request without `Origin` (not
    /// a browser) is always allowed.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Every connection starts with a PROXY protocol v1 or v2 header (from a load
    /// balancer); its source address is the client's. Connections without one are closed.
    #[serde(default)]
    pub proxy_protocol: bool,
}

fn default_listener_kind() -> ListenerKind {
    ListenerKind::Tcp
}

fn default_handshake_timeout() -> u64 {
    10
}

impl ListenerConfig {
    pub fn tcp(bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            bind,
            kind: ListenerKind::Tcp,
            allow_anonymous: None,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: false,
            use_identity_as_username: false,
            crl_file: None,
            handshake_timeout_secs: default_handshake_timeout(),
            path: None,
            allowed_origins: Vec::new(),
            proxy_protocol: false,
        }
    }

    /// The WebSocket path of a ws/wss listener.
    pub fn ws_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_WS_PATH)
    }

    /// Whether anonymous clients may connect here: as configured, or only on loopback.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or_else(|| self.bind.ip().is_loopback())
    }

    /// The ready-line and metrics label: "mqtt", "mqtts", "ws" or "wss".
    pub fn scheme(&self) -> &'static str {
        match self.kind {
            ListenerKind::Tcp => "mqtt",
            ListenerKind::Tls => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// mosquitto_passwd file (`$7$` PBKDF2-SHA512 or `$6$` SHA-512 lines). When set,
    /// every client with a username must match it.
    pub password_file: Option<PathBuf>,
    /// mosquitto ACL file. When set, it governs every publish, subscribe and delivery,
    /// `$SYS` and `$DLQ` included.
    pub acl_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Seconds between `$SYS/broker/...` updates; 0 turns them off.
    pub sys_interval_secs: u64,
}

/// `[admin]`: the HTTP admin API and console. By default they share the metrics
/// address (see src/admin/server.rs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A port of their own for the API and console; unset: the metrics address.
    pub listen: Option<SocketAddr>,
    /// Bearer tokens, one `TOKEN ro|rw` a line; reloaded on SIGHUP.
    pub token_file: Option<PathBuf>,
    /// Requests from a loopback address need no token.
    pub loopback_without_token: bool,
    /// Scrapers of `/metrics` need a token too.
    pub metrics_require_token: bool,
    /// HTTP requests served at once; more wait.
    pub max_concurrent_requests: usize,
    /// A request not answered within this many seconds gets 408.
    pub request_timeout_secs: u64,
    /// HTTPS: PEM certificate chain and private key, in the formats a TLS listener takes
    /// (point both at a TLS listener's files to share them). Unset: plain HTTP.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: None,
            token_file: None,
            loopback_without_token: true,
            metrics_require_token: false,
            max_concurrent_requests: 32,
            request_timeout_secs: 30,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_packet_size: u32,
    pub max_connections: usize,
    pub max_pending_connects: usize,
    pub max_tls_handshakes: usize,
    pub connect_timeout_secs: u64,
    pub max_inflight: u16,
    pub receive_maximum: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub max_topic_levels: usize,
    pub max_client_id_len: usize,
    pub max_subscriptions_per_client: usize,
    pub topic_alias_maximum: u16,
    pub max_keepalive_secs: u16,
    /// Bytes held in all sessions' queues and inflight windows together (topic, payload
    /// and per-entry bookkeeping); past it, publishers are not read until it drains.
    pub max_total_queued_bytes: usize,
    /// New connections accepted per source address (IPv6: per /64) per second; 0 = off.
    pub max_connects_per_ip_per_sec: u32,
    /// Bytes read per second from one connection; 0 = off.
    pub max_inbound_bytes_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub persistent_session_expiry_secs: u32,
    pub queue_qos0_offline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    Write,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub durability: Durability,
    pub segment_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            shutdown_grace_secs: 5,
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                [127, 0, 0, 1],
                1883,
            )))],
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            limits: Limits::default(),
            session: SessionConfig::default(),
            store: StoreSettings::default(),
            dead_letter: DeadLetterConfig::default(),
            auth: AuthConfig::default(),
            cluster: ClusterConfig::default(),
            delayed: DelayedConfig::default(),
            priorities: Vec::new(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9641)),
            sys_interval_secs: 10,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            max_pending_connects: 10_000,
            max_tls_handshakes: 1_000,
            connect_timeout_secs: 10,
            max_inflight: 1000,
            receive_maximum: 100,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_topic_levels: 64,
            max_client_id_len: 256,
            max_subscriptions_per_client: 1000,
            topic_alias_maximum: 64,
            max_keepalive_secs: 0,
            max_total_queued_bytes: 1024 * 1024 * 1024,
            max_connects_per_ip_per_sec: 0,
            max_inbound_bytes_per_sec: 0,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            durability: Durability::Fsync,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Parses a TOML document; `path` only names the source in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned() + &span_hint(text, e.span()),
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Checks the values serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, why: &str| {
            Err(ConfigError::Invalid {
                key,
                why: why.to_owned(),
            })
        };
        let l = &self.limits;
        if self.admin.max_concurrent_requests == 0 {
            return invalid("admin.max_concurrent_requests", "must be at least 1");
        }
        if self.admin.request_timeout_secs == 0 {
            return invalid("admin.request_timeout_secs", "must be at least 1");
        }
        if self.admin.cert_file.is_some() != self.admin.key_file.is_some() {
            return invalid(
                "admin.cert_file",
                "HTTPS needs both cert_file and key_file (or neither, for plain HTTP)",
            );
        }
        if self.listeners.is_empty() {
            return invalid("listener", "at least one [[listener]] is needed");
        }
        if !(64..=268_435_460).contains(&l.max_packet_size) {
            return invalid(
                "limits.max_packet_size",
                "must be between 64 and 268435460 bytes (the protocol maximum)",
            );
        }
        for listener in &self.listeners {
            if listener.kind.is_tls()
                && (listener.cert_file.is_none() || listener.key_file.is_none())
            {
                return invalid(
                    "listener.cert_file",
                    "a tls or wss listener needs cert_file and key_file",
                );
            }
            if listener.require_client_cert && listener.client_ca_file.is_none() {
                return invalid(
                    "listener.require_client_cert",
                    "needs client_ca_file to verify client certificates against",
                );
            }
            if !listener.kind.is_tls()
                && (listener.cert_file.is_some() || listener.client_ca_file.is_some())
            {
                return invalid(
                    "listener.kind",
                    "certificate files are set on a listener whose kind is not \"tls\" or \"wss\"",
                );
            }
            if !listener.kind.is_websocket()
                && (listener.path.is_some() || !listener.allowed_origins.is_empty())
            {
                return invalid(
                    "listener.path",
                    "path and allowed_origins are for listeners whose kind is \"ws\" or \"wss\"",
                );
            }
            if !listener.ws_path().starts_with('/') {
                return invalid("listener.path", "must start with '/'");
            }
            if listener.handshake_timeout_secs == 0 {
                return invalid("listener.handshake_timeout_secs", "must be at least 1");
            }
        }
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if l.max_pending_connects == 0 || l.max_tls_handshakes == 0 {
            return invalid(
                "limits.max_pending_connects",
                "pre-CONNECT and TLS handshake limits must be at least 1",
            );
        }
        if l.connect_timeout_secs == 0 {
            return invalid("limits.connect_timeout_secs", "must be at least 1");
        }
        if l.max_inflight == 0 {
            return invalid("limits.max_inflight", "must be at least 1");
        }
        if l.receive_maximum == 0 {
            return invalid(
                "limits.receive_maximum",
                "must be at least 1 (MQTT 5 §3.2.2.3.3: a Receive Maximum of 0 is a protocol error)",
            );
        }
        if l.max_queued_messages == 0 || l.max_queued_bytes == 0 {
            return invalid(
                "limits.max_queued_messages",
                "queue limits must be at least 1",
            );
        }
        if l.max_total_queued_bytes == 0 {
            return invalid("limits.max_total_queued_bytes", "must be at least 1");
        }
        if l.max_topic_levels == 0 {
            return invalid("limits.max_topic_levels", "must be at least 1");
        }
        if !(23..=65535).contains(&l.max_client_id_len) {
            return invalid(
                "limits.max_client_id_len",
                "must be between 23 (the spec's minimum [MQTT-3.1.3-5]) and 65535",
            );
        }
        if l.max_subscriptions_per_client == 0 {
            return invalid("limits.max_subscriptions_per_client", "must be at least 1");
        }
        let dl = &self.dead_letter;
        if !dl.topic_prefix.starts_with('$')
            || dl.topic_prefix.ends_with('/')
            || dl.topic_prefix.contains(['+', '#', '\0'])
        {
            return invalid(
                "dead_letter.topic_prefix",
                "must start with '$' (so '#' never matches it), not end with '/', and hold no wildcards",
            );
        }
        if dl.client_id.is_empty() || dl.client_id.len() > l.max_client_id_len {
            return invalid(
                "dead_letter.client_id",
                "must be non-empty and within limits.max_client_id_len",
            );
        }
        if dl.max_messages == 0 || dl.max_bytes == 0 {
            return invalid(
                "dead_letter.max_messages",
                "dead-letter queue limits must be at least 1",
            );
        }
        if self.delayed.max_messages == 0 || self.delayed.max_delay_secs == 0 {
            return invalid(
                "delayed.max_messages",
                "delayed limits must be at least 1 (set delayed.enabled = false to turn it off)",
            );
        }
        for p in &self.priorities {
            if p.level > MAX_PRIORITY {
                return invalid("priority.level", "must be 0 to 9");
            }
            if crate::protocol::topic::validate_filter(&p.filter, l.max_topic_levels).is_err() {
                return invalid("priority.filter", "must be a valid topic filter");
            }
        }
        if self.store.segment_bytes < 4096 {
            return invalid("store.segment_bytes", "must be at least 4096");
        }
        let c = &self.cluster;
        if c.enabled {
            if !is_token(&c.node) {
                return invalid(
                    "cluster.node",
                    "a cluster node needs a name of letters, digits, '-' and '_'",
                );
            }
            if !is_token(&c.subject_prefix) {
                return invalid(
                    "cluster.subject_prefix",
                    "must be one NATS token: letters, digits, '-' and '_'",
                );
            }
            if c.nats_urls.is_empty() {
                return invalid("cluster.nats_urls", "at least one NATS server is needed");
            }
            if !(1..=5).contains(&c.replicas) {
                return invalid("cluster.replicas", "JetStream allows 1 to 5 replicas");
            }
            if c.forward_timeout_ms == 0 {
                return invalid("cluster.forward_timeout_ms", "must be at least 1");
            }
        }
        Ok(())
    }
}

/// " (key `table.key`, line N)" for a byte span in `text`, so the error names the key
/// even when the parser only knows the bad value's position.
fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_owned());
    match line.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() && !key.trim().starts_with('[') => {
            let key = key.trim();
            let full = match table {
                Some(t) => format!("{t}.{key}"),
                None => key.to_owned(),
            };
            format!(" (key `{full}`, line {line_no})")
        }
        _ => format!(" (line {line_no})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_file_equals_default() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML, Path::new("sluice.toml"))
            .expect("embedded config parses");
        assert_eq!(parsed, Config::default());
        parsed.validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[limits]\nmax_pakcet_size = 5\n", Path::new("x.toml"))
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("max_pakcet_size"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[limits]\nmax_packet_size = 10\n", "limits.max_packet_size"),
            ("[limits]\nmax_inflight = 0\n", "limits.max_inflight"),
            (
                "[limits]\nmax_total_queued_bytes = 0\n",
                "limits.max_total_queued_bytes",
            ),
            (
                "[limits]\nmax_client_id_len = 5\n",
                "limits.max_client_id_len",
            ),
            ("listener = []\n", "listener"),
            (
                "[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"wss\"\n",
                "listener.cert_file",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:0\"\npath = \"/mqtt\"\n",
                "listener.path",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\npath = \"mqtt\"\n",
                "listener.path",
            ),
            ("[cluster]\nenabled = true\n", "cluster.node"),
            (
                "[cluster]\nenabled = true\nnode = \"a.b\"\n",
                "cluster.node",
            ),
            (
                "[cluster]\nenabled = true\nnode = \"a\"\nsubject_prefix = \"x y\"\n",
                "cluster.subject_prefix",
            ),
            (
                "[cluster]\nenabled = true\nnode = \"a\"\nnats_urls = []\n",
                "cluster.nats_urls",
            ),
            (
                "[cluster]\nenabled = true\nnode = \"a\"\nreplicas = 7\n",
                "cluster.replicas",
            ),
        ];
        for (text, key) in cases {
            let cfg = Config::from_toml(text, Path::new("x.toml")).expect("parses");
            let err = cfg.validate().expect_err(text);
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
        let err = Config::from_toml("[store]\ndurability = \"sometimes\"\n", Path::new("x"))
            .expect_err("bad enum");
        assert!(err.to_string().contains("sometimes"), "{err}");
        assert!(err.to_string().contains("store.durability"), "{err}");
        let err = Config::from_toml(
            "[limits]\nconnect_timeout_secs = \"soon\"\n",
            Path::new("x"),
        )
        .expect_err("bad type");
        assert!(
            err.to_string().contains("limits.connect_timeout_secs"),
            "{err}"
        );
    }
}
