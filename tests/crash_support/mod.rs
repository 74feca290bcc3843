//! Helpers for `tests/crash.rs`: run the real `sluice` binary on a data dir that outlives
//! it, `kill -9` and restart it, and drive real `rumqttc` clients against it while keeping
//! an exact account of which sequence numbers the broker acknowledged.
//!
//! Nothing here sleeps to synchronise: every wait is for an event under a timeout. The
//! only sleeps are the short backoffs of a client reconnecting to a broker that is being
//! restarted, and those loops end with the test's deadline (the tasks are aborted).

#![allow(dead_code)] // each test uses a different subset

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long the broker may take to print its ready line (replay included).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Backoff between reconnect attempts while the broker restarts.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// splitmix64: deterministic, seeded from the clock unless `SLUICE_CRASH_SEED` is set.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_clock(test: &str) -> (Rng, u64) {
        let seed = std::env::var("SLUICE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x5eed)
            });
        eprintln!("[{test}] seed={seed} (rerun with SLUICE_CRASH_SEED={seed})");
        (Rng(seed), seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// `count` distinct sorted kill points spread over `1..total`, one per equal slice, so
    /// the kills do not bunch up.
    pub fn kill_points(&mut self, total: u64, count: u64) -> Vec<u64> {
        let slice = total / (count + 1);
        (0..count)
            .map(|i| {
                let lo = slice * i + slice / 2;
                self.range(lo.max(1), lo + slice)
            })
            .collect()
    }
}

/// The `sluice` binary on one data dir, across kills and restarts.
pub struct Broker {
    child: Option<Child>,
    port: Arc<AtomicU16>,
    root: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    pub kills: u32,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with_config(None)
    }

    /// `config`: TOML written to a file passed with `--config`.
    pub fn start_with_config(config: Option<&str>) -> Broker {
        let root = tempfile::Builder::new()
            .prefix("sluice-crash-")
            .tempdir()
            .expect("tempdir");
        let data_dir = root.path().join("data");
        let log_path = root.path().join("broker.log");
        let config_path = config.map(|text| {
            let p = root.path().join("sluice.toml");
            std::fs::write(&p, text).expect("write config");
            p
        });
        let mut broker = Broker {
            child: None,
            port: Arc::new(AtomicU16::new(0)),
            root: Some(root),
            data_dir,
            log_path,
            config_path,
            kills: 0,
        };
        let port = broker
            .spawn(0)
            .unwrap_or_else(|e| panic!("start sluice: {e}"));
        broker.port.store(port, Ordering::SeqCst);
        broker
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// Shared with client tasks so they follow the broker if a restart changes the port.
    pub fn port_cell(&self) -> Arc<AtomicU16> {
        self.port.clone()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// SIGKILL (`Child::kill`), then reap it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("broker is running");
        child.kill().expect("kill -9 sluice");
        child.wait().expect("reap sluice");
        self.kills += 1;
    }

    /// Starts the binary again on the same data dir. The same port is tried first so that
    /// clients reconnect by themselves; if it is taken, any free port (clients read it
    /// from [`Broker::port_cell`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running broker");
        let old = self.port();
        let mut last_err = String::new();
        for attempt in 0..4 {
            let want = if attempt < 3 { old } else { 0 };
            match self.spawn(want) {
                Ok(port) => {
                    self.port.store(port, Ordering::SeqCst);
                    return;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("restart sluice: {last_err}");
    }

    fn spawn(&mut self, port: u16) -> Result<u16, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open log: {e}"))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        if let Some(config) = &self.config_path {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading until EOF so the broker never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("sluice ready") => {
                    let port = parse_mqtt_port(&line)
                        .ok_or_else(|| format!("no mqtt= in ready line {line:?}"))?;
                    self.child = Some(child);
                    return Ok(port);
                }
                Ok(_) => continue,
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(format!(
                        "no ready line ({e:?}), exit status {status:?}; log {}",
                        self.log_path.display()
                    ));
                }
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!(
                    "broker data dir and log kept for inspection: {}",
                    kept.display()
                );
            }
        }
    }
}

fn parse_mqtt_port(line: &str) -> Option<u16> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("mqtt="))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
}

/// v4 (MQTT 3.1.1) options with settings every test wants. rumqttc hands out packet ids
/// 1..=`max_packet_id` and wraps; the publish driver limits what is really in flight.
pub fn v4_options_ids(
    client_id: &str,
    port: u16,
    clean_session: bool,
    max_packet_id: u16,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(clean_session)
        .set_keep_alive(Duration::from_secs(30))
        .set_request_channel_capacity(10_000)
        .set_inflight(max_packet_id);
    o
}

