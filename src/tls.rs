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
use openssl::pkey::{PKey, Private};
use openssl::ssl::{NameType, SslMode, SslOptions, SslRef, SslSessionCacheMode, SslVerifyMode, SslVersion};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509NameRef, X509VerifyResult, X509};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// The key-exchange groups offered, in order of preference: Mozilla's "intermediate" profile.
pub const KEY_EXCHANGE_GROUPS: &str = "X25519:prime256v1:secp384r1";

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

/// The certificates of a PEM file (a chain, or a CA bundle), at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<X509>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = X509::stack_from_pem(&pem).map_err(|_| format!("{shown} is not a PEM certificate file"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no certificate"));
    }
    Ok(certs)
}

/// Loads and checks one certificate and key: the error names the file and what is wrong.
pub fn load_certificate(source: &CertificateSource) -> Result<CertifiedKey, String> {
    let cert_path = source.cert.display();
    let chain = read_certificates(&source.cert)?;
    let leaf = &chain[0];
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
    if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(format!(
            "the key in {key_name} is encrypted; give the gateway an unencrypted key file (mode 0600)"
        ));
    }
    // A callback that offers no passphrase: OpenSSL's default would prompt on the terminal.
    let key = PKey::private_key_from_pem_callback(&key_pem, |_| Ok(0))
        .map_err(|_| format!("{key_name} is not a PEM private key (PKCS#8, RSA or EC)"))?;
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
    certs: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertStore {
    /// Indexes `certs`; the first is the default. An earlier certificate keeps a name two
    /// certificates share.
    pub fn new(certs: Vec<Arc<CertifiedKey>>) -> CertStore {
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
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
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
    store: ArcSwap<CertStore>,
    /// Where the certificates come from, and per source what was loaded and whether its new
    /// files fail. Replaced whole by a configuration reload.
    state: Mutex<Watched>,
}

/// The certificate sources of a listener and their reload state, index for index.
#[derive(Debug, Default)]
struct Watched {
    sources: Vec<CertificateSource>,
    states: Vec<SourceState>,
}

impl ListenerTls {
    /// The settings a reload cannot change, as text to compare: versions, ALPN, HSTS and
    /// client CAs (the certificates themselves it can: [`ListenerTls::adopt_certificates`]).
    pub fn settings_summary(&self) -> String {
        let client_ca = self.client_ca.as_ref().map(|cas| {
            cas.iter()
                .filter_map(|c| c.digest(openssl::hash::MessageDigest::sha256()).ok().map(|d| hex::encode(&*d)))
                .collect::<Vec<_>>()
        });
        format!("{:?} h2={} hsts={:?} client_ca={client_ca:?}", self.min_version, self.http2, self.hsts)
    }

    /// A configuration reload: takes the certificates `reloaded` (the same listener in the new
    /// configuration, whose certificates validation has just loaded) and watches its files from
    /// now on. Handshakes already under way keep the certificate they chose.
    pub fn adopt_certificates(&self, reloaded: &ListenerTls) {
        let mut watched = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let theirs = reloaded.state.lock().unwrap_or_else(|e| e.into_inner());
        let states = theirs.states.iter().map(|s| SourceState { loaded: s.loaded.clone(), failing: None }).collect();
        *watched = Watched { sources: theirs.sources.clone(), states };
        self.store.store(reloaded.store.load_full());
    }
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watched = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ListenerTls").field("sources", &watched.sources).finish_non_exhaustive()
    }
}

/// What identifies a file's version without reading it: a rename-into-place changes the inode,
/// a rewrite the modification time, a `chmod` the change time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    changed: i64,
    inode: u64,
    device: u64,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        changed: meta.ctime(),
        inode: meta.ino(),
        device: meta.dev(),
        len: meta.len(),
    })
}

/// One certificate's reload state.
#[derive(Debug, Default)]
struct SourceState {
    /// The files' stamps when last loaded successfully.
    loaded: Vec<Option<FileStamp>>,
    /// The last error, while the files do not load: retried every check, reported once.
    failing: Option<String>,
}

impl ListenerTls {
    /// A listener serving `certs`, each loaded (by [`load_certificate`]) from the source at
    /// the same index, which later reloads read again.
    pub fn new(
        sources: Vec<(CertificateSource, CertifiedKey)>,
        min_version: MinVersion,
        http2: bool,
        hsts: Option<HeaderValue>,
        client_ca: Option<Vec<X509>>,
    ) -> ListenerTls {
        let states = sources.iter().map(|(s, _)| SourceState { loaded: Self::stamps(s), failing: None }).collect();
        let (sources, certs): (Vec<_>, Vec<_>) = sources.into_iter().map(|(s, c)| (s, Arc::new(c))).unzip();
        ListenerTls {
            min_version,
            http2,
            hsts,
            client_ca,
            store: ArcSwap::from_pointee(CertStore::new(certs)),
            state: Mutex::new(Watched { sources, states }),
        }
    }

    fn stamps(source: &CertificateSource) -> Vec<Option<FileStamp>> {
        let key = match &source.key {
            KeySource::File(path) => stamp(path),
            KeySource::Env(_) => None,
        };
        vec![stamp(&source.cert), key]
    }

