//! Listeners with `proxy_protocol = true`: PROXY v1 and v2 headers (valid, truncated,
//! garbage, absent) on a plain and a WebSocket listener; the address a header carries
//! is the one the log line names and the per-address connection rate counts.
//!
//! The broker runs on port 0 in a temp dir.

mod common;

use common::packet::{Connect, CONNACK};
use common::raw::{RawClient, Recv};
use common::ws::{upgrade, Upgrade};
use common::{Broker, WAIT};
use sluice::listener::proxy::encode_v2;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const LISTENERS: &str =
    "[[listener]]\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\nhandshake_timeout_secs = 2\n\n\
[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\nproxy_protocol = true\n";

/// Connects to `port`, writes `header`, then CONNECT for `id`; what came back.
async fn attempt(port: u16, header: &[u8], id: &str) -> Recv {
    let mut c = RawClient::connect(port).await;
    c.send(header).await;
    c.send(&Connect::v311(id).build()).await;
    c.recv().await
}

fn is_connack(r: &Recv) -> bool {
    matches!(r, Recv::Packet(p) if p.kind() == CONNACK && p.connack().1 == 0)
}

#[tokio::test]
async fn valid_headers_name_the_client_in_the_log() {
    let b = Broker::start_with_listeners(LISTENERS, &[]);
    let port = b.addr_of("mqtt", 0).port();
    let r = attempt(
        port,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 4242 1883\r\n",
        "pp-v1",
    )
    .await;
    assert!(is_connack(&r), "{r:?}");
    b.wait_for_log("peer=203.0.113.7:4242", WAIT);
    let src: SocketAddr = "[2001:db8::9]:5151".parse().expect("addr");
    let dst: SocketAddr = "[2001:db8::1]:1883".parse().expect("addr");
    let r = attempt(port, &encode_v2(src, dst), "pp-v2").await;
    assert!(is_connack(&r), "{r:?}");
    b.wait_for_log("peer=[2001:db8::9]:5151", WAIT);
    // A health check (v2 LOCAL) carries no address: the socket's own stands.
    let mut local = sluice::listener::proxy::V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert!(is_connack(&attempt(port, &local, "pp-local").await));
    // Before a WebSocket upgrade too.
    let ws_port = b.addr_of("ws", 0).port();
    let mut s = common::ws::tcp(ws_port).await;
    s.write_all(b"PROXY TCP4 198.51.100.3 10.0.0.1 6000 80\r\n")
        .await
        .expect("write");
    let mut c = upgrade(s, &Upgrade::default()).await.expect("upgrade");
    c.handshake(&Connect::v311("pp-ws")).await;
    b.wait_for_log("peer=198.51.100.3:6000", WAIT);
}

#[tokio::test]
async fn connections_without_a_valid_header_are_refused() {
    let b = Broker::start_with_listeners(LISTENERS, &[]);
    let port = b.addr_of("mqtt", 0).port();
    let v2 = encode_v2(
        "192.0.2.1:1".parse().expect("addr"),
        "192.0.2.2:2".parse().expect("addr"),
    );
    let cases: [(&str, &[u8], &str); 3] = [
        ("absent", b"", "no PROXY protocol header"),
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "no PROXY protocol header",
        ),
        (
            "bad v1",
            b"PROXY TCP4 1.2.3.999 1.2.3.4 1 2\r\n",
            "PROXY v1 header malformed",
        ),
    ];
    for (what, header, logged) in cases {
        let r = attempt(port, header, "pp-bad").await;
        assert_eq!(r, Recv::Closed, "{what}");
        b.wait_for_log(logged, WAIT);
    }
    let long = format!("PROXY TCP4 {}\r\n", "9".repeat(200));
    assert_eq!(
        attempt(port, long.as_bytes(), "pp-long").await,
        Recv::Closed
    );
    b.wait_for_log("longer than 107 bytes", WAIT);
    // Truncated: the header stops half-way and the client closes.
    for partial in [&b"PROXY TCP4 1.2.3.4 "[..], &v2[..20]] {
        let mut c = RawClient::connect(port).await;
        c.send(partial).await;
        let _ = c.stream.shutdown().await;
        assert_eq!(c.recv().await, Recv::Closed);
    }
    b.wait_for_log("connection closed inside the PROXY header", WAIT);
    // Stalled: the header never completes within handshake_timeout_secs.
    let mut c = RawClient::connect(port).await;
    c.send(b"PROXY TCP4 ").await;
    assert_eq!(c.recv_within(Duration::from_secs(8)).await, Recv::Closed);
    b.wait_for_log("PROXY header timed out", WAIT);
    assert!(
        b.metric("sluice_handshake_failures_total{listener=\"mqtt\",reason=\"proxy\"}") >= 6.0,
        "{}",
        b.scrape()
    );
}

#[tokio::test]
async fn the_connection_rate_counts_the_carried_address() {
    let b = Broker::start_with_listeners(
        &format!("{LISTENERS}\n[limits]\nmax_connects_per_ip_per_sec = 1\n"),
        &[],
    );
    let port = b.addr_of("mqtt", 0).port();
    let from = |ip: &str| format!("PROXY TCP4 {ip} 10.0.0.1 1000 1883\r\n");
    // Every connection comes from 127.0.0.1; only the carried address tells them apart.
    assert!(is_connack(
        &attempt(port, from("198.51.100.20").as_bytes(), "rate-1").await
    ));
    assert_eq!(
        attempt(port, from("198.51.100.20").as_bytes(), "rate-2").await,
        Recv::Closed,
        "a second connection from the same client address within the second"
    );
    b.wait_for_log("peer=198.51.100.20:1000", WAIT);
    b.wait_for_log("max_connects_per_ip_per_sec exceeded", WAIT);
    assert!(is_connack(
        &attempt(port, from("198.51.100.21").as_bytes(), "rate-3").await
    ));
}
