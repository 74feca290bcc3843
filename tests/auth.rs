//! Password and ACL files as mosquitto writes and reads them: a password file made by
//! the real `mosquitto_passwd`, CONNACK codes for bad passwords and refused anonymous
//! clients, ACL read/write/readwrite/deny, `%c`/`%u` patterns (and attempts to widen
//! them), `$SYS`/`$DLQ` under the ACL, and SIGHUP reloads of both files.

mod common;
mod tls_support;

use common::packet::{self, Connect, PUBACK, PUBLISH};
use common::raw::{RawClient, Recv};
use common::{mosquitto_pub, MosquittoSub};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;
use tls_support::{mosquitto_passwd, write_file, Sluice};

/// v5 reason codes / 3.1.1 return codes used here.
const BAD_PASSWORD_V5: u8 = 0x86;
const NOT_AUTHORIZED_V5: u8 = 0x87;
const BAD_PASSWORD_V311: u8 = 4;
const NOT_AUTHORIZED_V311: u8 = 5;
const SUBACK_FAILURE_V311: u8 = 0x80;

/// A broker with two plain listeners on 127.0.0.1 — `open` (anonymous allowed, the
/// loopback default) and `strict` (`allow_anonymous = false`) — a password file written
/// by `mosquitto_passwd` and, optionally, an ACL file.
struct Auth {
    broker: Sluice,
    passwd: PathBuf,
}

impl Auth {
    async fn start(users: &[(&str, &str)], acl: Option<&str>) -> Auth {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let passwd = dir.path().join("passwd");
        for (i, (user, password)) in users.iter().enumerate() {
            mosquitto_passwd(&passwd, i == 0, user, password).await;
        }
        let acl_path = dir.path().join("acl");
        let acl_line = match acl {
            Some(text) => {
                write_file(dir.path(), "acl", text);
                format!("acl_file = {:?}\n", acl_path.to_str().unwrap())
            }
            None => String::new(),
        };
        let config = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n\
             [[listener]]\nbind = \"127.0.0.1:0\"\nallow_anonymous = false\n\n\
             [auth]\npassword_file = {:?}\n{acl_line}",
            passwd.to_str().unwrap()
        );
        // No $SYS publishing: the raw clients here read packets in order, and a retained
        // $SYS message may (as the spec allows) arrive ahead of a later SUBACK.
        let broker = Sluice::start(dir, &config, &["--sys-interval", "0"]);
        Auth { broker, passwd }
    }

    /// The listener that allows anonymous clients (loopback default).
    fn open(&self) -> u16 {
        self.broker.port("mqtt", 0)
    }

    /// The listener with `allow_anonymous = false`.
    fn strict(&self) -> u16 {
        self.broker.port("mqtt", 1)
    }
}

fn with_user(mut c: Connect, user: &str, password: &str) -> Connect {
    c.username = Some(user.into());
    c.password = Some(password.as_bytes().to_vec());
    c
}

/// Sends `connect` and returns the client and the CONNACK code.
async fn connack(port: u16, connect: &Connect) -> (RawClient, u8) {
    let mut c = RawClient::connect(port).await;
    c.v5 = connect.level == packet::V5;
    c.send(&connect.build()).await;
    let ack = c.expect(packet::CONNACK, "CONNACK").await;
    (c, ack.connack().1)
}

/// Asserts `connect` is refused with `code` and the connection is then closed.
async fn assert_refused(port: u16, connect: &Connect, code: u8, what: &str) {
    let (mut c, got) = connack(port, connect).await;
    assert_eq!(got, code, "{what}: CONNACK code");
    c.expect_closed().await;
}

/// A raw client that keeps the PUBLISHes which arrive while it waits for a PUBACK
/// (its own message may be delivered before the ack), so none is lost to a test.
struct Cl {
    raw: RawClient,
    stash: VecDeque<(String, Vec<u8>)>,
}

