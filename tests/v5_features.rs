//! MQTT 5 features: no local, subscription identifiers, topic aliases, message expiry,
//! forwarded properties, PUBACK reason codes and the client's Receive Maximum.

mod common;

use common::packet::{self, Connect, Prop};
use common::raw::{RawClient, Recv};
use common::rumq::v5;
use common::Broker;
use std::collections::BTreeSet;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(500);
const NO_LOCAL: u8 = 0x04;

async fn pub1(c: &mut RawClient, topic: &str, id: u16, props: &[Prop], payload: &[u8]) -> u8 {
    c.send(&packet::publish(true, topic, 1, false, id, props, payload))
        .await;
    let (ack, _) = c.until(packet::PUBACK, "PUBACK").await;
    assert_eq!(ack.packet_id(), id);
    ack.reason()
}

#[tokio::test]
async fn no_local_suppresses_own_messages() {
    let broker = Broker::start();
    let port = broker.port();
    let mut me = RawClient::v5(port, "nl-me").await;
    assert_eq!(me.subscribe(1, "nl/t", 1 | NO_LOCAL).await, vec![1]);
    assert_eq!(me.subscribe(2, "nl/marker", 1).await, vec![1]);
    let mut other = RawClient::v5(port, "nl-other").await;
    assert_eq!(other.subscribe(1, "nl/t", 1).await, vec![1]);

    assert_eq!(pub1(&mut me, "nl/t", 10, &[], b"mine").await, 0);
    let p = other.expect_publish().await;
    assert_eq!(p.payload, b"mine");
    other.send(&packet::puback(p.packet_id)).await;
    // A message from someone else on the same topic still arrives.
    assert_eq!(pub1(&mut other, "nl/t", 11, &[], b"theirs").await, 0);
    let p = me.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("nl/t", &b"theirs"[..])
    );
    me.send(&packet::puback(p.packet_id)).await;
    // Then the marker: nothing of my own came in between.
    assert_eq!(pub1(&mut other, "nl/marker", 12, &[], b"m").await, 0);
    let p = me.expect_publish().await;
    assert_eq!(
        p.topic, "nl/marker",
        "own message delivered despite no local: {p:?}"
    );
}

#[tokio::test]
async fn subscription_identifiers_are_sent_with_matching_messages() {
    let broker = Broker::start();
    let port = broker.port();
    let mut c = RawClient::v5(port, "sid").await;
    let sid = |n| [Prop::Var(packet::SUBSCRIPTION_ID, n)];
    assert_eq!(c.subscribe_with(1, &sid(7), "sid/+", 1).await, vec![1]);
    assert_eq!(c.subscribe_with(2, &sid(300), "sid/#", 1).await, vec![1]);
    assert_eq!(c.subscribe_with(3, &[], "sid/none", 1).await, vec![1]);
    let mut publ = RawClient::v5(port, "sid-pub").await;

    // Matches only sid/#.
    pub1(&mut publ, "sid/a/b", 1, &[], b"deep").await;
    let p = c.expect_publish().await;
    assert_eq!(
        p.props_with(packet::SUBSCRIPTION_ID),
        vec![&Prop::Var(packet::SUBSCRIPTION_ID, 300)]
    );
    c.send(&packet::puback(p.packet_id)).await;

    // Matches sid/+ and sid/#: one copy with both ids, or one copy per subscription.
    pub1(&mut publ, "sid/a", 2, &[], b"both").await;
    let mut ids = BTreeSet::new();
    let mut copies = 0;
    while ids.len() < 2 && copies < 2 {
        let p = c.expect_publish().await;
        copies += 1;
        assert_eq!(p.payload, b"both");
        for prop in p.props_with(packet::SUBSCRIPTION_ID) {
            if let Prop::Var(_, v) = prop {
                assert!(ids.insert(*v), "id {v} twice");
            }
        }
        c.send(&packet::puback(p.packet_id)).await;
    }
    assert_eq!(ids, BTreeSet::from([7, 300]));

    // sid/none: matches sid/+ (7), sid/# (300) and sid/none (no id); a copy for the last
    // alone, if sent separately, carries no identifier. Just require 7 and 300 and no others.
    pub1(&mut publ, "sid/none", 3, &[], b"n").await;
    let mut ids = Vec::new();
    loop {
        match c.recv_within(QUIET).await {
            Recv::Packet(p) if p.kind() == packet::PUBLISH => {
                let p = p.publish(true);
                c.send(&packet::puback(p.packet_id)).await;
                for prop in p.props_with(packet::SUBSCRIPTION_ID) {
                    if let Prop::Var(_, v) = prop {
                        ids.push(*v);
                    }
                }
            }
            Recv::Timeout => break,
            other => panic!("{other:?}"),
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 300]);
}

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() {
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = RawClient::v5(port, "ta-sub").await;
    assert_eq!(sub.subscribe(1, "ta/#", 1).await, vec![1]);
    let mut c = RawClient::v5(port, "ta-pub").await;
    let alias = |n| [Prop::U16(packet::TOPIC_ALIAS, n)];
    assert!(pub1(&mut c, "ta/one", 1, &alias(1), b"set").await < 0x80);
    assert!(pub1(&mut c, "", 2, &alias(1), b"use").await < 0x80);
    // Re-map alias 1 to another topic.
    assert!(pub1(&mut c, "ta/two", 3, &alias(1), b"remap").await < 0x80);
    assert!(pub1(&mut c, "", 4, &alias(1), b"use2").await < 0x80);
    for (topic, payload) in [
        ("ta/one", "set"),
        ("ta/one", "use"),
        ("ta/two", "remap"),
        ("ta/two", "use2"),
    ] {
        let p = sub.expect_publish().await;
        sub.send(&packet::puback(p.packet_id)).await;
        assert_eq!(
            (p.topic.as_str(), p.payload.as_slice()),
            (topic, payload.as_bytes())
        );
        assert!(
            p.prop(packet::TOPIC_ALIAS).is_none(),
            "the inbound alias must not leak to subscribers (they set no Topic Alias Maximum)"
        );
    }
}

