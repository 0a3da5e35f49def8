//! The `[auth]` section: API keys and JWT issuers, validated into an [`Authenticator`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::file::{AuthSection, JwtSection};
use super::secrets::read_secret;
use super::sources::Problems;
use super::units::parse_duration;
use crate::pipeline::auth::apikey::{parse_hash, ApiKey, ApiKeys};
use crate::pipeline::auth::jwks::{parse_jwks, RemoteJwks, RemoteSettings};
use crate::pipeline::auth::jwt::{parse_algorithm, Issuer, IssuerSettings, JwtVerifier, KeySource, ALGORITHM_NAMES};
use crate::pipeline::auth::keys::{KeySet, VerifyKey};
use crate::pipeline::auth::token_cache::TokenCache;
use crate::pipeline::auth::Authenticator;
use crate::pipeline::forward::{IDENTITY_HEADERS, IDENTITY_HEADER_PREFIX};

/// `auth.api_key_headers` when unset.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// `jwks_refresh_interval` when unset.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// `jwks_min_refresh_interval` when unset.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// `jwks_fetch_timeout` when unset.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// `auth.token_cache_size` when unset.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 10_000;
/// `leeway` when unset.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The largest `leeway` accepted: more would keep expired tokens alive.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// `permissions_claim` when unset.
pub const DEFAULT_PERMISSIONS_CLAIM: &str = "scope";
/// `subject_claim` when unset.
pub const DEFAULT_SUBJECT_CLAIM: &str = "sub";
/// The longest `jwks_fetch_timeout`: a request with an unknown `kid` may wait this long.
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `jwks_refresh_interval` and `jwks_min_refresh_interval`.
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_LEN: usize = 32;

pub(super) fn build(section: Option<&AuthSection>, p: &mut Problems<'_>) -> Authenticator {
    let mut auth = Authenticator::reading(vec![HeaderName::from_static(DEFAULT_API_KEY_HEADER)]);
    let Some(section) = section else { return auth };
    if let Some(headers) = &section.api_key_headers {
        auth.api_key_headers.clear();
        for (i, name) in headers.iter().enumerate() {
            let key = format!("auth.api_key_headers[{i}]");
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) if h == http::header::AUTHORIZATION => {
                    p.push(&key, "Authorization is always read for Bearer keys", "remove it from the list")
                }
                Ok(h) if h.as_str().starts_with(crate::pipeline::forward::IDENTITY_HEADER_PREFIX) => {
                    p.push(&key, "X-Auth-* headers are reserved for identity", "use a name such as \"X-API-Key\"")
                }
                Ok(h) => auth.api_key_headers.push(h),
                Err(_) => p.push(&key, format!("\"{name}\" is not a header name"), "use a name such as \"X-API-Key\""),
            }
        }
    }
    auth.forward_credentials = section.forward_credentials.unwrap_or(false);
    let mut keys = Vec::new();
    let mut ids = HashSet::new();
    for (i, k) in section.api_key.iter().enumerate() {
        let key = |f: &str| format!("auth.api_key[{i}].{f}");
        let Some(id) = k.id.as_deref().filter(|id| !id.is_empty()) else {
            p.push(
                &key("id"),
                "is missing",
                "give every key an id; it appears in logs and X-Auth-Key-Id, never the key",
            );
            continue;
        };
        if !ids.insert(id.to_string()) {
            p.push(&key("id"), format!("\"{id}\" names two keys"), "give each key its own id");
        }
        let hash = match k.hash.as_deref().map(parse_hash) {
            Some(Ok(hash)) => hash,
            Some(Err(e)) => {
                p.push(&key("hash"), e, "paste the line `portcullis keys generate` or `portcullis keys hash` printed");
                continue;
            }
            None => {
                p.push(
                    &key("hash"),
                    "is missing",
                    "run `portcullis keys generate --id ID` and paste the hash it prints",
                );
                continue;
            }
        };
        let expires = match k.expires.as_deref().map(humantime::parse_rfc3339_weak) {
            None => None,
            Some(Ok(at)) => Some(at),
            Some(Err(_)) => {
                p.push(&key("expires"), "is not an RFC 3339 time", "write a time such as \"2027-02-21T00:00:00Z\"");
                None
            }
        };
        let permissions = build_names(k.permissions.as_deref(), &key("permissions"), "permission", p);
        let subject = k.subject.as_deref().unwrap_or(id);
        match ApiKey::new(id, hash, subject, permissions, expires, k.disabled.unwrap_or(false)) {
            Ok(entry) => keys.push(entry),
            Err(e) => p.push(&key("id"), e, "use printable ASCII"),
        }
    }
    match ApiKeys::new(keys) {
        Ok(keys) => auth.keys = keys,
        Err(id) => p.push(
            "auth.api_key",
            format!("key \"{id}\" has the same hash as another key"),
            "generate a new key for one of them",
        ),
    }
    auth.jwt = build_jwt(section, p);
    auth
}

