//! The durable store: an append-only, segmented, checksummed log of messages, queue
//! entries, acks, sessions, retained messages and QoS 2 state.
//!
//! Owns the data directory. The broker calls [`Store::open`] once (getting back what to
//! rebuild its in-memory state from), then [`Store::commit`] before it PUBACKs a QoS 1
//! message and [`Store::append`] for things that may be lost on power failure (acks,
//! attempt counts). The store never calls up into the broker and knows nothing about
//! MQTT beyond the plain data in its [`Record`]s; payloads, properties and session state
//! are opaque bytes.
//!
//! Layout of this module:
//! * `format` — the on-disk format (documented there, next to the code);
//! * `writer` — the single writer thread: group commit, segment roll, compaction, faults;
//! * `index` — what is live; shared by the writer and replay so they cannot disagree;
//! * `recovery` — replay at open, [`check`], [`salvage`];
//! * `fault` — file operations behind one seam, with injectable faults for tests.
//!
//! Guarantees: with [`DurabilityPolicy::Fsync`] a commit that returned `Ok` is on stable
//! storage (`fdatasync` of the segment; the directory was fsynced when the segment was
//! created). After a failed `fdatasync` the store is poisoned for good: the kernel may
//! have dropped the dirty pages, so nothing written since the last good fsync can be
//! trusted. It must never hand out an `Ok` it cannot stand behind, and never skip a
//! corrupt record silently.
//!
//! Not done here: locking the directory against a second process (callers must ensure
//! one store per directory), and expiry of messages (the broker acks expired entries).

mod fault;
mod format;
mod index;
mod recovery;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

pub use recovery::{check, salvage, CheckReport, SalvageReport};

use fault::{FaultPlan, Fs};
use writer::{Cmd, Writer};

/// When a commit counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DurabilityPolicy {
    /// After `fdatasync`: survives power loss. The default.
    #[default]
    Fsync,
    /// After `write()` returned: survives a crash of the process (kill -9), not of the
    /// machine.
    Write,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub policy: DurabilityPolicy,
    /// A segment is rolled once appending would take it past this size. Default 64 MiB.
    pub segment_bytes: u64,
    /// Batches that may wait in the writer's channel (backpressure). Default 1024.
    pub channel_capacity: usize,
    /// Most batches written under one `fdatasync`. Default 1024.
    pub max_batches_per_commit: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from("./data"),
            policy: DurabilityPolicy::Fsync,
            segment_bytes: 64 << 20,
            channel_capacity: 1024,
            max_batches_per_commit: 1024,
        }
    }
}

/// A published message, stored once however many sessions it is queued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// Opaque, encoded by the caller (MQTT 5 properties).
    pub properties: Bytes,
    /// Client id of the publisher.
    pub publisher: String,
    /// Unix ms.
    pub received_at_ms: u64,
    /// Unix ms.
    pub expires_at_ms: Option<u64>,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message(Arc<StoredMessage>),
    Enqueue {
        session: String,
        message_id: u64,
    },
    Ack {
        session: String,
        message_id: u64,
    },
    /// Delivery attempts so far (latest wins).
    Attempt {
        session: String,
        message_id: u64,
        attempts: u32,
    },
    /// Opaque session state (subscriptions, expiry, will); latest wins.
    Session {
        client_id: String,
        state: Bytes,
    },
    /// Also drops every queued entry and pending QoS 2 id of that session.
    SessionRemove {
        client_id: String,
    },
    /// The message record must be in the same or an earlier commit.
    Retain {
        topic: String,
        message_id: u64,
    },
    RetainClear {
        topic: String,
    },
    /// Inbound QoS 2 awaiting PUBREL.
    Qos2Received {
        session: String,
        packet_id: u16,
    },
    Qos2Released {
        session: String,
        packet_id: u16,
    },
    /// A message (in the same or an earlier commit) to publish at `due_at_ms` (Unix ms):
    /// `$delayed/<seconds>/<topic>`. It lives until its DelayDone.
    Delay {
        message_id: u64,
        due_at_ms: u64,
    },
    /// The delayed message was published (or cancelled).
    DelayDone {
        message_id: u64,
    },
    /// Outbound QoS 2: the packet id a queued message was sent with, and whether the
    /// subscriber's PUBREC came back (PUBREL stage); latest wins. With it a restart sends
    /// the same packet id again (DUP) or the PUBREL, never a new PUBLISH [MQTT-4.4.0-1].
    Outbound {
        session: String,
        message_id: u64,
        packet_id: u16,
        released: bool,
    },
}

