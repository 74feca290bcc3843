//! Helpers for the TLS and auth tests: certificates made at run time with rcgen, a broker
//! started from a config file whose own `[[listener]]`s are kept (the shared harness
//! always replaces them with `--listen`), rustls client configurations for rumqttc, and
//! one-shot "does this TLS client get a CONNACK" probes.
//!
//! Every wait is bounded.
#![allow(dead_code)]

use crate::common::{self, READY_TIMEOUT, WAIT};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use rumqttc::tokio_rustls::rustls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- certificates

static SERIAL: AtomicU64 = AtomicU64::new(1);

fn next_serial() -> SerialNumber {
    let n = SERIAL.fetch_add(1, Ordering::Relaxed) + u64::from(std::process::id()) * 1_000_000;
    SerialNumber::from_slice(&n.to_be_bytes()[1..])
}

/// A certificate authority made for one test.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// A certificate with its key.
pub struct Leaf {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub serial: SerialNumber,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "sluice tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(next_serial());
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn sign(&self, mut params: CertificateParams) -> Leaf {
        let serial = next_serial();
        params.serial_number = Some(serial.clone());
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Leaf { cert, key, serial }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with subject CN `cn`.
    pub fn client(&self, cn: &str) -> Leaf {
        self.client_with(cn, |_| {})
    }

    /// A client certificate with subject CN `cn`, its parameters adjusted by `f`.
    pub fn client_with(&self, cn: &str, f: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        f(&mut params);
        self.sign(params)
    }

    /// A CRL (PEM) revoking `revoked`.
    pub fn crl(&self, revoked: &[&Leaf]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2090, 1, 1),
            crl_number: next_serial(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|l| RevokedCertParams {
                    serial_number: l.serial.clone(),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .expect("sign CRL")
            .pem()
            .expect("CRL PEM")
    }
}

impl Leaf {
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// Writes `<name>.pem` and `<name>.key` (0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = write_file(dir, &format!("{name}.pem"), &self.cert_pem());
        let key = write_file(dir, &format!("{name}.key"), &self.key_pem());
        set_mode_0600(&key);
        (cert, key)
    }
}

fn set_mode_0600(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Writes `contents` to `dir/name` atomically (temp file + rename), so a broker reloading
/// on SIGHUP never reads half a file; returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, &path).expect("rename into place");
    path
}

/// A path as a TOML basic string.
pub fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

// ---------------------------------------------------------------- broker from a config

/// A `sluice` process started with `--config` and no `--listen`, so the config's own
/// listeners (TLS ones, `allow_anonymous`, `handshake_timeout_secs`, ...) are used.
/// Killed on drop.
pub struct Sluice {
    child: Option<Child>,
    dir: tempfile::TempDir,
    stderr_path: PathBuf,
    /// scheme ("mqtt", "mqtts") → ports, in ready-line order.
    pub addrs: HashMap<String, Vec<u16>>,
}

impl Sluice {
    /// Starts the broker with `config` (TOML) written to `dir/sluice.toml`. The data dir
    /// and the metrics listener are set on the command line; `extra` are more arguments.
    pub fn start(dir: tempfile::TempDir, config: &str, extra: &[&str]) -> Sluice {
        let config_path = write_file(dir.path(), "sluice.toml", config);
        let stderr_path = dir.path().join("sluice.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn sluice");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Sluice {
            child: Some(child),
            dir,
            stderr_path,
            addrs: HashMap::new(),
        };
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(e) => panic!(
                "sluice printed no ready line within {READY_TIMEOUT:?} ({e})\n--- stderr ---\n{}",
                s.stderr()
            ),
        };
        let mut words = line.split_whitespace();
        assert!(
            words.next() == Some("sluice") && words.next() == Some("ready"),
            "unexpected ready line {line:?}"
        );
        for w in words {
            if let Some((scheme, addr)) = w.split_once('=') {
                if let Ok(addr) = addr.parse::<SocketAddr>() {
                    s.addrs
                        .entry(scheme.to_owned())
                        .or_default()
                        .push(addr.port());
                }
            }
        }
        // Signal handlers are in place once this is logged.
        s.wait_for_log("sluice is ready", READY_TIMEOUT);
        s
    }

    /// The `n`th listener port of `scheme`.
    pub fn port(&self, scheme: &str, n: usize) -> u16 {
        match self.addrs.get(scheme).and_then(|v| v.get(n)) {
            Some(p) => *p,
            None => panic!(
                "no {scheme} listener #{n} in the ready line: {:?}",
                self.addrs
            ),
        }
    }

    /// The first plain MQTT port.
    pub fn mqtt(&self) -> u16 {
        self.port("mqtt", 0)
    }

    /// The first TLS port.
    pub fn mqtts(&self) -> u16 {
        self.port("mqtts", 0)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.stderr().matches(needle).count()
    }

