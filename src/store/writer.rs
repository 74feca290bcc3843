//! The single writer thread: the only code that writes, fsyncs or deletes segment files
//! while the store is open.
//!
//! Owns: the head segment, the list of segments, the liveness [`Index`], group commit
//! (take one batch, drain what is already queued up to `max_batches_per_commit`, write
//! them with one `write()` per segment, one `fdatasync`, then complete them all), segment
//! rolls, compaction (oldest sealed segment first) and the fault policy:
//! * a failed `fdatasync` (or a write failing with anything but ENOSPC, or a failed
//!   truncate/directory fsync) POISONS the store: every later batch gets `Poisoned`;
//! * ENOSPC on a write fails the batches of that write with `DiskFull`, truncates the
//!   segment back to the last good offset and carries on.
//!
//! Called only through the channel by [`super::Store`] handles. It never blocks on
//! anything but its channel and the disk, never calls back into the broker, and never
//! completes a waiter before the data is as durable as the policy promises.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::fault::{is_disk_full, Fs};
use super::format::{self, HEADER_LEN};
use super::index::{Carried, Index, Loc};
use super::recovery::Replayed;
use super::{CompactReport, DurabilityPolicy, Record, Shared, StoreConfig, StoreError};

type Done<T> = oneshot::Sender<Result<T, StoreError>>;

/// What handles send to the writer.
pub(crate) enum Cmd {
    Batch {
        records: Vec<Record>,
        /// `None` for `append` (nobody waits).
        done: Option<Done<()>>,
    },
    Compact {
        done: Done<CompactReport>,
    },
    Shutdown {
        done: Done<()>,
    },
}

struct Head {
    seq: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

/// Records carried by compaction are written in chunks this big so segments can roll
/// between chunks.
const CARRY_CHUNK: usize = 64;

pub(crate) struct Writer {
    dir: PathBuf,
    fs: Fs,
    policy: DurabilityPolicy,
    segment_bytes: u64,
    max_batches: usize,
    index: Index,
    /// seq → size of every segment, head included.
    segments: BTreeMap<u64, u64>,
    head: Head,
    /// Bytes written to the head since its last fdatasync.
    dirty: bool,
    poisoned: bool,
    /// Set when compaction hit something it must not paper over (corrupt sealed segment,
    /// failed delete); compaction stops, commits go on.
    compaction_stopped: bool,
    shared: Arc<Shared>,
    buf: Vec<u8>,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format::segment_file_name(seq))
}

impl Writer {
    /// Takes over the recovered state; opens the last segment as head or creates the first.
    pub(crate) fn start(
        config: &StoreConfig,
        fs: Fs,
        replayed: Replayed,
        shared: Arc<Shared>,
    ) -> Result<Writer, StoreError> {
        let dir = config.dir.clone();
        let segments: BTreeMap<u64, u64> = replayed.segments.iter().copied().collect();
        let head = match segments.last_key_value() {
            Some((&seq, &len)) => {
                let path = seg_path(&dir, seq);
                let file = fs.open_append(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                Head {
                    seq,
                    path,
                    file,
                    len,
                }
            }
            None => create_segment(&fs, &dir, 1, replayed.recovered.next_message_id)?,
        };
        let mut w = Writer {
            dir,
            fs,
            policy: config.policy,
            segment_bytes: config.segment_bytes.max(HEADER_LEN as u64 + 1),
            max_batches: config.max_batches_per_commit.max(1),
            index: replayed.index,
            segments,
            head,
            dirty: false,
            poisoned: false,
            compaction_stopped: false,
            shared,
            buf: Vec::new(),
        };
        w.segments.insert(w.head.seq, w.head.len);
        w.publish_sizes();
        Ok(w)
    }

    /// The thread's main loop.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut group = Vec::new();
        loop {
            let Some(first) = rx.blocking_recv() else {
                // Every handle is gone: make what was written durable and stop.
                let _ = self.sync_if_dirty();
                return;
            };
            let mut control = None;
            match first {
                Cmd::Batch { records, done } => group.push((records, done)),
                other => control = Some(other),
            }
            while control.is_none() && group.len() < self.max_batches {
                match rx.try_recv() {
                    Ok(Cmd::Batch { records, done }) => group.push((records, done)),
                    Ok(other) => control = Some(other),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit_group(std::mem::take(&mut group));
            }
            match control {
                Some(Cmd::Compact { done }) => {
                    let _ = done.send(self.compact_all());
                }
                Some(Cmd::Shutdown { done }) => {
                    let result = self.sync_if_dirty();
                    info!(dir = %self.dir.display(), "store writer stopped");
                    drop(self);
                    let _ = done.send(result);
                    return;
                }
                Some(Cmd::Batch { .. }) | None => self.maybe_compact(),
            }
        }
    }

    fn commit_group(&mut self, group: Vec<(Vec<Record>, Option<Done<()>>)>) {
        let batches: Vec<&[Record]> = group.iter().map(|(r, _)| r.as_slice()).collect();
        let mut results = self.write_batches(&batches);
        let waiters = group.iter().any(|(_, d)| d.is_some());
        if waiters && self.policy == DurabilityPolicy::Fsync && results.iter().any(Result::is_ok) {
            if let Err(e) = self.sync_if_dirty() {
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(clone_err(&e));
                }
            }
        }
        self.publish_sizes();
        for ((_, done), result) in group.into_iter().zip(results) {
            match done {
                Some(done) => {
                    let _ = done.send(result);
                }
                None => {
                    if let Err(e) = result {
                        warn!(error = %e, "appended batch was not written");
                    }
                }
            }
        }
    }

