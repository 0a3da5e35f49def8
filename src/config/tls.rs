//! `[listener.tls]`: certificates (loaded and checked here, so `check` and start refuse a bad
//! one naming its file), the lowest version, ALPN, HSTS and mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;

use super::file::TlsSection;
use super::sources::Problems;
use crate::tls::{read_certificates, CertificateSource, KeySource, ListenerTls, MinVersion};

/// Validates one listener's `[listener.tls]`; `key` is its place, e.g. `listener[1].tls`.
pub(super) fn build_listener_tls(section: &TlsSection, key: &str, p: &mut Problems<'_>) -> Option<Arc<ListenerTls>> {
    let at = |k: &str| format!("{key}.{k}");
    let min_version = match section.min_version.as_deref() {
        None | Some("1.2") => MinVersion::Tls12,
        Some("1.3") => MinVersion::Tls13,
        Some(other) => {
            p.push(
                &at("min_version"),
                format!("\"{other}\" is not offered"),
                "use \"1.2\" (the default) or \"1.3\"; TLS 1.0 and 1.1 are never offered",
            );
            MinVersion::Tls12
        }
    };
    let hsts = section.hsts.as_deref().and_then(|value| {
        let valid = value.trim_start().starts_with("max-age=") && HeaderValue::from_str(value).is_ok();
        if !valid {
            p.push(
                &at("hsts"),
                format!("\"{value}\" is not a Strict-Transport-Security value"),
                "write e.g. \"max-age=31536000; includeSubDomains\"",
            );
        }
        HeaderValue::from_str(value).ok().filter(|_| valid)
    });
    let client_ca = section.client_ca.as_deref().and_then(|path| match read_certificates(Path::new(path)) {
        Ok(cas) => Some(cas),
        Err(e) => {
            p.push(&at("client_ca"), e, "point it at a PEM file of the CA certificates that sign client certificates");
            None
        }
    });
    if section.certificate.is_empty() {
        p.push(
            &at("certificate"),
            "no [[listener.tls.certificate]] is configured",
            "add one with cert = \"conf/tls/site.pem\" and key = \"file:conf/tls/site.key\"",
        );
        return None;
    }
    let mut sources = Vec::new();
    for (i, c) in section.certificate.iter().enumerate() {
        let at = |k: &str| format!("{key}.certificate[{i}].{k}");
        if c.client_ca.is_some() {
            p.push(&at("client_ca"), "is set per certificate", format!("set client_ca in [{key}] instead"));
        }
        let cert = match c.cert.as_deref() {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                p.push(&at("cert"), "is missing", "give the PEM certificate chain, e.g. \"conf/tls/site.pem\"");
                continue;
            }
        };
        // Always through `file:` or `env:`, like every secret: a PEM pasted inline would
        // otherwise be taken for a path and printed in the error.
        let key_source = match c.key.as_deref() {
            Some(spec) if spec.starts_with("env:") => KeySource::Env(spec["env:".len()..].to_string()),
            Some(spec) if spec.starts_with("file:") => match super::secrets::secret_path(&spec["file:".len()..]) {
                Ok(path) => KeySource::File(path),
                Err(e) => {
                    p.push(&at("key"), e, "run under systemd with LoadCredential=, or give a path");
                    continue;
                }
            },
            Some(_) => {
                p.push(
                    &at("key"),
                    "is not \"file:PATH\" or \"env:NAME\"",
                    "keep the key out of the config: key = \"file:conf/tls/site.key\" or \"env:TLS_KEY\"",
                );
                continue;
            }
            None => {
                p.push(&at("key"), "is missing", "give the PEM private key, e.g. \"file:conf/tls/site.key\"");
                continue;
            }
        };
        let source = CertificateSource { cert, key: key_source };
        // Each certificate on its own, so every bad one is reported with its key.
        match crate::tls::load_certificate(&source) {
            Ok(cert) => sources.push((source, cert)),
            Err(e) => p.push(
                &format!("{key}.certificate[{i}]"),
                e,
                "fix the file, or point cert and key at a matching, current pair",
            ),
        }
    }
    if sources.len() != section.certificate.len() {
        return None;
    }
    let tls = Arc::new(ListenerTls::new(sources, min_version, section.http2.unwrap_or(false), hsts, client_ca));
    // Built once here so that start cannot fail on what `check` passed.
    if let Err(e) = tls.settings() {
        p.push(key, e, "check the certificates and client_ca");
        return None;
    }
    Some(tls)
}
