//! Dead letters against the real binary: one test per reason (queue_full both spill ends,
//! max_attempts, expired, too_large, no_subscribers, session_expired), survival across
//! `kill -9`, shedding when the dead-letter queue itself is full, and replaying them
//! (`sluice dlq replay`, an alias of `sluice ctl dead-letters replay`, and the admin API
//! it calls).
//!
//! Each test watches `$DLQ/#` with `mosquitto_sub` (printed; run with `--nocapture`)
//! and drains the `sluice-dlq` session with rumqttc to check every user property.

mod common;
mod dlq_support;

use common::log;
use common::rumq::{v4, v5};
use common::{Broker, WAIT};
use dlq_support::*;
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use std::time::Duration;

/// Runs `sluice dlq replay ARGS` against `b`'s admin API; its stdout (exit 0 asserted).
fn dlq_replay(b: &Broker, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dlq", "replay", "--url"])
        .arg(format!("http://{}", b.admin_addr()))
        .args(args)
        .output()
        .expect("run sluice dlq replay");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// POST /api/v1/dead-letters/replay with `selection`; the outcome (200 asserted).
fn api_replay(b: &Broker, selection: &str) -> serde_json::Value {
    let (status, body) = b.api("POST", "/api/v1/dead-letters/replay", Some(selection));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Publishes `payloads` to `topic` at QoS 1 from a v5 client with content type and a
/// user property, each PUBACKed.
async fn publish_all(port: u16, id: &str, topic: &str, payloads: &[&str]) {
    let mut p = v5::connect(port, id).await;
    for m in payloads {
        p.publish_with(
            topic,
            v5::QoS::AtLeastOnce,
            false,
            m.as_bytes().to_vec(),
            Some(props_with_unit()),
        )
        .await;
    }
    p.disconnect().await;
}

/// Publishes at QoS 1 and returns the PUBACK's reason code (0x00 or 0x10).
async fn publish_reason(c: &mut v5::Client, topic: &str, payload: &str) -> u8 {
    c.client
        .publish(
            topic,
            v5::QoS::AtLeastOnce,
            false,
            payload.as_bytes().to_vec(),
        )
        .await
        .expect("publish");
    c.inbox
        .wait("PUBACK", |e| match e {
            common::rumq::Ev::Packet(v5::Packet::PubAck(a)) => Some(match a.reason {
                PubAckReason::Success => 0x00,
                PubAckReason::NoMatchingSubscribers => 0x10,
                ref other => panic!("PUBACK refused: {other:?}"),
            }),
            _ => None,
        })
        .await
}

/// Receives `n` messages and returns their payloads.
async fn recv_payloads(c: &mut v5::Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(payload(&c.recv().await));
    }
    out
}

async fn queue_full(spill: Option<&str>, spilled: &[&str], kept: &[&str]) {
    let mut config = String::from("[limits]\nmax_queued_messages = 5\n");
    if let Some(s) = spill {
        config.push_str(&format!("[dead_letter]\nqueue_full_spill = \"{s}\"\n"));
    }
    let b = Broker::start_with_config(&config);
    let port = b.port();
    // A persistent 3.1.1 subscriber that went away: it never reads.
    let mut o = v4::options(port, "slow");
    o.set_clean_session(false);
    let (mut slow, _) = v4::connect_with(o.clone()).await;
    slow.subscribe("q/t", v4::QoS::AtLeastOnce).await;
    slow.disconnect().await;
    // Another subscriber of the same messages, online and reading.
    let mut other = v5::connect(port, "other").await;
    other.subscribe("q/t", v5::QoS::AtLeastOnce).await;

    let watch = DlqWatch::start(port, spilled.len(), 10, &format!("queue_full {spill:?}")).await;
    let all = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];
    publish_all(port, "pub", "q/t", &all).await;

    assert_eq!(recv_payloads(&mut other, all.len()).await, all, "other");
    let seen = watch.collect().await;
    assert_eq!(seen.len(), spilled.len(), "{seen:?}");
    for (s, m) in seen.iter().zip(spilled) {
        check_seen(s, "queue_full", "q/t", m, Some("slow"));
    }
    let dead = drain_exact(port, spilled.len()).await;
    assert_eq!(payloads(&dead), spilled);
    for d in &dead {
        check_dead_letter(
            d,
            &Expect {
                reason: "queue_full",
                topic: "q/t",
                payload: &payload(d),
                publisher: "pub",
                subscriber: Some("slow"),
                attempts: 0,
                own: &[("unit", "C")],
            },
        );
        let props = d.properties.as_ref().expect("properties");
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    }
    // The slow subscriber gets exactly what was kept, in order.
    let (mut slow, present) = v4::connect_with(o).await;
    assert!(present);
    let mut got = Vec::new();
    for _ in kept {
        got.push(String::from_utf8_lossy(&slow.recv().await.payload).into_owned());
    }
    assert_eq!(got, kept);
    assert!(slow.try_recv(QUIET).await.is_none(), "more than was kept");
    assert!(
        other.try_recv(QUIET).await.is_none(),
        "other got duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_spills_the_oldest_by_default() {
    queue_full(None, &["m0", "m1", "m2"], &["m3", "m4", "m5", "m6", "m7"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full_spills_the_newest_when_configured() {
    queue_full(
        Some("newest"),
        &["m5", "m6", "m7"],
        &["m0", "m1", "m2", "m3", "m4"],
    )
    .await;
}

/// A v5 subscriber that never acks and reconnects: after `max_delivery_attempts` sends
/// the message is a poison message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_after_sends_without_puback_across_reconnects() {
    let b = Broker::start_with_config("[dead_letter]\nmax_delivery_attempts = 2\n");
    let port = b.port();
    let mut o = persistent_v5(port, "poison", 300);
    o.set_manual_acks(true);
    let (mut poison, _) = v5::connect_with(o.clone()).await;
    poison.subscribe("p/t", v5::QoS::AtLeastOnce).await;
    let mut other = v5::connect(port, "other").await;
    other.subscribe("p/t", v5::QoS::AtLeastOnce).await;
    let watch = DlqWatch::start(port, 1, 10, "max_attempts").await;

    publish_all(port, "pub", "p/t", &["bad"]).await;
    assert_eq!(payload(&poison.recv().await), "bad", "attempt 1");
    poison.disconnect().await;
    let (mut poison, ack) = v5::connect_with(o.clone()).await;
    assert!(ack.session_present);
    let again = poison.recv().await;
    assert_eq!(payload(&again), "bad", "attempt 2");
    assert!(again.dup, "a resend carries DUP");
    poison.disconnect().await;
    // Third connect: the message has been sent twice without a PUBACK.
    let (mut poison, _) = v5::connect_with(o).await;

    let seen = watch.collect().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    check_seen(&seen[0], "max_attempts", "p/t", "bad", Some("poison"));
    assert!(seen[0].props.contains("attempts:2"), "{seen:?}");
    assert!(
        poison.try_recv(QUIET).await.is_none(),
        "a poison message is not sent a third time"
    );
    assert_eq!(recv_payloads(&mut other, 1).await, ["bad"]);
    assert!(other.try_recv(QUIET).await.is_none());
    let dead = drain_exact(port, 1).await;
    check_dead_letter(
        &dead[0],
        &Expect {
            reason: "max_attempts",
            topic: "p/t",
            payload: "bad",
            publisher: "pub",
            subscriber: Some("poison"),
            attempts: 2,
            own: &[("unit", "C")],
        },
    );
}

/// A v5 message with a 1 s expiry queued for an offline persistent subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_while_queued_for_an_offline_subscriber() {
    let b = Broker::start();
    let port = b.port();
    let o = persistent_v5(port, "late", 300);
    let (mut late, _) = v5::connect_with(o.clone()).await;
    late.subscribe("e/t", v5::QoS::AtLeastOnce).await;
    late.disconnect().await;
    let mut other = v5::connect(port, "other").await;
    other.subscribe("e/t", v5::QoS::AtLeastOnce).await;
    let watch = DlqWatch::start(port, 1, 10, "expired").await;

    let mut p = v5::connect(port, "pub").await;
    let mut props = props_with_unit();
    props.message_expiry_interval = Some(1);
    p.publish_with(
        "e/t",
        v5::QoS::AtLeastOnce,
        false,
        b"stale".to_vec(),
        Some(props),
    )
    .await;
    let published = tokio::time::Instant::now();
    // The online subscriber gets it in time.
    assert_eq!(recv_payloads(&mut other, 1).await, ["stale"]);
    // Expiry is what is tested: let the second pass (with a margin), then reconnect.
    tokio::time::sleep_until(published + Duration::from_millis(1500)).await;
    let (mut late, ack) = v5::connect_with(o).await;
    assert!(ack.session_present);

    let seen = watch.collect().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    check_seen(&seen[0], "expired", "e/t", "stale", Some("late"));
    assert!(
        late.try_recv(QUIET).await.is_none(),
        "an expired message is not delivered"
    );
    let dead = drain_exact(port, 1).await;
    check_dead_letter(
        &dead[0],
        &Expect {
            reason: "expired",
            topic: "e/t",
            payload: "stale",
            publisher: "pub",
            subscriber: Some("late"),
            attempts: 0,
            own: &[("unit", "C")],
        },
    );
    let props = dead[0].properties.as_ref().expect("properties");
    assert_eq!(
        props.message_expiry_interval, None,
        "a dead letter does not expire"
    );
}

/// A 1000-byte message for a v5 subscriber whose Maximum Packet Size is 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_for_the_subscribers_maximum_packet_size() {
    let b = Broker::start();
    let port = b.port();
    let mut o = v5::options(port, "small");
    o.set_max_packet_size(Some(100));
    let (mut small, _) = v5::connect_with(o).await;
    small.subscribe("big/t", v5::QoS::AtLeastOnce).await;
    let mut other = v5::connect(port, "other").await;
    other.subscribe("big/t", v5::QoS::AtLeastOnce).await;
    let watch = DlqWatch::start(port, 1, 10, "too_large").await;

    let big = "x".repeat(1000);
    publish_all(port, "pub", "big/t", &[big.as_str(), "fits"]).await;

    assert_eq!(recv_payloads(&mut other, 2).await, [big.as_str(), "fits"]);
    // The small subscriber skips the big one and still gets what fits.
    assert_eq!(recv_payloads(&mut small, 1).await, ["fits"]);
    let seen = watch.collect().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    check_seen(&seen[0], "too_large", "big/t", &big, Some("small"));
    let dead = drain_exact(port, 1).await;
    check_dead_letter(
        &dead[0],
        &Expect {
            reason: "too_large",
            topic: "big/t",
            payload: &big,
            publisher: "pub",
            subscriber: Some("small"),
            attempts: 0,
            own: &[("unit", "C")],
        },
    );
}

/// QoS 1 to a topic nobody subscribes to: a dead letter and v5 PUBACK 0x10. QoS 0: none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_subscribers_for_qos1_but_not_qos0() {
    let b = Broker::start();
    let port = b.port();
    let watch = DlqWatch::start(port, 1, 10, "no_subscribers").await;
    let mut p = v5::connect(port, "pub").await;
    // QoS 0 first: the same connection's QoS 1 publish is handled after it, so once the
    // QoS 1 dead letter is there, a QoS 0 one would have been too.
    p.publish("nobody/zero", v5::QoS::AtMostOnce, false, b"z".to_vec())
        .await;
    assert_eq!(publish_reason(&mut p, "nobody/home", "lost").await, 0x10);

    let seen = watch.collect().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    check_seen(&seen[0], "no_subscribers", "nobody/home", "lost", None);
    assert!(!seen[0].props.contains("subscriber:"), "{seen:?}");
    let dead = drain_exact(port, 1).await;
    check_dead_letter(
        &dead[0],
        &Expect {
            reason: "no_subscribers",
            topic: "nobody/home",
            payload: "lost",
            publisher: "pub",
            subscriber: None,
            attempts: 0,
            own: &[],
        },
    );
}

