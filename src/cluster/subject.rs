//! The mapping between MQTT topics and NATS subjects, in both directions.
//!
//! A topic `a/b/c` travels as `<prefix>.m.a.b.c`: each MQTT level is one NATS token.
//! NATS reserves `.` (the separator), whitespace, and `*` / `>` as whole tokens, and a
//! token may not be empty, while an MQTT level may hold any UTF-8 but `+`, `#` and NUL,
//! and may be empty. So a level is written byte by byte: ASCII letters, digits and
//! `-_$:@=!,;` as they are, every other byte as `%XX` (upper-case hex), and an empty level
//! as the single token `%`. The mapping is reversible ([`subject_to_topic`]) and keeps
//! common topics readable on the NATS side (`sluice.m.sensors.k1.temp`).
//!
//! A filter becomes the NATS subjects that carry every topic it can match: `+` is `*`,
//! a trailing `#` is `>` plus the parent subject (MQTT `a/#` also matches `a`), and
//! `$share/group/f` is the subjects of `f`. NATS wildcards know nothing of MQTT's `$`
//! rule (`#` does not match `$SYS/...`), so a receiving node matches every message
//! again against its own subscriptions; the subjects only decide which nodes see it.
//! A filter's subjects never overlap one another, so a node that receives a copy per
//! matching subscription serves each filter from exactly one copy: the one that came on
//! a subject [`filter_has_subject`] says is the filter's.

use std::fmt::Write;

/// Bytes of a level that travel as they are.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_$:@=!,;".contains(&b)
}

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for &b in level.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The subject a message on `topic` is published on.
pub fn topic_to_subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 3 + topic.len() + 8);
    out.push_str(prefix);
    out.push_str(".m");
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

/// Why a subject is not one [`topic_to_subject`] wrote.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject does not start with {0}.m.")]
    Prefix(String),
    #[error("bad escape in subject token {0:?}")]
    Escape(String),
    #[error("subject decodes to invalid UTF-8")]
    Utf8,
}

/// The topic a subject written by [`topic_to_subject`] stands for.
pub fn subject_to_topic(prefix: &str, subject: &str) -> Result<String, SubjectError> {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|s| s.strip_prefix(".m."))
        .ok_or_else(|| SubjectError::Prefix(prefix.to_string()))?;
    let mut bytes = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "%" {
            continue;
        }
        let raw = token.as_bytes();
        let mut j = 0;
        while j < raw.len() {
            if raw[j] == b'%' {
                let hex = token
                    .get(j + 1..j + 3)
                    .ok_or_else(|| SubjectError::Escape(token.to_string()))?;
                let b = u8::from_str_radix(hex, 16)
                    .map_err(|_| SubjectError::Escape(token.to_string()))?;
                bytes.push(b);
                j += 3;
            } else if is_plain(raw[j]) {
                bytes.push(raw[j]);
                j += 1;
            } else {
                return Err(SubjectError::Escape(token.to_string()));
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| SubjectError::Utf8)
}

/// The NATS subjects that together carry every topic `filter` (a valid MQTT filter,
/// possibly `$share/group/...`) matches.
pub fn filter_to_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let filter = without_share(filter);
    let mut base = String::with_capacity(prefix.len() + 3 + filter.len() + 8);
    base.push_str(prefix);
    base.push_str(".m");
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" if i == levels.len() - 1 => {
                // `a/#` matches `a` itself and everything below it [MQTT-4.7.1-2]; a
                // lone `#` matches every topic, which has at least one level.
                let parent = (i > 0).then(|| base.clone());
                base.push_str(".>");
                return parent.into_iter().chain(std::iter::once(base)).collect();
            }
            "+" => base.push_str(".*"),
            level => {
                base.push('.');
                push_level(&mut base, level);
            }
        }
    }
    vec![base]
}

/// A shared subscription's filter without its `$share/group/`.
fn without_share(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
        None => filter,
    }
}

/// Whether `subject` is one of [`filter_to_subjects`]`(prefix, filter)`, decided
/// without building them: it runs for every subscription a received message matches.
pub fn filter_has_subject(prefix: &str, filter: &str, subject: &str) -> bool {
    let Some(mut rest) = subject
        .strip_prefix(prefix)
        .and_then(|s| s.strip_prefix(".m"))
    else {
        return false;
    };
    let mut levels = without_share(filter).split('/').enumerate().peekable();
    while let Some((i, level)) = levels.next() {
        if level == "#" && levels.peek().is_none() {
            // `a/#` is carried by `a.>` and by `a`; a lone `#` by `>` only.
            return rest == ".>" || (i > 0 && rest.is_empty());
        }
        let Some(r) = rest.strip_prefix('.') else {
            return false;
        };
        let (token, after) = r.find('.').map_or((r, ""), |j| r.split_at(j));
        let same = if level == "+" {
            token == "*"
        } else {
            token_is_level(token, level)
        };
        if !same {
            return false;
        }
        rest = after;
    }
    rest.is_empty()
}

