//! The peer transport: one persistent, pipelined connection per peer carrying Raft's RPCs and
//! this cluster's own calls (forwarded proposals, membership changes, read indexes).
//!
//! - [`wire`]: the calls and replies, and their framing;
//! - [`client`]: connections to peers; [`network`]: openraft's network built on them;
//! - [`server`]: serves the calls of peers, and decides who may make which;
//! - [`tls`]: mutual TLS, and the node ids certificates name;
//! - [`warnings`]: warnings about failures that keep coming, rate-limited.
pub mod client;
pub mod network;
pub mod server;
pub mod tls;
pub mod warnings;
pub mod wire;

pub use client::{CallError, Peers};
pub use network::Network;
