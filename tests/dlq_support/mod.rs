//! Helpers for the dead-letter tests: a `mosquitto_sub -t '$DLQ/#'` watcher that prints
//! what it saw (run with --nocapture to read it), draining the `sluice-dlq` session with
//! rumqttc, and checks of a dead letter's topic, payload and user properties.
#![allow(dead_code)]

use crate::common::rumq::v5;
use crate::common::{within, WAIT};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// The dead-letter session's client id (the default config's).
pub const DLQ_CLIENT: &str = "sluice-dlq";

/// How long a check that nothing (more) arrives listens. A bounded wait for an absence,
/// used only after the event that would have produced it was already observed.
pub const QUIET: Duration = Duration::from_millis(500);

/// A `mosquitto_sub -t '$DLQ/#' -v -V mqttv5 -F '%t %p %P'` watcher.
pub struct DlqWatch {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    label: String,
}

/// One dead letter as mosquitto_sub printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub topic: String,
    pub payload: String,
    /// `%P`: the user properties, `key:value` separated by spaces.
    pub props: String,
    pub line: String,
}

impl DlqWatch {
    /// Starts the watcher and returns once its SUBACK arrived. It exits after `count`
    /// messages or `wait_secs` seconds without one.
    pub async fn start(port: u16, count: usize, wait_secs: u32, label: &str) -> DlqWatch {
        let mut cmd = tokio::process::Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-t", "$DLQ/#", "-v", "-V", "mqttv5", "-d"])
            .args(["-F", "DL %t %p %P"])
            .args(["-C", &count.to_string(), "-W", &wait_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn mosquitto_sub");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        within(WAIT, "mosquitto_sub's SUBACK", async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line.contains("received SUBACK") => return,
                    Ok(Some(_)) => {}
                    other => panic!("mosquitto_sub ended before its SUBACK: {other:?}"),
                }
            }
        })
        .await;
        DlqWatch {
            child,
            lines,
            label: label.to_string(),
        }
    }

    /// Reads until mosquitto_sub exits; prints what it printed (the `-v` part of each
    /// line, then its user properties).
    pub async fn collect(mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        let lines = &mut self.lines;
        within(Duration::from_secs(60), "mosquitto_sub to exit", async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(rest) = line.strip_prefix("DL ") else {
                    continue;
                };
                let mut parts = rest.splitn(3, ' ');
                let topic = parts.next().unwrap_or("").to_string();
                let payload = parts.next().unwrap_or("").to_string();
                let props = parts.next().unwrap_or("").to_string();
                out.push(Seen {
                    topic,
                    payload,
                    props,
                    line: rest.to_string(),
                });
            }
        })
        .await;
        let _ = within(WAIT, "mosquitto_sub exit status", self.child.wait()).await;
        println!(
            "--- {}: mosquitto_sub -t '$DLQ/#' -v -V mqttv5 -F '%t %p %P' ---",
            self.label
        );
        for s in &out {
            println!("{}", s.line);
        }
        println!("--- end {} ---", self.label);
        out
    }
}

/// rumqttc v5 options for a persistent session (clean start 0, `expiry` seconds).
pub fn persistent_v5(port: u16, id: &str, expiry: u32) -> v5::MqttOptions {
    let mut o = v5::options(port, id);
    o.set_clean_start(false);
    let mut props = v5::ConnectProperties::new();
    props.session_expiry_interval = Some(expiry);
    o.set_connect_properties(props);
    o
}

/// Connects as the dead-letter session, receives exactly `n` dead letters (acking each),
/// checks that no more follow, and disconnects.
pub async fn drain_exact(port: u16, n: usize) -> Vec<v5::Publish> {
    let (mut c, ack) = v5::connect_with(persistent_v5(port, DLQ_CLIENT, 3600)).await;
    assert!(
        ack.session_present,
        "the dead-letter session always resumes"
    );
    let mut out = Vec::new();
    for i in 0..n {
        match c.try_recv(WAIT).await {
            Some(p) => out.push(p),
            None => panic!(
                "dead letter {i} of {n} did not arrive; got {:?}",
                topics(&out)
            ),
        }
    }
    if let Some(extra) = c.try_recv(QUIET).await {
        panic!(
            "more than {n} dead letters: also {:?} after {:?}",
            topic(&extra),
            topics(&out)
        );
    }
    c.disconnect().await;
    out
}

