//! Malformed and forbidden input, one case per test, over raw TCP. Each test asserts the
//! broker's answer (a CONNACK code, a v5 DISCONNECT reason, or a plain close) and that
//! another client can still connect and publish afterwards.

mod common;

use common::packet::{self, packet, Connect, Pkt, Prop, Will};
use common::raw::RawClient;
use common::{assert_broker_works, Broker};

const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;

/// The broker closes the connection, sending nothing first.
async fn expect_silent_close(c: &mut RawClient) {
    let got = c.expect_closed().await;
    assert!(
        got.is_empty(),
        "expected a close and nothing else, got {got:?}"
    );
}

/// The broker refuses a CONNECT: a close, optionally after a CONNACK with a failure code
/// (never a successful one).
async fn expect_connect_refused(c: &mut RawClient) {
    let got = c.expect_closed().await;
    for p in &got {
        assert_eq!(
            p.kind(),
            packet::CONNACK,
            "only a CONNACK may precede the close: {got:?}"
        );
        assert_ne!(p.connack().1, 0, "the bad CONNECT was accepted: {got:?}");
    }
    assert!(got.len() <= 1, "{got:?}");
}

/// A v5 connection ends with exactly one DISCONNECT whose reason is in `codes`, then a close.
async fn expect_v5_disconnect(c: &mut RawClient, codes: &[u8]) -> Pkt {
    let got = c.expect_closed().await;
    assert_eq!(
        got.len(),
        1,
        "expected one DISCONNECT then a close, got {got:?}"
    );
    let d = got[0].clone();
    assert_eq!(d.first, 0xe0, "expected DISCONNECT, got {d:?}");
    assert!(
        !d.body.is_empty(),
        "a v5 DISCONNECT for an error carries a reason: {d:?}"
    );
    assert!(
        codes.contains(&d.reason()),
        "DISCONNECT reason {:#04x} not in {codes:02x?}",
        d.reason()
    );
    d
}

async fn v311(b: &Broker) -> RawClient {
    RawClient::v311(b.port(), "bad").await
}

async fn v5(b: &Broker) -> RawClient {
    RawClient::v5(b.port(), "bad5").await
}

// ------------------------------------------------------------- fixed header

#[tokio::test]
async fn reserved_packet_type_0_closes_311() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&[0x00, 0x00]).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn reserved_packet_type_0_gets_v5_disconnect() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    c.send(&[0x00, 0x00]).await;
    expect_v5_disconnect(&mut c, &[MALFORMED, PROTOCOL_ERROR]).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn packet_type_15_is_reserved_in_311() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&[0xf0, 0x00]).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn subscribe_with_wrong_fixed_header_flags_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    let mut sub = packet::subscribe(false, 1, &[], &[("a/b", 0)]);
    sub[0] = 0x80; // flags must be 0010
    c.send(&sub).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn remaining_length_of_five_bytes_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn publish_with_qos_3_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    let mut p = packet::publish(false, "a/b", 1, false, 1, &[], b"x");
    p[0] = 0x36;
    c.send(&p).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- CONNECT

#[tokio::test]
async fn first_packet_not_connect_closes() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    c.send(&packet::PINGREQ).await;
    expect_silent_close(&mut c).await;
    let mut c = RawClient::connect(b.port()).await;
    c.send(&packet::publish(false, "a/b", 0, false, 0, &[], b"x"))
        .await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn second_connect_closes_311() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&Connect::v311("bad").build()).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn second_connect_gets_v5_protocol_error() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    c.send(&Connect::v5("bad5").build()).await;
    expect_v5_disconnect(&mut c, &[PROTOCOL_ERROR]).await;
    assert_broker_works(b.port()).await;
}

