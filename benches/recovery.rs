//! Recovery time: how long `Store::open` takes to replay a log of a given size.
//!
//! Writes `SLUICE_RECOVERY_MB` (default 1024) megabytes of 1 KiB messages, each queued for
//! one persistent session (message + enqueue record, committed 1000 messages at a time;
//! a tenth of them acked so replay also has acks to apply), closes the store, and times a
//! fresh open, reporting MB/s and records/s. `cargo bench --bench recovery` runs it at full
//! size; under `cargo test` (no `--bench` argument) it runs a 4 MB smoke version so the
//! suite stays fast.

use bytes::Bytes;
use sluice::store::{DurabilityPolicy, Record, Store, StoreConfig, StoredMessage};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mb: u64 = if full {
        std::env::var("SLUICE_RECOVERY_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024)
    } else {
        4
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = || StoreConfig {
        dir: dir.path().to_path_buf(),
        policy: DurabilityPolicy::Write,
        ..Default::default()
    };
    let payload = Bytes::from(vec![0x5a; 1024]);
    let per_message = 1024 + 100;
    let messages = mb * 1024 * 1024 / per_message;
    let started = Instant::now();
    rt.block_on(async {
        let (store, _) = Store::open(config()).expect("open");
        let mut batch = Vec::with_capacity(2000);
        for i in 0..messages {
            let id = store.next_message_id();
            batch.push(Record::Message(Arc::new(StoredMessage {
                id,
                topic: format!("sensors/{}/temp", i % 1000),
                payload: payload.clone(),
                qos: 1,
                retain: false,
                properties: Bytes::new(),
                publisher: "bench".into(),
                received_at_ms: 0,
                expires_at_ms: None,
            })));
            batch.push(Record::Enqueue {
                session: "offline-subscriber".into(),
                message_id: id,
            });
            if i % 10 == 0 {
                batch.push(Record::Ack {
                    session: "offline-subscriber".into(),
                    message_id: id,
                });
            }
            if batch.len() >= 2000 {
                store
                    .commit(std::mem::take(&mut batch))
                    .await
                    .expect("commit");
            }
        }
        store.commit(batch).await.expect("commit");
        store.shutdown().await.expect("shutdown");
    });
    let wrote = started.elapsed();
    let opened = Instant::now();
    let (store, recovered) = Store::open(config()).expect("reopen");
    let took = opened.elapsed();
    let queued: usize = recovered.queues.values().map(Vec::len).sum();
    let mb_replayed = recovered.bytes_replayed as f64 / (1024.0 * 1024.0);
    println!(
        "recovery: {mb_replayed:.0} MB, {} records, {queued} queued messages replayed in {:.2} s \
         ({:.0} MB/s, {:.0} records/s); writing took {:.1} s",
        recovered.records_replayed,
        took.as_secs_f64(),
        mb_replayed / took.as_secs_f64(),
        recovered.records_replayed as f64 / took.as_secs_f64(),
        wrote.as_secs_f64()
    );
    assert_eq!(queued as u64, messages - messages.div_ceil(10));
    rt.block_on(store.shutdown()).expect("shutdown");
}
