//! Recording every exchange (masked) for audit and replay: the proxy hands a `Draft` to a
//! bounded queue; one writer thread masks it (every body, header value and path goes through the
//! masking engine with all detectors set to redact, so the store never holds a secret or
//! personal value, whatever the route's own policy) and appends it to the hash-chained store.
//!
//! One idea per file, in the order an exchange travels:
//! - `capture`: what the proxy collects while the exchange runs (bounded), and the `Draft`;
//! - `writer`: the `Recorder` queue (never blocks a request) and its writer thread (masks,
//!   batches, retention, the `on_failure` policy);
//! - `format` and `json`: the record's on-disk shape and how it is written;
//! - `store`: segments, index and hash chain; `verify` walks the chain (and checks it against
//!   checkpoints); `render` shows a record to people;
//! - `shared`: with `store.postgres`, every record and checkpoint also as a row there, and the
//!   queries and chain checks across every replica's rows;
//! - `checkpoint`: the signed checkpoint format; `checkpointer`: when the writer signs one and
//!   where it goes (the store, stdout, an HTTPS endpoint).

mod capture;
pub mod checkpoint;
mod checkpointer;
mod format;
pub mod json;
pub mod query;
pub mod render;
pub mod shared;
pub mod store;
pub mod verify;
mod writer;

pub use crate::config::RecordingMode as Mode;
pub use capture::{Capture, Chunks, Draft, Headers};
pub use writer::Recorder;
