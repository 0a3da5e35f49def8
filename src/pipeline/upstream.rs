//! Upstream choice: round robin over an upstream's healthy targets, with its timeouts.
//!
//! Targets are resolved once at config load, so the request path never waits on DNS. A connect
//! failure moves on to the next target (at most once per target); an error after the request
//! was sent is not retried, since the upstream may have acted on it.
//!
//! With a `health_check`, targets that fail it are tried only after every passing one (and
//! only when all have failed does a request go to them at all, as Envoy's panic mode does:
//! a health check that is wrong must not take the whole upstream out). Until its first probe
//! answers, a target is routable but not counted healthy by `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;

/// Where an upstream's requests go.
#[derive(Debug)]
pub enum Targets {
    /// `builtin:echo`: the gateway answers with the request as an upstream would receive it.
    Echo,
    /// Real servers, in round-robin order.
    Servers(Vec<SocketAddr>),
}

/// One validated `[[upstream]]`.
#[derive(Debug)]
pub struct Upstream {
    /// Name for logs and metrics.
    pub name: Box<str>,
    /// Its targets.
    pub targets: Targets,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for each read of the response.
    pub read_timeout: Duration,
    /// Longest wait for each write of the request.
    pub write_timeout: Duration,
    /// How long an idle connection stays in the reuse pool.
    pub idle_timeout: Duration,
    /// TLS to the targets, verified.
    pub tls: Option<UpstreamTls>,
    /// Active health checking, when configured.
    pub health_check: Option<HealthCheck>,
    /// Each target's health, as the health checker last saw it.
    pub health: Arc<[TargetHealth]>,
    next: AtomicUsize,
}

/// `health_check = { path, interval, timeout, healthy_threshold, unhealthy_threshold }`.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Path probed with GET; a 2xx answer passes.
    pub path: Box<str>,
    /// Time between probes of a target.
    pub interval: Duration,
    /// Longest a probe may take, connection included.
    pub timeout: Duration,
    /// Consecutive passes that make a failing target healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy target out of rotation.
    pub unhealthy_threshold: u32,
}

/// A target's health: unknown until its first probe, then healthy or unhealthy.
#[derive(Debug, Default)]
pub struct TargetHealth(AtomicU8);

/// A target's health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not probed yet (or not checked at all).
    Unknown,
    /// Passing.
    Healthy,
    /// Failing: tried only when no target passes.
    Unhealthy,
}

