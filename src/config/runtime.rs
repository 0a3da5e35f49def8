//! The validated, typed configuration: what the request path reads.
//!
//! [`build`] is the only way to make a [`Config`]: every value is parsed here once (durations,
//! sizes, addresses, host patterns, methods, header names), every cross-reference checked (a
//! route's upstream exists, its host is allowed), and every problem reported with its key. The
//! request path then only looks things up.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;

use super::auth::build_auth;
use super::edge::{build_auth_failure_limit, build_cors, build_policies};
use super::file::{FileConfig, HealthCheckSection, RouteSection, UpstreamSection};
use super::tls::build_listener_tls;
use super::units::{parse_duration, parse_size};
use super::{ConfigErrors, Problems, Sources};
use crate::logs::Destination;
use crate::pipeline::auth::{AcceptedCredentials, Authenticator};
use crate::pipeline::client::TrustedProxies;
use crate::pipeline::cors::CorsPolicy;
use crate::pipeline::host::{HostAllowList, HostPattern};
use crate::pipeline::path;
use crate::pipeline::ratelimit::{policy_header, Policy, PolicyId, RateLimiter, MAX_POLICIES_PER_ROUTE};
use crate::pipeline::route::{AuthMode, Route, RouteTable};
use crate::pipeline::upstream::{HealthCheck, Targets, Upstream, UpstreamTls};
use crate::tls::ListenerTls;

/// `server.max_body_size` when unset: large enough for API payloads, small enough to refuse
/// uploads nobody configured for.
pub const DEFAULT_MAX_BODY_SIZE: u64 = 10 * 1024 * 1024;
/// `server.request_id_header` when unset.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-request-id";
/// `server.shutdown_grace` when unset.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `server.shutdown_delay` when unset: drain at once (set it to the time your load balancer
/// takes to stop sending new connections once `/readyz` fails).
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// `server.header_timeout` when unset: a whole request head within 10 s (nginx's
/// `client_header_timeout` is 60 s; a real client sends its head in one packet).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.idle_timeout` when unset: how long a keep-alive connection waits for its next request.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `server.max_header_size` when unset: nginx's default total (4 × 8k buffers); Envoy's is 60 KiB.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 * 1024;
/// `server.max_connections` when unset, per process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `server.max_connections_per_client` when unset: well above a browser's 6 per host, even for
/// an office behind one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// The longest `header_timeout` and `idle_timeout` accepted.
pub const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest `max_header_size`: Pingora's parser refuses heads past 1 MiB anyway.
pub const MAX_HEADER_SIZE_LIMIT: u64 = 1024 * 1024;
/// `server.upstream_keepalive_pool_size` when unset. Pingora's own default (128) causes
/// reconnect storms once more than 128 connections are busy.
pub const DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 1024;
/// `upstream.connect_timeout` when unset.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `upstream.read_timeout` when unset.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `upstream.write_timeout` when unset.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// `upstream.idle_timeout` when unset: below the usual 60–75 s of backend keep-alive timeouts,
/// so the gateway drops an idle connection before the backend does.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// `log.level` when unset.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// `server.upgrade_socket` when unset (the systemd unit sets one in its runtime directory).
pub const DEFAULT_UPGRADE_SOCKET: &str = "/tmp/portcullis-upgrade.sock";
/// `admin.address` when `[admin]` is present without one: loopback only.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9100";
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

/// Header names `server.request_id_header` may not take (besides `X-Auth-*` and `X-Forwarded-*`).
const RESERVED_REQUEST_ID_HEADERS: [&str; 14] = [
    "host",
    "forwarded",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "authorization",
    "cookie",
    "x-api-key",
    "proxy-authorization",
    "content-type",
];

/// Where the gateway runs: production refuses unsafe settings (see `config/production.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// The default.
    Development,
    /// Strict.
    Production,
}

