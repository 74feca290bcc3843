//! The operator's view of a running broker: what the HTTP admin API (src/admin/server.rs)
//! and so `sluice ctl` and the console can see and do.
//!
//! [`Admin`] is the one narrow handle the HTTP handlers hold: a few read operations that
//! snapshot broker state into plain serialisable values, and the few actions an operator
//! takes (disconnect a client, end its session, clear a retained message, replay or purge
//! dead letters). It reaches into the broker only through the session registry, the
//! router, the store and `Broker::accept`, the same paths a client's traffic takes.
//! It never holds a lock across an `.await`, and never drains the dead-letter queue
//! through an MQTT client: it reads the dead-letter session's queue in place and takes
//! out only the letters an operator selected.

pub mod auth;
mod console;
pub mod server;

use crate::broker::Broker;
use crate::dead_letter::DeadLetterReason;
use crate::message::{now_ms, Message};
use crate::protocol::{reason, QoS};
use crate::replay::{original_properties, split_user_properties};
use crate::router::topic::{
    matches, parse_filter, validate_filter, validate_topic_name, FilterKind,
};
use crate::session::{Delivery, Session, SessionView};
use crate::store::{Record, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Items in one page when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;
/// Bytes of payload shown in a dead letter's or retained message's preview.
pub const PREVIEW_BYTES: usize = 64;
/// Dead letters republished before their commits are awaited together.
const REPLAY_BATCH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A query parameter or body field is invalid; `param` names it.
    #[error("invalid {param}: {why}")]
    BadParam { param: &'static str, why: String },
    #[error("{0}")]
    NotFound(String),
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    /// The task running the action ended without an answer (it panicked).
    #[error("the action failed: {0}")]
    Failed(String),
}

fn bad(param: &'static str, why: impl Into<String>) -> AdminError {
    AdminError::BadParam {
        param,
        why: why.into(),
    }
}

/// One page of a list, in key order; `next` is the `after` of the following page.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Cuts a key-ordered list into the page after `after` (exclusive).
fn page<T>(mut items: Vec<(String, T)>, after: Option<&str>, limit: usize) -> Page<T> {
    if let Some(after) = after {
        items.retain(|(k, _)| k.as_str() > after);
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more {
        items.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Page {
        items: items.into_iter().map(|(_, v)| v).collect(),
        next,
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClientEntry {
    pub client_id: String,
    pub username: Option<String>,
    pub peer: String,
    /// "mqtt" or "mqtts".
    pub listener: String,
    pub protocol: String,
    pub connected_since: String,
    pub keep_alive_secs: u16,
    pub inflight: usize,
    pub queued: usize,
    pub queued_bytes: usize,
    pub subscriptions: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SubscriptionBrief {
    pub filter: String,
    pub qos: u8,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionEntry {
    pub client_id: String,
    pub online: bool,
    pub persistent: bool,
    /// Session Expiry Interval; null: never expires.
    pub expiry_secs: Option<u32>,
    pub queued: usize,
    pub queued_bytes: usize,
    pub inflight: usize,
    /// Seconds since the oldest message still queued or inflight arrived.
    pub oldest_queued_age_secs: Option<f64>,
    pub subscriptions: Vec<SubscriptionBrief>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SubscriptionEntry {
    pub client_id: String,
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub identifier: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RetainedEntry {
    pub topic: String,
    pub qos: u8,
    pub payload_bytes: usize,
    pub preview: String,
    pub received_at: String,
}

/// A `$delayed/` message waiting for its due time.
#[derive(Debug, Serialize, Deserialize)]
pub struct DelayedEntry {
    /// Its message id: what `DELETE /api/v1/delayed/{id}` cancels.
    pub id: u64,
    pub topic: String,
    pub qos: u8,
    pub publisher: String,
    pub due_at: String,
    pub payload_bytes: usize,
    pub preview: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetterEntry {
    /// The dead letter's message id: what `ids` selects.
    pub id: u64,
    pub reason: String,
    pub original_topic: String,
    pub publisher: String,
    pub subscriber: Option<String>,
    pub attempts: u32,
    pub first_seen: String,
    pub dead_lettered_at: String,
    pub payload_bytes: usize,
    /// The first bytes of the payload, as UTF-8 where they are, `\xNN` where not.
    pub preview: String,
}

/// Which dead letters an operation applies to: every given criterion must hold. An
/// empty selection selects nothing unless `all` is set, so a missing field never
/// replays or purges the whole queue by accident.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterSelection {
    pub reasons: Vec<String>,
    /// MQTT filters on the original topic.
    pub topics: Vec<String>,
    pub ids: Vec<u64>,
    pub all: bool,
}

/// A checked [`DeadLetterSelection`].
#[derive(Debug, Clone, Default)]
pub struct Selector {
    reasons: Vec<DeadLetterReason>,
    topics: Vec<String>,
    ids: Vec<u64>,
    all: bool,
}

impl Selector {
    pub fn new(sel: &DeadLetterSelection) -> Result<Selector, AdminError> {
        let mut reasons = Vec::new();
        for r in &sel.reasons {
            reasons.push(
                DeadLetterReason::from_label(r)
                    .ok_or_else(|| bad("reason", format!("unknown reason {r:?}")))?,
            );
        }
        for t in &sel.topics {
            validate_filter(t, usize::MAX).map_err(|e| bad("topic", format!("{t:?}: {e}")))?;
        }
        Ok(Selector {
            reasons,
            topics: sel.topics.clone(),
            ids: sel.ids.clone(),
            all: sel.all,
        })
    }

    /// For listing: no criterion selects everything.
    fn or_all(mut self) -> Selector {
        self.all = true;
        self
    }

    fn is_empty(&self) -> bool {
        self.reasons.is_empty() && self.topics.is_empty() && self.ids.is_empty()
    }

    fn selects(&self, id: u64, reason: DeadLetterReason, original_topic: &str) -> bool {
        if self.is_empty() {
            return self.all;
        }
        (self.reasons.is_empty() || self.reasons.contains(&reason))
            && (self.topics.is_empty() || self.topics.iter().any(|f| matches(f, original_topic)))
            && (self.ids.is_empty() || self.ids.contains(&id))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReplayOutcome {
    pub replayed: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// Replayed messages that found no subscriber again (and so are dead letters again).
    pub no_subscribers_again: u64,
    /// Selected letters that are not dead letters sluice built; left queued.
    pub unrecognised: u64,
    /// Set when the store failed: what was not replayed is still queued.
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PurgeOutcome {
    pub purged: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KickOutcome {
    pub client_id: String,
    /// A connection was told to leave (v5: DISCONNECT 0x98).
    pub disconnected: bool,
    /// The session ended; what it held became `session_expired` dead letters.
    pub session_discarded: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    pub version: String,
    pub uptime_secs: u64,
    /// Milliseconds since the Unix epoch when this was read.
    pub now_ms: u64,
    pub connections: i64,
    pub sessions: usize,
    pub sessions_online: usize,
    pub sessions_offline_persistent: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub queued: usize,
    pub queued_bytes: usize,
    pub inflight: usize,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub dead_letters_queued: usize,
    pub dead_letters_total: BTreeMap<String, u64>,
    pub store_bytes_on_disk: u64,
    pub store_poisoned: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub node: String,
    pub nats_connected: bool,
    pub nats_urls: Vec<String>,
    /// Distinct subscription filters other nodes hold.
    pub remote_filters: usize,
    /// The other nodes that hold subscriptions (as their interest announces them), with
    /// their filter counts. A node with no subscription is not listed.
    pub remote_nodes: Vec<RemoteNode>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteNode {
    pub node: String,
    pub filters: usize,
}

/// The admin API's handle on the broker.
#[derive(Debug, Clone)]
pub struct Admin {
    broker: Arc<Broker>,
    started: std::time::Instant,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The first [`PREVIEW_BYTES`] of a payload, readable.
pub fn preview(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(PREVIEW_BYTES)];
    let mut out = String::new();
    for chunk in cut.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if payload.len() > PREVIEW_BYTES {
        out.push('…');
    }
    out
}

fn brief(view: &SessionView) -> Vec<SubscriptionBrief> {
    view.subscriptions
        .iter()
        .map(|(f, r)| SubscriptionBrief {
            filter: f.clone(),
            qos: r.options.qos as u8,
        })
        .collect()
}

impl Admin {
    pub fn new(broker: Arc<Broker>) -> Admin {
        Admin {
            broker,
            started: std::time::Instant::now(),
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    fn views(&self) -> Vec<SessionView> {
        self.broker
            .sessions
            .all()
            .iter()
            .map(|s| s.view())
            .collect()
    }

    fn client_entry(view: &SessionView) -> Option<ClientEntry> {
        let c = view.client.as_ref()?;
        Some(ClientEntry {
            client_id: view.client_id.to_string(),
            username: c.username.clone(),
            peer: c.peer.to_string(),
            listener: c.listener.to_string(),
            protocol: c.protocol.to_string(),
            connected_since: rfc3339(c.connected_at_ms),
            keep_alive_secs: c.keep_alive_secs,
            inflight: view.inflight,
            queued: view.queued,
            queued_bytes: view.queued_bytes,
            subscriptions: view.subscriptions.len(),
        })
    }

    /// Connected clients, by client id.
    pub fn clients(&self, after: Option<&str>, limit: usize) -> Page<ClientEntry> {
        let mut items: Vec<(String, ClientEntry)> = self
            .views()
            .iter()
            .filter_map(Admin::client_entry)
            .map(|c| (c.client_id.clone(), c))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        page(items, after, limit)
    }

    pub fn client(&self, client_id: &str) -> Result<ClientEntry, AdminError> {
        self.broker
            .sessions
            .get(client_id)
            .and_then(|s| Admin::client_entry(&s.view()))
            .ok_or_else(|| AdminError::NotFound(format!("no client {client_id:?} is connected")))
    }

    fn session_entry(&self, v: &SessionView, now: u64) -> SessionEntry {
        SessionEntry {
            client_id: v.client_id.to_string(),
            online: v.client.is_some(),
            persistent: v.persistent,
            expiry_secs: (v.expiry_secs != crate::session::EXPIRY_NEVER).then_some(v.expiry_secs),
            queued: v.queued,
            queued_bytes: v.queued_bytes,
            inflight: v.inflight,
            oldest_queued_age_secs: v
                .oldest_queued_ms
                .map(|ms| now.saturating_sub(ms) as f64 / 1000.0),
            subscriptions: brief(v),
        }
    }

    /// Every session, online or offline. By client id, or with `by_backlog` by queued
    /// messages (most first; the cursor is then `QUEUED:CLIENT_ID`).
    pub fn sessions(
        &self,
        by_backlog: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<SessionEntry>, AdminError> {
        let now = now_ms();
        let mut entries: Vec<SessionEntry> = self
            .views()
            .iter()
            .map(|v| self.session_entry(v, now))
            .collect();
        if !by_backlog {
            let mut items: Vec<(String, SessionEntry)> = entries
                .into_iter()
                .map(|e| (e.client_id.clone(), e))
                .collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(page(items, after, limit));
        }
        entries.sort_by(|a, b| {
            (b.queued + b.inflight)
                .cmp(&(a.queued + a.inflight))
                .then_with(|| a.client_id.cmp(&b.client_id))
        });
        let key = |e: &SessionEntry| format!("{}:{}", e.queued + e.inflight, e.client_id);
        let start = match after {
            None => 0,
            Some(cursor) => {
                let (n, id) = cursor
                    .split_once(':')
                    .and_then(|(n, id)| Some((n.parse::<usize>().ok()?, id)))
                    .ok_or_else(|| bad("after", "expected QUEUED:CLIENT_ID with sort=backlog"))?;
                entries
                    .iter()
                    .position(|e| {
                        let q = e.queued + e.inflight;
                        q < n || (q == n && e.client_id.as_str() > id)
                    })
                    .unwrap_or(entries.len())
            }
        };
        let mut rest: Vec<SessionEntry> = entries.into_iter().skip(start).collect();
        let more = rest.len() > limit;
        rest.truncate(limit);
        let next = if more { rest.last().map(key) } else { None };
        Ok(Page { items: rest, next })
    }

    pub fn session(&self, client_id: &str) -> Result<SessionEntry, AdminError> {
        let s = self
            .broker
            .sessions
            .get(client_id)
            .ok_or_else(|| AdminError::NotFound(format!("no session {client_id:?}")))?;
        Ok(self.session_entry(&s.view(), now_ms()))
    }

    /// Subscriptions, by client id then filter. `filter` keeps those with exactly that
    /// filter; `topic` those a message on that topic would reach.
    pub fn subscriptions(
        &self,
        filter: Option<&str>,
        topic: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<SubscriptionEntry>, AdminError> {
        if let Some(t) = topic {
            validate_topic_name(t, usize::MAX).map_err(|e| bad("topic", e.to_string()))?;
        }
        let mut items = Vec::new();
        for v in self.views() {
            for (f, r) in &v.subscriptions {
                if filter.is_some_and(|want| want != f) {
                    continue;
                }
                if let Some(t) = topic {
                    let plain = match parse_filter(f, usize::MAX) {
                        Ok(FilterKind::Plain(p)) | Ok(FilterKind::Shared { filter: p, .. }) => p,
                        Err(_) => continue,
                    };
                    if !matches(plain, t) {
                        continue;
                    }
                }
                items.push((
                    format!("{}\u{0}{f}", v.client_id),
                    SubscriptionEntry {
                        client_id: v.client_id.to_string(),
                        filter: f.clone(),
                        qos: r.options.qos as u8,
                        no_local: r.options.no_local,
                        retain_as_published: r.options.retain_as_published,
                        identifier: r.identifier,
                    },
                ));
            }
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(page(items, after, limit))
    }

    /// Retained messages whose topic matches `filter` (default `#`), by topic.
    pub fn retained(
        &self,
        filter: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<RetainedEntry>, AdminError> {
        let filter = filter.unwrap_or("#");
        validate_filter(filter, usize::MAX).map_err(|e| bad("topic", e.to_string()))?;
        let mut items: Vec<(String, RetainedEntry)> = self
            .broker
            .router
            .retained_matching(filter)
            .iter()
            .map(|m| {
                (
                    m.topic.clone(),
                    RetainedEntry {
                        topic: m.topic.clone(),
                        qos: m.qos as u8,
                        payload_bytes: m.payload.len(),
                        preview: preview(&m.payload),
                        received_at: rfc3339(m.received_at_ms),
                    },
                )
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(page(items, after, limit))
    }

    /// Delayed messages waiting, by due time.
    pub fn delayed(&self, after: Option<&str>, limit: usize) -> Page<DelayedEntry> {
        let items: Vec<(String, DelayedEntry)> = self
            .broker
            .delayed
            .list()
            .into_iter()
            .map(|(due, m)| {
                (
                    // Zero-padded, so the key order is the due order.
                    format!("{due:020}-{:020}", m.id),
                    DelayedEntry {
                        id: m.id,
                        topic: m.topic.clone(),
                        qos: m.qos as u8,
                        publisher: m.publisher.to_string(),
                        due_at: rfc3339(due),
                        payload_bytes: m.payload.len(),
                        preview: preview(&m.payload),
                    },
                )
            })
            .collect();
        page(items, after, limit)
    }

    /// Cancels a delayed message before it comes due; its Delay record ends durably
    /// before this returns, so a restart does not bring it back.
    pub async fn cancel_delayed(&self, id: u64) -> Result<(), AdminError> {
        let Some((due, message)) = self.broker.delayed.cancel(id) else {
            return Err(AdminError::NotFound(format!("no delayed message {id}")));
        };
        if message.qos != QoS::AtMostOnce {
            let done = crate::store::Record::DelayDone { message_id: id };
            if let Err(e) = self.broker.store.commit(vec![done]).await {
                // Not cancelled on disk: put it back, so memory and disk agree.
                self.broker.delayed.restore(due, message);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Clears the retained message on `topic` as a client would: an empty retained
    /// PUBLISH (QoS 0) through the broker, so the store, the other cluster nodes and
    /// the current subscribers all see it cleared.
    pub async fn clear_retained(&self, topic: &str) -> Result<(), AdminError> {
        validate_topic_name(topic, usize::MAX).map_err(|e| bad("topic", e.to_string()))?;
        if self.broker.router.retained_matching(topic).is_empty() {
            return Err(AdminError::NotFound(format!(
                "no retained message on {topic:?}"
            )));
        }
        let now = now_ms();
        let message = Arc::new(Message {
            id: self.broker.next_message_id(),
            topic: topic.to_string(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            publisher: Arc::from(self.broker.config.dead_letter.client_id.as_str()),
            received_at_ms: now,
            expires_at_ms: None,
        });
        let accepted = self.broker.accept(&message, Vec::new()).await?;
        for t in accepted.tickets {
            t.wait().await?;
        }
        Ok(())
    }

    /// Disconnects `client_id` (v5: DISCONNECT 0x98 Administrative action). With
    /// `discard_session` its session ends too, and what it held becomes `session_expired`
    /// dead letters, made durable before the session's removal is written.
    pub async fn kick(
        &self,
        client_id: &str,
        discard_session: bool,
    ) -> Result<KickOutcome, AdminError> {
        let b = &self.broker;
        let session = b
            .sessions
            .get(client_id)
            .ok_or_else(|| AdminError::NotFound(format!("no session {client_id:?}")))?;
        if discard_session && b.is_dead_letter_session(client_id) {
            return Err(bad(
                "discard_session",
                "the dead-letter session is never discarded; purge dead letters instead",
            ));
        }
        let disconnected = session
            .take_owner_kick()
            .is_some_and(|k| k.send(reason::ADMINISTRATIVE_ACTION).is_ok());
        if !disconnected && !discard_session {
            return Err(AdminError::NotFound(format!(
                "client {client_id:?} is not connected"
            )));
        }
        let mut session_discarded = false;
        if discard_session && b.sessions.remove_if_same(&session) {
            let discarded = crate::broker::lifecycle::discard_session(b, &session);
            crate::broker::lifecycle::finish_discard_now(b, discarded).await;
            session_discarded = true;
        }
        Ok(KickOutcome {
            client_id: client_id.to_string(),
            disconnected,
            session_discarded,
        })
    }

    fn dead_letter_session(&self) -> Option<Arc<Session>> {
        self.broker
            .sessions
            .get(&self.broker.config.dead_letter.client_id)
    }

    fn entry(&self, d: &Delivery) -> Option<(DeadLetterReason, DeadLetterEntry)> {
        let m = &d.message;
        let (h, _) = split_user_properties(&m.properties.user_properties)?;
        Some((
            h.reason,
            DeadLetterEntry {
                id: m.id,
                reason: h.reason.label().to_string(),
                original_topic: h.original_topic,
                publisher: h.publisher,
                subscriber: h.subscriber,
                attempts: h.attempts,
                first_seen: h.first_seen,
                dead_lettered_at: rfc3339(m.received_at_ms),
                payload_bytes: m.payload.len(),
                preview: preview(&m.payload),
            },
        ))
    }

    /// The dead letters queued in the dead-letter session that `sel` selects (no
    /// criterion: all), oldest first; `after` is a dead letter id.
    pub fn dead_letters(
        &self,
        sel: &DeadLetterSelection,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<DeadLetterEntry>, AdminError> {
        let selector = Selector::new(sel)?.or_all();
        let queued = self
            .dead_letter_session()
            .map(|s| s.queued())
            .unwrap_or_default();
        let mut items = Vec::new();
        let mut more = false;
        for d in &queued {
            if after.is_some_and(|a| d.message.id <= a) {
                continue;
            }
            let Some((reason, e)) = self.entry(d) else {
                continue;
            };
            if !selector.selects(e.id, reason, &e.original_topic) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(e);
        }
        let next = if more {
            items.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    fn take_selected(&self, selector: &Selector) -> (Option<Arc<Session>>, Vec<Delivery>) {
        let Some(session) = self.dead_letter_session() else {
            return (None, Vec::new());
        };
        let taken = session.take_queued(|d| {
            split_user_properties(&d.message.properties.user_properties)
                .is_some_and(|(h, _)| selector.selects(d.message.id, h.reason, &h.original_topic))
        });
        (Some(session), taken)
    }

    /// Republishes the selected dead letters to their original topics, as `sluice dlq
    /// replay` does: original payload and properties (minus sluice's header), QoS 1, not
    /// retained. Each dead letter is acknowledged only after its republish is durable;
    /// on a store failure the rest go back to the front of the queue. Letters not
    /// selected are never touched.
    pub async fn replay(&self, sel: &DeadLetterSelection) -> Result<ReplayOutcome, AdminError> {
        let selector = Selector::new(sel)?;
        let (session, taken) = self.take_selected(&selector);
        let mut out = ReplayOutcome::default();
        let Some(session) = session else {
            return Ok(out);
        };
        let publisher: Arc<str> = Arc::from(self.broker.config.dead_letter.client_id.as_str());
        let mut rest = std::collections::VecDeque::from(taken);
        while !rest.is_empty() {
            let batch: Vec<Delivery> = rest.drain(..rest.len().min(REPLAY_BATCH)).collect();
            let mut sent = Vec::with_capacity(batch.len());
            let mut failed: Option<StoreError> = None;
            let mut unsent = Vec::new();
            for d in batch {
                if failed.is_some() {
                    unsent.push(d);
                    continue;
                }
                let parsed = split_user_properties(&d.message.properties.user_properties)
                    .map(|(h, _)| h)
                    .zip(original_properties(&d.message.properties));
                let Some((header, properties)) = parsed else {
                    out.unrecognised += 1;
                    unsent.push(d);
                    continue;
                };
                let message = Arc::new(Message {
                    id: self.broker.next_message_id(),
                    topic: header.original_topic,
                    payload: d.message.payload.clone(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties,
                    publisher: Arc::clone(&publisher),
                    received_at_ms: now_ms(),
                    expires_at_ms: None,
                });
                match self.broker.accept(&message, Vec::new()).await {
                    Ok(accepted) => sent.push((d, header.reason, accepted)),
                    Err(e) => {
                        failed = Some(e);
                        unsent.push(d);
                    }
                }
            }
            let mut acks = Vec::new();
            for (d, why, accepted) in sent {
                if failed.is_some() {
                    unsent.push(d);
                    continue;
                }
                let mut durable = Ok(());
                for t in accepted.tickets {
                    if let Err(e) = t.wait().await {
                        durable = Err(e);
                    }
                }
                match durable {
                    Ok(()) => {
                        out.replayed += 1;
                        *out.by_reason.entry(why.label().to_string()).or_default() += 1;
                        if accepted.matched == 0 {
                            out.no_subscribers_again += 1;
                        }
                        acks.push(Record::Ack {
                            session: session.client_id.to_string(),
                            message_id: d.message.id,
                        });
                    }
                    Err(e) => {
                        failed = Some(e);
                        unsent.push(d);
                    }
                }
            }
            if !acks.is_empty() {
                // Acks need not wait for the disk: after a crash the letter is replayed
                // again, which QoS 1 allows.
                if let Err(e) = self.broker.store.append(acks).await {
                    tracing::debug!(error = %e, "dead-letter acks not recorded");
                }
            }
            if let Some(e) = failed {
                unsent.extend(rest.drain(..));
                session.restore_front(unsent);
                out.error = Some(e.to_string());
                return Ok(out);
            }
            if !unsent.is_empty() {
                session.restore_front(unsent);
            }
        }
        tracing::info!(
            replayed = out.replayed,
            "dead letters replayed by an operator"
        );
        Ok(out)
    }

    /// Removes the selected dead letters for good (durably).
    pub async fn purge(&self, sel: &DeadLetterSelection) -> Result<PurgeOutcome, AdminError> {
        let selector = Selector::new(sel)?;
        let (session, taken) = self.take_selected(&selector);
        let Some(session) = session else {
            return Ok(PurgeOutcome::default());
        };
        if taken.is_empty() {
            return Ok(PurgeOutcome::default());
        }
        let acks: Vec<Record> = taken
            .iter()
            .map(|d| Record::Ack {
                session: session.client_id.to_string(),
                message_id: d.message.id,
            })
            .collect();
        let purged = taken.len() as u64;
        if let Err(e) = self.broker.store.commit(acks).await {
            session.restore_front(taken);
            return Err(e.into());
        }
        tracing::warn!(purged, "dead letters purged by an operator");
        Ok(PurgeOutcome { purged })
    }

    /// The numbers `$SYS` publishes, and a few more.
    pub fn stats(&self) -> Stats {
        let snap = crate::sys::sample(&self.broker, false);
        let sys = &*crate::metrics::SYS;
        let dead_letters_total = DeadLetterReason::ALL
            .iter()
            .zip(sys.dead_letters.iter())
            .map(|(r, n)| (r.label().to_string(), n.load(Ordering::Relaxed)))
            .collect();
        let dl = self
            .dead_letter_session()
            .map(|s| s.gauges())
            .unwrap_or_default();
        let store = self.broker.store.stats();
        Stats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            now_ms: now_ms(),
            connections: sys.connections.load(Ordering::Relaxed),
            sessions: snap.sessions,
            sessions_online: snap.online,
            sessions_offline_persistent: snap.offline_persistent,
            subscriptions: snap.subscriptions,
            retained: snap.retained,
            queued: snap.queued,
            queued_bytes: snap.queued_bytes,
            inflight: snap.inflight,
            messages_received: sys.messages_received.load(Ordering::Relaxed),
            messages_sent: sys.messages_sent.load(Ordering::Relaxed),
            bytes_received: sys.bytes_received.load(Ordering::Relaxed),
            bytes_sent: sys.bytes_sent.load(Ordering::Relaxed),
            dead_letters_queued: dl.queued + dl.inflight,
            dead_letters_total,
            store_bytes_on_disk: store.bytes_on_disk,
            store_poisoned: store.poisoned,
        }
    }

    /// This node's cluster membership; None outside cluster mode.
    pub fn cluster(&self) -> Option<ClusterInfo> {
        let c = self.broker.cluster()?;
        Some(ClusterInfo {
            node: c.node().to_string(),
            nats_connected: c.is_connected(),
            nats_urls: self.broker.config.cluster.nats_urls.clone(),
            remote_filters: c.remote_filters(),
            remote_nodes: c
                .remote_nodes()
                .into_iter()
                .map(|(node, filters)| RemoteNode { node, filters })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_after_a_key() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("k{i}"), i)).collect();
        let p = page(items.clone(), None, 2);
        assert_eq!(p.items, [0, 1]);
        assert_eq!(p.next.as_deref(), Some("k1"));
        let p = page(items.clone(), Some("k1"), 2);
        assert_eq!(p.items, [2, 3]);
        let p = page(items, Some("k3"), 2);
        assert_eq!(p.items, [4]);
        assert_eq!(p.next, None);
    }

    #[test]
    fn previews_are_readable_and_bounded() {
        assert_eq!(preview(b"21.5"), "21.5");
        assert_eq!(preview(b"a\nb\xff"), "a\\x0ab\\xff");
        let long = vec![b'x'; 100];
        assert_eq!(preview(&long).chars().count(), PREVIEW_BYTES + 1);
    }

    #[test]
    fn an_empty_selection_selects_nothing_unless_all() {
        let none = Selector::new(&DeadLetterSelection::default()).expect("valid");
        assert!(!none.selects(1, DeadLetterReason::QueueFull, "a"));
        assert!(none
            .clone()
            .or_all()
            .selects(1, DeadLetterReason::QueueFull, "a"));
        let sel = Selector::new(&DeadLetterSelection {
            reasons: vec!["queue_full".into()],
            topics: vec!["a/#".into()],
            ..Default::default()
        })
        .expect("valid");
        assert!(sel.selects(1, DeadLetterReason::QueueFull, "a/b"));
        assert!(!sel.selects(1, DeadLetterReason::Expired, "a/b"));
        assert!(!sel.selects(1, DeadLetterReason::QueueFull, "b"));
        let bad_reason = DeadLetterSelection {
            reasons: vec!["nope".into()],
            ..Default::default()
        };
        assert!(matches!(
            Selector::new(&bad_reason),
            Err(AdminError::BadParam {
                param: "reason",
                ..
            })
        ));
    }
}
