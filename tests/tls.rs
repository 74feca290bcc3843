//! TLS listeners against real clients: mosquitto_pub/sub with `--cafile` (and
//! `--cert/--key`), rumqttc over rustls, and deliberately bad clients (wrong CA, no,
//! expired or revoked client certificate, plain MQTT, TLS 1.1, a stalled handshake).
//! Also `use_identity_as_username` with a `%u` ACL, and SIGHUP certificate reload.
//!
//! Certificates are made per test with rcgen; the broker runs on port 0 in a temp dir.

mod common;
mod tls_support;

use common::packet::Connect;
use common::rumq::{v4, v5};
use common::{mosquitto_pub, within, MosquittoSub, WAIT};
use rumqttc::tokio_rustls::rustls;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls_support::{
    client_config, tls_attempt, tls_attempt_from, toml_path, transport, write_file, Attempt, Ca,
    Leaf, Sluice, TlsRaw,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A broker with a plain listener and a TLS listener whose server certificate is signed
/// by `ca`; `ca.pem` (the CA certificate) sits in the broker's temp dir.
struct Fixture {
    broker: Sluice,
    ca: Ca,
    ca_file: PathBuf,
}

impl Fixture {
    /// `listener` is extra TOML for the TLS `[[listener]]` table and `rest` more tables;
    /// in both, `@CA@` stands for the CA file's path and `@DIR@` for the temp dir's.
    fn new(listener: &str, rest: &str) -> Fixture {
        Fixture::with_files(listener, rest, |_, _| {}).0
    }

    /// Like [`Fixture::new`]; `files` may write more files into the temp dir (with the
    /// CA at hand) before the broker starts; what it returns is passed back.
    fn with_files<T>(
        listener: &str,
        rest: &str,
        files: impl FnOnce(&Path, &Ca) -> T,
    ) -> (Fixture, T) {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let ca = Ca::new("sluice test CA");
        let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
        let (cert, key) = ca.server().write(dir.path(), "server");
        let extra = files(dir.path(), &ca);
        let subst = |s: &str| {
            s.replace("@CA@", ca_file.to_str().expect("utf-8 path"))
                .replace("@DIR@", dir.path().to_str().expect("utf-8 path"))
        };
        let config = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"tcp\"\n\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\nkind = \"tls\"\ncert_file = {}\nkey_file = {}\n{}\n\n{}\n",
            toml_path(&cert),
            toml_path(&key),
            subst(listener),
            subst(rest),
        );
        let broker = Sluice::start(dir, &config, &[]);
        let f = Fixture {
            broker,
            ca,
            ca_file,
        };
        (f, extra)
    }

    fn tls(&self) -> u16 {
        self.broker.mqtts()
    }

    fn ca_arg(&self) -> String {
        self.ca_file.display().to_string()
    }

    /// A rustls client configuration trusting this fixture's CA.
    fn client(&self, identity: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        client_config(&[self.ca.der()], identity, &[])
    }

    /// Writes a client certificate for `cn` into the temp dir; returns (cert, key) paths.
    fn client_files(&self, leaf: &Leaf, name: &str) -> (String, String) {
        let (c, k) = leaf.write(self.broker.dir(), name);
        (c.display().to_string(), k.display().to_string())
    }

    /// Asserts the broker logged a refused handshake from local port `peer`.
    async fn assert_refusal_logged(&self, peer: u16) {
        let needle = format!("TLS handshake failed peer=127.0.0.1:{peer} error=");
        self.broker.log_count_reaches(&needle, 1, WAIT).await;
    }
}

const MTLS: &str = "client_ca_file = \"@CA@\"\nrequire_client_cert = true";

fn v4_tls(port: u16, id: &str, config: Arc<rustls::ClientConfig>) -> v4::MqttOptions {
    let mut o = v4::options(port, id);
    o.set_transport(transport(config));
    o
}

fn v5_tls(port: u16, id: &str, config: Arc<rustls::ClientConfig>) -> v5::MqttOptions {
    let mut o = v5::options(port, id);
    o.set_transport(transport(config));
    o
}

