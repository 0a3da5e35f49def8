//! TLS termination: certificates chosen by SNI and reloaded without a restart, the Mozilla
//! "intermediate" profile as the floor, ALPN `h2`, and optional mutual TLS.
//!
//! Pingora cannot swap the certificates of a running listener (pingora issue 619), so each TLS
//! listener answers the handshake's certificate callback itself: [`ListenerTls`] holds its
//! certificates behind an `ArcSwap`, the callback picks one by SNI (exact name, then the
//! longest `*.` wildcard, then the first certificate), and [`CertificateWatcher`] loads them
//! again when their files change. A set that does not load (a missing file, a key that does not
//! match, an expired certificate) is logged and the old one stays in force; connections already
//! open keep the certificate they were made with.
//!
//! OpenSSL (Debian's libssl) is the backend: it is the one Pingora 0.9 backend with a
//! minimum-version setting, a certificate callback and client-certificate verification.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use openssl::asn1::Asn1Time;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, SslOptions, SslRef, SslVerifyMode, SslVersion};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509NameRef, X509};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// How often certificate files are checked for changes.
pub const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The lowest TLS version a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 (the default) and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Where a certificate and its key come from.
#[derive(Debug, Clone)]
pub struct CertificateSource {
    /// The PEM chain: the certificate first, then intermediates.
    pub cert: PathBuf,
    /// The PEM private key.
    pub key: KeySource,
}

/// A private key's place: a file (watched for changes) or an environment variable.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `file:PATH` or a plain path.
    File(PathBuf),
    /// `env:NAME`: the PEM text itself.
    Env(String),
}

/// A loaded certificate: its chain, its key, and the names SNI selects it by.
pub struct CertifiedKey {
    /// Lower-case DNS names and IP addresses from the certificate's SANs (`*.example.com`
    /// included as written).
    pub names: Vec<String>,
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey").field("names", &self.names).finish_non_exhaustive()
    }
}

/// Loads and checks one certificate and key: the error names the file and what is wrong.
pub fn load_certificate(source: &CertificateSource) -> Result<CertifiedKey, String> {
    let cert_path = source.cert.display();
    let pem = std::fs::read(&source.cert).map_err(|e| format!("cannot read {cert_path}: {e}"))?;
    let chain = X509::stack_from_pem(&pem).map_err(|_| format!("{cert_path} is not a PEM certificate chain"))?;
    let leaf = chain.first().ok_or_else(|| format!("{cert_path} holds no certificate"))?;
    let (key_pem, key_name) = match &source.key {
        KeySource::File(path) => (
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        KeySource::Env(name) => (
            std::env::var(name).map_err(|_| format!("the environment variable {name} is not set"))?.into_bytes(),
            format!("${name}"),
        ),
    };
    let key = PKey::private_key_from_pem(&key_pem)
        .map_err(|_| format!("{key_name} is not a PEM private key (PKCS#8, RSA or EC), or it is encrypted"))?;
    if !leaf.public_key().is_ok_and(|public| public.public_eq(&key)) {
        return Err(format!("the key in {key_name} does not belong to the certificate in {cert_path}"));
    }
    let now = Asn1Time::days_from_now(0).map_err(|_| "cannot read the clock".to_string())?;
    if leaf.not_after() < now {
        return Err(format!("the certificate in {cert_path} expired on {}", leaf.not_after()));
    }
    if leaf.not_before() > now {
        return Err(format!("the certificate in {cert_path} is not valid before {}", leaf.not_before()));
    }
    let mut names = Vec::new();
    for san in leaf.subject_alt_names().iter().flatten() {
        if let Some(dns) = san.dnsname() {
            names.push(dns.trim_end_matches('.').to_ascii_lowercase());
        } else if let Some(ip) = san.ipaddress() {
            let ip = match ip.len() {
                4 => <[u8; 4]>::try_from(ip).ok().map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(ip).ok().map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            };
            names.extend(ip);
        }
    }
    if names.is_empty() {
        return Err(format!("the certificate in {cert_path} has no DNS or IP subject alternative name"));
    }
    Ok(CertifiedKey { names, chain, key })
}

/// A listener's certificates, indexed by name.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<CertifiedKey>,
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertStore {
    /// Indexes `certs`; the first is the default. An earlier certificate keeps a name two
    /// certificates share.
    pub fn new(certs: Vec<CertifiedKey>) -> CertStore {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        CertStore { certs, exact, wildcard }
    }

    /// The certificate for a client's SNI: an exact name, then a wildcard one label up, then
    /// the default (clients without SNI, or names no certificate has).
    pub fn select(&self, sni: Option<&str>) -> Option<&CertifiedKey> {
        let index = sni.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        self.certs.get(index.unwrap_or(0))
    }
}

/// The validated `[listener.tls]` of one listener, with its live certificates.
pub struct ListenerTls {
    /// The lowest version offered.
    pub min_version: MinVersion,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
    /// `Strict-Transport-Security` for every response on this listener.
    pub hsts: Option<HeaderValue>,
    /// CAs that sign acceptable client certificates (mutual TLS).
    pub client_ca: Option<Vec<X509>>,
    sources: Vec<CertificateSource>,
    store: ArcSwap<CertStore>,
    /// The files' state when last loaded: a change reloads them.
    seen: Mutex<Vec<Option<FileStamp>>>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls").field("sources", &self.sources).finish_non_exhaustive()
    }
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: meta.modified().ok(), len: meta.len() })
}

