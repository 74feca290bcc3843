//! Sessions: persistence across connections, clean session/start, expiry, takeover, and
//! client identifiers.

mod common;

use common::packet::{self, Connect, Prop};
use common::raw::RawClient;
use common::rumq::{v4, v5};
use common::Broker;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(500);

fn persistent(port: u16, id: &str) -> v4::MqttOptions {
    let mut o = v4::options(port, id);
    o.set_clean_session(false);
    o
}

#[tokio::test]
async fn v311_persistent_session_keeps_subscriptions_and_queued_qos1() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut c, present) = v4::connect_with(persistent(port, "ps")).await;
    assert!(!present, "a new session is not present");
    c.subscribe("ps/t", v4::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v4::connect(port, "ps-pub").await;
    for i in 0..5u8 {
        publ.publish("ps/t", v4::QoS::AtLeastOnce, false, vec![i])
            .await;
    }
    publ.publish("ps/t", v4::QoS::AtMostOnce, false, vec![99])
        .await;
    // The broker handles one connection's packets in order: once this PUBACK is back,
    // the QoS 0 message above was routed (while the session was offline).
    publ.publish("ps/sync", v4::QoS::AtLeastOnce, false, "sync")
        .await;

    let (mut c, present) = v4::connect_with(persistent(port, "ps")).await;
    assert!(present, "CONNACK session present for a resumed session");
    for i in 0..5u8 {
        let got = c.recv().await;
        assert_eq!(got.payload.as_ref(), &[i], "queued QoS 1 messages in order");
        assert_eq!(got.qos, v4::QoS::AtLeastOnce);
    }
    // QoS 0 is not queued for offline sessions by default (queue_qos0_offline = false).
    if let Some(extra) = c.try_recv(QUIET).await {
        panic!("unexpected message after the queued ones: {extra:?}");
    }
    // The subscription is still there for live messages.
    publ.publish("ps/t", v4::QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(c.recv().await.payload.as_ref(), b"live");
}

#[tokio::test]
async fn v311_clean_session_discards_the_session() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut c, _) = v4::connect_with(persistent(port, "cs")).await;
    c.subscribe("cs/t", v4::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = v4::connect(port, "cs-pub").await;
    publ.publish("cs/t", v4::QoS::AtLeastOnce, false, "queued")
        .await;

    let (mut c, present) = v4::connect_with(v4::options(port, "cs")).await;
    assert!(!present, "clean session 1 never resumes a session");
    assert!(
        c.try_recv(QUIET).await.is_none(),
        "queued messages were discarded"
    );
    c.disconnect().await;

    // Eventually (see `session_with_expiry_0_is_gone_once_the_connection_is_closed`).
    let mut c = None;
    for _ in 0..20 {
        let (next, present) = v4::connect_with(persistent(port, "cs")).await;
        if !present {
            c = Some(next);
            break;
        }
        next.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = c.expect("the clean session never ended");
    publ.publish("cs/t", v4::QoS::AtLeastOnce, false, "after")
        .await;
    assert!(
        c.try_recv(QUIET).await.is_none(),
        "the old subscription is gone"
    );
}

fn v5_session(id: &str, clean: bool, expiry: u32) -> Connect {
    Connect::v5(id)
        .clean(clean)
        .prop(Prop::U32(packet::SESSION_EXPIRY, expiry))
}

#[tokio::test]
async fn v5_session_expiry_interval_is_honoured() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut c, ack) = RawClient::handshake(port, &v5_session("se", true, 2)).await;
    assert!(!ack.connack().0);
    assert_eq!(c.subscribe(1, "se/t", 1).await, vec![1]);
    c.send(&packet::disconnect_v5(0, &[])).await;
    c.expect_closed().await;

    let mut publ = RawClient::v5(port, "se-pub").await;
    publ.send(&packet::publish(true, "se/t", 1, false, 1, &[], b"kept"))
        .await;
    assert_eq!(publ.expect(packet::PUBACK, "PUBACK").await.reason(), 0);

    // Within the expiry: resumed, with the queued message.
    let (mut c, ack) = RawClient::handshake(port, &v5_session("se", false, 2)).await;
    assert!(
        ack.connack().0,
        "session present within its expiry interval"
    );
    let p = c.expect_publish().await;
    assert_eq!(p.payload, b"kept");
    c.send(&packet::puback(p.packet_id)).await;
    c.send(&packet::disconnect_v5(0, &[])).await;
    c.expect_closed().await;

    // Past the expiry: gone. (Letting the interval pass is what is tested.)
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (mut c, ack) = RawClient::handshake(port, &v5_session("se", false, 2)).await;
    assert!(!ack.connack().0, "the session expired after 2 s");
    publ.send(&packet::publish(true, "se/t", 1, false, 2, &[], b"late"))
        .await;
    assert_eq!(
        publ.expect(packet::PUBACK, "PUBACK").await.reason(),
        0x10,
        "no subscribers"
    );
    c.ping().await;
}

