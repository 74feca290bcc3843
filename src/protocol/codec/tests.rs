//! Codec tests: round trips at every version, packets captured from real clients,
//! framing edge cases, one case per validation (checking the reason code), and
//! cross-checks against `mqttbytes`. Run with `cargo test --lib protocol`.

use super::*;
use crate::protocol::packet::*;
use bytes::Bytes;

const MAX: usize = 1 << 20;

#[test]
fn smoke_publish_round_trip() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 7,
        payload: Bytes::from_static(b"hi"),
        properties: MessageProperties::default(),
        topic_alias: None,
        subscription_identifiers: vec![],
    });
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut buf = BytesMut::new();
        encode(&p, v, &mut buf);
        let got = decode(&mut buf, Some(v), MAX)
            .expect("decodes")
            .expect("whole");
        assert_eq!(got, p);
        assert!(buf.is_empty());
    }
}
