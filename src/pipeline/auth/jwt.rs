//! JWT verification: issuers, their keys, and the claims that become the caller's identity.
//!
//! The order of checks is chosen so that a forged token costs as little as possible and can
//! never pick its own verification rules:
//!
//! 1. the verified-token cache (a SHA-256 of the token; hits skip everything below);
//! 2. the header is decoded; the token's `iss` (read unverified, only to choose) selects the
//!    issuer — before any signature work, and only among configured issuers;
//! 3. the header's `alg` must be in that issuer's allow-list (`none` cannot even be parsed);
//! 4. the `kid` selects a key from the issuer's own set: it is only ever compared, never used
//!    as a path or URL, and embedded `jwk`/`jku`/`x5u` headers are ignored;
//! 5. the key's type must match `alg` (an RSA public key is never an HMAC secret);
//! 6. `jsonwebtoken` verifies the signature and `exp`, `nbf`, `iss`, `aud` with the issuer's
//!    leeway; `iat` in the future is refused here;
//! 7. the subject, permissions and mapped claims are rendered into header values once, and the
//!    result is cached until the token expires (at the latest).

use std::str::FromStr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::identity::{is_permission_name, JwtIdentity};
use super::jwks::RemoteJwks;
use super::keys::{KeyMiss, KeySet};
use super::token_cache::{token_digest, TokenCache};
use crate::error::AuthFailure;

/// Every algorithm family, in the order [`family_index`] numbers them.
const FAMILIES: [AlgorithmFamily; 4] =
    [AlgorithmFamily::Hmac, AlgorithmFamily::Rsa, AlgorithmFamily::Ec, AlgorithmFamily::Ed];

fn family_index(family: AlgorithmFamily) -> usize {
    match family {
        AlgorithmFamily::Hmac => 0,
        AlgorithmFamily::Rsa => 1,
        AlgorithmFamily::Ec => 2,
        AlgorithmFamily::Ed => 3,
    }
}

/// Where an issuer's keys come from.
pub enum KeySource {
    /// Fixed at load: `secret`, `public_key_file` or `jwks_file`.
    Static(Arc<KeySet>),
    /// `jwks_url`: refreshed in the background.
    Remote(Arc<RemoteJwks>),
}

impl KeySource {
    fn current(&self) -> Arc<KeySet> {
        match self {
            KeySource::Static(set) => set.clone(),
            KeySource::Remote(remote) => remote.keys(),
        }
    }

    fn generation(&self) -> u64 {
        match self {
            KeySource::Static(set) => set.generation,
            KeySource::Remote(remote) => remote.generation(),
        }
    }
}

/// One validated `[[auth.jwt]]` entry.
pub struct Issuer {
    /// Name for logs and metrics.
    pub name: Box<str>,
    /// The expected `iss`.
    pub issuer: Box<str>,
    /// `X-Auth-Issuer`, rendered at load.
    pub issuer_header: HeaderValue,
    /// The algorithm allow-list.
    pub algorithms: Vec<Algorithm>,
    /// The keys.
    pub keys: KeySource,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// The claim holding the subject.
    pub subject_claim: Box<str>,
    /// The claim holding permissions (a space-separated string or an array).
    pub permissions_claim: Box<str>,
    /// Claims copied into `X-Auth-*` headers.
    pub claims_to_headers: Vec<(Box<str>, HeaderName)>,
    /// The `typ` a token must carry, lower case, without `application/`.
    pub required_typ: Option<Box<str>>,
    /// One validation per key family the allow-list uses: `jsonwebtoken` refuses a validation
    /// whose algorithms span families, which is also what stops HS/RS key confusion.
    validations: [Option<Validation>; 4],
}

/// The settings of an issuer, before its validations are derived.
pub struct IssuerSettings {
    /// Name for logs and metrics.
    pub name: String,
    /// The expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values (at least one).
    pub audiences: Vec<String>,
    /// The algorithm allow-list.
    pub algorithms: Vec<Algorithm>,
    /// The keys.
    pub keys: KeySource,
    /// Seconds of clock skew allowed.
    pub leeway: u64,
    /// Whether `exp` must be present.
    pub require_exp: bool,
    /// The claim holding the subject.
    pub subject_claim: String,
    /// The claim holding permissions.
    pub permissions_claim: String,
    /// Claims copied into `X-Auth-*` headers.
    pub claims_to_headers: Vec<(String, HeaderName)>,
    /// The `typ` header a token must carry (e.g. `at+jwt`), when set.
    pub required_typ: Option<String>,
}