pub fn v4_options(client_id: &str, port: u16, clean_session: bool) -> MqttOptions {
    v4_options_ids(client_id, port, clean_session, 100)
}

/// How the publisher's client numbers its packets.
#[derive(Debug, Clone, Copy)]
pub enum PacketIds {
    /// Ids never wrap within a test (60 000 of them): a stale id the broker kept cannot
    /// swallow a new message, so damage shows up in other ways (refusals, duplicates).
    Unique,
    /// Ids 1..=n, reused as soon as their flow completed — what real clients do.
    Reused(u16),
}

impl PacketIds {
    fn max(self) -> u16 {
        match self {
            PacketIds::Unique => 60_000,
            PacketIds::Reused(n) => n,
        }
    }
}

pub fn seq_payload(seq: u64) -> Vec<u8> {
    seq.to_string().into_bytes()
}

pub fn parse_seq(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload is not a sequence number: {payload:?}"))
}

/// What a subscriber task saw.
#[derive(Debug, Clone)]
pub enum SubEvent {
    ConnAck { session_present: bool },
    SubAck,
    Publish(Received),
    Disconnected(String),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
}

/// A v4 client whose event loop runs in its own task (so no timeout ever cancels a poll
/// half-way through a write) and reconnects by itself — following the broker's port — after
/// the connection drops. With `clean_session == false` that resumes the same session.
pub struct SubscriberTask {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<SubEvent>,
    task: JoinHandle<()>,
}

impl SubscriberTask {
    pub fn spawn(client_id: &str, port: Arc<AtomicU16>, clean_session: bool) -> SubscriberTask {
        let id = client_id.to_string();
        let mut current = port.load(Ordering::SeqCst);
        let (client, mut el) = AsyncClient::new(v4_options(&id, current, clean_session), 10_000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => {
                        let _ = tx.send(SubEvent::ConnAck {
                            session_present: c.session_present,
                        });
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(SubEvent::SubAck);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(SubEvent::Publish(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.clone(),
                            qos: p.qos,
                            retain: p.retain,
                            dup: p.dup,
                        }));
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(e) => {
                        if tx.send(SubEvent::Disconnected(e.to_string())).is_err() {
                            return;
                        }
                        // Reconnect backoff while the broker restarts (aborted with the test).
                        tokio::time::sleep(RECONNECT_BACKOFF).await;
                        let now = port.load(Ordering::SeqCst);
                        if now != current {
                            current = now;
                            el.mqtt_options = v4_options(&id, now, clean_session);
                        }
                    }
                }
            }
        });
        SubscriberTask {
            client,
            events,
            task,
        }
    }

    /// Next event, or panic after `within`.
    pub async fn next(&mut self, within: Duration, what: &str) -> SubEvent {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("subscriber task ended while waiting for {what}"),
            Err(_) => panic!("timed out after {within:?} waiting for {what}"),
        }
    }

    /// Waits for the CONNACK of the next connection; returns session present.
    pub async fn connack(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let SubEvent::ConnAck { session_present } = self.next(left, "CONNACK").await {
                return session_present;
            }
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS, within: Duration) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left, "SUBACK").await {
                SubEvent::SubAck => return,
                SubEvent::Publish(p) => panic!("publish before SUBACK: {p:?}"),
                _ => {}
            }
        }
    }

    /// Sends DISCONNECT and waits for the task to finish (the broker then keeps the session
    /// offline).
    pub async fn disconnect(self, within: Duration) {
        self.client.disconnect().await.expect("disconnect");
        tokio::time::timeout(within, self.task)
            .await
            .expect("disconnect timed out")
            .expect("subscriber task panicked");
    }

    pub fn abort(self) {
        self.task.abort();
    }
}

/// Collects the sequence numbers received by `sub` (payloads), in arrival order, until every
/// element of `expected` arrived and then nothing more for `quiet` (so late duplicates are
/// seen too), or until `deadline`. CONNACKs seen meanwhile go to `connacks` (session present).
pub async fn collect_until(
    sub: &mut SubscriberTask,
    expected: &BTreeSet<u64>,
    quiet: Duration,
    deadline: Instant,
    got: &mut Vec<u64>,
    connacks: &mut Vec<bool>,
) {
    let mut seen: BTreeSet<u64> = got.iter().copied().collect();
    let mut missing = expected.difference(&seen).count();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let wait = if missing == 0 {
            quiet.min(deadline - now)
        } else {
            deadline - now
        };
        match tokio::time::timeout(wait, sub.events.recv()).await {
            Err(_) => return, // quiet period over (or deadline)
            Ok(None) => return,
            Ok(Some(SubEvent::Publish(p))) => {
                let seq = parse_seq(&p.payload);
                got.push(seq);
                if seen.insert(seq) && expected.contains(&seq) {
                    missing -= 1;
                }
            }
            Ok(Some(SubEvent::ConnAck { session_present })) => connacks.push(session_present),
            Ok(Some(_)) => {}
        }
    }
}

