//! What a node reads from NATS: arbitrary bytes as a cluster envelope never panic the
//! decoder, and a decoded envelope encodes back to an equal one; arbitrary text as a
//! subject never panics the subject-to-topic mapping, and a topic's subject maps back to
//! the topic.
//!
//! Input: one byte choosing the check, then the bytes.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::cluster::envelope::Envelope;
use sluice::cluster::subject::{subject_to_topic, topic_to_subject};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(env) = Envelope::decode(Bytes::copy_from_slice(rest)) {
                let again = Envelope::decode(env.encode()).expect("re-encoded envelope decodes");
                assert_eq!(again, env);
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = subject_to_topic("sluice", text);
            }
        }
        _ => {
            if let Ok(topic) = std::str::from_utf8(rest) {
                if topic.contains(['+', '#', '\0']) || topic.is_empty() {
                    return;
                }
                let subject = topic_to_subject("sluice", topic);
                assert!(!subject.contains(char::is_whitespace));
                assert_eq!(subject_to_topic("sluice", &subject).as_deref(), Ok(topic));
            }
        }
    }
});
