//! The broker-wide resource limits ([limits] in config/sluice.toml, src/limits.rs)
//! against the real binary on 127.0.0.1:0: the total queued bytes budget pauses
//! publishers without losing an acknowledged message, the per-address connection rate
//! refuses at accept, the inbound byte rate throttles a fast sender but serves it, and
//! the per-client limits are counted.
//!
//! Every wait is bounded and waits on an event (a packet, a metric, a log line).

mod common;

use common::packet::{self, Connect, Prop};
use common::raw::{RawClient, Recv};
use common::Broker;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Polls `f` every 50 ms until it returns Some, for at most `dur`.
async fn eventually<T>(dur: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + dur;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {dur:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------
// Total queued bytes.

const BUDGET: usize = 64 * 1024;
const MESSAGES: u16 = 300;
const PAYLOAD: usize = 1024;

/// A persistent subscriber is offline while a publisher pipelines 300 QoS 1 messages of
/// 1 KiB against a 64 KiB broker-wide budget. The broker stops reading the publisher once
/// the budget is exceeded (sluice_publisher_pauses_total rises, PUBACKs stop short of
/// 300, the budget gauge stays near 64 KiB instead of growing to 300 KiB+), the
/// publisher is not disconnected, and once the subscriber comes back and drains, the
/// publisher is read again: every PUBACKed message reaches the subscriber, none is
/// dead-lettered, and the budget returns to 0 once all is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_budget_pauses_publishers_and_loses_nothing() {
    let b = Broker::start_with_config(&format!(
        "[limits]\nmax_total_queued_bytes = {BUDGET}\n[metrics]\nsys_interval_secs = 0\n"
    ));
    let port = b.port();

    // The persistent subscriber: subscribes, then goes offline.
    let sub_connect = Connect::v311("budget-sub").clean(false);
    let (mut sub, _) = RawClient::handshake(port, &sub_connect).await;
    assert_eq!(sub.subscribe(1, "budget/#", 1).await, vec![1]);
    sub.send(&packet::DISCONNECT).await;
    sub.expect_closed().await;

    // The publisher writes everything at once (its own task: the broker reads it
    // slowly while paused); another task counts its PUBACKs.
    let (publisher, _) = RawClient::handshake(port, &Connect::v311("budget-pub")).await;
    let (mut rd, mut wr) = publisher.stream.into_split();
    let mut burst = Vec::new();
    for id in 1..=MESSAGES {
        let mut payload = id.to_be_bytes().to_vec();
        payload.resize(PAYLOAD, b'x');
        burst.extend(packet::publish(
            false,
            "budget/t",
            1,
            false,
            id,
            &[],
            &payload,
        ));
    }
    let burst_writer = tokio::spawn(async move {
        let _ = wr.write_all(&burst).await;
        wr
    });
    let (acked_tx, acked_rx) = tokio::sync::watch::channel(0usize);
    let writer = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        let mut buf = Vec::new();
        while acked.len() < usize::from(MESSAGES) {
            while let Some(p) = packet::take_packet(&mut buf) {
                assert_eq!(p.kind(), packet::PUBACK, "publisher got {p:?}");
                acked.insert(p.packet_id());
                let _ = acked_tx.send(acked.len());
            }
            if acked.len() == usize::from(MESSAGES) {
                break;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                other => panic!("publisher: {other:?} after {} PUBACKs", acked.len()),
            }
        }
        acked
    });

    // Paused: the counter rises while PUBACKs stop short of everything.
    let pauses = eventually(Duration::from_secs(10), "a publisher pause", || {
        let n = b.metric("sluice_publisher_pauses_total");
        (n >= 2.0).then_some(n)
    })
    .await;
    let used = b.metric("sluice_queue_budget_used_bytes");
    let acked_while_paused = *acked_rx.borrow();
    eprintln!(
        "  paused {pauses} times; {acked_while_paused} of {MESSAGES} acked, budget used {used} of {BUDGET}"
    );
    assert!(
        acked_while_paused < usize::from(MESSAGES) / 2,
        "{acked_while_paused} PUBACKs: the publisher was not held back"
    );
    assert!(
        used >= BUDGET as f64 && used < (BUDGET + 64 * 1024) as f64,
        "budget used {used}: over {BUDGET} (it paused) by less than a few reads"
    );

    // The subscriber returns and drains; the publisher is read again.
    let (mut sub, connack) = RawClient::handshake(port, &sub_connect).await;
    assert!(connack.connack().0, "session present");
    let mut received = BTreeSet::new();
    while received.len() < usize::from(MESSAGES) {
        match sub.recv_within(Duration::from_secs(30)).await {
            Recv::Packet(p) if p.kind() == packet::PUBLISH => {
                let m = p.publish(false);
                sub.send(&packet::puback(m.packet_id)).await;
                received.insert(u16::from_be_bytes([m.payload[0], m.payload[1]]));
            }
            other => panic!("subscriber: {other:?} after {} messages", received.len()),
        }
    }
    let acked = common::within(Duration::from_secs(30), "every PUBACK", writer)
        .await
        .expect("publisher task");
    let _wr = common::within(Duration::from_secs(5), "the burst written", burst_writer)
        .await
        .expect("writer task");
    assert_eq!(acked.len(), usize::from(MESSAGES));
    assert!(
        acked.is_subset(&received),
        "PUBACKed but not delivered: {:?}",
        acked.difference(&received).collect::<Vec<_>>()
    );
    let body = b.scrape();
    let dead: f64 = body
        .lines()
        .filter(|l| l.starts_with("sluice_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dead, 0.0, "nothing was dead-lettered");
    // Everything acked: the budget is back to nothing held.
    eventually(Duration::from_secs(5), "the budget to drain to 0", || {
        (b.metric("sluice_queue_budget_used_bytes") == 0.0).then_some(())
    })
    .await;
    assert_eq!(b.metric("sluice_queue_budget_limit_bytes"), BUDGET as f64);
}

// ------------------------------------------------------------------------------------
// Connection rate per source address.

/// What became of one connection attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Connacked,
    /// Closed with no byte sent to it.
    ClosedSilently,
}

