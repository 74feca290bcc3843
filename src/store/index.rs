//! The in-memory liveness index: which records in the log still matter, and where the
//! one copy that counts lives.
//!
//! Owns: message id → location and remaining references (queued entries + retained
//! topics; an entry lives while something refers to it); session → queue (in message-id order) with attempt counts; session → latest
//! Session record; retained topic → message id; unreleased QoS 2 packet ids; live bytes
//! per segment. Built by recovery (replaying the log through [`Index::apply`]) and then
//! owned by the writer thread, which applies every record it writes through the *same*
//! function, so the writer's view and a later replay's view never diverge.
//!
//! It never does I/O, never holds payloads, and never decides when to compact — it only
//! answers "is the record at this location live" and "what must be carried forward".
//!
//! Rules that keep replay equal to the writer's state after compaction:
//! * a repeated copy of a record (carried forward, or left behind by a crash between
//!   carrying and deleting) moves the location to the newest copy ("latest wins");
//! * carrying a message forward also carries every live Enqueue (+ Attempt, Outbound) and Retain
//!   that refers to it, so on replay no reference precedes its message;
//! * tombstones (Ack, SessionRemove, RetainClear, Qos2Released, DelayDone) are never live: they
//!   only matter while older segments exist, and compaction deletes oldest first.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracing::debug;

use super::Record;

/// Where a record lives: segment seq, byte offset of its frame, framed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

#[derive(Debug)]
struct MsgEntry {
    loc: Loc,
    queued_by: Vec<String>,
    retained_as: Vec<String>,
    /// Waiting to be published later (a live Delay record refers to it).
    delayed: bool,
    /// Ever referenced by an Enqueue or Retain. A message nobody referenced yet is kept
    /// (a Retain may come in a later commit) until its segment is compacted.
    referenced: bool,
}

impl MsgEntry {
    fn refs(&self) -> usize {
        self.queued_by.len() + self.retained_as.len() + usize::from(self.delayed)
    }
    fn counts_as_live(&self) -> bool {
        self.refs() > 0 || !self.referenced
    }
}

/// One queued (unacked) delivery.
#[derive(Debug, Clone)]
pub(crate) struct QEntry {
    pub enq: Loc,
    pub attempts: u32,
    pub att: Option<Loc>,
    /// Outbound QoS 2 packet id, PUBREC received, and where that record is.
    pub outbound: Option<(u16, bool, Loc)>,
}

#[derive(Debug, Default)]
struct Live {
    by_seg: HashMap<u64, u64>,
    total: u64,
}

impl Live {
    fn add(&mut self, loc: Loc) {
        *self.by_seg.entry(loc.seg).or_default() += u64::from(loc.len);
        self.total += u64::from(loc.len);
    }
    fn sub(&mut self, loc: Loc) {
        if let Some(n) = self.by_seg.get_mut(&loc.seg) {
            *n = n.saturating_sub(u64::from(loc.len));
        }
        self.total = self.total.saturating_sub(u64::from(loc.len));
    }
}

/// The queued entry a per-entry record (Attempt, Outbound) refers to; one for an entry
/// no longer queued (acked meanwhile) is ignored.
fn queued_entry<'a>(
    queues: &'a mut HashMap<String, BTreeMap<u64, QEntry>>,
    session: &str,
    message_id: u64,
    what: &str,
) -> Option<&'a mut QEntry> {
    let entry = queues
        .get_mut(session)
        .and_then(|queue| queue.get_mut(&message_id));
    if entry.is_none() {
        debug!(
            session,
            message_id, "{what} for an entry not queued ignored"
        );
    }
    entry
}

