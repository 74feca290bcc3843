//! Resource limits that belong to no single session or packet: the budget of bytes held
//! in all sessions' queues together, the connection rate per source address, and the
//! inbound byte rate of one connection.
//!
//! Owns the shared budget counter ([`QueueBudget`]: sessions charge and release it), the
//! per-address token buckets ([`ConnectRate`]: the listener asks them before a connection
//! task exists) and each connection's [`ReadGate`] (the reader asks it before every socket
//! read). It calls nobody; `session`, `listener` and `connection` call it. It never holds a
//! lock across an `.await` and never blocks a thread: waiting means not reading a socket.

use crate::config::Limits;
use crate::metrics as metric;
use dashmap::DashMap;
use parking_lot::Mutex;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest a publisher waits for the budget before it may read once more. Bounded so
/// a paused client's PINGREQ, PUBACKs and DISCONNECT still get through (a client that
/// publishes and subscribes must be able to ack the very messages that hold the budget),
/// and so a budget filled by offline sessions slows publishers instead of stalling them.
pub const MAX_PUBLISHER_PAUSE: Duration = Duration::from_secs(1);

/// The shared resource guards the broker holds: one per broker.
#[derive(Debug)]
pub struct Guards {
    pub queue_budget: Arc<QueueBudget>,
    pub connect_rate: ConnectRate,
}

impl Guards {
    pub fn new(limits: &Limits) -> Guards {
        Guards {
            queue_budget: Arc::new(QueueBudget::new(limits.max_total_queued_bytes)),
            connect_rate: ConnectRate::new(limits.max_connects_per_ip_per_sec),
        }
    }
}

// ------------------------------------------------------------------------ queue budget

/// Bytes held by all sessions together ([limits] max_total_queued_bytes): what sits in
/// their queues and inflight windows, counted as topic + payload + the session's
/// `ENTRY_OVERHEAD` per entry. Each session charges the difference whenever what it holds
/// changes; over the limit, publishers stop being read until it is back under (see
/// [`ReadGate`]).
#[derive(Debug)]
pub struct QueueBudget {
    used: AtomicUsize,
    limit: usize,
    /// Woken when `used` falls back to the limit or below.
    below: Notify,
}

impl QueueBudget {
    pub fn new(limit: usize) -> QueueBudget {
        QueueBudget {
            used: AtomicUsize::new(0),
            limit,
            below: Notify::new(),
        }
    }

    /// A budget that never pauses anyone (tests, tools).
    pub fn unlimited() -> Arc<QueueBudget> {
        Arc::new(QueueBudget::new(usize::MAX))
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_over(&self) -> bool {
        self.used() > self.limit
    }

    /// A holder's share went from `from` to `to` bytes.
    pub fn adjust(&self, from: usize, to: usize) {
        if to >= from {
            self.used.fetch_add(to - from, Ordering::Relaxed);
            return;
        }
        let freed = from - to;
        let before = self.used.fetch_sub(freed, Ordering::Relaxed);
        debug_assert!(before >= freed, "queue budget released more than charged");
        if before > self.limit && before - freed <= self.limit {
            self.below.notify_waiters();
        }
    }

    /// Waits until the budget is not exceeded, at most `max`. Returns whether it is under.
    pub async fn wait_below(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        loop {
            let notified = self.below.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the two is not missed.
            notified.as_mut().enable();
            if !self.is_over() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.is_over();
            }
        }
    }
}

// ------------------------------------------------------------------------ rate buckets

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Tokens may go
/// negative (a read larger than what was saved is a debt paid by waiting).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    /// Whether it would be full by `now`: then it holds nothing a fresh one would not.
    fn idle(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }
}

/// Addresses tracked at once by [`ConnectRate`]. At ~100 bytes an entry this bounds the
/// map to a few MiB; past it, idle buckets are pruned, and addresses that still find no
/// room share one bucket (so a flood from many addresses is limited as one).
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;
/// How often idle buckets are pruned even when the map is not full.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often at most a full map is pruned (a scan of up to MAX_TRACKED_ADDRESSES).
const PRUNE_FULL_EVERY: Duration = Duration::from_millis(100);

/// Connections accepted per source address per second ([limits]
/// max_connects_per_ip_per_sec; 0 = unlimited), a token bucket per address with a burst
/// of one second's worth. IPv6 addresses count per /64, which is what one host can pick
/// from freely.
#[derive(Debug)]
pub struct ConnectRate {
    per_sec: u32,
    buckets: DashMap<IpAddr, Bucket>,
    /// Shared by addresses that find the map full.
    overflow: Mutex<Option<Bucket>>,
    last_prune: Mutex<Instant>,
    /// One log line a second for refusals, however many there are.
    log: LogEvery,
}

