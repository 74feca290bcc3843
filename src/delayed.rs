//! Delayed delivery: a PUBLISH to `$delayed/<seconds>/<topic>` (EMQX's convention, so
//! existing clients work) is accepted now and published to `<topic>` when its delay has
//! passed.
//!
//! Owns the topic syntax ([`parse`]) and the [`Schedule`]: the messages waiting for their
//! due time, ordered by it, bounded in number. The broker fills it (after the message and
//! its due time are durable, for QoS ≥ 1), restores it at start-up from the store, and
//! runs the loop that takes due messages out and publishes them (`Broker::run_delayed`).
//! This module never does I/O and never calls up into the broker: the due time is
//! stored, not a countdown, so a restart or `kill -9` publishes on time or late, never
//! not at all.

use crate::message::Message;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// The topic prefix that asks for a delay.
pub const PREFIX: &str = "$delayed/";

/// Why a `$delayed/` topic was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayError {
    #[error("'$delayed/<seconds>/<topic>': {0:?} is not a number of seconds")]
    NotSeconds(String),
    #[error("'$delayed/<seconds>/<topic>' names no topic")]
    NoTopic,
    #[error("a delay of {secs}s is over delayed.max_delay_secs {max}s")]
    TooLong { secs: u64, max: u32 },
    #[error("delayed.max_messages {0} messages are already waiting")]
    Full(usize),
}

/// Splits `$delayed/<seconds>/<topic>` into the delay and the target topic; `None` for
/// any other topic. The target is still to be checked like any topic name.
pub fn parse(topic: &str, max_delay_secs: u32) -> Option<Result<(u32, &str), DelayError>> {
    let rest = topic.strip_prefix(PREFIX)?;
    let (secs, target) = rest.split_once('/').unwrap_or((rest, ""));
    let parsed = if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        Err(DelayError::NotSeconds(secs.to_owned()))
    } else if target.is_empty() {
        Err(DelayError::NoTopic)
    } else {
        // All digits: only an overflow can fail, and that is too long anyway.
        match secs.parse::<u64>() {
            Ok(n) if n <= u64::from(max_delay_secs) => Ok((n as u32, target)),
            _ => Err(DelayError::TooLong {
                secs: secs.parse().unwrap_or(u64::MAX),
                max: max_delay_secs,
            }),
        }
    };
    Some(parsed)
}

/// Messages waiting for their due time (Unix ms), earliest first; ties in arrival order
/// (message ids grow), so one publisher's messages due at the same time keep its order.
#[derive(Debug)]
pub struct Schedule {
    waiting: Mutex<BTreeMap<(u64, u64), Arc<Message>>>,
    /// Wakes the loop when an earlier due time arrives.
    changed: Notify,
    max: usize,
}

impl Schedule {
    pub fn new(max: usize) -> Schedule {
        Schedule {
            waiting: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            max,
        }
    }

    /// Reserves room for one more message, before it is made durable: refused when
    /// `max` are waiting. Restored messages bypass the bound ([`Schedule::restore`]).
    pub fn has_room(&self) -> Result<(), DelayError> {
        if self.waiting.lock().len() >= self.max {
            return Err(DelayError::Full(self.max));
        }
        Ok(())
    }

    /// Adds a message due at `due_ms`.
    pub fn insert(&self, due_ms: u64, message: Arc<Message>) {
        let mut waiting = self.waiting.lock();
        let earliest = waiting.keys().next().is_none_or(|(d, _)| due_ms < *d);
        waiting.insert((due_ms, message.id), message);
        drop(waiting);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Adds a message recovered from the store, whatever the bound.
    pub fn restore(&self, due_ms: u64, message: Arc<Message>) {
        self.insert(due_ms, message);
    }

    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The earliest due time, if any message waits.
    pub fn next_due(&self) -> Option<u64> {
        self.waiting.lock().keys().next().map(|(d, _)| *d)
    }

    /// Takes out up to `max` messages due at or before `now_ms`, earliest first.
    pub fn take_due(&self, now_ms: u64, max: usize) -> Vec<(u64, Arc<Message>)> {
        let mut waiting = self.waiting.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(entry) = waiting.first_entry() else {
                break;
            };
            if entry.key().0 > now_ms {
                break;
            }
            let ((due, _), message) = entry.remove_entry();
            out.push((due, message));
        }
        out
    }

