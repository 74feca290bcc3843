//! The observability surface of the real binary: `/metrics` counts what happened, is
//! valid Prometheus exposition, is scrapeable by a real Prometheus, and `$SYS` topics
//! carry sane values.
//!
//! Traffic is made with `mosquitto_pub`/`mosquitto_sub`; `promtool` and `prometheus`
//! (Debian package `prometheus`) are used where installed, and their tests print a
//! notice and pass when they are not.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `sluice` with its bound addresses.
struct Sluice {
    child: Child,
    mqtt: SocketAddr,
    metrics: Option<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Sluice {
    fn start(extra: &[&str]) -> Sluice {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert!(line.starts_with("sluice ready "), "ready line: {line:?}");
        let addr = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|a| a.parse::<SocketAddr>().expect("address"))
        };
        Sluice {
            mqtt: addr("mqtt=").expect("mqtt= in the ready line"),
            metrics: addr("metrics="),
            child,
            _dir: dir,
        }
    }

    /// With metrics on a free port and no `$SYS` traffic unless asked for.
    fn with_metrics(sys_interval: &str) -> Sluice {
        Sluice::start(&[
            "--metrics-listen",
            "127.0.0.1:0",
            "--sys-interval",
            sys_interval,
        ])
    }

    fn scrape(&self) -> String {
        let addr = self.metrics.expect("metrics enabled");
        let (status, body) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn port(&self) -> String {
        self.mqtt.port().to_string()
    }

    fn publish(&self, qos: u8, topic: &str, payload: &str) {
        let out = run(Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port(),
                "-q",
                &qos.to_string(),
            ])
            .args(["-t", topic, "-m", payload]));
        assert!(out.status.success(), "mosquitto_pub: {out:?}");
    }

    /// Waits until the router holds `n` subscriptions (the dead-letter session's is one).
    fn wait_subscriptions(&self, n: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if value(&self.scrape(), "sluice_subscriptions") == Some(n) {
                return;
            }
            assert!(Instant::now() < deadline, "never saw {n} subscriptions");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// The value of the series `series` (name plus labels exactly as rendered, e.g.
/// `m{qos="1"}`); label order is the exporter's, so match single-label series only.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        let v = rest.strip_prefix(' ')?;
        v.trim().parse().ok()
    })
}

fn must(exposition: &str, series: &str) -> f64 {
    value(exposition, series).unwrap_or_else(|| panic!("no {series} in:\n{exposition}"))
}

