//! The counts of one policy's window: exact in a sharded table for the first [`EXACT_KEYS`] keys
//! of a window, then in a count-min sketch, so memory is fixed whatever the number of clients.
//! Keys arrive already hashed (a per-process SipHash of the client, identity or header), so the
//! table does not hash them again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use nohash_hasher::BuildNoHashHasher;
use pingora_limits::estimator::Estimator;

/// Keys counted exactly per policy and window; later keys go to the sketch.
pub const EXACT_KEYS: usize = 131_072;

/// Shards of the exact table: requests for different keys rarely wait on the same lock.
pub(super) const SHARDS: usize = 32;

/// Rows of the count-min sketch (each an independent hash).
pub(super) const SKETCH_HASHES: usize = 4;

/// Counters per sketch row.
pub(super) const SKETCH_SLOTS: usize = 16_384;

/// The counts of one window: exact for the first [`EXACT_KEYS`] keys, then a sketch.
///
/// A request whose clock read falls in a window that has already been replaced (a race of
/// microseconds at the boundary) is let through uncounted: nothing older than the current window
/// is kept to count it in.
pub(super) struct WindowCounter {
    pub(super) shards: Box<[Mutex<Shard>]>,
    /// The sketch of the newest window that overflowed the exact table; made (zeroed) before it
    /// is published, so no request ever counts into a sketch being cleared, and never reused.
    pub(super) sketch: ArcSwapOption<Sketch>,
    /// Held while a new window's sketch is made, so it is made once.
    pub(super) rotating: Mutex<()>,
}

/// Part of the exact table. Keys are already SipHash values: hash them no further.
pub(super) struct Shard {
    pub(super) window: u64,
    pub(super) counts: HashMap<u64, u32, BuildNoHashHasher<u64>>,
}

/// The count-min sketch of one window.
pub(super) struct Sketch {
    pub(super) window: u64,
    pub(super) counts: Estimator,
    /// Requests counted in it: the mean count per slot is the noise any estimate may carry.
    pub(super) total: AtomicU64,
}

impl Sketch {
    /// The estimate for `key`, less the mean collision noise per slot. A count-min estimate
    /// never under-counts; taking the noise off keeps a flood of other keys from pushing
    /// clients that made few requests over their limit, while a key's own requests still
    /// count in full, so no key gets more than its limit plus that noise.
    pub(super) fn estimate(&self, raw: isize) -> u64 {
        let noise = self.total.load(Ordering::Relaxed) / SKETCH_SLOTS as u64;
        (raw.max(0) as u64).saturating_sub(noise)
    }
}

/// Where [`WindowCounter::try_acquire`] counted a request, so it can be taken back exactly.
#[derive(Clone)]
pub(super) enum Counted {
    /// In the exact table, in this window.
    Exact(u64),
    /// In this sketch.
    Sketch(Arc<Sketch>),
    /// Not at all (a request from a window already replaced).
    Nowhere,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Counted::Exact(window) => write!(f, "Exact({window})"),
            Counted::Sketch(s) => write!(f, "Sketch({})", s.window),
            Counted::Nowhere => f.write_str("Nowhere"),
        }
    }
}

impl std::fmt::Debug for WindowCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowCounter").finish_non_exhaustive()
    }
}

impl Default for WindowCounter {
    fn default() -> Self {
        WindowCounter::new()
    }
}

/// Where [`WindowCounter::shard`] found a key's window.
pub(super) enum Slot<'a> {
    /// The shard counts this window.
    Current(std::sync::MutexGuard<'a, Shard>),
    /// The window has been replaced by a newer one.
    Gone,
}

impl WindowCounter {
    pub(super) fn new() -> Self {
        WindowCounter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard { window: 0, counts: HashMap::default() })).collect(),
            sketch: ArcSwapOption::empty(),
            rotating: Mutex::new(()),
        }
    }

    /// The shard of `key`, moved on to `window` first if it holds an older one.
    pub(super) fn shard(&self, key: u64, window: u64) -> Slot<'_> {
        // hashbrown takes a key's bucket from its low bits and its tag from its top 7: pick the
        // shard from bits in between, so each shard's map still sees well-spread keys.
        let mut shard = self.shards[(key >> 32) as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner());
        if window > shard.window {
            shard.window = window;
            shard.counts.clear();
        }
        if window == shard.window {
            Slot::Current(shard)
        } else {
            Slot::Gone
        }
    }

    /// The sketch of `window`, made if this is the first overflow in it; `None` when the
    /// window has been replaced.
    pub(super) fn sketch(&self, window: u64) -> Option<Arc<Sketch>> {
        match &*self.sketch.load() {
            Some(current) if current.window == window => return Some(current.clone()),
            Some(current) if current.window > window => return None,
            _ => {}
        }
        // Made (and zeroed) outside the lock; published only whole, and only once.
        let made =
            Arc::new(Sketch { window, counts: Estimator::new(SKETCH_HASHES, SKETCH_SLOTS), total: AtomicU64::new(0) });
        let _publishing = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        match &*self.sketch.load() {
            Some(current) if current.window == window => Some(current.clone()),
            Some(current) if current.window > window => None,
            _ => {
                self.sketch.store(Some(made.clone()));
                Some(made)
            }
        }
    }

    /// Counts one request if fewer than `limit` were counted in `window`: the count after it,
    /// and where it was counted.
    pub(super) fn try_acquire(&self, key: u64, window: u64, limit: u64) -> Result<(u64, Counted), ()> {
        let Slot::Current(mut shard) = self.shard(key, window) else { return Ok((1, Counted::Nowhere)) };
        let len = shard.counts.len();
        match shard.counts.get_mut(&key) {
            Some(count) if u64::from(*count) >= limit => return Err(()),
            Some(count) => {
                *count += 1;
                return Ok((u64::from(*count), Counted::Exact(window)));
            }
            None if len < EXACT_KEYS / SHARDS => {
                shard.counts.insert(key, 1);
                return Ok((1, Counted::Exact(window)));
            }
            None => {}
        }
        drop(shard);
        let Some(sketch) = self.sketch(window) else { return Ok((1, Counted::Nowhere)) };
        let raw = sketch.counts.incr(key, 1);
        sketch.total.fetch_add(1, Ordering::Relaxed);
        let count = sketch.estimate(raw);
        if count > limit {
            sketch.counts.decr(key, 1);
            sketch.total.fetch_sub(1, Ordering::Relaxed);
            return Err(());
        }
        Ok((count.max(1), Counted::Sketch(sketch)))
    }

    /// Takes back a request counted by [`Self::try_acquire`], where it was counted. Nothing
    /// happens once its window has closed.
    pub(super) fn release(&self, key: u64, counted: Counted) {
        match counted {
            Counted::Exact(window) => {
                if let Slot::Current(mut shard) = self.shard(key, window) {
                    if let Some(count) = shard.counts.get_mut(&key) {
                        *count = count.saturating_sub(1);
                    }
                }
            }
            Counted::Sketch(sketch) => {
                sketch.counts.decr(key, 1);
                sketch.total.fetch_sub(1, Ordering::Relaxed);
            }
            Counted::Nowhere => {}
        }
    }

    /// The count of `key` in `window` (for a sketched key, less the sketch's noise).
    pub(super) fn get(&self, key: u64, window: u64) -> u64 {
        let Slot::Current(shard) = self.shard(key, window) else { return 0 };
        if let Some(&count) = shard.counts.get(&key) {
            return u64::from(count);
        }
        drop(shard);
        match &*self.sketch.load() {
            Some(sketch) if sketch.window == window => sketch.estimate(sketch.counts.get(key)),
            _ => 0,
        }
    }
}
