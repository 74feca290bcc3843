//! MQTT 5 properties (spec 2.2.2): one parser for every packet type that enforces
//! Table 2-4 (which property may appear in which packet), the at-most-once rule
//! [MQTT-2.2.2-2] and the value ranges, into a flat [`Props`] the packet decoders pick
//! from; and the writers the packet encoders use. Called only by the codec's
//! `read` and `write` modules.

use super::error::ProtocolError;
use super::wire::{measure, Reader, Sink};
use crate::protocol::packet::{MessageProperties, UserProperty};
use bytes::Bytes;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIERS_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Which property block is being read: decides what is allowed (Table 2-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResponse(&'static str),
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Ctx {
    fn packet(self) -> &'static str {
        match self {
            Ctx::Connect => "CONNECT",
            Ctx::Will => "CONNECT will properties",
            Ctx::ConnAck => "CONNACK",
            Ctx::Publish => "PUBLISH",
            Ctx::PubResponse(name) => name,
            Ctx::Subscribe => "SUBSCRIBE",
            Ctx::SubAck => "SUBACK",
            Ctx::Unsubscribe => "UNSUBSCRIBE",
            Ctx::UnsubAck => "UNSUBACK",
            Ctx::Disconnect => "DISCONNECT",
            Ctx::Auth => "AUTH",
        }
    }
}

/// Name of a property identifier, `None` if unknown.
fn name(id: u8) -> Option<&'static str> {
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR => "payload format indicator",
        MESSAGE_EXPIRY_INTERVAL => "message expiry interval",
        CONTENT_TYPE => "content type",
        RESPONSE_TOPIC => "response topic",
        CORRELATION_DATA => "correlation data",
        SUBSCRIPTION_IDENTIFIER => "subscription identifier",
        SESSION_EXPIRY_INTERVAL => "session expiry interval",
        ASSIGNED_CLIENT_IDENTIFIER => "assigned client identifier",
        SERVER_KEEP_ALIVE => "server keep alive",
        AUTHENTICATION_METHOD => "authentication method",
        AUTHENTICATION_DATA => "authentication data",
        REQUEST_PROBLEM_INFORMATION => "request problem information",
        WILL_DELAY_INTERVAL => "will delay interval",
        REQUEST_RESPONSE_INFORMATION => "request response information",
        RESPONSE_INFORMATION => "response information",
        SERVER_REFERENCE => "server reference",
        REASON_STRING => "reason string",
        RECEIVE_MAXIMUM => "receive maximum",
        TOPIC_ALIAS_MAXIMUM => "topic alias maximum",
        TOPIC_ALIAS => "topic alias",
        MAXIMUM_QOS => "maximum QoS",
        RETAIN_AVAILABLE => "retain available",
        USER_PROPERTY => "user property",
        MAXIMUM_PACKET_SIZE => "maximum packet size",
        WILDCARD_SUBSCRIPTION_AVAILABLE => "wildcard subscription available",
        SUBSCRIPTION_IDENTIFIERS_AVAILABLE => "subscription identifiers available",
        SHARED_SUBSCRIPTION_AVAILABLE => "shared subscription available",
        _ => return None,
    })
}

/// Table 2-4: may property `id` appear in `ctx`?
fn allowed(ctx: Ctx, id: u8) -> bool {
    use Ctx::*;
    match id {
        USER_PROPERTY => true,
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => matches!(ctx, Publish | Will),
        SUBSCRIPTION_IDENTIFIER => matches!(ctx, Publish | Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(ctx, Connect | ConnAck | Disconnect),
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => matches!(ctx, Connect | ConnAck | Auth),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => ctx == Connect,
        WILL_DELAY_INTERVAL => ctx == Will,
        SERVER_REFERENCE => matches!(ctx, ConnAck | Disconnect),
        REASON_STRING => matches!(
            ctx,
            ConnAck | PubResponse(_) | SubAck | UnsubAck | Disconnect | Auth
        ),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(ctx, Connect | ConnAck)
        }
        TOPIC_ALIAS => ctx == Publish,
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIERS_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ctx == ConnAck,
        _ => false,
    }
}

