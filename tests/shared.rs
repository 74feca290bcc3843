//! Shared subscriptions: `$share/group/filter`.

mod common;

use common::rumq::{v4, v5};
use common::Broker;
use std::collections::BTreeSet;
use std::time::Duration;

const N: u32 = 60;

/// Collects publishes from both members until `n` arrived in total.
async fn drain_two(a: &mut v5::Client, b: &mut v5::Client, n: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    for _ in 0..(n * 4) {
        if got_a.len() + got_b.len() >= n {
            break;
        }
        if let Some(p) = a.try_recv(Duration::from_millis(50)).await {
            got_a.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
        }
        if let Some(p) = b.try_recv(Duration::from_millis(50)).await {
            got_b.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
        }
    }
    (got_a, got_b)
}

#[tokio::test]
async fn each_message_goes_to_exactly_one_member_and_both_get_some() {
    let broker = Broker::start();
    let port = broker.port();
    let mut a = v5::connect(port, "share-a").await;
    a.subscribe("$share/g/sh/+", v5::QoS::AtLeastOnce).await;
    let mut b = v5::connect(port, "share-b").await;
    b.subscribe("$share/g/sh/+", v5::QoS::AtLeastOnce).await;
    // A normal subscriber and another group each get every message.
    let mut all = v5::connect(port, "share-all").await;
    all.subscribe("sh/#", v5::QoS::AtLeastOnce).await;
    let mut other = v5::connect(port, "share-other").await;
    other.subscribe("$share/h/sh/#", v5::QoS::AtLeastOnce).await;

    let mut publ = v4::connect(port, "share-pub").await;
    for i in 0..N {
        publ.publish(
            &format!("sh/{}", i % 3),
            v4::QoS::AtLeastOnce,
            false,
            i.to_be_bytes().to_vec(),
        )
        .await;
    }
    let (got_a, got_b) = drain_two(&mut a, &mut b, N as usize).await;
    let mut union: Vec<u32> = got_a.iter().chain(got_b.iter()).copied().collect();
    union.sort_unstable();
    assert_eq!(
        union,
        (0..N).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members receive some: a got {}, b got {}",
        got_a.len(),
        got_b.len()
    );
    assert!(a.try_recv(Duration::from_millis(300)).await.is_none());
    assert!(b.try_recv(Duration::from_millis(300)).await.is_none());

    for c in [&mut all, &mut other] {
        let mut seen = BTreeSet::new();
        for _ in 0..N {
            let p = c.recv().await;
            seen.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
        }
        assert_eq!(seen.len(), N as usize);
    }
}

#[tokio::test]
async fn shared_subscription_works_for_311_clients() {
    let broker = Broker::start();
    let port = broker.port();
    let mut a = v4::connect(port, "share4-a").await;
    a.subscribe("$share/g4/s4/t", v4::QoS::AtLeastOnce).await;
    let mut b = v4::connect(port, "share4-b").await;
    b.subscribe("$share/g4/s4/t", v4::QoS::AtLeastOnce).await;
    let mut publ = v4::connect(port, "share4-pub").await;
    for i in 0..20u8 {
        publ.publish("s4/t", v4::QoS::AtLeastOnce, false, vec![i])
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..80 {
        if got.len() >= 20 {
            break;
        }
        for c in [&mut a, &mut b] {
            if let Some(p) = c.try_recv(Duration::from_millis(50)).await {
                got.push(p.payload[0]);
            }
        }
    }
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<u8>>());
}

#[tokio::test]
async fn retained_messages_are_not_sent_to_new_shared_subscriptions() {
    // [MQTT-3.8.4-?] (v5 §4.8.2): retained messages are not sent when a shared
    // subscription is made.
    let broker = Broker::start();
    let port = broker.port();
    let mut publ = v4::connect(port, "share-ret-pub").await;
    publ.publish("sr/t", v4::QoS::AtLeastOnce, true, "kept")
        .await;
    let mut a = v5::connect(port, "share-ret").await;
    a.subscribe("$share/g/sr/t", v5::QoS::AtLeastOnce).await;
    assert!(a.try_recv(Duration::from_millis(500)).await.is_none());
}
