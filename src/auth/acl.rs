//! mosquitto ACL files: parsing, and the per-operation access decision.
//!
//! Called by the SUBSCRIBE path ([`AclFile::check_subscribe`]), the PUBLISH path
//! ([`AclFile::check`] with [`Access::Write`]) and the delivery path ([`AclFile::check`]
//! with [`Access::Read`], once per message per subscriber). Knows nothing of sockets or
//! sessions; never sees a password.
//!
//! File format (mosquitto 2.0 `aclfile__parse`):
//!
//! ```text
//! # comment
//! topic read public/#          # before any `user` line: anonymous clients only
//! user alice                   # the rest of the line (trimmed) is the username
//! topic readwrite alice/#      # applies to clients whose username is `alice`
//! topic deny alice/secret      # no access word means readwrite
//! pattern write devices/%c/out # applies to every client, wherever it appears
//! ```
//!
//! The filter is the rest of the line after the access word (it may contain spaces). An
//! unknown keyword or access word, a missing filter, or an invalid filter is an error
//! naming the line. We are stricter than mosquitto in one place: `topic deny` (an access
//! word with no filter) is an error, where mosquitto would read it as readwrite access to
//! the topic `deny`.
//!
//! Decision: collect the rules that apply to the client — its user section (or the
//! anonymous section if it has no username) plus all patterns, substituted — and grant iff
//! some rule matches with the requested access and no matching rule is `deny`. `deny` wins
//! regardless of order or of which section it is in (mosquitto checks the user section
//! before patterns, so a user grant there beats a pattern deny; we let the deny win).
//!
//! Pattern safety: a pattern needing `%c` or `%u` is not applied when that value is empty
//! or contains `/`, `+` or `#` (it would widen the filter); a pattern with `%u` is not
//! applied to a client without a username. If such an unusable pattern is a `deny`, the
//! check fails closed and denies, so a crafted identity can never escape a deny.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::filter::{Filter, Subst};
use super::AuthError;

/// The operation being authorized. A SUBSCRIBE needs `Read` (use
/// [`AclFile::check_subscribe`]); a PUBLISH from the client needs `Write`; delivering a
/// message to the client needs `Read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RuleAccess {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl RuleAccess {
    fn parse(word: &str) -> Option<RuleAccess> {
        match word {
            "read" => Some(RuleAccess::Read),
            "write" => Some(RuleAccess::Write),
            "readwrite" => Some(RuleAccess::ReadWrite),
            "deny" => Some(RuleAccess::Deny),
            _ => None,
        }
    }

    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (RuleAccess::ReadWrite, _)
                | (RuleAccess::Read, Access::Read)
                | (RuleAccess::Write, Access::Write)
        )
    }
}

#[derive(Clone, Debug)]
struct Rule {
    access: RuleAccess,
    filter: Filter,
}

/// A loaded mosquitto ACL file.
#[derive(Clone, Debug, Default)]
pub struct AclFile {
    /// `topic` lines before the first `user` line: clients without a username.
    anonymous: Vec<Rule>,
    /// `topic` lines in a `user <name>` section, by username. Sections with the same name
    /// accumulate.
    users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines, wherever they appear.
    patterns: Vec<Rule>,
}

/// Whether a client id or username may be substituted into a pattern: it must stay one
/// literal level, so no separators or wildcards, and not be empty.
fn safe_for_substitution(value: &str) -> bool {
    !value.is_empty() && !value.contains(['/', '+', '#'])
}

/// Splits off the first word (space or tab separated); the rest is trimmed.
fn first_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

