//! A raw MQTT-over-WebSocket client (tokio-tungstenite): sends bytes as binary messages
//! split however a test says, reads whole packets whatever the message boundaries, and
//! notices a close. Works over plain TCP or any TLS stream.

use super::packet::{read_varint, Connect, Pkt, CONNACK};
use super::raw::Recv;
use super::WAIT;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// What the upgrade request carries.
#[derive(Debug, Clone)]
pub struct Upgrade<'a> {
    pub path: &'a str,
    /// Offered subprotocols, one `Sec-WebSocket-Protocol` header (empty: none).
    pub protocols: &'a [&'a str],
    pub origin: Option<&'a str>,
}

impl Default for Upgrade<'_> {
    fn default() -> Self {
        Upgrade {
            path: "/mqtt",
            protocols: &["mqtt"],
            origin: None,
        }
    }
}

pub struct WsClient<S> {
    pub ws: WebSocketStream<S>,
    buf: Vec<u8>,
    /// The subprotocol the broker chose.
    pub protocol: Option<String>,
}

/// Opens a TCP connection to `port`.
pub async fn tcp(port: u16) -> TcpStream {
    super::within(WAIT, "TCP connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("TCP connect to the broker")
}

/// Upgrades `stream` (plain or TLS) with `up`; the error is the handshake's.
pub async fn upgrade<S>(stream: S, up: &Upgrade<'_>) -> Result<WsClient<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = format!("ws://127.0.0.1{}", up.path)
        .into_client_request()
        .expect("request");
    if !up.protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&up.protocols.join(", ")).expect("header"),
        );
    }
    if let Some(origin) = up.origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(origin).expect("header"));
    }
    let (ws, resp) = super::within(
        WAIT,
        "WebSocket upgrade",
        tokio_tungstenite::client_async(req, stream),
    )
    .await?;
    let protocol = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(WsClient {
        ws,
        buf: Vec::new(),
        protocol,
    })
}

impl WsClient<TcpStream> {
    /// A plain `ws` client on `port` with the default upgrade.
    pub async fn connect(port: u16) -> WsClient<TcpStream> {
        upgrade(tcp(port).await, &Upgrade::default())
            .await
            .expect("WebSocket upgrade")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    /// Sends CONNECT in one message and expects a successful CONNACK.
    pub async fn handshake(&mut self, connect: &Connect) -> Pkt {
        self.send(&connect.build()).await;
        match self.recv().await {
            Recv::Packet(p) if p.kind() == CONNACK => {
                assert_eq!(p.connack().1, 0, "CONNACK refused: {p:?}");
                p
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends `bytes` as one binary message.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.send_split(bytes, &[]).await
    }

    /// Sends `bytes` as binary messages cut at the offsets in `cuts` (ascending).
    pub async fn send_split(&mut self, bytes: &[u8], cuts: &[usize]) {
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let msg = Message::Binary(bytes[from..to].to_vec().into());
            let _ = super::within(WAIT, "WebSocket send", self.ws.send(msg)).await;
            from = to;
        }
    }

    /// Sends a text message (which MQTT forbids [MQTT-6.0.0-1]).
    pub async fn send_text(&mut self, text: &str) {
        let _ = super::within(
            WAIT,
            "WebSocket send",
            self.ws.send(Message::Text(text.into())),
        )
        .await;
    }

    pub async fn recv(&mut self) -> Recv {
        self.recv_within(WAIT).await
    }

    /// Reads one packet within `dur`, from however many messages it takes.
    pub async fn recv_within(&mut self, dur: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if let Some(p) = self.take_packet() {
                return Recv::Packet(p);
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Recv::Timeout,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Recv::Closed,
                Ok(Some(Ok(Message::Binary(b)))) => self.buf.extend_from_slice(&b),
                Ok(Some(Ok(other))) => panic!("unexpected WebSocket message {other:?}"),
            }
        }
    }

    fn take_packet(&mut self) -> Option<Pkt> {
        let first = *self.buf.first()?;
        let (len, used) = read_varint(&self.buf[1..])?;
        let total = 1 + used + len as usize;
        if self.buf.len() < total {
            return None;
        }
        let body = self.buf[1 + used..total].to_vec();
        self.buf.drain(..total);
        Some(Pkt { first, body })
    }
}
