//! The command line: `portcullis [run] -c PATH`, `portcullis check -c PATH`,
//! `portcullis explain -c PATH METHOD URL`, `portcullis keys ...`, `--version`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use http::{Method, Uri};
use pingora::http::RequestHeader;

use crate::config::upstreams::ECHO_TARGET;
use crate::config::Config;
use crate::error::GatewayError;
use crate::pipeline::admit::{self, Admission, Routing};
use crate::pipeline::auth::jwt::{Issuer, KeySource};
use crate::pipeline::auth::AuthMode;
use crate::pipeline::host::HostPattern;
use crate::pipeline::ratelimit::LimitKey;
use crate::pipeline::upstream::Targets;

/// The configuration used when `-c` is not given: every `*.toml` in `conf/`.
pub const DEFAULT_CONFIG_PATH: &str = "conf";

/// The exit code for configuration errors (sysexits' `EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;

/// Portcullis: an authentication gateway on Pingora.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about = None)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file, or a directory whose *.toml files are loaded in name order.
    #[arg(short = 'c', long = "config", global = true, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Start the gateway (the default).
    Run {
        /// Take over the listening sockets of a running gateway (Pingora's graceful upgrade):
        /// start this, then send the old process SIGQUIT. Both use `server.upgrade_socket`.
        #[arg(long)]
        upgrade: bool,
    },
    /// Exit 0 when the admin endpoint at URL answers 2xx within 3 s, 1 otherwise: a
    /// container HEALTHCHECK without curl in the image.
    Health {
        /// The URL to ask.
        #[arg(default_value = "http://127.0.0.1:9100/healthz")]
        url: String,
    },
    /// Load and validate the configuration, print a summary, and exit (78 on errors).
    Check,
    /// Show how a request would be handled: host, canonical path, route, what it requires.
    /// Starts nothing. Exits 0 when the request would be routed, 1 when it would be refused
    /// whatever its credentials.
    Explain {
        /// The request method, e.g. GET.
        method: String,
        /// The request URL, e.g. http://api.example.com/api/v1/models.
        url: String,
        /// A request header, as curl takes it: -H 'Origin: https://app.example.com'. Repeatable.
        /// A credential given here is verified against the configured keys (not printed).
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
    /// Make or hash API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `portcullis keys ...`.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum KeysCommand {
    /// Make a new random key: prints it once, and the [[auth.api_key]] block to paste.
    Generate {
        /// The key id (in logs, metrics and X-Auth-Key-Id).
        #[arg(long)]
        id: String,
        /// Comma-separated permissions, e.g. read_models,run_inference.
        #[arg(long, value_delimiter = ',')]
        permissions: Vec<String>,
        /// Expiry from now, e.g. 90d or 12h.
        #[arg(long = "expires-in")]
        expires_in: Option<String>,
    },
    /// Read a key on standard input and print its hash line.
    Hash,
}

/// `portcullis keys generate`: the output, or what is wrong with the arguments.
pub fn generate_key(id: &str, permissions: &[String], expires_in: Option<&str>) -> Result<String, String> {
    use crate::pipeline::auth::apikey;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
        return Err(format!("--id \"{id}\" must be printable ASCII without quotes"));
    }
    if let Some(bad) = permissions.iter().find(|p| !crate::pipeline::auth::is_permission_name(p)) {
        return Err(format!("--permissions: \"{bad}\" is not a permission name"));
    }
    let expires = match expires_in {
        None => None,
        Some(text) => {
            let after =
                crate::config::units::parse_duration(text).map_err(|e| format!("--expires-in: {e}; use e.g. 90d"))?;
            Some(humantime::format_rfc3339_seconds(std::time::SystemTime::now() + after).to_string())
        }
    };
    let key = apikey::generate()?;
    let mut out = String::new();
    let _ = writeln!(out, "# The new key, shown this once (only its hash is stored):");
    let _ = writeln!(out, "{key}");
    let _ = writeln!(out, "# Add this to the configuration:");
    let _ = writeln!(out, "[[auth.api_key]]");
    let _ = writeln!(out, "id = \"{id}\"");
    let _ = writeln!(out, "hash = \"{}\"", apikey::hash_line(&key));
    let quoted: Vec<String> = permissions.iter().map(|p| format!("\"{p}\"")).collect();
    let _ = writeln!(out, "permissions = [{}]", quoted.join(", "));
    if let Some(at) = expires {
        let _ = writeln!(out, "expires = \"{at}\"");
    }
    Ok(out)
}

/// `portcullis health URL`: `Ok` when the URL answers 2xx within 3 seconds.
pub fn health(url: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let response = client.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("{url} answered HTTP {}", response.status().as_u16()))
        }
    })
}