/// Keys already carried during one compaction, so dependents carried with their message
/// are not carried a second time when the scan reaches their own (now dead) copy.
#[derive(Debug, Default)]
pub(crate) struct Carried {
    enqueues: HashSet<(String, u64)>,
    retains: HashSet<String>,
    delays: HashSet<u64>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Index {
    messages: HashMap<u64, MsgEntry>,
    queues: HashMap<String, BTreeMap<u64, QEntry>>,
    sessions: HashMap<String, Loc>,
    retained: HashMap<String, (u64, Loc)>,
    qos2: HashMap<String, BTreeMap<u16, Loc>>,
    /// Delayed message id → due time (Unix ms) and its Delay record.
    delayed: HashMap<u64, (u64, Loc)>,
    live: Live,
    /// Highest message id ever applied (0 when none).
    pub max_id: u64,
}

impl Index {
    /// Applies one record found (or just written) at `loc`.
    pub(crate) fn apply(&mut self, rec: &Record, loc: Loc) {
        match rec {
            Record::Message(m) => {
                self.max_id = self.max_id.max(m.id);
                match self.messages.get_mut(&m.id) {
                    Some(e) => {
                        if e.counts_as_live() {
                            self.live.sub(e.loc);
                            self.live.add(loc);
                        }
                        e.loc = loc;
                    }
                    None => {
                        self.messages.insert(
                            m.id,
                            MsgEntry {
                                loc,
                                queued_by: Vec::new(),
                                retained_as: Vec::new(),
                                delayed: false,
                                referenced: false,
                            },
                        );
                        self.live.add(loc);
                    }
                }
            }
            Record::Enqueue {
                session,
                message_id,
            } => {
                let Some(m) = self.messages.get_mut(message_id) else {
                    debug!(session, message_id, "enqueue of unknown message ignored");
                    return;
                };
                let queue = self.queues.entry(session.clone()).or_default();
                if let Some(q) = queue.get_mut(message_id) {
                    self.live.sub(q.enq);
                    q.enq = loc;
                    self.live.add(loc);
                    return;
                }
                if !m.counts_as_live() {
                    self.live.add(m.loc);
                }
                m.referenced = true;
                m.queued_by.push(session.clone());
                queue.insert(
                    *message_id,
                    QEntry {
                        enq: loc,
                        attempts: 0,
                        att: None,
                        outbound: None,
                    },
                );
                self.live.add(loc);
            }
            Record::Ack {
                session,
                message_id,
            } => {
                let Some(queue) = self.queues.get_mut(session) else {
                    debug!(
                        session,
                        message_id, "ack for a session with no queue ignored"
                    );
                    return;
                };
                let Some(q) = queue.remove(message_id) else {
                    debug!(session, message_id, "ack for an entry not queued ignored");
                    return;
                };
                if queue.is_empty() {
                    self.queues.remove(session);
                }
                self.drop_entry(session, *message_id, &q);
            }
            Record::Attempt {
                session,
                message_id,
                attempts,
            } => {
                let Some(q) = queued_entry(&mut self.queues, session, *message_id, "attempt")
                else {
                    return;
                };
                if let Some(old) = q.att {
                    self.live.sub(old);
                }
                q.att = Some(loc);
                q.attempts = *attempts;
                self.live.add(loc);
            }
            Record::Outbound {
                session,
                message_id,
                packet_id,
                released,
            } => {
                let Some(q) =
                    queued_entry(&mut self.queues, session, *message_id, "outbound state")
                else {
                    return;
                };
                if let Some((_, _, old)) = q.outbound {
                    self.live.sub(old);
                }
                q.outbound = Some((*packet_id, *released, loc));
                self.live.add(loc);
            }
            Record::Session { client_id, .. } => {
                if let Some(old) = self.sessions.insert(client_id.clone(), loc) {
                    self.live.sub(old);
                }
                self.live.add(loc);
            }
            Record::SessionRemove { client_id } => {
                if let Some(old) = self.sessions.remove(client_id) {
                    self.live.sub(old);
                }
                if let Some(queue) = self.queues.remove(client_id) {
                    for (id, q) in queue {
                        self.drop_entry(client_id, id, &q);
                    }
                }
                if let Some(pending) = self.qos2.remove(client_id) {
                    for loc in pending.into_values() {
                        self.live.sub(loc);
                    }
                }
            }
            Record::Retain { topic, message_id } => {
                let Some(m) = self.messages.get_mut(message_id) else {
                    debug!(topic, message_id, "retain of unknown message ignored");
                    return;
                };
                if let Some((old_id, old_loc)) = self.retained.get(topic).copied() {
                    if old_id == *message_id {
                        self.live.sub(old_loc);
                        self.live.add(loc);
                        self.retained.insert(topic.clone(), (old_id, loc));
                        return;
                    }
                }
                if !m.counts_as_live() {
                    self.live.add(m.loc);
                }
                m.referenced = true;
                m.retained_as.push(topic.clone());
                self.live.add(loc);
                if let Some((old_id, old_loc)) =
                    self.retained.insert(topic.clone(), (*message_id, loc))
                {
                    self.live.sub(old_loc);
                    self.unretain(topic, old_id);
                }
            }
            Record::Delay {
                message_id,
                due_at_ms,
            } => {
                let Some(m) = self.messages.get_mut(message_id) else {
                    debug!(message_id, "delay of unknown message ignored");
                    return;
                };
                if !m.counts_as_live() {
                    self.live.add(m.loc);
                }
                m.referenced = true;
                m.delayed = true;
                if let Some((_, old)) = self.delayed.insert(*message_id, (*due_at_ms, loc)) {
                    self.live.sub(old);
                }
                self.live.add(loc);
            }
            Record::DelayDone { message_id } => {
                let Some((_, old)) = self.delayed.remove(message_id) else {
                    return;
                };
                self.live.sub(old);
                if let Some(m) = self.messages.get_mut(message_id) {
                    m.delayed = false;
                    if m.refs() == 0 {
                        self.live.sub(m.loc);
                        self.forget_message(*message_id);
                    }
                }
            }
            Record::RetainClear { topic } => {
                if let Some((old_id, old_loc)) = self.retained.remove(topic) {
                    self.live.sub(old_loc);
                    self.unretain(topic, old_id);
                }
            }
            Record::Qos2Received { session, packet_id } => {
                if let Some(old) = self
                    .qos2
                    .entry(session.clone())
                    .or_default()
                    .insert(*packet_id, loc)
                {
                    self.live.sub(old);
                }
                self.live.add(loc);
            }
            Record::Qos2Released { session, packet_id } => {
                if let Some(pending) = self.qos2.get_mut(session) {
                    if let Some(old) = pending.remove(packet_id) {
                        self.live.sub(old);
                    }
                    if pending.is_empty() {
                        self.qos2.remove(session);
                    }
                }
            }
        }
    }

