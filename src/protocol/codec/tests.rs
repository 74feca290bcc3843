//! Codec tests: round trips at every version, packets captured from real clients
//! (mosquitto 2.0.11), framing edge cases, one case per validation (checking the
//! clause cited and the reason code), and cross-checks against `mqttbytes`.
//! Run with `cargo test --lib protocol`.

use super::*;
use crate::protocol::packet::*;
use crate::protocol::reason;
use bytes::Bytes;

mod interop;
mod proptests;
mod validations;

const MAX: usize = 1 << 20;
const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out);
    out.to_vec()
}

/// Decodes exactly one whole packet from `bytes` as the broker would.
fn dec(bytes: &[u8], v: Option<ProtocolVersion>) -> Result<Packet, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let p = decode(&mut buf, v, MAX)?.expect("a whole packet");
    assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    Ok(p)
}

fn dec_any(bytes: &[u8], v: Option<ProtocolVersion>) -> Result<Packet, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let p = decode_any(&mut buf, v, MAX)?.expect("a whole packet");
    assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    Ok(p)
}

/// Fixed header + body: builds test packets without hand-counting lengths.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    wire::Sink::u8(&mut out, byte1);
    wire::Sink::varint(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

/// A length-prefixed string.
fn s(v: &str) -> Vec<u8> {
    let mut out = (v.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(v.as_bytes());
    out
}

fn users() -> Vec<UserProperty> {
    vec![("k".into(), "v".into()), ("k".into(), "v2".into())]
}

// ---- packet builders: full v5 properties when `v5`, none otherwise ------------------

fn msg_props(v5: bool) -> MessageProperties {
    if !v5 {
        return MessageProperties::default();
    }
    MessageProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
        user_properties: users(),
    }
}

fn connect(version: ProtocolVersion) -> Connect {
    let v5 = version.is_v5();
    Connect {
        version,
        client_id: "sensor-1".into(),
        clean_start: true,
        keep_alive: 60,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"p\x00ss")),
        will: Some(LastWill {
            topic: "will/t".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: v5.then_some(30),
            properties: msg_props(v5),
        }),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(120),
                receive_maximum: Some(20),
                maximum_packet_size: Some(65536),
                topic_alias_maximum: Some(10),
                request_response_information: Some(1),
                request_problem_information: Some(0),
                user_properties: users(),
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"\x01\x02")),
            }
        } else {
            ConnectProperties::default()
        },
    }
}

fn publish(v5: bool) -> Publish {
    Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "sensors/ü/temp".into(),
        packet_id: 513,
        payload: Bytes::from_static(b"21.5"),
        properties: msg_props(v5),
        topic_alias: v5.then_some(3),
        subscription_identifiers: Vec::new(),
    }
}

fn pub_response(v5: bool, reason: u8) -> PubResponse {
    if !v5 {
        return PubResponse::success(9);
    }
    PubResponse {
        packet_id: 9,
        reason,
        reason_string: Some("why".into()),
        user_properties: users(),
    }
}

/// Client→server packets, decoded with [`decode`].
fn client_packets(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let mut v = vec![
        Packet::Publish(publish(v5)),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 0,
            payload: Bytes::new(),
            properties: MessageProperties::default(),
            topic_alias: None,
            subscription_identifiers: Vec::new(),
        }),
        Packet::PubAck(pub_response(v5, 0x10)),
        Packet::PubRec(pub_response(v5, 0x80)),
        Packet::PubRel(pub_response(v5, 0x92)),
        Packet::PubComp(pub_response(v5, 0x00)),
        Packet::PubAck(PubResponse::success(1)),
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                SubscribeFilter {
                    filter: "a/+/c".into(),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                },
                SubscribeFilter {
                    filter: "#".into(),
                    options: SubscriptionOptions::default(),
                },
            ],
            subscription_identifier: v5.then_some(268_435_455),
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec!["a/+/c".into(), "#".into()],
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect::default()),
    ];
    if v5 {
        v.push(Packet::Disconnect(Disconnect {
            reason: reason::DISCONNECT_WITH_WILL,
            session_expiry_interval: Some(0),
            reason_string: Some("bye".into()),
            user_properties: users(),
            server_reference: None,
        }));
        v.push(Packet::Auth(Auth {
            reason: 0x18,
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"\x00\xff")),
            reason_string: Some("more".into()),
            user_properties: users(),
        }));
        v.push(Packet::Auth(Auth::default()));
    }
    v
}

