//! One case per decoding rule: each asserts the spec clause the error cites and the
//! MQTT 5 reason code the broker will answer with.

use super::*;

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A v5 property block: length then the properties.
fn props(p: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::Sink::varint(&mut out, p.len());
    out.extend_from_slice(p);
    out.to_vec()
}

/// A CONNECT: protocol name/level, flags, keep alive 60, properties at level 5, then
/// the payload as given.
fn conn(name: &str, level: u8, flags: u8, prop: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = cat(&[&s(name), &[level, flags, 0, 60]]);
    if level == 5 {
        b.extend(props(prop));
    }
    b.extend_from_slice(payload);
    frame(0x10, &b)
}

fn conn5(prop: &[u8]) -> Vec<u8> {
    conn("MQTT", 5, 0x02, prop, &s("c"))
}

/// A v5 client PUBLISH at QoS 1 (packet id 1) with the given properties and payload.
fn pub5(topic: &str, prop: &[u8], payload: &[u8]) -> Vec<u8> {
    frame(0x32, &cat(&[&s(topic), &[0, 1], &props(prop), payload]))
}

struct Case {
    what: &'static str,
    version: Option<ProtocolVersion>,
    bytes: Vec<u8>,
    clause: &'static str,
    reason: u8,
}

fn case(
    what: &'static str,
    version: Option<ProtocolVersion>,
    bytes: Vec<u8>,
    clause: &'static str,
    reason: u8,
) -> Case {
    Case {
        what,
        version,
        bytes,
        clause,
        reason,
    }
}

fn check(cases: Vec<Case>) {
    for c in cases {
        let e = match dec(&c.bytes, c.version) {
            Ok(p) => panic!("{}: accepted {p:?}", c.what),
            Err(e) => e,
        };
        let msg = e.to_string();
        assert!(msg.starts_with(c.clause), "{}: {msg}", c.what);
        assert_eq!(e.reason_code(), c.reason, "{}: {msg}", c.what);
    }
}

const MALFORMED: u8 = reason::MALFORMED_PACKET;
const PROTOCOL: u8 = reason::PROTOCOL_ERROR;

