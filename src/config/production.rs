//! `environment = "production"`: settings that are fine on a laptop and dangerous in front of
//! real traffic are refused, each with its own error naming the key and the fix.
//!
//! | refused in production | key |
//! |---|---|
//! | a plain listener off loopback without `redirect_https` | `listener[i].address` |
//! | CORS allowing any origin (`"*"`), or `"null"` | `cors.allowed_origins` |
//! | `auth = "none"` on a route not marked `public = true` | `route[i].public` |
//! | an HS* secret that is a well-known example value or a placeholder (shorter than 32 bytes is refused everywhere) | `auth.jwt[i].secret` |
//! | an API key without `expires` | `auth.api_key[i].expires` |
//! | the admin listener on an address that is neither loopback nor private | `admin.address` |
//! | a secret file (TLS key, HS* secret) readable by other users | the key naming it |
//! | a configuration file, or its directory, writable by other users | the file |
//! | `trusted_proxies` wider than a /8, or public IPv6 wider than a /24 (unique local `fc00::/7` is private; IPv4-mapped and NAT64 ranges by the IPv4 rule), such as `0.0.0.0/0`, `::/0`, `2000::/3`, `64:ff9b::/96` or two /1 halves (every client would choose its own address) | `server.trusted_proxies[i]` |
//! | a `builtin:echo` upstream (it reflects the request, cookies and credentials included) | `upstream[i].targets` |
//!
//! Inline secrets are refused in every environment (keys and secrets come only through `env:`
//! or `file:`), so a configuration file readable by others holds none; the files the secrets
//! live in are checked instead.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::file::FileConfig;
use super::listeners::Listener;
use super::sources::Problems;

/// Values seen in tutorials, READMEs and generated examples: a secret equal to one of these (in
/// any case) is a placeholder someone forgot to replace.
const EXAMPLE_SECRETS: [&str; 12] = [
    "secret",
    "changeme",
    "change-me",
    "your-256-bit-secret",
    "your-secret-key",
    "your_secret_key",
    "supersecret",
    "super-secret-key",
    "mysecret",
    "password",
    "jwt-secret",
    "an-hmac-secret-that-is-long-enough-0123456789",
];

/// Words that mark a secret as a placeholder wherever they appear in it.
const PLACEHOLDER_WORDS: [&str; 5] = ["changeme", "change-me", "change_me", "example", "placeholder"];

/// Records every production refusal of this configuration.
pub(super) fn check(
    file: &FileConfig,
    files: &[PathBuf],
    listeners: &[Listener],
    admin: Option<SocketAddr>,
    p: &mut Problems<'_>,
) {
    for (i, l) in listeners.iter().enumerate() {
        if l.tls.is_none() && l.redirect_to.is_none() && !is_loopback(l.address.ip()) {
            p.push(
                &format!("listener[{i}].address"),
                format!("{} serves plain HTTP off loopback in production", l.address),
                "terminate TLS on it ([listener.tls]), set redirect_https = true, or bind it to 127.0.0.1",
            );
        }
    }
    if let Some(cors) = &file.cors {
        let origins = cors.allowed_origins.as_deref().unwrap_or(&[]);
        if origins.iter().any(|o| o == "*") {
            p.push(
                "cors.allowed_origins",
                "allows every origin (\"*\") in production",
                "list the origins of your web apps, e.g. [\"https://app.example.com\"]",
            );
        }
        // Sandboxed iframes, data: URLs and file: pages all send `Origin: null`: as open as "*".
        if origins.iter().any(|o| o == "null") {
            p.push(
                "cors.allowed_origins",
                "allows the \"null\" origin in production, which any sandboxed page can send",
                "list the origins of your web apps instead",
            );
        }
    }
    for (i, entry) in file.server.trusted_proxies.iter().flatten().enumerate() {
        let too_wide = entry.parse::<ipnet::IpNet>().is_ok_and(|net| trusts_clients(&net));
        if too_wide {
            p.push(
                &format!("server.trusted_proxies[{i}]"),
                format!("\"{entry}\" trusts every address or nearly: each client could choose its own address for every limit and log"),
                "list only your load balancers' addresses or networks (at most a /8; for public IPv6 a /24), e.g. \"10.0.0.0/8\"",
            );
        }
    }
    for (i, u) in file.upstream.iter().enumerate() {
        if u.targets.iter().flatten().any(|t| t == super::upstreams::ECHO_TARGET) {
            p.push(
                &format!("upstream[{i}].targets"),
                "is builtin:echo in production: it reflects every request, cookies and credentials included, back to its sender",
                "point the upstream at your API's addresses",
            );
        }
    }
    for (i, r) in file.route.iter().enumerate() {
        if r.auth.as_deref() == Some("none") && r.public != Some(true) {
            p.push(
                &format!("route[{i}].public"),
                "is not set on a route with auth = \"none\": in production an open route must be declared",
                "add public = true if anyone may call it, or require credentials",
            );
        }
    }
    if let Some(auth) = &file.auth {
        for (i, k) in auth.api_key.iter().enumerate() {
            if k.expires.is_none() {
                p.push(
                    &format!("auth.api_key[{i}].expires"),
                    "is missing: keys that never expire are refused in production",
                    "give an RFC 3339 time, e.g. expires = \"2027-06-30T00:00:00Z\" (keys generate --expires-in 90d)",
                );
            }
        }
        for (i, jwt) in auth.jwt.iter().enumerate() {
            let Some(spec) = jwt.secret.as_deref() else { continue };
            let key = format!("auth.jwt[{i}].secret");
            if let Ok(secret) = super::secrets::read_secret(spec) {
                check_hmac_secret(&secret, &key, p);
            }
            check_secret_file(spec, &key, p);
        }
    }
    for (i, l) in file.listener.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        for (j, c) in tls.certificate.iter().enumerate() {
            if let Some(spec) = c.key.as_deref() {
                check_secret_file(spec, &format!("listener[{i}].tls.certificate[{j}].key"), p);
            }
        }
    }
    if let Some(addr) = admin {
        if !is_loopback_or_private(addr.ip()) {
            p.push(
                "admin.address",
                format!("{addr} is neither loopback nor a private address: metrics would be public"),
                "bind it to 127.0.0.1 or an address on your private network",
            );
        }
    }
    let mut directories: Vec<PathBuf> = Vec::new();
    for f in files {
        if mode(f).is_some_and(|m| m & 0o002 != 0) {
            p.push(
                "",
                format!("{} is writable by every user, who could rewrite the gateway's rules", f.display()),
                format!("chmod o-w {}", f.display()),
            );
        }
        let dir = f.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        if !directories.contains(&dir) {
            // Anyone who can write the directory can add a *.toml to it (or replace a file).
            if mode(&dir).is_some_and(|m| m & 0o002 != 0 && m & 0o1000 == 0) {
                p.push(
                    "",
                    format!("the directory {} is writable by every user", dir.display()),
                    format!("chmod o-w {}", dir.display()),
                );
            }
            directories.push(dir);
        }
    }
}