/// Server→client packets, decoded with [`decode_any`].
fn server_packets(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let mut pubs = publish(v5);
    if v5 {
        pubs.subscription_identifiers = vec![1, 128, 268_435_455];
        pubs.topic = String::new(); // topic alias stands for it
    }
    let mut v = vec![
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: reason::SUCCESS,
            properties: if v5 {
                ConnAckProperties {
                    session_expiry_interval: Some(1),
                    receive_maximum: Some(2),
                    maximum_qos: Some(1),
                    retain_available: Some(0),
                    maximum_packet_size: Some(3),
                    assigned_client_identifier: Some("auto-1".into()),
                    topic_alias_maximum: Some(4),
                    reason_string: Some("ok".into()),
                    user_properties: users(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: Some(1),
                    server_keep_alive: Some(5),
                    response_information: Some("resp".into()),
                    server_reference: Some("other:1883".into()),
                    authentication_method: Some("SCRAM".into()),
                    authentication_data: Some(Bytes::from_static(b"d")),
                }
            } else {
                ConnAckProperties::default()
            },
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: reason::NOT_AUTHORIZED,
            properties: ConnAckProperties::default(),
        }),
        Packet::Publish(pubs),
        Packet::SubAck(SubAck {
            packet_id: 10,
            reasons: vec![0, 1, 2, 0x80],
            reason_string: v5.then(|| "partly".into()),
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            reasons: if v5 { vec![0x00, 0x11] } else { Vec::new() },
            reason_string: v5.then(|| "r".into()),
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::PingResp,
    ];
    if v5 {
        v.push(Packet::Disconnect(Disconnect {
            reason: reason::SERVER_MOVED,
            session_expiry_interval: None,
            reason_string: Some("moved".into()),
            user_properties: users(),
            server_reference: Some("other:1883".into()),
        }));
    }
    v
}

// ---- round trips -------------------------------------------------------------------

#[test]
fn client_packets_round_trip() {
    for version in [V311, V5] {
        for p in client_packets(version) {
            let bytes = enc(&p, version);
            let got = dec(&bytes, Some(version)).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            assert_eq!(got, p, "at {version:?}");
        }
    }
}

#[test]
fn server_packets_round_trip() {
    for version in [V311, V5] {
        for p in server_packets(version) {
            let bytes = enc(&p, version);
            let got = dec_any(&bytes, Some(version)).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            assert_eq!(got, p, "at {version:?}");
        }
    }
}

#[test]
fn connect_round_trips_at_every_version() {
    for version in [V31, V311, V5] {
        let c = connect(version);
        let p = Packet::Connect(Box::new(c.clone()));
        let got = dec(&enc(&p, version), None).expect("decodes");
        assert_eq!(got, p, "at {version:?}");

        // Minimal: no will, no credentials, empty client id where allowed.
        let mut bare = c;
        bare.will = None;
        bare.username = None;
        bare.password = None;
        bare.properties = ConnectProperties::default();
        if version != V31 {
            bare.client_id = String::new();
        }
        let p = Packet::Connect(Box::new(bare));
        assert_eq!(dec(&enc(&p, version), None).expect("decodes"), p);
    }
}

#[test]
fn v5_password_without_username_is_allowed() {
    let mut c = connect(V5);
    c.username = None;
    let p = Packet::Connect(Box::new(c));
    assert_eq!(dec(&enc(&p, V5), None).expect("decodes"), p);
}

#[test]
fn publish_len_matches_encoding() {
    for version in [V31, V311, V5] {
        let mut p = publish(version.is_v5());
        for payload_len in [0, 1, 100, 20_000, 3_000_000] {
            p.payload = Bytes::from(vec![b'x'; payload_len]);
            let wire = enc(&Packet::Publish(p.clone()), version);
            assert_eq!(publish_len(&p, version), wire.len());
        }
    }
}

#[test]
fn decoded_bytes_do_not_pin_the_read_buffer() {
    let bytes = enc(&Packet::Publish(publish(true)), V5);
    let mut buf = BytesMut::with_capacity(4096);
    buf.extend_from_slice(&bytes);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.capacity();
    let Some(Packet::Publish(p)) = decode(&mut buf, Some(V5), MAX).expect("decodes") else {
        panic!("not a publish")
    };
    for b in [
        &p.payload,
        p.properties.correlation_data.as_ref().expect("set"),
    ] {
        assert!(
            !range.contains(&(b.as_ptr() as usize)),
            "slice of read buffer"
        );
    }
}

// ---- byte-exact packets ------------------------------------------------------------

/// Captured from mosquitto_pub/mosquitto_sub 2.0.11 against a recording listener.
const MOSQ_V31: &str = "101600064d51497364700302003c000873656e736f722d31 30040001746d e000";
const MOSQ_V311: &str = "102800044d51545404ce003c000873656e736f722d310001770003627965\
     000475736572000470617373 300a0003612f6268656c6c6f e000";
const MOSQ_V5_PUB: &str = "101d00044d5154540502003c08110000003c210014000873656e736f722d31\
     301f0003612f621403000a746578742f706c61696e2600016b00017668656c6c6f e000";
const MOSQ_V5_SUB: &str = "101500044d5154540502003c0321001400057375622d31 \
     820b0001020b070003612f2301 e00104";
const MOSQ_V311_SUB: &str = "101100044d5154540402003c00057375622d31 \
     820c00010003612f230200016202 e000";

/// Decodes every packet of a captured session, as the broker would.
fn session(capture: &str) -> Vec<Packet> {
    let mut buf = BytesMut::from(&hex(capture)[..]);
    let mut version = None;
    let mut out = Vec::new();
    while let Some(p) = decode(&mut buf, version, MAX).expect("valid capture") {
        if let Packet::Connect(c) = &p {
            version = Some(c.version);
        }
        out.push(p);
    }
    assert!(buf.is_empty());
    out
}

/// Our encoding of a captured session is byte-identical to the capture.
fn reencode(capture: &str, packets: &[Packet]) {
    let Packet::Connect(c) = &packets[0] else {
        panic!("no CONNECT")
    };
    let mut out = Vec::new();
    for p in packets {
        out.extend(enc(p, c.version));
    }
    assert_eq!(out, hex(capture));
}

#[test]
fn mosquitto_v31_session() {
    let ps = session(MOSQ_V31);
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert_eq!((c.version, c.client_id.as_str()), (V31, "sensor-1"));
    assert!(c.clean_start && c.will.is_none() && c.username.is_none());
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("t", &b"m"[..]));
    assert_eq!(ps[2], Packet::Disconnect(Disconnect::default()));
    reencode(MOSQ_V31, &ps);
}

