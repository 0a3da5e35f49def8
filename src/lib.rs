//! Portcullis: an authentication gateway on Cloudflare's Pingora.
//!
//! [`config::load`] turns `conf/*.toml` into a validated [`config::Config`]; [`build_server`]
//! turns that into a Pingora server whose [`gateway::Gateway`] runs the request
//! [`pipeline`]. `main.rs` is the command line around these.

// The library has no unsafe code (the lint is only `deny` crate-wide, for the binary's
// allocator hand-over to OpenSSL).
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod ctx;
pub mod error;
pub mod gateway;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod pipeline;
pub mod redact;
pub mod reload;
pub mod shutdown;
pub mod tls;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use config::Config;
use connection::ClientConnections;
use gateway::{Gateway, SharedRuntime};
use logs::sink::LogSink;
use logs::Logs;

/// How long the runtimes get to stop once the grace period is over.
pub const SHUTDOWN_TIMEOUT_SECONDS: u64 = 1;

/// The per-connection read buffer in front of the socket. Pingora's default (64 KiB) is
/// allocated for every connection and kept for its life; reads go straight to the buffers that
/// want the bytes instead (the request head's, Pingora's header and body buffers, OpenSSL's
/// read-ahead on TLS listeners).
const L4_READ_BUFFER: usize = 0;
/// The per-connection write buffer: one segment, so a head and a small body go in one write.
const L4_WRITE_BUFFER: usize = 1460;

/// HTTP/2 settings: Pingora's bounded defaults, with the header list held to
/// `server.max_header_size` as HTTP/1 heads are.
fn h2_options(limits: &config::server::ConnectionLimits) -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    options.max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    options
}

fn listener_config(address: &str) -> ListenerConfig {
    ListenerConfig::tcp(address).l4_buffer(L4BufferSettings::new(L4_READ_BUFFER, L4_WRITE_BUFFER))
}

/// Opens the access and audit logs a configuration names.
pub fn open_logs(config: &Config) -> Result<Logs, String> {
    let open = |key: &str, name: &'static str, destination| {
        LogSink::open(name, destination).map_err(|e| format!("{key}: cannot open {destination:?} ({e})"))
    };
    Ok(Logs {
        access: open("log.access", "access", &config.process.access_log)?,
        audit: open("log.audit", "audit", &config.process.audit_log)?,
    })
}

/// Why a validated configuration could not be started: the library returns it, and `main.rs`
/// chooses the exit code.
#[derive(Debug)]
pub enum StartError {
    /// A log named by the configuration cannot be opened: a configuration error.
    Logs(String),
    /// A listener cannot be set up, though its configuration validated.
    Listener(String),
    /// The server stopped by a panic (logged where it happened).
    Crashed,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Logs(error) => write!(f, "{error}; check the path and its permissions; nothing was started"),
            StartError::Listener(error) => write!(f, "{error}; nothing was started"),
            StartError::Crashed => write!(f, "the server stopped on an internal error"),
        }
    }
}

/// Builds the Pingora server for a validated configuration, without starting it.
///
/// Returns the server and the shared runtime pointer that a reload swaps.
pub fn build_server(
    config: &Config,
    path: &std::path::Path,
    logs: Arc<Logs>,
    upgrade: bool,
    drained: std::sync::mpsc::Sender<()>,
) -> Result<(Server, SharedRuntime), StartError> {
    let process = &config.process;
    let conf = ServerConf {
        // Where a new binary started with `run --upgrade` waits for this one's sockets.
        upgrade_sock: process.upgrade_socket.display().to_string(),
        threads: process.threads,
        upstream_keepalive_pool_size: process.upstream_keepalive_pool_size,
        // Pingora keeps serving in-flight requests for the grace period after SIGTERM (at most:
        // the drain monitor exits once they are done).
        grace_period_seconds: Some(process.shutdown_grace.as_secs()),
        // One runtime per worker thread: a connection's task stays on its thread, which the
        // allocator purge after closed connections relies on (see `connection`). Work stealing
        // measured no gain on the proxy path.
        work_stealing: false,
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        ..ServerConf::default()
    };
    let opt = Opt { upgrade, ..Opt::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let runtime: SharedRuntime = Arc::new(ArcSwap::new(config.runtime.clone()));
    // Plain listeners that share server options and edge behaviour share one service (and so
    // one thread pool); each TLS listener has its own certificates and settings.
    // (h2c, redirect port) → addresses.
    type Group = (bool, Option<u16>);
    let mut groups: Vec<(Group, Vec<String>)> = Vec::new();
    for l in process.listeners.iter().filter(|l| l.tls.is_none()) {
        let group = (l.h2c, l.redirect_to);
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, addresses)) => addresses.push(l.address.to_string()),
            None => groups.push((group, vec![l.address.to_string()])),
        }
    }
    let limits = &process.connections;
    for ((h2c, redirect_to), addresses) in groups {
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        options.h2_idle_timeout = Some(limits.idle_timeout);
        let edge = gateway::ListenerEdge { redirect_to, hsts: None };
        let mut proxy = http_proxy(&server.configuration, Gateway::new(runtime.clone(), edge, logs.clone()));
        proxy.server_options = Some(options);
        proxy.h2_options = Some(h2_options(limits));
        let name = if h2c { "portcullis (h2c)" } else { "portcullis" };
        let app = ClientConnections::new(proxy, runtime.clone(), limits.clone(), None, &addresses);
        let mut service = Service::new(name.to_string(), app);
        for address in &addresses {
            service.add_listener(listener_config(address));
        }
        server.add_service(service);
    }
    let mut watched = Vec::new();
    for listener in &process.listeners {
        let Some(tls) = &listener.tls else { continue };
        // Config validation built these settings once already; failing here is not expected,
        // and a gateway missing a listener it was told to serve must not pretend otherwise.
        let settings = tls.settings().map_err(|error| {
            tracing::error!(address = %listener.address, %error, "cannot start the TLS listener");
            StartError::Listener(format!("cannot start the TLS listener {}: {error}", listener.address))
        })?;
        let edge = gateway::ListenerEdge { redirect_to: None, hsts: tls.hsts.clone() };
        let mut proxy = http_proxy(&server.configuration, Gateway::new(runtime.clone(), edge, logs.clone()));
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(limits.idle_timeout);
        proxy.server_options = Some(options);
        proxy.h2_options = Some(h2_options(limits));
        let address = listener.address.to_string();
        let app = ClientConnections::new(
            proxy,
            runtime.clone(),
            limits.clone(),
            tls.hsts.clone(),
            std::slice::from_ref(&address),
        );
        let mut service = Service::new("portcullis (tls)".to_string(), app);
        service.add_listener(listener_config(&address).tls(settings));
        // Limits and header_timeout apply from before the handshake.
        let admission = connection::TlsAdmission::new(runtime.clone(), limits.clone());
        service.endpoints().set_pre_tls_callback(Arc::new(admission));
        server.add_service(service);
        watched.push(tls.clone());
    }
    if !watched.is_empty() {
        let watcher = tls::CertificateWatcher::new(watched);
        server.add_service(pingora::services::background::background_service("certificate reload", watcher));
    }
    // The runtime's background tasks (JWKS fetches, health checks), never on the request path,
    // and SIGHUP reload, which replaces both runtime and tasks.
    let reloader = reload::Reloader::new(path.to_path_buf(), config, runtime.clone(), logs.clone());
    server.add_service(pingora::services::background::background_service("reload", reloader));
    // Exits once a graceful stop has drained every client connection.
    let drain = shutdown::DrainMonitor::new(logs.clone(), drained);
    server.add_service(pingora::services::background::background_service("drain", drain));
    if let Some(address) = process.admin {
        let mut admin = Service::new("portcullis admin".to_string(), admin::AdminApp::new(runtime.clone()));
        admin.add_tcp(&address.to_string());
        // One thread is plenty for scrapes and probes, and keeps them off the proxy's threads.
        admin.threads = Some(1);
        server.add_service(admin);
    }
    Ok((server, runtime))
}

