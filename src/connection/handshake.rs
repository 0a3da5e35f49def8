//! TLS connections before and during their handshake: admitted before it, the ClientHello
//! read whole within `header_timeout`, and the handshakes still open after it shut down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::protocols::{GetSocketDigest, UniqueID, UniqueIDType};
use std::sync::LazyLock;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::admission::{client_of, Admitted, OpenConnections, OPEN};
use super::rejection::Rejection;
use crate::config::server::ConnectionLimits;
use crate::gateway::SharedRuntime;

pub(super) fn lock(handshakes: &Handshakes) -> std::sync::MutexGuard<'_, HashMap<UniqueIDType, Handshake>> {
    handshakes.lock().unwrap_or_else(|e| e.into_inner())
}

/// TLS connections past their ClientHello, in OpenSSL's handshake, by descriptor, until the
/// proxy takes them ([`ClientConnections`] finds a connection's admission here by its
/// descriptor). A handshake that fails leaves its entry behind, with no way here to see it
/// fail: the next connection given the same descriptor replaces it, and
/// [`OpenConnections::reap_handshakes`] drops it once its descriptor is no longer the client's
/// socket.
pub(super) static HANDSHAKING: LazyLock<Mutex<HashMap<UniqueIDType, Handshake>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// One connection in its TLS handshake.
pub(super) struct Handshake {
    pub(super) admitted: Admitted,
    pub(super) since: Instant,
    /// The client's address, to tell whether the descriptor is still its connection.
    pub(super) peer: std::net::SocketAddr,
    /// `header_timeout` after the connection was accepted: the handshake must be done by then.
    pub(super) deadline: Instant,
    /// Whether the connection was shut down for missing it.
    pub(super) cut: bool,
}

/// Pingora allows a TLS handshake this long (fixed in its accept loop), the ClientHello's wait
/// included.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(60);

/// The largest TLS record (RFC 8446 §5.1: a plaintext fragment is at most 2^14 bytes).
pub(super) const MAX_TLS_RECORD: usize = 16384;

/// The largest ClientHello accepted, however many records it spans. Browsers send about 2 KiB,
/// a post-quantum key share included; one eight times larger is only a way to hold memory.
pub(super) const MAX_CLIENT_HELLO: usize = 16384;

/// Connections admitted and waiting for their ClientHello.
pub(super) static AWAITING_HELLO: AtomicUsize = AtomicUsize::new(0);

/// Counts one connection in [`AWAITING_HELLO`] until dropped.
pub(super) struct AwaitingHello;

impl AwaitingHello {
    pub(super) fn new() -> Self {
        AWAITING_HELLO.fetch_add(1, Ordering::AcqRel);
        AwaitingHello
    }
}

impl Drop for AwaitingHello {
    fn drop(&mut self) {
        AWAITING_HELLO.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) type Handshakes = Mutex<HashMap<UniqueIDType, Handshake>>;

pub(super) fn handshaking() -> std::sync::MutexGuard<'static, HashMap<UniqueIDType, Handshake>> {
    lock(&HANDSHAKING)
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
pub(super) fn reap(handshakes: &Handshakes) {
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
    pub(super) runtime: SharedRuntime,
    pub(super) limits: ConnectionLimits,
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
pub(super) fn peer_of(fd: UniqueIDType) -> Option<std::net::SocketAddr> {
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
pub(super) enum HelloError {
    /// The client closed (or reset) the connection first.
    Closed,
    /// Not a TLS ClientHello, or one larger than [`MAX_CLIENT_HELLO`].
    Malformed,
}

/// Reads TLS records until they hold a whole ClientHello, and returns the bytes read.
pub(super) async fn read_client_hello(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, HelloError> {
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
pub(super) const MAX_HELLO_BYTES: usize = 2 * MAX_CLIENT_HELLO;

/// The length of the record whose 5-byte header is `header`, if it is a TLS handshake record
/// (content type 22, version 3.x) of a length a record may have.
pub(super) fn record_length(header: &[u8]) -> Option<usize> {
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    (header[0] == 0x16 && header[1] == 3 && (1..=MAX_TLS_RECORD).contains(&length)).then_some(length)
}

/// Where a ClientHello is, record by record: the handshake message's 4-byte header (type 1 and
/// a 24-bit length, RFC 8446 §4) and how much of the message has arrived. A message may be
/// split over records, its header included.
#[derive(Default)]
pub(super) struct ClientHelloFraming {
    pub(super) header: [u8; 4],
    pub(super) received: usize,
}

impl ClientHelloFraming {
    /// Whether a record of `length` bytes may come next: once the message's length is known,
    /// no longer than what is left of it (nothing else may share the ClientHello's records).
    pub(super) fn may_take(&self, length: usize) -> bool {
        if self.received < 4 {
            return true;
        }
        let [_, high, mid, low] = self.header;
        let message = usize::from(high) << 16 | usize::from(mid) << 8 | usize::from(low);
        length <= (4 + message).saturating_sub(self.received)
    }

    /// Adds one record's fragment; whether the message is whole.
    pub(super) fn add(&mut self, fragment: &[u8]) -> Result<bool, HelloError> {
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