    /// Every waiting message with its due time, earliest first (for the admin API).
    pub fn list(&self) -> Vec<(u64, Arc<Message>)> {
        self.waiting
            .lock()
            .iter()
            .map(|((due, _), m)| (*due, Arc::clone(m)))
            .collect()
    }

    /// Takes the message with id `id` out before it comes due (the caller ends its Delay
    /// record); `None` when no such message waits.
    pub fn cancel(&self, id: u64) -> Option<(u64, Arc<Message>)> {
        let mut waiting = self.waiting.lock();
        let key = *waiting.keys().find(|(_, i)| *i == id)?;
        waiting.remove(&key).map(|m| (key.0, m))
    }

    /// Resolves when a message with an earlier due time than before was added.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageProperties, QoS};

    fn msg(id: u64) -> Arc<Message> {
        Arc::new(Message {
            id,
            topic: "t".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: MessageProperties::default(),
            publisher: Arc::from("p"),
            received_at_ms: 0,
            expires_at_ms: None,
        })
    }

    #[test]
    fn parse_table() {
        type Parsed<'a> = Option<Result<(u32, &'a str), DelayError>>;
        let cases: &[(&str, Parsed)] = &[
            ("a/b", None),
            ("$delayed", None),
            ("$delayed/10/a/b", Some(Ok((10, "a/b")))),
            ("$delayed/0/a", Some(Ok((0, "a")))),
            ("$delayed/100/a", Some(Ok((100, "a")))),
            (
                "$delayed/101/a",
                Some(Err(DelayError::TooLong {
                    secs: 101,
                    max: 100,
                })),
            ),
            (
                "$delayed/99999999999999999999999/a",
                Some(Err(DelayError::TooLong {
                    secs: u64::MAX,
                    max: 100,
                })),
            ),
            ("$delayed/10", Some(Err(DelayError::NoTopic))),
            ("$delayed/10/", Some(Err(DelayError::NoTopic))),
            (
                "$delayed/x/a",
                Some(Err(DelayError::NotSeconds("x".into()))),
            ),
            ("$delayed//a", Some(Err(DelayError::NotSeconds("".into())))),
            (
                "$delayed/-1/a",
                Some(Err(DelayError::NotSeconds("-1".into()))),
            ),
        ];
        for (topic, want) in cases {
            assert_eq!(&parse(topic, 100), want, "{topic}");
        }
    }

    #[test]
    fn due_messages_come_out_earliest_first_and_ties_in_id_order() {
        let s = Schedule::new(10);
        s.insert(300, msg(1));
        s.insert(100, msg(3));
        s.insert(100, msg(2));
        s.insert(200, msg(4));
        assert_eq!(s.next_due(), Some(100));
        let ids = |v: Vec<(u64, Arc<Message>)>| v.iter().map(|(_, m)| m.id).collect::<Vec<_>>();
        assert_eq!(ids(s.take_due(99, 10)), Vec::<u64>::new());
        assert_eq!(ids(s.take_due(200, 10)), vec![2, 3, 4]);
        assert_eq!(ids(s.take_due(1000, 10)), vec![1]);
        assert!(s.is_empty());
    }

    #[test]
    fn listed_in_due_order_and_cancelled_by_id() {
        let s = Schedule::new(10);
        s.insert(200, msg(1));
        s.insert(100, msg(2));
        let listed: Vec<(u64, u64)> = s.list().iter().map(|(d, m)| (*d, m.id)).collect();
        assert_eq!(listed, vec![(100, 2), (200, 1)]);
        assert_eq!(s.cancel(1).map(|(d, m)| (d, m.id)), Some((200, 1)));
        assert!(s.cancel(1).is_none());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn bounded_in_number() {
        let s = Schedule::new(2);
        s.insert(1, msg(1));
        assert!(s.has_room().is_ok());
        s.insert(1, msg(2));
        assert_eq!(s.has_room(), Err(DelayError::Full(2)));
        s.restore(1, msg(3));
        assert_eq!(s.len(), 3, "recovered messages are never dropped");
    }
}
