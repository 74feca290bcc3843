//! Accepting sockets. Owns the listening sockets and each TLS listener's acceptor; hands
//! every accepted stream to its own connection task at once, so nothing slow (a TLS
//! handshake, a CONNECT) ever runs in the accept loop. The connection limit and the
//! per-address connection rate are enforced here, before any per-connection state exists.

pub mod tls;

use crate::broker::Broker;
use crate::config::{ListenerConfig, ListenerKind};
use crate::connection::{self, ConnInfo};
use crate::metrics as metric;
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;

/// A listener as the connection tasks see it.
pub struct Listener {
    pub config: ListenerConfig,
    /// Replaced on SIGHUP (new certificates); each handshake takes the current one.
    pub tls: Option<RwLock<TlsAcceptor>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listener {
    pub fn new(config: ListenerConfig) -> Result<Listener, tls::TlsError> {
        let tls = match config.kind {
            ListenerKind::Tcp => None,
            ListenerKind::Tls => Some(RwLock::new(TlsAcceptor::from(tls::server_config(&config)?))),
        };
        Ok(Listener { config, tls })
    }

    /// Re-reads the certificates; on failure the listener keeps its current ones.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        if let Some(acceptor) = &self.tls {
            let fresh = TlsAcceptor::from(tls::server_config(&self.config)?);
            *acceptor.write() = fresh;
        }
        Ok(())
    }
}

pub async fn accept_loop(socket: TcpListener, listener: Arc<Listener>, broker: Arc<Broker>) {
    loop {
        let accepted = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before anything is allocated for it: a source over its connection rate is
        // closed at once.
        if !broker.guards.connect_rate.admit(peer.ip()) {
            metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "rate").increment(1);
            broker.guards.connect_rate.log_refusal(peer);
            drop(stream);
            continue;
        }
        let Ok(permit) = Arc::clone(&broker.connection_permits).try_acquire_owned() else {
            metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "limit").increment(1);
            tracing::warn!(%peer, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Spawned as is, not wrapped in another `async` block: a wrapper would hold the
        // connection's future twice (once captured, once awaited).
        broker.tasks.spawn(serve_accepted(
            stream,
            peer,
            Arc::clone(&listener),
            Arc::clone(&broker),
            permit,
        ));
    }
}

/// One accepted socket's task, for as long as the connection lives. `_permit` is its
/// place under `max_connections`, given back when the task ends.
pub(crate) async fn serve_accepted(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    _permit: OwnedSemaphorePermit,
) {
    match &listener.tls {
        None => {
            let info = ConnInfo {
                listener: Arc::clone(&listener),
                peer,
                tls_identity: None,
            };
            connection::serve(stream, peer, broker, info).await
        }
        // Boxed: the TLS stream and its handshake are large, and a plain connection's
        // task would otherwise carry their space for its whole life.
        Some(_) => Box::pin(serve_tls(stream, peer, listener, broker)).await,
    }
}

/// Runs the TLS handshake in the connection's own task, under the listener's timeout.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
) {
    let Some(acceptor) = listener.tls.as_ref().map(|a| a.read().clone()) else {
        return;
    };
    let Ok(handshake_permit) = Arc::clone(&broker.tls_handshake_permits).try_acquire_owned() else {
        metrics::counter!(metric::TLS_HANDSHAKE_FAILURES, "reason" => "limit").increment(1);
        tracing::warn!(%peer, "TLS handshake refused: max_tls_handshakes in progress");
        return;
    };
    let timeout = Duration::from_secs(listener.config.handshake_timeout_secs);
    let handshake = tokio::select! {
        _ = broker.shutdown.cancelled() => return,
        r = tokio::time::timeout(timeout, acceptor.accept(stream)) => r,
    };
    let tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics::counter!(metric::TLS_HANDSHAKE_FAILURES, "reason" => "refused").increment(1);
            tracing::warn!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!(metric::TLS_HANDSHAKE_FAILURES, "reason" => "timeout").increment(1);
            tracing::warn!(%peer, timeout_secs = timeout.as_secs(), "TLS handshake timed out");
            return;
        }
    };
    drop(handshake_permit);
    metrics::counter!(metric::TLS_HANDSHAKES).increment(1);
    let identity = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(tls::certificate_identity);
    let info = ConnInfo {
        listener: Arc::clone(&listener),
        peer,
        tls_identity: identity,
    };
    connection::serve(tls_stream, peer, broker, info).await
}
