//! The one error type of the request path.
//!
//! Every refusal the gateway makes is a [`GatewayError`]; its status, JSON body, extra headers and
//! metric label are decided here and nowhere else. Messages are fixed strings written for the
//! client: no paths, no Rust error text, no upstream addresses.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use serde::Serialize;

/// What a refused CORS preflight asked for that is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorsRejection {
    /// The `Origin`.
    Origin,
    /// The `Access-Control-Request-Method`.
    Method,
    /// One of the `Access-Control-Request-Headers`.
    Headers,
}

impl CorsRejection {
    /// `origin`, `method` or `headers`.
    pub fn label(self) -> &'static str {
        match self {
            CorsRejection::Origin => "origin",
            CorsRejection::Method => "method",
            CorsRejection::Headers => "headers",
        }
    }
}

/// Why authentication failed: a bounded set, for metrics and audit logs. Clients see one
/// generic message whatever the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential was presented.
    Missing,
    /// The credential could not be read (empty, repeated, two kinds at once, oversize).
    Malformed,
    /// No key has this hash.
    UnknownKey,
    /// The key has expired.
    Expired,
    /// The key is disabled.
    Disabled,
    /// A JWT was presented and no issuer is configured to verify it.
    UnsupportedToken,
    /// The JWT could not be decoded, or uses a header extension we do not understand.
    MalformedToken,
    /// The JWT's `iss` is not a configured issuer.
    UnknownIssuer,
    /// The JWT's `alg` is not in its issuer's allow-list.
    AlgorithmNotAllowed,
    /// No key of the issuer has the JWT's `kid` (or, without a `kid`, exactly one fits).
    UnknownSigningKey,
    /// The key the JWT names is of another type or algorithm than its `alg`.
    WrongKeyType,
    /// The JWT's signature does not verify.
    BadSignature,
    /// The JWT's `nbf` or `iat` is in the future.
    NotYetValid,
    /// The JWT is for another audience.
    WrongAudience,
    /// The JWT's `typ` is not the issuer's `required_typ` (an ID token used as an access token).
    WrongTokenType,
    /// A required claim is missing or malformed (`exp`, `aud`, `iss`, the subject).
    InvalidClaims,
    /// The issuer's JWKS has not been fetched yet.
    KeysUnavailable,
}

impl AuthFailure {
    /// The metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::Expired => "expired",
            AuthFailure::Disabled => "disabled",
            AuthFailure::UnsupportedToken => "unsupported_token",
            AuthFailure::MalformedToken => "malformed_token",
            AuthFailure::UnknownIssuer => "unknown_issuer",
            AuthFailure::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthFailure::UnknownSigningKey => "unknown_signing_key",
            AuthFailure::WrongKeyType => "wrong_key_type",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::WrongTokenType => "wrong_token_type",
            AuthFailure::InvalidClaims => "invalid_claims",
            AuthFailure::KeysUnavailable => "keys_unavailable",
        }
    }

    /// Whether the failure looks like a guess, and counts against `server.auth_failure_limit`.
    /// Not: no credential, an expired or not-yet-valid one (a client's clock or refresh bug),
    /// a key id the JWKS may not have fetched yet, keys not loaded (the gateway's own trouble).
    pub fn is_guess(self) -> bool {
        !matches!(
            self,
            AuthFailure::Missing
                | AuthFailure::Expired
                | AuthFailure::NotYetValid
                | AuthFailure::UnknownSigningKey
                | AuthFailure::KeysUnavailable
        )
    }

    /// The RFC 6750 `error` attribute of `WWW-Authenticate`: none when nothing was sent.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            AuthFailure::Missing => None,
            AuthFailure::Malformed => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }
}

