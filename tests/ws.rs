//! MQTT over WebSocket (`ws` and `wss` listeners) against a raw tokio-tungstenite client:
//! packets split across messages and batched in one message [MQTT-6.0.0-2],
//! [MQTT-6.0.0-3], the `mqtt` subprotocol [MQTT-6.0.0-4], a text message
//! [MQTT-6.0.0-1], the upgrade's limits (size, timeout, path, Origin), interplay with
//! plain MQTT clients, and an ACL denial over wss with a TLS client certificate.
//!
//! The broker runs on port 0 in a temp dir.

mod common;
mod tls_support;

use common::packet::{self, Connect, CONNACK, PINGRESP, PUBACK, PUBLISH, SUBACK};
use common::raw::Recv;
use common::ws::{tcp, upgrade, Upgrade, WsClient};
use common::{mosquitto_pub, Broker, WAIT};
use rumqttc::tokio_rustls::{rustls, TlsConnector};
use std::time::Duration;
use tls_support::{client_config, toml_path, write_file, Ca};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ws_listener(extra: &str) -> String {
    format!("[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"ws\"\n{extra}\n")
}

async fn expect(
    c: &mut WsClient<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
    kind: u8,
) -> packet::Pkt {
    match c.recv().await {
        Recv::Packet(p) if p.kind() == kind => p,
        other => panic!("expected packet type {kind}, got {other:?}"),
    }
}

#[tokio::test]
async fn packets_split_across_messages_and_batched_in_one() {
    let b = Broker::spawn(None, &["--ws-listen", "127.0.0.1:0"]);
    let ws = b.addr_of("ws", 0);
    let mut c = WsClient::connect(ws.port()).await;
    assert_eq!(c.protocol.as_deref(), Some("mqtt"), "[MQTT-6.0.0-4]");
    // CONNECT cut into three messages, one of them a single byte [MQTT-6.0.0-2].
    let connect = Connect::v311("ws-split").build();
    c.send_split(&connect, &[1, 5]).await;
    assert_eq!(expect(&mut c, CONNACK).await.connack(), (false, 0));
    // SUBSCRIBE, a QoS 1 PUBLISH to itself and PINGREQ in one message [MQTT-6.0.0-3].
    let mut batch = packet::subscribe(false, 1, &[], &[("sensors/#", 1)]);
    batch.extend(packet::publish(
        false,
        "sensors/a",
        1,
        false,
        2,
        &[],
        b"one",
    ));
    batch.extend(packet::PINGREQ);
    c.send(&batch).await;
    let mut kinds = Vec::new();
    for _ in 0..4 {
        match c.recv().await {
            Recv::Packet(p) => {
                if p.kind() == PUBLISH {
                    assert_eq!(p.publish(false).payload, b"one");
                }
                kinds.push(p.kind());
            }
            other => panic!("expected 4 packets, got {other:?} after {kinds:?}"),
        }
    }
    kinds.sort_unstable();
    assert_eq!(kinds, [PUBLISH, PUBACK, SUBACK, PINGRESP]);
    // A plain MQTT publisher reaches the WebSocket subscriber.
    mosquitto_pub(
        b.port(),
        "mqttv311",
        &["-t", "sensors/b", "-m", "two", "-q", "1"],
    )
    .await;
    let p = expect(&mut c, PUBLISH).await.publish(false);
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("sensors/b", &b"two"[..])
    );
    c.send(&packet::puback(p.packet_id)).await;
    // Counted by listener kind.
    let deadline = std::time::Instant::now() + WAIT;
    while b.metric("sluice_listener_connections{listener=\"ws\"}") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "{}", b.scrape());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_mqtt_subprotocol_is_required() {
    let b = Broker::spawn(None, &["--ws-listen", "127.0.0.1:0"]);
    let port = b.addr_of("ws", 0).port();
    let with = |protocols| Upgrade {
        protocols,
        ..Upgrade::default()
    };
    let c = upgrade(tcp(port).await, &with(&["mqttv3.1"]))
        .await
        .expect("mqttv3.1");
    assert_eq!(c.protocol.as_deref(), Some("mqttv3.1"));
    let c = upgrade(tcp(port).await, &with(&["chat", "mqtt"]))
        .await
        .expect("mqtt");
    assert_eq!(c.protocol.as_deref(), Some("mqtt"));
    for offered in [&[][..], &["chat"][..]] {
        match upgrade(tcp(port).await, &with(offered)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{offered:?}")
            }
            Err(e) => panic!("{offered:?}: expected HTTP 400, got {e}"),
            Ok(_) => panic!("{offered:?}: upgrade accepted without the mqtt subprotocol"),
        }
    }
    assert!(
        b.metric("sluice_handshake_failures_total{listener=\"ws\",reason=\"subprotocol\"}") >= 2.0
    );
}

