//! Client connections, before the request pipeline: admission, the request head, idleness.
//!
//! Pingora reads a request head itself, as slowly as the client sends it, with its request
//! machinery allocated from the moment it starts waiting (about 25 KiB a connection, and its
//! default 64 KiB read buffer on top). A client that trickled a head, or opened connections
//! and sent nothing, held that memory for as long as it liked. So each connection is served
//! here first:
//!
//! 1. **Admission.** Past `server.max_connections` open in this process, or
//!    `server.max_connections_per_client` from one client address (IPv6 by /64, as rate limits
//!    count; trusted proxies are exempt, since every client behind them shares their address),
//!    a new connection is closed at once and counted in `portcullis_connections_rejected_total`.
//! 2. **The request head** is read into a buffer of this module's, until a blank line ends it:
//!    it must be complete within `server.header_timeout` of the connection's start (the first
//!    request) or of its first byte (later ones), else 408 and close; past
//!    `server.max_header_size`, 431 and close. A keep-alive connection without a byte for
//!    `server.idle_timeout` is closed quietly, and so is one idle when the gateway stops.
//! 3. **Then Pingora** gets the connection and reads the head from that buffer: its parser does
//!    the parsing, this module only finds where the head ends ([`head_end`]).
//!
//! An HTTP/2 connection (ALPN `h2`, or the h2c preface on a listener with `h2c`) must send its
//! 24-byte preface within `header_timeout`; then Pingora's HTTP/2 server takes it, and closes
//! it once no stream has been open for `idle_timeout`.
//!
//! A TLS connection is admitted before its handshake ([`TlsAdmission`]), must send its whole
//! ClientHello within `header_timeout`, and is shut down if its handshake is not done within
//! `header_timeout` of its start (checked every second, [`OpenConnections::reap_handshakes`]):
//! Pingora's own bound is a fixed 60 s. The first request head's `header_timeout` starts once
//! the handshake is done.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::HeaderValue;
use once_cell::sync::Lazy;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;

use crate::config::server::ConnectionLimits;
use crate::error::GatewayError;
use crate::gateway::{Gateway, SharedRuntime};
use crate::metrics::METRICS;
use crate::pipeline::client::canonical;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The buffer a request head is first read into: most heads, a bearer token included, fit.
const HEAD_BUFFER: usize = 2048;

// Timeouts here are tokio's, not Pingora's faster shared ones: a Pingora timer outlives the
// future that armed it until its deadline, and those left by closed idle connections kept the
// allocator from handing their pages back (measured: 90 MiB held for `idle_timeout` after
// 10,000 keep-alive connections closed).

/// How long a 408 or 431 answer may take to write before the connection is dropped anyway.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection was closed before a request was served: the `reason` label of
/// `portcullis_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Over `server.max_connections`.
    MaxConnections,
    /// Over `server.max_connections_per_client`.
    MaxConnectionsPerClient,
    /// A request head slower than `server.header_timeout` (408).
    HeaderTimeout,
    /// A request head over `server.max_header_size` (431).
    HeaderTooLarge,
    /// On a TLS listener, bytes that are not a TLS ClientHello, or one over 16 KiB.
    BadClientHello,
}

impl Rejection {
    /// Every reason, for the metric's zero values.
    pub const ALL: [Rejection; 5] = [
        Rejection::MaxConnections,
        Rejection::MaxConnectionsPerClient,
        Rejection::HeaderTimeout,
        Rejection::HeaderTooLarge,
        Rejection::BadClientHello,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "max_connections",
            Rejection::MaxConnectionsPerClient => "max_connections_per_client",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::BadClientHello => "bad_client_hello",
        }
    }

    fn count(self) {
        METRICS.connections_rejected.with_label_values(&[self.label()]).inc();
    }
}

/// Shards of the per-client counts: one short lock per connection, spread over these.
const CLIENT_SHARDS: usize = 16;

/// The client connections open in this process: in total, and per client address.
pub struct OpenConnections {
    total: AtomicUsize,
    per_client: [Mutex<HashMap<IpAddr, usize>>; CLIENT_SHARDS],
    /// Woken when the last connection closes.
    none_left: Notify,
}

/// The process-wide counts: connections of every listener share the limits.
pub static OPEN: Lazy<OpenConnections> = Lazy::new(OpenConnections::new);

impl OpenConnections {
    fn new() -> Self {
        OpenConnections {
            total: AtomicUsize::new(0),
            per_client: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            none_left: Notify::new(),
        }
    }

