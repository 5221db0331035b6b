//! MCP (Model Context Protocol) as the gateway reads it: JSON-RPC messages in request bodies
//! and in answers (a JSON body or SSE events), who may use which tool, resource and prompt, the
//! filtering of list answers, and the definition hashes that pin tools. Pure: no I/O, no
//! Pingora; the proxy (`proxy/mcp.rs`) feeds it bodies and events and acts on its verdicts.
//!
//! Invariants:
//! - A request naming a tool, resource or prompt the caller may not use is refused as a whole,
//!   with a JSON-RPC error per request in it; nothing of it goes upstream.
//! - A list answer shows only what the caller may use (and, with pinning, only tools whose
//!   definition is the accepted one); what cannot be parsed is passed only when it is no
//!   answer the gateway must filter.
//! - A server-to-client request the route denies (sampling, elicitation, roots) never reaches
//!   the client.
//! - On the SSE transport (2024-11-05) a refused request's error reaches the client on the
//!   stream it reads answers from (`sse_transport`), and its messages endpoint serves only the
//!   caller who opened the stream.

pub mod access;
pub mod filter;
pub mod hosted;
pub mod jsonrpc;
pub mod oauth;
pub mod pins;
pub mod sse_transport;
pub mod stream;

#[cfg(test)]
mod hosted_tests;
#[cfg(test)]
mod tests;
