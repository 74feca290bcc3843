//! The on-disk format of the store's log: encoding and decoding of segment headers and
//! records. This file is the reference for the format; change both together.
//!
//! Owns: byte layout only. Called by the writer (encode), recovery, check, salvage and
//! compaction (decode). It never does I/O, never allocates file names beyond
//! [`segment_file_name`], and never decides what a bad frame *means* (torn tail or
//! corruption): it only reports where and why.
//!
//! # Directory
//!
//! A store directory (mode 0700) holds segment files named `{seq:020}.seg`, where `seq`
//! is a decimal, zero-padded, strictly increasing `u64` starting at 1, so the lexical
//! order of names is the log order. Files not matching that pattern are ignored. The
//! highest `seq` is the head (the only segment that is appended to); all others are
//! sealed and only ever read, compacted (oldest first) and deleted. Files are mode 0600.
//!
//! # Segment header (32 bytes)
//!
//! | offset | size | field                                                            |
//! |-------:|-----:|------------------------------------------------------------------|
//! | 0      | 8    | magic `b"SLUICELG"`                                              |
//! | 8      | 4    | format version, u32 LE, currently 1                              |
//! | 12     | 8    | segment seq, u64 LE (must equal the number in the file name)     |
//! | 20     | 8    | id floor, u64 LE: every message id ever written before this      |
//! |        |      | segment was created is below it (keeps ids monotonic even after  |
//! |        |      | compaction deleted the message with the highest id)              |
//! | 28     | 4    | CRC32 (crc32fast) of bytes 0..28, u32 LE                         |
//!
//! # Record framing
//!
//! Records follow the header back to back, with no padding:
//!
//! | size | field                                                       |
//! |-----:|-------------------------------------------------------------|
//! | 4    | `len`, u32 LE = 1 + body length (kind byte + body)          |
//! | 4    | CRC32 (crc32fast) over the kind byte and the body, u32 LE   |
//! | 1    | kind                                                        |
//! | len-1| body                                                        |
//!
//! `len` must be in `1..=MAX_RECORD_LEN`. A frame is valid when it fits in the file, its
//! CRC matches, its kind is known and its body decodes with no bytes left over.
//!
//! # Bodies
//!
//! Integers are little endian. `str` = u32 LE byte length + UTF-8 bytes. `bytes` = u32 LE
//! length + raw bytes.
//!
//! | kind | record          | body                                                            |
//! |-----:|-----------------|-----------------------------------------------------------------|
//! | 1    | Message         | id u64, received_at_ms u64, expires_at_ms u64 (0 when absent),  |
//! |      |                 | flags u8 (bit 0 retain, bit 1 has expiry), qos u8, topic str,   |
//! |      |                 | publisher str, properties bytes, payload bytes                  |
//! | 2    | Enqueue         | session str, message_id u64                                     |
//! | 3    | Ack             | session str, message_id u64                                     |
//! | 4    | Attempt         | session str, message_id u64, attempts u32                       |
//! | 5    | Session         | client_id str, state bytes                                      |
//! | 6    | SessionRemove   | client_id str                                                   |
//! | 7    | Retain          | topic str, message_id u64                                       |
//! | 8    | RetainClear     | topic str                                                       |
//! | 9    | Qos2Received    | session str, packet_id u16                                      |
//! | 10   | Qos2Released    | session str, packet_id u16                                      |
//! | 11   | Outbound        | session str, message_id u64, packet_id u16, released u8 (0/1)   |
//! | 12   | Delay           | message_id u64, due_at_ms u64                                   |
//! | 13   | DelayDone       | message_id u64                                                  |
//!
//! Unknown kinds are corruption (a newer format must bump the version).

use std::sync::Arc;

use bytes::Bytes;

use super::{Record, StoredMessage};

/// Magic at the start of every segment file.
pub(crate) const MAGIC: [u8; 8] = *b"SLUICELG";
/// Current format version.
pub(crate) const VERSION: u32 = 1;
/// Size of the segment header.
pub(crate) const HEADER_LEN: usize = 32;
/// Bytes of framing before the kind byte (len + crc).
pub(crate) const FRAME_PREFIX: usize = 8;
/// Largest allowed `len` (kind + body). MQTT caps a packet at 256 MiB, so 512 MiB leaves
/// room for topic, properties and framing while still rejecting garbage lengths.
pub(crate) const MAX_RECORD_LEN: usize = 512 << 20;

const K_MESSAGE: u8 = 1;
const K_ENQUEUE: u8 = 2;
const K_ACK: u8 = 3;
const K_ATTEMPT: u8 = 4;
const K_SESSION: u8 = 5;
const K_SESSION_REMOVE: u8 = 6;
const K_RETAIN: u8 = 7;
const K_RETAIN_CLEAR: u8 = 8;
const K_QOS2_RECEIVED: u8 = 9;
const K_QOS2_RELEASED: u8 = 10;
const K_OUTBOUND: u8 = 11;
const K_DELAY: u8 = 12;
const K_DELAY_DONE: u8 = 13;

