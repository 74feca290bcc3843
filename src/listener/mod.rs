//! Accepting sockets. Owns the listening sockets and each TLS listener's acceptor; hands
//! every accepted stream to its own connection task at once, so nothing slow (a PROXY
//! header, a TLS handshake, a WebSocket upgrade, a CONNECT) ever runs in the accept loop.
//! The connection limit and the per-address connection rate are enforced here, before any
//! per-connection state exists (for a PROXY listener, the rate once the header has named
//! the client). What comes before MQTT runs in the connection's task, in this order:
//! PROXY header ([`proxy`]), TLS ([`tls`]), WebSocket upgrade ([`ws`]), all under one
//! handshake permit and the listener's handshake timeout.

pub mod proxy;
pub mod tls;
pub mod ws;

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
use tokio_rustls::server::TlsStream;
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
            ListenerKind::Tcp | ListenerKind::Ws => None,
            ListenerKind::Tls | ListenerKind::Wss => {
                Some(RwLock::new(TlsAcceptor::from(tls::server_config(&config)?)))
            }
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
        // closed at once. Behind a PROXY header the socket's peer is the balancer; the
        // client's address is checked once the header is read.
        if !listener.config.proxy_protocol && !broker.guards.connect_rate.admit(peer.ip()) {
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
    let c = &listener.config;
    if c.kind == ListenerKind::Tcp && !c.proxy_protocol {
        let info = Box::new(ConnInfo {
            listener: Arc::clone(&listener),
            peer,
            tls_identity: None,
        });
        connection::serve(stream, broker, info).await
    } else {
        // Boxed: the layers' streams and handshakes are large, and a plain connection's
        // task would otherwise carry their space for its whole life.
        Box::pin(serve_layered(stream, peer, listener, broker)).await
    }
}

/// Why a connection ended before MQTT; logged and counted by stage.
#[derive(Debug, thiserror::Error)]
enum Before {
    #[error("PROXY header refused: {0}")]
    Proxy(proxy::ProxyError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("WebSocket upgrade refused: {0}")]
    Upgrade(#[from] ws::UpgradeError),
}

/// What the layers before MQTT produced: the stream to speak MQTT on, and who TLS says
/// the client is.
enum Layered {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>, Option<String>),
    Ws(Box<ws::WsStream<TcpStream>>),
    Wss(Box<ws::WsStream<TlsStream<TcpStream>>>, Option<String>),
}

/// Runs the PROXY header, TLS handshake and WebSocket upgrade the listener asks for, in
/// the connection's own task, holding one handshake permit ([limits]
/// max_tls_handshakes) and bounded together by the listener's handshake timeout; then
/// serves MQTT on the result.
async fn serve_layered(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
) {
    let Ok(handshake_permit) = Arc::clone(&broker.tls_handshake_permits).try_acquire_owned() else {
        let what = listener.config.scheme();
        if listener.tls.is_some() {
            metrics::counter!(metric::TLS_HANDSHAKE_FAILURES, "reason" => "limit").increment(1);
        }
        metrics::counter!(metric::HANDSHAKE_FAILURES, "listener" => what, "reason" => "limit")
            .increment(1);
        tracing::warn!(%peer, listener = what, "handshake refused: max_tls_handshakes in progress");
        return;
    };
    let timeout = Duration::from_secs(listener.config.handshake_timeout_secs);
    let deadline = tokio::time::Instant::now() + timeout;
    if listener.config.proxy_protocol {
        let header = tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            // Boxed, like the layers below: state needed only before MQTT must not stay
            // part of the connection's future for its whole life.
            r = tokio::time::timeout_at(deadline, Box::pin(proxy::read_header(&mut stream))) => r,
        };
        match header {
            Ok(Ok(Some(client))) => {
                tracing::debug!(balancer = %peer, %client, "PROXY header");
                peer = client;
            }
            Ok(Ok(None)) => tracing::debug!(%peer, "PROXY header without a client address"),
            Ok(Err(e)) => return refused(&listener, peer, Before::Proxy(e)),
            Err(_) => return timed_out(&listener, peer, "PROXY header", timeout),
        }
        if !broker.guards.connect_rate.admit(peer.ip()) {
            metrics::counter!(metric::CONNECTIONS_REFUSED, "reason" => "rate").increment(1);
            broker.guards.connect_rate.log_refusal(peer);
            return;
        }
    }
    let layers = tokio::select! {
        _ = broker.shutdown.cancelled() => return,
        r = tokio::time::timeout_at(deadline, Box::pin(layers(stream, &listener, &broker))) => r,
    };
    let layered = match layers {
        Ok(Ok(layered)) => layered,
        Ok(Err(e)) => return refused(&listener, peer, e),
        Err(_) => return timed_out(&listener, peer, "handshake", timeout),
    };
    drop(handshake_permit);
    let info = |tls_identity| {
        Box::new(ConnInfo {
            listener: Arc::clone(&listener),
            peer,
            tls_identity,
        })
    };
    // The layered streams stay boxed: the connection's future then holds a pointer, not
    // a TLS or WebSocket state, for the connection's whole life.
    match layered {
        Layered::Tcp(s) => connection::serve(s, broker, info(None)).await,
        Layered::Tls(s, id) => connection::serve(s, broker, info(id)).await,
        Layered::Ws(s) => connection::serve(s, broker, info(None)).await,
        Layered::Wss(s, id) => connection::serve(s, broker, info(id)).await,
    }
}

