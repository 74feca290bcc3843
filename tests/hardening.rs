//! Hostile-client hardening: what a broker on the internet meets from broken firmware,
//! scanners and attackers. Each test drives the real binary on 127.0.0.1:0, states its
//! bound in a comment, asserts it, and prints what it measured (`--nocapture`).
//!
//! The tests run one at a time (hardening_support::run) so one test's load does not
//! show in another's RSS or latency numbers.

mod common;
mod hardening_support;

use common::packet::{self, Connect, Prop};
use common::Broker;
use hardening_support::{
    assert_healthy, fds, handshake, handshake_on, mib, probe, probe_loop, raise_nofile,
    read_packet, rss_kib, run, tcp, threads, Frames, Rng, PROBES_OK,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

const PACKET_TOO_LARGE: u8 = 0x95;
const TOPIC_NAME_INVALID: u8 = 0x90;
const QUOTA_EXCEEDED: u8 = 0x97;

/// Reads until the peer closes, within `dur`: Ok(bytes received) or Err on timeout.
async fn drain_until_close(s: &mut tokio::net::TcpStream, dur: Duration) -> Result<Vec<u8>, ()> {
    let deadline = tokio::time::Instant::now() + dur;
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Splits received bytes into packets (a trailing partial packet is dropped).
fn packets_of(bytes: &[u8]) -> Vec<packet::Pkt> {
    let mut f = Frames::default();
    f.push(bytes);
    std::iter::from_fn(|| f.next_packet()).collect()
}

fn start_probes(port: u16, every_ms: u64, first_id: u64) -> (Arc<AtomicBool>, ProbeTask) {
    let stop = Arc::new(AtomicBool::new(false));
    PROBES_OK.store(0, Ordering::Relaxed);
    let task = tokio::spawn(probe_loop(
        port,
        Duration::from_millis(every_ms),
        first_id,
        Arc::clone(&stop),
    ));
    (stop, task)
}

type ProbeTask = tokio::task::JoinHandle<(u64, Vec<String>, Duration)>;

/// Stops a probe loop and asserts every probe succeeded within `max`.
async fn finish_probes(stop: Arc<AtomicBool>, task: ProbeTask, min_ok: u64, max: Duration) {
    // The probes must have had their chance: when the broker got through the abuse
    // faster than `min_ok` probe intervals, keep probing until they have run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while PROBES_OK.load(Ordering::Relaxed) < min_ok && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, worst) = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("probe loop ends")
        .expect("probe loop task");
    eprintln!(
        "  probes: {ok} ok, {} failed, slowest {worst:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "normal clients failed meanwhile: {failed:?}"
    );
    assert!(
        ok >= min_ok,
        "only {ok} probes completed (want >= {min_ok})"
    );
    assert!(
        worst < max,
        "a normal client took {worst:?} (bound {max:?})"
    );
}

// ------------------------------------------------------------------------------------
// 1. Sockets that never send CONNECT.

/// Bound: each of 2,000 sockets that never sends CONNECT is closed (with nothing sent to
/// it) between `connect_timeout_secs` (2 s) and 2 s + 2 s of slack after it was opened,
/// none earlier than 1.75 s (max_pending_connects is 10,000, so none is refused); the
/// broker's fds come back to their baseline (+20). Meanwhile normal clients keep
/// connecting, subscribing and publishing, each round trip under 2 s.
#[test]
fn silent_sockets_are_closed_after_connect_timeout() {
    run(async {
        let limit = raise_nofile();
        // This process holds one end of every socket; the broker (same limit, inherited)
        // the other. Keep 200 fds for everything else.
        let n = 2000usize.min((limit as usize).saturating_sub(200));
        if n < 2000 {
            eprintln!("  RLIMIT_NOFILE is {limit}: using {n} silent sockets instead of 2000");
        }
        assert!(n >= 1000, "RLIMIT_NOFILE {limit} allows only {n} sockets");
        let b = Broker::start_with_config("[limits]\nconnect_timeout_secs = 2\n");
        let (pid, port) = (b.pid(), b.port());
        probe(port, 0).await.expect("warm-up probe");
        let (fds0, rss0) = (fds(pid), rss_kib(pid));
        let (stop, prober) = start_probes(port, 50, 1);

        let t0 = Instant::now();
        // 250 connects in flight at a time keeps the listen backlog from overflowing
        // (an overflow costs a 1 s SYN retry and would blur the timing).
        let gate = Arc::new(tokio::sync::Semaphore::new(250));
        let mut set = JoinSet::new();
        for _ in 0..n {
            let gate = Arc::clone(&gate);
            set.spawn(async move {
                let permit = gate.acquire_owned().await.expect("semaphore");
                let mut s = tcp(port).await;
                drop(permit);
                let opened = Instant::now();
                let r = drain_until_close(&mut s, Duration::from_secs(12)).await;
                (opened, opened.elapsed(), r)
            });
        }
        let mut lifetimes = Vec::with_capacity(n);
        let mut last_open = t0;
        let mut peak_fds = 0;
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while !set.is_empty() {
            tokio::select! {
                r = set.join_next() => {
                    let (opened, life, r) = r.expect("non-empty").expect("socket task");
                    let got = r.unwrap_or_else(|_| panic!("a silent socket was still open 12 s after it connected"));
                    bytes += got.len();
                    last_open = last_open.max(opened);
                    lifetimes.push(life);
                }
                _ = tick.tick() => peak_fds = peak_fds.max(fds(pid)),
                _ = tokio::time::sleep_until(deadline) => panic!("silent sockets not all closed in 30 s"),
            }
        }
        let all_closed = t0.elapsed();
        let rss1 = rss_kib(pid);
        finish_probes(stop, prober, 5, Duration::from_secs(2)).await;
        lifetimes.sort();
        let (min, p50, max) = (lifetimes[0], lifetimes[n / 2], lifetimes[n - 1]);
        // fds come back once the tasks are gone.
        let back = Instant::now();
        while fds(pid) > fds0 + 20 && back.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let fds1 = fds(pid);
        eprintln!(
            "  {n} silent sockets: opened in {:?}, all closed {all_closed:?} after the first; \
             lifetime min {min:?} p50 {p50:?} max {max:?}; broker fds {fds0} -> peak {peak_fds} -> {fds1}; \
             RSS {:.1} -> {:.1} MiB",
            last_open - t0,
            mib(rss0),
            mib(rss1)
        );
        assert_eq!(
            bytes, 0,
            "the broker sent bytes to sockets that never sent CONNECT"
        );
        // `opened` is read when this task next runs after connect(), which on a loaded
        // 2-core machine can be 100-200 ms after the broker accepted (and started its
        // 2 s timer): 1.75 s still tells a 2 s timeout from any shorter one.
        assert!(
            min >= Duration::from_millis(1750),
            "a silent socket was closed after only {min:?}"
        );
        assert!(
            max <= Duration::from_secs(4),
            "a silent socket lived {max:?} (bound 2 s + 2 s)"
        );
        assert!(
            fds1 <= fds0 + 20,
            "broker fds {fds0} -> {fds1}: sockets leaked"
        );
        assert_healthy(&b);
    });
}

// ------------------------------------------------------------------------------------
// 2. A CONNECT that declares 256 MiB.

/// Bound: a CONNECT whose fixed header declares 256 MiB (remaining length ff ff ff 7f),
/// sent by 20 clients at once, header only, is refused within 5 s (a close, or a
/// failure CONNACK / DISCONNECT 0x95), and the broker's RSS grows by less than 4 MiB
/// (buffering even one body would be 256 MiB). A connected v5 client declaring a
/// 256 MiB PUBLISH gets DISCONNECT 0x95.
#[test]
fn connect_declaring_256_mib_is_refused_from_the_header() {
    run(async {
        let b = Broker::start();
        let (pid, port) = (b.pid(), b.port());
        probe(port, 0).await.expect("warm-up probe");
        let rss0 = rss_kib(pid);
        let mut set = JoinSet::new();
        for _ in 0..20 {
            set.spawn(async move {
                let mut s = tcp(port).await;
                let t = Instant::now();
                s.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f])
                    .await
                    .expect("send header");
                let got = drain_until_close(&mut s, Duration::from_secs(5))
                    .await
                    .expect("the 256 MiB CONNECT was not refused within 5 s");
                (t.elapsed(), got)
            });
        }
        let mut worst = Duration::ZERO;
        while let Some(r) = set.join_next().await {
            let (took, got) = r.expect("task");
            worst = worst.max(took);
            for p in packets_of(&got) {
                let refused = (p.kind() == packet::CONNACK && p.connack().1 != 0)
                    || (p.first == 0xe0 && p.reason() == PACKET_TOO_LARGE);
                assert!(refused, "unexpected answer to the 256 MiB CONNECT: {p:?}");
            }
        }
        let rss1 = rss_kib(pid);

        // The same from an established v5 connection.
        let (mut s, _, mut frames) = handshake(port, &Connect::v5("big-publish")).await;
        let t = Instant::now();
        s.write_all(&[0x30, 0xff, 0xff, 0xff, 0x7f])
            .await
            .expect("send header");
        let d = read_packet(&mut s, &mut frames, Duration::from_secs(5)).await;
        let took_v5 = t.elapsed();
        assert!(
            matches!(&d, Some(p) if p.first == 0xe0 && p.reason() == PACKET_TOO_LARGE),
            "expected DISCONNECT 0x95, got {d:?}"
        );
        drain_until_close(&mut s, Duration::from_secs(5))
            .await
            .expect("closed after DISCONNECT 0x95");
        let rss2 = rss_kib(pid);
        eprintln!(
            "  20 x CONNECT declaring 256 MiB: refused within {worst:?}; v5 PUBLISH declaring 256 MiB: \
             DISCONNECT 0x95 in {took_v5:?}; RSS {:.1} -> {:.1} -> {:.1} MiB",
            mib(rss0),
            mib(rss1),
            mib(rss2)
        );
        assert!(
            rss2.saturating_sub(rss0) < 4 * 1024,
            "RSS grew by {:.1} MiB (bound 4 MiB)",
            mib(rss2.saturating_sub(rss0))
        );
        probe(port, 1).await.expect("broker still serves");
        assert_healthy(&b);
    });
}