/// The summary `portcullis check` prints for a valid configuration.
pub fn summary(config: &Config) -> String {
    let mut out = String::new();
    let files: Vec<String> = config.files.iter().map(|f| f.display().to_string()).collect();
    let _ = writeln!(out, "configuration OK: {}", files.join(", "));
    let _ = writeln!(out, "listeners:");
    for l in &config.process.listeners {
        match &l.tls {
            Some(tls) => {
                let names: Vec<String> = tls.names().iter().map(|n| n.join(" ")).collect();
                let _ = writeln!(
                    out,
                    "  https://{} (TLS {}+{}{}; certificates: {})",
                    l.address,
                    if tls.min_version == crate::tls::MinVersion::Tls13 { "1.3" } else { "1.2" },
                    if tls.http2 { ", h2" } else { "" },
                    if tls.client_ca.is_some() { ", client certificates" } else { "" },
                    names.join("; ")
                );
            }
            None => {
                let note = match (l.h2c, l.redirect_to) {
                    (_, Some(port)) => format!(" (redirects to https on port {port})"),
                    (true, _) => " (h2c)".to_string(),
                    _ => String::new(),
                };
                let _ = writeln!(out, "  http://{}{note}", l.address);
            }
        }
    }
    let rt = &config.runtime;
    let _ = writeln!(out, "upstreams:");
    for u in &rt.upstreams {
        let targets = match &u.targets {
            Targets::Echo => ECHO_TARGET.to_string(),
            Targets::Servers(s) => s.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        };
        let check = match &u.health_check {
            Some(c) => format!(" (health check GET {} every {})", c.path, humantime::format_duration(c.interval)),
            None => String::new(),
        };
        let _ = writeln!(out, "  {} -> {}{check}", u.name, targets);
    }
    let _ = match config.process.admin {
        Some(address) => writeln!(out, "admin: http://{address} (/metrics, /healthz, /readyz)"),
        None => writeln!(out, "admin: off"),
    };
    let log = |d: &crate::logs::sink::Destination| match d {
        crate::logs::sink::Destination::Off => "off".to_string(),
        crate::logs::sink::Destination::Stdout => "stdout".to_string(),
        crate::logs::sink::Destination::File(path) => path.display().to_string(),
    };
    let _ = writeln!(out, "logs: access {}, audit {}", log(&config.process.access_log), log(&config.process.audit_log));
    let _ = writeln!(
        out,
        "api keys: {} (read from Authorization: Bearer and {})",
        rt.auth.keys.len(),
        rt.auth.api_key_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
    );
    if rt.auth.jwt.is_enabled() {
        let _ = writeln!(out, "jwt issuers:");
        for i in &rt.auth.jwt.issuers {
            let _ =
                writeln!(out, "  {:<16} {} ({}; {})", i.name, i.issuer, algorithm_names(&i.algorithms), keys_from(i));
        }
    }
    if !rt.limits.policies.is_empty() {
        let _ = writeln!(out, "rate limits:");
        for p in &rt.limits.policies {
            let _ = writeln!(out, "  {:<16} {}/{}s by {}", p.name, p.rate.count, p.rate.period, limit_key_name(&p.key));
        }
    }
    if rt.cors.is_some() {
        let _ = writeln!(out, "cors: on (answered by the gateway; routes with cors = false excepted)");
    }
    let _ = writeln!(out, "routes:");
    for r in rt.routes.routes() {
        let methods = r
            .methods
            .as_ref()
            .map_or_else(|| "*".to_string(), |m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","));
        let host = match &r.host {
            None => String::new(),
            Some(HostPattern::Any) => "*".to_string(),
            Some(HostPattern::Exact(h)) => h.to_string(),
            Some(HostPattern::Subdomains(s)) => format!("*{s}"),
        };
        let auth = match r.auth {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::None => "none",
        };
        let upstream = rt.upstreams.get(r.upstream).map_or("?", |u| &u.name);
        let permissions =
            if r.permissions.is_empty() { String::new() } else { format!(", needs {}", r.permissions.join(" + ")) };
        let _ = writeln!(
            out,
            "  {:<16} {:<12} {}{} -> {} (auth: {}{})",
            r.name, methods, host, r.path, upstream, auth, permissions
        );
    }
    out
}

fn limit_key_name(key: &LimitKey) -> String {
    match key {
        LimitKey::Client => "client address".into(),
        LimitKey::Identity => "identity".into(),
        LimitKey::Header(name) => format!("header {name}"),
    }
}

