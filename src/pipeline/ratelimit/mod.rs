//! Rate limits: named fixed-window policies (`[[rate_limit]]`), applied per route, and the
//! failed-authentication limit per client address.
//!
//! **Windows.** A policy of `N/minute` lets each key make `N` requests per calendar minute; the
//! windows are aligned to the Unix epoch (a minute starts at second 0, a day at 00:00 UTC), as in
//! Kong, so `X-RateLimit-Reset` is the same for every key and every gateway instance, and
//! `Retry-After` is the number of seconds until the next window opens. A request a limit refuses
//! counts against none of the policies checked with it: the client that waits `Retry-After`
//! seconds gets through. (The address-keyed policies, checked before authentication, count
//! every request that reaches them, including one refused afterwards.)
//!
//! **Keys.** `client` is the client address (through trusted proxies; IPv6 clients by their /64,
//! which one subscriber typically holds whole); `identity` is the verified API key id or JWT
//! issuer and subject, or the client address when the request is anonymous; `header:NAME` is the
//! header's first value, or the client address when the header is absent. Keys are hashed with a
//! per-process random SipHash key, so clients cannot aim collisions at each other.
//!
//! **Memory.** Each policy counts exactly, in a sharded table, the first [`window::EXACT_KEYS`] keys that
//! appear in a window; keys beyond that (a flood of addresses) are counted in a fixed-size
//! count-min sketch (`pingora-limits`' lock-free `Estimator`), made fresh for each window that
//! needs one. A sketch over-counts under hash collisions; the mean count per slot is taken off
//! each estimate, so other keys' floods do not refuse a quiet client, and a busy key gets at
//! most its limit plus that noise. Memory is fixed whatever the number of clients.

mod window;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::GatewayError;
use window::{Counted, WindowCounter};
/// Seconds since the epoch: the clock windows are aligned to.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The most policies one route may name (config validation refuses more).
pub const MAX_POLICIES_PER_ROUTE: usize = 8;

/// Index of a policy in [`RateLimiter::policies`].
pub type PolicyId = usize;

/// `N` requests per `period` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per window.
    pub count: u64,
    /// Window length in seconds.
    pub period: u64,
}

impl Rate {
    /// Parses `N/second`, `N/minute`, `N/hour` or `N/day`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("\"{text}\" is not a rate");
        let (count, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "second" | "s" => 1,
            "minute" | "m" => 60,
            "hour" | "h" => 3_600,
            "day" | "d" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("\"{text}\" allows no request at all"));
        }
        if count > u64::from(u32::MAX) {
            return Err(format!("\"{text}\" is more than {} per window", u32::MAX));
        }
        Ok(Rate { count, period })
    }
}

/// What a policy counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address.
    Client,
    /// The verified caller; the client address when anonymous.
    Identity,
    /// A request header's value; the client address when absent.
    Header(HeaderName),
}

impl LimitKey {
    /// Parses `client`, `identity` or `header:NAME`.
    pub fn parse(text: &str) -> Result<LimitKey, String> {
        match text {
            "client" => Ok(LimitKey::Client),
            "identity" => Ok(LimitKey::Identity),
            _ => match text.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.trim().as_bytes())
                    .map(LimitKey::Header)
                    .map_err(|_| format!("\"{name}\" is not a header name")),
                None => Err(format!("\"{text}\" is not a rate-limit key")),
            },
        }
    }

    /// Whether the key needs the verified caller, so the check runs after authentication.
    pub fn needs_identity(&self) -> bool {
        matches!(self, LimitKey::Identity)
    }
}

/// Who made a request, as far as the limits are concerned.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The client address.
    pub client: IpAddr,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The verified caller: an API key id, or a JWT issuer and subject.
    pub identity: Option<(&'a [u8], &'a [u8])>,
}

/// One validated `[[rate_limit]]`.
#[derive(Debug)]
pub struct Policy {
    /// Its name, in headers, errors and logs.
    pub name: Box<str>,
    /// What it counts by.
    pub key: LimitKey,
    /// Its rate.
    pub rate: Rate,
    limit_header: HeaderValue,
    /// Shared with the same policy of the configuration before a reload.
    counter: Arc<WindowCounter>,
}

impl Policy {
    /// A policy with empty counters.
    pub fn new(name: Box<str>, key: LimitKey, rate: Rate) -> Policy {
        Policy { limit_header: HeaderValue::from(rate.count), counter: Arc::new(WindowCounter::new()), name, key, rate }
    }
}