// ------------------------------------------------------------------------------------
// 3. Huge-but-legal packets.

/// Bound (max_packet_size raised to 4 MiB): a v5 CONNECT with 10,000 user properties
/// (~150 KB) and one with 200,000 (~2.6 MB), a SUBSCRIBE with 10,000 filters, and
/// PUBLISH/SUBSCRIBE with a 1,000-level topic (max_topic_levels 64) are each answered
/// within 5 s; the broker's RSS grows by less than 64 MiB over all of it; probes by
/// other clients every 100 ms all succeed, each within 5 s.
#[test]
fn huge_property_filter_and_level_counts_are_answered_in_bounded_time() {
    run(async {
        let b = Broker::start_with_config("[limits]\nmax_packet_size = 4194304\n");
        let (pid, port) = (b.pid(), b.port());
        probe(port, 0).await.expect("warm-up probe");
        let rss0 = rss_kib(pid);
        let (stop, prober) = start_probes(port, 100, 1);
        let bound = Duration::from_secs(5);

        for count in [10_000usize, 200_000] {
            let mut c = Connect::v5(&format!("uprops-{count}"));
            c.props = (0..count)
                .map(|i| Prop::Pair(format!("k{i}"), "v".into()))
                .collect();
            let bytes = c.build();
            let mut s = tcp(port).await;
            let t = Instant::now();
            s.write_all(&bytes).await.expect("send CONNECT");
            let mut frames = Frames::default();
            let ack = read_packet(&mut s, &mut frames, bound).await;
            let took = t.elapsed();
            eprintln!(
                "  CONNECT with {count} user properties ({} bytes): {:?} in {took:?}; RSS {:.1} MiB",
                bytes.len(),
                ack.as_ref().map(|p| p.connack()),
                mib(rss_kib(pid))
            );
            let ack = ack.unwrap_or_else(|| panic!("no CONNACK within {bound:?}"));
            assert_eq!(ack.connack().1, 0, "refused: {ack:?}");
            s.write_all(&packet::PINGREQ).await.expect("PINGREQ");
            let pong = read_packet(&mut s, &mut frames, bound).await;
            assert!(
                matches!(&pong, Some(p) if p.kind() == packet::PINGRESP),
                "{pong:?}"
            );
        }

        // One SUBSCRIBE carrying 10,000 filters.
        let (mut s, _, mut frames) = handshake(port, &Connect::v5("many-filters")).await;
        let names: Vec<String> = (0..10_000).map(|i| format!("many/{i}")).collect();
        let filters: Vec<(&str, u8)> = names.iter().map(|f| (f.as_str(), 1)).collect();
        let sub = packet::subscribe(true, 7, &[], &filters);
        let t = Instant::now();
        s.write_all(&sub).await.expect("send SUBSCRIBE");
        let ack = read_packet(&mut s, &mut frames, bound).await;
        let took = t.elapsed();
        let ack = ack.unwrap_or_else(|| panic!("no SUBACK for 10,000 filters within {bound:?}"));
        let codes = ack.suback_codes(true);
        let granted = codes.iter().filter(|&&c| c == 1).count();
        let quota = codes.iter().filter(|&&c| c == QUOTA_EXCEEDED).count();
        eprintln!(
            "  SUBSCRIBE with 10000 filters ({} bytes): SUBACK in {took:?}, {granted} granted, {quota} x 0x97; RSS {:.1} MiB",
            sub.len(),
            mib(rss_kib(pid))
        );
        assert_eq!(codes.len(), 10_000);
        assert_eq!(
            (granted, quota),
            (1000, 9000),
            "max_subscriptions_per_client is 1000"
        );

        drop(s);
        // 1,000 topic levels, over max_topic_levels = 64 (a fresh client, far from its
        // subscription quota).
        let (mut s, _, mut frames) = handshake(port, &Connect::v5("deep5")).await;
        let deep = vec!["a"; 1000].join("/");
        let t = Instant::now();
        s.write_all(&packet::subscribe(true, 8, &[], &[(&deep, 1)]))
            .await
            .expect("send deep SUBSCRIBE");
        let ack = read_packet(&mut s, &mut frames, bound).await;
        let took_sub = t.elapsed();
        let code = ack
            .as_ref()
            .filter(|p| p.kind() == packet::SUBACK)
            .map(|p| p.suback_codes(true))
            .unwrap_or_else(|| panic!("no SUBACK for a 1000-level filter: {ack:?}"));
        assert!(
            code.len() == 1 && code[0] >= 0x80,
            "1000-level filter granted: {code:02x?}"
        );
        let t = Instant::now();
        s.write_all(&packet::publish(true, &deep, 1, false, 9, &[], b"deep"))
            .await
            .expect("send deep PUBLISH");
        let d = read_packet(&mut s, &mut frames, bound).await;
        let took_pub = t.elapsed();
        assert!(
            matches!(&d, Some(p) if p.first == 0xe0 && p.reason() == TOPIC_NAME_INVALID),
            "expected DISCONNECT 0x90 for a 1000-level topic, got {d:?}"
        );
        drain_until_close(&mut s, bound).await.expect("closed");
        // 3.1.1 has no DISCONNECT to send: a close.
        let (mut s3, _, _) = handshake(port, &Connect::v311("deep311")).await;
        let t = Instant::now();
        s3.write_all(&packet::publish(false, &deep, 0, false, 0, &[], b"deep"))
            .await
            .expect("send deep PUBLISH");
        drain_until_close(&mut s3, bound)
            .await
            .expect("a 3.1.1 PUBLISH to 1000 levels is answered by a close");
        let took_311 = t.elapsed();
        let rss1 = rss_kib(pid);
        eprintln!(
            "  1000-level filter: SUBACK {:#04x} in {took_sub:?}; 1000-level PUBLISH: v5 DISCONNECT 0x90 in {took_pub:?}, \
             3.1.1 close in {took_311:?}; RSS {:.1} -> {:.1} MiB",
            code[0],
            mib(rss0),
            mib(rss1)
        );
        assert!(took_sub < bound && took_pub < bound && took_311 < bound);
        assert!(
            rss1.saturating_sub(rss0) < 64 * 1024,
            "RSS grew by {:.1} MiB (bound 64 MiB)",
            mib(rss1.saturating_sub(rss0))
        );
        finish_probes(stop, prober, 3, bound).await;
        assert_healthy(&b);
    });
}

