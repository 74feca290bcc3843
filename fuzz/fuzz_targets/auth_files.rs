//! mosquitto password and ACL files from arbitrary text: `PasswordFile::parse` and
//! `AclFile::parse` never panic, and a parsed ACL answers every check without panicking
//! (the file's own lines serve as topics and filters, with a few awkward identities).
//! `PasswordFile::verify` is not called: a fuzzed `$7$` iteration count makes it slow
//! by design.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::auth::{Access, AclFile, PasswordFile};

const IDENTITIES: &[(&str, Option<&str>)] = &[
    ("client", None),
    ("client", Some("alice")),
    ("", Some("")),
    ("a/b", Some("+")),
    ("#", Some("%u")),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz");
    if let Ok(pw) = PasswordFile::parse(text, path) {
        let _ = (pw.len(), pw.is_empty(), pw.contains_user("alice"));
        for line in text.lines().take(8).map(str::trim) {
            if line.starts_with('#') {
                continue;
            }
            if let Some((user, _)) = line.split_once(':') {
                assert!(
                    pw.contains_user(user.trim()),
                    "parsed user {user:?} missing"
                );
            }
        }
    }
    let Ok(acl) = AclFile::parse(text, path) else {
        return;
    };
    let _ = acl.is_empty();
    for line in text.lines().take(8) {
        let word = line.rsplit([' ', '\t']).next().unwrap_or("");
        for probe in [line, line.trim(), word] {
            for &(client_id, username) in IDENTITIES {
                let _ = acl.check(client_id, username, probe, Access::Read);
                let _ = acl.check(client_id, username, probe, Access::Write);
                let _ = acl.check_subscribe(client_id, username, probe);
            }
        }
    }
});