impl Issuer {
    /// Derives the per-family validations. `Err` when the issuer name is not a header value.
    pub fn new(s: IssuerSettings) -> Result<Self, String> {
        let issuer_header =
            HeaderValue::from_str(&s.issuer).map_err(|_| "is not printable ASCII (it becomes X-Auth-Issuer)")?;
        let validations = FAMILIES.map(|family| {
            let algorithms: Vec<Algorithm> = s.algorithms.iter().copied().filter(|a| a.family() == family).collect();
            if algorithms.is_empty() {
                return None;
            }
            let mut v = Validation::new_for_family(family);
            v.algorithms = algorithms;
            v.leeway = s.leeway;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            v.set_audience(&s.audiences);
            v.set_issuer(&[&s.issuer]);
            let mut required = vec!["iss", "aud"];
            if s.require_exp {
                required.push("exp");
            }
            v.set_required_spec_claims(&required);
            Some(v)
        });
        Ok(Issuer {
            name: s.name.into(),
            issuer: s.issuer.into(),
            issuer_header,
            algorithms: s.algorithms,
            keys: s.keys,
            leeway: s.leeway,
            subject_claim: s.subject_claim.into(),
            permissions_claim: s.permissions_claim.into(),
            claims_to_headers: s.claims_to_headers.into_iter().map(|(c, h)| (c.into(), h)).collect(),
            required_typ: s.required_typ.map(|t| media_subtype(&t).to_ascii_lowercase().into()),
            validations,
        })
    }
}

/// Why a token was not accepted.
#[derive(Debug)]
pub enum JwtRejection {
    /// Refused.
    Failure(AuthFailure),
    /// No key of a remote set fits the token: a refresh may bring it. Carries the set and the
    /// generation that was searched.
    KeyNotFound(Arc<RemoteJwks>, u64),
}

impl From<AuthFailure> for JwtRejection {
    fn from(f: AuthFailure) -> Self {
        JwtRejection::Failure(f)
    }
}

/// All `[[auth.jwt]]` issuers and the verified-token cache.
#[derive(Default)]
pub struct JwtVerifier {
    /// The issuers, in config order.
    pub issuers: Vec<Issuer>,
    /// Verified tokens; `None` when `auth.token_cache_size = 0`.
    pub cache: Option<TokenCache>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier").field("issuers", &self.issuers.len()).finish_non_exhaustive()
    }
}

/// The only claim read before the signature is checked.
#[derive(Deserialize)]
struct IssuerOnly {
    iss: Option<String>,
}

