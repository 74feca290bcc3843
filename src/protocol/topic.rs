//! Topic names and topic filters: the syntax rules of MQTT 3.1.1 §4.7 and MQTT 5.0 §4.7
//! and §4.8 (shared subscriptions), and a simple reference matcher.
//!
//! This module owns *validation* and the *meaning* of a match. The session layer calls
//! [`validate_topic_name`] on every PUBLISH and [`parse_filter`] on every SUBSCRIBE /
//! UNSUBSCRIBE before anything reaches the router; the router's topic trie assumes its
//! filters already passed here. [`matches`] is the straightforward definition of matching
//! that the trie is tested against (and is handy for one-off checks such as ACLs); it is not
//! the hot path.
//!
//! Levels are separated by `/`; empty levels are real levels (`a//b` has three levels, `/`
//! has two). All checks work on `&str` levels, so multi-byte UTF-8 is never split.
//!
//! [`TopicTrie`]: super::trie::TopicTrie

/// The maximum length in bytes of a topic name or filter: the length prefix of an MQTT UTF-8
/// string is a `u16` [MQTT-1.5.3].
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// The prefix that makes a filter a shared subscription [MQTT 5.0 §4.8.2].
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or a topic filter was refused. The `Display` text cites the clause of
/// the specification that was broken, so it can go into a log line or a reason string as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic name or filter is the empty string.
    #[error("[MQTT-4.7.3-1] topic names and filters must be at least one character long")]
    Empty,
    /// Longer than an MQTT string can be.
    #[error("[MQTT-1.5.3] topic is {0} bytes long, more than the maximum of 65535")]
    TooLong(usize),
    /// Contains the null character U+0000.
    #[error("[MQTT-4.7.3-2] topic names and filters must not contain the null character U+0000")]
    NullCharacter,
    /// A topic name (as opposed to a filter) contains `+` or `#`.
    #[error("[MQTT-3.3.2-2] topic name must not contain wildcards")]
    WildcardInName,
    /// `#` appears other than as the whole last level of a filter.
    #[error(
        "[MQTT-4.7.1-2] the multi-level wildcard '#' must be the last level and occupy it entirely"
    )]
    MisplacedMultiLevelWildcard,
    /// `+` appears other than as a whole level of a filter.
    #[error("[MQTT-4.7.1-3] the single-level wildcard '+' must occupy an entire level")]
    MisplacedSingleLevelWildcard,
    /// More levels than the broker's configured limit.
    #[error("topic has {levels} levels, more than this broker's limit of {max}")]
    TooManyLevels {
        /// Levels in the offending topic.
        levels: usize,
        /// The configured limit.
        max: usize,
    },
    /// `$share//...`: the share name is empty.
    #[error(
        "[MQTT-4.8.2-1] a shared subscription's share name must be at least one character long"
    )]
    EmptyShareName,
    /// The share name contains `+`, `#` or `/`.
    #[error("[MQTT-4.8.2-2] a shared subscription's share name must not contain '/', '+' or '#'")]
    InvalidShareName,
    /// `$share/{group}` with no filter after the share name.
    #[error("[MQTT-4.8.2-2] a shared subscription must have a topic filter after the share name")]
    MissingShareFilter,
}

/// A validated topic filter, with a shared subscription's parts split out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind<'a> {
    /// An ordinary filter, e.g. `sensors/+/temp`.
    Plain(&'a str),
    /// `$share/{group}/{filter}` [MQTT 5.0 §4.8.2]: `filter` is the part the router matches.
    Shared {
        /// The share name.
        group: &'a str,
        /// The topic filter after the share name.
        filter: &'a str,
    },
}

/// The number of levels in a topic name or filter: one more than the number of `/`.
/// `level_count("a")` is 1, `level_count("/")` is 2, `level_count("a//b")` is 3.
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// Checks shared by names and filters: non-empty, length, no U+0000, level limit.
fn check_common(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(topic.len()));
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    let levels = level_count(topic);
    if levels > max_levels {
        return Err(TopicError::TooManyLevels {
            levels,
            max: max_levels,
        });
    }
    Ok(())
}

