//! What the broker promises across a crash (SIGKILL) or a restart: an acknowledged QoS 1
//! message is never lost, and sessions, subscriptions and retained messages come back.

mod common;

use common::packet::{self, Connect, Prop};
use common::raw::RawClient;
use common::rumq::v4;
use common::Broker;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(500);

fn persistent(port: u16, id: &str) -> v4::MqttOptions {
    let mut o = v4::options(port, id);
    o.set_clean_session(false);
    o
}

/// Messages PUBACKed to the publisher while the subscriber was offline survive SIGKILL.
#[tokio::test]
async fn acknowledged_qos1_messages_survive_a_crash() {
    let mut broker = Broker::start();
    let (mut c, _) = v4::connect_with(persistent(broker.port(), "dur-sub")).await;
    c.subscribe("dur/t", v4::QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publ = v4::connect(broker.port(), "dur-pub").await;
    for i in 0..20u8 {
        publ.publish("dur/t", v4::QoS::AtLeastOnce, false, vec![i])
            .await;
    }
    drop(publ);
    broker.crash_and_restart();

    let (mut c, present) = v4::connect_with(persistent(broker.port(), "dur-sub")).await;
    assert!(present, "the persistent session survived the crash");
    for i in 0..20u8 {
        let got = c.recv().await;
        assert_eq!(
            got.payload.as_ref(),
            &[i],
            "acknowledged message {i} lost or reordered"
        );
    }
    assert!(
        c.try_recv(QUIET).await.is_none(),
        "duplicates after recovery"
    );
    // The subscription itself came back too.
    let mut publ = v4::connect(broker.port(), "dur-pub2").await;
    publ.publish("dur/t", v4::QoS::AtLeastOnce, false, "after")
        .await;
    assert_eq!(c.recv().await.payload.as_ref(), b"after");
}

/// A message delivered but not yet PUBACKed by the subscriber when the broker crashes
/// is delivered again after recovery.
#[tokio::test]
async fn unacknowledged_deliveries_are_redelivered_after_a_crash() {
    let mut broker = Broker::start();
    let v5s = |clean| {
        Connect::v5("dur-inflight")
            .clean(clean)
            .prop(Prop::U32(packet::SESSION_EXPIRY, 600))
    };
    let (mut c, _) = RawClient::handshake(broker.port(), &v5s(true)).await;
    assert_eq!(c.subscribe(1, "dur/inflight", 1).await, vec![1]);
    let mut publ = RawClient::v5(broker.port(), "dur-inflight-pub").await;
    for i in 0..3u8 {
        publ.send(&packet::publish(
            true,
            "dur/inflight",
            1,
            false,
            u16::from(i) + 1,
            &[],
            &[i],
        ))
        .await;
        publ.until(packet::PUBACK, "PUBACK").await;
    }
    let p0 = c.expect_publish().await;
    c.send(&packet::puback(p0.packet_id)).await;
    let _p1 = c.expect_publish().await;
    let _p2 = c.expect_publish().await;
    c.ping().await; // the PUBACK for the first was read before the crash
    broker.crash_and_restart();

    let (mut c, ack) = RawClient::handshake(broker.port(), &v5s(false)).await;
    assert!(ack.connack().0, "session present after recovery");
    let mut got = Vec::new();
    for _ in 0..10 {
        match c.recv_within(QUIET).await {
            common::raw::Recv::Packet(p) if p.kind() == packet::PUBLISH => {
                let p = p.publish(true);
                c.send(&packet::puback(p.packet_id)).await;
                got.push(p.payload[0]);
            }
            common::raw::Recv::Timeout => break,
            other => panic!("after recovery: {other:?}"),
        }
    }
    // At least once: the acknowledged first message may come again if its PUBACK was
    // not yet durable, but the two unacknowledged ones must, in order.
    assert!(
        got == [1, 2] || got == [0, 1, 2],
        "expected the unacknowledged messages 1 and 2 again, got {got:?}"
    );
}

#[tokio::test]
async fn retained_messages_survive_a_crash_and_a_restart() {
    let mut broker = Broker::start();
    let mut publ = v4::connect(broker.port(), "dur-ret").await;
    publ.publish("dur/ret/a", v4::QoS::AtLeastOnce, true, "a1")
        .await;
    publ.publish("dur/ret/b", v4::QoS::AtLeastOnce, true, "b1")
        .await;
    publ.publish("dur/ret/a", v4::QoS::AtLeastOnce, true, "a2")
        .await;
    publ.publish("dur/ret/b", v4::QoS::AtLeastOnce, true, "")
        .await; // cleared
    drop(publ);
    broker.crash_and_restart();
    for round in ["after crash", "after restart"] {
        let mut s = v4::connect(broker.port(), "dur-ret-sub").await;
        s.subscribe("dur/ret/#", v4::QoS::AtLeastOnce).await;
        let got = s.recv().await;
        assert_eq!(
            (got.topic.as_str(), got.payload.as_ref(), got.retain),
            ("dur/ret/a", &b"a2"[..], true),
            "{round}"
        );
        assert!(
            s.try_recv(QUIET).await.is_none(),
            "{round}: the cleared one came back"
        );
        s.disconnect().await;
        if round == "after crash" {
            broker.restart();
        }
    }
}

#[tokio::test]
async fn clean_sessions_do_not_survive_a_restart() {
    let mut broker = Broker::start();
    let mut c = v4::connect(broker.port(), "dur-clean").await;
    c.subscribe("dur/clean", v4::QoS::AtLeastOnce).await;
    broker.restart();
    let (_c, present) = v4::connect_with(persistent(broker.port(), "dur-clean")).await;
    assert!(!present, "a clean session is not stored");
}

/// A persistent QoS 2 subscriber and a QoS 2 message queued for it, published at QoS 2.
async fn qos2_subscriber_with_one_message(broker: &Broker, id: &str) -> (RawClient, u16) {
    let port = broker.port();
    let (mut sub, _) = RawClient::handshake(port, &Connect::v311(id).clean(false)).await;
    sub.subscribe(1, "q2/t", 2).await;
    let mut publ = RawClient::v311(port, &format!("{id}-pub")).await;
    publ.send(&packet::publish(false, "q2/t", 2, false, 9, &[], b"once"))
        .await;
    publ.expect(packet::PUBREC, "PUBREC").await;
    let p = sub.expect_publish().await;
    assert_eq!(
        (p.qos, p.dup, p.payload.as_slice()),
        (2, false, &b"once"[..])
    );
    (sub, p.packet_id)
}

/// Outbound QoS 2 is exactly once across a crash [MQTT-4.4.0-1]: a message whose PUBREC
/// the broker had is followed after a restart by the PUBREL, not by a new PUBLISH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_qos2_after_pubrec_resumes_with_pubrel_after_a_crash() {
    let mut broker = Broker::start();
    let (mut sub, packet_id) = qos2_subscriber_with_one_message(&broker, "q2-rel").await;
    sub.send(&packet::ack(0x50, packet_id)).await;
    let rel = sub.expect(packet::PUBREL, "PUBREL").await;
    assert_eq!(rel.packet_id(), packet_id);
    common::log::wait_for(&broker.data_dir(), "the released stage", |f| {
        f.outbound() == Some((packet_id, true))
    });

    broker.crash_and_restart();
    let (mut sub, ack) =
        RawClient::handshake(broker.port(), &Connect::v311("q2-rel").clean(false)).await;
    assert_eq!(ack.connack(), (true, 0));
    let rel = sub
        .expect(packet::PUBREL, "PUBREL, not a new PUBLISH")
        .await;
    assert_eq!(rel.packet_id(), packet_id);
    sub.send(&packet::ack(0x70, packet_id)).await;
    sub.expect_silence(QUIET).await;
}

/// A QoS 2 message sent but not yet PUBREC'd comes back after a crash with DUP and the
/// same packet id, so the subscriber can tell it already has it [MQTT-4.3.3-10].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_qos2_before_pubrec_is_resent_with_the_same_packet_id_after_a_crash() {
    let mut broker = Broker::start();
    let (_sub, packet_id) = qos2_subscriber_with_one_message(&broker, "q2-pub").await;

    broker.crash_and_restart();
    let (mut sub, ack) =
        RawClient::handshake(broker.port(), &Connect::v311("q2-pub").clean(false)).await;
    assert_eq!(ack.connack(), (true, 0));
    let p = sub.expect_publish().await;
    assert_eq!(
        (p.packet_id, p.dup, p.payload.as_slice()),
        (packet_id, true, &b"once"[..]),
        "the same packet id, with DUP"
    );
    sub.send(&packet::ack(0x50, packet_id)).await;
    sub.expect(packet::PUBREL, "PUBREL").await;
    sub.send(&packet::ack(0x70, packet_id)).await;
    sub.expect_silence(QUIET).await;
}