#[tokio::test]
async fn message_expiry_drops_stale_queued_messages_and_counts_down() {
    let broker = Broker::start();
    let port = broker.port();
    let session = |clean| {
        Connect::v5("exp")
            .clean(clean)
            .prop(Prop::U32(packet::SESSION_EXPIRY, 60))
    };
    let (mut c, _) = RawClient::handshake(port, &session(true)).await;
    assert_eq!(c.subscribe(1, "exp/t", 1).await, vec![1]);
    c.send(&packet::disconnect_v5(0, &[])).await;
    c.expect_closed().await;

    let mut publ = RawClient::v5(port, "exp-pub").await;
    let expiry = |s| [Prop::U32(packet::MESSAGE_EXPIRY, s)];
    pub1(&mut publ, "exp/t", 1, &expiry(1), b"short").await;
    pub1(&mut publ, "exp/t", 2, &expiry(100), b"long").await;
    pub1(&mut publ, "exp/t", 3, &[], b"forever").await;
    // Let the short one expire while queued.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let (mut c, ack) = RawClient::handshake(port, &session(false)).await;
    assert!(ack.connack().0);
    let p = c.expect_publish().await;
    assert_eq!(
        p.payload, b"long",
        "the expired message must not be delivered"
    );
    match p.prop(packet::MESSAGE_EXPIRY) {
        Some(Prop::U32(_, s)) => assert!(*s <= 98, "expiry must count down: {s}"),
        other => panic!("Message Expiry Interval missing: {other:?}"),
    }
    c.send(&packet::puback(p.packet_id)).await;
    let p = c.expect_publish().await;
    assert_eq!(p.payload, b"forever");
    assert!(
        p.prop(packet::MESSAGE_EXPIRY).is_none(),
        "no expiry was set"
    );
    c.send(&packet::puback(p.packet_id)).await;
    c.expect_silence(QUIET).await;
}

