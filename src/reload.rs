//! Live reload: `SIGHUP` re-reads the configuration and, when it is valid, swaps the runtime
//! state every request reads, without touching connections or requests in flight.
//!
//! What a reload changes: routes, API keys, JWT issuers (their JWKS fetched anew), CORS,
//! rate-limit policies (the counters of unchanged policies carry over), upstreams (health checks
//! restarted), hosts, body limits, and the certificates of each TLS listener. What needs a
//! restart: listeners and their other TLS settings (versions, ALPN, HSTS, client CAs), the
//! admin listener, log destinations, threads; a reload that changes them applies the rest and
//! logs which keys were left as they were. (Certificate *files* are reloaded on change anyway.)
//!
//! An invalid configuration changes nothing: the error is logged, audited
//! (`config_reload_failed`) and counted (`portcullis_config_reloads_total{result="failure"}`).
//!
//! The background tasks that belong to a runtime (JWKS refreshes, health checks) are started
//! for the new one before the swap and stopped for the old one after it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::server::ProcessSettings;
use crate::config::{self, Config, Runtime};
use crate::gateway::SharedRuntime;
use crate::health::HealthChecker;
use crate::logs::{audit, Logs};
use crate::metrics::METRICS;
use crate::pipeline::auth::jwks::JwksRefresher;
use crate::tls::ListenerTls;

/// The background tasks of one runtime: stopped when dropped.
struct RuntimeTasks {
    stop: watch::Sender<bool>,
}

impl RuntimeTasks {
    /// Starts the JWKS refreshes and health checks `runtime` needs.
    fn start(runtime: &Arc<Runtime>) -> RuntimeTasks {
        let (stop, stopped) = watch::channel(false);
        let remote_key_sets = runtime.auth.jwt.remote_key_sets();
        if !remote_key_sets.is_empty() {
            let refresher = JwksRefresher::new(remote_key_sets);
            let stopped = stopped.clone();
            tokio::spawn(async move { refresher.start(stopped).await });
        }
        HealthChecker::publish(runtime);
        if HealthChecker::has_work(runtime) {
            let checker = HealthChecker::new(runtime.clone());
            tokio::spawn(async move { checker.start(stopped).await });
        }
        RuntimeTasks { stop }
    }
}

impl Drop for RuntimeTasks {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Makes `SIGHUP` harmless from the start of the process: its default action ends the process,
/// and the reload service that answers it starts only once the server runs (after the
/// configuration is loaded and, with `run --upgrade`, the sockets are handed over). Tokio's
/// handler, once installed, stays for the life of the process; a SIGHUP before the reload
/// service starts is covered by that service comparing the configuration files' stamps.
pub fn catch_hangups_early() {
    if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_io().build() {
        runtime.block_on(async {
            if let Err(error) = signal(SignalKind::hangup()) {
                eprintln!("portcullis: cannot catch SIGHUP ({error}); a SIGHUP now would stop the gateway");
            }
        });
    }
}

/// The modification times of `files`, to tell whether they changed since they were read.
fn stamps(files: &[PathBuf]) -> Vec<Option<std::time::SystemTime>> {
    files.iter().map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()).collect()
}

/// The service that owns the runtime's background tasks and reloads on `SIGHUP`.
pub struct Reloader {
    path: PathBuf,
    runtime: SharedRuntime,
    /// The running TLS listeners, whose certificates a reload replaces.
    tls_listeners: Vec<(SocketAddr, Arc<ListenerTls>)>,
    logs: Arc<Logs>,
    /// The process settings the gateway started with (a reload cannot change them).
    started_with: ProcessSummary,
    /// The configuration files as they were when loaded at start, and their stamps then.
    loaded: (Vec<PathBuf>, Vec<Option<std::time::SystemTime>>),
}

/// The parts of [`ProcessSettings`] a reload compares, to say which changes need a restart.
#[derive(Debug, Clone, PartialEq)]
struct ProcessSummary(Vec<(&'static str, String)>);

impl ProcessSummary {
    fn of(p: &ProcessSettings) -> Self {
        let listeners: Vec<String> = p
            .listeners
            .iter()
            .map(|l| {
                format!(
                    "{} h2c={} redirect={:?} tls={:?}",
                    l.address,
                    l.h2c,
                    l.redirect_to,
                    l.tls.as_ref().map(|t| t.settings_summary())
                )
            })
            .collect();
        ProcessSummary(vec![
            ("listener", listeners.join("; ")),
            ("admin", format!("{:?}", p.admin)),
            ("log.access", format!("{:?}", p.access_log)),
            ("log.audit", format!("{:?}", p.audit_log)),
            ("log.level", p.log_level.clone()),
            ("server.threads", p.threads.to_string()),
            ("server.upstream_keepalive_pool_size", p.upstream_keepalive_pool_size.to_string()),
            ("server.shutdown_grace", format!("{:?}", p.shutdown_grace)),
            ("server.shutdown_delay", format!("{:?}", p.shutdown_delay)),
            ("server.header_timeout", format!("{:?}", p.connections.header_timeout)),
            ("server.idle_timeout", format!("{:?}", p.connections.idle_timeout)),
            ("server.max_header_size", p.connections.max_header_size.to_string()),
            ("server.max_connections", p.connections.max_connections.to_string()),
            ("server.max_connections_per_client", p.connections.max_connections_per_client.to_string()),
            ("server.upgrade_socket", p.upgrade_socket.display().to_string()),
        ])
    }

    /// The keys whose value differs in `other`.
    fn changed(&self, other: &ProcessSummary) -> Vec<&'static str> {
        self.0.iter().zip(&other.0).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0).collect()
    }
}