/// Connects `connect` (clean start 0) until CONNACK says no session is present, at most
/// 20 times. A session with expiry 0 ends when its connection closes, but the broker
/// closes the socket before it has ended the session (see
/// `session_with_expiry_0_is_gone_once_the_connection_is_closed`), so an immediate
/// reconnect may still find it; each such attempt ends it again.
async fn eventually_no_session(port: u16, connect: &Connect) -> RawClient {
    for _ in 0..20 {
        let (mut c, ack) = RawClient::handshake(port, connect).await;
        if !ack.connack().0 {
            return c;
        }
        c.send(&packet::disconnect_v5(0, &[])).await;
        c.expect_closed().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the session never ended");
}

#[tokio::test]
async fn v5_session_expiry_0_ends_the_session_at_disconnect() {
    let broker = Broker::start();
    let port = broker.port();
    let connect = Connect::v5("se0").clean(false);
    let (mut c, _) = RawClient::handshake(port, &connect).await;
    assert_eq!(c.subscribe(1, "se0/t", 1).await, vec![1]);
    c.send(&packet::disconnect_v5(0, &[])).await;
    c.expect_closed().await;
    let mut c = eventually_no_session(port, &connect).await;
    let mut publ = RawClient::v5(port, "se0-pub").await;
    publ.send(&packet::publish(true, "se0/t", 1, false, 1, &[], b"x"))
        .await;
    assert_eq!(
        publ.expect(packet::PUBACK, "PUBACK").await.reason(),
        0x10,
        "the subscription ended with the session"
    );
    c.expect_silence(QUIET).await;
}

#[tokio::test]
async fn v5_disconnect_can_change_session_expiry() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut c, _) = RawClient::handshake(port, &v5_session("sed", true, 60)).await;
    assert_eq!(c.subscribe(1, "sed/t", 1).await, vec![1]);
    c.send(&packet::disconnect_v5(
        0,
        &[Prop::U32(packet::SESSION_EXPIRY, 0)],
    ))
    .await;
    c.expect_closed().await;
    let _c = eventually_no_session(port, &v5_session("sed", false, 0)).await;
}

/// A client that has seen its connection closed and reconnects at once must not find a
/// session whose expiry was 0 [MQTT-3.1.2-23]: CONNACK Session Present must be 0.
#[tokio::test]
async fn session_with_expiry_0_is_gone_once_the_connection_is_closed() {
    let broker = Broker::start();
    let port = broker.port();
    let connect = Connect::v5("race").clean(false);
    let (mut c, _) = RawClient::handshake(port, &connect).await;
    for i in 0..30 {
        c.send(&packet::disconnect_v5(0, &[])).await;
        c.expect_closed().await;
        let (next, ack) = RawClient::handshake(port, &connect).await;
        assert!(
            !ack.connack().0,
            "attempt {i}: Session Present 1 for a session with expiry 0 after its connection closed"
        );
        c = next;
    }
}