#[test]
fn mosquitto_v311_session_with_will_and_credentials() {
    let ps = session(MOSQ_V311);
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert_eq!(c.version, V311);
    assert_eq!(c.username.as_deref(), Some("user"));
    assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
    let w = c.will.as_ref().expect("will");
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos),
        ("w", &b"bye"[..], QoS::AtLeastOnce)
    );
    reencode(MOSQ_V311, &ps);
}

#[test]
fn mosquitto_v5_publish_session() {
    let ps = session(MOSQ_V5_PUB);
    let Packet::Connect(c) = &ps[0] else { panic!() };
    assert_eq!(c.version, V5);
    assert_eq!(c.properties.session_expiry_interval, Some(60));
    assert_eq!(c.properties.receive_maximum, Some(20));
    let Packet::Publish(p) = &ps[1] else { panic!() };
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.properties.user_properties, vec![("k".into(), "v".into())]);
    assert_eq!(&p.payload[..], b"hello");
    // mosquitto ends a v5 session with the short form `e0 00`.
    assert_eq!(ps[2], Packet::Disconnect(Disconnect::default()));
}

#[test]
fn mosquitto_v5_subscribe_session() {
    let ps = session(MOSQ_V5_SUB);
    let Packet::Subscribe(s) = &ps[1] else {
        panic!()
    };
    assert_eq!(s.subscription_identifier, Some(7));
    assert_eq!(s.filters[0].filter, "a/#");
    assert_eq!(s.filters[0].options.qos, QoS::AtLeastOnce);
    // mosquitto_sub -W ends with `e0 01 04`: reason code, no property length.
    let Packet::Disconnect(d) = &ps[2] else {
        panic!()
    };
    assert_eq!(d.reason, reason::DISCONNECT_WITH_WILL);
}