    /// Writes batches in order, one `write()` per run of batches that fit in the head
    /// segment, rolling between batches. Applies each batch to the index only once its
    /// bytes are written. Does not fsync (except the old head on roll).
    fn write_batches(&mut self, batches: &[&[Record]]) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Result<(), StoreError>> = batches.iter().map(|_| Ok(())).collect();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // (batch index, locations relative to the start of `buf`)
        let mut pending: Vec<(usize, Vec<(u64, u32)>)> = Vec::new();
        for (i, records) in batches.iter().enumerate() {
            if self.poisoned {
                results[i] = Err(StoreError::Poisoned);
                continue;
            }
            let mark = buf.len();
            let mut rel = Vec::with_capacity(records.len());
            let mut invalid = None;
            for rec in records.iter() {
                let start = buf.len();
                match format::encode_record(&mut buf, rec) {
                    Ok(n) => rel.push((start as u64, n as u32)),
                    Err(why) => {
                        invalid = Some(why);
                        break;
                    }
                }
            }
            if let Some(why) = invalid {
                buf.truncate(mark);
                results[i] = Err(StoreError::Invalid(why));
                continue;
            }
            let would_be = self.head.len + buf.len() as u64;
            if would_be > self.segment_bytes && self.head.len + mark as u64 > HEADER_LEN as u64 {
                let this = buf.split_off(mark);
                self.flush(&buf, &mut pending, batches, &mut results);
                buf = this;
                for r in rel.iter_mut() {
                    r.0 -= mark as u64;
                }
                if let Err(e) = self.roll() {
                    results[i] = Err(e);
                    buf.clear();
                    continue;
                }
            }
            pending.push((i, rel));
        }
        self.flush(&buf, &mut pending, batches, &mut results);
        buf.clear();
        self.buf = buf;
        results
    }

    /// Writes `buf` (the pending batches) at the end of the head.
    fn flush(
        &mut self,
        buf: &[u8],
        pending: &mut Vec<(usize, Vec<(u64, u32)>)>,
        batches: &[&[Record]],
        results: &mut [Result<(), StoreError>],
    ) {
        if pending.is_empty() {
            return;
        }
        if self.poisoned {
            for (i, _) in pending.drain(..) {
                results[i] = Err(StoreError::Poisoned);
            }
            return;
        }
        let base = self.head.len;
        match self.fs.append(&mut self.head.file, buf) {
            Ok(()) => {
                self.head.len += buf.len() as u64;
                self.dirty = true;
                let mut appended = 0u64;
                for (i, rel) in pending.drain(..) {
                    for (rec, (off, len)) in batches[i].iter().zip(rel) {
                        let loc = Loc {
                            seg: self.head.seq,
                            off: base + off,
                            len,
                        };
                        if let Record::Message(m) = rec {
                            self.shared.next_id.fetch_max(m.id + 1, Ordering::SeqCst);
                        }
                        self.index.apply(rec, loc);
                    }
                    appended += batches[i].len() as u64;
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                }
                self.shared.appends.fetch_add(appended, Ordering::Relaxed);
            }
            Err(e) if is_disk_full(&e) => {
                warn!(
                    file = %self.head.path.display(),
                    offset = base,
                    bytes = buf.len(),
                    "disk full: failing the batch and truncating back to the last good record"
                );
                let outcome = match self.fs.truncate(&self.head.file, base) {
                    Ok(()) => StoreError::DiskFull,
                    Err(te) => {
                        self.poison(&format!(
                            "could not truncate {} back to {base} after ENOSPC: {te}",
                            self.head.path.display()
                        ));
                        StoreError::Poisoned
                    }
                };
                for (i, _) in pending.drain(..) {
                    results[i] = Err(clone_err(&outcome));
                }
            }
            Err(e) => {
                self.poison(&format!(
                    "write to {} at offset {base} failed: {e}",
                    self.head.path.display()
                ));
                for (i, _) in pending.drain(..) {
                    results[i] = Err(StoreError::Poisoned);
                }
            }
        }
    }

    /// Seals the head (fsync) and starts the next segment.
    fn roll(&mut self) -> Result<(), StoreError> {
        self.sync_if_dirty()?;
        let next = create_segment(
            &self.fs,
            &self.dir,
            self.head.seq + 1,
            self.index.max_id + 1,
        )
        .map_err(|e| match e {
            StoreError::Io { source, .. } if is_disk_full(&source) => StoreError::DiskFull,
            other => other,
        })?;
        debug!(file = %next.path.display(), "rolled to a new segment");
        self.segments.insert(self.head.seq, self.head.len);
        self.head = next;
        self.segments.insert(self.head.seq, self.head.len);
        self.publish_sizes();
        Ok(())
    }

    fn sync_if_dirty(&mut self) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        if !self.dirty {
            return Ok(());
        }
        let started = Instant::now();
        match self.fs.sync_data(&self.head.file) {
            Ok(()) => {
                self.dirty = false;
                let took = started.elapsed();
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .last_fsync_ns
                    .store(took.as_nanos() as u64, Ordering::Relaxed);
                crate::metrics::hot()
                    .fsync_duration
                    .record(took.as_secs_f64());
                Ok(())
            }
            Err(e) => {
                self.poison(&format!(
                    "fdatasync of {} failed: {e}",
                    self.head.path.display()
                ));
                Err(StoreError::Poisoned)
            }
        }
    }

    fn poison(&mut self, why: &str) {
        self.poisoned = true;
        self.shared.poisoned.store(true, Ordering::SeqCst);
        error!(
            dir = %self.dir.display(),
            "STORE POISONED: {why}. Every later commit fails with Poisoned; data not yet \
             fsynced may be lost. Restart the broker to recover from the log."
        );
    }

    fn publish_sizes(&mut self) {
        self.segments.insert(self.head.seq, self.head.len);
        let total: u64 = self.segments.values().sum();
        self.shared.bytes_on_disk.store(total, Ordering::Relaxed);
        self.shared
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
        self.shared
            .live_bytes
            .store(self.index.live_bytes(), Ordering::Relaxed);
    }

    fn disk_bytes(&mut self) -> u64 {
        self.segments.insert(self.head.seq, self.head.len);
        self.segments.values().sum()
    }

    /// Compacts the oldest sealed segment when dead bytes dominate the log: more than
    /// twice the live bytes plus one segment of slack. At most one segment per call, so
    /// commits are never held up by more than one segment's worth of copying.
    fn maybe_compact(&mut self) {
        if self.poisoned || self.compaction_stopped || self.segments.len() < 2 {
            return;
        }
        let disk = self.disk_bytes();
        let live = self.index.live_bytes();
        if disk <= live.saturating_mul(2) + self.segment_bytes {
            return;
        }
        let Some((&oldest, _)) = self.segments.first_key_value() else {
            return;
        };
        if oldest == self.head.seq {
            return;
        }
        if let Err(e) = self.compact_segment(oldest) {
            warn!(error = %e, segment = oldest, "compaction did not complete");
        }
    }

    /// Rolls the head and compacts every segment older than the new head, oldest first.
    fn compact_all(&mut self) -> Result<CompactReport, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let bytes_before = self.disk_bytes();
        if self.head.len > HEADER_LEN as u64 {
            self.roll()?;
        }
        let targets: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|&s| s < self.head.seq)
            .collect();
        let mut report = CompactReport {
            bytes_before,
            ..CompactReport::default()
        };
        for seq in targets {
            self.compact_segment(seq)?;
            report.segments_compacted += 1;
        }
        report.bytes_after = self.disk_bytes();
        self.publish_sizes();
        Ok(report)
    }

    /// Re-appends the live records of sealed segment `seq` (which must be the oldest) to
    /// the head, makes them durable, deletes the segment and fsyncs the directory.
    fn compact_segment(&mut self, seq: u64) -> Result<(), StoreError> {
        if self.compaction_stopped {
            return Err(StoreError::Invalid("compaction is stopped".into()));
        }
        debug_assert_eq!(self.segments.first_key_value().map(|(&s, _)| s), Some(seq));
        let path = seg_path(&self.dir, seq);
        let size = self.segments.get(&seq).copied().unwrap_or(0);
        let started = Instant::now();
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(source) => {
                self.stop_compaction(&format!("cannot read {}: {source}", path.display()));
                return Err(StoreError::Io { path, source });
            }
        };
        let mut out = Vec::new();
        let mut carried = Carried::default();
        let mut off = HEADER_LEN;
        let end = (size as usize).min(data.len());
        while off < end {
            match format::read_frame(&data[..end], off) {
                Ok((rec, next)) => {
                    let loc = Loc {
                        seg: seq,
                        off: off as u64,
                        len: (next - off) as u32,
                    };
                    self.index.carry(&rec, loc, &mut carried, &mut out);
                    off = next;
                }
                Err(bad) => {
                    self.stop_compaction(&format!(
                        "sealed segment {} is corrupt at offset {off}: {}",
                        path.display(),
                        bad.why
                    ));
                    return Err(StoreError::Corrupt {
                        path,
                        offset: off as u64,
                        why: bad.why,
                    });
                }
            }
        }
        let carried_records = out.len();
        let chunks: Vec<&[Record]> = out.chunks(CARRY_CHUNK).collect();
        for result in self.write_batches(&chunks) {
            // A failed chunk leaves the segment in place; a retry carries it again
            // (duplicates are harmless: latest copy wins on replay).
            result?;
        }
        self.sync_if_dirty()?;
        if let Err(source) = self.fs.remove(&path) {
            self.stop_compaction(&format!("cannot delete {}: {source}", path.display()));
            return Err(StoreError::Io { path, source });
        }
        if let Err(source) = self.fs.sync_dir(&self.dir) {
            self.poison(&format!(
                "fsync of directory {} after deleting a segment failed: {source}",
                self.dir.display()
            ));
            return Err(StoreError::Poisoned);
        }
        let leftover = self.index.forget_segment(seq);
        if leftover != 0 {
            error!(
                segment = seq,
                leftover, "compaction left live bytes behind (bug)"
            );
        }
        self.segments.remove(&seq);
        self.shared.compactions.fetch_add(1, Ordering::Relaxed);
        self.publish_sizes();
        info!(
            file = %path.display(),
            freed = size,
            carried_records,
            ms = started.elapsed().as_millis() as u64,
            "compacted segment"
        );
        Ok(())
    }

    fn stop_compaction(&mut self, why: &str) {
        self.compaction_stopped = true;
        error!("compaction stopped: {why}; commits continue, disk use will grow");
    }
}