/// How a publisher run went.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Sequence numbers whose PUBACK (QoS 1) or PUBREC (QoS 2) arrived.
    pub acked: BTreeSet<u64>,
    /// Messages acknowledged before each kill: after it, the publisher never sends them
    /// again, so the broker's disk is their only copy.
    pub acked_at_kill: Vec<usize>,
    /// Messages handed to the client but not yet acknowledged at each kill.
    pub in_flight_at_kill: Vec<usize>,
    /// PUBLISH packets re-sent by the client after reconnecting.
    pub retransmits: u64,
    /// Sequence numbers the client re-sent after a reconnect. rumqttc re-sends its
    /// pending PUBLISHes in packet-id order, not publish order, so the broker may
    /// legitimately receive (and deliver) these out of publish order.
    pub resent: BTreeSet<u64>,
    /// Connection errors that did not follow one of our kills.
    pub unexpected_disconnects: Vec<String>,
}

/// Publishes `0..total` (payload = sequence number) on `topic` from one persistent
/// (clean session = false) v4 client with at most `window` messages unacknowledged, and
/// `kill -9`s + restarts the broker once the sequence passes each of `kill_points` (after a
/// few more events, so kills land at varied moments). The client keeps its event loop
/// across restarts: it re-sends unacknowledged PUBLISHes (QoS 1 and 2) and PUBRELs, as
/// MQTT requires.
#[allow(clippy::too_many_arguments)]
pub async fn publish_with_kills(
    broker: &mut Broker,
    rng: &mut Rng,
    client_id: &str,
    topic: &str,
    qos: QoS,
    ids: PacketIds,
    total: u64,
    window: usize,
    kill_points: &[u64],
    deadline: Instant,
) -> PublishOutcome {
    assert!(qos != QoS::AtMostOnce);
    match ids {
        PacketIds::Unique => assert!(total < 60_000, "unique packet ids would wrap"),
        PacketIds::Reused(n) => assert!(window <= usize::from(n)),
    }
    let max_id = ids.max();
    let mut port = broker.port();
    let (client, mut el) = AsyncClient::new(v4_options_ids(client_id, port, false, max_id), 10_000);
    let mut out = PublishOutcome::default();
    // Requested from the client, not yet given a packet id (in request order).
    let mut unsent: VecDeque<u64> = VecDeque::new();
    // Packet id -> sequence number, until PUBACK (QoS 1) or PUBCOMP (QoS 2).
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    // A request rumqttc took but holds back because its packet id is still in use; it is
    // sent (as `Outgoing::Publish`) once that id is free.
    let mut collided: Option<(u16, u64)> = None;
    let mut next: u64 = 0;
    let mut kills = kill_points.iter().copied().peekable();
    // Events still to handle before the pending kill fires.
    let mut kill_countdown: Option<u64> = None;
    let mut killed = false; // a kill happened and the dead connection is not yet seen

    loop {
        assert!(
            Instant::now() < deadline,
            "publisher {client_id} out of time at seq {next}: {} acked, {} in flight, \
             {} unsent",
            out.acked.len(),
            in_flight.len(),
            unsent.len()
        );
        if next == total && unsent.is_empty() && in_flight.is_empty() && collided.is_none() {
            break;
        }
        while next < total
            && unsent.len() + in_flight.len() + usize::from(collided.is_some()) < window
        {
            client
                .try_publish(topic, qos, false, seq_payload(next))
                .expect("request channel has room");
            unsent.push_back(next);
            next += 1;
        }
        if kill_countdown.is_none() && kills.peek().is_some_and(|&k| next >= k) {
            kills.next();
            kill_countdown = Some(rng.range(0, window as u64 + 1));
        }
        if kill_countdown == Some(0) {
            kill_countdown = None;
            out.acked_at_kill.push(out.acked.len());
            out.in_flight_at_kill
                .push(unsent.len() + in_flight.len() + usize::from(collided.is_some()));
            broker.kill9();
            killed = true;
        }

        let ev = match tokio::time::timeout(Duration::from_secs(15), el.poll()).await {
            Ok(ev) => ev,
            Err(_) => panic!(
                "publisher {client_id}: no event for 15 s at seq {next} ({} in flight)",
                in_flight.len()
            ),
        };
        if let Some(n) = kill_countdown.as_mut() {
            *n = n.saturating_sub(1);
        }
        match ev {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                match in_flight.entry(pkid) {
                    // Re-sent after a reconnect: same id, same message.
                    Entry::Occupied(e) => {
                        out.retransmits += 1;
                        out.resent.insert(*e.get());
                    }
                    Entry::Vacant(slot) => {
                        let seq = match collided {
                            Some((id, seq)) if id == pkid => {
                                collided = None;
                                seq
                            }
                            _ => unsent.pop_front().unwrap_or_else(|| {
                                panic!("PUBLISH id {pkid} with nothing requested")
                            }),
                        };
                        slot.insert(seq);
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                assert!(collided.is_none(), "two packet id collisions at once");
                let seq = unsent
                    .pop_front()
                    .unwrap_or_else(|| panic!("collision on id {pkid} with nothing requested"));
                collided = Some((pkid, seq));
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                let seq = in_flight
                    .remove(&a.pkid)
                    .unwrap_or_else(|| panic!("PUBACK for unknown packet id {}", a.pkid));
                out.acked.insert(seq);
            }
            Ok(Event::Incoming(Packet::PubRec(r))) => {
                let seq = *in_flight
                    .get(&r.pkid)
                    .unwrap_or_else(|| panic!("PUBREC for unknown packet id {}", r.pkid));
                out.acked.insert(seq);
            }
            Ok(Event::Incoming(Packet::PubComp(c))) => {
                in_flight
                    .remove(&c.pkid)
                    .unwrap_or_else(|| panic!("PUBCOMP for unknown packet id {}", c.pkid));
            }
            Ok(_) => {}
            Err(e) => {
                if killed {
                    killed = false;
                    broker.restart();
                    if broker.port() != port {
                        port = broker.port();
                        el.mqtt_options = v4_options_ids(client_id, port, false, max_id);
                    }
                } else {
                    // The broker dropped us (or refused while starting): note and retry.
                    out.unexpected_disconnects.push(e.to_string());
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                }
            }
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(ev) = el.poll().await {
            if ev == Event::Outgoing(Outgoing::Disconnect) {
                break;
            }
        }
    })
    .await;
    out
}

/// Publishes one QoS 1 message from a fresh clean-session v4 client, waits for its PUBACK
/// and disconnects.
pub async fn publish_once(port: u16, client_id: &str, topic: &str, payload: &[u8], retain: bool) {
    let (client, mut el) = AsyncClient::new(v4_options(client_id, port, true), 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .expect("publish request");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, el.poll()).await {
            Err(_) => panic!("no PUBACK for {topic} within 10 s"),
            Ok(Err(e)) => panic!("publisher {client_id}: {e}"),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
        }
    }
    client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(ev) = el.poll().await {
            if ev == Event::Outgoing(Outgoing::Disconnect) {
                break;
            }
        }
    })
    .await;
}

