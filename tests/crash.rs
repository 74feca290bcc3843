//! Crash tests of sluice's central promise: once sluice has sent PUBACK (QoS 1) or PUBREC
//! (QoS 2) to a publisher, the message is on disk in the queue of every persistent session
//! it matched, and stays there until that subscriber acknowledges it — through `kill -9`
//! and restarts.
//!
//! Every test runs the real binary on a data dir that outlives it, drives real `rumqttc`
//! clients, SIGKILLs the broker at pseudo-random moments (the seed is printed; rerun with
//! `SLUICE_CRASH_SEED=<seed>`), restarts it on the same data dir and checks what the
//! subscribers finally get against what the publisher saw acknowledged. On failure the
//! data dir and the broker's log are kept and their path printed.
//!
//! Run with `cargo test --test crash -- --nocapture` to see the seeds and statistics.

mod crash_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crash_support::{
    collect_until, head, judge_resent, publish_once, publish_with_kills, Broker, PacketIds,
    PublishOutcome, Rng, SubEvent, SubscriberTask,
};
use rumqttc::QoS;

/// Each test is bounded as a whole; its parts have their own, shorter, timeouts.
const TEST_BUDGET: Duration = Duration::from_secs(55);
const STEP: Duration = Duration::from_secs(10);

async fn bounded<F: std::future::Future<Output = ()>>(name: &str, f: F) {
    if tokio::time::timeout(TEST_BUDGET, f).await.is_err() {
        panic!("{name} did not finish within {TEST_BUDGET:?}");
    }
}

fn report(name: &str, seed: u64, broker: &Broker, out: &PublishOutcome, got: &[u64]) {
    eprintln!(
        "[{name}] seed={seed} kills={} acked={} acked_at_kill={:?} in_flight_at_kill={:?} \
         retransmits={} unexpected_disconnects={} received={} distinct={}",
        broker.kills,
        out.acked.len(),
        out.acked_at_kill,
        out.in_flight_at_kill,
        out.retransmits,
        out.unexpected_disconnects.len(),
        got.len(),
        got.iter().collect::<BTreeSet<_>>().len(),
    );
    if !out.unexpected_disconnects.is_empty() {
        eprintln!(
            "[{name}] unexpected disconnects: {}",
            head(&out.unexpected_disconnects)
        );
    }
}

/// Test 1: a persistent QoS 1 subscriber is offline while a publisher streams sequence
/// numbers and the broker is killed 4 times. Every acknowledged message must be in its
/// queue afterwards; first deliveries must be in publish order (redelivered duplicates
/// are allowed at QoS 1).
async fn offline_subscriber_qos1(name: &str, config: Option<&str>) {
    let started = Instant::now();
    let (mut rng, seed) = Rng::from_env_or_clock(name);
    let mut broker = Broker::start_with_config(config);
    let sub_id = format!("{name}-sub");

    let mut sub = SubscriberTask::spawn(&sub_id, broker.port_cell(), false);
    sub.connack(STEP).await;
    sub.subscribe("crash/+/seq", QoS::AtLeastOnce, STEP).await;
    sub.disconnect(STEP).await;

    let total = 3000;
    let kills = rng.kill_points(total, 4);
    eprintln!("[{name}] kill points {kills:?}");
    let out = publish_with_kills(
        &mut broker,
        &mut rng,
        &format!("{name}-pub"),
        "crash/p1/seq",
        QoS::AtLeastOnce,
        PacketIds::Unique,
        total,
        32,
        &kills,
        started + Duration::from_secs(40),
    )
    .await;

    let mut sub = SubscriberTask::spawn(&sub_id, broker.port_cell(), false);
    let present = sub.connack(STEP).await;
    let mut got = Vec::new();
    let mut connacks = Vec::new();
    collect_until(
        &mut sub,
        &out.acked,
        Duration::from_secs(1),
        Instant::now() + Duration::from_secs(10),
        &mut got,
        &mut connacks,
    )
    .await;
    sub.abort();
    report(name, seed, &broker, &out, &got);

    assert!(
        present,
        "[{name}] seed={seed}: the persistent session was not present after the restarts"
    );
    let v = judge_resent(&out.acked, &out.resent, total, &got);
    assert!(
        v.missing.is_empty(),
        "[{name}] seed={seed}: {} PUBACKed messages lost: {} (kills at {kills:?})",
        v.missing.len(),
        head(&v.missing)
    );
    assert!(
        v.out_of_order.is_empty(),
        "[{name}] seed={seed}: first deliveries out of publish order (prev, next): {}",
        head(&v.out_of_order)
    );
    assert!(
        v.unknown.is_empty(),
        "unknown sequence numbers {:?}",
        v.unknown
    );
    assert!(
        connacks.iter().all(|&p| p),
        "[{name}] seed={seed}: a reconnect found no session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_persistent_subscriber_keeps_acked_qos1_across_kill9() {
    let name = "offline-qos1-fsync";
    bounded(name, offline_subscriber_qos1(name, None)).await;
}

/// The same with `durability = "write"`: PUBACK once the OS has the bytes, which must
/// still survive a crash of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_persistent_subscriber_keeps_acked_qos1_across_kill9_write_policy() {
    let name = "offline-qos1-write";
    let config = "[store]\ndurability = \"write\"\n";
    bounded(name, offline_subscriber_qos1(name, Some(config))).await;
}

