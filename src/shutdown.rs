//! Stopping: `SIGTERM` drains the gateway and it exits as soon as nothing is left to serve.
//!
//! Pingora's own `SIGTERM` handling stops accepting and then sleeps the whole grace period,
//! however idle the process is, so `systemctl stop`, `docker stop` and a Kubernetes rollout
//! all waited `shutdown_grace` (30 s by default, which is also Kubernetes' termination grace:
//! the gateway was killed the moment it would have exited). Here, as nginx and Traefik do:
//!
//! 1. `SIGTERM`: `/readyz` answers 503 `draining` at once, and the gateway keeps accepting and
//!    serving for `server.shutdown_delay` (default 0), so that a load balancer watching
//!    readiness takes the instance out before it stops accepting;
//! 2. then [`Signals`] hands Pingora its graceful stop: listeners stop accepting, a keep-alive
//!    connection gets `Connection: close` on its next response or is closed while idle, an
//!    HTTP/2 connection gets GOAWAY, and requests in flight finish;
//! 3. [`DrainMonitor`] exits the process as soon as no client connection is left, its log
//!    lines written. Pingora's grace period (`shutdown_grace`) stays as the upper bound.
//!
//! `SIGQUIT` (the binary upgrade, `run --upgrade`) and `SIGINT` (stop now) keep Pingora's
//! behaviour, and an upgrade's old process also exits once drained. `SIGHUP` reloads
//! ([`crate::reload`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::connection::OPEN;
use crate::logs::Logs;

/// How long [`DrainMonitor`] waits for the log writers before it exits anyway.
pub const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long no connection must be open before the process exits: a connection accepted just
/// before the listeners closed may still be on its way into the proxy.
pub const SETTLE: Duration = Duration::from_millis(50);

/// How long, once every established connection is done, TLS handshakes still under way may
/// take to finish (a handshake is a round trip or two).
pub const HANDSHAKE_DRAIN: Duration = Duration::from_secs(2);

/// How often admissions of TLS handshakes that failed are forgotten (one `getpeername` per
/// handshake under way).
pub const REAP_EVERY: Duration = Duration::from_secs(1);

/// Set once `SIGTERM` arrived: `/readyz` answers 503 from then on.
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether the gateway is stopping (`SIGTERM` received).
pub fn is_draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// The signals that stop the gateway, as Pingora's main loop waits for them.
pub struct Signals {
    delay: Duration,
}

impl Signals {
    /// Stops `delay` after `SIGTERM`.
    pub fn new(delay: Duration) -> Self {
        Signals { delay }
    }
}

/// A signal stream; one that cannot be installed (which does not happen on Linux) never fires.
async fn next(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn install(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind).map_err(|error| tracing::error!(%error, signal = name, "cannot catch the signal")).ok()
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = install(SignalKind::quit(), "SIGQUIT");
        let mut terminate = install(SignalKind::terminate(), "SIGTERM");
        let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
        tokio::select! {
            _ = next(&mut quit) => return ShutdownSignal::GracefulUpgrade,
            _ = next(&mut interrupt) => return ShutdownSignal::FastShutdown,
            _ = next(&mut terminate) => {}
        }
        DRAINING.store(true, Ordering::Relaxed);
        if !self.delay.is_zero() {
            tracing::info!(delay = ?self.delay, "SIGTERM: /readyz answers 503; still serving for shutdown_delay");
            tokio::select! {
                _ = tokio::time::sleep(self.delay) => {}
                _ = next(&mut interrupt) => return ShutdownSignal::FastShutdown,
                _ = next(&mut quit) => return ShutdownSignal::GracefulUpgrade,
                // A second SIGTERM: no more waiting.
                _ = next(&mut terminate) => {}
            }
        }
        tracing::info!(
            open_connections = OPEN.total(),
            "draining: no new connections; exiting once the open ones are done"
        );
        ShutdownSignal::GracefulTerminate
    }
}

/// Says the gateway is done once Pingora's graceful stop has begun and no client connection is
/// left, rather than at the end of the grace period: [`crate::run`] then returns.
pub struct DrainMonitor {
    logs: Arc<Logs>,
    drained: std::sync::mpsc::Sender<()>,
}

impl DrainMonitor {
    /// A monitor that flushes `logs`, then sends on `drained`.
    pub fn new(logs: Arc<Logs>, drained: std::sync::mpsc::Sender<()>) -> Self {
        DrainMonitor { logs, drained }
    }
}

#[async_trait]
impl BackgroundService for DrainMonitor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reap = tokio::time::interval(REAP_EVERY);
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() { return },
                _ = reap.tick() => OPEN.reap_handshakes(),
            }
        }
        // Established connections first; TLS handshakes under way then get HANDSHAKE_DRAIN to
        // come in (and be served), and are not waited for past it.
        let mut established_done: Option<std::time::Instant> = None;
        loop {
            OPEN.reap_handshakes();
            let established = OPEN.total().saturating_sub(OPEN.handshaking());
            if established == 0 {
                let since = *established_done.get_or_insert_with(std::time::Instant::now);
                if OPEN.handshaking() == 0 || since.elapsed() >= HANDSHAKE_DRAIN {
                    // A connection accepted just before the listeners closed may still be on
                    // its way into the proxy.
                    tokio::time::sleep(SETTLE).await;
                    if OPEN.total() == OPEN.handshaking()
                        && (OPEN.handshaking() == 0 || since.elapsed() >= HANDSHAKE_DRAIN)
                    {
                        break;
                    }
                    continue;
                }
            } else {
                established_done = None;
            }
            tokio::select! {
                () = OPEN.none_left() => {}
                () = tokio::time::sleep(SETTLE) => {}
            }
        }
        let logs = self.logs.clone();
        let _ = tokio::task::spawn_blocking(move || logs.flush(LOG_FLUSH_TIMEOUT)).await;
        tracing::info!("drained: every connection is closed; exiting");
        let _ = self.drained.send(());
    }
}