/// File name of segment `seq`.
pub(crate) fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// Parses a segment file name back into its seq; `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a segment header.
pub(crate) fn encode_header(seq: u64, id_floor: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&seq.to_le_bytes());
    h[20..28].copy_from_slice(&id_floor.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub seq: u64,
    pub id_floor: u64,
}

/// Decodes a segment header, or says why it is not one.
pub(crate) fn decode_header(data: &[u8]) -> Result<Header, String> {
    if data.len() < HEADER_LEN {
        return Err(format!(
            "segment header is short: {} of {HEADER_LEN} bytes",
            data.len()
        ));
    }
    if data[0..8] != MAGIC {
        return Err("bad magic: not a sluice segment".into());
    }
    let crc = u32::from_le_bytes(le4(&data[28..32]));
    if crc != crc32fast::hash(&data[0..28]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(le4(&data[8..12]));
    if version != VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads {VERSION})"
        ));
    }
    Ok(Header {
        seq: u64::from_le_bytes(le8(&data[12..20])),
        id_floor: u64::from_le_bytes(le8(&data[20..28])),
    })
}

fn le4(s: &[u8]) -> [u8; 4] {
    s.try_into().expect("caller passes exactly 4 bytes")
}

fn le8(s: &[u8]) -> [u8; 8] {
    s.try_into().expect("caller passes exactly 8 bytes")
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Appends one framed record to `out`; returns the framed length. Fails (leaving `out`
/// as it was) when the record is larger than [`MAX_RECORD_LEN`].
pub(crate) fn encode_record(out: &mut Vec<u8>, rec: &Record) -> Result<usize, String> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX]);
    match rec {
        Record::Message(m) => {
            out.push(K_MESSAGE);
            out.extend_from_slice(&m.id.to_le_bytes());
            out.extend_from_slice(&m.received_at_ms.to_le_bytes());
            out.extend_from_slice(&m.expires_at_ms.unwrap_or(0).to_le_bytes());
            let flags = u8::from(m.retain) | (u8::from(m.expires_at_ms.is_some()) << 1);
            out.push(flags);
            out.push(m.qos);
            put_str(out, &m.topic);
            put_str(out, &m.publisher);
            put_bytes(out, &m.properties);
            put_bytes(out, &m.payload);
        }
        Record::Enqueue {
            session,
            message_id,
        } => {
            out.push(K_ENQUEUE);
            put_str(out, session);
            out.extend_from_slice(&message_id.to_le_bytes());
        }
        Record::Ack {
            session,
            message_id,
        } => {
            out.push(K_ACK);
            put_str(out, session);
            out.extend_from_slice(&message_id.to_le_bytes());
        }
        Record::Attempt {
            session,
            message_id,
            attempts,
        } => {
            out.push(K_ATTEMPT);
            put_str(out, session);
            out.extend_from_slice(&message_id.to_le_bytes());
            out.extend_from_slice(&attempts.to_le_bytes());
        }
        Record::Session { client_id, state } => {
            out.push(K_SESSION);
            put_str(out, client_id);
            put_bytes(out, state);
        }
        Record::SessionRemove { client_id } => {
            out.push(K_SESSION_REMOVE);
            put_str(out, client_id);
        }
        Record::Retain { topic, message_id } => {
            out.push(K_RETAIN);
            put_str(out, topic);
            out.extend_from_slice(&message_id.to_le_bytes());
        }
        Record::RetainClear { topic } => {
            out.push(K_RETAIN_CLEAR);
            put_str(out, topic);
        }
        Record::Qos2Received { session, packet_id } => {
            out.push(K_QOS2_RECEIVED);
            put_str(out, session);
            out.extend_from_slice(&packet_id.to_le_bytes());
        }
        Record::Delay {
            message_id,
            due_at_ms,
        } => {
            out.push(K_DELAY);
            out.extend_from_slice(&message_id.to_le_bytes());
            out.extend_from_slice(&due_at_ms.to_le_bytes());
        }
        Record::DelayDone { message_id } => {
            out.push(K_DELAY_DONE);
            out.extend_from_slice(&message_id.to_le_bytes());
        }
        Record::Outbound {
            session,
            message_id,
            packet_id,
            released,
        } => {
            out.push(K_OUTBOUND);
            put_str(out, session);
            out.extend_from_slice(&message_id.to_le_bytes());
            out.extend_from_slice(&packet_id.to_le_bytes());
            out.push(u8::from(*released));
        }
        Record::Qos2Released { session, packet_id } => {
            out.push(K_QOS2_RELEASED);
            put_str(out, session);
            out.extend_from_slice(&packet_id.to_le_bytes());
        }
    }
    let len = out.len() - start - FRAME_PREFIX;
    if len > MAX_RECORD_LEN {
        out.truncate(start);
        return Err(format!(
            "record of {len} bytes exceeds the {MAX_RECORD_LEN} byte limit"
        ));
    }
    let crc = crc32fast::hash(&out[start + FRAME_PREFIX..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, Clone)]