fn build_jwt(section: &AuthSection, p: &mut Problems<'_>) -> JwtVerifier {
    let mut issuers: Vec<Issuer> = Vec::new();
    let mut names = HashSet::new();
    for (i, j) in section.jwt.iter().enumerate() {
        let key = |f: &str| format!("auth.jwt[{i}].{f}");
        let name = match j.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                p.push(
                    &key("name"),
                    "is missing",
                    "name the issuer, e.g. name = \"idp\"; it appears in logs and metrics",
                );
                continue;
            }
        };
        if !names.insert(name.clone()) {
            p.push(&key("name"), format!("\"{name}\" names two issuers"), "give each [[auth.jwt]] its own name");
        }
        let Some(issuer) = j.issuer.clone().filter(|s| !s.is_empty()) else {
            p.push(&key("issuer"), "is missing", "set it to the exact `iss` your IdP puts in tokens");
            continue;
        };
        if issuers.iter().any(|o| *o.issuer == *issuer) {
            p.push(&key("issuer"), format!("\"{issuer}\" is the issuer of two entries"), "list each issuer once");
        }
        let audiences = j.audiences.clone().unwrap_or_default();
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            p.push(
                &key("audiences"),
                "is missing or empty: tokens the IdP issued for other APIs would be accepted",
                "list the `aud` values of tokens meant for this API, e.g. audiences = [\"registry\"]",
            );
        }
        let algorithms = build_algorithms(j.algorithms.as_deref(), &key("algorithms"), p);
        let leeway = match j.leeway.as_deref().map(parse_duration) {
            None => DEFAULT_LEEWAY,
            Some(Ok(d)) if d <= MAX_LEEWAY => d,
            Some(Ok(_)) => {
                p.push(&key("leeway"), "is more than 5m", "allow for clock skew only, e.g. \"30s\"");
                DEFAULT_LEEWAY
            }
            Some(Err(e)) => {
                p.push(&key("leeway"), e, "write a duration such as \"30s\"");
                DEFAULT_LEEWAY
            }
        };
        let claims_to_headers = build_claim_headers(j, &key("claims_to_headers"), p);
        let required_typ = match j.required_typ.as_deref() {
            Some(typ) if typ.is_empty() || !typ.bytes().all(|b| b.is_ascii_graphic() && b != b'"') => {
                p.push(
                    &key("required_typ"),
                    format!("{typ:?} is not a JOSE typ value"),
                    "write the type your IdP's access tokens carry, e.g. \"at+jwt\" (RFC 9068)",
                );
                None
            }
            typ => typ.map(str::to_string),
        };
        let Some(keys) = build_key_source(j, &name, &algorithms, &key, p) else { continue };
        let settings = IssuerSettings {
            name,
            issuer,
            audiences,
            algorithms,
            keys,
            leeway: leeway.as_secs(),
            require_exp: j.require_exp.unwrap_or(true),
            subject_claim: j.subject_claim.clone().unwrap_or_else(|| DEFAULT_SUBJECT_CLAIM.into()),
            permissions_claim: j.permissions_claim.clone().unwrap_or_else(|| DEFAULT_PERMISSIONS_CLAIM.into()),
            claims_to_headers,
            required_typ,
        };
        match Issuer::new(settings) {
            Ok(issuer) => issuers.push(issuer),
            Err(e) => p.push(&key("issuer"), e, "use the issuer URL exactly as in the tokens"),
        }
    }
    let cache_size = section.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE);
    let cache = (cache_size > 0 && !issuers.is_empty()).then(|| TokenCache::new(cache_size));
    JwtVerifier { issuers, cache }
}

fn build_algorithms(names: Option<&[String]>, key: &str, p: &mut Problems<'_>) -> Vec<Algorithm> {
    let names = names.unwrap_or_default();
    if names.is_empty() {
        p.push(
            key,
            "is missing or empty",
            format!("list the algorithms your IdP signs with, e.g. [\"RS256\"] (any of {ALGORITHM_NAMES})"),
        );
    }
    let mut out = Vec::new();
    for (n, name) in names.iter().enumerate() {
        match parse_algorithm(name) {
            Ok(a) if !out.contains(&a) => out.push(a),
            Ok(_) => p.push(&format!("{key}[{n}]"), format!("\"{name}\" is listed twice"), "list it once"),
            Err(e) => p.push(&format!("{key}[{n}]"), e, format!("use one of {ALGORITHM_NAMES}")),
        }
    }
    out
}

