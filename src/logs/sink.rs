//! One log: a bounded queue the request path writes to without blocking, drained by a thread
//! of its own to stdout or a file.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use serde::Serialize;

use crate::metrics::METRICS;

/// Lines waiting to be written before new ones are dropped.
pub const QUEUE_LINES: usize = 16 * 1024;
/// Bytes waiting to be written before new lines are dropped (lines carry client values of up
/// to 512 bytes each, so the line count alone would not bound memory).
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// The most bytes written in one batch.
const BATCH_BYTES: usize = 64 * 1024;
/// How long the writer sleeps when the queue is empty.
pub const POLL_EVERY: Duration = Duration::from_millis(10);
/// The least time between two warnings about a failing log.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where a log goes: `[log] access` / `[log] audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `"off"` (the default): not written.
    Off,
    /// `"stdout"`.
    Stdout,
    /// A file, appended to (created with mode 0640).
    File(PathBuf),
}

impl Destination {
    /// Parses `"off"`, `"stdout"` or a path.
    pub fn parse(value: &str) -> Result<Destination, &'static str> {
        match value {
            "off" => Ok(Destination::Off),
            "stdout" => Ok(Destination::Stdout),
            "" => Err("is empty"),
            path => Ok(Destination::File(PathBuf::from(path))),
        }
    }

    /// Checks, without creating anything, that the file could be opened: its directory exists
    /// and it is not a directory itself.
    pub fn check(&self) -> Result<(), String> {
        let Destination::File(path) = self else { return Ok(()) };
        if path.is_dir() {
            return Err(format!("\"{}\" is a directory", path.display()));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(format!("the directory \"{}\" does not exist", parent.display()));
        }
        Ok(())
    }
}

/// One log's queue; the writing thread ends when the sink is dropped.
#[derive(Debug)]
pub struct LogSink {
    tx: SyncSender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    /// Lines queued and not yet written (or dropped by a failed write).
    unwritten: Arc<AtomicUsize>,
    /// Asks the writer to open its file again (after logrotate moved it).
    reopen: Arc<AtomicBool>,
    queue_full: IntCounter,
    closed: IntCounter,
}

impl LogSink {
    /// Opens `destination` and starts its writer thread; `None` when the log is off.
    pub fn open(name: &'static str, destination: &Destination) -> io::Result<Option<LogSink>> {
        let out: Box<dyn Write + Send> = match destination {
            Destination::Off => return Ok(None),
            Destination::Stdout => Box::new(io::stdout()),
            Destination::File(path) => Box::new(open_file(path)?),
        };
        let path = match destination {
            Destination::File(path) => Some(path.clone()),
            _ => None,
        };
        Self::to_writer(name, out, path).map(Some)
    }

    /// A sink writing to `out` from its own thread; `path`, when given, is opened again on
    /// [`LogSink::reopen`].
    pub fn to_writer(name: &'static str, out: Box<dyn Write + Send>, path: Option<PathBuf>) -> io::Result<LogSink> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let unwritten = Arc::new(AtomicUsize::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let write_error = METRICS.log_lines_dropped.with_label_values(&[name, "write_error"]);
        let writer = Writer {
            name,
            out,
            path,
            reopen: reopen.clone(),
            queued: queued_bytes.clone(),
            unwritten: unwritten.clone(),
            write_error,
        };
        std::thread::Builder::new().name(format!("{name}-log")).spawn(move || writer.drain(rx))?;
        Ok(LogSink {
            tx,
            queued_bytes,
            unwritten,
            reopen,
            queue_full: METRICS.log_lines_dropped.with_label_values(&[name, "queue_full"]),
            closed: METRICS.log_lines_dropped.with_label_values(&[name, "write_error"]),
        })
    }

    /// Queues `record` as one JSON line; drops it (counted) when the queue is full.
    pub fn write<T: Serialize>(&self, record: &T) {
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        let len = line.len();
        if self.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.queue_full.inc();
            return;
        }
        self.unwritten.fetch_add(1, Ordering::Relaxed);
        let dropped = match self.tx.try_send(line) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => &self.queue_full,
            Err(TrySendError::Disconnected(_)) => &self.closed,
        };
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        self.unwritten.fetch_sub(1, Ordering::Relaxed);
        dropped.inc();
    }

    /// Waits, at most `timeout`, until every line queued so far is written: the process is
    /// about to exit.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.unwritten.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Opens the log file again before the next write (a reload does this, so logrotate's
    /// default `create` mode works with `postrotate systemctl reload portcullis`).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

