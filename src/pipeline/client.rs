//! Who the client is: the peer address, or, when the peer is a trusted proxy, the address that
//! proxy reports in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is read from the right: each hop was appended by the proxy before it, so the
//! rightmost address not in `server.trusted_proxies` is the first one no trusted party vouches
//! for, and that is the client. A client that writes its own `X-Forwarded-For` only adds entries
//! to the left of that point, and cannot move it.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// The validated `server.trusted_proxies`.
#[derive(Debug, Default, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// From parsed networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request from `peer` carrying `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.contains(client) {
            return client;
        }
        // Later header lines were appended by nearer proxies: walk lines and entries backwards.
        for line in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(line) = line.to_str() else { return client };
            for entry in line.rsplit(',') {
                match parse_forwarded_ip(entry.trim()) {
                    Some(ip) => {
                        client = ip;
                        if !self.contains(ip) {
                            return ip;
                        }
                    }
                    // Garbage from beyond the last trusted hop: the last trusted hop is the client.
                    None => return client,
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an IP, possibly with a port or brackets, as proxies write them.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let bare = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).unwrap_or(entry);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) compare as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()])
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(proxies().client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"])), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_peer_reports_the_client() {
        let p = proxies();
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&["1.2.3.4"])), ip("1.2.3.4"));
        // The client prepended a forged entry; the proxy appended the real address.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&["6.6.6.6, 1.2.3.4"])), ip("1.2.3.4"));
        // Two trusted hops.
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&["6.6.6.6", "1.2.3.4, 10.0.0.2"])), ip("1.2.3.4"));
        assert_eq!(p.client_ip(ip("::ffff:10.0.0.1"), &headers(&["1.2.3.4:5555"])), ip("1.2.3.4"));
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&["[2001:db8::1]"])), ip("2001:db8::1"));
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
    }

    #[test]
    fn trusted_peer_without_or_with_garbage_header() {
        let p = proxies();
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&[])), ip("10.0.0.1"));
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&["nonsense"])), ip("10.0.0.1"));
        assert_eq!(p.client_ip(ip("10.0.0.1"), &headers(&["10.0.0.3"])), ip("10.0.0.3"));
    }
}