impl ListenerTls {
    /// Loads every certificate; the first error (naming its file) refuses the listener.
    pub fn new(
        sources: Vec<CertificateSource>,
        min_version: MinVersion,
        http2: bool,
        hsts: Option<HeaderValue>,
        client_ca: Option<Vec<X509>>,
    ) -> Result<ListenerTls, String> {
        let seen = Self::stamps(&sources);
        let certs = sources.iter().map(load_certificate).collect::<Result<Vec<_>, _>>()?;
        Ok(ListenerTls {
            min_version,
            http2,
            hsts,
            client_ca,
            sources,
            store: ArcSwap::from_pointee(CertStore::new(certs)),
            seen: Mutex::new(seen),
        })
    }

    fn stamps(sources: &[CertificateSource]) -> Vec<Option<FileStamp>> {
        sources
            .iter()
            .flat_map(|s| {
                let key = match &s.key {
                    KeySource::File(path) => stamp(path),
                    KeySource::Env(_) => None,
                };
                [stamp(&s.cert), key]
            })
            .collect()
    }

    /// Loads the certificates again if their files changed: `Ok(true)` when a new set is in
    /// force, `Err` (the old set stays) when the new files do not load.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = Self::stamps(&self.sources);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return Ok(false);
        }
        // Remembered even when loading fails: the error is reported once per change, not
        // every second.
        *seen = now;
        let certs = self.sources.iter().map(load_certificate).collect::<Result<Vec<_>, _>>()?;
        self.store.store(Arc::new(CertStore::new(certs)));
        Ok(true)
    }

    /// The names of the certificates in force, for `check` and logs.
    pub fn names(&self) -> Vec<Vec<String>> {
        self.store.load().certs.iter().map(|c| c.names.clone()).collect()
    }

    /// Pingora's settings for this listener: the Mozilla intermediate profile (TLS 1.2+ with
    /// forward-secret AEAD suites), raised to TLS 1.3 on request, ALPN, mutual TLS, and the
    /// certificate callback.
    pub fn settings(self: &Arc<Self>) -> Result<TlsSettings, String> {
        let mut settings = TlsSettings::with_callbacks(Box::new(Resolver(self.clone())))
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let min = match self.min_version {
            MinVersion::Tls12 => SslVersion::TLS1_2,
            MinVersion::Tls13 => SslVersion::TLS1_3,
        };
        settings.set_min_proto_version(Some(min)).map_err(|e| format!("cannot set the TLS version: {e}"))?;
        // No renegotiation (a DoS lever), no compression (CRIME); the server's suite order.
        settings.set_options(
            SslOptions::NO_RENEGOTIATION | SslOptions::NO_COMPRESSION | SslOptions::CIPHER_SERVER_PREFERENCE,
        );
        if self.http2 {
            settings.enable_h2();
        }
        if let Some(cas) = &self.client_ca {
            let mut store = X509StoreBuilder::new().map_err(|e| format!("cannot set up mutual TLS: {e}"))?;
            let mut names = Stack::new().map_err(|e| format!("cannot set up mutual TLS: {e}"))?;
            for ca in cas {
                store.add_cert(ca.clone()).map_err(|e| format!("cannot use a client CA: {e}"))?;
                if let Ok(name) = ca.subject_name().to_owned() {
                    let _ = names.push(name);
                }
            }
            settings.set_verify_cert_store(store.build()).map_err(|e| format!("cannot set up mutual TLS: {e}"))?;
            settings.set_client_ca_list(names);
            // A certificate is asked for and, when sent, must verify; clients without one may
            // still authenticate with a token.
            settings.set_verify(SslVerifyMode::PEER);
            // Session resumption with client verification needs a context id.
            settings.set_session_id_context(b"portcullis").map_err(|e| format!("cannot set up mutual TLS: {e}"))?;
        }
        Ok(settings)
    }
}

