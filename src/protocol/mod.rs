//! MQTT on the wire: the only module that imports `mqttbytes`, and only in its tests, as
//! an independent implementation our codec is cross-checked against in both directions.
//! Production decoding and encoding are our own: mqttbytes 0.6 returns slices that pin
//! the socket buffer, lets a duplicate property silently overwrite the first (so
//! [MQTT-2.2.2-2] cannot be checked after it), ignores fixed-header flags and U+0000,
//! cannot parse 3.1 CONNECT or the short v5 DISCONNECT forms, has no AUTH, and encoding
//! through it would clone topic and properties for every subscriber.
//!
//! Owns framing (the size limit is checked from the fixed header, before the body is
//! buffered), decoding of MQTT 3.1, 3.1.1 and 5.0 packets into the broker's own
//! [`Packet`] types, every validation the codec crate lacks, and encoding back. Errors
//! are [`ProtocolError`]s that cite the spec clause and map to a v5 reason code.
//! Called by `connection`; calls nobody. It never does I/O and never blocks.

mod codec;
pub mod packet;
pub mod reason;
pub mod topic;

pub use codec::{
    decode, decode_any, encode, encode_outbound, fit_connack, outbound_len, peek_connect_version,
    publish_len, ProtocolError,
};
pub use packet::*;
