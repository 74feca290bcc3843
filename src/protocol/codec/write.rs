//! Encoding of the broker's [`Packet`] types into MQTT 3.1, 3.1.1 or 5.0 wire format.
//! Each packet body is written through a [`Sink`] twice: into a counter for the
//! remaining length (and [`publish_len`]) and into the output, so the two cannot
//! disagree. Version differences live here: 3.x gets no properties, CONNACK return
//! codes and SUBACK failures mapped down, short acks; v5 acks, DISCONNECT and AUTH use
//! their shortest form (no reason code for plain success, no property length when
//! there are no properties).
//! Called only by `codec.rs`.

use super::properties::{self as prop, block};
use super::read::*;
use super::wire::{measure, varint_len, Sink};
use crate::protocol::packet::*;
use crate::protocol::reason;
use bytes::BytesMut;

/// Appends `packet` in `version`'s format. A 3.x AUTH (which does not exist) writes
/// nothing.
pub(crate) fn packet(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    if matches!(packet, Packet::Auth(_)) && !version.is_v5() {
        return;
    }
    let len = measure(|c| body(packet, version, c));
    out.reserve(1 + varint_len(len) + len);
    out.u8(header(packet));
    out.varint(len);
    body(packet, version, out);
}

/// Total bytes [`packet`] writes for this PUBLISH.
pub(crate) fn publish_len(p: &Publish, version: ProtocolVersion) -> usize {
    let len = measure(|c| publish(p, version.is_v5(), c));
    1 + varint_len(len) + len
}

/// Appends a PUBLISH built from borrowed parts (see [`OutboundPublish`]).
pub(crate) fn outbound_publish(
    p: &OutboundPublish<'_>,
    version: ProtocolVersion,
    out: &mut BytesMut,
) {
    let v5 = version.is_v5();
    let len = measure(|c| outbound_body(p, v5, c));
    out.reserve(1 + varint_len(len) + len);
    let qos = p.qos as u8;
    // DUP is meaningless on QoS 0 and must be 0 there [MQTT-3.3.1-2].
    let dup = p.dup && qos > 0;
    out.u8((PUBLISH << 4) | (u8::from(dup) << 3) | (qos << 1) | u8::from(p.retain));
    out.varint(len);
    outbound_body(p, v5, out);
}

/// Total bytes [`outbound_publish`] writes.
pub(crate) fn outbound_publish_len(p: &OutboundPublish<'_>, version: ProtocolVersion) -> usize {
    let len = measure(|c| outbound_body(p, version.is_v5(), c));
    1 + varint_len(len) + len
}

fn outbound_body(p: &OutboundPublish<'_>, v5: bool, s: &mut dyn Sink) {
    s.string(p.topic);
    if p.qos != QoS::AtMostOnce {
        s.u16(p.packet_id);
    }
    if v5 {
        block(s, &|s| {
            let m = p.properties;
            prop::byte(
                s,
                prop::PAYLOAD_FORMAT_INDICATOR,
                m.payload_format_indicator,
            );
            prop::four(s, prop::MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
            prop::string(s, prop::CONTENT_TYPE, m.content_type.as_deref());
            prop::string(s, prop::RESPONSE_TOPIC, m.response_topic.as_deref());
            prop::binary(s, prop::CORRELATION_DATA, m.correlation_data.as_ref());
            prop::users(s, &m.user_properties);
            for &id in p.subscription_identifiers {
                s.u8(prop::SUBSCRIPTION_IDENTIFIER);
                s.varint(id as usize);
            }
        });
    }
    s.raw(p.payload);
}

fn header(packet: &Packet) -> u8 {
    let (kind, flags) = match packet {
        Packet::Connect(_) => (CONNECT, 0),
        Packet::ConnAck(_) => (CONNACK, 0),
        Packet::Publish(p) => {
            let qos = p.qos as u8;
            // DUP is meaningless on QoS 0 and must be 0 there [MQTT-3.3.1-2].
            let dup = p.dup && qos > 0;
            (
                PUBLISH,
                (u8::from(dup) << 3) | (qos << 1) | u8::from(p.retain),
            )
        }
        Packet::PubAck(_) => (PUBACK, 0),
        Packet::PubRec(_) => (PUBREC, 0),
        Packet::PubRel(_) => (PUBREL, 0b0010),
        Packet::PubComp(_) => (PUBCOMP, 0),
        Packet::Subscribe(_) => (SUBSCRIBE, 0b0010),
        Packet::SubAck(_) => (SUBACK, 0),
        Packet::Unsubscribe(_) => (UNSUBSCRIBE, 0b0010),
        Packet::UnsubAck(_) => (UNSUBACK, 0),
        Packet::PingReq => (PINGREQ, 0),
        Packet::PingResp => (PINGRESP, 0),
        Packet::Disconnect(_) => (DISCONNECT, 0),
        Packet::Auth(_) => (AUTH, 0),
    };
    (kind << 4) | flags
}

fn body(packet: &Packet, version: ProtocolVersion, s: &mut dyn Sink) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => connect(c, version, s),
        Packet::ConnAck(c) => connack(c, version, s),
        Packet::Publish(p) => publish(p, v5, s),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            pub_response(r, v5, s)
        }
        Packet::Subscribe(sub) => subscribe(sub, v5, s),
        Packet::SubAck(a) => suback(a, v5, s),
        Packet::Unsubscribe(u) => unsubscribe(u, v5, s),
        Packet::UnsubAck(a) => unsuback(a, v5, s),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            // 3.x DISCONNECT is empty (and only ever sent by clients).
            if v5 {
                disconnect(d, s)
            }
        }
        Packet::Auth(a) => auth(a, s),
    }
}