/// A v5 session with a 1 s expiry ends with messages queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expired_with_messages_queued() {
    let b = Broker::start();
    let port = b.port();
    let (mut brief, _) = v5::connect_with(persistent_v5(port, "brief", 1)).await;
    brief.subscribe("s/t", v5::QoS::AtLeastOnce).await;
    let mut other = v5::connect(port, "other").await;
    other.subscribe("s/t", v5::QoS::AtLeastOnce).await;
    let watch = DlqWatch::start(port, 2, 10, "session_expired").await;
    brief.disconnect().await;
    publish_all(port, "pub", "s/t", &["a", "b"]).await;
    assert_eq!(recv_payloads(&mut other, 2).await, ["a", "b"]);

    // The session expires 1 s after its client left; the watcher waits up to 10 s.
    let seen = watch.collect().await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    check_seen(&seen[0], "session_expired", "s/t", "a", Some("brief"));
    check_seen(&seen[1], "session_expired", "s/t", "b", Some("brief"));
    let dead = drain_exact(port, 2).await;
    for (d, m) in dead.iter().zip(["a", "b"]) {
        check_dead_letter(
            d,
            &Expect {
                reason: "session_expired",
                topic: "s/t",
                payload: m,
                publisher: "pub",
                subscriber: Some("brief"),
                attempts: 0,
                own: &[("unit", "C")],
            },
        );
    }
    // The session is gone: its client starts afresh and gets nothing.
    let (mut brief, ack) = v5::connect_with(persistent_v5(port, "brief", 1)).await;
    assert!(!ack.session_present);
    assert!(brief.try_recv(QUIET).await.is_none());
}

