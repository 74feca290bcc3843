//! Publish/subscribe across QoS levels, protocol versions, clients and wildcards.

mod common;

use common::packet::{self, Connect};
use common::raw::RawClient;
use common::rumq::{v4, v5};
use common::{mosquitto_pub, Broker, MosquittoSub, MQTT_VERSIONS};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(500);

fn v4_qos(q: u8) -> v4::QoS {
    match q {
        0 => v4::QoS::AtMostOnce,
        1 => v4::QoS::AtLeastOnce,
        _ => v4::QoS::ExactlyOnce,
    }
}

fn v5_qos(q: u8) -> v5::QoS {
    match q {
        0 => v5::QoS::AtMostOnce,
        1 => v5::QoS::AtLeastOnce,
        _ => v5::QoS::ExactlyOnce,
    }
}

#[tokio::test]
async fn v4_publish_and_receive_at_each_qos() {
    let broker = Broker::start();
    let mut sub = v4::connect(broker.port(), "v4-sub").await;
    let mut publ = v4::connect(broker.port(), "v4-pub").await;
    for q in 0..=2u8 {
        let topic = format!("pubsub/v4/{q}");
        sub.subscribe(&topic, v4_qos(q)).await;
        publ.publish(&topic, v4_qos(q), false, format!("hello {q}"))
            .await;
        let got = sub.recv().await;
        assert_eq!(got.topic, topic);
        assert_eq!(got.payload.as_ref(), format!("hello {q}").as_bytes());
        assert_eq!(
            got.qos,
            v4_qos(q),
            "delivered at the QoS of publish and subscription"
        );
        assert!(!got.retain, "a live message is not retained");
    }
    assert!(sub.try_recv(QUIET).await.is_none(), "no duplicates");
}

#[tokio::test]
async fn v5_publish_and_receive_at_each_qos() {
    let broker = Broker::start();
    let mut sub = v5::connect(broker.port(), "v5-sub").await;
    let mut publ = v5::connect(broker.port(), "v5-pub").await;
    for q in 0..=2u8 {
        let topic = format!("pubsub/v5/{q}");
        sub.subscribe(&topic, v5_qos(q)).await;
        publ.publish(&topic, v5_qos(q), false, format!("hello {q}"))
            .await;
        let got = sub.recv().await;
        assert_eq!(got.topic.as_ref(), topic.as_bytes());
        assert_eq!(got.payload.as_ref(), format!("hello {q}").as_bytes());
        assert_eq!(got.qos, v5_qos(q));
        assert!(!got.retain);
    }
    assert!(sub.try_recv(QUIET).await.is_none(), "no duplicates");
}

#[tokio::test]
async fn messages_cross_protocol_versions() {
    let broker = Broker::start();
    let mut s4 = v4::connect(broker.port(), "x-v4").await;
    let mut s5 = v5::connect(broker.port(), "x-v5").await;
    s4.subscribe("cross/to4", v4::QoS::ExactlyOnce).await;
    s5.subscribe("cross/to5", v5::QoS::ExactlyOnce).await;
    for q in 0..=2u8 {
        s5.publish("cross/to4", v5_qos(q), false, vec![q]).await;
        let got = s4.recv().await;
        assert_eq!((got.qos, got.payload.as_ref()), (v4_qos(q), &[q][..]));
        s4.publish("cross/to5", v4_qos(q), false, vec![q]).await;
        let got = s5.recv().await;
        assert_eq!((got.qos, got.payload.as_ref()), (v5_qos(q), &[q][..]));
    }
}

/// mosquitto_pub → mosquitto_sub at every protocol version and QoS.
#[tokio::test]
async fn mosquitto_clients_at_every_version_and_qos() {
    let broker = Broker::start();
    let port = broker.port();
    for version in MQTT_VERSIONS {
        for q in 0..=2u8 {
            let topic = format!("mosq/{version}/{q}");
            let qs = q.to_string();
            let sub = MosquittoSub::start(port, version, 1, 10, &["-q", &qs, "-t", &topic]).await;
            let payload = format!("m-{version}-{q}");
            mosquitto_pub(port, version, &["-q", &qs, "-t", &topic, "-m", &payload]).await;
            let got = sub.collect().await;
            assert_eq!(got.len(), 1, "{version} qos {q}: {got:?}");
            assert_eq!(got[0].topic, topic);
            assert_eq!(got[0].payload, payload);
            assert_eq!(got[0].qos, q, "{version}");
        }
    }
}

