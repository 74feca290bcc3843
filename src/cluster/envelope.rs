//! What travels between nodes: one message with the routing decisions its origin made.
//!
//! The same bytes go on the topic's subject (core NATS, at most once, to every node with
//! a matching filter) and, for nodes holding persistent sessions that must have it, on
//! their JetStream queue subject. Our own versioned, length-prefixed format (see
//! `crate::wire`), so a node can refuse what it does not understand.

use crate::message::{decode_properties, encode_properties, Message};
use crate::protocol::QoS;
use crate::wire::{put_bytes, put_str, BlobError, Reader};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;

const VERSION: u8 = 1;

/// A message crossing nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The node that accepted the PUBLISH (or, for a hand-off, held the session).
    pub origin: String,
    /// Nodes that get this message on their durable queue too: on the core subject they
    /// skip their durable subscribers, which the queue copy serves.
    pub durable_nodes: Vec<String>,
    /// Shared groups (`$share/group/filter`) and the node whose member takes the message.
    pub assignments: Vec<(String, String)>,
    /// A session hand-off: enqueue for this client id only, whatever the routes.
    pub session: Option<String>,
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties in the store's encoding.
    pub properties: Bytes,
    pub publisher: String,
    pub received_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

impl Envelope {
    pub fn for_message(origin: &str, m: &Message) -> Envelope {
        Envelope {
            origin: origin.to_string(),
            durable_nodes: Vec::new(),
            assignments: Vec::new(),
            session: None,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: encode_properties(&m.properties),
            publisher: m.publisher.to_string(),
            received_at_ms: m.received_at_ms,
            expires_at_ms: m.expires_at_ms,
        }
    }

    /// The message, under this node's id `id`.
    pub fn to_message(&self, id: u64) -> Message {
        Message {
            id,
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: decode_properties(self.properties.clone()).unwrap_or_default(),
            publisher: Arc::from(self.publisher.as_str()),
            received_at_ms: self.received_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.topic.len() + self.payload.len());
        out.put_u8(VERSION);
        put_str(&mut out, &self.origin);
        out.put_u16(self.durable_nodes.len() as u16);
        for n in &self.durable_nodes {
            put_str(&mut out, n);
        }
        out.put_u16(self.assignments.len() as u16);
        for (share, node) in &self.assignments {
            put_str(&mut out, share);
            put_str(&mut out, node);
        }
        match &self.session {
            Some(s) => {
                out.put_u8(1);
                put_str(&mut out, s);
            }
            None => out.put_u8(0),
        }
        put_str(&mut out, &self.topic);
        out.put_u8(self.qos as u8 | u8::from(self.retain) << 2);
        put_bytes(&mut out, &self.properties);
        put_str(&mut out, &self.publisher);
        out.put_u64(self.received_at_ms);
        out.put_u64(self.expires_at_ms.unwrap_or(0));
        put_bytes(&mut out, &self.payload);
        out.freeze()
    }

    pub fn decode(bytes: Bytes) -> Result<Envelope, BlobError> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(BlobError("unknown envelope version"));
        }
        let origin = r.string()?;
        let n = r.u16()?;
        let mut durable_nodes = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            durable_nodes.push(r.string()?);
        }
        let n = r.u16()?;
        let mut assignments = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            assignments.push((r.string()?, r.string()?));
        }
        let session = match r.u8()? {
            0 => None,
            _ => Some(r.string()?),
        };
        let topic = r.string()?;
        let bits = r.u8()?;
        let qos = QoS::from_u8(bits & 3).ok_or(BlobError("qos"))?;
        let properties = r.bytes()?;
        let publisher = r.string()?;
        let received_at_ms = r.u64()?;
        let expires_at_ms = Some(r.u64()?).filter(|&t| t != 0);
        let payload = r.bytes()?;
        Ok(Envelope {
            origin,
            durable_nodes,
            assignments,
            session,
            topic,
            payload,
            qos,
            retain: bits & 4 != 0,
            properties,
            publisher,
            received_at_ms,
            expires_at_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope {
            origin: "a".into(),
            durable_nodes: vec!["b".into(), "c".into()],
            assignments: vec![("$share/g/x/+".into(), "c".into())],
            session: Some("dev-1".into()),
            topic: "x/y".into(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Bytes::from_static(b"\x01\x00"),
            publisher: "pub".into(),
            received_at_ms: 42,
            expires_at_ms: Some(99),
        };
        assert_eq!(Envelope::decode(e.encode()).expect("decodes"), e);
        let plain = Envelope {
            session: None,
            expires_at_ms: None,
            retain: false,
            ..e
        };
        assert_eq!(Envelope::decode(plain.encode()).expect("decodes"), plain);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let bytes = Envelope::for_message(
            "n",
            &Message {
                id: 1,
                topic: "t".into(),
                payload: Bytes::from_static(b"p"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                publisher: Arc::from("c"),
                received_at_ms: 1,
                expires_at_ms: None,
            },
        )
        .encode();
        for cut in 0..bytes.len() {
            assert!(
                Envelope::decode(bytes.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
    }
}
