//! Writes the committed seed corpus in `fuzz/seeds/<target>/` from real encodings: packet
//! captures from mosquitto 2.0.11 (the codec tests' byte arrays), sluice's own encoding
//! of every packet kind, segment files written by a real `Store`, sample password
//! and ACL files, and PROXY protocol v1 and v2 headers. Not a fuzz target; run it when the formats change:
//! `cargo run --manifest-path fuzz/Cargo.toml --bin gen_seeds`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice::auth::hash_password_with_iterations;
use sluice::protocol::*;
use sluice::store::{DurabilityPolicy, Record, Store, StoreConfig, StoredMessage};

/// Captured from mosquitto_pub/mosquitto_sub 2.0.11 (see `src/protocol/codec/tests.rs`).
const CAPTURES: &[(&str, &str)] = &[
    (
        "mosquitto_v31",
        "101600064d51497364700302003c000873656e736f722d31 30040001746d e000",
    ),
    (
        "mosquitto_v311_will",
        "102800044d51545404ce003c000873656e736f722d310001770003627965\
         000475736572000470617373 300a0003612f6268656c6c6f e000",
    ),
    (
        "mosquitto_v5_pub",
        "101d00044d5154540502003c08110000003c210014000873656e736f722d31\
         301f0003612f621403000a746578742f706c61696e2600016b00017668656c6c6f e000",
    ),
    (
        "mosquitto_v5_sub",
        "101500044d5154540502003c0321001400057375622d31 820b0001020b070003612f2301 e00104",
    ),
    (
        "mosquitto_v311_sub",
        "101100044d5154540402003c00057375622d31 820c00010003612f230200016202 e000",
    ),
];

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("seed dir");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn users() -> Vec<UserProperty> {
    vec![("k".into(), "v".into())]
}

fn msg_props(v5: bool) -> MessageProperties {
    if !v5 {
        return MessageProperties::default();
    }
    MessageProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x01")),
        user_properties: users(),
    }
}

fn connect(version: ProtocolVersion) -> Packet {
    let v5 = version.is_v5();
    Packet::Connect(Box::new(Connect {
        version,
        client_id: "sensor-1".into(),
        clean_start: true,
        keep_alive: 60,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pass")),
        will: Some(LastWill {
            topic: "will/t".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay_interval: v5.then_some(5),
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
    }))
}

fn publish(v5: bool, qos: QoS) -> Publish {
    Publish {
        dup: qos != QoS::AtMostOnce,
        qos,
        retain: true,
        topic: "sensors/1/temp".into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
        payload: Bytes::from_static(b"21.5"),
        properties: msg_props(v5),
        topic_alias: v5.then_some(1),
        subscription_identifiers: Vec::new(),
    }
}

fn ack(v5: bool, reason: u8) -> PubResponse {
    PubResponse {
        packet_id: 7,
        reason: if v5 { reason } else { 0 },
        reason_string: v5.then(|| "why".into()),
        user_properties: if v5 { users() } else { Vec::new() },
    }
}

fn client_packets(v5: bool) -> Vec<Packet> {
    let mut v = vec![
        Packet::Publish(publish(v5, QoS::AtMostOnce)),
        Packet::Publish(publish(v5, QoS::AtLeastOnce)),
        Packet::Publish(publish(v5, QoS::ExactlyOnce)),
        Packet::PubAck(ack(v5, 0x10)),
        Packet::PubRec(ack(v5, 0x80)),
        Packet::PubRel(ack(v5, 0x92)),
        Packet::PubComp(PubResponse::success(7)),
        Packet::Subscribe(Subscribe {
            packet_id: 8,
            filters: vec![
                SubscribeFilter {
                    filter: "sensors/+/temp".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                },
                SubscribeFilter {
                    filter: "$share/g/a/#".into(),
                    options: SubscriptionOptions::default(),
                },
            ],
            subscription_identifier: v5.then_some(300),
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 9,
            filters: vec!["sensors/+/temp".into()],
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::PingReq,
    ];
    if v5 {
        v.push(Packet::Auth(Auth {
            reason: 0x18,
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"\x00")),
            reason_string: Some("more".into()),
            user_properties: users(),
        }));
        v.push(Packet::Disconnect(Disconnect {
            reason: 0x04,
            session_expiry_interval: Some(0),
            reason_string: Some("bye".into()),
            user_properties: users(),
            server_reference: None,
        }));
    } else {
        v.push(Packet::Disconnect(Disconnect::default()));
    }
    v
}

fn server_packets(v5: bool) -> Vec<Packet> {
    let mut p = publish(v5, QoS::AtLeastOnce);
    if v5 {
        p.subscription_identifiers = vec![1, 300];
    }
    vec![
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: if v5 {
                ConnAckProperties {
                    session_expiry_interval: Some(1),
                    receive_maximum: Some(2),
                    maximum_qos: Some(1),
                    retain_available: Some(1),
                    maximum_packet_size: Some(1024),
                    assigned_client_identifier: Some("auto-1".into()),
                    topic_alias_maximum: Some(4),
                    reason_string: Some("ok".into()),
                    user_properties: users(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(1),
                    shared_subscription_available: Some(1),
                    server_keep_alive: Some(30),
                    response_information: Some("resp".into()),
                    server_reference: Some("other:1883".into()),
                    authentication_method: Some("SCRAM".into()),
                    authentication_data: Some(Bytes::from_static(b"d")),
                }
            } else {
                ConnAckProperties::default()
            },
        }),
        Packet::Publish(p),
        Packet::SubAck(SubAck {
            packet_id: 8,
            reasons: vec![0, 1, 2, 0x80],
            reason_string: v5.then(|| "partly".into()),
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 9,
            reasons: if v5 { vec![0, 0x11] } else { Vec::new() },
            reason_string: v5.then(|| "r".into()),
            user_properties: if v5 { users() } else { Vec::new() },
        }),
        Packet::PingResp,
    ]
}

fn encode_all(packets: &[Packet], version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        encode(p, version, &mut out);
    }
    out.to_vec()
}

