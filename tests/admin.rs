//! The admin HTTP API of the real binary (src/admin/): every endpoint, paging, the
//! errors (400 naming the parameter, 401, 403, 404), kicking a v5 client (DISCONNECT
//! 0x98), replaying and purging a selection of dead letters while the others stay, and
//! the separate admin port. `sluice ctl` is tested here too, against the same broker.

mod common;
mod tls_support;

use common::packet::{self, Connect, Prop, SESSION_EXPIRY};
use common::raw::RawClient;
use common::{http, poll_until, Broker, WAIT};
use serde_json::Value;

/// Publishes QoS 1 `payload` on `topic` from a fresh 3.1.1 client and waits for the
/// PUBACK (so the message, and any dead letter it caused, is accepted).
async fn publish(port: u16, topic: &str, payload: &[u8], retain: bool) {
    let mut c = RawClient::v311(port, "admin-test-publisher").await;
    c.send(&packet::publish(false, topic, 1, retain, 1, &[], payload))
        .await;
    c.expect(packet::PUBACK, "PUBACK").await;
    c.send(&packet::DISCONNECT).await;
    c.expect_closed().await;
}

fn ids(page: &Value, key: &str) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| match &i[key] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn error_param(b: &Broker, method: &str, path: &str, body: Option<&str>) -> String {
    let (status, text) = b.api(method, path, body);
    assert_eq!(status, 400, "{method} {path}: {text}");
    let v: Value = serde_json::from_str(&text).expect("JSON error");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{text}");
    v["param"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn lists_clients_sessions_subscriptions_retained_and_stats() {
    let b = Broker::start();
    let port = b.port();
    let mut v5 = RawClient::v5(port, "c-v5").await;
    v5.subscribe(1, "live/#", 1).await;
    let mut v3 = RawClient::v311(port, "c-v3").await;
    v3.ping().await;
    // An offline persistent session with a backlog of three.
    let mut off = RawClient::handshake(port, &Connect::v311("c-offline").clean(false))
        .await
        .0;
    off.subscribe(1, "backlog/#", 1).await;
    off.send(&packet::DISCONNECT).await;
    off.expect_closed().await;
    for i in 0..3 {
        publish(port, &format!("backlog/{i}"), b"x", false).await;
    }
    publish(port, "state/lamp", b"on", true).await;

    let clients = b.api_json("/api/v1/clients");
    assert_eq!(ids(&clients, "client_id"), ["c-v3", "c-v5"]);
    let c = b.api_json("/api/v1/clients/c-v5");
    assert_eq!(c["protocol"], "5.0");
    assert_eq!(c["listener"], "mqtt");
    assert!(c["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(c["subscriptions"], 1);
    assert_eq!(b.api("GET", "/api/v1/clients/c-offline", None).0, 404);
    assert_eq!(b.api("GET", "/api/v1/clients/nobody", None).0, 404);
    // Paging: one at a time, then the rest.
    let first = b.api_json("/api/v1/clients?limit=1");
    assert_eq!(ids(&first, "client_id"), ["c-v3"]);
    let next = first["next"].as_str().expect("a next page");
    let second = b.api_json(&format!("/api/v1/clients?limit=1&after={next}"));
    assert_eq!(ids(&second, "client_id"), ["c-v5"]);
    assert!(second["next"].is_null());

    let by_backlog = b.api_json("/api/v1/sessions?sort=backlog");
    let top = &by_backlog["items"][0];
    assert_eq!(top["client_id"], "c-offline", "{by_backlog}");
    assert_eq!(top["online"], false);
    assert_eq!(top["persistent"], true);
    assert_eq!(top["queued"], 3);
    assert!(top["queued_bytes"].as_u64().is_some_and(|n| n > 0));
    assert!(top["oldest_queued_age_secs"].as_f64().is_some());
    assert_eq!(top["subscriptions"][0]["filter"], "backlog/#");
    let page1 = b.api_json("/api/v1/sessions?sort=backlog&limit=1");
    let cursor = page1["next"].as_str().expect("next");
    let page2 = b.api_json(&format!(
        "/api/v1/sessions?sort=backlog&limit=1&after={cursor}"
    ));
    assert_ne!(page2["items"][0]["client_id"], "c-offline");
    let all = ids(&b.api_json("/api/v1/sessions"), "client_id");
    assert!(all.contains(&"sluice-dlq".to_string()), "{all:?}");
    assert_eq!(b.api_json("/api/v1/sessions/c-offline")["queued"], 3);

    let subs = b.api_json("/api/v1/subscriptions?filter=backlog/%23");
    assert_eq!(ids(&subs, "client_id"), ["c-offline"]);
    let subs = b.api_json("/api/v1/subscriptions?topic=live/kitchen");
    assert_eq!(ids(&subs, "client_id"), ["c-v5"]);

    let retained = b.api_json("/api/v1/retained?topic=state/%23");
    assert_eq!(ids(&retained, "topic"), ["state/lamp"]);
    assert_eq!(retained["items"][0]["preview"], "on");
    assert_eq!(
        b.api("DELETE", "/api/v1/retained?topic=state/lamp", None).0,
        204
    );
    assert!(ids(&b.api_json("/api/v1/retained"), "topic").is_empty());
    assert_eq!(
        b.api("DELETE", "/api/v1/retained?topic=state/lamp", None).0,
        404
    );

    let stats = b.api_json("/api/v1/stats");
    assert!(stats["messages_received"].as_u64() >= Some(4), "{stats}");
    assert_eq!(stats["sessions_online"], 2);
    assert!(stats["dead_letters_total"]["no_subscribers"].is_u64());
    assert_eq!(b.api("GET", "/api/v1/cluster", None).0, 404);
    assert_eq!(b.api("GET", "/api/v1/nothing", None).0, 404);

    // 400s name the bad parameter.
    assert_eq!(
        error_param(&b, "GET", "/api/v1/clients?limit=x", None),
        "limit"
    );
    assert_eq!(
        error_param(&b, "GET", "/api/v1/clients?limit=0", None),
        "limit"
    );
    assert_eq!(
        error_param(&b, "GET", "/api/v1/sessions?sort=age", None),
        "sort"
    );
    assert_eq!(
        error_param(&b, "GET", "/api/v1/sessions?sort=backlog&after=x", None),
        "after"
    );
    assert_eq!(
        error_param(&b, "GET", "/api/v1/clients?colour=red", None),
        "query"
    );
    assert_eq!(error_param(&b, "DELETE", "/api/v1/retained", None), "topic");
    assert_eq!(
        error_param(&b, "GET", "/api/v1/retained?topic=a/%23/b", None),
        "topic"
    );
    assert_eq!(
        error_param(&b, "GET", "/api/v1/subscriptions?topic=a/%2B", None),
        "topic"
    );
    assert_eq!(
        error_param(&b, "GET", "/api/v1/dead-letters?reason=bored", None),
        "reason"
    );
    assert_eq!(
        error_param(&b, "GET", "/api/v1/dead-letters?after=x", None),
        "after"
    );
    assert_eq!(
        error_param(&b, "POST", "/api/v1/dead-letters/replay", Some("{")),
        "body"
    );
    assert_eq!(
        error_param(
            &b,
            "POST",
            "/api/v1/dead-letters/purge",
            Some(r#"{"topics":["a/#/b"]}"#)
        ),
        "topic"
    );
    drop((v5, v3));
}

#[tokio::test]
async fn kicking_a_v5_client_sends_0x98_and_can_end_its_session() {
    let b = Broker::start();
    let port = b.port();
    let connect = Connect::v5("kicked").prop(Prop::U32(SESSION_EXPIRY, 3600));
    let (mut c, _) = RawClient::handshake(port, &connect).await;
    c.subscribe(1, "k/#", 1).await;
    publish(port, "k/1", b"one", false).await;
    publish(port, "k/2", b"two", false).await;
    // Received and never acknowledged: both stay inflight in the session.
    c.expect_publish().await;
    c.expect_publish().await;

    let (status, body) = b.api("DELETE", "/api/v1/clients/kicked", None);
    assert_eq!(status, 200, "{body}");
    let got = c.expect_closed().await;
    let disconnect = got
        .iter()
        .find(|p| p.kind() == packet::DISCONNECT_TYPE)
        .unwrap_or_else(|| panic!("no DISCONNECT before the close: {got:?}"));
    assert_eq!(disconnect.reason(), 0x98, "Administrative action");

    // Offline now, its session kept: a second plain kick finds nobody connected.
    assert!(poll_until(WAIT, || b.api_json("/api/v1/sessions/kicked")
        ["online"]
        == false));
    assert_eq!(b.api("DELETE", "/api/v1/clients/kicked", None).0, 404);
    // Ending the session turns what it held into session_expired dead letters.
    let (status, body) = b.api(
        "DELETE",
        "/api/v1/clients/kicked?discard_session=true",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"session_discarded\":true"), "{body}");
    assert_eq!(b.api("GET", "/api/v1/sessions/kicked", None).0, 404);
    let dl = b.api_json("/api/v1/dead-letters?reason=session_expired");
    let topics = ids(&dl, "original_topic");
    assert_eq!(topics, ["k/1", "k/2"], "{dl}");
    assert_eq!(dl["items"][0]["subscriber"], "kicked");
    assert_eq!(
        error_param(
            &b,
            "DELETE",
            "/api/v1/clients/sluice-dlq?discard_session=1",
            None
        ),
        "discard_session"
    );
    assert_eq!(b.api("DELETE", "/api/v1/clients/ghost", None).0, 404);

    // Online and discarded in one go: disconnected, its session gone, its message a
    // dead letter.
    let connect = Connect::v5("kicked-2").prop(Prop::U32(SESSION_EXPIRY, 3600));
    let (mut c, _) = RawClient::handshake(port, &connect).await;
    c.subscribe(1, "k2/#", 1).await;
    publish(port, "k2/1", b"three", false).await;
    c.expect_publish().await;
    let (status, body) = b.api(
        "DELETE",
        "/api/v1/clients/kicked-2?discard_session=true",
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"disconnected\":true"), "{body}");
    assert!(body.contains("\"session_discarded\":true"), "{body}");
    let got = c.expect_closed().await;
    assert!(
        got.iter()
            .any(|p| p.kind() == packet::DISCONNECT_TYPE && p.reason() == 0x98),
        "{got:?}"
    );
    assert_eq!(b.api("GET", "/api/v1/sessions/kicked-2", None).0, 404);
    let dl = b.api_json("/api/v1/dead-letters?reason=session_expired&topic=k2/%23");
    assert_eq!(ids(&dl, "original_topic"), ["k2/1"], "{dl}");
}

#[tokio::test]
async fn replaying_and_purging_a_selection_leaves_the_other_dead_letters() {
    let mut b = Broker::start();
    let port = b.port();
    for topic in ["a/1", "a/2", "b/1", "c/1"] {
        publish(port, topic, topic.as_bytes(), false).await;
    }
    let all = b.api_json("/api/v1/dead-letters");
    assert_eq!(ids(&all, "original_topic"), ["a/1", "a/2", "b/1", "c/1"]);
    let first = &all["items"][0];
    assert_eq!(first["reason"], "no_subscribers");
    assert_eq!(first["publisher"], "admin-test-publisher");
    assert_eq!(first["payload_bytes"], 3);
    assert_eq!(first["preview"], "a/1");
    assert_eq!(first["attempts"], 0);
    assert!(first["first_seen"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // Filters and paging.
    let page = b.api_json("/api/v1/dead-letters?topic=a/%23&limit=1");
    assert_eq!(ids(&page, "original_topic"), ["a/1"]);
    let next = page["next"].as_str().expect("next");
    let page = b.api_json(&format!("/api/v1/dead-letters?topic=a/%23&after={next}"));
    assert_eq!(ids(&page, "original_topic"), ["a/2"]);

    // A subscriber for a/#; replaying a/1 only reaches it, and only a/1 leaves.
    let mut sub = RawClient::v311(port, "a-reader").await;
    sub.subscribe(1, "a/#", 1).await;
    let (status, body) = b.api(
        "POST",
        "/api/v1/dead-letters/replay",
        Some(r#"{"topics": ["a/1"]}"#),
    );
    assert_eq!(status, 200, "{body}");
    let out: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(out["replayed"], 1, "{out}");
    assert_eq!(out["no_subscribers_again"], 0);
    let p = sub.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("a/1", &b"a/1"[..])
    );
    sub.send(&packet::puback(p.packet_id)).await;
    sub.ping().await;
    assert_eq!(
        ids(&b.api_json("/api/v1/dead-letters"), "original_topic"),
        ["a/2", "b/1", "c/1"]
    );

    // By id: b/1 has no subscriber still, so it comes back as a new dead letter.
    let b1 = b.api_json("/api/v1/dead-letters?topic=b/1")["items"][0]["id"].clone();
    let (status, body) = b.api(
        "POST",
        "/api/v1/dead-letters/replay",
        Some(&format!(r#"{{"ids": [{b1}]}}"#)),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"no_subscribers_again\":1"), "{body}");
    let now = b.api_json("/api/v1/dead-letters");
    assert_eq!(ids(&now, "original_topic"), ["a/2", "c/1", "b/1"]);
    assert_eq!(now["items"][2]["publisher"], "sluice-dlq");

    // An empty selection touches nothing; purge takes only what it selects.
    let (status, body) = b.api("POST", "/api/v1/dead-letters/purge", Some("{}"));
    assert_eq!((status, body.as_str()), (200, r#"{"purged":0}"#));
    let (status, body) = b.api(
        "POST",
        "/api/v1/dead-letters/purge",
        Some(r#"{"reasons": ["no_subscribers"], "topics": ["c/#"]}"#),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"purged":1}"#));
    // What is left survives a restart: the acks of the replay and purge are on disk.
    drop(sub);
    b.restart();
    assert_eq!(
        ids(&b.api_json("/api/v1/dead-letters"), "original_topic"),
        ["a/2", "b/1"]
    );
    let (status, body) = b.api(
        "POST",
        "/api/v1/dead-letters/purge",
        Some(r#"{"all": true}"#),
    );
    assert_eq!((status, body.as_str()), (200, r#"{"purged":2}"#));
    assert!(ids(&b.api_json("/api/v1/dead-letters"), "id").is_empty());
}

const RO: &str = "read-only-token-0123456789";
const RW: &str = "read-write-token-0123456789";
const LATER: &str = "added-later-token-0123456789";

#[test]
fn tokens_give_401_403_and_reload_on_sighup() {
    let tokens = tempfile::TempDir::new().expect("temp dir");
    let file = tokens.path().join("tokens");
    std::fs::write(&file, format!("# ops\n{RO} ro\n{RW} rw\n")).expect("token file");
    let config = format!(
        "[admin]\ntoken_file = {file:?}\nloopback_without_token = false\n\
         metrics_require_token = true\n"
    );
    let b = Broker::start_with_config(&config);
    let a = b.admin_addr();
    let (status, body) = http(a, "GET", "/api/v1/stats", None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        http(
            a,
            "GET",
            "/api/v1/stats",
            Some("wrong-token-0123456789"),
            None
        )
        .0,
        401
    );
    assert_eq!(http(a, "GET", "/api/v1/stats", Some(RO), None).0, 200);
    let (status, body) = http(a, "DELETE", "/api/v1/retained?topic=x", Some(RO), None);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        http(
            a,
            "POST",
            "/api/v1/dead-letters/purge",
            Some(RO),
            Some("{}")
        )
        .0,
        403
    );
    // Past the guard, a read-write token meets the handler's own answer.
    assert_eq!(
        http(a, "DELETE", "/api/v1/retained?topic=x", Some(RW), None).0,
        404
    );
    assert_eq!(http(a, "GET", "/metrics", None, None).0, 401);
    assert_eq!(http(a, "GET", "/metrics", Some(RO), None).0, 200);
    // The console's files hold no data and need no token.
    assert_eq!(http(a, "GET", "/", None, None).0, 200);

    std::fs::write(&file, format!("{LATER} ro\n")).expect("token file");
    b.signal("HUP");
    assert!(
        poll_until(WAIT, || http(a, "GET", "/api/v1/stats", Some(LATER), None)
            .0
            == 200),
        "the new token works after SIGHUP"
    );
    assert_eq!(http(a, "GET", "/api/v1/stats", Some(RO), None).0, 401);
}

#[test]
fn admin_listen_gives_the_api_its_own_port() {
    let b = Broker::spawn(None, &["--admin-listen", "127.0.0.1:0"]);
    let (m, a) = (b.metrics_addr(), b.admin_addr());
    assert_ne!(m, a);
    assert_eq!(http(m, "GET", "/metrics", None, None).0, 200);
    assert_eq!(http(m, "GET", "/api/v1/stats", None, None).0, 404);
    assert_eq!(http(a, "GET", "/api/v1/stats", None, None).0, 200);
    assert_eq!(http(a, "GET", "/metrics", None, None).0, 404);
    let (status, page) = http(a, "GET", "/", None, None);
    assert_eq!(status, 200);
    assert!(page.contains("sluice"), "{page}");
}

/// Runs `sluice ctl --url http://ADDR ARGS...`: (exit code, stdout, stderr).
fn ctl(b: &Broker, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("ctl")
        .arg("--url")
        .arg(format!("http://{}", b.admin_addr()))
        .args(args)
        .output()
        .expect("run sluice ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ctl_is_a_client_of_the_api() {
    let b = Broker::start();
    for topic in ["a/1", "b/1"] {
        publish(b.port(), topic, b"21.5", false).await;
    }
    let (code, out, err) = ctl(&b, &["dead-letters", "list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID  REASON"), "{out}");
    assert!(lines[1].contains("no_subscribers  a/1"), "{out}");
    assert_eq!(lines.last(), Some(&"(2 total)"), "{out}");

    let (code, out, err) = ctl(&b, &["--json", "sessions", "--by-backlog"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["items"][0]["client_id"], "sluice-dlq");
    assert_eq!(v["items"][0]["queued"], 2);

    let (code, _, err) = ctl(&b, &["dead-letters", "replay"]);
    assert_eq!(code, 2, "a replay needs a selection: {err}");
    let (code, out, err) = ctl(&b, &["dead-letters", "purge", "--topic", "b/#"]);
    assert_eq!((code, out.as_str()), (0, "purged 1\n"), "{err}");
    let (code, out, err) = ctl(
        &b,
        &["dead-letters", "replay", "--reason", "no_subscribers"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("replayed 1 (no_subscribers: 1)"), "{out}");

    let (code, _, err) = ctl(&b, &["kick", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, out, err) = ctl(&b, &["stats"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("messages_received"), "{out}");
    let (code, out, err) = ctl(&b, &["retained", "list"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "TOPIC  QOS  BYTES  RECEIVED  PREVIEW\n(0 total)\n"),
        "{err}"
    );
}

/// A 3.1.1 client on a plain socket that publishes QoS 0 messages on `load/<n>` at a
/// steady pace until `stop` (at most 5,000), so the console's rate chart has a line.
fn load_generator(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(&Connect::v311("load-generator").build())
            .expect("CONNECT");
        for i in 0..5_000u32 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let topic = format!("load/{}", i % 8);
            if s.write_all(&packet::publish(false, topic, 0, false, 0, &[], b"20.5"))
                .is_err()
            {
                break;
            }
            // Pacing, not synchronisation: about 50 messages a second.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    })
}

/// The console in headless Chromium (tests/console/console.test.mjs, playwright-core
/// driving Debian's /usr/bin/chromium): against a broker with clients, a backlog and
/// dead letters, it screenshots each view into target/artifacts/ and replays one dead
/// letter through the page; the result is checked here through the API. Skips (with a
/// notice) only when Chromium cannot start.
#[tokio::test]
async fn console_in_headless_chromium() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/console/console.test.mjs");
    assert!(
        root.join("tests/console/node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/console`"
    );
    let b = Broker::start();
    let port = b.port();
    // Backlogs: two offline persistent sessions with messages waiting.
    for (id, filter, n) in [("archiver", "sensors/#", 24), ("billing", "meter/#", 6)] {
        let mut c = RawClient::handshake(port, &Connect::v311(id).clean(false))
            .await
            .0;
        c.subscribe(1, filter, 1).await;
        c.send(&packet::DISCONNECT).await;
        c.expect_closed().await;
        for i in 0..n {
            let topic = format!("{}/{i}", filter.trim_end_matches("/#"));
            publish(port, &topic, b"42", false).await;
        }
    }
    // Dead letters: nobody subscribes to these.
    for topic in ["orphan/a/late", "orphan/b", "alerts/fire/3", "orphan/c"] {
        publish(port, topic, br#"{"level":"high"}"#, false).await;
    }
    // A reader for orphan/a/# subscribes only now, and goes offline: the replay must
    // land in its queue.
    let mut reader = RawClient::handshake(port, &Connect::v311("orphan-reader").clean(false))
        .await
        .0;
    reader.subscribe(1, "orphan/a/#", 1).await;
    reader.send(&packet::DISCONNECT).await;
    reader.expect_closed().await;
    let mut dashboard = RawClient::v5(port, "dashboard-7").await;
    dashboard.subscribe(1, "alerts/#", 1).await;
    dashboard.subscribe(2, "load/#", 0).await;
    let dl = b.api_json("/api/v1/dead-letters");
    let target = dl["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|d| d["original_topic"] == "orphan/a/late")
        .expect("the dead letter to replay")["id"]
        .clone();
    let before = ids(&dl, "id").len();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_generator(port, std::sync::Arc::clone(&stop));
    let artifacts = root.join("target/artifacts");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("SLUICE_ADMIN_URL", format!("http://{}", b.admin_addr()))
        .env("REPLAY_ID", target.to_string())
        .env("ARTIFACTS", &artifacts)
        .kill_on_drop(true)
        .output();
    let out = common::within(std::time::Duration::from_secs(120), "the browser test", out)
        .await
        .expect("run node (is nodejs installed?)");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("load generator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) {
        eprintln!("NOTICE: skipping the browser test: {stderr}");
        return;
    }
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for shot in [
        "overview",
        "clients",
        "sessions",
        "dead-letters",
        "dead-letters-replayed",
    ] {
        assert!(
            artifacts.join(format!("{shot}.png")).exists(),
            "no screenshot {shot}.png"
        );
    }
    // Through the API: exactly that dead letter left the queue, and its message is
    // in the reader's; the others stayed.
    let after = b.api_json("/api/v1/dead-letters");
    let left: Vec<String> = ids(&after, "id");
    assert!(!left.contains(&target.to_string()), "{after}");
    assert_eq!(left.len(), before - 1, "{after}");
    for topic in ["orphan/b", "alerts/fire/3", "orphan/c"] {
        assert!(ids(&after, "original_topic").contains(&topic.to_string()));
    }
    assert_eq!(b.api_json("/api/v1/sessions/orphan-reader")["queued"], 1);
    drop(dashboard);
}

/// A replay cut short by `kill -9` loses nothing: after the restart every message is
/// still a dead letter, or in the subscriber's queue (or both: QoS 1 is at least once).
#[tokio::test]
async fn a_replay_interrupted_by_kill_9_loses_nothing() {
    const N: usize = 1500;
    let mut b = Broker::start();
    let mut publisher = RawClient::v311(b.port(), "bulk").await;
    let mut burst = Vec::new();
    for i in 0..N {
        let id = u16::try_from(i % 60_000 + 1).expect("packet id");
        burst.extend(packet::publish(
            false,
            format!("r/{i}"),
            1,
            false,
            id,
            &[],
            format!("m{i}").as_bytes(),
        ));
    }
    publisher.send(&burst).await;
    for _ in 0..N {
        publisher.expect(packet::PUBACK, "PUBACK").await;
    }
    let mut sink = RawClient::handshake(b.port(), &Connect::v311("sink").clean(false))
        .await
        .0;
    sink.subscribe(1, "r/#", 1).await;
    sink.send(&packet::DISCONNECT).await;
    sink.expect_closed().await;

    let admin = b.admin_addr();
    // The request dies with the broker (its thread then panics; that is expected).
    let replay = std::thread::spawn(move || {
        http(
            admin,
            "POST",
            "/api/v1/dead-letters/replay",
            None,
            Some(r#"{"all":true}"#),
        )
    });
    assert!(
        poll_until(WAIT, || b.api_json("/api/v1/sessions/sink")["queued"]
            .as_u64()
            .is_some_and(|n| n > 0)),
        "the replay started"
    );
    b.crash_and_restart();
    let finished = replay.join().is_ok_and(|(status, _)| status == 200);
    eprintln!("replay finished before the kill: {finished}");

    let mut seen = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/dead-letters?topic=r/%23&limit=1000&after={a}"),
            None => "/api/v1/dead-letters?topic=r/%23&limit=1000".to_string(),
        };
        let page = b.api_json(&path);
        for d in page["items"].as_array().expect("items") {
            seen.insert(d["preview"].as_str().expect("preview").to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let queued = b.api_json("/api/v1/sessions/sink")["queued"]
        .as_u64()
        .expect("queued");
    let mut sink = RawClient::handshake(b.port(), &Connect::v311("sink").clean(false))
        .await
        .0;
    for _ in 0..queued {
        let p = sink.expect_publish().await;
        sink.send(&packet::puback(p.packet_id)).await;
        seen.insert(String::from_utf8(p.payload).expect("utf-8"));
    }
    let missing: Vec<usize> = (0..N)
        .filter(|i| !seen.contains(&format!("m{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} messages: {missing:?}",
        missing.len()
    );
}

/// One HTTPS request through rustls trusting `config`'s roots: (status, body).
async fn https_get(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rumqttc::tokio_rustls::rustls::ClientConfig>,
    path: &str,
) -> (u16, String) {
    use rumqttc::tokio_rustls::{rustls::pki_types::ServerName, TlsConnector};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    let mut tls = common::within(
        WAIT,
        "TLS handshake",
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    let _ = common::within(WAIT, "HTTPS response", tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// `[admin] cert_file`/`key_file`: the API, the console and /metrics over HTTPS with a
/// TLS listener's kind of files; plain HTTP to that port gets no answer.
#[tokio::test]
async fn https_with_the_certificate_files_of_a_tls_listener() {
    let certs = tempfile::TempDir::new().expect("temp dir");
    let ca = tls_support::Ca::new("sluice admin test CA");
    let (cert, key) = ca.server().write(certs.path(), "server");
    let config = format!(
        "[admin]\ncert_file = {}\nkey_file = {}\n",
        tls_support::toml_path(&cert),
        tls_support::toml_path(&key)
    );
    let b = Broker::start_with_config(&config);
    let client = tls_support::client_config(&[ca.der()], None, &[]);
    let (status, body) = https_get(b.admin_addr(), client.clone(), "/api/v1/stats").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("messages_received"), "{body}");
    assert_eq!(
        https_get(b.admin_addr(), client.clone(), "/metrics")
            .await
            .0,
        200
    );
    assert_eq!(https_get(b.admin_addr(), client, "/").await.0, 200);
    // sluice ctl over HTTPS, trusting the same CA.
    let ca_file = tls_support::write_file(certs.path(), "ca.pem", &ca.pem());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["ctl", "--url"])
        .arg(format!("https://localhost:{}", b.admin_addr().port()))
        .arg("--cacert")
        .arg(&ca_file)
        .args(["--json", "stats"])
        .output()
        .expect("run sluice ctl");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("messages_received"));
    let admin = b.admin_addr();
    let plain = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| http(admin, "GET", "/api/v1/stats", None, None)).ok()
    })
    .await
    .expect("plain request");
    assert!(
        plain.is_none_or(|(status, _)| status != 200),
        "plain HTTP must not be served on the HTTPS port"
    );
}

/// A client that never finishes its request head is dropped after
/// `[admin] request_timeout_secs`, and the server goes on serving.
#[test]
fn a_silent_http_client_is_dropped() {
    use std::io::{Read, Write};
    let b = Broker::start_with_config("[admin]\nrequest_timeout_secs = 1\n");
    let mut silent = std::net::TcpStream::connect(b.admin_addr()).expect("connect");
    silent
        .write_all(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request head");
    silent.set_read_timeout(Some(WAIT)).expect("read timeout");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    match silent.read(&mut buf) {
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(started.elapsed() < WAIT, "dropped by the header timeout");
    assert_eq!(b.api("GET", "/api/v1/stats", None).0, 200);
}

/// `$delayed/` messages are listed by due time and can be cancelled; a cancelled one
/// stays cancelled across a `kill -9`, the other still waits.
#[tokio::test]
async fn delayed_messages_are_listed_and_cancelled_durably() {
    let mut b = Broker::start();
    publish(b.port(), "$delayed/600/later/b", b"second", false).await;
    publish(b.port(), "$delayed/300/later/a", b"first", false).await;
    let list = b.api_json("/api/v1/delayed");
    assert_eq!(ids(&list, "topic"), ["later/a", "later/b"], "{list}");
    assert_eq!(list["items"][0]["preview"], "first");
    let first = list["items"][0]["id"].as_u64().expect("an id");
    let page = b.api_json("/api/v1/delayed?limit=1");
    assert_eq!(ids(&page, "topic"), ["later/a"]);

    assert_eq!(
        b.api("DELETE", &format!("/api/v1/delayed/{first}"), None).0,
        204
    );
    assert_eq!(
        b.api("DELETE", &format!("/api/v1/delayed/{first}"), None).0,
        404
    );
    assert_eq!(error_param(&b, "DELETE", "/api/v1/delayed/x", None), "id");
    b.crash_and_restart();
    assert_eq!(ids(&b.api_json("/api/v1/delayed"), "topic"), ["later/b"]);
}
