//! Shared harness for the integration tests: a broker process on port 0, raw MQTT
//! packets, rumqttc v4/v5 clients and the mosquitto command-line clients.
//!
//! Every wait is bounded: a broken broker fails a test instead of hanging it.
// Each test file uses a different part of the harness.
#![allow(dead_code)]

pub mod log;
pub mod packet;
pub mod raw;
pub mod rumq;
pub mod ws;

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the broker may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The default bound on any single wait for an event from the broker.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running `sluice` process with its own data directory, killed on drop.
pub struct Broker {
    child: Option<Child>,
    addr: SocketAddr,
    /// The Prometheus endpoint (`metrics=` in the ready line), when metrics are on.
    metrics: Option<SocketAddr>,
    /// The admin API and console (`admin=` in the ready line).
    admin: Option<SocketAddr>,
    dir: tempfile::TempDir,
    stderr_path: PathBuf,
    extra: Vec<String>,
    /// Processes started so far (restarts included).
    launches: usize,
    /// Every `scheme=addr` of the ready line (mqtt, mqtts, ws, wss), in order.
    addrs: Vec<(String, SocketAddr)>,
    /// Keep the config file's `[[listener]]`s instead of `--listen 127.0.0.1:0`.
    own_listeners: bool,
}

impl Broker {
    /// Starts a broker with the default configuration.
    pub fn start() -> Broker {
        Broker::spawn(None, &[])
    }

    /// Starts a broker with `toml` as its config file (listeners are still overridden
    /// to 127.0.0.1:0).
    pub fn start_with_config(toml: &str) -> Broker {
        Broker::spawn(Some(toml), &[])
    }

    /// Starts a broker whose listeners are the `[[listener]]`s of `toml` (bind them to
    /// port 0); their addresses are [`Broker::addr_of`].
    pub fn start_with_listeners(toml: &str, extra: &[&str]) -> Broker {
        Broker::spawn_inner(Some(toml), extra, true)
    }

    /// Starts a broker; `toml` becomes `--config`, `extra` are more arguments.
    pub fn spawn(toml: Option<&str>, extra: &[&str]) -> Broker {
        Broker::spawn_inner(toml, extra, false)
    }

    fn spawn_inner(toml: Option<&str>, extra: &[&str], own_listeners: bool) -> Broker {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let stderr_path = dir.path().join("sluice.stderr");
        if let Some(toml) = toml {
            std::fs::write(dir.path().join("sluice.toml"), toml).expect("write config");
        }
        let mut broker = Broker {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            admin: None,
            dir,
            stderr_path,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            launches: 0,
            addrs: Vec::new(),
            own_listeners,
        };
        broker.launch();
        broker
    }

