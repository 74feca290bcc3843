//! Decoding of one framed packet body (everything after the fixed header) into the
//! broker's [`Packet`] types, with every per-packet validation: CONNECT flag rules,
//! topic names, packet identifiers, subscription options, reason codes, and the MQTT 5
//! properties via [`super::properties`]. Everything decoded owns its bytes (strings
//! are copied out, payloads and binary data via `Bytes::copy_from_slice`), so nothing
//! pins the socket read buffer. Called only by the framing in `codec.rs`.

use super::error::ProtocolError;
use super::properties::{self, Ctx, Props};
use super::wire::Reader;
use crate::protocol::packet::*;
use crate::protocol::reason;
use bytes::Bytes;

pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;
pub(crate) const AUTH: u8 = 15;

/// Name of a packet type (0 and anything above 15 are "reserved").
pub(crate) fn packet_name(kind: u8) -> &'static str {
    match kind {
        CONNECT => "CONNECT",
        CONNACK => "CONNACK",
        PUBLISH => "PUBLISH",
        PUBACK => "PUBACK",
        PUBREC => "PUBREC",
        PUBREL => "PUBREL",
        PUBCOMP => "PUBCOMP",
        SUBSCRIBE => "SUBSCRIBE",
        SUBACK => "SUBACK",
        UNSUBSCRIBE => "UNSUBSCRIBE",
        UNSUBACK => "UNSUBACK",
        PINGREQ => "PINGREQ",
        PINGRESP => "PINGRESP",
        DISCONNECT => "DISCONNECT",
        AUTH => "AUTH",
        _ => "reserved",
    }
}

/// Decodes the body of any packet but CONNECT, for a session at `version`.
/// `from_client` refuses what only a server may put in a packet (subscription
/// identifiers in PUBLISH); packet-type direction is checked by the framing.
pub(crate) fn packet(
    kind: u8,
    flags: u8,
    body: &[u8],
    version: ProtocolVersion,
    from_client: bool,
) -> Result<Packet, ProtocolError> {
    let mut r = Reader::new(body, packet_name(kind));
    let v5 = version.is_v5();
    let packet = match kind {
        CONNACK => Packet::ConnAck(connack(&mut r, v5)?),
        PUBLISH => Packet::Publish(publish(&mut r, flags, v5, from_client)?),
        PUBACK => Packet::PubAck(pub_response(&mut r, v5)?),
        PUBREC => Packet::PubRec(pub_response(&mut r, v5)?),
        PUBREL => Packet::PubRel(pub_response(&mut r, v5)?),
        PUBCOMP => Packet::PubComp(pub_response(&mut r, v5)?),
        SUBSCRIBE => Packet::Subscribe(subscribe(&mut r, v5)?),
        SUBACK => Packet::SubAck(suback(&mut r, v5)?),
        UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        UNSUBACK => Packet::UnsubAck(unsuback(&mut r, v5)?),
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => Packet::Disconnect(disconnect(&mut r, v5)?),
        AUTH if v5 => Packet::Auth(auth(&mut r)?),
        CONNECT => return Err(ProtocolError::SecondConnect),
        other => return Err(ProtocolError::ReservedPacketType(other)),
    };
    r.finish()?;
    Ok(packet)
}

fn v5_props(r: &mut Reader<'_>, v5: bool, ctx: Ctx) -> Result<Props, ProtocolError> {
    if v5 {
        properties::parse(r, ctx)
    } else {
        Ok(Props::default())
    }
}

fn packet_id(r: &mut Reader<'_>) -> Result<u16, ProtocolError> {
    match r.u16("packet identifier")? {
        0 => Err(ProtocolError::PacketIdZero(r.packet)),
        id => Ok(id),
    }
}

/// A topic name (PUBLISH or will) must not contain wildcards [MQTT-3.3.2-2].
fn has_wildcard(topic: &str) -> bool {
    topic.contains(['+', '#'])
}

