//! The background service that waits for SIGTERM, stops taking requests (`crate::shutdown`),
//! waits for those in flight, writes queued records and session lines, and exits.

use crate::shutdown::{arm, in_flight, start_draining};
use std::sync::Arc;
use std::time::Duration;

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
        arm();
        // Pingora broadcasts its own graceful shutdown on the same SIGTERM (or SIGQUIT for an
        // upgrade); whichever is seen first starts the drain.
        tokio::select! {
            _ = term.recv() => {}
            _ = shutdown.changed() => {}
        }
        start_draining();
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
                crate::limits::Ledger::flush_current();
                crate::telemetry::flush();
                log::info!("drained: exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
