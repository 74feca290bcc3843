//! Scale-out: several sluice nodes acting as one broker through a NATS cluster.
//!
//! Owns this node's NATS connection and everything sluice keeps on NATS. The broker calls
//! [`Cluster::plan`] and [`Cluster::forward`] for each message it accepts, [`Cluster::sync`]
//! before a SUBACK, and [`Cluster::claim`] before a CONNECT is answered; the router feeds
//! it interest changes. It calls back into the broker only to deliver what other nodes
//! send ([`Broker::accept_remote`]) and to hand a session over.
//!
//! On NATS (`<p>` is `[cluster] subject_prefix`):
//! - `<p>.m.<topic levels>` (core): every message, published once by its origin node. Each
//!   node subscribes to the subjects of exactly its local filters (see [`subject`]), so
//!   NATS carries a message only to nodes with a matching subscriber. At most once.
//!   A node's subjects overlap (`o/#` and `o/+/t` are `<p>.m.o.>` and `<p>.m.o.*.t`, both
//!   carrying `o/1/t`), and NATS delivers one copy per matching subscription: each copy
//!   serves only the local filters among whose subjects is the subscription it arrived
//!   on ([`subject::filter_has_subject`]). A filter's own subjects never overlap, so each
//!   local subscription gets each message once.
//! - stream `<p>-queue`, subjects `<p>.q.<node>` (JetStream, file storage, `replicas`):
//!   a node's durable inbox. When a QoS ≥ 1 message matches a persistent session on node
//!   N, the origin also publishes it to `<p>.q.N` and the publisher's PUBACK waits for
//!   JetStream's ack, so the message is replicated before it is acknowledged. N consumes
//!   its inbox, stores the message in its own log, and only then acks JetStream: at every
//!   moment an acknowledged message is in NATS or in N's log. On the core copy, N skips
//!   exactly those subscribers, so each gets it once.
//! - bucket `<p>-interest` (JetStream KV): `<node>.<base64 filter>` → durable or not, the
//!   interest every node announces; kept when a node dies, so its persistent sessions
//!   keep receiving into its inbox while it is down.
//! - bucket `<p>-retained`: base64 topic → the retained message, watched by every node.
//! - bucket `<p>-sessions`: base64 client id → the node that owns the session. A CONNECT
//!   on another node asks the owner over `<p>.node.<owner>.takeover` (request/reply) to
//!   disconnect its client (0x8E) and hand the session over: subscriptions in the reply,
//!   queued messages through the new owner's inbox.
//!
//! Why copies are split by subscription rather than one copy per node being chosen (a
//! dedupe window over message ids, a "canonical" subscription per topic, or a NATS queue
//! group spanning the node's subjects): any choice of one copy depends on which
//! subscriptions NATS held when the message was published, which the receiver cannot
//! know while filters come and go. It would then drop a message a steady filter should
//! get (its one copy went to a subscription being removed, whose in-flight messages the
//! client discards, or was skipped in favour of a subscription that never got it), or
//! deliver it twice, or need a window whose size is a guess. Split by subscription, a
//! filter's copy exists whenever its subject was subscribed when the message was
//! published (the SUBACK waits for that), and adding or removing a subject touches only
//! the filters that use it. What it costs: one client whose own overlapping
//! subscriptions have different subjects gets one copy per subscription, each with that
//! subscription's QoS and identifier, as MQTT allows (3.1.1 §3.3.5, 5.0 §3.3.4), where a
//! single node gives one merged copy. A persistent session the durable inbox serves is
//! skipped on every core copy, judged on all its subscriptions, and gets the one merged
//! inbox copy. Shared groups are served by the copy of the group's filter; retained
//! messages and the inbox do not travel on these subjects.

pub mod envelope;
pub mod interest;
pub mod subject;

use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::message::Message;
use crate::metrics as metric;
use crate::protocol::QoS;
use crate::router::InterestChange;
use crate::session::persist::{decode_state, PersistedSession};
use crate::store::{CommitTicket, StoreError};
use async_nats::jetstream::{self, kv};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use envelope::Envelope;
use futures::StreamExt;
use interest::{RemoteInterest, RemoteMatches};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// How long sluice waits for NATS on paths that must not hang a client (interest
/// updates before a SUBACK, the session registry before a CONNACK).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// A handed-over message whose session has not arrived yet is retried after this.
const HANDOFF_RETRY: Duration = Duration::from_millis(100);
/// ...this many times, then it becomes a `session_expired` dead letter.
const HANDOFF_MAX_DELIVERIES: i64 = 100;
/// JetStream redelivers an inbox message not acked within this (a node killed while
/// storing it, or a pull request its dead process left behind).
const INBOX_ACK_WAIT: Duration = Duration::from_secs(10);
/// Inbox messages being stored at once (their acks wait for the log in parallel).
const INBOX_CONCURRENCY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// JetStream buckets, available once NATS answered the set-up.
#[derive(Debug)]
struct Buckets {
    interest: kv::Store,
    retained: kv::Store,
    sessions: kv::Store,
}

pub struct Cluster {
    node: Arc<str>,
    prefix: String,
    /// `[dead_letter] topic_prefix`: the one `$` topic space shared across nodes.
    dead_letter_prefix: String,
    forward_timeout: Duration,
    client: async_nats::Client,
    js: jetstream::Context,
    /// Set once the stream and buckets exist; until then (NATS unreachable at start)
    /// the node serves its local clients and retries the set-up.
    buckets: OnceLock<Buckets>,
    remote: RwLock<RemoteInterest>,
    /// Interest commands for the interest task (barriers and resyncs).
    commands: mpsc::UnboundedSender<Command>,
    /// Rotates the choice of node for shared groups.
    round_robin: AtomicUsize,
    /// Sessions this node handed to another node, with their subscriptions: messages
    /// still in (or later arriving at) this node's inbox for them follow them there.
    moved: parking_lot::Mutex<Moved>,
}

