//! Who may use the admin HTTP server: the bearer tokens of `[admin] token_file` and the
//! rule that decides each request.
//!
//! Owns the token file's format (`TOKEN ro|rw` a line, `#` comments), its loading (at
//! start-up and on SIGHUP, by the server in src/admin/server.rs), and [`Tokens::decide`].
//! Tokens are compared in constant time, each against every token in the file, so the
//! time taken says nothing about how much of a token was right. Never logs a token.

use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {why}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
}

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET only.
    ReadOnly,
    /// Everything.
    ReadWrite,
}

/// The outcome of checking one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// No token, or an unknown one: 401.
    Unauthenticated,
    /// A read-only token on a write: 403.
    Forbidden,
}

/// The tokens in force.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, Access)>,
}

/// Shortest token accepted: a guessable token is refused at load time.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Io {
            path: path.to_owned(),
            source,
        })?;
        Tokens::parse(&text).map_err(|(line, why)| TokenError::Malformed {
            path: path.to_owned(),
            line,
            why,
        })
    }

    /// Parses the file's text; errors carry the 1-based line and why.
    pub fn parse(text: &str) -> Result<Tokens, (usize, &'static str)> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(token), Some(access), None) = (words.next(), words.next(), words.next())
            else {
                return Err((i + 1, "expected `TOKEN ro` or `TOKEN rw`"));
            };
            let access = match access {
                "ro" => Access::ReadOnly,
                "rw" => Access::ReadWrite,
                _ => return Err((i + 1, "access must be `ro` or `rw`")),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err((i + 1, "a token must be at least 16 characters"));
            }
            entries.push((token.as_bytes().to_vec(), access));
        }
        Ok(Tokens { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The access `presented` grants, if it is one of the tokens. Every token is
    /// compared, whatever matched first.
    pub fn access(&self, presented: &[u8]) -> Option<Access> {
        let mut found = None;
        for (token, access) in &self.entries {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(*access);
            }
        }
        found
    }

    /// Decides a request: `loopback` requests need no token; otherwise `bearer` must be
    /// a token, read-write when `write`.
    pub fn decide(&self, loopback: bool, bearer: Option<&[u8]>, write: bool) -> Verdict {
        if loopback {
            return Verdict::Allow;
        }
        match bearer.and_then(|b| self.access(b)) {
            None => Verdict::Unauthenticated,
            Some(Access::ReadOnly) if write => Verdict::Forbidden,
            Some(_) => Verdict::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tokens_and_refuses_bad_lines() {
        let t = Tokens::parse("# ops\nreadonly-token-0123456 ro\n\nwrite-token-0123456789 rw\n")
            .expect("valid file");
        assert_eq!(t.len(), 2);
        assert_eq!(t.access(b"readonly-token-0123456"), Some(Access::ReadOnly));
        assert_eq!(t.access(b"write-token-0123456789"), Some(Access::ReadWrite));
        assert_eq!(t.access(b"write-token-012345678"), None);
        assert_eq!(Tokens::parse("short ro\n").err().map(|e| e.0), Some(1));
        assert_eq!(
            Tokens::parse("# x\nreadonly-token-0123456 admin\n")
                .err()
                .map(|e| e.0),
            Some(2)
        );
        assert!(Tokens::parse("readonly-token-0123456\n").is_err());
    }

    #[test]
    fn decides_401_403_and_loopback() {
        let t = Tokens::parse("readonly-token-0123456 ro\nwrite-token-0123456789 rw\n")
            .expect("valid file");
        assert_eq!(t.decide(true, None, true), Verdict::Allow);
        assert_eq!(t.decide(false, None, false), Verdict::Unauthenticated);
        assert_eq!(
            t.decide(false, Some(b"nope"), false),
            Verdict::Unauthenticated
        );
        let ro = Some(&b"readonly-token-0123456"[..]);
        assert_eq!(t.decide(false, ro, false), Verdict::Allow);
        assert_eq!(t.decide(false, ro, true), Verdict::Forbidden);
        let rw = Some(&b"write-token-0123456789"[..]);
        assert_eq!(t.decide(false, rw, true), Verdict::Allow);
    }
}
