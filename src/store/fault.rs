//! The store's file operations, behind one seam so tests can inject faults.
//!
//! Owns: creating segment files (mode 0600), appending, truncating, `fdatasync`, directory
//! fsync and deletion, and the [`FaultPlan`] that can make the next N of those fail
//! deterministically (an fsync error, or ENOSPC after a partial write). Called by the
//! writer thread and by open/salvage. It never interprets file contents and never retries:
//! the caller decides what a failure means (poison, DiskFull, error).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// `ENOSPC` on Linux (and every other Unix we care about).
pub(crate) const ENOSPC: i32 = 28;
/// `EDQUOT` on Linux: a full quota is a full disk as far as callers are concerned.
const EDQUOT: i32 = 122;

/// Whether an I/O error means "no space left" (recoverable once space returns).
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
}

/// Faults to inject, consumed one per matching operation. Shared between a test and the
/// writer thread; all zero in production.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    /// Fail this many upcoming `fdatasync`s of segment files with EIO.
    pub fail_syncs: AtomicU32,
    /// Fail this many upcoming segment writes with ENOSPC, after writing half the buffer
    /// (so a partial record really is on disk and must be truncated away).
    pub enospc_writes: AtomicU32,
}

impl FaultPlan {
    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// File operations with optional fault injection. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fs {
    faults: Option<Arc<FaultPlan>>,
}

impl Fs {
    pub(crate) fn new(faults: Option<Arc<FaultPlan>>) -> Fs {
        Fs { faults }
    }

    /// Creates a new file (must not exist) with mode 0600, open for appending.
    pub(crate) fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }

    /// Opens an existing file for appending.
    pub(crate) fn open_append(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).append(true).open(path)
    }

    /// Appends all of `buf`.
    pub(crate) fn append(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        if let Some(f) = &self.faults {
            if FaultPlan::take(&f.enospc_writes) {
                file.write_all(&buf[..buf.len() / 2])?;
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
        }
        file.write_all(buf)
    }

    /// `fdatasync` of a segment file.
    pub(crate) fn sync_data(&self, file: &File) -> io::Result<()> {
        if let Some(f) = &self.faults {
            if FaultPlan::take(&f.fail_syncs) {
                return Err(io::Error::other("injected fdatasync failure"));
            }
        }
        file.sync_data()
    }

    /// Truncates a file to `len` bytes and makes the new length durable.
    pub(crate) fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)?;
        file.sync_all()
    }

    /// Fsyncs a directory, making creations, renames and deletions in it durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Deletes a file (the caller fsyncs the directory).
    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}
