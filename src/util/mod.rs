//! Small helpers every layer uses (hex and ids, time, SSE framing, Ed25519 keys). A leaf: it imports nothing of the crate,
//! so engines can use it without reaching into glue.

pub mod ed25519;
pub mod hex;
pub mod sse;
pub mod time;