    /// Client connections open now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Returns once no client connection is open (at once if none is).
    pub async fn none_left(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.total() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Counts a new connection from `client` (`None`: not counted per client), or refuses it.
    fn admit(&'static self, client: Option<IpAddr>, limits: &ConnectionLimits) -> Result<Admitted, Rejection> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.release_total();
            return Err(Rejection::MaxConnections);
        }
        if let Some(ip) = client {
            let mut shard = self.shard(ip);
            let count = shard.entry(ip).or_insert(0);
            if *count >= limits.max_connections_per_client {
                drop(shard);
                self.release_total();
                return Err(Rejection::MaxConnectionsPerClient);
            }
            *count += 1;
        }
        Ok(Admitted { open: self, client })
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let index = match ip {
            IpAddr::V4(v4) => v4.octets().iter().fold(0usize, |h, &b| h.wrapping_mul(31).wrapping_add(b.into())),
            IpAddr::V6(v6) => v6.octets().iter().fold(0usize, |h, &b| h.wrapping_mul(31).wrapping_add(b.into())),
        } % CLIENT_SHARDS;
        // A poisoned shard only means another thread panicked mid-update of a counter.
        self.per_client[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release_total(&self) {
        if self.total.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none_left.notify_waiters();
        }
    }
}

/// TLS connections past their ClientHello, in OpenSSL's handshake, by descriptor, until the
/// proxy takes them ([`ClientConnections`] finds a connection's admission here by its
/// descriptor). A handshake that fails leaves its entry behind, with no way here to see it
/// fail: the next connection given the same descriptor replaces it, and
/// [`OpenConnections::reap_handshakes`] drops it once its descriptor is no longer the client's
/// socket.
static HANDSHAKING: Lazy<Mutex<HashMap<UniqueIDType, Handshake>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// One connection in its TLS handshake.
struct Handshake {
    admitted: Admitted,
    since: Instant,
    /// The client's address, to tell whether the descriptor is still its connection.
    peer: std::net::SocketAddr,
    /// `header_timeout` after the connection was accepted: the handshake must be done by then.
    deadline: Instant,
    /// Whether the connection was shut down for missing it.
    cut: bool,
}

/// Pingora allows a TLS handshake this long (fixed in its accept loop), the ClientHello's wait
/// included.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(60);

/// The largest TLS record (RFC 8446 §5.1: a plaintext fragment is at most 2^14 bytes).
const MAX_TLS_RECORD: usize = 16384;

/// The largest ClientHello accepted, however many records it spans. Browsers send about 2 KiB,
/// a post-quantum key share included; one eight times larger is only a way to hold memory.
const MAX_CLIENT_HELLO: usize = 16384;

/// Connections admitted and waiting for their ClientHello.
static AWAITING_HELLO: AtomicUsize = AtomicUsize::new(0);

/// Counts one connection in [`AWAITING_HELLO`] until dropped.
struct AwaitingHello;

impl AwaitingHello {
    fn new() -> Self {
        AWAITING_HELLO.fetch_add(1, Ordering::AcqRel);
        AwaitingHello
    }
}

impl Drop for AwaitingHello {
    fn drop(&mut self) {
        AWAITING_HELLO.fetch_sub(1, Ordering::AcqRel);
    }
}

type Handshakes = Mutex<HashMap<UniqueIDType, Handshake>>;

fn handshaking() -> std::sync::MutexGuard<'static, HashMap<UniqueIDType, Handshake>> {
    lock(&HANDSHAKING)
}

fn lock(handshakes: &Handshakes) -> std::sync::MutexGuard<'_, HashMap<UniqueIDType, Handshake>> {
    handshakes.lock().unwrap_or_else(|e| e.into_inner())
}

impl OpenConnections {
    /// Connections admitted and in their TLS handshake: waiting for the ClientHello, or past it
    /// (or whose handshake failed there, until reaped or their descriptor is reused).
    pub fn handshaking(&self) -> usize {
        handshaking().len() + AWAITING_HELLO.load(Ordering::Acquire)
    }

    /// Forgets the admissions of handshakes that are over without reaching the proxy, and
    /// shuts down those past their deadline ([`reap`]).
    pub fn reap_handshakes(&self) {
        reap(&HANDSHAKING);
    }
}

/// Forgets the admissions of handshakes that are over without reaching the proxy: their
/// descriptor is closed or another socket's (the handshake failed), or they are older than
/// [`HANDSHAKE_LIMIT`] (Pingora gave up on them). Shuts down the connections of those still
/// under way past their `header_timeout` (OpenSSL then fails the handshake at once), which
/// would otherwise hold their memory for Pingora's 60 s. The descriptors are first looked at
/// outside the lock, which admissions take; one to be shut down is looked at again under it,
/// so that a descriptor closed and given to another socket meanwhile is not touched (a socket
/// with the client's address and port is the client's connection).
fn reap(handshakes: &Handshakes) {
    let entries: Vec<_> =
        lock(handshakes).iter().map(|(&fd, h)| (fd, h.since, h.peer, (!h.cut).then_some(h.deadline))).collect();
    let now = Instant::now();
    let (mut over, mut late) = (Vec::new(), Vec::new());
    for (fd, since, peer, deadline) in entries {
        if since.elapsed() >= HANDSHAKE_LIMIT || peer_of(fd) != Some(peer) {
            over.push((fd, since));
        } else if deadline.is_some_and(|deadline| now >= deadline) {
            late.push((fd, since, peer));
        }
    }
    if over.is_empty() && late.is_empty() {
        return;
    }
    let mut handshakes = lock(handshakes);
    for (fd, since) in over {
        // Unless a new connection took the descriptor meanwhile.
        if handshakes.get(&fd).is_some_and(|h| h.since == since) {
            handshakes.remove(&fd);
        }
    }
    for (fd, since, peer) in late {
        let Some(handshake) = handshakes.get_mut(&fd).filter(|h| h.since == since) else { continue };
        if peer_of(fd) == Some(peer) && nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both).is_ok() {
            handshake.cut = true;
            Rejection::HeaderTimeout.count();
        }
    }
}

