//! `sluice dlq replay`: drains the dead-letter session and re-publishes what an operator
//! selects to where it was originally going.
//!
//! A client of a running broker, written with the project's own codec over a plain
//! `TcpStream`. It connects as the dead-letter session (MQTT 5, clean start 0, session
//! expiry > 0), receives the dead letters queued for it, and for each one whose reason
//! and original topic the operator selected: re-publishes the original payload to the
//! original topic at QoS 1 with the original properties (the dead-letter user properties
//! sluice added are removed), waits for that PUBACK, and only then PUBACKs the dead
//! letter. Nothing is acknowledged that was not delivered again: a dead letter that is
//! not selected (or whose re-publish the broker refused) is left unacknowledged, so the
//! broker keeps it and sends it again on the next connect.
//!
//! Limits worth knowing:
//! * Unacknowledged dead letters occupy the broker's inflight window towards this client
//!   (`[limits] max_inflight`, 100 by default). When that many are skipped in one run,
//!   the dead letters queued behind them are not sent until a later run frees the window.
//! * A re-published message that is undeliverable again becomes a new dead letter (the
//!   broker says so with PUBACK 0x10 for `no_subscribers`). When it comes back within the
//!   same run it is recognised (its publisher is this client and it has the topic and
//!   payload of something this run re-published) and left queued instead of looping.
//! * QoS 1 means at least once: a crash between the re-publish and the dead letter's
//!   PUBACK (or before the broker's record of that PUBACK reached the disk) replays the
//!   message again on the next run.
//! * The original message's retain flag and Message Expiry Interval are not part of a
//!   dead letter, so the re-published message is not retained and does not expire.

use crate::dead_letter::{self, DeadLetterReason};
use crate::protocol::{
    decode_any, encode, reason, Connect, ConnectProperties, Disconnect, MessageProperties, Packet,
    ProtocolError, ProtocolVersion, PubResponse, Publish, QoS,
};
use crate::router::topic::{matches, validate_filter};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// The names of the user properties sluice puts in front of a dead letter's own, in order
/// (`subscriber` only when there was one).
pub const DEAD_LETTER_PROPERTIES: [&str; 6] = [
    "reason",
    "original-topic",
    "publisher",
    "subscriber",
    "attempts",
    "first-seen",
];

/// Largest packet this client accepts from the broker (the MQTT maximum).
const MAX_PACKET: usize = 268_435_455 + 5;
/// Keep Alive asked for in CONNECT, seconds.
const KEEP_ALIVE_SECS: u16 = 60;

/// What to replay, and from which broker.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub host: String,
    pub port: u16,
    /// The dead-letter session's client id (`[dead_letter] client_id`).
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The broker's `[dead_letter] topic_prefix`.
    pub topic_prefix: String,
    /// Replay only dead letters with one of these reasons (empty: every reason).
    pub reasons: Vec<DeadLetterReason>,
    /// Replay only dead letters whose original topic matches one of these MQTT filters
    /// (empty: every topic).
    pub topics: Vec<String>,
    /// Stop when no new dead letter arrived for this long.
    pub idle: Duration,
    /// Stop after replaying this many.
    pub max: Option<u64>,
    /// Bound on connecting, on each PUBACK and on the final disconnect.
    pub timeout: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "sluice-dlq".into(),
            username: None,
            password: None,
            topic_prefix: "$DLQ".into(),
            reasons: Vec::new(),
            topics: Vec::new(),
            idle: Duration::from_millis(2000),
            max: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Whether the broker resumed an existing dead-letter session.
    pub session_present: bool,
    /// Dead letters re-published and acknowledged, by reason label.
    pub replayed: BTreeMap<String, u64>,
    /// Of those, re-publishes the broker answered with 0x10 (no matching subscribers):
    /// they are dead letters again (`no_subscribers`).
    pub no_subscribers_again: u64,
    /// Dead letters the reason/topic selection left queued.
    pub skipped: u64,
    /// Dead letters this run's own re-publishes produced, left queued.
    pub bounced: u64,
    /// Re-publishes the broker refused (PUBACK reason >= 0x80): their dead letters stay
    /// queued. The reason codes, in order.
    pub refused: Vec<u8>,
    /// Messages that are not dead letters sluice built (another subscription, QoS 0, or
    /// a missing or inconsistent header): left alone.
    pub unrecognised: u64,
}

