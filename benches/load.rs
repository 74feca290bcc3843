//! `load`: the MQTT 3.1.1 load generator used to compare sluice with mosquitto and rumqttd.
//!
//! It speaks raw TCP with its own minimal MQTT encoding (no client library in the hot path),
//! batches its writes, sets TCP_NODELAY, and prints ONE JSON line per run on stdout.
//!
//! ```text
//! cargo bench --bench load -- fanin --qos 1 --publishers 10 --duration 10
//! cargo bench --bench load -- conns --connections 10000 --broker-pid 1234
//! ```
//!
//! Scenarios: `fanin`, `fanout`, `pairs`, `latency`, `conns`, `persist`, `subs`, `storm`
//! (see `USAGE`).
//! Every run targets only 127.0.0.1, is bounded in time (`--duration`, capped) and in count
//! (`--max-msgs`, `--connections` capped), and stops by itself.
//!
//! `cargo test --all-targets` runs bench targets without arguments: with no scenario the tool
//! checks its encoder, framer and histogram, and exits 0 without touching the network.
//!
//! For 10k+ connections it raises its RLIMIT_NOFILE soft limit to the hard limit; past that,
//! `ulimit -n` (hard) must be raised by whoever starts it. `benches/compare.sh` runs it
//! against sluice, mosquitto and rumqttd.

use bytes::{Buf, BytesMut};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;

const USAGE: &str = "\
usage: load SCENARIO [options]          (cargo bench --bench load -- SCENARIO [options])

scenarios:
  fanin     P publishers -> 1 subscriber on sensors/+/temp (publisher i sends to sensors/i/temp)
  fanout    1 publisher -> N subscribers on one topic
  pairs     K publisher/subscriber pairs, one topic per pair
  latency   1 publisher at a fixed rate -> 1 subscriber; publish->receive latency percentiles
  conns     C idle connections: connects/s and broker RSS growth per connection
  subs      S subscriptions (exact filters) over N clients: broker RSS and CPU per
            subscription, then QoS 0 publishes that each match one of them for --duration:
            broker CPU per publish (trie match + one delivery) at that trie size
  persist   fanin at QoS 1 to a persistent subscriber (fixed client id, clean session 0)
  storm     C devices with a username and password (--user-prefix, --password) connect at
            once (--connect-concurrency in flight): the broker's first sight of them
            (\"first\"); then --waves times all disconnect and connect again at once (a
            reconnect storm, \"again\"). Throughout, an unrelated anonymous client publishes
            QoS 1, one at a time: connects/s of each phase and that client's PUBACK latency
            (p50, p99, worst)

options:
  --qos 0|1            QoS of publishes and subscriptions (default 0; persist forces 1)
  --payload BYTES      payload size (default 64; >= 8 carries a send timestamp)
  --duration SECS      publishing time (default 10, at most 600)
  --host 127.0.0.1     only 127.0.0.1 / localhost is accepted
  --port PORT          broker port (default 1883)
  --sub-port PORT      subscribers connect here instead (another node of a cluster)
  --sub-ports P1,P2    subscribers connect to these ports round-robin (default --port)
  --publishers P       fanin/persist publishers (default 10)
  --subscribers N      fanout subscribers (default 100)
  --pairs K            pairs (default 50)
  --inflight W         QoS 1 unacked PUBLISH window per publisher (default 100)
  --rate MSGS          total publish rate, msgs/s (latency default 10000, else unlimited)
  --connections C      conns scenario connections (default 10000, at most 60000); storm
                       devices (default 1000 for storm)
  --user-prefix P      storm: device i connects as username P<i>, client id P<i> (default dev)
  --password PW        storm: every device's password (default device-secret)
  --waves N            storm: reconnect waves after the first (default 10)
  --subscriptions S    subs scenario subscriptions (default 100000, at most 2000000), over
                       --subscribers clients (the broker must allow S / N per client)
  --connect-concurrency K  conns: CONNECT handshakes in flight at once (default 64)
  --broker-pid PID     read the broker's VmRSS and CPU time from /proc/PID
  --label NAME         broker name copied into the JSON (default \"broker\")
  --drain SECS         after publishing stops, wait at most this long for deliveries (default 5)
  --max-msgs N         stop publishing after N messages in total (default 200000000)
  --threads T          tokio worker threads (default 1: current-thread runtime)
  --ws                 connect over WebSocket (ws://127.0.0.1:PORT/mqtt, subprotocol mqtt)

output (one JSON line): sent, acked (QoS 1), expected deliveries, received (including the
drain after publishing stops), received_in_window and msgs_per_sec (deliveries within the
--duration window), undelivered_pct (expected but not received by the end of the drain:
dropped by the broker or still queued), latency_us percentiles (send timestamp in the payload),
tool_cpu_s/tool_cpu_pct/tool_saturated, broker_cpu_s and VmRSS with --broker-pid, errors.
";

/// Messages encoded per write when the window/rate allows.
const BATCH: u64 = 256;
const MAX_DURATION: u64 = 600;
const MAX_CONNECTIONS: usize = 60_000;
const MAX_CLIENTS: usize = 10_000;
const MAX_SUBSCRIPTIONS: usize = 2_000_000;
/// Topic filters per SUBSCRIBE packet in the subs scenario.
const FILTERS_PER_SUBSCRIBE: usize = 64;
/// Keepalive sent in every CONNECT: long rather than 0 (rumqttd refuses 0), and longer than
/// any run (at most MAX_DURATION + drain), so no PINGREQ is ever due.
const KEEPALIVE: u16 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Fanin,
    Fanout,
    Pairs,
    Latency,
    Conns,
    Persist,
    Subs,
    Storm,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Latency => "latency",
            Scenario::Conns => "conns",
            Scenario::Persist => "persist",
            Scenario::Subs => "subs",
            Scenario::Storm => "storm",
        }
    }
}

