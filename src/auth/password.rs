//! mosquitto password files: parsing, verifying a CONNECT's credentials, and writing new
//! entries that mosquitto itself can read.
//!
//! Called by the hashing pool of [`super::PasswordChecks`] ([`PasswordFile::verify`],
//! which is slow on purpose and so never runs on a tokio worker) and by the
//! `sluice passwd FILE USER` command ([`upsert_password_line`]). It must never log, print
//! or return in an error a password or a stored hash; the `Debug` output of a
//! [`PasswordFile`] shows only the number of users.
//!
//! File format (as read by mosquitto 2.0's `unpwd__decode_passwords` and written by
//! `mosquitto_passwd`): one `username:hash` per line, blanks around both trimmed, blank
//! lines and lines starting with `#` ignored. Hash forms, base64 being standard with padding:
//!
//! * `$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 of the password bytes with the
//!   salt, 64-byte output (mosquitto_passwd 2.x; its default is 101 iterations).
//! * `$6$<salt>$<hash>`: SHA-512 over the password bytes followed by the salt bytes
//!   (mosquitto 1.x).
//!
//! Stricter than mosquitto, on purpose: where mosquitto skips a bad line with a warning
//! (and so silently locks that user out or, for a line without a hash, lets a typo pass
//! review), we refuse the whole file with the file name and line number.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::AuthError;

/// PBKDF2 iterations used by [`hash_password`] and `sluice passwd`: 1,000, the minimum
/// NIST SP 800-132 (5.2) recommends. SP 800-63B (5.1.1.2) suggests at least 10,000 for
/// memorized secrets and OWASP (2023) 210,000 for passwords people choose. What a broker
/// checks are mostly machine credentials: long random secrets, which no guess list finds
/// whatever the count, so the count buys little there, while every check the cache
/// cannot answer (every device after a restart or a reload) pays all of it on the
/// hashing pool. In a release build on the project's machine one iteration costs about
/// 0.5 µs: with 1,000 a fleet of 1,000 devices is checked in about half a second of one
/// core after a restart; 10,000 would take about 5 s and 210,000 about 100 s, far past
/// the connect timeout. That is still ten times mosquitto_passwd's 101. For passwords
/// people choose, write `sluice passwd --iterations 210000`. mosquitto reads any
/// positive count, as we do.
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 1_000;

/// Salt length written by us and by `mosquitto_passwd`; mosquitto 2.0 rejects other lengths.
const SALT_LEN: usize = 12;
/// SHA-512 / PBKDF2-SHA512 output length; mosquitto 2.0 rejects other lengths.
const HASH_LEN: usize = 64;

/// Standard alphabet; writes padding, and accepts input with or without it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `$6$`
    Sha512,
    /// `$7$`
    Pbkdf2Sha512 { iterations: u32 },
}

/// One decoded `$6$` / `$7$` entry. Deliberately not `Debug`.
#[derive(Clone)]
struct StoredHash {
    scheme: Scheme,
    salt: Vec<u8>,
    hash: [u8; HASH_LEN],
}