/// A Response Topic (PUBLISH or will) is used as the topic name of the reply, so it
/// must be one: not empty [MQTT-4.7.3-1] and without wildcards [MQTT-3.3.2-14]
/// (UTF-8 and U+0000 were checked when it was read [MQTT-3.3.2-13]).
fn check_response_topic(props: &Props) -> Result<(), ProtocolError> {
    match &props.response_topic {
        Some(t) if t.is_empty() || has_wildcard(t) => {
            Err(ProtocolError::InvalidResponseTopic(t.clone()))
        }
        _ => Ok(()),
    }
}

/// Reads the protocol name and level at the start of a CONNECT body.
pub(crate) fn protocol_version(r: &mut Reader<'_>) -> Result<ProtocolVersion, ProtocolError> {
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    // Bounded: the name is the client's to choose and ends up in logs.
    let shown = || String::from_utf8_lossy(&name[..name.len().min(16)]).into_owned();
    match (name, level) {
        (b"MQIsdp", 3) => Ok(ProtocolVersion::V3_1),
        (b"MQTT", 4) => Ok(ProtocolVersion::V3_1_1),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        // A known name at another level is an MQTT client of an unsupported version:
        // it is answered with CONNACK 0x01 / 0x84 [MQTT-3.1.2-2].
        (b"MQTT" | b"MQIsdp", _) => Err(ProtocolError::UnsupportedProtocol {
            name: shown(),
            level,
        }),
        // Any other name is not MQTT: the connection is closed without a CONNACK
        // [MQTT-3.1.2-1].
        _ => Err(ProtocolError::InvalidProtocolName(shown())),
    }
}

