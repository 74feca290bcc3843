//! `[[priority]]` levels in a session's queue against the real binary: a high-priority
//! message published behind a backlog is delivered first, across a restart, and each
//! level keeps its order.

mod common;

use common::rumq::v4;
use common::Broker;
use std::time::Duration;

const CONFIG: &str = "[[priority]]\nfilter = \"alarms/#\"\nlevel = 9\n\n\
                      [[priority]]\nfilter = \"warn/#\"\nlevel = 4\n";

fn persistent(port: u16) -> v4::MqttOptions {
    let mut o = v4::options(port, "prio-sub");
    o.set_clean_session(false);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_message_overtakes_a_backlog_across_a_restart() {
    let mut broker = Broker::start_with_config(CONFIG);
    let (mut sub, _) = v4::connect_with(persistent(broker.port())).await;
    for f in ["telemetry/#", "alarms/#", "warn/#"] {
        sub.subscribe(f, v4::QoS::AtLeastOnce).await;
    }
    sub.disconnect().await;

    let mut publ = v4::connect(broker.port(), "prio-pub").await;
    let backlog = 300;
    for i in 0..backlog {
        publ.publish("telemetry/t", v4::QoS::AtLeastOnce, false, format!("t{i}"))
            .await;
    }
    publ.publish("warn/w", v4::QoS::AtLeastOnce, false, "w0")
        .await;
    publ.publish("alarms/fire", v4::QoS::AtLeastOnce, false, "a0")
        .await;
    publ.publish("warn/w", v4::QoS::AtLeastOnce, false, "w1")
        .await;
    publ.publish("alarms/fire", v4::QoS::AtLeastOnce, false, "a1")
        .await;
    broker.crash_and_restart();

    let (mut sub, present) = v4::connect_with(persistent(broker.port())).await;
    assert!(present);
    let mut got = Vec::new();
    for _ in 0..backlog + 4 {
        let m = sub.recv().await;
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    let mut want: Vec<String> = ["a0", "a1", "w0", "w1"].map(String::from).to_vec();
    want.extend((0..backlog).map(|i| format!("t{i}")));
    assert_eq!(
        got, want,
        "alarms first, then warnings, then the backlog; each in order"
    );
    assert!(sub.try_recv(Duration::from_millis(300)).await.is_none());
}
