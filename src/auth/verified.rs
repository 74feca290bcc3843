//! The cache of successful password checks, so a client that reconnects costs a keyed
//! digest and a map lookup instead of a PBKDF2 run.
//!
//! Owns, per username, a keyed digest of the last password that verified for it:
//! HMAC-SHA256 under a random key made when the cache is (per process and per load of
//! the password file), over the username and the password. The password itself is never
//! kept, and the digests are useless without the key, which never leaves memory. Lookups
//! compare digests in constant time.
//!
//! Only successes are stored (a failure is always checked against the file again), the
//! cache is bounded (an arbitrary entry makes room when it is full), and it lives inside
//! [`super::AuthFiles`], so a SIGHUP reload of the password file starts with an empty one:
//! a changed or removed password is never accepted from the cache.

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::AuthError;

type Digest = [u8; 32];

/// How many usernames the cache remembers by default: a large fleet's reconnect storm
/// fits (one entry is a username and 32 bytes).
pub const DEFAULT_VERIFIED_CACHE_ENTRIES: usize = 100_000;

/// Successful password checks, keyed by username. Deliberately shows only its size in
/// `Debug`.
pub struct VerifiedCache {
    /// HMAC-SHA256 already keyed with the cache's random key; cloned per digest.
    keyed: Hmac<Sha256>,
    capacity: usize,
    entries: parking_lot::Mutex<HashMap<String, Digest>>,
}

impl fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("entries", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// An empty cache of at most `capacity` usernames (0 caches nothing), with a fresh
    /// random key.
    pub fn new(capacity: usize) -> Result<VerifiedCache, AuthError> {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| AuthError::Random(e.to_string()))?;
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(VerifiedCache {
            keyed,
            capacity,
            entries: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn digest(&self, username: &str, password: &[u8]) -> Digest {
        let mut mac = self.keyed.clone();
        // The username's length first, so no username/password split is ambiguous.
        mac.update(&(username.len() as u64).to_be_bytes());
        mac.update(username.as_bytes());
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    /// Whether `password` is the one that last verified for `username`.
    pub fn contains(&self, username: &str, password: &[u8]) -> bool {
        let digest = self.digest(username, password);
        let entries = self.entries.lock();
        entries
            .get(username)
            .is_some_and(|stored| bool::from(stored.ct_eq(&digest)))
    }

    /// Remembers that `password` verified for `username`. Call only after a successful
    /// check against the password file.
    pub fn insert(&self, username: &str, password: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        let digest = self.digest(username, password);
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity && !entries.contains_key(username) {
            // Any entry: the one evicted costs its client one hash on its next connect.
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(username.to_owned(), digest);
    }

    /// Usernames remembered now.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_only_for_the_password_that_verified() {
        let cache = VerifiedCache::new(8).expect("cache");
        assert!(!cache.contains("dev1", b"pw"), "empty cache misses");
        cache.insert("dev1", b"pw");
        assert!(cache.contains("dev1", b"pw"));
        assert!(!cache.contains("dev1", b"pw2"), "another password misses");
        assert!(!cache.contains("dev2", b"pw"), "another user misses");
        // The username/password boundary is part of the digest.
        cache.insert("ab", b"c");
        assert!(!cache.contains("a", b"bc"));
        // A new password for the user replaces the old one.
        cache.insert("dev1", b"new");
        assert!(cache.contains("dev1", b"new"));
        assert!(!cache.contains("dev1", b"pw"));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn bounded_in_size() {
        let cache = VerifiedCache::new(3).expect("cache");
        for i in 0..10 {
            cache.insert(&format!("dev{i}"), b"pw");
            assert!(cache.len() <= 3, "{} entries", cache.len());
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.contains("dev9", b"pw"), "the newest entry is kept");
        // Updating an entry at capacity evicts nothing.
        cache.insert("dev9", b"pw2");
        assert_eq!(cache.len(), 3);
        let none = VerifiedCache::new(0).expect("cache");
        none.insert("dev", b"pw");
        assert!(!none.contains("dev", b"pw"));
    }

    #[test]
    fn keys_differ_between_caches() {
        let a = VerifiedCache::new(1).expect("cache");
        let b = VerifiedCache::new(1).expect("cache");
        assert_ne!(a.digest("u", b"p"), b.digest("u", b"p"));
    }

    #[test]
    fn debug_shows_no_usernames() {
        let cache = VerifiedCache::new(4).expect("cache");
        cache.insert("secret-user", b"pw");
        let shown = format!("{cache:?}");
        assert!(!shown.contains("secret-user"), "{shown}");
        assert!(shown.contains("entries: 1"), "{shown}");
    }
}
