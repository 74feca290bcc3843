//! Property tests: strategies that generate every valid packet kind for MQTT 3.1.1 and
//! 5.0 (and CONNECT at 3.1 too), split by direction; `encode` then decode must give the
//! same packet back, whole, and every proper prefix of the encoding must wait for more.
//!
//! "Valid" means what the broker would build and what a peer may send: non-zero packet
//! ids where the spec wants them, no wildcards in topic names, UTF-8 payloads when the
//! payload format indicator says so, no properties or v5 reason codes at 3.x, a SUBACK
//! return code 3.1.1 can carry, Session Present only with success (the encoder clears it
//! otherwise [MQTT-3.2.2-4]). The fuzz target `fuzz/fuzz_targets/decode.rs` covers the
//! other direction (arbitrary bytes that happen to decode).

use super::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

const CASES: u32 = 256;
/// Largest variable byte integer (subscription identifiers).
const VARINT_MAX: u32 = 268_435_455;

/// Any UTF-8 string a packet may carry: no U+0000, multi-byte characters included.
fn text() -> BoxedStrategy<String> {
    "[a-zA-Z0-9/+#$ _ü€😀-]{0,12}".boxed()
}

/// A topic name: non-empty, no wildcards.
fn topic_name() -> BoxedStrategy<String> {
    "[a-zA-Z0-9/$ _ü€😀-]{1,12}".boxed()
}

/// Filters are not validated by the codec (the session layer does), so any text.
fn filter() -> BoxedStrategy<String> {
    prop_oneof![
        "[a-z/]{0,8}(/\\+|/#)?",
        Just("#".to_string()),
        Just("$share/g/a/+".to_string()),
        text(),
    ]
    .boxed()
}

fn bytes(max: usize) -> BoxedStrategy<Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from).boxed()
}

fn packet_id() -> BoxedStrategy<u16> {
    (1..=u16::MAX).boxed()
}

fn qos() -> BoxedStrategy<QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
    .boxed()
}

fn flag() -> BoxedStrategy<Option<u8>> {
    option::of(0..=1u8).boxed()
}

fn nonzero_u16() -> BoxedStrategy<Option<u16>> {
    option::of(1..=u16::MAX).boxed()
}

fn nonzero_u32() -> BoxedStrategy<Option<u32>> {
    option::of(1..=u32::MAX).boxed()
}

/// User properties: only at v5.
fn users(v5: bool) -> BoxedStrategy<Vec<UserProperty>> {
    if v5 {
        vec((text(), text()), 0..3).boxed()
    } else {
        Just(Vec::new()).boxed()
    }
}

fn opt_text(v5: bool) -> BoxedStrategy<Option<String>> {
    if v5 {
        option::of(text()).boxed()
    } else {
        Just(None).boxed()
    }
}

/// A payload and the message properties that go with it (a UTF-8 payload when the
/// payload format indicator is 1).
fn payload_and_props(v5: bool) -> BoxedStrategy<(Bytes, MessageProperties)> {
    if !v5 {
        return bytes(32)
            .prop_map(|p| (p, MessageProperties::default()))
            .boxed();
    }
    (
        flag(),
        bytes(32),
        text(),
        option::of(any::<u32>()),
        option::of(text()),
        option::of(topic_name()),
        option::of(bytes(8)),
        users(true),
    )
        .prop_map(
            |(pfi, raw, utf8, expiry, content_type, response_topic, correlation, users)| {
                let payload = if pfi == Some(1) {
                    Bytes::from(utf8)
                } else {
                    raw
                };
                let props = MessageProperties {
                    payload_format_indicator: pfi,
                    message_expiry_interval: expiry,
                    content_type,
                    response_topic,
                    correlation_data: correlation,
                    user_properties: users,
                };
                (payload, props)
            },
        )
        .boxed()
}

fn will(v5: bool) -> BoxedStrategy<LastWill> {
    let delay = if v5 {
        option::of(any::<u32>()).boxed()
    } else {
        Just(None).boxed()
    };
    (
        topic_name(),
        payload_and_props(v5),
        qos(),
        any::<bool>(),
        delay,
    )
        .prop_map(
            |(topic, (payload, properties), qos, retain, delay_interval)| LastWill {
                topic,
                payload,
                qos,
                retain,
                delay_interval,
                properties,
            },
        )
        .boxed()
}