impl From<RawClient> for Cl {
    fn from(raw: RawClient) -> Cl {
        Cl {
            raw,
            stash: VecDeque::new(),
        }
    }
}

impl std::ops::Deref for Cl {
    type Target = RawClient;
    fn deref(&self) -> &RawClient {
        &self.raw
    }
}

impl std::ops::DerefMut for Cl {
    fn deref_mut(&mut self) -> &mut RawClient {
        &mut self.raw
    }
}

/// A connected client authenticated as `user`.
async fn login(port: u16, connect: Connect, user: &str, password: &str) -> Cl {
    RawClient::handshake(port, &with_user(connect, user, password))
        .await
        .0
        .into()
}

/// QoS 1 PUBLISH; returns the PUBACK reason code (0 when a 3.1.1 PUBACK, or a v5 one
/// without a reason). PUBLISHes arriving meanwhile are acknowledged and kept.
async fn publish(c: &mut Cl, packet_id: u16, topic: &str, payload: &[u8]) -> u8 {
    let v5 = c.v5;
    c.send(&packet::publish(
        v5,
        topic,
        1,
        false,
        packet_id,
        &[],
        payload,
    ))
    .await;
    let (ack, others) = c.until(PUBACK, "PUBACK").await;
    assert_eq!(ack.packet_id(), packet_id);
    for p in &others {
        assert_eq!(p.kind(), PUBLISH, "unexpected packet {p:?}");
        let got = p.publish(v5);
        if got.qos == 1 {
            c.send(&packet::puback(got.packet_id)).await;
        }
        c.stash.push_back((got.topic, got.payload));
    }
    ack.reason()
}

/// The next PUBLISH's topic and payload (acknowledged if QoS 1).
async fn next_message(c: &mut Cl) -> (String, Vec<u8>) {
    if let Some(m) = c.stash.pop_front() {
        return m;
    }
    let p = c.expect_publish().await;
    if p.qos == 1 {
        c.send(&packet::puback(p.packet_id)).await;
    }
    (p.topic, p.payload)
}

/// `true` for the v5 PUBACK codes of an accepted publish.
fn accepted(code: u8) -> bool {
    code == 0 || code == 0x10
}

// ---------------------------------------------------------------- passwords

#[tokio::test]
async fn password_file_from_mosquitto_passwd_is_accepted() {
    let a = Auth::start(&[("alice", "alice-pw"), ("bob", "b:b p#w ü")], None).await;
    for port in [a.open(), a.strict()] {
        login(port, Connect::v311("alice-311"), "alice", "alice-pw").await;
        login(port, Connect::v5("alice-5"), "alice", "alice-pw").await;
        login(port, Connect::v311("bob-311"), "bob", "b:b p#w ü").await;
        login(port, Connect::v5("bob-5"), "bob", "b:b p#w ü").await;
    }
    // The mosquitto clients too, on the listener that refuses anonymous clients.
    let port = a.strict();
    let creds = ["-u", "alice", "-P", "alice-pw"];
    for version in ["mqttv311", "mqttv5"] {
        let mut sub_args = creds.to_vec();
        sub_args.extend(["-t", "pw/test", "-q", "1"]);
        let sub = MosquittoSub::start(port, version, 1, 10, &sub_args).await;
        let mut pub_args = creds.to_vec();
        pub_args.extend(["-t", "pw/test", "-q", "1", "-m", version]);
        mosquitto_pub(port, version, &pub_args).await;
        let got = sub.collect().await;
        assert_eq!(got.len(), 1, "{version}: {got:?}");
        assert_eq!(got[0].payload, version);
    }
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let a = Auth::start(&[("alice", "alice-pw")], None).await;
    for port in [a.open(), a.strict()] {
        for (user, password) in [
            ("alice", "wrong"),
            ("alice", ""),
            ("alice", "alice-pw "),
            ("mallory", "alice-pw"),
        ] {
            let what = format!("{user}/{password:?} on port {port}");
            let c5 = with_user(Connect::v5("c5"), user, password);
            assert_refused(port, &c5, BAD_PASSWORD_V5, &what).await;
            let c4 = with_user(Connect::v311("c4"), user, password);
            assert_refused(port, &c4, BAD_PASSWORD_V311, &what).await;
        }
        // A username without any password.
        let mut c5 = Connect::v5("nopw");
        c5.username = Some("alice".into());
        assert_refused(port, &c5, BAD_PASSWORD_V5, "no password (v5)").await;
    }
    let log = a.broker.stderr();
    assert!(
        !log.contains("alice-pw"),
        "a password appears in the broker's log"
    );
    common::assert_broker_works(a.open()).await;
}

