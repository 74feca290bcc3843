//! Wire primitives shared by every packet: a bounds-checked [`Reader`] over one framed
//! packet body (each read names the field, so errors say what was cut short), and the
//! [`Sink`] trait that the encoders write through — once into a [`Counter`] to learn
//! the exact length, once into the output `BytesMut` — so lengths never drift from
//! what is written. Used only by the codec's decoders and encoders.

use super::error::ProtocolError;
use bytes::{BufMut, BytesMut};

/// Largest value a variable byte integer can carry (4 bytes) [MQTT-1.5.5].
pub(crate) const VARINT_MAX: usize = 268_435_455;

/// Outcome of reading a variable byte integer from a buffer that may still be filling.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// `(value, bytes used)`.
    Done(u32, usize),
    /// The buffer ends before the last byte of the integer.
    Incomplete,
}

/// Reads a variable byte integer from the front of `bytes` [MQTT-1.5.5-1]: at most 4
/// bytes and minimally encoded (a multi-byte integer cannot end in a 0 byte).
pub(crate) fn read_varint(bytes: &[u8], field: &'static str) -> Result<VarInt, ProtocolError> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(ProtocolError::VarIntNotMinimal { field });
            }
            return Ok(VarInt::Done(value, i + 1));
        }
        if i == 3 {
            return Err(ProtocolError::VarIntTooLong { field });
        }
    }
    Ok(VarInt::Incomplete)
}

/// Bytes needed to encode `v` as a variable byte integer.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over one complete packet body (or a property block inside it).
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Packet name, for error messages.
    pub(crate) packet: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], packet: &'static str) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            packet,
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn truncated(&self, field: &'static str) -> ProtocolError {
        ProtocolError::Truncated {
            packet: self.packet,
            field,
        }
    }

    /// The next `n` bytes.
    pub(crate) fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(self.truncated(field));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Everything left (a payload).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        match read_varint(&self.buf[self.pos..], field)? {
            VarInt::Done(v, n) => {
                self.pos += n;
                Ok(v)
            }
            VarInt::Incomplete => Err(self.truncated(field)),
        }
    }

    /// Two-byte length then that many bytes [MQTT-1.5.6].
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    /// A UTF-8 encoded string [MQTT-1.5.4]: well-formed, no U+0000; copied out so the
    /// result owns its bytes.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let raw = self.binary(field)?;
        let s = std::str::from_utf8(raw).map_err(|_| ProtocolError::InvalidUtf8 { field })?;
        if s.contains('\0') {
            return Err(ProtocolError::NullCharacter { field });
        }
        Ok(s.to_owned())
    }

    /// A sub-reader over the next `len` bytes (a property block).
    pub(crate) fn sub(&mut self, len: usize) -> Result<Reader<'a>, ProtocolError> {
        if len > self.remaining() {
            return Err(ProtocolError::PropertyLengthOverrun {
                packet: self.packet,
            });
        }
        let r = Reader::new(&self.buf[self.pos..self.pos + len], self.packet);
        self.pos += len;
        Ok(r)
    }

    /// The packet must end here.
    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(ProtocolError::TrailingBytes {
                packet: self.packet,
                count,
            }),
        }
    }
}

/// Where encoders put bytes: a [`Counter`] (length only) or a `BytesMut`.
pub(crate) trait Sink {
    fn raw(&mut self, bytes: &[u8]);

    fn u8(&mut self, v: u8) {
        self.raw(&[v]);
    }

    fn u16(&mut self, v: u16) {
        self.raw(&v.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }

    fn varint(&mut self, v: usize) {
        debug_assert!(v <= VARINT_MAX, "variable byte integer {v} too large");
        let mut x = v.min(VARINT_MAX);
        loop {
            let mut byte = (x % 128) as u8;
            x /= 128;
            if x > 0 {
                byte |= 0x80;
            }
            self.u8(byte);
            if x == 0 {
                break;
            }
        }
    }

    /// Two-byte length prefix then the bytes. Our packets are valid by construction;
    /// should one still carry more than 65535 bytes here it is cut to 65535 so the
    /// stream stays framed (the prefix always matches what follows).
    fn binary(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= usize::from(u16::MAX), "string too long");
        let n = bytes.len().min(usize::from(u16::MAX));
        self.u16(n as u16);
        self.raw(&bytes[..n]);
    }

    fn string(&mut self, s: &str) {
        self.binary(s.as_bytes());
    }
}

/// Counts the bytes an encoder would write.
#[derive(Default)]
pub(crate) struct Counter(pub(crate) usize);

impl Sink for Counter {
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn varint(&mut self, v: usize) {
        self.0 += varint_len(v);
    }
}

impl Sink for BytesMut {
    fn raw(&mut self, bytes: &[u8]) {
        self.put_slice(bytes);
    }
}

/// The length `f` writes.
pub(crate) fn measure(f: impl FnOnce(&mut Counter)) -> usize {
    let mut c = Counter::default();
    f(&mut c);
    c.0
}
