//! Signs a JWT for the load benchmark (`bench/run.sh`): `mint_token ALG KEY_FILE ISSUER AUDIENCE`;
//! or, with `mint_token jwks ALG KEY_FILE`, prints the JWKS of that key (for Envoy's `jwt_authn`).
//!
//! `KEY_FILE` is the HMAC secret (HS*) or a PKCS#8 PEM private key (RS*, ES*). The token is
//! valid for a day and carries `scope = "bench"`; the key id is `bench`.

use std::process::ExitCode;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = || -> Result<String, String> {
        match args.as_slice() {
            [jwks, alg, key_file] if jwks == "jwks" => {
                let (alg, key) = encoding_key(alg, key_file)?;
                let mut jwk = Jwk::from_encoding_key(&key, alg).map_err(|e| e.to_string())?;
                jwk.common.key_id = Some("bench".into());
                serde_json::to_string(&JwkSet { keys: vec![jwk] }).map_err(|e| e.to_string())
            }
            [alg, key_file, issuer, audience] => {
                let (alg, key) = encoding_key(alg, key_file)?;
                let now = jsonwebtoken::get_current_timestamp();
                let claims = serde_json::json!({
                    "iss": issuer, "aud": audience, "sub": "bench-client", "iat": now, "exp": now + 86_400,
                    "scope": "bench",
                });
                let mut header = Header::new(alg);
                header.kid = Some("bench".into());
                encode(&header, &claims, &key).map_err(|e| e.to_string())
            }
            _ => Err("usage: mint_token ALG KEY_FILE ISSUER AUDIENCE | mint_token jwks ALG KEY_FILE".into()),
        }
    };
    match run() {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint_token: {e}");
            ExitCode::from(2)
        }
    }
}

fn encoding_key(alg: &str, key_file: &str) -> Result<(Algorithm, EncodingKey), String> {
    let alg: Algorithm = alg.parse().map_err(|e| format!("{alg}: {e}"))?;
    let key = std::fs::read(key_file).map_err(|e| format!("{key_file}: {e}"))?;
    let encoding = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Ok(EncodingKey::from_secret(&key)),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&key),
        _ => EncodingKey::from_rsa_pem(&key),
    }
    .map_err(|e| e.to_string())?;
    Ok((alg, encoding))
}
