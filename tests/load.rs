//! Load: many messages through one subscription, and many clients at once. Bounded in
//! count and time.

mod common;

use common::rumq::{v4, Ev};
use common::{within, Broker};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_qos1_messages_arrive_complete_and_in_order() {
    const N: u32 = 1000;
    let broker = Broker::start();
    let port = broker.port();
    let mut sub = v4::connect(port, "load-sub").await;
    sub.subscribe("load/+/data", v4::QoS::AtLeastOnce).await;
    let mut publ = v4::connect(port, "load-pub").await;
    within(Duration::from_secs(120), "1000 QoS 1 messages", async {
        // Pipelined: rumqttc keeps up to its inflight window outstanding.
        for i in 0..N {
            publ.client
                .publish(
                    "load/sensor/data",
                    v4::QoS::AtLeastOnce,
                    false,
                    i.to_be_bytes().to_vec(),
                )
                .await
                .expect("publish");
        }
        for i in 0..N {
            let p = sub.recv().await;
            assert_eq!(p.topic, "load/sensor/data");
            let got = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
            assert_eq!(got, i, "message {i} missing or out of order");
        }
        let mut acks = 0;
        while acks < N {
            publ.inbox
                .wait("PUBACK", |e| {
                    matches!(e, Ev::Packet(v4::Packet::PubAck(_))).then_some(())
                })
                .await;
            acks += 1;
        }
    })
    .await;
    assert!(
        sub.try_recv(Duration::from_millis(500)).await.is_none(),
        "duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_publish_and_subscribe() {
    const CLIENTS: usize = 200;
    let broker = Broker::start();
    let port = broker.port();
    within(Duration::from_secs(120), "200 clients", async {
        // Everyone connects and subscribes to its own topic first...
        let mut joins = Vec::new();
        for i in 0..CLIENTS {
            joins.push(tokio::spawn(async move {
                let mut c = v4::connect(port, &format!("many-{i}")).await;
                c.subscribe(&format!("many/{i}"), v4::QoS::AtLeastOnce)
                    .await;
                c
            }));
        }
        let mut clients = Vec::new();
        for j in joins {
            clients.push(j.await.expect("client task"));
        }
        // ...then each publishes to its neighbour and receives from the other side.
        let mut joins = Vec::new();
        for (i, mut c) in clients.into_iter().enumerate() {
            joins.push(tokio::spawn(async move {
                let to = (i + 1) % CLIENTS;
                c.publish(
                    &format!("many/{to}"),
                    v4::QoS::AtLeastOnce,
                    false,
                    format!("from {i}"),
                )
                .await;
                let p = c.recv().await;
                let from = (i + CLIENTS - 1) % CLIENTS;
                assert_eq!(p.topic, format!("many/{i}"));
                assert_eq!(p.payload.as_ref(), format!("from {from}").as_bytes());
                c
            }));
        }
        for j in joins {
            let c = j.await.expect("client task");
            c.disconnect().await;
        }
    })
    .await;
    common::assert_broker_works(port).await;
}
