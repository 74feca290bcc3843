//! The header sluice puts on a dead letter, read back: which dead letter it is (reason,
//! original topic, publisher, subscriber, attempts, first seen) and the original
//! message's own properties.
//!
//! Used by the admin API (src/admin/mod.rs) to list dead letters and to replay them:
//! a replay re-publishes the original payload to the original topic at QoS 1 with the
//! original properties ([`original_properties`]: the header removed, no expiry), not
//! retained. Never touches a queue or the network itself.

use crate::dead_letter::DeadLetterReason;
use crate::protocol::MessageProperties;

/// The names of the user properties sluice puts in front of a dead letter's own, in order
/// (`subscriber` only when there was one).
pub const DEAD_LETTER_PROPERTIES: [&str; 6] = [
    "reason",
    "original-topic",
    "publisher",
    "subscriber",
    "attempts",
    "first-seen",
];

/// `--reason` values: a dead-letter reason label.
pub fn parse_reason(s: &str) -> Result<DeadLetterReason, String> {
    DeadLetterReason::from_label(s).ok_or_else(|| {
        let labels: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.label()).collect();
        format!("unknown reason {s:?} (one of: {})", labels.join(", "))
    })
}

/// The header sluice put on a dead letter, read back from its user properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeader {
    pub reason: DeadLetterReason,
    pub original_topic: String,
    pub publisher: String,
    pub subscriber: Option<String>,
    pub attempts: u32,
    pub first_seen: String,
}

/// Splits a dead letter's user properties into the header sluice added (the first five
/// or six, in the order [`DEAD_LETTER_PROPERTIES`] names them) and the original message's
/// own. None when they do not start that way.
pub fn split_user_properties(
    user: &[(String, String)],
) -> Option<(DeadLetterHeader, &[(String, String)])> {
    let mut used = 0;
    let mut take = |name: &str| match user.get(used) {
        Some((k, v)) if k == name => {
            used += 1;
            Some(v.clone())
        }
        _ => None,
    };
    let reason = DeadLetterReason::from_label(&take("reason")?)?;
    let original_topic = take("original-topic")?;
    let publisher = take("publisher")?;
    let subscriber = take("subscriber");
    let attempts = take("attempts")?.parse().ok()?;
    let first_seen = take("first-seen")?;
    Some((
        DeadLetterHeader {
            reason,
            original_topic,
            publisher,
            subscriber,
            attempts,
            first_seen,
        },
        &user[used..],
    ))
}

/// The original message's properties, as the dead letter carries them minus the header.
pub fn original_properties(dead_letter: &MessageProperties) -> Option<MessageProperties> {
    let (_, own) = split_user_properties(&dead_letter.user_properties)?;
    Some(MessageProperties {
        user_properties: own.to_vec(),
        // A dead letter carries no expiry (sluice removes it); the replay does not
        // invent one.
        message_expiry_interval: None,
        ..dead_letter.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Publish, QoS};
    use bytes::Bytes;

    fn up(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn header(
        reason: &str,
        topic: &str,
        publisher: &str,
        sub: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut v = up(&[
            ("reason", reason),
            ("original-topic", topic),
            ("publisher", publisher),
        ]);
        if let Some(s) = sub {
            v.push(("subscriber".into(), s.into()));
        }
        v.extend(up(&[
            ("attempts", "2"),
            ("first-seen", "2024-01-01T00:00:00.000Z"),
        ]));
        v
    }

    fn dead_letter(reason: &str, topic: &str, publisher: &str, own: &[(&str, &str)]) -> Publish {
        let mut user = header(reason, topic, publisher, Some("svc"));
        user.extend(up(own));
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("$DLQ/{reason}/{topic}"),
            packet_id: 7,
            payload: Bytes::from_static(b"21.5"),
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                response_topic: Some("r/t".into()),
                payload_format_indicator: Some(1),
                user_properties: user,
                message_expiry_interval: None,
            },
            topic_alias: None,
            subscription_identifiers: vec![3],
        }
    }

    #[test]
    fn header_is_split_from_the_originals_own_properties() {
        // The original's own properties may reuse the header's names: only the leading
        // header is removed.
        let mut user = header("max_attempts", "a/b", "dev-1", Some("svc"));
        user.extend(up(&[("reason", "mine"), ("unit", "C")]));
        let (h, own) = split_user_properties(&user).expect("a dead-letter header");
        assert_eq!(
            h,
            DeadLetterHeader {
                reason: DeadLetterReason::MaxAttempts,
                original_topic: "a/b".into(),
                publisher: "dev-1".into(),
                subscriber: Some("svc".into()),
                attempts: 2,
                first_seen: "2024-01-01T00:00:00.000Z".into(),
            }
        );
        assert_eq!(own, up(&[("reason", "mine"), ("unit", "C")]).as_slice());

        // No subscriber (no_subscribers): five header properties.
        let mut user = header("no_subscribers", "x", "p", None);
        user.extend(up(&[("k", "v")]));
        let (h, own) = split_user_properties(&user).expect("a dead-letter header");
        assert_eq!(h.subscriber, None);
        assert_eq!(own, up(&[("k", "v")]).as_slice());

        // Nothing of its own.
        let user = header("expired", "x", "p", Some("s"));
        assert_eq!(split_user_properties(&user).expect("header").1.len(), 0);
    }

    #[test]
    fn properties_that_are_not_a_header_are_refused() {
        let cases: Vec<Vec<(String, String)>> = vec![
            vec![],
            up(&[("unit", "C")]),
            // Wrong order.
            up(&[
                ("original-topic", "a"),
                ("reason", "expired"),
                ("publisher", "p"),
                ("attempts", "1"),
                ("first-seen", "t"),
            ]),
            // Unknown reason.
            header("bogus", "a", "p", None),
            // Attempts not a number.
            up(&[
                ("reason", "expired"),
                ("original-topic", "a"),
                ("publisher", "p"),
                ("attempts", "many"),
                ("first-seen", "t"),
            ]),
            // Truncated.
            header("expired", "a", "p", None)[..4].to_vec(),
        ];
        for user in cases {
            assert!(split_user_properties(&user).is_none(), "{user:?}");
        }
    }

    #[test]
    fn original_properties_keep_everything_but_the_header() {
        let dl = dead_letter("too_large", "s/1", "dev", &[("unit", "C")]);
        let p = original_properties(&dl.properties).expect("original properties");
        assert_eq!(
            p,
            MessageProperties {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                response_topic: Some("r/t".into()),
                payload_format_indicator: Some(1),
                user_properties: up(&[("unit", "C")]),
                message_expiry_interval: None,
            }
        );
    }
}