/// Whether `token` is what [`push_level`] writes for `level`.
fn token_is_level(token: &str, level: &str) -> bool {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if level.is_empty() {
        return token == "%";
    }
    let t = token.as_bytes();
    let mut j = 0;
    for &b in level.as_bytes() {
        if is_plain(b) {
            if t.get(j) != Some(&b) {
                return false;
            }
            j += 1;
        } else {
            let escaped = [b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
            if t.get(j..j + 3) != Some(&escaped[..]) {
                return false;
            }
            j += 3;
        }
    }
    j == t.len()
}

pub use crate::config::is_token;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topics_map_to_readable_subjects() {
        let cases = [
            ("sensors/k1/temp", "sluice.m.sensors.k1.temp"),
            ("a", "sluice.m.a"),
            ("/a", "sluice.m.%.a"),
            ("a//b/", "sluice.m.a.%.b.%"),
            ("1.5/x y", "sluice.m.1%2E5.x%20y"),
            ("*/>", "sluice.m.%2A.%3E"),
            ("$SYS/broker", "sluice.m.$SYS.broker"),
            ("%/~", "sluice.m.%25.%7E"),
            ("café", "sluice.m.caf%C3%A9"),
        ];
        for (topic, subject) in cases {
            assert_eq!(topic_to_subject("sluice", topic), subject, "{topic}");
            assert_eq!(
                subject_to_topic("sluice", subject).as_deref(),
                Ok(topic),
                "{subject}"
            );
        }
    }

    #[test]
    fn filters_map_to_the_subjects_that_carry_their_topics() {
        let cases: [(&str, &[&str]); 7] = [
            ("a/b", &["p.m.a.b"]),
            ("a/+/c", &["p.m.a.*.c"]),
            ("a/#", &["p.m.a", "p.m.a.>"]),
            ("#", &["p.m.>"]),
            ("+/#", &["p.m.*", "p.m.*.>"]),
            ("$share/g/s/+/t", &["p.m.s.*.t"]),
            ("a.b/ /#", &["p.m.a%2Eb.%20", "p.m.a%2Eb.%20.>"]),
        ];
        for (filter, subjects) in cases {
            assert_eq!(filter_to_subjects("p", filter), subjects, "{filter}");
        }
    }

    #[test]
    fn foreign_subjects_are_refused() {
        assert!(subject_to_topic("sluice", "other.m.a").is_err());
        assert!(subject_to_topic("sluice", "sluice.m.a%2").is_err());
        assert!(subject_to_topic("sluice", "sluice.m.a%ZZ").is_err());
        assert!(subject_to_topic("sluice", "sluice.m.a b").is_err());
        assert!(subject_to_topic("sluice", "sluice.m.%FF").is_err());
    }

    /// A NATS-side matcher: what the server does with `*` and `>`.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, tok) in p.iter().enumerate() {
            if *tok == ">" {
                return s.len() > i;
            }
            match s.get(i) {
                Some(t) if *tok == "*" || tok == t => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z]{1,3}", "[ .*>%$é~a-z]{1,4}",]
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![
            4 => level(),
            2 => Just("+".to_string()),
            1 => Just("#".to_string()),
        ];
        proptest::collection::vec(level, 1..5).prop_map(|levels| {
            let end = levels
                .iter()
                .position(|l| l == "#")
                .map_or(levels.len(), |i| i + 1);
            levels[..end].join("/")
        })
    }

    #[test]
    fn a_filter_has_exactly_its_subjects() {
        let cases: [(&str, &str, bool); 8] = [
            ("a/#", "p.m.a", true),
            ("a/#", "p.m.a.>", true),
            ("a/#", "p.m.a.*", false),
            ("#", "p.m.>", true),
            ("#", "p.m", false),
            ("$share/g/a/+/t", "p.m.a.*.t", true),
            ("a/+/t", "p.m.a.x.t", false),
            ("a.b/ ", "p.m.a%2Eb.%20", true),
        ];
        for (filter, subject, has) in cases {
            assert_eq!(
                filter_has_subject("p", filter, subject),
                has,
                "{filter} {subject}"
            );
        }
    }

    proptest! {
        /// [`filter_has_subject`] agrees with [`filter_to_subjects`], for a filter's own
        /// subjects and for other filters' subjects.
        #[test]
        fn has_subject_agrees_with_the_subjects(f in filter(), other in filter()) {
            let own = filter_to_subjects("p", &f);
            for s in own.iter().chain(filter_to_subjects("p", &other).iter()) {
                prop_assert_eq!(filter_has_subject("p", &f, s), own.contains(s), "{} {}", f, s);
            }
            prop_assert!(!filter_has_subject("q", &f, &own[0]));
        }

        #[test]
        fn round_trip(levels in proptest::collection::vec(level(), 1..6)) {
            let topic = levels.join("/");
            let subject = topic_to_subject("sluice", &topic);
            prop_assert!(!subject.contains(' '));
            prop_assert!(subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"));
            prop_assert_eq!(subject_to_topic("sluice", &subject), Ok(topic));
        }

        /// Whenever MQTT matching says a filter matches a topic, one of the filter's
        /// subjects carries the topic's subject (NATS may carry more: `$` topics).
        #[test]
        fn subjects_cover_mqtt_matches(
            levels in proptest::collection::vec(level(), 1..5),
            mask in proptest::collection::vec(0u8..3, 1..5),
        ) {
            let topic = levels.join("/");
            let mut filter_levels: Vec<String> = Vec::new();
            for (i, l) in levels.iter().enumerate() {
                match mask.get(i).copied().unwrap_or(0) {
                    1 => filter_levels.push("+".into()),
                    2 => { filter_levels.push("#".into()); break; }
                    _ => filter_levels.push(l.clone()),
                }
            }
            let filter = filter_levels.join("/");
            if crate::router::topic::matches(&filter, &topic) {
                let subject = topic_to_subject("p", &topic);
                let subjects = filter_to_subjects("p", &filter);
                prop_assert!(
                    subjects.iter().any(|s| nats_matches(s, &subject)),
                    "{} -> {:?} does not carry {} ({})", filter, subjects, topic, subject
                );
            }
        }
    }
}