// ------------------------------------------------------------------------------------
// 4. Rapid takeovers.

/// One takeover connection: reads and acks until the broker closes it (or `stop`),
/// recording every QoS 1 payload it saw.
async fn take_reader(
    mut s: tokio::net::TcpStream,
    mut frames: Frames,
    seen: Arc<Mutex<HashSet<u64>>>,
    stop: Arc<AtomicBool>,
) {
    loop {
        let p = loop {
            if let Some(p) = frames.next_packet() {
                break Some(p);
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => frames.push(&chunk[..n]),
                Ok(_) => return,
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(_) => {}
            }
        };
        let Some(p) = p else { return };
        if p.kind() == packet::PUBLISH {
            let m = p.publish(false);
            if let Some(seq) = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|t| t.strip_prefix("tk-"))
                .and_then(|n| n.parse().ok())
            {
                seen.lock().insert(seq);
            }
            if m.qos == 1 && s.write_all(&packet::puback(m.packet_id)).await.is_err() {
                return;
            }
        }
    }
}

/// Bound: 500 takeovers of one persistent 3.1.1 client id (clean session 0) finish in
/// < 30 s while a publisher sends QoS 1 to its topic; every takeover's CONNACK says
/// session present = 1; every message the publisher got a PUBACK for was received by
/// one of the connections or is in the dead-letter queue; nothing panics.
#[test]
fn rapid_takeovers_lose_no_acknowledged_message() {
    run(async {
        let b = Broker::start();
        let port = b.port();
        let pid = b.pid();
        let topic = "take/topic";
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let stop_readers = Arc::new(AtomicBool::new(false));
        let taker = || Connect::v311("taker").clean(false);
        // The session is created and subscribed first.
        let (mut s, ack, mut frames) = handshake(port, &taker()).await;
        assert!(!ack.connack().0, "a new session is not present");
        s.write_all(&packet::subscribe(false, 1, &[], &[(topic, 1)]))
            .await
            .expect("SUBSCRIBE");
        let sub = read_packet(&mut s, &mut frames, Duration::from_secs(5)).await;
        assert!(
            matches!(&sub, Some(p) if p.kind() == packet::SUBACK),
            "{sub:?}"
        );
        let mut readers = JoinSet::new();
        readers.spawn(take_reader(
            s,
            frames,
            Arc::clone(&seen),
            Arc::clone(&stop_readers),
        ));

        // The publisher: QoS 1, one at a time, payload tk-<seq>.
        let stop_pub = Arc::new(AtomicBool::new(false));
        let publisher = {
            let stop = Arc::clone(&stop_pub);
            tokio::spawn(async move {
                let (mut s, _, mut frames) = handshake(port, &Connect::v311("take-pub")).await;
                let mut acked = Vec::new();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = (seq % 65535 + 1) as u16;
                    let payload = format!("tk-{seq}");
                    s.write_all(&packet::publish(
                        false,
                        topic,
                        1,
                        false,
                        id,
                        &[],
                        payload.as_bytes(),
                    ))
                    .await
                    .expect("publish");
                    match read_packet(&mut s, &mut frames, Duration::from_secs(10)).await {
                        Some(p) if p.kind() == packet::PUBACK && p.packet_id() == id => {
                            acked.push(seq)
                        }
                        other => panic!("publisher: expected PUBACK {id}, got {other:?}"),
                    }
                    seq += 1;
                }
                (seq, acked)
            })
        };

        let t0 = Instant::now();
        let mut rng = Rng(0x5eed_7a4e);
        let mut not_present = 0;
        let mut slowest = Duration::ZERO;
        for _ in 0..500 {
            let t = Instant::now();
            let (s, ack, frames) = handshake(port, &taker()).await;
            slowest = slowest.max(t.elapsed());
            if !ack.connack().0 {
                not_present += 1;
            }
            readers.spawn(take_reader(
                s,
                frames,
                Arc::clone(&seen),
                Arc::clone(&stop_readers),
            ));
            // Bounded pacing: 0-4 ms of deliveries to each connection before the next.
            tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "500 takeovers took over 30 s"
            );
        }
        let takeovers = t0.elapsed();
        stop_pub.store(true, Ordering::Relaxed);
        let (sent, acked) = tokio::time::timeout(Duration::from_secs(15), publisher)
            .await
            .expect("publisher stops")
            .expect("publisher task");
        // The final connection drains: wait until it saw every acked message or 3 s of
        // no progress.
        let want: HashSet<u64> = acked.iter().copied().collect();
        let mut last = (seen.lock().len(), Instant::now());
        loop {
            let n = seen.lock().len();
            if want.is_subset(&seen.lock()) || last.1.elapsed() > Duration::from_secs(3) {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop_readers.store(true, Ordering::Relaxed);
        while tokio::time::timeout(Duration::from_secs(5), readers.join_next())
            .await
            .expect("readers stop")
            .is_some()
        {}
        // What the final connection did not get may have been dead-lettered.
        let (mut d, _, mut frames) =
            handshake(port, &Connect::v311("sluice-dlq").clean(false)).await;
        let mut dlq = HashSet::new();
        let mut dlq_topics = BTreeMap::new();
        while let Some(p) = read_packet(&mut d, &mut frames, Duration::from_secs(2)).await {
            if p.kind() != packet::PUBLISH {
                continue;
            }
            let m = p.publish(false);
            if let Some(seq) = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|t| t.strip_prefix("tk-"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                dlq.insert(seq);
                *dlq_topics.entry(m.topic.clone()).or_insert(0) += 1;
            }
            if m.qos > 0 {
                let _ = d.write_all(&packet::puback(m.packet_id)).await;
            }
        }
        let seen = seen.lock().clone();
        let mut missing: Vec<u64> = want
            .iter()
            .filter(|s| !seen.contains(s) && !dlq.contains(s))
            .copied()
            .collect();
        missing.sort();
        eprintln!(
            "  500 takeovers in {takeovers:?} (slowest CONNACK {slowest:?}); published {sent}, acked {}, \
             received {} distinct, dead-lettered {} {dlq_topics:?}; missing {}; RSS {:.1} MiB, fds {}, threads {}",
            acked.len(),
            seen.len(),
            dlq.len(),
            missing.len(),
            mib(rss_kib(pid)),
            fds(pid),
            threads(pid)
        );
        assert_eq!(
            not_present, 0,
            "takeovers whose CONNACK said session present = 0"
        );
        assert!(
            acked.len() > 100,
            "the publisher barely published ({} acked)",
            acked.len()
        );
        assert!(
            missing.is_empty(),
            "{} acknowledged QoS 1 messages were neither delivered nor dead-lettered: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        assert_healthy(&b);
    });
}

// ------------------------------------------------------------------------------------
// 5. A subscriber that never reads.

const SLOW_CONFIG: &str = "\
[limits]
max_inflight = 100
max_queued_messages = 1000
max_queued_bytes = 262144

[dead_letter]
max_messages = 1000
max_bytes = 262144

[store]
# Compaction reads one sealed segment into memory: a small segment keeps that
# transient cost (segment_bytes of RSS) inside the bound.
segment_bytes = 4194304
";

/// Bound: with the queues above, a subscriber that never reads (QoS 1 `load/#` and QoS 0
/// `load/+/data`, 16 KiB receive buffer) while 10 QoS 1 publishers send 256-byte
/// messages as fast as they are acked for 10 s costs the broker at most
///
/// ```text
/// baseline
///   + 3 bounded queues (slow subscriber, reading subscriber, dead-letter session)
///       x (max_queued_bytes 256 KiB + max_queued_messages 1000 x 1 KiB overhead)
///   + 2 x max_inflight 100 x (256 B + 1 KiB)
///   + 12 connections x 512 KiB of buffers
///   + 10 publishers x receive_maximum 100 x 1.3 KiB
///   + segment_bytes 4 MiB (compaction reads one sealed segment into memory)
///   + 24 MiB allocator/runtime/store-index slack
/// ~= baseline + 38 MiB of RSS
/// ```
///
/// and RSS does not trend once warm: the mean of seconds 7-10 is within 8 MiB of the
/// mean of seconds 3-6. The reading subscriber receives in every second (no gap over
/// 1 s) and every publisher keeps getting PUBACKs (no gap over 2 s).
#[test]
fn a_subscriber_that_never_reads_costs_bounded_memory() {
    run(async {
        let b = Broker::start_with_config(SLOW_CONFIG);
        let (pid, port) = (b.pid(), b.port());
        const PAYLOAD: usize = 256;
        const PUBLISHERS: usize = 10;
        const WINDOW: usize = 32;
        let run_for = Duration::from_secs(10);

        // The subscriber that never reads.
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let mut slow = sock
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect");
        slow.write_all(&Connect::v311("never-reads").build())
            .await
            .expect("CONNECT");
        let mut connack = [0u8; 4];
        slow.read_exact(&mut connack).await.expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0]);
        slow.write_all(&packet::subscribe(
            false,
            1,
            &[],
            &[("load/#", 1), ("load/+/data", 0)],
        ))
        .await
        .expect("SUBSCRIBE");
        let mut suback = [0u8; 6];
        slow.read_exact(&mut suback).await.expect("SUBACK");
        assert_eq!(suback, [0x90, 4, 0, 1, 1, 0]);

        // The subscriber that reads (QoS 1, acks everything).
        let t0 = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let last_rx_us = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (received, last_rx_us, stop) = (
                Arc::clone(&received),
                Arc::clone(&last_rx_us),
                Arc::clone(&stop),
            );
            let (mut s, _, mut frames) = handshake(port, &Connect::v311("reads")).await;
            s.write_all(&packet::subscribe(false, 1, &[], &[("load/#", 1)]))
                .await
                .expect("SUBSCRIBE");
            let ack = read_packet(&mut s, &mut frames, Duration::from_secs(5)).await;
            assert!(
                matches!(&ack, Some(p) if p.kind() == packet::SUBACK),
                "{ack:?}"
            );
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 64 * 1024];
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(100), s.read(&mut chunk)).await
                    {
                        Ok(Ok(n)) if n > 0 => frames.push(&chunk[..n]),
                        Ok(_) => panic!("the reading subscriber was disconnected"),
                        Err(_) => continue,
                    }
                    while let Some(p) = frames.next_packet() {
                        if p.kind() == packet::PUBLISH {
                            received.fetch_add(1, Ordering::Relaxed);
                            let m = p.publish(false);
                            if m.qos == 1 {
                                out.extend_from_slice(&packet::puback(m.packet_id));
                            }
                        }
                    }
                    last_rx_us.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    if !out.is_empty() {
                        s.write_all(&out).await.expect("PUBACKs");
                        out.clear();
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss0 = rss_kib(pid);

        // Publishers: QoS 1, WINDOW unacknowledged each.
        let acks: Arc<Vec<AtomicU64>> =
            Arc::new((0..PUBLISHERS).map(|_| AtomicU64::new(0)).collect());
        let last_ack_us: Arc<Vec<AtomicU64>> = Arc::new(
            (0..PUBLISHERS)
                .map(|_| AtomicU64::new(t0.elapsed().as_micros() as u64))
                .collect(),
        );
        let mut pubs = JoinSet::new();
        for i in 0..PUBLISHERS {
            let (s, _, mut frames) =
                handshake(port, &Connect::v311(&format!("load-pub-{i}"))).await;
            let (mut rd, mut wr) = s.into_split();
            let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
            let (acks, last_ack_us) = (Arc::clone(&acks), Arc::clone(&last_ack_us));
            let w = Arc::clone(&window);
            let stop_w = Arc::clone(&stop);
            pubs.spawn(async move {
                let stop = stop_w;
                let topic = format!("load/{i}/data");
                let payload = vec![b'x'; PAYLOAD];
                let mut id = 0u16;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok(permit)) =
                        tokio::time::timeout(Duration::from_millis(200), w.acquire()).await
                    else {
                        continue;
                    };
                    permit.forget();
                    id = id % 65535 + 1;
                    if wr
                        .write_all(&packet::publish(false, &topic, 1, false, id, &[], &payload))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let stop = Arc::clone(&stop);
            pubs.spawn(async move {
                let mut chunk = vec![0u8; 16 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(100), rd.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => frames.push(&chunk[..n]),
                        Ok(_) => panic!("publisher {i} was disconnected"),
                        Err(_) => continue,
                    }
                    let mut n = 0;
                    while let Some(p) = frames.next_packet() {
                        assert_eq!(p.kind(), packet::PUBACK, "publisher {i}: {p:?}");
                        n += 1;
                    }
                    if n > 0 {
                        acks[i].fetch_add(n, Ordering::Relaxed);
                        last_ack_us[i].store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                        window.add_permits(n as usize);
                    }
                }
            });
        }

        // Sample every 50 ms: RSS, the reading subscriber's gap, the publishers' gaps.
        let start = Instant::now();
        let start_us = t0.elapsed().as_micros() as u64;
        let mut rss: Vec<(f64, u64)> = Vec::new();
        let mut max_rx_gap = 0u64;
        let mut max_ack_gap = 0u64;
        let (mut per_sec_rx, mut per_sec_ack) = (Vec::new(), Vec::new());
        let (mut prev_rx, mut prev_ack) = (0u64, 0u64);
        let mut next_second = Duration::from_secs(1);
        while start.elapsed() < run_for {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now_us = t0.elapsed().as_micros() as u64;
            if start.elapsed() > Duration::from_millis(500) {
                let lr = last_rx_us.load(Ordering::Relaxed).max(start_us);
                max_rx_gap = max_rx_gap.max(now_us.saturating_sub(lr));
                for l in last_ack_us.iter() {
                    max_ack_gap = max_ack_gap.max(now_us.saturating_sub(l.load(Ordering::Relaxed)));
                }
            }
            rss.push((start.elapsed().as_secs_f64(), rss_kib(pid)));
            if start.elapsed() >= next_second {
                let rx = received.load(Ordering::Relaxed);
                let ack: u64 = acks.iter().map(|a| a.load(Ordering::Relaxed)).sum();
                per_sec_rx.push(rx - prev_rx);
                per_sec_ack.push(ack - prev_ack);
                (prev_rx, prev_ack) = (rx, ack);
                next_second += Duration::from_secs(1);
            }
        }
        stop.store(true, Ordering::Relaxed);
        while let Some(r) = tokio::time::timeout(Duration::from_secs(5), pubs.join_next())
            .await
            .expect("publishers stop")
        {
            r.expect("publisher task");
        }
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("reader stops")
            .expect("reader task");
        drop(slow);

        let mean = |from: f64, to: f64| {
            let v: Vec<u64> = rss
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|x| x.1)
                .collect();
            v.iter().sum::<u64>() / v.len().max(1) as u64
        };
        let peak = rss.iter().map(|x| x.1).max().unwrap_or(0);
        let series: Vec<String> = rss
            .iter()
            .step_by(10)
            .map(|(t, r)| format!("{t:.1}s:{:.0}", mib(*r)))
            .collect();
        eprintln!("  RSS MiB every 0.5 s: {}", series.join(" "));
        let (early, late) = (mean(3.0, 6.0), mean(7.0, 10.0));
        let overhead_kib = 3 * (256 + 1000)
            + 2 * 100 * (256 + 1024) / 1024
            + 12 * 512
            + PUBLISHERS as u64 * 100 * 13 / 10;
        let bound = rss0 + overhead_kib + 4 * 1024 + 24 * 1024;
        eprintln!(
            "  slow consumer: RSS baseline {:.1} MiB, mean s3-6 {:.1}, mean s7-10 {:.1}, peak {:.1} (bound {:.1}); \
             reading subscriber per second {per_sec_rx:?}, longest gap {} ms; PUBACKs per second {per_sec_ack:?}, \
             longest publisher gap {} ms; fds {}, threads {}",
            mib(rss0),
            mib(early),
            mib(late),
            mib(peak),
            mib(bound),
            max_rx_gap / 1000,
            max_ack_gap / 1000,
            fds(pid),
            threads(pid)
        );
        assert!(
            peak <= bound,
            "RSS peaked at {:.1} MiB (bound {:.1} MiB)",
            mib(peak),
            mib(bound)
        );
        assert!(
            late <= early + 8 * 1024,
            "RSS grows: {:.1} MiB (s3-6) -> {:.1} MiB (s7-10)",
            mib(early),
            mib(late)
        );
        assert!(
            max_rx_gap <= 1_000_000,
            "the reading subscriber got nothing for {} ms",
            max_rx_gap / 1000
        );
        assert!(
            per_sec_rx.iter().all(|&n| n > 0),
            "a second without deliveries: {per_sec_rx:?}"
        );
        assert!(
            max_ack_gap <= 2_000_000,
            "a publisher got no PUBACK for {} ms",
            max_ack_gap / 1000
        );
        assert!(
            per_sec_ack.iter().all(|&n| n > 0),
            "a second without PUBACKs: {per_sec_ack:?}"
        );
        probe(port, 1).await.expect("broker still serves");
        assert_healthy(&b);
    });
}

