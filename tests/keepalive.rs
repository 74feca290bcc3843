//! Keepalive and the CONNECT timeout.

mod common;

use common::packet::{self, Connect};
use common::raw::RawClient;
use common::Broker;
use std::time::{Duration, Instant};

#[tokio::test]
async fn silent_client_is_disconnected_after_one_and_a_half_keepalives() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::handshake(broker.port(), &Connect::v311("ka").keep_alive(1)).await;
    let started = Instant::now();
    let got = c.expect_closed().await;
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        elapsed >= Duration::from_millis(1200) && elapsed <= Duration::from_millis(3000),
        "closed after {elapsed:?}; expected about 1.5 s"
    );
    common::assert_broker_works(broker.port()).await;
}

#[tokio::test]
async fn silent_v5_client_gets_disconnect_0x8d() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::handshake(broker.port(), &Connect::v5("ka5").keep_alive(1)).await;
    let started = Instant::now();
    let got = c.expect_closed().await;
    let elapsed = started.elapsed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].first, got[0].reason()),
        (0xe0, 0x8d),
        "DISCONNECT 0x8D: {got:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1200) && elapsed <= Duration::from_millis(3000),
        "closed after {elapsed:?}; expected about 1.5 s"
    );
}

#[tokio::test]
async fn pings_keep_the_connection_open() {
    let broker = Broker::start();
    let (mut c, _) =
        RawClient::handshake(broker.port(), &Connect::v311("pinger").keep_alive(1)).await;
    // Ping every 0.7 s for 3 s: twice the 1.5 s allowance, never silent that long.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.ping().await;
    }
}

#[tokio::test]
async fn keepalive_0_disables_the_timeout() {
    let broker = Broker::start();
    let (mut c, _) =
        RawClient::handshake(broker.port(), &Connect::v311("forever").keep_alive(0)).await;
    c.expect_silence(Duration::from_millis(2500)).await;
    c.ping().await;
}

#[tokio::test]
async fn connection_without_connect_is_closed_after_connect_timeout() {
    let broker = Broker::start_with_config("[limits]\nconnect_timeout_secs = 1\n");
    let mut c = RawClient::connect(broker.port()).await;
    let started = Instant::now();
    let got = c.expect_closed().await;
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed <= Duration::from_millis(3000),
        "closed after {elapsed:?}; connect_timeout_secs = 1"
    );
    common::assert_broker_works(broker.port()).await;
}

#[tokio::test]
async fn partial_connect_is_closed_after_connect_timeout() {
    let broker = Broker::start_with_config("[limits]\nconnect_timeout_secs = 1\n");
    let mut c = RawClient::connect(broker.port()).await;
    let connect = Connect::v311("slow").build();
    c.send(&connect[..5]).await;
    let started = Instant::now();
    let got = c.expect_closed().await;
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "{got:?}");
    assert!(
        elapsed <= Duration::from_millis(3000),
        "closed after {elapsed:?}"
    );
    let _ = packet::PINGREQ;
}
