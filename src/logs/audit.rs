//! The audit log: one JSON line per security decision.
//!
//! | event               | when                                   | fields besides `time`, `request_id`, `client_ip`, `route` |
//! |---------------------|----------------------------------------|-------------------------------------------------|
//! | `auth_success`      | a credential verified                  | `method`, `key_id` or `subject`, `issuer`        |
//! | `auth_failure`      | 401                                    | `method`, `reason`, `key_prefix` (≤ 4 characters of an API key) |
//! | `permission_denied` | 403 for a missing permission           | `method`, `key_id`/`subject`, `permission`       |
//! | `rate_limited`      | 429                                    | `policy`, and the caller when authenticated      |
//! | `cors_rejected`     | a refused preflight                    | `origin`, `rejected` (origin, method or headers) |
//! | `host_rejected`     | 421                                    | `host`                                           |
//! | `config_loaded`     | the gateway started with a configuration | `files`                                        |
//! | `config_reloaded`   | `SIGHUP` swapped in a new configuration | `files`, `duration_ms`, `restart_needed` (keys left as they were) |
//! | `config_reload_failed` | `SIGHUP` found an invalid configuration | `error` (the configuration errors, redacted) |
//!
//! A request refused after its credential verified (403, or an identity-keyed 429) logs
//! `auth_success` and then its refusal. Values a client chose (host, origin, subject) are
//! redacted by [`crate::redact`]; a presented token or key never appears beyond its prefix.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Serialize;

use super::exchange::Exchange;
use super::sink::LogSink;
use crate::error::GatewayError;
use crate::pipeline::auth::PrincipalSummary;
use crate::redact::{redact, redact_value};

/// One audit log line: the event and whichever fields it has.
#[derive(Debug, Default, Serialize)]
pub struct AuditRecord<'a> {
    log: &'static str,
    time: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    permission: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_needed: Option<&'a [&'static str]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl<'a> AuditRecord<'a> {
    fn event(event: &'static str) -> Self {
        AuditRecord { log: "audit", time: super::sink::timestamp(), event, ..AuditRecord::default() }
    }

    fn about(event: &'static str, x: &'a Exchange<'a>) -> Self {
        AuditRecord {
            request_id: x.admission().and_then(|a| a.request_id.to_str().ok()).map(redact),
            client_ip: x.admission().map(|a| a.client_ip),
            route: Some(x.route_name()).filter(|r| !r.is_empty()),
            ..Self::event(event)
        }
    }

    fn caller(mut self, summary: Option<&PrincipalSummary<'a>>) -> Self {
        if let Some(s) = summary {
            self.method = Some(s.method);
            self.key_id = s.key_id;
            self.issuer = s.issuer;
            if s.key_id.is_none() {
                self.subject = Some(redact_value(&String::from_utf8_lossy(s.subject)));
            }
        }
        self
    }
}

/// Writes the audit events of a finished request.
pub fn record(x: &Exchange<'_>, sink: &LogSink) {
    let ctx = x.ctx;
    let summary = x.principal().map(|p| ctx.runtime.auth.summary(p));
    if summary.is_some() {
        sink.write(&AuditRecord::about("auth_success", x).caller(summary.as_ref()));
    }
    let Some(refusal) = x.refusal() else { return };
    let record = match refusal {
        GatewayError::AuthenticationFailed(failure) => {
            let presented = x.admission().and_then(|a| a.presented.as_ref());
            AuditRecord {
                method: Some(presented.map_or("unknown", |p| p.method)),
                reason: Some(failure.label()),
                key_prefix: presented.and_then(|p| p.key_prefix.clone()),
                ..AuditRecord::about("auth_failure", x)
            }
        }
        GatewayError::PermissionDenied { missing } => {
            AuditRecord { permission: Some(missing), ..AuditRecord::about("permission_denied", x) }
                .caller(summary.as_ref())
        }
        GatewayError::CredentialNotAccepted => {
            AuditRecord { reason: Some("credential_not_accepted"), ..AuditRecord::about("permission_denied", x) }
                .caller(summary.as_ref())
        }
        GatewayError::RateLimited { policy, .. } => {
            AuditRecord { policy: Some(policy), ..AuditRecord::about("rate_limited", x) }.caller(summary.as_ref())
        }
        GatewayError::CorsRejected(why) => {
            let origin = x.request.headers.get(http::header::ORIGIN);
            AuditRecord {
                origin: origin.map(|o| redact_value(&String::from_utf8_lossy(o.as_bytes()))),
                rejected: Some(why.label()),
                ..AuditRecord::about("cors_rejected", x)
            }
        }
        GatewayError::HostNotAllowed => AuditRecord {
            host: Some(redact_value(&String::from_utf8_lossy(x.requested_host()))),
            ..AuditRecord::about("host_rejected", x)
        },
        _ => return,
    };
    sink.write(&record);
}

/// Writes `config_reloaded`: the files now in force, how long the reload took, and the keys
/// whose change needs a restart.
pub fn config_reloaded(
    sink: &LogSink,
    files: &[std::path::PathBuf],
    elapsed: std::time::Duration,
    restart_needed: &[&'static str],
) {
    let files = files.iter().map(|f| f.display().to_string()).collect();
    sink.write(&AuditRecord {
        files: Some(files),
        duration_ms: Some(elapsed.as_secs_f64() * 1e3),
        restart_needed: Some(restart_needed),
        ..AuditRecord::event("config_reloaded")
    });
}

/// Writes `config_reload_failed` with the (redacted) configuration errors.
pub fn config_reload_failed(sink: &LogSink, error: &str) {
    sink.write(&AuditRecord { error: Some(redact(error).into_owned()), ..AuditRecord::event("config_reload_failed") });
}

/// Writes `config_loaded`: the files the gateway started with.
pub fn config_loaded(sink: &LogSink, files: &[std::path::PathBuf]) {
    let files = files.iter().map(|f| f.display().to_string()).collect();
    sink.write(&AuditRecord { files: Some(files), ..AuditRecord::event("config_loaded") });
}