impl JwtVerifier {
    /// Whether any issuer is configured.
    pub fn is_enabled(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// After a reload: each remote key set starts from the keys of the same issuer (same name,
    /// URL and algorithms) in `previous`, instead of empty until its first fetch.
    pub fn adopt_key_sets(&self, previous: &JwtVerifier) {
        for issuer in &self.issuers {
            let KeySource::Remote(set) = &issuer.keys else { continue };
            let same = previous.issuers.iter().find(|old| {
                old.name == issuer.name
                    && old.algorithms == issuer.algorithms
                    && matches!(&old.keys, KeySource::Remote(o) if o.settings().url == set.settings().url)
            });
            if let Some(KeySource::Remote(old)) = same.map(|o| &o.keys) {
                set.adopt_keys(old);
            }
        }
    }

    /// The remote key sets, for the background refresher.
    pub fn remote_key_sets(&self) -> Vec<Arc<RemoteJwks>> {
        self.issuers
            .iter()
            .filter_map(|i| match &i.keys {
                KeySource::Remote(r) => Some(r.clone()),
                KeySource::Static(_) => None,
            })
            .collect()
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Arc<JwtIdentity>, JwtRejection> {
        let digest = self.cache.as_ref().map(|_| token_digest(token));
        if let (Some(cache), Some(digest)) = (&self.cache, &digest) {
            if let Some(hit) = cache.get(digest, now, |i| self.issuers.get(i).map(|i| i.keys.generation())) {
                return Ok(hit);
            }
        }

        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::MalformedToken)?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
            return Err(AuthFailure::MalformedToken.into());
        }
        let index = self.choose_issuer(token)?;
        let issuer = &self.issuers[index];
        if !issuer.algorithms.contains(&header.alg) {
            return Err(AuthFailure::AlgorithmNotAllowed.into());
        }
        if let Some(required) = &issuer.required_typ {
            // An ID token (typ JWT, or none) is not an access token (RFC 9068 §4): refused
            // before any signature work.
            let typ = header.typ.as_deref().map(media_subtype);
            if !typ.is_some_and(|t| t.eq_ignore_ascii_case(required)) {
                return Err(AuthFailure::WrongTokenType.into());
            }
        }
        let keys = issuer.keys.current();
        let key = match keys.select(header.kid.as_deref(), header.alg) {
            Ok(key) => key,
            Err(KeyMiss::WrongType) => return Err(AuthFailure::WrongKeyType.into()),
            Err(KeyMiss::Ambiguous) => return Err(AuthFailure::UnknownSigningKey.into()),
            Err(KeyMiss::Unknown) => {
                return Err(match &issuer.keys {
                    KeySource::Remote(remote) => JwtRejection::KeyNotFound(remote.clone(), keys.generation),
                    KeySource::Static(_) => JwtRejection::Failure(AuthFailure::UnknownSigningKey),
                })
            }
        };
        let Some(validation) = &issuer.validations[family_index(header.alg.family())] else {
            return Err(AuthFailure::AlgorithmNotAllowed.into());
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| failure_of(e.kind()))?
            .claims;

        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_f64().ok_or(AuthFailure::InvalidClaims)?;
            if iat > now.saturating_add(issuer.leeway) as f64 {
                return Err(AuthFailure::NotYetValid.into());
            }
        }
        let identity = Arc::new(identity_of(index, issuer, &claims)?);
        if let (Some(cache), Some(digest)) = (&self.cache, digest) {
            cache.put(digest, keys.generation, identity.clone(), now);
        }
        Ok(identity)
    }

    /// The issuer whose rules apply: the only one, or the one whose `iss` the token names.
    fn choose_issuer(&self, token: &[u8]) -> Result<usize, AuthFailure> {
        if self.issuers.len() == 1 {
            // `iss` is still checked, after the signature, by the issuer's validation.
            return Ok(0);
        }
        let claims: IssuerOnly =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| AuthFailure::MalformedToken)?;
        let iss = claims.iss.ok_or(AuthFailure::UnknownIssuer)?;
        self.issuers.iter().position(|i| *i.issuer == *iss).ok_or(AuthFailure::UnknownIssuer)
    }
}

/// A `typ` as RFC 7515 §4.1.9 compares it: `application/at+jwt` and `at+jwt` are the same type.
fn media_subtype(typ: &str) -> &str {
    match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    }
}

/// The failure a `jsonwebtoken` error stands for.
fn failure_of(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::InvalidSignature => AuthFailure::BadSignature,
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::UnknownIssuer,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::InvalidSubject => {
            AuthFailure::InvalidClaims
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            AuthFailure::AlgorithmNotAllowed
        }
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthFailure::WrongKeyType
        }
        _ => AuthFailure::MalformedToken,
    }
}

