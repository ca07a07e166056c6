//! HTTP routes, one module per service, plus the seed's own routes and the
//! operational ones. Handlers turn JSON into proto and back; nothing else.

pub mod cache;
pub mod counter;
pub mod items;
pub mod ops;
pub mod seed;
pub mod tasks;

/// Renders a proto timestamp as RFC 3339 (`2026-11-26T16:32:12.361Z`).
pub fn rfc3339(ts: Option<prost_types::Timestamp>) -> Option<String> {
    ts.map(|t| t.to_string())
}