/// Where handed-over sessions went: their filters in a trie (an inbox message finds the
/// moved sessions it matches without a scan), oldest first, bounded.
#[derive(Debug, Default)]
struct Moved {
    order: std::collections::VecDeque<Arc<str>>,
    /// Client id → its filters, for removal.
    sessions: HashMap<Arc<str>, Vec<String>>,
    /// Filter → (client id → (its new node, the subscription's QoS)).
    trie: crate::router::trie::TopicTrie<Arc<str>, (Arc<str>, QoS)>,
}

/// Handed-over sessions remembered (the oldest is forgotten past this).
const MOVED_MAX: usize = 100_000;

/// The trie path of a filter (a shared group's filter without its `$share/group/`).
fn filter_path(filter: &str) -> Option<&str> {
    use crate::router::topic::{parse_filter, FilterKind};
    match parse_filter(filter, usize::MAX) {
        Ok(FilterKind::Plain(f)) | Ok(FilterKind::Shared { filter: f, .. }) => Some(f),
        Err(_) => None,
    }
}

impl Moved {
    fn insert(&mut self, client_id: &str, node: &str, filters: Vec<(String, QoS)>) {
        self.remove(client_id);
        let id: Arc<str> = Arc::from(client_id);
        let node: Arc<str> = Arc::from(node);
        let mut kept = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            if let Some(path) = filter_path(&filter) {
                self.trie
                    .insert(path, Arc::clone(&id), (Arc::clone(&node), qos));
                kept.push(filter);
            }
        }
        self.sessions.insert(Arc::clone(&id), kept);
        self.order.push_back(id);
        while self.order.len() > MOVED_MAX {
            if let Some(old) = self.order.pop_front() {
                self.forget(&old);
            }
        }
    }

    fn forget(&mut self, client_id: &Arc<str>) {
        if let Some(filters) = self.sessions.remove(client_id) {
            for f in filters {
                if let Some(path) = filter_path(&f) {
                    self.trie.remove(path, client_id);
                }
            }
        }
    }

    fn remove(&mut self, client_id: &str) {
        if let Some((id, _)) = self.sessions.get_key_value(client_id) {
            let id = Arc::clone(id);
            self.forget(&id);
            self.order.retain(|c| *c != id);
        }
    }

    /// (client id, node, QoS) of every moved session `topic` matches.
    fn matching(&self, topic: &str) -> Vec<(Arc<str>, Arc<str>, QoS)> {
        let mut out: Vec<(Arc<str>, Arc<str>, QoS)> = Vec::new();
        self.trie.for_each_match(topic, |client, (node, qos)| {
            match out.iter_mut().find(|(c, _, _)| c == client) {
                Some(hit) => hit.2 = hit.2.max(*qos),
                None => out.push((Arc::clone(client), Arc::clone(node), *qos)),
            }
        });
        out
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

enum Command {
    /// Answer once every interest change made before it is on NATS.
    Sync(oneshot::Sender<()>),
    /// Re-announce the whole interest (after NATS came back).
    Resync,
}

/// What other nodes get of one message: decided by the origin before it routes locally.
#[derive(Debug, Default)]
pub struct Plan {
    remote: RemoteMatches,
    durable_nodes: Vec<Arc<str>>,
    assignments: Vec<(String, Arc<str>)>,
    qos: Option<QoS>,
    start: usize,
}

impl Plan {
    /// Whether a local member of shared group `share` takes the message; otherwise
    /// the group's turn goes to a member node elsewhere.
    pub fn share_here(&mut self, share: &str) -> bool {
        let Some(nodes) = self.remote.shared.remove(share) else {
            return true;
        };
        let pick = self.start % (nodes.len() + 1);
        if pick == 0 {
            return true;
        }
        let (node, durable) = nodes[pick - 1].clone();
        self.assign(share, node, durable);
        false
    }

    fn assign(&mut self, share: &str, node: Arc<str>, durable: bool) {
        if durable && self.qos.is_some_and(|q| q != QoS::AtMostOnce) {
            self.add_durable(&node);
        }
        self.assignments.push((share.to_string(), node));
    }

    fn add_durable(&mut self, node: &Arc<str>) {
        if !self.durable_nodes.contains(node) {
            self.durable_nodes.push(Arc::clone(node));
        }
    }

    /// Groups no local member matched go to one of their nodes.
    fn finish(&mut self) {
        let groups: Vec<_> = self.remote.shared.drain().collect();
        for (share, nodes) in groups {
            let (node, durable) = nodes[self.start % nodes.len()].clone();
            self.assign(&share, node, durable);
        }
    }

    /// Whether any other node wanted the message (a plain subscription, or a shared
    /// group with a member there, assigned yet or not).
    pub fn has_remote(&self) -> bool {
        !self.remote.plain.is_empty()
            || !self.assignments.is_empty()
            || !self.remote.shared.is_empty()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn unb64(s: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    String::from_utf8(raw).ok()
}

impl Cluster {
    /// Connects to NATS (retrying in the background if it is not there yet), attaches
    /// to the broker, and starts the node's NATS tasks.
    pub async fn start(broker: &Arc<Broker>) -> Result<Arc<Cluster>, ClusterError> {
        let cfg: &ClusterConfig = &broker.config.cluster;
        let node: Arc<str> = Arc::from(cfg.node.as_str());
        let events_node = Arc::clone(&node);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let resync = commands.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .no_echo()
            .name(format!("sluice-{node}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(64 * 1024)
            .event_callback(move |event| {
                let node = Arc::clone(&events_node);
                let resync = resync.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            metrics::gauge!(metric::CLUSTER_CONNECTED).set(1.0);
                            info!(%node, "connected to NATS");
                            let _ = resync.send(Command::Resync);
                        }
                        async_nats::Event::Disconnected => {
                            metrics::gauge!(metric::CLUSTER_CONNECTED).set(0.0);
                            warn!(%node, "lost NATS: serving local clients only until it returns");
                        }
                        other => debug!(%node, event = %other, "NATS event"),
                    }
                }
            });
        if let (Some(u), Some(p)) = (&cfg.nats_user, &cfg.nats_password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &cfg.nats_token {
            opts = opts.token(t.clone());
        }
        if let Some(path) = &cfg.nats_creds_file {
            opts =
                opts.credentials_file(path)
                    .await
                    .map_err(|source| ClusterError::Credentials {
                        path: path.clone(),
                        source,
                    })?;
        }
        if let Some(ca) = &cfg.nats_tls_ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        metrics::gauge!(metric::CLUSTER_CONNECTED).set(0.0);
        let client = opts
            .connect(cfg.nats_urls.clone())
            .await
            .map_err(|e| ClusterError::Connect(e.to_string()))?;
        let js = jetstream::new(client.clone());
        let cluster = Arc::new(Cluster {
            node,
            prefix: cfg.subject_prefix.clone(),
            dead_letter_prefix: broker.config.dead_letter.topic_prefix.clone(),
            forward_timeout: Duration::from_millis(cfg.forward_timeout_ms),
            client,
            js,
            buckets: OnceLock::new(),
            remote: RwLock::new(RemoteInterest::default()),
            commands,
            round_robin: AtomicUsize::new(0),
            moved: parking_lot::Mutex::new(Moved::default()),
        });
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let snapshot = broker.router.observe_interest(changes_tx);
        tokio::spawn(interest_task(
            Arc::clone(&cluster),
            Arc::clone(broker),
            snapshot,
            changes_rx,
            commands_rx,
        ));
        tokio::spawn(takeover_responder(Arc::clone(&cluster), Arc::clone(broker)));
        tokio::spawn(setup_task(
            Arc::clone(&cluster),
            Arc::clone(broker),
            cfg.replicas,
        ));
        info!(node = %cluster.node, urls = ?cfg.nats_urls, "cluster node started");
        Ok(cluster)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Distinct subscription filters other nodes hold, as this node last heard.
    pub fn remote_filters(&self) -> usize {
        self.remote.read().len()
    }

    /// The other nodes that announced subscriptions, with their filter counts.
    pub fn remote_nodes(&self) -> Vec<(String, usize)> {
        self.remote.read().nodes()
    }

    /// Whether NATS is reachable now. While it is not (a partition), the node serves
    /// its local clients; what needs another node fails fast instead of waiting.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn queue_subject(&self, node: &str) -> String {
        format!("{}.q.{node}", self.prefix)
    }

    /// Whether a message on `topic` crosses nodes: dead letters do (a `$DLQ/#`
    /// subscriber on any node sees every node's), other `$` topics (`$SYS`) do not.
    pub fn carries(&self, topic: &str) -> bool {
        !topic.starts_with('$') || self.carries_dollar(topic)
    }

    fn carries_dollar(&self, topic_or_filter: &str) -> bool {
        topic_or_filter
            .strip_prefix(self.dead_letter_prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Looks up who elsewhere wants `message`, before the local routing.
    pub fn plan(&self, message: &Message) -> Plan {
        let remote = self.remote.read().matches(&message.topic);
        let mut plan = Plan {
            remote,
            qos: Some(message.qos),
            start: self.round_robin.fetch_add(1, Ordering::Relaxed),
            ..Plan::default()
        };
        if message.qos != QoS::AtMostOnce {
            let durable: Vec<Arc<str>> = plan
                .remote
                .plain
                .iter()
                .filter(|(_, d)| *d)
                .map(|(n, _)| Arc::clone(n))
                .collect();
            for n in &durable {
                plan.add_durable(n);
            }
        }
        plan
    }

    /// Sends an accepted message to the other nodes; `tickets` gains one per durable
    /// inbox (and for the retained bucket) that the PUBACK must wait for.
    pub async fn forward(
        &self,
        message: &Message,
        mut plan: Plan,
        tickets: &mut Vec<CommitTicket>,
    ) {
        plan.finish();
        let mut env = Envelope::for_message(&self.node, message);
        env.durable_nodes = plan.durable_nodes.iter().map(|n| n.to_string()).collect();
        env.assignments = plan
            .assignments
            .iter()
            .map(|(s, n)| (s.clone(), n.to_string()))
            .collect();
        let body = env.encode();
        if !self.is_connected() {
            // Partitioned: local subscribers have it; other nodes' non-durable ones miss
            // it (at most once), and a publish that needed another node's durable inbox
            // or the retained bucket is not acknowledged as if it had reached them.
            metrics::counter!(metric::CLUSTER_FORWARD_FAILURES, "path" => "core").increment(1);
            let needs_remote = !plan.durable_nodes.is_empty()
                || (message.retain && message.qos != QoS::AtMostOnce);
            if needs_remote {
                let (tx, ticket) = CommitTicket::pending();
                let _ = tx.send(Err(StoreError::Remote(
                    "NATS unreachable: cannot reach other nodes' durable inboxes".into(),
                )));
                tickets.push(ticket);
            }
            return;
        }
        let subject = subject::topic_to_subject(&self.prefix, &message.topic);
        match self.client.publish(subject, body.clone()).await {
            Ok(()) => metrics::counter!(metric::CLUSTER_FORWARDED, "path" => "core").increment(1),
            Err(e) => {
                metrics::counter!(metric::CLUSTER_FORWARD_FAILURES, "path" => "core").increment(1);
                debug!(error = %e, "message not published on NATS");
            }
        }
        for node in &plan.durable_nodes {
            tickets.push(self.to_inbox(node, body.clone(), "queue").await);
        }
        if message.retain {
            let ticket = self.put_retained(message, body).await;
            if message.qos != QoS::AtMostOnce {
                tickets.push(ticket);
            }
        }
    }

    /// Publishes `body` to `node`'s durable inbox; the ticket resolves when JetStream
    /// has it (replicated), or fails after `forward_timeout`. Sent in call order (only
    /// the wait for the ack runs apart), so one publisher's messages keep their order.
    async fn to_inbox(&self, node: &str, body: Bytes, path: &'static str) -> CommitTicket {
        let subject = self.queue_subject(node);
        let sent = tokio::time::timeout(self.forward_timeout, self.js.publish(subject, body)).await;
        self.await_ack(sent, format!("node {node}"), path)
    }

    /// The ticket for a JetStream publish already sent.
    fn await_ack<E: std::fmt::Display + Send + 'static>(
        &self,
        sent: Result<Result<jetstream::context::PublishAckFuture, E>, tokio::time::error::Elapsed>,
        target: String,
        path: &'static str,
    ) -> CommitTicket {
        let (tx, ticket) = CommitTicket::pending();
        let timeout = self.forward_timeout;
        let fail = move |e: String| {
            metrics::counter!(metric::CLUSTER_FORWARD_FAILURES, "path" => path).increment(1);
            warn!(%target, error = %e, "message not taken by JetStream");
            StoreError::Remote(format!("{target}: {e}"))
        };
        let ack = match sent {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => {
                let _ = tx.send(Err(fail(e.to_string())));
                return ticket;
            }
            Err(_) => {
                let _ = tx.send(Err(fail(format!("not sent within {timeout:?}"))));
                return ticket;
            }
        };
        tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, ack.into_future()).await {
                Ok(Ok(_)) => {
                    metrics::counter!(metric::CLUSTER_FORWARDED, "path" => path).increment(1);
                    Ok(())
                }
                Ok(Err(e)) => Err(fail(e.to_string())),
                Err(_) => Err(fail(format!("no JetStream ack within {timeout:?}"))),
            };
            let _ = tx.send(result);
        });
        ticket
    }

    /// Writes the retained message (or, with an empty payload, its removal) to the
    /// retained bucket, in call order: a later retain on one topic always wins.
    async fn put_retained(&self, message: &Message, body: Bytes) -> CommitTicket {
        let subject = format!("$KV.{}-retained.{}", self.prefix, b64(&message.topic));
        let sent = if message.payload.is_empty() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "DEL");
            tokio::time::timeout(
                self.forward_timeout,
                self.js.publish_with_headers(subject, headers, Bytes::new()),
            )
            .await
        } else {
            tokio::time::timeout(self.forward_timeout, self.js.publish(subject, body)).await
        };
        self.await_ack(sent, "retained bucket".into(), "retained")
    }

    /// Returns once every interest change made so far is known to NATS, so a SUBACK
    /// means "messages published anywhere from now on reach you". Bounded: with NATS
    /// away it returns after a short wait and the node serves local publishers.
    pub async fn sync(&self) {
        if !self.is_connected() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Sync(tx)).is_ok() {
            let _ = tokio::time::timeout(CONTROL_TIMEOUT, rx).await;
        }
    }

    /// Before answering a CONNECT for `client_id`: if another node owns its session, asks
    /// that node to disconnect the client and hand the session over. Returns the
    /// session's subscriptions and expiry when it came from elsewhere.
    pub async fn claim(&self, client_id: &str, clean_start: bool) -> Option<PersistedSession> {
        let buckets = self.buckets.get()?;
        self.moved.lock().remove(client_id);
        if !self.is_connected() {
            warn!(
                client_id,
                "NATS unreachable: connecting with this node's session state only"
            );
            return None;
        }
        let key = b64(client_id);
        let owner = match tokio::time::timeout(CONTROL_TIMEOUT, buckets.sessions.get(&key)).await {
            Ok(Ok(owner)) => owner,
            Ok(Err(e)) => {
                warn!(client_id, error = %e, "session registry unreadable; connecting locally");
                None
            }
            Err(_) => {
                warn!(
                    client_id,
                    "session registry did not answer; connecting locally"
                );
                None
            }
        };
        let mut imported = None;
        if let Some(owner) = owner.as_deref().and_then(|o| std::str::from_utf8(o).ok()) {
            if owner != &*self.node {
                imported = self.request_takeover(owner, client_id, clean_start).await;
            }
        }
        if owner.as_deref() != Some(self.node.as_bytes()) {
            let put = buckets
                .sessions
                .put(&key, Bytes::from(self.node.to_string()));
            match tokio::time::timeout(CONTROL_TIMEOUT, put).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(client_id, error = %e, "session ownership not recorded"),
                Err(_) => warn!(client_id, "session ownership not recorded: timed out"),
            }
        }
        imported
    }

    async fn request_takeover(
        &self,
        owner: &str,
        client_id: &str,
        clean_start: bool,
    ) -> Option<PersistedSession> {
        let mut body = BytesMut::new();
        body.put_u8(u8::from(clean_start));
        crate::wire::put_str(&mut body, &self.node);
        crate::wire::put_str(&mut body, client_id);
        let subject = format!("{}.node.{owner}.takeover", self.prefix);
        let reply = tokio::time::timeout(
            self.forward_timeout,
            self.client.request(subject, body.freeze()),
        )
        .await;
        match reply {
            Ok(Ok(reply)) => {
                if reply.payload.is_empty() {
                    return None;
                }
                metrics::counter!(metric::CLUSTER_TAKEOVERS, "direction" => "in").increment(1);
                match decode_state(reply.payload.clone()) {
                    Ok(state) => {
                        info!(
                            client_id,
                            from = owner,
                            subscriptions = state.subscriptions.len(),
                            "session taken over from another node"
                        );
                        Some(state)
                    }
                    Err(e) => {
                        error!(client_id, from = owner, error = %e, "handed-over session unreadable");
                        None
                    }
                }
            }
            Ok(Err(e)) => {
                warn!(client_id, owner, error = %e, "owner node did not hand the session over; starting without it (its queued messages follow when it returns)");
                None
            }
            Err(_) => {
                warn!(
                    client_id,
                    owner, "owner node did not answer the takeover; starting without its session"
                );
                None
            }
        }
    }

    /// Sends an inbox message on to the nodes that now hold sessions it was meant for
    /// here; the tickets resolve when their inboxes have it.
    async fn follow_moved(&self, env: &Envelope) -> Vec<CommitTicket> {
        if env.qos == QoS::AtMostOnce {
            return Vec::new();
        }
        let targets = self.moved.lock().matching(&env.topic);
        let mut tickets = Vec::new();
        for (client_id, node, qos) in targets {
            let mut forward = env.clone();
            forward.session = Some(client_id.to_string());
            forward.qos = env.qos.min(qos);
            if forward.qos == QoS::AtMostOnce {
                continue;
            }
            tickets.push(self.to_inbox(&node, forward.encode(), "session").await);
        }
        tickets
    }

    /// Handles a message another node published, received on this node's subscription
    /// to `subject`: it serves the local filters `subject` carries, and only them (the
    /// node's other subscriptions that match the message receive their own copies).
    async fn on_core(&self, broker: &Broker, subject: &str, payload: Bytes) {
        let env = match Envelope::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "undecodable message from NATS dropped");
                return;
            }
        };
        if env.origin == *self.node {
            return;
        }
        metrics::counter!(metric::CLUSTER_RECEIVED, "path" => "core").increment(1);
        let skip_durable = env.durable_nodes.iter().any(|n| *n == *self.node);
        let serves = |filter: &str| subject::filter_has_subject(&self.prefix, filter, subject);
        let mode = RemoteMode::Core {
            skip_durable,
            serves: &serves,
        };
        if let Err(e) = broker.accept_remote(&env, &self.node, mode).await {
            warn!(error = %e, topic = %env.topic, "message from another node not delivered");
        }
    }
}