/// rumqttc → mosquitto_sub and mosquitto_pub → rumqttc, per version.
#[tokio::test]
async fn mosquitto_and_rumqttc_interoperate() {
    let broker = Broker::start();
    let port = broker.port();
    let mut r = v5::connect(port, "interop").await;
    r.subscribe("interop/to-rumqttc/#", v5::QoS::ExactlyOnce)
        .await;
    for version in MQTT_VERSIONS {
        for q in 0..=2u8 {
            let qs = q.to_string();
            let topic = format!("interop/to-mosq/{version}/{q}");
            let sub = MosquittoSub::start(port, version, 1, 10, &["-q", "2", "-t", &topic]).await;
            r.publish(&topic, v5_qos(q), false, "from rumqttc").await;
            let got = sub.collect().await;
            assert_eq!(got.len(), 1, "{version}: {got:?}");
            assert_eq!((got[0].qos, got[0].payload.as_str()), (q, "from rumqttc"));

            let topic = format!("interop/to-rumqttc/{version}/{q}");
            mosquitto_pub(
                port,
                version,
                &["-q", &qs, "-t", &topic, "-m", "from mosquitto"],
            )
            .await;
            let got = r.recv().await;
            assert_eq!(got.topic.as_ref(), topic.as_bytes());
            assert_eq!(got.payload.as_ref(), b"from mosquitto");
            assert_eq!(got.qos, v5_qos(q));
        }
    }
}

#[tokio::test]
async fn plus_and_hash_wildcards_match_per_spec() {
    let broker = Broker::start();
    let port = broker.port();
    let filters = [
        "sport/+/player1",
        "sport/#",
        "+/+",
        "#",
        "sport/tennis/+",
        "+",
    ];
    let mut subs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let mut c = v4::connect(port, &format!("wild-{i}")).await;
        c.subscribe(f, v4::QoS::AtLeastOnce).await;
        subs.push(c);
    }
    let topics = [
        "sport/tennis/player1",
        "sport/tennis/player2",
        "sport",
        "sport/",
        "sport/tennis",
        "/finance",
        "finance",
        "sport/tennis/player1/ranking",
    ];
    let mut publ = v4::connect(port, "wild-pub").await;
    for t in topics {
        publ.publish(t, v4::QoS::AtLeastOnce, false, t).await;
    }
    // Expected per filter, in publish order (MQTT 3.1.1 §4.7).
    let expected: [&[&str]; 6] = [
        &["sport/tennis/player1"],
        &[
            "sport/tennis/player1",
            "sport/tennis/player2",
            "sport",
            "sport/",
            "sport/tennis",
            "sport/tennis/player1/ranking",
        ],
        &["sport/", "sport/tennis", "/finance"],
        &topics,
        &["sport/tennis/player1", "sport/tennis/player2"],
        &["sport", "finance"],
    ];
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..expected[i].len() {
            got.push(sub.recv().await.topic);
        }
        assert_eq!(got, expected[i], "filter {}", filters[i]);
        if let Some(extra) = sub.try_recv(Duration::from_millis(200)).await {
            panic!("filter {} also got {}", filters[i], extra.topic);
        }
    }
}

/// Topics starting with `$` are not matched by filters starting with a wildcard
/// [MQTT-4.7.2-1]. (The broker may refuse client PUBLISHes to `$` topics; either way
/// `#` and `+/...` subscribers must not see them.)
#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = Broker::start();
    let mut hash = v4::connect(broker.port(), "dollar-hash").await;
    hash.subscribe("#", v4::QoS::AtLeastOnce).await;
    let mut plus = v4::connect(broker.port(), "dollar-plus").await;
    plus.subscribe("+/info", v4::QoS::AtLeastOnce).await;
    let mut publ = v4::connect(broker.port(), "dollar-pub").await;
    publ.publish("$SYS/info", v4::QoS::AtLeastOnce, false, "dollar")
        .await;
    publ.publish("$test/info", v4::QoS::AtLeastOnce, false, "dollar")
        .await;
    publ.publish("plain/info", v4::QoS::AtLeastOnce, false, "marker")
        .await;
    for c in [&mut hash, &mut plus] {
        let got = c.recv().await;
        assert_eq!(
            got.topic, "plain/info",
            "a $ topic leaked into a wildcard subscription"
        );
        assert!(c.try_recv(QUIET).await.is_none());
    }
}

#[tokio::test]
async fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = v4::connect(port, "down-pub").await;
    for sub_q in 0..=2u8 {
        let mut sub = v4::connect(port, &format!("down-sub-{sub_q}")).await;
        let topic = format!("down/{sub_q}");
        sub.subscribe(&topic, v4_qos(sub_q)).await;
        for pub_q in 0..=2u8 {
            publ.publish(&topic, v4_qos(pub_q), false, vec![pub_q])
                .await;
            let got = sub.recv().await;
            assert_eq!(got.payload.as_ref(), &[pub_q]);
            assert_eq!(
                got.qos,
                v4_qos(sub_q.min(pub_q)),
                "published at {pub_q}, subscribed at {sub_q}"
            );
        }
    }
}