/// Before a TLS handshake: the connection is admitted (so the limits count it from its first
/// moment, not after a handshake a client may drag out) and must send its whole ClientHello
/// within `header_timeout`; then OpenSSL gets the bytes, and the handshake must be done by the
/// same deadline. Only the framing is read here (record
/// headers and the handshake message's length, [`ClientHelloFraming`]): OpenSSL parses the rest.
pub struct TlsAdmission {
    runtime: SharedRuntime,
    limits: ConnectionLimits,
}

impl TlsAdmission {
    /// Admission to TLS listeners under `limits`.
    pub fn new(runtime: SharedRuntime, limits: ConnectionLimits) -> Self {
        TlsAdmission { runtime, limits }
    }
}

#[async_trait]
impl pingora::listeners::PreTlsProcess for TlsAdmission {
    async fn process(&self, stream: &mut pingora::protocols::l4::stream::Stream) -> pingora::Result<()> {
        use pingora::{Error, ErrorType};
        let id = stream.id();
        // A descriptor is given to a new connection only once the earlier one on it has closed:
        // an admission left there by a handshake that failed is released before this one counts.
        drop(handshaking().remove(&id));
        let client = client_of(stream.get_socket_digest(), &self.runtime);
        let admitted = OPEN.admit(client, &self.limits).map_err(|rejection| {
            rejection.count();
            Error::explain(ErrorType::AcceptError, rejection.label())
        })?;
        // Held by this future while the ClientHello arrives, so released with it however the
        // wait ends (Pingora's handshake limit drops the future if header_timeout is longer).
        let awaiting = AwaitingHello::new();
        let deadline = Instant::now() + self.limits.header_timeout;
        let read = read_client_hello(stream);
        let refused = match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(hello)) => {
                // No peer: the client is gone already.
                let Some(peer) = peer_of(id) else {
                    return Error::e_explain(ErrorType::HandshakeError, "closed after its ClientHello");
                };
                stream.rewind(&hello);
                // From here OpenSSL has the connection; the proxy takes the admission over.
                let handshake = Handshake { admitted, since: Instant::now(), peer, deadline, cut: false };
                handshaking().insert(id, handshake);
                drop(awaiting);
                return Ok(());
            }
            Ok(Err(HelloError::Closed)) => {
                return Error::e_explain(ErrorType::HandshakeError, "closed before its ClientHello")
            }
            Ok(Err(HelloError::Malformed)) => Rejection::BadClientHello,
            Err(_) => Rejection::HeaderTimeout,
        };
        refused.count();
        Error::e_explain(ErrorType::HandshakeError, refused.label())
    }
}

/// The address of the peer of the socket `fd`, `None` if it is not a connected socket.
fn peer_of(fd: UniqueIDType) -> Option<std::net::SocketAddr> {
    use nix::sys::socket::{getpeername, SockaddrStorage};
    // A closed descriptor fails with EBADF, a listening socket with ENOTCONN.
    let peer: SockaddrStorage = getpeername(fd).ok()?;
    match (peer.as_sockaddr_in(), peer.as_sockaddr_in6()) {
        (Some(v4), _) => Some(std::net::SocketAddr::V4((*v4).into())),
        (_, Some(v6)) => Some(std::net::SocketAddr::V6((*v6).into())),
        _ => None,
    }
}

/// Why no ClientHello was handed to OpenSSL.
#[derive(Debug, PartialEq, Eq)]
enum HelloError {
    /// The client closed (or reset) the connection first.
    Closed,
    /// Not a TLS ClientHello, or one larger than [`MAX_CLIENT_HELLO`].
    Malformed,
}