fn decode_seeds(dir: &Path) {
    for (name, capture) in CAPTURES {
        write(dir, name, &[&[0u8][..], &hex(capture)].concat());
    }
    let versions = [
        (1u8, ProtocolVersion::V3_1, "v31"),
        (2, ProtocolVersion::V3_1_1, "v311"),
        (3, ProtocolVersion::V5, "v5"),
    ];
    for (mode, version, label) in versions {
        let v5 = version.is_v5();
        // A whole client session, CONNECT first (mode 0: the CONNECT picks the version).
        let mut session = vec![connect(version)];
        session.extend(client_packets(v5));
        let bytes = encode_all(&session, version);
        write(
            dir,
            &format!("session_{label}"),
            &[&[0u8][..], &bytes].concat(),
        );
        // Client packets after the CONNECT, and what a server sends (decode_any).
        let bytes = encode_all(&client_packets(v5), version);
        write(
            dir,
            &format!("client_{label}"),
            &[&[mode][..], &bytes].concat(),
        );
        let bytes = encode_all(&server_packets(v5), version);
        write(
            dir,
            &format!("server_{label}"),
            &[&[mode | 4][..], &bytes].concat(),
        );
    }
}

fn topic_seeds(dir: &Path) {
    for (i, t) in [
        "sensors/+/temp",
        "sensors/1/temp",
        "$share/group/a/#",
        "$SYS/broker/uptime",
        "a//b/",
        "#",
        "+/+",
        "sensors/ü/temp",
    ]
    .iter()
    .enumerate()
    {
        write(
            dir,
            &format!("topic_{i}"),
            &[&[8u8][..], t.as_bytes()].concat(),
        );
    }
}

fn trie_seeds(dir: &Path) {
    let script = "+asensors/+/temp\n+bsensors/#\n+c#\n+a+/+\n+d$SYS/#\n\
                  tasensors/1/temp\nta$SYS/uptime\nta/\n-asensors/+/temp\ntasensors/1/temp\n+aa//b\ntaa//b\n";
    write(dir, "script", script.as_bytes());
}

fn message(id: u64, retain: bool) -> Record {
    Record::Message(Arc::new(StoredMessage {
        id,
        topic: format!("sensors/{id}/temp"),
        payload: Bytes::from(format!("{id}.5")),
        qos: 1,
        retain,
        properties: Bytes::from_static(b"\x01\x01"),
        publisher: "sensor-1".into(),
        received_at_ms: 1_700_000_000_000 + id,
        expires_at_ms: (id % 2 == 0).then_some(1_800_000_000_000),
    }))
}