/// A verified client certificate, attached to the connection by the handshake.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Its subject, as `X-Auth-Subject` (`CN=...,O=...`).
    pub subject: HeaderValue,
    /// Its issuer, as `X-Auth-Issuer`.
    pub issuer: HeaderValue,
}

/// The handshake callbacks of one listener.
struct Resolver(Arc<ListenerTls>);

#[async_trait]
impl TlsAccept for Resolver {
    async fn certificate_callback(&self, ssl: &mut SslRef) {
        let store = self.0.store.load();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
        let Some(cert) = store.select(sni.as_deref()) else { return };
        let mut chain = cert.chain.iter();
        let set =
            chain.next().map(|leaf| pingora::tls::ext::ssl_use_certificate(ssl, leaf)).transpose().and_then(|_| {
                pingora::tls::ext::ssl_use_private_key(ssl, &cert.key)?;
                chain.try_for_each(|c| pingora::tls::ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(error) = set {
            tracing::error!(%error, "could not use the certificate for this handshake");
        }
    }

    async fn handshake_complete_callback(&self, ssl: &SslRef) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0.client_ca.as_ref()?;
        // The handshake only completes with a certificate that verified (or none).
        let cert = ssl.peer_certificate()?;
        let subject = HeaderValue::from_str(&distinguished_name(cert.subject_name())).ok()?;
        let issuer = HeaderValue::from_str(&distinguished_name(cert.issuer_name())).ok()?;
        // Stored as an `Arc<ClientCertificate>`, so requests share it rather than copy it.
        Some(Arc::new(Arc::new(ClientCertificate { subject, issuer })))
    }
}

/// `CN=client,O=Acme`: the name's entries, most specific first, values escaped per RFC 4514.
fn distinguished_name(name: &X509NameRef) -> String {
    let mut parts: Vec<String> = Vec::new();
    for entry in name.entries() {
        let key = match entry.object().nid() {
            Nid::COMMONNAME => "CN",
            Nid::ORGANIZATIONNAME => "O",
            Nid::ORGANIZATIONALUNITNAME => "OU",
            Nid::COUNTRYNAME => "C",
            Nid::STATEORPROVINCENAME => "ST",
            Nid::LOCALITYNAME => "L",
            _ => continue,
        };
        let value = String::from_utf8_lossy(entry.data().as_slice());
        let escaped: String = value
            .chars()
            .flat_map(|c| {
                let escape = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=');
                escape.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .filter(|c| !c.is_control())
            .collect();
        parts.push(format!("{key}={escaped}"));
    }
    parts.reverse();
    parts.join(",")
}

/// Reloads the certificates of every TLS listener when their files change.
pub struct CertificateWatcher {
    listeners: Vec<Arc<ListenerTls>>,
}

impl CertificateWatcher {
    /// A watcher over these listeners.
    pub fn new(listeners: Vec<Arc<ListenerTls>>) -> Self {
        CertificateWatcher { listeners }
    }
}

#[async_trait]
impl BackgroundService for CertificateWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(CERTIFICATE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            for tls in &self.listeners {
                // File reads and parsing off the async workers.
                let tls = tls.clone();
                match tokio::task::spawn_blocking(move || tls.reload_if_changed().map(|r| (r, tls.names()))).await {
                    Ok(Ok((true, names))) => tracing::info!(?names, "certificates reloaded"),
                    Ok(Ok((false, _))) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "certificates not reloaded; the previous ones stay in force")
                    }
                    Err(error) => tracing::error!(%error, "certificate reload failed"),
                }
            }
        }
    }
}