fn algorithm_names(algorithms: &[jsonwebtoken::Algorithm]) -> String {
    algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
}

fn keys_from(issuer: &Issuer) -> String {
    match &issuer.keys {
        KeySource::Remote(remote) => format!("keys from {}", remote.settings().url),
        KeySource::Static(set) => format!("{} key(s) loaded", set.keys.len()),
    }
}

/// Whether `url` may carry a user:password: an `@` before its query that is not in its path
/// (`u:p@host`, and however a password may cut the URL up: `u:p#ss@`, `u:p/ss@`).
fn may_hold_userinfo(url: &str) -> bool {
    let before_query = url.split('?').next().unwrap_or(url);
    let ats = before_query.matches('@').count();
    let in_path = match url.parse::<Uri>() {
        // The authority must then be a plain host[:port]: `u:secret/pass@host` is not one.
        Ok(uri)
            if uri
                .authority()
                .is_some_and(|a| crate::pipeline::host::parse_authority(a.as_str().as_bytes()).is_some()) =>
        {
            uri.path().matches('@').count()
        }
        _ => 0,
    };
    ats > in_path
}

/// `portcullis explain`: how `method url` with `headers` (`Name: value`, as curl's `-H`) would
/// be handled under `config`: the text to print, and whether the request would be routed
/// (`false`: refused; without a credential header, whatever its credentials). `Err` when the
/// method, URL or a header cannot be read. Routing runs [`crate::pipeline::admit::route`], the
/// gateway's own function.
pub fn explain(config: &Config, method: &str, url: &str, headers: &[String]) -> Result<(String, bool), String> {
    let rt = &config.runtime;
    let mut out = String::new();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("\"{method}\" is not an HTTP method"))?;
    // The URL is only ever shown redacted, as logs show it: its query or user:password may be
    // a secret.
    if may_hold_userinfo(url) {
        return Err(
            "the URL carries a user:password (not shown): give a credential with -H, as the gateway would see it"
                .into(),
        );
    }
    // Shown only when no user:password may be in it, redacted as a logged request target is.
    let shown = crate::redact::redact_target(url);
    let uri: Uri = url.parse().map_err(|_| format!("\"{shown}\" is not a URL"))?;
    let (Some(authority), Some(path)) = (uri.authority(), uri.path_and_query()) else {
        return Err(format!("\"{shown}\" is not an absolute URL: write http://HOST/PATH so the host rules apply"));
    };
    let _ = writeln!(out, "request:     {method} {shown}");
    let mut req = RequestHeader::build(method.clone(), path.as_str().as_bytes(), None)
        .map_err(|_| format!("\"{shown}\" is not a request target"))?;
    let mut host_given = false;
    for header in headers {
        // Never echoed: a malformed header may still hold a secret.
        let (name, value) = header.split_once(':').ok_or("a -H header is not \"Name: value\" (no colon)")?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| "a -H header's name is not a header name".to_string())?;
        let value = http::HeaderValue::from_str(value.trim())
            .map_err(|_| format!("-H {name}: the value is not a header value"))?;
        host_given |= name == http::header::HOST;
        req.append_header(name.clone(), value).map_err(|_| format!("-H {name} cannot be added"))?;
    }
    if !host_given {
        req.insert_header(http::header::HOST, authority.as_str())
            .map_err(|_| format!("\"{}\" is not a host", crate::redact::redact_value(authority.as_str())))?;
    }

    let refused = |mut out: String, e: GatewayError| {
        let _ = writeln!(out, "outcome:     refused, {} {}: {}", e.status().as_u16(), e.code(), e.message());
        Ok((out, false))
    };
    describe_headers(rt, &req, host_given, &mut out);
    // The gateway's own admission, over a request from loopback on a plain listener.
    let mut admission = Admission::arrive(rt, &req, IpAddr::V4(Ipv4Addr::LOCALHOST));
    let routing = admit::route(rt, &req, None, &mut admission);
    if admission.host.is_some() {
        let name = crate::pipeline::host::request_host(&req).map(|h| h.name.as_str().to_string()).unwrap_or_default();
        let _ = writeln!(out, "host:        {name} (allowed)");
    }
    if let Some(route) = admission.route {
        let canonical = admission.canonical_path.as_deref().unwrap_or(req.uri.path());
        let form = if admission.canonical_path.is_some() { " (canonical form)" } else { "" };
        let _ = writeln!(out, "path:        {canonical}{form}");
        if let Ok(Routing::Preflight { .. }) | Err(GatewayError::CorsRejected(_)) = &routing {
            let route = rt.routes.get(route);
            let _ =
                writeln!(out, "route:       {} (path {}), which governs this CORS preflight", route.name, route.path);
        }
    }
    let route_id = match (routing, admission.route) {
        (Ok(Routing::Preflight { asked, .. }), _) => {
            let _ = writeln!(
                out,
                "outcome:     answered by the gateway: 204, {asked} allowed from this origin; no credentials needed"
            );
            return Ok((out, true));
        }
        (Ok(Routing::Request), Some(route)) => route,
        // Step 1 refused: a 413 is the route's, the rest come before or instead of a route.
        (Err(e @ GatewayError::PayloadTooLarge { .. }), Some(route)) => {
            describe_route(rt, &req, route, &mut out);
            return refused(out, e);
        }
        (Err(e), _) => return refused(out, e),
        (Ok(_), _) => return refused(out, GatewayError::Internal),
    };
    describe_route(rt, &req, route_id, &mut out);
    let route = rt.routes.get(route_id);
    if route.auth != AuthMode::None && rt.auth.presents_credential(&req.headers) {
        return explain_credential(rt, admission, &req, out);
    }
    let outcome = match (route.auth, route.permissions.is_empty()) {
        (AuthMode::None, _) => "forwarded, no credentials needed",
        (_, true) => "forwarded once the credentials check out",
        (_, false) => "forwarded once the credentials check out and hold the permissions",
    };
    let _ = writeln!(out, "outcome:     {outcome}");
    Ok((out, true))
}