/// Where a request stands against the most restrictive policy of its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The policy.
    pub policy: PolicyId,
    /// Requests left in the window.
    pub remaining: u64,
    /// When the window ends, in seconds since the epoch.
    pub reset: u64,
}

impl Quota {
    /// The tighter of two: fewer requests left, then the later reset.
    fn tighter(self, other: Quota) -> Quota {
        if (other.remaining, std::cmp::Reverse(other.reset)) < (self.remaining, std::cmp::Reverse(self.reset)) {
            other
        } else {
            self
        }
    }
}

/// The [`PolicyId`] of the failed-authentication limit in a [`Quota`].
pub const AUTH_FAILURES: PolicyId = PolicyId::MAX;

/// The name the failed-authentication limit goes by in headers and errors (reserved).
pub const AUTH_FAILURES_NAME: &str = "auth_failures";

/// All policies, and the failed-authentication limit.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// The policies, indexed by [`PolicyId`].
    pub policies: Vec<Policy>,
    /// The failed-authentication limit per client address; `None`: off.
    pub auth_failures: Option<Policy>,
    hasher: RandomState,
}

impl RateLimiter {
    /// Policies and the failed-authentication limit, with empty counters.
    pub fn new(policies: Vec<Policy>, auth_failure_limit: Option<Rate>) -> Self {
        let auth_failures =
            auth_failure_limit.map(|rate| Policy::new(AUTH_FAILURES_NAME.into(), LimitKey::Client, rate));
        RateLimiter { policies, auth_failures, hasher: RandomState::new() }
    }

    /// Takes over the counters of `previous` (the configuration a reload replaces) for every
    /// policy with the same name, key and rate, so a reload neither resets a client's window nor
    /// forgets its failed authentications. Changed and new policies start empty.
    pub fn adopt_counters(&mut self, previous: &RateLimiter) {
        // Counters are keyed by hashes of this hasher: adopted counts need the same one.
        self.hasher = previous.hasher.clone();
        let same = |a: &Policy, b: &Policy| a.name == b.name && a.key == b.key && a.rate == b.rate;
        for policy in &mut self.policies {
            if let Some(old) = previous.policies.iter().find(|old| same(old, policy)) {
                policy.counter = old.counter.clone();
            }
        }
        if let (Some(new), Some(old)) = (&mut self.auth_failures, &previous.auth_failures) {
            if same(old, new) {
                new.counter = old.counter.clone();
            }
        }
    }

    /// The policy a [`Quota`] refers to.
    fn policy(&self, id: PolicyId) -> Option<&Policy> {
        if id == AUTH_FAILURES {
            self.auth_failures.as_ref()
        } else {
            self.policies.get(id)
        }
    }

    /// Counts a request against `policies`; 429 when any is exhausted, in which case none of
    /// them counts it. `quota` becomes the tightest standing of all policies checked so far.
    pub fn check(
        &self,
        policies: &[PolicyId],
        caller: &Caller<'_>,
        now: u64,
        quota: &mut Option<Quota>,
    ) -> Result<(), GatewayError> {
        // What each earlier policy counted, to take it back exactly if a later one refuses.
        let mut counted: [Option<Counted>; MAX_POLICIES_PER_ROUTE] = Default::default();
        for (done, &id) in policies.iter().enumerate() {
            let policy = &self.policies[id];
            let key = self.key_hash(&policy.key, caller);
            let window = now / policy.rate.period;
            let reset = (window + 1) * policy.rate.period;
            match policy.counter.try_acquire(key, window, policy.rate.count) {
                Ok((count, how)) => {
                    if let Some(slot) = counted.get_mut(done) {
                        *slot = Some(how);
                    }
                    let standing = Quota { policy: id, remaining: policy.rate.count.saturating_sub(count), reset };
                    *quota = Some(quota.map_or(standing, |q| q.tighter(standing)));
                }
                Err(()) => {
                    for (&undo, how) in policies.iter().zip(&mut counted).take(done) {
                        if let Some(how) = how.take() {
                            let p = &self.policies[undo];
                            p.counter.release(self.key_hash(&p.key, caller), how);
                        }
                    }
                    *quota = Some(Quota { policy: id, remaining: 0, reset });
                    return Err(refusal(policy, reset - now));
                }
            }
        }
        Ok(())
    }

