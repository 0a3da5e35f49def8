//! Live reload (`SIGHUP`), part by part: routes, upstreams, CORS and JWT issuers are swapped;
//! keys fetched from a `jwks_url` are kept across a reload that leaves their issuer unchanged,
//! even with the IdP down by then; keys that need a restart are named in the audit log's
//! `config_reloaded` (`restart_needed`) while the rest applies; and a keep-alive connection
//! opened before a reload is served under the new configuration afterwards.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/keys.rs"]
mod keys;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{
    assert_error, audit_event, read_response, reserve_addr, send, wait_listening, wait_metric, Gateway, RawResponse,
    Upstream,
};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use keys::{jwks, now, SigningKey};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

const RELOADED: &str = r#"portcullis_config_reloads_total{result="success"}"#;
const RELOAD_FAILED: &str = r#"portcullis_config_reloads_total{result="failure"}"#;

/// A whole configuration: `server` is more `[server]` keys, `body` the tables after the
/// listener, admin listener and audit log (upstreams, routes, CORS, auth, more listeners).
fn config(listen: SocketAddr, admin: SocketAddr, audit: &Path, server: &str, body: &str) -> String {
    format!(
        r#"
[server]
allowed_hosts = ["localhost"]
{server}

[[listener]]
address = "{listen}"

[admin]
address = "{admin}"

[log]
audit = "{audit}"

{body}
"#,
        audit = audit.display(),
    )
}

/// A gateway whose configuration the test rewrites and reloads.
struct Reloadable {
    gw: Gateway,
    admin: SocketAddr,
    audit: PathBuf,
    /// Successful reloads so far.
    reloads: usize,
    _logs: tempfile::TempDir,
}

impl Reloadable {
    async fn start(server: &str, body: &str) -> Reloadable {
        let logs = tempfile::tempdir().unwrap();
        let audit = logs.path().join("audit.jsonl");
        let admin = reserve_addr();
        let gw = Gateway::start_from(|listen| config(listen, admin, &audit, server, body)).await;
        wait_listening(admin).await;
        Reloadable { gw, admin, audit, reloads: 0, _logs: logs }
    }

    /// Rewrites the configuration, sends `SIGHUP` and waits until the reload is counted as a
    /// success (a failed one never is: the wait then fails the test, with the scrape).
    async fn reload(&mut self, server: &str, body: &str) {
        std::fs::write(self.gw.config_path(), config(self.gw.addr, self.admin, &self.audit, server, body)).unwrap();
        self.gw.signal("HUP");
        self.reloads += 1;
        wait_metric(self.admin, RELOADED, &self.reloads.to_string()).await;
        let failed = metric(self.admin, RELOAD_FAILED).await;
        assert!(failed.is_none_or(|n| n == "0"), "a reload failed:\n{}", self.gw.stderr());
    }
}

/// The admin scrape.
async fn scrape(admin: SocketAddr) -> String {
    String::from_utf8(send(admin, "GET", "/metrics", &[]).await.body).unwrap()
}

/// The value of `series` in the admin scrape, if it is there.
async fn metric(admin: SocketAddr, series: &str) -> Option<String> {
    scrape(admin).await.lines().find_map(|l| l.strip_prefix(series).map(|rest| rest.trim().to_string()))
}

fn upstream_block(name: &str, target: SocketAddr) -> String {
    format!("[[upstream]]\nname = \"{name}\"\ntargets = [\"{target}\"]\n\n")
}

