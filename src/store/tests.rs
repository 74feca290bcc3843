//! Unit tests of the store: format round trips, recovery (concurrent writers, torn tails
//! at every offset, corruption and salvage), compaction, and injected faults.
//!
//! Owns nothing but temporary directories; never touches a real data directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::fault::FaultPlan;
use super::format::{self, HEADER_LEN};
use super::*;

fn msg(id: u64, topic: &str, payload: &str) -> Arc<StoredMessage> {
    Arc::new(StoredMessage {
        id,
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: 1,
        retain: false,
        properties: Bytes::new(),
        publisher: "pub".to_string(),
        received_at_ms: 1_700_000_000_000 + id,
        expires_at_ms: None,
    })
}

fn enq(session: &str, id: u64) -> Record {
    Record::Enqueue {
        session: session.to_string(),
        message_id: id,
    }
}

fn ack(session: &str, id: u64) -> Record {
    Record::Ack {
        session: session.to_string(),
        message_id: id,
    }
}

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        ..StoreConfig::default()
    }
}

fn small(dir: &Path) -> StoreConfig {
    StoreConfig {
        segment_bytes: 4096,
        ..config(dir)
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn disk_usage(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).expect("metadata").len())
        .sum()
}

fn queue_ids(rec: &Recovered, session: &str) -> Vec<u64> {
    rec.queues
        .get(session)
        .map(|q| q.iter().map(|e| e.message.id).collect())
        .unwrap_or_default()
}

fn reopen(cfg: StoreConfig) -> (Store, Recovered) {
    Store::open(cfg).expect("reopen")
}

fn every_kind() -> Vec<Record> {
    let mut m = (*msg(7, "a/b", "hello")).clone();
    m.retain = true;
    m.qos = 2;
    m.properties = Bytes::from_static(b"\x01\x02props");
    m.expires_at_ms = Some(42);
    vec![
        Record::Message(Arc::new(m)),
        enq("s", 7),
        Record::Attempt {
            session: "s".into(),
            message_id: 7,
            attempts: 3,
        },
        ack("s", 7),
        Record::Session {
            client_id: "c".into(),
            state: Bytes::from_static(b"state"),
        },
        Record::SessionRemove {
            client_id: "c".into(),
        },
        Record::Retain {
            topic: "a/b".into(),
            message_id: 7,
        },
        Record::RetainClear {
            topic: "a/b".into(),
        },
        Record::Qos2Received {
            session: "s".into(),
            packet_id: 9,
        },
        Record::Qos2Released {
            session: "s".into(),
            packet_id: 9,
        },
        Record::Outbound {
            session: "s".into(),
            message_id: 7,
            packet_id: 9,
            released: true,
        },
    ]
}

#[test]
fn format_round_trips_every_record_kind() {
    let mut buf = Vec::new();
    let records = every_kind();
    for r in &records {
        format::encode_record(&mut buf, r).expect("encode");
    }
    let mut off = 0;
    for r in &records {
        let (got, next) = format::read_frame(&buf, off).expect("decode");
        assert_eq!(&got, r);
        off = next;
    }
    assert_eq!(off, buf.len());
    let h = format::encode_header(3, 99);
    assert_eq!(
        format::decode_header(&h).expect("header"),
        format::Header {
            seq: 3,
            id_floor: 99
        }
    );
    assert_eq!(
        format::parse_segment_file_name(&format::segment_file_name(12)),
        Some(12)
    );
}

