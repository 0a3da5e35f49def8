//! JSON Web Key Sets: reading them, and keeping a remote one fresh.
//!
//! A remote set (`jwks_url`) is fetched by a background task, never by a request:
//!
//! - at start, without holding the gateway up: until the first fetch succeeds, tokens of that
//!   issuer are refused (and a failed first fetch is retried every `jwks_min_refresh_interval`);
//! - every `jwks_refresh_interval`;
//! - when a token names a `kid` the set does not have (the IdP may have rotated). Requests only
//!   *ask* for that refresh and wait for it at most `jwks_fetch_timeout`; however many ask, the
//!   task fetches at most once per `jwks_min_refresh_interval`, so a flood of random `kid`s
//!   costs the IdP one request per interval. Inside that interval a request does not wait: the
//!   fetch is scheduled for the interval's end and the token is judged by the set as it is.
//!
//! A failed fetch (IdP down, slow, an error status, garbage, no usable key) keeps the last good
//! set. Bodies are capped at [`MAX_JWKS_BYTES`] and redirects are not followed.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use std::sync::LazyLock;
use tokio::sync::{watch, Notify};

use crate::metrics::METRICS;

use super::keys::{KeySet, VerifyKey};

/// The largest JWKS document read.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// The most keys taken from one document.
pub const MAX_JWKS_KEYS: usize = 64;

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The signature keys of a JWKS document, and the JWKs they came from (to tell whether a
/// refresh changed anything). Keys for encryption, symmetric keys (those belong in `secret`),
/// unknown key types and curves are skipped. `Err` when the document is not a JWKS, or has no
/// usable key.
pub fn parse_jwks(document: &[u8]) -> Result<(Vec<Jwk>, Vec<VerifyKey>), String> {
    let doc: Document = serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut jwks = Vec::new();
    let mut keys: Vec<VerifyKey> = Vec::new();
    for value in doc.keys {
        if keys.len() == MAX_JWKS_KEYS {
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let Some(key) = verify_key(&jwk) else { continue };
        if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
            continue;
        }
        keys.push(key);
        jwks.push(jwk);
    }
    if keys.is_empty() {
        return Err("has no usable signature key (RSA, EC P-256/P-384 or Ed25519)".into());
    }
    Ok((jwks, keys))
}

/// The verification key of one JWK, if it is a signature key we can use.
fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    let common = &jwk.common;
    if matches!(common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return None;
    }
    if common.key_operations.as_ref().is_some_and(|ops| !ops.iter().any(|o| matches!(o, KeyOperations::Verify))) {
        return None;
    }
    let declared = match &common.key_algorithm {
        Some(a) => Some(Algorithm::from_str(&a.to_string()).ok()?),
        None => None,
    };
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => None,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => None,
        _ => return None,
    };
    let alg = match (declared, implied) {
        (Some(d), Some(i)) if d != i => return None,
        (d, i) => d.or(i),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if alg.is_some_and(|a| a.family() != key.family()) {
        return None;
    }
    Some(VerifyKey { kid: common.key_id.as_deref().map(Into::into), alg, key })
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the process started; never 0, which means "never".
fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// How a remote set is fetched.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// The issuer's name, for logs.
    pub issuer: String,
    /// The JWKS URL.
    pub url: reqwest::Url,
    /// How often the set is refreshed.
    pub refresh_interval: Duration,
    /// The least time between two fetches, whatever asks for them.
    pub min_refresh_interval: Duration,
    /// How long a fetch may take, and so how long a request waits for one.
    pub fetch_timeout: Duration,
}

/// A key set fetched from a URL and refreshed in the background.
pub struct RemoteJwks {
    settings: RemoteSettings,
    keys: ArcSwap<KeySet>,
    /// Wakes the fetch task for a refresh a request asked for.
    wake: Notify,
    /// Set with each wake-up, cleared when a fetch starts: a wake-up whose fetch has already
    /// happened (a stored `Notify` permit) is ignored.
    requested: AtomicBool,
    in_flight: AtomicBool,
    /// Set when the fetch task has ended (or could not start): nobody would answer a wait.
    stopped: AtomicBool,
    /// When the last fetch started ([`now_ms`]; 0: never).
    last_fetch: AtomicU64,
    /// Counts finished fetches, so requests can wait for the next one.
    fetched: watch::Sender<u64>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks").field("url", &self.settings.url.as_str()).finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// An empty set, to be filled by [`JwksRefresher`].
    pub fn new(settings: RemoteSettings) -> Self {
        RemoteJwks {
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            wake: Notify::new(),
            requested: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            in_flight: AtomicBool::new(false),
            last_fetch: AtomicU64::new(0),
            fetched: watch::Sender::new(0),
        }
    }

    /// Starts from the keys `previous` holds (the same issuer before a reload), so tokens keep
    /// verifying while this set's first fetch is under way.
    pub fn adopt_keys(&self, previous: &RemoteJwks) {
        self.keys.store(previous.keys.load_full());
    }

    /// How this set is fetched.
    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// The current keys.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// Whether a fetch has ever succeeded.
    pub fn is_loaded(&self) -> bool {
        self.generation() > 0
    }

