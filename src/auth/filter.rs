//! ACL topic filters: parsing one filter from an ACL file line, and the two kinds of match
//! the ACL check needs — "does this filter cover this topic" (PUBLISH and delivery) and
//! "does this filter cover this whole subscription" (SUBSCRIBE).
//!
//! Owned here, not borrowed from `router::topic`, so the auth module stays a leaf that can be
//! reviewed and tested on its own. Called only by [`super::acl`]; never sees a password.
//!
//! Pattern filters (`pattern` lines) may contain `%c` (client id) and `%u` (username)
//! anywhere inside a level, as in mosquitto 2.0. A level holding a substitution is matched
//! segment by segment against the topic level, so no string is built per check. The caller
//! guarantees a substituted value is non-empty and free of `/`, `+` and `#`, so a
//! substitution can only ever stand for literal text inside one level.

/// The longest filter we accept: the length prefix of an MQTT string is a `u16`.
const MAX_FILTER_BYTES: usize = 65_535;

/// One piece of a pattern level: literal text or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    /// `%c`
    ClientId,
    /// `%u`
    Username,
}

/// One level of a parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Level {
    /// `+`
    Plus,
    /// `#` (always the last level)
    Hash,
    /// A level without wildcards or placeholders.
    Exact(String),
    /// A level of a `pattern` filter containing at least one `%c` or `%u`.
    Pattern(Vec<Segment>),
}

/// The values a pattern's placeholders stand for in one check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subst<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

/// A parsed ACL filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    levels: Vec<Level>,
    uses_client_id: bool,
    uses_username: bool,
}

impl Filter {
    /// Parses a filter. With `placeholders`, `%c` and `%u` are substitutions (a `pattern`
    /// line); without, they are literal text (a `topic` line). Returns a reason on error.
    pub(crate) fn parse(text: &str, placeholders: bool) -> Result<Filter, String> {
        if text.is_empty() {
            return Err("empty topic filter".into());
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err("topic filter longer than 65535 bytes".into());
        }
        if text.contains('\0') {
            return Err("topic filter contains a NUL character".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let (mut uses_client_id, mut uses_username) = (false, false);
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "+" => Level::Plus,
                "#" if i + 1 == parts.len() => Level::Hash,
                "#" => return Err("'#' is only allowed as the last level".into()),
                p if p.contains(['+', '#']) => {
                    return Err("'+' and '#' must occupy a whole level".into())
                }
                p if placeholders && (p.contains("%c") || p.contains("%u")) => {
                    let segments = split_placeholders(p);
                    for s in &segments {
                        match s {
                            Segment::ClientId => uses_client_id = true,
                            Segment::Username => uses_username = true,
                            Segment::Literal(_) => {}
                        }
                    }
                    Level::Pattern(segments)
                }
                p => Level::Exact(p.to_owned()),
            };
            levels.push(level);
        }
        Ok(Filter {
            levels,
            uses_client_id,
            uses_username,
        })
    }

    pub(crate) fn uses_client_id(&self) -> bool {
        self.uses_client_id
    }

    pub(crate) fn uses_username(&self) -> bool {
        self.uses_username
    }

    /// Whether the first level is a wildcard, which never matches a `$` topic.
    fn starts_with_wildcard(&self) -> bool {
        matches!(self.levels.first(), Some(Level::Plus | Level::Hash))
    }