/// A request the gateway answers itself with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// 400 `VALIDATION_ERROR`: a request the gateway cannot parse or will not interpret.
    BadRequest(&'static str),
    /// 400 `VALIDATION_ERROR`: the `Host` header or request target is missing or malformed.
    BadHost(&'static str),
    /// 400 `BAD_PATH`: a path the gateway will not interpret on a backend's behalf.
    BadPath(&'static str),
    /// 421 `HOST_NOT_ALLOWED`: the host is not in `server.allowed_hosts`.
    HostNotAllowed,
    /// 401 `AUTHENTICATION_FAILED`, with why (for metrics and logs only).
    AuthenticationFailed(AuthFailure),
    /// 403 `PERMISSION_DENIED`, naming the permission the caller lacks.
    PermissionDenied {
        /// The first required permission not granted.
        missing: Box<str>,
    },
    /// 403 `PERMISSION_DENIED`: the route's `credentials` do not include the caller's kind (an
    /// API key, a token of another issuer, a client certificate).
    CredentialNotAccepted,
    /// 403 `CORS_REJECTED`: a preflight for an origin, method or header `[cors]` does not allow.
    CorsRejected(CorsRejection),
    /// 404 `ROUTE_NOT_FOUND`.
    RouteNotFound,
    /// 405 `METHOD_NOT_ALLOWED`, with the methods the matched path allows.
    MethodNotAllowed {
        /// The `Allow` header value.
        allow: HeaderValue,
    },
    /// 408 `REQUEST_TIMEOUT`: the request head did not arrive within `server.header_timeout`.
    RequestTimeout,
    /// 431 `HEADERS_TOO_LARGE`: the request head is larger than `server.max_header_size`.
    HeaderTooLarge {
        /// `server.max_header_size` in bytes.
        limit: u64,
    },
    /// 413 `PAYLOAD_TOO_LARGE`.
    PayloadTooLarge {
        /// `server.max_body_size` in bytes.
        limit: u64,
    },
    /// 429 `RATE_LIMITED`, with `Retry-After`.
    RateLimited {
        /// The policy that refused (`auth_failures` for the failed-authentication limit).
        policy: Box<str>,
        /// Requests per window.
        limit: u64,
        /// Window length in seconds.
        window: u64,
        /// Seconds until the next window opens.
        retry_after: u64,
    },
    /// 502 `UPSTREAM_UNAVAILABLE`: no connection, or a broken response.
    UpstreamUnavailable,
    /// 504 `UPSTREAM_TIMEOUT`.
    UpstreamTimeout,
    /// 500 `INTERNAL_ERROR`.
    Internal,
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) | GatewayError::BadHost(_) | GatewayError::BadPath(_) => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::AuthenticationFailed(_) => StatusCode::UNAUTHORIZED,
            GatewayError::PermissionDenied { .. }
            | GatewayError::CredentialNotAccepted
            | GatewayError::CorsRejected(_) => StatusCode::FORBIDDEN,
            GatewayError::RouteNotFound => StatusCode::NOT_FOUND,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::HeaderTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) | GatewayError::BadHost(_) => "VALIDATION_ERROR",
            GatewayError::BadPath(_) => "BAD_PATH",
            GatewayError::HostNotAllowed => "HOST_NOT_ALLOWED",
            GatewayError::AuthenticationFailed(_) => "AUTHENTICATION_FAILED",
            GatewayError::PermissionDenied { .. } | GatewayError::CredentialNotAccepted => "PERMISSION_DENIED",
            GatewayError::CorsRejected(_) => "CORS_REJECTED",
            GatewayError::RouteNotFound => "ROUTE_NOT_FOUND",
            GatewayError::RateLimited { .. } => "RATE_LIMITED",
            GatewayError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            GatewayError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            GatewayError::RequestTimeout => "REQUEST_TIMEOUT",
            GatewayError::HeaderTooLarge { .. } => "HEADERS_TOO_LARGE",
            GatewayError::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            GatewayError::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            GatewayError::Internal => "INTERNAL_ERROR",
        }
    }

    /// The human-readable `error.message`.
    pub fn message(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(why) | GatewayError::BadHost(why) | GatewayError::BadPath(why) => why,
            GatewayError::HostNotAllowed => "this host is not served here",
            GatewayError::AuthenticationFailed(_) => "missing or invalid credentials",
            GatewayError::PermissionDenied { .. } => "the credentials lack a permission this route requires",
            GatewayError::CredentialNotAccepted => "this route does not accept this kind of credential",
            GatewayError::CorsRejected(_) => "this cross-origin request is not allowed",
            GatewayError::RouteNotFound => "no route matches this path",
            GatewayError::RateLimited { .. } => "too many requests; retry after the time in Retry-After",
            GatewayError::MethodNotAllowed { .. } => "this method is not allowed on this path",
            GatewayError::PayloadTooLarge { .. } => "the request body is larger than this gateway accepts",
            GatewayError::RequestTimeout => "the request head did not arrive in time",
            GatewayError::HeaderTooLarge { .. } => "the request head is larger than this gateway accepts",
            GatewayError::UpstreamUnavailable => "the upstream service is unavailable",
            GatewayError::UpstreamTimeout => "the upstream service did not answer in time",
            GatewayError::Internal => "internal error",
        }
    }

    /// The label this outcome carries in metrics and logs: bounded, one per variant.
    pub fn metric_label(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::BadHost(_) => "bad_host",
            GatewayError::BadPath(_) => "bad_path",
            GatewayError::HostNotAllowed => "host_not_allowed",
            GatewayError::AuthenticationFailed(_) => "authentication_failed",
            GatewayError::PermissionDenied { .. } => "permission_denied",
            GatewayError::CredentialNotAccepted => "credential_not_accepted",
            GatewayError::CorsRejected(_) => "cors_rejected",
            GatewayError::RouteNotFound => "route_not_found",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::HeaderTooLarge { .. } => "headers_too_large",
            GatewayError::UpstreamUnavailable => "upstream_unavailable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::Internal => "internal_error",
        }
    }

    /// Structured details for `error.details`, where there are any.
    fn details(&self) -> serde_json::Value {
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                let methods: Vec<&str> = allow.to_str().unwrap_or("").split(", ").collect();
                serde_json::json!({ "allowed_methods": methods })
            }
            GatewayError::PayloadTooLarge { limit } => serde_json::json!({ "max_body_size": limit }),
            GatewayError::HeaderTooLarge { limit } => serde_json::json!({ "max_header_size": limit }),
            GatewayError::PermissionDenied { missing } => serde_json::json!({ "missing_permission": missing }),
            GatewayError::CorsRejected(why) => serde_json::json!({ "rejected": why.label() }),
            GatewayError::RateLimited { policy, limit, window, retry_after } => serde_json::json!({
                "policy": policy,
                "limit": limit,
                "window_seconds": window,
                "retry_after_seconds": retry_after,
            }),
            _ => serde_json::Value::Null,
        }
    }

    /// The JSON body: `{"error":{"code","message","details","request_id"}}`.
    pub fn body(&self, request_id: &str) -> Bytes {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: Body<'a>,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
            details: serde_json::Value,
            request_id: &'a str,
        }
        let envelope = Envelope {
            error: Body { code: self.code(), message: self.message(), details: self.details(), request_id },
        };
        // Serialising these plain fields cannot fail; an empty body is the safe fallback anyway.
        Bytes::from(serde_json::to_vec(&envelope).unwrap_or_default())
    }

    /// The complete response: status, JSON body, and the headers this error needs.
    pub fn to_response(
        &self,
        request_id_header: &HeaderName,
        request_id: &HeaderValue,
    ) -> pingora::Result<(ResponseHeader, Bytes)> {
        let body = self.body(request_id.to_str().unwrap_or(""));
        let mut resp = json_response(self.status(), body.len(), request_id_header, request_id)?;
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                resp.insert_header(http::header::ALLOW, allow.clone())?;
            }
            // RFC 6750 §3: no `error` attribute when the request carried no credential.
            GatewayError::AuthenticationFailed(failure) => {
                let challenge = match failure.bearer_error() {
                    Some("invalid_request") => r#"Bearer realm="portcullis", error="invalid_request""#,
                    Some(_) => r#"Bearer realm="portcullis", error="invalid_token""#,
                    None => r#"Bearer realm="portcullis""#,
                };
                resp.insert_header(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge))?;
            }
            GatewayError::RateLimited { retry_after, .. } => {
                resp.insert_header(http::header::RETRY_AFTER, *retry_after)?;
            }
            _ => {}
        }
        Ok((resp, body))
    }
}

