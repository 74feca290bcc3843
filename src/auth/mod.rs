//! Authentication and authorization, compatible with mosquitto's security files.
//!
//! This module owns reading mosquitto `password_file`s ([`PasswordFile`]), writing entries
//! for them ([`hash_password`], [`upsert_password_line`], used by `sluice passwd FILE USER`),
//! and reading and evaluating mosquitto `acl_file`s ([`AclFile`]). Operators point sluice at
//! the files they already have; nothing is converted.
//!
//! It also owns checking a CONNECT's password off the tokio workers on a bounded number
//! of hashing slots ([`PasswordChecks`]), and the per-load cache of successful checks
//! ([`VerifiedCache`]) that makes a reconnect cost no hash.
//!
//! Who calls it: the connection handshake calls [`PasswordChecks::verify`] on CONNECT; the
//! SUBSCRIBE path calls [`AclFile::check_subscribe`] per requested filter; the PUBLISH path
//! calls [`AclFile::check`] with [`Access::Write`]; the delivery path calls
//! [`AclFile::check`] with [`Access::Read`] for every message before it is queued to a
//! subscriber (a granted subscription can still cover topics a `deny` rule forbids, exactly
//! as in mosquitto, so the per-delivery check is required, not an optimisation).
//!
//! It knows nothing about sockets, sessions or the rest of the broker, and does no I/O
//! except reading the file it is asked to load.
//!
//! What it must never do: log, print, or put into an error or `Debug` output a password or
//! a stored hash. Errors name the file and line number and say what is wrong, never what
//! the line contained.

use std::path::PathBuf;

mod acl;
mod check;
mod filter;
mod password;
mod verified;

pub use acl::{Access, AclFile};
pub use check::{PasswordCheck, PasswordChecks};
pub use password::{
    hash_password, hash_password_with_iterations, upsert_password_line,
    upsert_password_line_with_iterations, PasswordFile, DEFAULT_PBKDF2_ITERATIONS,
};
pub use verified::{VerifiedCache, DEFAULT_VERIFIED_CACHE_ENTRIES};

/// Why a security file could not be loaded, or an entry could not be written.
///
/// The messages never contain a password or a hash; a `Malformed` line is identified by
/// file and 1-based line number only.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read (missing, unreadable, or not UTF-8).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of the file is not valid; nothing from the file was accepted.
    #[error("{}:{line}: {why}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// A username cannot be written to a password file (it would be misread or would
    /// corrupt other entries).
    #[error("invalid username for a password file: {why}")]
    InvalidUsername { why: &'static str },
    /// The operating system's random number generator failed, so no salt could be made.
    #[error("cannot generate a random salt: {0}")]
    Random(String),
}

/// The password and ACL files in force; replaced whole on SIGHUP, which also empties
/// the cache of successful password checks (it belongs to the password file it checked).
#[derive(Debug)]
pub struct AuthFiles {
    pub passwords: Option<PasswordFile>,
    pub acl: Option<AclFile>,
    pub verified: VerifiedCache,
}

impl AuthFiles {
    /// Loads whichever files are configured.
    pub fn load(config: &crate::config::AuthConfig) -> Result<AuthFiles, AuthError> {
        Ok(AuthFiles {
            passwords: config
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?,
            acl: config.acl_file.as_deref().map(AclFile::load).transpose()?,
            verified: VerifiedCache::new(DEFAULT_VERIFIED_CACHE_ENTRIES)?,
        })
    }

    /// May this client read (receive) `topic`? Everything is allowed without an ACL file.
    pub fn may_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.check(client_id, username, topic, Access::Read))
    }

    pub fn may_write(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.check(client_id, username, topic, Access::Write))
    }

    pub fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.check_subscribe(client_id, username, filter))
    }
}
