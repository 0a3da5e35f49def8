//! `[server]`, `[admin]` and `[log]`: the process settings, and the server-wide parts of the
//! request path (host allow-list, trusted proxies, body limit, request id header).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::file::{AdminSection, LogSection, ServerSection};
use super::listeners::Listener;
use super::sources::Problems;
use super::units::{duration, parse_duration, parse_size};
use crate::logs::sink::Destination;
use crate::pipeline::client::TrustedProxies;
use crate::pipeline::forward;
use crate::pipeline::host::{HostAllowList, HostPattern};

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

/// `log.level` when unset.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `server.upgrade_socket` when unset (the systemd unit sets one in its runtime directory).
pub const DEFAULT_UPGRADE_SOCKET: &str = "/tmp/portcullis-upgrade.sock";

/// `admin.address` when `[admin]` is present without one: loopback only.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9100";

/// Header names `server.request_id_header` may not take besides those the gateway owns
/// ([`forward::owned_by_gateway`]): credentials, and the body's type.
const RESERVED_REQUEST_ID_HEADERS: [&str; 4] = ["authorization", "cookie", "x-api-key", "content-type"];

/// Where the gateway runs: production refuses unsafe settings (see `config/production.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// The default.
    Development,
    /// Strict.
    Production,
}

/// Process-wide settings read once at start.
#[derive(Debug)]
pub struct ProcessSettings {
    /// development or production.
    pub environment: Environment,
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

/// `[server]`, validated: the parts [`super::runtime::build`] hands on to the runtime and the
/// process settings.
pub(super) struct ServerSettings {
    pub environment: Environment,
    pub hosts: HostAllowList,
    pub trusted_proxies: TrustedProxies,
    pub max_body_size: u64,
    pub request_id_header: HeaderName,
    pub shutdown_grace: Duration,
    pub shutdown_delay: Duration,
    pub connections: ConnectionLimits,
    pub threads: usize,
    pub upstream_keepalive_pool_size: usize,
    pub upgrade_socket: PathBuf,
}

/// Validates `[server]`.
pub(super) fn build(server: &ServerSection, p: &mut Problems<'_>) -> ServerSettings {
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
    let threads = match server.threads {
        Some(0) => {
            p.push("server.threads", "is 0", "give at least 1, or remove it to use one thread per core");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    ServerSettings {
        environment,
        hosts: build_hosts(server.allowed_hosts.as_deref(), p),
        trusted_proxies: build_trusted_proxies(server.trusted_proxies.as_deref().unwrap_or(&[]), p),
        max_body_size,
        request_id_header: build_request_id_header(server.request_id_header.as_deref(), p),
        shutdown_grace: duration(p, "server.shutdown_grace", server.shutdown_grace.as_deref(), DEFAULT_SHUTDOWN_GRACE),
        shutdown_delay,
        connections: build_connection_limits(server, p),
        threads,
        upstream_keepalive_pool_size: server
            .upstream_keepalive_pool_size
            .unwrap_or(DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE),
        upgrade_socket: PathBuf::from(server.upgrade_socket.as_deref().unwrap_or(DEFAULT_UPGRADE_SOCKET)),
    }
}

/// `server.request_id_header`: a header name the gateway neither sets nor frames requests with.
fn build_request_id_header(name: Option<&str>, p: &mut Problems<'_>) -> HeaderName {
    let header = match name {
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
    let reserved = forward::owned_by_gateway(header.as_str()) || RESERVED_REQUEST_ID_HEADERS.contains(&header.as_str());
    if reserved {
        p.push(
            "server.request_id_header",
            format!("\"{header}\" is a header the gateway sets or that frames the request"),
            "use a name such as \"X-Request-Id\" or \"X-Correlation-Id\"",
        );
    }
    header
}

/// `[log]`, validated.
pub(super) struct LogSettings {
    pub level: String,
    pub access: Destination,
    pub audit: Destination,
}

/// Validates `[log]`.
pub(super) fn build_log(log: Option<&LogSection>, p: &mut Problems<'_>) -> LogSettings {
    let level = build_log_level(log, p);
    let access = build_log_destination("log.access", log.and_then(|l| l.access.as_deref()), p);
    let audit = build_log_destination("log.audit", log.and_then(|l| l.audit.as_deref()), p);
    if let (Destination::File(a), Destination::File(b)) = (&access, &audit) {
        // Two writers appending to one file would interleave partial lines (devices such as
        // /dev/null are fine).
        if a == b && !a.starts_with("/dev/") {
            p.push("log.audit", "is the same file as log.access", "give the audit log its own file");
        }
    }
    LogSettings { level, access, audit }
}

/// `header_timeout`, `idle_timeout`, `max_header_size`, `max_connections`,
/// `max_connections_per_client`.
fn build_connection_limits(server: &ServerSection, p: &mut Problems<'_>) -> ConnectionLimits {
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
pub(super) fn build_admin(
    section: Option<&AdminSection>,
    listeners: &[Listener],
    p: &mut Problems<'_>,
) -> Option<SocketAddr> {
    let section = section?;
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

fn build_log_level(log: Option<&LogSection>, p: &mut Problems<'_>) -> String {
    let level = log.and_then(|l| l.level.clone()).unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
    if !matches!(level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
        p.push("log.level", format!("\"{level}\" is not a log level"), "use error, warn, info, debug or trace");
    }
    level
}
