//! A tiny MQTT packet builder and reader for byte-exact tests.
//!
//! Builders produce whole packets (fixed header with the right remaining length), so
//! tests only spell out what they are about. Readers split a received packet into its
//! parts; v5 properties are decoded into [`Prop`] values.

/// Appends a variable byte integer.
pub fn varint(out: &mut Vec<u8>, mut n: u32) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// Appends a two-byte-length-prefixed string or binary.
pub fn string(out: &mut Vec<u8>, s: impl AsRef<[u8]>) {
    let s = s.as_ref();
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A whole packet: `first` byte (type << 4 | flags), remaining length, `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// One v5 property, as sent or as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    Byte(u8, u8),
    U16(u8, u16),
    U32(u8, u32),
    Var(u8, u32),
    Str(u8, String),
    Bin(u8, Vec<u8>),
    Pair(String, String),
}

pub const PAYLOAD_FORMAT: u8 = 0x01;
pub const MESSAGE_EXPIRY: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_ID: u8 = 0x0B;
pub const SESSION_EXPIRY: u8 = 0x11;
pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const WILL_DELAY: u8 = 0x18;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;

impl Prop {
    pub fn id(&self) -> u8 {
        match self {
            Prop::Byte(i, _)
            | Prop::U16(i, _)
            | Prop::U32(i, _)
            | Prop::Var(i, _)
            | Prop::Str(i, _)
            | Prop::Bin(i, _) => *i,
            Prop::Pair(..) => USER_PROPERTY,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.id());
        match self {
            Prop::Byte(_, v) => out.push(*v),
            Prop::U16(_, v) => out.extend_from_slice(&v.to_be_bytes()),
            Prop::U32(_, v) => out.extend_from_slice(&v.to_be_bytes()),
            Prop::Var(_, v) => varint(out, *v),
            Prop::Str(_, s) => string(out, s),
            Prop::Bin(_, b) => string(out, b),
            Prop::Pair(k, v) => {
                string(out, k);
                string(out, v);
            }
        }
    }
}

/// Appends a v5 property block (its length, then the properties).
pub fn props(out: &mut Vec<u8>, props: &[Prop]) {
    let mut body = Vec::new();
    for p in props {
        p.write(&mut body);
    }
    varint(out, body.len() as u32);
    out.extend_from_slice(&body);
}

/// Protocol levels.
pub const V31: u8 = 3;
pub const V311: u8 = 4;
pub const V5: u8 = 5;

/// A will for [`Connect`].
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Vec<Prop>,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Will {
        Will {
            topic: topic.into(),
            payload: payload.to_vec(),
            qos: 0,
            retain: false,
            props: Vec::new(),
        }
    }
}

/// CONNECT builder.
#[derive(Debug, Clone)]
pub struct Connect {
    pub level: u8,
    pub client_id: Vec<u8>,
    pub clean: bool,
    pub keep_alive: u16,
    pub props: Vec<Prop>,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl Connect {
    pub fn v311(client_id: &str) -> Connect {
        Connect {
            level: V311,
            client_id: client_id.as_bytes().to_vec(),
            clean: true,
            keep_alive: 60,
            props: Vec::new(),
            will: None,
            username: None,
            password: None,
        }
    }

    pub fn v5(client_id: &str) -> Connect {
        Connect {
            level: V5,
            ..Connect::v311(client_id)
        }
    }

    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }

    /// Sets the username and password.
    pub fn user(mut self, name: &str, password: &[u8]) -> Connect {
        self.username = Some(name.into());
        self.password = Some(password.to_vec());
        self
    }

    pub fn keep_alive(mut self, secs: u16) -> Connect {
        self.keep_alive = secs;
        self
    }

    pub fn prop(mut self, p: Prop) -> Connect {
        self.props.push(p);
        self
    }

    pub fn will(mut self, w: Will) -> Connect {
        self.will = Some(w);
        self
    }

    /// The CONNECT flags byte this builder would send.
    pub fn flags(&self) -> u8 {
        let mut f = 0u8;
        if self.clean {
            f |= 0x02;
        }
        if let Some(w) = &self.will {
            f |= 0x04 | (w.qos << 3);
            if w.retain {
                f |= 0x20;
            }
        }
        if self.password.is_some() {
            f |= 0x40;
        }
        if self.username.is_some() {
            f |= 0x80;
        }
        f
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_flags(self.flags())
    }

    /// Builds with an arbitrary flags byte (for malformed CONNECTs).
    pub fn build_with_flags(&self, flags: u8) -> Vec<u8> {
        let mut b = Vec::new();
        if self.level == V31 {
            string(&mut b, "MQIsdp");
        } else {
            string(&mut b, "MQTT");
        }
        b.push(self.level);
        b.push(flags);
        b.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.level == V5 {
            props(&mut b, &self.props);
        }
        string(&mut b, &self.client_id);
        if let Some(w) = &self.will {
            if self.level == V5 {
                props(&mut b, &w.props);
            }
            string(&mut b, &w.topic);
            string(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            string(&mut b, u);
        }
        if let Some(p) = &self.password {
            string(&mut b, p);
        }
        packet(0x10, &b)
    }
}

/// PUBLISH. `packet_id` is ignored for QoS 0. `props` is only written when `v5`.
pub fn publish(
    v5: bool,
    topic: impl AsRef<[u8]>,
    qos: u8,
    retain: bool,
    packet_id: u16,
    props_: &[Prop],
    payload: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    string(&mut b, topic);
    if qos > 0 {
        b.extend_from_slice(&packet_id.to_be_bytes());
    }
    if v5 {
        props(&mut b, props_);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &b)
}

/// SUBSCRIBE with (filter, options byte) pairs; properties only when `v5`.
pub fn subscribe(v5: bool, packet_id: u16, props_: &[Prop], filters: &[(&str, u8)]) -> Vec<u8> {
    let mut b = packet_id.to_be_bytes().to_vec();
    if v5 {
        props(&mut b, props_);
    }
    for (f, opts) in filters {
        string(&mut b, f);
        b.push(*opts);
    }
    packet(0x82, &b)
}

/// An ack-type packet (PUBACK 0x40, PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70).
pub fn ack(first: u8, packet_id: u16) -> Vec<u8> {
    packet(first, &packet_id.to_be_bytes())
}

pub fn puback(packet_id: u16) -> Vec<u8> {
    ack(0x40, packet_id)
}

pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// v5 DISCONNECT with a reason code and properties.
pub fn disconnect_v5(reason: u8, props_: &[Prop]) -> Vec<u8> {
    let mut b = vec![reason];
    props(&mut b, props_);
    packet(0xe0, &b)
}

// ---------------------------------------------------------------- reading

/// A received packet: its first byte and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    pub first: u8,
    pub body: Vec<u8>,
}

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const UNSUBACK: u8 = 11;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT_TYPE: u8 = 14;

impl Pkt {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// The packet id of an ack, SUBACK or UNSUBACK.
    pub fn packet_id(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// CONNACK: (session present, return/reason code).
    pub fn connack(&self) -> (bool, u8) {
        assert_eq!(self.kind(), CONNACK, "not a CONNACK: {self:?}");
        (self.body[0] & 1 == 1, self.body[1])
    }

    /// v5 CONNACK properties.
    pub fn connack_props(&self) -> Vec<Prop> {
        assert_eq!(self.kind(), CONNACK, "not a CONNACK: {self:?}");
        read_props(&self.body[2..]).0
    }

    /// SUBACK return codes (v5: after the properties).
    pub fn suback_codes(&self, v5: bool) -> Vec<u8> {
        assert_eq!(self.kind(), SUBACK, "not a SUBACK: {self:?}");
        let rest = &self.body[2..];
        if v5 {
            let (_, used) = read_props(rest);
            rest[used..].to_vec()
        } else {
            rest.to_vec()
        }
    }

    /// Reason code of a v5 ack or DISCONNECT (0 when omitted).
    pub fn reason(&self) -> u8 {
        match self.kind() {
            DISCONNECT_TYPE => self.body.first().copied().unwrap_or(0),
            _ => self.body.get(2).copied().unwrap_or(0),
        }
    }

    pub fn publish(&self, v5: bool) -> RecvPublish {
        assert_eq!(self.kind(), PUBLISH, "not a PUBLISH: {self:?}");
        let qos = (self.first >> 1) & 3;
        let b = &self.body;
        let tlen = u16::from_be_bytes([b[0], b[1]]) as usize;
        let topic = String::from_utf8_lossy(&b[2..2 + tlen]).into_owned();
        let mut at = 2 + tlen;
        let mut packet_id = 0;
        if qos > 0 {
            packet_id = u16::from_be_bytes([b[at], b[at + 1]]);
            at += 2;
        }
        let mut props = Vec::new();
        if v5 {
            let (p, used) = read_props(&b[at..]);
            props = p;
            at += used;
        }
        RecvPublish {
            dup: self.first & 0x08 != 0,
            qos,
            retain: self.first & 1 == 1,
            topic,
            packet_id,
            props,
            payload: b[at..].to_vec(),
        }
    }
}

/// A decoded PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvPublish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub packet_id: u16,
    pub props: Vec<Prop>,
    pub payload: Vec<u8>,
}

impl RecvPublish {
    pub fn prop(&self, id: u8) -> Option<&Prop> {
        self.props.iter().find(|p| p.id() == id)
    }

    pub fn props_with(&self, id: u8) -> Vec<&Prop> {
        self.props.iter().filter(|p| p.id() == id).collect()
    }
}

/// Reads a variable byte integer: (value, bytes used), or None if incomplete.
pub fn read_varint(b: &[u8]) -> Option<(u32, usize)> {
    let mut n = 0u32;
    let mut mult = 1u32;
    for (i, byte) in b.iter().enumerate().take(4) {
        n += u32::from(byte & 0x7f) * mult;
        if byte & 0x80 == 0 {
            return Some((n, i + 1));
        }
        mult *= 128;
    }
    None
}

/// Decodes a property block: (properties, bytes used including the length).
pub fn read_props(b: &[u8]) -> (Vec<Prop>, usize) {
    let (len, hl) = read_varint(b).expect("property length");
    let end = hl + len as usize;
    let mut at = hl;
    let mut out = Vec::new();
    let u16_at = |at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    while at < end {
        let id = b[at];
        at += 1;
        let p = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                at += 1;
                Prop::Byte(id, b[at - 1])
            }
            0x13 | 0x21 | 0x22 | 0x23 => {
                at += 2;
                Prop::U16(id, u16_at(at - 2))
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                at += 4;
                Prop::U32(
                    id,
                    u32::from_be_bytes([b[at - 4], b[at - 3], b[at - 2], b[at - 1]]),
                )
            }
            0x0b => {
                let (v, used) = read_varint(&b[at..]).expect("varint property");
                at += used;
                Prop::Var(id, v)
            }
            0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => {
                let l = u16_at(at) as usize;
                at += 2 + l;
                Prop::Str(id, String::from_utf8_lossy(&b[at - l..at]).into_owned())
            }
            0x09 | 0x16 => {
                let l = u16_at(at) as usize;
                at += 2 + l;
                Prop::Bin(id, b[at - l..at].to_vec())
            }
            0x26 => {
                let kl = u16_at(at) as usize;
                let k = String::from_utf8_lossy(&b[at + 2..at + 2 + kl]).into_owned();
                at += 2 + kl;
                let vl = u16_at(at) as usize;
                let v = String::from_utf8_lossy(&b[at + 2..at + 2 + vl]).into_owned();
                at += 2 + vl;
                Prop::Pair(k, v)
            }
            other => panic!("unknown property id {other:#x} in {b:02x?}"),
        };
        out.push(p);
    }
    (out, end)
}

/// Removes and returns the first whole packet buffered in `buf`, if there is one.
pub fn take_packet(buf: &mut Vec<u8>) -> Option<Pkt> {
    if buf.len() < 2 {
        return None;
    }
    let (len, used) = read_varint(&buf[1..])?;
    let total = 1 + used + len as usize;
    if buf.len() < total {
        return None;
    }
    let p = Pkt {
        first: buf[0],
        body: buf[1 + used..total].to_vec(),
    };
    buf.drain(..total);
    Some(p)
}
