//! Wiring: starts the listeners, owns the shared state handles, and shuts down in order.
//!
//! [`Broker`] is the one place that holds every long-lived part (config, session
//! registry, router); connection tasks get an `Arc<Broker>` and use its handles. Shutdown
//! is a [`CancellationToken`] every connection selects on, plus a [`TaskTracker`] the
//! broker waits on for the grace period.

pub(crate) mod lifecycle;

use crate::auth::AuthFiles;
use crate::cluster::envelope::Envelope;
use crate::cluster::{Cluster, RemoteMode};
use crate::config::{Config, Durability, Spill};
use crate::dead_letter::{self, DeadLetterReason};
use crate::listener::{self, Listener};
use crate::message::{decode_properties, encode_properties, Message};
use crate::metrics as metric;
use crate::protocol::QoS;
use crate::protocol::SubscriptionOptions;
use crate::router::Router;
use crate::session::{Delivery, QueueLimits, Session, SessionRegistry};
use crate::session::{SubscriptionRecord, EXPIRY_NEVER};
use crate::store::{
    CommitTicket, DurabilityPolicy, Record, Recovered, Store, StoreConfig, StoreError,
    StoredMessage,
};
use parking_lot::RwLock;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error("cannot load the password or ACL file")]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot set up TLS")]
    Tls(#[from] crate::listener::tls::TlsError),
    #[error("cannot join the cluster")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct Broker {
    pub config: Config,
    pub sessions: SessionRegistry,
    pub router: Router,
    /// Cancelled once on SIGINT/SIGTERM; every connection task listens for it.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them to finish.
    pub tasks: TaskTracker,
    /// One permit per open connection ([limits] max_connections).
    pub connection_permits: Arc<Semaphore>,
    /// One permit per connection still before CONNECT ([limits] max_pending_connects).
    pub pending_connect_permits: Arc<Semaphore>,
    /// One permit per TLS handshake in progress ([limits] max_tls_handshakes).
    pub tls_handshake_permits: Arc<Semaphore>,
    /// The broker-wide queue budget and the per-address connection rate.
    pub guards: crate::limits::Guards,
    /// The durable log: persistent sessions, their queues, retained messages.
    pub store: Store,
    /// Password and ACL files in force (swapped whole on SIGHUP).
    pub auth: RwLock<Arc<AuthFiles>>,
    /// The bounded pool CONNECT password checks hash on (never a tokio worker).
    pub password_checks: crate::auth::PasswordChecks,
    /// Bound listeners, for SIGHUP's certificate reload.
    listeners: parking_lot::Mutex<Vec<Arc<Listener>>>,
    /// This node's cluster membership, when `[cluster] enabled`.
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    /// Dead letters and shed dead letters are logged at most once a second each (with
    /// how many were not): an overflowing queue must not flood the log. Every one is
    /// counted in the metrics.
    dead_letter_log: crate::limits::LogEvery,
    shed_log: crate::limits::LogEvery,
    /// `$delayed/` messages waiting for their due time.
    pub delayed: crate::delayed::Schedule,
    /// `[[priority]]` levels, shared by every session's queue.
    priorities: Arc<crate::session::Priorities>,
}

/// Why a delayed message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DelayRefusal {
    #[error(transparent)]
    Refused(crate::delayed::DelayError),
    #[error(transparent)]
    Store(StoreError),
}

/// What accepting a message did.
#[derive(Debug)]
pub struct Accepted {
    /// Sessions the message was offered to (0: v5 PUBACK 0x10).
    pub matched: usize,
    /// Resolve when the message, its enqueue records and any dead letters it caused are
    /// durable; empty when nothing needed the disk.
    pub tickets: Vec<CommitTicket>,
}

