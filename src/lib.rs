//! Portcullis: an authentication gateway on Cloudflare's Pingora.
//!
//! [`config::load`] turns `conf/*.toml` into a validated [`config::Config`]; [`build_server`]
//! turns that into a Pingora server whose [`gateway::Gateway`] runs the request
//! [`pipeline`]. `main.rs` is the command line around these.

pub mod cli;
pub mod config;
pub mod ctx;
pub mod error;
pub mod gateway;
pub mod pipeline;
pub mod tls;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

use config::Config;
use gateway::{Gateway, SharedRuntime};

/// How long the runtimes get to stop once the grace period is over.
pub const SHUTDOWN_TIMEOUT_SECONDS: u64 = 1;

/// Builds the Pingora server for a validated configuration, without starting it.
///
/// Returns the server and the shared runtime pointer that a reload swaps.
pub fn build_server(config: &Config) -> (Server, SharedRuntime) {
    let process = &config.process;
    let conf = ServerConf {
        threads: process.threads,
        upstream_keepalive_pool_size: process.upstream_keepalive_pool_size,
        // Pingora keeps serving in-flight requests for the grace period after SIGTERM.
        grace_period_seconds: Some(process.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECONDS),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
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
    for ((h2c, redirect_to), addresses) in groups {
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        let edge = gateway::ListenerEdge { redirect_to, hsts: None };
        let mut service = ProxyServiceBuilder::new(&server.configuration, Gateway::new(runtime.clone(), edge))
            .name(if h2c { "portcullis (h2c)" } else { "portcullis" })
            .server_options(options)
            .build();
        for address in &addresses {
            service.add_tcp(address);
        }
        server.add_service(service);
    }
    let mut watched = Vec::new();
    for listener in &process.listeners {
        let Some(tls) = &listener.tls else { continue };
        // Config validation built these settings once already; failing here is not expected,
        // and a gateway missing a listener it was told to serve must not pretend otherwise.
        let settings = match tls.settings() {
            Ok(settings) => settings,
            Err(error) => {
                tracing::error!(address = %listener.address, %error, "cannot start the TLS listener");
                eprintln!("portcullis: cannot start the TLS listener {}: {error}", listener.address);
                std::process::exit(1);
            }
        };
        let edge = gateway::ListenerEdge { redirect_to: None, hsts: tls.hsts.clone() };
        let mut service = ProxyServiceBuilder::new(&server.configuration, Gateway::new(runtime.clone(), edge))
            .name("portcullis (tls)")
            .build();
        service.add_tls_with_settings(&listener.address.to_string(), None, settings);
        server.add_service(service);
        watched.push(tls.clone());
    }
    if !watched.is_empty() {
        let watcher = tls::CertificateWatcher::new(watched);
        server.add_service(pingora::services::background::background_service("certificate reload", watcher));
    }
    // Remote JWKS are fetched by one background task each, never on the request path.
    // Config reload (issue 7) will have to start the task of a jwks_url it adds.
    let remote_key_sets = config.runtime.auth.jwt.remote_key_sets();
    if !remote_key_sets.is_empty() {
        let refresher = pipeline::auth::jwks::JwksRefresher::new(remote_key_sets);
        server.add_service(pingora::services::background::background_service("jwks refresh", refresher));
    }
    (server, runtime)
}

/// Starts the gateway and serves until a signal stops it.
pub fn run(config: Config) -> ! {
    let (server, _runtime) = build_server(&config);
    for listener in &config.process.listeners {
        tracing::info!(address = %listener.address, h2c = listener.h2c, tls = listener.tls.is_some(), "listening");
    }
    server.run_forever()
}
