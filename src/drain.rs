//! Graceful shutdown. Pingora's own SIGTERM handling waits `grace_period_seconds` while still
//! accepting, then stops and cancels whatever is in flight. agentgate wants the opposite order:
//! on SIGTERM stop taking new requests (503 `shutting_down`, `/readyz` 503), let the requests and
//! streams in flight finish, write queued records and session lines, and exit 0 as soon as
//! nothing is in flight — at the latest when `server.grace_period` ends, when Pingora's own
//! shutdown takes over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static INFLIGHT: AtomicUsize = AtomicUsize::new(0);
static DRAINING: AtomicBool = AtomicBool::new(false);
static ARMED: AtomicBool = AtomicBool::new(false);

/// Whether SIGTERM is being watched (readiness waits for it, so a SIGTERM right after the
/// gateway reports ready still drains).
pub fn armed() -> bool {
    ARMED.load(Ordering::SeqCst)
}

/// Counts one request in flight until dropped.
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> InFlight {
        INFLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        INFLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn draining() -> bool {
    DRAINING.load(Ordering::SeqCst)
}

static DRAIN_STARTED: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// Resolves once draining has started (a request held for approval gives up then).
pub async fn until_draining() {
    loop {
        // Registered before the check, so a start in between is not missed.
        let started = DRAIN_STARTED.notified();
        if draining() {
            return;
        }
        started.await;
    }
}

pub fn in_flight() -> usize {
    INFLIGHT.load(Ordering::SeqCst)
}

/// Background service that waits for SIGTERM and then drains.
pub struct Drainer {
    pub recorder: Option<Arc<crate::record::Recorder>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Drainer {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("cannot watch SIGTERM for draining: {e}");
                    return;
                }
            };
        ARMED.store(true, Ordering::SeqCst);
        // Pingora broadcasts its own graceful shutdown on the same SIGTERM (or SIGQUIT for an
        // upgrade); whichever is seen first starts the drain.
        tokio::select! {
            _ = term.recv() => {}
            _ = shutdown.changed() => {}
        }
        DRAINING.store(true, Ordering::SeqCst);
        DRAIN_STARTED.notify_waiters();
        log::info!(
            "SIGTERM: no new requests; waiting for {} in flight",
            in_flight()
        );
        loop {
            if in_flight() == 0 {
                if let Some(r) = &self.recorder {
                    r.flush(Duration::from_secs(5));
                }
                crate::session_log::flush();
                log::info!("drained: exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