#[derive(Debug, Clone)]
struct Opts {
    scenario: Scenario,
    qos: u8,
    payload: usize,
    duration: u64,
    port: u16,
    /// Where subscribers connect, round-robin; empty: `port`.
    sub_ports: Vec<u16>,
    publishers: usize,
    subscribers: usize,
    pairs: usize,
    inflight: u64,
    rate: Option<f64>,
    connections: usize,
    subscriptions: usize,
    conn_concurrency: usize,
    broker_pid: Option<u32>,
    label: String,
    drain: u64,
    max_msgs: u64,
    threads: usize,
    user_prefix: String,
    password: String,
    waves: usize,
    /// MQTT over WebSocket (path /mqtt) instead of plain TCP.
    ws: bool,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let scenario = match args.first().map(String::as_str) {
        Some("fanin") => Scenario::Fanin,
        Some("fanout") => Scenario::Fanout,
        Some("pairs") => Scenario::Pairs,
        Some("latency") => Scenario::Latency,
        Some("conns") => Scenario::Conns,
        Some("persist") => Scenario::Persist,
        Some("subs") => Scenario::Subs,
        Some("storm") => Scenario::Storm,
        Some("-h") | Some("--help") => return Err(String::new()),
        Some(other) => return Err(format!("unknown scenario {other:?}")),
        None => return Err("no scenario".into()),
    };
    let mut o = Opts {
        scenario,
        qos: 0,
        payload: 64,
        duration: 10,
        port: 1883,
        sub_ports: Vec::new(),
        publishers: 10,
        subscribers: 100,
        pairs: 50,
        inflight: 100,
        rate: None,
        connections: if scenario == Scenario::Storm {
            1_000
        } else {
            10_000
        },
        subscriptions: 100_000,
        conn_concurrency: 64,
        broker_pid: None,
        label: "broker".into(),
        drain: 5,
        max_msgs: 200_000_000,
        threads: 1,
        user_prefix: "dev".into(),
        password: "device-secret".into(),
        waves: 10,
        ws: false,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: bad number {v:?}"))
        }
        match flag.as_str() {
            "--qos" => o.qos = num(flag, val()?)?,
            "--payload" => o.payload = num(flag, val()?)?,
            "--duration" => o.duration = num(flag, val()?)?,
            "--host" => {
                let h = val()?;
                if h != "127.0.0.1" && h != "localhost" {
                    return Err(format!(
                        "--host {h}: this tool only targets 127.0.0.1 (loopback)"
                    ));
                }
            }
            "--port" => o.port = num(flag, val()?)?,
            "--sub-port" => o.sub_ports = vec![num(flag, val()?)?],
            "--sub-ports" => {
                o.sub_ports = val()?
                    .split(',')
                    .map(|p| num(flag, p.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--publishers" => o.publishers = num(flag, val()?)?,
            "--subscribers" => o.subscribers = num(flag, val()?)?,
            "--pairs" => o.pairs = num(flag, val()?)?,
            "--inflight" => o.inflight = num(flag, val()?)?,
            "--rate" => o.rate = Some(num(flag, val()?)?),
            "--connections" => o.connections = num(flag, val()?)?,
            "--subscriptions" => o.subscriptions = num(flag, val()?)?,
            "--connect-concurrency" => o.conn_concurrency = num(flag, val()?)?,
            "--broker-pid" => o.broker_pid = Some(num(flag, val()?)?),
            "--label" => o.label = val()?,
            "--drain" => o.drain = num(flag, val()?)?,
            "--max-msgs" => o.max_msgs = num(flag, val()?)?,
            "--threads" => o.threads = num(flag, val()?)?,
            "--user-prefix" => o.user_prefix = val()?,
            "--password" => o.password = val()?,
            "--waves" => o.waves = num(flag, val()?)?,
            "--ws" => o.ws = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.scenario == Scenario::Persist {
        o.qos = 1;
    }
    if o.scenario == Scenario::Latency && o.rate.is_none() {
        o.rate = Some(10_000.0);
    }
    if o.qos > 1 {
        return Err("--qos must be 0 or 1".into());
    }
    if o.duration == 0 || o.duration > MAX_DURATION {
        return Err(format!("--duration must be 1..={MAX_DURATION}"));
    }
    if o.drain > 60 {
        return Err("--drain must be at most 60".into());
    }
    if o.payload > 1 << 20 {
        return Err("--payload must be at most 1 MiB".into());
    }
    if o.inflight == 0 || o.inflight > 65_000 {
        return Err("--inflight must be 1..=65000".into());
    }
    if let Some(r) = o.rate {
        if !(r > 0.0 && r <= 10_000_000.0) {
            return Err("--rate must be in (0, 1e7]".into());
        }
    }
    if o.connections == 0 || o.connections > MAX_CONNECTIONS {
        return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
    }
    for (name, v) in [
        ("--publishers", o.publishers),
        ("--subscribers", o.subscribers),
        ("--pairs", o.pairs),
    ] {
        if v == 0 || v > MAX_CLIENTS {
            return Err(format!("{name} must be 1..={MAX_CLIENTS}"));
        }
    }
    if o.subscriptions == 0 || o.subscriptions > MAX_SUBSCRIPTIONS {
        return Err(format!("--subscriptions must be 1..={MAX_SUBSCRIPTIONS}"));
    }
    if o.conn_concurrency == 0 || o.conn_concurrency > 4096 {
        return Err("--connect-concurrency must be 1..=4096".into());
    }
    if o.waves == 0 || o.waves > 1000 {
        return Err("--waves must be 1..=1000".into());
    }
    if o.threads == 0 || o.threads > 64 {
        return Err("--threads must be 1..=64".into());
    }
    Ok(o)
}

fn main() {
    // `cargo bench` appends `--bench`; `cargo test --all-targets` runs us with no arguments.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.is_empty() {
        self_check();
        eprintln!("load: no scenario given, no load generated (--help for usage)");
        return;
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("load: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if opts.ws {
        let _ = WS_PATH.set(sluice::config::DEFAULT_WS_PATH.to_owned());
    }
    let nofile = raise_nofile_limit();
    // Hard stop, whatever the broker does: publishing (or connecting) + drain + set-up slack.
    let limit = opts.duration.max(30) + opts.drain + 120;
    let (scenario, label) = (opts.scenario.name(), opts.label.clone());
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(limit));
        println!(
            "{}",
            Json::new()
                .str("scenario", scenario)
                .str("broker", &label)
                .num("errors", 1)
                .strs(
                    "error_samples",
                    &[format!("run exceeded its {limit} s bound")]
                )
                .done()
        );
        std::process::exit(3);
    });
    let mut builder = if opts.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(opts.threads);
        b
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let json = rt.block_on(run(opts, nofile));
    println!("{json}");
}

// ---------------------------------------------------------------------------------------
// Process accounting

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit in force.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

/// User + system CPU seconds this process has used.
fn self_cpu_secs() -> f64 {
    // SAFETY: zeroed rusage is a valid out-parameter for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU seconds of another process, from /proc/PID/stat.
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) / hz)
}

/// VmRSS of a process in KiB, from /proc/PID/status.
fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Minimal MQTT 3.1.1 encoding

fn put_remaining_len(buf: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

fn connect_packet(client_id: &str, clean_session: bool, keepalive: u16) -> Vec<u8> {
    connect_packet_as(client_id, clean_session, keepalive, None)
}

/// CONNECT with a username and password when `credentials` is given.
fn connect_packet_as(
    client_id: &str,
    clean_session: bool,
    keepalive: u16,
    credentials: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, b"MQTT");
    body.push(4); // protocol level: 3.1.1
    let login = if credentials.is_some() { 0xC0 } else { 0 };
    body.push(login | if clean_session { 0x02 } else { 0x00 });
    body.extend_from_slice(&keepalive.to_be_bytes());
    put_str(&mut body, client_id.as_bytes());
    if let Some((user, password)) = credentials {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, password.as_bytes());
    }
    let mut p = vec![0x10];
    put_remaining_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

fn subscribe_packet(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_str(&mut body, filter.as_bytes());
    body.push(qos);
    let mut p = vec![0x82];
    put_remaining_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// A PUBLISH with a fixed topic and payload size: encoded once, then copied and patched
/// (packet id, send timestamp) per message.
struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the packet id (QoS 1 only).
    pid_at: Option<usize>,
    /// Offset of the 8-byte little-endian send timestamp (payload >= 8 bytes).
    ts_at: Option<usize>,
}