#[tokio::test]
async fn store_round_trips_every_record_kind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, rec) = Store::open(config(tmp.path())).expect("open");
    assert!(rec.queues.is_empty() && rec.sessions.is_empty());
    let m = every_kind().remove(0);
    let Record::Message(m7) = &m else {
        unreachable!()
    };
    let m7 = m7.clone();
    store
        .commit(vec![
            m,
            Record::Message(msg(8, "x", "eight")),
            enq("s", 7),
            enq("s", 8),
            enq("t", 8),
            Record::Attempt {
                session: "s".into(),
                message_id: 7,
                attempts: 2,
            },
            Record::Outbound {
                session: "s".into(),
                message_id: 8,
                packet_id: 3,
                released: false,
            },
            Record::Outbound {
                session: "s".into(),
                message_id: 8,
                packet_id: 3,
                released: true,
            },
            ack("t", 8),
            Record::Session {
                client_id: "s".into(),
                state: Bytes::from_static(b"v1"),
            },
            Record::Session {
                client_id: "s".into(),
                state: Bytes::from_static(b"v2"),
            },
            Record::Session {
                client_id: "gone".into(),
                state: Bytes::from_static(b"x"),
            },
            Record::SessionRemove {
                client_id: "gone".into(),
            },
            Record::Retain {
                topic: "a/b".into(),
                message_id: 7,
            },
            Record::Retain {
                topic: "x".into(),
                message_id: 8,
            },
            Record::RetainClear { topic: "x".into() },
            Record::Qos2Received {
                session: "s".into(),
                packet_id: 5,
            },
            Record::Qos2Received {
                session: "s".into(),
                packet_id: 6,
            },
            Record::Qos2Released {
                session: "s".into(),
                packet_id: 5,
            },
            // Ignored: unknown message, entry not queued.
            enq("s", 999),
            ack("nobody", 7),
        ])
        .await
        .expect("commit");
    store.shutdown().await.expect("shutdown");
    assert!(matches!(
        store.commit(vec![]).await,
        Err(StoreError::Closed)
    ));

    let (store, rec) = reopen(config(tmp.path()));
    assert_eq!(queue_ids(&rec, "s"), vec![7, 8]);
    assert_eq!(rec.queues["s"][0].attempts, 2);
    assert_eq!(rec.queues["s"][0].outbound, None);
    assert_eq!(rec.queues["s"][1].outbound, Some((3, true)), "latest wins");
    assert_eq!(rec.queues["s"][0].message, m7);
    assert!(!rec.queues.contains_key("t"));
    assert_eq!(
        rec.sessions,
        vec![("s".to_string(), Bytes::from_static(b"v2"))]
    );
    assert_eq!(rec.retained.len(), 1);
    assert_eq!(rec.retained[0].0, "a/b");
    assert_eq!(rec.retained[0].1, m7);
    assert_eq!(rec.qos2_pending["s"], vec![6]);
    assert!(rec.next_message_id > 8);
    assert!(store.next_message_id() > 8);
    assert_eq!(rec.truncated_tail, None);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_recover_in_id_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(config(tmp.path())).expect("open");
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..40u64 {
                let id = store.next_message_id();
                let session = format!("s{}", (t + i) % 4);
                store
                    .commit(vec![
                        Record::Message(msg(id, "t", &format!("{t}-{i}"))),
                        enq(&session, id),
                        enq("all", id),
                    ])
                    .await
                    .expect("commit");
                if i % 3 == 0 {
                    store.append(vec![ack("all", id)]).await.expect("append");
                } else {
                    mine.push(id);
                }
                tokio::task::yield_now().await;
            }
            mine
        }));
    }
    let mut unacked = Vec::new();
    for t in tasks {
        unacked.extend(t.await.expect("task"));
    }
    unacked.sort_unstable();
    // Appends are only queued when `append` returns: read the counters after shutdown.
    store.shutdown().await.expect("shutdown");
    let stats = store.stats();
    assert_eq!(stats.batches, 16 * 40 + 16 * 14);
    assert!(stats.commits <= 16 * 40 + 1, "group commit shares fsyncs");

    let (store, rec) = reopen(config(tmp.path()));
    assert_eq!(queue_ids(&rec, "all"), unacked);
    let mut total = 0;
    for s in 0..4 {
        let ids = queue_ids(&rec, &format!("s{s}"));
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order");
        total += ids.len();
    }
    assert_eq!(total, 16 * 40);
    assert_eq!(rec.records_replayed, 16 * 40 * 3 + 16 * 14);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn torn_tail_at_every_offset_keeps_the_prefix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(config(tmp.path())).expect("open");
    for id in 1..=5 {
        store
            .commit(vec![Record::Message(msg(id, "t", "p")), enq("s", id)])
            .await
            .expect("commit");
    }
    let seg = segment_files(tmp.path()).remove(0);
    let good = std::fs::metadata(&seg).expect("meta").len();
    store
        .commit(vec![Record::Message(msg(6, "t", "the last one"))])
        .await
        .expect("commit");
    store.shutdown().await.expect("shutdown");
    let full = std::fs::read(&seg).expect("read");
    assert!(full.len() as u64 > good + 20);

    for cut in good + 1..full.len() as u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(seg.file_name().expect("name"));
        std::fs::write(&path, &full[..cut as usize]).expect("write");
        let (store, rec) = reopen(config(dir.path()));
        assert_eq!(queue_ids(&rec, "s"), vec![1, 2, 3, 4, 5], "cut at {cut}");
        assert_eq!(
            rec.truncated_tail,
            Some((path.clone(), good)),
            "cut at {cut}"
        );
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), good);
        // The store keeps working after the cut, and the next open is clean.
        store
            .commit(vec![Record::Message(msg(7, "t", "after")), enq("s", 7)])
            .await
            .expect("commit after truncation");
        store.shutdown().await.expect("shutdown");
        let (store, rec) = reopen(config(dir.path()));
        assert_eq!(rec.truncated_tail, None);
        assert_eq!(queue_ids(&rec, "s"), vec![1, 2, 3, 4, 5, 7]);
        store.shutdown().await.expect("shutdown");
    }
}

