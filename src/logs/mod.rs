//! The access and audit logs: JSON lines, written off the request path.
//!
//! The request path serialises a line and hands it to a bounded queue ([`LogSink::write`]
//! never blocks); one thread per log drains the queue in batches and writes them. A full queue
//! (the disk or the reader of stdout cannot keep up) or a failed write (a full disk) drops lines
//! and counts them in `portcullis_log_lines_dropped_total{log,reason}`: the gateway never stalls
//! or stops because a log cannot be written.
//!
//! Every client-supplied value is redacted by [`crate::redact`] before it is serialised.
//! [`sink`] is the queue and its writer; [`access`] and [`audit`] are the lines; [`exchange`] is
//! the finished request they are made from, and the metrics it records.

pub mod access;
pub mod audit;
pub mod client_caused;
pub mod exchange;
pub mod sink;

use std::time::Duration;

use exchange::Exchange;
use sink::LogSink;

/// The access and audit logs of a running gateway.
#[derive(Debug, Default)]
pub struct Logs {
    /// `[log] access`.
    pub access: Option<LogSink>,
    /// `[log] audit`.
    pub audit: Option<LogSink>,
}

impl Logs {
    /// Records a finished request: its metrics, its access line and its audit events.
    pub fn record(&self, x: &Exchange<'_>) {
        exchange::record_metrics(x);
        if let Some(access) = &self.access {
            access.write(&access::AccessRecord::new(x));
        }
        if let Some(sink) = &self.audit {
            audit::record(x, sink);
        }
    }

    /// Waits, at most `timeout` for each, until both logs have written what was queued.
    pub fn flush(&self, timeout: Duration) {
        for sink in [&self.access, &self.audit].into_iter().flatten() {
            sink.flush(timeout);
        }
    }

    /// Opens both log files again (see [`LogSink::reopen`]).
    pub fn reopen(&self) {
        for sink in [&self.access, &self.audit].into_iter().flatten() {
            sink.reopen();
        }
    }
}
