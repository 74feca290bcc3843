//! [`ProtocolError`]: every way a client's bytes can break the MQTT rules, each citing
//! the spec clause it breaks and mapping to the MQTT 5 reason code the broker sends in
//! its CONNACK or DISCONNECT. Produced by the codec's decoders; read by `connection`.
//!
//! Clause numbers are MQTT 5.0's where 5.0 numbers the rule, else MQTT 3.1.1's (the
//! CONNECT flag rules and UTF-8 rules are cited with their 3.1.1 numbers, as the
//! broker's docs do); rules the spec states without a number cite their section.

use crate::protocol::reason;

/// A packet the broker must refuse. The connection is closed after it (with a CONNACK
/// or DISCONNECT carrying [`ProtocolError::reason_code`] where the version allows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    // ---- framing -------------------------------------------------------------------
    #[error("[MQTT-1.5.5-1] variable byte integer ({field}) longer than 4 bytes")]
    VarIntTooLong { field: &'static str },
    #[error("[MQTT-1.5.5-1] variable byte integer ({field}) not minimally encoded")]
    VarIntNotMinimal { field: &'static str },
    #[error("[MQTT-3.1.2-24] packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("[MQTT-2.1.2] reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("[MQTT-2.1.3-1] {packet} with invalid fixed header flags {flags:#06b}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("[MQTT-2.1.4] {packet} ends inside its {field} (remaining length too short)")]
    Truncated {
        packet: &'static str,
        field: &'static str,
    },
    #[error("[MQTT-2.1.4] {packet} has {count} unexpected bytes after its end")]
    TrailingBytes { packet: &'static str, count: usize },
    #[error("[MQTT-2.2.2] {packet} property length overruns the packet")]
    PropertyLengthOverrun { packet: &'static str },

    // ---- packet order and direction -----------------------------------------------
    #[error("[MQTT-3.1.0-1] first packet must be CONNECT, got {0}")]
    FirstPacketNotConnect(&'static str),
    #[error("[MQTT-3.1.0-2] second CONNECT on one connection")]
    SecondConnect,
    #[error("[MQTT-2.1.2] {0} is sent only by a server, never by a client")]
    ServerOnlyPacket(&'static str),

    // ---- strings --------------------------------------------------------------------
    #[error("[MQTT-1.5.3-1] {field} is not well-formed UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("[MQTT-1.5.3-2] {field} contains U+0000")]
    NullCharacter { field: &'static str },

    // ---- CONNECT --------------------------------------------------------------------
    #[error("[MQTT-3.1.2-1] protocol name {0:?} is neither \"MQTT\" nor \"MQIsdp\"")]
    InvalidProtocolName(String),
    #[error("[MQTT-3.1.2-2] unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ConnectReservedFlag,
    #[error("[MQTT-3.1.2-11] CONNECT will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    #[error("[MQTT-3.1.2-14] CONNECT with will QoS 3")]
    WillQoS3,
    #[error("[MQTT-3.1.2-22] CONNECT password flag set without user name flag")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.1.3-5] MQTT 3.1 client identifier must not be empty")]
    EmptyClientIdV31,
    #[error("[MQTT-3.1.2.11.10] CONNECT has authentication data but no method")]
    AuthDataWithoutMethod,
    #[error("[MQTT-3.1.3-11] will topic {0:?} is not a valid topic name")]
    InvalidWillTopic(String),

    // ---- PUBLISH --------------------------------------------------------------------
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    PublishQoS3,
    #[error("[MQTT-3.3.1-2] PUBLISH with DUP set on QoS 0")]
    DupOnQoS0,
    #[error("[MQTT-3.3.2-2] topic name {0:?} contains a wildcard")]
    WildcardInTopic(String),
    #[error("[MQTT-4.7.3-1] PUBLISH with an empty topic name and no topic alias")]
    EmptyTopic,
    #[error("[MQTT-3.3.2-8] topic alias 0")]
    TopicAliasZero,
    #[error("[MQTT-3.3.4-6] client PUBLISH carries a subscription identifier")]
    SubscriptionIdFromClient,
    #[error("[MQTT-3.3.2-14] response topic {0:?} is not a valid topic name")]
    InvalidResponseTopic(String),
    #[error("[MQTT-3.3.2-4] payload format indicator is 1 but the payload is not UTF-8")]
    PayloadNotUtf8,

    // ---- packet identifiers, SUBSCRIBE, UNSUBSCRIBE -----------------------------------
    #[error("[MQTT-2.2.1-3] {0} with packet identifier 0")]
    PacketIdZero(&'static str),
    #[error("[MQTT-3.8.3-3] SUBSCRIBE with no topic filter")]
    SubscribeNoFilters,
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE with no topic filter")]
    UnsubscribeNoFilters,
    #[error("[MQTT-3.8.3-4] SUBSCRIBE requests QoS 3")]
    SubscribeQoS3,
    #[error("[MQTT-3.8.3-5] SUBSCRIBE options {0:#010b} set reserved bits")]
    SubscribeReservedBits(u8),
    #[error("[MQTT-3.8.3.1] SUBSCRIBE with retain handling 3")]
    RetainHandling3,

    // ---- properties and reason codes --------------------------------------------------
    #[error("[MQTT-2.2.2] unknown property identifier {id:#04x} in {packet}")]
    UnknownProperty { packet: &'static str, id: u8 },
    #[error("[MQTT-2.2.2.2] property {name} is not allowed in {packet}")]
    PropertyNotAllowed {
        packet: &'static str,
        name: &'static str,
    },
    #[error("[MQTT-2.2.2-2] property {name} appears more than once in {packet}")]
    DuplicateProperty {
        packet: &'static str,
        name: &'static str,
    },
    #[error("[MQTT-2.2.2] property {name} has invalid value {value}")]
    InvalidPropertyValue { name: &'static str, value: u32 },
    #[error("[MQTT-2.4] {packet} with invalid reason code {code:#04x}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
    #[error("[MQTT-3.2.2.1] CONNACK acknowledge flags {0:#010b} set reserved bits")]
    ConnAckReservedBits(u8),
}

impl ProtocolError {
    /// The MQTT 5 reason code to put in the CONNACK (before the session starts) or
    /// DISCONNECT (after) that answers this error. For 3.x clients map a CONNACK code
    /// with `reason::connack_return_code_v3`; 3.x has no DISCONNECT from the server.
    pub fn reason_code(&self) -> u8 {
        use ProtocolError::*;
        match self {
            PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            EmptyClientIdV31 => reason::CLIENT_IDENTIFIER_NOT_VALID,
            TopicAliasZero => reason::TOPIC_ALIAS_INVALID,
            PayloadNotUtf8 => reason::PAYLOAD_FORMAT_INVALID,
            WildcardInTopic(_) | InvalidWillTopic(_) => reason::TOPIC_NAME_INVALID,
            // The rule is on the string's meaning, not its encoding; mosquitto answers
            // the same 0x82.
            InvalidResponseTopic(_)
            // Closed without a CONNACK [MQTT-3.1.2-1]; the code is never sent.
            | InvalidProtocolName(_)
            | FirstPacketNotConnect(_)
            | SecondConnect
            | AuthDataWithoutMethod
            | ServerOnlyPacket(_)
            | EmptyTopic
            | SubscriptionIdFromClient
            | PacketIdZero(_)
            | SubscribeNoFilters
            | UnsubscribeNoFilters
            | RetainHandling3
            | DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | InvalidReasonCode { .. } => reason::PROTOCOL_ERROR,
            VarIntTooLong { .. }
            | VarIntNotMinimal { .. }
            | ReservedPacketType(_)
            | InvalidFlags { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | PropertyLengthOverrun { .. }
            | InvalidUtf8 { .. }
            | NullCharacter { .. }
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | WillQoS3
            | PasswordWithoutUsername
            | PublishQoS3
            | DupOnQoS0
            | SubscribeQoS3
            | SubscribeReservedBits(_)
            | UnknownProperty { .. }
            // An identifier not valid for its packet type makes the packet malformed
            // (MQTT 5 §2.2.2.2).
            | PropertyNotAllowed { .. }
            | ConnAckReservedBits(_) => reason::MALFORMED_PACKET,
        }
    }
}
