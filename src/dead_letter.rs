//! Turning an undeliverable message into a dead letter.
//!
//! Owns the dead-letter reasons and the shape of a dead letter: topic
//! `<prefix>/<reason>/<original topic>`, the original payload, QoS 1, and (for MQTT 5
//! subscribers) user properties naming the reason, original topic, publisher, subscriber,
//! attempts and first-seen time, followed by the original message's own properties. The
//! broker publishes what [`build`] returns like any message, so the built-in dead-letter
//! session (and anyone allowed to subscribe to `<prefix>/#`) receives it durably.
//! Never called for a message that is itself a dead letter: those are shed, loudly.

use crate::message::Message;
use crate::protocol::QoS;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Why a message could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The subscriber's queue was over its message or byte limit.
    QueueFull,
    /// Sent `max_delivery_attempts` times without a PUBACK.
    MaxAttempts,
    /// Its MQTT 5 Message Expiry Interval passed while it was queued.
    Expired,
    /// Larger than the subscriber's MQTT 5 Maximum Packet Size.
    TooLarge,
    /// A QoS ≥ 1 message that matched no subscription.
    NoSubscribers,
    /// Its subscriber's session ended with it still queued.
    SessionExpired,
    /// A `$delayed/` publish from an MQTT 3.x client that could not be taken (malformed
    /// topic, delay over the maximum, too many waiting); v5 clients get a reason code.
    DelayRefused,
}

impl DeadLetterReason {
    /// The topic level and metric label.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterReason::QueueFull => "queue_full",
            DeadLetterReason::MaxAttempts => "max_attempts",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::NoSubscribers => "no_subscribers",
            DeadLetterReason::SessionExpired => "session_expired",
            DeadLetterReason::DelayRefused => "delay_refused",
        }
    }

    pub const ALL: [DeadLetterReason; 7] = [
        DeadLetterReason::QueueFull,
        DeadLetterReason::MaxAttempts,
        DeadLetterReason::Expired,
        DeadLetterReason::TooLarge,
        DeadLetterReason::NoSubscribers,
        DeadLetterReason::SessionExpired,
        DeadLetterReason::DelayRefused,
    ];

    pub fn from_label(label: &str) -> Option<DeadLetterReason> {
        DeadLetterReason::ALL
            .into_iter()
            .find(|r| r.label() == label)
    }
}

/// Whether `topic` is a dead letter (under `prefix`).
pub fn is_dead_letter(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Splits a dead-letter topic into its reason and original topic.
pub fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    rest.split_once('/')
}

/// Who and what a dead letter reports.
#[derive(Debug)]
pub struct Context<'a> {
    pub reason: DeadLetterReason,
    pub subscriber: Option<&'a str>,
    pub attempts: u32,
}

/// The dead letter for `original`, with message id `id`.
pub fn build(prefix: &str, id: u64, original: &Message, ctx: &Context<'_>, now_ms: u64) -> Message {
    let mut properties = original.properties.clone();
    let first_seen = humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_millis(original.received_at_ms),
    )
    .to_string();
    let mut user = vec![
        ("reason".to_string(), ctx.reason.label().to_string()),
        ("original-topic".to_string(), original.topic.clone()),
        ("publisher".to_string(), original.publisher.to_string()),
    ];
    if let Some(s) = ctx.subscriber {
        user.push(("subscriber".to_string(), s.to_string()));
    }
    user.push(("attempts".to_string(), ctx.attempts.to_string()));
    user.push(("first-seen".to_string(), first_seen));
    user.append(&mut properties.user_properties);
    properties.user_properties = user;
    // A dead letter waits for an operator: it does not expire with the original.
    properties.message_expiry_interval = None;
    Message {
        id,
        topic: format!("{prefix}/{}/{}", ctx.reason.label(), original.topic),
        payload: original.payload.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
        publisher: Arc::clone(&original.publisher),
        received_at_ms: now_ms,
        expires_at_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageProperties;
    use bytes::Bytes;

    #[test]
    fn topic_helpers() {
        let cases = [
            (
                "$DLQ",
                "$DLQ/queue_full/a/b",
                true,
                Some(("queue_full", "a/b")),
            ),
            ("$DLQ", "$DLQ", false, None),
            ("$DLQ", "$DLQX/queue_full/a", false, None),
            ("$DLQ", "a/$DLQ/x", false, None),
            ("$DL/q", "$DL/q/expired/t", true, Some(("expired", "t"))),
        ];
        for (prefix, topic, is_dl, parsed) in cases {
            assert_eq!(is_dead_letter(prefix, topic), is_dl, "{topic}");
            assert_eq!(parse_topic(prefix, topic), parsed, "{topic}");
        }
        for r in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::from_label(r.label()), Some(r));
        }
    }

    #[test]
    fn dead_letter_carries_reason_and_original_properties() {
        let original = Message {
            id: 1,
            topic: "sensors/7/temp".into(),
            payload: Bytes::from_static(b"21.5"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                message_expiry_interval: Some(5),
                user_properties: vec![("unit".into(), "C".into())],
                ..Default::default()
            },
            publisher: Arc::from("dev-7"),
            received_at_ms: 0,
            expires_at_ms: Some(5000),
        };
        let ctx = Context {
            reason: DeadLetterReason::MaxAttempts,
            subscriber: Some("svc"),
            attempts: 5,
        };
        let dl = build("$DLQ", 9, &original, &ctx, 10);
        assert_eq!(dl.topic, "$DLQ/max_attempts/sensors/7/temp");
        assert_eq!(dl.payload, original.payload);
        assert_eq!(dl.qos, QoS::AtLeastOnce);
        assert!(!dl.retain);
        assert_eq!(dl.expires_at_ms, None);
        assert_eq!(dl.properties.content_type.as_deref(), Some("text/plain"));
        let names: Vec<&str> = dl
            .properties
            .user_properties
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "reason",
                "original-topic",
                "publisher",
                "subscriber",
                "attempts",
                "first-seen",
                "unit"
            ]
        );
        assert_eq!(
            dl.properties.user_properties[5].1,
            "1970-01-01T00:00:00.000Z"
        );
    }
}