/// mosquitto_sub receives what mosquitto_pub sends, both over TLS, at `version`.
async fn mosquitto_roundtrip(port: u16, version: &str, tls_args: &[&str], topic: &str) {
    let mut sub_args = tls_args.to_vec();
    sub_args.extend(["-t", topic, "-q", "1"]);
    let sub = MosquittoSub::start(port, version, 1, 10, &sub_args).await;
    let payload = format!("over tls {version}");
    let mut pub_args = tls_args.to_vec();
    pub_args.extend(["-t", topic, "-q", "1", "-m", &payload]);
    mosquitto_pub(port, version, &pub_args).await;
    let got = sub.collect().await;
    assert_eq!(got.len(), 1, "{version}: {got:?}");
    assert_eq!(got[0].topic, topic);
    assert_eq!(got[0].payload, payload);
}

#[tokio::test]
async fn mosquitto_clients_over_tls_with_cafile_v311_and_v5() {
    // The TLS listener from the command line, as certs/README.md documents it.
    let dir = tempfile::TempDir::new().expect("temp dir");
    let ca = Ca::new("cli CA");
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem());
    let (cert, key) = ca.server().write(dir.path(), "server");
    let config = "[[listener]]\nbind = \"127.0.0.1:0\"\n";
    let broker = Sluice::start(
        dir,
        config,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = broker.mqtts();
    let ca_arg = ca_file.display().to_string();
    for version in ["mqttv311", "mqttv5"] {
        mosquitto_roundtrip(
            port,
            version,
            &["--cafile", &ca_arg],
            &format!("tls/cli/{version}"),
        )
        .await;
    }
    // The plain listener still works next to it.
    common::assert_broker_works(broker.mqtt()).await;
}

#[tokio::test]
async fn mosquitto_clients_with_client_certificates() {
    let f = Fixture::new(MTLS, "");
    let (cert, key) = f.client_files(&f.ca.client("device-1"), "client");
    let ca = f.ca_arg();
    let args = ["--cafile", ca.as_str(), "--cert", &cert, "--key", &key];
    for version in ["mqttv311", "mqttv5"] {
        mosquitto_roundtrip(f.tls(), version, &args, &format!("tls/mtls/{version}")).await;
    }
    // Without a certificate mosquitto_pub is refused.
    let (ok, out) = tls_support::run_tool(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &f.tls().to_string(),
            "--cafile",
            &ca,
            "-t",
            "tls/mtls/nocert",
            "-m",
            "x",
            "-q",
            "1",
        ],
    )
    .await;
    assert!(
        !ok,
        "mosquitto_pub without a client certificate succeeded: {out}"
    );
    f.broker
        .log_count_reaches("TLS handshake failed", 1, WAIT)
        .await;
}

#[tokio::test]
async fn rumqttc_v4_and_v5_over_rustls() {
    let f = Fixture::new(MTLS, "");
    let leaf = f.ca.client("device-1");
    let config = f.client(Some(&leaf));
    let (mut sub, _) = v5::connect_with(v5_tls(f.tls(), "rustls-v5", config.clone())).await;
    sub.subscribe("tls/rumqttc/#", v5::QoS::AtLeastOnce).await;
    let (mut publ, _) = v4::connect_with(v4_tls(f.tls(), "rustls-v4", config)).await;
    publ.publish("tls/rumqttc/a", v4::QoS::AtLeastOnce, false, "from v4")
        .await;
    let got = sub.recv().await;
    assert_eq!(&got.topic[..], b"tls/rumqttc/a");
    assert_eq!(&got.payload[..], b"from v4");
    // And back: a v4 subscriber gets a v5 publisher's message.
    publ.subscribe("tls/back", v4::QoS::AtLeastOnce).await;
    sub.publish("tls/back", v5::QoS::AtLeastOnce, false, "from v5")
        .await;
    let got = publ.recv().await;
    assert_eq!(got.topic, "tls/back");
    assert_eq!(&got.payload[..], b"from v5");
}

#[tokio::test]
async fn tls_1_2_and_1_3_clients_are_both_served() {
    let f = Fixture::new("", "");
    for (name, version) in [
        ("TLS 1.2", &rustls::version::TLS12),
        ("TLS 1.3", &rustls::version::TLS13),
    ] {
        let config = client_config(&[f.ca.der()], None, &[version]);
        tls_support::assert_tls_served(f.tls(), config, name).await;
    }
}