fn open_file(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// The writer thread's state.
struct Writer {
    name: &'static str,
    out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    unwritten: Arc<AtomicUsize>,
    write_error: IntCounter,
}

impl Writer {
    fn drain(self, rx: Receiver<Vec<u8>>) {
        let Writer { name, out, path, reopen, queued, unwritten, write_error } = self;
        drain(name, rx, out, (&queued, &unwritten), write_error, || {
            if !reopen.swap(false, Ordering::AcqRel) {
                return None;
            }
            let path = path.as_ref()?;
            match open_file(path) {
                Ok(file) => Some(Box::new(file) as Box<dyn Write + Send>),
                Err(error) => {
                    tracing::warn!(log = name, path = %path.display(), %error, "cannot open the log again; writing to the old file");
                    None
                }
            }
        });
    }
}

/// The writer thread: batches queued lines, writes and flushes them; a failed write drops its
/// batch and is counted, with a warning at most once a minute.
///
/// It polls rather than blocks in `recv`: a blocked receiver makes every `try_send` wake it (a
/// futex call and a context switch per request, which halved throughput when measured), while a
/// sleeping one costs the request path one atomic push. Lines wait at most [`POLL_EVERY`].
fn drain(
    name: &'static str,
    rx: Receiver<Vec<u8>>,
    mut out: Box<dyn Write + Send>,
    (queued_bytes, unwritten): (&AtomicUsize, &AtomicUsize),
    write_error: IntCounter,
    mut reopened: impl FnMut() -> Option<Box<dyn Write + Send>>,
) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut last_warning: Option<Instant> = None;
    let mut open = true;
    while open {
        if let Some(file) = reopened() {
            let _ = out.flush();
            out = file;
        }
        batch.clear();
        let mut lines = 0;
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => {
                    queued_bytes.fetch_sub(line.len(), Ordering::Relaxed);
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if lines == 0 {
            if open {
                std::thread::sleep(POLL_EVERY);
            }
            continue;
        }
        if let Err(error) = out.write_all(&batch).and_then(|()| out.flush()) {
            // A partly written batch must not glue its last fragment to the next line.
            let _ = out.write_all(b"\n");
            // The warning before the count: whoever sees the count can find the warning.
            if last_warning.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                last_warning = Some(Instant::now());
                tracing::warn!(log = name, %error, "cannot write the log; lines are dropped and counted in portcullis_log_lines_dropped_total");
            }
            write_error.inc_by(lines);
        }
        unwritten.fetch_sub(lines as usize, Ordering::Release);
    }
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-25T12:00:00.123Z`.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(Destination::parse("off"), Ok(Destination::Off));
        assert_eq!(Destination::parse("stdout"), Ok(Destination::Stdout));
        assert!(Destination::parse("").is_err());
        assert!(Destination::File("/nonexistent-dir/a.jsonl".into()).check().is_err());
        assert!(Destination::File("/tmp".into()).check().is_err());
        assert!(Destination::File("relative.jsonl".into()).check().is_ok());
    }

    /// A writer stuck until released: the disk or stdout reader that cannot keep up.
    struct Stuck(Arc<std::sync::Barrier>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.wait();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_caller() {
        let release = Arc::new(std::sync::Barrier::new(2));
        let sink = LogSink::to_writer("stuck", Box::new(Stuck(release.clone())), None).unwrap();
        let full = METRICS.log_lines_dropped.with_label_values(&["stuck", "queue_full"]);
        let started = Instant::now();
        // The writer takes at most one batch and then waits: everything past the queue drops.
        for _ in 0..QUEUE_LINES + BATCH_BYTES + 100 {
            sink.write(&serde_json::json!({"event": "x"}));
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(full.get() >= 100, "{}", full.get());
        // Big lines hit the byte budget long before the line count.
        let before = full.get();
        let big = "x".repeat(64 * 1024);
        for _ in 0..(QUEUE_BYTES / big.len()) + 10 {
            sink.write(&serde_json::json!({ "big": big }));
        }
        assert!(full.get() >= before + 10);
        release.wait();
    }

    #[test]
    fn a_failing_disk_drops_and_counts() {
        let sink = LogSink::open("test", &Destination::File("/dev/full".into())).unwrap().unwrap();
        let dropped = METRICS.log_lines_dropped.with_label_values(&["test", "write_error"]);
        for _ in 0..10 {
            sink.write(&serde_json::json!({"event": "x"}));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while dropped.get() < 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(dropped.get(), 10);
    }
}