/// Validates the topic name of a PUBLISH (or a will): non-empty [MQTT-4.7.3-1], no `+` or
/// `#` [MQTT-3.3.2-2], no U+0000 [MQTT-4.7.3-2], at most 65535 bytes, at most `max_levels`
/// levels.
pub fn validate_topic_name(topic: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(topic, max_levels)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates a topic filter as a plain filter (a `$share/...` filter is checked here only
/// for its syntax; use [`parse_filter`] to split and check the share name): non-empty
/// [MQTT-4.7.3-1], `#` only as the whole last level [MQTT-4.7.1-2], `+` only as a whole level
/// [MQTT-4.7.1-3], no U+0000 [MQTT-4.7.3-2], at most 65535 bytes, at most `max_levels` levels.
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(filter, max_levels)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Validates a SUBSCRIBE / UNSUBSCRIBE filter and splits a shared subscription
/// `$share/{group}/{filter}` into its share name and filter [MQTT 5.0 §4.8.2]: the share name
/// must be non-empty [MQTT-4.8.2-1] and contain no `+`, `#` or `/` [MQTT-4.8.2-2], and the
/// inner filter must itself be a valid filter (its levels are counted against `max_levels`).
///
/// Only a filter starting with `$share/` is shared; `$share` alone is an ordinary filter.
pub fn parse_filter(filter: &str, max_levels: usize) -> Result<FilterKind<'_>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        validate_filter(filter, max_levels)?;
        return Ok(FilterKind::Plain(filter));
    };
    if filter.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(filter.len()));
    }
    let Some((group, inner)) = rest.split_once('/') else {
        // `$share/g`: no separator after the share name, hence no filter.
        return Err(if rest.is_empty() {
            TopicError::EmptyShareName
        } else if rest.contains(['+', '#']) {
            TopicError::InvalidShareName
        } else {
            TopicError::MissingShareFilter
        });
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareName);
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    if group.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    if inner.is_empty() {
        return Err(TopicError::MissingShareFilter);
    }
    validate_filter(inner, max_levels)?;
    Ok(FilterKind::Shared {
        group,
        filter: inner,
    })
}