/// Every property any packet may carry; each decoder takes the ones its packet allows
/// (the parser has already refused the others).
#[derive(Debug, Default)]
pub(crate) struct Props {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<UserProperty>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifiers_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

impl Props {
    /// The application-message properties (PUBLISH, will).
    pub(crate) fn take_message(&mut self) -> MessageProperties {
        MessageProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            content_type: self.content_type.take(),
            response_topic: self.response_topic.take(),
            correlation_data: self.correlation_data.take(),
            user_properties: std::mem::take(&mut self.user_properties),
        }
    }
}

fn invalid(name: &'static str, value: u32) -> ProtocolError {
    ProtocolError::InvalidPropertyValue { name, value }
}

/// A byte property that must be 0 or 1.
fn flag(r: &mut Reader<'_>, name: &'static str) -> Result<u8, ProtocolError> {
    let v = r.u8(name)?;
    if v > 1 {
        return Err(invalid(name, u32::from(v)));
    }
    Ok(v)
}

/// Reads and discards the value of property `id` (a known one), by its data type
/// (MQTT 5 §2.2.2.2).
fn skip_value(p: &mut Reader<'_>, id: u8, name: &'static str) -> Result<(), ProtocolError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIERS_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => {
            p.u8(name)?;
        }
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            p.u16(name)?;
        }
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => {
            p.u32(name)?;
        }
        SUBSCRIPTION_IDENTIFIER => {
            p.varint(name)?;
        }
        CORRELATION_DATA | AUTHENTICATION_DATA => {
            p.binary(name)?;
        }
        USER_PROPERTY => {
            p.string("user property name")?;
            p.string("user property value")?;
        }
        _ => {
            p.string(name)?;
        }
    }
    Ok(())
}

/// Reads a property length and the property block after it.
pub(crate) fn parse(r: &mut Reader<'_>, ctx: Ctx) -> Result<Props, ProtocolError> {
    let len = r.varint("property length")? as usize;
    let mut p = r.sub(len)?;
    let packet = ctx.packet();
    let mut props = Props::default();
    let mut seen: u64 = 0;
    while !p.is_empty() {
        // Identifiers are variable byte integers, but every defined one is < 128; a
        // first byte >= 128 is therefore unknown whatever follows.
        let id = p.u8("property identifier")?;
        let name = name(id).ok_or(ProtocolError::UnknownProperty { packet, id })?;
        if !allowed(ctx, id) {
            // The value is read first, so a packet that ends inside it is refused for
            // that; either way the packet is malformed (MQTT 5 §2.2.2.2).
            skip_value(&mut p, id, name)?;
            return Err(ProtocolError::PropertyNotAllowed { packet, name });
        }
        let repeatable =
            id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && ctx == Ctx::Publish);
        if !repeatable {
            let bit = 1u64 << id;
            if seen & bit != 0 {
                return Err(ProtocolError::DuplicateProperty { packet, name });
            }
            seen |= bit;
        }
        match id {
            PAYLOAD_FORMAT_INDICATOR => props.payload_format_indicator = Some(flag(&mut p, name)?),
            MESSAGE_EXPIRY_INTERVAL => props.message_expiry_interval = Some(p.u32(name)?),
            CONTENT_TYPE => props.content_type = Some(p.string(name)?),
            RESPONSE_TOPIC => props.response_topic = Some(p.string(name)?),
            CORRELATION_DATA => {
                props.correlation_data = Some(Bytes::copy_from_slice(p.binary(name)?))
            }
            SUBSCRIPTION_IDENTIFIER => {
                let v = p.varint(name)?;
                if v == 0 {
                    return Err(invalid(name, 0));
                }
                props.subscription_identifiers.push(v);
            }
            SESSION_EXPIRY_INTERVAL => props.session_expiry_interval = Some(p.u32(name)?),
            ASSIGNED_CLIENT_IDENTIFIER => props.assigned_client_identifier = Some(p.string(name)?),
            SERVER_KEEP_ALIVE => props.server_keep_alive = Some(p.u16(name)?),
            AUTHENTICATION_METHOD => props.authentication_method = Some(p.string(name)?),
            AUTHENTICATION_DATA => {
                props.authentication_data = Some(Bytes::copy_from_slice(p.binary(name)?))
            }
            REQUEST_PROBLEM_INFORMATION => {
                props.request_problem_information = Some(flag(&mut p, name)?)
            }
            WILL_DELAY_INTERVAL => props.will_delay_interval = Some(p.u32(name)?),
            REQUEST_RESPONSE_INFORMATION => {
                props.request_response_information = Some(flag(&mut p, name)?)
            }
            RESPONSE_INFORMATION => props.response_information = Some(p.string(name)?),
            SERVER_REFERENCE => props.server_reference = Some(p.string(name)?),
            REASON_STRING => props.reason_string = Some(p.string(name)?),
            RECEIVE_MAXIMUM => {
                let v = p.u16(name)?;
                if v == 0 {
                    return Err(invalid(name, 0));
                }
                props.receive_maximum = Some(v);
            }
            TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = Some(p.u16(name)?),
            TOPIC_ALIAS => {
                let v = p.u16(name)?;
                if v == 0 {
                    return Err(ProtocolError::TopicAliasZero);
                }
                props.topic_alias = Some(v);
            }
            MAXIMUM_QOS => props.maximum_qos = Some(flag(&mut p, name)?),
            RETAIN_AVAILABLE => props.retain_available = Some(flag(&mut p, name)?),
            USER_PROPERTY => {
                let key = p.string("user property name")?;
                let value = p.string("user property value")?;
                props.user_properties.push((key, value));
            }
            MAXIMUM_PACKET_SIZE => {
                let v = p.u32(name)?;
                if v == 0 {
                    return Err(invalid(name, 0));
                }
                props.maximum_packet_size = Some(v);
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                props.wildcard_subscription_available = Some(flag(&mut p, name)?)
            }
            SUBSCRIPTION_IDENTIFIERS_AVAILABLE => {
                props.subscription_identifiers_available = Some(flag(&mut p, name)?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                props.shared_subscription_available = Some(flag(&mut p, name)?)
            }
            _ => return Err(ProtocolError::UnknownProperty { packet, id }),
        }
    }
    Ok(props)
}

