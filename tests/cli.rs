//! The command line: help, `sluice config`, `sluice passwd`, bad configuration, signals.

mod common;

use common::packet::Connect;
use common::raw::RawClient;
use common::Broker;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sluice(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    // Bounded: these commands exit at once; a hang fails the test.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("sluice {args:?} did not exit: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn help_mentions_every_flag() {
    let out = sluice(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--data-dir",
        "--metrics-listen",
        "config",
        "--help",
        "--version",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
}

#[test]
fn config_subcommand_prints_toml_that_parses_and_is_accepted() {
    let out = sluice(&["config"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let value: toml::Value = toml::from_str(&text).expect("`sluice config` prints valid TOML");
    let limits = value.get("limits").expect("[limits]");
    assert!(limits.get("max_packet_size").is_some());
    assert!(value.get("session").is_some());
    // The printed file is a valid config for the broker itself.
    let broker = Broker::start_with_config(&text);
    assert!(broker.port() > 0);
}

#[test]
fn passwd_writes_the_iteration_count_asked_for() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let file = dir.path().join("passwd");
    let path = file.to_str().expect("utf-8 path");
    let out = sluice(&[
        "passwd",
        path,
        "fast",
        "--password",
        "pw",
        "--iterations",
        "1500",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = sluice(&["passwd", path, "default", "--password", "pw"]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).expect("password file");
    assert!(text.contains("fast:$7$1500$"), "{text}");
    let default = format!("default:$7${}$", sluice::auth::DEFAULT_PBKDF2_ITERATIONS);
    assert!(text.contains(&default), "{text}");
    let out = sluice(&[
        "passwd",
        path,
        "zero",
        "--password",
        "pw",
        "--iterations",
        "0",
    ]);
    assert!(!out.status.success(), "0 iterations accepted: {out:?}");
}

fn expect_config_error(toml: &str, key: &str) {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, toml).unwrap();
    let out = sluice(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "exit code 64 for {toml:?}: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one stderr line: {stderr}"
    );
    assert!(stderr.contains(key), "stderr names `{key}`: {stderr}");
    assert!(out.stdout.is_empty(), "no ready line: {out:?}");
}

#[test]
fn unknown_config_key_exits_64_naming_it() {
    expect_config_error("[limits]\nmax_pakcet_size = 5\n", "max_pakcet_size");
    expect_config_error("bogus_top_level = true\n", "bogus_top_level");
}

#[test]
fn bad_config_value_exits_64_naming_the_key() {
    expect_config_error("[limits]\nreceive_maximum = 0\n", "receive_maximum");
    expect_config_error("[limits]\nmax_packet_size = 10\n", "max_packet_size");
}

#[test]
fn wrongly_typed_config_value_exits_64_naming_the_key() {
    expect_config_error(
        "[limits]\nconnect_timeout_secs = \"soon\"\n",
        "connect_timeout_secs",
    );
}

#[test]
fn missing_config_file_exits_64() {
    let out = sluice(&[
        "--config",
        "/nonexistent/sluice.toml",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[tokio::test]
async fn sigterm_disconnects_v5_clients_with_0x8b_and_exits_0() {
    let mut broker = Broker::start();
    // The signal handlers are installed after the ready line (see
    // `sigterm_right_after_the_ready_line_exits_0`); wait for the log line that follows.
    broker.wait_ready_logged();
    let (mut c5, _) = RawClient::handshake(broker.port(), &Connect::v5("term5")).await;
    let (mut c3, _) = RawClient::handshake(broker.port(), &Connect::v311("term3")).await;
    broker.signal("TERM");
    let status = broker
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit within 10 s of SIGTERM\n{}", broker.stderr_tail()));
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?}\n{}",
        broker.stderr_tail()
    );
    // What the broker sent before exiting is still in our receive buffers.
    let got = c5.expect_closed().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].first, got[0].reason()),
        (0xe0, 0x8b),
        "DISCONNECT 0x8B: {got:?}"
    );
    let got = c3.expect_closed().await;
    assert!(got.is_empty(), "3.1.1 clients are just closed: {got:?}");
}

/// "Ready" must mean ready for SIGTERM too: a supervisor may stop the broker at once.
#[tokio::test]
async fn sigterm_right_after_the_ready_line_exits_0() {
    for _ in 0..30 {
        let mut broker = Broker::start();
        broker.signal("TERM");
        let status = broker
            .wait_exit(Duration::from_secs(10))
            .expect("exit within 10 s of SIGTERM");
        assert_eq!(status.code(), Some(0), "{status:?}");
    }
}

#[tokio::test]
async fn sigint_exits_0() {
    let mut broker = Broker::start();
    broker.wait_ready_logged();
    let (mut c, _) = RawClient::handshake(broker.port(), &Connect::v311("int")).await;
    broker.signal("INT");
    c.expect_closed().await;
    let status = broker
        .wait_exit(Duration::from_secs(10))
        .expect("exit within 10 s of SIGINT");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn idle_broker_terminates_promptly() {
    let mut broker = Broker::start();
    broker.wait_ready_logged();
    let started = Instant::now();
    let status = broker.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