    fn drop_entry(&mut self, session: &str, message_id: u64, q: &QEntry) {
        self.live.sub(q.enq);
        if let Some(att) = q.att {
            self.live.sub(att);
        }
        if let Some((_, _, out)) = q.outbound {
            self.live.sub(out);
        }
        if let Some(m) = self.messages.get_mut(&message_id) {
            if let Some(pos) = m.queued_by.iter().position(|s| s == session) {
                m.queued_by.swap_remove(pos);
            }
            if m.refs() == 0 {
                self.live.sub(m.loc);
                self.forget_message(message_id);
            }
        }
    }

    /// A message nothing refers to any more is dead for good (a later Enqueue or Retain
    /// only ever names a message in its own commit): its entry goes now, not when its
    /// segment is compacted. Otherwise the index holds an entry (and its subscribers'
    /// names) for every message written since the oldest segment, acked or not: with
    /// 64 MiB segments of small messages, over a hundred MiB that nothing needs.
    fn forget_message(&mut self, message_id: u64) {
        self.messages.remove(&message_id);
        // After a burst, give the table's memory back (amortised: it halves at most
        // once per halving of its length).
        let (len, cap) = (self.messages.len(), self.messages.capacity());
        if cap > 4096 && len < cap / 4 {
            self.messages.shrink_to(len * 2);
        }
    }