/// A QoS 2 PUBLISH sent twice (the resend has DUP) before PUBREL is delivered once, and
/// the subscriber side completes the four-packet flow.
#[tokio::test]
async fn qos2_is_delivered_exactly_once() {
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = RawClient::v311(port, "eo-sub").await;
    assert_eq!(sub.subscribe(1, "eo/t", 2).await, vec![2]);

    let mut publ = RawClient::v311(port, "eo-pub").await;
    let first = packet::publish(false, "eo/t", 2, false, 7, &[], b"once");
    publ.send(&first).await;
    let rec = publ.expect(packet::PUBREC, "PUBREC").await;
    assert_eq!(rec.packet_id(), 7);
    let mut dup = first.clone();
    dup[0] |= 0x08;
    publ.send(&dup).await;
    let rec = publ.expect(packet::PUBREC, "PUBREC for the resend").await;
    assert_eq!(rec.packet_id(), 7);
    publ.send(&packet::ack(0x62, 7)).await;
    let comp = publ.expect(packet::PUBCOMP, "PUBCOMP").await;
    assert_eq!(comp.packet_id(), 7);

    let p = sub.expect_publish().await;
    assert_eq!(
        (p.qos, p.topic.as_str(), p.payload.as_slice()),
        (2, "eo/t", &b"once"[..])
    );
    sub.send(&packet::ack(0x50, p.packet_id)).await;
    let rel = sub.expect(packet::PUBREL, "PUBREL").await;
    assert_eq!(rel.first, 0x62, "PUBREL flags are 0010");
    assert_eq!(rel.packet_id(), p.packet_id);
    sub.send(&packet::ack(0x70, p.packet_id)).await;
    sub.expect_silence(Duration::from_secs(1)).await;

    // Many QoS 2 messages through rumqttc: each arrives once, in order.
    let mut s = v4::connect(port, "eo-many-sub").await;
    s.subscribe("eo/many", v4::QoS::ExactlyOnce).await;
    let mut p = v4::connect(port, "eo-many-pub").await;
    for i in 0..50u32 {
        p.publish(
            "eo/many",
            v4::QoS::ExactlyOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await;
    }
    for i in 0..50u32 {
        let got = s.recv().await;
        assert_eq!(got.payload.as_ref(), &i.to_be_bytes());
    }
    assert!(
        s.try_recv(QUIET).await.is_none(),
        "a QoS 2 message arrived twice"
    );
}

/// A v3.1 (MQIsdp) raw client can connect and exchange messages.
#[tokio::test]
async fn mqtt_3_1_raw_client_round_trip() {
    let broker = Broker::start();
    let connect = Connect {
        level: packet::V31,
        ..Connect::v311("v31-raw")
    };
    let (mut c, ack) = RawClient::handshake(broker.port(), &connect).await;
    assert_eq!(ack.body, vec![0, 0], "3.1 CONNACK is 20 02 00 00");
    assert_eq!(c.subscribe(1, "v31/t", 1).await, vec![1]);
    c.send(&packet::publish(false, "v31/t", 1, false, 2, &[], b"x"))
        .await;
    let mut seen_ack = false;
    let mut seen_pub = false;
    for _ in 0..2 {
        match c.recv().await {
            common::raw::Recv::Packet(p) if p.kind() == packet::PUBACK => {
                assert_eq!(p.packet_id(), 2);
                seen_ack = true;
            }
            common::raw::Recv::Packet(p) if p.kind() == packet::PUBLISH => {
                assert_eq!(p.publish(false).payload, b"x");
                seen_pub = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(seen_ack && seen_pub);
}

/// The broker's own `$` traffic (dead letters on `$DLQ/...`) is visible to a `$DLQ/#`
/// subscription but never to a filter starting with a wildcard [MQTT-4.7.2-1].
#[tokio::test]
async fn broker_dollar_topics_reach_only_explicit_dollar_filters() {
    let broker = Broker::start();
    let port = broker.port();
    let mut dlq = v4::connect(port, "dollar-dlq").await;
    dlq.subscribe("$DLQ/#", v4::QoS::AtLeastOnce).await;
    let mut wild = v4::connect(port, "dollar-wild").await;
    for f in ["+/+/+/+", "+/+/+", "+/+/+/+/+"] {
        wild.subscribe(f, v4::QoS::AtLeastOnce).await;
    }
    let mut publ = v4::connect(port, "dollar-src").await;
    // No subscriber: a QoS 1 message becomes a dead letter.
    publ.publish("nobody/here", v4::QoS::AtLeastOnce, false, "lost")
        .await;
    let dead = dlq.recv().await;
    assert!(dead.topic.starts_with("$DLQ/"), "{dead:?}");
    // Then a marker the wildcard subscriber must get first.
    publ.publish("m/a/r/k", v4::QoS::AtLeastOnce, false, "marker")
        .await;
    let got = wild.recv().await;
    assert_eq!(
        got.topic, "m/a/r/k",
        "a $ topic matched a leading wildcard: {got:?}"
    );
}