// ------------------------------------------------------------------------------------
// 6. Subscription flood.

/// Bound: a v5 and a 3.1.1 client each subscribing 5,000 distinct filters (100
/// SUBSCRIBEs of 50, pipelined) get exactly max_subscriptions_per_client (1000) granted
/// and 0x97 (v5) / 0x80 (3.1.1) for the other 4,000, all SUBACKs within 10 s; a granted
/// filter delivers and a refused one does not; probes every 100 ms succeed within 2 s.
#[test]
fn subscription_flood_is_capped_per_client() {
    run(async {
        let b = Broker::start();
        let (pid, port) = (b.pid(), b.port());
        probe(port, 0).await.expect("warm-up probe");
        let rss0 = rss_kib(pid);
        let (stop, prober) = start_probes(port, 100, 1);
        for v5 in [true, false] {
            let name = if v5 { "flood5" } else { "flood311" };
            let connect = if v5 {
                Connect::v5(name)
            } else {
                Connect::v311(name)
            };
            let (mut s, _, mut frames) = handshake(port, &connect).await;
            let mut bytes = Vec::new();
            for batch in 0..100u16 {
                let names: Vec<String> = (0..50)
                    .map(|i| format!("{name}/{}", batch * 50 + i))
                    .collect();
                let filters: Vec<(&str, u8)> = names.iter().map(|f| (f.as_str(), 1)).collect();
                bytes.extend(packet::subscribe(v5, batch + 1, &[], &filters));
            }
            let t = Instant::now();
            s.write_all(&bytes).await.expect("SUBSCRIBEs");
            let mut codes = Vec::new();
            for batch in 0..100u16 {
                let ack = read_packet(&mut s, &mut frames, Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|| panic!("{name}: SUBACK {} missing", batch + 1));
                assert_eq!((ack.kind(), ack.packet_id()), (packet::SUBACK, batch + 1));
                codes.extend(ack.suback_codes(v5));
            }
            let took = t.elapsed();
            let refused_code = if v5 { QUOTA_EXCEEDED } else { 0x80 };
            let granted = codes.iter().filter(|&&c| c == 1).count();
            let refused = codes.iter().filter(|&&c| c == refused_code).count();
            eprintln!(
                "  {name}: 5000 filters -> {granted} granted, {refused} x {refused_code:#04x} in {took:?}; RSS {:.1} MiB",
                mib(rss_kib(pid))
            );
            assert_eq!((granted, refused), (1000, 4000));
            assert!(
                codes[..1000].iter().all(|&c| c == 1),
                "the first 1000 are granted"
            );
            assert!(took < Duration::from_secs(10));
            // A refused filter delivers nothing; a granted one does (published in that
            // order, so the first PUBLISH that arrives must be the granted one's).
            let mut p = common::raw::RawClient::v311(port, &format!("{name}-pub")).await;
            for (topic, pid) in [(format!("{name}/4999"), 1), (format!("{name}/0"), 2)] {
                p.send(&packet::publish(
                    false,
                    &topic,
                    1,
                    false,
                    pid,
                    &[],
                    topic.as_bytes(),
                ))
                .await;
                p.expect(packet::PUBACK, "PUBACK").await;
            }
            let m = read_packet(&mut s, &mut frames, Duration::from_secs(5))
                .await
                .expect("delivery to a granted filter");
            assert_eq!(m.publish(v5).topic, format!("{name}/0"));
        }
        finish_probes(stop, prober, 3, Duration::from_secs(2)).await;
        eprintln!("  RSS {:.1} -> {:.1} MiB", mib(rss0), mib(rss_kib(pid)));
        assert_healthy(&b);
    });
}

