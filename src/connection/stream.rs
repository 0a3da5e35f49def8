//! The client stream the gateway hands Pingora: the request head read into a buffer of its own
//! first (within `header_timeout` and `max_header_size`), idle keep-alive connections closed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use http::HeaderValue;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::server::ConnectionLimits;
use crate::error::GatewayError;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The buffer a request head is first read into: most heads, a bearer token included, fit.
pub(super) const HEAD_BUFFER: usize = 2048;

// Timeouts here are tokio's, not Pingora's faster shared ones: a Pingora timer outlives the
// future that armed it until its deadline, and those left by closed idle connections kept the
// allocator from handing their pages back (measured: 90 MiB held for `idle_timeout` after
// 10,000 keep-alive connections closed).

/// How long a 408 or 431 answer may take to write before the connection is dropped anyway.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// A client connection, with the bytes read ahead of Pingora: they are served to Pingora's
/// reads before the socket's.
#[derive(Debug)]
pub struct ClientStream {
    pub(super) inner: Stream,
    pub(super) read_ahead: BytesMut,
}

/// How waiting for a request head ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
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
    pub(super) async fn read_more(&mut self, at_most: usize) -> std::io::Result<usize> {
        let left = at_most.saturating_sub(self.read_ahead.len()).max(1);
        let room = if self.read_ahead.is_empty() { HEAD_BUFFER } else { self.read_ahead.len() };
        self.read_ahead.reserve(room.min(left));
        let mut limited = tokio::io::AsyncReadExt::take(&mut self.inner, left as u64);
        limited.read_buf(&mut self.read_ahead).await
    }

    /// Gives a buffer a large head grew back, once Pingora has read all of it: an idle
    /// keep-alive connection keeps at most the usual head buffer.
    pub(super) fn shrink(&mut self) {
        if self.read_ahead.is_empty() && self.read_ahead.capacity() > HEAD_BUFFER {
            self.read_ahead = BytesMut::new();
        }
    }

    /// Waits until the buffer holds a whole request head.
    ///
    /// `deadline`: when it must be complete (a new connection's first request). `None`: the
    /// connection is idle between requests: it may wait `idle_timeout` for a first byte (and is
    /// closed if the gateway stops meanwhile), then has `header_timeout` from that byte.
    pub(super) async fn read_head(
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
    pub(super) async fn until<T>(at: Instant, read: impl std::future::Future<Output = T>) -> Result<T, Head> {
        tokio::time::timeout_at(at.into(), read).await.map_err(|_| Head::TimedOut)
    }

    /// For a listener that also speaks h2c: reads until the first bytes are, or cannot be, the
    /// HTTP/2 preface. `None` when the client closed or was too slow.
    pub(super) async fn sniff_preface(&mut self, deadline: Instant) -> Option<bool> {
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
    pub(super) async fn refuse(
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
pub(super) async fn stopping(shutdown: &mut ShutdownWatch) {
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
pub(super) fn head_end(buf: &[u8], scanned: &mut usize) -> Option<usize> {
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