impl PublishTemplate {
    fn new(topic: &str, qos: u8, payload: usize) -> Self {
        let mut body = Vec::with_capacity(4 + topic.len() + payload);
        put_str(&mut body, topic.as_bytes());
        let mut pid_at = None;
        if qos > 0 {
            pid_at = Some(body.len());
            body.extend_from_slice(&[0, 0]);
        }
        let payload_at = body.len();
        body.resize(payload_at + payload, b'x');
        let mut bytes = vec![0x30 | (qos << 1)];
        put_remaining_len(&mut bytes, body.len());
        let header = bytes.len();
        bytes.extend_from_slice(&body);
        PublishTemplate {
            pid_at: pid_at.map(|o| o + header),
            ts_at: (payload >= 8).then_some(payload_at + header),
            bytes,
        }
    }

    fn encode(&self, out: &mut Vec<u8>, packet_id: u16, ts_nanos: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.pid_at {
            out[start + at..start + at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        if let Some(at) = self.ts_at {
            out[start + at..start + at + 8].copy_from_slice(&ts_nanos.to_le_bytes());
        }
    }
}

/// One complete packet at the front of `buf`: (first byte, body offset, total length).
fn frame(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        if i > 4 {
            return Err("malformed remaining length".into());
        }
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7F) as usize) << shift;
        shift += 7;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((buf[0], i, i + len)))
}

fn next_packet_id(id: &mut u16) -> u16 {
    *id = if *id == u16::MAX { 1 } else { *id + 1 };
    *id
}

// ---------------------------------------------------------------------------------------
// Connections

struct Conn {
    rd: Rd,
    wr: Wr,
    rbuf: BytesMut,
}

/// `--ws`: MQTT over WebSocket at this path instead of plain TCP.
static WS_PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

type WsTcp = sluice::listener::ws::WsStream<TcpStream>;

/// The read side of a connection: TCP, or WebSocket (`--ws`).
enum Rd {
    Tcp(OwnedReadHalf),
    Ws(tokio::io::ReadHalf<WsTcp>),
}

/// An idle connection of the `conns` scenario.
enum Idle {
    Tcp(TcpStream),
    Ws(Box<WsTcp>),
}