/// Writes 10 one-record commits and returns the frame offsets.
async fn ten_messages(dir: &Path) -> Vec<u64> {
    let (store, _) = Store::open(config(dir)).expect("open");
    let seg = segment_files(dir).remove(0);
    let mut offsets = Vec::new();
    for id in 1..=10 {
        offsets.push(std::fs::metadata(&seg).expect("meta").len());
        store
            .commit(vec![Record::Message(msg(id, "t", "payload")), enq("s", id)])
            .await
            .expect("commit");
    }
    store.shutdown().await.expect("shutdown");
    offsets
}

#[tokio::test]
async fn flipped_bit_in_the_middle_is_corruption_and_salvage_keeps_the_prefix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let offsets = ten_messages(tmp.path()).await;
    let seg = segment_files(tmp.path()).remove(0);
    let mut data = std::fs::read(&seg).expect("read");
    let at = offsets[4] as usize + 20; // inside the body of the 5th commit's message
    data[at] ^= 0x10;
    std::fs::write(&seg, &data).expect("write");

    match Store::open(config(tmp.path())) {
        Err(StoreError::Corrupt { path, offset, why }) => {
            assert_eq!(path, seg);
            assert_eq!(offset, offsets[4]);
            assert!(why.contains("checksum"), "{why}");
            let shown = StoreError::Corrupt {
                path: path.clone(),
                offset,
                why,
            }
            .to_string();
            assert!(
                shown.contains(&seg.display().to_string()) && shown.contains(&offset.to_string())
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        check(tmp.path()),
        Err(StoreError::Corrupt { offset, .. }) if offset == offsets[4]
    ));
    // check only reads.
    assert_eq!(std::fs::read(&seg).expect("read"), data);

    let report = salvage(tmp.path()).expect("salvage");
    assert_eq!(report.truncated_at, Some((seg.clone(), offsets[4])));
    assert_eq!(report.records_kept, 8);
    let (store, rec) = reopen(config(tmp.path()));
    assert_eq!(queue_ids(&rec, "s"), vec![1, 2, 3, 4]);
    assert_eq!(rec.truncated_tail, None);
    store.shutdown().await.expect("shutdown");
    let report = check(tmp.path()).expect("check");
    assert_eq!(report.queued_entries, 4);
}

