//! Upstream choice: round robin over an upstream's targets, with its timeouts.
//!
//! Targets are resolved once at config load, so the request path never waits on DNS. A connect
//! failure moves on to the next target (at most once per target); an error after the request
//! was sent is not retried, since the upstream may have acted on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    next: AtomicUsize,
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
        Upstream {
            name,
            targets,
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            tls: None,
            next: AtomicUsize::new(0),
        }
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
        let addr = *servers.get(start.wrapping_add(attempt) % servers.len())?;
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
}
