//! Store segments from arbitrary bytes, through the public `store::check` and
//! `store::salvage` on a scratch directory (the record decoder is private to the store).
//!
//! Properties: nothing panics; `check` returns Ok or `Corrupt` (never another error);
//! whatever it counts as records are frames whose CRC matches (checked by an independent
//! scan here, written from the format documented in `src/store/format.rs`); after
//! `salvage`, `check` is Ok with no torn tail and counts exactly the records salvage kept.
//!
//! Input: one mode byte, then the bytes.
//! * bit 0: prepend a valid segment header (otherwise the bytes are the whole file);
//! * bit 1: two segments, split at the position given by the next two bytes;
//! * bits 4-7: id floor of the generated headers.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::store::{check, salvage, StoreError};

const HEADER_LEN: usize = 32;
const FRAME_PREFIX: usize = 8;
const MAX_RECORD_LEN: usize = 512 << 20;

fn header(seq: u64, id_floor: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(b"SLUICELG");
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&id_floor.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Independent scan: (frames whose framing and CRC are good, from the header on; offset
/// where that run ends). A bad header gives (0, 0).
fn crc_valid_prefix(seq: u64, data: &[u8]) -> (u64, usize) {
    if data.len() < HEADER_LEN || data[..HEADER_LEN] != header_of(data, seq)[..] {
        return (0, 0);
    }
    let (mut off, mut n) = (HEADER_LEN, 0);
    while data.len() - off > FRAME_PREFIX {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 || len > MAX_RECORD_LEN || data.len() - off - FRAME_PREFIX < len {
            break;
        }
        let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap());
        if crc32fast::hash(&data[off + FRAME_PREFIX..off + FRAME_PREFIX + len]) != crc {
            break;
        }
        n += 1;
        off += FRAME_PREFIX + len;
    }
    (n, off)
}

/// The valid header this file would have for `seq`, keeping its id floor.
fn header_of(data: &[u8], seq: u64) -> Vec<u8> {
    let floor = u64::from_le_bytes(data[20..28].try_into().unwrap());
    header(seq, floor)
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("sluice-fuzz-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let id_floor = u64::from(mode >> 4);
    let with_header = |seq: u64, body: &[u8]| -> Vec<u8> {
        let mut out = if mode & 1 != 0 {
            header(seq, id_floor)
        } else {
            Vec::new()
        };
        out.extend_from_slice(body);
        out
    };
    let files: Vec<Vec<u8>> = if mode & 2 != 0 && rest.len() >= 2 {
        let at = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let at = at % (body.len() + 1);
        vec![with_header(1, &body[..at]), with_header(2, &body[at..])]
    } else {
        vec![with_header(1, rest)]
    };

    let dir = scratch();
    for entry in std::fs::read_dir(dir).expect("scratch dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("clean scratch");
    }
    for (i, f) in files.iter().enumerate() {
        std::fs::write(seg_path(dir, i as u64 + 1), f).expect("write segment");
    }
    let reference: Vec<(u64, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| crc_valid_prefix(i as u64 + 1, f))
        .collect();

    match check(dir) {
        Ok(report) => {
            let last = files.len() - 1;
            for (i, f) in files.iter().enumerate() {
                let cut = match &report.torn_tail {
                    Some((path, off)) if i == last => {
                        assert_eq!(path, &seg_path(dir, i as u64 + 1));
                        *off as usize
                    }
                    _ => f.len(),
                };
                assert_eq!(
                    reference[i].1,
                    cut,
                    "check accepted segment {} up to {cut}, CRC-valid frames end at {}",
                    i + 1,
                    reference[i].1
                );
            }
            let want: u64 = reference.iter().map(|r| r.0).sum();
            assert_eq!(report.records, want, "records counted by check");
            assert_eq!(report.segments, files.len() as u64);
        }
        Err(StoreError::Corrupt { .. }) => {}
        Err(e) => panic!("check: neither Ok nor Corrupt: {e}"),
    }

    let salvaged = salvage(dir).expect("salvage");
    match check(dir) {
        Ok(report) => {
            assert_eq!(report.torn_tail, None, "torn tail left after salvage");
            assert_eq!(report.records, salvaged.records_kept);
        }
        Err(e) => panic!("check after salvage: {e}"),
    }
});
