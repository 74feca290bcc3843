//! Metric names: every metric sluice exports is named here, once, so dashboards and code
//! agree. Labels have bounded cardinality (reason, QoS, protocol version): never a
//! client id or a topic.

pub const DEAD_LETTERS: &str = "sluice_dead_letters_total";
pub const DEAD_LETTERS_SHED: &str = "sluice_dead_letters_shed_total";
pub const CONNECTIONS_REFUSED: &str = "sluice_connections_refused_total";
pub const TLS_HANDSHAKES: &str = "sluice_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "sluice_tls_handshake_failures_total";
pub const AUTH_FAILURES: &str = "sluice_auth_failures_total";
pub const ACL_DENIED: &str = "sluice_acl_denied_total";