/// A request/reply round trip: every application property is forwarded untouched.
#[tokio::test]
async fn request_reply_properties_are_forwarded_untouched() {
    let broker = Broker::start();
    let port = broker.port();
    let mut responder = RawClient::v5(port, "rr-responder").await;
    assert_eq!(responder.subscribe(1, "rr/req", 1).await, vec![1]);
    let mut requester = RawClient::v5(port, "rr-requester").await;
    assert_eq!(requester.subscribe(1, "rr/reply/me", 1).await, vec![1]);

    let request_props = vec![
        Prop::Byte(packet::PAYLOAD_FORMAT, 1),
        Prop::Str(
            packet::CONTENT_TYPE,
            "application/json; charset=utf-8".into(),
        ),
        Prop::Str(packet::RESPONSE_TOPIC, "rr/reply/me".into()),
        Prop::Bin(packet::CORRELATION_DATA, vec![0, 1, 0xfe, 0xff]),
        Prop::Pair("b".into(), "2".into()),
        Prop::Pair("a".into(), "1".into()),
        Prop::Pair("a".into(), "1 again".into()),
    ];
    assert_eq!(
        pub1(&mut requester, "rr/req", 1, &request_props, b"{\"q\":1}").await,
        0
    );

    let req = responder.expect_publish().await;
    responder.send(&packet::puback(req.packet_id)).await;
    let mut got = req.props.clone();
    got.retain(|p| p.id() != packet::SUBSCRIPTION_ID);
    assert_eq!(
        got, request_props,
        "properties forwarded untouched, user properties in order"
    );
    assert_eq!(req.payload, b"{\"q\":1}");

    let Some(Prop::Str(_, reply_to)) = req.prop(packet::RESPONSE_TOPIC).cloned() else {
        panic!("no response topic");
    };
    let corr = req
        .prop(packet::CORRELATION_DATA)
        .cloned()
        .expect("correlation data");
    assert_eq!(
        pub1(
            &mut responder,
            &reply_to,
            2,
            std::slice::from_ref(&corr),
            b"{\"a\":2}"
        )
        .await,
        0
    );
    let reply = requester.expect_publish().await;
    assert_eq!(reply.topic, "rr/reply/me");
    assert_eq!(reply.props, vec![corr]);
    assert_eq!(reply.payload, b"{\"a\":2}");
}