/// A validated configuration: the process settings fixed at start, and the runtime state that a
/// reload may swap.
#[derive(Debug)]
pub struct Config {
    /// The files it was loaded from.
    pub files: Vec<PathBuf>,
    /// Settings that need a restart to change.
    pub process: ProcessSettings,
    /// The state each request reads.
    pub runtime: Arc<Runtime>,
}

/// Process-wide settings read once at start.
#[derive(Debug)]
pub struct ProcessSettings {
    /// Worker threads per listener group.
    pub threads: usize,
    /// Idle upstream connections kept for reuse.
    pub upstream_keepalive_pool_size: usize,
    /// How long in-flight requests may finish on stop.
    pub shutdown_grace: Duration,
    /// How long to keep serving after `SIGTERM`, before draining.
    pub shutdown_delay: Duration,
    /// What bounds a client connection before its requests reach the pipeline.
    pub connections: ConnectionLimits,
    /// The listeners.
    pub listeners: Vec<Listener>,
    /// Log filter (`info`, `debug`, ...).
    pub log_level: String,
    /// `[admin] address`: the metrics and health listener, when configured.
    pub admin: Option<SocketAddr>,
    /// `[log] access`.
    pub access_log: Destination,
    /// `[log] audit`.
    pub audit_log: Destination,
    /// `server.upgrade_socket`.
    pub upgrade_socket: PathBuf,
}

/// What bounds a client connection before its requests reach the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `server.header_timeout`: a whole request head must arrive within this.
    pub header_timeout: Duration,
    /// `server.idle_timeout`: a keep-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// `server.max_header_size`: the largest request head, in bytes.
    pub max_header_size: usize,
    /// `server.max_connections`: client connections open in this process.
    pub max_connections: usize,
    /// `server.max_connections_per_client`: open connections from one client address.
    pub max_connections_per_client: usize,
}

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

/// The state each request reads, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// development or production.
    pub environment: Environment,
    /// Host allow-list.
    pub hosts: HostAllowList,
    /// Trusted proxies.
    pub trusted_proxies: TrustedProxies,
    /// Largest request body in bytes.
    pub max_body_size: u64,
    /// Request id header name.
    pub request_id_header: HeaderName,
    /// API keys and how credentials are read.
    pub auth: Authenticator,
    /// `[cors]`, when configured.
    pub cors: Option<CorsPolicy>,
    /// Rate-limit policies and their counters, and the failed-authentication limit.
    pub limits: RateLimiter,
    /// Routes.
    pub routes: RouteTable,
    /// Upstreams, indexed by `Route::upstream`.
    pub upstreams: Vec<Upstream>,
}

