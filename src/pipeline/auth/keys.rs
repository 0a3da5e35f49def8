//! The keys an issuer verifies signatures with, and how one is chosen for a token.

use jsonwebtoken::{Algorithm, DecodingKey};

/// A key that verifies signatures: from a JWK, a PEM file or a secret.
#[derive(Clone)]
pub struct VerifyKey {
    /// The JWK `kid`; `None` matches a token with any (or no) `kid` when it is the only key
    /// of the token's algorithm family.
    pub kid: Option<Box<str>>,
    /// The one algorithm this key may verify, when its JWK says so (`alg`, or the EC curve).
    pub alg: Option<Algorithm>,
    /// The key.
    pub key: DecodingKey,
}

impl VerifyKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of an issuer at one moment.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Changes whenever the keys do: cached tokens verified under an older set are re-verified.
    pub generation: u64,
    /// The keys.
    pub keys: Vec<VerifyKey>,
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyMiss {
    /// No key has the token's `kid` (or, without a `kid`, none fits its algorithm).
    Unknown,
    /// The `kid` names a key of another type or algorithm.
    WrongType,
    /// No `kid`, and several keys fit.
    Ambiguous,
}

impl KeySet {
    pub(super) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, KeyMiss> {
        if let Some(kid) = kid {
            if let Some(key) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                return if key.accepts(alg) { Ok(key) } else { Err(KeyMiss::WrongType) };
            }
        }
        // Keys without a kid (a PEM file, a secret, a JWK that names none) serve any token of
        // their algorithm, as long as exactly one of them does.
        let mut fitting = self.keys.iter().filter(|k| (kid.is_none() || k.kid.is_none()) && k.accepts(alg));
        match (fitting.next(), fitting.next()) {
            (Some(key), None) => Ok(key),
            (Some(_), Some(_)) => Err(KeyMiss::Ambiguous),
            (None, _) if kid.is_none() && self.keys.iter().any(|k| k.key.family() != alg.family()) => {
                Err(KeyMiss::WrongType)
            }
            (None, _) => Err(KeyMiss::Unknown),
        }
    }
}