fn build_claim_headers(j: &JwtSection, key: &str, p: &mut Problems<'_>) -> Vec<(String, HeaderName)> {
    let mut out: Vec<(String, HeaderName)> = Vec::new();
    for (claim, header) in j.claims_to_headers.iter().flatten() {
        let key = format!("{key}.{claim}");
        match HeaderName::from_bytes(header.as_bytes()) {
            // Only X-Auth-* names: those are removed from every client request, so a token without
            // the claim cannot leave a client-forged value in place.
            Ok(h) if !h.as_str().starts_with(IDENTITY_HEADER_PREFIX) => p.push(
                &key,
                format!("\"{header}\" does not start with X-Auth-"),
                "name it X-Auth-Something: only X-Auth-* headers are stripped from clients",
            ),
            Ok(h) if IDENTITY_HEADERS.contains(&h.as_str()) => {
                p.push(&key, format!("\"{header}\" is set by the gateway itself"), "choose another X-Auth-* name")
            }
            Ok(h) if out.iter().any(|(_, o)| *o == h) => {
                p.push(&key, format!("\"{header}\" is the target of two claims"), "map each claim to its own header")
            }
            Ok(h) => out.push((claim.clone(), h)),
            Err(_) => p.push(&key, format!("\"{header}\" is not a header name"), "use a name such as \"X-Auth-Email\""),
        }
    }
    out
}

/// The issuer's keys, from exactly one of `secret`, `public_key_file`, `jwks_file`, `jwks_url`.
fn build_key_source(
    j: &JwtSection,
    name: &str,
    algorithms: &[Algorithm],
    key: &dyn Fn(&str) -> String,
    p: &mut Problems<'_>,
) -> Option<KeySource> {
    let given: Vec<&str> = [
        ("secret", j.secret.is_some()),
        ("public_key_file", j.public_key_file.is_some()),
        ("jwks_file", j.jwks_file.is_some()),
        ("jwks_url", j.jwks_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() != 1 {
        let problem = if given.is_empty() {
            "has no key".to_string()
        } else {
            format!("has {} key sources ({})", given.len(), given.join(", "))
        };
        p.push(
            &key("jwks_url"),
            problem,
            "set exactly one of jwks_url, jwks_file, public_key_file or secret (\"env:NAME\" or \"file:PATH\", HS* only)",
        );
        return None;
    }
    if j.jwks_url.is_none() {
        for k in ["jwks_refresh_interval", "jwks_min_refresh_interval", "jwks_fetch_timeout"] {
            let set = match k {
                "jwks_refresh_interval" => j.jwks_refresh_interval.is_some(),
                "jwks_min_refresh_interval" => j.jwks_min_refresh_interval.is_some(),
                _ => j.jwks_fetch_timeout.is_some(),
            };
            if set {
                p.push(&key(k), "applies only to jwks_url", "remove it, or fetch the keys from a jwks_url");
            }
        }
    }
    let static_keys = |keys: Vec<VerifyKey>, source_key: &str, p: &mut Problems<'_>| {
        for a in algorithms {
            if !keys.iter().any(|k| k.key.family() == a.family() && k.alg.is_none_or(|ka| ka == *a)) {
                p.push(
                    &key(source_key),
                    format!("has no key that can verify {a:?}"),
                    "remove the algorithm from `algorithms`, or add its key",
                );
            }
        }
        Some(KeySource::Static(Arc::new(KeySet { generation: 0, keys })))
    };
    if let Some(secret) = &j.secret {
        let bytes = read_secret(secret).map_err(|e| p.push(&key("secret"), e.0, e.1)).ok()?;
        if bytes.len() < MIN_SECRET_LEN {
            p.push(
                &key("secret"),
                format!("is {} bytes; HMAC secrets must be at least {MIN_SECRET_LEN}", bytes.len()),
                "generate one with `openssl rand -base64 48`",
            );
            return None;
        }
        let keys = vec![VerifyKey { kid: None, alg: None, key: DecodingKey::from_secret(&bytes) }];
        return static_keys(keys, "secret", p);
    }
    if let Some(path) = &j.public_key_file {
        let pem =
            read_file(path).map_err(|e| p.push(&key("public_key_file"), e, "point it at a readable PEM file")).ok()?;
        let key_of = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem));
        let Ok(decoding) = key_of else {
            p.push(
                &key("public_key_file"),
                format!("{path} holds no RSA, EC or Ed25519 public key in PEM"),
                "export the IdP's public key (-----BEGIN PUBLIC KEY-----)",
            );
            return None;
        };
        return static_keys(vec![VerifyKey { kid: None, alg: None, key: decoding }], "public_key_file", p);
    }
    if let Some(path) = &j.jwks_file {
        let doc = read_file(path).map_err(|e| p.push(&key("jwks_file"), e, "point it at a readable JWKS file")).ok()?;
        let keys = match parse_jwks(&doc) {
            Ok((_, keys)) => keys,
            Err(e) => {
                p.push(
                    &key("jwks_file"),
                    format!("{path} {e}"),
                    "save the IdP's JWKS document ({\"keys\": [...]}) there",
                );
                return None;
            }
        };
        return static_keys(keys, "jwks_file", p);
    }
    let url = j.jwks_url.as_deref()?;
    let url = match check_jwks_url(url) {
        Ok(u) => u,
        Err((problem, fix)) => {
            p.push(&key("jwks_url"), problem, fix);
            return None;
        }
    };
    if algorithms.iter().any(|a| a.family() == AlgorithmFamily::Hmac) {
        p.push(
            &key("algorithms"),
            "lists an HS* algorithm, but a JWKS URL never serves HMAC secrets",
            "remove HS256/384/512, or verify them in another [[auth.jwt]] with secret = \"env:NAME\"",
        );
    }
    let duration =
        |k: &str, value: Option<&str>, default: Duration, p: &mut Problems<'_>| match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) if d > max_of(k) => {
                let max = humantime::format_duration(max_of(k));
                p.push(&key(k), format!("is more than {max}"), "choose a shorter duration");
                default
            }
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                p.push(&key(k), "is zero", "write a positive duration such as \"10s\"");
                default
            }
            Some(Err(e)) => {
                p.push(&key(k), e, "write a duration such as \"10s\"");
                default
            }
        };
    let settings = RemoteSettings {
        issuer: name.to_string(),
        url,
        refresh_interval: duration(
            "jwks_refresh_interval",
            j.jwks_refresh_interval.as_deref(),
            DEFAULT_REFRESH_INTERVAL,
            p,
        ),
        min_refresh_interval: duration(
            "jwks_min_refresh_interval",
            j.jwks_min_refresh_interval.as_deref(),
            DEFAULT_MIN_REFRESH_INTERVAL,
            p,
        ),
        fetch_timeout: duration("jwks_fetch_timeout", j.jwks_fetch_timeout.as_deref(), DEFAULT_FETCH_TIMEOUT, p),
    };
    if settings.min_refresh_interval > settings.refresh_interval {
        p.push(
            &key("jwks_min_refresh_interval"),
            "is longer than jwks_refresh_interval",
            "make it shorter, e.g. \"10s\" against \"5m\"",
        );
    }
    Some(KeySource::Remote(Arc::new(RemoteJwks::new(settings))))
}