/// A started broker and the addresses it bound (port 0 resolved).
#[derive(Debug)]
pub struct Running {
    pub broker: Arc<Broker>,
    /// Every bound listener address.
    pub mqtt_addrs: Vec<SocketAddr>,
    /// The same, with each listener's scheme ("mqtt" or "mqtts") for the ready line.
    pub listener_addrs: Vec<(&'static str, SocketAddr)>,
}

impl Broker {
    /// Opens the store, restores what it recovered, and returns the broker (not yet
    /// listening).
    pub fn open(config: Config) -> Result<Arc<Broker>, BrokerError> {
        let (store, recovered) = Store::open(StoreConfig {
            dir: config.data_dir.clone(),
            policy: match config.store.durability {
                Durability::Fsync => DurabilityPolicy::Fsync,
                Durability::Write => DurabilityPolicy::Write,
            },
            segment_bytes: config.store.segment_bytes,
            ..StoreConfig::default()
        })?;
        let auth = AuthFiles::load(&config.auth)?;
        let mut router = Router::new(config.limits.max_topic_levels);
        if config.cluster.enabled {
            router = router.tracking_interest(Some(&config.dead_letter.client_id));
        }
        let permits = Arc::new(Semaphore::new(config.limits.max_connections));
        let pending = Arc::new(Semaphore::new(config.limits.max_pending_connects));
        let handshakes = Arc::new(Semaphore::new(config.limits.max_tls_handshakes));
        let guards = crate::limits::Guards::new(&config.limits);
        let broker = Arc::new(Broker {
            auth: RwLock::new(Arc::new(auth)),
            password_checks: crate::auth::PasswordChecks::new(
                crate::auth::PasswordChecks::default_slots(),
            ),
            listeners: parking_lot::Mutex::new(Vec::new()),
            cluster: std::sync::OnceLock::new(),
            dead_letter_log: crate::limits::LogEvery::new(Duration::from_secs(1)),
            shed_log: crate::limits::LogEvery::new(Duration::from_secs(1)),
            delayed: crate::delayed::Schedule::new(config.delayed.max_messages),
            priorities: Arc::new(crate::session::Priorities::new(
                config
                    .priorities
                    .iter()
                    .map(|p| (p.filter.clone(), p.level)),
            )),
            config,
            sessions: SessionRegistry::default(),
            router,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connection_permits: permits,
            pending_connect_permits: pending,
            tls_handshake_permits: handshakes,
            guards,
            store,
        });
        broker.restore(recovered);
        Ok(broker)
    }

    /// Queue bounds for a session: the configured ones, or the dead-letter session's
    /// own (which never gives up on a message it is holding for an operator).
    pub fn queue_limits_for(&self, client_id: &str) -> QueueLimits {
        let dl = &self.config.dead_letter;
        if self.is_dead_letter_session(client_id) {
            return QueueLimits {
                max_messages: dl.max_messages,
                max_bytes: dl.max_bytes,
                queue_qos0_offline: false,
                drop_newest: false,
                max_delivery_attempts: 0,
                budget: Arc::clone(&self.guards.queue_budget),
                priorities: Arc::clone(&self.priorities),
            };
        }
        QueueLimits {
            max_messages: self.config.limits.max_queued_messages,
            max_bytes: self.config.limits.max_queued_bytes,
            queue_qos0_offline: self.config.session.queue_qos0_offline,
            drop_newest: dl.queue_full_spill == Spill::Newest,
            max_delivery_attempts: dl.max_delivery_attempts,
            budget: Arc::clone(&self.guards.queue_budget),
            priorities: Arc::clone(&self.priorities),
        }
    }

    pub fn is_dead_letter_session(&self, client_id: &str) -> bool {
        client_id == self.config.dead_letter.client_id
    }

    /// Creates the built-in dead-letter session (persistent, never expires, subscribed
    /// to `<prefix>/#`) unless the log already had it.
    pub async fn ensure_dead_letter_session(&self) -> Result<(), StoreError> {
        let dl = &self.config.dead_letter;
        let session = match self.sessions.get(&dl.client_id) {
            Some(s) => s,
            None => {
                let s = Arc::new(Session::new(
                    Arc::from(dl.client_id.as_str()),
                    EXPIRY_NEVER,
                    self.queue_limits_for(&dl.client_id),
                ));
                self.sessions.insert(Arc::clone(&s));
                s
            }
        };
        let filter = format!("{}/#", dl.topic_prefix);
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        };
        if !session.subscriptions().iter().any(|(f, _)| *f == filter) {
            self.router
                .subscribe(&session, &filter, options, None)
                .map_err(|e| StoreError::Invalid(format!("dead-letter filter {filter}: {e}")))?;
            session.add_subscription(
                &filter,
                SubscriptionRecord {
                    options,
                    identifier: None,
                },
            );
        }
        session.set_expiry_secs(EXPIRY_NEVER);
        self.store
            .commit(vec![Record::Session {
                client_id: dl.client_id.clone(),
                state: session.persisted_state(),
            }])
            .await?;
        session.set_persisted(true);
        Ok(())
    }