impl tokio::io::AsyncRead for Idle {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Idle::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Idle::Ws(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Idle {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Idle::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Idle::Ws(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Idle::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Idle::Ws(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Idle::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Idle::Ws(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The write side of a connection.
enum Wr {
    Tcp(OwnedWriteHalf),
    Ws(tokio::io::WriteHalf<WsTcp>),
}

impl Rd {
    /// Reads what is already there without waiting (WouldBlock when nothing is).
    fn try_read_buf(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        use futures::FutureExt;
        match self {
            Rd::Tcp(r) => r.try_read_buf(buf),
            Rd::Ws(r) => r
                .read_buf(buf)
                .now_or_never()
                .unwrap_or_else(|| Err(std::io::ErrorKind::WouldBlock.into())),
        }
    }
}

impl tokio::io::AsyncRead for Rd {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Rd::Tcp(r) => std::pin::Pin::new(r).poll_read(cx, buf),
            Rd::Ws(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Wr {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Wr::Tcp(w) => std::pin::Pin::new(w).poll_write(cx, buf),
            Wr::Ws(w) => std::pin::Pin::new(w).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wr::Tcp(w) => std::pin::Pin::new(w).poll_flush(cx),
            Wr::Ws(w) => std::pin::Pin::new(w).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wr::Tcp(w) => std::pin::Pin::new(w).poll_shutdown(cx),
            Wr::Ws(w) => std::pin::Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
        keepalive: u16,
    ) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| describe_io("connect", &e))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (rd, wr) = match WS_PATH.get() {
            None => {
                let (rd, wr) = stream.into_split();
                (Rd::Tcp(rd), Wr::Tcp(wr))
            }
            Some(path) => {
                let ws = sluice::listener::ws::connect(stream, &addr.to_string(), path)
                    .await
                    .map_err(|e| format!("{client_id}: {e}"))?;
                let (rd, wr) = tokio::io::split(ws);
                (Rd::Ws(rd), Wr::Ws(wr))
            }
        };
        let mut c = Conn {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(64 * 1024),
        };
        c.wr.write_all(&connect_packet(client_id, clean, keepalive))
            .await
            .map_err(|e| describe_io("CONNECT", &e))?;
        let (hdr, body) = c.expect(2, "CONNACK").await?;
        if hdr != 0x20 || body.len() != 2 || body[1] != 0 {
            return Err(format!("{client_id}: CONNACK refused: {body:?}"));
        }
        Ok(c)
    }

    /// Reads packets until one of type `kind` arrives, dropping others; returns it.
    async fn expect(&mut self, kind: u8, what: &str) -> Result<(u8, Vec<u8>), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some((hdr, body_at, total)) = frame(&self.rbuf)? {
                let body = self.rbuf[body_at..total].to_vec();
                self.rbuf.advance(total);
                if hdr >> 4 == kind {
                    return Ok((hdr, body));
                }
            }
            match tokio::time::timeout_at(deadline, self.rd.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(format!("no {what} within 10 s")),
                Ok(Ok(0)) => return Err(format!("broker closed the connection before {what}")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(describe_io(what, &e)),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) -> Result<(), String> {
        self.wr
            .write_all(&subscribe_packet(1, filter, qos))
            .await
            .map_err(|e| describe_io("SUBSCRIBE", &e))?;
        let (_, body) = self.expect(9, "SUBACK").await?;
        match body.get(2) {
            Some(&rc) if rc != 0x80 => Ok(()),
            _ => Err(format!("SUBACK refused {filter}: {body:?}")),
        }
    }

    /// Sends DISCONNECT and closes; gives up after 1 s (a broker that stopped reading
    /// must not hold the run past its bound).
    async fn disconnect(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            self.wr.write_all(&DISCONNECT).await?;
            self.wr.shutdown().await
        })
        .await;
    }
}

/// Names the limit behind an I/O error when there is one, so a run that ran out of file
/// descriptors or local ports says so instead of reporting a low number.
fn describe_io(what: &str, e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " -- the load tool hit its open-file limit (RLIMIT_NOFILE): raise `ulimit -n`"
        }
        Some(libc::EADDRNOTAVAIL) => {
            " -- out of local ports for 127.0.0.1 (see /proc/sys/net/ipv4/ip_local_port_range)"
        }
        Some(libc::ECONNREFUSED) => " -- broker not listening, or its accept backlog is full",
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => {
            " -- broker closed the connection (its fd limit or max connections?)"
        }
        _ => "",
    };
    format!("{what}: {e}{hint}")
}

// ---------------------------------------------------------------------------------------
// Latency histogram: log-linear buckets, 64 per power of two (~1.6% precision), in nanos.

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

#[derive(Clone)]
struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

impl Hist {
    fn new() -> Self {
        Hist {
            counts: vec![0; ((64 - SUB_BITS as usize) + 1) * SUB as usize],
            n: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            v as usize
        } else {
            let e = 63 - v.leading_zeros();
            let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
            ((e - SUB_BITS + 1) as u64 * SUB + sub) as usize
        }
    }

    fn value(idx: usize) -> u64 {
        let idx = idx as u64;
        if idx < SUB {
            idx
        } else {
            let e = idx / SUB + SUB_BITS as u64 - 1;
            let sub = idx % SUB;
            let width = 1u64 << (e - SUB_BITS as u64);
            ((SUB + sub) << (e - SUB_BITS as u64)) + width / 2
        }
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max = self.max.max(o.max);
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let target = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

// ---------------------------------------------------------------------------------------
// Publishers and subscribers

/// Counters shared between the tasks and the coordinator.
#[derive(Default)]
struct Shared {
    received: AtomicU64,
    received_in_window: AtomicU64,
    /// End of the measurement window, nanos since `base` (u64::MAX until publishing starts).
    window_end: AtomicU64,
}

struct SubResult {
    received: u64,
    hist: Hist,
    errors: Vec<String>,
}

async fn subscriber(
    mut conn: Conn,
    base: Instant,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut hist = Hist::new();
    let mut received = 0u64;
    let mut errors = Vec::new();
    let mut acks: Vec<u8> = Vec::with_capacity(4096);
    'outer: loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = conn.rd.read_buf(&mut conn.rbuf) => match r {
                Ok(0) => {
                    errors.push("subscriber: broker closed the connection".to_string());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    errors.push(describe_io("subscriber read", &e));
                    break;
                }
            },
        }
        let now = base.elapsed().as_nanos() as u64;
        let mut n = 0u64;
        loop {
            let (hdr, body_at, total) = match frame(&conn.rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    errors.push(format!("subscriber: {e}"));
                    break 'outer;
                }
            };
            if hdr >> 4 == 3 {
                let body = &conn.rbuf[body_at..total];
                let qos = (hdr >> 1) & 3;
                let tlen = match body.get(..2) {
                    Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
                    None => 0,
                };
                let mut at = 2 + tlen;
                if body.len() < at + if qos > 0 { 2 } else { 0 } {
                    errors.push("subscriber: malformed PUBLISH from the broker".into());
                    break 'outer;
                }
                if qos > 0 {
                    acks.extend_from_slice(&[0x40, 0x02, body[at], body[at + 1]]);
                    at += 2;
                }
                if let Some(ts) = body.get(at..at + 8) {
                    let sent = u64::from_le_bytes(ts.try_into().unwrap_or([0; 8]));
                    hist.record(now.saturating_sub(sent));
                }
                n += 1;
            }
            conn.rbuf.advance(total);
        }
        received += n;
        shared.received.fetch_add(n, Ordering::Relaxed);
        if now <= shared.window_end.load(Ordering::Relaxed) {
            shared.received_in_window.fetch_add(n, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            if let Err(e) = conn.wr.write_all(&acks).await {
                errors.push(describe_io("subscriber PUBACK", &e));
                break;
            }
            acks.clear();
        }
    }
    conn.disconnect().await;
    SubResult {
        received,
        hist,
        errors,
    }
}

struct PubParams {
    topic: String,
    qos: u8,
    payload: usize,
    inflight: u64,
    /// Messages per second for this publisher, if limited.
    rate: Option<f64>,
    max_msgs: u64,
    drain: Duration,
}

struct PubResult {
    sent: u64,
    acked: u64,
    errors: Vec<String>,
}

/// Counts PUBACKs at the front of `rbuf`.
fn take_acks(rbuf: &mut BytesMut) -> Result<u64, String> {
    let mut n = 0;
    while let Some((hdr, _, total)) = frame(rbuf)? {
        if hdr >> 4 == 4 {
            n += 1;
        }
        rbuf.advance(total);
    }
    Ok(n)
}

async fn publisher(
    mut conn: Conn,
    p: PubParams,
    base: Instant,
    start: Instant,
    end: Instant,
) -> PubResult {
    let tmpl = PublishTemplate::new(&p.topic, p.qos, p.payload);
    let mut wbuf: Vec<u8> = Vec::with_capacity(BATCH as usize * tmpl.bytes.len());
    let (mut sent, mut acked, mut pid) = (0u64, 0u64, 0u16);
    // The deadline cut a PUBLISH in half: the stream must not be used for a DISCONNECT.
    let mut truncated = false;
    let mut errors = Vec::new();
    let end_t = tokio::time::Instant::from_std(end);
    'run: loop {
        let now = Instant::now();
        if now >= end || sent >= p.max_msgs {
            break;
        }
        let mut can = if p.qos > 0 {
            p.inflight - (sent - acked)
        } else {
            BATCH
        };
        can = can.min(BATCH).min(p.max_msgs - sent);
        // Unthrottled QoS 1: refill the window in chunks, not one PUBLISH per PUBACK (a
        // broker that acks each message in its own segment would otherwise cost the tool a
        // syscall pair per message).
        if p.qos > 0 && p.rate.is_none() && sent > acked && can < (p.inflight / 4).clamp(1, BATCH) {
            can = 0;
        }
        let mut wake = end_t;
        if let Some(rate) = p.rate {
            let due = ((now - start).as_secs_f64() * rate) as u64 + 1;
            let allowed = due.saturating_sub(sent);
            if allowed < can {
                can = allowed;
                let next = start + Duration::from_secs_f64((sent + can + 1) as f64 / rate);
                wake = wake.min(tokio::time::Instant::from_std(next));
            }
        }
        if can > 0 {
            wbuf.clear();
            let ts = base.elapsed().as_nanos() as u64;
            for _ in 0..can {
                tmpl.encode(&mut wbuf, next_packet_id(&mut pid), ts);
            }
            // Writes stop at the deadline even when the broker stops reading (a QoS 0 flood
            // can fill the socket buffers for many seconds): count only whole messages.
            let mut off = 0;
            while off < wbuf.len() {
                match tokio::time::timeout_at(end_t, conn.wr.write(&wbuf[off..])).await {
                    Ok(Ok(0)) => {
                        errors.push("publisher: socket closed for writing".into());
                        break 'run;
                    }
                    Ok(Ok(n)) => off += n,
                    Ok(Err(e)) => {
                        errors.push(describe_io("publisher write", &e));
                        break 'run;
                    }
                    Err(_) => {
                        sent += (off / tmpl.bytes.len()) as u64;
                        truncated = off % tmpl.bytes.len() != 0;
                        break 'run;
                    }
                }
            }
            sent += can;
            if p.qos > 0 {
                // Pick up whatever PUBACKs are already here without waiting.
                loop {
                    match conn.rd.try_read_buf(&mut conn.rbuf) {
                        Ok(0) => {
                            errors.push("publisher: broker closed the connection".into());
                            break 'run;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            errors.push(describe_io("publisher read", &e));
                            break 'run;
                        }
                    }
                }
                match take_acks(&mut conn.rbuf) {
                    Ok(n) => acked += n,
                    Err(e) => {
                        errors.push(e);
                        break;
                    }
                }
            }
            continue;
        }
        if p.qos > 0 && sent > acked {
            tokio::select! {
                r = conn.rd.read_buf(&mut conn.rbuf) => match r {
                    Ok(0) => {
                        errors.push("publisher: broker closed the connection".into());
                        break;
                    }
                    Ok(_) => match take_acks(&mut conn.rbuf) {
                        Ok(n) => acked += n,
                        Err(e) => {
                            errors.push(e);
                            break;
                        }
                    },
                    Err(e) => {
                        errors.push(describe_io("publisher read", &e));
                        break;
                    }
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        } else {
            tokio::time::sleep_until(wake).await;
        }
    }
    // Wait (bounded) for the last PUBACKs.
    if p.qos > 0 && errors.is_empty() {
        let deadline = tokio::time::Instant::now() + p.drain;
        while acked < sent {
            match tokio::time::timeout_at(deadline, conn.rd.read_buf(&mut conn.rbuf)).await {
                Ok(Ok(n)) if n > 0 => match take_acks(&mut conn.rbuf) {
                    Ok(n) => acked += n,
                    Err(e) => {
                        errors.push(e);
                        break;
                    }
                },
                Ok(Ok(_)) => {
                    errors.push("publisher: broker closed the connection".into());
                    break;
                }
                Ok(Err(e)) => {
                    errors.push(describe_io("publisher read", &e));
                    break;
                }
                Err(_) => {
                    errors.push(format!(
                        "publisher: {} PUBACKs missing after drain",
                        sent - acked
                    ));
                    break;
                }
            }
        }
    }
    if truncated {
        drop(conn);
    } else {
        conn.disconnect().await;
    }
    PubResult {
        sent,
        acked,
        errors,
    }
}

// ---------------------------------------------------------------------------------------
// Runs

/// A JSON object built field by field (values are numbers, or strings we escape).
struct Json(String);

impl Json {
    fn new() -> Self {
        Json(String::from("{"))
    }
    fn sep(&mut self) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
    }
    fn str(&mut self, k: &str, v: &str) -> &mut Self {
        self.sep();
        let _ = write!(self.0, "\"{k}\":\"{}\"", escape(v));
        self
    }
    fn num(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        self.sep();
        let _ = write!(self.0, "\"{k}\":{v}");
        self
    }
    fn f(&mut self, k: &str, v: f64, decimals: usize) -> &mut Self {
        self.sep();
        if v.is_finite() {
            let _ = write!(self.0, "\"{k}\":{v:.decimals$}");
        } else {
            let _ = write!(self.0, "\"{k}\":null");
        }
        self
    }
    fn opt(&mut self, k: &str, v: Option<impl std::fmt::Display>) -> &mut Self {
        match v {
            Some(v) => self.num(k, v),
            None => self.num(k, "null"),
        }
    }
    fn raw(&mut self, k: &str, v: &str) -> &mut Self {
        self.num(k, v)
    }
    fn strs(&mut self, k: &str, v: &[String]) -> &mut Self {
        let items: Vec<String> = v.iter().map(|s| format!("\"{}\"", escape(s))).collect();
        self.num(k, format!("[{}]", items.join(",")))
    }
    fn done(&mut self) -> String {
        self.0.push('}');
        std::mem::take(&mut self.0)
    }
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// Keeps the first few distinct error messages and counts all of them.
#[derive(Default)]
struct Errors {
    count: u64,
    samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, e: String) {
        self.count += 1;
        if self.samples.len() < 5 && !self.samples.contains(&e) {
            self.samples.push(e);
        }
    }
}

async fn run(o: Opts, nofile: u64) -> String {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, o.port));
    let started = Instant::now();
    let cpu0 = self_cpu_secs();
    let broker_cpu0 = o.broker_pid.and_then(proc_cpu_secs);
    let rss0 = o.broker_pid.and_then(proc_rss_kib);
    let mut j = Json::new();
    j.str("scenario", o.scenario.name())
        .str("broker", &o.label)
        .str("transport", if o.ws { "ws" } else { "tcp" })
        .num("qos", o.qos)
        .num("payload", o.payload)
        .num("duration_s", o.duration);
    let mut errors = Errors::default();
    if o.scenario == Scenario::Conns {
        run_conns(&o, addr, nofile, &mut j, &mut errors).await;
    } else if o.scenario == Scenario::Subs {
        run_subs(&o, addr, &mut j, &mut errors).await;
    } else if o.scenario == Scenario::Storm {
        run_storm(&o, addr, &mut j, &mut errors).await;
    } else {
        run_traffic(&o, addr, &mut j, &mut errors).await;
    }
    let cpu = self_cpu_secs() - cpu0;
    let elapsed = started.elapsed().as_secs_f64();
    // Above ~90% of the cores it may use, the tool, not the broker, may be the limit.
    j.f("elapsed_s", elapsed, 3)
        .f("tool_cpu_s", cpu, 3)
        .f("tool_cpu_pct", cpu * 100.0 / elapsed, 1)
        .num("tool_saturated", cpu / elapsed > 0.9 * o.threads as f64);
    if let (Some(pid), Some(c0)) = (o.broker_pid, broker_cpu0) {
        j.opt(
            "broker_cpu_s",
            proc_cpu_secs(pid).map(|c| format!("{:.3}", c - c0)),
        );
        j.opt("broker_rss_kib_before", rss0);
        j.opt("broker_rss_kib_after", proc_rss_kib(pid));
    }
    j.num("errors", errors.count)
        .strs("error_samples", &errors.samples);
    j.done()
}