/// Reads TLS records until they hold a whole ClientHello, and returns the bytes read.
async fn read_client_hello(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, HelloError> {
    let mut bytes = Vec::with_capacity(512);
    let mut hello = ClientHelloFraming::default();
    loop {
        let record = bytes.len();
        bytes.resize(record + 5, 0);
        stream.read_exact(&mut bytes[record..]).await.map_err(|_| HelloError::Closed)?;
        let length = record_length(&bytes[record..]).ok_or(HelloError::Malformed)?;
        if record + 5 + length > MAX_HELLO_BYTES || !hello.may_take(length) {
            return Err(HelloError::Malformed);
        }
        // Read as it arrives: the buffer grows with what was sent, not with what was announced.
        let read = (&mut *stream).take(length as u64).read_to_end(&mut bytes).await;
        if read.map_err(|_| HelloError::Closed)? < length {
            return Err(HelloError::Closed);
        }
        if hello.add(&bytes[record + 5..])? {
            return Ok(bytes);
        }
    }
}

/// The most bytes read for a ClientHello, record headers included: room for one split over
/// records of a few bytes each, not for a client making its records as small as it can.
const MAX_HELLO_BYTES: usize = 2 * MAX_CLIENT_HELLO;

/// The length of the record whose 5-byte header is `header`, if it is a TLS handshake record
/// (content type 22, version 3.x) of a length a record may have.
fn record_length(header: &[u8]) -> Option<usize> {
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    (header[0] == 0x16 && header[1] == 3 && (1..=MAX_TLS_RECORD).contains(&length)).then_some(length)
}

/// Where a ClientHello is, record by record: the handshake message's 4-byte header (type 1 and
/// a 24-bit length, RFC 8446 §4) and how much of the message has arrived. A message may be
/// split over records, its header included.
#[derive(Default)]
struct ClientHelloFraming {
    header: [u8; 4],
    received: usize,
}

impl ClientHelloFraming {
    /// Whether a record of `length` bytes may come next: once the message's length is known,
    /// no longer than what is left of it (nothing else may share the ClientHello's records).
    fn may_take(&self, length: usize) -> bool {
        if self.received < 4 {
            return true;
        }
        let [_, high, mid, low] = self.header;
        let message = usize::from(high) << 16 | usize::from(mid) << 8 | usize::from(low);
        length <= (4 + message).saturating_sub(self.received)
    }

    /// Adds one record's fragment; whether the message is whole.
    fn add(&mut self, fragment: &[u8]) -> Result<bool, HelloError> {
        let had = self.received;
        self.received += fragment.len();
        if had < 4 {
            let header = &fragment[..(4 - had).min(fragment.len())];
            self.header[had..had + header.len()].copy_from_slice(header);
        }
        if self.received < 4 {
            return Ok(false);
        }
        let [kind, length @ ..] = self.header;
        let length = usize::from(length[0]) << 16 | usize::from(length[1]) << 8 | usize::from(length[2]);
        // Bytes past the message in its records: not a client's first flight.
        if kind != 1 || length > MAX_CLIENT_HELLO || self.received > 4 + length {
            return Err(HelloError::Malformed);
        }
        Ok(self.received == 4 + length)
    }
}

/// The address a connection counts under, `None` for a trusted proxy (every client behind
/// it shares its address) or an unknown peer.
fn client_of(digest: Option<Arc<SocketDigest>>, runtime: &SharedRuntime) -> Option<IpAddr> {
    let peer = digest.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    peer.filter(|ip| !runtime.load().trusted_proxies.contains(*ip)).map(client_key)
}

/// One admitted connection, counted until dropped.
struct Admitted {
    open: &'static OpenConnections,
    client: Option<IpAddr>,
}

thread_local! {
    /// Whether this worker thread already has a [`schedule_purge`] task waiting.
    static PURGE_PENDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// When a connection of this thread last closed.
    static LAST_CLOSE: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// How long after the last connection of a thread closed the thread makes the allocator look
/// again: mimalloc hands freed pages back to the system once they have been free for its purge
/// delay (1 s), at the thread's next page allocation or free. A gateway that goes quiet after
/// many clients left (10,000 keep-alive connections closing at once: 90 MiB) would otherwise
/// keep them until its next burst of traffic.
const PURGE_AFTER: Duration = Duration::from_millis(1100);

/// A fresh allocator page, allocated and freed at once: the allocator call that runs the purge.
const PURGE_PROBE: usize = 8 << 20;

/// On a thread whose connections close: once none has closed for [`PURGE_AFTER`], allocates
/// and frees one large block, never touched, so the allocator purges what they freed. At most
/// one task a thread waits for it.
fn schedule_purge() {
    LAST_CLOSE.with(|last| last.set(Some(Instant::now())));
    if PURGE_PENDING.with(|pending| pending.replace(true)) {
        return;
    }
    // Pingora's workers are one runtime per thread (work stealing is off): the task runs on
    // this thread, against this thread's heap.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        PURGE_PENDING.with(|pending| pending.set(false));
        return;
    };
    runtime.spawn(async {
        loop {
            let last = LAST_CLOSE.with(std::cell::Cell::get).unwrap_or_else(Instant::now);
            let due = last + PURGE_AFTER;
            if Instant::now() >= due {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        drop(std::hint::black_box(Vec::<u8>::with_capacity(PURGE_PROBE)));
        PURGE_PENDING.with(|pending| pending.set(false));
    });
}

impl Drop for Admitted {
    fn drop(&mut self) {
        schedule_purge();
        if let Some(ip) = self.client {
            let mut shard = self.open.shard(ip);
            if let Some(count) = shard.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    shard.remove(&ip);
                }
            }
        }
        self.open.release_total();
    }
}

/// The address a client's connections are counted under: IPv4 as is, IPv6 by its /64 (one
/// subscriber holds a whole /64, and could otherwise open connections from each address).
fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// A client connection, with the bytes read ahead of Pingora: they are served to Pingora's
/// reads before the socket's.
#[derive(Debug)]
pub struct ClientStream {
    inner: Stream,
    read_ahead: BytesMut,
}

/// How waiting for a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The buffer holds a whole head.
    Complete,
    /// The client closed, broke the connection, stayed idle past `idle_timeout`, or was idle
    /// when the gateway began to stop.
    Closed,
    /// Not complete within `header_timeout`.
    TimedOut,
    /// Larger than `max_header_size`.
    TooLarge,
}

impl ClientStream {
    /// Wraps a connection Pingora accepted.
    pub fn new(inner: Stream) -> Self {
        ClientStream { inner, read_ahead: BytesMut::new() }
    }

    /// Reads more of the client's bytes into the read-ahead buffer; 0 at the end.
    /// Never past `at_most` bytes in all: `reserve` may give more room than asked for.
    async fn read_more(&mut self, at_most: usize) -> std::io::Result<usize> {
        let left = at_most.saturating_sub(self.read_ahead.len()).max(1);
        let room = if self.read_ahead.is_empty() { HEAD_BUFFER } else { self.read_ahead.len() };
        self.read_ahead.reserve(room.min(left));
        let mut limited = tokio::io::AsyncReadExt::take(&mut self.inner, left as u64);
        limited.read_buf(&mut self.read_ahead).await
    }