fn connect_properties(v5: bool) -> BoxedStrategy<ConnectProperties> {
    if !v5 {
        return Just(ConnectProperties::default()).boxed();
    }
    (
        option::of(any::<u32>()),
        nonzero_u16(),
        nonzero_u32(),
        option::of(any::<u16>()),
        flag(),
        flag(),
        users(true),
        option::of((text(), option::of(bytes(8)))),
    )
        .prop_map(
            |(session_expiry, receive_max, max_packet, alias_max, rri, rpi, users, auth)| {
                // Authentication data needs a method (MQTT 5 §3.1.2.11.10).
                let (method, data) = match auth {
                    Some((m, d)) => (Some(m), d),
                    None => (None, None),
                };
                ConnectProperties {
                    session_expiry_interval: session_expiry,
                    receive_maximum: receive_max,
                    maximum_packet_size: max_packet,
                    topic_alias_maximum: alias_max,
                    request_response_information: rri,
                    request_problem_information: rpi,
                    user_properties: users,
                    authentication_method: method,
                    authentication_data: data,
                }
            },
        )
        .boxed()
}

fn connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    // 3.1 refuses an empty client id; 3.1.1 and 5.0 let the broker assign one.
    let client_id = if version == V31 {
        "[a-zA-Z0-9ü-]{1,23}".boxed()
    } else {
        text()
    };
    (
        client_id,
        any::<bool>(),
        any::<u16>(),
        option::of(text()),
        option::of(bytes(12)),
        option::of(will(v5)),
        connect_properties(v5),
    )
        .prop_map(
            move |(client_id, clean_start, keep_alive, username, password, will, properties)| {
                // 3.x: a password needs a user name [MQTT-3.1.2-22]; v5 lifts that.
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    version,
                    client_id,
                    clean_start,
                    keep_alive,
                    username,
                    password,
                    will,
                    properties,
                }))
            },
        )
        .boxed()
}

/// `from_server` allows subscription identifiers (server→client only).
fn publish(v5: bool, from_server: bool) -> BoxedStrategy<Packet> {
    let alias = if v5 {
        nonzero_u16()
    } else {
        Just(None).boxed()
    };
    let sub_ids = if v5 && from_server {
        vec(1..=VARINT_MAX, 0..3).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        payload_and_props(v5),
        alias,
        sub_ids,
        any::<bool>(),
    )
        .prop_map(
            |(qos, dup, retain, topic, id, (payload, properties), alias, ids, aliased)| {
                let at_most_once = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    // DUP must be 0 for QoS 0 [MQTT-3.3.1-2].
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    // With a topic alias the topic may be empty (v5).
                    topic: if aliased && alias.is_some() {
                        String::new()
                    } else {
                        topic
                    },
                    packet_id: if at_most_once { 0 } else { id },
                    payload,
                    properties,
                    topic_alias: alias,
                    subscription_identifiers: ids,
                })
            },
        )
        .boxed()
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP with a reason code its packet allows.
fn pub_response(v5: bool) -> BoxedStrategy<Packet> {
    let kind = 0..4u8;
    (
        kind,
        packet_id(),
        any::<prop::sample::Index>(),
        opt_text(v5),
        users(v5),
    )
        .prop_map(
            move |(kind, packet_id, pick, reason_string, user_properties)| {
                let reasons: &[u8] = if kind < 2 {
                    &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
                } else {
                    &[0x00, 0x92]
                };
                let r = PubResponse {
                    packet_id,
                    reason: if v5 { *pick.get(reasons) } else { 0 },
                    reason_string,
                    user_properties,
                };
                match kind {
                    0 => Packet::PubAck(r),
                    1 => Packet::PubRec(r),
                    2 => Packet::PubRel(r),
                    _ => Packet::PubComp(r),
                }
            },
        )
        .boxed()
}

