//! Delayed delivery (`$delayed/<seconds>/<topic>`) against the real binary: the due time,
//! `kill -9` between accept and due, the `$` rule and the ACL on the target topic, the
//! bounds (v5 reason codes, 3.x dead letters), and many messages coming due at once.

mod common;
mod dlq_support;

use common::packet::{self, Connect};
use common::raw::RawClient;
use common::rumq::v4;
use common::{Broker, WAIT};
use dlq_support::{drain_exact, payload, topic};
use std::time::{Duration, Instant};

/// Publishes at QoS 1 from a raw v5 client and returns the PUBACK's reason code.
async fn publish_v5(c: &mut RawClient, topic: &str, packet_id: u16, body: &[u8]) -> u8 {
    c.send(&packet::publish(
        true,
        topic,
        1,
        false,
        packet_id,
        &[],
        body,
    ))
    .await;
    let ack = c.expect(packet::PUBACK, "PUBACK").await;
    assert_eq!(ack.packet_id(), packet_id);
    ack.reason()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_arrives_on_its_topic_after_the_delay_not_before() {
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = v4::connect(port, "d-sub").await;
    sub.subscribe("d/t", v4::QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(port, "d-pub").await;
    let sent = Instant::now();
    assert_eq!(publ_ok(&mut publ, "$delayed/1/d/t", b"later").await, 0);
    assert!(
        sent.elapsed() < Duration::from_millis(900),
        "the PUBACK does not wait for the delay"
    );
    let got = sub.recv().await;
    let after = sent.elapsed();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("d/t", &b"later"[..])
    );
    assert!(
        after >= Duration::from_millis(980),
        "published {after:?} after the PUBLISH, before its 1 s delay"
    );
    assert!(after < Duration::from_secs(3), "published {after:?} late");
    let metric = "sluice_delayed_published_total";
    let deadline = Instant::now() + WAIT;
    while broker.metric(metric) < 1.0 {
        assert!(Instant::now() < deadline, "{metric} never counted it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publ_ok(c: &mut RawClient, topic: &str, body: &[u8]) -> u8 {
    publish_v5(c, topic, 1, body).await
}

/// The due time is on disk with the message: a `kill -9` after the PUBACK and before the
/// due time still publishes it (to a persistent subscriber that was offline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_survives_kill_9_before_its_due_time() {
    let mut broker = Broker::start();
    let mut o = v4::options(broker.port(), "dk-sub");
    o.set_clean_session(false);
    let (mut sub, _) = v4::connect_with(o).await;
    sub.subscribe("dk/t", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = RawClient::v5(broker.port(), "dk-pub").await;
    for (i, body) in ["one", "two", "three"].iter().enumerate() {
        let id = i as u16 + 1;
        assert_eq!(
            publish_v5(&mut publ, "$delayed/2/dk/t", id, body.as_bytes()).await,
            0
        );
    }
    broker.crash_and_restart();

    let mut o = v4::options(broker.port(), "dk-sub");
    o.set_clean_session(false);
    let (mut sub, present) = v4::connect_with(o).await;
    assert!(present);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(String::from_utf8_lossy(&sub.recv().await.payload).into_owned());
    }
    assert_eq!(got, ["one", "two", "three"], "all of them, in order");
    assert!(
        sub.try_recv(Duration::from_millis(500)).await.is_none(),
        "each once"
    );
}

/// The target topic is checked like any other: `$` topics are the broker's, and the ACL
/// applies at publish time (v5 0x87).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_topic_obeys_the_dollar_rule_and_the_acl() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic write open/#\n").expect("write acl");
    let config = format!("[auth]\nacl_file = {:?}\n", acl.display().to_string());
    let broker = Broker::start_with_config(&config);
    let mut publ = RawClient::v5(broker.port(), "da-pub").await;
    assert_eq!(publ_ok(&mut publ, "$delayed/1/$SYS/x", b"no").await, 0x87);
    assert_eq!(
        publish_v5(&mut publ, "$delayed/1/closed/x", 2, b"no").await,
        0x87
    );
    assert_eq!(
        publish_v5(&mut publ, "$delayed/1/open/x", 3, b"yes").await,
        0
    );
}

/// Past the bounds a v5 publisher is refused with a reason; a 3.x publisher's message
/// becomes a `delay_refused` dead letter instead of vanishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_bounds_v5_is_refused_and_3x_is_dead_lettered() {
    let broker = Broker::start_with_config("[delayed]\nmax_delay_secs = 60\nmax_messages = 2\n");
    let port = broker.port();
    let mut publ = RawClient::v5(port, "db-pub").await;
    assert_eq!(
        publish_v5(&mut publ, "$delayed/61/b/t", 1, b"x").await,
        0x97
    );
    assert_eq!(
        publish_v5(&mut publ, "$delayed/soon/b/t", 2, b"x").await,
        0x90
    );
    assert_eq!(publish_v5(&mut publ, "$delayed/60/b/t", 3, b"a").await, 0);
    assert_eq!(publish_v5(&mut publ, "$delayed/60/b/t", 4, b"b").await, 0);
    assert_eq!(
        publish_v5(&mut publ, "$delayed/60/b/t", 5, b"c").await,
        0x97,
        "max_messages are waiting"
    );

    let mut old = RawClient::handshake(port, &Connect::v311("db-311")).await.0;
    old.send(&packet::publish(
        false,
        "$delayed/61/b/t",
        1,
        false,
        9,
        &[],
        b"late",
    ))
    .await;
    old.expect(packet::PUBACK, "PUBACK").await;
    let dead = drain_exact(port, 1).await;
    assert_eq!(topic(&dead[0]), "$DLQ/delay_refused/$delayed/61/b/t");
    assert_eq!(payload(&dead[0]), "late");
    assert_eq!(broker.metric("sluice_delayed_refused_total"), 4.0);
}

/// Many messages coming due at once all arrive, each publisher's in its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_coming_due_at_once_all_arrive_in_order() {
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = v4::connect(port, "dm-sub").await;
    sub.subscribe("dm/t", v4::QoS::AtLeastOnce).await;
    let mut publ = v4::connect(port, "dm-pub").await;
    let n = 500;
    for i in 0..n {
        publ.publish(
            "$delayed/1/dm/t",
            v4::QoS::AtLeastOnce,
            false,
            format!("{i}"),
        )
        .await;
    }
    for i in 0..n {
        let got = sub.recv().await;
        assert_eq!(String::from_utf8_lossy(&got.payload), format!("{i}"));
    }
}