#[test]
fn mosquitto_v311_subscribe_session() {
    let ps = session(MOSQ_V311_SUB);
    let Packet::Subscribe(s) = &ps[1] else {
        panic!()
    };
    let got: Vec<_> = s
        .filters
        .iter()
        .map(|f| (f.filter.as_str(), f.options.qos))
        .collect();
    assert_eq!(
        got,
        vec![("a/#", QoS::ExactlyOnce), ("b", QoS::ExactlyOnce)]
    );
    reencode(MOSQ_V311_SUB, &ps);
}

#[test]
fn known_encodings() {
    let cases: Vec<(&str, Packet, ProtocolVersion, &str)> = vec![
        (
            "v5 normal DISCONNECT without properties is empty [MQTT 5 §3.14.2.1]",
            Packet::Disconnect(Disconnect::default()),
            V5,
            "e0 00",
        ),
        (
            "v5 DISCONNECT with reason and no properties has no property length \
             [MQTT 5 §3.14.2.2.1]",
            Packet::Disconnect(Disconnect {
                reason: 0x8e,
                ..Default::default()
            }),
            V5,
            "e0 01 8e",
        ),
        (
            "v5 normal DISCONNECT with a property keeps its reason code",
            Packet::Disconnect(Disconnect {
                session_expiry_interval: Some(1),
                ..Default::default()
            }),
            V5,
            "e0 07 00 05 11 00 00 00 01",
        ),
        (
            "3.1.1 DISCONNECT",
            Packet::Disconnect(Disconnect::default()),
            V311,
            "e0 00",
        ),
        (
            "v5 AUTH success without properties is empty [MQTT 5 §3.15.2.1]",
            Packet::Auth(Auth::default()),
            V5,
            "f0 00",
        ),
        (
            "v5 AUTH with reason and no properties has no property length \
             [MQTT 5 §3.15.2.2.1]",
            Packet::Auth(Auth {
                reason: 0x18,
                ..Default::default()
            }),
            V5,
            "f0 01 18",
        ),
        (
            "v5 PUBREC with reason and no properties has no property length \
             [MQTT 5 §3.5.2.2.1]",
            Packet::PubRec(PubResponse {
                reason: 0x80,
                ..PubResponse::success(2)
            }),
            V5,
            "50 03 00 02 80",
        ),
        (
            "v5 PUBREL success is short [MQTT 5 §3.6.2.1]",
            Packet::PubRel(PubResponse::success(3)),
            V5,
            "62 02 00 03",
        ),
        (
            "v5 PUBCOMP with reason and no properties has no property length",
            Packet::PubComp(PubResponse {
                reason: 0x92,
                ..PubResponse::success(4)
            }),
            V5,
            "70 03 00 04 92",
        ),
        (
            "MQTT 3.1 CONNACK: the first byte is reserved, no session present (3.1 §3.2)",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: reason::SUCCESS,
                properties: ConnAckProperties::default(),
            }),
            V31,
            "20 02 00 00",
        ),
        (
            "3.1.1 CONNACK carries session present [MQTT-3.2.2-2]",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: reason::SUCCESS,
                properties: ConnAckProperties::default(),
            }),
            V311,
            "20 02 01 00",
        ),
        ("3.x has no AUTH", Packet::Auth(Auth::default()), V311, ""),
        (
            "v5 PUBACK success is short",
            Packet::PubAck(PubResponse::success(1)),
            V5,
            "40 02 00 01",
        ),
        (
            "v5 PUBACK with reason",
            Packet::PubAck(PubResponse {
                reason: 0x10,
                ..PubResponse::success(1)
            }),
            V5,
            "40 03 00 01 10",
        ),
        (
            "3.1.1 PUBACK drops the reason",
            Packet::PubAck(PubResponse {
                reason: 0x10,
                ..PubResponse::success(1)
            }),
            V311,
            "40 02 00 01",
        ),
        (
            "PUBREL flags",
            Packet::PubRel(PubResponse::success(258)),
            V311,
            "62 02 01 02",
        ),
        (
            "3.1.1 CONNACK maps the code",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: reason::BAD_USER_NAME_OR_PASSWORD,
                properties: Default::default(),
            }),
            V311,
            "20 02 00 04",
        ),
        (
            "3.1.1 CONNACK unknown code is 3",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: reason::SERVER_BUSY,
                properties: Default::default(),
            }),
            V31,
            "20 02 00 03",
        ),
        (
            "CONNACK failure never has session present",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: reason::NOT_AUTHORIZED,
                properties: Default::default(),
            }),
            V5,
            "20 03 00 87 00",
        ),
        (
            "v5 CONNACK success",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: Default::default(),
            }),
            V5,
            "20 03 01 00 00",
        ),
        (
            "3.1.1 SUBACK maps failures to 0x80",
            Packet::SubAck(SubAck {
                packet_id: 1,
                reasons: vec![0, 2, 0x87, 0xa2],
                reason_string: None,
                user_properties: vec![],
            }),
            V311,
            "90 06 00 01 00 02 80 80",
        ),
        (
            "v5 SUBACK keeps reasons",
            Packet::SubAck(SubAck {
                packet_id: 1,
                reasons: vec![0, 0x87],
                reason_string: None,
                user_properties: vec![],
            }),
            V5,
            "90 05 00 01 00 00 87",
        ),
        (
            "3.1.1 UNSUBACK has no payload",
            Packet::UnsubAck(UnsubAck {
                packet_id: 1,
                reasons: vec![0x11],
                reason_string: None,
                user_properties: vec![],
            }),
            V311,
            "b0 02 00 01",
        ),
        (
            "v5 UNSUBACK",
            Packet::UnsubAck(UnsubAck {
                packet_id: 1,
                reasons: vec![0x11],
                reason_string: None,
                user_properties: vec![],
            }),
            V5,
            "b0 04 00 01 00 11",
        ),
        ("PINGRESP", Packet::PingResp, V5, "d0 00"),
        (
            "QoS 0 PUBLISH never carries DUP",
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "t".into(),
                packet_id: 0,
                payload: Bytes::from_static(b"x"),
                properties: Default::default(),
                topic_alias: None,
                subscription_identifiers: vec![],
            }),
            V311,
            "30 04 00 01 74 78",
        ),
    ];
    for (what, p, v, want) in cases {
        assert_eq!(enc(&p, v), hex(want), "{what}");
    }
}