async fn run_traffic(o: &Opts, addr: SocketAddr, j: &mut Json, errors: &mut Errors) {
    let base = Instant::now();
    let tag = std::process::id();
    // (filter, client id, clean session) per subscriber; (topic) per publisher.
    let mut subs: Vec<(String, String, bool)> = Vec::new();
    // Subscriber i's broker: --sub-ports round-robin, else the publishers' broker.
    let sub_addr = |i: usize| match o.sub_ports.len() {
        0 => addr,
        n => SocketAddr::from((Ipv4Addr::LOCALHOST, o.sub_ports[i % n])),
    };
    let mut pubs: Vec<String> = Vec::new();
    match o.scenario {
        Scenario::Fanin => {
            subs.push(("sensors/+/temp".into(), format!("ld{tag}-sub"), true));
            pubs.extend((0..o.publishers).map(|i| format!("sensors/{i}/temp")));
        }
        Scenario::Persist => {
            subs.push((
                "sensors/+/temp".into(),
                "sluice-load-persist-sub".into(),
                false,
            ));
            pubs.extend((0..o.publishers).map(|i| format!("sensors/{i}/temp")));
        }
        Scenario::Fanout => {
            subs.extend(
                (0..o.subscribers).map(|i| ("fanout/t".into(), format!("ld{tag}-sub{i}"), true)),
            );
            pubs.push("fanout/t".into());
        }
        Scenario::Pairs => {
            for k in 0..o.pairs {
                subs.push((format!("pairs/{k}"), format!("ld{tag}-sub{k}"), true));
                pubs.push(format!("pairs/{k}"));
            }
        }
        Scenario::Latency => {
            subs.push(("latency/t".into(), format!("ld{tag}-sub"), true));
            pubs.push("latency/t".into());
        }
        Scenario::Conns | Scenario::Subs | Scenario::Storm => {
            unreachable!("conns, subs and storm have their own runners")
        }
    }
    j.num("publishers", pubs.len())
        .num("subscribers", subs.len())
        .num("inflight", o.inflight)
        .opt("rate", o.rate);

    // A persistent subscriber starts from an empty session: clean it first.
    if o.scenario == Scenario::Persist {
        match Conn::open(sub_addr(0), &subs[0].1, true, KEEPALIVE).await {
            Ok(c) => c.disconnect().await,
            Err(e) => errors.add(e),
        }
    }
    let shared = Arc::new(Shared {
        window_end: AtomicU64::new(u64::MAX),
        ..Default::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = Vec::new();
    for (i, (filter, id, clean)) in subs.iter().enumerate() {
        let conn = match Conn::open(sub_addr(i), id, *clean, KEEPALIVE).await {
            Ok(mut c) => match c.subscribe(filter, o.qos).await {
                Ok(()) => c,
                Err(e) => {
                    errors.add(e);
                    continue;
                }
            },
            Err(e) => {
                errors.add(e);
                continue;
            }
        };
        sub_tasks.push(tokio::spawn(subscriber(
            conn,
            base,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    let mut pub_conns = Vec::new();
    for (i, topic) in pubs.iter().enumerate() {
        match Conn::open(addr, &format!("ld{tag}-pub{i}"), true, KEEPALIVE).await {
            Ok(c) => pub_conns.push((c, topic.clone())),
            Err(e) => errors.add(e),
        }
    }
    let n_pubs = pub_conns.len().max(1) as u64;
    let start = Instant::now();
    let end = start + Duration::from_secs(o.duration);
    shared
        .window_end
        .store((end - base).as_nanos() as u64, Ordering::Relaxed);
    let mut pub_tasks = Vec::new();
    for (conn, topic) in pub_conns {
        let params = PubParams {
            topic,
            qos: o.qos,
            payload: o.payload,
            inflight: o.inflight,
            rate: o.rate.map(|r| r / n_pubs as f64),
            max_msgs: (o.max_msgs / n_pubs).max(1),
            drain: Duration::from_secs(o.drain),
        };
        pub_tasks.push(tokio::spawn(publisher(conn, params, base, start, end)));
    }
    let (mut sent, mut acked) = (0u64, 0u64);
    for t in pub_tasks {
        match t.await {
            Ok(r) => {
                sent += r.sent;
                acked += r.acked;
                r.errors.into_iter().for_each(|e| errors.add(e));
            }
            Err(e) => errors.add(format!("publisher task: {e}")),
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let fan = if o.scenario == Scenario::Fanout {
        sub_tasks.len() as u64
    } else {
        1
    };
    let expected = sent * fan;
    // Drain: wait until everything expected arrived, progress stalls for 1 s, or --drain.
    let drain_end = Instant::now() + Duration::from_secs(o.drain);
    let mut last = shared.received.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    while Instant::now() < drain_end {
        let got = shared.received.load(Ordering::Relaxed);
        if got >= expected {
            break;
        }
        if got != last {
            last = got;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut hist = Hist::new();
    let mut received = 0;
    for t in sub_tasks {
        match t.await {
            Ok(r) => {
                received += r.received;
                hist.merge(&r.hist);
                r.errors.into_iter().for_each(|e| errors.add(e));
            }
            Err(e) => errors.add(format!("subscriber task: {e}")),
        }
    }
    if o.scenario == Scenario::Persist {
        // Leave no persistent session queueing behind.
        match Conn::open(sub_addr(0), &subs[0].1, true, KEEPALIVE).await {
            Ok(c) => c.disconnect().await,
            Err(e) => errors.add(e),
        }
    }
    let in_window = shared.received_in_window.load(Ordering::Relaxed);
    let window = o.duration as f64;
    j.num("sent", sent);
    if o.qos > 0 {
        j.num("acked", acked);
    }
    j.num("expected", expected)
        .num("received", received)
        .num("received_in_window", in_window)
        .f("undelivered_pct", undelivered_pct(expected, received), 3)
        .f("publish_s", publish_secs, 3)
        .f("sent_per_sec", sent as f64 / window, 0)
        .f("msgs_per_sec", in_window as f64 / window, 0);
    let us = |v: u64| format!("{:.1}", v as f64 / 1000.0);
    if hist.n > 0 {
        j.raw(
            "latency_us",
            &format!(
                "{{\"samples\":{},\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
                hist.n,
                us(hist.quantile(0.50)),
                us(hist.quantile(0.99)),
                us(hist.quantile(0.999)),
                us(hist.max)
            ),
        );
    } else {
        j.raw("latency_us", "null");
    }
}

fn undelivered_pct(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        expected.saturating_sub(received) as f64 * 100.0 / expected as f64
    }
}

async fn run_conns(o: &Opts, addr: SocketAddr, nofile: u64, j: &mut Json, errors: &mut Errors) {
    let tag = std::process::id();
    j.num("connections", o.connections)
        .num("nofile_limit", nofile);
    if nofile > 0 && (o.connections as u64) + 64 > nofile {
        errors.add(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {} connections: raise `ulimit -n`",
            o.connections
        ));
    }
    // Connect-phase bound: at least 30 s, or --duration if longer.
    let deadline = Instant::now() + Duration::from_secs(o.duration.max(30));
    let rss_before = o.broker_pid.and_then(proc_rss_kib);
    let started = Instant::now();
    let mut conns: Vec<Idle> = Vec::with_capacity(o.connections);
    let mut set = tokio::task::JoinSet::new();
    let concurrency = o.conn_concurrency;
    let mut next = 0usize;
    let mut fatal = false;
    loop {
        while !fatal && set.len() < concurrency && next < o.connections {
            let id = format!("ld{tag}-c{next}");
            next += 1;
            set.spawn(async move {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| (describe_io("connect", &e), e.raw_os_error()))?;
                let _ = tcp.set_nodelay(true);
                let mut s = match WS_PATH.get() {
                    None => Idle::Tcp(tcp),
                    Some(path) => Idle::Ws(Box::new(
                        sluice::listener::ws::connect(tcp, &addr.to_string(), path)
                            .await
                            .map_err(|e| (format!("upgrade: {e}"), None))?,
                    )),
                };
                s.write_all(&connect_packet(&id, true, KEEPALIVE))
                    .await
                    .map_err(|e| (describe_io("CONNECT", &e), e.raw_os_error()))?;
                let mut ack = [0u8; 4];
                s.read_exact(&mut ack)
                    .await
                    .map_err(|e| (describe_io("CONNACK", &e), e.raw_os_error()))?;
                if ack[0] != 0x20 || ack[3] != 0 {
                    return Err((format!("CONNACK refused: {ack:?}"), None));
                }
                Ok(s)
            });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(s)))) => conns.push(s),
            Ok(Some(Ok(Err((e, os))))) => {
                // Out of fds or ports: stop opening more, it only gets worse.
                if matches!(
                    os,
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::EADDRNOTAVAIL)
                ) {
                    fatal = true;
                }
                errors.add(e);
            }
            Ok(Some(Err(e))) => errors.add(format!("connect task: {e}")),
            Err(_) => {
                errors.add(format!(
                    "connect phase deadline: {} of {} connected",
                    conns.len(),
                    o.connections
                ));
                set.abort_all();
                break;
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the broker settle its per-connection allocations before sampling RSS.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_after = o.broker_pid.and_then(proc_rss_kib);
    // Are they still open? A broker that dropped them would show here.
    let mut alive = 0u64;
    let mut probe = [0u8; 1];
    for s in &mut conns {
        use futures::FutureExt;
        // Nothing to read yet (not closed) means alive.
        if s.read(&mut probe).now_or_never().is_none() {
            alive += 1;
        }
    }
    j.num("connected", conns.len())
        .num("alive_after_settle", alive)
        .f("connect_s", connect_secs, 3)
        .f("connects_per_sec", conns.len() as f64 / connect_secs, 0)
        .opt("rss_before_kib", rss_before)
        .opt("rss_after_kib", rss_after);
    match (rss_before, rss_after) {
        (Some(b), Some(a)) if !conns.is_empty() => {
            j.f(
                "rss_per_conn_bytes",
                (a as f64 - b as f64) * 1024.0 / conns.len() as f64,
                0,
            );
        }
        _ => {
            j.raw("rss_per_conn_bytes", "null");
        }
    }
    for mut s in conns {
        let _ = s.write_all(&DISCONNECT).await;
    }
}

// ---------------------------------------------------------------------------------------
// Reconnect storm

/// One wave of the storm scenario: every device connects with its credentials, at most
/// `--connect-concurrency` handshakes in flight. Returns the open connections and the
/// seconds the wave took.
async fn storm_wave(o: &Opts, addr: SocketAddr, errors: &mut Errors) -> (Vec<TcpStream>, f64) {
    let deadline = Instant::now() + Duration::from_secs(o.duration.max(60));
    let started = Instant::now();
    let mut conns = Vec::with_capacity(o.connections);
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0usize;
    loop {
        while set.len() < o.conn_concurrency && next < o.connections {
            let id = format!("{}{next}", o.user_prefix);
            let password = o.password.clone();
            next += 1;
            set.spawn(async move {
                let mut s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| describe_io("connect", &e))?;
                let _ = s.set_nodelay(true);
                s.write_all(&connect_packet_as(
                    &id,
                    true,
                    KEEPALIVE,
                    Some((&id, &password)),
                ))
                .await
                .map_err(|e| describe_io("CONNECT", &e))?;
                let mut ack = [0u8; 4];
                s.read_exact(&mut ack)
                    .await
                    .map_err(|e| describe_io("CONNACK", &e))?;
                if ack[0] != 0x20 || ack[3] != 0 {
                    return Err(format!("{id}: CONNACK refused: {ack:?}"));
                }
                Ok(s)
            });
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(s)))) => conns.push(s),
            Ok(Some(Ok(Err(e)))) => errors.add(e),
            Ok(Some(Err(e))) => errors.add(format!("connect task: {e}")),
            Err(_) => {
                errors.add(format!("storm wave deadline: {} connected", conns.len()));
                set.abort_all();
                break;
            }
        }
    }
    (conns, started.elapsed().as_secs_f64())
}

/// The unrelated client of the storm scenario, on its own thread and runtime so the
/// storm's tasks do not delay its measurements: publishes QoS 1 to `storm/probe`, the
/// next one after each PUBACK, until `stop`, and returns the PUBACK latencies (nanos).
fn storm_probe(
    addr: SocketAddr,
    client_id: String,
    ready: std::sync::mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Hist, String>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut conn = Conn::open(addr, &client_id, true, KEEPALIVE).await?;
            let template = PublishTemplate::new("storm/probe", 1, 16);
            let mut hist = Hist::new();
            let mut id = 0u16;
            let mut out = Vec::new();
            let mut announced = false;
            while !stop.load(Ordering::Relaxed) {
                out.clear();
                template.encode(&mut out, next_packet_id(&mut id), 0);
                let sent = Instant::now();
                conn.wr
                    .write_all(&out)
                    .await
                    .map_err(|e| describe_io("PUBLISH", &e))?;
                conn.expect(4, "PUBACK").await?;
                hist.record(sent.elapsed().as_nanos() as u64);
                if !announced {
                    announced = true;
                    let _ = ready.send(());
                }
            }
            conn.disconnect().await;
            Ok(hist)
        })
    })
}