#[test]
fn fixed_header_and_packet_order_validations() {
    let v = Some(V311);
    check(vec![
        case("packet type 0", v, hex("00 00"), "[MQTT-2.1.2]", MALFORMED),
        case("AUTH in 3.1.1", v, hex("f0 00"), "[MQTT-2.1.2]", MALFORMED),
        case(
            "AUTH in 3.1",
            Some(V31),
            hex("f0 00"),
            "[MQTT-2.1.2]",
            MALFORMED,
        ),
        case(
            "PUBREL flags 0",
            v,
            hex("60 02 00 01"),
            "[MQTT-2.1.3-1]",
            MALFORMED,
        ),
        case(
            "SUBSCRIBE flags 0",
            v,
            hex("80 06 00 01 00 01 61 00"),
            "[MQTT-2.1.3-1]",
            MALFORMED,
        ),
        case(
            "UNSUBSCRIBE flags 3",
            v,
            hex("a3 05 00 01 00 01 61"),
            "[MQTT-2.1.3-1]",
            MALFORMED,
        ),
        case(
            "PUBACK flags 1",
            v,
            hex("41 02 00 01"),
            "[MQTT-2.1.3-1]",
            MALFORMED,
        ),
        case(
            "PINGREQ flags 8",
            v,
            hex("c8 00"),
            "[MQTT-2.1.3-1]",
            MALFORMED,
        ),
        case(
            "DISCONNECT flags 2",
            Some(V5),
            hex("e2 00"),
            "[MQTT-2.1.3-1]",
            MALFORMED,
        ),
        case(
            "PUBLISH QoS 3",
            v,
            hex("36 05 00 01 74 00 01"),
            "[MQTT-3.3.1-4]",
            MALFORMED,
        ),
        case(
            "DUP on QoS 0",
            v,
            hex("38 03 00 01 74"),
            "[MQTT-3.3.1-2]",
            MALFORMED,
        ),
        case(
            "PINGREQ before CONNECT",
            None,
            hex("c0 00"),
            "[MQTT-3.1.0-1]",
            PROTOCOL,
        ),
        case(
            "PUBLISH before CONNECT",
            None,
            hex("30 03 00 01 74"),
            "[MQTT-3.1.0-1]",
            PROTOCOL,
        ),
        case(
            "second CONNECT",
            v,
            hex(MOSQ_V31),
            "[MQTT-3.1.0-2]",
            PROTOCOL,
        ),
        case(
            "CONNACK from a client",
            v,
            hex("20 02 00 00"),
            "[MQTT-2.1.2]",
            PROTOCOL,
        ),
        case(
            "SUBACK from a client",
            v,
            hex("90 03 00 01 00"),
            "[MQTT-2.1.2]",
            PROTOCOL,
        ),
        case(
            "UNSUBACK from a client",
            v,
            hex("b0 02 00 01"),
            "[MQTT-2.1.2]",
            PROTOCOL,
        ),
        case(
            "PINGRESP from a client",
            v,
            hex("d0 00"),
            "[MQTT-2.1.2]",
            PROTOCOL,
        ),
        case(
            "PINGREQ with a body",
            v,
            hex("c0 01 00"),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "3.1.1 DISCONNECT with a body",
            v,
            hex("e0 01 00"),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "3.1.1 PUBACK with a reason",
            v,
            hex("40 03 00 01 00"),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "PUBACK cut short",
            v,
            hex("40 01 00"),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
    ]);
    // decode_any accepts server packets, with the same order rules.
    assert_eq!(
        dec_any(&hex("d0 00"), v).expect("PINGRESP"),
        Packet::PingResp
    );
    assert!(dec_any(&hex("d0 00"), None).is_err());
    let e = dec_any(&hex("d0 01 00"), v).expect_err("PINGRESP with a body");
    assert_eq!(e.reason_code(), MALFORMED);
}

#[test]
fn connect_validations() {
    let id = s("c");
    let unsupported = reason::UNSUPPORTED_PROTOCOL_VERSION;
    check(vec![
        case(
            "MQTT level 6",
            None,
            conn("MQTT", 6, 2, &[], &id),
            "[MQTT-3.1.2-2]",
            unsupported,
        ),
        case(
            "MQTT level 3",
            None,
            conn("MQTT", 3, 2, &[], &id),
            "[MQTT-3.1.2-2]",
            unsupported,
        ),
        case(
            "MQIsdp level 4",
            None,
            conn("MQIsdp", 4, 2, &[], &id),
            "[MQTT-3.1.2-2]",
            unsupported,
        ),
        case(
            "unknown name: not MQTT, closed without a CONNACK",
            None,
            conn("HTTP", 4, 2, &[], &id),
            "[MQTT-3.1.2-1]",
            PROTOCOL,
        ),
        case(
            "MQTT in lower case",
            None,
            conn("mqtt", 5, 2, &[], &id),
            "[MQTT-3.1.2-1]",
            PROTOCOL,
        ),
        case(
            "reserved flag",
            None,
            conn("MQTT", 4, 0x03, &[], &id),
            "[MQTT-3.1.2-3]",
            MALFORMED,
        ),
        case(
            "will QoS without will",
            None,
            conn("MQTT", 4, 0x0a, &[], &id),
            "[MQTT-3.1.2-11]",
            MALFORMED,
        ),
        case(
            "will retain without will",
            None,
            conn("MQTT", 4, 0x22, &[], &id),
            "[MQTT-3.1.2-11]",
            MALFORMED,
        ),
        case(
            "will QoS 3",
            None,
            conn("MQTT", 4, 0x1e, &[], &cat(&[&id, &s("w"), &s("x")])),
            "[MQTT-3.1.2-14]",
            MALFORMED,
        ),
        case(
            "3.1.1 password without user name",
            None,
            conn("MQTT", 4, 0x42, &[], &cat(&[&id, &s("p")])),
            "[MQTT-3.1.2-22]",
            MALFORMED,
        ),
        case(
            "3.1 password without user name",
            None,
            conn("MQIsdp", 3, 0x42, &[], &cat(&[&id, &s("p")])),
            "[MQTT-3.1.2-22]",
            MALFORMED,
        ),
        case(
            "empty 3.1 client id",
            None,
            conn("MQIsdp", 3, 0x02, &[], &s("")),
            "[MQTT-3.1.3-5]",
            reason::CLIENT_IDENTIFIER_NOT_VALID,
        ),
        case(
            "client id not UTF-8",
            None,
            conn("MQTT", 4, 2, &[], &hex("00 02 c3 28")),
            "[MQTT-1.5.3-1]",
            MALFORMED,
        ),
        case(
            "client id with U+0000",
            None,
            conn("MQTT", 4, 2, &[], &hex("00 02 61 00")),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "user name with U+0000",
            None,
            conn("MQTT", 4, 0x82, &[], &cat(&[&id, &hex("00 01 00")])),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "user name missing",
            None,
            conn("MQTT", 4, 0x82, &[], &id),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "trailing bytes",
            None,
            conn("MQTT", 4, 0x02, &[], &cat(&[&id, &[0]])),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "will topic with wildcard",
            None,
            conn("MQTT", 4, 0x06, &[], &cat(&[&id, &s("w/#"), &s("x")])),
            "[MQTT-3.1.3-11]",
            reason::TOPIC_NAME_INVALID,
        ),
        case(
            "empty will topic",
            None,
            conn("MQTT", 4, 0x06, &[], &cat(&[&id, &s(""), &s("x")])),
            "[MQTT-3.1.3-11]",
            reason::TOPIC_NAME_INVALID,
        ),
        case(
            "will topic not UTF-8",
            None,
            conn(
                "MQTT",
                4,
                0x06,
                &[],
                &cat(&[&id, &hex("00 01 ff"), &s("x")]),
            ),
            "[MQTT-1.5.3-1]",
            MALFORMED,
        ),
        case(
            "v5 will payload not UTF-8 with format 1",
            None,
            conn(
                "MQTT",
                5,
                0x06,
                &[],
                &cat(&[&id, &props(&[0x01, 1]), &s("w"), &hex("00 01 ff")]),
            ),
            "[MQTT-3.3.2-4]",
            reason::PAYLOAD_FORMAT_INVALID,
        ),
        case(
            "will delay in CONNECT properties",
            None,
            conn5(&hex("18 00 00 00 01")),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "session expiry in will properties",
            None,
            conn(
                "MQTT",
                5,
                0x06,
                &[],
                &cat(&[&id, &props(&hex("11 00 00 00 01")), &s("w"), &s("x")]),
            ),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
    ]);
}

#[test]
fn unsupported_protocol_name_is_bounded_in_the_error() {
    let long = "M".repeat(1000);
    let e = dec(&conn(&long, 4, 2, &[], &s("c")), None).expect_err("unsupported");
    assert!(matches!(e, ProtocolError::InvalidProtocolName(_)), "{e}");
    assert!(e.to_string().len() < 100, "{e}");
}

#[test]
fn property_validations() {
    let v5 = Some(V5);
    check(vec![
        case(
            "authentication data without method",
            None,
            conn5(&cat(&[&[0x16], &s("d")])),
            "[MQTT-3.1.2.11.10]",
            PROTOCOL,
        ),
        case(
            "receive maximum 0",
            None,
            conn5(&hex("21 00 00")),
            "[MQTT-2.2.2]",
            PROTOCOL,
        ),
        case(
            "maximum packet size 0",
            None,
            conn5(&hex("27 00 00 00 00")),
            "[MQTT-2.2.2]",
            PROTOCOL,
        ),
        case(
            "request problem information 2",
            None,
            conn5(&hex("17 02")),
            "[MQTT-2.2.2]",
            PROTOCOL,
        ),
        case(
            "request response information 2",
            None,
            conn5(&hex("19 02")),
            "[MQTT-2.2.2]",
            PROTOCOL,
        ),
        case(
            "session expiry twice",
            None,
            conn5(&hex("11 00 00 00 01 11 00 00 00 02")),
            "[MQTT-2.2.2-2]",
            PROTOCOL,
        ),
        case(
            "authentication method twice",
            None,
            conn5(&cat(&[&[0x15], &s("a"), &[0x15], &s("a")])),
            "[MQTT-2.2.2-2]",
            PROTOCOL,
        ),
        case(
            "topic alias in CONNECT",
            None,
            conn5(&hex("23 00 01")),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "unknown property",
            None,
            conn5(&hex("50 00")),
            "[MQTT-2.2.2]",
            MALFORMED,
        ),
        case(
            "property value cut short",
            None,
            conn5(&hex("11 00 00")),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "user property value with U+0000",
            None,
            conn5(&cat(&[&[0x26], &s("k"), &hex("00 01 00")])),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "user property name not UTF-8",
            None,
            conn5(&cat(&[&[0x26], &hex("00 01 80"), &s("v")])),
            "[MQTT-1.5.3-1]",
            MALFORMED,
        ),
        case(
            "authentication method with U+0000",
            None,
            conn5(&cat(&[&[0x15], &hex("00 01 00")])),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "property length overruns the packet",
            None,
            frame(0x10, &cat(&[&s("MQTT"), &[5, 2, 0, 60, 0x10, 0x11]])),
            "[MQTT-2.2.2]",
            MALFORMED,
        ),
        case(
            "property length not minimal",
            None,
            frame(
                0x10,
                &cat(&[&s("MQTT"), &[5, 2, 0, 60, 0x80, 0x00], &s("c")]),
            ),
            "[MQTT-1.5.5-1]",
            MALFORMED,
        ),
        case(
            "payload format indicator 2",
            v5,
            pub5("t", &hex("01 02"), b"x"),
            "[MQTT-2.2.2]",
            PROTOCOL,
        ),
        case(
            "message expiry twice",
            v5,
            pub5("t", &hex("02 00 00 00 01 02 00 00 00 01"), b"x"),
            "[MQTT-2.2.2-2]",
            PROTOCOL,
        ),
        case(
            "topic alias twice",
            v5,
            pub5("t", &hex("23 00 01 23 00 02"), b"x"),
            "[MQTT-2.2.2-2]",
            PROTOCOL,
        ),
        case(
            "content type not UTF-8",
            v5,
            pub5("t", &cat(&[&[0x03], &hex("00 01 fe")]), b"x"),
            "[MQTT-1.5.3-1]",
            MALFORMED,
        ),
        case(
            "response topic with U+0000",
            v5,
            pub5("t", &cat(&[&[0x08], &hex("00 01 00")]), b"x"),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "response topic with +",
            v5,
            pub5("t", &cat(&[&[0x08], &s("reply/+/x")]), b"x"),
            "[MQTT-3.3.2-14]",
            PROTOCOL,
        ),
        case(
            "response topic with #",
            v5,
            pub5("t", &cat(&[&[0x08], &s("reply/#")]), b"x"),
            "[MQTT-3.3.2-14]",
            PROTOCOL,
        ),
        case(
            "empty response topic",
            v5,
            pub5("t", &cat(&[&[0x08], &s("")]), b"x"),
            "[MQTT-3.3.2-14]",
            PROTOCOL,
        ),
        case(
            "will response topic with #",
            None,
            conn(
                "MQTT",
                5,
                0x06,
                &[],
                &cat(&[
                    &s("c"),
                    &props(&cat(&[&[0x08], &s("r/#")])),
                    &s("w"),
                    &s("x"),
                ]),
            ),
            "[MQTT-3.3.2-14]",
            PROTOCOL,
        ),
        case(
            "session expiry in PUBLISH",
            v5,
            pub5("t", &hex("11 00 00 00 01"), b"x"),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "reason string in PUBLISH",
            v5,
            pub5("t", &cat(&[&[0x1f], &s("r")]), b"x"),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "topic alias in PUBACK",
            v5,
            frame(0x40, &cat(&[&[0, 1, 0], &props(&hex("23 00 01"))])),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "topic alias in PUBACK, its value missing: read as a value first",
            v5,
            frame(0x40, &cat(&[&[0, 1, 0], &props(&hex("23 00"))])),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "correlation data in SUBSCRIBE, cut inside its value",
            v5,
            frame(
                0x82,
                &cat(&[&[0, 1], &props(&hex("09 00 05 61")), &s("a"), &[0]]),
            ),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "reason string twice in PUBACK",
            v5,
            frame(
                0x40,
                &cat(&[
                    &[0, 1, 0],
                    &props(&cat(&[&[0x1f], &s("a"), &[0x1f], &s("b")])),
                ]),
            ),
            "[MQTT-2.2.2-2]",
            PROTOCOL,
        ),
        case(
            "PUBACK property length overrun",
            v5,
            hex("40 05 00 01 00 05 1f"),
            "[MQTT-2.2.2]",
            MALFORMED,
        ),
        case(
            "reason string in UNSUBSCRIBE",
            v5,
            frame(
                0xa2,
                &cat(&[&[0, 1], &props(&cat(&[&[0x1f], &s("r")])), &s("a")]),
            ),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "topic alias in DISCONNECT",
            v5,
            frame(0xe0, &cat(&[&[0], &props(&hex("23 00 01"))])),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "session expiry twice in DISCONNECT",
            v5,
            frame(
                0xe0,
                &cat(&[&[0], &props(&hex("11 00 00 00 01 11 00 00 00 01"))]),
            ),
            "[MQTT-2.2.2-2]",
            PROTOCOL,
        ),
        case(
            "session expiry in AUTH",
            v5,
            frame(0xf0, &cat(&[&[0x18], &props(&hex("11 00 00 00 01"))])),
            "[MQTT-2.2.2.2]",
            MALFORMED,
        ),
        case(
            "PUBACK reason 0x05",
            v5,
            hex("40 03 00 01 05"),
            "[MQTT-2.4]",
            PROTOCOL,
        ),
        case(
            "PUBREL reason 0x10",
            v5,
            hex("62 03 00 01 10"),
            "[MQTT-2.4]",
            PROTOCOL,
        ),
        case(
            "AUTH reason 0x01",
            v5,
            hex("f0 01 01"),
            "[MQTT-2.4]",
            PROTOCOL,
        ),
    ]);
}

#[test]
fn publish_validations() {
    let v = Some(V311);
    let v5 = Some(V5);
    check(vec![
        case(
            "topic with +",
            v,
            frame(0x30, &cat(&[&s("a/+"), b"x"])),
            "[MQTT-3.3.2-2]",
            reason::TOPIC_NAME_INVALID,
        ),
        case(
            "topic with #",
            v5,
            pub5("a/#", &[], b"x"),
            "[MQTT-3.3.2-2]",
            reason::TOPIC_NAME_INVALID,
        ),
        case(
            "empty topic in 3.1.1",
            v,
            frame(0x30, &cat(&[&s(""), b"x"])),
            "[MQTT-4.7.3-1]",
            PROTOCOL,
        ),
        case(
            "empty topic without alias in v5",
            v5,
            pub5("", &[], b"x"),
            "[MQTT-4.7.3-1]",
            PROTOCOL,
        ),
        case(
            "topic not UTF-8",
            v,
            frame(0x30, &cat(&[&hex("00 02 ed a0"), b"x"])),
            "[MQTT-1.5.3-1]",
            MALFORMED,
        ),
        case(
            "topic is a UTF-16 surrogate",
            v,
            frame(0x30, &cat(&[&hex("00 03 ed a0 80"), b"x"])),
            "[MQTT-1.5.3-1]",
            MALFORMED,
        ),
        case(
            "topic with U+0000",
            v,
            frame(0x30, &cat(&[&hex("00 02 61 00"), b"x"])),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "QoS 1 packet id 0",
            v,
            frame(0x32, &cat(&[&s("t"), &[0, 0], b"x"])),
            "[MQTT-2.2.1-3]",
            PROTOCOL,
        ),
        case(
            "QoS 2 packet id 0",
            v5,
            frame(0x34, &cat(&[&s("t"), &[0, 0], &[0], b"x"])),
            "[MQTT-2.2.1-3]",
            PROTOCOL,
        ),
        case(
            "QoS 1 packet id cut short",
            v,
            frame(0x32, &cat(&[&s("t"), &[0]])),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "topic alias 0",
            v5,
            pub5("t", &hex("23 00 00"), b"x"),
            "[MQTT-3.3.2-8]",
            reason::TOPIC_ALIAS_INVALID,
        ),
        case(
            "subscription identifier from client",
            v5,
            pub5("t", &hex("0b 01"), b"x"),
            "[MQTT-3.3.4-6]",
            PROTOCOL,
        ),
        case(
            "payload not UTF-8 with format 1",
            v5,
            pub5("t", &hex("01 01"), &hex("ff fe")),
            "[MQTT-3.3.2-4]",
            reason::PAYLOAD_FORMAT_INVALID,
        ),
        case(
            "3.1.1 PUBLISH has no properties: topic then id",
            v,
            frame(0x32, &cat(&[&s("t#"), &[0, 1]])),
            "[MQTT-3.3.2-2]",
            reason::TOPIC_NAME_INVALID,
        ),
    ]);

    // Accepted: empty topic with an alias (the caller resolves it), format 0 with any
    // payload, format 1 with UTF-8, and subscription identifiers from a server.
    let Packet::Publish(p) = dec(&pub5("", &hex("23 00 07"), b"x"), v5).expect("alias") else {
        panic!()
    };
    assert_eq!((p.topic.as_str(), p.topic_alias), ("", Some(7)));
    assert!(dec(&pub5("t", &hex("01 00"), &hex("ff")), v5).is_ok());
    assert!(dec(&pub5("t", &hex("01 01"), "ü".as_bytes()), v5).is_ok());
    let Packet::Publish(p) = dec_any(&pub5("t", &hex("0b 01 0b 80 01"), b"x"), v5).expect("ids")
    else {
        panic!()
    };
    assert_eq!(p.subscription_identifiers, vec![1, 128]);
}

#[test]
fn subscribe_and_unsubscribe_validations() {
    let v = Some(V311);
    let v5 = Some(V5);
    let sub = |opts: u8| frame(0x82, &cat(&[&[0, 1], &s("a"), &[opts]]));
    let sub5 =
        |prop: &[u8], opts: u8| frame(0x82, &cat(&[&[0, 1], &props(prop), &s("a"), &[opts]]));
    check(vec![
        case(
            "SUBSCRIBE without filters",
            v,
            hex("82 02 00 01"),
            "[MQTT-3.8.3-3]",
            PROTOCOL,
        ),
        case(
            "v5 SUBSCRIBE without filters",
            v5,
            hex("82 03 00 01 00"),
            "[MQTT-3.8.3-3]",
            PROTOCOL,
        ),
        case(
            "SUBSCRIBE packet id 0",
            v,
            frame(0x82, &cat(&[&[0, 0], &s("a"), &[0]])),
            "[MQTT-2.2.1-3]",
            PROTOCOL,
        ),
        case("SUBSCRIBE QoS 3", v, sub(3), "[MQTT-3.8.3-4]", MALFORMED),
        case(
            "v5 SUBSCRIBE QoS 3",
            v5,
            sub5(&[], 3),
            "[MQTT-3.8.3-4]",
            MALFORMED,
        ),
        case(
            "3.1.1 SUBSCRIBE no-local bit",
            v,
            sub(0x04),
            "[MQTT-3.8.3-5]",
            MALFORMED,
        ),
        case(
            "3.1.1 SUBSCRIBE bit 7",
            v,
            sub(0x80),
            "[MQTT-3.8.3-5]",
            MALFORMED,
        ),
        case(
            "v5 SUBSCRIBE bit 6",
            v5,
            sub5(&[], 0x40),
            "[MQTT-3.8.3-5]",
            MALFORMED,
        ),
        case(
            "v5 retain handling 3",
            v5,
            sub5(&[], 0x30),
            "[MQTT-3.8.3.1]",
            PROTOCOL,
        ),
        case(
            "v5 subscription identifier 0",
            v5,
            sub5(&hex("0b 00"), 0),
            "[MQTT-2.2.2]",
            PROTOCOL,
        ),
        case(
            "v5 subscription identifier twice",
            v5,
            sub5(&hex("0b 01 0b 02"), 0),
            "[MQTT-2.2.2-2]",
            PROTOCOL,
        ),
        case(
            "filter options missing",
            v,
            frame(0x82, &cat(&[&[0, 1], &s("a")])),
            "[MQTT-2.1.4]",
            MALFORMED,
        ),
        case(
            "filter with U+0000",
            v,
            frame(0x82, &cat(&[&[0, 1], &hex("00 01 00"), &[0]])),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "filter not UTF-8",
            v,
            frame(0x82, &cat(&[&[0, 1], &hex("00 01 c0"), &[0]])),
            "[MQTT-1.5.3-1]",
            MALFORMED,
        ),
        case(
            "UNSUBSCRIBE without filters",
            v,
            hex("a2 02 00 01"),
            "[MQTT-3.10.3-2]",
            PROTOCOL,
        ),
        case(
            "v5 UNSUBSCRIBE without filters",
            v5,
            hex("a2 03 00 01 00"),
            "[MQTT-3.10.3-2]",
            PROTOCOL,
        ),
        case(
            "UNSUBSCRIBE packet id 0",
            v,
            frame(0xa2, &cat(&[&[0, 0], &s("a")])),
            "[MQTT-2.2.1-3]",
            PROTOCOL,
        ),
        case(
            "UNSUBSCRIBE filter with U+0000",
            v,
            frame(0xa2, &cat(&[&[0, 1], &hex("00 01 00")])),
            "[MQTT-1.5.3-2]",
            MALFORMED,
        ),
        case(
            "PUBACK packet id 0",
            v,
            hex("40 02 00 00"),
            "[MQTT-2.2.1-3]",
            PROTOCOL,
        ),
    ]);

    // Filter syntax is the router's business: the codec passes it through.
    let Packet::Subscribe(s) = dec(&frame(0x82, &cat(&[&[0, 1], &s("a/#/b+"), &[1]])), v)
        .expect("filter syntax is not checked here")
    else {
        panic!()
    };
    assert_eq!(s.filters[0].filter, "a/#/b+");
}
