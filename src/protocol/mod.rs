//! MQTT on the wire: the only module that imports `mqttbytes` (which the codec's tests
//! use as an independent implementation to cross-check against; see `codec`).
//!
//! Owns framing (the size limit is checked from the fixed header, before the body is
//! buffered), decoding of MQTT 3.1, 3.1.1 and 5.0 packets into the broker's own
//! [`Packet`] types, every validation the codec crate lacks, and encoding back. Errors
//! are [`ProtocolError`]s that cite the spec clause and map to a v5 reason code.
//! Called by `connection`; calls nobody. It never does I/O and never blocks.

mod codec;
pub mod packet;
pub mod reason;

pub use codec::{
    decode, decode_any, encode, encode_outbound, outbound_len, peek_connect_version, publish_len,
    ProtocolError,
};
pub use packet::*;