    /// Loads again each certificate whose files changed since it was loaded, or that failed
    /// last time (a key written after its certificate, a `chmod` that came later). A
    /// certificate that does not load keeps its previous version; the others are renewed
    /// anyway. Returns what changed and the errors first seen now (each reported once).
    pub fn reload_if_changed(&self) -> (bool, Vec<String>) {
        let mut watched = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Watched { sources, states: state } = &mut *watched;
        let current = self.store.load_full();
        let mut certs: Vec<Arc<CertifiedKey>> = current.certs.clone();
        let (mut changed, mut errors) = (false, Vec::new());
        for (i, source) in sources.iter().enumerate() {
            let now = Self::stamps(source);
            if state[i].loaded == now && state[i].failing.is_none() {
                continue;
            }
            match load_certificate(source) {
                Ok(cert) => {
                    certs[i] = Arc::new(cert);
                    state[i] = SourceState { loaded: now, failing: None };
                    changed = true;
                }
                Err(error) => {
                    if state[i].failing.as_ref() != Some(&error) {
                        errors.push(error.clone());
                    }
                    state[i].failing = Some(error);
                }
            }
        }
        if changed {
            self.store.store(Arc::new(CertStore::new(certs)));
        }
        (changed, errors)
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
        // Mozilla intermediate's key-exchange groups, exactly: OpenSSL's default list also
        // offers X448 and secp521r1, which the profile leaves out.
        settings.set_groups_list(KEY_EXCHANGE_GROUPS).map_err(|e| format!("cannot set the TLS groups: {e}"))?;
        // Idle connections give their read and write buffers (about 34 KiB) back to the
        // allocator until they are needed again, as nginx does.
        settings.set_mode(SslMode::RELEASE_BUFFERS);
        // The socket has no read buffer of its own (see `L4_READ_BUFFER`): OpenSSL reads as
        // much as is there in one call, rather than a record header and then its body.
        settings.set_read_ahead(true);
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
            // No session resumption: every connection shows a certificate that is verified now
            // (a resumed session would carry an identity checked hours ago), and against the
            // CAs in force. The id context is still needed for verification.
            settings.set_session_id_context(b"portcullis").map_err(|e| format!("cannot set up mutual TLS: {e}"))?;
            settings.set_session_cache_mode(SslSessionCacheMode::OFF);
            settings.set_options(SslOptions::NO_TICKET);
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
        // The handshake only completes with a certificate that verified (or none); checked
        // again, since an identity rests on it.
        let cert = ssl.peer_certificate()?;
        if ssl.verify_result() != X509VerifyResult::OK {
            return None;
        }
        match (distinguished_name(cert.subject_name()), distinguished_name(cert.issuer_name())) {
            (Some(subject), Some(issuer)) => {
                let subject = HeaderValue::from_str(&subject).ok()?;
                let issuer = HeaderValue::from_str(&issuer).ok()?;
                // Stored as an `Arc<ClientCertificate>`, so requests share it, not copy it.
                Some(Arc::new(Arc::new(ClientCertificate { subject, issuer })))
            }
            _ => {
                tracing::warn!("a client certificate with an empty subject names nobody; the connection is anonymous");
                None
            }
        }
    }
}

/// The name as an RFC 4514 string, most specific attribute first: every attribute (by its
/// short name, or its dotted OID), values escaped so that no two names print the same (`,+"\<>;=`
/// by a backslash, a leading `#` or space and a trailing space too, and every byte outside
/// printable ASCII as `\XX`). `None` for an empty name.
fn distinguished_name(name: &X509NameRef) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for entry in name.entries() {
        let object = entry.object();
        let key = object.nid().short_name().map_or_else(|_| object.to_string(), str::to_string);
        let value = match entry.data().to_string() {
            Ok(text) => escape_dn_value(&text),
            // Not decodable as text: the raw bytes, as RFC 4514's `#hex` form.
            Err(_) => format!("#{}", hex::encode(entry.data().as_slice())),
        };
        parts.push(format!("{key}={value}"));
    }
    parts.reverse();
    (!parts.is_empty()).then(|| parts.join(","))
}

fn escape_dn_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        }
    }
    out
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
                match tokio::task::spawn_blocking(move || {
                    let (changed, errors) = tls.reload_if_changed();
                    (changed, errors, tls.names())
                })
                .await
                {
                    Ok((changed, errors, names)) => {
                        for error in errors {
                            tracing::error!(%error, "certificate not reloaded; its previous version stays in force (retried every second)");
                        }
                        if changed {
                            tracing::info!(?names, "certificates reloaded");
                        }
                    }
                    Err(error) => tracing::error!(%error, "certificate reload failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509Name;

    fn name(entries: &[(&str, &str)]) -> X509Name {
        let mut b = X509Name::builder().unwrap();
        for (k, v) in entries {
            b.append_entry_by_text(k, v).unwrap();
        }
        b.build()
    }

    #[test]
    fn distinguished_names_keep_every_attribute_and_escape_values() {
        let n = name(&[("DC", "com"), ("DC", "example"), ("OU", "people"), ("UID", "alice")]);
        assert_eq!(distinguished_name(&n).unwrap(), "UID=alice,OU=people,DC=example,DC=com");
        let other = name(&[("DC", "com"), ("DC", "example"), ("OU", "people"), ("UID", "bob")]);
        assert_ne!(distinguished_name(&n), distinguished_name(&other));
        let tricky = name(&[("O", "Acme, Inc"), ("CN", "#admin "), ("L", "Zürich")]);
        assert_eq!(distinguished_name(&tricky).unwrap(), "L=Z\\C3\\BCrich,CN=\\#admin\\ ,O=Acme\\, Inc");
        assert_eq!(distinguished_name(&name(&[])), None);
    }
}