    /// Asks for a refresh because a token's key was not in the set of generation `searched`,
    /// and waits (at most `jwks_fetch_timeout`) for the fetch in flight or the one asked for.
    /// Returns whether the keys changed since `searched`.
    ///
    /// When the last fetch is more recent than `jwks_min_refresh_interval`, it does not wait:
    /// the fetch is only scheduled for the end of that interval (a key the IdP has just rotated
    /// in arrives then), and this request is answered with the set as it is.
    pub async fn refresh_for_unknown_key(&self, searched: u64) -> bool {
        let mut fetched = self.fetched.subscribe();
        if self.generation() != searched {
            return true;
        }
        if self.stopped.load(Ordering::Acquire) {
            return false;
        }
        if !self.in_flight.load(Ordering::Acquire) {
            self.requested.store(true, Ordering::Release);
            self.wake.notify_one();
            let last = self.last_fetch.load(Ordering::Acquire);
            let min = self.settings.min_refresh_interval.as_millis() as u64;
            if last != 0 && now_ms().saturating_sub(last) < min {
                return false;
            }
        }
        let _ = tokio::time::timeout(self.settings.fetch_timeout, fetched.changed()).await;
        self.generation() != searched
    }

    /// Fetches once; on success the new keys replace the old when they differ. `current` is
    /// the JWKs of the set in use.
    async fn fetch_once(&self, client: &reqwest::Client, current: &mut Option<Vec<Jwk>>) {
        self.in_flight.store(true, Ordering::Release);
        self.requested.store(false, Ordering::Release);
        self.last_fetch.store(now_ms(), Ordering::Release);
        let url = self.settings.url.as_str();
        let issuer = self.settings.issuer.as_str();
        match self.fetch(client).await {
            Ok((jwks, keys)) if current.as_ref() != Some(&jwks) => {
                let generation = self.generation() + 1;
                tracing::info!(issuer, url, keys = keys.len(), generation, "JWKS loaded");
                METRICS.jwks_refresh.with_label_values(&[issuer, "updated"]).inc();
                self.keys.store(Arc::new(KeySet { generation, keys }));
                *current = Some(jwks);
            }
            Ok(_) => {
                tracing::debug!(issuer, url, "JWKS unchanged");
                METRICS.jwks_refresh.with_label_values(&[issuer, "unchanged"]).inc();
            }
            Err(error) if current.is_some() => {
                METRICS.jwks_refresh.with_label_values(&[issuer, "failure"]).inc();
                tracing::warn!(issuer, url, %error, "JWKS refresh failed; keeping the last good key set")
            }
            Err(error) => {
                METRICS.jwks_refresh.with_label_values(&[issuer, "failure"]).inc();
                tracing::warn!(issuer, url, %error, "JWKS fetch failed; tokens of this issuer are refused until one succeeds")
            }
        }
        self.in_flight.store(false, Ordering::Release);
        self.fetched.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<(Vec<Jwk>, Vec<VerifyKey>), String> {
        let mut response = client
            .get(self.settings.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("answered HTTP {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("is larger than {} KiB", MAX_JWKS_BYTES / 1024));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    /// Keeps this set fresh until shutdown.
    async fn run(&self, mut shutdown: ShutdownWatch) {
        // However this ends (shutdown, a client that cannot be built, a panic), requests stop
        // waiting for fetches that will not come.
        struct Stopped<'a>(&'a RemoteJwks);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                self.0.stopped.store(true, Ordering::Release);
                // Wake the requests waiting for a fetch now: none is coming (a reload replaced
                // this set, or the gateway stops).
                self.0.fetched.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        let _stopped = Stopped(self);
        let settings = &self.settings;
        let client = match reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .connect_timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(issuer = settings.issuer, error = %describe(&error), "cannot build the JWKS client; tokens of this issuer are refused");
                return;
            }
        };
        let mut current = None;
        loop {
            let started = Instant::now();
            self.fetch_once(&client, &mut current).await;
            let next = if current.is_some() { settings.refresh_interval } else { settings.min_refresh_interval };
            let due = tokio::time::Instant::from_std(started + next);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    _ = self.wake.notified() => {
                        if !self.requested.load(Ordering::Acquire) {
                            continue;
                        }
                        // However many requests asked, at most one fetch per min interval.
                        let rest = settings.min_refresh_interval.saturating_sub(started.elapsed());
                        tokio::select! {
                            _ = tokio::time::sleep(rest) => break,
                            _ = shutdown.changed() => return,
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// A fetch error without the noise: reqwest's `Display` plus its sources.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The Pingora background service that keeps every remote key set fresh.
pub struct JwksRefresher {
    sets: Vec<Arc<RemoteJwks>>,
}

impl JwksRefresher {
    /// A refresher for `sets`.
    pub fn new(sets: Vec<Arc<RemoteJwks>>) -> Self {
        JwksRefresher { sets }
    }
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, shutdown: ShutdownWatch) {
        let tasks: Vec<_> = self
            .sets
            .iter()
            .map(|set| {
                let set = set.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { set.run(shutdown).await })
            })
            .collect();
        for (task, set) in tasks.into_iter().zip(&self.sets) {
            if let Err(error) = task.await {
                tracing::error!(issuer = set.settings.issuer, %error, "the JWKS refresh task failed; tokens of this issuer are refused from now on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_signature_keys_only() {
        // An Ed25519 key, an encryption key, a symmetric key, an unknown curve, garbage.
        let doc = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"oct","kid":"sym","k":"c2VjcmV0"},
            {"kty":"EC","crv":"P-521","kid":"p521","x":"AA","y":"AA"},
            {"kty":"nonsense"}
        ]}"#;
        let (jwks, keys) = parse_jwks(doc).unwrap();
        assert_eq!(jwks.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
    }
}