    /// Gives a buffer a large head grew back, once Pingora has read all of it: an idle
    /// keep-alive connection keeps at most the usual head buffer.
    fn shrink(&mut self) {
        if self.read_ahead.is_empty() && self.read_ahead.capacity() > HEAD_BUFFER {
            self.read_ahead = BytesMut::new();
        }
    }

    /// Waits until the buffer holds a whole request head.
    ///
    /// `deadline`: when it must be complete (a new connection's first request). `None`: the
    /// connection is idle between requests: it may wait `idle_timeout` for a first byte (and is
    /// closed if the gateway stops meanwhile), then has `header_timeout` from that byte.
    async fn read_head(
        &mut self,
        limits: &ConnectionLimits,
        mut deadline: Option<Instant>,
        shutdown: &mut ShutdownWatch,
    ) -> Head {
        let mut scanned = 0;
        loop {
            if let Some(end) = head_end(&self.read_ahead, &mut scanned) {
                return if end > limits.max_header_size { Head::TooLarge } else { Head::Complete };
            }
            if self.read_ahead.len() >= limits.max_header_size {
                return Head::TooLarge;
            }
            let at_most = limits.max_header_size + 1;
            let read = match deadline {
                // Bytes of this head arrived: the clock started with the first of them.
                None if !self.read_ahead.is_empty() => {
                    let at = Instant::now() + limits.header_timeout;
                    deadline = Some(at);
                    Self::until(at, self.read_more(at_most)).await
                }
                Some(at) => Self::until(at, self.read_more(at_most)).await,
                None => {
                    let idle = tokio::time::timeout(limits.idle_timeout, self.read_more(at_most));
                    tokio::select! {
                        biased;
                        read = idle => read.ok(),
                        () = stopping(shutdown) => return Head::Closed,
                    }
                    .ok_or(Head::Closed)
                }
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
                Ok(Ok(_)) => {}
                Err(ended) => return ended,
            }
        }
    }

    /// `read` if it completes by `at`, else `Err(Head::TimedOut)`.
    async fn until<T>(at: Instant, read: impl std::future::Future<Output = T>) -> Result<T, Head> {
        tokio::time::timeout_at(at.into(), read).await.map_err(|_| Head::TimedOut)
    }

