//! The state gauges and the `$SYS` topics.
//!
//! Gauges that describe state (sessions, subscriptions, retained messages, queues, the
//! log on disk) are not bumped on every change: [`sample`] reads them from the broker
//! every second, and again just before each scrape. The `$SYS` publisher is a
//! mosquitto-compatible subset, published through the broker like any message (retained,
//! QoS 0, only when a value changed), every `sys_interval`.

use crate::broker::Broker;
use crate::dead_letter::DeadLetterReason;
use crate::message::{now_ms, Message};
use crate::metrics::{self as m, SYS};
use crate::protocol::QoS;
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;

/// How often the state gauges are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The broker state the gauges and `$SYS` report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sessions: usize,
    pub online: usize,
    pub offline_persistent: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub queued: usize,
    pub queued_bytes: usize,
    pub inflight: usize,
}

/// Reads the broker's state and sets the state gauges. With `depths`, also records each
/// session's queue depth in the depth histogram (done by the periodic sampler only, so
/// scrapes do not skew it).
pub fn sample(broker: &Broker, depths: bool) -> Snapshot {
    let mut snap = Snapshot {
        subscriptions: broker.router.subscription_count(),
        retained: broker.router.retained_count(),
        ..Snapshot::default()
    };
    let depth = depths.then(|| metrics::histogram!(m::SESSION_QUEUE_DEPTH));
    let age = depths.then(|| metrics::histogram!(m::SESSION_BACKLOG_AGE));
    let now = crate::message::now_ms();
    let mut oldest: Option<u64> = None;
    for session in broker.sessions.all() {
        let g = session.gauges();
        snap.sessions += 1;
        if g.online {
            snap.online += 1;
        } else if session.is_persistent() {
            snap.offline_persistent += 1;
        }
        snap.queued += g.queued;
        snap.queued_bytes += g.queued_bytes;
        snap.inflight += g.inflight;
        if let Some(h) = &depth {
            h.record(g.queued as f64);
        }
        // The dead-letter session keeps its letters for an operator by design: its age
        // is not ingestion lag (`sluice_dead_letters_queued` tells its depth).
        let lag = g
            .oldest_ms
            .filter(|_| !broker.is_dead_letter_session(&session.client_id));
        if let Some(at) = lag {
            oldest = Some(oldest.map_or(at, |o| o.min(at)));
            if let Some(h) = &age {
                h.record(now.saturating_sub(at) as f64 / 1000.0);
            }
        }
    }
    metrics::gauge!(m::OLDEST_QUEUED_AGE)
        .set(oldest.map_or(0.0, |at| now.saturating_sub(at) as f64 / 1000.0));
    metrics::gauge!(m::SESSIONS_ONLINE).set(snap.online as f64);
    metrics::gauge!(m::SESSIONS_OFFLINE).set(snap.offline_persistent as f64);
    metrics::gauge!(m::SUBSCRIPTIONS).set(snap.subscriptions as f64);
    metrics::gauge!(m::RETAINED_MESSAGES).set(snap.retained as f64);
    metrics::gauge!(m::QUEUED_MESSAGES).set(snap.queued as f64);
    metrics::gauge!(m::QUEUED_BYTES).set(snap.queued_bytes as f64);
    metrics::gauge!(m::INFLIGHT_MESSAGES).set(snap.inflight as f64);
    metrics::gauge!(m::DELAYED_WAITING).set(broker.delayed.len() as f64);
    let dead_letters = broker
        .sessions
        .get(&broker.config.dead_letter.client_id)
        .map(|s| s.gauges())
        .unwrap_or_default();
    metrics::gauge!(m::DEAD_LETTER_QUEUED)
        .set((dead_letters.queued + dead_letters.inflight) as f64);
    metrics::gauge!(m::DEAD_LETTER_QUEUED_BYTES).set(dead_letters.queued_bytes as f64);
    let budget = &broker.guards.queue_budget;
    metrics::gauge!(m::QUEUE_BUDGET_USED).set(budget.used() as f64);
    metrics::gauge!(m::QUEUE_BUDGET_LIMIT).set(budget.limit() as f64);

    let store = broker.store.stats();
    metrics::counter!(m::STORE_APPENDS).absolute(store.appends);
    metrics::counter!(m::STORE_BATCHES).absolute(store.batches);
    metrics::counter!(m::STORE_FSYNCS).absolute(store.commits);
    metrics::counter!(m::STORE_COMPACTIONS).absolute(store.compactions);
    metrics::gauge!(m::STORE_LOG_BYTES).set(store.bytes_on_disk as f64);
    metrics::gauge!(m::STORE_LIVE_BYTES).set(store.live_bytes as f64);
    metrics::gauge!(m::STORE_SEGMENTS).set(store.segments as f64);
    metrics::gauge!(m::STORE_POISONED).set(if store.poisoned { 1.0 } else { 0.0 });
    snap
}