    fn unretain(&mut self, topic: &str, message_id: u64) {
        if let Some(m) = self.messages.get_mut(&message_id) {
            if let Some(pos) = m.retained_as.iter().position(|t| t == topic) {
                m.retained_as.swap_remove(pos);
            }
            if m.refs() == 0 {
                self.live.sub(m.loc);
                self.forget_message(message_id);
            }
        }
    }

    /// Whether the record at `loc` is the copy that counts and is still needed.
    pub(crate) fn is_live(&self, rec: &Record, loc: Loc) -> bool {
        match rec {
            Record::Message(m) => self
                .messages
                .get(&m.id)
                .is_some_and(|e| e.loc == loc && e.refs() > 0),
            Record::Enqueue {
                session,
                message_id,
            } => self
                .entry(session, *message_id)
                .is_some_and(|q| q.enq == loc),
            Record::Attempt {
                session,
                message_id,
                ..
            } => self
                .entry(session, *message_id)
                .is_some_and(|q| q.att == Some(loc)),
            Record::Outbound {
                session,
                message_id,
                ..
            } => self
                .entry(session, *message_id)
                .is_some_and(|q| q.outbound.is_some_and(|(_, _, l)| l == loc)),
            Record::Session { client_id, .. } => self.sessions.get(client_id) == Some(&loc),
            Record::Retain { topic, .. } => self.retained.get(topic).is_some_and(|r| r.1 == loc),
            Record::Qos2Received { session, packet_id } => self
                .qos2
                .get(session)
                .and_then(|p| p.get(packet_id))
                .is_some_and(|l| *l == loc),
            Record::Ack { .. }
            | Record::SessionRemove { .. }
            | Record::RetainClear { .. }
            | Record::Qos2Released { .. }
            | Record::DelayDone { .. } => false,
            Record::Delay { message_id, .. } => {
                self.delayed.get(message_id).is_some_and(|(_, l)| *l == loc)
            }
        }
    }

    fn entry(&self, session: &str, message_id: u64) -> Option<&QEntry> {
        self.queues.get(session)?.get(&message_id)
    }

    /// If the record at `loc` (in the segment being compacted) is live, pushes what must
    /// be re-appended to keep it — the record itself plus, for a message, everything that
    /// refers to it — onto `out`.
    pub(crate) fn carry(
        &self,
        rec: &Record,
        loc: Loc,
        carried: &mut Carried,
        out: &mut Vec<Record>,
    ) {
        if !self.is_live(rec, loc) {
            return;
        }
        match rec {
            Record::Message(m) => {
                out.push(rec.clone());
                let e = self.messages.get(&m.id).expect("is_live found the message");
                for session in &e.queued_by {
                    if carried.enqueues.insert((session.clone(), m.id)) {
                        self.push_enqueue(session, m.id, out);
                    }
                }
                for topic in &e.retained_as {
                    if carried.retains.insert(topic.clone()) {
                        out.push(Record::Retain {
                            topic: topic.clone(),
                            message_id: m.id,
                        });
                    }
                }
                if let Some((due_at_ms, _)) = self.delayed.get(&m.id) {
                    if carried.delays.insert(m.id) {
                        out.push(Record::Delay {
                            message_id: m.id,
                            due_at_ms: *due_at_ms,
                        });
                    }
                }
            }
            Record::Enqueue {
                session,
                message_id,
            }
            | Record::Attempt {
                session,
                message_id,
                ..
            }
            | Record::Outbound {
                session,
                message_id,
                ..
            } => {
                if carried.enqueues.insert((session.clone(), *message_id)) {
                    self.push_enqueue(session, *message_id, out);
                }
            }
            Record::Retain { topic, .. } => {
                if carried.retains.insert(topic.clone()) {
                    out.push(rec.clone());
                }
            }
            Record::Delay { message_id, .. } => {
                if carried.delays.insert(*message_id) {
                    out.push(rec.clone());
                }
            }
            _ => out.push(rec.clone()),
        }
    }

