//! `[[listener]]`: the addresses served, plain or TLS, and where a plain one redirects.

use std::net::SocketAddr;
use std::sync::Arc;

use super::file::ListenerSection;
use super::sources::Problems;
use super::tls::build_listener_tls;
use crate::tls::ListenerTls;

/// One validated `[[listener]]`.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Bound address.
    pub address: SocketAddr,
    /// Accept HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// `redirect_https`: answer every request with 308 to the same URL on https, on this port
    /// (a TLS listener's on the same address).
    pub redirect_to: Option<u16>,
    /// TLS termination, with its live certificates.
    pub tls: Option<Arc<ListenerTls>>,
}

/// Validates the `[[listener]]`s.
pub(super) fn build(sections: &[ListenerSection], p: &mut Problems<'_>) -> Vec<Listener> {
    if sections.is_empty() {
        p.push("listener", "no [[listener]] is configured", "add one, e.g. [[listener]] address = \"127.0.0.1:8080\"");
    }
    let mut listeners: Vec<Listener> = Vec::new();
    // (config index, listener index) of the plain listeners with redirect_https.
    let mut redirects: Vec<(usize, usize)> = Vec::new();
    for (i, l) in sections.iter().enumerate() {
        let key = format!("listener[{i}].address");
        let Some(address) = &l.address else {
            p.push(&key, "is missing", "give the IP and port to listen on, e.g. \"127.0.0.1:8080\"");
            continue;
        };
        match address.parse::<SocketAddr>() {
            Ok(addr) if listeners.iter().any(|other| other.address == addr) => {
                p.push(&key, format!("{addr} is listed twice"), "remove the duplicate [[listener]]")
            }
            Ok(addr) => {
                let tls = l.tls.as_ref().and_then(|t| build_listener_tls(t, &format!("listener[{i}].tls"), p));
                let redirect_https = l.redirect_https.unwrap_or(false);
                if redirect_https && l.tls.is_some() {
                    p.push(
                        &format!("listener[{i}].redirect_https"),
                        "is set on a TLS listener, which would redirect to itself",
                        "set it on the plain listener",
                    );
                }
                if l.h2c.unwrap_or(false) && l.tls.is_some() {
                    p.push(
                        &format!("listener[{i}].h2c"),
                        "is for plain listeners; TLS listeners offer HTTP/2 by ALPN",
                        "remove h2c and set tls.http2 = true",
                    );
                }
                let listener = Listener { address: addr, h2c: l.h2c.unwrap_or(false), redirect_to: None, tls };
                listeners.push(listener);
                if redirect_https {
                    redirects.push((i, listeners.len() - 1));
                }
            }
            Err(_) => p.push(
                &key,
                format!("\"{address}\" is not an IP:port"),
                "write an IP address and port such as \"127.0.0.1:8080\" or \"[::]:8080\"",
            ),
        }
    }
    // A redirect goes to the TLS listener on the same address (443 when there are several), so
    // a client is never sent to an internal or mutual-TLS-only port by accident.
    for (i, at) in redirects {
        let plain = listeners[at].address;
        let same_address = |l: &&Listener| {
            l.tls.is_some()
                && (l.address.ip() == plain.ip() || l.address.ip().is_unspecified() || plain.ip().is_unspecified())
        };
        let candidates: Vec<u16> = listeners.iter().filter(same_address).map(|l| l.address.port()).collect();
        let port = if candidates.contains(&443) { Some(443) } else { candidates.first().copied() };
        match port {
            Some(port) if candidates.len() == 1 || port == 443 => listeners[at].redirect_to = Some(port),
            Some(_) => p.push(
                &format!("listener[{i}].redirect_https"),
                format!(
                    "{} TLS listeners share this address, and none is on 443: the redirect target is ambiguous",
                    candidates.len()
                ),
                "keep one TLS listener per address, or put one on port 443",
            ),
            None => p.push(
                &format!("listener[{i}].redirect_https"),
                format!("redirects to https, but no [[listener]] on {} has a [listener.tls]", plain.ip()),
                "add a TLS listener on the same address, or remove redirect_https",
            ),
        }
    }
    listeners
}