/// Validates a parsed configuration.
pub fn build(file: &FileConfig, sources: &Sources, files: Vec<PathBuf>) -> Result<Config, ConfigErrors> {
    let mut p = Problems::new(sources);

    let server = &file.server;
    let environment = match server.environment.as_deref() {
        None | Some("development") => Environment::Development,
        Some("production") => Environment::Production,
        Some(other) => {
            p.push(
                "server.environment",
                format!("\"{other}\" is not an environment"),
                "use \"development\" or \"production\"",
            );
            Environment::Development
        }
    };

    let hosts = build_hosts(server.allowed_hosts.as_deref(), &mut p);
    let trusted_proxies = build_trusted_proxies(server.trusted_proxies.as_deref().unwrap_or(&[]), &mut p);
    let max_body_size = match server.max_body_size.as_deref().map(parse_size) {
        None => DEFAULT_MAX_BODY_SIZE,
        Some(Ok(n)) if n > 0 => n,
        Some(Ok(_)) => {
            p.push(
                "server.max_body_size",
                "is zero, which refuses every request body",
                "give a size such as \"10MiB\"",
            );
            DEFAULT_MAX_BODY_SIZE
        }
        Some(Err(e)) => {
            p.push("server.max_body_size", e, "give a size such as \"10MiB\", \"512KiB\" or \"1048576\"");
            DEFAULT_MAX_BODY_SIZE
        }
    };
    let request_id_header = match server.request_id_header.as_deref() {
        None => HeaderName::from_static(DEFAULT_REQUEST_ID_HEADER),
        Some(name) => HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
            p.push(
                "server.request_id_header",
                format!("\"{name}\" is not a header name"),
                "use a name such as \"X-Request-Id\"",
            );
            HeaderName::from_static(DEFAULT_REQUEST_ID_HEADER)
        }),
    };
    // The request id is set on the upstream request after the headers the gateway controls:
    // naming one of those would let a client choose its value (`Host`, `X-Forwarded-For`, ...).
    let reserved_id_header = request_id_header.as_str().starts_with(crate::pipeline::forward::IDENTITY_HEADER_PREFIX)
        || request_id_header.as_str().starts_with("x-forwarded-")
        || RESERVED_REQUEST_ID_HEADERS.contains(&request_id_header.as_str());
    if reserved_id_header {
        p.push(
            "server.request_id_header",
            format!("\"{request_id_header}\" is a header the gateway sets or that frames the request"),
            "use a name such as \"X-Request-Id\" or \"X-Correlation-Id\"",
        );
    }
    let shutdown_grace =
        duration(&mut p, "server.shutdown_grace", server.shutdown_grace.as_deref(), DEFAULT_SHUTDOWN_GRACE);
    let shutdown_delay = match server.shutdown_delay.as_deref().map(parse_duration) {
        None => DEFAULT_SHUTDOWN_DELAY,
        Some(Ok(d)) if d <= MAX_CONNECTION_TIMEOUT => d,
        Some(Ok(_)) => {
            p.push("server.shutdown_delay", "is more than 1h", "give the time your load balancer needs, e.g. \"5s\"");
            DEFAULT_SHUTDOWN_DELAY
        }
        Some(Err(e)) => {
            p.push("server.shutdown_delay", e, "give a duration such as \"0s\" or \"5s\"");
            DEFAULT_SHUTDOWN_DELAY
        }
    };
    let connections = build_connection_limits(server, &mut p);
    let threads = match server.threads {
        Some(0) => {
            p.push("server.threads", "is 0", "give at least 1, or remove it to use one thread per core");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let upstream_keepalive_pool_size =
        server.upstream_keepalive_pool_size.unwrap_or(DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE);

    let listeners = build_listeners(file, &mut p);
    let log_level = build_log_level(file, &mut p);
    let admin = build_admin(file, &listeners, &mut p);
    if environment == Environment::Production {
        super::production::check(file, &files, &listeners, admin, &mut p);
    }
    let log = file.log.as_ref();
    let access_log = build_log_destination("log.access", log.and_then(|l| l.access.as_deref()), &mut p);
    let audit_log = build_log_destination("log.audit", log.and_then(|l| l.audit.as_deref()), &mut p);
    if let (Destination::File(a), Destination::File(b)) = (&access_log, &audit_log) {
        // Two writers appending to one file would interleave partial lines (devices such as
        // /dev/null are fine).
        if a == b && !a.starts_with("/dev/") {
            p.push("log.audit", "is the same file as log.access", "give the audit log its own file");
        }
    }
    let (upstreams, upstream_index) = build_upstreams(&file.upstream, &mut p);
    let auth = build_auth(file.auth.as_ref(), &mut p);
    let cors = file.cors.as_ref().map(|section| {
        // Without allowed_headers, a browser may send what the gateway itself reads.
        let mut defaults = vec![http::header::AUTHORIZATION, http::header::CONTENT_TYPE];
        defaults.extend(auth.api_key_headers.iter().cloned());
        defaults.push(request_id_header.clone());
        build_cors(section, &defaults, &request_id_header, &mut p)
    });
    let mut reserved_key_headers = auth.api_key_headers.clone();
    reserved_key_headers.push(request_id_header.clone());
    let policies = build_policies(&file.rate_limit, &reserved_key_headers, &mut p);
    let issuer_names: Vec<&str> = auth.jwt.issuers.iter().map(|i| &*i.name).collect();
    let edge = EdgeRefs {
        policies: &policies.policies,
        policy_index: &policies.index,
        refused_policies: &policies.refused,
        cors: cors.is_some(),
        issuers: &issuer_names,
        client_certificates: listeners.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some())),
    };
    let routes = build_routes(&file.route, &upstream_index, &hosts, &edge, &mut p);
    let auth_failure_limit = build_auth_failure_limit(server.auth_failure_limit.as_deref(), &mut p);
    let limits = RateLimiter::new(policies.policies, auth_failure_limit);
    if auth.api_key_headers.contains(&request_id_header) {
        // A valid key would be kept as the request id: echoed, logged and forwarded.
        p.push(
            "server.request_id_header",
            format!("\"{request_id_header}\" is also an API-key header"),
            "use a name such as \"X-Request-Id\"",
        );
    }

    let runtime = Runtime {
        environment,
        hosts,
        trusted_proxies,
        max_body_size,
        request_id_header,
        auth,
        cors,
        limits,
        routes: RouteTable::new(routes),
        upstreams,
    };
    let process = ProcessSettings {
        threads,
        upstream_keepalive_pool_size,
        shutdown_grace,
        shutdown_delay,
        connections,
        listeners,
        log_level,
        admin,
        access_log,
        audit_log,
        upgrade_socket: PathBuf::from(server.upgrade_socket.as_deref().unwrap_or(DEFAULT_UPGRADE_SOCKET)),
    };
    p.finish(Config { files, process, runtime: Arc::new(runtime) })
}