impl AclFile {
    /// Reads and parses the ACL file at `path`.
    pub fn load(path: &Path) -> Result<AclFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of an ACL file; `path_for_errors` only labels errors.
    pub fn parse(text: &str, path_for_errors: &Path) -> Result<AclFile, AuthError> {
        let malformed = |line: usize, why: String| AuthError::Malformed {
            path: PathBuf::from(path_for_errors),
            line,
            why,
        };
        let mut acl = AclFile::default();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = first_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(malformed(line_no, "'user' without a username".into()));
                    }
                    current_user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    if rest.is_empty() {
                        return Err(malformed(
                            line_no,
                            format!("'{keyword}' without a topic filter"),
                        ));
                    }
                    let (first, after) = first_word(rest);
                    let (access, filter_text) = if after.is_empty() {
                        if RuleAccess::parse(first).is_some() {
                            return Err(malformed(
                                line_no,
                                format!("'{keyword} {first}' without a topic filter"),
                            ));
                        }
                        (RuleAccess::ReadWrite, first)
                    } else {
                        match RuleAccess::parse(first) {
                            Some(access) => (access, after),
                            None => {
                                return Err(malformed(
                                    line_no,
                                    format!(
                                        "unknown access type '{first}' \
                                         (expected read, write, readwrite or deny)"
                                    ),
                                ))
                            }
                        }
                    };
                    let is_pattern = keyword == "pattern";
                    let filter = Filter::parse(filter_text, is_pattern).map_err(|why| {
                        malformed(line_no, format!("invalid topic filter: {why}"))
                    })?;
                    let rule = Rule { access, filter };
                    if is_pattern {
                        acl.patterns.push(rule);
                    } else {
                        match &current_user {
                            Some(user) => acl.users.entry(user.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => {
                    return Err(malformed(
                        line_no,
                        format!("unknown keyword '{other}' (expected user, topic or pattern)"),
                    ))
                }
            }
        }
        Ok(acl)
    }

    /// Whether the file has no rules at all (then every check is denied, as in mosquitto).
    pub fn is_empty(&self) -> bool {
        self.anonymous.is_empty() && self.users.is_empty() && self.patterns.is_empty()
    }

