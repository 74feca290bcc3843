//! Retained messages: set, replace, clear, delivery on subscribe, wildcards, and the
//! v5 subscription options Retain Handling and Retain As Published.

mod common;

use common::packet::{self, Prop};
use common::raw::RawClient;
use common::rumq::v4;
use common::{mosquitto_pub, Broker, MosquittoSub};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(500);

#[tokio::test]
async fn retained_message_is_set_replaced_and_cleared() {
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = v4::connect(port, "ret-pub").await;

    publ.publish("ret/a", v4::QoS::AtLeastOnce, true, "one")
        .await;
    let mut s1 = v4::connect(port, "ret-s1").await;
    s1.subscribe("ret/a", v4::QoS::AtLeastOnce).await;
    let got = s1.recv().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("ret/a", &b"one"[..])
    );
    assert!(
        got.retain,
        "a retained message sent on subscribe has RETAIN set"
    );

    // A live subscriber gets the replacement without RETAIN [MQTT-3.3.1-9]...
    publ.publish("ret/a", v4::QoS::AtLeastOnce, true, "two")
        .await;
    let live = s1.recv().await;
    assert_eq!(live.payload.as_ref(), b"two");
    assert!(
        !live.retain,
        "live delivery of a retained PUBLISH has RETAIN clear"
    );
    // ...and a new subscriber only the latest value.
    let mut s2 = v4::connect(port, "ret-s2").await;
    s2.subscribe("ret/a", v4::QoS::AtLeastOnce).await;
    let got = s2.recv().await;
    assert_eq!(got.payload.as_ref(), b"two");
    assert!(got.retain);
    assert!(
        s2.try_recv(QUIET).await.is_none(),
        "only one retained message per topic"
    );

    // An empty retained payload clears it (and is itself delivered to live subscribers).
    publ.publish("ret/a", v4::QoS::AtLeastOnce, true, "").await;
    let cleared = s1.recv().await;
    assert!(cleared.payload.is_empty());
    let mut s3 = v4::connect(port, "ret-s3").await;
    s3.subscribe("ret/a", v4::QoS::AtLeastOnce).await;
    assert!(
        s3.try_recv(QUIET).await.is_none(),
        "the retained message was cleared"
    );
}

#[tokio::test]
async fn retained_messages_are_delivered_through_wildcards_at_subscription_qos() {
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = v4::connect(port, "rw-pub").await;
    for t in ["rw/1/a", "rw/2/a", "rw/2/b", "other/a"] {
        publ.publish(t, v4::QoS::AtLeastOnce, true, t).await;
    }
    let mut s = v4::connect(port, "rw-plus").await;
    s.subscribe("rw/+/a", v4::QoS::AtMostOnce).await;
    let mut topics = vec![s.recv().await, s.recv().await];
    assert!(s.try_recv(QUIET).await.is_none());
    for p in &topics {
        assert!(p.retain);
        assert_eq!(
            p.qos,
            v4::QoS::AtMostOnce,
            "downgraded to the subscription's QoS"
        );
    }
    topics.sort_by(|a, b| a.topic.cmp(&b.topic));
    let names: Vec<_> = topics.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(names, ["rw/1/a", "rw/2/a"]);

    let mut h = v4::connect(port, "rw-hash").await;
    h.subscribe("rw/#", v4::QoS::AtLeastOnce).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        let p = h.recv().await;
        assert!(p.retain);
        names.push(p.topic);
    }
    names.sort();
    assert_eq!(names, ["rw/1/a", "rw/2/a", "rw/2/b"]);
    assert!(h.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn mosquitto_retained_round_trip() {
    let broker = Broker::start();
    let port = broker.port();
    mosquitto_pub(
        port,
        "mqttv311",
        &["-r", "-q", "1", "-t", "mr/t", "-m", "kept"],
    )
    .await;
    let sub = MosquittoSub::start(port, "mqttv5", 1, 10, &["-q", "1", "-t", "mr/#"]).await;
    let got = sub.collect().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].topic.as_str(), got[0].payload.as_str()),
        ("mr/t", "kept")
    );
    assert!(got[0].retain);
}

/// Subscription options byte: QoS | no local 0x04 | retain as published 0x08 | RH << 4.
fn opts(qos: u8, rap: bool, rh: u8) -> u8 {
    qos | if rap { 0x08 } else { 0 } | (rh << 4)
}

