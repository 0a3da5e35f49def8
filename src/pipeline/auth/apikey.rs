//! API keys: stored only as SHA-256 hashes, looked up by the hash of the presented key, and
//! compared in constant time.
//!
//! Keys are high-entropy random strings (`portcullis keys generate`), so an unsalted SHA-256 is
//! the right tool: there is nothing to brute-force, and the lookup stays one hash plus one map
//! probe whatever the number of keys.

use std::collections::HashMap;
use std::time::SystemTime;

use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::AuthFailure;

/// The prefix of generated keys: recognisable in leaked-secret scanners and support tickets.
pub const KEY_PREFIX: &str = "pcs_";
/// Random bytes in a generated key (256 bits).
pub const KEY_RANDOM_BYTES: usize = 32;
/// The prefix of a hash in the configuration.
pub const HASH_PREFIX: &str = "sha256:";

/// One validated `[[auth.api_key]]`, with its identity headers rendered at load.
#[derive(Debug)]
pub struct ApiKey {
    /// Key id: in logs, metrics and `X-Auth-Key-Id`; never the key.
    pub id: Box<str>,
    /// Permissions granted.
    pub permissions: Vec<Box<str>>,
    /// When it stops working.
    pub expires: Option<SystemTime>,
    /// Refused without being deleted.
    pub disabled: bool,
    /// `X-Auth-Subject` value.
    pub subject_header: HeaderValue,
    /// `X-Auth-Key-Id` value.
    pub id_header: HeaderValue,
    /// `X-Auth-Permissions` value (comma-separated).
    pub permissions_header: HeaderValue,
    hash: [u8; 32],
}

impl ApiKey {
    /// A key entry from validated parts.
    pub fn new(
        id: &str,
        hash: [u8; 32],
        subject: &str,
        permissions: Vec<Box<str>>,
        expires: Option<SystemTime>,
        disabled: bool,
    ) -> Result<Self, String> {
        let header = |v: &str, what: &str| {
            HeaderValue::from_str(v).map_err(|_| format!("the {what} \"{v}\" cannot be sent in a header"))
        };
        Ok(ApiKey {
            subject_header: header(subject, "subject")?,
            id_header: header(id, "id")?,
            permissions_header: header(&permissions.join(","), "permission list")?,
            id: id.into(),
            permissions,
            expires,
            disabled,
            hash,
        })
    }
}

/// All keys, indexed by hash.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
    by_hash: HashMap<[u8; 32], usize>,
}

impl ApiKeys {
    /// Indexes keys; `Err` names the id of a key whose hash is listed twice.
    pub fn new(keys: Vec<ApiKey>) -> Result<Self, Box<str>> {
        let mut by_hash = HashMap::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if by_hash.insert(key.hash, i).is_some() {
                return Err(key.id.clone());
            }
        }
        Ok(ApiKeys { keys, by_hash })
    }

    /// The key by index.
    pub fn get(&self, index: usize) -> &ApiKey {
        &self.keys[index]
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a presented key at time `now`: the index of its entry, or why it fails.
    pub fn verify(&self, presented: &[u8], now: SystemTime) -> Result<usize, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let index = *self.by_hash.get(&digest).ok_or(AuthFailure::UnknownKey)?;
        let key = &self.keys[index];
        // The map probe compared digests already; this keeps the final decision constant-time.
        if !bool::from(key.hash.ct_eq(&digest)) {
            return Err(AuthFailure::UnknownKey);
        }
        if key.disabled {
            return Err(AuthFailure::Disabled);
        }
        if key.expires.is_some_and(|at| now >= at) {
            return Err(AuthFailure::Expired);
        }
        Ok(index)
    }
}

/// Parses `sha256:<64 hex>`.
pub fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let hex_part = text.strip_prefix(HASH_PREFIX).ok_or_else(|| "does not start with \"sha256:\"".to_string())?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| "is not \"sha256:\" followed by 64 hex digits".to_string())?;
    Ok(out)
}

/// The configuration line for a key: `sha256:<hex>`.
pub fn hash_line(key: &str) -> String {
    format!("{HASH_PREFIX}{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A new random key from the operating system's CSPRNG.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; KEY_RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness available: {e}"))?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys() -> (ApiKeys, String) {
        let secret = generate().unwrap();
        let hash = parse_hash(&hash_line(&secret)).unwrap();
        let past = SystemTime::now() - Duration::from_secs(60);
        let expired = ApiKey::new("old", parse_hash(&hash_line("old-key")).unwrap(), "old", vec![], Some(past), false);
        let disabled = ApiKey::new("off", parse_hash(&hash_line("off-key")).unwrap(), "off", vec![], None, true);
        let good = ApiKey::new("ci", hash, "service:ci", vec!["read_models".into()], None, false);
        (ApiKeys::new(vec![good.unwrap(), expired.unwrap(), disabled.unwrap()]).unwrap(), secret)
    }

    #[test]
    fn generated_keys_are_prefixed_and_distinct() {
        let a = generate().unwrap();
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(a.len(), KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES);
        assert_ne!(a, generate().unwrap());
    }

    #[test]
    fn verification() {
        let (keys, secret) = keys();
        let now = SystemTime::now();
        assert_eq!(keys.get(keys.verify(secret.as_bytes(), now).unwrap()).id.as_ref(), "ci");
        let mut one_off = secret.clone().into_bytes();
        let last = one_off.len() - 1;
        one_off[last] = if one_off[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(keys.verify(&one_off, now), Err(AuthFailure::UnknownKey));
        assert_eq!(keys.verify(b"old-key", now), Err(AuthFailure::Expired));
        assert_eq!(keys.verify(b"off-key", now), Err(AuthFailure::Disabled));
        assert_eq!(keys.verify(b"", now), Err(AuthFailure::UnknownKey));
    }

    #[test]
    fn hash_parsing() {
        assert!(parse_hash(&hash_line("x")).is_ok());
        assert!(parse_hash("sha256:abc").is_err());
        assert!(parse_hash(&hash_line("x").replace("sha256:", "md5:")).is_err());
        assert!(parse_hash(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }
}
