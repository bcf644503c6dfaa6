//! Ordering: every node's client requests go through one Raft log (openraft). Ordering knows
//! nothing of what the requests are, nor of how they are delivered: it hands the committed
//! entries to Raft's state machine, which the next stage provides.
//!
//! - [`typ`]: the Raft type configuration; [`log_store`]: the durable log (an append-only file);
//! - [`identity`]: who this node is across restarts; [`bootstrap`]: forming the cluster;
//! - [`propose`]: getting requests into the log, [`gather`]: what goes together into a batch
//!   and into an entry, [`in_flight`]: which of them may still be
//!   retried; [`read_index`]: the leader's side of reads off the log;
//!   [`membership`]: changing the members; [`peer`]: the peer transport.
#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError; boxing it here would only move the copy"
)]
pub mod bootstrap;
pub mod elect;
pub mod gather;
pub mod handover;
pub mod identity;
pub mod in_flight;
pub mod log_store;
pub mod membership;
pub mod peer;
pub mod propose;
pub mod read_index;
pub mod typ;

use std::{net::SocketAddr, path::PathBuf};

use identity::IdentityError;
use typ::{NodeId, Raft};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory's errors say which directory, and which file in it.
    #[error("{0}")]
    DataDir(std::io::Error),
    #[error("data directory {0}: {1}")]
    Identity(PathBuf, IdentityError),
    #[error(
        "node {node_id} has an empty data directory, but the cluster knows node {node_id} as \
         another incarnation (node {peer} says so): its data was lost, and a node without its \
         log and vote must not act as the member it was. Remove it (`hermes-agent ctl remove \
         {node_id}` on a member) and start this node with a new --node-id and --join"
    )]
    Wiped { node_id: NodeId, peer: NodeId },
    #[error("peer TLS: {0}")]
    Tls(#[from] peer::tls::TlsError),
    #[error("storage: {0}")]
    Storage(#[from] typ::StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen for peers on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// The leader this node knows of, and where its peers reach it.
pub(crate) fn leader(raft: &Raft) -> (Option<NodeId>, Option<String>) {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let leader = metrics.current_leader;
    (leader, leader.and_then(|id| address(&metrics, id)))
}

/// Where peers reach member `id`, as the membership in `metrics` says.
pub(crate) fn address(metrics: &typ::Metrics, id: NodeId) -> Option<String> {
    let member = metrics.membership_config.membership().get_node(&id)?;
    Some(member.addr.clone())
}

/// Resolves once the leader is no longer `leader`.
async fn leader_changed(raft: &Raft, leader: NodeId) {
    let mut metrics = raft.metrics();
    let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
}

/// Counts in `seen` the leaders this node sees take office (a new leader, or the same in a new
/// term), and logs each, until Raft stops. The first one it sees is not counted: it was in
/// office before this start, or took office at it.
pub(crate) async fn follow_leaders(raft: Raft, seen: std::sync::Arc<std::sync::atomic::AtomicU64>) {
    // Changes with the vote and the server's state only, not with every entry.
    let mut metrics = raft.server_metrics();
    let mut last = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.vote.leader_id.term)
        };
        if let Some(leader) = leader
            && last != Some((leader, term))
        {
            if last.is_some() {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            last = Some((leader, term));
            tracing::info!(leader, term, "leader in office");
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