/// Renders the verified claims into the identity the later stages use.
fn identity_of(index: usize, issuer: &Issuer, claims: &Map<String, Value>) -> Result<JwtIdentity, AuthFailure> {
    let subject = claims
        .get(&*issuer.subject_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.trim() == *s)
        .and_then(|s| HeaderValue::from_str(s).ok())
        .ok_or(AuthFailure::InvalidClaims)?;

    let mut permissions: Vec<Box<str>> = Vec::new();
    let mut grant = |p: &str| {
        // A name that could not travel in X-Auth-Permissions grants nothing.
        if is_permission_name(p) && !permissions.iter().any(|q| **q == *p) {
            permissions.push(p.into());
        }
    };
    match claims.get(&*issuer.permissions_claim) {
        Some(Value::String(s)) => s.split_ascii_whitespace().for_each(&mut grant),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(&mut grant),
        _ => {}
    }
    let permissions_header = HeaderValue::from_str(&permissions.join(",")).map_err(|_| AuthFailure::InvalidClaims)?;

    let claim_headers = issuer
        .claims_to_headers
        .iter()
        .filter_map(|(claim, header)| Some((header.clone(), claim_header_value(claims.get(&**claim)?)?)))
        .collect();

    let expires_at = claims.get("exp").and_then(Value::as_f64).map(|e| e.max(0.0) as u64);
    Ok(JwtIdentity { issuer: index, subject, permissions, permissions_header, claim_headers, expires_at })
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON, arrays of
/// strings comma-joined. Anything else (objects, values that cannot be a header) is left out.
fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(_) | Value::Bool(_) => value.to_string(),
        Value::Array(items) => {
            // An item with a comma would read as two items to an upstream that splits the list.
            let items: Vec<&str> =
                items.iter().map(|i| i.as_str().filter(|s| !s.contains(','))).collect::<Option<_>>()?;
            if items.is_empty() {
                return None;
            }
            items.join(",")
        }
        _ => return None,
    };
    if text.is_empty() || text.trim() != text {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

/// Parses an algorithm name of the allow-list. `none` is never one.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" is never accepted: an unsigned token proves nothing".into());
    }
    Algorithm::from_str(name).map_err(|_| format!("\"{name}\" is not a JWT signature algorithm"))
}

/// The names [`parse_algorithm`] accepts, for error messages.
pub const ALGORITHM_NAMES: &str = "HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

#[cfg(test)]
mod tests {
    use super::super::keys::VerifyKey;
    use super::*;
    use jsonwebtoken::DecodingKey;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    fn verifier(cache: bool) -> JwtVerifier {
        let keys = KeySet {
            generation: 0,
            keys: vec![VerifyKey { kid: None, alg: None, key: DecodingKey::from_secret(SECRET) }],
        };
        let issuer = Issuer::new(IssuerSettings {
            name: "test".into(),
            issuer: "https://idp.test/".into(),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::HS256],
            keys: KeySource::Static(Arc::new(keys)),
            leeway: 0,
            require_exp: true,
            subject_claim: "sub".into(),
            permissions_claim: "scope".into(),
            claims_to_headers: vec![("email".into(), HeaderName::from_static("x-auth-email"))],
            required_typ: None,
        })
        .unwrap();
        JwtVerifier { issuers: vec![issuer], cache: cache.then(|| TokenCache::new(100)) }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn base() -> Value {
        json!({"iss": "https://idp.test/", "aud": "api", "sub": "user-1", "exp": now() + 600,
               "scope": "read_models write_models bad,name", "email": "a@example.com"})
    }

