//! Accepting sockets. Owns the listening sockets; hands each accepted stream to its own
//! connection task at once, so nothing slow (a handshake, a CONNECT) runs in the accept
//! loop. The connection limit is enforced here, before any per-connection state exists.

use crate::broker::Broker;
use crate::connection;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub async fn accept_loop(socket: TcpListener, broker: Arc<Broker>) {
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
        let Ok(permit) = Arc::clone(&broker.connection_permits).try_acquire_owned() else {
            metrics::counter!("sluice_connections_refused_total", "reason" => "limit").increment(1);
            tracing::warn!(%peer, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let b = Arc::clone(&broker);
        broker.tasks.spawn(async move {
            connection::serve(stream, peer, b).await;
            drop(permit);
        });
    }
}
