//! Will messages: when they are and are not published.

mod common;

use common::packet::{self, Connect, Prop, Will};
use common::raw::RawClient;
use common::rumq::v4;
use common::Broker;
use std::time::{Duration, Instant};

fn will(topic: &str, payload: &[u8], qos: u8) -> Will {
    Will {
        qos,
        ..Will::new(topic, payload)
    }
}

/// A subscriber to `will/#` that also receives the test's marker messages.
async fn watcher(port: u16) -> v4::Client {
    let mut w = v4::connect(port, "will-watcher").await;
    w.subscribe("will/#", v4::QoS::AtLeastOnce).await;
    w
}

/// Publishes a marker to `will/marker` and asserts it is the next thing `w` receives:
/// so no will was published before it.
async fn assert_no_will_before_marker(port: u16, w: &mut v4::Client) {
    let mut m = v4::connect(port, "will-marker").await;
    m.publish("will/marker", v4::QoS::AtLeastOnce, false, "marker")
        .await;
    let got = w.recv().await;
    assert_eq!(got.topic, "will/marker", "a will was published: {got:?}");
}

#[tokio::test]
async fn will_is_published_when_the_socket_drops() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let (c, _) = RawClient::handshake(
        port,
        &Connect::v311("dropper").will(will("will/drop", b"gone", 1)),
    )
    .await;
    drop(c);
    let got = w.recv().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("will/drop", &b"gone"[..])
    );
    assert_eq!(got.qos, v4::QoS::AtLeastOnce);
    assert!(!got.retain);
}

#[tokio::test]
async fn will_is_published_on_keepalive_timeout() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let started = Instant::now();
    let connect = Connect::v311("silent")
        .keep_alive(1)
        .will(will("will/ka", b"timeout", 0));
    let (mut c, _) = RawClient::handshake(port, &connect).await;
    let got = w.recv().await;
    let elapsed = started.elapsed();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("will/ka", &b"timeout"[..])
    );
    assert!(
        elapsed >= Duration::from_millis(1000),
        "will after {elapsed:?}: keepalive 1 s allows 1.5 s of silence"
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn no_will_after_normal_disconnect() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let (mut c, _) = RawClient::handshake(
        port,
        &Connect::v311("polite").will(will("will/polite", b"no", 1)),
    )
    .await;
    c.send(&packet::DISCONNECT).await;
    c.expect_closed().await;
    assert_no_will_before_marker(port, &mut w).await;
}

#[tokio::test]
async fn no_will_after_normal_v5_disconnect() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let (mut c, _) = RawClient::handshake(
        port,
        &Connect::v5("polite5").will(will("will/polite5", b"no", 1)),
    )
    .await;
    c.send(&packet::disconnect_v5(0x00, &[])).await;
    c.expect_closed().await;
    assert_no_will_before_marker(port, &mut w).await;
}

#[tokio::test]
async fn v5_disconnect_with_will_message_publishes_the_will() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let (mut c, _) = RawClient::handshake(
        port,
        &Connect::v5("leaver").will(will("will/x04", b"bye", 1)),
    )
    .await;
    c.send(&packet::disconnect_v5(0x04, &[])).await;
    c.expect_closed().await;
    let got = w.recv().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("will/x04", &b"bye"[..])
    );
}

fn delayed(id: &str, topic: &str, delay: u32) -> Connect {
    let mut wl = will(topic, b"delayed", 1);
    wl.props = vec![Prop::U32(packet::WILL_DELAY, delay)];
    Connect::v5(id)
        .clean(false)
        .prop(Prop::U32(packet::SESSION_EXPIRY, 60))
        .will(wl)
}

#[tokio::test]
async fn v5_will_delay_publishes_after_the_delay() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let (c, _) = RawClient::handshake(port, &delayed("delay-pub", "will/delayed", 1)).await;
    let dropped = Instant::now();
    drop(c);
    let got = w.recv().await;
    let elapsed = dropped.elapsed();
    assert_eq!(got.topic, "will/delayed");
    assert!(
        elapsed >= Duration::from_millis(900),
        "will delay 1 s, but the will came after {elapsed:?}"
    );
}

#[tokio::test]
async fn v5_will_delay_is_cancelled_by_a_reconnect() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let (c, _) = RawClient::handshake(port, &delayed("delay-back", "will/back", 2)).await;
    drop(c);
    let (mut back, ack) = RawClient::handshake(port, &delayed("delay-back", "will/back", 2)).await;
    assert!(ack.connack().0, "the session (expiry 60 s) is still there");
    // Past the delay: nothing. (Waiting out the delay is the point of this test.)
    assert!(
        w.try_recv(Duration::from_secs(3)).await.is_none(),
        "the will was published although the client came back within the will delay"
    );
    back.ping().await;
}

#[tokio::test]
async fn will_with_retain_is_retained() {
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let mut wl = will("will/retained", b"last", 1);
    wl.retain = true;
    let (c, _) = RawClient::handshake(port, &Connect::v311("retainer").will(wl)).await;
    drop(c);
    let live = w.recv().await;
    assert_eq!(live.topic, "will/retained");
    let mut late = v4::connect(port, "will-late").await;
    late.subscribe("will/retained", v4::QoS::AtLeastOnce).await;
    let got = late.recv().await;
    assert_eq!(got.payload.as_ref(), b"last");
    assert!(
        got.retain,
        "the will was published with RETAIN and is retained"
    );
}

#[tokio::test]
async fn takeover_publishes_the_first_connections_will() {
    // [MQTT-3.1.4-3]: the existing client is disconnected as if abnormally; 3.1.1 brokers
    // publish its will. v5 does too unless the session continues within the will delay.
    let broker = Broker::start();
    let port = broker.port();
    let mut w = watcher(port).await;
    let (mut first, _) = RawClient::handshake(
        port,
        &Connect::v311("twin").will(will("will/twin", b"first", 1)),
    )
    .await;
    let (_second, _) = RawClient::handshake(port, &Connect::v311("twin")).await;
    first.expect_closed().await;
    let got = w.recv().await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("will/twin", &b"first"[..])
    );
}
