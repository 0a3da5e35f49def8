//! Bearer and API-key extraction and verification on arbitrary header values.
//!
//! Properties: only the configured key authenticates, in either place and only alone; what
//! is logged of a presented key is at most its first four characters.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::config::Runtime;
use portcullis::pipeline::auth::AuthMode;
use portcullis::pipeline::auth::Principal;

/// The one valid key: sha256("pcs_fuzz-key-0123456789abcdef").
const KEY: &str = "pcs_fuzz-key-0123456789abcdef";

static RUNTIME: LazyLock<std::sync::Arc<Runtime>> = LazyLock::new(|| {
    let hash = portcullis::pipeline::auth::apikey::hash_line(KEY);
    common::runtime(&format!(
        "[auth]\napi_key_headers = [\"X-API-Key\", \"X-Other-Key\"]\n[[auth.api_key]]\nid = \"fuzz\"\nhash = \"{hash}\"\n"
    ))
});

thread_local! {
    static EXECUTOR: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
}

fuzz_target!(|data: &[u8]| {
    const NAMES: [&str; 3] = ["authorization", "x-api-key", "x-other-key"];
    let mut headers = HeaderMap::new();
    let mut values = Vec::new();
    for (i, value) in data.split(|&b| b == 0).enumerate().take(6) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(NAMES[i % NAMES.len()]), value.clone());
            values.push(value);
        }
    }
    let auth = &RUNTIME.auth;
    let presented = auth.presented(&headers);
    if let Some(prefix) = &presented.key_prefix {
        assert!(prefix.len() <= 4, "{prefix:?}");
    }
    let outcome = EXECUTOR.with(|rt| rt.block_on(auth.authenticate(AuthMode::Required, &headers, None)));
    if let Ok(Some(Principal::ApiKey(_))) = outcome {
        // Exactly one credential, and it is the key.
        assert_eq!(values.len(), 1, "{values:?}");
        let v = values[0].as_bytes();
        assert!(v == KEY.as_bytes() || v.eq_ignore_ascii_case(format!("bearer {KEY}").as_bytes()), "{v:?}");
    } else {
        assert!(outcome.is_err() || matches!(outcome, Ok(None)), "{outcome:?}");
    }
});