/// Checks of what a subscriber received against what the publisher had acknowledged.
pub struct Verdict {
    pub missing: Vec<u64>,
    pub duplicates: Vec<(u64, usize)>,
    pub out_of_order: Vec<(u64, u64)>,
    pub unknown: Vec<u64>,
}

pub fn judge(acked: &BTreeSet<u64>, total: u64, got: &[u64]) -> Verdict {
    judge_resent(acked, &BTreeSet::new(), total, got)
}

/// Like [`judge`], but an order inversion involving a message the client re-sent after
/// a reconnect is not the broker's: the client itself sent those out of order.
pub fn judge_resent(
    acked: &BTreeSet<u64>,
    resent: &BTreeSet<u64>,
    total: u64,
    got: &[u64],
) -> Verdict {
    let mut counts: HashMap<u64, usize> = HashMap::new();
    let mut first_order = Vec::new();
    for &s in got {
        let c = counts.entry(s).or_insert(0);
        if *c == 0 {
            first_order.push(s);
        }
        *c += 1;
    }
    let missing = acked
        .iter()
        .copied()
        .filter(|s| !counts.contains_key(s))
        .collect();
    let mut duplicates: Vec<(u64, usize)> = counts
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&s, &c)| (s, c))
        .collect();
    duplicates.sort_unstable();
    let out_of_order = first_order
        .windows(2)
        .filter(|w| w[1] < w[0] && !resent.contains(&w[0]) && !resent.contains(&w[1]))
        .map(|w| (w[0], w[1]))
        .collect();
    let unknown = counts.keys().copied().filter(|&s| s >= total).collect();
    Verdict {
        missing,
        duplicates,
        out_of_order,
        unknown,
    }
}

/// First few elements, for failure messages.
pub fn head<T: std::fmt::Debug>(v: &[T]) -> String {
    if v.len() <= 20 {
        format!("{v:?}")
    } else {
        format!("{:?} ... ({} in all)", &v[..20], v.len())
    }
}