    /// Rebuilds sessions, subscriptions, queues and retained messages from the log.
    fn restore(self: &Arc<Broker>, recovered: Recovered) {
        if let Some((path, offset)) = &recovered.truncated_tail {
            tracing::warn!(file = %path.display(), offset, "torn log tail truncated");
        }
        let mut queues = recovered.queues;
        let mut restored = 0usize;
        for (client_id, blob) in recovered.sessions {
            let state = match crate::session::persist::decode_state(blob) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(%client_id, error = %e, "cannot restore session; skipping it");
                    continue;
                }
            };
            let session = Arc::new(Session::new(
                Arc::from(client_id.as_str()),
                state.expiry_secs,
                self.queue_limits_for(&client_id),
            ));
            session.set_persisted(true);
            for (filter, record) in &state.subscriptions {
                if let Err(e) =
                    self.router
                        .subscribe(&session, filter, record.options, record.identifier)
                {
                    tracing::warn!(%client_id, %filter, error = %e, "stored subscription invalid; dropped");
                    continue;
                }
                session.add_subscription(filter, record.clone());
            }
            if let Some(entries) = queues.remove(&client_id) {
                let mut queued = Vec::with_capacity(entries.len());
                for e in entries {
                    let message = Arc::new(message_from_store(&e.message));
                    let qos = state
                        .subscriptions
                        .iter()
                        .filter(|(f, _)| subscription_matches(f, &message.topic))
                        .map(|(_, r)| r.options.qos)
                        .max()
                        .map_or(message.qos, |q| q.min(message.qos))
                        .max(QoS::AtLeastOnce);
                    let delivery = Delivery {
                        message,
                        qos,
                        retain: false,
                        subscription_ids: Vec::new(),
                        attempts: e.attempts,
                        durable: true,
                    };
                    match e.outbound {
                        Some((packet_id, released)) if qos == QoS::ExactlyOnce => {
                            session.restore_inflight(delivery, packet_id, released)
                        }
                        _ => queued.push(delivery),
                    }
                }
                session.restore(queued);
            }
            if let Some(pids) = recovered.qos2_pending.get(&client_id) {
                for &pid in pids {
                    session.begin_inbound_qos2(pid);
                }
            }
            let generation = session.generation();
            let expiry = state.expiry_secs;
            self.sessions.insert(Arc::clone(&session));
            lifecycle::schedule_expiry(self, &session, generation, expiry);
            restored += 1;
        }
        for (_, stored) in recovered.retained {
            self.router
                .restore_retained(Arc::new(message_from_store(&stored)));
        }
        for (stored, due_ms) in recovered.delayed {
            self.delayed
                .restore(due_ms, Arc::new(message_from_store(&stored)));
        }
        tracing::info!(
            sessions = restored,
            retained = self.router.retained_count(),
            records = recovered.records_replayed,
            bytes = recovered.bytes_replayed,
            duration_ms = recovered.duration.as_millis() as u64,
            "store recovered"
        );
    }

    /// Binds every listener and starts accepting.
    pub async fn start(config: Config) -> Result<Running, BrokerError> {
        let broker = Broker::open(config)?;
        broker.ensure_dead_letter_session().await?;
        if broker.config.cluster.enabled {
            let cluster = Cluster::start(&broker).await?;
            let _ = broker.cluster.set(cluster);
        }
        let mut mqtt_addrs = Vec::new();
        let mut listener_addrs = Vec::new();
        let mut listeners = Vec::new();
        for l in &broker.config.listeners {
            let listener = Arc::new(Listener::new(l.clone())?);
            let socket = bind_listener(l.bind).map_err(|source| BrokerError::Bind {
                addr: l.bind,
                source,
            })?;
            let local = socket.local_addr().map_err(|source| BrokerError::Bind {
                addr: l.bind,
                source,
            })?;
            mqtt_addrs.push(local);
            listener_addrs.push((l.scheme(), local));
            if !l.anonymous_allowed() {
                tracing::info!(bind = %local, "anonymous clients are refused on this listener");
            }
            listeners.push(Arc::clone(&listener));
            tokio::spawn(listener::accept_loop(socket, listener, Arc::clone(&broker)));
        }
        *broker.listeners.lock() = listeners;
        tokio::spawn(Arc::clone(&broker).run_delayed());
        Ok(Running {
            broker,
            mqtt_addrs,
            listener_addrs,
        })
    }

    /// SIGHUP: re-reads the password file, the ACL file and every TLS listener's
    /// certificates. What fails to load keeps its current version, and the log says why;
    /// open connections are not dropped.
    pub fn reload(&self) {
        match AuthFiles::load(&self.config.auth) {
            Ok(files) => {
                *self.auth.write() = Arc::new(files);
                tracing::info!("password and ACL files reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the previous password and ACL files")
            }
        }
        for l in self.listeners.lock().iter() {
            if l.tls.is_none() {
                continue;
            }
            match l.reload_tls() {
                Ok(()) => tracing::info!(bind = %l.config.bind, "TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(bind = %l.config.bind, error = %e, "TLS reload failed; keeping the previous certificates")
                }
            }
        }
    }

    /// The password and ACL files in force now.
    pub fn auth_files(&self) -> Arc<AuthFiles> {
        Arc::clone(&self.auth.read())
    }

    /// This node's cluster handle, when it is part of one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    pub fn next_message_id(&self) -> u64 {
        self.store.next_message_id()
    }

    /// Accepts a message (a PUBLISH or a will): finds its targets, submits it and an
    /// Enqueue record per persistent target (plus `extra` records, and its retained
    /// state) to the store, then queues it in memory. The order matters: the batch takes
    /// its place in the log before any subscriber can see, and ack, the message.
    pub async fn accept(
        &self,
        message: &Arc<Message>,
        mut extra: Vec<Record>,
    ) -> Result<Accepted, StoreError> {
        let cluster = self.cluster().filter(|c| c.carries(&message.topic));
        let mut plan = cluster.map(|c| c.plan(message));
        let mut targets = match &mut plan {
            Some(plan) => self
                .router
                .route_with(message, &mut |share| plan.share_here(share)),
            None => self.router.route(message),
        };
        let mut records = Vec::new();
        let mut durable_any = false;
        if message.qos != QoS::AtMostOnce {
            for (session, delivery) in targets.iter_mut() {
                if delivery.qos != QoS::AtMostOnce && session.is_persistent() {
                    delivery.durable = true;
                    durable_any = true;
                    records.push(Record::Enqueue {
                        session: session.client_id.to_string(),
                        message_id: message.id,
                    });
                }
            }
        }
        if message.retain {
            if message.payload.is_empty() {
                records.push(Record::RetainClear {
                    topic: message.topic.clone(),
                });
            } else {
                durable_any = true;
                records.push(Record::Retain {
                    topic: message.topic.clone(),
                    message_id: message.id,
                });
            }
        }
        if durable_any {
            records.insert(0, Record::Message(Arc::new(message_to_store(message))));
        }
        records.append(&mut extra);
        let mut tickets = Vec::new();
        if !records.is_empty() {
            tickets.push(self.store.submit(records).await?);
        }
        if message.retain {
            self.router.retain(message);
        }
        let mut matched = targets.len();
        for (session, delivery) in targets {
            let outcome = session.enqueue(delivery);
            for evicted in outcome.evicted {
                // Boxed: rare, and its state would otherwise grow every connection's
                // future (accept is awaited inline on the publish path).
                tickets.extend(
                    Box::pin(self.undeliverable(&session, evicted, DeadLetterReason::QueueFull))
                        .await,
                );
            }
        }
        if let (Some(cluster), Some(plan)) = (cluster, plan) {
            if plan.has_remote() {
                matched += 1;
            }
            // Boxed: ~2 KB of state that every connection's future would otherwise
            // carry, clustered or not (accept is awaited inline on the publish path).
            Box::pin(cluster.forward(message, plan, &mut tickets)).await;
        }
        if matched == 0 && message.qos != QoS::AtMostOnce && self.config.dead_letter.no_subscribers
        {
            let ctx = dead_letter::Context {
                reason: DeadLetterReason::NoSubscribers,
                subscriber: None,
                attempts: 0,
            };
            tickets.extend(self.dead_letter(message, ctx).await);
        }
        Ok(Accepted { matched, tickets })
    }

    /// Delivers a message another node accepted: to the local subscribers `mode`
    /// selects (never the dead-letter session: dead letters stay on their node), durably
    /// for the persistent ones. Retained state arrives separately (the retained bucket).
    /// Returns the tickets of its commit.
    pub async fn accept_remote(
        &self,
        env: &Envelope,
        node: &str,
        mode: RemoteMode<'_>,
    ) -> Result<Vec<CommitTicket>, StoreError> {
        let message = Arc::new(env.to_message(self.next_message_id()));
        let targets = {
            let mut share_here =
                |share: &str| env.assignments.iter().any(|(s, n)| s == share && n == node);
            let all = |_: &str| true;
            let serves: &(dyn Fn(&str) -> bool + Sync) = match &mode {
                RemoteMode::Core { serves, .. } => *serves,
                RemoteMode::Durable => &all,
            };
            self.router.route_part(&message, &mut share_here, serves)
        };
        let mut targets: Vec<(Arc<Session>, Delivery)> = targets
            .into_iter()
            .filter(|t| {
                if self.is_dead_letter_session(&t.session.client_id) {
                    return false;
                }
                // Whether the inbox copy serves the session: judged on every
                // subscription it has, as the inbox copy is routed.
                let durable = t.overall_qos != QoS::AtMostOnce && t.session.is_persistent();
                match mode {
                    RemoteMode::Core { skip_durable, .. } => !(skip_durable && durable),
                    RemoteMode::Durable => durable,
                }
            })
            .map(|t| (t.session, t.delivery))
            .collect();
        let mut records = Vec::new();
        for (session, delivery) in targets.iter_mut() {
            if delivery.qos != QoS::AtMostOnce && session.is_persistent() {
                delivery.durable = true;
                records.push(Record::Enqueue {
                    session: session.client_id.to_string(),
                    message_id: message.id,
                });
            }
        }
        let mut tickets = Vec::new();
        if !records.is_empty() {
            records.insert(0, Record::Message(Arc::new(message_to_store(&message))));
            tickets.push(self.store.submit(records).await?);
        }
        for (session, delivery) in targets {
            for evicted in session.enqueue(delivery).evicted {
                tickets.extend(
                    self.undeliverable(&session, evicted, DeadLetterReason::QueueFull)
                        .await,
                );
            }
        }
        Ok(tickets)
    }

    /// Stores a message another node handed over with `client_id`'s session. `None`
    /// while the session has not arrived here yet (the caller retries), unless
    /// `give_up`: then it becomes a dead letter.
    pub async fn accept_handoff(
        &self,
        env: &Envelope,
        client_id: &str,
        give_up: bool,
    ) -> Result<Option<Vec<CommitTicket>>, StoreError> {
        let message = Arc::new(env.to_message(self.next_message_id()));
        let Some(session) = self.sessions.get(client_id).filter(|s| !s.is_ended()) else {
            if !give_up {
                return Ok(None);
            }
            let ctx = dead_letter::Context {
                reason: DeadLetterReason::SessionExpired,
                subscriber: Some(client_id),
                attempts: 0,
            };
            return Ok(Some(self.dead_letter(&message, ctx).await));
        };
        let durable = session.is_persistent() && env.qos != QoS::AtMostOnce;
        let mut tickets = Vec::new();
        if durable {
            let records = vec![
                Record::Message(Arc::new(message_to_store(&message))),
                Record::Enqueue {
                    session: client_id.to_string(),
                    message_id: message.id,
                },
            ];
            tickets.push(self.store.submit(records).await?);
        }
        let delivery = Delivery {
            message: Arc::clone(&message),
            qos: env.qos,
            retain: false,
            subscription_ids: Vec::new(),
            attempts: 0,
            durable,
        };
        for evicted in session.enqueue(delivery).evicted {
            tickets.extend(
                self.undeliverable(&session, evicted, DeadLetterReason::QueueFull)
                    .await,
            );
        }
        Ok(Some(tickets))
    }

    /// Publishes the dead letter for `original` (or sheds it, if it is one already).
    /// Returns the tickets that resolve when the dead letter is durable.
    pub fn dead_letter<'a>(
        &'a self,
        original: &'a Arc<Message>,
        ctx: dead_letter::Context<'a>,
    ) -> Pin<Box<dyn Future<Output = Vec<CommitTicket>> + Send + 'a>> {
        Box::pin(async move {
            let prefix = &self.config.dead_letter.topic_prefix;
            if dead_letter::is_dead_letter(prefix, &original.topic) {
                // A dead letter is never dead-lettered again: this is the one place
                // sluice discards, and it says so.
                metrics::counter!(metric::DEAD_LETTERS_SHED).increment(1);
                if let Some(not_logged) = self.shed_log.ready() {
                    tracing::error!(
                        topic = %original.topic,
                        reason = ctx.reason.label(),
                        not_logged,
                        "dead-letter queue full or undeliverable; dead letter shed"
                    );
                }
                return Vec::new();
            }
            metrics::counter!(metric::DEAD_LETTERS, "reason" => ctx.reason.label()).increment(1);
            if let Some(not_logged) = self.dead_letter_log.ready() {
                tracing::warn!(
                    topic = %original.topic,
                    reason = ctx.reason.label(),
                    subscriber = ctx.subscriber.unwrap_or(""),
                    not_logged,
                    "message dead-lettered"
                );
            }
            let dl = Arc::new(dead_letter::build(
                prefix,
                self.next_message_id(),
                original,
                &ctx,
                crate::message::now_ms(),
            ));
            match self.accept(&dl, Vec::new()).await {
                Ok(accepted) => accepted.tickets,
                Err(e) => {
                    tracing::error!(error = %e, topic = %dl.topic, "dead letter not stored");
                    Vec::new()
                }
            }
        })
    }

    /// A message that will not reach `session`: it becomes a dead letter, and its
    /// place in the session's durable queue is released.
    pub async fn undeliverable(
        &self,
        session: &Session,
        delivery: Delivery,
        reason: DeadLetterReason,
    ) -> Vec<CommitTicket> {
        let ctx = dead_letter::Context {
            reason,
            subscriber: Some(&session.client_id),
            attempts: delivery.attempts,
        };
        let tickets = self.dead_letter(&delivery.message, ctx).await;
        if delivery.durable {
            self.ack_durable(session, &delivery).await;
        }
        tickets
    }

    /// Accepts a `$delayed/` message (its topic already the target) to publish at
    /// `due_ms`: at QoS ≥ 1 the message and its due time are made durable (the returned
    /// tickets, which the PUBACK waits for) before it can come due. Refused when
    /// `delayed.max_messages` are waiting.
    pub async fn delay(
        &self,
        message: &Arc<Message>,
        due_ms: u64,
        mut extra: Vec<Record>,
    ) -> Result<Vec<CommitTicket>, DelayRefusal> {
        self.delayed.has_room().map_err(DelayRefusal::Refused)?;
        let mut records = Vec::new();
        if message.qos != QoS::AtMostOnce {
            records.push(Record::Message(Arc::new(message_to_store(message))));
            records.push(Record::Delay {
                message_id: message.id,
                due_at_ms: due_ms,
            });
        }
        records.append(&mut extra);
        let mut tickets = Vec::new();
        if !records.is_empty() {
            tickets.push(
                self.store
                    .submit(records)
                    .await
                    .map_err(DelayRefusal::Store)?,
            );
        }
        self.delayed.insert(due_ms, Arc::clone(message));
        metrics::counter!(crate::metrics::DELAYED_ACCEPTED).increment(1);
        Ok(tickets)
    }

    /// Publishes delayed messages as they come due, until shutdown. Each goes out as a
    /// new message (a new id, received now) on its target topic; its Delay record ends
    /// (DelayDone) only once that publish is durable, so a crash in between publishes it
    /// again after the restart rather than never (at least once).
    async fn run_delayed(self: Arc<Broker>) {
        /// Most messages published per turn: many coming due at once share one commit.
        const BATCH: usize = 1024;
        loop {
            let now = crate::message::now_ms();
            let due = self.delayed.take_due(now, BATCH);
            if due.is_empty() {
                // Saturating: a message due at once (`$delayed/0/...`) may have arrived
                // since `take_due` looked.
                let wait = self
                    .delayed
                    .next_due()
                    .map(|d| Duration::from_millis(d.saturating_sub(now)));
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.delayed.changed() => {}
                    _ = async {
                        match wait {
                            Some(w) => tokio::time::sleep(w).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
                continue;
            }
            let mut waiting = Vec::with_capacity(due.len());
            for (due_ms, delayed) in due {
                let lateness = now.saturating_sub(due_ms);
                metrics::histogram!(crate::metrics::DELAYED_LATENESS)
                    .record(lateness as f64 / 1000.0);
                let message = Arc::new(Message {
                    id: self.next_message_id(),
                    topic: delayed.topic.clone(),
                    payload: delayed.payload.clone(),
                    qos: delayed.qos,
                    retain: delayed.retain,
                    properties: delayed.properties.clone(),
                    publisher: Arc::clone(&delayed.publisher),
                    received_at_ms: now,
                    expires_at_ms: delayed.expires_at_ms,
                });
                match self.accept(&message, Vec::new()).await {
                    Ok(accepted) => waiting.push((delayed, accepted.tickets)),
                    Err(e) => {
                        // The store is failing: the message stays on disk with its due
                        // time and comes due again after a restart.
                        tracing::warn!(error = %e, topic = %message.topic, "delayed message not published: store unavailable");
                    }
                }
            }
            let mut done = Vec::with_capacity(waiting.len());
            for (delayed, tickets) in waiting {
                let mut durable = true;
                for ticket in tickets {
                    durable &= ticket.wait().await.is_ok();
                }
                metrics::counter!(crate::metrics::DELAYED_PUBLISHED).increment(1);
                if durable && delayed.qos != QoS::AtMostOnce {
                    done.push(Record::DelayDone {
                        message_id: delayed.id,
                    });
                }
            }
            if !done.is_empty() {
                if let Err(e) = self.store.append(done).await {
                    tracing::debug!(error = %e, "delayed messages' completion not recorded");
                }
            }
        }
    }

    /// Records that a durable delivery is finished (acked or given up), without waiting
    /// for the disk: after a crash it is delivered again, which QoS 1 allows.
    pub async fn ack_durable(&self, session: &Session, delivery: &Delivery) {
        let record = Record::Ack {
            session: session.client_id.to_string(),
            message_id: delivery.message.id,
        };
        if let Err(e) = self.store.append(vec![record]).await {
            tracing::debug!(error = %e, "ack not recorded");
        }
    }

    /// Stops accepting, asks every connection to close, waits up to the grace period,
    /// then flushes and fsyncs the log.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                remaining = self.tasks.len(),
                "shutdown grace period exceeded; closing the remaining connections"
            );
        }
        if let Err(e) = self.store.shutdown().await {
            tracing::error!(error = %e, "store did not shut down cleanly");
        }
    }
}