    /// 429 when `client` has failed authentication too often in the current window; `quota`
    /// then shows the failed-authentication limit, exhausted.
    ///
    /// Checked before the credential is verified, and counted after it failed: a client can
    /// pass the limit by as many guesses as it has in flight at once (verification does not
    /// wait, so that is few), in exchange for no counting at all on the success path.
    pub fn check_auth_failures(&self, client: IpAddr, now: u64, quota: &mut Option<Quota>) -> Result<(), GatewayError> {
        let Some(policy) = &self.auth_failures else { return Ok(()) };
        let window = now / policy.rate.period;
        if policy.counter.get(self.client_hash(client), window) >= policy.rate.count {
            let reset = (window + 1) * policy.rate.period;
            *quota = Some(Quota { policy: AUTH_FAILURES, remaining: 0, reset });
            return Err(refusal(policy, reset - now));
        }
        Ok(())
    }

    /// Counts a failed authentication by `client`.
    pub fn record_auth_failure(&self, client: IpAddr, now: u64) {
        if let Some(policy) = &self.auth_failures {
            // Counting stops at the limit: more would change nothing but the sketch's noise.
            let _ = policy.counter.try_acquire(self.client_hash(client), now / policy.rate.period, policy.rate.count);
        }
    }

    /// Sets the rate-limit headers on a response: for `quota`, `X-RateLimit-*` and the IETF
    /// `RateLimit` field; and `policy_header`, the route's `RateLimit-Policy` rendered at load
    /// (also when no standing is known, as on a preflight).
    pub fn decorate(
        &self,
        headers: &mut HeaderMap,
        quota: Option<&Quota>,
        policy_header: Option<&HeaderValue>,
        now: u64,
    ) {
        if let Some((quota, policy)) = quota.and_then(|q| Some((q, self.policy(q.policy)?))) {
            headers.insert(X_RATELIMIT_LIMIT, policy.limit_header.clone());
            headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(quota.remaining));
            headers.insert(X_RATELIMIT_RESET, HeaderValue::from(quota.reset));
            // `"name";r=N;t=N` written on the stack: the name was checked at load to need no
            // escaping.
            let mut field = [0u8; 160];
            let mut cursor = std::io::Cursor::new(&mut field[..]);
            let written =
                write!(cursor, "\"{}\";r={};t={}", policy.name, quota.remaining, quota.reset.saturating_sub(now));
            let len = cursor.position() as usize;
            if written.is_ok() {
                if let Ok(value) = HeaderValue::from_bytes(&field[..len]) {
                    headers.insert(RATELIMIT, value);
                }
            }
        }
        if let Some(value) = policy_header {
            headers.insert(RATELIMIT_POLICY, value.clone());
        }
    }

    fn key_hash(&self, key: &LimitKey, caller: &Caller<'_>) -> u64 {
        match key {
            LimitKey::Client => self.client_hash(caller.client),
            LimitKey::Identity => match caller.identity {
                Some((a, b)) => self.hasher.hash_one((1u8, a, b)),
                None => self.client_hash(caller.client),
            },
            LimitKey::Header(name) => match caller.headers.get(name) {
                Some(value) => self.hasher.hash_one((2u8, value.as_bytes())),
                None => self.client_hash(caller.client),
            },
        }
    }

    fn client_hash(&self, client: IpAddr) -> u64 {
        let bits: u128 = match crate::pipeline::client::canonical(client) {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            // One subscriber usually holds a whole /64: count the prefix, or a client could
            // rotate through 2^64 addresses.
            IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 127,
        };
        self.hasher.hash_one((0u8, bits))
    }
}

/// The 429 for `policy`, `retry_after` seconds before its next window.
fn refusal(policy: &Policy, retry_after: u64) -> GatewayError {
    GatewayError::RateLimited {
        policy: policy.name.clone(),
        limit: policy.rate.count,
        window: policy.rate.period,
        retry_after: retry_after.max(1),
    }
}

/// The IETF `RateLimit-Policy` value for a route's policies, rendered once at load.
pub fn policy_header(policies: &[Policy], ids: &[PolicyId]) -> Option<HeaderValue> {
    if ids.is_empty() {
        return None;
    }
    let items: Vec<String> = ids
        .iter()
        .map(|&id| {
            let p = &policies[id];
            format!("\"{}\";q={};w={}", p.name, p.rate.count, p.rate.period)
        })
        .collect();
    HeaderValue::from_str(&items.join(", ")).ok()
}

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");

