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

pub mod access;
pub mod filter;
pub mod jsonrpc;
pub mod pins;
pub mod stream;

#[cfg(test)]
mod tests;