async fn try_connect(port: u16, id: &str) -> Outcome {
    let mut s = common::within(
        Duration::from_secs(5),
        "TCP connect",
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("TCP connect");
    let _ = s.write_all(&Connect::v311(id).build()).await;
    let mut got = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut got)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Outcome::ClosedSilently,
        Ok(Ok(_)) if got[0] == 0x20 => Outcome::Connacked,
        other => panic!("neither a CONNACK nor a close: {other:?} {got:?}"),
    }
}

/// With max_connects_per_ip_per_sec = 5, 40 connections from 127.0.0.1 in a quick
/// burst: about 5 (the burst) plus 5 a second of elapsed time get a CONNACK; the rest are
/// closed at accept without a byte, each counted under reason "rate", and logged at most
/// once a second. A connection once the bucket has refilled is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_per_address_refuses_at_accept() {
    let b = Broker::start_with_config(
        "[limits]\nmax_connects_per_ip_per_sec = 5\n[metrics]\nsys_interval_secs = 0\n",
    );
    let port = b.port();
    let t0 = Instant::now();
    let mut outcomes = Vec::new();
    for i in 0..40 {
        outcomes.push(try_connect(port, &format!("rate-{i}")).await);
    }
    let elapsed = t0.elapsed();
    let accepted = outcomes
        .iter()
        .filter(|o| **o == Outcome::Connacked)
        .count();
    let refused = outcomes.len() - accepted;
    eprintln!("  40 connects in {elapsed:?}: {accepted} served, {refused} refused");
    let allowed = 5 + (elapsed.as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=allowed).contains(&accepted),
        "{accepted} served in {elapsed:?} (want 5..={allowed})"
    );
    let counted = eventually(Duration::from_secs(5), "refusals counted", || {
        let n = b.metric("sluice_connections_refused_total{reason=\"rate\"}");
        (n >= refused as f64).then_some(n)
    })
    .await;
    assert_eq!(counted, refused as f64);
    b.wait_for_log(
        "max_connects_per_ip_per_sec exceeded",
        Duration::from_secs(5),
    );
    let lines = b
        .stderr()
        .matches("max_connects_per_ip_per_sec exceeded")
        .count();
    assert!(
        lines <= elapsed.as_secs() as usize + 2,
        "{lines} log lines for {refused} refusals in {elapsed:?}: not rate-limited"
    );
    // The bucket refills (5 a second): a later connection is served.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while try_connect(port, &format!("rate-late-{n}")).await != Outcome::Connacked {
        assert!(Instant::now() < deadline, "never served again");
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------------------
// Inbound bytes per second.