/// A CONNECT whose protocol name is not "MQTT" (nor 3.1's "MQIsdp") is not MQTT: the
/// connection closes without a CONNACK [MQTT-3.1.2-1], unlike an unsupported level.
#[tokio::test]
async fn unknown_protocol_name_closes_without_connack() {
    let b = Broker::start();
    for (name, level) in [(b"MQTX", 4u8), (b"mqtt", 5), (b"MQTX", 5)] {
        let mut c = RawClient::connect(b.port()).await;
        let mut connect = Connect::v311("c").build();
        // 10 0d 00 04 'M' 'Q' 'T' 'T' level ...
        assert_eq!(&connect[4..8], b"MQTT");
        connect[4..8].copy_from_slice(name);
        connect[8] = level;
        c.send(&connect).await;
        expect_silent_close(&mut c).await;
    }
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn unknown_protocol_level_gets_connack_1() {
    let b = Broker::start();
    for level in [6u8, 2, 7] {
        let mut c = RawClient::connect(b.port()).await;
        let connect = Connect {
            level,
            ..Connect::v311("c")
        };
        c.send(&connect.build()).await;
        let got = c.expect_closed().await;
        let want = Pkt {
            first: 0x20,
            body: vec![0x00, 0x01],
        };
        assert_eq!(
            got,
            vec![want],
            "level {level}: 3.1.1-format CONNACK 20 02 00 01"
        );
    }
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn reserved_connect_flag_is_refused() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    let connect = Connect::v311("c");
    c.send(&connect.build_with_flags(connect.flags() | 0x01))
        .await;
    expect_connect_refused(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn will_qos_without_will_flag_is_refused() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    let connect = Connect::v311("c");
    c.send(&connect.build_with_flags(0x02 | 0x08)).await;
    expect_connect_refused(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn will_retain_without_will_flag_is_refused() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    let connect = Connect::v311("c");
    c.send(&connect.build_with_flags(0x02 | 0x20)).await;
    expect_connect_refused(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn password_without_username_is_refused_in_311() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    let connect = Connect {
        password: Some(b"secret".to_vec()),
        ..Connect::v311("c")
    };
    assert_eq!(connect.flags(), 0x42);
    c.send(&connect.build()).await;
    expect_connect_refused(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn invalid_utf8_client_id_is_refused() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    let connect = Connect {
        client_id: vec![b'c', 0xc3, 0x28],
        ..Connect::v311("")
    };
    c.send(&connect.build()).await;
    expect_connect_refused(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn v5_duplicate_property_in_connect_is_refused() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    let connect = Connect::v5("dup")
        .prop(Prop::U32(packet::SESSION_EXPIRY, 10))
        .prop(Prop::U32(packet::SESSION_EXPIRY, 20));
    c.send(&connect.build()).await;
    let got = c.expect_closed().await;
    assert!(got.len() <= 1, "{got:?}");
    if let Some(p) = got.first() {
        assert_eq!(p.kind(), packet::CONNACK, "{got:?}");
        let code = p.connack().1;
        assert!(
            [MALFORMED, PROTOCOL_ERROR].contains(&code),
            "CONNACK reason {code:#04x}, expected 0x81 or 0x82"
        );
    }
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn will_topic_with_wildcard_is_refused() {
    let b = Broker::start();
    let mut c = RawClient::connect(b.port()).await;
    c.send(&Connect::v311("c").will(Will::new("a/#", b"x")).build())
        .await;
    expect_connect_refused(&mut c).await;
    assert_broker_works(b.port()).await;
}

/// A will's Response Topic is a topic name: no wildcards [MQTT-3.3.2-14].
#[tokio::test]
async fn will_response_topic_with_wildcard_is_refused() {
    let b = Broker::start();
    for topic in ["reply/#", "reply/+/x"] {
        let mut c = RawClient::connect(b.port()).await;
        let mut will = Will::new("w/t", b"x");
        will.props = vec![Prop::Str(packet::RESPONSE_TOPIC, topic.into())];
        c.send(&Connect::v5("c").will(will).build()).await;
        expect_connect_refused(&mut c).await;
    }
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- PUBLISH

/// A Response Topic with a wildcard [MQTT-3.3.2-14] is a protocol error: DISCONNECT
/// 0x82 (as mosquitto answers), and the message is neither acknowledged nor forwarded.
#[tokio::test]
async fn response_topic_with_wildcard_gets_v5_disconnect_0x82() {
    let b = Broker::start();
    let mut sub = RawClient::v5(b.port(), "rt-sub").await;
    assert_eq!(sub.subscribe(1, "rt/req", 1).await, vec![1]);
    for (i, topic) in ["reply/+", "reply/#", ""].into_iter().enumerate() {
        let mut c = RawClient::v5(b.port(), &format!("rt-pub{i}")).await;
        let props = [Prop::Str(packet::RESPONSE_TOPIC, topic.into())];
        c.send(&packet::publish(true, "rt/req", 1, false, 1, &props, b"x"))
            .await;
        expect_v5_disconnect(&mut c, &[PROTOCOL_ERROR]).await;
    }
    // A valid one after them is the first (and only) message the subscriber gets.
    let mut c = RawClient::v5(b.port(), "rt-pub-ok").await;
    let props = [Prop::Str(packet::RESPONSE_TOPIC, "reply/ok".into())];
    c.send(&packet::publish(true, "rt/req", 1, false, 1, &props, b"ok"))
        .await;
    c.expect(packet::PUBACK, "PUBACK").await;
    let p = sub.expect_publish().await;
    assert_eq!(p.payload, b"ok", "a refused message was forwarded");
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn invalid_utf8_topic_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet::publish(
        false,
        [b'a', 0xff, 0xfe],
        0,
        false,
        0,
        &[],
        b"x",
    ))
    .await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn nul_character_in_topic_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet::publish(false, "a/\0/b", 0, false, 0, &[], b"x"))
        .await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn plus_wildcard_in_publish_topic_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet::publish(false, "a/+/b", 1, false, 1, &[], b"x"))
        .await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn hash_wildcard_in_publish_topic_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet::publish(false, "a/#", 0, false, 0, &[], b"x"))
        .await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn wildcard_in_publish_topic_gets_v5_disconnect() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    c.send(&packet::publish(true, "a/#", 1, false, 1, &[], b"x"))
        .await;
    expect_v5_disconnect(&mut c, &[MALFORMED, PROTOCOL_ERROR, 0x90]).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn empty_publish_topic_closes_311() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet::publish(false, "", 1, false, 1, &[], b"x"))
        .await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn empty_publish_topic_without_alias_gets_v5_disconnect() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    c.send(&packet::publish(true, "", 1, false, 1, &[], b"x"))
        .await;
    expect_v5_disconnect(&mut c, &[MALFORMED, PROTOCOL_ERROR, 0x90]).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn qos1_publish_with_packet_id_0_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet::publish(false, "a/b", 1, false, 0, &[], b"x"))
        .await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- SUBSCRIBE

#[tokio::test]
async fn subscribe_with_no_filters_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet(0x82, &[0x00, 0x01])).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn invalid_filter_gets_suback_0x80_and_connection_stays_open_311() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&packet::subscribe(
        false,
        5,
        &[],
        &[("ok/t", 1), ("a/#/b", 1), ("a+/b", 0)],
    ))
    .await;
    let ack = c.expect(packet::SUBACK, "SUBACK").await;
    assert_eq!(ack.packet_id(), 5);
    assert_eq!(ack.suback_codes(false), vec![0x01, 0x80, 0x80]);
    c.ping().await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn invalid_filter_gets_suback_0x8f_and_connection_stays_open_v5() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    c.send(&packet::subscribe(
        true,
        6,
        &[],
        &[("ok/t", 1), ("a/#/b", 1)],
    ))
    .await;
    let ack = c.expect(packet::SUBACK, "SUBACK").await;
    assert_eq!(ack.packet_id(), 6);
    assert_eq!(ack.suback_codes(true), vec![0x01, 0x8f]);
    c.ping().await;
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- server-only packets

#[tokio::test]
async fn connack_from_client_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&[0x20, 0x02, 0x00, 0x00]).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn suback_from_client_closes() {
    let b = Broker::start();
    let mut c = v311(&b).await;
    c.send(&[0x90, 0x03, 0x00, 0x01, 0x00]).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn suback_from_v5_client_gets_disconnect() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    c.send(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x00]).await;
    expect_v5_disconnect(&mut c, &[MALFORMED, PROTOCOL_ERROR]).await;
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- v5 topic aliases