#[tokio::test]
async fn tls_1_1_is_refused() {
    let f = Fixture::new("", "");
    let port = f.tls().to_string();
    let connect = format!("127.0.0.1:{port}");
    // Control: this openssl can talk TLS 1.2 to the broker.
    let (ok, out) = tls_support::run_tool(
        "openssl",
        &[
            "s_client",
            "-tls1_2",
            "-connect",
            &connect,
            "-CAfile",
            &f.ca_arg(),
        ],
    )
    .await;
    assert!(
        ok && out.contains("Protocol  : TLSv1.2"),
        "openssl s_client -tls1_2 failed: {out}"
    );
    let failures = f.broker.count_log("TLS handshake failed");
    // SECLEVEL=0: OpenSSL 3 refuses TLS 1.1 at its default level before sending anything.
    let (ok, out) = tls_support::run_tool(
        "openssl",
        &[
            "s_client",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-connect",
            &connect,
        ],
    )
    .await;
    if out.contains("unknown option") || out.contains("no protocols available") {
        println!("skipped: this openssl cannot offer TLS 1.1: {out}");
        return;
    }
    assert!(
        !out.contains("BEGIN CERTIFICATE") && out.contains("Cipher is (NONE)"),
        "TLS 1.1 handshake was not refused (exit ok: {ok}): {out}"
    );
    f.broker
        .log_count_reaches("TLS handshake failed", failures + 1, WAIT)
        .await;
    common::assert_broker_works(f.broker.mqtt()).await;
    tls_support::assert_tls_served(f.tls(), f.client(None), "after TLS 1.1").await;
}

#[tokio::test]
async fn client_trusting_another_ca_fails_and_others_are_still_served() {
    let f = Fixture::new("", "");
    let other = Ca::new("some other CA");
    let (got, peer) = tls_attempt_from(
        f.tls(),
        client_config(&[other.der()], None, &[]),
        "wrong-ca",
    )
    .await;
    match got {
        Attempt::HandshakeFailed(why) => assert!(
            why.to_lowercase().contains("certificate"),
            "unexpected failure: {why}"
        ),
        other => panic!("a client not trusting the server's CA got {other:?}"),
    }
    f.assert_refusal_logged(peer).await;
    tls_support::assert_tls_served(f.tls(), f.client(None), "after a wrong-CA client").await;
    // mosquitto_pub trusting the other CA fails too.
    let other_file = write_file(f.broker.dir(), "other-ca.pem", &other.pem());
    let (ok, out) = tls_support::run_tool(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &f.tls().to_string(),
            "--cafile",
            other_file.to_str().unwrap(),
            "-t",
            "x",
            "-m",
            "x",
        ],
    )
    .await;
    assert!(!ok, "mosquitto_pub trusting another CA succeeded: {out}");
    mosquitto_roundtrip(f.tls(), "mqttv311", &["--cafile", &f.ca_arg()], "tls/after").await;
}

#[tokio::test]
async fn missing_client_certificate_is_refused_when_required() {
    let f = Fixture::new(MTLS, "");
    let (got, peer) = tls_attempt_from(f.tls(), f.client(None), "no-cert").await;
    assert!(
        matches!(
            got,
            Attempt::ClosedWithoutConnack(_) | Attempt::HandshakeFailed(_)
        ),
        "a client without a certificate got {got:?}"
    );
    f.assert_refusal_logged(peer).await;
    let leaf = f.ca.client("device-1");
    tls_support::assert_tls_served(f.tls(), f.client(Some(&leaf)), "with a certificate").await;
}

#[tokio::test]
async fn optional_client_certificate_when_not_required() {
    // client_ca_file without require_client_cert: no certificate is fine, a bad one is not.
    let f = Fixture::new("client_ca_file = \"@CA@\"", "");
    tls_support::assert_tls_served(f.tls(), f.client(None), "no certificate").await;
    let leaf = f.ca.client("device-1");
    tls_support::assert_tls_served(f.tls(), f.client(Some(&leaf)), "good certificate").await;
    let stranger = Ca::new("stranger CA").client("device-1");
    let (got, peer) = tls_attempt_from(f.tls(), f.client(Some(&stranger)), "stranger").await;
    assert!(
        !matches!(got, Attempt::Connack(_)),
        "a certificate from an unknown CA was accepted: {got:?}"
    );
    f.assert_refusal_logged(peer).await;
}