/// A CONNACK larger than the client's Maximum Packet Size loses its Reason String
/// first [MQTT-3.2.2-19], then its User Properties [MQTT-3.2.2-20]; the other
/// properties are never dropped, and when it still does not fit it is not sent
/// [MQTT-3.1.2-24].
#[test]
fn connack_is_fitted_to_the_client_maximum_packet_size() {
    let full = ConnAck {
        session_present: false,
        code: reason::SUCCESS,
        properties: ConnAckProperties {
            receive_maximum: Some(10),
            reason_string: Some("why".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        },
    };
    let len = |c: &ConnAck| enc(&Packet::ConnAck(c.clone()), V5).len();
    let mut no_reason = full.clone();
    no_reason.properties.reason_string = None;
    let mut bare = no_reason.clone();
    bare.properties.user_properties.clear();
    assert!(len(&bare) < len(&no_reason) && len(&no_reason) < len(&full));

    let mut c = full.clone();
    assert!(fit_connack(&mut c, V5, len(&full)), "fits as it is");
    assert_eq!(c, full);

    let mut c = full.clone();
    assert!(fit_connack(&mut c, V5, len(&full) - 1));
    assert_eq!(c, no_reason, "the reason string goes first");

    let mut c = full.clone();
    assert!(fit_connack(&mut c, V5, len(&no_reason) - 1));
    assert_eq!(c, bare, "then the user properties");

    let mut c = full.clone();
    assert!(!fit_connack(&mut c, V5, len(&bare) - 1), "no CONNACK fits");
    assert!(enc(&Packet::ConnAck(c), V5).len() > len(&bare) - 1);
}

#[test]
fn v5_short_forms_decode() {
    let cases: Vec<(&str, Packet)> = vec![
        ("e0 00", Packet::Disconnect(Disconnect::default())),
        (
            "e0 01 04",
            Packet::Disconnect(Disconnect {
                reason: 4,
                ..Default::default()
            }),
        ),
        (
            "e0 02 04 00",
            Packet::Disconnect(Disconnect {
                reason: 4,
                ..Default::default()
            }),
        ),
        ("f0 00", Packet::Auth(Auth::default())),
        (
            "f0 01 18",
            Packet::Auth(Auth {
                reason: 0x18,
                ..Default::default()
            }),
        ),
        ("40 02 00 05", Packet::PubAck(PubResponse::success(5))),
        (
            "50 03 00 05 10",
            Packet::PubRec(PubResponse {
                reason: 0x10,
                ..PubResponse::success(5)
            }),
        ),
        (
            "62 04 00 05 92 00",
            Packet::PubRel(PubResponse {
                reason: 0x92,
                ..PubResponse::success(5)
            }),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(dec(&hex(bytes), Some(V5)).expect(bytes), want, "{bytes}");
    }
}

// ---- framing -----------------------------------------------------------------------

#[test]
fn partial_buffers_wait_at_every_split_point() {
    let mut all = vec![(Packet::Connect(Box::new(connect(V5))), None)];
    for p in client_packets(V5) {
        all.push((p, Some(V5)));
    }
    for (p, v) in all {
        let bytes = enc(&p, V5);
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(
                decode(&mut buf, v, MAX).expect("no error"),
                None,
                "{p:?} at {split}"
            );
            assert_eq!(&buf[..], &bytes[..split], "buffer touched");
        }
    }
}

#[test]
fn two_packets_in_one_buffer_decode_one_at_a_time() {
    let mut buf = BytesMut::from(&hex("c0 00 30 04 00 01 74 78 c0")[..]);
    assert_eq!(
        decode(&mut buf, Some(V311), MAX).expect("ok"),
        Some(Packet::PingReq)
    );
    assert_eq!(buf.len(), 7);
    let Some(Packet::Publish(p)) = decode(&mut buf, Some(V311), MAX).expect("ok") else {
        panic!("not a publish")
    };
    assert_eq!(p.topic, "t");
    assert_eq!(&buf[..], &[0xc0]);
    assert_eq!(decode(&mut buf, Some(V311), MAX).expect("ok"), None);
}

#[test]
fn remaining_length_encoding() {
    let cases = [
        ("30 ff ff ff ff 01", "[MQTT-1.5.5-1]", "longer than 4 bytes"),
        // The 4th byte's continuation bit is already fatal: no need to wait for a 5th.
        ("30 ff ff ff ff", "[MQTT-1.5.5-1]", "longer than 4 bytes"),
        ("c0 80 00", "[MQTT-1.5.5-1]", "not minimally encoded"),
        ("30 80 80 00", "[MQTT-1.5.5-1]", "not minimally encoded"),
    ];
    for (bytes, clause, what) in cases {
        let mut buf = BytesMut::from(&hex(bytes)[..]);
        let e = decode(&mut buf, Some(V311), usize::MAX).expect_err(bytes);
        let msg = e.to_string();
        assert!(
            msg.starts_with(clause) && msg.contains(what),
            "{bytes}: {msg}"
        );
        assert_eq!(e.reason_code(), reason::MALFORMED_PACKET);
    }
    // Largest legal value: 268,435,455 in 4 bytes — waits for the body.
    let mut buf = BytesMut::from(&hex("30 ff ff ff 7f")[..]);
    assert_eq!(decode(&mut buf, Some(V311), usize::MAX).expect("ok"), None);
}

#[test]
fn huge_declared_packet_is_refused_from_the_fixed_header() {
    // PUBLISH declaring 268,435,455 bytes (~256 MiB); only 5 bytes have arrived.
    let mut buf = BytesMut::from(&hex("30 ff ff ff 7f")[..]);
    let e = decode(&mut buf, Some(V5), 1 << 20).expect_err("too large");
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
    assert!(matches!(
        e,
        ProtocolError::PacketTooLarge {
            size: 268_435_460,
            max: 1_048_576
        }
    ));
    // Also before CONNECT: a CONNECT itself may be too large.
    let mut buf = BytesMut::from(&hex("10 ff ff ff 7f")[..]);
    let e = decode(&mut buf, None, 1 << 20).expect_err("too large");
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
}

#[test]
fn max_packet_size_counts_the_fixed_header() {
    let bytes = enc(&Packet::Publish(publish(false)), V311);
    let n = bytes.len();
    assert!(dec_limited(&bytes, n).is_ok());
    let e = dec_limited(&bytes, n - 1).expect_err("one byte over");
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);

    fn dec_limited(b: &[u8], max: usize) -> Result<Option<Packet>, ProtocolError> {
        decode(&mut BytesMut::from(b), Some(V311), max)
    }
}