pub(crate) fn connect(body: &[u8]) -> Result<Connect, ProtocolError> {
    let mut r = Reader::new(body, "CONNECT");
    let version = protocol_version(&mut r)?;
    let v5 = version.is_v5();
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(ProtocolError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(ProtocolError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(ProtocolError::WillQoS3)?;
    if !v5 && password_flag && !username_flag {
        return Err(ProtocolError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let mut props = v5_props(&mut r, v5, Ctx::Connect)?;
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(ProtocolError::AuthDataWithoutMethod);
    }

    let client_id = r.string("client identifier")?;
    if version == ProtocolVersion::V3_1 && client_id.is_empty() {
        return Err(ProtocolError::EmptyClientIdV31);
    }

    let will = if will_flag {
        let mut wp = v5_props(&mut r, v5, Ctx::Will)?;
        check_response_topic(&wp)?;
        let topic = r.string("will topic")?;
        if topic.is_empty() || has_wildcard(&topic) {
            return Err(ProtocolError::InvalidWillTopic(topic));
        }
        let payload = r.binary("will payload")?;
        if wp.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
            return Err(ProtocolError::PayloadNotUtf8);
        }
        Some(LastWill {
            topic,
            payload: Bytes::copy_from_slice(payload),
            qos: will_qos,
            retain: will_retain,
            delay_interval: wp.will_delay_interval,
            properties: wp.take_message(),
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(Bytes::copy_from_slice(r.binary("password")?))
    } else {
        None
    };
    r.finish()?;

    Ok(Connect {
        version,
        client_id,
        clean_start,
        keep_alive,
        username,
        password,
        will,
        properties: ConnectProperties {
            session_expiry_interval: props.session_expiry_interval,
            receive_maximum: props.receive_maximum,
            maximum_packet_size: props.maximum_packet_size,
            topic_alias_maximum: props.topic_alias_maximum,
            request_response_information: props.request_response_information,
            request_problem_information: props.request_problem_information,
            user_properties: std::mem::take(&mut props.user_properties),
            authentication_method: props.authentication_method.take(),
            authentication_data: props.authentication_data.take(),
        },
    })
}

fn connack(r: &mut Reader<'_>, v5: bool) -> Result<ConnAck, ProtocolError> {
    let flags = r.u8("connect acknowledge flags")?;
    if flags & 0xfe != 0 {
        return Err(ProtocolError::ConnAckReservedBits(flags));
    }
    let code = r.u8("reason code")?;
    let code = if v5 {
        code
    } else {
        // 3.x return codes back to the MQTT 5 numbers the broker speaks.
        match code {
            0 => reason::SUCCESS,
            1 => reason::UNSUPPORTED_PROTOCOL_VERSION,
            2 => reason::CLIENT_IDENTIFIER_NOT_VALID,
            3 => reason::SERVER_UNAVAILABLE,
            4 => reason::BAD_USER_NAME_OR_PASSWORD,
            5 => reason::NOT_AUTHORIZED,
            other => {
                return Err(ProtocolError::InvalidReasonCode {
                    packet: "CONNACK",
                    code: other,
                })
            }
        }
    };
    let mut p = v5_props(r, v5, Ctx::ConnAck)?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        code,
        properties: ConnAckProperties {
            session_expiry_interval: p.session_expiry_interval,
            receive_maximum: p.receive_maximum,
            maximum_qos: p.maximum_qos,
            retain_available: p.retain_available,
            maximum_packet_size: p.maximum_packet_size,
            assigned_client_identifier: p.assigned_client_identifier.take(),
            topic_alias_maximum: p.topic_alias_maximum,
            reason_string: p.reason_string.take(),
            user_properties: std::mem::take(&mut p.user_properties),
            wildcard_subscription_available: p.wildcard_subscription_available,
            subscription_identifiers_available: p.subscription_identifiers_available,
            shared_subscription_available: p.shared_subscription_available,
            server_keep_alive: p.server_keep_alive,
            response_information: p.response_information.take(),
            server_reference: p.server_reference.take(),
            authentication_method: p.authentication_method.take(),
            authentication_data: p.authentication_data.take(),
        },
    })
}

/// `flags` were checked by the framing (QoS 3, DUP on QoS 0).
fn publish(
    r: &mut Reader<'_>,
    flags: u8,
    v5: bool,
    from_client: bool,
) -> Result<Publish, ProtocolError> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(ProtocolError::PublishQoS3)?;
    let topic = r.string("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let mut p = v5_props(r, v5, Ctx::Publish)?;
    if from_client && !p.subscription_identifiers.is_empty() {
        return Err(ProtocolError::SubscriptionIdFromClient);
    }
    check_response_topic(&p)?;
    if has_wildcard(&topic) {
        return Err(ProtocolError::WildcardInTopic(topic));
    }
    if topic.is_empty() && p.topic_alias.is_none() {
        return Err(ProtocolError::EmptyTopic);
    }
    let payload = r.rest();
    if p.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        return Err(ProtocolError::PayloadNotUtf8);
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        payload: Bytes::copy_from_slice(payload),
        topic_alias: p.topic_alias,
        subscription_identifiers: std::mem::take(&mut p.subscription_identifiers),
        properties: p.take_message(),
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. v5 accepts the short forms: packet id only
/// (success), packet id and reason (no properties), and the full form.
fn pub_response(r: &mut Reader<'_>, v5: bool) -> Result<PubResponse, ProtocolError> {
    let mut resp = PubResponse::success(packet_id(r)?);
    if !v5 || r.is_empty() {
        return Ok(resp);
    }
    resp.reason = r.u8("reason code")?;
    let valid: &[u8] = match r.packet {
        "PUBACK" | "PUBREC" => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        _ => &[0x00, 0x92],
    };
    if !valid.contains(&resp.reason) {
        return Err(ProtocolError::InvalidReasonCode {
            packet: r.packet,
            code: resp.reason,
        });
    }
    if !r.is_empty() {
        let mut p = properties::parse(r, Ctx::PubResponse(r.packet))?;
        resp.reason_string = p.reason_string.take();
        resp.user_properties = std::mem::take(&mut p.user_properties);
    }
    Ok(resp)
}

fn subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, ProtocolError> {
    let packet_id = packet_id(r)?;
    let mut p = v5_props(r, v5, Ctx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let o = r.u8("subscription options")?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if o & reserved != 0 {
            return Err(ProtocolError::SubscribeReservedBits(o));
        }
        let qos = QoS::from_u8(o & 0x03).ok_or(ProtocolError::SubscribeQoS3)?;
        let retain_handling = (o >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(ProtocolError::RetainHandling3);
        }
        filters.push(SubscribeFilter {
            filter,
            options: SubscriptionOptions {
                qos,
                no_local: o & 0x04 != 0,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            },
        });
    }
    if filters.is_empty() {
        return Err(ProtocolError::SubscribeNoFilters);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        subscription_identifier: p.subscription_identifiers.first().copied(),
        user_properties: std::mem::take(&mut p.user_properties),
    })
}

fn suback(r: &mut Reader<'_>, v5: bool) -> Result<SubAck, ProtocolError> {
    let packet_id = packet_id(r)?;
    let mut p = v5_props(r, v5, Ctx::SubAck)?;
    let reasons = r.rest().to_vec();
    if reasons.is_empty() {
        return Err(ProtocolError::Truncated {
            packet: "SUBACK",
            field: "reason codes",
        });
    }
    Ok(SubAck {
        packet_id,
        reasons,
        reason_string: p.reason_string.take(),
        user_properties: std::mem::take(&mut p.user_properties),
    })
}

fn unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe, ProtocolError> {
    let packet_id = packet_id(r)?;
    let mut p = v5_props(r, v5, Ctx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(ProtocolError::UnsubscribeNoFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties: std::mem::take(&mut p.user_properties),
    })
}

fn unsuback(r: &mut Reader<'_>, v5: bool) -> Result<UnsubAck, ProtocolError> {
    let packet_id = packet_id(r)?;
    let mut p = v5_props(r, v5, Ctx::UnsubAck)?;
    let reasons = if v5 { r.rest().to_vec() } else { Vec::new() };
    Ok(UnsubAck {
        packet_id,
        reasons,
        reason_string: p.reason_string.take(),
        user_properties: std::mem::take(&mut p.user_properties),
    })
}

/// 3.x: empty. v5: `e0 00` (normal), `e0 01 rc`, or reason code and properties.
fn disconnect(r: &mut Reader<'_>, v5: bool) -> Result<Disconnect, ProtocolError> {
    let mut d = Disconnect::default();
    if !v5 || r.is_empty() {
        return Ok(d);
    }
    d.reason = r.u8("reason code")?;
    if !r.is_empty() {
        let mut p = properties::parse(r, Ctx::Disconnect)?;
        d.session_expiry_interval = p.session_expiry_interval;
        d.reason_string = p.reason_string.take();
        d.user_properties = std::mem::take(&mut p.user_properties);
        d.server_reference = p.server_reference.take();
    }
    Ok(d)
}

/// v5 only: `f0 00` (success), `f0 01 rc`, or reason code and properties.
fn auth(r: &mut Reader<'_>) -> Result<Auth, ProtocolError> {
    let mut a = Auth::default();
    if r.is_empty() {
        return Ok(a);
    }
    a.reason = r.u8("reason code")?;
    if ![0x00, 0x18, 0x19].contains(&a.reason) {
        return Err(ProtocolError::InvalidReasonCode {
            packet: "AUTH",
            code: a.reason,
        });
    }
    if !r.is_empty() {
        let mut p = properties::parse(r, Ctx::Auth)?;
        a.authentication_method = p.authentication_method.take();
        a.authentication_data = p.authentication_data.take();
        a.reason_string = p.reason_string.take();
        a.user_properties = std::mem::take(&mut p.user_properties);
    }
    Ok(a)
}