    /// Waits until the log holds more than `already` occurrences of `needle`.
    pub fn wait_for_log_count(&self, needle: &str, already: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count_log(needle) <= already {
            if Instant::now() >= deadline {
                panic!(
                    "{needle:?} not logged (again) within {timeout:?}\n--- sluice stderr ---\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_count(needle, 0, timeout)
    }

    /// Async-friendly version of [`Sluice::wait_for_log_count`].
    pub async fn log_count_reaches(&self, needle: &str, at_least: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count_log(needle) < at_least {
            if Instant::now() >= deadline {
                panic!(
                    "{needle:?} not logged {at_least} times within {timeout:?}\n--- sluice stderr ---\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGHUP and waits (bounded) for the broker to log `outcome` once more.
    pub async fn reload(&self, outcome: &str) {
        let before = self.count_log(outcome);
        let pid = libc::pid_t::try_from(self.child.as_ref().expect("running").id()).unwrap();
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped
        // child.
        let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill -HUP: {}", std::io::Error::last_os_error());
        self.log_count_reaches(outcome, before + 1, WAIT).await;
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.stderr();
            let tail = &log[log.len().saturating_sub(8192)..];
            eprintln!("--- sluice stderr (tail) ---\n{tail}\n--- end of sluice stderr ---");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------- rustls clients

/// A rustls 0.22 client configuration trusting `roots`, optionally with a client
/// certificate, limited to `versions` (all supported ones when empty).
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("add root");
    }
    let builder = if versions.is_empty() {
        rustls::ClientConfig::builder()
    } else {
        rustls::ClientConfig::builder_with_protocol_versions(versions)
    }
    .with_root_certificates(store);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(vec![leaf.der()], leaf.key_der())
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// rumqttc transport for `config`.
pub fn transport(config: Arc<rustls::ClientConfig>) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config))
}

/// What a TLS client got when it tried to speak MQTT.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The handshake failed on the client's side (e.g. it does not trust the server).
    HandshakeFailed(String),
    /// The handshake looked complete to the client, but the connection ended (or failed
    /// with a TLS alert) before any CONNACK: the server refused the client's certificate.
    ClosedWithoutConnack(String),
    /// A CONNACK arrived with this return/reason code.
    Connack(u8),
}

/// Connects to `port` over TLS with `config`, sends a 3.1.1 CONNECT for `client_id` and
/// reports what happened.
pub async fn tls_attempt(port: u16, config: Arc<rustls::ClientConfig>, client_id: &str) -> Attempt {
    tls_attempt_from(port, config, client_id).await.0
}

/// [`tls_attempt`], also returning the client's local port (the broker logs it as
/// `peer=127.0.0.1:<port>`).
pub async fn tls_attempt_from(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
) -> (Attempt, u16) {
    let tcp = common::within(
        WAIT,
        "TCP connect",
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("TCP connect");
    let local = tcp.local_addr().expect("local addr").port();
    (attempt_on(tcp, config, client_id).await, local)
}

async fn attempt_on(
    tcp: tokio::net::TcpStream,
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
) -> Attempt {
    let connector = rumqttc::tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut tls = match common::within(WAIT, "TLS handshake", connector.connect(name, tcp)).await {
        Ok(s) => s,
        Err(e) => return Attempt::HandshakeFailed(e.to_string()),
    };
    let connect = common::packet::Connect::v311(client_id).build();
    if let Err(e) = tls.write_all(&connect).await {
        return Attempt::ClosedWithoutConnack(format!("write: {e}"));
    }
    let _ = tls.flush().await;
    let mut buf = [0u8; 4];
    match common::within(WAIT, "CONNACK or close", tls.read_exact(&mut buf)).await {
        Ok(_) if buf[0] == 0x20 => Attempt::Connack(buf[3]),
        Ok(_) => panic!("unexpected bytes from the broker: {buf:?}"),
        Err(e) => Attempt::ClosedWithoutConnack(e.to_string()),
    }
}

/// Asserts that a TLS client with `config` is served: it gets CONNACK 0.
pub async fn assert_tls_served(port: u16, config: Arc<rustls::ClientConfig>, what: &str) {
    let got = tls_attempt(port, config, "probe-ok").await;
    assert_eq!(got, Attempt::Connack(0), "{what}");
}

// ---------------------------------------------------------------- mosquitto tools

/// Runs a command with a bound on its run time; returns (success, stdout+stderr).
pub async fn run_tool(program: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = common::within(Duration::from_secs(30), program, cmd.output())
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `mosquitto_passwd -c -b FILE USER PASSWORD` (creates) or `-b` (adds) with the real tool.
pub async fn mosquitto_passwd(file: &Path, create: bool, user: &str, password: &str) {
    let file = file.to_str().expect("utf-8 path");
    let mut args = Vec::new();
    if create {
        args.push("-c");
    }
    args.extend(["-b", file, user, password]);
    let (ok, out) = run_tool("mosquitto_passwd", &args).await;
    assert!(ok, "mosquitto_passwd {args:?} failed: {out}");
}

// ---------------------------------------------------------------- raw MQTT over TLS

/// A byte-level MQTT client over TLS (rumqttc v5 drops the connection on a refused
/// SUBSCRIBE or PUBLISH, so ACL checks over TLS use this).
pub struct TlsRaw {
    stream: rumqttc::tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
    /// PUBLISHes that arrived while waiting for something else (already acknowledged).
    stash: Vec<common::packet::Pkt>,
    pub v5: bool,
}

impl TlsRaw {
    /// Connects over TLS, sends `connect` and returns the client and its CONNACK (any code).
    pub async fn connect(
        port: u16,
        config: Arc<rustls::ClientConfig>,
        connect: &common::packet::Connect,
    ) -> (TlsRaw, common::packet::Pkt) {
        let tcp = common::within(
            WAIT,
            "TCP connect",
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .expect("TCP connect");
        let connector = rumqttc::tokio_rustls::TlsConnector::from(config);
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let stream = common::within(WAIT, "TLS handshake", connector.connect(name, tcp))
            .await
            .expect("TLS handshake");
        let mut c = TlsRaw {
            stream,
            buf: Vec::new(),
            stash: Vec::new(),
            v5: connect.level == common::packet::V5,
        };
        c.send(&connect.build()).await;
        let ack = c.expect(common::packet::CONNACK, "CONNACK").await;
        (c, ack)
    }

    /// Like [`TlsRaw::connect`], asserting the CONNACK accepts.
    pub async fn connected(
        port: u16,
        config: Arc<rustls::ClientConfig>,
        connect: &common::packet::Connect,
    ) -> TlsRaw {
        let (c, ack) = TlsRaw::connect(port, config, connect).await;
        assert_eq!(ack.connack().1, 0, "CONNACK refused: {ack:?}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        common::within(WAIT, "TLS write", async {
            self.stream.write_all(bytes).await.expect("TLS write");
            self.stream.flush().await.expect("TLS flush");
        })
        .await
    }

    /// The next packet, or None when the connection ends or nothing comes within `dur`.
    pub async fn recv_within(&mut self, dur: Duration) -> Option<common::packet::Pkt> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            if self.buf.len() >= 2 {
                if let Some((len, used)) = common::packet::read_varint(&self.buf[1..]) {
                    let total = 1 + used + len as usize;
                    if self.buf.len() >= total {
                        let p = common::packet::Pkt {
                            first: self.buf[0],
                            body: self.buf[1 + used..total].to_vec(),
                        };
                        self.buf.drain(..total);
                        return Some(p);
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) | Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn expect(&mut self, kind: u8, what: &str) -> common::packet::Pkt {
        match self.recv_within(WAIT).await {
            Some(p) if p.kind() == kind => p,
            other => panic!("expected {what}, got {other:?}"),
        }
    }

    /// SUBSCRIBE one filter at QoS 1; returns the SUBACK codes.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str) -> Vec<u8> {
        let v5 = self.v5;
        self.send(&common::packet::subscribe(
            v5,
            packet_id,
            &[],
            &[(filter, 1)],
        ))
        .await;
        let ack = self.expect(common::packet::SUBACK, "SUBACK").await;
        assert_eq!(ack.packet_id(), packet_id);
        ack.suback_codes(v5)
    }

    /// PUBLISH at QoS 1; returns the PUBACK's reason code (0 on 3.1.1).
    pub async fn publish(&mut self, packet_id: u16, topic: &str, payload: &[u8]) -> u8 {
        let v5 = self.v5;
        self.send(&common::packet::publish(
            v5,
            topic,
            1,
            false,
            packet_id,
            &[],
            payload,
        ))
        .await;
        loop {
            let p = self.expect_any("PUBACK").await;
            if p.kind() == common::packet::PUBACK {
                assert_eq!(p.packet_id(), packet_id);
                return p.reason();
            }
            // A delivery (of our own message, say): acknowledge and keep it.
            if p.kind() == common::packet::PUBLISH {
                self.ack_publish(&p).await;
                self.stash.push(p);
            }
        }
    }

    async fn ack_publish(&mut self, p: &common::packet::Pkt) {
        let got = p.publish(self.v5);
        if got.qos == 1 {
            self.send(&common::packet::puback(got.packet_id)).await;
        }
    }

    /// The next PUBLISH received within `dur` (acknowledged), if any.
    pub async fn try_next_publish(&mut self, dur: Duration) -> Option<common::packet::RecvPublish> {
        if !self.stash.is_empty() {
            return Some(self.stash.remove(0).publish(self.v5));
        }
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.recv_within(left).await?;
            if p.kind() == common::packet::PUBLISH {
                self.ack_publish(&p).await;
                return Some(p.publish(self.v5));
            }
        }
    }

    pub async fn next_publish(&mut self) -> common::packet::RecvPublish {
        match self.try_next_publish(WAIT).await {
            Some(p) => p,
            None => panic!("no PUBLISH within {WAIT:?}"),
        }
    }

    async fn expect_any(&mut self, what: &str) -> common::packet::Pkt {
        match self.recv_within(WAIT).await {
            Some(p) => p,
            None => panic!("expected {what}, the connection ended or timed out"),
        }
    }
}
