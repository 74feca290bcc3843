//! An application message as the broker holds it after accepting a PUBLISH (or a will).
//!
//! One `Arc<Message>` is shared by every subscriber queue it lands in: topic and payload
//! are allocated once per message, never per subscriber. The payload owns its bytes (the
//! codec copies it out of the socket buffer), so a queued message pins nothing else.

use crate::protocol::{MessageProperties, QoS};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct Message {
    /// Broker-wide, monotonic: the store's key for this message and its queue order.
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    /// QoS as published; each subscriber gets the lower of this and its subscription's.
    pub qos: QoS,
    /// The retain flag as published.
    pub retain: bool,
    /// v5 properties forwarded untouched (expiry is rewritten on delivery).
    pub properties: MessageProperties,
    /// Client id of the publisher (for no-local and dead-letter reports).
    pub publisher: Arc<str>,
    pub received_at_ms: u64,
    /// From the v5 Message Expiry Interval.
    pub expires_at_ms: Option<u64>,
}

impl Message {
    /// Bytes this message costs a queue (payload and topic).
    pub fn cost(&self) -> usize {
        self.payload.len() + self.topic.len()
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// Seconds of life left, for the Message Expiry Interval sent to a subscriber
    /// [MQTT-3.3.2-6].
    pub fn remaining_expiry_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| {
            let left_ms = at.saturating_sub(now_ms);
            u32::try_from(left_ms.div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const PROPS_VERSION: u8 = 1;

/// Encodes the v5 properties of a message for the store (the expiry travels separately,
/// as an absolute time).
pub fn encode_properties(p: &MessageProperties) -> Bytes {
    use crate::wire::{put_bytes, put_str};
    use bytes::BufMut;
    if p.is_empty() {
        return Bytes::new();
    }
    let mut out = bytes::BytesMut::new();
    out.put_u8(PROPS_VERSION);
    let flags = u8::from(p.payload_format_indicator.is_some())
        | u8::from(p.content_type.is_some()) << 1
        | u8::from(p.response_topic.is_some()) << 2
        | u8::from(p.correlation_data.is_some()) << 3;
    out.put_u8(flags);
    if let Some(v) = p.payload_format_indicator {
        out.put_u8(v);
    }
    if let Some(v) = &p.content_type {
        put_str(&mut out, v);
    }
    if let Some(v) = &p.response_topic {
        put_str(&mut out, v);
    }
    if let Some(v) = &p.correlation_data {
        put_bytes(&mut out, v);
    }
    out.put_u32(p.user_properties.len() as u32);
    for (k, v) in &p.user_properties {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out.freeze()
}

pub fn decode_properties(blob: Bytes) -> Result<MessageProperties, crate::wire::BlobError> {
    use crate::wire::{BlobError, Reader};
    let mut p = MessageProperties::default();
    if blob.is_empty() {
        return Ok(p);
    }
    let mut r = Reader(blob);
    if r.u8()? != PROPS_VERSION {
        return Err(BlobError("unknown properties version"));
    }
    let flags = r.u8()?;
    if flags & 1 != 0 {
        p.payload_format_indicator = Some(r.u8()?);
    }
    if flags & 2 != 0 {
        p.content_type = Some(r.string()?);
    }
    if flags & 4 != 0 {
        p.response_topic = Some(r.string()?);
    }
    if flags & 8 != 0 {
        p.correlation_data = Some(r.bytes()?);
    }
    let n = r.u32()?;
    for _ in 0..n.min(65_536) {
        let k = r.string()?;
        let v = r.string()?;
        p.user_properties.push((k, v));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip() {
        let p = MessageProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: None,
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        };
        let back = decode_properties(encode_properties(&p)).expect("decodes");
        assert_eq!(back, p);
        assert_eq!(
            decode_properties(encode_properties(&MessageProperties::default())).expect("empty"),
            MessageProperties::default()
        );
        let mut truncated = encode_properties(&p);
        truncated.truncate(5);
        assert!(decode_properties(truncated).is_err());
    }
}