/// How a message from another node is delivered here.
#[derive(Clone, Copy)]
pub enum RemoteMode<'a> {
    /// A core copy, received on one of this node's NATS subscriptions: the local
    /// subscriptions whose filters that subscription carries (`serves`), except (when
    /// the origin also sent the message to this node's durable inbox) those of
    /// persistent sessions the inbox copy serves at QoS ≥ 1.
    Core {
        skip_durable: bool,
        serves: &'a (dyn Fn(&str) -> bool + Sync),
    },
    /// The inbox copy: only persistent QoS ≥ 1 subscribers, all their subscriptions.
    Durable,
}

/// Creates the stream and buckets (retrying until NATS answers), then starts the inbox
/// consumer and the watchers.
async fn setup_task(cluster: Arc<Cluster>, broker: Arc<Broker>, replicas: usize) {
    let mut delay = Duration::from_millis(200);
    let buckets = loop {
        match setup(&cluster, replicas).await {
            Ok(b) => break b,
            Err(e) => {
                warn!(error = %e, "JetStream set-up failed; retrying");
                tokio::select! {
                    _ = broker.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let _ = cluster.buckets.set(buckets);
    hand_off_stale_sessions(&cluster, &broker).await;
    info!(node = %cluster.node, "cluster ready: JetStream inbox and buckets in place");
    let _ = cluster.commands.send(Command::Resync);
    tokio::spawn(watch_interest(Arc::clone(&cluster), Arc::clone(&broker)));
    tokio::spawn(watch_retained(Arc::clone(&cluster), Arc::clone(&broker)));
    tokio::spawn(consume_inbox(cluster, broker));
}

async fn setup(cluster: &Cluster, replicas: usize) -> Result<Buckets, String> {
    use jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
    let p = &cluster.prefix;
    cluster
        .js
        .get_or_create_stream(Config {
            name: format!("{p}-queue"),
            subjects: vec![format!("{p}.q.>")],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {p}-queue: {e}"))?;
    // The buckets' streams are created directly (what `create_key_value` would make):
    // the KV helper reads account info in a form older servers (2.9) do not send.
    let bucket = |name: &str| {
        let js = cluster.js.clone();
        let bucket = format!("{p}-{name}");
        async move {
            js.get_or_create_stream(Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: DiscardPolicy::New,
                storage: StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("bucket {bucket}: {e}"))?;
            js.get_key_value(&bucket)
                .await
                .map_err(|e| format!("bucket {bucket}: {e}"))
        }
    };
    Ok(Buckets {
        interest: bucket("interest").await?,
        retained: bucket("retained").await?,
        sessions: bucket("sessions").await?,
    })
}

/// Mirrors the router's interest on NATS: a core subscription per subject (shared by
/// the filters that need it), and one key per filter in the interest bucket.
async fn interest_task(
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    snapshot: Vec<(Arc<str>, bool)>,
    mut changes: mpsc::UnboundedReceiver<InterestChange>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut state = LocalInterest::default();
    for (filter, durable) in snapshot {
        state
            .apply(
                &cluster,
                &broker,
                InterestChange::Upsert { filter, durable },
            )
            .await;
    }
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Some(c) => state.apply(&cluster, &broker, c).await,
                None => return,
            },
            command = commands.recv() => match command {
                Some(Command::Sync(done)) => {
                    while let Ok(c) = changes.try_recv() {
                        state.apply(&cluster, &broker, c).await;
                    }
                    let _ = tokio::time::timeout(CONTROL_TIMEOUT, cluster.client.flush()).await;
                    let _ = done.send(());
                }
                Some(Command::Resync) => {
                    state.retry_scheduled = false;
                    if !state.resync(&cluster).await {
                        // JetStream may still be electing leaders after NATS returned.
                        state.retry_later(&cluster);
                    }
                }
                None => return,
            },
        }
    }
}

#[derive(Default)]
struct LocalInterest {
    /// Filter → durable, as last announced.
    filters: HashMap<Arc<str>, bool>,
    /// NATS subject → (filters needing it, its receiving task).
    subjects: HashMap<String, (usize, tokio::task::AbortHandle)>,
    /// A full re-announcement is due (an announcement failed).
    retry_scheduled: bool,
}

impl LocalInterest {
    /// Re-announces everything in a second (once, however many announcements failed).
    fn retry_later(&mut self, cluster: &Cluster) {
        if self.retry_scheduled {
            return;
        }
        self.retry_scheduled = true;
        let commands = cluster.commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = commands.send(Command::Resync);
        });
    }

    async fn apply(
        &mut self,
        cluster: &Arc<Cluster>,
        broker: &Arc<Broker>,
        change: InterestChange,
    ) {
        match change {
            InterestChange::Upsert { filter, durable } => {
                if filter.starts_with('$')
                    && !filter.starts_with("$share/")
                    && !cluster.carries_dollar(&filter)
                {
                    // `$SYS/...` subscriptions are served by this node alone.
                    return;
                }
                let new = self.filters.insert(Arc::clone(&filter), durable).is_none();
                if new {
                    for s in subject::filter_to_subjects(&cluster.prefix, &filter) {
                        self.add_subject(cluster, broker, s).await;
                    }
                }
                if !announce(cluster, &filter, Some(durable)).await {
                    self.retry_later(cluster);
                }
            }
            InterestChange::Removed { filter } => {
                if self.filters.remove(&filter).is_none() {
                    return;
                }
                for s in subject::filter_to_subjects(&cluster.prefix, &filter) {
                    if let Some((count, task)) = self.subjects.get_mut(&s) {
                        *count -= 1;
                        if *count == 0 {
                            task.abort();
                            self.subjects.remove(&s);
                        }
                    }
                }
                if !announce(cluster, &filter, None).await {
                    self.retry_later(cluster);
                }
            }
        }
    }

    async fn add_subject(&mut self, cluster: &Arc<Cluster>, broker: &Arc<Broker>, s: String) {
        if let Some((count, _)) = self.subjects.get_mut(&s) {
            *count += 1;
            return;
        }
        match cluster.client.subscribe(s.clone()).await {
            Ok(mut sub) => {
                let c = Arc::clone(cluster);
                let b = Arc::clone(broker);
                let subject = s.clone();
                let task = tokio::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        c.on_core(&b, &subject, msg.payload).await;
                    }
                });
                self.subjects.insert(s, (1, task.abort_handle()));
            }
            Err(e) => error!(subject = %s, error = %e, "cannot subscribe on NATS"),
        }
    }

    /// Re-announces every filter and removes this node's stale keys (from before a
    /// restart, or changes lost while NATS was away).
    /// Returns whether everything was announced.
    async fn resync(&mut self, cluster: &Cluster) -> bool {
        let Some(buckets) = cluster.buckets.get() else {
            return true;
        };
        if !cluster.is_connected() {
            return true;
        }
        let mine = format!("{}.", cluster.node);
        let mut complete = true;
        if let Ok(Ok(mut keys)) =
            tokio::time::timeout(CONTROL_TIMEOUT, buckets.interest.keys()).await
        {
            let mut stale = Vec::new();
            while let Ok(Some(Ok(key))) = tokio::time::timeout(CONTROL_TIMEOUT, keys.next()).await {
                let Some(filter) = key.strip_prefix(&mine).and_then(unb64) else {
                    continue;
                };
                if !self.filters.contains_key(filter.as_str()) {
                    stale.push(key);
                }
            }
            for key in stale {
                let _ = buckets.interest.delete(&key).await;
            }
        } else {
            complete = false;
        }
        for (filter, durable) in &self.filters {
            if !complete {
                break;
            }
            complete &= announce(cluster, filter, Some(*durable)).await;
        }
        if complete {
            info!(
                filters = self.filters.len(),
                "interest announced to the cluster"
            );
        }
        complete
    }
}

