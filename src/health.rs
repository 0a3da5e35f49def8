//! Active upstream health checks: one probe loop per target of every upstream with a
//! `health_check`, off the request path.
//!
//! A probe is `GET {path}` over a fresh connection made exactly as a proxied request's would be
//! (same TLS, SNI and CA), with `Connection: close`; any 2xx answer within `timeout` passes.
//! `unhealthy_threshold` consecutive failures take a target out of rotation,
//! `healthy_threshold` consecutive passes put it back; the first probe decides at once.
//! Transitions are logged; `portcullis_upstream_health_checks_total` and
//! `portcullis_upstream_healthy_targets` follow every probe.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Runtime;
use crate::metrics::METRICS;
use crate::pipeline::upstream::{Health, HealthCheck, Targets, Upstream};

/// The background service probing every health-checked upstream of a runtime.
pub struct HealthChecker {
    runtime: Arc<Runtime>,
}

impl HealthChecker {
    /// A checker for the upstreams of `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        HealthChecker { runtime }
    }

    /// Sets `portcullis_upstream_healthy_targets` for every upstream of `runtime` (those
    /// without a health check count all their targets).
    pub fn publish(runtime: &Runtime) {
        for u in &runtime.upstreams {
            METRICS.upstream_healthy_targets.with_label_values(&[&u.name]).set(u.healthy_targets() as i64);
        }
    }

    /// Whether any upstream has a health check (otherwise the service need not run).
    pub fn has_work(runtime: &Runtime) -> bool {
        runtime.upstreams.iter().any(|u| u.health_check.is_some())
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        let connector = Arc::new(Connector::new(None));
        let mut tasks = Vec::new();
        for (upstream_index, upstream) in self.runtime.upstreams.iter().enumerate() {
            let (Some(_), Targets::Servers(servers)) = (&upstream.health_check, &upstream.targets) else { continue };
            for (target, addr) in servers.iter().enumerate() {
                let runtime = self.runtime.clone();
                let connector = connector.clone();
                let mut shutdown = shutdown.clone();
                let addr = *addr;
                tasks.push(tokio::spawn(async move {
                    let upstream = &runtime.upstreams[upstream_index];
                    tokio::select! {
                        () = probe_loop(upstream, target, addr, &connector) => {}
                        _ = shutdown.changed() => {}
                    }
                }));
            }
        }
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a health check task failed; its target keeps its last state");
            }
        }
    }
}

/// Probes one target forever, updating its state.
async fn probe_loop(upstream: &Upstream, target: usize, addr: SocketAddr, connector: &Connector) {
    let Some(check) = &upstream.health_check else { return };
    let name = &*upstream.name;
    let passed = METRICS.upstream_health_checks.with_label_values(&[name, "success"]);
    let failed = METRICS.upstream_health_checks.with_label_values(&[name, "failure"]);
    let healthy_gauge = METRICS.upstream_healthy_targets.with_label_values(&[name]);
    let state = &upstream.health[target];
    let mut streak: u32 = 0;
    let mut interval = tokio::time::interval(check.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let result = probe(upstream, check, addr, connector).await;
        let pass = result.is_ok();
        if pass { &passed } else { &failed }.inc();
        let before = state.get();
        // Set after every probe, not only on a change: two targets changing at once could
        // otherwise leave the other's count behind.
        let publish = || healthy_gauge.set(upstream.healthy_targets() as i64);
        let agrees = matches!((before, pass), (Health::Healthy, true) | (Health::Unhealthy, false));
        streak = if agrees { 0 } else { streak + 1 };
        let threshold = if pass { check.healthy_threshold } else { check.unhealthy_threshold };
        let after = match before {
            Health::Unknown => Some(pass),
            _ if !agrees && streak >= threshold => Some(pass),
            _ => None,
        };
        if let Some(healthy) = after {
            streak = 0;
            state.set(if healthy { Health::Healthy } else { Health::Unhealthy });
            match (&result, healthy) {
                (Ok(status), true) => tracing::info!(upstream = name, %addr, status, "upstream target is healthy"),
                (Err(error), false) => {
                    tracing::warn!(upstream = name, %addr, %error, "upstream target is unhealthy; taken out of rotation")
                }
                _ => {}
            }
        }
        publish();
    }
}

/// One probe: the status of a 2xx answer, or why it failed.
async fn probe(
    upstream: &Upstream,
    check: &HealthCheck,
    addr: SocketAddr,
    connector: &Connector,
) -> Result<u16, String> {
    let mut peer = upstream.peer_for(addr).ok_or("no peer")?;
    peer.options.connection_timeout = Some(check.timeout.min(upstream.connect_timeout));
    peer.options.read_timeout = Some(check.timeout);
    peer.options.write_timeout = Some(check.timeout);
    let host = match &upstream.tls {
        Some(tls) => tls.sni.clone(),
        None => addr.to_string(),
    };
    let exchange = async {
        let (mut session, _) = connector.get_http_session(&*peer).await.map_err(|e| e.etype().as_str().to_string())?;
        let mut req = RequestHeader::build("GET", check.path.as_bytes(), Some(3)).map_err(|e| e.to_string())?;
        let host = HeaderValue::from_str(&host).map_err(|e| e.to_string())?;
        req.insert_header(http::header::HOST, host).map_err(|e| e.to_string())?;
        req.insert_header(http::header::USER_AGENT, concat!("portcullis-health-check/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| e.to_string())?;
        req.insert_header(http::header::CONNECTION, "close").map_err(|e| e.to_string())?;
        session.write_request_header(Box::new(req)).await.map_err(|e| e.etype().as_str().to_string())?;
        session.finish_request_body().await.map_err(|e| e.etype().as_str().to_string())?;
        session.read_response_header().await.map_err(|e| e.etype().as_str().to_string())?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        if (200..300).contains(&status) {
            Ok(status)
        } else {
            Err(format!("answered HTTP {status}"))
        }
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}