#[test]
fn errors_leave_the_buffer_untouched() {
    let bytes = hex("30 03 00 01 2b"); // topic "+"
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, Some(V311), MAX).is_err());
    assert_eq!(&buf[..], &bytes[..]);
}

#[test]
fn peek_connect_version_reads_name_and_level() {
    assert_eq!(peek_connect_version(&hex(MOSQ_V31)), Some(V31));
    assert_eq!(peek_connect_version(&hex(MOSQ_V311)), Some(V311));
    assert_eq!(peek_connect_version(&hex(MOSQ_V5_PUB)), Some(V5));
    // A v5 CONNECT broken after its level still tells the version.
    assert_eq!(
        peek_connect_version(&hex("10 0a 00 04 4d 51 54 54 05 01")),
        Some(V5)
    );
    assert_eq!(
        peek_connect_version(&hex("10 0a 00 04 4d 51 54 54 06")),
        None
    );
    assert_eq!(peek_connect_version(&hex("10 0a 00 04 4d")), None);
    assert_eq!(peek_connect_version(&hex("c0 00")), None);
    assert_eq!(peek_connect_version(&[]), None);
}

#[test]
fn mosquitto_v5_sessions_reencode_byte_exact() {
    // Everything but the final DISCONNECT: mosquitto sends the short `e0 00`/`e0 01
    // 04`, the broker always the full form.
    for capture in [MOSQ_V5_PUB, MOSQ_V5_SUB] {
        let ps = session(capture);
        let mut out = Vec::new();
        for p in &ps[..ps.len() - 1] {
            out.extend(enc(p, V5));
        }
        let want = hex(capture);
        assert_eq!(out, want[..out.len()], "{capture}");
    }
}