/// Test 2: the persistent subscriber stays connected and acknowledges as it receives while
/// the broker is killed 3 times; both clients reconnect (the subscriber with clean session
/// false, resuming its session). Every PUBACKed message must eventually arrive at least
/// once, first deliveries in order, and every reconnect must find the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_persistent_subscriber_receives_every_acked_qos1_across_kill9() {
    let name = "online-qos1";
    bounded(name, async {
        let started = Instant::now();
        let (mut rng, seed) = Rng::from_env_or_clock(name);
        let mut broker = Broker::start();

        let mut sub = SubscriberTask::spawn("online-qos1-sub", broker.port_cell(), false);
        sub.connack(STEP).await;
        sub.subscribe("crash/+/seq", QoS::AtLeastOnce, STEP).await;

        let total = 2000;
        let kills = rng.kill_points(total, 3);
        eprintln!("[{name}] kill points {kills:?}");
        let out = publish_with_kills(
            &mut broker,
            &mut rng,
            "online-qos1-pub",
            "crash/p2/seq",
            QoS::AtLeastOnce,
            PacketIds::Reused(100),
            total,
            32,
            &kills,
            started + Duration::from_secs(40),
        )
        .await;

        let mut got = Vec::new();
        let mut connacks = Vec::new();
        collect_until(
            &mut sub,
            &out.acked,
            Duration::from_millis(500),
            Instant::now() + Duration::from_secs(10),
            &mut got,
            &mut connacks,
        )
        .await;
        sub.abort();
        report(name, seed, &broker, &out, &got);

        let v = judge_resent(&out.acked, &out.resent, total, &got);
        assert!(
            v.missing.is_empty(),
            "[{name}] seed={seed}: {} PUBACKed messages never reached the online \
             subscriber: {} (kills at {kills:?})",
            v.missing.len(),
            head(&v.missing)
        );
        assert!(
            v.out_of_order.is_empty(),
            "[{name}] seed={seed}: first deliveries out of publish order (prev, next): {}",
            head(&v.out_of_order)
        );
        assert!(
            v.unknown.is_empty(),
            "unknown sequence numbers {:?}",
            v.unknown
        );
        assert!(
            connacks.iter().all(|&p| p),
            "[{name}] seed={seed}: a reconnect after a kill found no session: {connacks:?}"
        );
    })
    .await;
}

