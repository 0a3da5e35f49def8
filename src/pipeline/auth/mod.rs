//! Authentication: who is calling.
//!
//! Credentials are read from the configured API-key headers (default `X-API-Key`) and from
//! `Authorization: Bearer <token>`. Exactly one credential may be presented: two different ones,
//! a repeated header, an empty or oversize bearer value are refused as malformed rather than
//! guessed at. A bearer value shaped like a JWT (three dot-separated segments) is a JWT, verified
//! by [`jwt`]; anything else is an API key, verified by [`apikey`].
//!
//! The route's `auth` mode then decides: `none` never looks at credentials, `optional` lets
//! anonymous requests through but refuses bad credentials, `required` (the default) refuses both.

pub mod apikey;
pub mod identity;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod token_cache;

use std::sync::Arc;
use std::time::SystemTime;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::{AuthFailure, GatewayError};
use crate::tls::ClientCertificate;
use apikey::ApiKeys;
pub use identity::{is_permission_name, Identity, JwtIdentity, Presented, Principal, PrincipalSummary};
use jwt::{JwtRejection, JwtVerifier};

/// The longest credential accepted: a bearer token or API key over this is refused unread.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// How a route authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A valid credential is needed (the default: deny unless configured otherwise).
    Required,
    /// A credential is checked when sent; anonymous requests pass.
    Optional,
    /// No credential is looked at.
    None,
}

/// A route's `credentials`: which kinds of caller may satisfy it. Permissions are names anyone
/// who issues credentials can grant (a partner's IdP can mint `scope: "admin"`), so a route can
/// say whose grants count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptedCredentials {
    /// `api_key`: the gateway's own API keys.
    pub api_key: bool,
    /// `mtls`: a client certificate verified by the TLS handshake.
    pub mtls: bool,
    /// `jwt`: tokens of any issuer.
    pub any_jwt: bool,
    /// `jwt:NAME`: tokens of these issuers (indices in [`JwtVerifier::issuers`]).
    pub jwt_issuers: Vec<usize>,
}

impl AcceptedCredentials {
    /// On an `optional` route, a client certificate the route does not accept was offered
    /// unasked (a browser sends one whenever it holds one): the caller is anonymous rather than
    /// refused. Any other principal is kept, for [`Authenticator::authorize`] to judge.
    pub fn ambient(
        accepts: Option<&AcceptedCredentials>,
        mode: AuthMode,
        principal: Option<Principal>,
    ) -> Option<Principal> {
        match (&principal, accepts) {
            (Some(Principal::Certificate(_)), Some(accepts)) if mode == AuthMode::Optional && !accepts.mtls => None,
            _ => principal,
        }
    }

    /// Whether `principal` is of a kind this route accepts.
    pub fn accepts(&self, principal: &Principal) -> bool {
        match principal {
            Principal::ApiKey(_) => self.api_key,
            Principal::Certificate(_) => self.mtls,
            Principal::Jwt(identity) => self.any_jwt || self.jwt_issuers.contains(&identity.issuer),
        }
    }
}