    /// May this client publish to (`Write`) or receive a message on (`Read`) the topic
    /// name `topic` (no wildcards)?
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        let subst = Subst {
            client_id,
            username,
        };
        self.decide(subst, access, |filter| filter.matches_topic(topic, subst))
    }

    /// May this client subscribe to `filter`? Granted if some readable ACL filter covers
    /// the whole subscription, its levels taken literally (ACL `sensors/#` grants
    /// `sensors/+/temp`; ACL `sensors/+/temp` does not grant `sensors/#`) and no `deny`
    /// rule covers it. A shared subscription `$share/<group>/<filter>` is checked as
    /// `<filter>`. Deliveries must still be checked with [`AclFile::check`]: a granted
    /// `sensors/#` does not lift a `deny sensors/secret`.
    pub fn check_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        let filter = match filter.strip_prefix("$share/") {
            Some(shared) => match shared.split_once('/') {
                Some((group, inner)) if !group.is_empty() && !inner.is_empty() => inner,
                _ => return false,
            },
            None => filter,
        };
        if filter.is_empty() {
            return false;
        }
        let subst = Subst {
            client_id,
            username,
        };
        self.decide(subst, Access::Read, |acl_filter| {
            acl_filter.covers_subscription(filter, subst)
        })
    }

    /// The decision shared by all checks; `applies` says whether a rule's filter matches
    /// the operation.
    fn decide(&self, subst: Subst<'_>, access: Access, applies: impl Fn(&Filter) -> bool) -> bool {
        let section: &[Rule] = match subst.username {
            Some(user) => self.users.get(user).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        };
        let mut granted = false;
        for rule in section {
            if applies(&rule.filter) {
                if rule.access == RuleAccess::Deny {
                    return false;
                }
                granted |= rule.access.grants(access);
            }
        }
        for rule in &self.patterns {
            let f = &rule.filter;
            if f.uses_username() && subst.username.is_none() {
                continue;
            }
            let unusable = (f.uses_client_id() && !safe_for_substitution(subst.client_id))
                || (f.uses_username() && !subst.username.is_some_and(safe_for_substitution));
            if unusable {
                if rule.access == RuleAccess::Deny {
                    return false; // fail closed
                }
                continue;
            }
            if applies(f) {
                if rule.access == RuleAccess::Deny {
                    return false;
                }
                granted |= rule.access.grants(access);
            }
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::{Read, Write};

    fn acl(text: &str) -> AclFile {
        match AclFile::parse(text, Path::new("test.acl")) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    const R: bool = true; // readability in tables: expected "granted"
    const D: bool = false; // expected "denied"

    /// (client id, username, topic, access, expected)
    type Case = (
        &'static str,
        Option<&'static str>,
        &'static str,
        Access,
        bool,
    );

    fn run(a: &AclFile, cases: &[Case]) {
        for &(cid, user, topic, access, want) in cases {
            assert_eq!(
                a.check(cid, user, topic, access),
                want,
                "client {cid:?} user {user:?} {access:?} {topic:?}"
            );
        }
    }

    #[test]
    fn access_words_and_sections() {
        let a = acl("\
# anonymous section
topic read public/#
topic anon/rw

user alice
topic read r/#
topic write w/#
topic readwrite rw/#
topic both/#
topic deny rw/secret

user bob
topic read r/#
");
        run(
            &a,
            &[
                // Anonymous clients get only the anonymous section.
                ("c", None, "public/x", Read, R),
                ("c", None, "public/x", Write, D),
                ("c", None, "anon/rw", Read, R),
                ("c", None, "anon/rw", Write, R),
                ("c", None, "r/x", Read, D),
                // alice gets her section and not the anonymous one.
                ("c", Some("alice"), "public/x", Read, D),
                ("c", Some("alice"), "r/x", Read, R),
                ("c", Some("alice"), "r/x", Write, D),
                ("c", Some("alice"), "w/x", Write, R),
                ("c", Some("alice"), "w/x", Read, D),
                ("c", Some("alice"), "rw/x", Read, R),
                ("c", Some("alice"), "rw/x", Write, R),
                ("c", Some("alice"), "both/x/y", Write, R),
                ("c", Some("alice"), "both", Read, R),
                // deny wins over the earlier readwrite grant.
                ("c", Some("alice"), "rw/secret", Read, D),
                ("c", Some("alice"), "rw/secret", Write, D),
                ("c", Some("alice"), "rw/secret/sub", Read, R),
                // bob has only his own section.
                ("c", Some("bob"), "r/x", Read, R),
                ("c", Some("bob"), "w/x", Write, D),
                // A username without a section gets nothing (no patterns here).
                ("c", Some("mallory"), "public/x", Read, D),
                ("c", Some("mallory"), "r/x", Read, D),
                // The empty username is a username, not anonymous.
                ("c", Some(""), "public/x", Read, D),
            ],
        );
    }

    #[test]
    fn deny_wins_regardless_of_order_or_section() {
        let a = acl("\
user alice
topic deny a/secret
topic a/#
topic read shared/#
pattern deny shared/%u/private
pattern read shared/%u/#
");
        run(
            &a,
            &[
                ("c", Some("alice"), "a/secret", Write, D),
                ("c", Some("alice"), "a/other", Write, R),
                ("c", Some("alice"), "shared/x", Read, R),
                ("c", Some("alice"), "shared/alice/private", Read, D),
                ("c", Some("alice"), "shared/alice/public", Read, R),
            ],
        );
    }

    #[test]
    fn patterns_substitute_client_id_and_username() {
        let a = acl("\
pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern write out/%u-%c
user alice
topic read alice-only
");
        run(
            &a,
            &[
                ("dev1", None, "devices/dev1/temp", Write, R),
                ("dev1", None, "devices/dev1", Read, R),
                ("dev1", None, "devices/dev2/temp", Write, D),
                // %u patterns do not apply without a username.
                ("dev1", None, "users//inbox", Read, D),
                ("dev1", None, "users/%u/inbox", Read, D),
                ("dev1", Some("alice"), "users/alice/inbox", Read, R),
                ("dev1", Some("alice"), "users/alice/inbox", Write, D),
                ("dev1", Some("alice"), "users/bob/inbox", Read, D),
                ("dev1", Some("alice"), "out/alice-dev1", Write, R),
                ("dev1", Some("alice"), "out/alice-dev2", Write, D),
                // Patterns apply to users with a section, alongside it.
                ("dev1", Some("alice"), "alice-only", Read, R),
                ("dev1", Some("alice"), "devices/dev1/x", Read, R),
            ],
        );
    }

    #[test]
    fn substitution_cannot_widen_access() {
        let a = acl("\
pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern read home/%u/%c
");
        run(
            &a,
            &[
                // A client id of `#` or `+` must not turn into a wildcard.
                ("#", None, "devices/anything/x", Read, D),
                ("#", None, "devices/#", Read, D),
                ("+", None, "devices/other/x", Read, D),
                ("+", None, "devices/+/x", Read, D),
                // A `/` in a client id must not let it reach a deeper or other level.
                ("x/y", None, "devices/x/y/z", Read, D),
                ("x/y", None, "devices/x/y", Read, D),
                ("a/#", Some("alice"), "devices/a/b", Read, D),
                // Username injection.
                ("c", Some("a/#"), "users/a/b/inbox", Read, D),
                ("c", Some("a/#"), "users/a/#/inbox", Read, D),
                ("c", Some("+"), "users/bob/inbox", Read, D),
                ("c", Some("+"), "users/+/inbox", Read, D),
                ("c", Some("x/y"), "users/x/y/inbox", Read, D),
                // An empty client id cannot become an empty level.
                ("", None, "devices//x", Read, D),
                // A bad client id only disables the patterns that use it.
                ("x/y", Some("alice"), "users/alice/inbox", Read, R),
                ("x/y", Some("alice"), "home/alice/x/y", Read, D),
            ],
        );
    }

    #[test]
    fn deny_pattern_with_unusable_identity_fails_closed() {
        let a = acl("\
topic read open/#
user alice
topic read open/#
pattern deny open/%u/#
");
        run(
            &a,
            &[
                ("c", Some("alice"), "open/x", Read, R),
                ("c", Some("alice"), "open/alice/x", Read, D),
                ("c", Some("al/ice"), "open/x", Read, D),
                // Anonymous: the %u deny does not apply; the anonymous grant does.
                ("c", None, "open/x", Read, R),
            ],
        );
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let a = acl("\
topic readwrite #
topic read +/uptime
topic read $SYS/broker/#
user admin
topic read $SYS/#
topic #
");
        run(
            &a,
            &[
                ("c", None, "any/thing", Write, R),
                ("c", None, "$SYS/uptime", Read, D),
                ("c", None, "$SYS/broker/clients", Read, R),
                ("c", None, "$SYS/broker/clients", Write, D),
                ("c", None, "$other/x", Write, D),
                ("c", Some("admin"), "$SYS/uptime", Read, R),
                ("c", Some("admin"), "$SYS/uptime", Write, D),
            ],
        );
        for (user, filter, want) in [
            (None, "#", R),
            (None, "$SYS/#", D),
            (None, "$SYS/broker/+", R),
            (Some("admin"), "$SYS/#", R),
            (Some("admin"), "#", R),
        ] {
            assert_eq!(
                a.check_subscribe("c", user, filter),
                want,
                "{user:?} {filter}"
            );
        }
    }

    #[test]
    fn subscribe_versus_acl() {
        let a = acl("\
user alice
topic read sensors/#
topic read rooms/+/temp
topic write cmd/#
topic deny sensors/secret/#
pattern read dev/%c/#
");
        // (client id, filter, expected)
        let cases = [
            ("c", "sensors/#", R),
            ("c", "sensors/+/temp", R),
            ("c", "sensors", R),
            ("c", "#", D),
            ("c", "+/+/temp", D),
            ("c", "rooms/+/temp", R),
            ("c", "rooms/kitchen/temp", R),
            ("c", "rooms/#", D),
            ("c", "rooms/+/+", D),
            // Write-only grants do not allow subscribing.
            ("c", "cmd/#", D),
            ("c", "cmd/x", D),
            // A deny covering the subscription refuses it.
            ("c", "sensors/secret/#", D),
            ("c", "sensors/secret/a", D),
            // A subscription merely overlapping a deny is granted; the delivery check
            // then filters (see below).
            ("c", "sensors/+/a", R),
            ("c1", "dev/c1/#", R),
            ("c1", "dev/c2/#", D),
            ("c1", "dev/+/x", D),
            // Shared subscriptions are checked on their inner filter.
            ("c", "$share/g/sensors/+/temp", R),
            ("c", "$share/g/cmd/#", D),
            ("c", "$share/g", D),
            ("c", "$share//sensors/#", D),
            ("c", "", D),
        ];
        for (cid, filter, want) in cases {
            assert_eq!(
                a.check_subscribe(cid, Some("alice"), filter),
                want,
                "{cid} {filter:?}"
            );
        }
        assert!(a.check("c", Some("alice"), "sensors/x/a", Read));
        assert!(!a.check("c", Some("alice"), "sensors/secret/a", Read));
        // Subscribe is a read check: anonymous and unknown users get nothing here.
        assert!(!a.check_subscribe("c", None, "sensors/#"));
        assert!(!a.check_subscribe("c", Some("bob"), "sensors/#"));
    }

    #[test]
    fn subscribe_injection_through_identity() {
        let a = acl("pattern read devices/%c/#\npattern read users/%u/#\n");
        for (cid, user, filter) in [
            ("#", None, "devices/#"),
            ("+", None, "devices/+/x"),
            ("x/y", None, "devices/x/y/#"),
            ("c", Some("a/#"), "users/a/#"),
            ("c", Some("+"), "users/+/#"),
        ] {
            assert!(
                !a.check_subscribe(cid, user, filter),
                "{cid:?} {user:?} {filter:?}"
            );
        }
        assert!(a.check_subscribe("ok", Some("u"), "devices/ok/#"));
        assert!(a.check_subscribe("ok", Some("u"), "users/u/+"));
    }

    #[test]
    fn empty_file_denies_everything() {
        let a = acl("# nothing\n\n");
        assert!(a.is_empty());
        assert!(!a.check("c", None, "a", Read));
        assert!(!a.check("c", Some("u"), "a", Write));
        assert!(!a.check_subscribe("c", None, "#"));
    }

    #[test]
    fn parsing_details() {
        let a = acl("\
  # indented comment
\ttopic\tread\tx/y\r
user   spaced name  \r
topic read   a b/c  
user alice
user alice2
topic read only-alice2
user alice
topic read also-alice
");
        run(
            &a,
            &[
                ("c", None, "x/y", Read, R),
                ("c", Some("spaced name"), "a b/c", Read, R),
                ("c", Some("alice"), "only-alice2", Read, D),
                ("c", Some("alice2"), "only-alice2", Read, R),
                ("c", Some("alice"), "also-alice", Read, R),
            ],
        );
    }

    #[test]
    fn malformed_lines_name_the_line() {
        // (bad line, fragment of the reason)
        let cases = [
            ("users alice", "unknown keyword 'users'"),
            ("Topic read a", "unknown keyword 'Topic'"),
            ("user", "without a username"),
            ("topic", "without a topic filter"),
            ("pattern", "without a topic filter"),
            ("topic deny", "'topic deny' without a topic filter"),
            ("pattern read", "without a topic filter"),
            ("topic reed a/b", "unknown access type 'reed'"),
            ("topic read a/#/b", "invalid topic filter"),
            ("topic read a/b#", "invalid topic filter"),
            ("pattern write x/%c+", "invalid topic filter"),
        ];
        for (bad, fragment) in cases {
            let text = format!("# header\ntopic read ok\n\n{bad}\ntopic read later\n");
            match AclFile::parse(&text, Path::new("conf/test.acl")) {
                Err(e @ AuthError::Malformed { line: 4, .. }) => {
                    let shown = e.to_string();
                    assert!(shown.starts_with("conf/test.acl:4: "), "{shown}");
                    assert!(shown.contains(fragment), "{bad:?}: {shown}");
                }
                Err(e) => panic!("{bad:?}: wrong error {e}"),
                Ok(_) => panic!("{bad:?} accepted"),
            }
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = Path::new("/nonexistent/sluice/acl");
        match AclFile::load(missing) {
            Err(AuthError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io error, got {other:?}"),
        }
    }
}