/// `header_timeout`, `idle_timeout`, `max_header_size`, `max_connections`,
/// `max_connections_per_client`.
fn build_connection_limits(server: &super::file::ServerSection, p: &mut Problems<'_>) -> ConnectionLimits {
    let mut timeout = |key: &str, value: Option<&str>, default: Duration| {
        let d = duration(p, key, value, default);
        if d > MAX_CONNECTION_TIMEOUT {
            p.push(key, "is more than 1h", "give a duration such as \"10s\"");
            return default;
        }
        if d < Duration::from_secs(1) {
            p.push(key, "is less than 1s, which real clients on slow networks cannot meet", "give at least \"1s\"");
            return default;
        }
        d
    };
    let header_timeout = timeout("server.header_timeout", server.header_timeout.as_deref(), DEFAULT_HEADER_TIMEOUT);
    let idle_timeout = timeout("server.idle_timeout", server.idle_timeout.as_deref(), DEFAULT_CLIENT_IDLE_TIMEOUT);
    let max_header_size = match server.max_header_size.as_deref().map(parse_size) {
        None => DEFAULT_MAX_HEADER_SIZE,
        Some(Ok(n)) if (1024..=MAX_HEADER_SIZE_LIMIT).contains(&n) => n,
        Some(Ok(_)) => {
            p.push("server.max_header_size", "is outside 1KiB to 1MiB", "give a size such as \"32KiB\"");
            DEFAULT_MAX_HEADER_SIZE
        }
        Some(Err(e)) => {
            p.push("server.max_header_size", e, "give a size such as \"32KiB\"");
            DEFAULT_MAX_HEADER_SIZE
        }
    };
    let mut count = |key: &str, value: Option<usize>, default: usize| match value {
        Some(0) => {
            p.push(key, "is 0, which refuses every connection", "give at least 1, or remove it for the default");
            default
        }
        Some(n) => n,
        None => default,
    };
    let max_connections = count("server.max_connections", server.max_connections, DEFAULT_MAX_CONNECTIONS);
    let max_connections_per_client = count(
        "server.max_connections_per_client",
        server.max_connections_per_client,
        DEFAULT_MAX_CONNECTIONS_PER_CLIENT.min(max_connections),
    );
    if max_connections_per_client > max_connections {
        p.push(
            "server.max_connections_per_client",
            format!("is more than server.max_connections ({max_connections})"),
            "keep it at or below max_connections",
        );
    }
    ConnectionLimits {
        header_timeout,
        idle_timeout,
        max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
        max_connections,
        max_connections_per_client,
    }
}

