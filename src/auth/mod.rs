//! Authentication and authorization, compatible with mosquitto's security files.
//!
//! This module owns reading mosquitto `password_file`s ([`PasswordFile`]), writing entries
//! for them ([`hash_password`], [`upsert_password_line`], used by `sluice passwd FILE USER`),
//! and reading and evaluating mosquitto `acl_file`s ([`AclFile`]). Operators point sluice at
//! the files they already have; nothing is converted.
//!
//! Who calls it: the connection handshake calls [`PasswordFile::verify`] on CONNECT; the
//! SUBSCRIBE path calls [`AclFile::check_subscribe`] per requested filter; the PUBLISH path
//! calls [`AclFile::check`] with [`Access::Write`]; the delivery path calls
//! [`AclFile::check`] with [`Access::Read`] for every message before it is queued to a
//! subscriber (a granted subscription can still cover topics a `deny` rule forbids, exactly
//! as in mosquitto, so the per-delivery check is required, not an optimisation).
//!
//! This is a leaf: it knows nothing about sockets, sessions or the rest of the broker, and
//! does no I/O except reading the file it is asked to load.
//!
//! What it must never do: log, print, or put into an error or `Debug` output a password or
//! a stored hash. Errors name the file and line number and say what is wrong, never what
//! the line contained.

use std::path::PathBuf;

mod acl;
mod filter;
mod password;

pub use acl::{Access, AclFile};
pub use password::{
    hash_password, hash_password_with_iterations, upsert_password_line, PasswordFile,
    DEFAULT_PBKDF2_ITERATIONS,
};

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
