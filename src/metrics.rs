//! Metric names: every metric sluice exports is named here, once, so dashboards and code
//! agree. Labels have bounded cardinality (reason, QoS, listener, protocol version):
//! never a client id or a topic.
//!
//! Also here: [`describe_all`] (HELP text and units, once), the cached handles hot paths
//! use instead of a registry lookup per message ([`hot`]), the recorder sluice installs
//! ([`install`]: Prometheus, or nothing, wrapped in a tap that keeps the `$SYS` totals).
//! `/metrics` itself is served by the HTTP server in src/admin/server.rs.

use crate::protocol::QoS;
use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, CounterFn, Gauge, GaugeFn,
    Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

// Connections (labels: `reason` on refusals).
pub const CONNECTIONS: &str = "sluice_connections";
pub const CONNECTIONS_ACCEPTED: &str = "sluice_connections_accepted_total";
pub const CONNECTIONS_REFUSED: &str = "sluice_connections_refused_total";
/// Open connections past CONNECT by listener kind (label `listener`: mqtt, mqtts, ws,
/// wss); `sluice_connections` is their sum.
pub const LISTENER_CONNECTIONS: &str = "sluice_listener_connections";
/// Connections closed before MQTT: PROXY header, WebSocket upgrade, or the handshake
/// timeout or permit (labels `listener`, `reason`).
pub const HANDSHAKE_FAILURES: &str = "sluice_handshake_failures_total";
// Sessions and routing state (sampled).
pub const SESSIONS_ONLINE: &str = "sluice_sessions_online";
pub const SESSIONS_OFFLINE: &str = "sluice_sessions_offline_persistent";
pub const SUBSCRIPTIONS: &str = "sluice_subscriptions";
pub const RETAINED_MESSAGES: &str = "sluice_retained_messages";
// Traffic (label `qos`; bytes are payload bytes).
pub const MESSAGES_RECEIVED: &str = "sluice_messages_received_total";
pub const BYTES_RECEIVED: &str = "sluice_bytes_received_total";
pub const MESSAGES_SENT: &str = "sluice_messages_sent_total";
pub const BYTES_SENT: &str = "sluice_bytes_sent_total";
pub const PUBACK_FAILED: &str = "sluice_puback_failed_total";
// Dead letters (label `reason` on DEAD_LETTERS).
pub const DEAD_LETTERS: &str = "sluice_dead_letters_total";
pub const DEAD_LETTERS_SHED: &str = "sluice_dead_letters_shed_total";
// Delayed delivery (`$delayed/<seconds>/<topic>`).
pub const DELAYED_WAITING: &str = "sluice_delayed_messages";
pub const DELAYED_ACCEPTED: &str = "sluice_delayed_accepted_total";
pub const DELAYED_PUBLISHED: &str = "sluice_delayed_published_total";
pub const DELAYED_REFUSED: &str = "sluice_delayed_refused_total";
pub const DELAYED_LATENESS: &str = "sluice_delayed_lateness_seconds";
pub const DEAD_LETTER_QUEUED: &str = "sluice_dead_letter_queued_messages";
pub const DEAD_LETTER_QUEUED_BYTES: &str = "sluice_dead_letter_queued_bytes";
// Security (labels: `reason` on failures, `access` on ACL denials).
pub const TLS_HANDSHAKES: &str = "sluice_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "sluice_tls_handshake_failures_total";
pub const AUTH_FAILURES: &str = "sluice_auth_failures_total";
pub const ACL_DENIED: &str = "sluice_acl_denied_total";
/// Password checks by `result`: cached (a verified password seen again), verified,
/// failed (wrong password or unknown user), busy (no hashing slot before the deadline).
pub const PASSWORD_CHECKS: &str = "sluice_password_checks_total";
/// Time a password check that was not cached took, waiting for a hashing slot included.
pub const PASSWORD_CHECK_DURATION: &str = "sluice_password_check_duration_seconds";
// Queues (sampled).
pub const QUEUED_MESSAGES: &str = "sluice_queued_messages";
pub const QUEUED_BYTES: &str = "sluice_queued_bytes";
pub const SESSION_QUEUE_DEPTH: &str = "sluice_session_queue_depth_messages";
/// Age of the oldest message a session still holds (the ingestion lag), per session.
pub const SESSION_BACKLOG_AGE: &str = "sluice_session_backlog_age_seconds";
/// The same, broker-wide: the oldest message any session still holds.
pub const OLDEST_QUEUED_AGE: &str = "sluice_oldest_queued_age_seconds";
pub const INFLIGHT_MESSAGES: &str = "sluice_inflight_messages";
// Cluster (labels: `path` = core | queue | retained | session).
pub const CLUSTER_CONNECTED: &str = "sluice_cluster_nats_connected";
pub const CLUSTER_FORWARDED: &str = "sluice_cluster_forwarded_total";
pub const CLUSTER_RECEIVED: &str = "sluice_cluster_received_total";
pub const CLUSTER_FORWARD_FAILURES: &str = "sluice_cluster_forward_failures_total";
pub const CLUSTER_TAKEOVERS: &str = "sluice_cluster_takeovers_total";
pub const CLUSTER_REMOTE_FILTERS: &str = "sluice_cluster_remote_filters";
// Resource limits ([limits]; see src/limits.rs).
pub const QUEUE_BUDGET_USED: &str = "sluice_queue_budget_used_bytes";
pub const QUEUE_BUDGET_LIMIT: &str = "sluice_queue_budget_limit_bytes";
pub const PUBLISHER_PAUSES: &str = "sluice_publisher_pauses_total";
pub const INBOUND_THROTTLE_WAIT: &str = "sluice_inbound_throttle_wait_seconds";
pub const CLIENT_LIMITS_EXCEEDED: &str = "sluice_client_limits_exceeded_total";
// Store.
pub const STORE_APPENDS: &str = "sluice_store_appends_total";
pub const STORE_BATCHES: &str = "sluice_store_batches_total";
pub const STORE_FSYNCS: &str = "sluice_store_fsyncs_total";
pub const STORE_FSYNC_DURATION: &str = "sluice_store_fsync_duration_seconds";
pub const STORE_LOG_BYTES: &str = "sluice_store_log_bytes";
pub const STORE_LIVE_BYTES: &str = "sluice_store_live_bytes";
pub const STORE_SEGMENTS: &str = "sluice_store_segments";
pub const STORE_COMPACTIONS: &str = "sluice_store_compactions_total";
pub const STORE_POISONED: &str = "sluice_store_poisoned";
pub const STORE_RECOVERY_DURATION: &str = "sluice_store_recovery_duration_seconds";
// Latency.
pub const DELIVERY_LATENCY: &str = "sluice_delivery_latency_seconds";
pub const PUBACK_LATENCY: &str = "sluice_puback_latency_seconds";
// Process.
pub const BUILD_INFO: &str = "sluice_build_info";
pub const START_TIME: &str = "sluice_start_time_seconds";

