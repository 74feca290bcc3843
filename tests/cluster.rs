//! Three sluice nodes on a three-server NATS cluster, all on loopback, behaving as one
//! broker: fan-out across nodes, a persistent subscriber's node killed with SIGKILL while
//! its messages are acknowledged elsewhere, session takeover across nodes with queued
//! messages and a will, retained messages seen cluster-wide, a shared subscription
//! split across nodes, and a refused CONNECT (wrong password) that must not take a
//! session over.
//!
//! Needs `nats-server` on PATH (Debian package `nats-server`; `.ci/run` installs it).
//! The tests run one at a time: each starts six processes.

mod cluster_support;
mod common;

use cluster_support::{node_config, NatsCluster};
use common::packet::{self, Connect, Prop, AUTHENTICATION_METHOD};
use common::raw::RawClient;
use common::rumq::v4::{self, QoS};
use common::rumq::Ev;
use common::Broker;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Held by each test for its whole run (an async lock: it is held across awaits).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CLUSTER_WAIT: Duration = Duration::from_secs(30);

/// Waits until the node's current process has logged "cluster ready" (bounded).
fn wait_cluster_ready(node: &Broker, launches: usize) {
    let deadline = Instant::now() + CLUSTER_WAIT;
    while node.stderr().matches("cluster ready").count() < launches {
        assert!(
            Instant::now() < deadline,
            "node not ready within {CLUSTER_WAIT:?}\n{}",
            node.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_nodes(nats: &NatsCluster, extra: &str) -> Vec<Broker> {
    let nodes: Vec<Broker> = ["a", "b", "c"]
        .iter()
        .map(|n| Broker::start_with_config(&node_config(nats, n, extra)))
        .collect();
    for n in &nodes {
        wait_cluster_ready(n, 1);
    }
    nodes
}

/// Waits until `node` has heard, through the interest bucket, that `other` holds
/// `filter` (durably or not).
fn wait_interest(node: &Broker, other: &str, filter: &str, durable: bool) {
    node.wait_for_log(
        &format!("remote interest added node={other} filter={filter} durable={durable}"),
        CLUSTER_WAIT,
    );
}

async fn recv_payloads(client: &mut v4::Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let p = client.recv().await;
        out.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_fan_out_reaches_every_node_once() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut on_c = v4::connect(c.port(), "fan-c").await;
    on_c.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
    let mut on_b = v4::connect(b.port(), "fan-b").await;
    on_b.subscribe("sensors/#", QoS::AtMostOnce).await;
    let mut on_a = v4::connect(a.port(), "fan-a").await;
    on_a.subscribe("sensors/#", QoS::AtLeastOnce).await;

    // A SUBACK means NATS already routes the filter: no wait before publishing.
    let mut publisher = v4::connect(a.port(), "fan-pub").await;
    for i in 0..20 {
        publisher
            .publish(
                &format!("sensors/k{i}/temp"),
                QoS::AtLeastOnce,
                false,
                format!("a{i}"),
            )
            .await;
    }
    // `sensors` itself: MQTT's `sensors/#` matches it, `sensors/+/temp` does not.
    publisher
        .publish("sensors", QoS::AtLeastOnce, false, "parent")
        .await;
    let mut from_c = v4::connect(c.port(), "fan-pub-c").await;
    from_c
        .publish("sensors/c/temp", QoS::AtMostOnce, false, "from-c")
        .await;

    let want: BTreeSet<String> = (0..20).map(|i| format!("a{i}")).collect();
    for (name, client, extra) in [
        ("c", &mut on_c, vec!["from-c"]),
        ("b", &mut on_b, vec!["parent", "from-c"]),
        ("a", &mut on_a, vec!["parent", "from-c"]),
    ] {
        let mut expected = want.clone();
        expected.extend(extra.iter().map(|s| s.to_string()));
        let got = recv_payloads(client, expected.len()).await;
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(unique, expected, "subscriber on node {name}");
        assert_eq!(
            unique.len(),
            got.len(),
            "duplicates on node {name}: {got:?}"
        );
        if let Some(extra) = client.try_recv(Duration::from_millis(300)).await {
            panic!("node {name} delivered more than once: {extra:?}");
        }
    }
    // The admin API of a node: its name, its NATS link, what others subscribe to.
    let info = a.api_json("/api/v1/cluster");
    assert_eq!(info["node"], "a", "{info}");
    assert_eq!(info["nats_connected"], true, "{info}");
    assert_eq!(
        info["nats_urls"].as_array().map(Vec::len),
        Some(3),
        "{info}"
    );
    assert!(
        info["remote_filters"].as_u64() >= Some(2),
        "b's and c's filters: {info}"
    );
    let nodes: Vec<&str> = info["remote_nodes"]
        .as_array()
        .expect("remote_nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert_eq!(nodes, ["b", "c"], "the other nodes with interest: {info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_of_the_subscribers_node() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let mut nodes = start_nodes(&nats, "");

    let mut opts = v4::options(nodes[2].port(), "durable-c");
    opts.set_clean_session(false);
    let (mut sub, _) = v4::connect_with(opts).await;
    sub.subscribe("orders/#", QoS::AtLeastOnce).await;
    drop(sub);
    wait_interest(&nodes[0], "c", "orders/#", true);

    // Node C dies; everything A acknowledges meanwhile waits in C's JetStream inbox.
    nodes[2].kill();
    let mut publisher = v4::connect(nodes[0].port(), "orders-pub").await;
    for i in 0..30 {
        publisher
            .publish(
                &format!("orders/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("o{i}"),
            )
            .await;
    }
    nodes[2].crash_and_restart();
    wait_cluster_ready(&nodes[2], 2);

    let mut opts = v4::options(nodes[2].port(), "durable-c");
    opts.set_clean_session(false);
    let (mut sub, present) = v4::connect_with(opts).await;
    assert!(present, "the persistent session survived the kill");
    // Bounded by the inbox's redelivery time: a pull request the killed process left
    // behind may have taken messages, which JetStream redelivers after its ack wait.
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + CLUSTER_WAIT;
    while got.len() < 30 {
        assert!(Instant::now() < deadline, "only {got:?} arrived");
        if let Some(p) = sub.try_recv(Duration::from_secs(1)).await {
            sub.client.ack(&p).await.expect("puback");
            got.insert(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    let want: BTreeSet<String> = (0..30).map(|i| format!("o{i}")).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_nodes_moves_the_session_and_fires_the_will_once() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // A persistent session on A with queued messages published on B.
    let mut opts = v4::options(a.port(), "mover");
    opts.set_clean_session(false);
    let (mut first, _) = v4::connect_with(opts).await;
    first.subscribe("jobs/#", QoS::AtLeastOnce).await;
    drop(first);
    wait_interest(b, "a", "jobs/#", true);
    let mut publisher = v4::connect(b.port(), "jobs-pub").await;
    for i in 0..10 {
        publisher
            .publish(
                &format!("jobs/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("j{i}"),
            )
            .await;
    }

    // The client comes back on C: the session and its queue follow it.
    let mut will_watch = v4::connect(b.port(), "will-watch").await;
    will_watch.subscribe("wills/mover", QoS::AtLeastOnce).await;
    let mut opts = v4::options(c.port(), "mover");
    opts.set_clean_session(false);
    opts.set_last_will(v4::LastWill::new(
        "wills/mover",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut on_c, present) = v4::connect_with(opts).await;
    assert!(
        present,
        "session present after moving from node A to node C"
    );
    let mut got = BTreeSet::new();
    while got.len() < 10 {
        let p = on_c.recv().await;
        on_c.client.ack(&p).await.expect("puback");
        got.insert(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert_eq!(got, (0..10).map(|i| format!("j{i}")).collect());

    // A live takeover from A: the connection on C is closed, its will fires once.
    let mut opts = v4::options(a.port(), "mover");
    opts.set_clean_session(false);
    let (mut on_a, present) = v4::connect_with(opts).await;
    assert!(present, "session present after moving back to node A");
    on_c.inbox.closed().await;
    let will = will_watch.recv().await;
    assert_eq!(&will.payload[..], b"gone");
    assert!(
        will_watch
            .try_recv(Duration::from_millis(500))
            .await
            .is_none(),
        "the will fired more than once"
    );
    // The subscription moved too: a message published on C reaches the client on A.
    publisher
        .publish("jobs/after", QoS::AtLeastOnce, false, "after")
        .await;
    // (Messages C had sent but not yet seen acknowledged may come again first: QoS 1
    // is at least once.)
    loop {
        let p = on_a.recv().await;
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        if payload == "after" {
            break;
        }
        assert!(payload.starts_with('j'), "unexpected message {payload:?}");
    }
    c.wait_for_log("session handed to another node", CLUSTER_WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_seen_on_every_node() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let mut publisher = v4::connect(nodes[0].port(), "ret-pub").await;
    publisher
        .publish("config/site-1", QoS::AtLeastOnce, true, "v1")
        .await;

    // The PUBACK means the retained bucket has it; each node applies it as it watches.
    let seen = |port: u16, want: Option<&'static str>| async move {
        let deadline = Instant::now() + CLUSTER_WAIT;
        loop {
            let mut c = v4::connect(port, "ret-probe").await;
            c.subscribe("config/#", QoS::AtLeastOnce).await;
            let got = c
                .try_recv(Duration::from_millis(300))
                .await
                .map(|p| String::from_utf8_lossy(&p.payload).into_owned());
            if got.as_deref() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "retained {want:?} not seen; got {got:?}"
            );
        }
    };
    seen(nodes[1].port(), Some("v1")).await;
    seen(nodes[2].port(), Some("v1")).await;

    // Cleared on C, gone everywhere.
    let mut clearer = v4::connect(nodes[2].port(), "ret-clear").await;
    clearer
        .publish("config/site-1", QoS::AtLeastOnce, true, "")
        .await;
    seen(nodes[0].port(), None).await;
    seen(nodes[1].port(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_members_on_different_nodes_split_the_work() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let mut on_b = v4::connect(nodes[1].port(), "worker-b").await;
    on_b.subscribe("$share/workers/work/#", QoS::AtLeastOnce)
        .await;
    let mut on_c = v4::connect(nodes[2].port(), "worker-c").await;
    on_c.subscribe("$share/workers/work/#", QoS::AtLeastOnce)
        .await;
    wait_interest(&nodes[0], "b", "$share/workers/work/#", false);
    wait_interest(&nodes[0], "c", "$share/workers/work/#", false);

    let mut publisher = v4::connect(nodes[0].port(), "work-pub").await;
    for i in 0..60 {
        publisher
            .publish(
                &format!("work/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("w{i}"),
            )
            .await;
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let deadline = Instant::now() + CLUSTER_WAIT;
    while seen.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "only {} of 60 delivered",
            seen.len()
        );
        for (name, c) in [("b", &mut on_b), ("c", &mut on_c)] {
            if let Some(p) = c.try_recv(Duration::from_millis(50)).await {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                if let Some(other) = seen.insert(payload.clone(), name) {
                    panic!("{payload} delivered to both {other} and {name}");
                }
            }
        }
    }
    let to_b = seen.values().filter(|n| **n == "b").count();
    assert!(
        to_b > 0 && to_b < 60,
        "both members get a share: b={to_b} c={}",
        60 - to_b
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_serves_locally_and_resyncs_when_it_returns() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let (a, b) = (&nodes[0], &nodes[1]);

    nats.stop();
    a.wait_for_log("lost NATS", CLUSTER_WAIT);
    // Local clients are served: a QoS 1 publish no other node needs is acknowledged.
    let mut local = v4::connect(a.port(), "local-sub").await;
    local.subscribe("local/#", QoS::AtLeastOnce).await;
    let mut publisher = v4::connect(a.port(), "local-pub").await;
    publisher
        .publish("local/1", QoS::AtLeastOnce, false, "here")
        .await;
    assert_eq!(&local.recv().await.payload[..], b"here");
    // A subscription made on B during the partition...
    let mut on_b = v4::connect(b.port(), "late-b").await;
    on_b.subscribe("late/#", QoS::AtMostOnce).await;

    nats.restart();
    // ...is announced when NATS returns, and messages from A reach it again.
    wait_interest(a, "b", "late/#", false);
    let deadline = Instant::now() + CLUSTER_WAIT;
    let mut n = 0;
    loop {
        n += 1;
        publisher
            .publish("late/x", QoS::AtMostOnce, false, format!("l{n}"))
            .await;
        if on_b.try_recv(Duration::from_millis(200)).await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cross-node delivery did not resume\n{}",
            a.stderr_tail()
        );
    }
    assert!(a.stderr().matches("connected to NATS").count() >= 2);

    // The retained watch resumed too: a retained message set on B reaches A. (Until
    // JetStream has elected the bucket's leader again, the publish is refused: the 3.1.1
    // client is disconnected without PUBACK, and tries again.)
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        let mut on_b_pub = v4::connect(b.port(), "late-ret").await;
        on_b_pub
            .client
            .publish("late/retained", QoS::AtLeastOnce, true, "kept")
            .await
            .expect("publish");
        let acked = on_b_pub
            .inbox
            .try_wait(Duration::from_secs(5), |e| match e {
                common::rumq::Ev::Packet(v4::Packet::PubAck(_)) => Some(true),
                common::rumq::Ev::Closed(_) => Some(false),
                _ => None,
            })
            .await;
        if acked == Some(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retained publish never acknowledged"
        );
    }
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        let mut probe = v4::connect(a.port(), "late-probe").await;
        probe.subscribe("late/retained", QoS::AtLeastOnce).await;
        if let Some(p) = probe.try_recv(Duration::from_millis(300)).await {
            assert_eq!(&p.payload[..], b"kept");
            break;
        }
        assert!(Instant::now() < deadline, "retained message not seen on A");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_seen_from_every_node_and_kept_where_they_arose() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut operator = v4::connect(b.port(), "operator").await;
    operator.subscribe("$DLQ/#", QoS::AtLeastOnce).await;
    wait_interest(a, "b", "$DLQ/#", false);

    // Nobody anywhere subscribes to nobody/home: a no_subscribers dead letter on A.
    let mut publisher = v4::connect(a.port(), "dl-pub").await;
    publisher
        .publish("nobody/home", QoS::AtLeastOnce, false, "lost")
        .await;
    let dl = operator.recv().await;
    assert_eq!(dl.topic, "$DLQ/no_subscribers/nobody/home");
    assert_eq!(&dl.payload[..], b"lost");

    // The durable copy is in A's dead-letter session, not in B's.
    let mut opts = v4::options(b.port(), "sluice-dlq");
    opts.set_clean_session(false);
    let (mut drain_b, _) = v4::connect_with(opts).await;
    assert!(
        drain_b.try_recv(Duration::from_millis(500)).await.is_none(),
        "node B's dead-letter session holds only B's dead letters"
    );
    let mut opts = v4::options(a.port(), "sluice-dlq");
    opts.set_clean_session(false);
    let (mut drain_a, _) = v4::connect_with(opts).await;
    let kept = drain_a.recv().await;
    assert_eq!(kept.topic, "$DLQ/no_subscribers/nobody/home");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_over_while_its_node_was_down_gets_its_queue_when_the_node_returns() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let mut nodes = start_nodes(&nats, "");

    // A persistent session on A with 10 messages queued for it from B.
    let mut opts = v4::options(nodes[0].port(), "wanderer");
    opts.set_clean_session(false);
    let (mut first, _) = v4::connect_with(opts).await;
    first.subscribe("trip/#", QoS::AtLeastOnce).await;
    drop(first);
    wait_interest(&nodes[1], "a", "trip/#", true);
    let mut publisher = v4::connect(nodes[1].port(), "trip-pub").await;
    for i in 0..10 {
        publisher
            .publish(
                &format!("trip/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("t{i}"),
            )
            .await;
    }
    nodes[0].wait_for_log("client_id=wanderer", CLUSTER_WAIT);

    // A dies; the client turns up on C, which cannot reach A: no session there yet.
    nodes[0].kill();
    let mut opts = v4::options(nodes[2].port(), "wanderer");
    opts.set_clean_session(false);
    let (mut on_c, present) = v4::connect_with(opts).await;
    assert!(
        !present,
        "the owner is down: the session cannot come over yet"
    );
    on_c.subscribe("trip/#", QoS::AtLeastOnce).await;

    // A comes back, finds the session owned by C, and sends C what it had queued.
    nodes[0].crash_and_restart();
    wait_cluster_ready(&nodes[0], 2);
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + CLUSTER_WAIT;
    while got.len() < 10 {
        assert!(Instant::now() < deadline, "only {got:?} arrived");
        if let Some(p) = on_c.try_recv(Duration::from_secs(1)).await {
            on_c.client.ack(&p).await.expect("puback");
            got.insert(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    assert_eq!(got, (0..10).map(|i| format!("t{i}")).collect());
    nodes[0].wait_for_log(
        "session was taken over while this node was down",
        CLUSTER_WAIT,
    );
}

/// Reads `client`'s messages up to and including the first `stop`; returns their payloads.
async fn recv_until(client: &mut v4::Client, stop: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let p = client.recv().await;
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        let done = payload == stop;
        out.push(payload);
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_on_one_node_get_each_cross_node_message_once() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let (a, b) = (&nodes[0], &nodes[1]);

    // On B, subscriptions whose NATS subjects overlap (`o.>`, `o.*.t`, `o.1.t`): plain
    // ones, a persistent one (served through B's durable inbox at QoS 1) and a shared
    // group whose only member is on B.
    let mut x = v4::connect(b.port(), "over-x").await;
    x.subscribe("o/#", QoS::AtLeastOnce).await;
    let mut y = v4::connect(b.port(), "over-y").await;
    y.subscribe("o/+/t", QoS::AtLeastOnce).await;
    let mut z = v4::connect(b.port(), "over-z").await;
    z.subscribe("o/1/t", QoS::AtLeastOnce).await;
    let mut opts = v4::options(b.port(), "over-d");
    opts.set_clean_session(false);
    let (mut d, _) = v4::connect_with(opts).await;
    d.subscribe("o/+/t", QoS::AtLeastOnce).await;
    let mut s = v4::connect(b.port(), "over-s").await;
    s.subscribe("$share/g/o/#", QoS::AtLeastOnce).await;
    // A must know of the durable subscriber (to use B's inbox) and of the group (to
    // assign it to B).
    wait_interest(a, "b", "o/+/t", true);
    wait_interest(a, "b", "$share/g/o/#", false);

    // 100 messages from A, QoS 1 and QoS 0 alternately, then a marker matching every
    // filter above.
    let mut publisher = v4::connect(a.port(), "over-pub").await;
    for i in 0..100 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        publisher
            .publish(&format!("o/{i}/t"), qos, false, format!("m{i}"))
            .await;
    }
    publisher
        .publish("o/1/t", QoS::AtLeastOnce, false, "marker")
        .await;
    let mut got: Vec<(&str, &mut v4::Client, Vec<String>)> = vec![
        ("x", &mut x, Vec::new()),
        ("y", &mut y, Vec::new()),
        ("z", &mut z, Vec::new()),
        ("d", &mut d, Vec::new()),
        ("s", &mut s, Vec::new()),
    ];
    for (_, client, seen) in got.iter_mut() {
        seen.extend(recv_until(client, "marker").await);
    }
    // Every NATS subscription of B has now handled the marker (x, y and z are each served
    // through a different one), so every copy of an earlier message is already queued
    // for its session. A second marker queued after them is delivered after them: what
    // arrives before it is all that will ever arrive.
    publisher
        .publish("o/1/t", QoS::AtLeastOnce, false, "end")
        .await;
    for (_, client, seen) in got.iter_mut() {
        seen.extend(recv_until(client, "end").await);
    }

    let all: BTreeSet<String> = (0..100).map(|i| format!("m{i}")).collect();
    for (name, _, seen) in &got {
        let mut expected: BTreeSet<String> = match *name {
            "z" => ["m1".to_string()].into(),
            _ => all.clone(),
        };
        expected.extend(["marker".to_string(), "end".to_string()]);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for p in seen {
            *counts.entry(p.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{name} got duplicates: {twice:?}");
        let unique: BTreeSet<String> = counts.keys().map(|p| p.to_string()).collect();
        assert_eq!(unique, expected, "what {name} received");
    }
}

/// A client's own overlapping subscriptions have different subjects, so its node gets a
/// copy per subscription: each serves its own subscription, with that one's QoS and
/// identifier (MQTT 5.0 §3.3.4 allows a copy per matching subscription, each carrying
/// only its own identifier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_of_one_client_get_a_copy_each_with_their_own_identifier() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let nodes = start_nodes(&nats, "");
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut c = RawClient::v5(b.port(), "ids-b").await;
    let sid = |n| [Prop::Var(packet::SUBSCRIPTION_ID, n)];
    assert_eq!(c.subscribe_with(1, &sid(7), "o/+", 0).await, vec![0]);
    assert_eq!(c.subscribe_with(2, &sid(300), "o/#", 1).await, vec![1]);

    let mut publisher = v4::connect(a.port(), "ids-pub").await;
    publisher
        .publish("o/a", QoS::AtLeastOnce, false, "both")
        .await;
    publisher
        .publish("o/a", QoS::AtLeastOnce, false, "end")
        .await;
    // Each subscription's copies arrive in publish order: once "end" has come through
    // both, every copy of "both" has arrived.
    let mut both = Vec::new();
    let mut end_ids = BTreeSet::new();
    while end_ids != BTreeSet::from([7, 300]) {
        let p = c.expect_publish().await;
        if p.qos > 0 {
            c.send(&packet::puback(p.packet_id)).await;
        }
        let ids: Vec<u32> = p
            .props_with(packet::SUBSCRIPTION_ID)
            .into_iter()
            .filter_map(|prop| match prop {
                Prop::Var(_, v) => Some(*v),
                _ => None,
            })
            .collect();
        match &p.payload[..] {
            b"end" => end_ids.extend(ids),
            b"both" => both.push((p.qos, ids)),
            other => panic!("unexpected {other:?}"),
        }
    }
    both.sort();
    assert_eq!(both, vec![(0, vec![7]), (1, vec![300])]);
}

/// A CONNECT that names another client's id but is refused (wrong password, no
/// password, an unsupported authentication method) must not touch that client's
/// session: no claim, no 0x8E on the owning node, no queue shipped [MQTT-3.1.4-3] is
/// done only for a CONNECT the server accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_on_another_node_does_not_take_the_session_over() {
    let _serial = SERIAL.lock().await;
    let nats = NatsCluster::start(3);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let passwd = dir.path().join("passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwd)
        .args(["victim", "right-password"])
        .status()
        .expect("mosquitto_passwd must be installed (Debian package mosquitto)");
    assert!(made.success(), "mosquitto_passwd failed: {made}");
    let extra = format!(
        "[auth]\npassword_file = {:?}\n",
        passwd.display().to_string()
    );
    let a = Broker::start_with_config(&node_config(&nats, "a", &extra));
    let b = Broker::start_with_config(&node_config(&nats, "b", &extra));
    wait_cluster_ready(&a, 1);
    wait_cluster_ready(&b, 1);

    let mut opts = v4::options(a.port(), "victim");
    opts.set_clean_session(false);
    opts.set_credentials("victim", "right-password");
    let (mut victim, _) = v4::connect_with(opts).await;
    victim.subscribe("alerts/#", QoS::AtLeastOnce).await;

    let bad_password = Connect::v311("victim")
        .clean(false)
        .user("victim", b"wrong-password");
    let no_password = Connect {
        password: None,
        ..Connect::v5("victim").clean(false).user("victim", b"")
    };
    let auth_method = Connect::v5("victim")
        .clean(false)
        .user("victim", b"right-password")
        .prop(Prop::Str(AUTHENTICATION_METHOD, "SCRAM-SHA-1".into()));
    for (attack, connect, code) in [
        ("wrong password", &bad_password, 4),
        ("no password", &no_password, 0x86),
        ("authentication method", &auth_method, 0x8C),
    ] {
        let mut attacker = RawClient::connect(b.port()).await;
        attacker.v5 = connect.level == packet::V5;
        attacker.send(&connect.build()).await;
        let connack = attacker.expect(packet::CONNACK, "CONNACK").await;
        assert_eq!(connack.connack(), (false, code), "{attack}: CONNACK");
        attacker.expect_closed().await;
        // The owner was never asked for the session: the victim is still connected
        // and still subscribed (a kick would be in its inbox before this message).
        let mut publisher = v4::connect(a.port(), "alert-pub").await;
        publisher
            .publish("alerts/1", QoS::AtLeastOnce, false, attack)
            .await;
        let p = victim.recv().await;
        assert_eq!(
            &p.payload[..],
            attack.as_bytes(),
            "after the {attack} CONNECT"
        );
        assert!(
            victim
                .inbox
                .try_wait(Duration::ZERO, |e| matches!(e, Ev::Closed(_)).then_some(()))
                .await
                .is_none(),
            "the victim was disconnected by the {attack} CONNECT"
        );
        publisher.disconnect().await;
    }
    for node in [&a, &b] {
        let log = node.stderr();
        assert!(
            !log.contains("session handed to another node") && !log.contains("taken over"),
            "a session moved:\n{}",
            node.stderr_tail()
        );
    }
    // And the session is still there for its rightful client.
    victim.disconnect().await;
    let mut opts = v4::options(a.port(), "victim");
    opts.set_clean_session(false);
    opts.set_credentials("victim", "right-password");
    let (_victim, present) = v4::connect_with(opts).await;
    assert!(present, "the victim's session survived");
}