#[tokio::test]
async fn client_certificate_from_an_unknown_ca_is_refused() {
    let f = Fixture::new(MTLS, "");
    let stranger = Ca::new("stranger CA").client("device-1");
    let (got, peer) = tls_attempt_from(f.tls(), f.client(Some(&stranger)), "stranger").await;
    assert!(
        !matches!(got, Attempt::Connack(_)),
        "a certificate from an unknown CA was accepted: {got:?}"
    );
    f.assert_refusal_logged(peer).await;
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let f = Fixture::new(MTLS, "");
    let expired = f.ca.client_with("device-1", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (got, peer) = tls_attempt_from(f.tls(), f.client(Some(&expired)), "expired").await;
    assert!(
        !matches!(got, Attempt::Connack(_)),
        "an expired client certificate was accepted: {got:?}"
    );
    f.assert_refusal_logged(peer).await;
    let log = f.broker.stderr();
    assert!(
        log.to_lowercase().contains("expired"),
        "the log does not say the certificate expired:\n{log}"
    );
    // mosquitto_pub with the expired certificate is refused too.
    let (cert, key) = f.client_files(&expired, "expired");
    let (ok, out) = tls_support::run_tool(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &f.tls().to_string(),
            "--cafile",
            &f.ca_arg(),
            "--cert",
            &cert,
            "--key",
            &key,
            "-t",
            "x",
            "-m",
            "x",
            "-q",
            "1",
        ],
    )
    .await;
    assert!(
        !ok,
        "mosquitto_pub with an expired certificate succeeded: {out}"
    );
}

#[tokio::test]
async fn revoked_client_certificate_is_refused_by_the_crl() {
    let (f, (good, bad)) = Fixture::with_files(
        "client_ca_file = \"@CA@\"\nrequire_client_cert = true\ncrl_file = \"@DIR@/ca.crl\"",
        "",
        |dir, ca| {
            let good = ca.client("device-good");
            let bad = ca.client("device-revoked");
            write_file(dir, "ca.crl", &ca.crl(&[&bad]));
            (good, bad)
        },
    );
    tls_support::assert_tls_served(f.tls(), f.client(Some(&good)), "unrevoked").await;
    let (got, peer) = tls_attempt_from(f.tls(), f.client(Some(&bad)), "revoked").await;
    assert!(
        !matches!(got, Attempt::Connack(_)),
        "a revoked client certificate was accepted: {got:?}"
    );
    f.assert_refusal_logged(peer).await;
}

#[tokio::test]
async fn plain_mqtt_to_the_tls_port_is_closed_without_connack() {
    let f = Fixture::new("", "");
    let mut tcp = within(
        WAIT,
        "TCP connect",
        tokio::net::TcpStream::connect(("127.0.0.1", f.tls())),
    )
    .await
    .expect("connect");
    let peer = tcp.local_addr().unwrap().port();
    tcp.write_all(&common::packet::Connect::v311("plain-on-tls").build())
        .await
        .expect("write CONNECT");
    let mut got = Vec::new();
    let read = within(WAIT, "the broker to close", tcp.read_to_end(&mut got)).await;
    // A TLS alert record (0x15) may come first; an MQTT CONNACK (0x20) must not.
    assert!(
        got.first() != Some(&0x20),
        "plain MQTT on the TLS port got a CONNACK: {got:?} ({read:?})"
    );
    f.assert_refusal_logged(peer).await;
    tls_support::assert_tls_served(f.tls(), f.client(None), "after plain MQTT").await;
}