/// The latency histograms time one event in this many. A sample of 1 in 16 keeps the
/// quantiles honest at any rate worth measuring, and takes the per-message cost of the
/// histograms (a clock read and a bucket push each) off the hot path.
pub const LATENCY_SAMPLE_EVERY: u32 = 16;

/// Buckets of the latency histograms: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of the fsync histogram: 50 µs to 5 s.
pub const FSYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    5.0,
];
/// Buckets of the inbound throttle wait histogram: 1 ms to 10 s.
pub const THROTTLE_BUCKETS: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Labels of [`CLIENT_LIMITS_EXCEEDED`].
pub const CLIENT_LIMITS: &[&str] = &["subscriptions", "receive_maximum", "topic_alias"];
/// Buckets of the per-session queue depth histogram, in messages.
pub const DEPTH_BUCKETS: &[f64] = &[
    0.0,
    1.0,
    10.0,
    100.0,
    1000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
];

/// Buckets of the per-session backlog age histogram: 1 s to 1 day.
pub const AGE_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    86_400.0,
];

/// HELP text and units for every metric, once. Called by [`install`].
pub fn describe_all() {
    describe_gauge!(
        CLUSTER_CONNECTED,
        "1 while this cluster node is connected to NATS, 0 while partitioned from it."
    );
    describe_counter!(
        CLUSTER_FORWARDED,
        "Messages sent to other nodes, by path (core fan-out, durable queue, retained, session hand-off)."
    );
    describe_counter!(
        CLUSTER_RECEIVED,
        "Messages received from other nodes, by path."
    );
    describe_counter!(
        CLUSTER_FORWARD_FAILURES,
        "Sends to other nodes that failed or timed out, by path (a failed queue send fails the PUBACK)."
    );
    describe_counter!(
        CLUSTER_TAKEOVERS,
        "Sessions handed between nodes, by direction (in, out)."
    );
    describe_gauge!(
        CLUSTER_REMOTE_FILTERS,
        "Distinct subscription filters other nodes hold, as this node last heard."
    );
    describe_gauge!(CONNECTIONS, "Open MQTT connections past CONNECT.");
    describe_gauge!(
        LISTENER_CONNECTIONS,
        "Open MQTT connections past CONNECT, by listener kind (mqtt, mqtts, ws, wss)."
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        "Connections closed before MQTT: bad or missing PROXY header, refused WebSocket upgrade (reason path, origin, subprotocol, too_large, handshake), timeout, or max_tls_handshakes."
    );
    describe_counter!(TLS_HANDSHAKES, "TLS handshakes completed on TLS listeners.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by reason (refused, timeout, limit)."
    );
    describe_counter!(
        AUTH_FAILURES,
        "CONNECTs refused by authentication, by reason (password, anonymous, no_identity)."
    );
    describe_counter!(
        PASSWORD_CHECKS,
        "CONNECT password checks, by result (cached, verified, failed, busy)."
    );
    describe_histogram!(
        PASSWORD_CHECK_DURATION,
        Unit::Seconds,
        "Time a password check that was not cached took, waiting for a hashing slot included."
    );
    describe_counter!(
        ACL_DENIED,
        "Operations denied by the ACL file, by access (write, subscribe, read, will, dead_letter_session)."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "TCP connections accepted by the MQTT listeners."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused, by reason (limit: max_connections, rate: \
         max_connects_per_ip_per_sec, pending_limit: max_pending_connects, timeout: \
         connect_timeout_secs, protocol, connect)."
    );
    describe_gauge!(SESSIONS_ONLINE, "Sessions with a connected client.");
    describe_gauge!(
        SESSIONS_OFFLINE,
        "Persistent sessions with no connected client."
    );
    describe_gauge!(SUBSCRIPTIONS, "Subscriptions in the router.");
    describe_gauge!(RETAINED_MESSAGES, "Retained messages held by the broker.");
    describe_counter!(
        MESSAGES_RECEIVED,
        "PUBLISH packets received from clients, by QoS."
    );
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Payload bytes of PUBLISH packets received from clients."
    );
    describe_counter!(
        MESSAGES_SENT,
        "PUBLISH packets sent to subscribers (resends included), by QoS."
    );
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "Payload bytes of PUBLISH packets sent to subscribers, by QoS."
    );
    describe_counter!(
        PUBACK_FAILED,
        "Accepted messages the store failed to make durable (no success ack sent)."
    );
    describe_counter!(DEAD_LETTERS, "Messages dead-lettered, by reason.");
    describe_gauge!(
        DELAYED_WAITING,
        "$delayed/ messages waiting for their due time."
    );
    describe_counter!(DELAYED_ACCEPTED, "$delayed/ messages accepted.");
    describe_counter!(
        DELAYED_PUBLISHED,
        "$delayed/ messages published to their topic at their due time."
    );
    describe_counter!(
        DELAYED_REFUSED,
        "$delayed/ messages refused (bad topic, delay over the maximum, too many waiting)."
    );
    describe_histogram!(
        DELAYED_LATENESS,
        Unit::Seconds,
        "How late after its due time a delayed message was published."
    );
    describe_counter!(
        DEAD_LETTERS_SHED,
        "Dead letters discarded because they were undeliverable themselves."
    );
    describe_gauge!(
        DEAD_LETTER_QUEUED,
        "Dead letters waiting in the dead-letter session for an operator to drain them."
    );
    describe_gauge!(
        DEAD_LETTER_QUEUED_BYTES,
        Unit::Bytes,
        "Bytes (payload and topic) of the dead letters waiting in the dead-letter session."
    );
    describe_gauge!(
        QUEUED_MESSAGES,
        "Messages queued for sessions, not yet sent."
    );
    describe_gauge!(
        QUEUED_BYTES,
        Unit::Bytes,
        "Bytes (payload and topic) of messages queued for sessions."
    );
    describe_histogram!(
        SESSION_BACKLOG_AGE,
        Unit::Seconds,
        "Age of the oldest message each session still holds (queued or unacknowledged), sampled with the queue depth."
    );
    describe_gauge!(
        OLDEST_QUEUED_AGE,
        Unit::Seconds,
        "Age of the oldest message any session still holds: the ingestion lag to alert on (0 when none)."
    );
    describe_histogram!(
        SESSION_QUEUE_DEPTH,
        "Queue depth of each session in messages, sampled every second."
    );
    describe_gauge!(
        INFLIGHT_MESSAGES,
        "Messages sent to subscribers and not yet acknowledged."
    );
    describe_gauge!(
        QUEUE_BUDGET_USED,
        Unit::Bytes,
        "Bytes held by all sessions' queues and inflight windows together (topic, payload \
         and per-entry bookkeeping), counted against max_total_queued_bytes."
    );
    describe_gauge!(
        QUEUE_BUDGET_LIMIT,
        Unit::Bytes,
        "max_total_queued_bytes: past it, publishers are not read until it drains."
    );
    describe_counter!(
        PUBLISHER_PAUSES,
        "Times a publishing connection stopped being read because max_total_queued_bytes \
         was exceeded (each pause lasts until it drains, at most 1 s)."
    );
    describe_histogram!(
        INBOUND_THROTTLE_WAIT,
        Unit::Seconds,
        "Waits before reading a connection that sent faster than max_inbound_bytes_per_sec \
         (count: throttle events, sum: time throttled)."
    );
    describe_counter!(
        CLIENT_LIMITS_EXCEEDED,
        "Client requests refused by a per-client limit, by limit (subscriptions: \
         max_subscriptions_per_client, SUBACK 0x97; receive_maximum: QoS 2 awaiting PUBREL, \
         DISCONNECT 0x93; topic_alias: alias outside topic_alias_maximum or unset, \
         DISCONNECT 0x94 / 0x82)."
    );
    describe_counter!(STORE_APPENDS, "Records appended to the durable log.");
    describe_counter!(STORE_BATCHES, "Batches written to the durable log.");
    describe_counter!(STORE_FSYNCS, "fdatasync calls on the head log segment.");
    describe_histogram!(
        STORE_FSYNC_DURATION,
        Unit::Seconds,
        "Duration of fdatasync calls on the head log segment."
    );
    describe_gauge!(
        STORE_LOG_BYTES,
        Unit::Bytes,
        "Size of the log segments on disk."
    );
    describe_gauge!(
        STORE_LIVE_BYTES,
        Unit::Bytes,
        "Bytes of log records still needed (what compaction keeps)."
    );
    describe_gauge!(STORE_SEGMENTS, "Log segment files on disk.");
    describe_counter!(STORE_COMPACTIONS, "Log segments compacted.");
    describe_gauge!(
        STORE_POISONED,
        "1 when the store refused further writes after an I/O failure."
    );
    describe_gauge!(
        STORE_RECOVERY_DURATION,
        Unit::Seconds,
        "Time the last start-up took to replay the log."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from a PUBLISH being received to its delivery being encoded for a subscriber \
         (one delivery in 16 is timed)."
    );
    describe_histogram!(
        PUBACK_LATENCY,
        Unit::Seconds,
        "Time from a QoS 1/2 PUBLISH being accepted to its PUBACK/PUBREC being sent \
         (one ack in 16 is timed)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Start time of the broker since the Unix epoch."
    );
}

