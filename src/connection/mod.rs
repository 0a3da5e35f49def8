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

mod admission;
mod handshake;
mod rejection;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Ssl, Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};

use crate::config::server::ConnectionLimits;
use crate::error::GatewayError;
use crate::gateway::{Gateway, SharedRuntime};
use crate::metrics::METRICS;
use admission::{client_of, Admitted};
use handshake::handshaking;
use rejection::Rejection;
use stream::{ClientStream, Head, H2_PREFACE};

pub(crate) use admission::OPEN;
pub use handshake::TlsAdmission;

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
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use std::sync::LazyLock;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::admission::*;
    use super::handshake::*;
    use super::rejection::*;
    use super::stream::*;
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
        static COUNTS: LazyLock<OpenConnections> = LazyLock::new(OpenConnections::new);
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
        static COUNTS: LazyLock<OpenConnections> = LazyLock::new(OpenConnections::new);
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
