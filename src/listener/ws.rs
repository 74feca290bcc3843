//! MQTT over WebSocket (MQTT 5 §6, 3.1.1 §6): the HTTP upgrade of a `ws`/`wss`
//! listener's connection and the byte stream the connection code reads MQTT from.
//!
//! Owns the upgrade's checks (path, `Origin` allow-list, the `mqtt` subprotocol, the size
//! of the request) and [`WsStream`], which turns binary WebSocket messages into the plain
//! `AsyncRead + AsyncWrite` byte stream `connection::serve` takes, so every limit, the
//! ACL and keepalive work as over TCP. Called by the listener (`serve_layered`) inside the
//! listener's handshake timeout and handshake permit; [`connect`], the client side, is
//! the load generator's (`benches/load.rs --ws`). Framing, masking, ping/pong and the
//! close handshake are tokio-tungstenite's; this module never parses frames itself, and
//! never looks at MQTT: packet boundaries and message boundaries are unrelated
//! [MQTT-6.0.0-2], [MQTT-6.0.0-3].

use crate::config::ListenerConfig;
use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The most bytes an upgrade request may take (request line and headers). Browsers send
/// well under 4 KiB without cookies; a larger request is refused before it is parsed.
pub const MAX_UPGRADE_REQUEST: usize = 16 * 1024;
/// The subprotocols accepted, in order of preference: `mqtt` [MQTT-6.0.0-4], and
/// `mqttv3.1`, which older clients (MQTT 3.1, some Paho versions) offer and mosquitto
/// accepts.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Bytes tungstenite reads from the socket at a time. Its read buffer stays allocated for
/// the connection's life, so it is most of what an idle WebSocket connection costs above
/// a TCP one (README, Performance).
const READ_BUFFER: usize = 4 * 1024;

/// Why an upgrade was refused: also the `reason` label of
/// `sluice_ws_upgrade_failures_total`.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("upgrade request larger than {MAX_UPGRADE_REQUEST} bytes")]
    TooLarge,
    #[error("refused with HTTP {status}: {why}")]
    Refused { status: u16, why: String },
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
}

impl UpgradeError {
    pub fn label(&self) -> &'static str {
        match self {
            UpgradeError::TooLarge => "too_large",
            UpgradeError::Refused { status: 403, .. } => "origin",
            UpgradeError::Refused { status: 404, .. } => "path",
            UpgradeError::Refused { .. } => "subprotocol",
            UpgradeError::Handshake(_) => "handshake",
        }
    }
}

/// A stream that allows at most `budget` bytes to be read while the upgrade request is
/// read, then is lifted for the connection's life.
#[derive(Debug)]
pub struct Capped<S> {
    inner: S,
    budget: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.budget == usize::MAX {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if self.budget == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                UpgradeError::TooLarge,
            )));
        }
        let room = buf.remaining().min(self.budget);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        buf.advance(n);
        self.budget -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The upgrade's checks, applied to the request before the 101 is sent.
// The error type is tungstenite's callback signature, not ours to shrink.
#[allow(clippy::result_large_err)]
fn check_request(
    listener: &ListenerConfig,
    req: &Request,
    mut resp: Response,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: String| {
        let mut r = ErrorResponse::new(Some(why));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != listener.ws_path() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("MQTT is served at {}", listener.ws_path()),
        ));
    }
    if !listener.allowed_origins.is_empty() {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default();
            if !listener
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
            {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!("origin {origin:?} is not allowed"),
                ));
            }
        }
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(chosen) = SUBPROTOCOLS
        .iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
    else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the Sec-WebSocket-Protocol \"mqtt\" is required [MQTT-6.0.0-4]".into(),
        ));
    };
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(chosen),
    );
    Ok(resp)
}

/// Answers the upgrade request on `stream` (already past TLS when the listener is
/// `wss`). The caller bounds it in time; this bounds it in size.
pub async fn upgrade<S>(
    stream: S,
    listener: &ListenerConfig,
    max_packet_size: u32,
) -> Result<WsStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let capped = Capped {
        inner: stream,
        budget: MAX_UPGRADE_REQUEST,
    };
    // A message may hold several packets [MQTT-6.0.0-3]: twice the largest packet leaves
    // room for a packet and the start of the next without letting a message grow without
    // bound. Writes go out per message (no write batching), as the connection already
    // writes whole batches of packets at once.
    let max_message = usize::try_from(max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_mul(2);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let callback = |req: &Request, resp: Response| check_request(listener, req, resp);
    let mut ws =
        match tokio_tungstenite::accept_hdr_async_with_config(capped, callback, Some(config)).await
        {
            Ok(ws) => ws,
            Err(WsError::Http(resp)) => {
                return Err(UpgradeError::Refused {
                    status: resp.status().as_u16(),
                    why: resp
                        .body()
                        .as_ref()
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or_default()
                        .to_owned(),
                })
            }
            Err(WsError::Io(e)) if e.get_ref().is_some_and(|r| r.is::<UpgradeError>()) => {
                return Err(UpgradeError::TooLarge)
            }
            Err(WsError::Capacity(_)) => return Err(UpgradeError::TooLarge),
            Err(e) => return Err(UpgradeError::Handshake(e.to_string())),
        };
    ws.get_mut().budget = usize::MAX;
    Ok(WsStream {
        ws,
        pending: Bytes::new(),
        unflushed: false,
    })
}

/// The client side of [`upgrade`] (the load generator's `--ws` transport): upgrades
/// `stream` at `ws://host/path`, offering the `mqtt` subprotocol.
pub async fn connect<S>(stream: S, host: &str, path: &str) -> Result<WsStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}{path}")
        .into_client_request()
        .map_err(|e| UpgradeError::Handshake(e.to_string()))?;
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOLS[0]),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let stream = Capped {
        inner: stream,
        budget: usize::MAX,
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| UpgradeError::Handshake(e.to_string()))?;
    Ok(WsStream {
        ws,
        pending: Bytes::new(),
        unflushed: false,
    })
}

/// A WebSocket connection as a byte stream: reads yield the payloads of binary messages
/// in order, writes send each buffer as one binary message.
#[derive(Debug)]
pub struct WsStream<S> {
    ws: WebSocketStream<Capped<S>>,
    /// What is left of the last binary message read.
    pending: Bytes,
    /// A message was handed to the WebSocket and not yet fully written to the socket.
    unflushed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Drives a message the last write could not finish; reads call it too, so a
    /// message never waits in the buffer for a write that may not come.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(ws_io)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

fn ws_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        while this.pending.is_empty() {
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                // [MQTT-6.0.0-1]: MQTT travels in binary messages only; a text message
                // closes the connection.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message [MQTT-6.0.0-1]",
                    )))
                }
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()))
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_io(e))),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // At most one message waits in tungstenite's buffer: the next is taken only once
        // the last is on the socket, so the socket's backpressure reaches the connection.
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_io)?;
        Pin::new(&mut this.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_io)?;
        this.unflushed = true;
        // Sent now if the socket takes it; otherwise the next read or write finishes it
        // (this registered the task for the socket's readiness).
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drain(cx)
    }

    /// Sends a Close frame, then shuts the socket's write side.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
            Err(e) => return Poll::Ready(Err(ws_io(e))),
        }
        Pin::new(&mut this.ws.get_mut().inner).poll_shutdown(cx)
    }
}