/// The storm scenario (see `USAGE`): the devices' first connects, then `--waves`
/// reconnect storms, each phase measured with the unrelated client's PUBACK latency.
async fn run_storm(o: &Opts, addr: SocketAddr, j: &mut Json, errors: &mut Errors) {
    let tag = std::process::id();
    j.num("devices", o.connections)
        .num("waves", o.waves)
        .num("connect_concurrency", o.conn_concurrency);
    let mut conns: Vec<TcpStream> = Vec::new();
    for (phase, waves) in [("first", 1), ("again", o.waves)] {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let probe = storm_probe(addr, format!("ld{tag}-probe"), ready_tx, Arc::clone(&stop));
        // The probe's first PUBACK: it is connected and measuring.
        let ready = tokio::task::spawn_blocking(move || {
            ready_rx.recv_timeout(Duration::from_secs(10)).is_ok()
        })
        .await
        .unwrap_or(false);
        if !ready {
            errors.add("the probe client did not get its first PUBACK".into());
            stop.store(true, Ordering::Relaxed);
            return;
        }
        let (mut connected, mut secs) = (0usize, 0.0f64);
        for _ in 0..waves {
            for mut s in conns.drain(..) {
                let _ = s.write_all(&DISCONNECT).await;
            }
            let (wave, wave_secs) = storm_wave(o, addr, errors).await;
            connected += wave.len();
            secs += wave_secs;
            conns = wave;
        }
        stop.store(true, Ordering::Relaxed);
        let hist = match tokio::task::spawn_blocking(move || probe.join()).await {
            Ok(Ok(Ok(h))) => h,
            Ok(Ok(Err(e))) => {
                errors.add(format!("probe: {e}"));
                Hist::new()
            }
            _ => {
                errors.add("probe thread failed".into());
                Hist::new()
            }
        };
        let ms = |v: u64| v as f64 / 1e6;
        j.num(&format!("{phase}_connected"), connected)
            .f(&format!("{phase}_connect_s"), secs, 3)
            .f(
                &format!("{phase}_connects_per_sec"),
                connected as f64 / secs,
                0,
            )
            .num(&format!("{phase}_pubacks"), hist.n)
            .f(&format!("{phase}_puback_p50_ms"), ms(hist.quantile(0.5)), 3)
            .f(
                &format!("{phase}_puback_p99_ms"),
                ms(hist.quantile(0.99)),
                3,
            )
            .f(&format!("{phase}_puback_max_ms"), ms(hist.max), 3);
    }
    for mut s in conns {
        let _ = s.write_all(&DISCONNECT).await;
    }
}

