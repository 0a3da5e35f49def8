//! JWT verification on arbitrary tokens: raw bytes, and header and payload JSON of the
//! fuzzer's making with a signature it cannot know.
//!
//! Property: nothing the fuzzer makes is accepted (it holds neither the HMAC secret nor the
//! RSA private key), and nothing panics.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use portcullis::config::Runtime;

static RUNTIME: LazyLock<std::sync::Arc<Runtime>> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("portcullis-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let secret = dir.join("hmac");
    std::fs::write(&secret, "fuzz-secret-that-is-long-enough-0123456789").expect("secret written");
    // An RSA public key (the private half is not kept anywhere).
    let rsa = openssl::rsa::Rsa::generate(2048).expect("an RSA key");
    let public = openssl::pkey::PKey::from_rsa(rsa).and_then(|k| k.public_key_to_pem()).expect("a PEM");
    let pem = dir.join("rsa.pem");
    std::fs::write(&pem, public).expect("key written");
    common::runtime(&format!(
        r#"
[auth]
token_cache_size = 0
[[auth.jwt]]
name = "hmac"
issuer = "hmac-issuer"
audiences = ["api"]
algorithms = ["HS256"]
secret = "file:{}"
[[auth.jwt]]
name = "rsa"
issuer = "rsa-issuer"
audiences = ["api"]
algorithms = ["RS256", "PS256"]
public_key_file = "{}"
required_typ = "at+jwt"
"#,
        secret.display(),
        pem.display()
    ))
});

fuzz_target!(|data: &[u8]| {
    let verifier = &RUNTIME.auth.jwt;
    let now = 1_800_000_000;
    assert!(verifier.verify(data, now).is_err(), "an arbitrary token was accepted");
    // Structured: header JSON, payload JSON and signature bytes, split at the first two NULs.
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else { return };
    let signature = parts.next().unwrap_or_default();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let token = format!("{}.{}.{}", b64(header), b64(payload), b64(signature));
    assert!(verifier.verify(token.as_bytes(), now).is_err(), "a forged token was accepted: {token}");
});
