//! The verified-token cache: an RS256 or ES256 verification costs tens of microseconds, a
//! lookup well under one, and clients send the same token for its whole lifetime.
//!
//! Entries are keyed by the SHA-256 of the token. Pingora's `MemoryCache` (TinyUFO: bounded,
//! scan-resistant admission, lock-free reads) indexes them by a 64-bit hash only, so each entry
//! also holds the full digest and a hit is served only when the digests are equal: two tokens
//! that share a 64-bit hash are a miss, never each other's identity.
//!
//! An entry is served only while the token is unexpired and the issuer's key set is the one it
//! was verified under, so a key rotated out of a JWKS stops its cached tokens too.

use std::sync::Arc;
use std::time::Duration;

use pingora_memory_cache::MemoryCache;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::identity::JwtIdentity;

/// The longest a verified token stays cached when it has no `exp`, or a distant one.
pub const TOKEN_CACHE_MAX_TTL: Duration = Duration::from_secs(300);

/// The SHA-256 of a token.
pub fn token_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

struct Entry {
    digest: [u8; 32],
    generation: u64,
    identity: Arc<JwtIdentity>,
}

/// Verified tokens, by digest.
pub struct TokenCache {
    entries: MemoryCache<[u8; 32], Arc<Entry>>,
}

impl TokenCache {
    /// A cache holding about `size` tokens.
    pub fn new(size: usize) -> Self {
        TokenCache { entries: MemoryCache::new(size) }
    }

    /// The identity cached for `digest`, if it is still good at `now`: unexpired, and verified
    /// under the key set its issuer has now (`generation_of(issuer)`).
    pub fn get(
        &self,
        digest: &[u8; 32],
        now: u64,
        generation_of: impl Fn(usize) -> Option<u64>,
    ) -> Option<Arc<JwtIdentity>> {
        let (entry, _) = self.entries.get(digest);
        let entry = entry?;
        let good = bool::from(entry.digest.ct_eq(digest))
            && entry.identity.expires_at.is_none_or(|exp| exp > now)
            && generation_of(entry.identity.issuer) == Some(entry.generation);
        good.then(|| entry.identity.clone())
    }

    /// Caches a verified identity until its token expires, at most [`TOKEN_CACHE_MAX_TTL`].
    pub fn put(&self, digest: [u8; 32], generation: u64, identity: Arc<JwtIdentity>, now: u64) {
        let ttl = match identity.expires_at {
            Some(exp) => Duration::from_secs(exp.saturating_sub(now)).min(TOKEN_CACHE_MAX_TTL),
            None => TOKEN_CACHE_MAX_TTL,
        };
        // A zero TTL is not stored: a token expiring this second is verified every time.
        self.entries.put(&digest, Arc::new(Entry { digest, generation, identity }), Some(ttl));
    }
}