/// Test 3: QoS 2 end to end. The publisher keeps its session (clean session false) and its
/// client state across kills, so after each restart it re-sends the PUBLISHes that got no
/// PUBREC (the broker may have stored them already: it must recognise the packet id it
/// recorded and not route them again) and the PUBRELs. The offline QoS 2 subscriber must
/// then get every PUBRECed message exactly once.
async fn qos2_exactly_once(name: &str, ids: PacketIds) {
    let started = Instant::now();
    let (mut rng, seed) = Rng::from_env_or_clock(name);
    let mut broker = Broker::start();
    let sub_id = format!("{name}-sub");

    let mut sub = SubscriberTask::spawn(&sub_id, broker.port_cell(), false);
    sub.connack(STEP).await;
    sub.subscribe("crash/+/seq", QoS::ExactlyOnce, STEP).await;
    sub.disconnect(STEP).await;

    let total = 2000;
    let kills = rng.kill_points(total, 4);
    eprintln!("[{name}] kill points {kills:?}");
    let out = publish_with_kills(
        &mut broker,
        &mut rng,
        &format!("{name}-pub"),
        "crash/q2/seq",
        QoS::ExactlyOnce,
        ids,
        total,
        32,
        &kills,
        started + Duration::from_secs(40),
    )
    .await;

    let mut sub = SubscriberTask::spawn(&sub_id, broker.port_cell(), false);
    let present = sub.connack(STEP).await;
    let mut got = Vec::new();
    let mut connacks = Vec::new();
    // A longer quiet period: late duplicates are what this test is after.
    collect_until(
        &mut sub,
        &out.acked,
        Duration::from_secs(2),
        Instant::now() + Duration::from_secs(10),
        &mut got,
        &mut connacks,
    )
    .await;
    sub.abort();
    report(name, seed, &broker, &out, &got);

    assert!(present, "[{name}] seed={seed}: session lost");
    let v = judge_resent(&out.acked, &out.resent, total, &got);
    assert!(
        v.missing.is_empty(),
        "[{name}] seed={seed}: {} PUBRECed messages lost: {} (kills at {kills:?}; \
         {} connections closed by the broker)",
        v.missing.len(),
        head(&v.missing),
        out.unexpected_disconnects.len()
    );
    assert!(
        v.duplicates.is_empty(),
        "[{name}] seed={seed}: QoS 2 messages delivered more than once (seq, times): {} \
         (kills at {kills:?})",
        head(&v.duplicates)
    );
    assert!(
        v.out_of_order.is_empty(),
        "[{name}] seed={seed}: deliveries out of publish order (prev, next): {}",
        head(&v.out_of_order)
    );
    assert!(
        v.unknown.is_empty(),
        "unknown sequence numbers {:?}",
        v.unknown
    );
    assert!(
        out.unexpected_disconnects.is_empty(),
        "[{name}] seed={seed}: the broker closed the publisher's connection {} times: {}",
        out.unexpected_disconnects.len(),
        head(&out.unexpected_disconnects)
    );
}

/// Packet ids never reused: shows inbound QoS 2 ids piling up across kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_exactly_once_across_kill9() {
    let name = "qos2-unique-ids";
    bounded(name, qos2_exactly_once(name, PacketIds::Unique)).await;
}

/// Packet ids 1..=64 reused as soon as their flow completed, as real clients do: a stale
/// id the broker still remembers must not swallow a new message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_exactly_once_across_kill9_reused_packet_ids() {
    let name = "qos2-reused-ids";
    bounded(name, qos2_exactly_once(name, PacketIds::Reused(64))).await;
}

/// Test 4: a retained QoS 1 message whose PUBACK arrived survives kill -9 and is delivered,
/// with the retain flag, to a new subscriber after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_survives_kill9() {
    bounded("retained", async {
        let mut broker = Broker::start();
        publish_once(
            broker.port(),
            "retain-pub",
            "crash/retained/r1",
            b"keep-me",
            true,
        )
        .await;
        broker.kill9();
        broker.restart();

        let mut sub = SubscriberTask::spawn("retain-sub", broker.port_cell(), true);
        sub.connack(STEP).await;
        sub.subscribe("crash/retained/#", QoS::AtLeastOnce, STEP)
            .await;
        let deadline = Instant::now() + STEP;
        let p = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let SubEvent::Publish(p) = sub.next(left, "the retained message").await {
                break p;
            }
        };
        sub.abort();
        assert_eq!(p.topic, "crash/retained/r1");
        assert_eq!(&p.payload[..], b"keep-me");
        assert!(
            p.retain,
            "retained message delivered without the retain flag"
        );
    })
    .await;
}