/// With max_inbound_bytes_per_sec = 20 000, a client that writes 100 KiB of QoS 1
/// PUBLISHes at once is read at that rate: its last PUBACK comes no sooner than
/// (100 KiB - 20 KiB of burst) / 20 000 B/s ≈ 4 s (asserted ≥ 3 s) and within 15 s,
/// every message is delivered, the throttle is counted
/// (sluice_inbound_throttle_wait_seconds), and meanwhile another client's round trip
/// stays fast (the throttle is per connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_byte_rate_throttles_a_fast_sender_but_serves_it() {
    let b = Broker::start_with_config(
        "[limits]\nmax_inbound_bytes_per_sec = 20000\n[metrics]\nsys_interval_secs = 0\n",
    );
    let port = b.port();
    let mut sub = RawClient::v311(port, "throttle-sub").await;
    assert_eq!(sub.subscribe(1, "fast/#", 1).await, vec![1]);
    let (mut fast, _) = RawClient::handshake(port, &Connect::v311("fast-pub")).await;
    let mut burst = Vec::new();
    for id in 1..=100u16 {
        let mut payload = id.to_be_bytes().to_vec();
        payload.resize(1024, b'f');
        burst.extend(packet::publish(
            false,
            "fast/t",
            1,
            false,
            id,
            &[],
            &payload,
        ));
    }
    let t0 = Instant::now();
    let publisher = tokio::spawn(async move {
        common::within(
            Duration::from_secs(20),
            "the fast writes",
            fast.stream.write_all(&burst),
        )
        .await
        .expect("write");
        let mut acked = 0;
        while acked < 100 {
            match fast.recv_within(Duration::from_secs(15)).await {
                Recv::Packet(p) if p.kind() == packet::PUBACK => acked += 1,
                other => panic!("fast publisher: {other:?} after {acked} PUBACKs"),
            }
        }
        t0.elapsed()
    });
    // Another client, meanwhile, is served at once.
    let mut other = RawClient::v311(port, "throttle-other").await;
    assert_eq!(other.subscribe(1, "other/t", 1).await, vec![1]);
    let rtt = Instant::now();
    other
        .send(&packet::publish(false, "other/t", 1, false, 7, &[], b"hi"))
        .await;
    for _ in 0..2 {
        match other.recv_within(Duration::from_secs(5)).await {
            Recv::Packet(p) if p.kind() == packet::PUBLISH => {
                other
                    .send(&packet::puback(p.publish(false).packet_id))
                    .await
            }
            Recv::Packet(p) if p.kind() == packet::PUBACK => {}
            o => panic!("other client: {o:?}"),
        }
    }
    let rtt = rtt.elapsed();
    let mut got = BTreeSet::new();
    while got.len() < 100 {
        match sub.recv_within(Duration::from_secs(15)).await {
            Recv::Packet(p) if p.kind() == packet::PUBLISH => {
                let m = p.publish(false);
                sub.send(&packet::puback(m.packet_id)).await;
                got.insert(u16::from_be_bytes([m.payload[0], m.payload[1]]));
            }
            o => panic!("subscriber: {o:?} after {}", got.len()),
        }
    }
    let took = common::within(Duration::from_secs(20), "the fast publisher", publisher)
        .await
        .expect("publisher task");
    let body = b.scrape();
    let waits =
        common::metric_value(&body, "sluice_inbound_throttle_wait_seconds_count").unwrap_or(0.0);
    let waited =
        common::metric_value(&body, "sluice_inbound_throttle_wait_seconds_sum").unwrap_or(0.0);
    eprintln!(
        "  100 KiB at 20 kB/s: all acked after {took:?}; {waits} throttle waits, {waited:.2} s; \
         another client's round trip {rtt:?}"
    );
    assert!(
        took >= Duration::from_secs(3) && took <= Duration::from_secs(15),
        "the last PUBACK after {took:?}"
    );
    assert!(waits >= 1.0 && waited >= 2.5, "{waits} waits, {waited} s");
    assert!(rtt < Duration::from_secs(1), "another client took {rtt:?}");
}