#[tokio::test]
async fn anonymous_refused_where_not_allowed_and_allowed_on_loopback_by_default() {
    let a = Auth::start(&[("alice", "alice-pw")], None).await;
    assert_refused(
        a.strict(),
        &Connect::v5("anon5"),
        NOT_AUTHORIZED_V5,
        "anonymous v5",
    )
    .await;
    assert_refused(
        a.strict(),
        &Connect::v311("anon4"),
        NOT_AUTHORIZED_V311,
        "anonymous 3.1.1",
    )
    .await;
    // The loopback listener with no allow_anonymous setting lets them in.
    let _anon5 = RawClient::v5(a.open(), "anon5").await;
    let _anon4 = RawClient::v311(a.open(), "anon4").await;
    common::assert_broker_works(a.open()).await;
    // And a user is still welcome on the strict one.
    login(a.strict(), Connect::v311("alice"), "alice", "alice-pw").await;
}

#[tokio::test]
async fn sighup_reloads_the_password_file_without_dropping_connections() {
    let a = Auth::start(&[("alice", "alice-pw"), ("bob", "bob-pw")], None).await;
    let mut alice = login(a.strict(), Connect::v5("alice"), "alice", "alice-pw").await;
    assert_eq!(alice.subscribe(1, "reload/#", 1).await, vec![1]);
    let mut bob = login(a.strict(), Connect::v311("bob"), "bob", "bob-pw").await;
    let carol = with_user(Connect::v311("carol"), "carol", "carol-pw");
    assert_refused(a.strict(), &carol, BAD_PASSWORD_V311, "carol before").await;

    mosquitto_passwd(&a.passwd, false, "carol", "carol-pw").await;
    let (ok, out) = tls_support::run_tool(
        "mosquitto_passwd",
        &["-D", a.passwd.to_str().unwrap(), "bob"],
    )
    .await;
    assert!(ok, "mosquitto_passwd -D: {out}");
    a.broker.reload("password and ACL files reloaded").await;

    let mut carol = Cl::from(RawClient::handshake(a.strict(), &carol).await.0);
    carol.ping().await;
    let bob_again = with_user(Connect::v311("bob2"), "bob", "bob-pw");
    assert_refused(a.strict(), &bob_again, BAD_PASSWORD_V311, "deleted bob").await;
    // Connections made before the reload stay up (bob's included: mosquitto does not
    // disconnect a user removed from the file either).
    alice.ping().await;
    bob.ping().await;
    assert!(accepted(
        publish(&mut carol, 1, "reload/carol", b"hi").await
    ));
    assert_eq!(next_message(&mut alice).await.0, "reload/carol");
}