/// The metric label of a QoS.
pub fn qos_label(q: QoS) -> &'static str {
    match q {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

/// Handles for the per-message metrics, registered once: an increment is then an atomic
/// add, not a key hash and registry lookup.
pub struct Hot {
    messages_received: [Counter; 3],
    bytes_received: [Counter; 3],
    messages_sent: [Counter; 3],
    bytes_sent: [Counter; 3],
    pub puback_failed: Counter,
    pub delivery_latency: Histogram,
    pub puback_latency: Histogram,
    pub fsync_duration: Histogram,
}

fn by_qos(name: &'static str) -> [Counter; 3] {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .map(|q| metrics::counter!(name, "qos" => qos_label(q)))
}

static HOT: LazyLock<Hot> = LazyLock::new(|| Hot {
    messages_received: by_qos(MESSAGES_RECEIVED),
    bytes_received: by_qos(BYTES_RECEIVED),
    messages_sent: by_qos(MESSAGES_SENT),
    bytes_sent: by_qos(BYTES_SENT),
    puback_failed: metrics::counter!(PUBACK_FAILED),
    delivery_latency: metrics::histogram!(DELIVERY_LATENCY),
    puback_latency: metrics::histogram!(PUBACK_LATENCY),
    fsync_duration: metrics::histogram!(STORE_FSYNC_DURATION),
});

/// The cached handles. Registered on first use, so first use must come after
/// [`install`] (the binary installs before it starts the broker).
pub fn hot() -> &'static Hot {
    &HOT
}