impl ReplaySummary {
    /// Total dead letters replayed.
    pub fn replayed_total(&self) -> u64 {
        self.replayed.values().sum()
    }
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "replayed {}", self.replayed_total())?;
        for (reason, n) in &self.replayed {
            writeln!(f, "  {reason} {n}")?;
        }
        if self.no_subscribers_again > 0 {
            writeln!(
                f,
                "  of which dead-lettered again (no subscribers) {}",
                self.no_subscribers_again
            )?;
        }
        writeln!(f, "skipped {} (left queued)", self.skipped)?;
        if self.bounced > 0 {
            writeln!(
                f,
                "bounced {} (undeliverable again, left queued)",
                self.bounced
            )?;
        }
        if !self.refused.is_empty() {
            let codes: Vec<String> = self.refused.iter().map(|c| format!("{c:#04x}")).collect();
            writeln!(
                f,
                "refused {} (left queued; PUBACK reasons {})",
                self.refused.len(),
                codes.join(" ")
            )?;
        }
        if self.unrecognised > 0 {
            writeln!(f, "unrecognised {} (left alone)", self.unrecognised)?;
        }
        if !self.session_present {
            writeln!(f, "note: the broker had no dead-letter session to resume")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to the broker failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker sent an invalid packet: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the broker refused the connection: reason {code:#04x}{}", reason_suffix(.reason))]
    Refused { code: u8, reason: Option<String> },
    #[error("the broker closed the connection{}", reason_suffix(.reason))]
    Closed { reason: Option<String> },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    #[error("unexpected {0} from the broker")]
    Unexpected(&'static str),
    #[error("--topic {filter:?}: {error}")]
    InvalidFilter { filter: String, error: String },
    #[error("--max must be at least 1")]
    InvalidMax,
}

fn reason_suffix(reason: &Option<String>) -> String {
    match reason {
        Some(r) => format!(" ({r})"),
        None => String::new(),
    }
}

/// `--reason` values: a dead-letter reason label.
pub fn parse_reason(s: &str) -> Result<DeadLetterReason, String> {
    DeadLetterReason::from_label(s).ok_or_else(|| {
        let labels: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.label()).collect();
        format!("unknown reason {s:?} (one of: {})", labels.join(", "))
    })
}

/// The header sluice put on a dead letter, read back from its user properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeader {
    pub reason: DeadLetterReason,
    pub original_topic: String,
    pub publisher: String,
    pub subscriber: Option<String>,
    pub attempts: u32,
    pub first_seen: String,
}

/// Splits a dead letter's user properties into the header sluice added (the first five
/// or six, in the order [`DEAD_LETTER_PROPERTIES`] names them) and the original message's
/// own. None when they do not start that way.
pub fn split_user_properties(
    user: &[(String, String)],
) -> Option<(DeadLetterHeader, &[(String, String)])> {
    let mut used = 0;
    let mut take = |name: &str| match user.get(used) {
        Some((k, v)) if k == name => {
            used += 1;
            Some(v.clone())
        }
        _ => None,
    };
    let reason = DeadLetterReason::from_label(&take("reason")?)?;
    let original_topic = take("original-topic")?;
    let publisher = take("publisher")?;
    let subscriber = take("subscriber");
    let attempts = take("attempts")?.parse().ok()?;
    let first_seen = take("first-seen")?;
    Some((
        DeadLetterHeader {
            reason,
            original_topic,
            publisher,
            subscriber,
            attempts,
            first_seen,
        },
        &user[used..],
    ))
}

/// The original message's properties, as the dead letter carries them minus the header.
pub fn original_properties(dead_letter: &MessageProperties) -> Option<MessageProperties> {
    let (_, own) = split_user_properties(&dead_letter.user_properties)?;
    Some(MessageProperties {
        user_properties: own.to_vec(),
        // A dead letter carries no expiry (sluice removes it); the replay does not
        // invent one.
        message_expiry_interval: None,
        ..dead_letter.clone()
    })
}

/// What to do with one received PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Re-publish this, then acknowledge the dead letter.
    Replay {
        reason: DeadLetterReason,
        publish: Box<Publish>,
    },
    /// Not selected: leave it queued.
    Skip,
    /// Produced by this run's own re-publish: leave it queued.
    Bounced,
    /// Not a dead letter sluice built.
    Unrecognised,
}

