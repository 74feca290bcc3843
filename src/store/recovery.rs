//! Reading the log back: replay at open, `check` (read only) and `salvage`.
//!
//! Owns: listing segment files, scanning each one frame by frame, and deciding what a
//! bad frame means. A bad frame in the LAST segment with no valid frame anywhere after
//! it is a torn tail: open truncates it (tracing::warn with file and offset). Anything
//! else — a bad frame followed by valid ones, a bad frame in an older segment, a frame
//! whose checksum matches but whose body does not decode — is [`StoreError::Corrupt`]
//! naming the file and offset; only [`salvage`] cuts there. Called by `Store::open` and
//! by the `sluice store check` CLI. It never skips a bad record silently and never
//! writes anything except the truncation/deletion that open and salvage are for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use super::fault::Fs;
use super::format::{self, BadFrame, HEADER_LEN};
use super::index::{Index, Loc};
use super::{Record, Recovered, RecoveredEntry, StoreError, StoredMessage};

/// One segment file on disk.
#[derive(Debug, Clone)]
pub(crate) struct SegFile {
    pub seq: u64,
    pub path: PathBuf,
}

/// Lists segment files in `dir`, oldest first.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegFile>, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(format::parse_segment_file_name) {
            out.push(SegFile {
                seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.seq);
    Ok(out)
}

/// The first bad frame in a segment.
#[derive(Debug, Clone)]
pub(crate) struct BadAt {
    pub offset: u64,
    pub why: String,
    pub intact: bool,
    /// Offset of the first valid frame after the bad one, if any.
    pub later_valid: Option<u64>,
}

impl BadAt {
    /// Whether this is a torn tail (only possible in the last segment).
    fn is_torn_tail(&self, is_last: bool) -> bool {
        is_last && !self.intact && self.later_valid.is_none()
    }

    fn corrupt(&self, path: &Path) -> StoreError {
        let mut why = self.why.clone();
        if let Some(next) = self.later_valid {
            why.push_str(&format!(" (valid records follow at offset {next})"));
        }
        StoreError::Corrupt {
            path: path.to_path_buf(),
            offset: self.offset,
            why,
        }
    }
}

/// Result of scanning one segment.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub id_floor: u64,
    /// End of the last valid frame (or of the header).
    pub valid_end: u64,
    pub records: u64,
    pub bad: Option<BadAt>,
}