    fn failure(v: &JwtVerifier, t: &str) -> AuthFailure {
        match v.verify(t.as_bytes(), now()) {
            Err(JwtRejection::Failure(f)) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renders_the_identity() {
        let v = verifier(false);
        let id = v.verify(token(base()).as_bytes(), now()).unwrap();
        assert_eq!(id.subject, "user-1");
        assert_eq!(id.permissions_header, "read_models,write_models");
        assert_eq!(
            id.claim_headers,
            vec![(HeaderName::from_static("x-auth-email"), HeaderValue::from_static("a@example.com"))]
        );
    }

    #[test]
    fn claims_are_checked() {
        let v = verifier(false);
        let with = |k: &str, val: Value| {
            let mut c = base();
            c[k] = val;
            token(c)
        };
        let without = |k: &str| {
            let mut c = base();
            c.as_object_mut().unwrap().remove(k);
            token(c)
        };
        assert_eq!(failure(&v, &with("exp", json!(now() - 10))), AuthFailure::Expired);
        assert_eq!(failure(&v, &without("exp")), AuthFailure::InvalidClaims);
        assert_eq!(failure(&v, &with("nbf", json!(now() + 600))), AuthFailure::NotYetValid);
        assert_eq!(failure(&v, &with("iat", json!(now() + 600))), AuthFailure::NotYetValid);
        assert_eq!(failure(&v, &with("aud", json!("other"))), AuthFailure::WrongAudience);
        assert_eq!(failure(&v, &without("aud")), AuthFailure::InvalidClaims);
        assert_eq!(failure(&v, &with("iss", json!("https://evil.test/"))), AuthFailure::UnknownIssuer);
        assert_eq!(failure(&v, &without("sub")), AuthFailure::InvalidClaims);
        assert_eq!(failure(&v, &with("sub", json!("line\nbreak"))), AuthFailure::InvalidClaims);
        assert_eq!(failure(&v, "a.b.c"), AuthFailure::MalformedToken);
        let t = token(base());
        let (rest, sig) = t.rsplit_once('.').unwrap();
        let flipped = format!(
            "{rest}.{}",
            if sig.starts_with('A') { sig.replacen('A', "B", 1) } else { format!("A{}", &sig[1..]) }
        );
        assert_eq!(failure(&v, &flipped), AuthFailure::BadSignature);
    }

    #[test]
    fn cache_hits_skip_verification_but_not_expiry() {
        let v = verifier(true);
        let t = token(base());
        let first = v.verify(t.as_bytes(), now()).unwrap();
        let second = v.verify(t.as_bytes(), now()).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "the second verification is a cache hit");
        // The entry is served only while the token is unexpired and its issuer's keys unchanged.
        let cache = v.cache.as_ref().unwrap();
        let digest = token_digest(t.as_bytes());
        assert!(cache.get(&digest, now(), |_| Some(0)).is_some());
        assert!(cache.get(&digest, now() + 3600, |_| Some(0)).is_none(), "served past its exp");
        assert!(cache.get(&digest, now(), |_| Some(1)).is_none(), "served after a key rotation");
        let mut other = digest;
        other[0] ^= 1;
        assert!(cache.get(&other, now(), |_| Some(0)).is_none());
    }

    #[test]
    fn key_selection() {
        let rsa_like = VerifyKey {
            kid: Some("r1".into()),
            alg: None,
            key: DecodingKey::from_rsa_raw_components(b"\x01", b"\x01"),
        };
        let hmac = VerifyKey { kid: None, alg: None, key: DecodingKey::from_secret(SECRET) };
        let set = KeySet { generation: 0, keys: vec![rsa_like.clone(), hmac] };
        assert_eq!(set.select(Some("r1"), Algorithm::HS256).err(), Some(KeyMiss::WrongType));
        assert!(set.select(Some("r1"), Algorithm::RS256).is_ok());
        assert!(set.select(Some("other"), Algorithm::HS256).is_ok(), "a key without kid serves any kid");
        assert_eq!(set.select(Some("other"), Algorithm::RS256).err(), Some(KeyMiss::Unknown));
        let two =
            KeySet { generation: 0, keys: vec![rsa_like.clone(), VerifyKey { kid: Some("r2".into()), ..rsa_like }] };
        assert_eq!(two.select(None, Algorithm::RS256).err(), Some(KeyMiss::Ambiguous));
    }

    /// An RSA key pair: (signing key, verification key).
    fn rsa_pair() -> (EncodingKey, DecodingKey) {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pkey = openssl::pkey::PKey::from_rsa(rsa).unwrap();
        let private = EncodingKey::from_rsa_pem(&pkey.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let public = pkey.public_key_to_pem().unwrap();
        (private, DecodingKey::from_rsa_pem(&public).unwrap())
    }

    fn rsa_issuer(iss: &str, algorithms: Vec<Algorithm>, key: DecodingKey) -> Issuer {
        let keys = KeySet { generation: 0, keys: vec![VerifyKey { kid: None, alg: None, key }] };
        Issuer::new(IssuerSettings {
            name: iss.into(),
            issuer: iss.into(),
            audiences: vec!["api".into()],
            algorithms,
            keys: KeySource::Static(Arc::new(keys)),
            leeway: 0,
            require_exp: true,
            subject_claim: "sub".into(),
            permissions_claim: "scope".into(),
            claims_to_headers: vec![],
            required_typ: None,
        })
        .unwrap()
    }

    #[test]
    fn an_rsa_public_key_is_never_an_hmac_secret() {
        // Even an issuer that (against the config rules) allowed HS256 next to RS256 over an RSA
        // key refuses an HS256 token keyed with that public key's PEM.
        let rsa = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let public_pem = rsa.public_key_to_pem().unwrap();
        let issuer =
            rsa_issuer("a", vec![Algorithm::RS256, Algorithm::HS256], DecodingKey::from_rsa_pem(&public_pem).unwrap());
        let v = JwtVerifier { issuers: vec![issuer], cache: None };
        let claims = json!({"iss": "a", "aud": "api", "sub": "s", "exp": now() + 60});
        let forged = encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&public_pem)).unwrap();
        assert_eq!(failure(&v, &forged), AuthFailure::WrongKeyType);
    }