/// A persistent session replaced by a clean start with messages queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_replaced_by_clean_start_with_messages_queued() {
    let b = Broker::start();
    let port = b.port();
    let (mut c, _) = v5::connect_with(persistent_v5(port, "dev", 300)).await;
    c.subscribe("r/t", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let watch = DlqWatch::start(port, 1, 10, "session_expired (clean start)").await;
    publish_all(port, "pub", "r/t", &["queued"]).await;
    let mut o = v5::options(port, "dev");
    o.set_clean_start(true);
    let (mut c, ack) = v5::connect_with(o).await;
    assert!(!ack.session_present);

    let seen = watch.collect().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    check_seen(&seen[0], "session_expired", "r/t", "queued", Some("dev"));
    assert!(c.try_recv(QUIET).await.is_none());
    let dead = drain_exact(port, 1).await;
    check_dead_letter(
        &dead[0],
        &Expect {
            reason: "session_expired",
            topic: "r/t",
            payload: "queued",
            publisher: "pub",
            subscriber: Some("dev"),
            attempts: 0,
            own: &[("unit", "C")],
        },
    );
}

/// Dead letters caused by a PUBLISH are durable before its PUBACK: they survive kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_survive_kill_9() {
    let mut b = Broker::start_with_config("[limits]\nmax_queued_messages = 1\n");
    let port = b.port();
    let mut o = v4::options(port, "slow");
    o.set_clean_session(false);
    let (mut slow, _) = v4::connect_with(o).await;
    slow.subscribe("k/q", v4::QoS::AtLeastOnce).await;
    slow.disconnect().await;
    let mut p = v5::connect(port, "pub").await;
    for i in 0..5 {
        assert_eq!(
            publish_reason(&mut p, "k/none", &format!("n{i}")).await,
            0x10
        );
    }
    for m in ["q0", "q1", "q2"] {
        assert_eq!(publish_reason(&mut p, "k/q", m).await, 0);
    }
    b.crash_and_restart();
    let dead = drain_exact(b.port(), 7).await;
    let got: Vec<(String, String)> = dead.iter().map(|d| (topic(d), payload(d))).collect();
    let mut want: Vec<(String, String)> = (0..5)
        .map(|i| ("$DLQ/no_subscribers/k/none".to_string(), format!("n{i}")))
        .collect();
    want.push(("$DLQ/queue_full/k/q".into(), "q0".into()));
    want.push(("$DLQ/queue_full/k/q".into(), "q1".into()));
    assert_eq!(got, want);
    check_dead_letter(
        &dead[5],
        &Expect {
            reason: "queue_full",
            topic: "k/q",
            payload: "q0",
            publisher: "pub",
            subscriber: Some("slow"),
            attempts: 0,
            own: &[],
        },
    );
}

