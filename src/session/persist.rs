//! The session state the store keeps for a persistent session: its expiry and its
//! subscriptions, in our own versioned blob format (the store treats it as opaque).
//! Queued messages are not in here: they are Enqueue/Ack records of their own.

use super::SubscriptionRecord;
use crate::protocol::{QoS, SubscriptionOptions};
use crate::wire::{put_str, BlobError, Reader};
use bytes::{BufMut, Bytes, BytesMut};

const STATE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedSession {
    pub expiry_secs: u32,
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
}

pub fn encode_state(expiry_secs: u32, subscriptions: &[(String, SubscriptionRecord)]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + subscriptions.len() * 32);
    out.put_u8(STATE_VERSION);
    out.put_u32(expiry_secs);
    out.put_u32(subscriptions.len() as u32);
    for (filter, rec) in subscriptions {
        put_str(&mut out, filter);
        let o = rec.options;
        out.put_u8(
            o.qos as u8
                | u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling & 3) << 4,
        );
        match rec.identifier {
            Some(id) => {
                out.put_u8(1);
                out.put_u32(id);
            }
            None => out.put_u8(0),
        }
    }
    out.freeze()
}

pub fn decode_state(blob: Bytes) -> Result<PersistedSession, BlobError> {
    let mut r = Reader(blob);
    if r.u8()? != STATE_VERSION {
        return Err(BlobError("unknown session state version"));
    }
    let expiry_secs = r.u32()?;
    let n = r.u32()?;
    let mut subscriptions = Vec::with_capacity(n.min(4096) as usize);
    for _ in 0..n {
        let filter = r.string()?;
        let bits = r.u8()?;
        let qos = QoS::from_u8(bits & 3).ok_or(BlobError("qos"))?;
        let identifier = match r.u8()? {
            0 => None,
            _ => Some(r.u32()?),
        };
        subscriptions.push((
            filter,
            SubscriptionRecord {
                options: SubscriptionOptions {
                    qos,
                    no_local: bits & 4 != 0,
                    retain_as_published: bits & 8 != 0,
                    retain_handling: (bits >> 4) & 3,
                },
                identifier,
            },
        ));
    }
    Ok(PersistedSession {
        expiry_secs,
        subscriptions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip() {
        let subs = vec![
            (
                "a/+/c".to_string(),
                SubscriptionRecord {
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: true,
                        retain_as_published: false,
                        retain_handling: 2,
                    },
                    identifier: Some(7),
                },
            ),
            (
                "$share/g/x/#".to_string(),
                SubscriptionRecord {
                    options: SubscriptionOptions::default(),
                    identifier: None,
                },
            ),
        ];
        let back = decode_state(encode_state(42, &subs)).expect("decodes");
        assert_eq!(
            back,
            PersistedSession {
                expiry_secs: 42,
                subscriptions: subs
            }
        );
        assert!(decode_state(Bytes::from_static(b"\x01\x00")).is_err());
    }
}