// ---- writing ---------------------------------------------------------------------------

/// Writes a property length then the properties `body` writes.
pub(crate) fn block(s: &mut dyn Sink, body: &dyn Fn(&mut dyn Sink)) {
    s.varint(measure(|c| body(c)));
    body(s);
}

pub(crate) fn byte(s: &mut dyn Sink, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.u8(id);
        s.u8(v);
    }
}

pub(crate) fn two(s: &mut dyn Sink, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.u8(id);
        s.u16(v);
    }
}

pub(crate) fn four(s: &mut dyn Sink, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.u8(id);
        s.u32(v);
    }
}

pub(crate) fn string(s: &mut dyn Sink, id: u8, v: Option<&str>) {
    if let Some(v) = v {
        s.u8(id);
        s.string(v);
    }
}

pub(crate) fn binary(s: &mut dyn Sink, id: u8, v: Option<&Bytes>) {
    if let Some(v) = v {
        s.u8(id);
        s.binary(v);
    }
}

pub(crate) fn users(s: &mut dyn Sink, users: &[UserProperty]) {
    for (k, v) in users {
        s.u8(USER_PROPERTY);
        s.string(k);
        s.string(v);
    }
}

/// The application-message properties of a PUBLISH or a will.
pub(crate) fn message(s: &mut dyn Sink, m: &MessageProperties) {
    byte(s, PAYLOAD_FORMAT_INDICATOR, m.payload_format_indicator);
    four(s, MESSAGE_EXPIRY_INTERVAL, m.message_expiry_interval);
    string(s, CONTENT_TYPE, m.content_type.as_deref());
    string(s, RESPONSE_TOPIC, m.response_topic.as_deref());
    binary(s, CORRELATION_DATA, m.correlation_data.as_ref());
    users(s, &m.user_properties);
}
