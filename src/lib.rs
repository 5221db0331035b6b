//! agentgate: a Pingora-based Layer-7 gateway for AI agents.
//!
//! Layers (ARCHITECTURE.md; `tools/import_graph.py --check` enforces them), lowest first:
//! - leaves: `util` (hex, ids, time), `tls` (certificates, pins; writes the generated cert),
//!   `metrics`, `shutdown` (drain state);
//! - engines, pure decisions: `canonical` (the one form of a request's path and host), `mask` (detectors, JSON/SSE/text masking, pseudonyms, the route's
//!   own keys), `policy` (approval rules), `identity` (tokens, groups, access), `config` (YAML to
//!   a validated model), `upstream` (verified peers, the HTTPS client), `usage` (tokens read from
//!   answers, prices);
//! - state with files or threads: `db` (the PostgreSQL store replicas share: pool, schema,
//!   lease, LISTEN), `approval` (store), `record` (capture, writer, store, verify),
//!   `session_log` (JSON lines, the logger), `limits` (quotas, the usage ledger, Redis);
//! - glue: `proxy` (the `ProxyHttp` phases), `server` (start-up, reload, listeners), `admin`
//!   (API and console), `cli`.

pub mod admin;
pub mod approval;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod db;
pub mod identity;
pub mod limits;
pub mod mask;
pub mod mcp;
pub mod metrics;
pub mod policy;
#[cfg(test)]
mod props;
pub mod proxy;
pub mod record;
pub mod server;
pub mod session_log;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod usage;
pub mod util;
