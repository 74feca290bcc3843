//! Metric names: every metric sluice exports is named here, once, so dashboards and code
//! agree. Labels have bounded cardinality (reason, QoS, protocol version): never a
//! client id or a topic.

pub const DEAD_LETTERS: &str = "sluice_dead_letters_total";
pub const DEAD_LETTERS_SHED: &str = "sluice_dead_letters_shed_total";
