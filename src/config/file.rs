//! The serde mirror of the configuration files.
//!
//! These types follow `conf/*.toml` key for key and do no validation beyond the shape: every table
//! rejects unknown keys (a misspelt key in an auth gateway is a security check that silently
//! vanished), and every value that needs parsing (durations, sizes, addresses) stays a string here
//! so that [`super::runtime`] can report a bad value with the key that holds it and how to fix it.
//!

use serde::Deserialize;

/// One configuration file, or the merge of a directory of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`: process-wide settings and the host allow-list.
    #[serde(default)]
    pub server: ServerSection,
    /// `[[listener]]`: the addresses the gateway serves on.
    #[serde(default)]
    pub listener: Vec<ListenerSection>,
    /// `[admin]`: the metrics and health listener.
    pub admin: Option<AdminSection>,
    /// `[log]`: log destinations and level.
    pub log: Option<LogSection>,
    /// `[[upstream]]`: the backends routes forward to.
    #[serde(default)]
    pub upstream: Vec<UpstreamSection>,
    /// `[cors]`: cross-origin policy answered at the edge.
    pub cors: Option<CorsSection>,
    /// `[[rate_limit]]`: named rate-limit policies.
    #[serde(default)]
    pub rate_limit: Vec<RateLimitSection>,
    /// `[auth]`: API keys and JWT issuers.
    pub auth: Option<AuthSection>,
    /// `[[route]]`: path prefixes, what they require, where they go.
    #[serde(default)]
    pub route: Vec<RouteSection>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// `"development"` or `"production"`.
    pub environment: Option<String>,
    /// Host names clients may address; `*.example.com` matches subdomains.
    pub allowed_hosts: Option<Vec<String>>,
    /// CIDR blocks whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// Largest accepted request body, e.g. `"10MiB"`.
    pub max_body_size: Option<String>,
    /// Header carrying the request id, in and out.
    pub request_id_header: Option<String>,
    /// How long in-flight requests may finish on stop, e.g. `"30s"`.
    pub shutdown_grace: Option<String>,
    /// How long to keep serving after `SIGTERM` before draining, e.g. `"5s"`.
    pub shutdown_delay: Option<String>,
    /// How long a whole request head may take to arrive, e.g. `"10s"`.
    pub header_timeout: Option<String>,
    /// How long a keep-alive connection may wait for its next request, e.g. `"60s"`.
    pub idle_timeout: Option<String>,
    /// The largest request head, e.g. `"32KiB"`.
    pub max_header_size: Option<String>,
    /// Client connections open at once in this process.
    pub max_connections: Option<usize>,
    /// Client connections open at once from one client address.
    pub max_connections_per_client: Option<usize>,
    /// Worker threads per listener group (default: the number of cores).
    pub threads: Option<usize>,
    /// Idle upstream connections kept for reuse, across all upstreams.
    pub upstream_keepalive_pool_size: Option<usize>,
    /// Failed authentications allowed per client address, e.g. `"30/minute"`, or `"off"`.
    pub auth_failure_limit: Option<String>,
    /// The Unix socket a graceful upgrade hands the listening sockets over.
    pub upgrade_socket: Option<String>,
}

/// `[[listener]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// `IP:port` to bind.
    pub address: Option<String>,
    /// Answer every request with 308 to the `https://` URL.
    pub redirect_https: Option<bool>,
    /// Accept HTTP/2 with prior knowledge (h2c) on this plain listener.
    pub h2c: Option<bool>,
    /// `[listener.tls]`: TLS termination.
    pub tls: Option<TlsSection>,
}

/// `[listener.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// `"1.2"` or `"1.3"`.
    pub min_version: Option<String>,
    /// Offer `h2` by ALPN.
    pub http2: Option<bool>,
    /// `Strict-Transport-Security` value.
    pub hsts: Option<String>,
    /// CA bundle for client certificates (mutual TLS).
    pub client_ca: Option<String>,
    /// `[[listener.tls.certificate]]`.
    #[serde(default)]
    pub certificate: Vec<CertificateSection>,
}

/// `[[listener.tls.certificate]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM certificate chain.
    pub cert: Option<String>,
    /// PEM private key (a secret: `file:` / `env:` accepted).
    pub key: Option<String>,
    /// CA bundle for client certificates (mutual TLS).
    pub client_ca: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `IP:port` of the admin listener.
    pub address: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// Access log: `"stdout"`, `"off"` or a file path.
    pub access: Option<String>,
    /// Audit log: `"stdout"`, `"off"` or a file path.
    pub audit: Option<String>,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub level: Option<String>,
}

/// `[[upstream]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Name that routes refer to.
    pub name: Option<String>,
    /// `IP:port` or `host:port` targets, or `builtin:echo`.
    pub targets: Option<Vec<String>>,
    /// `{ sni = "...", ca = "..." }`: TLS to the upstream.
    pub tls: Option<UpstreamTlsSection>,
    /// Connect timeout, e.g. `"2s"`.
    pub connect_timeout: Option<String>,
    /// Timeout between reads of the upstream response, e.g. `"30s"`.
    pub read_timeout: Option<String>,
    /// Timeout between writes of the request to the upstream.
    pub write_timeout: Option<String>,
    /// How long an idle upstream connection is kept for reuse.
    pub idle_timeout: Option<String>,
    /// `{ path = "/health", interval = "5s" }`.
    pub health_check: Option<HealthCheckSection>,
}