/// Writes (or with `None`, deletes) this node's key for `filter` in the interest
/// bucket; returns whether it was written.
async fn announce(cluster: &Cluster, filter: &str, durable: Option<bool>) -> bool {
    let Some(buckets) = cluster.buckets.get() else {
        return false;
    };
    if !cluster.is_connected() {
        // Re-announced in full when NATS returns (the Connected event resyncs).
        return false;
    }
    let key = format!("{}.{}", cluster.node, b64(filter));
    let result = match durable {
        Some(d) => tokio::time::timeout(
            CONTROL_TIMEOUT,
            buckets
                .interest
                .put(&key, Bytes::from_static(if d { b"1" } else { b"0" })),
        )
        .await
        .map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
        None => tokio::time::timeout(CONTROL_TIMEOUT, buckets.interest.delete(&key))
            .await
            .map(|r| r.map_err(|e| e.to_string())),
    };
    match result {
        Ok(Ok(())) => return true,
        Ok(Err(e)) => warn!(filter, error = %e, "interest not announced; will resync"),
        Err(_) => warn!(filter, "interest announcement timed out; will resync"),
    }
    false
}

/// Follows a bucket from its current values on: `on_entry` sees every key's latest value
/// (or deletion), then every change. A watch that ends (NATS went away) starts again
/// from the current values, which the handlers apply idempotently.
async fn follow_bucket(
    bucket: &kv::Store,
    name: &str,
    broker: &Broker,
    mut on_entry: impl FnMut(kv::Entry),
) {
    loop {
        let mut watch = match bucket.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                warn!(bucket = name, error = %e, "cannot watch the bucket; retrying");
                tokio::select! {
                    _ = broker.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                _ = broker.shutdown.cancelled() => return,
                e = watch.next() => e,
            };
            let Some(Ok(entry)) = entry else { break };
            on_entry(entry);
        }
        warn!(bucket = name, "bucket watch ended; restarting it");
    }
}