#[tokio::test]
async fn bad_record_in_an_older_segment_is_corruption_even_at_its_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(small(tmp.path())).expect("open");
    for id in 1..=200 {
        store
            .commit(vec![
                Record::Message(msg(id, "t", "0123456789")),
                enq("s", id),
            ])
            .await
            .expect("commit");
    }
    store.shutdown().await.expect("shutdown");
    let segs = segment_files(tmp.path());
    assert!(segs.len() > 2);
    let first = &segs[0];
    let mut data = std::fs::read(first).expect("read");
    let len = data.len();
    data[len - 3] ^= 1; // last record of a sealed segment: not a torn tail
    std::fs::write(first, &data).expect("write");
    match Store::open(small(tmp.path())) {
        Err(StoreError::Corrupt { path, .. }) => assert_eq!(&path, first),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let report = salvage(tmp.path()).expect("salvage");
    assert_eq!(report.removed_segments.len(), segs.len() - 1);
    let (store, rec) = reopen(small(tmp.path()));
    let ids = queue_ids(&rec, "s");
    assert!(!ids.is_empty() && ids.len() < 200);
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn compaction_drops_acked_and_keeps_live() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = small(tmp.path());
    let (store, _) = Store::open(cfg.clone()).expect("open");
    store
        .commit(vec![
            Record::Message(msg(1, "old", "from long ago")),
            enq("slow", 1),
            Record::Message(msg(2, "r", "retained")),
            Record::Retain {
                topic: "r".into(),
                message_id: 2,
            },
            Record::Session {
                client_id: "slow".into(),
                state: Bytes::from_static(b"slow-state"),
            },
            Record::Qos2Received {
                session: "slow".into(),
                packet_id: 77,
            },
            Record::Outbound {
                session: "slow".into(),
                message_id: 1,
                packet_id: 12,
                released: true,
            },
        ])
        .await
        .expect("commit");
    let mut next = 3;
    for round in 0..5 {
        for _ in 0..300 {
            let id = next;
            next += 1;
            store
                .commit(vec![
                    Record::Message(msg(id, "t", "some payload bytes")),
                    enq("fast", id),
                    enq("slow", id),
                ])
                .await
                .expect("commit");
            store
                .append(vec![
                    ack("fast", id),
                    ack("slow", id),
                    Record::Attempt {
                        session: "slow".into(),
                        message_id: 1,
                        attempts: round + 1,
                    },
                ])
                .await
                .expect("append");
        }
        let first_before = segment_files(tmp.path())[0].clone();
        let before = disk_usage(tmp.path());
        let report = store.compact().await.expect("compact");
        let after = disk_usage(tmp.path());
        assert!(report.segments_compacted > 0);
        // Automatic compaction may already have done most of the work.
        assert!(
            after <= before && after < 2048,
            "round {round}: {before} -> {after}"
        );
        assert!(!first_before.exists(), "oldest segment deleted");
        assert_eq!(report.bytes_after, after);
        assert!(store.stats().compactions > 0);
    }
    // Unacked entries of the last messages stay.
    store
        .commit(vec![
            Record::Message(msg(next, "t", "tail")),
            enq("fast", next),
        ])
        .await
        .expect("commit");
    store.shutdown().await.expect("shutdown");

    let (store, rec) = reopen(cfg.clone());
    assert_eq!(queue_ids(&rec, "slow"), vec![1]);
    assert_eq!(rec.queues["slow"][0].attempts, 5);
    assert_eq!(
        rec.queues["slow"][0].outbound,
        Some((12, true)),
        "the outbound QoS 2 stage is carried with its entry"
    );
    assert_eq!(rec.queues["slow"][0].message.payload, "from long ago");
    assert_eq!(queue_ids(&rec, "fast"), vec![next]);
    assert_eq!(rec.retained.len(), 1);
    assert_eq!(rec.retained[0].1.id, 2);
    assert_eq!(
        rec.sessions,
        vec![("slow".to_string(), Bytes::from_static(b"slow-state"))]
    );
    assert_eq!(rec.qos2_pending["slow"], vec![77]);
    assert_eq!(rec.next_message_id, next + 1);
    assert!(disk_usage(tmp.path()) < 16 * 1024);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn automatic_compaction_bounds_disk_use_with_a_slow_subscriber() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = small(tmp.path());
    let (store, _) = Store::open(cfg.clone()).expect("open");
    store
        .commit(vec![
            Record::Message(msg(1, "old", "pinned")),
            enq("slow", 1),
        ])
        .await
        .expect("commit");
    let mut max_disk = 0;
    for id in 2..3000 {
        store
            .commit(vec![
                Record::Message(msg(id, "t", "payload payload")),
                enq("fast", id),
            ])
            .await
            .expect("commit");
        store.commit(vec![ack("fast", id)]).await.expect("ack");
        max_disk = max_disk.max(store.stats().bytes_on_disk);
    }
    store.shutdown().await.expect("shutdown");
    let stats = store.stats();
    assert!(stats.compactions > 10, "{stats:?}");
    assert!(max_disk < 8 * 4096, "disk stayed small: {max_disk}");
    assert_eq!(stats.bytes_on_disk, disk_usage(tmp.path()));
    let (store, rec) = reopen(cfg);
    assert_eq!(queue_ids(&rec, "slow"), vec![1]);
    assert!(queue_ids(&rec, "fast").is_empty());
    assert_eq!(rec.next_message_id, 3000);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn message_ids_stay_monotonic_after_everything_was_compacted_away() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(small(tmp.path())).expect("open");
    for _ in 0..100 {
        let id = store.next_message_id();
        store
            .commit(vec![Record::Message(msg(id, "t", "x")), enq("s", id)])
            .await
            .expect("commit");
        store.commit(vec![ack("s", id)]).await.expect("ack");
    }
    let last = store.next_message_id();
    store.compact().await.expect("compact");
    store.compact().await.expect("compact twice");
    store.shutdown().await.expect("shutdown");
    let (store, rec) = reopen(small(tmp.path()));
    assert!(rec.queues.is_empty());
    assert!(
        rec.next_message_id >= last,
        "{} < {last}",
        rec.next_message_id
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn session_remove_drops_the_queue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(small(tmp.path())).expect("open");
    store
        .commit(vec![
            Record::Session {
                client_id: "c".into(),
                state: Bytes::from_static(b"s"),
            },
            Record::Message(msg(1, "t", "x")),
            enq("c", 1),
            enq("d", 1),
            Record::Qos2Received {
                session: "c".into(),
                packet_id: 1,
            },
        ])
        .await
        .expect("commit");
    store
        .commit(vec![Record::SessionRemove {
            client_id: "c".into(),
        }])
        .await
        .expect("commit");
    store.compact().await.expect("compact");
    store.shutdown().await.expect("shutdown");
    let (store, rec) = reopen(small(tmp.path()));
    assert!(queue_ids(&rec, "c").is_empty());
    assert_eq!(queue_ids(&rec, "d"), vec![1]);
    assert!(rec.sessions.is_empty());
    assert!(!rec.qos2_pending.contains_key("c"));
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn failed_fsync_poisons_the_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultPlan::default());
    let (store, _) = Store::open_with(config(tmp.path()), Some(faults.clone())).expect("open");
    store
        .commit(vec![Record::Message(msg(1, "t", "x")), enq("s", 1)])
        .await
        .expect("commit");
    faults.fail_syncs.store(1, Ordering::SeqCst);
    assert!(matches!(
        store
            .commit(vec![Record::Message(msg(2, "t", "x")), enq("s", 2)])
            .await,
        Err(StoreError::Poisoned)
    ));
    assert!(store.stats().poisoned);
    for _ in 0..3 {
        assert!(matches!(
            store.commit(vec![enq("s", 1)]).await,
            Err(StoreError::Poisoned)
        ));
        assert!(matches!(
            store.append(vec![enq("s", 1)]).await,
            Err(StoreError::Poisoned)
        ));
    }
    assert!(matches!(store.shutdown().await, Err(StoreError::Poisoned)));
    let (store, rec) = reopen(config(tmp.path()));
    // The acknowledged commit is there; the failed one may or may not be.
    assert_eq!(queue_ids(&rec, "s")[0], 1);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn disk_full_fails_only_that_batch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultPlan::default());
    let (store, _) = Store::open_with(config(tmp.path()), Some(faults.clone())).expect("open");
    store
        .commit(vec![Record::Message(msg(1, "t", "x")), enq("s", 1)])
        .await
        .expect("commit");
    let size = disk_usage(tmp.path());
    faults.enospc_writes.store(1, Ordering::SeqCst);
    assert!(matches!(
        store
            .commit(vec![Record::Message(msg(2, "t", "lost")), enq("s", 2)])
            .await,
        Err(StoreError::DiskFull)
    ));
    assert_eq!(
        disk_usage(tmp.path()),
        size,
        "partial record truncated away"
    );
    assert!(!store.stats().poisoned);
    store
        .commit(vec![Record::Message(msg(3, "t", "x")), enq("s", 3)])
        .await
        .expect("commit after space returned");
    store.shutdown().await.expect("shutdown");
    let (store, rec) = reopen(config(tmp.path()));
    assert_eq!(rec.truncated_tail, None);
    assert_eq!(queue_ids(&rec, "s"), vec![1, 3]);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn disk_full_during_roll_and_compaction_recovers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(FaultPlan::default());
    let cfg = small(tmp.path());
    let (store, _) = Store::open_with(cfg.clone(), Some(faults.clone())).expect("open");
    let mut kept = Vec::new();
    for id in 1..400u64 {
        if id % 50 == 0 {
            faults.enospc_writes.store(1, Ordering::SeqCst);
            let r = store
                .commit(vec![
                    Record::Message(msg(id, "t", "abcdefgh")),
                    enq("s", id),
                ])
                .await;
            assert!(matches!(r, Err(StoreError::DiskFull)), "{r:?}");
            continue;
        }
        store
            .commit(vec![
                Record::Message(msg(id, "t", "abcdefgh")),
                enq("s", id),
            ])
            .await
            .expect("commit");
        if id % 7 == 0 {
            kept.push(id);
        } else {
            store.commit(vec![ack("s", id)]).await.expect("ack");
        }
    }
    faults.enospc_writes.store(1, Ordering::SeqCst);
    assert!(matches!(store.compact().await, Err(StoreError::DiskFull)));
    store.compact().await.expect("compaction retried");
    store.shutdown().await.expect("shutdown");
    let (store, rec) = reopen(cfg);
    assert_eq!(queue_ids(&rec, "s"), kept);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn files_are_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (store, _) = Store::open(small(&dir)).expect("open");
    for id in 1..100 {
        store
            .commit(vec![
                Record::Message(msg(id, "t", "0123456789abcdef")),
                enq("s", id),
            ])
            .await
            .expect("commit");
    }
    store.shutdown().await.expect("shutdown");
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let segs = segment_files(&dir);
    assert!(segs.len() > 1);
    for s in segs {
        assert_eq!(mode(&s), 0o600, "{}", s.display());
    }
}

