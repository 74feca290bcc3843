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