/// TLS and the WebSocket upgrade, as the listener's kind asks.
async fn layers(
    stream: TcpStream,
    listener: &Listener,
    broker: &Broker,
) -> Result<Layered, Before> {
    let max_packet = broker.config.limits.max_packet_size;
    let Some(acceptor) = listener.tls.as_ref().map(|a| a.read().clone()) else {
        return Ok(if listener.config.kind.is_websocket() {
            Layered::Ws(Box::new(
                ws::upgrade(stream, &listener.config, max_packet).await?,
            ))
        } else {
            Layered::Tcp(stream)
        });
    };
    let tls_stream = acceptor.accept(stream).await.map_err(Before::Tls)?;
    metrics::counter!(metric::TLS_HANDSHAKES).increment(1);
    let identity = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(tls::certificate_identity);
    Ok(if listener.config.kind.is_websocket() {
        Layered::Wss(
            Box::new(ws::upgrade(tls_stream, &listener.config, max_packet).await?),
            identity,
        )
    } else {
        Layered::Tls(Box::new(tls_stream), identity)
    })
}

fn refused(listener: &Listener, peer: SocketAddr, e: Before) {
    let what = listener.config.scheme();
    match e {
        Before::Proxy(e) => {
            metrics::counter!(metric::HANDSHAKE_FAILURES, "listener" => what, "reason" => "proxy")
                .increment(1);
            tracing::warn!(%peer, listener = what, error = %e, "PROXY header refused");
        }
        Before::Tls(e) => {
            metrics::counter!(metric::TLS_HANDSHAKE_FAILURES, "reason" => "refused").increment(1);
            tracing::warn!(%peer, error = %e, "TLS handshake failed");
        }
        Before::Upgrade(e) => {
            metrics::counter!(metric::HANDSHAKE_FAILURES, "listener" => what, "reason" => e.label())
                .increment(1);
            tracing::warn!(%peer, listener = what, error = %e, "WebSocket upgrade refused");
        }
    }
}

fn timed_out(listener: &Listener, peer: SocketAddr, stage: &str, timeout: Duration) {
    let what = listener.config.scheme();
    let stage = match (stage, listener.config.kind) {
        ("handshake", ListenerKind::Tls) => "TLS handshake",
        ("handshake", ListenerKind::Ws) => "WebSocket upgrade",
        ("handshake", _) => "TLS handshake or WebSocket upgrade",
        (other, _) => other,
    };
    if listener.tls.is_some() && stage != "PROXY header" {
        metrics::counter!(metric::TLS_HANDSHAKE_FAILURES, "reason" => "timeout").increment(1);
    }
    metrics::counter!(metric::HANDSHAKE_FAILURES, "listener" => what, "reason" => "timeout")
        .increment(1);
    tracing::warn!(%peer, listener = what, timeout_secs = timeout.as_secs(), "{stage} timed out");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layered connection (PROXY, TLS, WebSocket) lives in one boxed future of this
    /// size beside its streams: part of what an idle ws connection costs (README).
    #[tokio::test]
    async fn a_layered_connection_future_stays_small() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = crate::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..crate::config::Config::default()
        };
        let broker = Broker::open(config).expect("broker opens on an empty dir");
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("bound address");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = socket.accept().await.expect("accept");
        let mut config = ListenerConfig::tcp(addr);
        config.kind = ListenerKind::Ws;
        let listener = Arc::new(Listener::new(config).expect("ws listener"));
        let task = serve_layered(stream, peer, listener, broker);
        let size = std::mem::size_of_val(&task);
        eprintln!(
            "serve_layered {size} B, WsStream {} B",
            std::mem::size_of::<ws::WsStream<TcpStream>>()
        );
        // 1,960 B in a release build when this was written (11,504 B before the
        // handshakes were boxed).
        assert!(size <= 3072, "a layered connection's future is {size} B");
    }
}