#[tokio::test]
async fn write_policy_and_append_survive_shutdown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig {
        policy: DurabilityPolicy::Write,
        ..config(tmp.path())
    };
    let (store, _) = Store::open(cfg.clone()).expect("open");
    store
        .commit(vec![
            Record::Message(msg(1, "t", "x")),
            enq("s", 1),
            enq("s2", 1),
        ])
        .await
        .expect("commit");
    assert_eq!(
        store.stats().commits,
        0,
        "Write policy does not fsync per commit"
    );
    store.append(vec![ack("s", 1)]).await.expect("append");
    store.shutdown().await.expect("shutdown");
    store.shutdown().await.expect("shutdown is idempotent");
    let (store, rec) = reopen(cfg);
    assert!(queue_ids(&rec, "s").is_empty());
    assert_eq!(queue_ids(&rec, "s2"), vec![1]);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn dropped_commit_futures_do_not_wedge_the_writer() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(config(tmp.path())).expect("open");
    for id in 1..50 {
        let fut = store.commit(vec![Record::Message(msg(id, "t", "x")), enq("s", id)]);
        // Poll once, then drop.
        let _ = tokio::time::timeout(std::time::Duration::from_nanos(1), fut).await;
    }
    store
        .commit(vec![Record::Message(msg(100, "t", "x")), enq("s", 100)])
        .await
        .expect("writer still works");
    store.shutdown().await.expect("shutdown");
    let (store, rec) = reopen(config(tmp.path()));
    assert_eq!(queue_ids(&rec, "s").last(), Some(&100));
    store.shutdown().await.expect("shutdown");
}