#[tokio::test]
async fn stalled_handshake_is_cut_off_while_others_connect() {
    let f = Fixture::new("handshake_timeout_secs = 1", "");
    let started = Instant::now();
    let mut stalled = within(
        WAIT,
        "TCP connect",
        tokio::net::TcpStream::connect(("127.0.0.1", f.tls())),
    )
    .await
    .expect("connect");
    // A second one that sends half a ClientHello record header, then nothing.
    let mut half = within(
        WAIT,
        "TCP connect",
        tokio::net::TcpStream::connect(("127.0.0.1", f.tls())),
    )
    .await
    .expect("connect");
    half.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    // Others are served while both stall.
    for i in 0..3 {
        tls_support::assert_tls_served(f.tls(), f.client(None), &format!("client {i}")).await;
    }
    for (name, s) in [("silent", &mut stalled), ("half", &mut half)] {
        let mut buf = Vec::new();
        let r = within(
            Duration::from_secs(6),
            "the stalled connection to be cut off",
            s.read_to_end(&mut buf),
        )
        .await;
        assert!(
            r.is_err() || buf.is_empty() || buf[0] == 0x15,
            "{name}: unexpected data {buf:?}"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "cut off after {elapsed:?}, before the 1 s handshake timeout"
    );
    f.broker
        .log_count_reaches("TLS handshake timed out", 2, WAIT)
        .await;
    tls_support::assert_tls_served(f.tls(), f.client(None), "after the stall").await;
}

const NOT_AUTHORIZED: u8 = 0x87;

#[tokio::test]
async fn identity_as_username_with_a_username_pattern_acl() {
    let (f, ()) = Fixture::with_files(
        "client_ca_file = \"@CA@\"\nrequire_client_cert = true\nuse_identity_as_username = true",
        "[auth]\nacl_file = \"@DIR@/acl\"",
        |dir, _| {
            write_file(dir, "acl", "pattern readwrite devices/%u/#\n");
        },
    );
    let d1 = f.ca.client("device-1");
    let mut c1 =
        TlsRaw::connected(f.tls(), f.client(Some(&d1)), &Connect::v5("any-client-id")).await;
    assert_eq!(c1.subscribe(1, "devices/device-1/#").await, vec![1]);
    for other in ["devices/device-2/#", "devices/+/#", "devices/#", "#"] {
        assert_eq!(
            c1.subscribe(2, other).await,
            vec![NOT_AUTHORIZED],
            "device-1 subscribing to {other}"
        );
    }
    assert_eq!(c1.publish(3, "devices/device-1/temp", b"21").await, 0);
    let got = c1.next_publish().await;
    assert_eq!(got.topic, "devices/device-1/temp");
    assert_eq!(
        c1.publish(4, "devices/device-2/temp", b"x").await,
        NOT_AUTHORIZED
    );

    // The certificate, not the CONNECT's username, is the identity.
    let mut claim = Connect::v5("claims-device-2");
    claim.username = Some("device-2".into());
    claim.password = Some(b"whatever".to_vec());
    let mut liar = TlsRaw::connected(f.tls(), f.client(Some(&d1)), &claim).await;
    assert_eq!(
        liar.publish(1, "devices/device-2/temp", b"x").await,
        NOT_AUTHORIZED
    );
    assert_eq!(
        liar.subscribe(2, "devices/device-2/#").await,
        vec![NOT_AUTHORIZED]
    );

    // 3.1.1: a refused SUBSCRIBE is 0x80; a refused PUBLISH is acknowledged and dropped.
    let mut c4 =
        TlsRaw::connected(f.tls(), f.client(Some(&d1)), &Connect::v311("v4-device-1")).await;
    assert_eq!(c4.subscribe(1, "devices/device-2/#").await, vec![0x80]);
    assert_eq!(c4.subscribe(2, "devices/device-1/#").await, vec![1]);
    let d2 = f.ca.client("device-2");
    let mut c2 =
        TlsRaw::connected(f.tls(), f.client(Some(&d2)), &Connect::v311("v4-device-2")).await;
    assert_eq!(c2.subscribe(1, "devices/device-2/#").await, vec![1]);
    c4.publish(3, "devices/device-2/spoof", b"x").await;
    c4.publish(4, "devices/device-1/ok", b"y").await;
    assert_eq!(c4.next_publish().await.topic, "devices/device-1/ok");
    assert!(
        c2.try_next_publish(Duration::from_millis(300))
            .await
            .is_none(),
        "device-2 received device-1's refused publish"
    );

    // Identities that are wildcards or levels must not widen the pattern.
    for cn in ["+", "#", "a/#", "device-1/+"] {
        let leaf = f.ca.client(cn);
        let mut c = TlsRaw::connected(f.tls(), f.client(Some(&leaf)), &Connect::v5("wild")).await;
        for filter in ["devices/+/#", "devices/#", "devices/device-1/#"] {
            assert_eq!(
                c.subscribe(1, filter).await,
                vec![NOT_AUTHORIZED],
                "CN {cn:?} subscribing to {filter}"
            );
        }
        assert_eq!(
            c.publish(2, "devices/device-1/temp", b"x").await,
            NOT_AUTHORIZED,
            "CN {cn:?} publishing to devices/device-1/temp"
        );
    }

    // mosquitto clients get the same identity from --cert.
    let (cert, key) = f.client_files(&d1, "device-1");
    let ca = f.ca_arg();
    let args = ["--cafile", ca.as_str(), "--cert", &cert, "--key", &key];
    mosquitto_roundtrip(f.tls(), "mqttv311", &args, "devices/device-1/cli").await;
    mosquitto_roundtrip(f.tls(), "mqttv5", &args, "devices/device-1/cli5").await;
}

#[tokio::test]
async fn sighup_reloads_the_server_certificate_and_keeps_connections() {
    let f = Fixture::new("", "");
    let old = f.client(None);
    let (mut existing, _) = v4::connect_with(v4_tls(f.tls(), "existing", old.clone())).await;
    existing.subscribe("reload/#", v4::QoS::AtLeastOnce).await;

    // A new CA and server certificate replace the files; then SIGHUP.
    let ca2 = Ca::new("second CA");
    ca2.server().write(f.broker.dir(), "server");
    let ca2_file = write_file(f.broker.dir(), "ca2.pem", &ca2.pem());
    f.broker.reload("TLS certificates reloaded").await;

    let new = client_config(&[ca2.der()], None, &[]);
    tls_support::assert_tls_served(f.tls(), new.clone(), "trusting the new CA").await;
    match tls_attempt(f.tls(), old.clone(), "old-ca").await {
        Attempt::HandshakeFailed(_) => {}
        other => panic!("a client trusting only the old CA got {other:?} after the reload"),
    }
    mosquitto_roundtrip(
        f.tls(),
        "mqttv5",
        &["--cafile", ca2_file.to_str().unwrap()],
        "reload/cli",
    )
    .await;
    let got = existing.recv().await;
    assert_eq!(
        got.topic, "reload/cli",
        "the existing connection missed a message"
    );

    // The connection made before the reload is still up and served.
    let (mut p, _) = v5::connect_with(v5_tls(f.tls(), "after-reload", new.clone())).await;
    p.publish("reload/x", v5::QoS::AtLeastOnce, false, "still here")
        .await;
    let got = existing.recv().await;
    assert_eq!(&got.payload[..], b"still here");

    // A reload that cannot read the certificate keeps the current one.
    write_file(f.broker.dir(), "server.pem", "not a certificate\n");
    f.broker.reload("TLS reload failed").await;
    tls_support::assert_tls_served(f.tls(), new, "after a failed reload").await;
    existing
        .publish("reload/y", v4::QoS::AtLeastOnce, false, "and still")
        .await;
    let got = existing.recv().await;
    assert_eq!(&got.payload[..], b"and still");
}

#[tokio::test]
async fn sighup_reloads_the_crl() {
    let (f, (good, doomed)) = Fixture::with_files(
        "client_ca_file = \"@CA@\"\nrequire_client_cert = true\ncrl_file = \"@DIR@/ca.crl\"",
        "",
        |dir, ca| {
            write_file(dir, "ca.crl", &ca.crl(&[]));
            (ca.client("device-good"), ca.client("device-doomed"))
        },
    );
    let mut before = TlsRaw::connected(
        f.tls(),
        f.client(Some(&doomed)),
        &Connect::v311("doomed-before"),
    )
    .await;
    write_file(f.broker.dir(), "ca.crl", &f.ca.crl(&[&doomed]));
    f.broker.reload("TLS certificates reloaded").await;
    let (got, peer) = tls_attempt_from(f.tls(), f.client(Some(&doomed)), "doomed-after").await;
    assert!(
        !matches!(got, Attempt::Connack(_)),
        "a certificate revoked by the reloaded CRL was accepted: {got:?}"
    );
    f.assert_refusal_logged(peer).await;
    tls_support::assert_tls_served(f.tls(), f.client(Some(&good)), "unrevoked").await;
    // Like mosquitto, an established connection is not re-verified.
    assert_eq!(before.subscribe(1, "still/here").await, vec![1]);
}

#[tokio::test]
async fn identity_as_username_without_a_certificate_is_not_authorized() {
    // Certificates optional, identity required: no certificate means no username.
    let f = Fixture::new(
        "client_ca_file = \"@CA@\"\nuse_identity_as_username = true\nallow_anonymous = true",
        "",
    );
    assert_eq!(
        tls_attempt(f.tls(), f.client(None), "no-cert").await,
        Attempt::Connack(5)
    );
    let (mut c, ack) = TlsRaw::connect(f.tls(), f.client(None), &Connect::v5("no-cert-5")).await;
    assert_eq!(ack.connack().1, 0x87);
    assert!(c.recv_within(WAIT).await.is_none(), "not closed after 0x87");
    let leaf = f.ca.client("device-1");
    tls_support::assert_tls_served(f.tls(), f.client(Some(&leaf)), "with a certificate").await;
}