#[tokio::test]
async fn rumqttc_v5_properties_round_trip() {
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = v5::connect(port, "rprops-sub").await;
    sub.subscribe("rprops/t", v5::QoS::AtLeastOnce).await;
    let mut publ = v5::connect(port, "rprops-pub").await;
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("rprops/reply".into()),
        correlation_data: Some(vec![9, 8, 7].into()),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    publ.publish_with(
        "rprops/t",
        v5::QoS::AtLeastOnce,
        false,
        "hi",
        Some(props.clone()),
    )
    .await;
    let got = sub.recv().await;
    let p = got.properties.expect("properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type, props.content_type);
    assert_eq!(p.response_topic, props.response_topic);
    assert_eq!(p.correlation_data, props.correlation_data);
    assert_eq!(p.user_properties, props.user_properties);
}

#[tokio::test]
async fn puback_reports_no_matching_subscribers() {
    let broker = Broker::start();
    let port = broker.port();
    let mut c = RawClient::v5(port, "nms").await;
    assert_eq!(pub1(&mut c, "nms/nobody", 1, &[], b"x").await, 0x10);
    let mut s = RawClient::v5(port, "nms-sub").await;
    assert_eq!(s.subscribe(1, "nms/somebody", 0).await, vec![0]);
    assert_eq!(pub1(&mut c, "nms/somebody", 2, &[], b"x").await, 0x00);
    // QoS 2: PUBREC carries it too.
    c.send(&packet::publish(true, "nms/nobody", 2, false, 3, &[], b"x"))
        .await;
    let rec = c.expect(packet::PUBREC, "PUBREC").await;
    assert_eq!(rec.reason(), 0x10);
}

/// The broker never has more unacknowledged QoS 1 messages in flight to a client than
/// the Receive Maximum that client announced.
#[tokio::test]
async fn receive_maximum_of_the_client_is_respected() {
    const RM: usize = 3;
    const TOTAL: u8 = 20;
    let broker = Broker::start();
    let port = broker.port();
    let (mut c, _) = RawClient::handshake(
        port,
        &Connect::v5("rm").prop(Prop::U16(packet::RECEIVE_MAXIMUM, RM as u16)),
    )
    .await;
    assert_eq!(c.subscribe(1, "rm/t", 1).await, vec![1]);
    let mut publ = RawClient::v5(port, "rm-pub").await;
    for i in 0..TOTAL {
        pub1(&mut publ, "rm/t", u16::from(i) + 1, &[], &[i]).await;
    }
    let mut unacked = std::collections::VecDeque::new();
    let mut received = Vec::new();
    for _ in 0..(TOTAL as usize * 2) {
        if received.len() == TOTAL as usize {
            break;
        }
        if unacked.len() == RM {
            // The window is full: nothing more may come until we acknowledge.
            match c.recv_within(Duration::from_millis(300)).await {
                Recv::Timeout => {
                    let id = unacked.pop_front().unwrap();
                    c.send(&packet::puback(id)).await;
                }
                other => panic!(
                    "more than Receive Maximum {RM} unacknowledged messages in flight: {other:?}"
                ),
            }
            continue;
        }
        let p = c.expect_publish().await;
        received.push(p.payload[0]);
        unacked.push_back(p.packet_id);
    }
    assert_eq!(
        received,
        (0..TOTAL).collect::<Vec<_>>(),
        "all delivered, in order"
    );
}

#[tokio::test]
async fn connack_announces_the_brokers_limits() {
    let broker = Broker::start_with_config(
        "[limits]\nreceive_maximum = 7\ntopic_alias_maximum = 9\nmax_packet_size = 65536\n",
    );
    let (_c, ack) = RawClient::handshake(broker.port(), &Connect::v5("limits")).await;
    let props = ack.connack_props();
    assert!(
        props.contains(&Prop::U16(packet::RECEIVE_MAXIMUM, 7)),
        "{props:?}"
    );
    assert!(
        props.contains(&Prop::U16(packet::TOPIC_ALIAS_MAXIMUM, 9)),
        "{props:?}"
    );
    assert!(
        props.contains(&Prop::U32(packet::MAXIMUM_PACKET_SIZE, 65536)),
        "{props:?}"
    );
}

/// The CONNACK respects the client's Maximum Packet Size [MQTT-3.1.2-24]: one that
/// fits exactly is sent; when it cannot fit (its properties are all needed, none is
/// optional [MQTT-3.2.2-19] [MQTT-3.2.2-20]) the connection closes without one.
#[tokio::test]
async fn connack_never_exceeds_the_client_maximum_packet_size() {
    let broker = Broker::start();
    let port = broker.port();
    let (_c, ack) = RawClient::handshake(port, &Connect::v5("mps-probe")).await;
    assert!(ack.body.len() < 128, "{ack:?}");
    let size = 2 + ack.body.len() as u32;

    let exact = Connect::v5("mps-fits").prop(Prop::U32(packet::MAXIMUM_PACKET_SIZE, size));
    let (_c, ack) = RawClient::handshake(port, &exact).await;
    assert_eq!(2 + ack.body.len() as u32, size);

    let mut c = RawClient::connect(port).await;
    let small = Connect::v5("mps-small").prop(Prop::U32(packet::MAXIMUM_PACKET_SIZE, size - 1));
    c.send(&small.build()).await;
    let got = c.expect_closed().await;
    assert!(got.is_empty(), "a CONNACK over {} bytes: {got:?}", size - 1);
    common::assert_broker_works(port).await;
}

/// After a server-initiated DISCONNECT the broker lets the client read it: a client
/// that keeps sending (as Paho's flow-control test does) is not reset under it (a
/// "broken pipe" on its next write) but reads DISCONNECT 0x93 and then the end of
/// the stream.
#[tokio::test]
async fn disconnect_reaches_a_client_that_keeps_sending() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::start_with_config("[limits]\nreceive_maximum = 2\n");
    let mut c = RawClient::v5(broker.port(), "rm-over").await;
    // Three unreleased QoS 2 messages (one over Receive Maximum), and more after them
    // that the broker will not process.
    let mut bytes = Vec::new();
    for id in 1..=10u16 {
        bytes.extend(packet::publish(true, "rm/over", 2, false, id, &[], b"x"));
    }
    c.stream.write_all(&bytes).await.expect("PUBLISHes written");
    // The client goes on sending for a while (well within the broker's one-second
    // linger) before it reads: every write must succeed.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0..20 {
        tick.tick().await;
        if let Err(e) = c.stream.write_all(&packet::PINGREQ).await {
            panic!("write {i} after the broker's DISCONNECT failed: {e}");
        }
    }
    let mut got = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        match common::within(common::WAIT, "read", c.stream.read(&mut chunk)).await {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e),
        }
    };
    let mut packets = Vec::new();
    while let Some(p) = packet::take_packet(&mut got) {
        packets.push(p);
    }
    let last = packets.last().cloned();
    assert!(
        matches!(&last, Some(p) if p.kind() == packet::DISCONNECT_TYPE && p.reason() == 0x93),
        "expected DISCONNECT 0x93 last, got {packets:?} then {end:?}"
    );
    assert!(end.is_ok(), "the DISCONNECT was followed by {end:?}");
}