#[test]
fn torn_segment_header_is_dropped_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(format::segment_file_name(1));
    std::fs::write(&path, &format::encode_header(1, 5)[..HEADER_LEN / 2]).expect("write");
    let (_store, rec) = Store::open(config(tmp.path())).expect("open");
    assert_eq!(rec.truncated_tail, Some((path, 0)));
}

#[tokio::test]
async fn crash_between_carry_and_delete_replays_the_same_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = small(tmp.path());
    let (store, _) = Store::open(cfg.clone()).expect("open");
    store
        .commit(vec![
            Record::Message(msg(1, "t", "shared")),
            enq("a", 1),
            enq("b", 1),
            Record::Attempt {
                session: "b".into(),
                message_id: 1,
                attempts: 1,
            },
        ])
        .await
        .expect("commit");
    // The ack of `a` lands in an early segment that compaction will delete.
    store.commit(vec![ack("a", 1)]).await.expect("ack");
    let mut live = vec![1];
    for id in 2..300 {
        store
            .commit(vec![
                Record::Message(msg(id, "t", "filler filler")),
                enq("b", id),
            ])
            .await
            .expect("commit");
        if id % 10 == 0 {
            live.push(id);
        } else {
            store.commit(vec![ack("b", id)]).await.expect("ack");
        }
    }
    store.shutdown().await.expect("shutdown");
    let snapshot: Vec<(PathBuf, Vec<u8>)> = segment_files(tmp.path())
        .into_iter()
        .map(|p| {
            let d = std::fs::read(&p).expect("read");
            (p, d)
        })
        .collect();

    let (store, _) = reopen(cfg.clone());
    store.compact().await.expect("compact");
    store.shutdown().await.expect("shutdown");
    // Pretend the process died after the carried copies were durable but before the
    // old segments were deleted: put the old segments back.
    for (p, d) in &snapshot {
        if !p.exists() {
            std::fs::write(p, d).expect("restore");
        }
    }
    for _ in 0..2 {
        let (store, rec) = reopen(cfg.clone());
        assert!(queue_ids(&rec, "a").is_empty(), "acked entry came back");
        assert_eq!(queue_ids(&rec, "b"), live);
        assert_eq!(rec.queues["b"][0].attempts, 1);
        store.compact().await.expect("compact again");
        store.shutdown().await.expect("shutdown");
    }
}