/// Test 5 (MQTT 3.1.1): a subscription whose SUBACK arrived survives kill -9 (the broker is
/// killed while the subscriber is still connected); the subscriber reconnects with clean
/// session false, gets session present, and the message published after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_session_survives_kill9() {
    bounded("session-v4", async {
        let mut broker = Broker::start();
        let mut sub = SubscriberTask::spawn("session-v4-sub", broker.port_cell(), false);
        assert!(!sub.connack(STEP).await, "fresh client id had a session");
        sub.subscribe("crash/session/+", QoS::AtLeastOnce, STEP)
            .await;
        broker.kill9();
        sub.abort();
        broker.restart();

        publish_once(
            broker.port(),
            "session-v4-pub",
            "crash/session/s1",
            b"after-restart",
            false,
        )
        .await;

        let mut sub = SubscriberTask::spawn("session-v4-sub", broker.port_cell(), false);
        let present = sub.connack(STEP).await;
        let deadline = Instant::now() + STEP;
        let p = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let SubEvent::Publish(p) = sub.next(left, "the queued message").await {
                break p;
            }
        };
        sub.abort();
        assert!(present, "CONNACK session present = false after kill -9");
        assert_eq!(p.topic, "crash/session/s1");
        assert_eq!(&p.payload[..], b"after-restart");
    })
    .await;
}

/// Test 5 (MQTT 5): the same with a session kept by Session Expiry Interval > 0 (clean
/// start false) instead of clean session = false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_survives_kill9() {
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

    fn options(port: u16) -> MqttOptions {
        let mut o = MqttOptions::new("session-v5-sub", "127.0.0.1", port);
        let mut props = ConnectProperties::new();
        props.session_expiry_interval = Some(3600);
        o.set_clean_start(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_connect_properties(props);
        o
    }

    /// Polls until `want` accepts an event; a timeout or connection error fails the test.
    async fn wait_for<T>(
        el: &mut EventLoop,
        what: &str,
        mut want: impl FnMut(Event) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, el.poll()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(Err(e)) => panic!("connection error waiting for {what}: {e}"),
                Ok(Ok(ev)) => {
                    if let Some(t) = want(ev) {
                        return t;
                    }
                }
            }
        }
    }

    bounded("session-v5", async {
        let mut broker = Broker::start();
        {
            let (client, mut el) = AsyncClient::new(options(broker.port()), 10);
            let present = wait_for(&mut el, "CONNACK", |ev| match ev {
                Event::Incoming(Packet::ConnAck(c)) => Some(c.session_present),
                _ => None,
            })
            .await;
            assert!(!present, "fresh client id had a session");
            client
                .subscribe("crash/session5/+", QoS5::AtLeastOnce)
                .await
                .expect("subscribe");
            wait_for(&mut el, "SUBACK", |ev| match ev {
                Event::Incoming(Packet::SubAck(_)) => Some(()),
                _ => None,
            })
            .await;
            broker.kill9();
        }
        broker.restart();

        publish_once(
            broker.port(),
            "session-v5-pub",
            "crash/session5/s1",
            b"after-restart-v5",
            false,
        )
        .await;

        let (_client, mut el) = AsyncClient::new(options(broker.port()), 10);
        let present = wait_for(&mut el, "CONNACK", |ev| match ev {
            Event::Incoming(Packet::ConnAck(c)) => Some(c.session_present),
            _ => None,
        })
        .await;
        assert!(
            present,
            "CONNACK session present = false after kill -9 (v5)"
        );
        let (topic, payload) = wait_for(&mut el, "the queued message", |ev| match ev {
            Event::Incoming(Packet::Publish(p)) => Some((p.topic, p.payload)),
            _ => None,
        })
        .await;
        assert_eq!(&topic[..], b"crash/session5/s1");
        assert_eq!(&payload[..], b"after-restart-v5");
    })
    .await;
}
