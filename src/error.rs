//! The one error type of the request path.
//!
//! Every refusal the gateway makes is a [`GatewayError`]; its status, JSON body, extra headers and
//! metric label are decided here and nowhere else. Messages are fixed strings written for the
//! client: no paths, no Rust error text, no upstream addresses.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use serde::Serialize;

use crate::pipeline::auth::AuthFailure;

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
