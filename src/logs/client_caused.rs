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

use std::sync::LazyLock;
use tracing::{Event, Metadata};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Filter};

use crate::metrics::METRICS;

/// The log targets whose lines a client causes: Pingora's accept and handshake loop.
const TARGETS: &[&str] = &["pingora_core::services::listening"];

/// When the clock of [`WRITTEN`] starts.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The client-caused lines written.
static WRITTEN: OnePerSecond = OnePerSecond { last: AtomicU64::new(0) };

/// One line a second.
struct OnePerSecond {
    /// The second (since [`START`], from 1) in which the last line was written.
    last: AtomicU64,
}

impl OnePerSecond {
    /// Whether a line may be written in `second`: none was in it yet.
    fn take(&self, second: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        second > last && self.last.compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// The filter for the error log's layer. It decides per event (`event_enabled`, called once for
/// each), not per callsite (`enabled`, which tracing-log calls twice for each `log` record), and
/// reads a `log` record's own target, which tracing carries in a field.
pub struct ClientCaused;

impl<S> Filter<S> for ClientCaused {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let normalized = event.normalized_metadata();
        allow(normalized.as_ref().unwrap_or_else(|| event.metadata()).target())
    }
}

/// Whether a line from `target` is written: every line but client-caused ones past the first
/// of their second.
fn allow(target: &str) -> bool {
    if !TARGETS.iter().any(|t| target.starts_with(t)) {
        return true;
    }
    if WRITTEN.take(START.elapsed().as_secs() + 1) {
        return true;
    }
    METRICS.log_lines_dropped.with_label_values(&["error", "rate_limited"]).inc();
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second() {
        let limit = OnePerSecond { last: AtomicU64::new(0) };
        assert!(limit.take(1));
        assert!((0..100).all(|_| !limit.take(1)));
        assert!(limit.take(2) && !limit.take(2) && !limit.take(1));
        assert!(limit.take(7));
        assert!(allow("portcullis::reload") && allow("pingora_proxy"), "other lines are never held");
    }

    /// Through a real subscriber, with Pingora's records arriving from the `log` crate as they
    /// do in the gateway: one line a second, not none (tracing-log asks twice per record).
    #[test]
    fn pingora_s_log_records_are_held_to_one_a_second_through_the_subscriber() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let layer = tracing_subscriber::fmt::layer().with_writer(move || writer.clone()).with_filter(ClientCaused);
        let subscriber = tracing_subscriber::registry().with(layer);
        let logger = tracing_log::LogTracer::new();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                let record = log::Record::builder()
                    .level(log::Level::Error)
                    .target("pingora_core::services::listening")
                    .args(format_args!("Downstream handshake error"))
                    .build();
                log::Log::log(&logger, &record);
            }
            tracing::error!(target: "portcullis::reload", "ours");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let handshakes = text.matches("Downstream handshake error").count();
        assert!((1..=2).contains(&handshakes), "{handshakes} written:\n{text}");
        assert!(text.contains("ours"));
        let dropped = METRICS.log_lines_dropped.with_label_values(&["error", "rate_limited"]).get();
        assert!(dropped >= 48, "{dropped} counted");
    }
}