#[tokio::test]
async fn v5_clean_start_discards_an_existing_session() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut c, _) = RawClient::handshake(port, &v5_session("cst", true, 60)).await;
    assert_eq!(c.subscribe(1, "cst/t", 1).await, vec![1]);
    c.send(&packet::disconnect_v5(0, &[])).await;
    c.expect_closed().await;
    let (mut c, ack) = RawClient::handshake(port, &v5_session("cst", true, 60)).await;
    assert!(!ack.connack().0, "clean start: session present is 0");
    let mut publ = RawClient::v5(port, "cst-pub").await;
    publ.send(&packet::publish(true, "cst/t", 1, false, 1, &[], b"x"))
        .await;
    assert_eq!(publ.expect(packet::PUBACK, "PUBACK").await.reason(), 0x10);
    c.expect_silence(QUIET).await;
}

/// A second connection with the same client id takes the session over: the first gets
/// DISCONNECT 0x8E, and messages it had not acknowledged are redelivered to the second.
#[tokio::test]
async fn v5_takeover_disconnects_the_first_and_loses_nothing() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut first, _) = RawClient::handshake(port, &v5_session("tk", true, 60)).await;
    assert_eq!(first.subscribe(1, "tk/t", 1).await, vec![1]);
    let mut publ = v4::connect(port, "tk-pub").await;
    for i in 0..5u8 {
        publ.publish("tk/t", v4::QoS::AtLeastOnce, false, vec![i])
            .await;
    }
    for i in 0..5u8 {
        let p = first.expect_publish().await;
        assert_eq!(p.payload, [i]);
        if i < 2 {
            first.send(&packet::puback(p.packet_id)).await;
        }
    }
    first.ping().await; // the two PUBACKs were processed

    let (mut second, ack) = RawClient::handshake(port, &v5_session("tk", false, 60)).await;
    assert!(ack.connack().0, "the taken-over session is present");
    let got = first.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].first, got[0].reason()),
        (0xe0, 0x8e),
        "DISCONNECT 0x8E: {got:?}"
    );

    for i in 5..10u8 {
        publ.publish("tk/t", v4::QoS::AtLeastOnce, false, vec![i])
            .await;
    }
    let mut payloads = Vec::new();
    for _ in 2..10u8 {
        let p = second.expect_publish().await;
        second.send(&packet::puback(p.packet_id)).await;
        payloads.push(p.payload[0]);
    }
    assert_eq!(
        payloads,
        (2..10).collect::<Vec<u8>>(),
        "unacked 2..5 redelivered, then 5..10"
    );
    second.expect_silence(QUIET).await;
}

#[tokio::test]
async fn v311_takeover_closes_the_first_connection() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut c1, _) = v4::connect_with(persistent(port, "tk3")).await;
    c1.subscribe("tk3/t", v4::QoS::AtLeastOnce).await;
    let (mut c2, present) = v4::connect_with(persistent(port, "tk3")).await;
    assert!(present);
    let why = c1.inbox.closed().await;
    assert!(!why.is_empty());
    let mut publ = v4::connect(port, "tk3-pub").await;
    publ.publish("tk3/t", v4::QoS::AtLeastOnce, false, "to second")
        .await;
    assert_eq!(c2.recv().await.payload.as_ref(), b"to second");
}

/// A rumqttc client taken over is disconnected. The broker sends the DISCONNECT in its
/// shortest form `e0 01 8e` (MQTT 5 §3.14.2.2.1, as mosquitto does), which rumqttc
/// 0.24 cannot parse (it expects a property length): it reports the close, not the
/// reason. The reason on the wire is checked with the raw client above.
#[tokio::test]
async fn v5_takeover_seen_by_rumqttc() {
    let broker = Broker::start();
    let port = broker.port();
    let mut c1 = v5::connect(port, "tk5").await;
    let _c2 = v5::connect(port, "tk5").await;
    let why = c1.inbox.closed().await;
    assert!(
        why.contains("ServerDisconnect(0x8e)") || why.contains("connection closed by peer"),
        "{why}"
    );
}

#[tokio::test]
async fn empty_client_id_v5_gets_an_assigned_identifier() {
    let broker = Broker::start();
    let (mut c, ack) = RawClient::handshake(broker.port(), &Connect::v5("")).await;
    let assigned: Vec<_> = ack
        .connack_props()
        .into_iter()
        .filter(|p| p.id() == packet::ASSIGNED_CLIENT_ID)
        .collect();
    match assigned.as_slice() {
        [Prop::Str(_, id)] => assert!(!id.is_empty()),
        other => panic!("expected one Assigned Client Identifier, got {other:?}"),
    }
    c.ping().await;
    let (_c2, ack2) = RawClient::handshake(broker.port(), &Connect::v5("")).await;
    assert_ne!(
        ack.connack_props(),
        ack2.connack_props(),
        "identifiers are unique"
    );
}