impl Hot {
    /// One PUBLISH received from a client.
    #[inline]
    pub fn received(&self, qos: QoS, payload_bytes: usize) {
        self.messages_received[qos as usize].increment(1);
        self.bytes_received[qos as usize].increment(payload_bytes as u64);
    }

    /// PUBLISHes sent to subscribers, counted by QoS index: `count[q]` packets carrying
    /// `bytes[q]` payload bytes.
    #[inline]
    pub fn sent_batch(&self, count: &[u64; 3], bytes: &[u64; 3]) {
        for q in 0..3 {
            if count[q] > 0 {
                self.messages_sent[q].increment(count[q]);
                self.bytes_sent[q].increment(bytes[q]);
            }
        }
    }

    /// One PUBLISH sent to a subscriber.
    #[inline]
    pub fn sent(&self, qos: QoS, payload_bytes: usize) {
        self.messages_sent[qos as usize].increment(1);
        self.bytes_sent[qos as usize].increment(payload_bytes as u64);
    }
}

/// Broker-wide totals for `$SYS`, kept by [`SysTap`] from the very increments that feed
/// Prometheus (so the two always agree, wherever the increment happens).
#[derive(Debug, Default)]
pub struct SysTotals {
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub connections: AtomicI64,
    pub connections_max: AtomicI64,
    /// Indexed like [`crate::dead_letter::DeadLetterReason::ALL`].
    pub dead_letters: [AtomicU64; crate::dead_letter::DeadLetterReason::ALL.len()],
}