pub fn topic(p: &v5::Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

pub fn payload(p: &v5::Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

pub fn topics(ps: &[v5::Publish]) -> Vec<String> {
    ps.iter().map(topic).collect()
}

pub fn payloads(ps: &[v5::Publish]) -> Vec<String> {
    ps.iter().map(payload).collect()
}

pub fn user_props(p: &v5::Publish) -> Vec<(String, String)> {
    p.properties
        .as_ref()
        .map(|pp| pp.user_properties.clone())
        .unwrap_or_default()
}

/// What a dead letter must say.
pub struct Expect<'a> {
    pub reason: &'a str,
    pub topic: &'a str,
    pub payload: &'a str,
    pub publisher: &'a str,
    pub subscriber: Option<&'a str>,
    pub attempts: u32,
    /// The original message's own user properties, after the header.
    pub own: &'a [(&'a str, &'a str)],
}

/// Checks topic, payload, QoS and the user properties (header in order, first-seen an
/// RFC 3339 time, then the original's own).
pub fn check_dead_letter(p: &v5::Publish, e: &Expect<'_>) {
    assert_eq!(topic(p), format!("$DLQ/{}/{}", e.reason, e.topic), "{p:?}");
    assert_eq!(payload(p), e.payload, "{p:?}");
    assert_eq!(p.qos, v5::QoS::AtLeastOnce, "{p:?}");
    let props = user_props(p);
    let mut want: Vec<(String, String)> = vec![
        ("reason".into(), e.reason.into()),
        ("original-topic".into(), e.topic.into()),
        ("publisher".into(), e.publisher.into()),
    ];
    if let Some(s) = e.subscriber {
        want.push(("subscriber".into(), s.into()));
    }
    want.push(("attempts".into(), e.attempts.to_string()));
    let header_len = want.len() + 1;
    assert!(
        props.len() >= header_len,
        "too few user properties: {props:?}"
    );
    let (k, first_seen) = &props[want.len()];
    assert_eq!(k, "first-seen", "{props:?}");
    let seen = humantime::parse_rfc3339(first_seen)
        .unwrap_or_else(|err| panic!("first-seen {first_seen:?} is not RFC 3339: {err}"));
    let age = std::time::SystemTime::now()
        .duration_since(seen)
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(600),
        "first-seen {first_seen} is not recent"
    );
    assert_eq!(&props[..want.len()], want.as_slice(), "{props:?}");
    let own: Vec<(String, String)> = e
        .own
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(&props[header_len..], own.as_slice(), "{props:?}");
}

/// The mosquitto_sub view of the same dead letter: topic, payload, and the header's
/// reason/subscriber in its `%P`.
pub fn check_seen(s: &Seen, reason: &str, topic: &str, payload: &str, subscriber: Option<&str>) {
    assert_eq!(s.topic, format!("$DLQ/{reason}/{topic}"), "{s:?}");
    assert_eq!(s.payload, payload, "{s:?}");
    assert!(s.props.contains(&format!("reason:{reason}")), "{s:?}");
    assert!(
        s.props.contains(&format!("original-topic:{topic}")),
        "{s:?}"
    );
    if let Some(sub) = subscriber {
        assert!(s.props.contains(&format!("subscriber:{sub}")), "{s:?}");
    }
}

/// v5 publish properties with a content type and one user property.
pub fn props_with_unit() -> v5::PublishProperties {
    v5::PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("unit".into(), "C".into())],
        ..Default::default()
    }
}