impl ConnectRate {
    pub fn new(per_sec: u32) -> ConnectRate {
        ConnectRate {
            per_sec,
            buckets: DashMap::new(),
            overflow: Mutex::new(None),
            last_prune: Mutex::new(Instant::now()),
            log: LogEvery::new(Duration::from_secs(1)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_sec > 0
    }

    /// Whether a connection from `ip` may proceed now. Called by the accept loop before
    /// anything is allocated for the connection.
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let rate = f64::from(self.per_sec);
        let burst = rate;
        let take = |b: &mut Bucket| {
            b.refill(rate, burst, now);
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        };
        let key = rate_key(ip);
        if let Some(mut b) = self.buckets.get_mut(&key) {
            return take(&mut b);
        }
        self.maybe_prune(rate, burst, now);
        if self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            let mut overflow = self.overflow.lock();
            let b = overflow.get_or_insert_with(|| Bucket::full(burst, now));
            return take(b);
        }
        let mut b = Bucket::full(burst, now);
        let admitted = take(&mut b);
        self.buckets.insert(key, b);
        admitted
    }

    /// Drops buckets that have refilled (they hold nothing a new one would not), every
    /// PRUNE_EVERY, or every PRUNE_FULL_EVERY while the map is full.
    fn maybe_prune(&self, rate: f64, burst: f64, now: Instant) {
        {
            let mut last = self.last_prune.lock();
            let since = now.saturating_duration_since(*last);
            let full = self.buckets.len() >= MAX_TRACKED_ADDRESSES;
            if since < PRUNE_EVERY && !(full && since >= PRUNE_FULL_EVERY) {
                return;
            }
            *last = now;
        }
        self.buckets.retain(|_, b| !b.idle(rate, burst, now));
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Logs a refusal of `peer`, at most once a second (with how many were not logged).
    pub fn log_refusal(&self, peer: std::net::SocketAddr) {
        if let Some(suppressed) = self.log.ready() {
            tracing::warn!(
                %peer,
                per_sec = self.per_sec,
                not_logged = suppressed,
                "connection refused: max_connects_per_ip_per_sec exceeded"
            );
        }
    }
}

/// The bucket key of an address: IPv4 (also when IPv4-mapped) as is, IPv6 by /64.
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Lets one event through per interval and counts the rest.
#[derive(Debug)]
pub struct LogEvery {
    every: Duration,
    origin: Instant,
    /// Milliseconds since `origin` of the last event let through, plus one (0: never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogEvery {
    pub fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Some(events not let through since the last one) when this one may be logged.
    pub fn ready(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

// ------------------------------------------------------------------------ read gate

/// What a connection's reader asks before each socket read: whether to pause for the
/// queue budget (publishers only: a client that never published is never paused, so
/// subscribers' PUBACKs keep freeing the budget) and whether its inbound byte rate
/// ([limits] max_inbound_bytes_per_sec) asks it to wait.
#[derive(Debug)]
pub struct ReadGate {
    /// Inbound bytes per second, 0 = unlimited.
    rate: u64,
    bucket: Bucket,
    /// The client has sent a PUBLISH on this connection.
    publisher: bool,
}

impl ReadGate {
    pub fn new(limits: &Limits) -> ReadGate {
        let rate = limits.max_inbound_bytes_per_sec;
        ReadGate {
            rate,
            bucket: Bucket::full(rate as f64, Instant::now()),
            publisher: false,
        }
    }

    /// A PUBLISH was read: from now on the queue budget may pause this connection.
    pub fn saw_publish(&mut self) {
        self.publisher = true;
    }

    /// `n` bytes were read from the socket.
    pub fn consumed(&mut self, n: usize) {
        if self.rate > 0 {
            let rate = self.rate as f64;
            self.bucket.refill(rate, rate, Instant::now());
            self.bucket.tokens -= n as f64;
        }
    }

    /// Time to wait before reading, for the byte rate alone.
    fn throttle_delay(&mut self) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = self.rate as f64;
        self.bucket.refill(rate, rate, Instant::now());
        if self.bucket.tokens >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.bucket.tokens / rate)
    }

    /// Whether [`ReadGate::wait`] has anything to wait for. Cheap: an atomic load, and a
    /// clock read only when a byte rate is set.
    pub fn must_wait(&mut self, budget: &QueueBudget) -> bool {
        (self.publisher && budget.is_over()) || !self.throttle_delay().is_zero()
    }