fn connect(c: &Connect, version: ProtocolVersion, s: &mut dyn Sink) {
    let v5 = version.is_v5();
    match version {
        ProtocolVersion::V3_1 => {
            s.string("MQIsdp");
            s.u8(3);
        }
        ProtocolVersion::V3_1_1 => {
            s.string("MQTT");
            s.u8(4);
        }
        ProtocolVersion::V5 => {
            s.string("MQTT");
            s.u8(5);
        }
    }
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        let p = &c.properties;
        block(s, &|s| {
            prop::four(s, prop::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
            prop::two(s, prop::RECEIVE_MAXIMUM, p.receive_maximum);
            prop::four(s, prop::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
            prop::two(s, prop::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
            prop::byte(
                s,
                prop::REQUEST_RESPONSE_INFORMATION,
                p.request_response_information,
            );
            prop::byte(
                s,
                prop::REQUEST_PROBLEM_INFORMATION,
                p.request_problem_information,
            );
            prop::users(s, &p.user_properties);
            prop::string(
                s,
                prop::AUTHENTICATION_METHOD,
                p.authentication_method.as_deref(),
            );
            prop::binary(s, prop::AUTHENTICATION_DATA, p.authentication_data.as_ref());
        });
    }
    s.string(&c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            block(s, &|s| {
                prop::four(s, prop::WILL_DELAY_INTERVAL, w.delay_interval);
                prop::message(s, &w.properties);
            });
        }
        s.string(&w.topic);
        s.binary(&w.payload);
    }
    if let Some(u) = &c.username {
        s.string(u);
    }
    if let Some(p) = &c.password {
        s.binary(p);
    }
}

fn connack(c: &ConnAck, version: ProtocolVersion, s: &mut dyn Sink) {
    // Session present must be 0 with a failure code [MQTT-3.2.2-4] (v5: -6). MQTT 3.1
    // has no session present flag: its first byte is reserved and 0 (3.1 §3.2).
    let present = c.session_present && c.code == reason::SUCCESS;
    s.u8(u8::from(present && version != ProtocolVersion::V3_1));
    if !version.is_v5() {
        s.u8(reason::connack_return_code_v3(c.code));
        return;
    }
    s.u8(c.code);
    let p = &c.properties;
    block(s, &|s| {
        prop::four(s, prop::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
        prop::two(s, prop::RECEIVE_MAXIMUM, p.receive_maximum);
        prop::byte(s, prop::MAXIMUM_QOS, p.maximum_qos);
        prop::byte(s, prop::RETAIN_AVAILABLE, p.retain_available);
        prop::four(s, prop::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
        prop::string(
            s,
            prop::ASSIGNED_CLIENT_IDENTIFIER,
            p.assigned_client_identifier.as_deref(),
        );
        prop::two(s, prop::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
        prop::string(s, prop::REASON_STRING, p.reason_string.as_deref());
        prop::users(s, &p.user_properties);
        prop::byte(
            s,
            prop::WILDCARD_SUBSCRIPTION_AVAILABLE,
            p.wildcard_subscription_available,
        );
        prop::byte(
            s,
            prop::SUBSCRIPTION_IDENTIFIERS_AVAILABLE,
            p.subscription_identifiers_available,
        );
        prop::byte(
            s,
            prop::SHARED_SUBSCRIPTION_AVAILABLE,
            p.shared_subscription_available,
        );
        prop::two(s, prop::SERVER_KEEP_ALIVE, p.server_keep_alive);
        prop::string(
            s,
            prop::RESPONSE_INFORMATION,
            p.response_information.as_deref(),
        );
        prop::string(s, prop::SERVER_REFERENCE, p.server_reference.as_deref());
        prop::string(
            s,
            prop::AUTHENTICATION_METHOD,
            p.authentication_method.as_deref(),
        );
        prop::binary(s, prop::AUTHENTICATION_DATA, p.authentication_data.as_ref());
    });
}

fn publish(p: &Publish, v5: bool, s: &mut dyn Sink) {
    s.string(&p.topic);
    if p.qos != QoS::AtMostOnce {
        s.u16(p.packet_id);
    }
    if v5 {
        block(s, &|s| {
            prop::message(s, &p.properties);
            prop::two(s, prop::TOPIC_ALIAS, p.topic_alias);
            for &id in &p.subscription_identifiers {
                s.u8(prop::SUBSCRIPTION_IDENTIFIER);
                s.varint(id as usize);
            }
        });
    }
    s.raw(&p.payload);
}

fn pub_response(r: &PubResponse, v5: bool, s: &mut dyn Sink) {
    s.u16(r.packet_id);
    if !v5 {
        return;
    }
    let no_props = r.reason_string.is_none() && r.user_properties.is_empty();
    if r.reason == reason::SUCCESS && no_props {
        return;
    }
    s.u8(r.reason);
    if !no_props {
        reason_block(s, r.reason_string.as_deref(), &r.user_properties);
    }
}

/// Reason string and user properties: the property block of every ack.
fn reason_block(s: &mut dyn Sink, reason_string: Option<&str>, users: &[UserProperty]) {
    block(s, &|s| {
        prop::string(s, prop::REASON_STRING, reason_string);
        prop::users(s, users);
    });
}

fn subscribe(sub: &Subscribe, v5: bool, s: &mut dyn Sink) {
    s.u16(sub.packet_id);
    if v5 {
        block(s, &|s| {
            if let Some(id) = sub.subscription_identifier {
                s.u8(prop::SUBSCRIPTION_IDENTIFIER);
                s.varint(id as usize);
            }
            prop::users(s, &sub.user_properties);
        });
    }
    for f in &sub.filters {
        s.string(&f.filter);
        let o = &f.options;
        let mut byte = o.qos as u8;
        if v5 {
            byte |= u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling & 0x03) << 4;
        }
        s.u8(byte);
    }
}

fn suback(a: &SubAck, v5: bool, s: &mut dyn Sink) {
    s.u16(a.packet_id);
    if v5 {
        reason_block(s, a.reason_string.as_deref(), &a.user_properties);
        s.raw(&a.reasons);
    } else {
        for &r in &a.reasons {
            s.u8(if r >= 0x80 { 0x80 } else { r });
        }
    }
}

fn unsubscribe(u: &Unsubscribe, v5: bool, s: &mut dyn Sink) {
    s.u16(u.packet_id);
    if v5 {
        block(s, &|s| prop::users(s, &u.user_properties));
    }
    for f in &u.filters {
        s.string(f);
    }
}

fn unsuback(a: &UnsubAck, v5: bool, s: &mut dyn Sink) {
    s.u16(a.packet_id);
    if v5 {
        reason_block(s, a.reason_string.as_deref(), &a.user_properties);
        s.raw(&a.reasons);
    }
}

/// The shortest form (MQTT 5 §3.14.2.1, §3.14.2.2.1): `e0 00` for a normal
/// disconnection without properties, `e0 01 rc` for a reason without properties, else
/// `e0 len rc props…`.
fn disconnect(d: &Disconnect, s: &mut dyn Sink) {
    let body = |s: &mut dyn Sink| {
        prop::four(s, prop::SESSION_EXPIRY_INTERVAL, d.session_expiry_interval);
        prop::string(s, prop::REASON_STRING, d.reason_string.as_deref());
        prop::users(s, &d.user_properties);
        prop::string(s, prop::SERVER_REFERENCE, d.server_reference.as_deref());
    };
    reason_then_props(s, d.reason, &body);
}

/// A reason code and a property block, each left out when it says nothing: no
/// property length when there are no properties, and then no reason code either when
/// it is 0x00 (DISCONNECT §3.14.2, AUTH §3.15.2).
fn reason_then_props(s: &mut dyn Sink, code: u8, body: &dyn Fn(&mut dyn Sink)) {
    let has_props = measure(|c| body(c)) > 0;
    if code == reason::SUCCESS && !has_props {
        return;
    }
    s.u8(code);
    if has_props {
        block(s, body);
    }
}

/// The shortest form, as DISCONNECT's (MQTT 5 §3.15.2.1, §3.15.2.2.1).
fn auth(a: &Auth, s: &mut dyn Sink) {
    reason_then_props(s, a.reason, &|s| {
        prop::string(
            s,
            prop::AUTHENTICATION_METHOD,
            a.authentication_method.as_deref(),
        );
        prop::binary(s, prop::AUTHENTICATION_DATA, a.authentication_data.as_ref());
        prop::string(s, prop::REASON_STRING, a.reason_string.as_deref());
        prop::users(s, &a.user_properties);
    });
}

/// Makes `c` fit the client's Maximum Packet Size at `version`: drops the Reason String
/// [MQTT-3.2.2-19], then the User Properties [MQTT-3.2.2-20], while it is too large.
/// Returns false when even that is too large: no CONNACK may be sent [MQTT-3.1.2-24].
pub(crate) fn fit_connack(c: &mut ConnAck, version: ProtocolVersion, max: usize) -> bool {
    let len = |c: &ConnAck| {
        let body = measure(|s| connack(c, version, s));
        1 + varint_len(body) + body
    };
    if len(c) <= max {
        return true;
    }
    c.properties.reason_string = None;
    if len(c) <= max {
        return true;
    }
    c.properties.user_properties.clear();
    len(c) <= max
}

#[cfg(test)]
mod outbound_tests {
    use super::*;
    use bytes::Bytes;

    /// The borrowed fan-out encoding is byte-for-byte the owned one.
    #[test]
    fn outbound_publish_matches_owned_encoding() {
        let properties = MessageProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(99),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user_properties: vec![("k".into(), "v".into())],
        };
        for version in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for (qos, packet_id, dup) in [
                (QoS::AtMostOnce, 0, false),
                (QoS::AtLeastOnce, 7, true),
                (QoS::ExactlyOnce, 65535, false),
            ] {
                let mut owned_props = properties.clone();
                owned_props.message_expiry_interval = Some(42);
                let owned = Publish {
                    dup,
                    qos,
                    retain: true,
                    topic: "a/b/ü".into(),
                    packet_id,
                    payload: Bytes::from_static(b"payload"),
                    properties: if version.is_v5() {
                        owned_props
                    } else {
                        Default::default()
                    },
                    topic_alias: None,
                    subscription_identifiers: if version.is_v5() {
                        vec![3, 300]
                    } else {
                        vec![]
                    },
                };
                let ids = [3u32, 300];
                let borrowed = OutboundPublish {
                    dup,
                    qos,
                    retain: true,
                    topic: "a/b/ü",
                    packet_id,
                    payload: b"payload",
                    properties: &properties,
                    message_expiry_interval: Some(42),
                    subscription_identifiers: &ids,
                };
                let mut a = BytesMut::new();
                packet(&Packet::Publish(owned.clone()), version, &mut a);
                let mut b = BytesMut::new();
                outbound_publish(&borrowed, version, &mut b);
                assert_eq!(a, b, "{version:?} {qos:?}");
                assert_eq!(outbound_publish_len(&borrowed, version), b.len());
                assert_eq!(publish_len(&owned, version), a.len());
            }
        }
    }
}