pub static SYS: LazyLock<SysTotals> = LazyLock::new(SysTotals::default);

fn sys_counter_slot(key: &Key) -> Option<&'static AtomicU64> {
    let sys = &*SYS;
    match key.name() {
        MESSAGES_RECEIVED => Some(&sys.messages_received),
        BYTES_RECEIVED => Some(&sys.bytes_received),
        MESSAGES_SENT => Some(&sys.messages_sent),
        BYTES_SENT => Some(&sys.bytes_sent),
        DEAD_LETTERS => {
            let reason = key.labels().find(|l| l.key() == "reason")?;
            crate::dead_letter::DeadLetterReason::ALL
                .iter()
                .position(|r| r.label() == reason.value())
                .map(|i| &sys.dead_letters[i])
        }
        _ => None,
    }
}

/// A counter that also adds to a `$SYS` total.
struct TeeCounter {
    inner: Counter,
    total: &'static AtomicU64,
}

impl CounterFn for TeeCounter {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        self.total.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
        self.total.fetch_max(value, Ordering::Relaxed);
    }
}

/// The connections gauge, also kept (with its maximum) for `$SYS`.
struct TeeConnections {
    inner: Gauge,
}

impl TeeConnections {
    fn track(&self, now: i64) {
        SYS.connections_max.fetch_max(now, Ordering::Relaxed);
    }
}