/// Creates segment `seq` with its header, durable (file and directory fsynced). On
/// failure removes what it created.
fn create_segment(fs: &Fs, dir: &Path, seq: u64, id_floor: u64) -> Result<Head, StoreError> {
    let path = seg_path(dir, seq);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let mut file = fs.create_new(&path).map_err(io)?;
    let header = format::encode_header(seq, id_floor);
    let written = fs
        .append(&mut file, &header)
        .and_then(|()| fs.sync_data(&file))
        .and_then(|()| fs.sync_dir(dir));
    if let Err(e) = written {
        drop(file);
        let _ = fs.remove(&path);
        let _ = fs.sync_dir(dir);
        return Err(io(e));
    }
    Ok(Head {
        seq,
        path,
        file,
        len: HEADER_LEN as u64,
    })
}

/// Errors handed to several waiters: only the cheap, data-free kinds occur here.
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::DiskFull => StoreError::DiskFull,
        StoreError::Closed => StoreError::Closed,
        StoreError::Invalid(s) => StoreError::Invalid(s.clone()),
        StoreError::Remote(s) => StoreError::Remote(s.clone()),
        StoreError::Corrupt { path, offset, why } => StoreError::Corrupt {
            path: path.clone(),
            offset: *offset,
            why: why.clone(),
        },
        StoreError::Io { path, source } => StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StoreError::Poisoned => StoreError::Poisoned,
        StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
    }
}