impl TargetHealth {
    /// The current state.
    pub fn get(&self) -> Health {
        match self.0.load(Ordering::Relaxed) {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// Sets the state (the health checker's job).
    pub fn set(&self, health: Health) {
        let v = match health {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

/// `[upstream] tls`: the name sent (SNI) and verified, and the CAs trusted (the system's when
/// none are given).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Server name: sent as SNI and checked against the certificate.
    pub sni: String,
    /// CA certificates to verify with, instead of the system store.
    pub ca: Option<Arc<CaType>>,
    /// A hash of `ca`, for the connection pool's key.
    pub pool_key: u64,
}

impl Upstream {
    /// A new upstream, starting its rotation at the first target.
    pub fn new(
        name: Box<str>,
        targets: Targets,
        connect_timeout: Duration,
        read_timeout: Duration,
        write_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let count = match &targets {
            Targets::Echo => 0,
            Targets::Servers(s) => s.len(),
        };
        Upstream {
            name,
            targets,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            tls: None,
            health_check: None,
            health: (0..count).map(|_| TargetHealth::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The same upstream, health-checked.
    pub fn with_health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }

    /// After a reload: each target keeps the health `previous` (the same upstream before it)
    /// saw, when the target and the check are unchanged, so `/readyz` and the rotation do not
    /// start from "unknown" again.
    pub fn adopt_health(&self, previous: &Upstream) {
        let (Targets::Servers(now), Targets::Servers(before)) = (&self.targets, &previous.targets) else { return };
        let same_check = match (&self.health_check, &previous.health_check) {
            (Some(a), Some(b)) => a.path == b.path && a.timeout == b.timeout,
            _ => false,
        };
        if !same_check {
            return;
        }
        for (i, addr) in now.iter().enumerate() {
            if let Some(j) = before.iter().position(|b| b == addr) {
                self.health[i].set(previous.health[j].get());
            }
        }
    }

    /// Targets that pass the health check; all of them when there is none (`builtin:echo`
    /// counts as one).
    pub fn healthy_targets(&self) -> usize {
        match (&self.targets, &self.health_check) {
            (Targets::Echo, _) => 1,
            (Targets::Servers(s), None) => s.len(),
            (Targets::Servers(_), Some(_)) => self.health.iter().filter(|h| h.get() == Health::Healthy).count(),
        }
    }

    /// How many targets there are (`builtin:echo` counts as one).
    pub fn target_count(&self) -> usize {
        match &self.targets {
            Targets::Echo => 1,
            Targets::Servers(s) => s.len(),
        }
    }

    /// The target index for the `attempt`-th try of a request whose rotation starts at
    /// `start`: round robin over the routable targets (so each takes an equal share, not the
    /// share of a failing neighbour too), then over the failing ones.
    fn pick(&self, servers: usize, start: usize, attempt: usize) -> usize {
        if self.health_check.is_none() {
            return start.wrapping_add(attempt) % servers;
        }
        let routable = |i: &usize| self.health[*i].get() != Health::Unhealthy;
        let up = (0..servers).filter(routable).count();
        let (pool_routable, position) = if attempt < up || up == servers {
            (true, start.wrapping_add(attempt) % up.max(1))
        } else {
            (false, start.wrapping_add(attempt - up) % (servers - up))
        };
        (0..servers).filter(|i| routable(i) == pool_routable).nth(position).unwrap_or(position % servers)
    }

    /// The same upstream, reached over TLS.
    pub fn with_tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Where this request's rotation starts (one relaxed atomic add; no lock).
    pub fn rotation_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// How many targets a request may try.
    pub fn attempts(&self) -> usize {
        match &self.targets {
            Targets::Echo => 0,
            Targets::Servers(s) => s.len(),
        }
    }

    /// The peer for the `attempt`-th try of a request whose rotation starts at `start`.
    pub fn peer(&self, start: usize, attempt: usize) -> Option<Box<HttpPeer>> {
        let Targets::Servers(servers) = &self.targets else { return None };
        if servers.is_empty() {
            return None;
        }
        self.peer_for(servers[self.pick(servers.len(), start, attempt)])
    }

    /// The peer for the target at `addr`, with this upstream's TLS and timeouts.
    pub fn peer_for(&self, addr: SocketAddr) -> Option<Box<HttpPeer>> {
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some(tls) => {
                let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
                // Verification is never optional: the certificate must chain to a trusted CA and
                // name `sni`.
                peer.options.verify_cert = true;
                peer.options.verify_hostname = true;
                peer.options.ca = tls.ca.clone();
                // Pingora's connection pool does not key on the CA: keep connections verified
                // against one trust store from serving an upstream that trusts another.
                peer.group_key = tls.pool_key;
                peer
            }
        };
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.write_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        Some(Box::new(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_and_failover_order() {
        let servers: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let s = Duration::from_secs(1);
        let u = Upstream::new("u".into(), Targets::Servers(servers), s, s, s, s);
        let a = u.rotation_start();
        let b = u.rotation_start();
        let port = |start, attempt| u.peer(start, attempt).unwrap()._address.to_string();
        assert_ne!(port(a, 0), port(b, 0));
        assert_ne!(port(a, 0), port(a, 1));
        assert_eq!(u.attempts(), 2);
    }

    #[test]
    fn a_reload_keeps_the_health_of_unchanged_targets() {
        let s = Duration::from_secs(1);
        let check =
            HealthCheck { path: "/h".into(), interval: s, timeout: s, healthy_threshold: 1, unhealthy_threshold: 1 };
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let before = Upstream::new("u".into(), Targets::Servers(vec![addr(1), addr(2)]), s, s, s, s)
            .with_health_check(check.clone());
        before.health[0].set(Health::Unhealthy);
        before.health[1].set(Health::Healthy);
        // Reordered, one target added: each keeps its own state; the new one is unknown.
        let after = Upstream::new("u".into(), Targets::Servers(vec![addr(2), addr(3), addr(1)]), s, s, s, s)
            .with_health_check(check.clone());
        after.adopt_health(&before);
        let states: Vec<Health> = after.health.iter().map(TargetHealth::get).collect();
        assert_eq!(states, [Health::Healthy, Health::Unknown, Health::Unhealthy]);
        // Another check path: nothing is carried over.
        let other = HealthCheck { path: "/other".into(), ..check };
        let changed = Upstream::new("u".into(), Targets::Servers(vec![addr(1)]), s, s, s, s).with_health_check(other);
        changed.adopt_health(&before);
        assert_eq!(changed.health[0].get(), Health::Unknown);
    }

    #[test]
    fn failing_targets_come_last() {
        let servers: Vec<SocketAddr> = (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        let s = Duration::from_secs(1);
        let check = HealthCheck {
            path: "/health".into(),
            interval: s,
            timeout: s,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        };
        let u = Upstream::new("u".into(), Targets::Servers(servers), s, s, s, s).with_health_check(check);
        let port = |start, attempt| u.peer(start, attempt).unwrap()._address.as_inet().unwrap().port();
        // Unknown targets are routable, not healthy.
        assert_eq!(u.healthy_targets(), 0);
        assert_eq!((port(0, 0), port(1, 0), port(2, 0)), (1, 2, 3));
        u.health[1].set(Health::Unhealthy);
        u.health[0].set(Health::Healthy);
        assert_eq!(u.healthy_targets(), 1);
        // Every rotation skips port 2 until the routable ones are used up...
        for start in 0..6 {
            assert_ne!(port(start, 0), 2);
            assert_ne!(port(start, 0), port(start, 1));
            assert_eq!(port(start, 2), 2);
        }
        // ...and the two routable targets share the load evenly.
        let firsts: Vec<u16> = (0..6).map(|start| port(start, 0)).collect();
        assert_eq!(firsts.iter().filter(|&&p| p == 1).count(), 3, "{firsts:?}");
        // All failing: requests still go somewhere, in rotation.
        for h in u.health.iter() {
            h.set(Health::Unhealthy);
        }
        assert_eq!((port(0, 0), port(1, 0), port(2, 0)), (1, 2, 3));
    }
}