fn subscribe(v5: bool) -> BoxedStrategy<Packet> {
    let options = (qos(), any::<bool>(), any::<bool>(), 0..=2u8).prop_map(
        move |(qos, no_local, retain_as_published, retain_handling)| {
            if v5 {
                SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                }
            }
        },
    );
    let filters = vec(
        (filter(), options).prop_map(|(filter, options)| SubscribeFilter { filter, options }),
        1..4,
    );
    let id = if v5 {
        option::of(1..=VARINT_MAX).boxed()
    } else {
        Just(None).boxed()
    };
    (packet_id(), filters, id, users(v5))
        .prop_map(
            |(packet_id, filters, subscription_identifier, user_properties)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    subscription_identifier,
                    user_properties,
                })
            },
        )
        .boxed()
}

fn unsubscribe(v5: bool) -> BoxedStrategy<Packet> {
    (packet_id(), vec(filter(), 1..4), users(v5))
        .prop_map(|(packet_id, filters, user_properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                user_properties,
            })
        })
        .boxed()
}

fn disconnect(v5: bool) -> BoxedStrategy<Packet> {
    if !v5 {
        // 3.x DISCONNECT has no body.
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    (
        any::<u8>(),
        option::of(any::<u32>()),
        option::of(text()),
        users(true),
        option::of(text()),
    )
        .prop_map(
            |(
                reason,
                session_expiry_interval,
                reason_string,
                user_properties,
                server_reference,
            )| {
                Packet::Disconnect(Disconnect {
                    reason,
                    session_expiry_interval,
                    reason_string,
                    user_properties,
                    server_reference,
                })
            },
        )
        .boxed()
}

fn auth() -> BoxedStrategy<Packet> {
    (
        prop::sample::select(vec![0x00u8, 0x18, 0x19]),
        option::of(text()),
        option::of(bytes(8)),
        option::of(text()),
        users(true),
    )
        .prop_map(
            |(reason, authentication_method, authentication_data, reason_string, users)| {
                Packet::Auth(Auth {
                    reason,
                    authentication_method,
                    authentication_data,
                    reason_string,
                    user_properties: users,
                })
            },
        )
        .boxed()
}

fn connack(v5: bool) -> BoxedStrategy<Packet> {
    // 3.x can only say these (return codes 0-5 in MQTT 5 numbers).
    let code = if v5 {
        any::<u8>().boxed()
    } else {
        prop::sample::select(vec![
            reason::SUCCESS,
            reason::UNSUPPORTED_PROTOCOL_VERSION,
            reason::CLIENT_IDENTIFIER_NOT_VALID,
            reason::SERVER_UNAVAILABLE,
            reason::BAD_USER_NAME_OR_PASSWORD,
            reason::NOT_AUTHORIZED,
        ])
        .boxed()
    };
    let props = if v5 {
        (
            (
                option::of(any::<u32>()),
                nonzero_u16(),
                flag(),
                flag(),
                nonzero_u32(),
                option::of(text()),
                option::of(any::<u16>()),
                option::of(text()),
            ),
            (
                users(true),
                flag(),
                flag(),
                flag(),
                option::of(any::<u16>()),
                option::of(text()),
                option::of(text()),
                option::of((text(), option::of(bytes(8)))),
            ),
        )
            .prop_map(|((a, b, c, d, e, f, g, h), (i, j, k, l, m, n, o, auth))| {
                let (method, data) = match auth {
                    Some((m, d)) => (Some(m), d),
                    None => (None, None),
                };
                ConnAckProperties {
                    session_expiry_interval: a,
                    receive_maximum: b,
                    maximum_qos: c,
                    retain_available: d,
                    maximum_packet_size: e,
                    assigned_client_identifier: f,
                    topic_alias_maximum: g,
                    reason_string: h,
                    user_properties: i,
                    wildcard_subscription_available: j,
                    subscription_identifiers_available: k,
                    shared_subscription_available: l,
                    server_keep_alive: m,
                    response_information: n,
                    server_reference: o,
                    authentication_method: method,
                    authentication_data: data,
                }
            })
            .boxed()
    } else {
        Just(ConnAckProperties::default()).boxed()
    };
    (any::<bool>(), code, props)
        .prop_map(|(present, code, properties)| {
            Packet::ConnAck(ConnAck {
                // Session Present only with success [MQTT-3.2.2-4]; the encoder clears it.
                session_present: present && code == reason::SUCCESS,
                code,
                properties,
            })
        })
        .boxed()
}

fn suback(v5: bool) -> BoxedStrategy<Packet> {
    let reasons = if v5 {
        vec(any::<u8>(), 1..5).boxed()
    } else {
        // 3.1.1 return codes: granted QoS 0-2 or failure 0x80.
        vec(prop::sample::select(vec![0u8, 1, 2, 0x80]), 1..5).boxed()
    };
    (packet_id(), reasons, opt_text(v5), users(v5))
        .prop_map(|(packet_id, reasons, reason_string, user_properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                reason_string,
                user_properties,
            })
        })
        .boxed()
}

