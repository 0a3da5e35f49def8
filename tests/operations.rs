//! Operations: `SIGHUP` reloads the configuration without dropping requests in flight, an
//! invalid configuration leaves the old one serving, `SIGTERM` lets in-flight requests finish,
//! a new process takes the sockets over (`run --upgrade` + `SIGQUIT`) without refusing a
//! connection, and `portcullis health` probes the admin listener.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{audit_event, audit_events, reserve_addr, send, wait_listening, wait_metric, Gateway, Upstream};
use sha2::{Digest, Sha256};

const KEY_A: &str = "pcs_aaaa0a9c3b7d2e4f6a8b0c1d2e3f40516273849a5b6c7d8e9f0a1b2c3d4e5f6a";
const KEY_B: &str = "pcs_bbbb0a9c3b7d2e4f6a8b0c1d2e3f40516273849a5b6c7d8e9f0a1b2c3d4e5f6a";

fn key_block(id: &str, key: &str) -> String {
    format!(
        "[[auth.api_key]]\nid = \"{id}\"\nhash = \"sha256:{}\"\npermissions = [\"read\"]\n",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// A gateway config: `keys` are `[[auth.api_key]]` blocks, `server` more `[server]` keys;
/// `/slow` takes 2 s upstream.
fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    audit: &Path,
    upstream: SocketAddr,
    keys: &str,
    server: &str,
) -> String {
    format!(
        r#"
[server]
allowed_hosts = ["localhost"]
{server}
upgrade_socket = "{socket}"

[[listener]]
address = "{listen}"

[admin]
address = "{admin}"

[log]
audit = "{audit}"

[[upstream]]
name = "api"
targets = ["{upstream}"]

[[rate_limit]]
name = "two"
key = "client"
limit = "2/hour"

[[route]]
name = "api"
path = "/"
upstream = "api"
permissions = ["read"]

[[route]]
name = "limited"
path = "/limited"
upstream = "api"
auth = "none"
rate_limits = ["two"]

[auth]
{keys}
"#,
        audit = audit.display(),
        socket = audit.with_file_name("upgrade.sock").display(),
    )
}

async fn status(gw: &Gateway, path: &str, key: &str) -> u16 {
    send(gw.addr, "GET", path, &[("X-API-Key", key)]).await.status
}

struct Setup {
    gw: Gateway,
    admin: SocketAddr,
    audit: std::path::PathBuf,
    upstream: Upstream,
    _logs: tempfile::TempDir,
}

async fn start(keys: &str, server: &str) -> Setup {
    let upstream = Upstream::start("api").await;
    let logs = tempfile::tempdir().unwrap();
    let audit = logs.path().join("audit.jsonl");
    let admin = reserve_addr();
    let (u, a) = (upstream.addr, audit.clone());
    let gw = Gateway::start_from(|listen| config(listen, admin, &a, u, keys, server)).await;
    wait_listening(admin).await;
    Setup { gw, admin, audit, upstream, _logs: logs }
}

#[tokio::test]
async fn a_reload_swaps_keys_while_a_slow_request_completes() {
    let s = start(&key_block("a", KEY_A), "shutdown_grace = \"30s\"").await;
    assert_eq!(status(&s.gw, "/x", KEY_A).await, 200);
    assert_eq!(status(&s.gw, "/x", KEY_B).await, 401);
    for expected in [200, 200, 429] {
        assert_eq!(status(&s.gw, "/limited", "").await, expected);
    }

    // A request that takes 2 s upstream, started before the reload.
    let addr = s.gw.addr;
    let hits = s.upstream.hits();
    let slow = tokio::spawn(async move { send(addr, "GET", "/slow", &[("X-API-Key", KEY_A)]).await });
    common::eventually("the slow request reached the upstream", || s.upstream.hits() > hits).await;

    // Revoke key a, add key b, reload.
    let text =
        config(s.gw.addr, s.admin, &s.audit, s.upstream.addr, &key_block("b", KEY_B), "shutdown_grace = \"30s\"");
    std::fs::write(s.gw.config_path(), text).unwrap();
    let sent = Instant::now();
    s.gw.signal("HUP");
    wait_metric(s.admin, r#"portcullis_config_reloads_total{result="success"}"#, "1").await;
    let reload_seen = sent.elapsed();
    assert_eq!(status(&s.gw, "/x", KEY_B).await, 200);
    assert_eq!(status(&s.gw, "/x", KEY_A).await, 401);
    // The unchanged policy kept its count: still refused this hour.
    assert_eq!(status(&s.gw, "/limited", "").await, 429);

    // The request in flight finished under the configuration it started with.
    let resp = slow.await.unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let reloaded = audit_event(&s.audit, "config_reloaded").await;
    assert!(reloaded["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(reloaded["restart_needed"], serde_json::json!([]));
    eprintln!("reload observed {reload_seen:?} after SIGHUP; the reload itself took {} ms", reloaded["duration_ms"]);
}

#[tokio::test]
async fn an_invalid_reload_leaves_the_old_configuration_serving() {
    let s = start(&key_block("a", KEY_A), "shutdown_grace = \"30s\"").await;
    assert_eq!(status(&s.gw, "/x", KEY_A).await, 200);
    // A route to an upstream that does not exist, and a key pasted where a hash belongs.
    let broken =
        config(s.gw.addr, s.admin, &s.audit, s.upstream.addr, &key_block("a", KEY_A), "shutdown_grace = \"30s\"")
            .replace("upstream = \"api\"\npermissions", "upstream = \"missing\"\npermissions")
            + &format!("[[auth.api_key]]\nid = \"pasted\"\nhash = \"{KEY_B}\"\n");
    std::fs::write(s.gw.config_path(), broken).unwrap();
    s.gw.signal("HUP");
    wait_metric(s.admin, r#"portcullis_config_reloads_total{result="failure"}"#, "1").await;
    assert_eq!(status(&s.gw, "/x", KEY_A).await, 200, "the old configuration still serves");
    let failed = audit_event(&s.audit, "config_reload_failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("route[0].upstream"), "{error}");
    assert!(!error.contains(&KEY_B[4..]), "the pasted key is redacted: {error}");
    assert!(s.gw.stderr().contains("configuration reload failed"), "{}", s.gw.stderr());
    assert!(!s.gw.stderr().contains(&KEY_B[4..]));

    // Fixed: the next reload applies.
    let fixed =
        config(s.gw.addr, s.admin, &s.audit, s.upstream.addr, &key_block("b", KEY_B), "shutdown_grace = \"30s\"");
    std::fs::write(s.gw.config_path(), fixed).unwrap();
    s.gw.signal("HUP");
    wait_metric(s.admin, r#"portcullis_config_reloads_total{result="success"}"#, "1").await;
    assert_eq!(status(&s.gw, "/x", KEY_B).await, 200);
}

/// With the default 30 s grace, an idle gateway exits within a second of SIGTERM: systemd,
/// `docker stop` and Kubernetes do not wait for a grace period nothing needs.
#[tokio::test]
async fn an_idle_gateway_exits_within_a_second_of_sigterm() {
    let mut s = start(&key_block("a", KEY_A), "").await;
    assert_eq!(status(&s.gw, "/x", KEY_A).await, 200);
    let sent = Instant::now();
    s.gw.signal("TERM");
    let exit = s.gw.wait_exit(Duration::from_secs(10)).await.expect("exited");
    let took = sent.elapsed();
    assert!(exit.success(), "{exit:?}: {}", s.gw.stderr());
    eprintln!("idle gateway exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(1), "took {took:?} (the grace period is 30 s)");
}

/// A request in flight finishes; meanwhile nothing new is accepted, a keep-alive connection
/// is told to close, and the gateway exits right after the last response rather than at the
/// end of its 30 s grace. The audit lines of the last requests are written before it exits.
#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_right_after() {
    use tokio::io::AsyncWriteExt;
    let mut s = start(&key_block("a", KEY_A), "shutdown_grace = \"30s\"").await;
    let addr = s.gw.addr;
    let slow = tokio::spawn(async move {
        let resp = send(addr, "GET", "/slow", &[("X-API-Key", KEY_A)]).await;
        (resp, Instant::now())
    });
    // A keep-alive connection that has served one request and sits idle.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /x HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {KEY_A}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(common::read_response(&mut idle).await.status, 200);
    common::eventually("the slow request reached the upstream", || s.upstream.hits() == 2).await;
    s.gw.signal("TERM");
    common::eventually("the listener closed after SIGTERM", || common::refuses(addr)).await;
    // The idle keep-alive connection was closed rather than kept for another request.
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest));
    assert!(matches!(closed.await, Ok(Ok(0))), "the idle connection was not closed: {rest:?}");
    let (resp, answered) = slow.await.unwrap();
    assert_eq!(resp.status, 200, "the request in flight finished");
    let exit = s.gw.wait_exit(Duration::from_secs(10)).await.expect("exited");
    let after = answered.elapsed();
    assert!(exit.success(), "{exit:?}: {}", s.gw.stderr());
    eprintln!("exited {after:?} after the last response");
    assert!(after < Duration::from_secs(1), "exited {after:?} after the last response (grace 30 s)");
    // Both requests' audit lines (the last one's included) were written before the exit.
    let successes = audit_events(&s.audit).iter().filter(|e| e["event"] == "auth_success").count();
    assert_eq!(successes, 2, "{:?}", audit_events(&s.audit));
}

/// `shutdown_delay`: after SIGTERM the gateway says it is not ready, and goes on accepting and
/// serving for the delay, for a load balancer to take it out; then it drains and exits.
#[tokio::test]
async fn shutdown_delay_keeps_serving_while_readiness_fails() {
    let mut s = start(&key_block("a", KEY_A), "shutdown_delay = \"1500ms\"").await;
    assert_eq!(send(s.admin, "GET", "/readyz", &[]).await.status, 200);
    let sent = Instant::now();
    s.gw.signal("TERM");
    let mut ready = send(s.admin, "GET", "/readyz", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    while ready.status == 200 && Instant::now() < deadline {
        ready = send(s.admin, "GET", "/readyz", &[]).await;
    }
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "draining");
    // New connections are still accepted and served during the delay.
    for _ in 0..3 {
        assert_eq!(status(&s.gw, "/x", KEY_A).await, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sent.elapsed() < Duration::from_millis(1500));
    let exit = s.gw.wait_exit(Duration::from_secs(10)).await.expect("exited");
    let took = sent.elapsed();
    assert!(exit.success(), "{exit:?}: {}", s.gw.stderr());
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(2500), "exited after {took:?}");
}

#[tokio::test]
async fn a_new_binary_takes_the_sockets_over_without_refusing_a_connection() {
    let mut s = start(&key_block("a", KEY_A), "shutdown_grace = \"1s\"").await;
    // Requests on fresh connections, all along the swap.
    let addr = s.gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                statuses.push(send(addr, "GET", "/x", &[("X-API-Key", KEY_A)]).await.status);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    let stderr = std::fs::File::create(s.audit.with_file_name("new.stderr")).unwrap();
    let mut new = std::process::Command::new(common::BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(s.gw.config_path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    // The new process waits on the upgrade socket; the old one hands its sockets over.
    let socket = s.audit.with_file_name("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the new process never listened on {}", socket.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A reload asked while the new process waits must not stop it (SIGHUP's default action).
    let hup = std::process::Command::new("kill").arg("-HUP").arg(new.id().to_string()).status().unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(new.try_wait().unwrap().is_none(), "SIGHUP stopped the waiting process");
    s.gw.signal("QUIT");
    let old = s.gw.wait_exit(Duration::from_secs(15)).await.expect("the old process exits after handing over");
    assert!(old.success(), "{old:?}: {}", s.gw.stderr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = load.await.unwrap();
    // Only the new process is left, and it serves.
    assert_eq!(status(&s.gw, "/x", KEY_A).await, 200);
    let _ = new.kill();
    let _ = new.wait();
    assert!(statuses.len() > 20, "{} requests", statuses.len());
    assert!(statuses.iter().all(|&code| code == 200), "{statuses:?}");
}

#[tokio::test]
async fn the_health_command_probes_the_admin_listener() {
    let s = start(&key_block("a", KEY_A), "shutdown_grace = \"30s\"").await;
    let probe = |url: String| std::process::Command::new(common::BIN).args(["health", &url]).output().unwrap();
    let ok = probe(format!("http://{}/healthz", s.admin));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let missing = probe(format!("http://{}/nope", s.admin));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let (_closed, closed) = common::refusing_port();
    let closed = probe(format!("http://{closed}/healthz"));
    assert_eq!(closed.status.code(), Some(1));
}

#[tokio::test]
async fn production_checks_apply_to_a_reload() {
    let s = start(&key_block("a", KEY_A), "shutdown_grace = \"30s\"").await;
    // Production refuses the open /limited route (auth = "none" without public = true).
    let production =
        config(s.gw.addr, s.admin, &s.audit, s.upstream.addr, &key_block("a", KEY_A), "shutdown_grace = \"30s\"")
            .replace("[server]\n", "[server]\nenvironment = \"production\"\n");
    std::fs::write(s.gw.config_path(), production).unwrap();
    s.gw.signal("HUP");
    wait_metric(s.admin, r#"portcullis_config_reloads_total{result="failure"}"#, "1").await;
    let failed = audit_event(&s.audit, "config_reload_failed").await;
    assert!(failed["error"].as_str().unwrap().contains("route[1].public"), "{failed}");
    assert_eq!(status(&s.gw, "/limited", "").await, 200, "the development configuration still serves");
}

#[tokio::test]
async fn a_reload_reopens_log_files_rotated_away() {
    let s = start(&key_block("a", KEY_A), "shutdown_grace = \"30s\"").await;
    assert_eq!(status(&s.gw, "/x", KEY_B).await, 401);
    audit_event(&s.audit, "auth_failure").await;
    // logrotate's default: move the file away, then ask for a reload.
    let rotated = s.audit.with_extension("jsonl.1");
    std::fs::rename(&s.audit, &rotated).unwrap();
    s.gw.signal("HUP");
    wait_metric(s.admin, r#"portcullis_config_reloads_total{result="success"}"#, "1").await;
    // The writer reopens the next time it wakes (every 10 ms at most): the file is back.
    common::eventually("the audit log reopened", || s.audit.exists()).await;
    assert_eq!(status(&s.gw, "/x", KEY_B).await, 401);
    // The new file gets the lines from now on; the rotated one keeps the old ones (and perhaps
    // config_reloaded, written as the reopen was asked for).
    audit_event(&s.audit, "auth_failure").await;
    let old: Vec<String> = audit_events(&rotated).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(old[..2], ["config_loaded", "auth_failure"]);
    assert!(old[2..].iter().all(|e| e == "config_reloaded"), "{old:?}");
}