    /// For a listener that also speaks h2c: reads until the first bytes are, or cannot be, the
    /// HTTP/2 preface. `None` when the client closed or was too slow.
    async fn sniff_preface(&mut self, deadline: Instant) -> Option<bool> {
        loop {
            let have = self.read_ahead.len().min(H2_PREFACE.len());
            if self.read_ahead[..have] != H2_PREFACE[..have] {
                return Some(false);
            }
            if have == H2_PREFACE.len() {
                return Some(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_more(H2_PREFACE.len())).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Answers a connection whose head was refused (408, 431) and closes it; nothing waits on
    /// a client that does not read.
    async fn refuse(
        mut self: Box<Self>,
        error: GatewayError,
        request_id: (&http::HeaderName, HeaderValue),
        hsts: Option<&HeaderValue>,
    ) {
        let Ok((mut resp, body)) = error.to_response(request_id.0, &request_id.1) else { return };
        if let Some(hsts) = hsts {
            let _ = resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        let _ = resp.insert_header(http::header::CONNECTION, HeaderValue::from_static("close"));
        let mut wire = Vec::with_capacity(256 + body.len());
        let reason = resp.status.canonical_reason().unwrap_or("");
        wire.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", resp.status.as_u16()).as_bytes());
        resp.header_to_h1_wire(&mut wire);
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&body);
        let written = async {
            self.inner.write_all(&wire).await?;
            self.inner.flush().await
        };
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, written).await;
        let _ = tokio::time::timeout(ANSWER_TIMEOUT, Shutdown::shutdown(&mut *self.inner)).await;
    }
}

/// Returns once the gateway has begun to stop.
async fn stopping(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Where the request head in `buf` ends, as Pingora's parser (httparse) frames one: empty lines
/// before the request line are skipped, and the head ends at the first line ending followed by
/// an empty line (`\n\r\n` or `\n\n`). `scanned` carries how far earlier calls looked, so a
/// head arriving in pieces is scanned once.
fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let from = (*scanned).max(start);
    for i in memchr::memchr_iter(b'\n', &buf[from..]).map(|i| from + i) {
        match &buf[i + 1..] {
            [b'\n', ..] => return Some(i + 2),
            [b'\r', b'\n', ..] => return Some(i + 3),
            // The line ending may still be on its way: look at this `\n` again next time.
            [] | [b'\r'] => {
                *scanned = i;
                return None;
            }
            _ => {}
        }
    }
    *scanned = buf.len();
    None
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read_ahead.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.read_ahead.len().min(buf.remaining());
        buf.put_slice(&this.read_ahead[..n]);
        // Once all is read, the next head reuses the buffer from its start.
        this.read_ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for ClientStream {
    /// Pingora peeks for the h2c preface; the bytes are in the read-ahead buffer by then.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        while self.read_ahead.len() < buf.len() {
            if self.read_more(buf.len()).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.copy_from_slice(&self.read_ahead[..buf.len()]);
        Ok(true)
    }
}

/// The proxy as served on one group of listeners: each connection is admitted and its request
/// heads read here, then handed to Pingora's HTTP server.
pub struct ClientConnections {
    proxy: Arc<HttpProxy<Gateway>>,
    runtime: SharedRuntime,
    limits: ConnectionLimits,
    /// `idle_timeout` in Pingora's unit, whole seconds (at least 1).
    idle_seconds: u64,
    /// Whether these listeners accept HTTP/2 with prior knowledge.
    h2c: bool,
    /// `Strict-Transport-Security` of these listeners, for the answers written here.
    hsts: Option<HeaderValue>,
    active: IntGauge,
    accepted: IntCounter,
}

impl ClientConnections {
    /// The connections of the listeners at `addresses`, served by `proxy`.
    pub fn new(
        proxy: HttpProxy<Gateway>,
        runtime: SharedRuntime,
        limits: ConnectionLimits,
        hsts: Option<HeaderValue>,
        addresses: &[String],
    ) -> Self {
        let label = addresses.join(",");
        for reason in Rejection::ALL {
            METRICS.connections_rejected.with_label_values(&[reason.label()]).inc_by(0);
        }
        let h2c = proxy.server_options.as_ref().is_some_and(|o| o.h2c);
        ClientConnections {
            proxy: Arc::new(proxy),
            runtime,
            idle_seconds: limits.idle_timeout.as_secs().max(1),
            limits,
            h2c,
            hsts,
            active: METRICS.connections_active.with_label_values(&[&label]),
            accepted: METRICS.connections.with_label_values(&[&label]),
        }
    }

    /// Counts the connection, or refuses it over a limit. A TLS connection was admitted before
    /// its handshake ([`TlsAdmission`]); any other takes the place of a stale entry left on its
    /// descriptor by a failed handshake.
    fn admit(&self, stream: &Stream) -> Result<Admitted, Rejection> {
        let earlier = handshaking().remove(&stream.id());
        match earlier {
            Some(handshake) if stream.get_ssl_digest().is_some() => Ok(handshake.admitted),
            stale => {
                drop(stale);
                OPEN.admit(client_of(stream.get_socket_digest(), &self.runtime), &self.limits)
            }
        }
    }

    /// Serves HTTP/1.x requests on `conn` until it closes: each head is read here, then the
    /// request goes to Pingora.
    async fn serve_http1(self: &Arc<Self>, mut conn: Box<ClientStream>, first_by: Instant, shutdown: &ShutdownWatch) {
        let mut watch = shutdown.clone();
        let mut deadline = Some(first_by);
        let mut persistent = None;
        loop {
            conn.shrink();
            match conn.read_head(&self.limits, deadline, &mut watch).await {
                Head::Complete => {}
                Head::Closed => return,
                Head::TimedOut if conn.read_ahead.is_empty() => return,
                Head::TimedOut => {
                    Rejection::HeaderTimeout.count();
                    return self.refuse(conn, GatewayError::RequestTimeout).await;
                }
                Head::TooLarge => {
                    Rejection::HeaderTooLarge.count();
                    let limit = self.limits.max_header_size as u64;
                    return self.refuse(conn, GatewayError::HeaderTooLarge { limit }).await;
                }
            }
            let mut session = ServerSession::new_http1(conn);
            if let Some(settings) = persistent.take() {
                pingora::apps::HttpPersistentSettings::apply_to_session(settings, &mut session);
            }
            session.set_keepalive(Some(self.idle_seconds));
            let Some(reused) = self.proxy.process_new_http(session, shutdown).await else { return };
            let (stream, settings) = reused.consume();
            conn = match stream.into_any().downcast::<ClientStream>() {
                Ok(conn) => conn,
                Err(_) => return,
            };
            persistent = settings;
            deadline = None;
        }
    }

    async fn refuse(&self, conn: Box<ClientStream>, error: GatewayError) {
        let header = self.runtime.load().request_id_header.clone();
        let id = crate::pipeline::request_id::generate();
        tracing::debug!(error = error.code(), request_id = ?id, "request head refused");
        conn.refuse(error, (&header, id), self.hsts.as_ref()).await;
    }
}

#[async_trait]
impl ServerApp for ClientConnections {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let first_by = Instant::now() + self.limits.header_timeout;
        let _admitted = match self.admit(&stream) {
            Ok(admitted) => admitted,
            Err(rejection) => {
                rejection.count();
                return None;
            }
        };
        struct Active<'a>(&'a IntGauge);
        impl Drop for Active<'_> {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.accepted.inc();
        self.active.inc();
        let _active = Active(&self.active);

        let mut conn = Box::new(ClientStream::new(stream));
        let h2 = match conn.selected_alpn_proto() {
            Some(ALPN::H2) => true,
            _ if self.h2c => conn.sniff_preface(first_by).await?,
            _ => false,
        };
        if !h2 {
            self.serve_http1(conn, first_by, shutdown).await;
            return None;
        }
        // The preface first, within header_timeout; then Pingora's HTTP/2 server.
        while conn.read_ahead.len() < H2_PREFACE.len() {
            let left = first_by.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, conn.read_more(H2_PREFACE.len())).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
        self.proxy.process_new(conn, shutdown).await
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_where_httparse_ends_them() {
        let end = |text: &[u8]| head_end(text, &mut 0);
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Some(27));
        assert_eq!(end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(end(b"GET / HTTP/1.1\nHost: a\n\n"), Some(24));
        assert_eq!(end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22), "leading empty lines are skipped");
        for partial in [&b""[..], b"\r\n\r\n", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"GET /\n"] {
            assert_eq!(end(partial), None, "{:?}", String::from_utf8_lossy(partial));
        }
        // Every way of splitting a head finds the same end.
        let head = b"\r\nGET /x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\nrest";
        for cut in 0..head.len() {
            let mut scanned = 0;
            let first = head_end(&head[..cut], &mut scanned);
            let found = first.or_else(|| head_end(head, &mut scanned));
            assert_eq!(found, Some(head.len() - 4), "split at {cut}");
        }
    }