fn unsuback(v5: bool) -> BoxedStrategy<Packet> {
    // 3.x UNSUBACK carries only the packet id.
    let reasons = if v5 {
        vec(any::<u8>(), 0..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), reasons, opt_text(v5), users(v5))
        .prop_map(|(packet_id, reasons, reason_string, user_properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                reason_string,
                user_properties,
            })
        })
        .boxed()
}

/// Every packet a client may send after its CONNECT.
fn client_packet(v5: bool) -> BoxedStrategy<Packet> {
    let mut kinds = vec![
        publish(v5, false),
        pub_response(v5),
        subscribe(v5),
        unsubscribe(v5),
        Just(Packet::PingReq).boxed(),
        disconnect(v5),
    ];
    if v5 {
        kinds.push(auth());
    }
    proptest::strategy::Union::new(kinds).boxed()
}

/// Every packet a server may send.
fn server_packet(v5: bool) -> BoxedStrategy<Packet> {
    let mut kinds = vec![
        connack(v5),
        publish(v5, true),
        pub_response(v5),
        suback(v5),
        unsuback(v5),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        kinds.push(disconnect(true));
        kinds.push(auth());
    }
    proptest::strategy::Union::new(kinds).boxed()
}

/// Encodes `p`, checks it decodes back whole with `decode_fn` and that every proper
/// prefix (cut at `cut`) waits for more bytes without consuming anything.
fn check_round_trip(
    p: &Packet,
    version: ProtocolVersion,
    session: Option<ProtocolVersion>,
    from_client: bool,
    cut: prop::sample::Index,
) -> Result<(), TestCaseError> {
    let bytes = enc(p, version);
    if let Packet::Publish(publish) = p {
        prop_assert_eq!(publish_len(publish, version), bytes.len());
    }
    let got = if from_client {
        dec(&bytes, session)
    } else {
        dec_any(&bytes, session)
    };
    let got = got.map_err(|e| TestCaseError::fail(format!("{e} decoding {bytes:02x?}")))?;
    prop_assert_eq!(&got, p);

    let mut prefix = BytesMut::from(&bytes[..cut.index(bytes.len())]);
    let before = prefix.clone();
    let partial = if from_client {
        decode(&mut prefix, session, MAX)
    } else {
        decode_any(&mut prefix, session, MAX)
    };
    prop_assert_eq!(partial, Ok(None));
    prop_assert_eq!(prefix, before);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn connect_round_trips(
        p in prop_oneof![connect(V31), connect(V311), connect(V5)],
        cut in any::<prop::sample::Index>(),
    ) {
        let Packet::Connect(c) = &p else { unreachable!("a CONNECT strategy") };
        check_round_trip(&p, c.version, None, true, cut)?;
    }

    #[test]
    fn v311_client_packets_round_trip(p in client_packet(false), cut in any::<prop::sample::Index>()) {
        check_round_trip(&p, V311, Some(V311), true, cut)?;
    }

    #[test]
    fn v311_server_packets_round_trip(p in server_packet(false), cut in any::<prop::sample::Index>()) {
        check_round_trip(&p, V311, Some(V311), false, cut)?;
    }

    #[test]
    fn v5_client_packets_round_trip(p in client_packet(true), cut in any::<prop::sample::Index>()) {
        check_round_trip(&p, V5, Some(V5), true, cut)?;
    }

    #[test]
    fn v5_server_packets_round_trip(p in server_packet(true), cut in any::<prop::sample::Index>()) {
        check_round_trip(&p, V5, Some(V5), false, cut)?;
    }
}