pub(crate) struct BadFrame {
    pub why: String,
    /// The checksum matched but the body did not decode: the bytes are exactly what was
    /// written, so this is never a torn write and is never truncated away silently.
    pub intact: bool,
}

impl From<String> for BadFrame {
    fn from(why: String) -> Self {
        BadFrame { why, intact: false }
    }
}

/// Reads the frame at `off`: returns the decoded record and the offset just past it, or
/// why the bytes at `off` are not a valid frame.
pub(crate) fn read_frame(data: &[u8], off: usize) -> Result<(Record, usize), BadFrame> {
    let rest = data.len().saturating_sub(off);
    if rest < FRAME_PREFIX + 1 {
        return Err(format!("incomplete frame header ({rest} bytes left)").into());
    }
    let len = u32::from_le_bytes(le4(&data[off..off + 4])) as usize;
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(format!("implausible record length {len}").into());
    }
    if rest - FRAME_PREFIX < len {
        return Err(format!(
            "record of {len} bytes runs past the end of the file ({} bytes left)",
            rest - FRAME_PREFIX
        )
        .into());
    }
    let crc = u32::from_le_bytes(le4(&data[off + 4..off + 8]));
    let payload = &data[off + FRAME_PREFIX..off + FRAME_PREFIX + len];
    if crc32fast::hash(payload) != crc {
        return Err("record checksum mismatch".to_string().into());
    }
    let rec = decode_body(payload[0], &payload[1..]).map_err(|why| BadFrame {
        why: format!("checksum ok but undecodable: {why}"),
        intact: true,
    })?;
    Ok((rec, off + FRAME_PREFIX + len))
}

/// Whether any valid frame starts anywhere in `data[from..]`. Used to tell a torn tail
/// (garbage up to the end) from corruption in the middle (valid records after it).
pub(crate) fn any_valid_frame_from(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(FRAME_PREFIX)).find(|&off| read_frame(data, off).is_ok())
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.data.len() - self.pos < n {
            return Err("record body is truncated".into());
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(le4(self.take(4)?)))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(le8(self.take(8)?)))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
    fn owned(&mut self) -> Result<Bytes, String> {
        Ok(Bytes::copy_from_slice(self.bytes()?))
    }
    fn finish(&self) -> Result<(), String> {
        if self.pos != self.data.len() {
            return Err(format!(
                "{} unexpected bytes after the record body",
                self.data.len() - self.pos
            ));
        }
        Ok(())
    }
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Record, String> {
    let mut c = Cursor { data: body, pos: 0 };
    let rec = match kind {
        K_MESSAGE => {
            let id = c.u64()?;
            let received_at_ms = c.u64()?;
            let expires = c.u64()?;
            let flags = c.u8()?;
            if flags & !0b11 != 0 {
                return Err(format!("unknown message flags {flags:#x}"));
            }
            let qos = c.u8()?;
            let topic = c.string()?;
            let publisher = c.string()?;
            let properties = c.owned()?;
            let payload = c.owned()?;
            Record::Message(Arc::new(StoredMessage {
                id,
                topic,
                payload,
                qos,
                retain: flags & 1 != 0,
                properties,
                publisher,
                received_at_ms,
                expires_at_ms: (flags & 2 != 0).then_some(expires),
            }))
        }
        K_ENQUEUE => Record::Enqueue {
            session: c.string()?,
            message_id: c.u64()?,
        },
        K_ACK => Record::Ack {
            session: c.string()?,
            message_id: c.u64()?,
        },
        K_ATTEMPT => Record::Attempt {
            session: c.string()?,
            message_id: c.u64()?,
            attempts: c.u32()?,
        },
        K_SESSION => Record::Session {
            client_id: c.string()?,
            state: c.owned()?,
        },
        K_SESSION_REMOVE => Record::SessionRemove {
            client_id: c.string()?,
        },
        K_RETAIN => Record::Retain {
            topic: c.string()?,
            message_id: c.u64()?,
        },
        K_RETAIN_CLEAR => Record::RetainClear { topic: c.string()? },
        K_QOS2_RECEIVED => Record::Qos2Received {
            session: c.string()?,
            packet_id: c.u16()?,
        },
        K_DELAY => Record::Delay {
            message_id: c.u64()?,
            due_at_ms: c.u64()?,
        },
        K_DELAY_DONE => Record::DelayDone {
            message_id: c.u64()?,
        },
        K_OUTBOUND => Record::Outbound {
            session: c.string()?,
            message_id: c.u64()?,
            packet_id: c.u16()?,
            released: match c.u8()? {
                0 => false,
                1 => true,
                other => return Err(format!("outbound stage {other} is neither 0 nor 1")),
            },
        },
        K_QOS2_RELEASED => Record::Qos2Released {
            session: c.string()?,
            packet_id: c.u16()?,
        },
        other => return Err(format!("unknown record kind {other}")),
    };
    c.finish()?;
    Ok(rec)
}