/// A full dead-letter queue sheds its oldest, loudly, and never blocks publishers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_dead_letter_queue_sheds_oldest_and_never_blocks() {
    let b = Broker::start_with_config("[dead_letter]\nmax_messages = 3\n");
    let port = b.port();
    let mut p = v5::connect(port, "pub").await;
    for i in 0..6 {
        // Each publish is PUBACKed within the harness's bound (10 s): never blocked.
        assert_eq!(publish_reason(&mut p, "void", &format!("d{i}")).await, 0x10);
    }
    // Every shed dead letter is counted; the log says so at error level, at most once a
    // second (with how many it did not repeat), so an overflow cannot flood it.
    let shed = "dead letter shed";
    let deadline = std::time::Instant::now() + WAIT;
    while b.metric("sluice_dead_letters_shed_total") < 3.0 || !b.stderr().contains(shed) {
        assert!(
            std::time::Instant::now() < deadline,
            "three shed dead letters not counted and logged:\n{}",
            b.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.metric("sluice_dead_letters_shed_total"), 3.0);
    let log = b.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(shed)).collect();
    assert!((1..=3).contains(&lines.len()), "{lines:#?}");
    for l in &lines {
        assert!(l.contains("ERROR"), "shed is logged at error level: {l}");
        assert!(l.contains("$DLQ/no_subscribers/void"), "{l}");
    }
    let dead = drain_exact(port, 3).await;
    assert_eq!(payloads(&dead), ["d3", "d4", "d5"], "the newest are kept");
    // And the broker still serves.
    common::assert_broker_works(port).await;
}

