//! Test harness: the real `portcullis` binary on a free loopback port, in front of real upstream
//! HTTP servers, driven over real sockets.
//!
//! - [`Gateway::start`] writes a config to a temporary directory, appends a listener on a free
//!   port, starts the binary and waits until it accepts connections (or fails with its stderr).
//! - [`Upstream::start`] is a hyper HTTP/1.1 server that answers with what it received as JSON.
//! - [`raw`] sends bytes exactly as written (reqwest would normalise the paths and hosts these
//!   tests are about) and parses the response with `httparse`.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest a command of the binary that should end may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A running gateway, killed when dropped.
pub struct Gateway {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with `config` plus a plain listener on a free port.
    pub async fn start(config: &str) -> Gateway {
        Self::start_with(config, "").await
    }

    /// Like [`Gateway::start`], with extra keys for the listener table (e.g. `h2c = true`).
    pub async fn start_with(config: &str, listener_keys: &str) -> Gateway {
        Self::start_from(|addr| format!("{config}\n[[listener]]\naddress = \"{addr}\"\n{listener_keys}\n")).await
    }

    /// Like [`Gateway::start`], with the gateway's log (`RUST_LOG`) at `level` instead of `warn`.
    pub async fn start_logging(config: &str, level: &str) -> Gateway {
        let make = |addr| format!("{config}\n[[listener]]\naddress = \"{addr}\"\n");
        Self::spawn(&make, level).await
    }

    /// Starts the gateway with the config `make(listen_address)` returns.
    pub async fn start_from(make: impl Fn(SocketAddr) -> String) -> Gateway {
        Self::spawn(&make, "warn").await
    }