/// Whether trusting `net` as proxies would trust clients: it is wider than the widest private
/// range of its family (10.0.0.0/8; IPv6 unique local fc00::/7), or, public IPv6, wider than a
/// /24 (load balancers' ranges are /28 and narrower: CloudFront's widest is a /28, Cloudflare's
/// a /29). IPv4 written as IPv6 (`::ffff:0:0/96`, NAT64's `64:ff9b::/96`) is held to the IPv4
/// rule. Two halves of everything are each too wide.
fn trusts_clients(net: &ipnet::IpNet) -> bool {
    const UNIQUE_LOCAL: ipnet::Ipv6Net =
        ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7);
    const LINK_LOCAL: ipnet::Ipv6Net =
        ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10);
    const V4_MAPPED: ipnet::Ipv6Net =
        ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);
    // NAT64 (RFC 6052, RFC 8215): every IPv4 address behind a /96 (the well-known prefix) or a
    // local-use /48.
    const NAT64: ipnet::Ipv6Net =
        ipnet::Ipv6Net::new_assert(std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 32);
    match net {
        ipnet::IpNet::V4(v4) => v4.prefix_len() < 8,
        ipnet::IpNet::V6(v6) if V4_MAPPED.contains(v6) || NAT64.contains(v6) => v6.prefix_len() < 96 + 8,
        ipnet::IpNet::V6(v6) if UNIQUE_LOCAL.contains(v6) || LINK_LOCAL.contains(v6) => false,
        ipnet::IpNet::V6(v6) => v6.prefix_len() < 24,
    }
}

fn check_hmac_secret(secret: &[u8], key: &str, p: &mut Problems<'_>) {
    let text = String::from_utf8_lossy(secret).to_ascii_lowercase();
    let example = EXAMPLE_SECRETS.contains(&text.as_str()) || PLACEHOLDER_WORDS.iter().any(|w| text.contains(w));
    let one_byte = secret.windows(2).all(|w| w[0] == w[1]);
    // (Shorter than 32 bytes is refused in every environment, by `auth`.)
    if example || one_byte {
        p.push(key, "is a well-known example value or a placeholder", "generate one: openssl rand -base64 48");
    }
}

/// A `file:` secret must not be readable by other users.
fn check_secret_file(spec: &str, key: &str, p: &mut Problems<'_>) {
    let Some(path) = spec.strip_prefix("file:") else { return };
    let Ok(path) = super::secrets::secret_path(path) else { return };
    if mode(&path).is_some_and(|m| m & 0o004 != 0) {
        p.push(
            key,
            format!("{} is readable by every user", path.display()),
            format!("chmod o-r {} (a Kubernetes secret: defaultMode 0440; Docker: secrets mode 0400)", path.display()),
        );
    }
}

fn mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Loopback, RFC 1918, link-local, the shared address space of RFC 6598 (100.64.0.0/10, used
/// by carrier-grade NAT and overlay networks), and IPv6 unique-local and link-local.
fn is_loopback_or_private(ip: IpAddr) -> bool {
    let shared = |v4: std::net::Ipv4Addr| v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || shared(v4),
        // fc00::/7 (unique local) and fe80::/10 (link local).
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_private() || shared(v4))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ok in
            ["127.0.0.1", "10.1.2.3", "192.168.0.9", "172.16.5.5", "100.64.1.1", "::1", "fd00::1", "::ffff:10.0.0.1"]
        {
            assert!(is_loopback_or_private(ok.parse().unwrap()), "{ok}");
        }
        for public in ["0.0.0.0", "8.8.8.8", "172.32.0.1", "100.128.0.1", "::", "2001:db8::1"] {
            assert!(!is_loopback_or_private(public.parse().unwrap()), "{public}");
        }
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::".parse().unwrap()));
    }
}