/// A SUBSCRIBE with several filters, all at `qos`.
fn subscribe_many_packet(packet_id: u16, filters: &[String], qos: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + filters.iter().map(|f| f.len() + 3).sum::<usize>());
    body.extend_from_slice(&packet_id.to_be_bytes());
    for f in filters {
        put_str(&mut body, f.as_bytes());
        body.push(qos);
    }
    let mut p = vec![0x82];
    put_remaining_len(&mut p, body.len());
    p.extend_from_slice(&body);
    p
}

/// The subs scenario: grows the broker's subscription trie to `--subscriptions` exact
/// filters `load/<tag>/c<client>/<i>` over `--subscribers` clients (SUBSCRIBEs of
/// FILTERS_PER_SUBSCRIBE filters, pipelined), then publishes QoS 0 to topics that each
/// match one subscription for `--duration`, and reports the broker's RSS and CPU per
/// subscription and its CPU per publish.
async fn run_subs(o: &Opts, addr: SocketAddr, j: &mut Json, errors: &mut Errors) {
    let tag = std::process::id();
    let clients = o.subscribers.min(o.subscriptions);
    let per_client = o.subscriptions.div_ceil(clients);
    j.num("subscriptions", o.subscriptions)
        .num("subscribers", clients);
    let mut conns = Vec::with_capacity(clients);
    for c in 0..clients {
        match Conn::open(addr, &format!("ld{tag}-s{c}"), true, KEEPALIVE).await {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                errors.add(e);
                return;
            }
        }
    }
    let rss_before = o.broker_pid.and_then(proc_rss_kib);
    let cpu_before = o.broker_pid.and_then(proc_cpu_secs);
    let started = Instant::now();
    // Every client sends all its SUBSCRIBEs while it reads the SUBACKs.
    let mut set = tokio::task::JoinSet::new();
    let mut subscribed = 0usize;
    for (c, conn) in conns.into_iter().enumerate() {
        let first = c * per_client;
        let last = ((c + 1) * per_client).min(o.subscriptions);
        if first >= last {
            continue;
        }
        let filters: Vec<String> = (first..last)
            .map(|i| format!("load/{tag}/c{c}/{i}"))
            .collect();
        subscribed += filters.len();
        set.spawn(async move {
            let Conn {
                mut rd,
                mut wr,
                mut rbuf,
            } = conn;
            let packets = filters.len().div_ceil(FILTERS_PER_SUBSCRIBE);
            let writer = async {
                let mut out = Vec::new();
                for (k, chunk) in filters.chunks(FILTERS_PER_SUBSCRIBE).enumerate() {
                    out.extend_from_slice(&subscribe_many_packet(
                        (k % 65_000 + 1) as u16,
                        chunk,
                        0,
                    ));
                }
                wr.write_all(&out)
                    .await
                    .map_err(|e| describe_io("SUBSCRIBE", &e))
            };
            let reader = async {
                let mut acks = 0usize;
                while acks < packets {
                    while let Some((hdr, body_at, total)) = frame(&rbuf)? {
                        if hdr >> 4 == 9 {
                            if rbuf[body_at + 2..total].contains(&0x80) {
                                return Err(
                                    "SUBACK refused a filter (max_subscriptions_per_client?)"
                                        .to_string(),
                                );
                            }
                            acks += 1;
                        }
                        rbuf.advance(total);
                    }
                    if acks == packets {
                        break;
                    }
                    match rd.read_buf(&mut rbuf).await {
                        Ok(0) => return Err("broker closed the connection during SUBSCRIBE".into()),
                        Ok(_) => {}
                        Err(e) => return Err(describe_io("SUBACK", &e)),
                    }
                }
                Ok::<_, String>(())
            };
            let (w, r) = tokio::join!(writer, reader);
            w?;
            r?;
            Ok::<_, String>(Conn { rd, wr, rbuf })
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut conns = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(c)))) => conns.push(c),
            Ok(Some(Ok(Err(e)))) => errors.add(e),
            Ok(Some(Err(e))) => errors.add(format!("subscribe task: {e}")),
            Err(_) => {
                errors.add("subscribe phase took over 120 s".into());
                set.abort_all();
                return;
            }
        }
    }
    let subscribe_s = started.elapsed().as_secs_f64();
    let rss_after = o.broker_pid.and_then(proc_rss_kib);
    let cpu_after = o.broker_pid.and_then(proc_cpu_secs);
    j.num("subscribed", subscribed)
        .f("subscribe_s", subscribe_s, 3)
        .f("subscribes_per_sec", subscribed as f64 / subscribe_s, 0)
        .opt("rss_before_kib", rss_before)
        .opt("rss_after_kib", rss_after);
    match (rss_before, rss_after, cpu_before, cpu_after) {
        (Some(rb), Some(ra), Some(cb), Some(ca)) if subscribed > 0 => {
            j.f(
                "rss_per_sub_bytes",
                (ra as f64 - rb as f64) * 1024.0 / subscribed as f64,
                0,
            )
            .f(
                "broker_cpu_us_per_sub",
                (ca - cb) * 1e6 / subscribed as f64,
                2,
            );
        }
        _ => {
            j.raw("rss_per_sub_bytes", "null");
        }
    }
    if conns.len() != clients {
        return;
    }
    // Publish phase: one publisher, QoS 0, topics that each match one subscription.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for conn in conns {
        let received = Arc::clone(&received);
        let stop = Arc::clone(&stop);
        readers.push(tokio::spawn(async move {
            let Conn {
                mut rd,
                wr,
                mut rbuf,
            } = conn;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let read =
                    tokio::time::timeout(Duration::from_millis(200), rd.read_buf(&mut rbuf)).await;
                match read {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {}
                    Err(_) => continue,
                }
                let mut n = 0;
                while let Ok(Some((hdr, _, total))) = frame(&rbuf) {
                    if hdr >> 4 == 3 {
                        n += 1;
                    }
                    rbuf.advance(total);
                }
                received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
            drop(wr);
        }));
    }
    let mut publisher = match Conn::open(addr, &format!("ld{tag}-p"), true, KEEPALIVE).await {
        Ok(c) => c,
        Err(e) => {
            errors.add(e);
            return;
        }
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut batch = Vec::new();
    for _ in 0..4096 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng % o.subscriptions as u64) as usize;
        let topic = format!("load/{tag}/c{}/{i}", i / per_client);
        PublishTemplate::new(&topic, 0, o.payload).encode(&mut batch, 0, 0);
    }
    let cpu0 = o.broker_pid.and_then(proc_cpu_secs);
    let started = Instant::now();
    let end = started + Duration::from_secs(o.duration);
    let mut sent = 0u64;
    while Instant::now() < end && sent < o.max_msgs {
        if let Err(e) = publisher.wr.write_all(&batch).await {
            errors.add(describe_io("PUBLISH", &e));
            break;
        }
        sent += 4096;
    }
    let publish_s = started.elapsed().as_secs_f64();
    let drain_end = Instant::now() + Duration::from_secs(o.drain);
    while received.load(std::sync::atomic::Ordering::Relaxed) < sent && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = o.broker_pid.and_then(proc_cpu_secs);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    j.num("published", sent)
        .f("publish_s", publish_s, 3)
        .num("received", got)
        .f("undelivered_pct", undelivered_pct(sent, got), 2);
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        if got > 0 {
            j.f("broker_cpu_us_per_publish", (c1 - c0) * 1e6 / got as f64, 3);
        }
    }
    publisher.disconnect().await;
    for r in readers {
        let _ = r.await;
    }
}

