//! Checking a CONNECT's password without stalling the broker.
//!
//! Owns the bounded hashing pool: a PBKDF2 check is deliberately slow (milliseconds of
//! CPU), so it never runs on a tokio worker, where it would hold up every connection
//! that worker serves. A check first looks in the file's cache of successful checks
//! ([`super::VerifiedCache`]); otherwise it takes one of a fixed number of hashing slots
//! (waiting for one asynchronously) and hashes on tokio's blocking pool. The slot is held
//! until the hash is done even if the client gave up meanwhile, so a flood of CONNECTs
//! with bad passwords keeps at most that many cores busy and the rest of the broker runs.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use super::AuthFiles;
use crate::metrics as metric;

/// What a password check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Valid,
    Invalid,
}

/// The hashing slots shared by every connection of a broker.
#[derive(Debug)]
pub struct PasswordChecks {
    slots: Arc<Semaphore>,
}

impl PasswordChecks {
    /// At most `slots` hashes at once (at least one).
    pub fn new(slots: usize) -> PasswordChecks {
        PasswordChecks {
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// The default number of slots: one fewer than the cores, at least one, so a storm
    /// of CONNECTs leaves a core for the message path.
    pub fn default_slots() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
            .max(1)
    }

    /// Checks `password` for `username` against `files`' password file (which must be
    /// configured; without one every username is accepted and this is not called).
    /// Callers bound the wait (the future may be dropped while it waits for a slot).
    pub async fn verify(
        &self,
        files: &Arc<AuthFiles>,
        username: &str,
        password: &[u8],
    ) -> PasswordCheck {
        if files.verified.contains(username, password) {
            metrics::counter!(metric::PASSWORD_CHECKS, "result" => "cached").increment(1);
            return PasswordCheck::Valid;
        }
        let started = Instant::now();
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
            // The semaphore is never closed; were it, refusing is the safe answer.
            return PasswordCheck::Invalid;
        };
        let owned = Arc::clone(files);
        let user = username.to_owned();
        let pw = password.to_vec();
        let hashed = tokio::task::spawn_blocking(move || {
            let valid = owned
                .passwords
                .as_ref()
                .is_some_and(|p| p.verify(&user, &pw));
            if valid {
                owned.verified.insert(&user, &pw);
            }
            drop(slot);
            valid
        })
        .await;
        metrics::histogram!(metric::PASSWORD_CHECK_DURATION).record(started.elapsed());
        if hashed.unwrap_or(false) {
            metrics::counter!(metric::PASSWORD_CHECKS, "result" => "verified").increment(1);
            PasswordCheck::Valid
        } else {
            metrics::counter!(metric::PASSWORD_CHECKS, "result" => "failed").increment(1);
            PasswordCheck::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{hash_password_with_iterations, PasswordFile, VerifiedCache};
    use std::path::Path;

    fn files(text: &str) -> Arc<AuthFiles> {
        Arc::new(AuthFiles {
            passwords: Some(PasswordFile::parse(text, Path::new("t")).expect("parses")),
            acl: None,
            verified: VerifiedCache::new(16).expect("cache"),
        })
    }

    #[tokio::test]
    async fn successes_are_cached_and_failures_are_not() {
        let line = hash_password_with_iterations(b"pw", 1_000).expect("hash");
        let files = files(&format!("dev:{line}\n"));
        let checks = PasswordChecks::new(1);
        assert_eq!(
            checks.verify(&files, "dev", b"wrong").await,
            PasswordCheck::Invalid
        );
        assert!(files.verified.is_empty(), "a failure is never cached");
        assert_eq!(
            checks.verify(&files, "nobody", b"pw").await,
            PasswordCheck::Invalid
        );
        assert!(files.verified.is_empty());
        assert_eq!(
            checks.verify(&files, "dev", b"pw").await,
            PasswordCheck::Valid
        );
        assert!(files.verified.contains("dev", b"pw"), "a success is cached");
        assert_eq!(
            checks.verify(&files, "dev", b"pw").await,
            PasswordCheck::Valid
        );
        assert_eq!(
            checks.verify(&files, "dev", b"wrong").await,
            PasswordCheck::Invalid,
            "the cache holds one password, not a user's pass"
        );
    }

    #[tokio::test]
    async fn a_reloaded_file_starts_with_an_empty_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("passwd");
        let config = crate::config::AuthConfig {
            password_file: Some(path.clone()),
            acl_file: None,
        };
        let old = hash_password_with_iterations(b"old", 1_000).expect("hash");
        std::fs::write(&path, format!("dev:{old}\n")).expect("write");
        let before = Arc::new(AuthFiles::load(&config).expect("loads"));
        let checks = PasswordChecks::new(1);
        assert_eq!(
            checks.verify(&before, "dev", b"old").await,
            PasswordCheck::Valid
        );
        assert!(before.verified.contains("dev", b"old"));
        // SIGHUP loads the files again (Broker::reload); the password has changed.
        let new = hash_password_with_iterations(b"new", 1_000).expect("hash");
        std::fs::write(&path, format!("dev:{new}\n")).expect("write");
        let after = Arc::new(AuthFiles::load(&config).expect("loads"));
        assert!(
            after.verified.is_empty(),
            "a reload starts with an empty cache"
        );
        assert_eq!(
            checks.verify(&after, "dev", b"old").await,
            PasswordCheck::Invalid,
            "the old password is not accepted from a cache after the reload"
        );
        assert_eq!(
            checks.verify(&after, "dev", b"new").await,
            PasswordCheck::Valid
        );
    }

    #[test]
    fn at_least_one_slot() {
        assert!(PasswordChecks::default_slots() >= 1);
        assert_eq!(PasswordChecks::new(0).slots.available_permits(), 1);
    }
}