/// What the route `route_id` asks of a request: upstream, auth, credentials, permissions,
/// limits and CORS.
fn describe_route(rt: &crate::pipeline::Runtime, req: &RequestHeader, route_id: usize, out: &mut String) {
    let route = rt.routes.get(route_id);
    let _ = writeln!(out, "route:       {} (path {})", route.name, route.path);
    let upstream = rt.upstreams.get(route.upstream);
    let targets = upstream.map_or_else(String::new, |u| match &u.targets {
        Targets::Echo => ECHO_TARGET.to_string(),
        Targets::Servers(s) => s.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    });
    let _ = writeln!(out, "upstream:    {} -> {targets}", upstream.map_or("?", |u| &u.name));
    let credentials = {
        let mut c = vec![format!(
            "API keys ({}, Authorization: Bearer)",
            rt.auth.api_key_headers.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
        )];
        c.extend(
            rt.auth.jwt.issuers.iter().map(|i| format!("JWTs from {} ({})", i.name, algorithm_names(&i.algorithms))),
        );
        c.join("; ")
    };
    let auth = match route.auth {
        AuthMode::Required => format!("required: {credentials}"),
        AuthMode::Optional => format!("optional: anonymous allowed, bad credentials refused; {credentials}"),
        AuthMode::None => "none: credentials are not read".to_string(),
    };
    let _ = writeln!(out, "auth:        {auth}");
    if let Some(accepted) = &route.credentials {
        let mut kinds: Vec<String> = Vec::new();
        if accepted.api_key {
            kinds.push("api_key".into());
        }
        if accepted.any_jwt {
            kinds.push("jwt (any issuer)".into());
        }
        for &i in &accepted.jwt_issuers {
            kinds.push(format!("jwt:{}", rt.auth.jwt.issuers.get(i).map_or("?", |i| &i.name)));
        }
        if accepted.mtls {
            kinds.push("mtls".into());
        }
        let _ = writeln!(out, "credentials: only {} (any other kind: 403 PERMISSION_DENIED)", kinds.join(", "));
    }
    let needs = if route.permissions.is_empty() { "no permission".to_string() } else { route.permissions.join(" + ") };
    let _ = writeln!(out, "permissions: {needs}");
    let _ = writeln!(out, "limits:      request body at most {} bytes", rt.max_body_size);
    let describe = |ids: &[usize], when: &str| {
        ids.iter()
            .map(|&id| {
                let p = &rt.limits.policies[id];
                format!("{} ({}/{}s by {}, {when})", p.name, p.rate.count, p.rate.period, limit_key_name(&p.key))
            })
            .collect::<Vec<_>>()
    };
    let mut policies = describe(&route.limits_before_auth, "before auth");
    policies.extend(describe(&route.limits_after_auth, "after auth"));
    if policies.is_empty() {
        let _ = writeln!(out, "rate limits: none");
    } else {
        let _ = writeln!(out, "rate limits: {}", policies.join("; "));
    }
    if let (Some(failures), true) = (&rt.limits.auth_failures, route.auth != AuthMode::None) {
        let rate = failures.rate;
        let _ =
            writeln!(out, "             failed authentications: {}/{}s per client address", rate.count, rate.period);
    }
    let cors = match (&rt.cors, route.cors) {
        (Some(cors), true) => match (req.headers.get(http::header::ORIGIN), cors.allow_origin(req)) {
            (None, _) => "answered by the gateway ([cors])".to_string(),
            (Some(_), Some(allowed)) => {
                format!("answered by the gateway ([cors]); this origin may read the response (Access-Control-Allow-Origin: {})", allowed.to_str().unwrap_or(""))
            }
            (Some(_), None) => {
                "answered by the gateway ([cors]); this origin is not allowed: no Access-Control-Allow-* header"
                    .to_string()
            }
        },
        _ => "off (the upstream's own)".to_string(),
    };
    let _ = writeln!(out, "cors:        {cors}");
}

