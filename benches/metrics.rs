//! What metrics cost per message: a cached handle against a macro lookup, and the
//! histogram records the hot paths make. Run with `cargo bench --bench metrics`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice::metrics as m;
use sluice::protocol::QoS;

fn bench(c: &mut Criterion) {
    let handle = m::install(true)
        .expect("install")
        .expect("prometheus handle");
    let hot = m::hot();
    c.bench_function("handle: received (2 counters)", |b| {
        b.iter(|| hot.received(black_box(QoS::AtLeastOnce), black_box(100)))
    });
    c.bench_function("macro: received (2 counters)", |b| {
        b.iter(|| {
            metrics::counter!(m::MESSAGES_RECEIVED, "qos" => "1").increment(1);
            metrics::counter!(m::BYTES_RECEIVED, "qos" => "1").increment(black_box(100));
        })
    });
    c.bench_function("handle: histogram record", |b| {
        b.iter(|| hot.puback_latency.record(black_box(0.0012)))
    });
    c.bench_function("per message: received, sent, 2 latencies", |b| {
        b.iter(|| {
            hot.received(QoS::AtLeastOnce, black_box(100));
            hot.sent(QoS::AtLeastOnce, black_box(100));
            hot.delivery_latency.record(black_box(0.0004));
            hot.puback_latency.record(black_box(0.0012));
        })
    });
    // Drain the histogram buckets so the benchmark's own records do not pile up.
    handle.run_upkeep();
}

criterion_group!(benches, bench);
criterion_main!(benches);