    /// Spawns the process on this broker's data dir and config and waits for its ready
    /// line. Its stderr is appended to the same log file across restarts.
    fn launch(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        if !self.own_listeners {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--metrics-listen")
            .arg("127.0.0.1:0");
        let config = self.dir.path().join("sluice.toml");
        if config.exists() {
            cmd.arg("--config").arg(config);
        }
        cmd.args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().expect("spawn sluice");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        self.launches += 1;
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => match parse_ready_line(&line) {
                Some(addr) => {
                    self.addr = addr;
                    self.addrs = ready_line_addrs(&line);
                    let named = |key: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(key))
                            .and_then(|a| a.parse().ok())
                    };
                    self.metrics = named("metrics=");
                    self.admin = named("admin=");
                }
                None => panic!(
                    "unexpected first stdout line {line:?}\n--- sluice stderr ---\n{}",
                    self.stderr_tail()
                ),
            },
            Err(e) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "sluice printed no ready line within {READY_TIMEOUT:?} ({e}); exit status {status:?}\n\
                     --- sluice stderr ---\n{}",
                    self.stderr_tail()
                );
            }
        }
    }

    /// SIGKILLs the broker (a crash) and starts it again on the same data dir and config.
    /// The port changes.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Stops the broker with SIGTERM (asserting exit 0) and starts it again.
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "exit status {status:?}\n{}",
            self.stderr_tail()
        );
        self.launch();
    }

    /// Stops the broker with SIGTERM, lets `edit` change its data dir (to cut the log
    /// where a crash could have), and starts it again.
    pub fn restart_after(&mut self, edit: impl FnOnce(&Path)) {
        let status = self.terminate();
        assert!(
            status.success(),
            "exit status {status:?}\n{}",
            self.stderr_tail()
        );
        edit(&self.data_dir());
        self.launch();
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The admin API's address (`admin=` in the ready line).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("admin= in the ready line")
    }

    /// The metrics address (`metrics=` in the ready line).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics.expect("metrics= in the ready line")
    }

    /// One request to the admin API without a token: (status, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(self.admin_addr(), method, path, None, body)
    }

    /// GET of the admin API that must answer 200; its JSON body.
    pub fn api_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.api("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The `n`th listener address of `scheme` ("mqtt", "mqtts", "ws", "wss").
    pub fn addr_of(&self, scheme: &str, n: usize) -> SocketAddr {
        match self.addrs.iter().filter(|(s, _)| s == scheme).nth(n) {
            Some((_, a)) => *a,
            None => panic!(
                "no {scheme} listener #{n} in the ready line: {:?}",
                self.addrs
            ),
        }
    }

    /// GET /metrics (bounded to 5 s); panics when metrics are off or unreachable.
    pub fn scrape(&self) -> String {
        use std::io::Write;
        let addr = self.metrics.expect("metrics= in the ready line");
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("connect to /metrics");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send GET");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read /metrics");
        body
    }

    /// The value of one series (`name` or `name{labels}` exactly as exposed), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.scrape(), series).unwrap_or(0.0)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` ("TERM", "INT", "KILL", ...) to the broker.
    pub fn signal(&self, signal: &str) {
        let sig = match signal {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "KILL" => libc::SIGKILL,
            "HUP" => libc::SIGHUP,
            other => panic!("unknown signal {other}"),
        };
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
        // not yet reaped (self.child is Some), so it cannot have been reused.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill -{signal} {pid}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits up to `timeout` for the broker to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (at most 15 s) for the exit status; panics if it does not exit.
    ///
    /// Waits first for the "sluice is ready" log line that follows the ready line on
    /// stdout: the broker installs its signal handlers only after printing the ready line
    /// (see cli.rs `sigterm_right_after_the_ready_line_exits_0`).
    pub fn terminate(&mut self) -> ExitStatus {
        self.wait_ready_logged();
        self.signal("TERM");
        match self.wait_exit(Duration::from_secs(15)) {
            Some(status) => status,
            None => panic!(
                "sluice did not exit within 15 s of SIGTERM\n--- sluice stderr ---\n{}",
                self.stderr_tail()
            ),
        }
    }

    /// Waits (bounded) until the current process has logged "sluice is ready".
    pub fn wait_ready_logged(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.stderr().matches("sluice is ready").count() < self.launches {
            if Instant::now() >= deadline {
                panic!("\"sluice is ready\" not logged\n{}", self.stderr_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the broker's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(needle) {
            if Instant::now() >= deadline {
                panic!(
                    "{needle:?} not logged within {timeout:?}\n--- sluice stderr ---\n{}",
                    self.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last 8 KiB of the broker's stderr.
    pub fn stderr_tail(&self) -> String {
        read_tail(&self.stderr_path, 8192)
    }

    /// Everything the broker logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- sluice stderr (tail, {}) ---\n{}\n--- end of sluice stderr ---",
                self.addr,
                self.stderr_tail()
            );
        }
        self.kill();
    }
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// One HTTP/1.1 request (Connection: close, bounded to 10 s): (status, body). Sends
/// `Authorization: Bearer TOKEN` when `token` is given, and `body` as JSON.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, WAIT).expect("connect to HTTP");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send request");
    s.write_all(body.as_bytes()).expect("send body");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// Polls `cond` every 20 ms until it holds or `dur` passes; true if it held.
pub fn poll_until(dur: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + dur;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `series` in a Prometheus exposition.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `sluice ready mqtt=127.0.0.1:PORT [key=addr ...]` → the first mqtt address (or, with
/// no plain listener, the first listener's).
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    let addrs = ready_line_addrs(line);
    addrs
        .iter()
        .find(|(s, _)| s == "mqtt")
        .or_else(|| addrs.iter().find(|(s, _)| s != "metrics"))
        .map(|(_, a)| *a)
}

/// Every `scheme=addr` of a ready line, in order; empty when `line` is not one.
pub fn ready_line_addrs(line: &str) -> Vec<(String, SocketAddr)> {
    let mut words = line.split_whitespace();
    if words.next() != Some("sluice") || words.next() != Some("ready") {
        return Vec::new();
    }
    words
        .filter_map(|w| {
            let (scheme, addr) = w.split_once('=')?;
            Some((scheme.to_owned(), addr.parse().ok()?))
        })
        .collect()
}

/// Runs `fut` under `dur`, panicking with `what` when it takes longer.
pub async fn within<T>(dur: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(dur, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {dur:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------- mosquitto clients

/// `-V` values of the mosquitto clients.
pub const MQTT_VERSIONS: [&str; 3] = ["mqttv31", "mqttv311", "mqttv5"];

/// Runs `mosquitto_pub` once (bounded to 15 s); panics if it fails.
pub async fn mosquitto_pub(port: u16, version: &str, args: &[&str]) {
    let mut cmd = tokio::process::Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = within(Duration::from_secs(15), "mosquitto_pub", cmd.output())
        .await
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub -V {version} {args:?} failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One message as printed by [`MosquittoSub`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMessage {
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub payload: String,
}

/// A running `mosquitto_sub`, started by [`MosquittoSub::start`] once its SUBACK arrived.
pub struct MosquittoSub {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    debug: Vec<String>,
}

impl MosquittoSub {
    /// Starts `mosquitto_sub -d -F ... -C count -W wait_secs` plus `args` (topics, -q, ...)
    /// and returns once it has received its SUBACK.
    pub async fn start(
        port: u16,
        version: &str,
        count: usize,
        wait_secs: u32,
        args: &[&str],
    ) -> MosquittoSub {
        use tokio::io::AsyncBufReadExt;
        // stdbuf: mosquitto_sub's debug lines (the SUBACK we wait for) are otherwise
        // block-buffered when stdout is a pipe.
        let mut cmd = tokio::process::Command::new("stdbuf");
        cmd.args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            version,
            "-d",
        ])
        .args(["-F", "MSG %q %r %t %p"])
        .args(["-C", &count.to_string(), "-W", &wait_secs.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout");
        let mut sub = MosquittoSub {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
            debug: Vec::new(),
        };
        let lines = &mut sub.lines;
        let debug = &mut sub.debug;
        within(WAIT, "mosquitto_sub's SUBACK", async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        let suback = line.contains("received SUBACK");
                        debug.push(line);
                        if suback {
                            return;
                        }
                    }
                    other => panic!("mosquitto_sub ended before SUBACK: {other:?}: {debug:?}"),
                }
            }
        })
        .await;
        sub
    }

    /// Reads messages until mosquitto_sub exits (after `-C` messages or `-W` seconds).
    pub async fn collect(mut self) -> Vec<SubMessage> {
        let mut out = Vec::new();
        let lines = &mut self.lines;
        let debug = &mut self.debug;
        within(Duration::from_secs(60), "mosquitto_sub to exit", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("MSG ") {
                    let mut parts = rest.splitn(4, ' ');
                    let qos = parts.next().unwrap_or("9").parse().unwrap_or(9);
                    let retain = parts.next() == Some("1");
                    let topic = parts.next().unwrap_or("").to_owned();
                    let payload = parts.next().unwrap_or("").to_owned();
                    out.push(SubMessage {
                        qos,
                        retain,
                        topic,
                        payload,
                    });
                } else {
                    debug.push(line);
                }
            }
        })
        .await;
        let _ = within(WAIT, "mosquitto_sub exit status", self.child.wait()).await;
        out
    }
}

/// Proves the broker still serves: a fresh 3.1.1 client connects, subscribes, publishes
/// a QoS 1 message to itself, gets the PUBACK and the message.
pub async fn assert_broker_works(port: u16) {
    use packet::{PUBACK, PUBLISH};
    let id = format!("alive-{}", std::process::id());
    let mut c = raw::RawClient::v311(port, &id).await;
    assert_eq!(c.subscribe(1, "alive/check", 1).await, vec![1]);
    c.send(&packet::publish(
        false,
        "alive/check",
        1,
        false,
        2,
        &[],
        b"ok",
    ))
    .await;
    let (mut acked, mut got) = (false, false);
    for _ in 0..2 {
        match c.recv().await {
            raw::Recv::Packet(p) if p.kind() == PUBACK => acked = p.packet_id() == 2,
            raw::Recv::Packet(p) if p.kind() == PUBLISH => got = p.publish(false).payload == b"ok",
            other => panic!("broker no longer serves correctly: {other:?}"),
        }
    }
    assert!(acked && got, "broker no longer serves correctly");
}