    async fn spawn(make: &dyn Fn(SocketAddr) -> String, log_level: &str) -> Gateway {
        let mut last_error = String::new();
        // A port of this process's block may still be taken by another program: retry.
        for _ in 0..3 {
            let addr = reserve_addr();
            let dir = tempfile::tempdir().unwrap();
            let text = make(addr);
            let file = dir.path().join("gateway.toml");
            std::fs::write(&file, text).unwrap();
            let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let child = Command::new(BIN)
                .arg("run")
                .arg("-c")
                .arg(&file)
                .env("RUST_LOG", log_level)
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap();
            let mut gw = Gateway { child, addr, dir };
            match gw.wait_ready().await {
                Ok(()) => return gw,
                Err(e) => last_error = e,
            }
        }
        panic!("gateway did not start: {last_error}");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", self.stderr()));
            }
            // The gateway itself listens there (not whatever else may), and accepts.
            if listens_on(self.child.id(), self.addr) && TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("not listening after 20s: {}", self.stderr()))
    }

    /// The directory holding its config and `stderr.log`.
    pub fn dir_path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The configuration file it was started with (rewrite it, then [`Gateway::signal`]
    /// `HUP` to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) to the gateway process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits at most `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// What the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address for a listener of a test (the gateway's, its admin listener, a secondary
/// one): a port below the kernel's ephemeral range (32768 and up on Linux), so no outgoing
/// connection (the gateway's to its upstreams, a client's) can be given it between now and the
/// bind; each handed out once in this process, from a block of ports chosen by the process id,
/// so test binaries that run at once keep apart; and free when handed out.
pub fn reserve_addr() -> SocketAddr {
    use std::sync::atomic::AtomicU32;
    const FIRST: u32 = 10_000;
    const BLOCK: u32 = 2_000;
    const BLOCKS: u32 = 11;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = FIRST + (std::process::id() % BLOCKS) * BLOCK;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK;
        let addr = SocketAddr::from(([127, 0, 0, 1], u16::try_from(block + offset).unwrap()));
        // Taken by something else on this machine: the next one.
        if StdListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// Waits until `done()` holds (checked every 10 ms), failing the test after 10 s with `what`:
/// how a test waits on an observable event instead of sleeping for a guess.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not after 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits, if needed, until the current `period`-second window has at least `margin` left, so
/// a test's requests all fall into one window. Windows are aligned to the clock: this is
/// alignment with the wall clock, not synchronisation with the gateway.
pub async fn within_one_window(period: u64, margin: Duration) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let left = Duration::from_millis(period * 1000 - now % (period * 1000));
    if left < margin {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

/// Polls the admin listener's `/metrics` until `series` reads `value`.
pub async fn wait_metric(admin: SocketAddr, series: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = String::from_utf8(send(admin, "GET", "/metrics", &[]).await.body).unwrap();
        if scrape.lines().any(|l| l.strip_prefix(series).is_some_and(|rest| rest.trim() == value)) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never became {value}:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The audit log's events so far.
pub fn audit_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits for the first audit line of `event` (lines are written by a background thread).
pub async fn audit_event(path: &Path, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = audit_events(path).into_iter().find(|e| e["event"] == event) {
            return line;
        }
        assert!(Instant::now() < deadline, "no {event} in {:?}", audit_events(path));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether nothing accepts connections on `addr` any more.
pub fn refuses(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

/// Whether the process `pid` holds a socket listening on `addr`: /proc/net/tcp names the
/// listening socket's inode, and the process's descriptors name the sockets it holds.
fn listens_on(pid: u32, addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else { return false };
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // sl local_address rem_address st ... inode: state 0A is LISTEN.
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A");
            fields.get(9).filter(|_| listening).map(|inode| inode.to_string())
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|inode| target.to_string_lossy() == format!("socket:[{inode}]")))
    })
}

/// A loopback port that refuses connections and that nobody else can take: bound, not
/// listening, for as long as the socket lives (`listen` on it later to bring it up).
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// Waits until something accepts connections on `addr` (a service Pingora starts after the
/// first listener, such as the admin one).
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The JSON lines of `path` once it holds at least `n` (logs are written by a background
/// thread), or whatever it holds after 10 s.
pub fn wait_json_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real upstream HTTP server answering with what it received.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it has received.
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    /// Starts an upstream named `name` (returned in its answers as `upstream`).
    ///
    /// Paths starting with `/slow` wait 2 s before answering.
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Like [`Upstream::start`], on a given address.
    pub async fn start_on(name: &'static str, addr: SocketAddr) -> Upstream {
        Self::start_on_listener(name, TcpListener::bind(addr).await.unwrap())
    }

    /// Like [`Upstream::start`], on a listening socket.
    pub fn start_on_listener(name: &'static str, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        answer(name, req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, hits }
    }

    /// How many requests reached it.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn answer(name: &'static str, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    if parts.uri.path().starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let body_bytes = body.collect().await.map(|b| b.to_bytes().len()).unwrap_or(usize::MAX);
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let v = v.to_str().unwrap_or("<binary>").to_string();
        match headers.get_mut(k.as_str()) {
            Some(Value::Array(a)) => a.push(Value::String(v)),
            _ => {
                headers.insert(k.as_str().to_string(), json!([v]));
            }
        }
    }
    let doc = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "target": parts.uri.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::builder().header("content-type", "application/json").header("x-upstream", name);
    if parts.uri.path().ends_with("/upstream-cors") {
        // An upstream with CORS opinions of its own, which the gateway must replace.
        response = response
            .header("access-control-allow-origin", "*")
            .header("access-control-allow-methods", "PUT, PATCH")
            .header("access-control-expose-headers", "x-upstream")
            .header("vary", "Accept-Encoding");
    }
    if parts.uri.path().ends_with("/upstream-id") {
        // An upstream that sets its own request id, which the gateway must not let through.
        response = response.header("x-request-id", "set-by-upstream");
    }
    let response = response.body(Full::new(Bytes::from(doc.to_string()))).unwrap();
    Ok(response)
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `request` verbatim on a new connection and reads one response (the connection is
/// read to its end or to the length the response declares).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Reads one response from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let deadline = Duration::from_secs(10);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&buf) {
            let status = parsed.code.unwrap();
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let length = headers.iter().find(|(k, _)| k == "content-length").map(|(_, v)| v.parse::<usize>().unwrap());
            let mut body = buf[head_len..].to_vec();
            match length {
                Some(n) => {
                    while body.len() < n {
                        let mut chunk = [0u8; 8192];
                        let read = tokio::time::timeout(deadline, stream.read(&mut chunk)).await.unwrap().unwrap();
                        assert!(read > 0, "connection closed inside the body");
                        body.extend_from_slice(&chunk[..read]);
                    }
                    body.truncate(n);
                }
                None => {
                    let _ = tokio::time::timeout(deadline, stream.read_to_end(&mut body)).await;
                }
            }
            return RawResponse { status, headers, body };
        }
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(deadline, stream.read(&mut chunk)).await.expect("response timed out").unwrap();
        assert!(read > 0, "connection closed before a response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// Sends `request` and reads only the status line and headers (for HEAD requests).
pub async fn raw_head(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = parsed.parse(&buf) {
            let headers = parsed
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            return RawResponse { status: parsed.code.unwrap(), headers, body: Vec::new() };
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(read > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// `GET {target}` with the given Host header value, `Connection: close`.
pub async fn get_with_host(addr: SocketAddr, target: &str, host: &str) -> RawResponse {
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

/// `METHOD {target}` for `Host: localhost` with extra headers, `Connection: close`.
pub async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

/// Asserts a gateway error: status, JSON code, and a request id matching the header.
pub fn assert_error(resp: &RawResponse, status: u16, code: &str) {
    assert_eq!(resp.status, status, "body: {}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    // An error is about this request only: no cache keeps it (a 401 served to the next caller).
    assert_eq!(resp.header("cache-control"), Some("no-store"), "Cache-Control of a {status}");
    let body = resp.json();
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    let id = resp.header("x-request-id").expect("x-request-id on error responses");
    assert_eq!(body["error"]["request_id"], id);
}

/// Asserts a 400 from Pingora's HTTP/1 parser, which refuses some requests (duplicate `Host`,
/// userinfo in `Host`, a `Host` contradicting an absolute-form target) before any gateway stage
/// runs: an empty body and a closed connection. Pingora 0.9 has no hook to shape that answer.
pub fn assert_parser_refusal(resp: &RawResponse) {
    assert_eq!(resp.status, 400, "body: {}", String::from_utf8_lossy(&resp.body));
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("connection"), Some("close"));
}

/// Runs `portcullis` with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], cwd: Option<&Path>) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    // A command that should end (check, explain, keys) and does not, `run` on a config it should
    // refuse say, fails the test instead of hanging it.
    let (done, out) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    let Ok(out) = out.recv_timeout(CLI_TIMEOUT) else {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        panic!("portcullis {args:?} did not finish within {CLI_TIMEOUT:?}");
    };
    let out = out.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The repository root (where `conf/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a whole file.
pub fn read(path: &Path) -> String {
    let mut s = String::new();
    std::fs::File::open(path).unwrap().read_to_string(&mut s).unwrap();
    s
}
