//! Small length-prefixed encoding helpers for what the broker persists in the store's
//! opaque fields (message properties, session state). Not MQTT: this is our own format,
//! each blob starting with a version byte so it can evolve.

use bytes::{Buf, BufMut, Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
#[error("persisted blob is truncated or invalid: {0}")]
pub struct BlobError(pub &'static str);

pub fn put_str(out: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(&s.as_bytes()[..usize::from(len)]);
}

pub fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

pub struct Reader(pub Bytes);

impl Reader {
    pub fn u8(&mut self) -> Result<u8, BlobError> {
        if self.0.remaining() < 1 {
            return Err(BlobError("u8"));
        }
        Ok(self.0.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, BlobError> {
        if self.0.remaining() < 2 {
            return Err(BlobError("u16"));
        }
        Ok(self.0.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, BlobError> {
        if self.0.remaining() < 4 {
            return Err(BlobError("u32"));
        }
        Ok(self.0.get_u32())
    }

    pub fn u64(&mut self) -> Result<u64, BlobError> {
        if self.0.remaining() < 8 {
            return Err(BlobError("u64"));
        }
        Ok(self.0.get_u64())
    }

    pub fn string(&mut self) -> Result<String, BlobError> {
        let len = usize::from(self.u16()?);
        if self.0.remaining() < len {
            return Err(BlobError("string"));
        }
        let raw = self.0.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| BlobError("utf-8"))
    }

    pub fn bytes(&mut self) -> Result<Bytes, BlobError> {
        let len = self.u32()? as usize;
        if self.0.remaining() < len {
            return Err(BlobError("bytes"));
        }
        Ok(Bytes::copy_from_slice(&self.0.split_to(len)))
    }
}
