//! Reads the store's segment files the way recovery does (format: `src/store/format.rs`),
//! so a test can cut the log where a `kill -9` could have: after any whole record.

use std::path::{Path, PathBuf};

const HEADER_LEN: usize = 32;
const FRAME_PREFIX: usize = 8;

/// Record kinds (`src/store/format.rs`).
pub const SESSION_REMOVE: u8 = 6;

/// One record in the log: where its frame ends, its kind and its body.
#[derive(Debug)]
pub struct Frame {
    pub segment: PathBuf,
    pub end: u64,
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Frame {
    /// The body's first `str` field (session or client id of most kinds).
    pub fn first_str(&self) -> String {
        let len = u32::from_le_bytes(self.body[0..4].try_into().expect("4 bytes")) as usize;
        String::from_utf8_lossy(&self.body[4..4 + len]).into_owned()
    }
}

/// The segment files of `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read data dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

/// Every record of every segment, in log order.
pub fn frames(dir: &Path) -> Vec<Frame> {
    let mut out = Vec::new();
    for seg in segments(dir) {
        let bytes = std::fs::read(&seg).expect("read segment");
        let mut at = HEADER_LEN;
        while at + FRAME_PREFIX < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
            let start = at + FRAME_PREFIX;
            if len == 0 || start + len > bytes.len() {
                break;
            }
            out.push(Frame {
                segment: seg.clone(),
                end: (start + len) as u64,
                kind: bytes[start],
                body: bytes[start + 1..start + len].to_vec(),
            });
            at = start + len;
        }
    }
    out
}

/// Cuts the log right after `frame`: what a crash at that moment leaves on disk.
pub fn cut_after(dir: &Path, frame: &Frame) {
    for seg in segments(dir) {
        if seg > frame.segment {
            std::fs::remove_file(&seg).expect("remove later segment");
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&frame.segment)
        .expect("open segment");
    file.set_len(frame.end).expect("truncate segment");
}

/// Waits (bounded) until a record matching `found` is in the log's files.
pub fn wait_for(dir: &Path, what: &str, found: impl Fn(&Frame) -> bool) {
    let deadline = std::time::Instant::now() + super::WAIT;
    while !frames(dir).iter().any(&found) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} in the log within {:?}",
            super::WAIT
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Outbound QoS 2 state (kind 11): session, message id, packet id, released.
pub const OUTBOUND: u8 = 11;

impl Frame {
    /// For an Outbound record: (packet id, released).
    pub fn outbound(&self) -> Option<(u16, bool)> {
        if self.kind != OUTBOUND {
            return None;
        }
        let at = 4 + u32::from_le_bytes(self.body[0..4].try_into().expect("4 bytes")) as usize + 8;
        let packet_id = u16::from_le_bytes([self.body[at], self.body[at + 1]]);
        Some((packet_id, self.body[at + 2] == 1))
    }
}