/// `[admin] address`: loopback port 9100 by default, never a public listener's address.
fn build_admin(file: &FileConfig, listeners: &[Listener], p: &mut Problems<'_>) -> Option<SocketAddr> {
    let section = file.admin.as_ref()?;
    let address = section.address.as_deref().unwrap_or(DEFAULT_ADMIN_ADDRESS);
    let Ok(addr) = address.parse::<SocketAddr>() else {
        p.push(
            "admin.address",
            format!("\"{address}\" is not an IP:port"),
            format!("write an address such as \"{DEFAULT_ADMIN_ADDRESS}\""),
        );
        return None;
    };
    let overlaps = |l: &&Listener| {
        l.address.port() == addr.port()
            && (l.address.ip() == addr.ip() || l.address.ip().is_unspecified() || addr.ip().is_unspecified())
    };
    if let Some(public) = listeners.iter().find(overlaps) {
        p.push(
            "admin.address",
            format!(
                "{addr} overlaps the public listener {}: metrics and health would be served to clients",
                public.address
            ),
            format!("give the admin listener its own port, e.g. \"{DEFAULT_ADMIN_ADDRESS}\""),
        );
        return None;
    }
    Some(addr)
}

/// `[log] access` / `[log] audit`: `"off"` (the default), `"stdout"` or a file path whose
/// directory exists.
fn build_log_destination(key: &str, value: Option<&str>, p: &mut Problems<'_>) -> Destination {
    let destination = match value.map(Destination::parse) {
        None => return Destination::Off,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            p.push(key, e, "write \"off\", \"stdout\" or a file path");
            return Destination::Off;
        }
    };
    if let Err(e) = destination.check() {
        p.push(key, e, "create the directory, or give a path in an existing one");
    }
    destination
}

fn duration(p: &mut Problems<'_>, key: &str, value: Option<&str>, default: Duration) -> Duration {
    match value.map(parse_duration) {
        None => default,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            p.push(key, "is zero", "give a positive duration such as \"30s\"");
            default
        }
        Some(Err(e)) => {
            p.push(key, e, "give a duration such as \"250ms\", \"30s\", \"10m\" or \"1h\"");
            default
        }
    }
}

fn build_hosts(allowed: Option<&[String]>, p: &mut Problems<'_>) -> HostAllowList {
    let Some(allowed) = allowed else {
        p.push(
            "server.allowed_hosts",
            "is missing: the gateway would serve no host",
            "list the names clients use, e.g. allowed_hosts = [\"localhost\", \"api.example.com\"]",
        );
        return HostAllowList::default();
    };
    if allowed.is_empty() {
        p.push("server.allowed_hosts", "is empty: the gateway would serve no host", "list the names clients use");
    }
    let mut patterns = Vec::new();
    for (i, entry) in allowed.iter().enumerate() {
        match HostPattern::parse(entry) {
            Ok(pattern) => patterns.push(pattern),
            Err(e) => {
                p.push(&format!("server.allowed_hosts[{i}]"), e, "write a host name, \"*.example.com\", or \"*\"")
            }
        }
    }
    HostAllowList::from_patterns(patterns)
}

fn build_trusted_proxies(entries: &[String], p: &mut Problems<'_>) -> TrustedProxies {
    let mut nets = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let parsed = entry.parse::<IpNet>().or_else(|_| entry.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => p.push(
                &format!("server.trusted_proxies[{i}]"),
                format!("\"{entry}\" is not an IP network"),
                "write a CIDR block such as \"10.0.0.0/8\" or an address such as \"192.0.2.7\"",
            ),
        }
    }
    TrustedProxies::new(nets)
}

