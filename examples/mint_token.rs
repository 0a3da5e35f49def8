//! Signs a JWT for the load benchmark (`bench/run.sh`): `mint_token ALG KEY_FILE ISSUER AUDIENCE`.
//!
//! `KEY_FILE` is the HMAC secret (HS*) or a PKCS#8 PEM private key (RS*, ES*). The token is
//! valid for a day and carries `scope = "bench"`.

use std::process::ExitCode;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [alg, key_file, issuer, audience] = args.as_slice() else {
        eprintln!("usage: mint_token ALG KEY_FILE ISSUER AUDIENCE");
        return ExitCode::from(2);
    };
    let run = || -> Result<String, String> {
        let alg: Algorithm = alg.parse().map_err(|e| format!("{alg}: {e}"))?;
        let key = std::fs::read(key_file).map_err(|e| format!("{key_file}: {e}"))?;
        let encoding = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Ok(EncodingKey::from_secret(&key)),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&key),
            _ => EncodingKey::from_rsa_pem(&key),
        }
        .map_err(|e| e.to_string())?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": issuer, "aud": audience, "sub": "bench-client", "iat": now, "exp": now + 86_400, "scope": "bench",
        });
        let mut header = Header::new(alg);
        header.kid = Some("bench".into());
        encode(&header, &claims, &encoding).map_err(|e| e.to_string())
    };
    match run() {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mint_token: {e}");
            ExitCode::from(1)
        }
    }
}
