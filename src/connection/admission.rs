//! Admission: the connections open in this process and from each client address, and the
//! guard that counts one while it lives (and gives its memory back to the OS once many close).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::protocols::SocketDigest;
use std::sync::LazyLock;
use tokio::sync::Notify;

use super::rejection::Rejection;
use crate::config::server::ConnectionLimits;
use crate::gateway::SharedRuntime;
use crate::pipeline::client::canonical;

/// Shards of the per-client counts: one short lock per connection, spread over these.
pub(super) const CLIENT_SHARDS: usize = 16;

/// The client connections open in this process: in total, and per client address.
pub struct OpenConnections {
    pub(super) total: AtomicUsize,
    pub(super) per_client: [Mutex<HashMap<IpAddr, usize>>; CLIENT_SHARDS],
    /// Woken when the last connection closes.
    pub(super) none_left: Notify,
}

/// The process-wide counts: connections of every listener share the limits.
pub static OPEN: LazyLock<OpenConnections> = LazyLock::new(OpenConnections::new);

impl OpenConnections {
    pub(super) fn new() -> Self {
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
    pub(super) fn admit(
        &'static self,
        client: Option<IpAddr>,
        limits: &ConnectionLimits,
    ) -> Result<Admitted, Rejection> {
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

    pub(super) fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let index = match ip {
            IpAddr::V4(v4) => v4.octets().iter().fold(0usize, |h, &b| h.wrapping_mul(31).wrapping_add(b.into())),
            IpAddr::V6(v6) => v6.octets().iter().fold(0usize, |h, &b| h.wrapping_mul(31).wrapping_add(b.into())),
        } % CLIENT_SHARDS;
        // A poisoned shard only means another thread panicked mid-update of a counter.
        self.per_client[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn release_total(&self) {
        if self.total.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.none_left.notify_waiters();
        }
    }
}

/// The address a connection counts under, `None` for a trusted proxy (every client behind
/// it shares its address) or an unknown peer.
pub(super) fn client_of(digest: Option<Arc<SocketDigest>>, runtime: &SharedRuntime) -> Option<IpAddr> {
    let peer = digest.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
    peer.filter(|ip| !runtime.load().trusted_proxies.contains(*ip)).map(client_key)
}

/// One admitted connection, counted until dropped.
pub(super) struct Admitted {
    pub(super) open: &'static OpenConnections,
    pub(super) client: Option<IpAddr>,
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
pub(super) const PURGE_AFTER: Duration = Duration::from_millis(1100);

/// A fresh allocator page, allocated and freed at once: the allocator call that runs the purge.
pub(super) const PURGE_PROBE: usize = 8 << 20;

/// On a thread whose connections close: once none has closed for [`PURGE_AFTER`], allocates
/// and frees one large block, never touched, so the allocator purges what they freed. At most
/// one task a thread waits for it.
pub(super) fn schedule_purge() {
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
pub(super) fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}
