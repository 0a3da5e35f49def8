//! Signing keys for the JWT tests and benchmarks, generated fresh with OpenSSL: the gateway
//! only ever sees their public halves (PEM files, JWKS documents).
#![allow(dead_code, clippy::unwrap_used)]

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, AlgorithmFamily, EncodingKey, Header};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use serde_json::Value;

/// A private key that signs tokens, with its public forms.
pub struct SigningKey {
    /// The algorithm it signs with.
    pub alg: Algorithm,
    /// The `kid` it signs with and its JWK carries.
    pub kid: String,
    /// The private key.
    pub encoding: EncodingKey,
    /// The public key, PEM (SubjectPublicKeyInfo).
    pub public_pem: String,
    /// The public key as a JWK.
    pub jwk: Value,
}

impl SigningKey {
    /// A new key for `alg` (RSA 2048, P-256, P-384 or Ed25519).
    pub fn generate(alg: Algorithm, kid: &str) -> SigningKey {
        let pkey: PKey<Private> = match alg {
            Algorithm::ES256 => ec(Nid::X9_62_PRIME256V1),
            Algorithm::ES384 => ec(Nid::SECP384R1),
            Algorithm::EdDSA => PKey::generate_ed25519().unwrap(),
            a if a.family() == AlgorithmFamily::Rsa => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
            a => panic!("{a:?} has no key pair"),
        };
        let private_pem = pkey.private_key_to_pem_pkcs8().unwrap();
        let encoding = match alg.family() {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&private_pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&private_pem),
            _ => EncodingKey::from_ed_pem(&private_pem),
        }
        .unwrap();
        let public_pem = String::from_utf8(pkey.public_key_to_pem().unwrap()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        let jwk = serde_json::to_value(&jwk).unwrap();
        SigningKey { alg, kid: kid.to_string(), encoding, public_pem, jwk }
    }

    /// A token with `claims`, signed with this key and carrying its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, claims, &self.encoding).unwrap()
    }

    /// Like [`SigningKey::sign`], with another header.
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        encode(header, claims, &self.encoding).unwrap()
    }
}

fn ec(curve: Nid) -> PKey<Private> {
    let group = EcGroup::from_curve_name(curve).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A JWKS document holding `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}