/// Checks of the encoder, framer and histogram that need no broker: what `cargo test
/// --all-targets` runs (it starts bench targets with no arguments).
fn self_check() {
    for n in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
        let mut b = vec![0x30];
        put_remaining_len(&mut b, n);
        b.resize(b.len() + n, 0);
        let (_, at, total) = frame(&b).expect("framed").expect("complete");
        assert_eq!(total - at, n, "remaining length {n}");
        assert_eq!(
            frame(&b[..b.len() - 1]).expect("framed"),
            None,
            "partial {n}"
        );
    }
    let t = PublishTemplate::new("sensors/7/temp", 1, 64);
    let mut out = Vec::new();
    t.encode(&mut out, 0x1234, 42);
    let (hdr, at, total) = frame(&out).expect("framed").expect("complete");
    assert_eq!((hdr, total), (0x32, out.len()));
    let body = &out[at..];
    assert_eq!(&body[2..16], b"sensors/7/temp");
    assert_eq!(&body[16..18], &[0x12, 0x34]);
    assert_eq!(
        u64::from_le_bytes(body[18..26].try_into().expect("8 bytes")),
        42
    );
    assert_eq!(body.len(), 2 + 14 + 2 + 64);
    let mut h = Hist::new();
    for v in 1..=100_000u64 {
        h.record(v * 1000);
    }
    let p50 = h.quantile(0.5) as f64;
    assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "p50 {p50}");
    assert_eq!(h.quantile(1.0), 100_000_000);
    eprintln!("load: self-check passed (encoder, framer, histogram)");
}