/// Which dead letters a run replays.
#[derive(Debug, Clone)]
pub struct Selection {
    prefix: String,
    client_id: String,
    reasons: Vec<DeadLetterReason>,
    topics: Vec<String>,
    /// Fingerprints of (topic, payload) this run re-published.
    republished: HashSet<u64>,
}

impl Selection {
    /// Checks the filters; errors name the bad one.
    pub fn new(opts: &ReplayOptions) -> Result<Selection, ReplayError> {
        for filter in &opts.topics {
            validate_filter(filter, usize::MAX).map_err(|e| ReplayError::InvalidFilter {
                filter: filter.clone(),
                error: e.to_string(),
            })?;
        }
        Ok(Selection {
            prefix: opts.topic_prefix.clone(),
            client_id: opts.client_id.clone(),
            reasons: opts.reasons.clone(),
            topics: opts.topics.clone(),
            republished: HashSet::new(),
        })
    }

    /// Whether a dead letter with this reason and original topic is selected.
    pub fn selects(&self, reason: DeadLetterReason, original_topic: &str) -> bool {
        (self.reasons.is_empty() || self.reasons.contains(&reason))
            && (self.topics.is_empty() || self.topics.iter().any(|f| matches(f, original_topic)))
    }

    /// Decides about one received PUBLISH.
    pub fn decide(&self, p: &Publish) -> Decision {
        if p.qos != QoS::AtLeastOnce {
            return Decision::Unrecognised;
        }
        let Some((reason_label, topic)) = dead_letter::parse_topic(&self.prefix, &p.topic) else {
            return Decision::Unrecognised;
        };
        let Some((header, _)) = split_user_properties(&p.properties.user_properties) else {
            return Decision::Unrecognised;
        };
        if header.reason.label() != reason_label || header.original_topic != topic {
            return Decision::Unrecognised;
        }
        if header.publisher == self.client_id
            && self
                .republished
                .contains(&fingerprint(&header.original_topic, &p.payload))
        {
            return Decision::Bounced;
        }
        if !self.selects(header.reason, &header.original_topic) {
            return Decision::Skip;
        }
        let Some(properties) = original_properties(&p.properties) else {
            return Decision::Unrecognised;
        };
        Decision::Replay {
            reason: header.reason,
            publish: Box::new(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: header.original_topic,
                packet_id: 0,
                payload: p.payload.clone(),
                properties,
                topic_alias: None,
                subscription_identifiers: Vec::new(),
            }),
        }
    }

    /// Remembers a re-publish, so that its coming back as a dead letter is recognised.
    pub fn republished(&mut self, topic: &str, payload: &Bytes) {
        self.republished.insert(fingerprint(topic, payload));
    }
}

fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

/// An MQTT 5 connection to the broker.
struct Link {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    last_sent: Instant,
    keep_alive: Duration,
}

