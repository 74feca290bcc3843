//! Benchmarks of the durable store's append path with the `Fsync` policy, through the public
//! API only (`Store::open`, `Store::commit`), against the limit of this disk.
//!
//! * `commit_fsync/<n>`: one caller commits batches of `n` messages, each message being two
//!   records (the 64-byte-payload `Message` and one `Enqueue`), and waits for each commit.
//! * `raw_write_fdatasync/<n>`: the same number of bytes per batch (measured from the
//!   store's own `bytes_on_disk`) appended to a plain file with `write_all` + `sync_data`:
//!   what the disk allows one writer that syncs every batch.
//! * `concurrent_committers/<t>`: `t` tokio tasks, each committing one message (+ enqueue)
//!   at a time; group commit should put many of them under one `fdatasync`. The number of
//!   batches per fsync is printed.
//!
//! Throughput is in messages (elements) per second; records per second are twice that.
//! Everything runs in a fresh tempdir. Run with `cargo bench --bench store`.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::store::{DurabilityPolicy, Record, Store, StoreConfig, StoredMessage};

const PAYLOAD: [u8; 64] = [0x5a; 64];
const BATCHES: [usize; 3] = [1, 100, 1000];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn open(dir: &std::path::Path) -> Store {
    let (store, _recovered) = Store::open(StoreConfig {
        dir: dir.to_path_buf(),
        policy: DurabilityPolicy::Fsync,
        ..Default::default()
    })
    .expect("open store");
    store
}

/// `n` messages, each followed by its enqueue for one session.
fn batch(store: &Store, n: usize) -> Vec<Record> {
    let mut records = Vec::with_capacity(2 * n);
    for _ in 0..n {
        let id = store.next_message_id();
        records.push(Record::Message(Arc::new(StoredMessage {
            id,
            topic: "sensors/bench/temp".into(),
            payload: Bytes::from_static(&PAYLOAD),
            qos: 1,
            retain: false,
            properties: Bytes::new(),
            publisher: "bench-publisher".into(),
            received_at_ms: 1_700_000_000_000,
            expires_at_ms: None,
        })));
        records.push(Record::Enqueue {
            session: "bench-subscriber".into(),
            message_id: id,
        });
    }
    records
}

/// Bytes one committed batch of `n` messages adds to the log.
fn batch_bytes(rt: &tokio::runtime::Runtime, n: usize) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let before = store.stats().bytes_on_disk;
    rt.block_on(store.commit(batch(&store, n))).expect("commit");
    let bytes = store.stats().bytes_on_disk - before;
    rt.block_on(store.shutdown()).expect("shutdown");
    bytes
}

fn commit_fsync(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("commit_fsync");
    for n in BATCHES {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let records = batch(&store, n);
                    let start = Instant::now();
                    rt.block_on(store.commit(records)).expect("commit");
                    spent += start.elapsed();
                }
                spent
            })
        });
        let s = store.stats();
        println!(
            "commit_fsync/{n}: {} batches, {} fdatasyncs, last fsync {:?}",
            s.batches, s.commits, s.last_fsync
        );
        rt.block_on(store.shutdown()).expect("shutdown");
    }
    group.finish();
}

fn raw_write_fdatasync(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("raw_write_fdatasync");
    for n in BATCHES {
        let bytes = batch_bytes(&rt, n);
        println!("raw_write_fdatasync/{n}: {bytes} bytes per batch (as the store writes them)");
        let buf = vec![0xa5u8; bytes as usize];
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = File::create(dir.path().join("raw.log")).expect("create");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                file.write_all(&buf).expect("write");
                file.sync_data().expect("fdatasync");
            })
        });
    }
    group.finish();
}

fn concurrent_committers(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("concurrent_committers");
    for tasks in [10usize, 100] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        group.throughput(Throughput::Elements(tasks as u64));
        // One iteration: every task commits one message (all at once, waiting each).
        group.bench_with_input(BenchmarkId::from_parameter(tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let handles: Vec<_> = (0..tasks)
                        .map(|_| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                for _ in 0..iters {
                                    store.commit(batch(&store, 1)).await.expect("commit");
                                }
                            })
                        })
                        .collect();
                    for h in handles {
                        h.await.expect("committer task");
                    }
                    start.elapsed()
                })
            })
        });
        let s = store.stats();
        println!(
            "concurrent_committers/{tasks}: {} batches under {} fdatasyncs ({:.1} batches per \
             fsync)",
            s.batches,
            s.commits,
            s.batches as f64 / s.commits.max(1) as f64
        );
        rt.block_on(store.shutdown()).expect("shutdown");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = raw_write_fdatasync, commit_fsync, concurrent_committers
}
criterion_main!(benches);