/// Accept queue length asked of the kernel (capped by net.core.somaxconn). A storm of
/// connects must not overflow it while the accept loop catches up: with the common
/// default of 128, a burst of a few hundred connects already sends clients into a one
/// second SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn subscription_matches(filter: &str, topic: &str) -> bool {
    use crate::router::topic::{matches, parse_filter, FilterKind};
    match parse_filter(filter, usize::MAX) {
        Ok(FilterKind::Plain(f)) | Ok(FilterKind::Shared { filter: f, .. }) => matches(f, topic),
        Err(_) => false,
    }
}

pub fn message_to_store(m: &Message) -> StoredMessage {
    StoredMessage {
        id: m.id,
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos as u8,
        retain: m.retain,
        properties: encode_properties(&m.properties),
        publisher: m.publisher.to_string(),
        received_at_ms: m.received_at_ms,
        expires_at_ms: m.expires_at_ms,
    }
}

pub fn message_from_store(s: &StoredMessage) -> Message {
    let properties = decode_properties(s.properties.clone()).unwrap_or_else(|e| {
        tracing::warn!(message_id = s.id, error = %e, "stored properties unreadable; dropped");
        Default::default()
    });
    Message {
        id: s.id,
        topic: s.topic.clone(),
        payload: s.payload.clone(),
        qos: QoS::from_u8(s.qos).unwrap_or(QoS::AtLeastOnce),
        retain: s.retain,
        properties,
        publisher: Arc::from(s.publisher.as_str()),
        received_at_ms: s.received_at_ms,
        expires_at_ms: s.expires_at_ms,
    }
}
