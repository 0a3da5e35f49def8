//! The validated, typed configuration: what the request path reads.
//!
//! [`build`] is the only way to make a [`Config`]: each part of the file is validated by the
//! module of its name (`server`, `listeners`, `upstreams`, `auth`, `cors`, `ratelimit`, `routes`,
//! `tls`, each building the stage of `pipeline/` it configures); this module puts the parts
//! together and checks what spans them. Every value is parsed once (durations, sizes, addresses,
//! host patterns, methods, header names), every cross-reference checked (a route's upstream
//! exists, its host is allowed), and every problem reported with its key. The request path then
//! only looks things up.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::ConfigErrors;
use super::file::FileConfig;
use super::routes::RouteRefs;
use super::server::{Environment, ProcessSettings};
use super::sources::{Problems, Sources};
use super::{auth, cors, listeners, production, ratelimit, routes, server, upstreams};
use crate::pipeline::ratelimit::RateLimiter;
use crate::pipeline::route::RouteTable;
use crate::pipeline::Runtime;

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

/// Validates a parsed configuration.
pub fn build(file: &FileConfig, sources: &Sources, files: Vec<PathBuf>) -> Result<Config, ConfigErrors> {
    let mut p = Problems::new(sources);
    let server = server::build(&file.server, &mut p);
    let listeners = listeners::build(&file.listener, &mut p);
    let admin = server::build_admin(file.admin.as_ref(), &listeners, &mut p);
    if server.environment == Environment::Production {
        production::check(file, &files, &listeners, admin, &mut p);
    }
    let log = server::build_log(file.log.as_ref(), &mut p);
    let (upstreams, upstream_index) = upstreams::build(&file.upstream, &mut p);
    let auth = auth::build(file.auth.as_ref(), &mut p);
    let request_id_header = &server.request_id_header;
    let cors = file.cors.as_ref().map(|section| {
        // Without allowed_headers, a browser may send what the gateway itself reads.
        let mut defaults = vec![http::header::AUTHORIZATION, http::header::CONTENT_TYPE];
        defaults.extend(auth.api_key_headers.iter().cloned());
        defaults.push(request_id_header.clone());
        cors::build(section, &defaults, request_id_header, &mut p)
    });
    let mut reserved_key_headers = auth.api_key_headers.clone();
    reserved_key_headers.push(request_id_header.clone());
    let policies = ratelimit::build_policies(&file.rate_limit, &reserved_key_headers, &mut p);
    let issuer_names: Vec<&str> = auth.jwt.issuers.iter().map(|i| &*i.name).collect();
    let refs = RouteRefs {
        upstreams: &upstream_index,
        hosts: &server.hosts,
        policies: &policies.policies,
        policy_index: &policies.index,
        refused_policies: &policies.refused,
        cors: cors.is_some(),
        issuers: &issuer_names,
        client_certificates: listeners.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some())),
    };
    let routes = routes::build(&file.route, &refs, &mut p);
    let auth_failure_limit = ratelimit::build_auth_failure_limit(file.server.auth_failure_limit.as_deref(), &mut p);
    let limits = RateLimiter::new(policies.policies, auth_failure_limit);
    if auth.api_key_headers.contains(request_id_header) {
        // A valid key would be kept as the request id: echoed, logged and forwarded.
        p.push(
            "server.request_id_header",
            format!("\"{request_id_header}\" is also an API-key header"),
            "use a name such as \"X-Request-Id\"",
        );
    }

    let runtime = Runtime {
        hosts: server.hosts,
        trusted_proxies: server.trusted_proxies,
        max_body_size: server.max_body_size,
        request_id_header: server.request_id_header,
        auth,
        cors,
        limits,
        routes: RouteTable::new(routes),
        upstreams,
    };
    let process = ProcessSettings {
        environment: server.environment,
        threads: server.threads,
        upstream_keepalive_pool_size: server.upstream_keepalive_pool_size,
        shutdown_grace: server.shutdown_grace,
        shutdown_delay: server.shutdown_delay,
        connections: server.connections,
        listeners,
        log_level: log.level,
        admin,
        access_log: log.access,
        audit_log: log.audit,
        upgrade_socket: server.upgrade_socket,
    };
    p.finish(Config { files, process, runtime: Arc::new(runtime) })
}