impl GaugeFn for TeeConnections {
    fn increment(&self, value: f64) {
        self.inner.increment(value);
        let n = SYS.connections.fetch_add(value as i64, Ordering::Relaxed) + value as i64;
        self.track(n);
    }
    fn decrement(&self, value: f64) {
        self.inner.decrement(value);
        SYS.connections.fetch_sub(value as i64, Ordering::Relaxed);
    }
    fn set(&self, value: f64) {
        self.inner.set(value);
        SYS.connections.store(value as i64, Ordering::Relaxed);
        self.track(value as i64);
    }
}

/// The recorder sluice installs: `inner` (Prometheus, or a no-op when metrics are
/// disabled), with the counters `$SYS` reports teed into [`SYS`].
pub struct SysTap<R> {
    inner: R,
}

impl<R: Recorder> Recorder for SysTap<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let inner = self.inner.register_counter(key, metadata);
        match sys_counter_slot(key) {
            Some(total) => Counter::from_arc(Arc::new(TeeCounter { inner, total })),
            None => inner,
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let inner = self.inner.register_gauge(key, metadata);
        if key.name() == CONNECTIONS {
            Gauge::from_arc(Arc::new(TeeConnections { inner }))
        } else {
            inner
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

/// Installs the global recorder: Prometheus with sluice's histogram buckets when
/// `prometheus` is true (returning the handle that renders the exposition), otherwise a
/// no-op recorder that still keeps the `$SYS` totals. Describes every metric and sets
/// the build info. Call once, before the broker starts.
pub fn install(prometheus: bool) -> anyhow::Result<Option<PrometheusHandle>> {
    let handle = if prometheus {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(STORE_FSYNC_DURATION.to_string()),
                FSYNC_BUCKETS,
            )?
            .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.to_string()), LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(PUBACK_LATENCY.to_string()), LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(DELAYED_LATENESS.to_string()), LATENCY_BUCKETS)?
            .set_buckets_for_metric(
                Matcher::Full(SESSION_QUEUE_DEPTH.to_string()),
                DEPTH_BUCKETS,
            )?
            .set_buckets_for_metric(Matcher::Full(SESSION_BACKLOG_AGE.to_string()), AGE_BUCKETS)?
            .set_buckets_for_metric(
                Matcher::Full(INBOUND_THROTTLE_WAIT.to_string()),
                THROTTLE_BUCKETS,
            )?
            .set_buckets_for_metric(
                Matcher::Full(PASSWORD_CHECK_DURATION.to_string()),
                THROTTLE_BUCKETS,
            )?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(SysTap { inner: recorder })?;
        Some(handle)
    } else {
        metrics::set_global_recorder(SysTap {
            inner: metrics::NoopRecorder,
        })?;
        None
    };
    describe_all();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!(START_TIME).set(now.as_secs_f64());
    // Register the labelled series up front so they read 0 before the first event.
    let _ = hot();
    for r in crate::dead_letter::DeadLetterReason::ALL {
        metrics::counter!(DEAD_LETTERS, "reason" => r.label()).absolute(0);
    }
    metrics::counter!(DEAD_LETTERS_SHED).absolute(0);
    metrics::counter!(PUBLISHER_PAUSES).absolute(0);
    metrics::counter!(DELAYED_ACCEPTED).absolute(0);
    metrics::counter!(DELAYED_PUBLISHED).absolute(0);
    metrics::counter!(DELAYED_REFUSED).absolute(0);
    metrics::counter!(CONNECTIONS_REFUSED, "reason" => "rate").absolute(0);
    for limit in CLIENT_LIMITS {
        metrics::counter!(CLIENT_LIMITS_EXCEEDED, "limit" => *limit).absolute(0);
    }
    metrics::counter!(CONNECTIONS_ACCEPTED).absolute(0);
    metrics::gauge!(CONNECTIONS).increment(0.0);
    Ok(handle)
}
