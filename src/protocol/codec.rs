//! The MQTT wire codec: framing and the public entry points [`decode`], [`encode`],
//! [`publish_len`] (plus [`decode_any`] for tests and tools, and
//! [`peek_connect_version`] for answering a broken CONNECT in the right format).
//!
//! Framing checks everything the fixed header can tell before the body is buffered:
//! packet type against the session state (CONNECT first and only once, no server-only
//! packets from clients), the fixed-header flags, the remaining length's encoding, and
//! the maximum packet size — so a client declaring a 256 MiB packet is refused after 5
//! bytes. Bodies are decoded by `read`, encoded by `write`; the wire format is written
//! here rather than through `mqttbytes` (see `tests` for the cross-checks against it).
//! Called by `connection`; never does I/O.

mod error;
mod properties;
mod read;
#[cfg(test)]
mod tests;
mod wire;
mod write;

pub use error::ProtocolError;

use super::packet::{ConnAck, OutboundPublish, Packet, ProtocolVersion, Publish, QoS};
use bytes::{Buf, BytesMut};
use read::*;
use wire::{read_varint, Reader, VarInt};

/// Decodes one client→server packet from the front of `buf`.
///
/// * `Ok(None)`: `buf` does not hold a whole packet yet; it is left untouched.
/// * `Ok(Some(p))`: exactly that packet's bytes were consumed.
/// * `Err(e)`: the connection must be closed (answering with `e.reason_code()` where
///   the version allows); `buf` is left untouched.
///
/// `version` is `None` until the CONNECT has been decoded: then only a CONNECT is
/// accepted, and its protocol name/level decides the version (the caller passes
/// `Some(connect.version)` from then on). `max_packet_size` bounds the whole packet
/// (fixed header included) and is checked as soon as the remaining length is read.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<Option<Packet>, ProtocolError> {
    decode_from(buf, version, max_packet_size, true)
}

/// Like [`decode`], but for bytes a server sent: accepts the server-only packets
/// (CONNACK, SUBACK, UNSUBACK, PINGRESP) and subscription identifiers in PUBLISH.
/// For tests and tools; the broker calls [`decode`].
pub fn decode_any(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<Option<Packet>, ProtocolError> {
    decode_from(buf, version, max_packet_size, false)
}

/// Appends `packet` to `out` in `version`'s wire format. The packet is assumed valid
/// (the broker builds it). Version notes: for 3.x, properties are dropped, CONNACK
/// codes map through `reason::connack_return_code_v3`, SUBACK failures become 0x80,
/// acks carry no reason, DISCONNECT is the empty client form and AUTH writes nothing.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    write::packet(packet, version, out)
}

/// Makes a CONNACK fit the client's v5 Maximum Packet Size `max`, dropping the
/// optional Reason String and User Properties if it must [MQTT-3.2.2-19] [MQTT-3.2.2-20].
/// False when it cannot fit: the connection is then closed without it [MQTT-3.1.2-24].
pub fn fit_connack(connack: &mut ConnAck, version: ProtocolVersion, max: usize) -> bool {
    write::fit_connack(connack, version, max)
}

/// Total bytes [`encode`] writes for this PUBLISH at `version` (for the client's v5
/// Maximum Packet Size).
pub fn publish_len(publish: &Publish, version: ProtocolVersion) -> usize {
    write::publish_len(publish, version)
}

/// Appends a PUBLISH built from borrowed parts: the broker's fan-out path.
pub fn encode_outbound(
    publish: &OutboundPublish<'_>,
    version: ProtocolVersion,
    out: &mut BytesMut,
) {
    write::outbound_publish(publish, version, out)
}

/// Total encoded bytes of that PUBLISH, for a subscriber's Maximum Packet Size.
pub fn outbound_len(publish: &OutboundPublish<'_>, version: ProtocolVersion) -> usize {
    write::outbound_publish_len(publish, version)
}

/// The protocol version a (possibly partial, possibly invalid) CONNECT at the front of
/// `buf` asks for, if its name and level are buffered and known. After [`decode`]
/// fails on a CONNECT, the caller uses this to send the CONNACK in the client's
/// format (v5 reason codes only to a v5 client; 3.1.1 format otherwise).
pub fn peek_connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if buf.first()? >> 4 != CONNECT {
        return None;
    }
    let VarInt::Done(_, n) = read_varint(buf.get(1..)?, "remaining length").ok()? else {
        return None;
    };
    let mut r = Reader::new(buf.get(1 + n..)?, "CONNECT");
    read::protocol_version(&mut r).ok()
}

fn decode_from(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
    from_client: bool,
) -> Result<Option<Packet>, ProtocolError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    let kind = byte1 >> 4;
    let flags = byte1 & 0x0f;
    check_type(kind, version, from_client)?;
    check_flags(kind, flags)?;

    let (remaining, len_len) = match read_varint(&buf[1..], "remaining length")? {
        VarInt::Done(v, n) => (v as usize, n),
        VarInt::Incomplete => return Ok(None),
    };
    let total = 1 + len_len + remaining;
    if total > max_packet_size {
        return Err(ProtocolError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[1 + len_len..total];
    let packet = match version {
        None => Packet::Connect(Box::new(read::connect(body)?)),
        Some(v) => read::packet(kind, flags, body, v, from_client)?,
    };
    buf.advance(total);
    Ok(Some(packet))
}

/// Packet type against the session state and the sender's role.
fn check_type(
    kind: u8,
    version: Option<ProtocolVersion>,
    from_client: bool,
) -> Result<(), ProtocolError> {
    let v5 = version.is_some_and(ProtocolVersion::is_v5);
    if kind == 0 || (kind == AUTH && version.is_some() && !v5) {
        return Err(ProtocolError::ReservedPacketType(kind));
    }
    match version {
        None if kind != CONNECT => Err(ProtocolError::FirstPacketNotConnect(packet_name(kind))),
        Some(_) if kind == CONNECT => Err(ProtocolError::SecondConnect),
        _ if from_client && matches!(kind, CONNACK | SUBACK | UNSUBACK | PINGRESP) => {
            Err(ProtocolError::ServerOnlyPacket(packet_name(kind)))
        }
        _ => Ok(()),
    }
}

/// Fixed-header flags [MQTT-2.1.3-1]; for PUBLISH, QoS 3 and DUP on QoS 0.
fn check_flags(kind: u8, flags: u8) -> Result<(), ProtocolError> {
    match kind {
        PUBLISH => {
            let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(ProtocolError::PublishQoS3)?;
            if qos == QoS::AtMostOnce && flags & 0x08 != 0 {
                return Err(ProtocolError::DupOnQoS0);
            }
            Ok(())
        }
        PUBREL | SUBSCRIBE | UNSUBSCRIBE if flags == 0b0010 => Ok(()),
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => Err(ProtocolError::InvalidFlags {
            packet: packet_name(kind),
            flags,
        }),
        _ if flags == 0 => Ok(()),
        _ => Err(ProtocolError::InvalidFlags {
            packet: packet_name(kind),
            flags,
        }),
    }
}