/// An open route (`auth = "none"`) at `path` to `upstream`, with more `keys`.
fn open_route(path: &str, upstream: &str, keys: &str) -> String {
    format!("[[route]]\npath = \"{path}\"\nupstream = \"{upstream}\"\nauth = \"none\"\n{keys}\n")
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> RawResponse {
    send(gw.addr, "GET", path, headers).await
}

/// `GET path` with `Authorization: {authorization}`.
async fn with_authorization(addr: SocketAddr, path: &'static str, authorization: String) -> RawResponse {
    send(addr, "GET", path, &[("Authorization", &authorization)]).await
}

/// A 200 from the upstream: its answer (which upstream, what it received).
fn served(resp: &RawResponse) -> Value {
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    resp.json()
}

#[tokio::test]
async fn a_reload_swaps_the_routes() {
    let upstream = Upstream::start("api").await;
    let upstreams = upstream_block("api", upstream.addr);
    let before = format!("{upstreams}{}{}", open_route("/old", "api", ""), open_route("/kept", "api", ""));
    let mut s = Reloadable::start("", &before).await;
    assert_eq!(served(&get(&s.gw, "/old/x", &[]).await)["target"], "/old/x");
    assert_eq!(served(&get(&s.gw, "/kept", &[]).await)["target"], "/kept");
    assert_error(&get(&s.gw, "/new/x", &[]).await, 404, "ROUTE_NOT_FOUND");
    assert_eq!(upstream.hits(), 2);

    let after = format!("{upstreams}{}{}", open_route("/new", "api", ""), open_route("/kept", "api", ""));
    s.reload("", &after).await;
    assert_eq!(served(&get(&s.gw, "/new/x", &[]).await)["target"], "/new/x");
    assert_eq!(served(&get(&s.gw, "/kept", &[]).await)["target"], "/kept");
    assert_error(&get(&s.gw, "/old/x", &[]).await, 404, "ROUTE_NOT_FOUND");
    assert_eq!(upstream.hits(), 4, "the removed route's request never reached the upstream");
}

#[tokio::test]
async fn a_reload_swaps_the_upstreams() {
    let (one, two, three) =
        (Upstream::start("one").await, Upstream::start("two").await, Upstream::start("three").await);
    // `api` keeps its name and gets another target; `/switch` is pointed at another upstream.
    let routes =
        |switch_to: &str| format!("{}{}", open_route("/same", "api", ""), open_route("/switch", switch_to, ""));
    let before = format!("{}{}{}", upstream_block("api", one.addr), upstream_block("other", three.addr), routes("api"));
    let mut s = Reloadable::start("", &before).await;
    assert_eq!(served(&get(&s.gw, "/same", &[]).await)["upstream"], "one");
    assert_eq!(served(&get(&s.gw, "/switch", &[]).await)["upstream"], "one");
    assert_eq!((one.hits(), two.hits(), three.hits()), (2, 0, 0));

    let after =
        format!("{}{}{}", upstream_block("api", two.addr), upstream_block("other", three.addr), routes("other"));
    s.reload("", &after).await;
    for _ in 0..3 {
        assert_eq!(served(&get(&s.gw, "/same", &[]).await)["upstream"], "two");
        assert_eq!(served(&get(&s.gw, "/switch", &[]).await)["upstream"], "three");
    }
    assert_eq!((one.hits(), two.hits(), three.hits()), (2, 3, 3), "nothing reached the old target after the reload");
}

#[tokio::test]
async fn a_reload_swaps_the_allowed_cors_origins() {
    const OLD: &str = "https://old.example";
    const NEW: &str = "https://new.example";
    let upstream = Upstream::start("api").await;
    let body = |origin: &str| {
        format!(
            "{}{}[cors]\nallowed_origins = [\"{origin}\"]\n",
            upstream_block("api", upstream.addr),
            open_route("/", "api", "")
        )
    };
    let actual = |s: &Reloadable, origin: &'static str| {
        let addr = s.gw.addr;
        async move { send(addr, "GET", "/x", &[("Origin", origin)]).await }
    };
    let preflight = |s: &Reloadable, origin: &'static str| {
        let addr = s.gw.addr;
        async move { send(addr, "OPTIONS", "/x", &[("Origin", origin), ("Access-Control-Request-Method", "GET")]).await }
    };
    let allowed = |resp: &RawResponse| resp.header("access-control-allow-origin").map(str::to_string);

    let mut s = Reloadable::start("", &body(OLD)).await;
    let resp = actual(&s, OLD).await;
    assert_eq!((resp.status, allowed(&resp)), (200, Some(OLD.to_string())));
    let resp = actual(&s, NEW).await;
    assert_eq!((resp.status, allowed(&resp)), (200, None));
    assert_eq!(preflight(&s, OLD).await.status, 204);
    let refused = preflight(&s, NEW).await;
    assert_error(&refused, 403, "CORS_REJECTED");
    assert_eq!(allowed(&refused), None);

    s.reload("", &body(NEW)).await;
    let resp = actual(&s, NEW).await;
    assert_eq!((resp.status, allowed(&resp)), (200, Some(NEW.to_string())), "the newly allowed origin");
    let resp = actual(&s, OLD).await;
    assert_eq!((resp.status, allowed(&resp)), (200, None), "the removed origin");
    let answered = preflight(&s, NEW).await;
    assert_eq!((answered.status, allowed(&answered)), (204, Some(NEW.to_string())));
    let refused = preflight(&s, OLD).await;
    assert_error(&refused, 403, "CORS_REJECTED");
    assert_eq!(allowed(&refused), None);
    // Preflights are answered by the gateway: only the four actual requests got through.
    assert_eq!(upstream.hits(), 4);
}