#[test]
fn counters_move_by_what_happened() {
    let s = Sluice::with_metrics("0");
    let before = s.scrape();
    assert_eq!(must(&before, "sluice_build_info{version=\"0.1.0\"}"), 1.0);
    assert_eq!(
        must(&before, "sluice_messages_received_total{qos=\"1\"}"),
        0.0
    );
    let sent_before = must(&before, "sluice_messages_sent_total{qos=\"1\"}");

    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.port(), "-q", "1"])
        .args(["-t", "metrics/test", "-C", "10", "-W", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    s.wait_subscriptions(2.0);
    for i in 0..10 {
        s.publish(1, "metrics/test", &format!("payload-{i}"));
    }
    let out = sub.wait_with_output().expect("mosquitto_sub");
    assert!(out.status.success(), "subscriber: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 10);
    // Matches nobody: a QoS 1 message there becomes a dead letter.
    s.publish(1, "metrics/nobody", "lost");

    let after = s.scrape();
    assert_eq!(
        must(&after, "sluice_messages_received_total{qos=\"1\"}"),
        11.0
    );
    assert_eq!(
        must(&after, "sluice_messages_sent_total{qos=\"1\"}") - sent_before,
        10.0
    );
    assert_eq!(must(&after, "sluice_bytes_sent_total{qos=\"1\"}"), 90.0);
    assert_eq!(
        must(
            &after,
            "sluice_dead_letters_total{reason=\"no_subscribers\"}"
        ),
        1.0
    );
    assert_eq!(
        must(&after, "sluice_dead_letters_total{reason=\"queue_full\"}"),
        0.0
    );
    // The latency histograms time one event in 16 per connection, starting with the
    // first: 11 publishing connections with one ack each, one subscriber with 10
    // deliveries.
    assert_eq!(must(&after, "sluice_puback_latency_seconds_count"), 11.0);
    assert!(must(&after, "sluice_puback_latency_seconds_bucket{le=\"+Inf\"}") == 11.0);
    assert_eq!(must(&after, "sluice_delivery_latency_seconds_count"), 1.0);
    assert!(must(&after, "sluice_connections_accepted_total") >= 12.0);
    // The dead letter waits in the dead-letter session's queue.
    assert!(must(&after, "sluice_queued_messages") >= 1.0);
    assert!(must(&after, "sluice_store_appends_total") > 0.0);
    assert!(after.contains("# TYPE sluice_store_fsync_duration_seconds histogram"));

    let (status, _) = http_get(s.metrics.unwrap(), "/elsewhere");
    assert_eq!(status, 404);
}

#[test]
fn metrics_disabled_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[metrics]\nenabled = false\n").unwrap();
    let s = Sluice::start(&["--config", config.to_str().unwrap()]);
    assert!(s.metrics.is_none(), "no metrics= when disabled");
    s.publish(0, "still/works", "x");
}

#[test]
fn exposition_passes_promtool() {
    if !installed("promtool") {
        eprintln!("NOTICE: promtool not installed (apt-get install prometheus); skipping");
        return;
    }
    let s = Sluice::with_metrics("1");
    s.publish(1, "metrics/nobody", "x");
    s.publish(0, "metrics/nobody", "y");
    // Wait for a sampler tick: the depth histogram exists only once the periodic
    // sampler has run (a scrape alone does not record it).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = s.scrape();
        if body.contains("sluice_session_queue_depth_messages_count") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sampler tick within 10 s:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_ingests_sluice_metrics() {
    if !installed("prometheus") {
        eprintln!("NOTICE: prometheus not installed (apt-get install prometheus); skipping");
        return;
    }
    let s = Sluice::with_metrics("0");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{}']\n",
            s.metrics.unwrap()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus"),
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        if TcpStream::connect_timeout(&api, Duration::from_millis(200)).is_err() {
            continue;
        }
        let (status, body) = http_get(api, "/api/v1/query?query=sluice_build_info");
        if status == 200 && body.contains("\"__name__\":\"sluice_build_info\"") {
            assert!(body.contains("\"version\":\"0.1.0\""), "{body}");
            drop(prometheus);
            return;
        }
        last = body;
    }
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    panic!("prometheus never ingested sluice_build_info; last answer: {last}\nlog:\n{log}");
}

/// `$SYS/broker/...` topic → last value seen.
fn sys_values(s: &Sluice, count: usize, wait_secs: u64) -> HashMap<String, String> {
    let out = run(Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &s.port(), "-t", "$SYS/#"])
        .args(["-F", "%t\t%p", "-C", &count.to_string()])
        .args(["-W", &wait_secs.to_string()]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, p)| {
            let name = t.strip_prefix("$SYS/broker/").expect("$SYS/broker/ topic");
            (name.to_string(), p.to_string())
        })
        .collect()
}

fn count(values: &HashMap<String, String>, name: &str) -> u64 {
    values
        .get(name)
        .unwrap_or_else(|| panic!("no $SYS/broker/{name} in {values:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("$SYS/broker/{name}: {e}"))
}

#[test]
fn sys_topics_carry_sane_values() {
    let s = Sluice::with_metrics("1");
    for i in 0..3 {
        s.publish(0, "sys/test", &format!("m{i}"));
    }
    s.publish(1, "sys/nobody", "dead");
    // Past one interval, so the counts above are in the retained values.
    std::thread::sleep(Duration::from_millis(2200));
    // The retained set (31 topics) plus at least one later update of the counts.
    let v = sys_values(&s, 45, 10);
    assert_eq!(
        v["version"],
        format!("sluice version {}", env!("CARGO_PKG_VERSION"))
    );
    let uptime = v["uptime"].strip_suffix(" seconds").expect("N seconds");
    assert!(uptime.parse::<u64>().unwrap() >= 1, "{uptime}");
    assert!(count(&v, "messages/received") >= 4);
    assert!(count(&v, "bytes/received") >= 10);
    assert!(count(&v, "clients/maximum") >= 1);
    assert!(count(&v, "clients/connected") <= count(&v, "clients/maximum"));
    // The built-in dead-letter session is persistent and offline.
    assert!(count(&v, "clients/disconnected") >= 1);
    assert!(count(&v, "clients/total") >= count(&v, "clients/disconnected"));
    assert!(count(&v, "subscriptions/count") >= 1);
    assert!(
        count(&v, "retained messages/count") >= 20,
        "the $SYS topics"
    );
    assert!(count(&v, "messages/stored") >= count(&v, "retained messages/count"));
    assert_eq!(count(&v, "dead-letters/no_subscribers"), 1);
    assert_eq!(count(&v, "dead-letters/queue_full"), 0);
    for window in ["1min", "5min", "15min"] {
        let load: f64 = v[&format!("load/messages/received/{window}")]
            .parse()
            .expect("load is a number");
        assert!(load >= 0.0);
    }
}