/// Scans a segment's bytes, calling `visit` for every valid record up to the first bad
/// frame.
pub(crate) fn scan(seq: u64, data: &[u8], mut visit: impl FnMut(Record, Loc)) -> Scanned {
    let header_bad = match format::decode_header(data) {
        Ok(h) if h.seq != seq => Some((
            format!("header says segment {} but the file name says {seq}", h.seq),
            true,
        )),
        Ok(h) => {
            let mut off = HEADER_LEN;
            let mut records = 0;
            while off < data.len() {
                match format::read_frame(data, off) {
                    Ok((rec, next)) => {
                        let loc = Loc {
                            seg: seq,
                            off: off as u64,
                            len: (next - off) as u32,
                        };
                        visit(rec, loc);
                        records += 1;
                        off = next;
                    }
                    Err(BadFrame { why, intact }) => {
                        return Scanned {
                            id_floor: h.id_floor,
                            valid_end: off as u64,
                            records,
                            bad: Some(BadAt {
                                offset: off as u64,
                                why,
                                intact,
                                later_valid: format::any_valid_frame_from(data, off + 1)
                                    .map(|o| o as u64),
                            }),
                        };
                    }
                }
            }
            return Scanned {
                id_floor: h.id_floor,
                valid_end: off as u64,
                records,
                bad: None,
            };
        }
        // A header that is short and followed by nothing is a torn creation; a full
        // header that fails its checks is corruption unless nothing valid follows it.
        Err(why) => Some((why, false)),
    };
    let (why, intact) = header_bad.expect("the Ok arm returned");
    Scanned {
        id_floor: 0,
        valid_end: 0,
        records: 0,
        bad: Some(BadAt {
            offset: 0,
            why,
            intact,
            later_valid: format::any_valid_frame_from(data, HEADER_LEN.min(data.len()))
                .map(|o| o as u64),
        }),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// What replay hands to the writer: the index and the segments that remain, with sizes.
pub(crate) struct Replayed {
    pub index: Index,
    pub recovered: Recovered,
    /// (seq, size) of every remaining segment, oldest first.
    pub segments: Vec<(u64, u64)>,
}

/// Replays the log in `dir` for open: truncates a torn tail, fails on corruption.
pub(crate) fn replay(dir: &Path, fs: &Fs) -> Result<Replayed, StoreError> {
    let started = Instant::now();
    let files = list_segments(dir)?;
    let mut index = Index::default();
    let mut messages: HashMap<u64, Arc<StoredMessage>> = HashMap::new();
    let mut states: HashMap<String, Bytes> = HashMap::new();
    let mut segments = Vec::new();
    let mut truncated_tail = None;
    let mut id_floor = 0u64;
    let (mut bytes_replayed, mut records_replayed) = (0u64, 0u64);

    for (i, seg) in files.iter().enumerate() {
        let is_last = i + 1 == files.len();
        let data = read(&seg.path)?;
        let scanned = scan(seg.seq, &data, |rec, loc| {
            match &rec {
                Record::Message(m) => {
                    messages.insert(m.id, m.clone());
                }
                Record::Session { client_id, state } => {
                    states.insert(client_id.clone(), state.clone());
                }
                Record::SessionRemove { client_id } => {
                    states.remove(client_id);
                }
                _ => {}
            }
            index.apply(&rec, loc);
        });
        id_floor = id_floor.max(scanned.id_floor);
        bytes_replayed += scanned.valid_end;
        records_replayed += scanned.records;
        let mut size = data.len() as u64;
        if let Some(bad) = &scanned.bad {
            if !bad.is_torn_tail(is_last) {
                return Err(bad.corrupt(&seg.path));
            }
            warn!(
                file = %seg.path.display(),
                offset = bad.offset,
                dropped_bytes = size - bad.offset,
                why = %bad.why,
                "torn tail in the last segment: truncating at the last good record"
            );
            let io = |source| StoreError::Io {
                path: seg.path.clone(),
                source,
            };
            if bad.offset < HEADER_LEN as u64 {
                // The segment never got a complete header, so it never held a record.
                fs.remove(&seg.path).map_err(io)?;
                fs.sync_dir(dir).map_err(|source| StoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
                truncated_tail = Some((seg.path.clone(), 0));
                continue;
            }
            let file = fs.open_append(&seg.path).map_err(io)?;
            fs.truncate(&file, bad.offset).map_err(io)?;
            truncated_tail = Some((seg.path.clone(), bad.offset));
            size = bad.offset;
        }
        segments.push((seg.seq, size));
    }

    let mut queues = HashMap::new();
    for (session, entries) in index.queues() {
        let list: Vec<RecoveredEntry> = entries
            .iter()
            .filter_map(|(id, q)| {
                Some(RecoveredEntry {
                    message: messages.get(id)?.clone(),
                    attempts: q.attempts,
                    outbound: q
                        .outbound
                        .map(|(packet_id, released, _)| (packet_id, released)),
                })
            })
            .collect();
        queues.insert(session.clone(), list);
    }
    let mut sessions: Vec<(String, Bytes)> = index
        .sessions()
        .filter_map(|c| Some((c.clone(), states.get(c)?.clone())))
        .collect();
    sessions.sort_by(|a, b| a.0.cmp(&b.0));
    let mut retained: Vec<(String, Arc<StoredMessage>)> = index
        .retained()
        .filter_map(|(t, id)| Some((t.clone(), messages.get(&id)?.clone())))
        .collect();
    retained.sort_by(|a, b| a.0.cmp(&b.0));
    let mut delayed: Vec<(Arc<StoredMessage>, u64)> = index
        .delayed()
        .filter_map(|(id, due)| Some((messages.get(&id)?.clone(), due)))
        .collect();
    delayed.sort_by_key(|(m, due)| (*due, m.id));
    let qos2_pending = index.qos2().map(|(s, p)| (s.clone(), p)).collect();
    let next_message_id = id_floor.max(index.max_id + 1).max(1);
    let recovered = Recovered {
        sessions,
        queues,
        retained,
        delayed,
        qos2_pending,
        next_message_id,
        truncated_tail,
        duration: started.elapsed(),
        bytes_replayed,
        records_replayed,
    };
    metrics::gauge!(crate::metrics::STORE_RECOVERY_DURATION).set(recovered.duration.as_secs_f64());
    info!(
        dir = %dir.display(),
        segments = segments.len(),
        records = records_replayed,
        bytes = bytes_replayed,
        ms = recovered.duration.as_millis() as u64,
        "store recovered"
    );
    Ok(Replayed {
        index,
        recovered,
        segments,
    })
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// Live bytes according to the index a replay would build.
    pub live_bytes: u64,
    pub sessions: u64,
    pub queued_entries: u64,
    pub retained: u64,
    /// A torn tail open would truncate: file and offset.
    pub torn_tail: Option<(PathBuf, u64)>,
}

/// Reads the whole log and reports on it without changing anything. Corruption that
/// open would refuse is returned as [`StoreError::Corrupt`] (file and offset).
pub fn check(dir: impl AsRef<Path>) -> Result<CheckReport, StoreError> {
    let dir = dir.as_ref();
    let files = list_segments(dir)?;
    let mut index = Index::default();
    let mut report = CheckReport {
        segments: files.len() as u64,
        records: 0,
        bytes: 0,
        live_bytes: 0,
        sessions: 0,
        queued_entries: 0,
        retained: 0,
        torn_tail: None,
    };
    for (i, seg) in files.iter().enumerate() {
        let data = read(&seg.path)?;
        report.bytes += data.len() as u64;
        let scanned = scan(seg.seq, &data, |rec, loc| index.apply(&rec, loc));
        report.records += scanned.records;
        if let Some(bad) = scanned.bad {
            if !bad.is_torn_tail(i + 1 == files.len()) {
                return Err(bad.corrupt(&seg.path));
            }
            report.torn_tail = Some((seg.path.clone(), bad.offset));
        }
    }
    report.live_bytes = index.live_bytes();
    report.sessions = index.sessions().count() as u64;
    report.queued_entries = index.queues().map(|(_, q)| q.len() as u64).sum();
    report.retained = index.retained().count() as u64;
    Ok(report)
}

/// What [`salvage`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SalvageReport {
    /// Where the log was cut (file, offset), if anything was wrong.
    pub truncated_at: Option<(PathBuf, u64)>,
    /// Why it was cut there.
    pub why: Option<String>,
    /// Later segments deleted because they came after the cut.
    pub removed_segments: Vec<PathBuf>,
    /// Bytes dropped in total (the cut segment's tail plus removed segments).
    pub bytes_dropped: u64,
    /// Valid records kept.
    pub records_kept: u64,
}

/// Cuts the log at its first bad frame, wherever it is, and deletes every later segment,
/// so that open succeeds with the longest valid prefix. Everything after the cut is lost:
/// this is the operator's explicit choice (`sluice store check --salvage`), never done
/// automatically. Must not run while a store is open on `dir`.
pub fn salvage(dir: impl AsRef<Path>) -> Result<SalvageReport, StoreError> {
    let dir = dir.as_ref();
    let fs = Fs::default();
    let files = list_segments(dir)?;
    let mut report = SalvageReport::default();
    let dir_io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut cut = false;
    for seg in &files {
        let io = |source| StoreError::Io {
            path: seg.path.clone(),
            source,
        };
        let data = read(&seg.path)?;
        if cut {
            report.bytes_dropped += data.len() as u64;
            fs.remove(&seg.path).map_err(io)?;
            report.removed_segments.push(seg.path.clone());
            continue;
        }
        let scanned = scan(seg.seq, &data, |_, _| {});
        report.records_kept += scanned.records;
        let Some(bad) = scanned.bad else { continue };
        cut = true;
        warn!(file = %seg.path.display(), offset = bad.offset, why = %bad.why, "salvage: cutting the log here");
        report.bytes_dropped += data.len() as u64 - bad.offset;
        report.truncated_at = Some((seg.path.clone(), bad.offset));
        report.why = Some(bad.why.clone());
        if bad.offset < HEADER_LEN as u64 {
            fs.remove(&seg.path).map_err(io)?;
            report.removed_segments.push(seg.path.clone());
        } else {
            let file = fs.open_append(&seg.path).map_err(io)?;
            fs.truncate(&file, bad.offset).map_err(io)?;
        }
    }
    if cut {
        fs.sync_dir(dir).map_err(dir_io)?;
    }
    Ok(report)
}
