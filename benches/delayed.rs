//! Delayed delivery accuracy: publishers send `$delayed/<delay>/bench/delayed` at QoS 1 at a
//! steady rate, so the messages come due at that rate; a subscriber measures how late
//! after its due time each one arrives (due = the send time carried in the payload plus
//! the delay, so any lag between sending and the broker's receipt counts as lateness).
//!
//! `cargo bench --bench delayed -- --rate 10000 --seconds 5 --delay 2`
//!
//! Starts the release `sluice` binary on port 0 with a temp data dir (the tests' launcher).

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
struct Args {
    /// Messages per second coming due.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The delay asked for, in seconds.
    #[arg(long, default_value_t = 2)]
    delay: u64,
    /// Publishing connections sharing the rate.
    #[arg(long, default_value_t = 4)]
    publishers: u64,
    // `cargo bench` passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn options(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_inflight(1000);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // SAFETY-free in edition 2021: the launcher reads RUST_LOG for the broker's log level.
    std::env::set_var("RUST_LOG", "warn");
    let broker = common::Broker::start();
    let port = broker.port();

    let (sub, mut sub_loop) = AsyncClient::new(options(port, "delay-bench-sub"), 10_000);
    sub.subscribe("bench/delayed", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }

    let per = args.rate / args.publishers;
    let expected = per * args.publishers * args.seconds;
    // The subscriber reads from the start: a subscriber that is not read fills its queue.
    let delay_ms = args.delay * 1000;
    let receiver = tokio::spawn(async move {
        let mut late = Vec::with_capacity(expected as usize);
        let mut idle_since = Instant::now();
        while (late.len() as u64) < expected && idle_since.elapsed() < Duration::from_secs(10) {
            if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
                tokio::time::timeout(Duration::from_secs(1), sub_loop.poll()).await
            {
                let sent_ms =
                    u64::from_le_bytes(p.payload[..8].try_into().expect("8-byte payload"));
                late.push(now_ms().saturating_sub(sent_ms + delay_ms));
                idle_since = Instant::now();
            }
        }
        late
    });
    let mut tasks = Vec::new();
    for p in 0..args.publishers {
        let (client, mut el) =
            AsyncClient::new(options(port, &format!("delay-bench-pub-{p}")), 10_000);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        let (seconds, delay) = (args.seconds, args.delay);
        tasks.push(tokio::spawn(async move {
            let topic = format!("$delayed/{delay}/bench/delayed");
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut sent = 0u64;
            let total = per * seconds;
            while sent < total {
                tick.tick().await;
                let due_by_now = (start.elapsed().as_millis() as u64 * per / 1000).min(total);
                while sent < due_by_now {
                    let payload = now_ms().to_le_bytes().to_vec();
                    client
                        .publish(&topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .expect("publish");
                    sent += 1;
                }
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.expect("publisher");
    }
    let mut late = receiver.await.expect("subscriber");
    late.sort_unstable();
    let early = late.iter().filter(|&&l| l == 0).count();
    println!(
        "delayed: {} sent (target {} = {}/s for {}s), {} arrived, delay {}s",
        sent,
        expected,
        args.rate,
        args.seconds,
        late.len(),
        args.delay
    );
    println!(
        "lateness after the due time, ms: p50 {} p99 {} p99.9 {} max {} (at or before due: {})",
        percentile(&late, 0.50),
        percentile(&late, 0.99),
        percentile(&late, 0.999),
        late.last().copied().unwrap_or(0),
        early
    );
    drop(broker);
}
