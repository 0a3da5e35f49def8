//! Lines of the error log that any client can cause, one per connection: held to one a second.
//!
//! Pingora writes an ERROR line for every TLS handshake that fails, whoever's fault it is: a
//! client that sends plain HTTP to a TLS port, a scanner, a connection refused over a limit
//! before its handshake. A client could make the gateway write as many lines as it opens
//! connections. The first of them each second is written, to say it is happening; the rest
//! are counted in `portcullis_log_lines_dropped_total{log="error",reason="rate_limited"}`
//! (the connections themselves are counted in `portcullis_connections_rejected_total`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use once_cell::sync::Lazy;
use tracing::Metadata;

use crate::metrics::METRICS;

/// The log targets whose lines a client causes: Pingora's accept and handshake loop.
const TARGETS: &[&str] = &["pingora_core::services::listening"];

/// When the clock of [`LAST_WRITTEN`] starts.
static START: Lazy<Instant> = Lazy::new(Instant::now);

/// The second (since [`START`], from 1) in which the last client-caused line was written.
static LAST_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Whether a line with `meta` is written: every line but client-caused ones past the first of
/// their second. For `tracing_subscriber::filter::filter_fn`.
pub fn allow(meta: &Metadata<'_>) -> bool {
    if !TARGETS.iter().any(|target| meta.target().starts_with(target)) {
        return true;
    }
    let second = START.elapsed().as_secs() + 1;
    let last = LAST_WRITTEN.load(Ordering::Relaxed);
    if second > last && LAST_WRITTEN.compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        return true;
    }
    METRICS.log_lines_dropped.with_label_values(&["error", "rate_limited"]).inc();
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(target: &'static str) -> &'static Metadata<'static> {
        struct Callsite;
        impl tracing::callsite::Callsite for Callsite {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CALLSITE: Callsite = Callsite;
        let meta = Metadata::new(
            "event",
            target,
            tracing::Level::ERROR,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        Box::leak(Box::new(meta))
    }

    #[test]
    fn one_client_caused_line_a_second_and_every_other_line() {
        let handshake = metadata("pingora_core::services::listening");
        let ours = metadata("portcullis::reload");
        let dropped = METRICS.log_lines_dropped.with_label_values(&["error", "rate_limited"]);
        let before = dropped.get();
        let written = (0..1000).filter(|_| allow(handshake)).count();
        assert!((1..=2).contains(&written), "{written} written"); // 2 if a second began meanwhile
        assert_eq!(dropped.get() - before, 1000 - written as u64);
        assert!((0..100).all(|_| allow(ours)));
    }
}