/// `sluice dlq replay --topic`: the original topics get exactly the matching messages
/// (with their own properties back), the others stay in the DLQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_topic_filter_republishes_only_the_matching() {
    let b = Broker::start();
    let port = b.port();
    let sent = [
        ("r/go/1", "g1"),
        ("r/keep/1", "k1"),
        ("r/go/2", "g2"),
        ("r/keep/2", "k2"),
        ("r/go/3", "g3"),
    ];
    let mut p = v5::connect(port, "pub").await;
    for (t, m) in sent {
        p.publish_with(
            t,
            v5::QoS::AtLeastOnce,
            false,
            m.as_bytes().to_vec(),
            Some(props_with_unit()),
        )
        .await;
    }
    // Now there is someone to deliver to.
    let mut consumer = v5::connect(port, "consumer").await;
    consumer.subscribe("r/#", v5::QoS::AtLeastOnce).await;

    let summary = dlq_replay(&b, &["--topic", "r/go/#"]);
    assert_eq!(summary, "replayed 3 (no_subscribers: 3)\n");

    let mut got = Vec::new();
    for _ in 0..3 {
        let m = consumer.recv().await;
        let props = m.properties.clone().unwrap_or_default();
        assert_eq!(
            props.user_properties,
            [("unit".to_string(), "C".to_string())],
            "the dead-letter header is removed, the original's own kept"
        );
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        got.push((topic(&m), payload(&m)));
    }
    assert_eq!(
        got,
        [
            ("r/go/1".to_string(), "g1".to_string()),
            ("r/go/2".into(), "g2".into()),
            ("r/go/3".into(), "g3".into()),
        ]
    );
    assert!(
        consumer.try_recv(QUIET).await.is_none(),
        "only the matching"
    );

    let left = drain_exact(port, 2).await;
    assert_eq!(
        topics(&left),
        [
            "$DLQ/no_subscribers/r/keep/1",
            "$DLQ/no_subscribers/r/keep/2"
        ]
    );
    check_dead_letter(
        &left[0],
        &Expect {
            reason: "no_subscribers",
            topic: "r/keep/1",
            payload: "k1",
            publisher: "pub",
            subscriber: None,
            attempts: 0,
            own: &[("unit", "C")],
        },
    );
}

