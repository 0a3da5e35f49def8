//! `[[upstream]]`: targets, timeouts, TLS to the upstream and active health checks.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::file::{HealthCheckSection, UpstreamSection, UpstreamTlsSection};
use super::sources::Problems;
use super::units::duration;
use crate::pipeline::upstream::{HealthCheck, Targets, Upstream, UpstreamTls};

/// `upstream.connect_timeout` when unset.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// `upstream.read_timeout` when unset.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `upstream.write_timeout` when unset.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `upstream.idle_timeout` when unset: below the usual 60–75 s of backend keep-alive timeouts,
/// so the gateway drops an idle connection before the backend does.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// `health_check.interval` when unset.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// `health_check.timeout` when unset.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `health_check.healthy_threshold` when unset (HAProxy's `rise`).
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;

/// `health_check.unhealthy_threshold` when unset (HAProxy's `fall`).
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// The target that makes the gateway answer with the request it would forward.
pub const ECHO_TARGET: &str = "builtin:echo";

/// Validates the `[[upstream]]`s: the upstreams, and each one's index by name.
pub(super) fn build(sections: &[UpstreamSection], p: &mut Problems<'_>) -> (Vec<Upstream>, HashMap<String, usize>) {
    let mut upstreams = Vec::new();
    let mut index = HashMap::new();
    for (i, u) in sections.iter().enumerate() {
        let key = |k: &str| format!("upstream[{i}].{k}");
        let Some(name) = u.name.as_deref().filter(|n| !n.is_empty()) else {
            p.push(&key("name"), "is missing", "give every [[upstream]] a name that routes refer to");
            continue;
        };
        if index.contains_key(name) {
            p.push(&key("name"), format!("\"{name}\" names two upstreams"), "give each [[upstream]] its own name");
            continue;
        }
        let targets = build_targets(u.targets.as_deref(), &key("targets"), p);
        let upstream = Upstream::new(
            name.into(),
            targets,
            duration(p, &key("connect_timeout"), u.connect_timeout.as_deref(), DEFAULT_CONNECT_TIMEOUT),
            duration(p, &key("read_timeout"), u.read_timeout.as_deref(), DEFAULT_READ_TIMEOUT),
            duration(p, &key("write_timeout"), u.write_timeout.as_deref(), DEFAULT_WRITE_TIMEOUT),
            duration(p, &key("idle_timeout"), u.idle_timeout.as_deref(), DEFAULT_IDLE_TIMEOUT),
        );
        let upstream = match &u.tls {
            None => upstream,
            Some(tls) => match build_upstream_tls(tls, u.targets.as_deref().unwrap_or(&[]), &key("tls"), p) {
                Some(tls) => upstream.with_tls(tls),
                None => upstream,
            },
        };
        let upstream = match &u.health_check {
            None => upstream,
            Some(_) if matches!(upstream.targets, Targets::Echo) => {
                p.push(&key("health_check"), "is set on builtin:echo, which has nothing to check", "remove it");
                upstream
            }
            Some(section) => match build_health_check(section, &key("health_check"), p) {
                Some(check) => upstream.with_health_check(check),
                None => upstream,
            },
        };
        index.insert(name.to_string(), upstreams.len());
        upstreams.push(upstream);
    }
    (upstreams, index)
}

