//! TLS termination with certificates made at run time: TLS 1.2 and 1.3 accepted, 1.1 refused,
//! SNI choosing the certificate, HTTP/2 by ALPN, HSTS, the https redirect, mutual TLS, and
//! certificates reloaded while an old connection keeps working; bad certificates refused by
//! `check` naming the file.
#![allow(clippy::unwrap_used)]

#[path = "common/certs.rs"]
mod certs;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use certs::{Ca, Pair};
use common::{run_cli, Gateway, Upstream};
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVersion};
use openssl::x509::X509;

/// A TLS gateway in front of `upstream`: certificates written to a temp dir, `tls_keys`
/// appended to `[listener.tls]`, and `extra` (routes, auth, more listeners) after it.
struct TlsSetup {
    gw: Gateway,
    dir: tempfile::TempDir,
    ca: Ca,
}

async fn start(upstream: &Upstream, certificates: &[(&str, &[&str])], tls_keys: &str, extra: &str) -> TlsSetup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Portcullis Test CA");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let mut blocks = String::new();
    for (name, names) in certificates {
        let (cert, key) = ca.server(names).write(dir.path(), name);
        blocks.push_str(&format!(
            "[[listener.tls.certificate]]\ncert = \"{}\"\nkey = \"file:{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    let addr = upstream.addr;
    let gw = Gateway::start_from(|listen| {
        format!(
            r#"
[server]
allowed_hosts = ["localhost", "127.0.0.1", "a.test", "*.b.test"]

[[upstream]]
name = "api"
targets = ["{addr}"]

[[route]]
path = "/"
upstream = "api"
auth = "none"

[[route]]
path = "/private"
upstream = "api"

{extra}

[[listener]]
address = "{listen}"
[listener.tls]
{tls_keys}
{blocks}
"#
        )
    })
    .await;
    TlsSetup { gw, dir, ca }
}

/// A client connector trusting `ca_pem`, with `configure` for versions, ALPN, certificates.
fn connector(ca_pem: &Path, configure: impl FnOnce(&mut openssl::ssl::SslConnectorBuilder)) -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(ca_pem).unwrap();
    configure(&mut builder);
    builder.build()
}

/// Handshakes with `addr` as `sni` (hostname checks are the client's; off here, the names
/// are what the tests look at). `Err` is the handshake error text.
fn handshake(connector: &SslConnector, addr: SocketAddr, sni: Option<&str>) -> Result<SslStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut config = connector.configure().unwrap().verify_hostname(false);
    if sni.is_none() {
        config = config.use_server_name_indication(false);
    }
    config.connect(sni.unwrap_or("localhost"), tcp).map_err(|e| e.to_string())
}