impl StoredHash {
    fn compute(scheme: Scheme, salt: &[u8], password: &[u8]) -> [u8; HASH_LEN] {
        let mut out = [0u8; HASH_LEN];
        match scheme {
            Scheme::Sha512 => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                out.copy_from_slice(&h.finalize());
            }
            Scheme::Pbkdf2Sha512 { iterations } => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
            }
        }
        out
    }

    /// Recomputes the hash for `password` and compares in constant time.
    fn matches(&self, password: &[u8]) -> bool {
        let computed = Self::compute(self.scheme, &self.salt, password);
        bool::from(computed.ct_eq(&self.hash))
    }

    /// Parses the part after the colon. The error says what is wrong, never what was there.
    fn parse(text: &str) -> Result<StoredHash, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or("password hash does not start with '$' (expected $6$ or $7$)")?;
        let mut fields = rest.split('$');
        let scheme = match fields.next() {
            Some("6") => Scheme::Sha512,
            Some("7") => {
                let count = fields.next().unwrap_or("");
                let iterations: u32 = count
                    .parse()
                    .map_err(|_| "PBKDF2 iteration count is not a positive integer")?;
                if iterations == 0 {
                    return Err("PBKDF2 iteration count is 0".into());
                }
                Scheme::Pbkdf2Sha512 { iterations }
            }
            _ => return Err("unknown password hash type (expected $6$ or $7$)".into()),
        };
        let salt_b64 = fields.next().unwrap_or("");
        let hash_b64 = fields.next().ok_or("password hash has no hash field")?;
        if fields.next().is_some() {
            return Err("password hash has too many '$'-separated fields".into());
        }
        if salt_b64.is_empty() {
            return Err("password hash has an empty salt".into());
        }
        let salt = B64
            .decode(salt_b64)
            .map_err(|_| "salt is not valid base64")?;
        let decoded = B64
            .decode(hash_b64)
            .map_err(|_| "hash is not valid base64")?;
        let hash: [u8; HASH_LEN] = decoded
            .try_into()
            .map_err(|_| format!("hash is not {HASH_LEN} bytes long"))?;
        Ok(StoredHash { scheme, salt, hash })
    }

    fn encode(&self) -> String {
        let salt = B64.encode(&self.salt);
        let hash = B64.encode(self.hash);
        match self.scheme {
            Scheme::Sha512 => format!("$6${salt}${hash}"),
            Scheme::Pbkdf2Sha512 { iterations } => format!("$7${iterations}${salt}${hash}"),
        }
    }
}

/// A loaded mosquitto password file: username → stored hash.
#[derive(Clone)]
pub struct PasswordFile {
    users: HashMap<String, StoredHash>,
    /// Verified against when the username is unknown, so that an unknown user costs the
    /// same work as a typical known one (same scheme and iteration count as the first
    /// entry) and response time does not reveal which usernames exist.
    decoy: StoredHash,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the hashes; not even the usernames.
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl PasswordFile {
    /// Reads and parses the password file at `path`.
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a password file; `path_for_errors` only labels errors.
    pub fn parse(text: &str, path_for_errors: &Path) -> Result<PasswordFile, AuthError> {
        let malformed = |line: usize, why: String| AuthError::Malformed {
            path: PathBuf::from(path_for_errors),
            line,
            why,
        };
        let mut users: HashMap<String, StoredHash> = HashMap::new();
        let mut first_line_of: HashMap<String, usize> = HashMap::new();
        let mut first: Option<StoredHash> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash_text)) = line.split_once(':') else {
                return Err(malformed(
                    line_no,
                    "no ':' between username and password hash".into(),
                ));
            };
            let (user, hash_text) = (user.trim(), hash_text.trim());
            if user.is_empty() {
                return Err(malformed(line_no, "empty username".into()));
            }
            if hash_text.is_empty() {
                return Err(malformed(line_no, "empty password hash".into()));
            }
            let stored = StoredHash::parse(hash_text).map_err(|why| malformed(line_no, why))?;
            if let Some(previous) = first_line_of.get(user) {
                return Err(malformed(
                    line_no,
                    format!("duplicate entry for a user first defined on line {previous}"),
                ));
            }
            first_line_of.insert(user.to_owned(), line_no);
            if first.is_none() {
                first = Some(stored.clone());
            }
            users.insert(user.to_owned(), stored);
        }
        let decoy_scheme = first.map_or(Scheme::Sha512, |h| h.scheme);
        let decoy = StoredHash {
            scheme: decoy_scheme,
            salt: vec![0x5a; SALT_LEN],
            hash: [0; HASH_LEN],
        };
        Ok(PasswordFile { users, decoy })
    }

    /// Whether `password` is the password of `username`. The comparison of hashes is
    /// constant-time; an unknown username is `false` after doing the same hashing work as a
    /// known one. Note mosquitto hashes the password as a C string (up to the first NUL
    /// byte); we hash all bytes, so a password with a NUL in it is only stricter.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        match self.users.get(username) {
            Some(stored) => stored.matches(password),
            None => {
                // Do the work, ignore the result: the decoy's all-zero hash is not a
                // password's hash, and the user does not exist anyway.
                let _ = std::hint::black_box(self.decoy.matches(password));
                false
            }
        }
    }

    /// Number of users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users (every CONNECT with a username will fail).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the file has an entry for `username` (for "unknown user" vs "bad password"
    /// decisions the caller may want to make without revealing them to the client).
    pub fn contains_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }
}