/// An HS256 `[[auth.jwt]]` for the `registry` audience.
fn hs_issuer(name: &str, issuer: &str, secret: &Path) -> String {
    format!(
        "[[auth.jwt]]\nname = \"{name}\"\nissuer = \"{issuer}\"\naudiences = [\"registry\"]\nalgorithms = [\"HS256\"]\n\
         secret = \"file:{}\"\n\n",
        secret.display()
    )
}

/// A token of `iss` for `registry`, valid for ten minutes, signed with `secret`.
fn hs_token(iss: &str, secret: &str) -> String {
    let claims = json!({"iss": iss, "aud": "registry", "sub": "user-7", "exp": now() + 600, "iat": now()});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[tokio::test]
async fn a_reload_swaps_the_jwt_issuers() {
    const KEPT: (&str, &str) = ("https://kept.idp.test/", "kept-secret-0123456789-0123456789-0123456");
    const OLD: (&str, &str) = ("https://old.idp.test/", "old-secret-0123456789-0123456789-01234567");
    const NEW: (&str, &str) = ("https://new.idp.test/", "new-secret-0123456789-0123456789-01234567");
    let upstream = Upstream::start("api").await;
    let secrets = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, value).unwrap();
        path
    };
    let (kept, old, new) = (secret("kept", KEPT.1), secret("old", OLD.1), secret("new", NEW.1));
    let routes =
        format!("{}[[route]]\npath = \"/\"\nupstream = \"api\"\n\n[auth]\n", upstream_block("api", upstream.addr));
    let before = format!("{routes}{}{}", hs_issuer("kept", KEPT.0, &kept), hs_issuer("old", OLD.0, &old));
    let mut s = Reloadable::start("", &before).await;
    let bearer = |(iss, secret): (&str, &str)| format!("Bearer {}", hs_token(iss, secret));
    let (kept_token, old_token, new_token) = (bearer(KEPT), bearer(OLD), bearer(NEW));
    let call = |gw: &Gateway, token: &str| with_authorization(gw.addr, "/x", token.to_string());
    assert_eq!(served(&call(&s.gw, &kept_token).await)["headers"]["x-auth-issuer"], json!([KEPT.0]));
    assert_eq!(served(&call(&s.gw, &old_token).await)["headers"]["x-auth-issuer"], json!([OLD.0]));
    assert_error(&call(&s.gw, &new_token).await, 401, "AUTHENTICATION_FAILED");
    assert_eq!(upstream.hits(), 2);

    let after = format!("{routes}{}{}", hs_issuer("kept", KEPT.0, &kept), hs_issuer("new", NEW.0, &new));
    s.reload("", &after).await;
    assert_eq!(served(&call(&s.gw, &new_token).await)["headers"]["x-auth-issuer"], json!([NEW.0]));
    assert_eq!(served(&call(&s.gw, &kept_token).await)["headers"]["x-auth-issuer"], json!([KEPT.0]));
    // The removed issuer's token, verified (and cached) before the reload, is refused now.
    let refused = call(&s.gw, &old_token).await;
    assert_error(&refused, 401, "AUTHENTICATION_FAILED");
    assert_eq!(refused.header("www-authenticate"), Some(r#"Bearer realm="portcullis", error="invalid_token""#));
    assert_eq!(upstream.hits(), 4);
}

/// A local IdP serving a JWKS document, which the test can stop: its listener and every
/// connection it accepted are closed.
struct Idp {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Idp {
    async fn start(document: String) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (f, t) = (fetches.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (f, document) = (f.clone(), document.clone());
                let connection = tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = Bytes::from(document.clone());
                        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                t.lock().unwrap().push(connection.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Idp { addr, fetches, tasks }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops serving: waits until its port refuses connections.
    async fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let addr = self.addr;
        common::eventually("the IdP stopped listening", || common::refuses(addr)).await;
    }
}

#[tokio::test]
async fn keys_from_a_jwks_url_survive_a_reload_while_the_idp_is_down() {
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let idp = Idp::start(jwks(&[&key])).await;
    let upstream = Upstream::start("api").await;
    let issuer = |url: &str| {
        format!(
            "[auth]\n[[auth.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test/\"\naudiences = [\"registry\"]\n\
             algorithms = [\"ES256\"]\njwks_url = \"{url}\"\njwks_min_refresh_interval = \"1s\"\njwks_fetch_timeout = \"1s\"\n"
        )
    };
    let body = |route: &str, url: &str| {
        format!(
            "{}[[route]]\npath = \"{route}\"\nupstream = \"api\"\n\n{}",
            upstream_block("api", upstream.addr),
            issuer(url)
        )
    };
    let mut s = Reloadable::start("", &body("/before", &idp.url())).await;
    // A fresh token each time (its own `jti`), so no verified-token cache answers for the keys.
    let token = |jti: &str| {
        let claims = json!({"iss": "https://idp.test/", "aud": "registry", "sub": "user-7", "exp": now() + 600,
                            "iat": now(), "jti": jti});
        format!("Bearer {}", key.sign(&claims))
    };
    let call = |gw: &Gateway, path: &'static str, bearer: String| with_authorization(gw.addr, path, bearer);
    let seen = served(&call(&s.gw, "/before", token("1")).await);
    assert_eq!(seen["headers"]["x-auth-issuer"], json!(["https://idp.test/"]));
    assert_eq!(idp.fetches(), 1);

    idp.stop().await;
    // The issuer is unchanged; the route is renamed, to tell the new configuration is in force.
    s.reload("", &body("/after", &idp.url())).await;
    // The new configuration's own fetch ran and failed: the IdP is down.
    wait_metric(s.admin, r#"portcullis_jwks_refresh_total{issuer="idp",result="failure"}"#, "1").await;
    assert_error(&call(&s.gw, "/before", token("2")).await, 404, "ROUTE_NOT_FOUND");
    let seen = served(&call(&s.gw, "/after", token("3")).await);
    assert_eq!(seen["headers"]["x-auth-issuer"], json!(["https://idp.test/"]));
    assert_eq!(seen["headers"]["x-auth-subject"], json!(["user-7"]));

    // Not so for an issuer whose URL changed: its keys come from its own URL, and that one
    // has never answered.
    let (_closed, closed) = common::refusing_port();
    s.reload("", &body("/after", &format!("http://{closed}/jwks.json"))).await;
    assert_error(&call(&s.gw, "/after", token("4")).await, 401, "AUTHENTICATION_FAILED");
    assert_eq!(upstream.hits(), 2);
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn a_reload_names_the_keys_that_need_a_restart_and_applies_the_rest() {
    let upstream = Upstream::start("api").await;
    let upstreams = upstream_block("api", upstream.addr);
    let mut s = Reloadable::start("threads = 2", &format!("{upstreams}{}", open_route("/before", "api", ""))).await;
    assert_eq!(served(&get(&s.gw, "/before", &[]).await)["upstream"], "api");

    // Another thread count and a second listener (both need a restart), and another route.
    let extra = reserve_addr();
    let body = format!("{upstreams}{}[[listener]]\naddress = \"{extra}\"\n", open_route("/after", "api", ""));
    s.reload("threads = 3", &body).await;
    let reloaded = audit_event(&s.audit, "config_reloaded").await;
    assert_eq!(reloaded["restart_needed"], json!(["listener", "server.threads"]), "{reloaded}");
    assert!(s.gw.stderr().contains("need a restart"), "{}", s.gw.stderr());
    // The rest was applied...
    assert_eq!(served(&get(&s.gw, "/after", &[]).await)["upstream"], "api");
    assert_error(&get(&s.gw, "/before", &[]).await, 404, "ROUTE_NOT_FOUND");
    // ...and the listeners stayed as they were: the new one was not opened.
    assert!(common::refuses(extra), "a listener added by a reload was opened");
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn a_keep_alive_connection_opened_before_a_reload_is_served_under_the_new_configuration() {
    let (one, two) = (Upstream::start("one").await, Upstream::start("two").await);
    let body = |upstream: &Upstream| format!("{}{}", upstream_block("api", upstream.addr), open_route("/", "api", ""));
    let mut s = Reloadable::start("", &body(&one)).await;
    let mut connection = tokio::net::TcpStream::connect(s.gw.addr).await.unwrap();
    let request = b"GET /ka HTTP/1.1\r\nHost: localhost\r\n\r\n";
    connection.write_all(request).await.unwrap();
    let first = read_response(&mut connection).await;
    assert_eq!(served(&first)["upstream"], "one");
    assert_ne!(first.header("connection"), Some("close"), "the gateway meant to close the connection");

    s.reload("", &body(&two)).await;
    // The same connection: not closed by the reload, and its next request sees the new upstream.
    connection.write_all(request).await.unwrap();
    let second = read_response(&mut connection).await;
    assert_eq!(served(&second)["upstream"], "two");
    assert_eq!((one.hits(), two.hits()), (1, 1));
}