/// One HTTP/1.1 request on an open TLS stream (kept alive): status, headers, body.
fn request(stream: &mut SslStream<TcpStream>, target: &str, host: &str) -> (u16, Vec<(String, String)>, String) {
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let parsed = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => Some((
                head,
                resp.code.unwrap(),
                resp.headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<(String, String)>>(),
            )),
            _ => None,
        };
        if let Some((head, code, headers)) = parsed {
            let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            while buf.len() < head + len {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "closed inside the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[head..head + len]).into_owned();
            return (code, headers, body);
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The DNS names of the certificate the server presented.
fn presented_names(stream: &SslStream<TcpStream>) -> Vec<String> {
    let cert: X509 = stream.ssl().peer_certificate().unwrap();
    cert.subject_alt_names()
        .map(|names| names.iter().filter_map(|n| n.dnsname().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn ca_file(setup: &TlsSetup) -> PathBuf {
    setup.dir.path().join("ca.pem")
}

/// Runs blocking TLS client code off the test's async runtime (the upstream lives there).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn tls_1_2_and_1_3_connect_and_1_1_is_refused() {
    let upstream = Upstream::start("api").await;
    let s = start(&upstream, &[("site", &["localhost"])], "", "").await;
    let (addr, ca) = (s.gw.addr, ca_file(&s));
    let versions = blocking(move || {
        let mut seen = Vec::new();
        for version in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
            let c = connector(&ca, |b| {
                b.set_min_proto_version(Some(version)).unwrap();
                b.set_max_proto_version(Some(version)).unwrap();
            });
            let mut stream = handshake(&c, addr, Some("localhost")).unwrap();
            seen.push(stream.ssl().version_str().to_string());
            assert_eq!(request(&mut stream, "/x", "localhost").0, 200);
        }
        // A TLS 1.1 client (its library allowed to offer it) finds no common version.
        let old = connector(&ca, |b| {
            b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
            b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
            b.set_max_proto_version(Some(SslVersion::TLS1_1)).unwrap();
        });
        let refused = handshake(&old, addr, Some("localhost"));
        (seen, refused.err())
    })
    .await;
    assert_eq!(versions.0, ["TLSv1.2", "TLSv1.3"]);
    let error = versions.1.expect("a TLS 1.1 handshake must fail");
    // The server's refusal, not the client's: a protocol_version alert.
    assert!(error.contains("protocol version"), "{error}");
    assert_eq!(upstream.hits(), 2);
}

/// Mozilla's intermediate profile allows X25519, P-256 and P-384 for key exchange and nothing
/// else: a client offering only X448 or P-521 finds no common group.
#[tokio::test]
async fn only_the_mozilla_intermediate_groups_are_offered() {
    use openssl::nid::Nid;
    let upstream = Upstream::start("api").await;
    let s = start(&upstream, &[("site", &["localhost"])], "", "").await;
    let (addr, ca) = (s.gw.addr, ca_file(&s));
    let client = move |version: SslVersion, groups: &str| {
        let c = connector(&ca, |b| {
            b.set_min_proto_version(Some(version)).unwrap();
            b.set_max_proto_version(Some(version)).unwrap();
            b.set_groups_list(groups).unwrap();
        });
        handshake(&c, addr, Some("localhost"))
    };
    let (tls13, tls12) = blocking(move || {
        let tls13: Vec<(&str, bool)> = ["X25519", "P-256", "P-384", "X448", "P-521"]
            .into_iter()
            .map(|group| (group, client(SslVersion::TLS1_3, group).is_ok()))
            .collect();
        // TLS 1.2 also reads the client's groups as the curves its ECDSA certificate may be on
        // (P-256 here): a client preferring X448 and P-521 gets P-256 for the key exchange.
        let only_excluded = client(SslVersion::TLS1_2, "X448:P-521").is_ok();
        let preferring_excluded = client(SslVersion::TLS1_2, "X448:P-521:P-256").unwrap();
        let key = preferring_excluded.ssl().peer_tmp_key().unwrap();
        let curve = key.ec_key().ok().and_then(|k| k.group().curve_name());
        (tls13, (only_excluded, curve))
    })
    .await;
    assert_eq!(tls13, [("X25519", true), ("P-256", true), ("P-384", true), ("X448", false), ("P-521", false)]);
    assert_eq!(tls12, (false, Some(Nid::X9_62_PRIME256V1)));
}

#[tokio::test]
async fn min_version_1_3_refuses_tls_1_2() {
    let upstream = Upstream::start("api").await;
    let s = start(&upstream, &[("site", &["localhost"])], "min_version = \"1.3\"", "").await;
    let (addr, ca) = (s.gw.addr, ca_file(&s));
    let result = blocking(move || {
        let tls12 = connector(&ca, |b| b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap());
        // The server's refusal, not any failure: a protocol_version alert.
        let refused = handshake(&tls12, addr, Some("localhost")).err().is_some_and(|e| e.contains("protocol version"));
        let tls13 = connector(&ca, |_| {});
        let version = handshake(&tls13, addr, Some("localhost")).unwrap().ssl().version_str().to_string();
        (refused, version)
    })
    .await;
    assert_eq!(result, (true, "TLSv1.3".to_string()));
}

#[tokio::test]
async fn sni_picks_the_certificate() {
    let upstream = Upstream::start("api").await;
    let certificates: &[(&str, &[&str])] =
        &[("default", &["localhost", "127.0.0.1"]), ("a", &["a.test"]), ("b", &["*.b.test"])];
    let s = start(&upstream, certificates, "", "").await;
    let (addr, ca) = (s.gw.addr, ca_file(&s));
    let seen = blocking(move || {
        let c = connector(&ca, |_| {});
        let mut seen = Vec::new();
        for sni in [Some("a.test"), Some("x.b.test"), Some("A.TEST"), Some("unknown.test"), None] {
            let stream = handshake(&c, addr, sni).unwrap();
            seen.push(presented_names(&stream));
        }
        // And the chain verifies against the CA for the name asked.
        let mut strict = connector(&ca, |_| {}).configure().unwrap();
        strict.set_verify_hostname(true);
        let ok = strict.connect("x.b.test", TcpStream::connect(addr).unwrap()).is_ok();
        (seen, ok)
    })
    .await;
    assert_eq!(seen.0[0], ["a.test"]);
    assert_eq!(seen.0[1], ["*.b.test"]);
    assert_eq!(seen.0[2], ["a.test"], "SNI is case-insensitive");
    assert_eq!(seen.0[3], ["localhost"], "unknown names get the default certificate");
    assert_eq!(seen.0[4], ["localhost"], "clients without SNI get the default certificate");
    assert!(seen.1, "the chain verifies with hostname checks on");
}

#[tokio::test]
async fn a_reload_adds_a_certificate_to_the_running_listener() {
    let upstream = Upstream::start("api").await;
    let s = start(&upstream, &[("default", &["localhost"])], "", "").await;
    let (addr, ca) = (s.gw.addr, ca_file(&s));
    let names_for = |sni: &'static str| {
        let ca = ca.clone();
        blocking(move || presented_names(&handshake(&connector(&ca, |_| {}), addr, Some(sni)).unwrap()))
    };
    assert_eq!(names_for("x.b.test").await, ["localhost"]);
    // A second certificate appended to the listener's list, then SIGHUP.
    let (cert, key) = s.ca.server(&["*.b.test"]).write(s.dir.path(), "b");
    let mut text = std::fs::read_to_string(s.gw.config_path()).unwrap();
    text.push_str(&format!(
        "\n[[listener.tls.certificate]]\ncert = \"{}\"\nkey = \"file:{}\"\n",
        cert.display(),
        key.display()
    ));
    std::fs::write(s.gw.config_path(), text).unwrap();
    s.gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while names_for("x.b.test").await != ["*.b.test"] {
        assert!(Instant::now() < deadline, "the new certificate was never served: {}", s.gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(names_for("localhost").await, ["localhost"], "the first certificate stays");
}

#[tokio::test]
async fn http2_is_negotiated_and_serves() {
    let upstream = Upstream::start("api").await;
    let s = start(&upstream, &[("site", &["localhost"])], "http2 = true\nhsts = \"max-age=31536000\"", "").await;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(ca_file(&s)).unwrap();
    builder.set_alpn_protos(b"\x02h2\x08http/1.1").unwrap();
    let ssl = builder.build().configure().unwrap().into_ssl("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut stream).connect().await.unwrap();
    assert_eq!(stream.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    for path in ["/one", "/two"] {
        let request = http::Request::get(format!("https://localhost{path}")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["strict-transport-security"], "max-age=31536000");
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        let seen: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(seen["target"], path);
        assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
    }
    // HEAD over h2: the gateway's own answers end with their headers (DATA frames after a HEAD
    // are a protocol error in HTTP/2), and the connection stays usable.
    for path in ["/private", "/three"] {
        let request = http::Request::head(format!("https://localhost{path}")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), if path == "/private" { 401 } else { 200 });
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            assert!(chunk.unwrap().is_empty(), "no body after a HEAD on {path}");
        }
    }
    assert_eq!(upstream.hits(), 3);
}

#[tokio::test]
async fn hsts_on_every_tls_response_and_the_redirect_from_plain_http() {
    let upstream = Upstream::start("api").await;
    let plain = common::reserve_addr();
    let extra = format!("[[listener]]\naddress = \"{plain}\"\nredirect_https = true\n");
    let s =
        start(&upstream, &[("site", &["localhost"])], "hsts = \"max-age=63072000; includeSubDomains\"", &extra).await;
    let (addr, ca) = (s.gw.addr, ca_file(&s));
    let responses = blocking(move || {
        let c = connector(&ca, |_| {});
        let mut stream = handshake(&c, addr, Some("localhost")).unwrap();
        [request(&mut stream, "/x", "localhost"), request(&mut stream, "/private", "localhost")]
    })
    .await;
    for (status, headers, _) in &responses {
        assert_eq!(
            header(headers, "strict-transport-security"),
            Some("max-age=63072000; includeSubDomains"),
            "{status}"
        );
    }
    assert_eq!(responses[1].0, 401, "errors carry HSTS too");
    let (addr2, ca2) = (addr, ca_file(&s));
    let refused_host = blocking(move || {
        let mut stream = handshake(&connector(&ca2, |_| {}), addr2, Some("localhost")).unwrap();
        request(&mut stream, "/", "evil.test")
    })
    .await;
    assert_eq!(refused_host.0, 421);
    assert_eq!(header(&refused_host.1, "strict-transport-security"), Some("max-age=63072000; includeSubDomains"));

    let redirect = common::get_with_host(plain, "/api/v1/models?limit=5", "localhost").await;
    assert_eq!(redirect.status, 308);
    assert_eq!(
        redirect.header("location").unwrap(),
        format!("https://localhost:{}/api/v1/models?limit=5", addr.port())
    );
    assert!(redirect.header("strict-transport-security").is_none(), "HSTS is only sent over TLS");
    // Only allowed hosts are redirected: no open redirect.
    let refused = common::get_with_host(plain, "/", "evil.test").await;
    common::assert_error(&refused, 421, "HOST_NOT_ALLOWED");
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn mutual_tls_accepts_the_ca_s_clients_and_refuses_others() {
    let upstream = Upstream::start("api").await;
    let clients = Ca::new("Client CA");
    let dir = tempfile::tempdir().unwrap();
    let client_ca = dir.path().join("clients.pem");
    std::fs::write(&client_ca, clients.pem()).unwrap();
    let (access_log, audit_log) = (dir.path().join("access.jsonl"), dir.path().join("audit.jsonl"));
    let logs = format!("[log]\naccess = \"{}\"\naudit = \"{}\"\n", access_log.display(), audit_log.display());
    let s =
        start(&upstream, &[("site", &["localhost"])], &format!("client_ca = \"{}\"", client_ca.display()), &logs).await;
    let (good_cert, good_key) = clients.client("billing-service").write(dir.path(), "good");
    let (bad_cert, bad_key) = Ca::new("Another CA").client("intruder").write(dir.path(), "bad");
    let (addr, ca) = (s.gw.addr, ca_file(&s));
    let (accepted, refused, anonymous) = blocking(move || {
        let with = |cert: &Path, key: &Path| {
            let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
            connector(&ca, move |b| {
                b.set_certificate_file(&cert, SslFiletype::PEM).unwrap();
                b.set_private_key_file(&key, SslFiletype::PEM).unwrap();
            })
        };
        let mut good = handshake(&with(&good_cert, &good_key), addr, Some("localhost")).unwrap();
        let accepted = request(&mut good, "/private/x", "localhost");
        // TLS 1.3 reports a refused client certificate after the handshake: on first read.
        let refused = match handshake(&with(&bad_cert, &bad_key), addr, Some("localhost")) {
            Err(e) => Some(e),
            Ok(mut stream) => {
                let _ = write!(stream, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
                let mut buf = [0u8; 64];
                match stream.ssl_read(&mut buf) {
                    Ok(n) if n > 0 => None,
                    Ok(_) => Some("closed".to_string()),
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        let mut none = handshake(&connector(&ca, |_| {}), addr, Some("localhost")).unwrap();
        let anonymous = request(&mut none, "/private/x", "localhost");
        (accepted, refused, anonymous)
    })
    .await;
    assert_eq!(accepted.0, 200, "{}", accepted.2);
    let seen: serde_json::Value = serde_json::from_str(&accepted.2).unwrap();
    assert_eq!(seen["headers"]["x-auth-method"][0], "mtls");
    assert_eq!(seen["headers"]["x-auth-subject"][0], "CN=billing-service,O=Portcullis Tests");
    assert_eq!(seen["headers"]["x-auth-issuer"][0], "CN=Client CA");
    // Refused by the server's certificate check (an alert), not lost some other way.
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("alert")),
        "a certificate from another CA is refused: {refused:?}"
    );
    assert_eq!(anonymous.0, 401, "no certificate and no token: the route requires a caller");
    assert_eq!(upstream.hits(), 1);

    // The logs say who came over TLS with which certificate.
    let access = common::wait_json_lines(&access_log, 2);
    let served = access.iter().find(|l| l["status"] == 200).unwrap();
    assert_eq!(served["tls"], true);
    assert_eq!(served["auth_method"], "mtls");
    assert_eq!(served["subject"], "CN=billing-service,O=Portcullis Tests");
    let refused = access.iter().find(|l| l["status"] == 401).unwrap();
    assert_eq!(
        (refused["tls"].clone(), refused["reason"].clone()),
        (serde_json::json!(true), serde_json::json!("missing"))
    );
    let audit = common::wait_json_lines(&audit_log, 3);
    let success = audit.iter().find(|l| l["event"] == "auth_success").unwrap();
    assert_eq!(success["method"], "mtls");
    assert_eq!(success["subject"], "CN=billing-service,O=Portcullis Tests");
}

#[tokio::test]
async fn a_new_certificate_is_picked_up_while_an_old_connection_keeps_working() {
    let upstream = Upstream::start("api").await;
    let s = start(&upstream, &[("site", &["localhost", "old.test"])], "", "").await;
    let (addr, ca, dir) = (s.gw.addr, ca_file(&s), s.dir.path().to_path_buf());
    let renewed = s.ca.server(&["localhost", "new.test"]);
    let broken = Pair { cert: "not a certificate".into(), key: renewed.key.clone() };
    let stderr_path = s.gw.dir_path();
    let outcome = blocking(move || {
        let c = connector(&ca, |_| {});
        let mut old = handshake(&c, addr, Some("localhost")).unwrap();
        let before = presented_names(&old);
        assert_eq!(request(&mut old, "/1", "localhost").0, 200);
        // Renewal: the key first, then the certificate, as a deploy tool would write them.
        renewed.write(&dir, "site");
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let names = presented_names(&handshake(&c, addr, Some("localhost")).unwrap());
            if names.contains(&"new.test".to_string()) || Instant::now() > deadline {
                break names;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The connection made before the reload carries on with its certificate.
        let still = request(&mut old, "/2", "localhost").0;
        // A broken certificate file is refused; the renewed certificate stays in force.
        broken.write(&dir, "site");
        let log = stderr_path.join("stderr.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("site.pem holds no certificate")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let kept = presented_names(&handshake(&c, addr, Some("localhost")).unwrap());
        (before, after, still, kept)
    })
    .await;
    assert!(outcome.0.contains(&"old.test".to_string()), "{:?}", outcome.0);
    assert!(outcome.1.contains(&"new.test".to_string()), "the new certificate was never served: {:?}", outcome.1);
    assert_eq!(outcome.2, 200);
    assert!(outcome.3.contains(&"new.test".to_string()), "{:?}", outcome.3);
    assert!(s.gw.stderr().contains("site.pem holds no certificate"), "{}", s.gw.stderr());
}

#[test]
fn bad_certificates_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("CA");
    let (good_cert, good_key) = ca.server(&["localhost"]).write(dir.path(), "good");
    let (expired_cert, expired_key) = ca.expired_server(&["localhost"]).write(dir.path(), "expired");
    let (_, other_key) = ca.server(&["localhost"]).write(dir.path(), "other");
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n").unwrap();
    let missing = dir.path().join("missing.pem");
    // A key with a passphrase: refused with a message, never a prompt on the terminal.
    let encrypted = dir.path().join("encrypted.key");
    let key = openssl::pkey::PKey::private_key_from_pem(std::fs::read(&good_key).unwrap().as_slice()).unwrap();
    let pem = key.private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret").unwrap();
    std::fs::write(&encrypted, pem).unwrap();
    let cases: Vec<(PathBuf, String, &str)> = vec![
        (expired_cert.clone(), format!("file:{}", expired_key.display()), "expired"),
        (good_cert.clone(), format!("file:{}", other_key.display()), "does not belong"),
        (missing.clone(), format!("file:{}", good_key.display()), "missing.pem"),
        (good_cert.clone(), format!("file:{}", garbage.display()), "garbage.key"),
        (good_key.clone(), format!("file:{}", good_key.display()), "holds no certificate"),
        (good_cert.clone(), "env:PORTCULLIS_TEST_UNSET_KEY".to_string(), "PORTCULLIS_TEST_UNSET_KEY"),
        (good_cert.clone(), good_key.display().to_string(), "file:PATH"),
        (good_cert.clone(), format!("file:{}", encrypted.display()), "encrypted"),
    ];
    for (cert, key, words) in cases {
        let config = format!(
            "[server]\nallowed_hosts = [\"localhost\"]\n[[upstream]]\nname = \"api\"\ntargets = [\"builtin:echo\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\n[[listener.tls.certificate]]\n\
             cert = \"{}\"\nkey = \"{key}\"\n",
            cert.display()
        );
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, config).unwrap();
        for command in ["check", "run"] {
            let (code, _, err) = run_cli(&[command, "-c", file.to_str().unwrap()], None);
            assert_eq!(code, 78, "{command} {words}: {err}");
            assert!(err.contains("listener[0].tls.certificate[0]") && err.contains(words), "{words}: {err}");
            assert!(!err.contains("BEGIN"), "no key material in errors: {err}");
        }
    }
    // And the good pair passes, listing the certificate's names.
    let config = format!(
        "[server]\nallowed_hosts = [\"localhost\"]\n[[upstream]]\nname = \"api\"\ntargets = [\"builtin:echo\"]\n\
         [[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\nmin_version = \"1.1\"\n[[listener.tls.certificate]]\n\
         cert = \"{}\"\nkey = \"file:{}\"\n",
        good_cert.display(),
        good_key.display()
    );
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, &config).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", file.to_str().unwrap()], None);
    assert_eq!(code, 78);
    assert!(err.contains("listener[0].tls.min_version") && err.contains("never offered"), "{err}");
    std::fs::write(&file, config.replace("min_version = \"1.1\"\n", "")).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("https://127.0.0.1:0 (TLS 1.2+; certificates: localhost)"), "{out}");
}

/// A self-signed server certificate for `names` (none: no subjectAltName extension at all),
/// valid from `not_before` to `not_after` (year, month, day).
fn self_signed(names: &[&str], not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Pair {
    use rcgen::{date_time_ymd, CertificateParams, DistinguishedName, DnType, KeyPair};
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
    params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pair { cert: cert.pem(), key: key.serialize_pem() }
}

/// A certificate that is not valid yet, and one without subject alternative names (a CN alone,
/// which no current client matches), are refused by `check` and at start, naming the file,
/// where the same certificate with a SAN and a current validity passes.
#[test]
fn not_yet_valid_and_san_less_certificates_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (future_cert, future_key) = self_signed(&["localhost"], (2100, 1, 1), (2101, 1, 1)).write(dir.path(), "future");
    let (no_san_cert, no_san_key) = self_signed(&[], (2024, 1, 1), (2040, 1, 1)).write(dir.path(), "no-san");
    let (good_cert, good_key) = self_signed(&["localhost"], (2024, 1, 1), (2040, 1, 1)).write(dir.path(), "good");
    // What the files hold is what the test says.
    let parse = |path: &Path| X509::from_pem(&std::fs::read(path).unwrap()).unwrap();
    assert!(parse(&no_san_cert).subject_alt_names().is_none());
    assert!(parse(&good_cert).subject_alt_names().is_some());
    assert!(parse(&future_cert).not_before() > openssl::asn1::Asn1Time::days_from_now(0).unwrap());
    let config = |cert: &Path, key: &Path| {
        format!(
            "[server]\nallowed_hosts = [\"localhost\"]\n[[upstream]]\nname = \"api\"\ntargets = [\"builtin:echo\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\n[[listener.tls.certificate]]\n\
             cert = \"{}\"\nkey = \"file:{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let file = dir.path().join("gateway.toml");
    for (cert, key, words) in
        [(&future_cert, &future_key, "is not valid before"), (&no_san_cert, &no_san_key, "subject alternative name")]
    {
        std::fs::write(&file, config(cert, key)).unwrap();
        for command in ["check", "run"] {
            let (code, _, err) = run_cli(&[command, "-c", file.to_str().unwrap()], None);
            assert_eq!(code, 78, "{command} {words}: {err}");
            let name = cert.file_name().unwrap().to_str().unwrap();
            assert!(err.contains("listener[0].tls.certificate[0]") && err.contains(name), "{command}: {err}");
            assert!(err.contains(words), "{command}: {err}");
        }
    }
    std::fs::write(&file, config(&good_cert, &good_key)).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("certificates: localhost"), "{out}");
}

/// An HTTPS upstream on loopback presenting `pair`, answering every request with 200 "secure".
async fn tls_upstream(pair: &Pair) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use openssl::pkey::PKey;
    use openssl::ssl::SslAcceptor;
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    acceptor.set_certificate(&X509::from_pem(pair.cert.as_bytes()).unwrap()).unwrap();
    acceptor.set_private_key(&PKey::private_key_from_pem(pair.key.as_bytes()).unwrap()).unwrap();
    let acceptor = std::sync::Arc::new(acceptor.build());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                    return;
                }
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"secure"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn upstream_tls_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Internal CA");
    let ca_pem = dir.path().join("internal-ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let other_ca_pem = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_pem, Ca::new("Other CA").pem()).unwrap();
    let (addr, hits) = tls_upstream(&ca.server(&["registry.internal"])).await;
    let config = |tls: &str| {
        format!(
            "[server]\nallowed_hosts = [\"localhost\"]\n[[upstream]]\nname = \"api\"\ntargets = [\"{addr}\"]\n\
             tls = {tls}\n[[route]]\npath = \"/\"\nupstream = \"api\"\nauth = \"none\"\n"
        )
    };
    let trusted =
        Gateway::start(&config(&format!("{{ sni = \"registry.internal\", ca = \"{}\" }}", ca_pem.display()))).await;
    let resp = common::get_with_host(trusted.addr, "/x", "localhost").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"secure");
    // A certificate from a CA the gateway does not trust, or for another name: 502, never sent.
    for tls in [
        format!("{{ sni = \"registry.internal\", ca = \"{}\" }}", other_ca_pem.display()),
        format!("{{ sni = \"other.internal\", ca = \"{}\" }}", ca_pem.display()),
    ] {
        let gw = Gateway::start(&config(&tls)).await;
        let resp = common::get_with_host(gw.addr, "/x", "localhost").await;
        common::assert_error(&resp, 502, "UPSTREAM_UNAVAILABLE");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // An IP target needs the name to verify.
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config(&format!("{{ ca = \"{}\" }}", ca_pem.display()))).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", file.to_str().unwrap()], None);
    assert_eq!(code, 78);
    assert!(err.contains("upstream[0].tls.sni"), "{err}");
}