/// Hashes `password` as `$7$1000$<salt>$<hash>`: PBKDF2-HMAC-SHA512 with
/// [`DEFAULT_PBKDF2_ITERATIONS`] and a fresh 12-byte random salt, the layout
/// `mosquitto_passwd` 2.x writes, so mosquitto can read what we write.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    hash_password_with_iterations(password, DEFAULT_PBKDF2_ITERATIONS)
}

/// [`hash_password`] with an explicit iteration count (0 is raised to 1).
pub fn hash_password_with_iterations(
    password: &[u8],
    iterations: u32,
) -> Result<String, AuthError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::getrandom(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let scheme = Scheme::Pbkdf2Sha512 {
        iterations: iterations.max(1),
    };
    let stored = StoredHash {
        scheme,
        salt: salt.to_vec(),
        hash: StoredHash::compute(scheme, &salt, password),
    };
    Ok(stored.encode())
}

/// Checks that `username` survives a round trip through a password file: it must be
/// non-empty, have no `:`, no control characters (a newline would start a new entry), no
/// surrounding blanks (they are trimmed on read), and not start with `#` (a comment).
fn check_username_for_file(username: &str) -> Result<(), AuthError> {
    let why = if username.is_empty() {
        Some("it is empty")
    } else if username.contains(':') {
        Some("it contains ':'")
    } else if username.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if username.trim() != username {
        Some("it starts or ends with whitespace")
    } else if username.starts_with('#') {
        Some("it starts with '#'")
    } else {
        None
    };
    match why {
        Some(why) => Err(AuthError::InvalidUsername { why }),
        None => Ok(()),
    }
}

/// For `sluice passwd FILE USER`: returns `file_text` with `username`'s entry set to a new
/// hash of `password` (see [`hash_password`]). The first existing entry for the user is
/// replaced in place and any later duplicates are dropped; if there is none, a line is
/// appended. Every other line (comments, blanks, other users) is kept byte for byte.
///
/// Errors if the username cannot be stored safely (see the `InvalidUsername` variant) or no
/// salt could be generated.
pub fn upsert_password_line(
    file_text: &str,
    username: &str,
    password: &[u8],
) -> Result<String, AuthError> {
    upsert_password_line_with_iterations(file_text, username, password, DEFAULT_PBKDF2_ITERATIONS)
}