impl Link {
    async fn send(&mut self, packet: &Packet) -> Result<(), ReplayError> {
        self.wbuf.clear();
        encode(packet, ProtocolVersion::V5, &mut self.wbuf);
        self.stream.write_all(&self.wbuf).await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next packet, or None at `deadline`. Sends PINGREQ as the keep alive needs;
    /// PINGRESP is consumed here.
    async fn recv(&mut self, deadline: Instant) -> Result<Option<Packet>, ReplayError> {
        loop {
            if let Some(p) = decode_any(&mut self.rbuf, Some(ProtocolVersion::V5), MAX_PACKET)? {
                match p {
                    Packet::PingResp => continue,
                    Packet::Disconnect(d) => {
                        return Err(ReplayError::Closed {
                            reason: Some(match d.reason_string {
                                Some(s) => format!("DISCONNECT {:#04x}: {s}", d.reason),
                                None => format!("DISCONNECT {:#04x}", d.reason),
                            }),
                        })
                    }
                    p => return Ok(Some(p)),
                }
            }
            let ping_at = self.last_sent + self.keep_alive / 2;
            tokio::select! {
                n = self.stream.read_buf(&mut self.rbuf) => {
                    if n? == 0 {
                        return Err(ReplayError::Closed { reason: None });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = tokio::time::sleep_until(ping_at), if !self.keep_alive.is_zero() => {
                    self.send(&Packet::PingReq).await?;
                }
            }
        }
    }
}

/// Runs one replay: connect, drain, re-publish what is selected, disconnect normally.
pub async fn replay(opts: ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    if opts.max == Some(0) {
        return Err(ReplayError::InvalidMax);
    }
    let mut selection = Selection::new(&opts)?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let stream = match timeout(
        opts.timeout,
        TcpStream::connect((opts.host.as_str(), opts.port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ReplayError::Connect { addr, source }),
        Err(_) => return Err(ReplayError::Timeout(opts.timeout, "the TCP connection")),
    };
    let _ = stream.set_nodelay(true);
    let mut link = Link {
        stream,
        rbuf: BytesMut::with_capacity(64 * 1024),
        wbuf: BytesMut::with_capacity(64 * 1024),
        last_sent: Instant::now(),
        keep_alive: Duration::from_secs(u64::from(KEEP_ALIVE_SECS)),
    };
    let connect = Connect {
        version: ProtocolVersion::V5,
        client_id: opts.client_id.clone(),
        clean_start: false,
        keep_alive: KEEP_ALIVE_SECS,
        username: opts.username.clone(),
        password: opts.password.clone().map(Bytes::from),
        will: None,
        properties: ConnectProperties {
            // The broker keeps the dead-letter session forever whatever is asked; ask
            // for that too, so a broker configured otherwise does not discard it.
            session_expiry_interval: Some(u32::MAX),
            // The window is then the broker's max_inflight.
            receive_maximum: Some(u16::MAX),
            ..ConnectProperties::default()
        },
    };
    link.send(&Packet::Connect(Box::new(connect))).await?;
    let connack = match link.recv(Instant::now() + opts.timeout).await? {
        Some(Packet::ConnAck(a)) => a,
        Some(other) => return Err(ReplayError::Unexpected(other.name())),
        None => return Err(ReplayError::Timeout(opts.timeout, "CONNACK")),
    };
    if connack.code != reason::SUCCESS {
        return Err(ReplayError::Refused {
            code: connack.code,
            reason: connack.properties.reason_string,
        });
    }
    if let Some(secs) = connack.properties.server_keep_alive {
        link.keep_alive = Duration::from_secs(u64::from(secs));
    }
    let mut summary = ReplaySummary {
        session_present: connack.session_present,
        ..ReplaySummary::default()
    };

    let mut pending: VecDeque<Publish> = VecDeque::new();
    let mut next_packet_id: u16 = 0;
    'run: loop {
        while let Some(dl) = pending.pop_front() {
            let (reason_, mut publish) = match selection.decide(&dl) {
                Decision::Replay { reason, publish } => (reason, publish),
                Decision::Skip => {
                    summary.skipped += 1;
                    continue;
                }
                Decision::Bounced => {
                    summary.bounced += 1;
                    continue;
                }
                Decision::Unrecognised => {
                    summary.unrecognised += 1;
                    continue;
                }
            };
            next_packet_id = next_packet_id.checked_add(1).unwrap_or(1);
            publish.packet_id = next_packet_id;
            selection.republished(&publish.topic, &publish.payload);
            link.send(&Packet::Publish(*publish)).await?;
            // Its PUBACK; dead letters arriving meanwhile wait their turn.
            let deadline = Instant::now() + opts.timeout;
            let ack = loop {
                match link.recv(deadline).await? {
                    Some(Packet::PubAck(a)) if a.packet_id == next_packet_id => break a,
                    Some(Packet::Publish(p)) => pending.push_back(p),
                    Some(other) => return Err(ReplayError::Unexpected(other.name())),
                    None => return Err(ReplayError::Timeout(opts.timeout, "a PUBACK")),
                }
            };
            if ack.reason >= 0x80 {
                summary.refused.push(ack.reason);
                continue;
            }
            if ack.reason == reason::NO_MATCHING_SUBSCRIBERS {
                summary.no_subscribers_again += 1;
            }
            link.send(&Packet::PubAck(PubResponse::success(dl.packet_id)))
                .await?;
            *summary
                .replayed
                .entry(reason_.label().to_string())
                .or_default() += 1;
            if opts.max.is_some_and(|m| summary.replayed_total() >= m) {
                break 'run;
            }
        }
        // Idle: wait for the next dead letter.
        let deadline = Instant::now() + opts.idle;
        match link.recv(deadline).await? {
            Some(Packet::Publish(p)) => pending.push_back(p),
            Some(other) => return Err(ReplayError::Unexpected(other.name())),
            None => break,
        }
    }

    link.send(&Packet::Disconnect(Disconnect {
        reason: reason::NORMAL_DISCONNECTION,
        ..Disconnect::default()
    }))
    .await?;
    // The broker closes once it has read everything before the DISCONNECT; bounded.
    let _ = link.stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = timeout(opts.timeout, async {
        while let Ok(n) = link.stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn header(
        reason: &str,
        topic: &str,
        publisher: &str,
        sub: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut v = up(&[
            ("reason", reason),
            ("original-topic", topic),
            ("publisher", publisher),
        ]);
        if let Some(s) = sub {
            v.push(("subscriber".into(), s.into()));
        }
        v.extend(up(&[
            ("attempts", "2"),
            ("first-seen", "2024-01-01T00:00:00.000Z"),
        ]));
        v
    }

    fn dead_letter(reason: &str, topic: &str, publisher: &str, own: &[(&str, &str)]) -> Publish {
        let mut user = header(reason, topic, publisher, Some("svc"));
        user.extend(up(own));
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("$DLQ/{reason}/{topic}"),
            packet_id: 7,
            payload: Bytes::from_static(b"21.5"),
            properties: MessageProperties {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                response_topic: Some("r/t".into()),
                payload_format_indicator: Some(1),
                user_properties: user,
                message_expiry_interval: None,
            },
            topic_alias: None,
            subscription_identifiers: vec![3],
        }
    }

    fn selection(reasons: &[DeadLetterReason], topics: &[&str]) -> Selection {
        Selection::new(&ReplayOptions {
            reasons: reasons.to_vec(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            ..ReplayOptions::default()
        })
        .expect("valid selection")
    }

    #[test]
    fn header_is_split_from_the_originals_own_properties() {
        // The original's own properties may reuse the header's names: only the leading
        // header is removed.
        let mut user = header("max_attempts", "a/b", "dev-1", Some("svc"));
        user.extend(up(&[("reason", "mine"), ("unit", "C")]));
        let (h, own) = split_user_properties(&user).expect("a dead-letter header");
        assert_eq!(
            h,
            DeadLetterHeader {
                reason: DeadLetterReason::MaxAttempts,
                original_topic: "a/b".into(),
                publisher: "dev-1".into(),
                subscriber: Some("svc".into()),
                attempts: 2,
                first_seen: "2024-01-01T00:00:00.000Z".into(),
            }
        );
        assert_eq!(own, up(&[("reason", "mine"), ("unit", "C")]).as_slice());

        // No subscriber (no_subscribers): five header properties.
        let mut user = header("no_subscribers", "x", "p", None);
        user.extend(up(&[("k", "v")]));
        let (h, own) = split_user_properties(&user).expect("a dead-letter header");
        assert_eq!(h.subscriber, None);
        assert_eq!(own, up(&[("k", "v")]).as_slice());

        // Nothing of its own.
        let user = header("expired", "x", "p", Some("s"));
        assert_eq!(split_user_properties(&user).expect("header").1.len(), 0);
    }

    #[test]
    fn properties_that_are_not_a_header_are_refused() {
        let cases: Vec<Vec<(String, String)>> = vec![
            vec![],
            up(&[("unit", "C")]),
            // Wrong order.
            up(&[
                ("original-topic", "a"),
                ("reason", "expired"),
                ("publisher", "p"),
                ("attempts", "1"),
                ("first-seen", "t"),
            ]),
            // Unknown reason.
            header("bogus", "a", "p", None),
            // Attempts not a number.
            up(&[
                ("reason", "expired"),
                ("original-topic", "a"),
                ("publisher", "p"),
                ("attempts", "many"),
                ("first-seen", "t"),
            ]),
            // Truncated.
            header("expired", "a", "p", None)[..4].to_vec(),
        ];
        for user in cases {
            assert!(split_user_properties(&user).is_none(), "{user:?}");
        }
    }

    #[test]
    fn original_properties_keep_everything_but_the_header() {
        let dl = dead_letter("too_large", "s/1", "dev", &[("unit", "C")]);
        let p = original_properties(&dl.properties).expect("original properties");
        assert_eq!(
            p,
            MessageProperties {
                content_type: Some("text/plain".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                response_topic: Some("r/t".into()),
                payload_format_indicator: Some(1),
                user_properties: up(&[("unit", "C")]),
                message_expiry_interval: None,
            }
        );
    }

    #[test]
    fn selection_by_reason_and_topic_filter() {
        use DeadLetterReason::*;
        let all = selection(&[], &[]);
        assert!(all.selects(QueueFull, "a/b"));
        assert!(all.selects(SessionExpired, "x"));

        let by_reason = selection(&[Expired, TooLarge], &[]);
        assert!(by_reason.selects(Expired, "a"));
        assert!(by_reason.selects(TooLarge, "a"));
        assert!(!by_reason.selects(QueueFull, "a"));

        let by_topic = selection(&[], &["sensors/+/temp", "alarms/#"]);
        assert!(by_topic.selects(QueueFull, "sensors/7/temp"));
        assert!(by_topic.selects(QueueFull, "alarms"));
        assert!(by_topic.selects(QueueFull, "alarms/x/y"));
        assert!(!by_topic.selects(QueueFull, "sensors/7/hum"));
        assert!(!by_topic.selects(QueueFull, "sensors/7/temp/x"));

        let both = selection(&[NoSubscribers], &["a/#"]);
        assert!(both.selects(NoSubscribers, "a/b"));
        assert!(!both.selects(NoSubscribers, "b"));
        assert!(!both.selects(Expired, "a/b"));
    }

    #[test]
    fn invalid_filters_and_reasons_are_refused() {
        for bad in ["a/#/b", "a+", ""] {
            let err = Selection::new(&ReplayOptions {
                topics: vec![bad.into()],
                ..ReplayOptions::default()
            })
            .expect_err(bad);
            assert!(matches!(err, ReplayError::InvalidFilter { .. }), "{err}");
        }
        assert_eq!(parse_reason("queue_full"), Ok(DeadLetterReason::QueueFull));
        let err = parse_reason("full").expect_err("unknown reason");
        assert!(err.contains("queue_full"), "{err}");
    }

    #[test]
    fn decide_replays_the_original_and_leaves_the_rest() {
        let mut sel = selection(&[], &["s/#"]);
        let dl = dead_letter("queue_full", "s/1", "dev", &[("unit", "C")]);
        let Decision::Replay { reason, publish } = sel.decide(&dl) else {
            panic!("expected a replay");
        };
        assert_eq!(reason, DeadLetterReason::QueueFull);
        assert_eq!(publish.topic, "s/1");
        assert_eq!(publish.qos, QoS::AtLeastOnce);
        assert!(!publish.retain && !publish.dup);
        assert_eq!(publish.payload, dl.payload);
        assert_eq!(publish.properties.user_properties, up(&[("unit", "C")]));
        assert!(publish.subscription_identifiers.is_empty());

        // Not selected.
        assert_eq!(
            sel.decide(&dead_letter("queue_full", "t/1", "dev", &[])),
            Decision::Skip
        );
        // Not a dead letter.
        let mut other = dl.clone();
        other.topic = "s/1".into();
        assert_eq!(sel.decide(&other), Decision::Unrecognised);
        let mut qos0 = dl.clone();
        qos0.qos = QoS::AtMostOnce;
        assert_eq!(sel.decide(&qos0), Decision::Unrecognised);
        // Topic and header disagree.
        let mut odd = dl.clone();
        odd.topic = "$DLQ/expired/s/1".into();
        assert_eq!(sel.decide(&odd), Decision::Unrecognised);
        let mut no_header = dl.clone();
        no_header.properties.user_properties = up(&[("unit", "C")]);
        assert_eq!(sel.decide(&no_header), Decision::Unrecognised);

        // This run's own re-publish coming back is left queued; the same message from
        // another publisher is not mistaken for it.
        sel.republished("s/1", &dl.payload);
        let bounced = dead_letter("no_subscribers", "s/1", "sluice-dlq", &[("unit", "C")]);
        assert_eq!(sel.decide(&bounced), Decision::Bounced);
        assert!(matches!(sel.decide(&dl), Decision::Replay { .. }));
    }

    #[test]
    fn summary_prints_per_reason() {
        let mut s = ReplaySummary {
            session_present: true,
            skipped: 2,
            ..ReplaySummary::default()
        };
        s.replayed.insert("queue_full".into(), 3);
        s.replayed.insert("expired".into(), 1);
        assert_eq!(s.replayed_total(), 4);
        assert_eq!(
            s.to_string(),
            "replayed 4\n  expired 1\n  queue_full 3\nskipped 2 (left queued)\n"
        );
    }
}