// ------------------------------------------------------------------------------------
// Per-client limits are counted.

/// Each per-client limit answers as the spec says and is counted in
/// sluice_client_limits_exceeded_total{limit}: a SUBSCRIBE past
/// max_subscriptions_per_client (SUBACK 0x80 for 3.1.1), a QoS 2 PUBLISH past
/// receive_maximum awaiting PUBREL (v5 DISCONNECT 0x93), a topic alias above
/// topic_alias_maximum (v5 DISCONNECT 0x94, [MQTT-3.3.2-9]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_limits_are_answered_and_counted() {
    let b = Broker::start_with_config(
        "[limits]\nmax_subscriptions_per_client = 1\nreceive_maximum = 1\n[metrics]\nsys_interval_secs = 0\n",
    );
    let port = b.port();
    let series = |limit: &str| format!("sluice_client_limits_exceeded_total{{limit=\"{limit}\"}}");
    for limit in ["subscriptions", "receive_maximum", "topic_alias"] {
        assert_eq!(b.metric(&series(limit)), 0.0, "{limit} starts at 0");
    }

    let mut c = RawClient::v311(port, "limits-subs").await;
    assert_eq!(c.subscribe(1, "a/1", 1).await, vec![1]);
    assert_eq!(c.subscribe(2, "a/2", 1).await, vec![0x80]);

    let mut c = RawClient::v5(port, "limits-qos2").await;
    c.send(&packet::publish(true, "q/2", 2, false, 1, &[], b"one"))
        .await;
    c.expect(packet::PUBREC, "PUBREC").await;
    c.send(&packet::publish(true, "q/2", 2, false, 2, &[], b"two"))
        .await;
    let closing = c.expect_closed().await;
    assert!(
        closing
            .iter()
            .any(|p| p.kind() == packet::DISCONNECT_TYPE && p.reason() == 0x93),
        "want DISCONNECT 0x93: {closing:?}"
    );

    let mut c = RawClient::v5(port, "limits-alias").await;
    c.send(&packet::publish(
        true,
        "t/alias",
        0,
        false,
        0,
        &[Prop::U16(packet::TOPIC_ALIAS, 65)],
        b"x",
    ))
    .await;
    let closing = c.expect_closed().await;
    assert!(
        closing
            .iter()
            .any(|p| p.kind() == packet::DISCONNECT_TYPE && p.reason() == 0x94),
        "want DISCONNECT 0x94: {closing:?}"
    );

    for limit in ["subscriptions", "receive_maximum", "topic_alias"] {
        eventually(Duration::from_secs(5), limit, || {
            (b.metric(&series(limit)) == 1.0).then_some(())
        })
        .await;
    }
}