/// [`upsert_password_line`] with an explicit iteration count (0 is raised to 1).
pub fn upsert_password_line_with_iterations(
    file_text: &str,
    username: &str,
    password: &[u8],
    iterations: u32,
) -> Result<String, AuthError> {
    check_username_for_file(username)?;
    let new_entry = format!(
        "{username}:{}",
        hash_password_with_iterations(password, iterations)?
    );
    let mut out = String::with_capacity(file_text.len() + new_entry.len() + 1);
    let mut replaced = false;
    for raw in file_text.split_inclusive('\n') {
        let (content, ending) = match raw.strip_suffix("\r\n") {
            Some(c) => (c, "\r\n"),
            None => match raw.strip_suffix('\n') {
                Some(c) => (c, "\n"),
                None => (raw, ""),
            },
        };
        let trimmed = content.trim();
        let is_this_user = !trimmed.starts_with('#')
            && trimmed
                .split_once(':')
                .is_some_and(|(user, _)| user.trim() == username);
        if !is_this_user {
            out.push_str(raw);
            continue;
        }
        if !replaced {
            out.push_str(&new_entry);
            out.push_str(if ending.is_empty() { "\n" } else { ending });
            replaced = true;
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&new_entry);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Generated once with the real mosquitto_passwd 2.0.11:
    /// `mosquitto_passwd -c -b f kat7 'correct horse'`,
    /// `mosquitto_passwd -H sha512 -b f kat6 'battery staple'`,
    /// `mosquitto_passwd -b f 'käse' 'ünïcode pw'`.
    const KAT: &str = "\
kat7:$7$101$eiagQBSpa65WYayD$2rHeDArGyTb38Hpku71/t/Pr/bOr5g/jkE59Go1UmHyzrs+zzx7kw0XhV8ofgdKW6JfhZDaRiqjeNSTDjtw6cg==
kat6:$6$b5O57nhwcdXJpg7+$h9Zn4Shk0CB3abnc8E4TNQb2slPrQS8cAVoXSFxidJ3UcnuBgPHTVhiq2Bm9mU6Ciub+CRF3cLpjqjyGVwRn8A==
käse:$7$101$0aSbe6phERp7JD2r$7RLMiakIZRJloQ5kRXvlX9F1BlvLN7dYXiZ/8VzqaZu+qWA20RWdbEKJvMTVw4fGlE8GSuYG7yAEC6YVS1KwrA==
";

    /// The upsert under test with a cheap iteration count (debug-build PBKDF2 is slow).
    fn upsert_fast(text: &str, user: &str, pw: &[u8]) -> Result<String, AuthError> {
        upsert_password_line_with_iterations(text, user, pw, 1_000)
    }

    fn path() -> &'static Path {
        Path::new("test.pw")
    }

    fn parse(text: &str) -> PasswordFile {
        PasswordFile::parse(text, path()).expect("should parse")
    }

    fn malformed_line(text: &str) -> (usize, String) {
        match PasswordFile::parse(text, path()) {
            Err(AuthError::Malformed { line, why, .. }) => (line, why),
            Err(other) => panic!("wrong error {other}"),
            Ok(_) => panic!("accepted a malformed file: {text:?}"),
        }
    }

    #[test]
    fn known_answers_from_mosquitto_passwd() {
        let pw = parse(KAT);
        assert_eq!(pw.len(), 3);
        assert!(pw.verify("kat7", b"correct horse"));
        assert!(!pw.verify("kat7", b"correct horsE"));
        assert!(!pw.verify("kat7", b""));
        assert!(pw.verify("kat6", b"battery staple"));
        assert!(!pw.verify("kat6", b"battery stapl"));
        assert!(pw.verify("käse", "ünïcode pw".as_bytes()));
        assert!(!pw.verify("kase", "ünïcode pw".as_bytes()));
        // Another user's password is not yours.
        assert!(!pw.verify("kat6", b"correct horse"));
        assert!(!pw.verify("nobody", b"correct horse"));
        assert!(!pw.verify("", b""));
    }

    #[test]
    fn comments_blanks_whitespace_and_crlf() {
        let text = "# a comment\n\n   \n  # indented comment\r\n  kat6 : $6$b5O57nhwcdXJpg7+$h9Zn4Shk0CB3abnc8E4TNQb2slPrQS8cAVoXSFxidJ3UcnuBgPHTVhiq2Bm9mU6Ciub+CRF3cLpjqjyGVwRn8A==  \r\n";
        let pw = parse(text);
        assert_eq!(pw.len(), 1);
        assert!(pw.verify("kat6", b"battery staple"));
        assert!(parse("").is_empty());
    }

    #[test]
    fn real_mosquitto_passwd_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        let status = Command::new("mosquitto_passwd")
            .arg("-c")
            .arg("-b")
            .arg(&file)
            .arg("user")
            .arg("pass")
            .status();
        match status {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("note: mosquitto_passwd not installed; skipping (KAT tests still run)");
                return;
            }
            Err(e) => panic!("cannot run mosquitto_passwd: {e}"),
            Ok(s) => assert!(s.success(), "mosquitto_passwd failed: {s}"),
        }
        let pw = PasswordFile::load(&file).expect("load");
        assert_eq!(pw.len(), 1);
        assert!(pw.verify("user", b"pass"));
        assert!(!pw.verify("user", b"wrong"));
        assert!(!pw.verify("other", b"pass"));

        // And a 1.x-style entry added by the same binary.
        let status = Command::new("mosquitto_passwd")
            .args(["-H", "sha512", "-b"])
            .arg(&file)
            .args(["old", "legacy pass"])
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success());
        let pw = PasswordFile::load(&file).expect("load");
        assert!(pw.verify("old", b"legacy pass"));
        assert!(pw.verify("user", b"pass"));
    }

    #[test]
    fn hash_password_writes_mosquitto_2_layout() {
        let line = hash_password_with_iterations(b"s3cret", 1_000).expect("hash");
        let fields: Vec<&str> = line.split('$').collect();
        assert_eq!(fields.len(), 5, "{line}");
        assert_eq!((fields[0], fields[1], fields[2]), ("", "7", "1000"));
        assert_eq!(B64.decode(fields[3]).expect("salt b64").len(), SALT_LEN);
        assert_eq!(B64.decode(fields[4]).expect("hash b64").len(), HASH_LEN);
        assert!(fields[4].ends_with("=="), "standard base64 with padding");
        let pw = parse(&format!("me:{line}\n"));
        assert!(pw.verify("me", b"s3cret"));
        assert!(!pw.verify("me", b"s3cret "));
        // Fresh salt each time.
        let again = hash_password_with_iterations(b"s3cret", 1_000).expect("hash");
        assert_ne!(line, again);
    }

    #[test]
    fn hash_password_default_count_round_trips() {
        let line = hash_password(b"pw").expect("hash");
        assert!(line.starts_with("$7$1000$"), "{line}");
        assert!(parse(&format!("u:{line}")).verify("u", b"pw"));
    }

    #[test]
    fn malformed_lines_name_the_line_and_never_the_secret() {
        const GOOD: &str =
            "$6$b5O57nhwcdXJpg7+$h9Zn4Shk0CB3abnc8E4TNQb2slPrQS8cAVoXSFxidJ3UcnuBgPHTVhiq2Bm9mU6Ciub+CRF3cLpjqjyGVwRn8A==";
        let h64 = B64.encode([7u8; 64]);
        let h32 = B64.encode([7u8; 32]);
        // (bad line, fragment of the reason)
        let cases: Vec<(String, &str)> = vec![
            ("hunter2".into(), "no ':'"),
            (format!(":{GOOD}"), "empty username"),
            ("bob:".into(), "empty password hash"),
            ("bob:   ".into(), "empty password hash"),
            ("bob:plaintextpassword".into(), "does not start with '$'"),
            (
                format!("bob:$5$c2FsdA==${h64}"),
                "unknown password hash type",
            ),
            (
                format!("bob:$7$0$c2FsdHNhbHRzYWx0${h64}"),
                "iteration count is 0",
            ),
            (
                format!("bob:$7$-5$c2FsdHNhbHRzYWx0${h64}"),
                "not a positive integer",
            ),
            (
                format!("bob:$7$abc$c2FsdHNhbHRzYWx0${h64}"),
                "not a positive integer",
            ),
            (format!("bob:$7$${h64}"), "not a positive integer"),
            ("bob:$7$101$c2FsdHNhbHRzYWx0".into(), "no hash field"),
            (format!("bob:$6$${h64}"), "empty salt"),
            (
                format!("bob:$6$not*base64${h64}"),
                "salt is not valid base64",
            ),
            (
                "bob:$6$c2FsdA==$not*base64!".into(),
                "hash is not valid base64",
            ),
            (format!("bob:$6$c2FsdA==${h32}"), "not 64 bytes"),
            (format!("bob:$6$c2FsdA==${h64}$extra"), "too many"),
            (format!("kat6:{GOOD}"), "duplicate entry"),
        ];
        for (bad, why_fragment) in cases {
            let text = format!("# header\n\nkat6:{GOOD}\n{bad}\n");
            let (line, why) = malformed_line(&text);
            assert_eq!(line, 4, "line number for {bad:?}");
            assert!(why.contains(why_fragment), "{bad:?}: got {why:?}");
            let shown = PasswordFile::parse(&text, path())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(shown.starts_with("test.pw:4: "), "{shown}");
            let secret_part = bad.split_once(':').map_or(bad.as_str(), |(_, h)| h);
            if secret_part.len() > 3 {
                assert!(
                    !shown.contains(secret_part),
                    "error leaks the hash: {shown}"
                );
            }
            assert!(!shown.contains(GOOD), "error leaks another hash: {shown}");
        }
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = Path::new("/nonexistent/sluice/pw");
        match PasswordFile::load(missing) {
            Err(AuthError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io error, got {other:?}"),
        }
    }

    #[test]
    fn debug_output_hides_hashes_and_names() {
        let shown = format!("{:?}", parse(KAT));
        assert!(!shown.contains("kat7"), "{shown}");
        assert!(!shown.contains("eiagQBSpa65WYayD"), "{shown}");
        assert!(shown.contains("users: 3"), "{shown}");
    }

    #[test]
    fn upsert_replaces_in_place_and_keeps_everything_else() {
        let text = "# users\nalice:$6$x$y\nbob:$6$a$b\r\nalice:$6$dup$dup\n# end";
        let out = upsert_fast(text, "alice", b"new pw").expect("upsert");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], "# users");
        assert!(lines[1].starts_with("alice:$7$1000$"));
        assert_eq!(lines[2], "bob:$6$a$b");
        assert!(out.contains("bob:$6$a$b\r\n"), "CRLF preserved");
        assert_eq!(lines[3], "# end");
        assert!(!out.contains("dup"), "later duplicate dropped");
        // The result is itself a valid file for the new entry.
        let only_alice = out.lines().nth(1).unwrap_or_default();
        assert!(parse(only_alice).verify("alice", b"new pw"));
    }

    #[test]
    fn upsert_uses_the_default_count() {
        let out = upsert_password_line("", "dave", b"pw").expect("upsert");
        assert!(out.starts_with("dave:$7$1000$"), "{out}");
        assert_eq!(parse(&out).len(), 1);
    }

    #[test]
    fn upsert_appends_when_missing() {
        for text in ["", "bob:$6$a$b", "bob:$6$a$b\n"] {
            let out = upsert_fast(text, "carol", b"pw").expect("upsert");
            assert!(out.ends_with('\n'));
            let last = out.lines().last().unwrap_or_default();
            assert!(last.starts_with("carol:$7$"), "{out:?}");
            if !text.is_empty() {
                assert!(out.starts_with("bob:$6$a$b\n"), "{out:?}");
            }
        }
    }

    #[test]
    fn upsert_rejects_usernames_that_would_corrupt_the_file() {
        for bad in [
            "",
            "a:b",
            "x\nadmin",
            "tab\tuser",
            " lead",
            "trail ",
            "#root",
        ] {
            assert!(
                matches!(
                    upsert_fast("", bad, b"pw"),
                    Err(AuthError::InvalidUsername { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
        // A commented-out line that mentions the user is not an entry for the user.
        let out = upsert_fast("#alice:old\n", "alice", b"pw").expect("upsert");
        assert!(out.starts_with("#alice:old\nalice:$7$"), "{out}");
    }
}
