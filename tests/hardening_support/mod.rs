//! Helpers for tests/hardening.rs: one test at a time on its own runtime, /proc readings
//! of the broker, a packet splitter for pipelined raw clients, and a liveness probe.
#![allow(dead_code)]

use crate::common::packet::{self, Connect, Pkt};
use crate::common::Broker;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The hardening tests measure the broker's RSS and its latency: run them one at a time,
/// so a neighbour's load does not show up in another test's numbers.
static SERIAL: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Runs one test body on a fresh 2-worker runtime, alone.
pub fn run<F: Future<Output = ()>>(f: F) {
    let _guard = SERIAL.lock();
    quiet_logs();
    raise_nofile();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f);
}

/// The shared harness starts the broker with RUST_LOG=debug unless RUST_LOG is set; at
/// the rates these tests drive, debug logging costs more than the broker's own work.
/// Set once, under SERIAL, before any broker of this binary starts.
fn quiet_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_none() {
            std::env::set_var("RUST_LOG", "info");
        }
    });
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (the broker child
/// inherits it). Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl = want;
            }
        }
    }
    rl.rlim_cur
}

fn status_field(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

pub fn threads(pid: u32) -> u64 {
    status_field(pid, "Threads:")
}

/// Open file descriptors of `pid`.
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// No panic was logged, and the broker is still running.
pub fn assert_healthy(b: &Broker) {
    let log = b.stderr();
    assert!(
        !log.contains("panicked"),
        "the broker panicked:\n{}",
        b.stderr_tail()
    );
    assert!(
        std::path::Path::new(&format!("/proc/{}/status", b.pid())).exists(),
        "the broker process is gone"
    );
}

/// Splits a byte stream into packets.
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn next_packet(&mut self) -> Option<Pkt> {
        packet::take_packet(&mut self.buf)
    }
}

/// TCP connect + CONNECT + successful CONNACK, bounded; returns the stream, the CONNACK
/// and whatever bytes followed it.
pub async fn handshake(port: u16, connect: &Connect) -> (TcpStream, Pkt, Frames) {
    handshake_on(tcp(port).await, connect).await
}

pub async fn tcp(port: u16) -> TcpStream {
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("TCP connect timed out")
    .expect("TCP connect");
    let _ = s.set_nodelay(true);
    s
}

pub async fn handshake_on(mut s: TcpStream, connect: &Connect) -> (TcpStream, Pkt, Frames) {
    s.write_all(&connect.build()).await.expect("send CONNECT");
    let mut frames = Frames::default();
    let ack = read_packet(&mut s, &mut frames, Duration::from_secs(10))
        .await
        .expect("CONNACK");
    assert_eq!(ack.kind(), packet::CONNACK, "expected CONNACK: {ack:?}");
    assert_eq!(ack.connack().1, 0, "CONNECT refused: {ack:?}");
    (s, ack, frames)
}

/// Reads one packet within `dur`; None on timeout or close.
pub async fn read_packet(s: &mut TcpStream, frames: &mut Frames, dur: Duration) -> Option<Pkt> {
    let deadline = tokio::time::Instant::now() + dur;
    loop {
        if let Some(p) = frames.next_packet() {
            return Some(p);
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => frames.push(&chunk[..n]),
            _ => return None,
        }
    }
}

/// One liveness probe: a fresh 3.1.1 client connects, subscribes to its own topic,
/// publishes QoS 1 to it and gets both the PUBACK and the message. Returns how long
/// that took, or why it failed.
pub async fn probe(port: u16, n: u64) -> Result<Duration, String> {
    let t0 = Instant::now();
    let id = format!("probe-{n}");
    let topic = format!("probe/{n}");
    let work = async {
        let (mut s, _, mut frames) = handshake(port, &Connect::v311(&id)).await;
        s.write_all(&packet::subscribe(false, 1, &[], &[(&topic, 1)]))
            .await
            .map_err(|e| e.to_string())?;
        let ack = read_packet(&mut s, &mut frames, Duration::from_secs(10)).await;
        match ack {
            Some(p) if p.kind() == packet::SUBACK && p.suback_codes(false) == vec![1] => {}
            other => return Err(format!("bad SUBACK {other:?}")),
        }
        s.write_all(&packet::publish(false, &topic, 1, false, 2, &[], b"probe"))
            .await
            .map_err(|e| e.to_string())?;
        let (mut acked, mut got) = (false, false);
        while !(acked && got) {
            match read_packet(&mut s, &mut frames, Duration::from_secs(10)).await {
                Some(p) if p.kind() == packet::PUBACK => acked = true,
                Some(p) if p.kind() == packet::PUBLISH => {
                    let id = p.publish(false).packet_id;
                    let _ = s.write_all(&packet::puback(id)).await;
                    got = true;
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        let _ = s.write_all(&packet::DISCONNECT).await;
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(15), work).await {
        Ok(Ok(())) => Ok(t0.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("probe timed out after 15 s".into()),
    }
}

/// Probes every `every` until `stop` is set; returns (ok count, failures, max latency).
/// Probes completed by the running probe loop (the tests here run one at a time).
pub static PROBES_OK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub async fn probe_loop(
    port: u16,
    every: Duration,
    first_id: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<String>, Duration) {
    use std::sync::atomic::Ordering;
    let (mut ok, mut failed, mut max) = (0u64, Vec::new(), Duration::ZERO);
    let mut n = first_id;
    while !stop.load(Ordering::Relaxed) {
        match probe(port, n).await {
            Ok(d) => {
                ok += 1;
                PROBES_OK.fetch_add(1, Ordering::Relaxed);
                max = max.max(d);
            }
            Err(e) => failed.push(e),
        }
        n += 1;
        tokio::time::sleep(every).await;
    }
    (ok, failed, max)
}

/// xorshift64*: reproducible garbage without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