    /// MQTT matching of a topic name (no wildcards) against this filter: `+` is one level,
    /// a trailing `#` is zero or more levels (so `a/#` matches `a`), and a topic starting
    /// with `$` is not matched by a filter whose first level is a wildcard.
    pub(crate) fn matches_topic(&self, topic: &str, subst: Subst<'_>) -> bool {
        if topic.starts_with('$') && self.starts_with_wildcard() {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in &self.levels {
            let Some(t) = topic_levels.next() else {
                // Topic exhausted: only a trailing `#` (parent match) can still match.
                return matches!(level, Level::Hash);
            };
            match level {
                Level::Hash => return true,
                Level::Plus => {}
                Level::Exact(e) => {
                    if e != t {
                        return false;
                    }
                }
                Level::Pattern(segs) => {
                    if !pattern_level_equals(segs, t, subst) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// mosquitto's "sub matches acl": does this ACL filter grant a subscription to
    /// `sub_filter`, i.e. is every topic `sub_filter` can match also matched by this filter?
    /// The subscription's levels are taken literally: an ACL `+` covers a subscription `+`
    /// but not `#`; an ACL literal covers only the same literal; an ACL `#` covers anything
    /// from its level down.
    pub(crate) fn covers_subscription(&self, sub_filter: &str, subst: Subst<'_>) -> bool {
        if sub_filter.starts_with('$') && self.starts_with_wildcard() {
            return false;
        }
        let mut sub_levels = sub_filter.split('/');
        for level in &self.levels {
            let Some(s) = sub_levels.next() else {
                return matches!(level, Level::Hash);
            };
            match level {
                Level::Hash => return true,
                Level::Plus => {
                    if s == "#" {
                        return false;
                    }
                }
                Level::Exact(e) => {
                    if e != s {
                        return false;
                    }
                }
                Level::Pattern(segs) => {
                    if !pattern_level_equals(segs, s, subst) {
                        return false;
                    }
                }
            }
        }
        sub_levels.next().is_none()
    }
}

/// Splits a level such as `dev-%c-%u` into segments. Only `%c` and `%u` are placeholders;
/// any other `%` is literal.
fn split_placeholders(level: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut chars = level.chars().peekable();
    while let Some(ch) = chars.next() {
        let placeholder = match (ch, chars.peek()) {
            ('%', Some('c')) => Some(Segment::ClientId),
            ('%', Some('u')) => Some(Segment::Username),
            _ => None,
        };
        match placeholder {
            Some(p) => {
                chars.next();
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(p);
            }
            None => literal.push(ch),
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    segments
}

/// Whether `level` equals the concatenation of `segs` after substitution. A `%u` with no
/// username never matches (callers skip such rules before getting here anyway).
fn pattern_level_equals(segs: &[Segment], level: &str, subst: Subst<'_>) -> bool {
    let mut rest = level;
    for seg in segs {
        let piece = match seg {
            Segment::Literal(l) => l.as_str(),
            Segment::ClientId => subst.client_id,
            Segment::Username => match subst.username {
                Some(u) => u,
                None => return false,
            },
        };
        match rest.strip_prefix(piece) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_SUBST: Subst<'static> = Subst {
        client_id: "cid",
        username: Some("user"),
    };

    fn f(text: &str) -> Filter {
        match Filter::parse(text, true) {
            Ok(f) => f,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    #[test]
    fn parse_rejects_misplaced_wildcards() {
        for bad in ["", "a/#/b", "a#", "a/b+", "+a", "#/a", "a/\0"] {
            assert!(
                Filter::parse(bad, true).is_err(),
                "{bad:?} should be rejected"
            );
        }
        for good in [
            "#", "+", "a/+/b", "a/#", "/", "a//b", "$SYS/#", "%c/%u", "x%y",
        ] {
            assert!(
                Filter::parse(good, true).is_ok(),
                "{good:?} should be accepted"
            );
        }
    }

    #[test]
    fn placeholders_only_in_patterns() {
        let topic = Filter::parse("a/%c", false).unwrap();
        assert!(!topic.uses_client_id());
        assert!(topic.matches_topic("a/%c", NO_SUBST));
        assert!(!topic.matches_topic("a/cid", NO_SUBST));
        let pattern = f("a/%c");
        assert!(pattern.uses_client_id());
        assert!(pattern.matches_topic("a/cid", NO_SUBST));
        assert!(!pattern.matches_topic("a/%c", NO_SUBST));
    }

    #[test]
    fn topic_matching_table() {
        // (filter, topic, matches)
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("+/+", "/x", true),
            ("+", "/x", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("#", "anything/at/all", true),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/+", "$SYS/uptime", true),
            ("$SYS/#", "SYS/uptime", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("dev/%c/%u", "dev/cid/user", true),
            ("dev/%c/%u", "dev/cid/other", false),
            ("dev/x-%c-y", "dev/x-cid-y", true),
            ("dev/x-%c-y", "dev/x-cidd-y", false),
            ("dev/%c%u", "dev/ciduser", true),
            ("dev/100%", "dev/100%", true),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(
                f(filter).matches_topic(topic, NO_SUBST),
                want,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn subscription_cover_table() {
        // (acl filter, requested subscription, granted)
        let cases = [
            ("sensors/#", "sensors/+/temp", true),
            ("sensors/#", "sensors/#", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "#", false),
            ("sensors/+/temp", "sensors/#", false),
            ("sensors/+/temp", "sensors/+/temp", true),
            ("sensors/+/temp", "sensors/a/temp", true),
            ("sensors/+/temp", "sensors/a/+", false),
            ("sensors/+", "sensors/#", false),
            ("sensors/a", "sensors/+", false),
            ("#", "#", true),
            ("#", "a/+/b/#", true),
            ("#", "$SYS/#", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/#", true),
            ("$SYS/broker/uptime", "$SYS/broker/#", false),
            ("a/%c/#", "a/cid/+", true),
            ("a/%c/#", "a/+/x", false),
        ];
        for (acl, sub, want) in cases {
            assert_eq!(
                f(acl).covers_subscription(sub, NO_SUBST),
                want,
                "acl {acl:?} sub {sub:?}"
            );
        }
    }

    #[test]
    fn username_placeholder_without_username_never_matches() {
        let anon = Subst {
            client_id: "cid",
            username: None,
        };
        assert!(!f("u/%u").matches_topic("u/", anon));
        assert!(!f("u/%u").matches_topic("u/%u", anon));
    }
}