/// Starts the gauge sampler (which also runs the Prometheus upkeep, when `handle` is
/// given) and, unless `sys_interval` is zero, the `$SYS` publisher. Both stop on the
/// broker's shutdown; the publisher is tracked so shutdown waits for it before the
/// store closes.
pub fn start(broker: &Arc<Broker>, sys_interval: Duration, handle: Option<PrometheusHandle>) {
    let b = Arc::clone(broker);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = b.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            sample(&b, true);
            if let Some(h) = &handle {
                h.run_upkeep();
            }
        }
    });
    if !sys_interval.is_zero() {
        broker
            .tasks
            .spawn(publish_sys(Arc::clone(broker), sys_interval));
    }
}

/// Exponential moving averages of a per-minute rate over 1, 5 and 15 minutes, as
/// mosquitto's `$SYS/broker/load/...` topics.
#[derive(Debug, Default)]
struct Load {
    last: u64,
    avg: [f64; 3],
}

const LOAD_WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

impl Load {
    fn update(&mut self, total: u64, elapsed: Duration) {
        let dt = elapsed.as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let per_minute = total.saturating_sub(self.last) as f64 * 60.0 / dt;
        self.last = total;
        for (avg, (_, window)) in self.avg.iter_mut().zip(LOAD_WINDOWS) {
            let decay = (-dt / window).exp();
            *avg = per_minute + decay * (*avg - per_minute);
        }
    }
}

async fn publish_sys(broker: Arc<Broker>, interval: Duration) {
    let started = Instant::now();
    let mut last_tick: Option<Instant> = None;
    let mut published: HashMap<String, String> = HashMap::new();
    let mut loads: [(&str, Load); 4] = Default::default();
    loads[0].0 = "messages/received";
    loads[1].0 = "messages/sent";
    loads[2].0 = "bytes/received";
    loads[3].0 = "bytes/sent";
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let snap = sample(&broker, false);
        let totals = [
            SYS.messages_received.load(Ordering::Relaxed),
            SYS.messages_sent.load(Ordering::Relaxed),
            SYS.bytes_received.load(Ordering::Relaxed),
            SYS.bytes_sent.load(Ordering::Relaxed),
        ];
        let mut values = vec![
            (
                "version".to_string(),
                format!("sluice version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".to_string(),
                format!("{} seconds", started.elapsed().as_secs()),
            ),
            (
                "clients/connected".to_string(),
                SYS.connections.load(Ordering::Relaxed).max(0).to_string(),
            ),
            (
                "clients/disconnected".to_string(),
                snap.offline_persistent.to_string(),
            ),
            (
                "clients/total".to_string(),
                (snap.online + snap.offline_persistent).to_string(),
            ),
            (
                "clients/maximum".to_string(),
                SYS.connections_max.load(Ordering::Relaxed).to_string(),
            ),
            ("messages/received".to_string(), totals[0].to_string()),
            ("messages/sent".to_string(), totals[1].to_string()),
            (
                "messages/stored".to_string(),
                (snap.retained + snap.queued + snap.inflight).to_string(),
            ),
            (
                "subscriptions/count".to_string(),
                snap.subscriptions.to_string(),
            ),
            (
                "retained messages/count".to_string(),
                snap.retained.to_string(),
            ),
            ("bytes/received".to_string(), totals[2].to_string()),
            ("bytes/sent".to_string(), totals[3].to_string()),
        ];
        let elapsed = last_tick.map(|t| now - t);
        last_tick = Some(now);
        for ((name, load), total) in loads.iter_mut().zip(totals) {
            match elapsed {
                Some(elapsed) => load.update(total, elapsed),
                None => load.last = total,
            }
            for ((window, _), avg) in LOAD_WINDOWS.iter().zip(load.avg) {
                values.push((format!("load/{name}/{window}"), format!("{avg:.2}")));
            }
        }
        for (i, reason) in DeadLetterReason::ALL.iter().enumerate() {
            values.push((
                format!("dead-letters/{}", reason.label()),
                SYS.dead_letters[i].load(Ordering::Relaxed).to_string(),
            ));
        }
        for (name, value) in values {
            if published.get(&name) == Some(&value) {
                continue;
            }
            let topic = format!("$SYS/broker/{name}");
            if let Err(e) = publish(&broker, topic, value.clone()).await {
                tracing::debug!(error = %e, "$SYS message not published");
                continue;
            }
            published.insert(name, value);
        }
    }
}

/// Publishes one retained QoS 0 `$SYS` message through the broker.
async fn publish(
    broker: &Broker,
    topic: String,
    value: String,
) -> Result<(), crate::store::StoreError> {
    let message = Arc::new(Message {
        id: broker.next_message_id(),
        topic,
        payload: value.into(),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        publisher: Arc::from("$SYS"),
        received_at_ms: now_ms(),
        expires_at_ms: None,
    });
    broker.accept(&message, Vec::new()).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_converges_to_the_rate() {
        let mut load = Load::default();
        // 600 messages every 10 s is 3600 a minute; after 100 min even the 15 min
        // average is within 0.5% of it.
        for i in 1..=600u64 {
            load.update(i * 600, Duration::from_secs(10));
        }
        for avg in load.avg {
            assert!((avg - 3600.0).abs() < 18.0, "{avg}");
        }
        // One interval in: the 1 min average has moved further than the 15 min one.
        let mut fresh = Load::default();
        fresh.update(600, Duration::from_secs(10));
        assert!(fresh.avg[0] > fresh.avg[1] && fresh.avg[1] > fresh.avg[2]);
    }
}