fn store_seeds(dir: &Path) {
    let data = std::env::temp_dir().join(format!("sluice-gen-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = StoreConfig {
            dir: data.clone(),
            policy: DurabilityPolicy::Write,
            ..StoreConfig::default()
        };
        let (store, _) = Store::open(config).expect("open store");
        let s = || "sensor-2".to_string();
        store
            .commit(vec![
                message(1, false),
                Record::Enqueue {
                    session: s(),
                    message_id: 1,
                },
                message(2, true),
                Record::Retain {
                    topic: "sensors/2/temp".into(),
                    message_id: 2,
                },
                Record::Enqueue {
                    session: s(),
                    message_id: 2,
                },
            ])
            .await
            .expect("commit");
        store
            .commit(vec![
                Record::Attempt {
                    session: s(),
                    message_id: 1,
                    attempts: 2,
                },
                Record::Outbound {
                    session: s(),
                    message_id: 2,
                    packet_id: 3,
                    released: false,
                },
                Record::Ack {
                    session: s(),
                    message_id: 1,
                },
                Record::Session {
                    client_id: s(),
                    state: Bytes::from_static(b"state"),
                },
                Record::Qos2Received {
                    session: s(),
                    packet_id: 7,
                },
                Record::Qos2Released {
                    session: s(),
                    packet_id: 7,
                },
                Record::RetainClear {
                    topic: "sensors/2/temp".into(),
                },
                Record::SessionRemove {
                    client_id: "gone".into(),
                },
            ])
            .await
            .expect("commit");
        store.shutdown().await.expect("shutdown");
    });
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&data)
        .expect("store dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let seg = std::fs::read(segs.last().expect("a segment")).expect("read segment");
    assert!(seg.len() > 32, "segment holds records");
    // Mode 0: the file as written. Mode 1: records only, the fuzzer adds the header.
    write(dir, "segment", &[&[0u8][..], &seg].concat());
    write(dir, "records", &[&[1u8][..], &seg[32..]].concat());
    // A torn tail: the last record cut short.
    write(dir, "torn", &[&[0u8][..], &seg[..seg.len() - 3]].concat());
    // Two segments (mode 3: split point in the next two bytes, both get headers).
    let split = 40u16.to_le_bytes();
    write(dir, "two", &[&[3u8][..], &split, &seg[32..]].concat());
    let _ = std::fs::remove_dir_all(&data);
}

fn auth_seeds(dir: &Path) {
    let pbkdf2 = hash_password_with_iterations(b"secret", 2).expect("hash");
    // `$6$`: base64 of "saltsaltsalt", then of 64 zero bytes (a well-formed entry).
    let sha512 = format!("$6$c2FsdHNhbHRzYWx0${}==", "A".repeat(86));
    let passwd = format!("# mosquitto_passwd\nalice:{pbkdf2}\n\n  bob : {sha512}\n");
    write(dir, "passwd", passwd.as_bytes());
    let acl = "# comment\ntopic read public/#\nuser alice\ntopic readwrite alice/#\n\
               topic deny alice/secret\ntopic sensors/+/temp\n\
               pattern write devices/%c/out\npattern read users/%u/in\n";
    write(dir, "acl", acl.as_bytes());
}

fn main() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    decode_seeds(&seeds.join("decode"));
    topic_seeds(&seeds.join("topic"));
    trie_seeds(&seeds.join("trie"));
    store_seeds(&seeds.join("store_segment"));
    auth_seeds(&seeds.join("auth_files"));
    proxy_seeds(&seeds.join("proxy_header"));
    println!("seeds written to {}", seeds.display());
}

fn proxy_seeds(dir: &Path) {
    use sluice::listener::proxy::{encode_v2, V2_SIGNATURE};
    let addr = |s: &str| s.parse().expect("address");
    write(dir, "v1_tcp4", b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 1883\r\n\x10");
    write(dir, "v1_tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n");
    write(dir, "v1_unknown", b"PROXY UNKNOWN\r\n");
    write(dir, "v2_tcp4", &encode_v2(addr("203.0.113.9:40000"), addr("10.0.0.1:1883")));
    write(dir, "v2_tcp6", &encode_v2(addr("[2001:db8::5]:7"), addr("[2001:db8::1]:1883")));
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    write(dir, "v2_local", &local);
}