#[tokio::test]
async fn empty_client_id_v311_clean_session_is_accepted() {
    let broker = Broker::start();
    let (mut c, ack) = RawClient::handshake(broker.port(), &Connect::v311("")).await;
    assert_eq!(ack.body, vec![0, 0]);
    c.ping().await;
}

#[tokio::test]
async fn empty_client_id_v311_persistent_session_gets_connack_2() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.port()).await;
    c.send(&Connect::v311("").clean(false).build()).await;
    let got = c.expect_closed().await;
    assert_eq!(
        got,
        vec![packet::Pkt {
            first: 0x20,
            body: vec![0x00, 0x02]
        }],
        "CONNACK 0x02 identifier rejected, then close"
    );
}

/// [MQTT-3.1.2-6]: a clean session's state is never reused, also when a Clean Session 0
/// CONNECT takes over while the clean session's connection is still online.
#[tokio::test]
async fn v311_takeover_of_an_online_clean_session_does_not_resume_it() {
    let broker = Broker::start();
    let port = broker.port();
    let (mut clean, present) = RawClient::handshake(port, &Connect::v311("cs-take")).await;
    assert_eq!(present.connack(), (false, 0));
    clean.subscribe(1, "cst/t", 1).await;

    let (mut persistent, connack) =
        RawClient::handshake(port, &Connect::v311("cs-take").clean(false)).await;
    assert_eq!(
        connack.connack(),
        (false, 0),
        "[MQTT-3.1.2-6] the clean session's state is not resumed"
    );
    clean.expect_closed().await;

    // Its subscription went with it: a publish to cst/t reaches nobody.
    let mut publ = RawClient::v311(port, "cs-take-pub").await;
    publ.send(&packet::publish(false, "cst/t", 1, false, 7, &[], b"x"))
        .await;
    publ.expect(packet::PUBACK, "PUBACK").await;
    persistent.expect_silence(QUIET).await;
}

/// MQTT 3.1 has no session present flag: the CONNACK's first byte is reserved and 0
/// (3.1 §3.2), even when a stored session is resumed.
#[tokio::test]
async fn mqtt_3_1_connack_has_no_session_present_flag() {
    let broker = Broker::start();
    let port = broker.port();
    let connect = Connect {
        level: packet::V31,
        ..Connect::v311("v31-present")
    }
    .clean(false);
    let (mut c, ack) = RawClient::handshake(port, &connect).await;
    assert_eq!(ack.body, vec![0, 0]);
    assert_eq!(c.subscribe(1, "v31/present", 1).await, vec![1]);
    c.send(&packet::DISCONNECT).await;
    c.expect_closed().await;
    let (_c, ack) = RawClient::handshake(port, &connect).await;
    assert_eq!(ack.body, vec![0, 0], "3.1 CONNACK is 20 02 00 00");
}

/// The ingestion lag operators alert on: the age of the oldest message a session still
/// holds, broker-wide (`sluice_oldest_queued_age_seconds`), back to 0 once it is acked.
#[tokio::test]
async fn oldest_queued_age_is_the_backlog_lag_and_clears_when_drained() {
    let broker = Broker::start();
    let port = broker.port();
    let (c, _) = v4::connect_with(persistent(port, "lag")).await;
    let mut c = c;
    c.subscribe("lag/t", v4::QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = v4::connect(port, "lag-pub").await;
    publ.publish("lag/t", v4::QoS::AtLeastOnce, false, "old")
        .await;

    let age = "sluice_oldest_queued_age_seconds";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while broker.metric(age) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{age} never reached 1 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut c, _) = v4::connect_with(persistent(port, "lag")).await;
    assert_eq!(c.recv().await.payload.as_ref(), b"old");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while broker.metric(age) != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{age} stayed above 0 after the ack"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
