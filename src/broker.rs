//! Wiring: starts the listeners, owns the shared state handles, and shuts down in order.
//!
//! [`Broker`] is the one place that holds every long-lived part (config, session
//! registry, router); connection tasks get an `Arc<Broker>` and use its handles. Shutdown
//! is a [`CancellationToken`] every connection selects on, plus a [`TaskTracker`] the
//! broker waits on for the grace period.

use crate::config::Config;
use crate::listener;
use crate::message::Message;
use crate::router::Router;
use crate::session::{Delivery, Session, SessionRegistry};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
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
    next_message_id: AtomicU64,
}

/// A started broker and the addresses it bound (port 0 resolved).
#[derive(Debug)]
pub struct Running {
    pub broker: Arc<Broker>,
    pub mqtt_addrs: Vec<SocketAddr>,
}

impl Broker {
    pub fn new(config: Config) -> Arc<Broker> {
        let router = Router::new(config.limits.max_topic_levels);
        let permits = Arc::new(Semaphore::new(config.limits.max_connections));
        Arc::new(Broker {
            config,
            sessions: SessionRegistry::default(),
            router,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connection_permits: permits,
            next_message_id: AtomicU64::new(1),
        })
    }

    /// Binds every listener and starts accepting.
    pub async fn start(config: Config) -> Result<Running, BrokerError> {
        let broker = Broker::new(config);
        let mut mqtt_addrs = Vec::new();
        for l in &broker.config.listeners {
            let socket = tokio::net::TcpListener::bind(l.bind)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: l.bind,
                    source,
                })?;
            let local = socket.local_addr().map_err(|source| BrokerError::Bind {
                addr: l.bind,
                source,
            })?;
            mqtt_addrs.push(local);
            tokio::spawn(listener::accept_loop(socket, Arc::clone(&broker)));
        }
        Ok(Running { broker, mqtt_addrs })
    }

    pub fn next_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Routes an accepted message (a PUBLISH or a will) and returns how many sessions
    /// it was offered to.
    pub fn publish(&self, message: &Arc<Message>) -> usize {
        if message.retain {
            self.router.retain(message);
        }
        let outcome = self.router.publish(message);
        for (session, delivery) in outcome.evicted {
            self.undeliverable(&session, delivery, "queue_full");
        }
        outcome.matched
    }

    /// A message that will not reach `session`.
    // TODO(dead letters): hand it to the dead-letter queue; until that lands it is
    // counted and logged so nothing disappears without a trace.
    pub fn undeliverable(&self, session: &Session, delivery: Delivery, reason: &'static str) {
        metrics::counter!("sluice_messages_dropped_total", "reason" => reason).increment(1);
        tracing::warn!(
            client_id = %session.client_id,
            topic = %delivery.message.topic,
            reason,
            "message not delivered"
        );
    }

    /// Stops accepting, asks every connection to close, and waits up to the grace period.
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
    }
}