/// Starts the gateway with the configuration loaded from `path`, and serves until a signal
/// stops it (`SIGHUP` reloads from `path`).
///
/// With `upgrade`, the listening sockets are taken over from the running gateway that is sent
/// `SIGQUIT` (Pingora's graceful upgrade): no connection is refused across the swap.
///
/// Returns once a graceful stop is over: when the last client connection has closed, or at the
/// end of the grace period (what is left of Pingora's runtimes is not waited for).
pub fn run(config: Config, path: &std::path::Path, upgrade: bool) -> Result<(), StartError> {
    let logs = Arc::new(open_logs(&config).map_err(StartError::Logs)?);
    if let Some(sink) = &logs.audit {
        logs::audit::config_loaded(sink, &config.files);
    }
    raise_open_files_limit(&config.process);
    let (done, stopped) = std::sync::mpsc::channel();
    let (server, _runtime) = build_server(&config, path, logs, upgrade, done.clone())?;
    for listener in &config.process.listeners {
        tracing::info!(address = %listener.address, h2c = listener.h2c, tls = listener.tls.is_some(), "listening");
    }
    if let Some(address) = config.process.admin {
        tracing::info!(%address, "admin listener: /metrics, /healthz, /readyz");
    }
    let signals = shutdown::Signals::new(config.process.shutdown_delay);
    let pingora = std::thread::Builder::new()
        .name("pingora".into())
        .spawn(move || {
            server.run(RunArgs { shutdown_signal: Box::new(signals) });
            let _ = done.send(());
        })
        .map_err(|e| StartError::Listener(format!("cannot start the server thread: {e}")))?;
    // Drained, or Pingora's own stop is over; or nobody is left to say so: the server thread
    // ended without returning, a panic, which must not read as a clean stop.
    if (stopped.recv().is_err() || pingora.is_finished()) && pingora.join().is_err() {
        return Err(StartError::Crashed);
    }
    Ok(())
}

/// Descriptors the gateway needs besides one per client connection: upstream connections
/// (pooled up to `upstream_keepalive_pool_size`), listeners, logs, certificate files.
const SPARE_FILES: u64 = 1024;

/// Raises the soft open-files limit towards the hard one, as far as `server.max_connections`
/// (and the upstream connections beside them) need: the usual soft limit of 1024 would refuse
/// connections with "too many open files" long before the configured limit.
fn raise_open_files_limit(process: &config::server::ProcessSettings) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = (process.connections.max_connections as u64)
        .saturating_mul(2)
        .saturating_add(process.upstream_keepalive_pool_size as u64)
        .saturating_add(SPARE_FILES);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft >= wanted {
        return;
    }
    let raised = wanted.min(hard);
    if raised > soft && setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_ok() {
        tracing::info!(from = soft, to = raised, "raised the open-files limit for server.max_connections");
    }
    if raised < wanted {
        tracing::warn!(
            limit = raised,
            wanted,
            "the open-files limit is below what server.max_connections needs; raise LimitNOFILE (systemd) or ulimit -n"
        );
    }
}
