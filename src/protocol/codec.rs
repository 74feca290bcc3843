//! Placeholder: the codec is being written on its own branch.
use super::packet::{Packet, ProtocolVersion, Publish};
use bytes::BytesMut;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("[MQTT-1.5.4-1] malformed packet")]
    Malformed,
}

impl ProtocolError {
    pub fn reason_code(&self) -> u8 {
        super::reason::MALFORMED_PACKET
    }
}

pub fn decode(
    _buf: &mut BytesMut,
    _version: Option<ProtocolVersion>,
    _max_packet_size: usize,
) -> Result<Option<Packet>, ProtocolError> {
    unimplemented!("codec branch")
}

pub fn encode(_packet: &Packet, _version: ProtocolVersion, _out: &mut BytesMut) {
    unimplemented!("codec branch")
}

pub fn publish_len(_publish: &Publish, _version: ProtocolVersion) -> usize {
    unimplemented!("codec branch")
}