#[tokio::test]
async fn a_text_message_closes_the_connection() {
    let b = Broker::spawn(None, &["--ws-listen", "127.0.0.1:0"]);
    let mut c = WsClient::connect(b.addr_of("ws", 0).port()).await;
    c.handshake(&Connect::v311("ws-text")).await;
    c.send_text("hello").await;
    assert_eq!(c.recv().await, Recv::Closed, "[MQTT-6.0.0-1]");
    b.wait_for_log("text WebSocket message", WAIT);
}

#[tokio::test]
async fn the_upgrade_is_bounded_in_size_and_time_and_checks_path_and_origin() {
    let b = Broker::start_with_listeners(
        &ws_listener("handshake_timeout_secs = 1\nallowed_origins = [\"https://dash.example\"]"),
        &[],
    );
    let port = b.addr_of("ws", 0).port();
    // A request past 16 KiB is cut off without an answer.
    let mut s = tcp(port).await;
    let huge = format!(
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let read = common::within(WAIT, "the close", s.read_to_end(&mut answer)).await;
    assert!(
        read.is_err() || !String::from_utf8_lossy(&answer).contains(" 101 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    b.wait_for_log("upgrade request larger than 16384 bytes", WAIT);
    // A client that never finishes its request is cut off after handshake_timeout_secs.
    let mut stalled = tcp(port).await;
    let _ = stalled.write_all(b"GET /mqtt HTTP/1.1\r\n").await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = common::within(WAIT, "the timeout close", stalled.read_to_end(&mut rest)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    b.wait_for_log("WebSocket upgrade timed out", WAIT);
    // Wrong path: 404. Foreign origin: 403. Listed or absent origin: accepted.
    let refused = |path, origin| Upgrade {
        path,
        origin,
        ..Upgrade::default()
    };
    for (up, status) in [
        (refused("/other", None), 404),
        (refused("/mqtt", Some("https://evil.example")), 403),
    ] {
        match upgrade(tcp(port).await, &up).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), status, "{up:?}")
            }
            Err(e) => panic!("{up:?}: expected HTTP {status}, got {e}"),
            Ok(_) => panic!("{up:?}: upgrade accepted"),
        }
    }
    for origin in [Some("https://dash.example"), None] {
        let mut c = upgrade(tcp(port).await, &refused("/mqtt", origin))
            .await
            .expect("allowed origin");
        c.handshake(&Connect::v311("ws-origin")).await;
    }
}

#[tokio::test]
async fn acl_denial_over_wss_with_a_client_certificate() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let ca = Ca::new("ws test CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let acl = write_file(
        dir.path(),
        "acl",
        "user sensor-7\ntopic readwrite sensors/#\n",
    );
    let config = format!(
        "[auth]\nacl_file = {}\n\n[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"wss\"\ncert_file = {}\nkey_file = {}\nclient_ca_file = {}\nrequire_client_cert = true\nuse_identity_as_username = true\n",
        toml_path(&acl),
        toml_path(&cert),
        toml_path(&key),
        toml_path(&ca_file),
    );
    let b = Broker::start_with_listeners(&config, &[]);
    let port = b.addr_of("wss", 0).port();
    let client = ca.client("sensor-7");
    let tls = TlsConnector::from(client_config(&[ca.der()], Some(&client), &[]));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tls.connect(name, tcp(port).await).await.expect("TLS");
    let mut c = upgrade(stream, &Upgrade::default())
        .await
        .expect("wss upgrade");
    c.handshake(&Connect::v311("wss-acl")).await;
    c.send(&packet::subscribe(
        false,
        1,
        &[],
        &[("sensors/#", 1), ("secrets/#", 1)],
    ))
    .await;
    let codes = expect(&mut c, SUBACK).await.suback_codes(false);
    assert_eq!(codes, vec![1, 0x80], "the ACL allows sensors/# only");
}

/// A wss client trusting `ca` upgrades and gets a CONNACK, or the TLS handshake fails.
async fn wss_connects(port: u16, ca: &Ca, id: &str) -> bool {
    let tls = TlsConnector::from(client_config(&[ca.der()], None, &[]));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let Ok(stream) = tls.connect(name, tcp(port).await).await else {
        return false;
    };
    let mut c = upgrade(stream, &Upgrade::default())
        .await
        .expect("wss upgrade");
    c.handshake(&Connect::v311(id)).await;
    true
}

#[tokio::test]
async fn sighup_reloads_the_wss_certificate() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let ca = Ca::new("first CA");
    let (cert, key) = ca.server().write(dir.path(), "server");
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"wss\"\ncert_file = {}\nkey_file = {}\n",
        toml_path(&cert),
        toml_path(&key),
    );
    let b = Broker::start_with_listeners(&config, &[]);
    let port = b.addr_of("wss", 0).port();
    assert!(wss_connects(port, &ca, "before").await);
    // A certificate from another CA replaces the files; then SIGHUP.
    let ca2 = Ca::new("second CA");
    ca2.server().write(dir.path(), "server");
    b.wait_ready_logged();
    b.signal("HUP");
    b.wait_for_log("TLS certificates reloaded", WAIT);
    assert!(wss_connects(port, &ca2, "after").await);
    assert!(!wss_connects(port, &ca, "old-ca").await);
}