/// What the store held at open.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Latest state per live session, sorted by client id.
    pub sessions: Vec<(String, Bytes)>,
    /// Per session, in message-id order, unacked only.
    pub queues: HashMap<String, Vec<RecoveredEntry>>,
    /// Sorted by topic.
    pub retained: Vec<(String, Arc<StoredMessage>)>,
    /// Delayed messages not yet published, with their due time (Unix ms), by due time.
    pub delayed: Vec<(Arc<StoredMessage>, u64)>,
    /// Per session, ascending.
    pub qos2_pending: HashMap<String, Vec<u16>>,
    pub next_message_id: u64,
    /// A torn tail that was cut off: file and offset of the cut.
    pub truncated_tail: Option<(PathBuf, u64)>,
    pub duration: Duration,
    pub bytes_replayed: u64,
    pub records_replayed: u64,
}

/// One unacked delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredEntry {
    pub message: Arc<StoredMessage>,
    pub attempts: u32,
    /// Outbound QoS 2: packet id and whether PUBREC was received (see [`Record::Outbound`]).
    pub outbound: Option<(u16, bool)>,
}

/// Resolves when a submitted batch is durable (or failed).
#[derive(Debug)]
pub struct CommitTicket(oneshot::Receiver<Result<(), StoreError>>);

impl CommitTicket {
    /// A ticket resolved by someone other than the store (a cluster node's queue taking
    /// the message), so a PUBACK can wait on it like on a commit.
    pub fn pending() -> (oneshot::Sender<Result<(), StoreError>>, CommitTicket) {
        let (tx, rx) = oneshot::channel();
        (tx, CommitTicket(rx))
    }

    pub async fn wait(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Waits without giving the ticket up, so the wait can be one branch of a `select!`.
    /// Once it has returned, the ticket is spent: drop it.
    pub async fn ready(&mut self) -> Result<(), StoreError> {
        (&mut self.0).await.unwrap_or(Err(StoreError::Closed))
    }

    /// The outcome if the batch is already settled. Once it returned `Some`, the ticket
    /// is spent: drop it.
    pub fn try_result(&mut self) -> Option<Result<(), StoreError>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreError::Closed)),
        }
    }
}

/// Counters for metrics and benches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records written.
    pub appends: u64,
    /// Batches written (commit + append calls that reached the disk).
    pub batches: u64,
    /// `fdatasync`s of segment files (group commits, rolls, compactions, shutdown).
    pub commits: u64,
    pub bytes_on_disk: u64,
    /// Bytes of records still needed (what compaction keeps).
    pub live_bytes: u64,
    pub segments: u64,
    pub compactions: u64,
    pub last_fsync: Duration,
    pub poisoned: bool,
}

/// What a forced compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub segments_compacted: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt log: {} at offset {offset}: {why}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        why: String,
    },
    #[error("store is poisoned after a failed write or fsync; restart to recover from the log")]
    Poisoned,
    #[error("disk full: the batch was not written")]
    DiskFull,
    #[error("not durable on another node: {0}")]
    Remote(String),
    #[error("store is closed")]
    Closed,
    #[error("{} is locked by another process (is another sluice using this data dir?)", path.display())]
    Locked { path: PathBuf },
    #[error("invalid batch: {0}")]
    Invalid(String),
}

/// Counters and flags shared by the handles and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub next_id: AtomicU64,
    pub poisoned: AtomicBool,
    pub appends: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub bytes_on_disk: AtomicU64,
    pub live_bytes: AtomicU64,
    pub segments: AtomicU64,
    pub compactions: AtomicU64,
    pub last_fsync_ns: AtomicU64,
}