// ------------------------------------------------------------------------------------
// 7. Malformed packets.

/// Bound: 8 clients in parallel, 25 rounds each (200 connections), send a valid CONNECT
/// then 1-4096 random bytes (seeded, reproducible) in 1-4 writes; each connection is
/// either closed by the broker or left waiting for more bytes (dropped by us after
/// 1 s). Meanwhile a normal v5 publisher/subscriber pair exchanges 200 QoS 1 messages:
/// all arrive, each publish round trip under 2 s; nothing panics.
#[test]
fn random_bytes_after_connect_do_not_disturb_others() {
    run(async {
        let b = Broker::start();
        let (pid, port) = (b.pid(), b.port());
        probe(port, 0).await.expect("warm-up probe");
        let rss0 = rss_kib(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let normal = {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut sub = common::rumq::v5::connect(port, "normal-sub").await;
                sub.subscribe("normal/topic", common::rumq::v5::QoS::AtLeastOnce)
                    .await;
                let mut publ = common::rumq::v5::connect(port, "normal-pub").await;
                let mut worst = Duration::ZERO;
                let mut got = Vec::new();
                let mut sent = 0u32;
                while sent < 200 || !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let payload = format!("n-{sent}");
                    publ.publish(
                        "normal/topic",
                        common::rumq::v5::QoS::AtLeastOnce,
                        false,
                        payload.clone(),
                    )
                    .await;
                    let m = sub.recv().await;
                    worst = worst.max(t.elapsed());
                    got.push(String::from_utf8_lossy(&m.payload).into_owned());
                    assert_eq!(
                        got.last(),
                        Some(&payload),
                        "normal traffic out of order or lost"
                    );
                    sent += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (sent, worst)
            })
        };
        let t0 = Instant::now();
        let mut set = JoinSet::new();
        for client in 0..8u64 {
            set.spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client + 1));
                let (mut closed, mut waiting) = (0u32, 0u32);
                for round in 0..25u64 {
                    let id = format!("mal-{client}-{round}");
                    let connect = if rng.below(2) == 0 {
                        Connect::v5(&id)
                    } else {
                        Connect::v311(&id)
                    };
                    let (mut s, _, _) = handshake_on(tcp(port).await, &connect).await;
                    let len = 1 + rng.below(4096) as usize;
                    let garbage = rng.bytes(len);
                    let writes = 1 + rng.below(4) as usize;
                    for part in garbage.chunks(len.div_ceil(writes)) {
                        if s.write_all(part).await.is_err() {
                            break;
                        }
                    }
                    match drain_until_close(&mut s, Duration::from_secs(1)).await {
                        Ok(_) => closed += 1,
                        Err(()) => waiting += 1,
                    }
                }
                (closed, waiting)
            });
        }
        let (mut closed, mut waiting) = (0, 0);
        while let Some(r) = tokio::time::timeout(Duration::from_secs(60), set.join_next())
            .await
            .expect("malformed clients finish")
        {
            let (c, w) = r.expect("malformed client");
            closed += c;
            waiting += w;
        }
        let malformed_time = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (sent, worst) = tokio::time::timeout(Duration::from_secs(30), normal)
            .await
            .expect("normal pair finishes")
            .expect("normal pair");
        eprintln!(
            "  200 malformed connections in {malformed_time:?}: {closed} closed by the broker, {waiting} left \
             waiting for more bytes; normal pair: {sent} QoS 1 messages, slowest round trip {worst:?}; \
             RSS {:.1} -> {:.1} MiB",
            mib(rss0),
            mib(rss_kib(pid))
        );
        assert!(
            worst < Duration::from_secs(2),
            "normal round trip took {worst:?}"
        );
        assert!(closed > 0, "random bytes never closed a connection");
        probe(port, 1).await.expect("broker still serves");
        assert_healthy(&b);
    });
}