/// Follows the interest bucket: what every other node is subscribed to.
async fn watch_interest(cluster: Arc<Cluster>, broker: Arc<Broker>) {
    let Some(buckets) = cluster.buckets.get() else {
        return;
    };
    follow_bucket(&buckets.interest, "interest", &broker, |entry| {
        let Some((node, filter)) = entry
            .key
            .split_once('.')
            .and_then(|(n, f)| Some((n.to_string(), unb64(f)?)))
        else {
            return;
        };
        if node == *cluster.node {
            return;
        }
        let mut remote = cluster.remote.write();
        match entry.operation {
            kv::Operation::Put => {
                let durable = entry.value.as_ref() == b"1";
                remote.set(&node, &filter, durable);
                debug!(%node, %filter, durable, "remote interest added");
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                remote.remove(&node, &filter);
                debug!(%node, %filter, "remote interest removed");
            }
        }
        metrics::gauge!(metric::CLUSTER_REMOTE_FILTERS).set(remote.len() as f64);
    })
    .await;
}

/// Follows the retained bucket: every node holds every retained message.
async fn watch_retained(cluster: Arc<Cluster>, broker: Arc<Broker>) {
    let Some(buckets) = cluster.buckets.get() else {
        return;
    };
    follow_bucket(
        &buckets.retained,
        "retained",
        &broker,
        |entry| match entry.operation {
            kv::Operation::Put => match Envelope::decode(entry.value.clone()) {
                Ok(env) if env.origin != *cluster.node => {
                    metrics::counter!(metric::CLUSTER_RECEIVED, "path" => "retained").increment(1);
                    let message = Arc::new(env.to_message(broker.next_message_id()));
                    broker.router.retain(&message);
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "unreadable retained message in the bucket"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                if let Some(topic) = unb64(&entry.key) {
                    broker.router.clear_retained(&topic);
                }
            }
        },
    )
    .await;
}

/// Consumes this node's durable inbox: stores each message for its persistent
/// subscribers (or its handed-over session), and acks JetStream only once the local log
/// has it.
async fn consume_inbox(cluster: Arc<Cluster>, broker: Arc<Broker>) {
    use jetstream::consumer::{pull, AckPolicy};
    let permits = Arc::new(tokio::sync::Semaphore::new(INBOX_CONCURRENCY));
    loop {
        let consumer = async {
            let stream = cluster
                .js
                .get_stream(format!("{}-queue", cluster.prefix))
                .await
                .map_err(|e| e.to_string())?;
            stream
                .get_or_create_consumer(
                    &cluster.node,
                    pull::Config {
                        durable_name: Some(cluster.node.to_string()),
                        filter_subject: cluster.queue_subject(&cluster.node),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: INBOX_ACK_WAIT,
                        max_ack_pending: INBOX_CONCURRENCY as i64 * 4,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let mut messages = match consumer {
            // Short pulls: a pull request left by a killed process holds back delivery
            // until it expires.
            Ok(mut c) => match c
                .stream()
                .max_messages_per_batch(256)
                .expires(Duration::from_secs(4))
                .heartbeat(Duration::from_secs(1))
                .messages()
                .await
            {
                Ok(m) => {
                    if let Ok(info) = c.info().await {
                        info!(
                            pending = info.num_pending,
                            unacknowledged = info.num_ack_pending,
                            redelivered = info.num_redelivered,
                            "durable inbox open"
                        );
                    }
                    m
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the durable inbox; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(e) => {
                warn!(error = %e, "cannot open the durable inbox; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = broker.shutdown.cancelled() => return,
                m = messages.next() => m,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    debug!(error = %e, "durable inbox read error");
                    continue;
                }
                None => break,
            };
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
            let env = match Envelope::decode(msg.payload.clone()) {
                Ok(e) => e,
                Err(e) => {
                    error!(error = %e, "undecodable message in the durable inbox; terminating it");
                    let _ = msg.ack_with(jetstream::AckKind::Term).await;
                    continue;
                }
            };
            let stored = match &env.session {
                Some(client_id) => {
                    broker
                        .accept_handoff(&env, client_id, delivered >= HANDOFF_MAX_DELIVERIES)
                        .await
                }
                None => {
                    metrics::counter!(metric::CLUSTER_RECEIVED, "path" => "queue").increment(1);
                    let stored = broker
                        .accept_remote(&env, &cluster.node, RemoteMode::Durable)
                        .await;
                    let moved = cluster.follow_moved(&env).await;
                    stored.map(|mut t| {
                        t.extend(moved);
                        Some(t)
                    })
                }
            };
            tokio::spawn(async move {
                let _permit = permit;
                let tickets = match stored {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        let _ = msg
                            .ack_with(jetstream::AckKind::Nak(Some(HANDOFF_RETRY)))
                            .await;
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "inbox message not stored; JetStream will redeliver it");
                        let _ = msg
                            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                        return;
                    }
                };
                for t in tickets {
                    if let Err(e) = t.wait().await {
                        warn!(error = %e, "inbox message not durable; JetStream will redeliver it");
                        let _ = msg
                            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                        return;
                    }
                }
                if let Err(e) = msg.ack().await {
                    debug!(error = %e, "inbox ack not confirmed; the message may come again");
                }
            });
        }
        warn!("durable inbox ended; reopening it");
    }
}

/// At start-up: sessions this node restored from its log but another node took over
/// while this one was down go to their owner now, queued messages included.
async fn hand_off_stale_sessions(cluster: &Arc<Cluster>, broker: &Arc<Broker>) {
    let Some(buckets) = cluster.buckets.get() else {
        return;
    };
    for session in broker.sessions.all() {
        if broker.is_dead_letter_session(&session.client_id) {
            continue;
        }
        let key = b64(&session.client_id);
        let owner = match tokio::time::timeout(CONTROL_TIMEOUT, buckets.sessions.get(&key)).await {
            Ok(Ok(Some(owner))) => owner,
            _ => continue,
        };
        let Ok(owner) = std::str::from_utf8(&owner) else {
            continue;
        };
        if owner != &*cluster.node {
            info!(client_id = %session.client_id, owner, "session was taken over while this node was down; handing over what it held");
            hand_off(cluster, broker, &session.client_id, owner, false).await;
        }
    }
}

/// Answers other nodes' takeover requests for sessions this node owns.
async fn takeover_responder(cluster: Arc<Cluster>, broker: Arc<Broker>) {
    let subject = format!("{}.node.{}.takeover", cluster.prefix, cluster.node);
    let mut sub = match cluster.client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            error!(%subject, error = %e, "cannot serve session takeovers");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            m = sub.next() => m,
        };
        let Some(msg) = msg else { return };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let mut r = crate::wire::Reader(msg.payload.clone());
        let parsed = (|| Some((r.u8().ok()? != 0, r.string().ok()?, r.string().ok()?)))();
        let Some((clean_start, to_node, client_id)) = parsed else {
            warn!("malformed takeover request ignored");
            continue;
        };
        let c = Arc::clone(&cluster);
        let b = Arc::clone(&broker);
        tokio::spawn(async move {
            let state = hand_off(&c, &b, &client_id, &to_node, clean_start).await;
            let _ = c.client.publish(reply, state.unwrap_or_default()).await;
        });
    }
}

/// Gives `client_id`'s session to `to_node`: disconnects the client here (0x8E),
/// removes the session, sends what it had queued to `to_node`'s inbox, and returns its
/// state (subscriptions, expiry). With `clean_start` the session ends here instead and
/// what it held becomes dead letters, as a local clean start would.
async fn hand_off(
    cluster: &Cluster,
    broker: &Arc<Broker>,
    client_id: &str,
    to_node: &str,
    clean_start: bool,
) -> Option<Bytes> {
    let session = broker.sessions.get(client_id)?;
    if !broker.sessions.remove_if_same(&session) {
        return None;
    }
    if let Some(kick) = session.take_owner_kick() {
        let _ = kick.send(crate::protocol::reason::SESSION_TAKEN_OVER);
    }
    let state = session.persisted_state();
    if !clean_start {
        let filters = session
            .subscriptions()
            .into_iter()
            .map(|(f, r)| (f, r.options.qos))
            .collect();
        cluster.moved.lock().insert(client_id, to_node, filters);
    }
    let mut discarded = crate::broker::lifecycle::discard_session(broker, &session);
    metrics::counter!(metric::CLUSTER_TAKEOVERS, "direction" => "out").increment(1);
    info!(
        client_id,
        to = to_node,
        clean_start,
        "session handed to another node"
    );
    if clean_start {
        crate::broker::lifecycle::finish_discard_now(broker, discarded).await;
        return None;
    }
    let left = std::mem::take(&mut discarded.left);
    let mut tickets = Vec::with_capacity(left.len());
    for d in &left {
        let mut env = Envelope::for_message(&cluster.node, &d.message);
        env.session = Some(client_id.to_string());
        env.qos = d.qos;
        tickets.push(cluster.to_inbox(to_node, env.encode(), "session").await);
    }
    let mut failed = Vec::new();
    for (t, d) in tickets.into_iter().zip(left) {
        if t.wait().await.is_err() {
            failed.push(d);
        }
    }
    if !failed.is_empty() {
        // Never silently: what could not be handed over is dead-lettered here.
        discarded.left = failed;
    }
    crate::broker::lifecycle::finish_discard_now(broker, discarded).await;
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_sessions_are_found_by_topic_and_forgotten() {
        let mut m = Moved::default();
        m.insert(
            "dev-1",
            "b",
            vec![
                ("s/+/t".into(), QoS::AtMostOnce),
                ("s/#".into(), QoS::AtLeastOnce),
            ],
        );
        m.insert(
            "dev-2",
            "c",
            vec![("$share/g/s/1/t".into(), QoS::ExactlyOnce)],
        );
        let mut hits = m.matching("s/1/t");
        hits.sort();
        assert_eq!(
            hits,
            vec![
                (Arc::from("dev-1"), Arc::from("b"), QoS::AtLeastOnce),
                (Arc::from("dev-2"), Arc::from("c"), QoS::ExactlyOnce),
            ]
        );
        // Moving again replaces the old entry; coming back forgets it.
        m.insert("dev-1", "c", vec![("x".into(), QoS::AtLeastOnce)]);
        assert_eq!(m.matching("s/1/t").len(), 1);
        m.remove("dev-2");
        assert!(m.matching("s/1/t").is_empty());
        assert_eq!(
            m.matching("x"),
            vec![(Arc::from("dev-1"), Arc::from("c"), QoS::AtLeastOnce)]
        );
        assert_eq!(m.order.len(), 1);
    }

    #[test]
    fn shared_groups_go_to_one_node_in_turn() {
        let mut remote = RemoteInterest::default();
        remote.set("b", "$share/g/w/#", false);
        remote.set("c", "$share/g/w/#", true);
        let mut picks = Vec::new();
        for start in 0..4 {
            let mut plan = Plan {
                remote: remote.matches("w/1"),
                qos: Some(QoS::AtLeastOnce),
                start,
                ..Plan::default()
            };
            assert!(plan.has_remote(), "a group elsewhere is a subscriber");
            plan.finish();
            assert_eq!(plan.assignments.len(), 1);
            picks.push(plan.assignments[0].1.to_string());
            // The durable member's node must take it before the PUBACK.
            assert_eq!(
                plan.durable_nodes.len(),
                usize::from(picks.last().map(String::as_str) == Some("c"))
            );
        }
        picks.sort();
        assert_eq!(picks, vec!["b", "b", "c", "c"]);
    }
}