#[tokio::test]
async fn v5_retain_handling_0_1_2() {
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = RawClient::v5(port, "rh-pub").await;
    publ.send(&packet::publish(true, "rh/t", 1, true, 1, &[], b"kept"))
        .await;
    publ.expect(packet::PUBACK, "PUBACK").await;

    // 0: sent at every subscribe, including a re-subscribe.
    let mut c = RawClient::v5(port, "rh-0").await;
    assert_eq!(c.subscribe(1, "rh/t", opts(1, false, 0)).await, vec![1]);
    let p = c.expect_publish().await;
    assert!(p.retain && p.payload == b"kept", "{p:?}");
    c.send(&packet::puback(p.packet_id)).await;
    assert_eq!(c.subscribe(2, "rh/t", opts(1, false, 0)).await, vec![1]);
    let p = c.expect_publish().await;
    assert!(p.retain && p.payload == b"kept", "{p:?}");
    c.send(&packet::puback(p.packet_id)).await;
    c.ping().await;

    // 1: only when the subscription is new.
    let mut c = RawClient::v5(port, "rh-1").await;
    assert_eq!(c.subscribe(1, "rh/+", opts(1, false, 1)).await, vec![1]);
    let p = c.expect_publish().await;
    assert!(p.retain && p.payload == b"kept", "{p:?}");
    c.send(&packet::puback(p.packet_id)).await;
    assert_eq!(c.subscribe(2, "rh/+", opts(1, false, 1)).await, vec![1]);
    c.ping().await;

    // 2: never.
    let mut c = RawClient::v5(port, "rh-2").await;
    assert_eq!(c.subscribe(1, "rh/#", opts(1, false, 2)).await, vec![1]);
    c.ping().await;
    // ...but live messages still flow.
    publ.send(&packet::publish(true, "rh/t", 1, false, 2, &[], b"live"))
        .await;
    publ.expect(packet::PUBACK, "PUBACK").await;
    let p = c.expect_publish().await;
    assert_eq!(p.payload, b"live");
}

#[tokio::test]
async fn v5_retain_as_published() {
    let broker = Broker::start();
    let port = broker.port();
    let mut rap = RawClient::v5(port, "rap-1").await;
    assert_eq!(rap.subscribe(1, "rap/t", opts(0, true, 0)).await, vec![0]);
    let mut plain = RawClient::v5(port, "rap-0").await;
    assert_eq!(
        plain.subscribe(1, "rap/t", opts(0, false, 0)).await,
        vec![0]
    );

    let mut publ = RawClient::v5(port, "rap-pub").await;
    publ.send(&packet::publish(true, "rap/t", 1, true, 1, &[], b"r"))
        .await;
    publ.expect(packet::PUBACK, "PUBACK").await;
    let p = rap.expect_publish().await;
    assert!(
        p.retain,
        "retain as published keeps RETAIN on live delivery"
    );
    let p = plain.expect_publish().await;
    assert!(!p.retain, "without retain as published RETAIN is cleared");

    publ.send(&packet::publish(true, "rap/t", 1, false, 2, &[], b"n"))
        .await;
    publ.expect(packet::PUBACK, "PUBACK").await;
    assert!(!rap.expect_publish().await.retain);
    assert!(!plain.expect_publish().await.retain);

    // Retained messages sent on subscribe always carry RETAIN.
    let mut late = RawClient::v5(port, "rap-late").await;
    assert_eq!(late.subscribe(1, "rap/#", opts(0, false, 0)).await, vec![0]);
    let p = late.expect_publish().await;
    assert!(p.retain && p.payload == b"r", "{p:?}");
}

#[tokio::test]
async fn retained_message_keeps_its_v5_properties() {
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = RawClient::v5(port, "rp-pub").await;
    let props = [
        Prop::Str(packet::CONTENT_TYPE, "text/plain".into()),
        Prop::Pair("k".into(), "v".into()),
    ];
    publ.send(&packet::publish(true, "rp/t", 1, true, 1, &props, b"x"))
        .await;
    publ.expect(packet::PUBACK, "PUBACK").await;
    let mut s = RawClient::v5(port, "rp-sub").await;
    s.subscribe(1, "rp/t", 0).await;
    let p = s.expect_publish().await;
    assert_eq!(
        p.prop(packet::CONTENT_TYPE),
        Some(&Prop::Str(packet::CONTENT_TYPE, "text/plain".into()))
    );
    assert_eq!(
        p.props_with(packet::USER_PROPERTY),
        vec![&Prop::Pair("k".into(), "v".into())]
    );
}

/// A wildcard matching more retained messages than the queue holds gets them all, as
/// its window allows, and none becomes a `queue_full` dead letter (#13: a retained copy
/// is never dead-lettered; the retained store keeps the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_retained_than_the_queue_holds_arrive_without_dead_letters() {
    let broker = Broker::start_with_config("[limits]\nmax_queued_messages = 10\n");
    let port = broker.port();
    let mut publ = v4::connect(port, "many-pub").await;
    let n = 60;
    for i in 0..n {
        publ.publish(
            &format!("many/{i}"),
            v4::QoS::AtLeastOnce,
            true,
            format!("{i}"),
        )
        .await;
    }
    let mut sub = v4::connect(port, "many-sub").await;
    sub.subscribe("many/#", v4::QoS::AtLeastOnce).await;
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..n {
        let m = sub.recv().await;
        assert!(m.retain, "sent as a retained message");
        got.insert(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(got.len(), n, "every retained message once");
    assert!(sub.try_recv(QUIET).await.is_none());
    assert_eq!(
        broker.metric("sluice_dead_letters_total{reason=\"queue_full\"}"),
        0.0,
        "no retained copy became a queue_full dead letter"
    );
}