/// A handle to the store; clone it freely, use it from any task.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Takes an exclusive lock on `dir/LOCK`, so a second broker on the same directory is
/// refused instead of interleaving its writes with ours.
pub fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io { path, source }),
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Creates the directory (0700) if needed, replays the log, starts the writer thread.
    pub fn open(config: StoreConfig) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(config, None)
    }

    pub(crate) fn open_with(
        config: StoreConfig,
        faults: Option<Arc<FaultPlan>>,
    ) -> Result<(Store, Recovered), StoreError> {
        let fs = Fs::new(faults);
        let existed = config.dir.is_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|source| StoreError::Io {
                path: config.dir.clone(),
                source,
            })?;
        if !existed {
            // Make the new directory's own entry durable before anything relies on it.
            if let Some(parent) = config.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs.sync_dir(parent).map_err(|source| StoreError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
        }
        let lock = lock_dir(&config.dir)?;
        let replayed = recovery::replay(&config.dir, &fs)?;
        let shared = Arc::new(Shared::default());
        shared
            .next_id
            .store(replayed.recovered.next_message_id, Ordering::SeqCst);
        let recovered = replayed.recovered.clone();
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let writer = Writer::start(&config, fs, replayed, shared.clone())?;
        let thread = std::thread::Builder::new()
            .name("sluice-store".into())
            .spawn(move || {
                writer.run(rx);
                // The directory stays locked until the writer is gone: after shutdown,
                // or once every handle has been dropped.
                drop(lock);
            })
            .map_err(|source| StoreError::Io {
                path: config.dir.clone(),
                source,
            })?;
        Ok((
            Store {
                tx,
                shared,
                thread: Arc::new(Mutex::new(Some(thread))),
            },
            recovered,
        ))
    }

    /// Writes `records` as one batch; returns once durable per the policy. Dropping the
    /// future is safe: the batch may or may not be written, the writer is unaffected.
    pub async fn commit(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.submit(records).await?.wait().await
    }

    /// Queues `records` as one batch and returns a ticket that resolves once the batch
    /// is durable per the policy. Splitting [`Store::commit`] in two lets a caller fix
    /// the batch's place in the log (before anything that depends on it, such as a
    /// subscriber's ack) and then wait for the disk without holding up its other work.
    pub async fn submit(&self, records: Vec<Record>) -> Result<CommitTicket, StoreError> {
        self.check_poisoned()?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Batch {
                records,
                done: Some(done),
            })
            .await
            .map_err(|_| self.closed())?;
        Ok(CommitTicket(rx))
    }

    /// Queues `records` as one batch; returns once the writer's channel took it, without
    /// waiting for the disk. Errors writing it later are logged, not returned.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), StoreError> {
        self.check_poisoned()?;
        self.tx
            .send(Cmd::Batch {
                records,
                done: None,
            })
            .await
            .map_err(|_| self.closed())
    }

    /// A fresh message id: monotonic, continues after recovery.
    pub fn next_message_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Writes and fsyncs everything queued before it, then stops the writer thread.
    /// Later calls on any handle return [`StoreError::Closed`]; calling it again is Ok.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown { done }).await.is_err() {
            return if self.shared.poisoned.load(Ordering::SeqCst) {
                Err(StoreError::Poisoned)
            } else {
                Ok(())
            };
        }
        let result = rx.await.unwrap_or(Err(StoreError::Closed));
        let handle = self.thread.lock().take();
        if let Some(handle) = handle {
            // The writer replied as its last act; joining only waits for it to return.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }

    /// Rolls the head segment and compacts every older segment, oldest first. Normally
    /// compaction runs by itself once dead bytes dominate; this is for tests and tools.
    pub async fn compact(&self) -> Result<CompactReport, StoreError> {
        self.check_poisoned()?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Compact { done })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Current counters.
    pub fn stats(&self) -> StoreStats {
        let s = &self.shared;
        StoreStats {
            appends: s.appends.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            commits: s.fsyncs.load(Ordering::Relaxed),
            bytes_on_disk: s.bytes_on_disk.load(Ordering::Relaxed),
            live_bytes: s.live_bytes.load(Ordering::Relaxed),
            segments: s.segments.load(Ordering::Relaxed),
            compactions: s.compactions.load(Ordering::Relaxed),
            last_fsync: Duration::from_nanos(s.last_fsync_ns.load(Ordering::Relaxed)),
            poisoned: s.poisoned.load(Ordering::SeqCst),
        }
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    fn closed(&self) -> StoreError {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            StoreError::Poisoned
        } else {
            StoreError::Closed
        }
    }
}