fn build_listeners(file: &FileConfig, p: &mut Problems<'_>) -> Vec<Listener> {
    if file.listener.is_empty() {
        p.push("listener", "no [[listener]] is configured", "add one, e.g. [[listener]] address = \"127.0.0.1:8080\"");
    }
    let mut listeners: Vec<Listener> = Vec::new();
    // (config index, listener index) of the plain listeners with redirect_https.
    let mut redirects: Vec<(usize, usize)> = Vec::new();
    for (i, l) in file.listener.iter().enumerate() {
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

fn build_log_level(file: &FileConfig, p: &mut Problems<'_>) -> String {
    let level = file.log.as_ref().and_then(|l| l.level.clone()).unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
    if !matches!(level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
        p.push("log.level", format!("\"{level}\" is not a log level"), "use error, warn, info, debug or trace");
    }
    level
}

fn build_upstreams(sections: &[UpstreamSection], p: &mut Problems<'_>) -> (Vec<Upstream>, HashMap<String, usize>) {
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
    section: &super::file::UpstreamTlsSection,
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

/// What routes may refer to besides upstreams: the rate-limit policies, whether `[cors]`
/// exists, the JWT issuers' names, and whether any listener asks for client certificates.
struct EdgeRefs<'a> {
    policies: &'a [Policy],
    policy_index: &'a HashMap<String, PolicyId>,
    refused_policies: &'a HashSet<String>,
    cors: bool,
    issuers: &'a [&'a str],
    client_certificates: bool,
}

/// A route's `credentials`: `api_key`, `mtls`, `jwt` (any issuer) or `jwt:NAME` (an
/// `[[auth.jwt]]` by name).
fn build_credentials(
    names: Option<&[String]>,
    key: &str,
    auth: AuthMode,
    edge: &EdgeRefs<'_>,
    p: &mut Problems<'_>,
) -> Option<AcceptedCredentials> {
    let names = names?;
    if auth == AuthMode::None {
        p.push(key, "is set, but auth = \"none\" never looks at credentials", "set auth = \"required\" or remove it");
        return None;
    }
    if names.is_empty() {
        p.push(
            key,
            "is empty: no caller could satisfy this route",
            "list the kinds it accepts, or remove it to accept any",
        );
        return None;
    }
    let mut accepted = AcceptedCredentials::default();
    for (j, name) in names.iter().enumerate() {
        let item = format!("{key}[{j}]");
        let fresh = match name.as_str() {
            "api_key" => !std::mem::replace(&mut accepted.api_key, true),
            "jwt" => !std::mem::replace(&mut accepted.any_jwt, true),
            "mtls" => {
                if !edge.client_certificates {
                    p.push(
                        &item,
                        "is \"mtls\", but no [listener.tls] has client_ca, so no caller has a client certificate",
                        "add client_ca to a TLS listener, or remove \"mtls\"",
                    );
                }
                !std::mem::replace(&mut accepted.mtls, true)
            }
            other => match other.strip_prefix("jwt:") {
                Some(issuer) => match edge.issuers.iter().position(|n| *n == issuer) {
                    Some(index) if accepted.jwt_issuers.contains(&index) => false,
                    Some(index) => {
                        accepted.jwt_issuers.push(index);
                        true
                    }
                    None => {
                        p.push(
                            &item,
                            format!("no [[auth.jwt]] is named \"{issuer}\""),
                            format!("use one of {:?}, or add the issuer", edge.issuers),
                        );
                        true
                    }
                },
                None => {
                    p.push(
                        &item,
                        format!("\"{other}\" is not a kind of credential"),
                        "use \"api_key\", \"jwt\", \"jwt:ISSUER_NAME\" or \"mtls\"",
                    );
                    true
                }
            },
        };
        if !fresh {
            p.push(&item, format!("\"{name}\" is listed twice"), "list it once");
        }
    }
    if accepted.any_jwt && !accepted.jwt_issuers.is_empty() {
        p.push(
            key,
            "lists \"jwt\" (any issuer) and \"jwt:NAME\" together",
            "keep \"jwt\", or only the issuers by name",
        );
    }
    Some(accepted)
}

/// A route's `rate_limits`, split into the policies checked before and after authentication.
/// On a route with `auth = "none"` nobody is ever identified: its identity-keyed policies count
/// by address, and run with the others, before the (absent) authentication.
fn route_limits(
    names: Option<&[String]>,
    key: &str,
    auth: AuthMode,
    edge: &EdgeRefs<'_>,
    p: &mut Problems<'_>,
) -> (Vec<PolicyId>, Vec<PolicyId>) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let names = names.unwrap_or(&[]);
    if names.len() > MAX_POLICIES_PER_ROUTE {
        p.push(
            key,
            format!("names {} policies; a route may have at most {MAX_POLICIES_PER_ROUTE}", names.len()),
            "keep the ones that bind: the tightest policy of each key is enough",
        );
        return (before, after);
    }
    for (j, name) in names.iter().enumerate() {
        match edge.policy_index.get(name) {
            Some(&id) if before.contains(&id) || after.contains(&id) => {
                p.push(&format!("{key}[{j}]"), format!("\"{name}\" is listed twice"), "list it once")
            }
            Some(&id) if edge.policies[id].key.needs_identity() && auth != AuthMode::None => after.push(id),
            Some(&id) => before.push(id),
            None if edge.refused_policies.contains(name) => {}
            None => {
                let mut known: Vec<&str> = edge.policy_index.keys().map(String::as_str).collect();
                known.sort_unstable();
                p.push(
                    &format!("{key}[{j}]"),
                    format!("no [[rate_limit]] is named \"{name}\""),
                    format!("use one of {known:?} or add the policy"),
                );
            }
        }
    }
    (before, after)
}

