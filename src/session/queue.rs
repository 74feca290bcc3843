//! A session's queue of deliveries waiting to be sent, in priority levels.
//!
//! Owns the order in which queued messages leave: the highest level first, oldest first
//! within a level (so one publisher's messages of one level keep their order); eviction,
//! when a limit is hit, takes the oldest of the lowest level. Levels come from the
//! operator's `[[priority]]` tables ([`Priorities`]), never from anything a client sends.
//! Called only by [`super::Session`] under its lock; it never does I/O.
//!
//! Memory: level 0 (every topic no `[[priority]]` names) is the plain queue; the other
//! levels are allocated on the first message that needs one, so a broker without
//! priorities pays one pointer per session. A high-priority message behind any number of
//! level-0 messages is next out without a scan.

use super::Delivery;
use crate::protocol::topic;
use std::collections::{BTreeMap, VecDeque};

/// The operator's `[[priority]]` tables: topic filter → level. Checked in order; the
/// highest matching level wins.
#[derive(Debug, Default)]
pub struct Priorities {
    filters: Vec<(String, u8)>,
}

impl Priorities {
    /// From the configured (filter, level) pairs; level 0 is everyone's anyway.
    pub fn new(levels: impl IntoIterator<Item = (String, u8)>) -> Priorities {
        Priorities {
            filters: levels.into_iter().filter(|(_, l)| *l > 0).collect(),
        }
    }

    /// The level of a message on `topic` (0 when no table matches; free when there are
    /// no tables).
    pub fn level(&self, topic_name: &str) -> u8 {
        self.filters
            .iter()
            .filter(|(f, _)| topic::matches(f, topic_name))
            .map(|(_, l)| *l)
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Default)]
pub(super) struct SessionQueue {
    normal: VecDeque<Delivery>,
    /// Levels above 0, highest last. Boxed: one pointer instead of an empty map's three
    /// words in every session of a broker that has no priorities.
    #[allow(clippy::box_collection)]
    raised: Option<Box<BTreeMap<u8, VecDeque<Delivery>>>>,
    len: usize,
}

impl SessionQueue {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn push_back(&mut self, delivery: Delivery, level: u8) {
        self.len += 1;
        if level == 0 {
            self.normal.push_back(delivery);
        } else {
            self.raised
                .get_or_insert_with(Default::default)
                .entry(level)
                .or_default()
                .push_back(delivery);
        }
    }

    /// Puts a delivery back at the front of its level (one taken out and returned).
    pub(super) fn push_front(&mut self, delivery: Delivery, level: u8) {
        self.len += 1;
        if level == 0 {
            self.normal.push_front(delivery);
        } else {
            self.raised
                .get_or_insert_with(Default::default)
                .entry(level)
                .or_default()
                .push_front(delivery);
        }
    }

    /// The next to send: the oldest of the highest non-empty level.
    pub(super) fn front(&self) -> Option<&Delivery> {
        if let Some(raised) = &self.raised {
            if let Some(q) = raised.values().rev().find(|q| !q.is_empty()) {
                return q.front();
            }
        }
        self.normal.front()
    }

    pub(super) fn pop_front(&mut self) -> Option<Delivery> {
        let popped = match self.raised.as_mut() {
            Some(raised) => match raised.values_mut().rev().find(|q| !q.is_empty()) {
                Some(q) => q.pop_front(),
                None => self.normal.pop_front(),
            },
            None => self.normal.pop_front(),
        };
        self.after_pop(popped)
    }

    /// What a full queue gives up first: the oldest of the lowest non-empty level.
    pub(super) fn pop_lowest(&mut self) -> Option<Delivery> {
        let popped = match self.normal.pop_front() {
            Some(d) => Some(d),
            None => self
                .raised
                .as_mut()
                .and_then(|r| r.values_mut().find(|q| !q.is_empty()))
                .and_then(|q| q.pop_front()),
        };
        self.after_pop(popped)
    }

    fn after_pop(&mut self, popped: Option<Delivery>) -> Option<Delivery> {
        if popped.is_some() {
            self.len -= 1;
            if self.len == 0 {
                // Give a burst's memory back once the queue is empty.
                self.raised = None;
            }
        }
        popped
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Delivery) -> bool) {
        self.normal.retain(&mut keep);
        if let Some(raised) = self.raised.as_mut() {
            for q in raised.values_mut() {
                q.retain(&mut keep);
            }
        }
        self.len = self.iter().count();
    }

    /// When the oldest queued message was received: the oldest front of any level.
    pub(super) fn oldest_received_ms(&self) -> Option<u64> {
        let raised = self
            .raised
            .iter()
            .flat_map(|r| r.values().filter_map(|q| q.front()));
        self.normal
            .front()
            .into_iter()
            .chain(raised)
            .map(|d| d.message.received_at_ms)
            .min()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.raised
            .iter()
            .flat_map(|r| r.values().rev().flatten())
            .chain(self.normal.iter())
    }

    /// Everything, in the order it would have been sent.
    pub(super) fn drain(&mut self) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(self.len);
        while let Some(d) = self.pop_front() {
            out.push(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn d(id: u64) -> Delivery {
        crate::session::tests::delivery(id, QoS::AtLeastOnce)
    }

    fn ids(v: Vec<Delivery>) -> Vec<u64> {
        v.iter().map(|d| d.message.id).collect()
    }

    #[test]
    fn highest_level_first_fifo_within_a_level() {
        let mut q = SessionQueue::default();
        for (id, level) in [(1, 0), (2, 0), (3, 9), (4, 5), (5, 9), (6, 0)] {
            q.push_back(d(id), level);
        }
        assert_eq!(q.len(), 6);
        assert_eq!(q.front().map(|d| d.message.id), Some(3));
        assert_eq!(ids(q.iter().cloned().collect()), vec![3, 5, 4, 1, 2, 6]);
        assert_eq!(ids(q.drain()), vec![3, 5, 4, 1, 2, 6]);
        assert!(q.is_empty() && q.raised.is_none());
    }

    #[test]
    fn eviction_takes_the_oldest_of_the_lowest_level() {
        let mut q = SessionQueue::default();
        q.push_back(d(1), 9);
        q.push_back(d(2), 3);
        q.push_back(d(3), 0);
        assert_eq!(q.pop_lowest().map(|d| d.message.id), Some(3));
        assert_eq!(q.pop_lowest().map(|d| d.message.id), Some(2));
        q.retain(|d| d.message.id != 1);
        assert!(q.is_empty());
    }

    #[test]
    fn priorities_match_filters_and_the_highest_wins() {
        let p = Priorities::new([("alarms/#".to_string(), 9), ("+/fire".to_string(), 5)]);
        assert_eq!(p.level("alarms/fire"), 9);
        assert_eq!(p.level("kitchen/fire"), 5);
        assert_eq!(p.level("telemetry/t"), 0);
        assert_eq!(Priorities::default().level("alarms/x"), 0);
    }
}