impl Reloader {
    /// A reloader for the configuration at `path`, now serving `config` through `runtime`.
    pub fn new(path: PathBuf, config: &Config, runtime: SharedRuntime, logs: Arc<Logs>) -> Self {
        let tls_listeners = config.process.listeners.iter().filter_map(|l| Some((l.address, l.tls.clone()?))).collect();
        let loaded = (config.files.clone(), stamps(&config.files));
        Reloader { path, runtime, tls_listeners, logs, started_with: ProcessSummary::of(&config.process), loaded }
    }

    /// Loads, validates and swaps in the configuration; the tasks of the runtime in force
    /// afterwards are returned (the old ones when the reload failed).
    async fn reload(&self, tasks: RuntimeTasks) -> RuntimeTasks {
        let started = Instant::now();
        let path = self.path.clone();
        // Reading files and parsing keys and certificates is blocking work: off the runtime.
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let mut config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(errors)) => {
                self.failed(&errors.to_string());
                return tasks;
            }
            Err(join) => {
                self.failed(&format!("the reload task failed: {join}"));
                return tasks;
            }
        };
        let previous = self.runtime.load_full();
        if let Some(runtime) = Arc::get_mut(&mut config.runtime) {
            runtime.limits.adopt_counters(&previous.limits);
        }
        config.runtime.auth.jwt.adopt_key_sets(&previous.auth.jwt);
        for upstream in &config.runtime.upstreams {
            if let Some(before) = previous.upstreams.iter().find(|u| u.name == upstream.name) {
                upstream.adopt_health(before);
            }
        }
        // Certificates: a listener whose other TLS settings are unchanged takes the certificates
        // the new configuration lists (they were loaded and checked by validation).
        for (address, running) in &self.tls_listeners {
            let reloaded = config.process.listeners.iter().find(|l| l.address == *address).and_then(|l| l.tls.as_ref());
            if let Some(reloaded) = reloaded.filter(|r| r.settings_summary() == running.settings_summary()) {
                running.adopt_certificates(reloaded);
            }
        }
        let new_tasks = RuntimeTasks::start(&config.runtime);
        self.runtime.store(config.runtime.clone());
        drop(tasks);
        let elapsed = started.elapsed();
        let restart_needed = self.started_with.changed(&ProcessSummary::of(&config.process));
        if !restart_needed.is_empty() {
            tracing::warn!(keys = ?restart_needed, "configuration reloaded, but these keys need a restart to change; their old values stay in force");
        }
        tracing::info!(files = ?config.files, elapsed_ms = elapsed.as_secs_f64() * 1e3, "configuration reloaded");
        METRICS.config_reloads.with_label_values(&["success"]).inc();
        if let Some(sink) = &self.logs.audit {
            audit::config_reloaded(sink, &config.files, elapsed, &restart_needed);
        }
        new_tasks
    }

    fn failed(&self, error: &str) {
        tracing::error!(%error, "configuration reload failed; the previous configuration stays in force");
        METRICS.config_reloads.with_label_values(&["failure"]).inc();
        if let Some(sink) = &self.logs.audit {
            audit::config_reload_failed(sink, error);
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = RuntimeTasks::start(&self.runtime.load_full());
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; reload is unavailable");
                let _ = shutdown.changed().await;
                return;
            }
        };
        // A SIGHUP that came while the server was starting found nobody to act on it: if the
        // files changed since they were read, that reload happens now.
        if stamps(&self.loaded.0) != self.loaded.1 {
            tracing::info!("the configuration changed while the gateway was starting: reloading");
            tasks = self.reload(tasks).await;
        }
        loop {
            tokio::select! {
                received = hangups.recv() => {
                    if received.is_none() {
                        break;
                    }
                    tracing::info!("SIGHUP: reloading the configuration");
                    // Whatever the configuration says: log files rotated away are let go.
                    self.logs.reopen();
                    tasks = self.reload(tasks).await;
                }
                _ = shutdown.changed() => break,
            }
        }
        drop(tasks);
    }
}