/// `health_check = { path, interval, timeout, healthy_threshold, unhealthy_threshold }`.
fn build_health_check(section: &HealthCheckSection, key: &str, p: &mut Problems<'_>) -> Option<HealthCheck> {
    let path = match section.path.as_deref() {
        None => {
            p.push(&format!("{key}.path"), "is missing", "give the path to probe, e.g. path = \"/health\"");
            return None;
        }
        Some(path) if !path.starts_with('/') || path.bytes().any(|b| !b.is_ascii_graphic()) => {
            p.push(
                &format!("{key}.path"),
                format!("\"{path}\" is not an absolute path"),
                "write a path such as \"/health\" (a query is allowed, spaces are not)",
            );
            return None;
        }
        Some(path) => path,
    };
    let interval = duration(p, &format!("{key}.interval"), section.interval.as_deref(), DEFAULT_HEALTH_CHECK_INTERVAL);
    let timeout = duration(p, &format!("{key}.timeout"), section.timeout.as_deref(), DEFAULT_HEALTH_CHECK_TIMEOUT);
    let threshold = |name: &str, value: Option<u32>, default: u32, p: &mut Problems<'_>| match value {
        None => default,
        Some(0) => {
            p.push(&format!("{key}.{name}"), "is 0", "give at least 1");
            default
        }
        Some(n) => n,
    };
    let healthy_threshold = threshold("healthy_threshold", section.healthy_threshold, DEFAULT_HEALTHY_THRESHOLD, p);
    let unhealthy_threshold =
        threshold("unhealthy_threshold", section.unhealthy_threshold, DEFAULT_UNHEALTHY_THRESHOLD, p);
    Some(HealthCheck { path: path.into(), interval, timeout, healthy_threshold, unhealthy_threshold })
}

/// `tls = { sni, ca }`: `sni` defaults to the first target's host name.
fn build_upstream_tls(
    section: &UpstreamTlsSection,
    targets: &[String],
    key: &str,
    p: &mut Problems<'_>,
) -> Option<UpstreamTls> {
    if targets.iter().any(|t| t == ECHO_TARGET) {
        p.push(key, "is set on builtin:echo, which is not reached over the network", "remove tls");
        return None;
    }
    let host_of = |target: &String| {
        let host = target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host.parse::<IpAddr>().is_err()).then(|| host.to_string())
    };
    let sni = match section.sni.as_deref() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ if targets.iter().map(host_of).collect::<HashSet<_>>().len() > 1 => {
            p.push(
                &format!("{key}.sni"),
                "is missing, and the targets have different host names",
                "give the one name every target's certificate is for, or split them into upstreams",
            );
            return None;
        }
        _ => match targets.first().and_then(host_of) {
            Some(host) => host,
            None => {
                p.push(
                    &format!("{key}.sni"),
                    "is missing, and the first target is an IP address, which certificates rarely name",
                    "give the name the upstream's certificate is for, e.g. sni = \"registry.internal\"",
                );
                return None;
            }
        },
    };
    let ca = match section.ca.as_deref() {
        None => None,
        Some(path) => match crate::tls::read_certificates(std::path::Path::new(path)) {
            Ok(certs) => Some((Arc::new(certs.into_boxed_slice()), path)),
            Err(e) => {
                p.push(
                    &format!("{key}.ca"),
                    e,
                    "point it at a PEM file of the CA certificates that sign the upstream's",
                );
                return None;
            }
        },
    };
    let pool_key = ca.as_ref().map_or(0, |(certs, _)| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for cert in certs.iter() {
            std::hash::Hash::hash(&cert.to_der().unwrap_or_default(), &mut hasher);
        }
        std::hash::Hasher::finish(&hasher)
    });
    Some(UpstreamTls { sni, ca: ca.map(|(certs, _)| certs), pool_key })
}

fn build_targets(targets: Option<&[String]>, key: &str, p: &mut Problems<'_>) -> Targets {
    let fix = "list \"IP:port\" or \"host:port\" targets, or \"builtin:echo\"";
    let targets = match targets {
        Some(t) if !t.is_empty() => t,
        _ => {
            p.push(key, "is missing or empty", fix);
            return Targets::Servers(Vec::new());
        }
    };
    if targets.iter().any(|t| t == ECHO_TARGET) {
        if targets.len() > 1 {
            p.push(key, "mixes builtin:echo with servers", "use builtin:echo alone, or only servers");
        }
        return Targets::Echo;
    }
    let mut servers = Vec::new();
    for (j, target) in targets.iter().enumerate() {
        // Resolved once here: the request path never waits on DNS. A reload resolves again.
        match target.to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => servers.push(addr),
            _ => p.push(&format!("{key}[{j}]"), format!("\"{target}\" is not a reachable address"), fix),
        }
    }
    Targets::Servers(servers)
}