/// A replay by reason; a re-publish that is undeliverable again comes back as a new
/// dead letter, which the same replay leaves queued instead of looping on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_by_reason_leaves_its_own_bounces_queued() {
    let b = Broker::start_with_config("[limits]\nmax_queued_messages = 1\n");
    let port = b.port();
    let mut o = v4::options(port, "slow");
    o.set_clean_session(false);
    let (mut slow, _) = v4::connect_with(o.clone()).await;
    slow.subscribe("f/t", v4::QoS::AtLeastOnce).await;
    slow.disconnect().await;
    let mut p = v5::connect(port, "pub").await;
    // queue_full: f1 is spilled for f2.
    assert_eq!(publish_reason(&mut p, "f/t", "f1").await, 0);
    assert_eq!(publish_reason(&mut p, "f/t", "f2").await, 0);
    // no_subscribers, and still nobody subscribes when it is replayed.
    assert_eq!(publish_reason(&mut p, "n/t", "n1").await, 0x10);
    // Make room for the replayed f1: the slow subscriber reads f2.
    let (mut slow, _) = v4::connect_with(o.clone()).await;
    assert_eq!(slow.recv().await.payload.as_ref(), b"f2");

    let summary = api_replay(&b, r#"{"reasons": ["no_subscribers", "queue_full"]}"#);
    assert_eq!(summary["by_reason"]["queue_full"], 1, "{summary}");
    assert_eq!(summary["by_reason"]["no_subscribers"], 1, "{summary}");
    assert_eq!(summary["no_subscribers_again"], 1, "{summary}");
    assert_eq!(slow.recv().await.payload.as_ref(), b"f1", "replayed");

    // The bounce is a new dead letter, published by the replay, still queued.
    let left = drain_exact(port, 1).await;
    check_dead_letter(
        &left[0],
        &Expect {
            reason: "no_subscribers",
            topic: "n/t",
            payload: "n1",
            publisher: DLQ_CLIENT,
            subscriber: None,
            attempts: 0,
            own: &[],
        },
    );
}

/// A replay by reason leaves the other reasons queued, and they are there for a later
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_leaves_unselected_reasons_for_a_later_run() {
    let b = Broker::start();
    let port = b.port();
    let mut p = v5::connect(port, "pub").await;
    assert_eq!(publish_reason(&mut p, "later/a", "a").await, 0x10);
    for run in 0..2 {
        let s = api_replay(&b, r#"{"reasons": ["expired"]}"#);
        assert_eq!(s["replayed"], 0, "run {run}: {s}");
    }
    let mut c = v5::connect(port, "c").await;
    c.subscribe("later/#", v5::QoS::AtLeastOnce).await;
    let s = api_replay(&b, r#"{"all": true}"#);
    assert_eq!(s["replayed"], 1, "{s}");
    assert_eq!(payload(&c.recv().await), "a");
    drain_exact(port, 0).await;
}

/// Attempts are counted across a broker restart too: one send before, one after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_counts_sends_across_a_restart() {
    let mut b = Broker::start_with_config("[dead_letter]\nmax_delivery_attempts = 2\n");
    let mut o = persistent_v5(b.port(), "poison", 300);
    o.set_manual_acks(true);
    let (mut poison, _) = v5::connect_with(o.clone()).await;
    poison.subscribe("p/t", v5::QoS::AtLeastOnce).await;
    publish_all(b.port(), "pub", "p/t", &["bad"]).await;
    assert_eq!(payload(&poison.recv().await), "bad", "attempt 1");
    poison.disconnect().await;
    b.restart();
    let port = b.port();
    let mut o = persistent_v5(port, "poison", 300);
    o.set_manual_acks(true);
    let (mut poison, ack) = v5::connect_with(o.clone()).await;
    assert!(ack.session_present);
    assert_eq!(payload(&poison.recv().await), "bad", "attempt 2");
    poison.disconnect().await;
    let (mut poison, _) = v5::connect_with(o).await;
    let dead = drain_exact(port, 1).await;
    check_dead_letter(
        &dead[0],
        &Expect {
            reason: "max_attempts",
            topic: "p/t",
            payload: "bad",
            publisher: "pub",
            subscriber: Some("poison"),
            attempts: 2,
            own: &[("unit", "C")],
        },
    );
    assert!(poison.try_recv(QUIET).await.is_none());
}

/// The dead-letter session is resumed whatever its client asks: a clean start with
/// session expiry 0 neither discards nor expires what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_session_survives_clean_start_and_expiry_0() {
    let b = Broker::start();
    let port = b.port();
    let mut p = v5::connect(port, "pub").await;
    assert_eq!(publish_reason(&mut p, "gone/1", "g1").await, 0x10);
    // Connect as the dead-letter session asking for a clean start and no session, take
    // the dead letter without acking it, and leave.
    let mut o = v5::options(port, DLQ_CLIENT);
    o.set_clean_start(true);
    o.set_manual_acks(true);
    let (mut c, ack) = v5::connect_with(o).await;
    assert!(ack.session_present, "resumed despite clean start");
    assert_eq!(topic(&c.recv().await), "$DLQ/no_subscribers/gone/1");
    c.disconnect().await;
    assert_eq!(publish_reason(&mut p, "gone/2", "g2").await, 0x10);
    let dead = drain_exact(port, 2).await;
    assert_eq!(payloads(&dead), ["g1", "g2"]);
}

