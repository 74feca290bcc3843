//! A raw TCP MQTT client: sends bytes, reads whole packets, notices a close.

use super::packet::{self, Connect, Pkt, RecvPublish, CONNACK, PUBLISH};
use super::WAIT;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a read produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recv {
    Packet(Pkt),
    /// The broker closed the connection (EOF or reset).
    Closed,
    Timeout,
}

pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Whether PUBLISH bodies carry v5 properties.
    pub v5: bool,
}

impl RawClient {
    pub async fn connect(port: u16) -> RawClient {
        let stream = super::within(WAIT, "TCP connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("TCP connect to the broker");
        let _ = stream.set_nodelay(true);
        RawClient {
            stream,
            buf: Vec::new(),
            v5: false,
        }
    }

    /// Connects, sends `connect`, and expects a successful CONNACK; returns it.
    pub async fn handshake(port: u16, connect: &Connect) -> (RawClient, Pkt) {
        let mut c = RawClient::connect(port).await;
        c.v5 = connect.level == packet::V5;
        c.send(&connect.build()).await;
        let ack = c.expect(CONNACK, "CONNACK").await;
        assert_eq!(ack.connack().1, 0, "CONNACK refused: {ack:?}");
        (c, ack)
    }

    /// A 3.1.1 clean-session client with the given id.
    pub async fn v311(port: u16, client_id: &str) -> RawClient {
        RawClient::handshake(port, &Connect::v311(client_id))
            .await
            .0
    }

    /// A v5 clean-start client with the given id.
    pub async fn v5(port: u16, client_id: &str) -> RawClient {
        RawClient::handshake(port, &Connect::v5(client_id)).await.0
    }

    /// Writes bytes; a write error (broker already closed) is ignored: the following
    /// read reports the close.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = super::within(WAIT, "socket write", self.stream.write_all(bytes)).await;
    }

    /// Reads one packet within `dur`.
    pub async fn recv_within(&mut self, dur: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if let Some(p) = self.take_packet() {
                return Recv::Packet(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn recv(&mut self) -> Recv {
        self.recv_within(WAIT).await
    }

    fn take_packet(&mut self) -> Option<Pkt> {
        packet::take_packet(&mut self.buf)
    }

    /// Expects the next packet to be of `kind`.
    pub async fn expect(&mut self, kind: u8, what: &str) -> Pkt {
        match self.recv().await {
            Recv::Packet(p) if p.kind() == kind => p,
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    /// Reads packets until one of `kind` arrives (others are returned too, in order).
    pub async fn until(&mut self, kind: u8, what: &str) -> (Pkt, Vec<Pkt>) {
        let mut others = Vec::new();
        for _ in 0..10_000 {
            match self.recv().await {
                Recv::Packet(p) if p.kind() == kind => return (p, others),
                Recv::Packet(p) => others.push(p),
                other => panic!("expected {what}, got {other:?} after {others:?}"),
            }
        }
        panic!("no {what} in 10000 packets");
    }

    /// Expects a PUBLISH and decodes it.
    pub async fn expect_publish(&mut self) -> RecvPublish {
        let v5 = self.v5;
        self.expect(PUBLISH, "PUBLISH").await.publish(v5)
    }

    /// Asserts nothing arrives for `dur` (and the connection stays open).
    pub async fn expect_silence(&mut self, dur: Duration) {
        match self.recv_within(dur).await {
            Recv::Timeout => {}
            other => panic!("expected nothing for {dur:?}, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection (within `dur`) and returns the
    /// packets received before the close.
    pub async fn expect_closed_within(&mut self, dur: Duration) -> Vec<Pkt> {
        let deadline = tokio::time::Instant::now() + dur;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Recv::Closed => return got,
                Recv::Packet(p) => got.push(p),
                Recv::Timeout => {
                    panic!("connection not closed within {dur:?}; received {got:?}")
                }
            }
        }
    }

    pub async fn expect_closed(&mut self) -> Vec<Pkt> {
        self.expect_closed_within(WAIT).await
    }

    /// PINGREQ → PINGRESP: proves the connection is open and processed what came before.
    pub async fn ping(&mut self) {
        self.send(&packet::PINGREQ).await;
        let (_, others) = self.until(packet::PINGRESP, "PINGRESP").await;
        assert!(
            others.is_empty(),
            "unexpected packets before PINGRESP: {others:?}"
        );
    }

    /// SUBSCRIBE one filter with `opts` (QoS and v5 options), returns the SUBACK codes.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str, opts: u8) -> Vec<u8> {
        self.subscribe_with(packet_id, &[], filter, opts).await
    }

    pub async fn subscribe_with(
        &mut self,
        packet_id: u16,
        props: &[packet::Prop],
        filter: &str,
        opts: u8,
    ) -> Vec<u8> {
        let v5 = self.v5;
        self.send(&packet::subscribe(v5, packet_id, props, &[(filter, opts)]))
            .await;
        let ack = self.expect(packet::SUBACK, "SUBACK").await;
        assert_eq!(ack.packet_id(), packet_id, "SUBACK packet id");
        ack.suback_codes(v5)
    }
}