    fn push_enqueue(&self, session: &str, message_id: u64, out: &mut Vec<Record>) {
        out.push(Record::Enqueue {
            session: session.to_string(),
            message_id,
        });
        if let Some(q) = self.entry(session, message_id) {
            if q.att.is_some() {
                out.push(Record::Attempt {
                    session: session.to_string(),
                    message_id,
                    attempts: q.attempts,
                });
            }
            if let Some((packet_id, released, _)) = q.outbound {
                out.push(Record::Outbound {
                    session: session.to_string(),
                    message_id,
                    packet_id,
                    released,
                });
            }
        }
    }

    /// Forgets a segment that compaction deleted: drops the (dead) messages located in it.
    /// Returns how many live bytes the index still attributed to it (0 unless a bug).
    pub(crate) fn forget_segment(&mut self, seg: u64) -> u64 {
        self.messages.retain(|_, e| e.loc.seg != seg);
        self.live.by_seg.remove(&seg).unwrap_or(0)
    }

    /// Live bytes in the whole log.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.total
    }

    /// Session → latest Session record location.
    pub(crate) fn sessions(&self) -> impl Iterator<Item = &String> {
        self.sessions.keys()
    }

    /// Session → queued entries in message-id order.
    pub(crate) fn queues(&self) -> impl Iterator<Item = (&String, &BTreeMap<u64, QEntry>)> {
        self.queues.iter()
    }

    /// Retained topic → message id.
    /// Delayed message ids with their due times.
    pub(crate) fn delayed(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.delayed.iter().map(|(id, (due, _))| (*id, *due))
    }

    pub(crate) fn retained(&self) -> impl Iterator<Item = (&String, u64)> {
        self.retained.iter().map(|(t, (id, _))| (t, *id))
    }

    /// Session → unreleased QoS 2 packet ids (ascending).
    pub(crate) fn qos2(&self) -> impl Iterator<Item = (&String, Vec<u16>)> {
        self.qos2
            .iter()
            .map(|(s, p)| (s, p.keys().copied().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredMessage;
    use std::sync::Arc;

    fn message(id: u64) -> Record {
        Record::Message(Arc::new(StoredMessage {
            id,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"p"),
            qos: 1,
            retain: false,
            properties: bytes::Bytes::new(),
            publisher: "pub".into(),
            received_at_ms: 0,
            expires_at_ms: None,
        }))
    }

    /// The index holds what is live, not what was written: 100,000 messages queued and
    /// acked (or retained and replaced) in one segment leave no entries behind, long
    /// before that segment is compacted. (They used to stay until then: the soak's RSS
    /// grew with every message written.)
    #[test]
    fn acked_and_unretained_messages_leave_the_index() {
        let mut index = Index::default();
        let mut off = 0;
        let mut at = |len: u32| {
            off += u64::from(len);
            Loc { seg: 1, off, len }
        };
        for id in 1..=100_000u64 {
            index.apply(&message(id), at(40));
            let enqueue = Record::Enqueue {
                session: "sub".into(),
                message_id: id,
            };
            index.apply(&enqueue, at(20));
            if id % 10 == 0 {
                let retain = Record::Retain {
                    topic: "r".into(),
                    message_id: id,
                };
                index.apply(&retain, at(20));
            }
            let ack = Record::Ack {
                session: "sub".into(),
                message_id: id,
            };
            index.apply(&ack, at(20));
        }
        assert_eq!(index.messages.len(), 1, "only the retained one is left");
        assert!(index.messages.capacity() < 8192, "the table shrank back");
        assert_eq!(
            index.live_bytes(),
            40 + 20,
            "the retained message and its Retain"
        );
        // A message still queued stays, with its live bytes.
        index.apply(&message(200_000), at(40));
        let enqueue = Record::Enqueue {
            session: "sub".into(),
            message_id: 200_000,
        };
        index.apply(&enqueue, at(20));
        assert_eq!(index.messages.len(), 2);
        assert_eq!(index.live_bytes(), 2 * (40 + 20));
    }
}