/// A credential as presented, before verification.
#[derive(Debug, PartialEq, Eq)]
enum Credential<'a> {
    None,
    ApiKey(&'a [u8]),
    Jwt(&'a [u8]),
}

/// The validated `[auth]` section.
#[derive(Debug)]
pub struct Authenticator {
    /// Headers an API key may arrive in.
    pub api_key_headers: Vec<HeaderName>,
    /// Forward `Authorization` and the API-key headers to upstreams.
    pub forward_credentials: bool,
    /// The API keys.
    pub keys: ApiKeys,
    /// The JWT issuers.
    pub jwt: JwtVerifier,
}

impl Authenticator {
    /// An authenticator that reads API keys from `api_key_headers` (and `Authorization:
    /// Bearer`), with no keys or issuers yet and credentials stripped before forwarding.
    pub fn reading(api_key_headers: Vec<HeaderName>) -> Self {
        Authenticator {
            api_key_headers,
            forward_credentials: false,
            keys: ApiKeys::default(),
            jwt: JwtVerifier::default(),
        }
    }
}

/// The `X-Auth-Permissions` of a caller that holds none.
static NO_PERMISSIONS: HeaderValue = HeaderValue::from_static("");

impl Authenticator {
    /// Applies the route's auth mode: the verified principal, `None` for an anonymous request
    /// the route lets through, or 401.
    ///
    /// Awaits only when a JWT names a key its issuer's remote JWKS does not have: then it waits,
    /// at most `jwks_fetch_timeout`, for the refresh that may bring it.
    ///
    /// `certificate` is the client certificate the TLS handshake verified, if any: it is the
    /// caller when no credential is sent (a sent one always wins, and is checked).
    pub async fn authenticate(
        &self,
        mode: AuthMode,
        headers: &HeaderMap,
        certificate: Option<&Arc<ClientCertificate>>,
    ) -> Result<Option<Principal>, GatewayError> {
        if mode == AuthMode::None {
            return Ok(None);
        }
        let failure = match self.credential(headers) {
            Ok(Credential::None) if certificate.is_some() => {
                return Ok(certificate.map(|c| Principal::Certificate(c.clone())))
            }
            Ok(Credential::None) if mode == AuthMode::Optional => return Ok(None),
            Ok(Credential::None) => AuthFailure::Missing,
            Ok(Credential::ApiKey(key)) => match self.keys.verify(key, SystemTime::now()) {
                Ok(index) => return Ok(Some(Principal::ApiKey(index))),
                Err(failure) => failure,
            },
            Ok(Credential::Jwt(_)) if !self.jwt.is_enabled() => AuthFailure::UnsupportedToken,
            Ok(Credential::Jwt(token)) => match self.verify_jwt(token).await {
                Ok(identity) => return Ok(Some(Principal::Jwt(identity))),
                Err(failure) => failure,
            },
            Err(failure) => failure,
        };
        Err(GatewayError::AuthenticationFailed(failure))
    }

    /// Whether the request carries any credential the gateway reads.
    pub fn presents_credential(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(AUTHORIZATION) || self.api_key_headers.iter().any(|h| headers.contains_key(h))
    }

    async fn verify_jwt(&self, token: &[u8]) -> Result<Arc<JwtIdentity>, AuthFailure> {
        let now = jsonwebtoken::get_current_timestamp();
        match self.jwt.verify(token, now) {
            Ok(identity) => Ok(identity),
            Err(JwtRejection::Failure(failure)) => Err(failure),
            Err(JwtRejection::KeyNotFound(remote, searched)) => {
                if !remote.refresh_for_unknown_key(searched).await {
                    return Err(if remote.is_loaded() {
                        AuthFailure::UnknownSigningKey
                    } else {
                        AuthFailure::KeysUnavailable
                    });
                }
                match self.jwt.verify(token, jsonwebtoken::get_current_timestamp()) {
                    Ok(identity) => Ok(identity),
                    Err(JwtRejection::Failure(failure)) => Err(failure),
                    Err(JwtRejection::KeyNotFound(..)) => Err(AuthFailure::UnknownSigningKey),
                }
            }
        }
    }

    /// Checks that `principal` is of a kind the route `accepts` (all kinds when `None`), and
    /// holds every permission in `required`; 403 naming the first missing.
    pub fn authorize(
        &self,
        principal: Option<&Principal>,
        accepts: Option<&AcceptedCredentials>,
        required: &[Box<str>],
    ) -> Result<(), GatewayError> {
        if let (Some(principal), Some(accepts)) = (principal, accepts) {
            if !accepts.accepts(principal) {
                return Err(GatewayError::CredentialNotAccepted);
            }
        }
        let granted: &[Box<str>] = match principal {
            Some(Principal::ApiKey(i)) => &self.keys.get(*i).permissions,
            Some(Principal::Jwt(identity)) => &identity.permissions,
            // A certificate proves who the caller is, not what it may do.
            Some(Principal::Certificate(_)) => &[],
            None if required.is_empty() => return Ok(()),
            None => return Err(GatewayError::AuthenticationFailed(AuthFailure::Missing)),
        };
        match required.iter().find(|p| !granted.contains(p)) {
            Some(missing) => Err(GatewayError::PermissionDenied { missing: missing.clone() }),
            None => Ok(()),
        }
    }

    /// Who `principal` is, for identity-keyed rate limits: `("", key id)` for an API key,
    /// `(iss, sub)` for a JWT (an issuer is never empty, so the two never meet).
    pub fn limit_identity<'a>(&'a self, principal: &'a Principal) -> (&'a [u8], &'a [u8]) {
        match principal {
            Principal::ApiKey(i) => (b"", self.keys.get(*i).id.as_bytes()),
            Principal::Jwt(id) => {
                let issuer = self.jwt.issuers.get(id.issuer).map_or(&b""[..], |i| i.issuer_header.as_bytes());
                (issuer, id.subject.as_bytes())
            }
            // A NUL can be in no issuer header: certificates never share a key with tokens.
            Principal::Certificate(cert) => (b"\0mtls", cert.subject.as_bytes()),
        }
    }

    /// The identity headers for a principal.
    pub fn identity<'a>(&'a self, principal: &'a Principal) -> Identity<'a> {
        match principal {
            Principal::ApiKey(i) => {
                let key = self.keys.get(*i);
                Identity {
                    subject: &key.subject_header,
                    method: HeaderValue::from_static("api_key"),
                    key_id: Some(&key.id_header),
                    issuer: None,
                    permissions: &key.permissions_header,
                    claims: &[],
                }
            }
            Principal::Jwt(id) => Identity {
                subject: &id.subject,
                method: HeaderValue::from_static("jwt"),
                key_id: None,
                issuer: self.jwt.issuers.get(id.issuer).map(|i| &i.issuer_header),
                permissions: &id.permissions_header,
                claims: &id.claim_headers,
            },
            Principal::Certificate(cert) => Identity {
                subject: &cert.subject,
                method: HeaderValue::from_static("mtls"),
                key_id: None,
                issuer: Some(&cert.issuer),
                permissions: &NO_PERMISSIONS,
                claims: &[],
            },
        }
    }

    /// Who `principal` is, for logs.
    pub fn summary<'a>(&'a self, principal: &'a Principal) -> PrincipalSummary<'a> {
        match principal {
            Principal::ApiKey(i) => {
                let key = self.keys.get(*i);
                PrincipalSummary {
                    method: "api_key",
                    key_id: Some(&key.id),
                    subject: key.subject_header.as_bytes(),
                    issuer: None,
                }
            }
            Principal::Jwt(id) => PrincipalSummary {
                method: "jwt",
                key_id: None,
                subject: id.subject.as_bytes(),
                issuer: self.jwt.issuers.get(id.issuer).map(|i| &*i.name),
            },
            Principal::Certificate(cert) => {
                PrincipalSummary { method: "mtls", key_id: None, subject: cert.subject.as_bytes(), issuer: None }
            }
        }
    }

    /// What credential a request presented, for metrics and the audit log of a failure: its
    /// kind, and for an API key of at least 16 characters its first 4 (never more).
    pub fn presented(&self, headers: &HeaderMap) -> Presented {
        match self.credential(headers) {
            Ok(Credential::None) => Presented { method: "none", key_prefix: None },
            Ok(Credential::Jwt(_)) => Presented { method: "jwt", key_prefix: None },
            Ok(Credential::ApiKey(key)) => {
                let prefix = key.get(..4).filter(|_| key.len() >= 16).filter(|p| p.iter().all(u8::is_ascii_graphic));
                Presented { method: "api_key", key_prefix: prefix.map(|p| String::from_utf8_lossy(p).into_owned()) }
            }
            Err(_) => Presented { method: "unknown", key_prefix: None },
        }
    }

    fn credential<'h>(&self, headers: &'h HeaderMap) -> Result<Credential<'h>, AuthFailure> {
        let mut found: Option<&'h [u8]> = None;
        for name in &self.api_key_headers {
            let mut values = headers.get_all(name).iter();
            if let Some(value) = values.next() {
                if values.next().is_some() || found.is_some_and(|f| f != value.as_bytes()) {
                    return Err(AuthFailure::Malformed);
                }
                found = Some(value.as_bytes());
            }
        }
        let mut authorization = headers.get_all(AUTHORIZATION).iter();
        if let Some(value) = authorization.next() {
            if authorization.next().is_some() || found.is_some() {
                return Err(AuthFailure::Malformed);
            }
            let token = bearer_token(value.as_bytes()).ok_or(AuthFailure::Malformed)?;
            if token.len() > MAX_CREDENTIAL_LEN {
                return Err(AuthFailure::Malformed);
            }
            if token.iter().filter(|&&b| b == b'.').count() == 2 {
                return Ok(Credential::Jwt(token));
            }
            return Ok(Credential::ApiKey(token));
        }
        match found {
            Some(key) if key.is_empty() || key.len() > MAX_CREDENTIAL_LEN => Err(AuthFailure::Malformed),
            Some(key) => Ok(Credential::ApiKey(key)),
            None => Ok(Credential::None),
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, one space, no spaces in the token).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?;
    if token.is_empty() || token.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::apikey::{hash_line, parse_hash, ApiKey};
    use super::*;

    fn auth() -> Authenticator {
        let key = ApiKey::new(
            "ci",
            parse_hash(&hash_line("secret-key")).unwrap(),
            "service:ci",
            vec!["read_models".into(), "run_inference".into()],
            None,
            false,
        )
        .unwrap();
        Authenticator {
            keys: ApiKeys::new(vec![key]).unwrap(),
            ..Authenticator::reading(vec![HeaderName::from_static("x-api-key")])
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn failure(a: &Authenticator, mode: AuthMode, pairs: &[(&str, &str)]) -> AuthFailure {
        match block_on(a.authenticate(mode, &headers(pairs), None)) {
            Err(GatewayError::AuthenticationFailed(f)) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_the_key_in_either_place() {
        let a = auth();
        assert_eq!(
            block_on(a.authenticate(AuthMode::Required, &headers(&[("x-api-key", "secret-key")]), None)),
            Ok(Some(Principal::ApiKey(0)))
        );
        assert_eq!(
            block_on(a.authenticate(AuthMode::Required, &headers(&[("authorization", "bearer secret-key")]), None)),
            Ok(Some(Principal::ApiKey(0)))
        );
        // The same key in both places is still two credentials: refused, never guessed at.
        let both = [("x-api-key", "secret-key"), ("authorization", "Bearer secret-key")];
        assert_eq!(failure(&a, AuthMode::Required, &both), AuthFailure::Malformed);
    }

    #[test]
    fn modes() {
        let a = auth();
        assert_eq!(block_on(a.authenticate(AuthMode::None, &headers(&[("x-api-key", "wrong")]), None)), Ok(None));
        assert_eq!(block_on(a.authenticate(AuthMode::Optional, &headers(&[]), None)), Ok(None));
        assert_eq!(failure(&a, AuthMode::Optional, &[("x-api-key", "wrong")]), AuthFailure::UnknownKey);
        assert_eq!(failure(&a, AuthMode::Required, &[]), AuthFailure::Missing);
    }

    #[test]
    fn malformed_credentials() {
        let a = auth();
        let long = "k".repeat(MAX_CREDENTIAL_LEN + 1);
        let bearer_long = format!("Bearer {long}");
        for pairs in [
            &[("authorization", "Bearer")][..],
            &[("authorization", "Bearer ")],
            &[("authorization", "Bearer a b")],
            &[("authorization", "Basic dTpw")],
            &[("authorization", "Bearer secret-key"), ("authorization", "Bearer secret-key")],
            &[("x-api-key", "secret-key"), ("x-api-key", "secret-key")],
            &[("x-api-key", "secret-key"), ("authorization", "Bearer secret-key")],
            &[("x-api-key", "")],
            &[("x-api-key", long.as_str())],
            &[("authorization", bearer_long.as_str())],
        ] {
            assert_eq!(failure(&a, AuthMode::Required, pairs), AuthFailure::Malformed, "{pairs:?}");
        }
        assert_eq!(
            failure(&a, AuthMode::Required, &[("authorization", "Bearer a.b.c")]),
            AuthFailure::UnsupportedToken
        );
    }

    #[test]
    fn presented_credentials_reveal_at_most_four_characters() {
        let a = auth();
        let p = a.presented(&headers(&[("x-api-key", "pcs_0123456789abcdef")]));
        assert_eq!(p, Presented { method: "api_key", key_prefix: Some("pcs_".into()) });
        // A short key would be given away by its first characters: no prefix.
        assert_eq!(a.presented(&headers(&[("x-api-key", "short-key")])).key_prefix, None);
        assert_eq!(a.presented(&headers(&[("authorization", "Bearer a.b.c")])).method, "jwt");
        assert_eq!(a.presented(&headers(&[])).method, "none");
        assert_eq!(a.presented(&headers(&[("authorization", "Basic dTpw")])).method, "unknown");
    }

    #[test]
    fn permissions() {
        let a = auth();
        let p = Some(&Principal::ApiKey(0));
        assert_eq!(a.authorize(p, None, &["read_models".into()]), Ok(()));
        assert_eq!(
            a.authorize(p, None, &["read_models".into(), "write_models".into()]),
            Err(GatewayError::PermissionDenied { missing: "write_models".into() })
        );
        assert_eq!(a.authorize(None, None, &[]), Ok(()));
    }

    #[test]
    fn a_route_accepts_only_the_credential_kinds_it_names() {
        let a = auth();
        let key = Principal::ApiKey(0);
        let jwt_of = |issuer| {
            Principal::Jwt(Arc::new(JwtIdentity {
                issuer,
                subject: HeaderValue::from_static("s"),
                permissions: vec!["read_models".into()],
                permissions_header: HeaderValue::from_static("read_models"),
                claim_headers: vec![],
                expires_at: None,
            }))
        };
        let partner_only = AcceptedCredentials { jwt_issuers: vec![1], ..AcceptedCredentials::default() };
        let read = ["read_models".into()];
        assert_eq!(a.authorize(Some(&key), Some(&partner_only), &read), Err(GatewayError::CredentialNotAccepted));
        assert_eq!(a.authorize(Some(&jwt_of(0)), Some(&partner_only), &read), Err(GatewayError::CredentialNotAccepted));
        assert_eq!(a.authorize(Some(&jwt_of(1)), Some(&partner_only), &read), Ok(()));
        let keys_and_any_jwt = AcceptedCredentials { api_key: true, any_jwt: true, ..AcceptedCredentials::default() };
        assert_eq!(a.authorize(Some(&key), Some(&keys_and_any_jwt), &read), Ok(()));
        assert_eq!(a.authorize(Some(&jwt_of(0)), Some(&keys_and_any_jwt), &read), Ok(()));
        // Anonymous callers on an optional route are not a credential of another kind, and
        // neither is a certificate a browser offered there unasked.
        assert_eq!(a.authorize(None, Some(&partner_only), &[]), Ok(()));
        let certificate = Principal::Certificate(Arc::new(ClientCertificate {
            subject: HeaderValue::from_static("CN=alice"),
            issuer: HeaderValue::from_static("CN=ca"),
        }));
        let ambient = |mode| AcceptedCredentials::ambient(Some(&partner_only), mode, Some(certificate.clone()));
        assert_eq!(ambient(AuthMode::Optional), None);
        assert_eq!(ambient(AuthMode::Required), Some(certificate.clone()));
        let with_mtls = AcceptedCredentials { mtls: true, ..AcceptedCredentials::default() };
        let kept = AcceptedCredentials::ambient(Some(&with_mtls), AuthMode::Optional, Some(certificate.clone()));
        assert_eq!(kept, Some(certificate));
    }
}
