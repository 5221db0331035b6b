//! Whether the process is draining, and how many requests are in flight: the state graceful
//! shutdown reads (the proxy, the approval gate and readiness), set by `server::drain`.
//!
//! Graceful shutdown. Pingora's own SIGTERM handling waits `grace_period_seconds` while still
//! accepting, then stops and cancels whatever is in flight. agentgate wants the opposite order:
//! on SIGTERM stop taking new requests (503 `shutting_down`, `/readyz` 503), let the requests and
//! streams in flight finish, write queued records and session lines, and exit 0 as soon as
//! nothing is in flight — at the latest when `server.grace_period` ends, when Pingora's own
//! shutdown takes over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// SIGTERM is now watched (`server::drain`).
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Starts draining: new requests are refused and held ones give up.
pub fn start_draining() {
    DRAINING.store(true, Ordering::SeqCst);
    DRAIN_STARTED.notify_waiters();
}