/// The credential a request carries, verified as the gateway would (keys fetched from a
/// `jwks_url` are not: explain fetches nothing), and whether it satisfies the route: the
/// gateway's own [`admit::authorize`], over counters of this process alone.
fn explain_credential(
    rt: &crate::pipeline::Runtime,
    mut admission: Admission,
    req: &RequestHeader,
    mut out: String,
) -> Result<(String, bool), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut quota = None;
    let verified = runtime.block_on(async {
        let check = admit::authorize(rt, req, None, &mut admission, &mut quota, crate::pipeline::ratelimit::unix_now);
        tokio::time::timeout(std::time::Duration::from_secs(2), check).await
    });
    let Ok(verdict) = verified else {
        let _ = writeln!(
            out,
            "credential:  cannot be verified here (its keys come from a jwks_url, which explain does not fetch)"
        );
        let _ = writeln!(out, "outcome:     forwarded once the credentials check out");
        return Ok((out, true));
    };
    if let Some(p) = &admission.principal {
        let who = rt.auth.summary(p);
        let by =
            who.key_id.map(|k| format!(" \"{k}\"")).or(who.issuer.map(|i| format!(" from {i}"))).unwrap_or_default();
        let _ = writeln!(out, "credential:  {}{by}, verified", kind_name(who.method));
    }
    if let (Err(GatewayError::AuthenticationFailed(failure)), Some(presented)) = (&verdict, &admission.presented) {
        let _ = writeln!(out, "credential:  {} ({})", kind_name(presented.method), failure.label());
    }
    match verdict {
        Ok(()) => {
            let _ = writeln!(out, "outcome:     forwarded");
            Ok((out, true))
        }
        Err(e) => {
            let _ = writeln!(out, "outcome:     refused, {} {}: {}", e.status().as_u16(), e.code(), e.message());
            Ok((out, false))
        }
    }
}

fn kind_name(method: &str) -> &str {
    match method {
        "api_key" => "an API key",
        "jwt" => "a JWT",
        "mtls" => "a client certificate",
        _ => "an unreadable credential",
    }
}

/// One line per header given: what the gateway makes of it.
fn describe_headers(rt: &crate::config::Runtime, req: &RequestHeader, host_given: bool, out: &mut String) {
    // (`keys()` yields each name once.)
    for name in req.headers.keys() {
        if *name == http::header::HOST && !host_given {
            continue;
        }
        let credential = *name == http::header::AUTHORIZATION || rt.auth.api_key_headers.contains(name);
        let effect = if credential {
            "a credential (verified below when the route reads credentials); removed before the upstream unless auth.forward_credentials".to_string()
        } else if *name == rt.request_id_header {
            match crate::pipeline::request_id::request_id(&req.headers, &rt.request_id_header) == req.headers[name] {
                true => "kept as the request id, and returned on the response".to_string(),
                false => "not a valid request id: replaced by a generated one".to_string(),
            }
        } else if *name == http::header::ORIGIN {
            "a browser's origin: CORS, below".to_string()
        } else if *name == http::header::ACCESS_CONTROL_REQUEST_METHOD
            || *name == http::header::ACCESS_CONTROL_REQUEST_HEADERS
        {
            "with OPTIONS and Origin, makes this a CORS preflight".to_string()
        } else if let Some(fate) = crate::pipeline::forward::fate(name) {
            fate.to_string()
        } else {
            let counted: Vec<&str> = rt
                .limits
                .policies
                .iter()
                .filter(|p| matches!(&p.key, LimitKey::Header(h) if h == name))
                .map(|p| &*p.name)
                .collect();
            if counted.is_empty() {
                "passed to the upstream unchanged".to_string()
            } else {
                format!("passed to the upstream; the key of rate limit {}", counted.join(", "))
            }
        };
        // Values are not printed: they may be secrets.
        let _ = writeln!(out, "header:      {name}: {effect}");
    }
}