/// A response header for a JSON body the gateway writes itself.
pub fn json_response(
    status: StatusCode,
    len: usize,
    request_id_header: &HeaderName,
    request_id: &HeaderValue,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build_no_case(status, Some(6))?;
    resp.insert_header(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))?;
    resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    resp.insert_header(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
    resp.insert_header(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"))?;
    resp.insert_header(request_id_header.clone(), request_id.clone())?;
    Ok(resp)
}

/// The `kind` label of `portcullis_upstream_errors_total`.
pub fn upstream_error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectTimedout => "connect_timeout",
        ErrorType::ConnectRefused => "connect_refused",
        ErrorType::ConnectNoRoute | ErrorType::ConnectError | ErrorType::BindError | ErrorType::SocketError => {
            "connect_error"
        }
        ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::TLSWantX509Lookup => "tls",
        ErrorType::ReadTimedout => "read_timeout",
        ErrorType::WriteTimedout => "write_timeout",
        ErrorType::ConnectionClosed => "connection_closed",
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error | ErrorType::InvalidH2 => {
            "protocol_error"
        }
        ErrorType::ReadError => "read_error",
        ErrorType::WriteError => "write_error",
        _ => "other",
    }
}

/// Maps a Pingora error to the refusal the client sees; `None` when the client is gone.
pub fn classify(e: &Error) -> Option<GatewayError> {
    match (e.esource(), e.etype()) {
        (ErrorSource::Upstream, ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
            Some(GatewayError::UpstreamTimeout)
        }
        (ErrorSource::Upstream, _) => Some(GatewayError::UpstreamUnavailable),
        (ErrorSource::Downstream, ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed) => None,
        (ErrorSource::Downstream, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => None,
        (ErrorSource::Downstream, _) => Some(GatewayError::BadRequest("malformed request")),
        _ => Some(GatewayError::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let body = GatewayError::HostNotAllowed.body("abc");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "HOST_NOT_ALLOWED");
        assert_eq!(v["error"]["request_id"], "abc");
        assert!(v["error"]["details"].is_null());
        assert!(v["error"]["message"].is_string());
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let e = GatewayError::MethodNotAllowed { allow: HeaderValue::from_static("GET, HEAD") };
        let (resp, body) =
            e.to_response(&HeaderName::from_static("x-request-id"), &HeaderValue::from_static("r1")).unwrap();
        assert_eq!(resp.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers.get("allow").unwrap(), "GET, HEAD");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["details"]["allowed_methods"], serde_json::json!(["GET", "HEAD"]));
    }
}
