//! agentgate: a Pingora-based Layer-7 gateway for AI agents.
//! Engines (`config`, `scrub`, `tls`) are pure; `proxy` and `server` are glue.

pub mod admin;
pub mod approval;
pub mod cli;
pub mod config;
pub mod identity;
pub mod mask;
pub mod metrics;
pub mod policy;
#[cfg(test)]
mod props;
pub mod proxy;
pub mod record;
pub mod server;
pub mod session_log;
pub mod shutdown;
pub mod tls;
pub mod upstream;
pub mod util;