/// Whether `filter` matches the topic name `topic` (both assumed valid): `+` matches exactly
/// one level, `#` matches zero or more trailing levels (so `a/#` matches `a`), and a filter
/// whose first level is a wildcard never matches a topic whose first level starts with `$`
/// [MQTT-4.7.2-1]. Empty levels are real levels: `+/+` matches `/`.
///
/// This is the reference definition that [`super::trie::TopicTrie`] is tested against.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` is the last level of a valid filter: it takes whatever is left, even nothing.
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) => {
                if f != t {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 128;

    #[test]
    fn level_counts() {
        for (topic, n) in [
            ("a", 1),
            ("/", 2),
            ("a//b", 3),
            ("a/b/c", 3),
            ("", 1),
            ("€/ü", 2),
        ] {
            assert_eq!(level_count(topic), n, "{topic:?}");
        }
    }

    #[test]
    fn topic_names() {
        use TopicError::*;
        let long = "a".repeat(MAX_TOPIC_BYTES + 1);
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a", Ok(())),
            ("/", Ok(())),
            ("a//b", Ok(())),
            ("sport/tennis/player1", Ok(())),
            ("$SYS/broker/uptime", Ok(())),
            ("€/ü", Ok(())),
            ("", Err(Empty)),
            ("a/+", Err(WildcardInName)),
            ("#", Err(WildcardInName)),
            ("a/b#", Err(WildcardInName)),
            ("a+", Err(WildcardInName)),
            ("a\u{0}b", Err(NullCharacter)),
            (&long, Err(TooLong(MAX_TOPIC_BYTES + 1))),
        ];
        for (topic, want) in cases {
            assert_eq!(&validate_topic_name(topic, MAX), want, "{topic:.40?}");
        }
        assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
        assert_eq!(
            validate_topic_name("a/b/c/d", 3),
            Err(TooManyLevels { levels: 4, max: 3 })
        );
        let max_len = "a".repeat(MAX_TOPIC_BYTES);
        assert_eq!(validate_topic_name(&max_len, MAX), Ok(()));
    }

    #[test]
    fn filters() {
        use TopicError::*;
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("#", Ok(())),
            ("+/+", Ok(())),
            ("/", Ok(())),
            ("a//b", Ok(())),
            ("sport/tennis/#", Ok(())),
            ("sport/+/player1", Ok(())),
            ("+", Ok(())),
            ("+/#", Ok(())),
            ("$SYS/#", Ok(())),
            ("€/+", Ok(())),
            ("/#", Ok(())),
            ("$share/g/a/+", Ok(())), // syntactically a plain filter too
            ("", Err(Empty)),
            ("a/#/", Err(MisplacedMultiLevelWildcard)),
            ("a/#/b", Err(MisplacedMultiLevelWildcard)),
            ("+#", Err(MisplacedMultiLevelWildcard)),
            ("a/b#", Err(MisplacedMultiLevelWildcard)),
            ("sport/tennis#", Err(MisplacedMultiLevelWildcard)),
            ("##", Err(MisplacedMultiLevelWildcard)),
            ("sport+", Err(MisplacedSingleLevelWildcard)),
            ("a/++/b", Err(MisplacedSingleLevelWildcard)),
            ("€+/a", Err(MisplacedSingleLevelWildcard)),
            ("a\u{0}b", Err(NullCharacter)),
            ("a/+\u{0}", Err(NullCharacter)),
        ];
        for (filter, want) in cases {
            assert_eq!(&validate_filter(filter, MAX), want, "{filter:?}");
        }
        assert_eq!(validate_filter("+/+/#", 3), Ok(()));
        assert_eq!(
            validate_filter("+/+/+/#", 3),
            Err(TooManyLevels { levels: 4, max: 3 })
        );
    }

    #[test]
    fn parsed_filters() {
        use FilterKind::*;
        use TopicError::*;
        let cases: &[(&str, Result<FilterKind<'_>, TopicError>)] = &[
            ("a/+", Ok(Plain("a/+"))),
            ("#", Ok(Plain("#"))),
            ("$share", Ok(Plain("$share"))),
            ("$SYS/#", Ok(Plain("$SYS/#"))),
            (
                "$share/g/a/+",
                Ok(Shared {
                    group: "g",
                    filter: "a/+",
                }),
            ),
            (
                "$share/g/#",
                Ok(Shared {
                    group: "g",
                    filter: "#",
                }),
            ),
            (
                "$share/€/ü//x",
                Ok(Shared {
                    group: "€",
                    filter: "ü//x",
                }),
            ),
            ("$share//a", Err(EmptyShareName)),
            ("$share/", Err(EmptyShareName)),
            ("$share/g+/a", Err(InvalidShareName)),
            ("$share/+/a", Err(InvalidShareName)),
            ("$share/g#/a", Err(InvalidShareName)),
            ("$share/g#", Err(InvalidShareName)),
            ("$share/g", Err(MissingShareFilter)),
            ("$share/g/", Err(MissingShareFilter)),
            ("$share/g/a/#/b", Err(MisplacedMultiLevelWildcard)),
            ("$share/g/a+", Err(MisplacedSingleLevelWildcard)),
            ("$share/g\u{0}/a", Err(NullCharacter)),
            ("$share/g/a\u{0}", Err(NullCharacter)),
            ("a/#/", Err(MisplacedMultiLevelWildcard)),
            ("", Err(Empty)),
        ];
        for (filter, want) in cases {
            assert_eq!(&parse_filter(filter, MAX), want, "{filter:?}");
        }
        // The share prefix does not count against the level limit; the inner filter does.
        assert!(parse_filter("$share/g/a/b", 2).is_ok());
        assert_eq!(
            parse_filter("$share/g/a/b/c", 2),
            Err(TooManyLevels { levels: 3, max: 2 })
        );
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a", "b", false),
            ("a/b", "a/b", true),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "a/b", true),
            ("+/+", "/", true),
            ("+", "/", false),
            ("/+", "/", true),
            ("+/", "/", true),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/#", "b/a", false),
            ("a/+/#", "a", false),
            ("a/+/#", "a/b", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a/b", "a//b", false),
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("/#", "/", true),
            ("/#", "a", false),
            // [MQTT-4.7.2-1]: wildcards in the first level never match `$` topics.
            ("#", "$SYS/x", false),
            ("#", "$SYS", false),
            ("+/x", "$SYS/x", false),
            ("+", "$x", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/+", "$SYS/x", true),
            ("$SYS/x", "$SYS/x", true),
            ("a/+", "a/$x", true),
            ("a/#", "a/$x", true),
            // Multi-byte characters.
            ("ü/+", "ü/x", true),
            ("ü/+", "u/x", false),
            ("€/#", "€", true),
            ("+/€", "ü/€", true),
            ("ü", "üü", false),
        ];
        for &(filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter:?} vs {topic:?}");
        }
    }
}