/// The longest value each JWKS timing key accepts: a request may wait `jwks_fetch_timeout`.
fn max_of(key: &str) -> Duration {
    match key {
        "jwks_fetch_timeout" => MAX_FETCH_TIMEOUT,
        _ => MAX_REFRESH_INTERVAL,
    }
}

/// A list of names (permissions): non-empty, no duplicates, no separators that would garble
/// the comma-separated `X-Auth-Permissions` header.
pub(super) fn build_names(names: Option<&[String]>, key: &str, what: &str, p: &mut Problems<'_>) -> Vec<Box<str>> {
    let mut out: Vec<Box<str>> = Vec::new();
    for (j, name) in names.unwrap_or(&[]).iter().enumerate() {
        if !crate::pipeline::auth::is_permission_name(name) {
            p.push(
                &format!("{key}[{j}]"),
                format!("\"{name}\" is not a {what} name"),
                "use letters, digits and _ . : - such as \"read_models\"",
            );
        } else if out.iter().any(|o| **o == **name) {
            p.push(&format!("{key}[{j}]"), format!("\"{name}\" is listed twice"), "list it once");
        } else {
            out.push(name.as_str().into());
        }
    }
    out
}

fn read_file(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|e| format!("cannot read {path}: {e}"))
}

/// A JWKS URL must be https (or http to the local machine), with no credentials in it.
fn check_jwks_url(text: &str) -> Result<reqwest::Url, (String, &'static str)> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| (format!("\"{text}\" is not a URL: {e}"), "write the IdP's JWKS URL, https://.../jwks.json"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(("holds credentials".into(), "remove the user:password@ part"));
    }
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err((
            "is plain http to another machine: anyone on the path could swap the keys".into(),
            "use https:// (plain http is accepted only for localhost)",
        )),
        other => Err((format!("has scheme \"{other}\""), "use https://")),
    }
}
