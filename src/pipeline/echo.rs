//! `builtin:echo`: the request as an upstream would receive it, as JSON.
//!
//! Operators point a route at it to see exactly what their backend will get (canonical path,
//! stripped and added headers), and the default configuration uses it so that the gateway runs
//! on a fresh machine with nothing behind it.

use bytes::Bytes;
use pingora::http::RequestHeader;
use serde_json::{json, Map, Value};

/// The echo body for an upstream request header and the number of body bytes received.
pub fn describe(upstream_request: &RequestHeader, body_bytes: u64) -> Bytes {
    let mut headers = Map::new();
    for (name, value) in upstream_request.headers.iter() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prior)) => {
                prior.push_str(", ");
                prior.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    let body = json!({
        "method": upstream_request.method.as_str(),
        "path": upstream_request.uri.path(),
        "query": upstream_request.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Bytes::from(serde_json::to_vec_pretty(&body).unwrap_or_default())
}
