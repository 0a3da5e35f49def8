//! The request id: kept when the client sent a sane one (so a trace spans the client, the
//! gateway and the upstream), generated otherwise, and returned on every response.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The longest client-sent request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id for a request: the client's when valid, else a new UUID v4.
pub fn request_id(headers: &HeaderMap, header: &HeaderName) -> HeaderValue {
    match headers.get(header) {
        Some(value) if is_valid(value.as_bytes()) && headers.get_all(header).iter().count() == 1 => value.clone(),
        _ => generate(),
    }
}

/// A fresh random id.
pub fn generate() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
}

/// Ids that are safe to copy into logs and headers: 1 to 128 of `A-Z a-z 0-9 - _ . :`.
fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(values: &[&str]) -> HeaderValue {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-request-id", HeaderValue::from_str(v).unwrap());
        }
        request_id(&h, &HeaderName::from_static("x-request-id"))
    }

    #[test]
    fn keeps_valid_client_ids() {
        assert_eq!(id(&["abc-123_x.y:z"]), "abc-123_x.y:z");
    }

    #[test]
    fn replaces_invalid_or_missing_ids() {
        for bad in [&[][..], &[""], &["has space"], &["<script>"], &["a", "b"]] {
            let got = id(bad);
            assert_eq!(got.len(), 36, "{bad:?}");
        }
        assert_eq!(id(&[&"a".repeat(129)]).len(), 36);
        assert_ne!(generate(), generate());
    }
}
