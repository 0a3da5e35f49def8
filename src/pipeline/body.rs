//! Request body limits: a declared `Content-Length` over `server.max_body_size` is refused before
//! a byte is read; a body without one (chunked, HTTP/2) is counted as it streams and cut off
//! when it passes the limit.

use http::header::CONTENT_LENGTH;
use http::HeaderMap;

use crate::error::GatewayError;

/// Refuses a request whose declared length is over `max`.
pub fn check_declared_length(headers: &HeaderMap, max: u64) -> Result<(), GatewayError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > max => Err(GatewayError::PayloadTooLarge { limit: max }),
        _ => Ok(()),
    }
}

/// Adds a chunk to the running count; past `max`, the request is refused.
pub fn count_chunk(seen: &mut u64, chunk: usize, max: u64) -> Result<(), GatewayError> {
    *seen = seen.saturating_add(chunk as u64);
    if *seen > max {
        Err(GatewayError::PayloadTooLarge { limit: max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_length() {
        let mut h = HeaderMap::new();
        assert!(check_declared_length(&h, 10).is_ok());
        h.insert(CONTENT_LENGTH, "10".parse().unwrap());
        assert!(check_declared_length(&h, 10).is_ok());
        h.insert(CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(check_declared_length(&h, 10), Err(GatewayError::PayloadTooLarge { limit: 10 }));
    }

    #[test]
    fn streamed_count() {
        let mut seen = 0;
        assert!(count_chunk(&mut seen, 6, 10).is_ok());
        assert!(count_chunk(&mut seen, 4, 10).is_ok());
        assert!(count_chunk(&mut seen, 1, 10).is_err());
    }
}