/// An expiring session's messages become durable dead letters before its SessionRemove
/// record: a crash right after that record (the log cut there) still has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_dead_letters_are_durable_before_the_session_is_removed() {
    let mut b = Broker::start();
    let port = b.port();
    let (mut brief, _) = v5::connect_with(persistent_v5(port, "brief", 1)).await;
    brief.subscribe("x/t", v5::QoS::AtLeastOnce).await;
    let watch = DlqWatch::start(port, 2, 10, "session_expired").await;
    brief.disconnect().await;
    publish_all(port, "pub", "x/t", &["a", "b"]).await;
    assert_eq!(watch.collect().await.len(), 2);
    let is_removal = |f: &log::Frame| f.kind == log::SESSION_REMOVE && f.first_str() == "brief";
    log::wait_for(&b.data_dir(), "SessionRemove of brief", is_removal);

    b.restart_after(|dir| {
        let frames = log::frames(dir);
        let removal = frames
            .iter()
            .find(|f| is_removal(f))
            .expect("the expired session's SessionRemove record");
        log::cut_after(dir, removal);
    });
    let dead = drain_exact(b.port(), 2).await;
    let got: Vec<String> = dead.iter().map(payload).collect();
    assert_eq!(got, ["a", "b"], "the dead letters precede the removal");
}

/// The same for a session a clean start replaced: its dead letters are durable before
/// the SessionRemove record that the new session's CONNACK waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_start_dead_letters_are_durable_before_the_session_is_removed() {
    let mut b = Broker::start();
    let port = b.port();
    let (mut c, _) = v5::connect_with(persistent_v5(port, "dev2", 300)).await;
    c.subscribe("y/t", v5::QoS::AtLeastOnce).await;
    c.disconnect().await;
    publish_all(port, "pub", "y/t", &["queued"]).await;
    let mut o = v5::options(port, "dev2");
    o.set_clean_start(true);
    let (c, ack) = v5::connect_with(o).await;
    assert!(!ack.session_present);
    drop(c);

    let is_removal = |f: &log::Frame| f.kind == log::SESSION_REMOVE && f.first_str() == "dev2";
    log::wait_for(&b.data_dir(), "SessionRemove of dev2", is_removal);
    b.restart_after(|dir| {
        let frames = log::frames(dir);
        let removal = frames
            .iter()
            .find(|f| is_removal(f))
            .expect("SessionRemove");
        log::cut_after(dir, removal);
    });
    let dead = drain_exact(b.port(), 1).await;
    assert_eq!(payload(&dead[0]), "queued");
}