    /// A TLS handshake record holding `fragment`.
    fn record(fragment: &[u8]) -> Vec<u8> {
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&u16::try_from(fragment.len()).unwrap().to_be_bytes());
        record.extend_from_slice(fragment);
        record
    }

    /// A ClientHello message of `body` bytes (its content is OpenSSL's to judge).
    fn client_hello(body: usize) -> Vec<u8> {
        let mut message = vec![1, (body >> 16) as u8, (body >> 8) as u8, body as u8];
        message.resize(4 + body, 0xab);
        message
    }

    fn limits(max_connections: usize, max_connections_per_client: usize) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_header_size: 1024,
            max_connections,
            max_connections_per_client,
        }
    }

    /// A connected pair of sockets: the accepted end and the client.
    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn handshakes_are_forgotten_once_over_and_shut_down_once_late() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        static COUNTS: Lazy<OpenConnections> = Lazy::new(OpenConnections::new);
        let limits = limits(10, 10);
        let handshakes: Handshakes = Mutex::new(HashMap::new());
        let add = |server: &std::net::TcpStream, peer, deadline| {
            let admitted = COUNTS.admit(None, &limits).unwrap();
            let handshake = Handshake { admitted, since: Instant::now(), peer, deadline, cut: false };
            lock(&handshakes).insert(server.as_raw_fd(), handshake);
        };
        let later = Instant::now() + Duration::from_secs(30);
        // Under way: kept. Closed (the handshake failed): forgotten, its admission released.
        let (under_way, _client) = socket_pair();
        add(&under_way, under_way.peer_addr().unwrap(), later);
        let (failed, _gone) = socket_pair();
        add(&failed, failed.peer_addr().unwrap(), later);
        drop(failed);
        reap(&handshakes);
        assert_eq!(lock(&handshakes).len(), 1);
        assert_eq!(COUNTS.total(), 1);
        // Past its deadline: shut down (the client reads the end), counted once, then forgotten
        // once closed.
        let timeouts = || METRICS.connections_rejected.with_label_values(&["header_timeout"]).get();
        let before = timeouts();
        let (late, mut late_client) = socket_pair();
        add(&late, late.peer_addr().unwrap(), Instant::now());
        reap(&handshakes);
        reap(&handshakes);
        late_client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(late_client.read(&mut [0u8; 8]).unwrap(), 0, "shut down");
        assert_eq!(timeouts() - before, 1);
        assert_eq!(lock(&handshakes).len(), 2);
        drop(late);
        reap(&handshakes);
        assert_eq!(lock(&handshakes).len(), 1);
        // A descriptor that is now another socket's (its peer is not the client): forgotten,
        // never shut down.
        let (other, mut other_client) = socket_pair();
        let stranger = "192.0.2.1:4444".parse().unwrap();
        add(&other, stranger, Instant::now());
        reap(&handshakes);
        assert_eq!(lock(&handshakes).len(), 1);
        other_client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(other_client.read(&mut [0u8; 8]).is_err(), "still open: nothing to read, no end");
        drop(under_way);
        reap(&handshakes);
        assert!(lock(&handshakes).is_empty());
        assert_eq!(COUNTS.total(), 0);
    }

    async fn read_hello(bytes: &[u8]) -> Result<Vec<u8>, HelloError> {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let bytes = bytes.to_vec();
        // The reader may stop early: the writer's errors are not the test's.
        tokio::spawn(async move { client.write_all(&bytes).await });
        read_client_hello(&mut server).await
    }

    #[tokio::test]
    async fn a_client_hello_is_read_whole_however_its_records_split_it() {
        let hello = client_hello(600);
        let one = record(&hello);
        assert_eq!(read_hello(&one).await.unwrap(), one);
        // Split over records, the message header itself included, with what follows left unread.
        for cut in [1, 2, 3, 4, 5, 300, 603] {
            let mut two = record(&hello[..cut]);
            two.extend(record(&hello[cut..]));
            let mut sent = two.clone();
            sent.extend_from_slice(b"\x14\x03\x03");
            assert_eq!(read_hello(&sent).await.unwrap(), two, "split at {cut}");
        }
        let mut byte_by_byte = Vec::new();
        for b in &hello[..10] {
            byte_by_byte.extend(record(&[*b]));
        }
        byte_by_byte.extend(record(&hello[10..]));
        assert_eq!(read_hello(&byte_by_byte).await.unwrap(), byte_by_byte);
        // The largest accepted: it takes two records.
        let largest = client_hello(MAX_CLIENT_HELLO);
        let mut two = record(&largest[..MAX_TLS_RECORD]);
        two.extend(record(&largest[MAX_TLS_RECORD..]));
        assert_eq!(read_hello(&two).await.unwrap(), two);
    }

    #[tokio::test]
    async fn what_is_not_a_client_hello_is_refused_without_waiting_for_more() {
        let refused = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            vec![0x80, 0x2e, 0x01, 0x03, 0x01],               // SSLv2-style hello
            vec![0x17, 0x03, 0x03, 0x00, 0x10],               // application data first
            vec![0x16, 0x02, 0x00, 0x00, 0x10],               // not version 3.x
            vec![0x16, 0x03, 0x01, 0x00, 0x00],               // an empty record
            vec![0x16, 0x03, 0x01, 0x40, 0x01],               // a record over 2^14 bytes
            record(&[2, 0, 0, 4, 0, 0, 0, 0]),                // a ServerHello
            record(&[1, 0x00, 0x40, 0x01]),                   // a ClientHello over 16 KiB
            record(&[client_hello(10), vec![0x14]].concat()), // more than the message
            [record(&client_hello(10)[..6]), record(&[0xab; 9])].concat(), // a record past its end
        ];
        for bytes in refused {
            assert_eq!(read_hello(&bytes).await.err(), Some(HelloError::Malformed), "{bytes:02x?}");
        }
        // Records of one byte each: refused once they hold twice MAX_CLIENT_HELLO.
        let hello = client_hello(MAX_CLIENT_HELLO - 4);
        let tiny: Vec<u8> = hello.iter().flat_map(|b| record(&[*b])).collect();
        assert_eq!(read_hello(&tiny).await.err(), Some(HelloError::Malformed));
        // Cut short: the client closed.
        for cut in [0, 3, 5, 100] {
            assert_eq!(read_hello(&record(&client_hello(600))[..cut]).await.err(), Some(HelloError::Closed));
        }
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        assert_eq!(client_key("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn limits_are_counted_and_released() {
        static COUNTS: Lazy<OpenConnections> = Lazy::new(OpenConnections::new);
        let limits = limits(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = COUNTS.admit(Some(a), &limits).unwrap();
        let second = COUNTS.admit(Some(a), &limits).unwrap();
        assert_eq!(COUNTS.admit(Some(a), &limits).err(), Some(Rejection::MaxConnectionsPerClient));
        let third = COUNTS.admit(Some(b), &limits).unwrap();
        assert_eq!(COUNTS.admit(None, &limits).err(), Some(Rejection::MaxConnections));
        assert_eq!(COUNTS.total(), 3);
        drop(first);
        let again = COUNTS.admit(Some(a), &limits).unwrap();
        drop((second, third, again));
        assert_eq!(COUNTS.total(), 0);
        assert!(COUNTS.per_client.iter().all(|s| s.lock().unwrap().is_empty()), "no address is kept once gone");
    }

    #[test]
    fn a_buffer_a_large_head_grew_is_given_back_once_read() {
        let (_client, server) = tokio::io::duplex(64);
        let mut stream = ClientStream::new(Box::new(server));
        stream.read_ahead.reserve(64 * 1024);
        stream.shrink();
        assert_eq!(stream.read_ahead.capacity(), 0);
        stream.read_ahead.reserve(HEAD_BUFFER);
        let kept = stream.read_ahead.capacity();
        stream.shrink();
        assert_eq!(stream.read_ahead.capacity(), kept, "the usual buffer is kept for the next head");
    }

    #[tokio::test]
    async fn a_head_is_buffered_for_pingora_and_timeouts_apply() {
        use tokio::io::AsyncWriteExt as _;
        let limits = ConnectionLimits {
            header_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            max_header_size: 64,
            max_connections: 10,
            max_connections_per_client: 10,
        };
        let (_stop, mut shutdown) = tokio::sync::watch::channel(false);
        let conn = |client: tokio::io::DuplexStream| ClientStream::new(Box::new(client));

        // A head in two pieces: complete, and read back byte for byte with what followed it.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut stream = conn(server);
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"st: a\r\n\r\nbody").await.unwrap();
            client
        });
        let deadline = Some(Instant::now() + limits.header_timeout);
        assert_eq!(stream.read_head(&limits, deadline, &mut shutdown).await, Head::Complete);
        let _client = writer.await.unwrap();
        let mut seen = vec![0u8; 31];
        stream.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody");

        // A head that never ends: timed out at the deadline.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut stream = conn(server);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        let deadline = Some(started + limits.header_timeout);
        assert_eq!(stream.read_head(&limits, deadline, &mut shutdown).await, Head::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(190));

        // Too large.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut stream = conn(server);
        client.write_all(&[b'a'; 100]).await.unwrap();
        assert_eq!(
            stream.read_head(&limits, Some(Instant::now() + limits.header_timeout), &mut shutdown).await,
            Head::TooLarge
        );

        // Idle: closed after idle_timeout; at once when the gateway stops.
        let (_client, server) = tokio::io::duplex(1024);
        let mut stream = conn(server);
        assert_eq!(stream.read_head(&limits, None, &mut shutdown).await, Head::Closed);
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let (_client, server) = tokio::io::duplex(1024);
        let mut stream = conn(server);
        stop.send(true).unwrap();
        let started = Instant::now();
        assert_eq!(stream.read_head(&limits, None, &mut stopping).await, Head::Closed);
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
