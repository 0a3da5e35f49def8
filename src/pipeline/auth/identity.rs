//! Who a verified caller is: the principal the pipeline carries, the identity a JWT proved, and
//! how both are shown to upstreams (headers) and logs.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::tls::ClientCertificate;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API key, by index in [`Authenticator::keys`].
    ApiKey(usize),
    /// A JWT's claims, as verified (and possibly cached).
    Jwt(Arc<JwtIdentity>),
    /// A client certificate verified by the TLS handshake (mutual TLS), when no token was sent.
    Certificate(Arc<ClientCertificate>),
}

/// Whether `name` can be a permission: printable ASCII without `,` (the `X-Auth-Permissions`
/// separator) or `"` (so `keys generate` can quote it in the block it prints).
pub fn is_permission_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b'"')
}

/// A caller verified by a JWT: everything the later stages need, rendered once.
#[derive(Debug, PartialEq, Eq)]
pub struct JwtIdentity {
    /// Index of the issuer in [`JwtVerifier::issuers`].
    pub issuer: usize,
    /// `X-Auth-Subject`.
    pub subject: HeaderValue,
    /// The permissions granted by the permissions claim.
    pub permissions: Vec<Box<str>>,
    /// `X-Auth-Permissions`.
    pub permissions_header: HeaderValue,
    /// The `claims_to_headers` headers present in this token.
    pub claim_headers: Vec<(HeaderName, HeaderValue)>,
    /// `exp`, seconds since the epoch.
    pub expires_at: Option<u64>,
}

/// The identity headers of a verified request, borrowed from values rendered at load.
pub struct Identity<'a> {
    /// `X-Auth-Subject`.
    pub subject: &'a HeaderValue,
    /// `X-Auth-Method`.
    pub method: HeaderValue,
    /// `X-Auth-Key-Id` (API keys).
    pub key_id: Option<&'a HeaderValue>,
    /// `X-Auth-Issuer` (JWTs).
    pub issuer: Option<&'a HeaderValue>,
    /// `X-Auth-Permissions`.
    pub permissions: &'a HeaderValue,
    /// The `claims_to_headers` headers (JWTs).
    pub claims: &'a [(HeaderName, HeaderValue)],
}

/// A verified caller as logs show it.
#[derive(Debug)]
pub struct PrincipalSummary<'a> {
    /// `api_key`, `jwt` or `mtls`.
    pub method: &'static str,
    /// The API key's id.
    pub key_id: Option<&'a str>,
    /// The subject (raw bytes of the identity header; redact before logging).
    pub subject: &'a [u8],
    /// The JWT issuer's configured name.
    pub issuer: Option<&'a str>,
}

/// A credential as presented, for the log of a failure.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented {
    /// `api_key`, `jwt`, `none`, or `unknown` (unreadable).
    pub method: &'static str,
    /// The first 4 characters of an API key of 16 or more (printable ASCII only).
    pub key_prefix: Option<String>,
}