    #[test]
    fn a_token_signed_by_another_issuers_key_fails_its_signature() {
        let (sign_a, verify_a) = rsa_pair();
        let (sign_b, verify_b) = rsa_pair();
        let v = JwtVerifier {
            issuers: vec![
                rsa_issuer("a", vec![Algorithm::RS256], verify_a),
                rsa_issuer("b", vec![Algorithm::RS256], verify_b),
            ],
            cache: None,
        };
        let claims = json!({"iss": "a", "aud": "api", "sub": "s", "exp": now() + 60});
        let header = Header::new(Algorithm::RS256);
        assert!(v.verify(encode(&header, &claims, &sign_a).unwrap().as_bytes(), now()).is_ok());
        assert_eq!(failure(&v, &encode(&header, &claims, &sign_b).unwrap()), AuthFailure::BadSignature);
        let unknown = json!({"iss": "c", "aud": "api", "sub": "s", "exp": now() + 60});
        assert_eq!(failure(&v, &encode(&header, &unknown, &sign_a).unwrap()), AuthFailure::UnknownIssuer);
    }

    #[test]
    fn a_single_issuer_still_requires_iss() {
        let v = verifier(false);
        let mut c = base();
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(failure(&v, &token(c)), AuthFailure::InvalidClaims);
    }

    #[test]
    fn claim_headers_cannot_forge_list_items() {
        assert_eq!(claim_header_value(&json!(["a", "b"])), Some(HeaderValue::from_static("a,b")));
        assert_eq!(claim_header_value(&json!(["admins,ops"])), None);
        assert_eq!(claim_header_value(&json!([])), None);
        assert_eq!(claim_header_value(&json!({"a": 1})), None);
        assert_eq!(claim_header_value(&json!(42)), Some(HeaderValue::from_static("42")));
        assert_eq!(claim_header_value(&json!("x\ny")), None);
    }

    #[test]
    fn a_required_typ_refuses_id_tokens() {
        let mut v = verifier(false);
        v.issuers[0].required_typ = Some("at+jwt".into());
        let with_typ = |typ: Option<&str>| {
            let mut header = Header::new(Algorithm::HS256);
            header.typ = typ.map(str::to_string);
            encode(&header, &base(), &EncodingKey::from_secret(SECRET)).unwrap()
        };
        for typ in [Some("at+jwt"), Some("AT+JWT"), Some("application/at+jwt")] {
            assert!(v.verify(with_typ(typ).as_bytes(), now()).is_ok(), "{typ:?}");
        }
        for typ in [Some("JWT"), None, Some("at+jwt2"), Some("application/jwt"), Some("")] {
            assert_eq!(failure(&v, &with_typ(typ)), AuthFailure::WrongTokenType, "{typ:?}");
        }
        assert_eq!(media_subtype("Application/AT+JWT"), "AT+JWT");
    }

    #[test]
    fn none_is_never_an_algorithm() {
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("None").is_err());
        assert_eq!(parse_algorithm("EdDSA"), Ok(Algorithm::EdDSA));
        assert!(parse_algorithm("HS1").is_err());
    }
}
