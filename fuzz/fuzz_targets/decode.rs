//! The MQTT codec on arbitrary bytes: `decode`/`decode_any` must never panic, must honour
//! their buffer contract, and every packet they accept must survive `encode` →
//! `decode_any` unchanged (a round-trip oracle).
//!
//! Input: one mode byte, then the bytes of the stream.
//! * bits 0-1: the session's version: 0 = none yet (CONNECT first; the CONNECT's version
//!   is used from then on, as the broker does), 1 = 3.1, 2 = 3.1.1, 3 = 5.0;
//! * bit 2: `decode_any` (server→client bytes) instead of `decode`.
//!
//! Packets that legitimately do not round-trip are normalised before comparing, each
//! for a reason the encoder documents (see `normalise`).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice::protocol::{
    decode, decode_any, encode, peek_connect_version, publish_len, Packet, ProtocolVersion,
};

const MAX_PACKET: usize = 64 * 1024;
/// Re-encoding may differ in length from the input (v5 acks and DISCONNECT are encoded in
/// their shortest form).
const MAX_REDECODE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut version = match mode & 0x03 {
        0 => None,
        1 => Some(ProtocolVersion::V3_1),
        2 => Some(ProtocolVersion::V3_1_1),
        _ => Some(ProtocolVersion::V5),
    };
    let any = mode & 0x04 != 0;
    let _ = peek_connect_version(stream);

    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.clone();
        let result = if any {
            decode_any(&mut buf, version, MAX_PACKET)
        } else {
            decode(&mut buf, version, MAX_PACKET)
        };
        let packet = match result {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => {
                // Contract: a partial packet or an error leaves the buffer untouched.
                assert_eq!(buf, before, "buffer changed on Ok(None)/Err");
                break;
            }
        };
        let consumed = before.len() - buf.len();
        assert!(
            consumed >= 2,
            "a packet is at least 2 bytes, consumed {consumed}"
        );
        assert!(
            consumed <= MAX_PACKET,
            "consumed {consumed} > max packet size"
        );

        let v = match (&packet, version) {
            (Packet::Connect(c), None) => c.version,
            (Packet::Connect(_), Some(_)) => panic!("second CONNECT accepted"),
            (_, None) => panic!("{} accepted before CONNECT", packet.name()),
            (_, Some(v)) => v,
        };
        if !any {
            assert!(
                !matches!(
                    packet,
                    Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp
                ),
                "server-only {} accepted from a client",
                packet.name()
            );
        }
        round_trip(&packet, v);
        if version.is_none() {
            version = Some(v);
        }
    }
});

fn round_trip(packet: &Packet, v: ProtocolVersion) {
    let mut wire = BytesMut::new();
    encode(packet, v, &mut wire);
    if let Packet::Publish(p) = packet {
        assert_eq!(publish_len(p, v), wire.len(), "publish_len disagrees");
    }
    let redecode_version = match packet {
        Packet::Connect(_) => None,
        _ => Some(v),
    };
    let mut buf = wire.clone();
    let back = match decode_any(&mut buf, redecode_version, MAX_REDECODE) {
        Ok(Some(p)) => p,
        Ok(None) => panic!("our encoding of {packet:?} at {v:?} is incomplete: {wire:x?}"),
        Err(e) => panic!("our encoding of {packet:?} at {v:?} does not decode: {e}: {wire:x?}"),
    };
    assert!(
        buf.is_empty(),
        "{} bytes left after our encoding",
        buf.len()
    );
    assert_eq!(back, normalise(packet.clone(), v), "round trip at {v:?}");

    // Encoding is a fixed point after one round.
    let mut again = BytesMut::new();
    encode(&back, v, &mut again);
    assert_eq!(again, wire, "re-encoding differs at {v:?}");
}

/// What `encode` deliberately changes, so the decoded packet is compared with this.
fn normalise(packet: Packet, v: ProtocolVersion) -> Packet {
    match packet {
        // Session Present must be 0 with a failure code [MQTT-3.2.2-4] (v5: -6); the
        // encoder clears it. (A server sending it set is the server's bug.)
        // MQTT 3.1 has no Session Present flag: its CONNACK's first byte is reserved and
        // the encoder writes 0 (3.1 §3.2).
        Packet::ConnAck(mut c) => {
            c.session_present &= c.code == 0 && v != ProtocolVersion::V3_1;
            Packet::ConnAck(c)
        }
        // 3.x SUBACK has one failure code, 0x80; v5 failure codes map down to it.
        Packet::SubAck(mut a) if !v.is_v5() => {
            for r in &mut a.reasons {
                if *r >= 0x80 {
                    *r = 0x80;
                }
            }
            Packet::SubAck(a)
        }
        p => p,
    }
}