/// `[upstream] tls = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// Server name sent and verified.
    pub sni: Option<String>,
    /// CA bundle to verify the upstream with.
    pub ca: Option<String>,
}

/// `[upstream] health_check = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// Path probed with GET.
    pub path: Option<String>,
    /// Probe period.
    pub interval: Option<String>,
    /// Longest a probe may take.
    pub timeout: Option<String>,
    /// Consecutive passes that make a failing target healthy.
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that make a healthy target unhealthy.
    pub unhealthy_threshold: Option<u32>,
}

/// `[cors]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Origins allowed, exact or `https://*.example.com`.
    pub allowed_origins: Option<Vec<String>>,
    /// Methods a preflight may ask for.
    pub allowed_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for.
    pub allowed_headers: Option<Vec<String>>,
    /// Response headers scripts may read.
    pub expose_headers: Option<Vec<String>>,
    /// Send `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: Option<bool>,
    /// Preflight cache lifetime.
    pub max_age: Option<String>,
}

/// `[[rate_limit]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Name that routes refer to.
    pub name: Option<String>,
    /// `client`, `identity` or `header:NAME`.
    pub key: Option<String>,
    /// `N/second|minute|hour|day`.
    pub limit: Option<String>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Headers an API key may arrive in.
    pub api_key_headers: Option<Vec<String>>,
    /// Forward `Authorization` / API-key headers to the upstream.
    pub forward_credentials: Option<bool>,
    /// Verified JWTs kept (0: no cache).
    pub token_cache_size: Option<usize>,
    /// `[[auth.api_key]]`.
    #[serde(default)]
    pub api_key: Vec<ApiKeySection>,
    /// `[[auth.jwt]]`.
    #[serde(default)]
    pub jwt: Vec<JwtSection>,
}

/// `[[auth.api_key]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    /// Key id: logs, metrics, `X-Auth-Key-Id`.
    pub id: Option<String>,
    /// `sha256:<64 hex>`.
    pub hash: Option<String>,
    /// Permissions granted.
    pub permissions: Option<Vec<String>>,
    /// RFC 3339 expiry.
    pub expires: Option<String>,
    /// Subject sent upstream (default: the id).
    pub subject: Option<String>,
    /// Refuse this key without deleting it.
    pub disabled: Option<bool>,
}

/// `[[auth.jwt]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// Issuer name for logs and metrics.
    pub name: Option<String>,
    /// Expected `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values.
    pub audiences: Option<Vec<String>>,
    /// Algorithm allow-list.
    pub algorithms: Option<Vec<String>>,
    /// JWKS document URL.
    pub jwks_url: Option<String>,
    /// JWKS document file.
    pub jwks_file: Option<String>,
    /// PEM public key file.
    pub public_key_file: Option<String>,
    /// HMAC secret (HS*).
    pub secret: Option<String>,
    /// Clock skew allowed.
    pub leeway: Option<String>,
    /// Claim holding permissions.
    pub permissions_claim: Option<String>,
    /// Claim holding the subject.
    pub subject_claim: Option<String>,
    /// Claims copied to upstream headers.
    pub claims_to_headers: Option<std::collections::BTreeMap<String, String>>,
    /// Refuse tokens without `exp` (default true).
    pub require_exp: Option<bool>,
    /// How often a `jwks_url` is fetched again.
    pub jwks_refresh_interval: Option<String>,
    /// The least time between two fetches of a `jwks_url`.
    pub jwks_min_refresh_interval: Option<String>,
    /// How long a `jwks_url` fetch may take.
    pub jwks_fetch_timeout: Option<String>,
    /// The `typ` header tokens must carry (`"at+jwt"`, RFC 9068), when set.
    pub required_typ: Option<String>,
}

/// `[[route]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Name for logs and metrics.
    pub name: Option<String>,
    /// Only requests for this host (exact or `*.example.com`).
    pub host: Option<String>,
    /// Path prefix, segment-aware.
    pub path: Option<String>,
    /// Methods allowed (default: all).
    pub methods: Option<Vec<String>>,
    /// Upstream name.
    pub upstream: Option<String>,
    /// `required` (default), `optional` or `none`.
    pub auth: Option<String>,
    /// Marks an `auth = "none"` route as deliberately public (checked in production).
    pub public: Option<bool>,
    /// Permissions all needed.
    pub permissions: Option<Vec<String>>,
    /// Which kinds of caller may satisfy the route: `api_key`, `jwt`, `jwt:NAME`, `mtls`.
    pub credentials: Option<Vec<String>>,
    /// Rate-limit policy names.
    pub rate_limits: Option<Vec<String>>,
    /// `false` turns CORS off on this route.
    pub cors: Option<bool>,
}