#[tokio::test]
async fn reload_with_a_malformed_password_file_keeps_the_old_one() {
    let a = Auth::start(&[("alice", "alice-pw")], None).await;
    let mut alice = login(a.strict(), Connect::v311("alice"), "alice", "alice-pw").await;
    let good = std::fs::read_to_string(&a.passwd).expect("read passwd");
    // A line without a hash, and a user nobody had before.
    write_file(
        a.broker.dir(),
        "passwd",
        &format!("{good}mallory\neve:$7$not-a-hash\n"),
    );
    a.broker.reload("reload failed").await;
    login(a.strict(), Connect::v5("alice-again"), "alice", "alice-pw").await;
    let mallory = with_user(Connect::v5("m"), "mallory", "");
    assert_refused(a.strict(), &mallory, BAD_PASSWORD_V5, "mallory").await;
    alice.ping().await;
    let log = a.broker.stderr();
    assert!(
        !log.contains("not-a-hash"),
        "the broker logged password file contents"
    );
    // A missing file is a failed reload too.
    std::fs::remove_file(&a.passwd).expect("rm passwd");
    a.broker.reload("reload failed").await;
    login(a.strict(), Connect::v311("alice-3"), "alice", "alice-pw").await;
}

/// Password hashes are costly on purpose; checking them must not stall the broker. With
/// a password file of slow hashes, a burst of concurrent CONNECTs (all accepted) must
/// not hold up an unrelated client's QoS 1 PUBACKs: the hashes run on a bounded
/// blocking pool, not on the workers that serve connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_password_checks_does_not_stall_other_clients() {
    const DEVICES: usize = 12;
    // Tens of milliseconds of PBKDF2 per check in a debug build.
    const ITERATIONS: u32 = 5_000;
    let dir = tempfile::TempDir::new().expect("temp dir");
    let started = std::time::Instant::now();
    let hash =
        sluice::auth::hash_password_with_iterations(b"device-secret", ITERATIONS).expect("hash");
    println!("one check takes about {:?} here", started.elapsed());
    let lines: String = (0..DEVICES).map(|i| format!("dev{i}:{hash}\n")).collect();
    let passwd = write_file(dir.path(), "passwd", &lines);
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[auth]\npassword_file = {:?}\n",
        passwd.to_str().expect("utf-8 path")
    );
    let broker = Sluice::start(dir, &config, &["--sys-interval", "0"]);
    let port = broker.port("mqtt", 0);
    let mut steady = Cl::from(RawClient::v311(port, "steady").await);

    let storm: Vec<_> = (0..DEVICES)
        .map(|i| {
            tokio::spawn(async move {
                let connect = with_user(
                    Connect::v311(&format!("dev{i}")),
                    &format!("dev{i}"),
                    "device-secret",
                );
                let (_c, code) = connack(port, &connect).await;
                code
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut sent: u16 = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sent < 5 || !storm.iter().all(|t| t.is_finished()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the CONNECTs did not finish"
        );
        sent += 1;
        let t = std::time::Instant::now();
        assert_eq!(publish(&mut steady, sent, "steady/t", b"x").await, 0);
        worst = worst.max(t.elapsed());
    }
    for task in storm {
        assert_eq!(task.await.expect("connect task"), 0, "a device was refused");
    }
    println!("{sent} PUBACKs during the storm, worst {worst:?}");
    assert!(
        worst < Duration::from_millis(200),
        "an unrelated PUBACK waited {worst:?} behind password checks"
    );
}

// ---------------------------------------------------------------- ACLs

const USERS: &[(&str, &str)] = &[
    ("alice", "pw-a"),
    ("bob", "pw-b"),
    ("ops", "pw-o"),
    ("+", "pw-plus"),
    ("a/#", "pw-slash"),
];

const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic read r/#
topic write w/#
topic readwrite rw/#
topic rw2/#
topic deny rw/secret
topic read $SYS/#

user bob
topic readwrite #

user ops
topic read $DLQ/#
topic read $SYS/broker/#

pattern readwrite clients/%c/#
pattern read users/%u/inbox
pattern write users/%u/outbox
";

#[tokio::test]
async fn acl_read_write_readwrite_and_deny_v5() {
    let a = Auth::start(USERS, Some(ACL)).await;
    let port = a.open();
    let mut alice = login(port, Connect::v5("alice"), "alice", "pw-a").await;
    let mut bob = login(port, Connect::v5("bob"), "bob", "pw-b").await;
    let n = NOT_AUTHORIZED_V5;
    for (filter, want) in [
        ("r/#", 1),
        ("r/x", 1),
        ("w/#", n),
        ("rw/#", 1),
        ("rw2/+", 1),
        ("rw/secret", n),
        ("other/#", n),
        ("#", n),
        ("public/#", n), // anonymous rules are not alice's
    ] {
        assert_eq!(
            alice.subscribe(1, filter, 1).await,
            vec![want],
            "alice SUBSCRIBE {filter}"
        );
    }
    for (topic, ok) in [
        ("w/x", true),
        ("rw/x", true),
        ("rw2/x", true),
        ("r/x", false),
        ("rw/secret", false),
        ("other", false),
    ] {
        let code = publish(&mut alice, 2, topic, b"x").await;
        if ok {
            assert!(accepted(code), "alice PUBLISH {topic}: {code:#x}");
        } else {
            assert_eq!(code, n, "alice PUBLISH {topic}");
        }
    }
    // Deliveries are checked too: alice holds rw/# but may not read rw/secret.
    let mut alice_sub = login(port, Connect::v5("alice-sub"), "alice", "pw-a").await;
    assert_eq!(alice_sub.subscribe(1, "rw/#", 1).await, vec![1]);
    assert!(accepted(publish(&mut bob, 3, "rw/secret", b"s").await));
    assert!(accepted(publish(&mut bob, 4, "rw/public", b"p").await));
    assert_eq!(next_message(&mut alice_sub).await.0, "rw/public");
    // What alice's refused publishes would have matched never reached bob.
    assert_eq!(bob.subscribe(5, "r/#", 1).await, vec![1]);
    assert_eq!(publish(&mut alice, 6, "r/denied", b"x").await, n);
    assert_eq!(bob.subscribe(8, "w/#", 1).await, vec![1]);
    assert!(accepted(publish(&mut alice, 9, "w/allowed", b"z").await));
    let (topic, payload) = next_message(&mut bob).await;
    assert_eq!((topic.as_str(), &payload[..]), ("w/allowed", &b"z"[..]));
}

#[tokio::test]
async fn acl_refusals_on_3_1_1_are_acked_and_dropped() {
    let a = Auth::start(USERS, Some(ACL)).await;
    let port = a.open();
    let mut alice = login(port, Connect::v311("alice"), "alice", "pw-a").await;
    let mut bob = login(port, Connect::v311("bob"), "bob", "pw-b").await;
    assert_eq!(
        alice.subscribe(1, "w/#", 1).await,
        vec![SUBACK_FAILURE_V311]
    );
    assert_eq!(alice.subscribe(2, "r/#", 1).await, vec![1]);
    assert_eq!(bob.subscribe(1, "r/#", 1).await, vec![1]);
    // Refused: acknowledged (3.1.1 has no way to say no) and not delivered.
    assert_eq!(publish(&mut alice, 3, "r/forbidden", b"x").await, 0);
    assert!(accepted(publish(&mut bob, 2, "r/ok", b"y").await));
    assert_eq!(next_message(&mut bob).await.0, "r/ok");
    assert_eq!(next_message(&mut alice).await.0, "r/ok");
    alice.ping().await;
    // Anonymous clients get the rules before the first `user` line.
    let mut anon = Cl::from(RawClient::v311(port, "anon").await);
    assert_eq!(anon.subscribe(1, "public/#", 1).await, vec![1]);
    assert_eq!(anon.subscribe(2, "r/#", 1).await, vec![SUBACK_FAILURE_V311]);
    assert_eq!(publish(&mut anon, 3, "public/x", b"x").await, 0);
    assert!(accepted(publish(&mut bob, 3, "public/y", b"y").await));
    assert_eq!(next_message(&mut anon).await.0, "public/y");
}

#[tokio::test]
async fn acl_patterns_with_client_id_and_username() {
    let a = Auth::start(USERS, Some(ACL)).await;
    let port = a.open();
    let n = NOT_AUTHORIZED_V5;
    let mut c = login(port, Connect::v5("dev7"), "alice", "pw-a").await;
    assert_eq!(c.subscribe(1, "clients/dev7/#", 1).await, vec![1]);
    assert_eq!(c.subscribe(2, "clients/dev8/#", 1).await, vec![n]);
    assert_eq!(c.subscribe(3, "clients/+/#", 1).await, vec![n]);
    assert!(accepted(publish(&mut c, 4, "clients/dev7/up", b"x").await));
    assert_eq!(next_message(&mut c).await.0, "clients/dev7/up");
    assert_eq!(publish(&mut c, 5, "clients/dev8/up", b"x").await, n);
    assert_eq!(c.subscribe(6, "users/alice/inbox", 1).await, vec![1]);
    assert_eq!(c.subscribe(7, "users/bob/inbox", 1).await, vec![n]);
    assert_eq!(c.subscribe(8, "users/+/inbox", 1).await, vec![n]);
    assert_eq!(c.subscribe(9, "users/alice/outbox", 1).await, vec![n]);
    assert!(accepted(
        publish(&mut c, 10, "users/alice/outbox", b"x").await
    ));
    assert_eq!(publish(&mut c, 11, "users/alice/inbox", b"x").await, n);
    assert_eq!(publish(&mut c, 12, "users/bob/outbox", b"x").await, n);
    // %c applies to anonymous clients; %u does not.
    let mut anon = Cl::from(RawClient::v5(port, "dev9").await);
    assert_eq!(anon.subscribe(1, "clients/dev9/#", 1).await, vec![1]);
    assert_eq!(anon.subscribe(2, "users/alice/inbox", 1).await, vec![n]);
    assert!(accepted(
        publish(&mut anon, 3, "clients/dev9/x", b"x").await
    ));
}

#[tokio::test]
async fn acl_patterns_cannot_be_widened_by_the_username_or_client_id() {
    let a = Auth::start(USERS, Some(ACL)).await;
    let port = a.open();
    let n = NOT_AUTHORIZED_V5;
    // Usernames that are wildcards or contain levels. (A user called `#` cannot log in
    // at all: its password line starts with `#`, a comment to mosquitto and to sluice.)
    for (user, pw) in [("+", "pw-plus"), ("a/#", "pw-slash")] {
        let mut c = login(port, Connect::v5("plain-id"), user, pw).await;
        for filter in [
            "users/+/inbox",
            "users/#",
            "users/alice/inbox",
            "users/a/#",
            "users/a/inbox",
        ] {
            assert_eq!(
                c.subscribe(1, filter, 1).await,
                vec![n],
                "user {user:?} SUBSCRIBE {filter}"
            );
        }
        for topic in ["users/alice/outbox", "users/a/outbox", "users/a/x/outbox"] {
            assert_eq!(
                publish(&mut c, 2, topic, b"x").await,
                n,
                "user {user:?} PUBLISH {topic}"
            );
        }
    }
    // Client ids likewise.
    for id in ["+", "#", "a/b", "dev7/#"] {
        let mut c = login(port, Connect::v5(id), "alice", "pw-a").await;
        for filter in ["clients/+/#", "clients/#", "clients/dev7/#", "clients/a/b"] {
            assert_eq!(
                c.subscribe(1, filter, 1).await,
                vec![n],
                "client id {id:?} SUBSCRIBE {filter}"
            );
        }
        for topic in ["clients/a/b", "clients/dev7/x"] {
            assert_eq!(
                publish(&mut c, 2, topic, b"x").await,
                n,
                "client id {id:?} PUBLISH {topic}"
            );
        }
    }
}

#[tokio::test]
async fn sys_and_dlq_topics_are_governed_by_the_acl() {
    let a = Auth::start(USERS, Some(ACL)).await;
    let port = a.open();
    let n = NOT_AUTHORIZED_V5;
    // `#` (bob) never covers `$` topics; explicit `$` rules do.
    let mut bob = login(port, Connect::v5("bob"), "bob", "pw-b").await;
    for filter in ["$SYS/#", "$DLQ/#", "$SYS/broker/uptime", "+/broker"] {
        let want = if filter == "+/broker" { 1 } else { n };
        assert_eq!(
            bob.subscribe(1, filter, 1).await,
            vec![want],
            "bob {filter}"
        );
    }
    let mut alice = login(port, Connect::v5("alice"), "alice", "pw-a").await;
    assert_eq!(alice.subscribe(1, "$SYS/#", 1).await, vec![1]);
    assert_eq!(alice.subscribe(2, "$DLQ/#", 1).await, vec![n]);
    let mut ops = login(port, Connect::v5("ops"), "ops", "pw-o").await;
    assert_eq!(ops.subscribe(1, "$DLQ/#", 1).await, vec![1]);
    assert_eq!(ops.subscribe(2, "$SYS/broker/#", 1).await, vec![1]);
    assert_eq!(ops.subscribe(3, "$SYS/#", 1).await, vec![n]);
    // Nobody may publish to `$` topics, whatever the ACL grants.
    for (c, who) in [(&mut alice, "alice"), (&mut ops, "ops"), (&mut bob, "bob")] {
        for topic in ["$SYS/broker/uptime", "$DLQ/no_subscribers/x"] {
            assert_eq!(publish(c, 9, topic, b"x").await, n, "{who} PUBLISH {topic}");
        }
    }
    // A dead letter reaches ops (who may read $DLQ/#), with the original payload.
    assert_eq!(
        publish(&mut bob, 10, "nobody/listens", b"lost?").await,
        0x10,
        "no matching subscribers"
    );
    let (topic, payload) = next_message(&mut ops).await;
    assert_eq!(topic, "$DLQ/no_subscribers/nobody/listens");
    assert_eq!(payload, b"lost?");
}

#[tokio::test]
async fn dead_letters_survive_a_drain_attempt_without_dlq_access() {
    let a = Auth::start(USERS, Some(ACL)).await;
    let port = a.open();
    let mut bob = login(port, Connect::v5("bob"), "bob", "pw-b").await;
    assert_eq!(publish(&mut bob, 1, "nobody/here", b"keep me").await, 0x10);
    // bob may not read $DLQ/#, but claims the dead-letter session's client id.
    let thief = with_user(Connect::v311("sluice-dlq").clean(false), "bob", "pw-b");
    let (mut t, code) = connack(port, &thief).await;
    if code == 0 {
        // Whatever it is sent must not include the dead letter.
        match t.recv_within(Duration::from_millis(500)).await {
            Recv::Packet(p) if p.kind() == PUBLISH => {
                panic!("bob received a dead letter: {:?}", p.publish(false))
            }
            _ => {}
        }
        t.send(&packet::DISCONNECT).await;
        t.expect_closed().await;
    }
    // ops drains it and gets the message.
    let drain = with_user(Connect::v311("sluice-dlq").clean(false), "ops", "pw-o");
    let mut ops = Cl::from(RawClient::handshake(port, &drain).await.0);
    let (topic, payload) = next_message(&mut ops).await;
    assert_eq!(topic, "$DLQ/no_subscribers/nobody/here");
    assert_eq!(payload, b"keep me");
}

#[tokio::test]
async fn sighup_reloads_the_acl_and_rechecks_queued_messages() {
    let acl = "user alice\ntopic readwrite feed/#\nuser bob\ntopic readwrite #\n";
    let a = Auth::start(&[("alice", "pw-a"), ("bob", "pw-b")], Some(acl)).await;
    let port = a.open();
    let n = NOT_AUTHORIZED_V5;
    // alice: a live connection and a persistent session holding queued messages.
    let mut live = login(port, Connect::v5("alice-live"), "alice", "pw-a").await;
    assert_eq!(live.subscribe(1, "feed/#", 1).await, vec![1]);
    assert_eq!(publish(&mut live, 2, "news/x", b"x").await, n);
    let persistent = with_user(Connect::v311("alice-away").clean(false), "alice", "pw-a");
    let mut away = RawClient::handshake(port, &persistent).await.0;
    assert_eq!(away.subscribe(1, "feed/#", 1).await, vec![1]);
    away.send(&packet::DISCONNECT).await;
    away.expect_closed().await;
    let mut bob = login(port, Connect::v5("bob"), "bob", "pw-b").await;
    assert!(accepted(
        publish(&mut bob, 1, "feed/secret", b"queued").await
    ));
    assert_eq!(next_message(&mut live).await.0, "feed/secret");

    // feed/secret becomes off limits; news/# opens up.
    write_file(
        a.broker.dir(),
        "acl",
        "user alice\ntopic readwrite feed/#\ntopic deny feed/secret\ntopic readwrite news/#\n\
         user bob\ntopic readwrite #\n",
    );
    a.broker.reload("password and ACL files reloaded").await;
    live.ping().await;
    assert!(accepted(publish(&mut live, 3, "news/x", b"x").await));
    assert!(accepted(publish(&mut bob, 2, "feed/secret", b"new").await));
    assert!(accepted(publish(&mut bob, 3, "feed/open", b"ok").await));
    assert_eq!(next_message(&mut live).await.0, "feed/open");
    // The message queued before the reload is checked against the new ACL on delivery.
    let mut away = Cl::from(RawClient::handshake(port, &persistent).await.0);
    let (topic, payload) = next_message(&mut away).await;
    assert_eq!(
        (topic.as_str(), &payload[..]),
        ("feed/open", &b"ok"[..]),
        "a queued feed/secret message was delivered after the ACL denied it"
    );

    // A malformed ACL keeps the current one.
    write_file(
        a.broker.dir(),
        "acl",
        "user alice\ntopic frobnicate feed/#\n",
    );
    a.broker.reload("reload failed").await;
    assert!(accepted(publish(&mut live, 4, "news/y", b"y").await));
    assert_eq!(publish(&mut live, 5, "feed/secret", b"y").await, n);
}

#[tokio::test]
async fn a_will_is_subject_to_the_acl() {
    let a = Auth::start(USERS, Some(ACL)).await;
    let port = a.open();
    let mut bob = login(port, Connect::v311("bob"), "bob", "pw-b").await;
    assert_eq!(bob.subscribe(1, "#", 1).await, vec![1]);
    // alice may write w/# but not r/#. Her connection ends with a protocol error (a
    // second CONNECT), which publishes the will before the broker closes the socket.
    for (n, (topic, allowed)) in [("w/will", true), ("r/will", false)]
        .into_iter()
        .enumerate()
    {
        let mut will = packet::Will::new(topic, b"gone");
        will.qos = 1;
        let connect = with_user(Connect::v311(&format!("alice-{n}")), "alice", "pw-a").will(will);
        let (mut c, code) = connack(port, &connect).await;
        if code == 0 {
            c.send(&Connect::v311("again").build()).await;
            c.expect_closed().await;
        } else {
            assert!(!allowed, "a permitted will was refused with {code}");
            assert_eq!(code, NOT_AUTHORIZED_V311, "CONNACK for a forbidden will");
        }
        // A marker published after the close: bob's queue is FIFO, so a will that was
        // published reaches him first.
        let id = 10 + n as u16;
        assert!(accepted(publish(&mut bob, id, "marker", b"m").await));
        let (first, _) = next_message(&mut bob).await;
        if allowed {
            assert_eq!(first, topic, "the permitted will was not published");
            assert_eq!(next_message(&mut bob).await.0, "marker");
        } else {
            assert_eq!(
                first, "marker",
                "alice's will was published to {topic}, which the ACL forbids her to write"
            );
        }
    }
}