/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The IETF `RateLimit` field (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The IETF `RateLimit-Policy` field.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::window::*;
    use super::*;

    fn limiter(rates: &[(&str, &str)]) -> RateLimiter {
        let policies = rates
            .iter()
            .map(|(key, rate)| Policy::new((*key).into(), LimitKey::parse(key).unwrap(), Rate::parse(rate).unwrap()))
            .collect();
        RateLimiter::new(policies, Some(Rate { count: 3, period: 60 }))
    }

    fn caller<'a>(ip: &str, headers: &'a HeaderMap, identity: Option<(&'a [u8], &'a [u8])>) -> Caller<'a> {
        Caller { client: ip.parse().unwrap(), headers, identity }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("100/minute"), Ok(Rate { count: 100, period: 60 }));
        assert_eq!(Rate::parse("10/hour"), Ok(Rate { count: 10, period: 3600 }));
        assert_eq!(Rate::parse("5/second"), Ok(Rate { count: 5, period: 1 }));
        assert_eq!(Rate::parse("1/day"), Ok(Rate { count: 1, period: 86_400 }));
        for bad in ["", "100", "0/minute", "-1/minute", "10/fortnight", "ten/minute", "99999999999/second"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_parse() {
        assert_eq!(LimitKey::parse("client"), Ok(LimitKey::Client));
        assert_eq!(LimitKey::parse("header:X-Tenant"), Ok(LimitKey::Header(HeaderName::from_static("x-tenant"))));
        assert!(LimitKey::parse("header:bad name").is_err());
        assert!(LimitKey::parse("ip").is_err());
    }

    #[test]
    fn the_limit_plus_one_is_refused_until_the_window_ends() {
        let l = limiter(&[("client", "3/minute")]);
        let h = HeaderMap::new();
        let c = caller("192.0.2.1", &h, None);
        let now = 600; // the start of a minute
        let mut quota = None;
        for left in [2, 1, 0] {
            l.check(&[0], &c, now + 10, &mut quota).unwrap();
            assert_eq!(quota, Some(Quota { policy: 0, remaining: left, reset: 660 }));
        }
        let refused = l.check(&[0], &c, now + 10, &mut quota).unwrap_err();
        assert_eq!(
            refused,
            GatewayError::RateLimited { policy: "client".into(), limit: 3, window: 60, retry_after: 50 }
        );
        // The next window lets it in again.
        let mut quota = None;
        l.check(&[0], &c, 660, &mut quota).unwrap();
        assert_eq!(quota.unwrap().remaining, 2);
    }

    #[test]
    fn keys_are_independent() {
        let l = limiter(&[("client", "1/minute"), ("identity", "1/minute"), ("header:x-tenant", "1/minute")]);
        let h = HeaderMap::new();
        let mut q = None;
        l.check(&[0], &caller("192.0.2.1", &h, None), 0, &mut q).unwrap();
        l.check(&[0], &caller("192.0.2.2", &h, None), 0, &mut q).unwrap();
        assert!(l.check(&[0], &caller("192.0.2.1", &h, None), 0, &mut q).is_err());
        // IPv6 clients count by /64.
        l.check(&[0], &caller("2001:db8::1", &h, None), 0, &mut q).unwrap();
        assert!(l.check(&[0], &caller("2001:db8::ffff:1", &h, None), 0, &mut q).is_err());
        l.check(&[0], &caller("2001:db8:0:1::1", &h, None), 0, &mut q).unwrap();
        // Identities: per key id, whatever the address.
        l.check(&[1], &caller("192.0.2.1", &h, Some((b"key", b"a"))), 0, &mut q).unwrap();
        l.check(&[1], &caller("192.0.2.1", &h, Some((b"key", b"b"))), 0, &mut q).unwrap();
        assert!(l.check(&[1], &caller("192.0.2.9", &h, Some((b"key", b"a"))), 0, &mut q).is_err());
        // Headers; absent, the address.
        let mut t1 = HeaderMap::new();
        t1.insert("x-tenant", HeaderValue::from_static("t1"));
        l.check(&[2], &caller("192.0.2.1", &t1, None), 0, &mut q).unwrap();
        assert!(l.check(&[2], &caller("192.0.2.2", &t1, None), 0, &mut q).is_err());
        l.check(&[2], &caller("192.0.2.2", &h, None), 0, &mut q).unwrap();
    }

    #[test]
    fn a_refused_request_counts_against_no_policy() {
        let l = limiter(&[("client", "5/minute"), ("identity", "1/minute")]);
        let h = HeaderMap::new();
        let c = caller("192.0.2.1", &h, Some((b"key", b"a")));
        let mut q = None;
        l.check(&[0, 1], &c, 0, &mut q).unwrap();
        for _ in 0..3 {
            assert!(l.check(&[0, 1], &c, 0, &mut q).is_err());
        }
        // Only the admitted request counted against the client policy.
        let mut q = None;
        l.check(&[0], &c, 0, &mut q).unwrap();
        assert_eq!(q.unwrap().remaining, 3);
    }

    #[test]
    fn the_tightest_policy_sets_the_quota() {
        let l = limiter(&[("client", "100/minute"), ("identity", "10/hour")]);
        let h = HeaderMap::new();
        let c = caller("192.0.2.1", &h, None);
        let mut q = None;
        l.check(&[0, 1], &c, 7200, &mut q).unwrap();
        assert_eq!(q, Some(Quota { policy: 1, remaining: 9, reset: 10_800 }));
        assert_eq!(policy_header(&l.policies, &[0, 1]).unwrap(), "\"client\";q=100;w=60, \"identity\";q=10;w=3600");
    }

    #[test]
    fn memory_is_bounded_and_no_key_escapes_its_limit() {
        let l = limiter(&[("client", "50/minute")]);
        let h = HeaderMap::new();
        let mut q = None;
        // Far more clients than the exact table holds: the rest go to the sketch.
        let clients = EXACT_KEYS as u32 + 40_000;
        for i in 0..clients {
            let c = Caller { client: IpAddr::V4(i.into()), headers: &h, identity: None };
            l.check(&[0], &c, 0, &mut q).unwrap();
        }
        let counter = &l.policies[0].counter;
        let exact: usize = counter.shards.iter().map(|s| s.lock().unwrap().counts.len()).sum();
        // Every shard filled up to its share, and not one entry more.
        assert_eq!(exact, EXACT_KEYS);
        let sketch = counter.sketch.load_full().expect("the overflow went to a sketch");
        assert!(sketch.total.load(Ordering::Relaxed) > 30_000);
        // Exactly counted clients get exactly their limit; sketched ones never more (a sketch
        // over-counts under collisions, never under-counts).
        for (i, exact) in [(0, true), (1, true), (clients - 1, false), (clients - 2, false)] {
            let c = Caller { client: IpAddr::V4(i.into()), headers: &h, identity: None };
            let admitted = (0..100).filter(|_| l.check(&[0], &c, 0, &mut q).is_ok()).count() + 1;
            if exact {
                assert_eq!(admitted, 50, "client {i}");
            } else {
                // Over-counted by collisions, or let through by the noise allowance (2 a slot here).
                assert!((40..=53).contains(&admitted), "client {i}: {admitted}");
            }
        }
    }

    #[test]
    fn each_window_gets_a_fresh_sketch_and_late_refunds_do_nothing() {
        let counter = WindowCounter::new();
        // Fill the key's shard (shard 0) with other keys, so the key lives in the sketch.
        let key = 7u64 << 40;
        let fill = |window| {
            for m in 0..(EXACT_KEYS / SHARDS) as u64 {
                assert!(counter.try_acquire((m * SHARDS as u64) << 32 | 1, window, 5).is_ok());
            }
        };
        let count = |r: Result<(u64, Counted), ()>| r.map(|(n, _)| n);
        fill(10);
        assert_eq!(count(counter.try_acquire(key, 10, 2)), Ok(1));
        assert_eq!(count(counter.try_acquire(key, 10, 2)), Ok(2));
        assert_eq!(count(counter.try_acquire(key, 10, 2)), Err(()));
        assert_eq!(counter.get(key, 10), 2);
        // The next windows start from nothing: the old counts are gone, not carried.
        let mut in_12 = None;
        for window in [11, 12, 14] {
            fill(window);
            let (n, how) = counter.try_acquire(key, window, 2).unwrap();
            assert_eq!(n, 1, "window {window}");
            assert!(matches!(how, Counted::Sketch(_)), "{how:?}");
            assert_eq!(counter.sketch.load_full().map(|s| s.window), Some(window));
            if window == 12 {
                in_12 = Some(how);
            }
        }
        // A refund for a closed window changes nothing in the current one.
        counter.release(key, in_12.unwrap());
        assert_eq!(counter.get(key, 14), 1);
        // A request from a closed window passes uncounted; it never touches the new counts.
        let (_, how) = counter.try_acquire(key, 13, 1).unwrap();
        assert!(matches!(how, Counted::Nowhere));
        assert_eq!(counter.get(key, 14), 1);
        counter.release(key, how);
        assert_eq!(counter.get(key, 14), 1);
        // A refund in the current window takes back exactly one, wherever it was counted.
        let (_, how) = counter.try_acquire(key, 14, 5).unwrap();
        assert_eq!(counter.get(key, 14), 2);
        counter.release(key, how);
        assert_eq!(counter.get(key, 14), 1);
        let exact = 1u64 << 32 | 99; // shard 1: still has room
        let (_, how) = counter.try_acquire(exact, 14, 5).unwrap();
        assert!(matches!(how, Counted::Exact(14)));
        counter.release(exact, how);
        assert_eq!(counter.get(exact, 14), 0);
    }

    #[test]
    fn a_flood_of_other_keys_neither_pushes_a_quiet_client_over_nor_frees_a_busy_one() {
        let counter = WindowCounter::new();
        for k in 0..EXACT_KEYS as u64 * 2 {
            let _ = counter.try_acquire(k << 32 | k, 1, 1_000_000);
        }
        // Well over a hundred thousand other keys in the sketch's 16,384 slots a row.
        for k in 0..(8 * SKETCH_SLOTS as u64) {
            let _ = counter.try_acquire(u64::MAX - k, 1, 8);
        }
        let sketch = counter.sketch.load_full().unwrap();
        let noise = sketch.total.load(Ordering::Relaxed) / SKETCH_SLOTS as u64;
        assert!(noise >= 8, "the flood made noise of {noise} per slot");
        // Estimates are noisy either way: nearly every quiet client gets its full limit (about
        // 3% fall a little short, with this much noise), and none gets more than the limit plus
        // the noise.
        let mut short = 0;
        for i in 0..200u64 {
            let key = (12_345 + i) << 33 | 5;
            let admitted = (0..100).filter(|_| counter.try_acquire(key, 1, 8).is_ok()).count() as u64;
            assert!(admitted <= 8 + noise + 1, "no more than the limit plus the noise: {admitted}");
            if admitted < 8 {
                short += 1;
            }
        }
        assert!(short <= 20, "{short} of 200 quiet clients got less than their limit");
    }

    #[test]
    fn a_reload_keeps_the_counts_of_unchanged_policies() {
        let h = HeaderMap::new();
        let c = caller("192.0.2.9", &h, None);
        let before = limiter(&[("client", "2/minute"), ("header:x-tenant", "5/minute")]);
        for _ in 0..2 {
            before.check(&[0], &c, 600, &mut None).unwrap();
        }
        // The same client policy, and the tenant one changed to another rate.
        let mut after = limiter(&[("client", "2/minute"), ("header:x-tenant", "9/minute")]);
        after.adopt_counters(&before);
        assert!(after.check(&[0], &c, 601, &mut None).is_err(), "the window's count carried over");
        let mut fresh = limiter(&[("client", "3/minute")]);
        fresh.adopt_counters(&before);
        assert!(fresh.check(&[0], &c, 601, &mut None).is_ok(), "a changed rate starts empty");
    }

    #[test]
    fn failed_authentications_block_after_the_limit() {
        let l = limiter(&[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut q = None;
        for _ in 0..3 {
            l.check_auth_failures(ip, 30, &mut q).unwrap();
            l.record_auth_failure(ip, 30);
        }
        assert_eq!(q, None, "nothing to show until the limit bites");
        assert!(matches!(
            l.check_auth_failures(ip, 31, &mut q),
            Err(GatewayError::RateLimited { retry_after: 29, .. })
        ));
        assert_eq!(q, Some(Quota { policy: AUTH_FAILURES, remaining: 0, reset: 60 }));
        l.check_auth_failures("192.0.2.2".parse().unwrap(), 31, &mut None).unwrap();
        l.check_auth_failures(ip, 60, &mut None).unwrap();
    }

    #[test]
    fn headers_render_for_any_policy() {
        let l = limiter(&[("client", "10/minute")]);
        let mut headers = HeaderMap::new();
        let quota = Quota { policy: AUTH_FAILURES, remaining: 0, reset: 120 };
        l.decorate(&mut headers, Some(&quota), None, 100);
        assert_eq!(headers["x-ratelimit-limit"], "3");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert_eq!(headers["x-ratelimit-reset"], "120");
        assert_eq!(headers["ratelimit"], "\"auth_failures\";r=0;t=20");
        let mut bare = HeaderMap::new();
        let policy = policy_header(&l.policies, &[0]);
        l.decorate(&mut bare, None, policy.as_ref(), 100);
        assert_eq!(bare["ratelimit-policy"], "\"client\";q=10;w=60");
        assert!(bare.get("x-ratelimit-remaining").is_none());
    }
}