    /// Waits before the next read: while the queue budget is exceeded (a publisher, at
    /// most [`MAX_PUBLISHER_PAUSE`]), then until the byte rate allows reading. The caller
    /// selects it against shutdown and takeover and does not count the time against the
    /// client's keepalive (the broker paused, not the client).
    pub async fn wait(&mut self, budget: &QueueBudget) {
        if self.publisher && budget.is_over() {
            metrics::counter!(metric::PUBLISHER_PAUSES).increment(1);
            tracing::debug!(
                used = budget.used(),
                limit = budget.limit(),
                "publisher paused: max_total_queued_bytes exceeded"
            );
            budget.wait_below(MAX_PUBLISHER_PAUSE).await;
        }
        let delay = self.throttle_delay();
        if !delay.is_zero() {
            metrics::histogram!(metric::INBOUND_THROTTLE_WAIT).record(delay.as_secs_f64());
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn connect_rate_allows_burst_then_refills() {
        let r = ConnectRate::new(3);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let t0 = Instant::now();
        let admitted: Vec<bool> = (0..5).map(|_| r.admit_at(ip, t0)).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        assert!(r.admit_at(other, t0), "another address has its own bucket");
        assert!(!r.admit_at(ip, t0 + Duration::from_millis(300)));
        assert!(
            r.admit_at(ip, t0 + Duration::from_millis(340)),
            "1/3 s refills one"
        );
        assert!(!r.admit_at(ip, t0 + Duration::from_millis(340)));
    }

    #[test]
    fn connect_rate_off_admits_everything() {
        let r = ConnectRate::new(0);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!((0..10_000).all(|_| r.admit(ip)));
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn connect_rate_map_is_bounded_and_pruned() {
        let r = ConnectRate::new(1);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 100) {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            r.admit_at(ip, t0);
        }
        assert_eq!(
            r.tracked(),
            MAX_TRACKED_ADDRESSES,
            "never more than the bound"
        );
        // Addresses past the bound share one bucket: one connection, then refused.
        let late = IpAddr::V4(Ipv4Addr::new(192, 168, 7, 7));
        assert!(!r.admit_at(late, t0));
        // A second later every bucket has refilled: pruning empties the map.
        let t1 = t0 + Duration::from_secs(1);
        assert!(r.admit_at(late, t1));
        assert_eq!(r.tracked(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().expect("addr");
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().expect("addr");
        assert_eq!(rate_key(IpAddr::V6(a)), rate_key(IpAddr::V6(b)));
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().expect("addr");
        assert_eq!(
            rate_key(IpAddr::V6(mapped)),
            IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))
        );
    }

    #[test]
    fn log_every_lets_one_through_and_counts_the_rest() {
        let log = LogEvery::new(Duration::from_secs(3600));
        assert_eq!(log.ready(), Some(0));
        assert_eq!(log.ready(), None);
        assert_eq!(log.ready(), None);
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_wait_ends_on_release_or_after_the_bound() {
        let budget = Arc::new(QueueBudget::new(100));
        budget.adjust(0, 150);
        assert!(budget.is_over());
        let t0 = Instant::now();
        assert!(!budget.wait_below(Duration::from_secs(1)).await);
        assert_eq!(t0.elapsed(), Duration::from_secs(1), "bounded");
        let b = Arc::clone(&budget);
        let waiter = tokio::spawn(async move { b.wait_below(Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        budget.adjust(150, 90);
        assert!(waiter.await.expect("waiter"));
        assert!(
            Instant::now() - t0 < Duration::from_secs(2),
            "woken, not timed out"
        );
        assert_eq!(budget.used(), 90);
    }

    #[tokio::test(start_paused = true)]
    async fn read_gate_throttles_to_the_rate() {
        let limits = Limits {
            max_inbound_bytes_per_sec: 1000,
            ..Limits::default()
        };
        let budget = QueueBudget::unlimited();
        let mut gate = ReadGate::new(&limits);
        let t0 = Instant::now();
        let mut read = 0usize;
        // 10 reads of 500 bytes: the first three need no wait (1000 bytes of burst, and
        // a read is allowed while the bucket is not in debt), then 0.5 s before each.
        for _ in 0..10 {
            if gate.must_wait(&budget) {
                gate.wait(&budget).await;
            }
            gate.consumed(500);
            read += 500;
        }
        let took = t0.elapsed();
        assert_eq!(read, 5000);
        assert!(
            took >= Duration::from_millis(3450) && took <= Duration::from_millis(3550),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn read_gate_pauses_publishers_only() {
        let budget = QueueBudget::new(10);
        budget.adjust(0, 11);
        let mut gate = ReadGate::new(&Limits::default());
        assert!(!gate.must_wait(&budget), "a subscriber keeps being read");
        gate.saw_publish();
        assert!(gate.must_wait(&budget));
        let t0 = Instant::now();
        gate.wait(&budget).await;
        assert_eq!(t0.elapsed(), MAX_PUBLISHER_PAUSE);
        budget.adjust(11, 0);
        assert!(!gate.must_wait(&budget));
    }
}