#[tokio::test]
async fn v5_topic_alias_0_gets_disconnect_0x94() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    let p = packet::publish(
        true,
        "ta/t",
        0,
        false,
        0,
        &[Prop::U16(packet::TOPIC_ALIAS, 0)],
        b"x",
    );
    c.send(&p).await;
    expect_v5_disconnect(&mut c, &[0x94]).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn v5_topic_alias_above_maximum_gets_disconnect_0x94() {
    let b = Broker::start_with_config("[limits]\ntopic_alias_maximum = 5\n");
    let (mut c, ack) = RawClient::handshake(b.port(), &Connect::v5("alias")).await;
    assert!(
        ack.connack_props()
            .contains(&Prop::U16(packet::TOPIC_ALIAS_MAXIMUM, 5)),
        "CONNACK announces Topic Alias Maximum 5: {:?}",
        ack.connack_props()
    );
    // Alias 5 is fine...
    let ok = packet::publish(
        true,
        "ta/t",
        1,
        false,
        1,
        &[Prop::U16(packet::TOPIC_ALIAS, 5)],
        b"x",
    );
    c.send(&ok).await;
    let ack = c.expect(packet::PUBACK, "PUBACK").await;
    assert!(ack.reason() < 0x80, "{ack:?}");
    // ...6 is not.
    let bad = packet::publish(
        true,
        "ta/t",
        1,
        false,
        2,
        &[Prop::U16(packet::TOPIC_ALIAS, 6)],
        b"x",
    );
    c.send(&bad).await;
    expect_v5_disconnect(&mut c, &[0x94]).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn v5_unknown_topic_alias_gets_protocol_error() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    let p = packet::publish(
        true,
        "",
        0,
        false,
        0,
        &[Prop::U16(packet::TOPIC_ALIAS, 3)],
        b"x",
    );
    c.send(&p).await;
    expect_v5_disconnect(&mut c, &[PROTOCOL_ERROR]).await;
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- packet size

/// A PUBLISH declaring ~256 MiB is refused from its fixed header alone, without the
/// broker waiting for (or buffering) the body.
#[tokio::test]
async fn oversized_packet_is_refused_from_its_header_v5() {
    let b = Broker::start_with_config("[limits]\nmax_packet_size = 1048576\n");
    let mut c = v5(&b).await;
    c.send(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
    let got = c.expect_closed().await;
    for p in &got {
        assert_eq!(
            (p.first, p.reason()),
            (0xe0, 0x95),
            "only DISCONNECT 0x95 may precede the close: {got:?}"
        );
    }
    assert!(got.len() <= 1, "{got:?}");
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header_311() {
    let b = Broker::start_with_config("[limits]\nmax_packet_size = 1048576\n");
    let mut c = v311(&b).await;
    c.send(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}

#[tokio::test]
async fn oversized_connect_is_refused_from_its_header() {
    let b = Broker::start_with_config("[limits]\nmax_packet_size = 1048576\n");
    let mut c = RawClient::connect(b.port()).await;
    c.send(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await;
    expect_connect_refused(&mut c).await;
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- properties

/// A property not allowed in its packet type makes the packet malformed: DISCONNECT
/// 0x81 (MQTT 5 §2.2.2.2), not 0x82.
#[tokio::test]
async fn property_not_allowed_in_the_packet_gets_v5_disconnect_0x81() {
    let b = Broker::start();
    let mut c = v5(&b).await;
    // SUBSCRIBE 1 with a Topic Alias property (PUBLISH only).
    c.send(&packet::subscribe(
        true,
        1,
        &[Prop::U16(packet::TOPIC_ALIAS, 1)],
        &[("a", 0)],
    ))
    .await;
    expect_v5_disconnect(&mut c, &[MALFORMED]).await;
    assert_broker_works(b.port()).await;
}

// ------------------------------------------------------------- acknowledgements

/// Subscribes `sub` to `topic` at `qos`, publishes one message at `qos` from another
/// client, and returns the packet id `sub` received it with.
async fn one_delivery(b: &Broker, sub: &mut RawClient, topic: &str, qos: u8) -> u16 {
    assert_eq!(sub.subscribe(1, topic, qos).await, vec![qos]);
    let mut publ = RawClient::v311(b.port(), &format!("{topic}-pub")).await;
    publ.send(&packet::publish(false, topic, qos, false, 1, &[], b"x"))
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(p.qos, qos);
    p.packet_id
}

/// PUBACK answers a QoS 1 delivery only: acknowledging a QoS 2 delivery with it is a
/// protocol error that closes the connection (MQTT 5 §4.3.3).
#[tokio::test]
async fn puback_for_a_qos2_delivery_gets_v5_disconnect_0x82() {
    let b = Broker::start();
    let mut c = RawClient::v5(b.port(), "ack2").await;
    let id = one_delivery(&b, &mut c, "ack/q2", 2).await;
    c.send(&packet::puback(id)).await;
    expect_v5_disconnect(&mut c, &[PROTOCOL_ERROR]).await;
    assert_broker_works(b.port()).await;
}

/// PUBREC answers a QoS 2 delivery only: for a QoS 1 delivery it is a protocol error
/// (MQTT 5 §4.3.2).
#[tokio::test]
async fn pubrec_for_a_qos1_delivery_gets_v5_disconnect_0x82() {
    let b = Broker::start();
    let mut c = RawClient::v5(b.port(), "ack1").await;
    let id = one_delivery(&b, &mut c, "ack/q1", 1).await;
    c.send(&packet::ack(0x50, id)).await;
    expect_v5_disconnect(&mut c, &[PROTOCOL_ERROR]).await;
    assert_broker_works(b.port()).await;
}

/// The same for 3.1.1, which has no DISCONNECT from the server: the connection closes.
#[tokio::test]
async fn wrong_ack_kind_closes_311() {
    let b = Broker::start();
    let mut c = RawClient::v311(b.port(), "ack311").await;
    let id = one_delivery(&b, &mut c, "ack/q311", 1).await;
    c.send(&packet::ack(0x50, id)).await;
    expect_silent_close(&mut c).await;
    assert_broker_works(b.port()).await;
}