fn build_routes(
    sections: &[RouteSection],
    upstream_index: &HashMap<String, usize>,
    hosts: &HostAllowList,
    edge: &EdgeRefs<'_>,
    p: &mut Problems<'_>,
) -> Vec<Route> {
    if sections.is_empty() {
        p.push(
            "route",
            "no [[route]] is configured: every request would be 404",
            "add a [[route]] with a path and an upstream",
        );
    }
    let mut routes: Vec<Route> = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in sections.iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let Some(path) = r.path.as_deref() else {
            p.push(&key("path"), "is missing", "give the path prefix this route serves, e.g. \"/api/v1/models\"");
            continue;
        };
        match path::normalize(path) {
            Ok(canonical) if canonical == path && (path == "/" || !path.ends_with('/')) => {}
            Ok(canonical) => {
                let fix = canonical.trim_end_matches('/');
                let fix = if fix.is_empty() { "/" } else { fix };
                p.push(&key("path"), format!("\"{path}\" is not canonical"), format!("write \"{fix}\""));
                continue;
            }
            Err(e) => {
                p.push(
                    &key("path"),
                    format!("\"{path}\" is not a valid path ({})", e.message()),
                    "write a path such as \"/api/v1\"",
                );
                continue;
            }
        }
        let name = r.name.clone().unwrap_or_else(|| path.to_string());
        if !names.insert(name.clone()) {
            p.push(&key("name"), format!("\"{name}\" names two routes"), "give each [[route]] its own name");
        }
        let host = r.host.as_deref().and_then(|h| match HostPattern::parse(h) {
            Ok(HostPattern::Any) => {
                p.push(
                    &key("host"),
                    "\"*\" would make this route shadow routes without a host",
                    "remove the host key to match any host",
                );
                None
            }
            Ok(pattern) if !hosts.covers(&pattern) => {
                p.push(
                    &key("host"),
                    format!("\"{h}\" is not in server.allowed_hosts, so no request can reach this route"),
                    "add it to server.allowed_hosts",
                );
                None
            }
            Ok(pattern) => Some(pattern),
            Err(e) => {
                p.push(&key("host"), e, "write a host name or \"*.example.com\"");
                None
            }
        });
        let methods = build_methods(r.methods.as_deref(), &key("methods"), p);
        let upstream = match r.upstream.as_deref() {
            None => {
                p.push(&key("upstream"), "is missing", "name the [[upstream]] this route forwards to");
                None
            }
            Some(u) => match upstream_index.get(u) {
                Some(&idx) => Some(idx),
                None => {
                    let known: Vec<&str> = upstream_index.keys().map(String::as_str).collect();
                    p.push(
                        &key("upstream"),
                        format!("no [[upstream]] is named \"{u}\""),
                        format!("use one of {known:?} or add the upstream"),
                    );
                    None
                }
            },
        };
        let auth = match r.auth.as_deref() {
            None | Some("required") => AuthMode::Required,
            Some("optional") => AuthMode::Optional,
            Some("none") => AuthMode::None,
            Some(other) => {
                p.push(
                    &key("auth"),
                    format!("\"{other}\" is not an auth mode"),
                    "use \"required\", \"optional\" or \"none\"",
                );
                AuthMode::Required
            }
        };
        let permissions = build_names(r.permissions.as_deref(), &key("permissions"), "permission", p);
        if auth == AuthMode::None && !permissions.is_empty() {
            p.push(
                &key("permissions"),
                "needs a caller, but auth = \"none\" never looks at credentials",
                "set auth = \"required\" or remove the permissions",
            );
        }
        let credentials = build_credentials(r.credentials.as_deref(), &key("credentials"), auth, edge, p);
        let (limits_before_auth, limits_after_auth) =
            route_limits(r.rate_limits.as_deref(), &key("rate_limits"), auth, edge, p);
        let cors = match r.cors {
            Some(true) if !edge.cors => {
                p.push(
                    &key("cors"),
                    "is true, but there is no [cors] section",
                    "add a [cors] section, or remove the key",
                );
                false
            }
            Some(on) => on && edge.cors,
            None => edge.cors,
        };
        let mut ids = limits_before_auth.clone();
        ids.extend(&limits_after_auth);
        let ratelimit_policy = policy_header(edge.policies, &ids);
        let Some(upstream) = upstream else { continue };
        let route = Route {
            name: name.into(),
            host,
            path: path.into(),
            methods,
            upstream,
            auth,
            permissions,
            credentials,
            cors,
            limits_before_auth,
            limits_after_auth,
            ratelimit_policy,
        };
        if let Some(other) = routes.iter().find(|o| overlaps(o, &route)) {
            p.push(
                &key("path"),
                format!("route \"{}\" already serves the same host, path and methods", other.name),
                "give the routes different methods, hosts or paths",
            );
        }
        routes.push(route);
    }
    routes
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

fn build_methods(methods: Option<&[String]>, key: &str, p: &mut Problems<'_>) -> Option<Vec<Method>> {
    let methods = methods?;
    if methods.is_empty() {
        p.push(key, "is empty: no request could use this route", "list methods, or remove the key to allow all");
    }
    let mut out = Vec::new();
    for (j, m) in methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if *m != upper {
            // Methods are case-sensitive: "get" is not GET, and a route for it would never match.
            p.push(&format!("{key}[{j}]"), format!("\"{m}\" is not upper case"), format!("write \"{upper}\""));
            continue;
        }
        match Method::from_bytes(m.as_bytes()) {
            Ok(method) if !out.contains(&method) => out.push(method),
            Ok(_) => p.push(&format!("{key}[{j}]"), format!("\"{m}\" is listed twice"), "list it once"),
            Err(_) => p.push(&format!("{key}[{j}]"), format!("\"{m}\" is not an HTTP method"), "use GET, POST, ..."),
        }
    }
    Some(out)
}

/// Whether two routes would claim the same request.
fn overlaps(a: &Route, b: &Route) -> bool {
    a.path == b.path
        && a.host == b.host
        && match (&a.methods, &b.methods) {
            (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
            _ => true,
        }
}
