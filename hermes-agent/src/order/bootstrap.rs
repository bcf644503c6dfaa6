//! Forming the cluster, once, and the check that keeps a node whose data was wiped from acting as
//! the member it was.
//!
//! The member with the lowest id forms the cluster when every member answers and none is part of
//! a cluster yet; the others wait for the leader to contact them. The membership records each
//! member's incarnation, learnt from its answer.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use openraft::error::{InitializeError, RaftError};

use super::{
    StartError,
    identity::Identity,
    peer::{
        Peers,
        wire::{Call, Reply},
    },
    typ::{Member, NodeId, Raft},
};

const HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// Refuses to start a node with a new data directory that the cluster already knows as another
/// incarnation. Members that cannot be reached cannot tell; their peers refuse such a node's
/// part in Raft anyway (calls name the incarnation they are for).
pub async fn refuse_if_wiped(
    peers: &Peers,
    identity: &Identity,
    members: &BTreeMap<NodeId, String>,
) -> Result<(), StartError> {
    for (&peer, addr) in members.iter().filter(|(id, _)| **id != identity.node_id) {
        if let Ok(Reply::Hello {
            node_id,
            members: known,
            ..
        }) = peers
            .get(peer, addr)
            .call(&Call::Hello, HELLO_TIMEOUT)
            .await
            && node_id == peer
            && known
                .get(&identity.node_id)
                .is_some_and(|incarnation| *incarnation != identity.incarnation)
        {
            return Err(StartError::Wiped {
                node_id: identity.node_id,
                peer,
            });
        }
    }
    Ok(())
}

/// Forms the cluster if this node has the lowest id of `members` (this node listens on `own`).
pub async fn form(
    raft: Raft,
    peers: Peers,
    identity: Identity,
    own: SocketAddr,
    members: BTreeMap<NodeId, String>,
) {
    if members.keys().next() != Some(&identity.node_id) {
        return;
    }
    loop {
        if raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        let mut nodes = BTreeMap::new();
        for (&id, addr) in &members {
            if id == identity.node_id {
                let addr = members.get(&id).cloned().unwrap_or_else(|| own.to_string());
                nodes.insert(
                    id,
                    Member {
                        addr,
                        incarnation: identity.incarnation,
                    },
                );
                continue;
            }
            match peers.get(id, addr).call(&Call::Hello, HELLO_TIMEOUT).await {
                Ok(Reply::Hello {
                    node_id,
                    incarnation,
                    initialized,
                    ..
                }) if node_id == id => {
                    if initialized {
                        tracing::info!(
                            peer = id,
                            "member is already in a cluster; joining it instead of forming one"
                        );
                        return;
                    }
                    nodes.insert(
                        id,
                        Member {
                            addr: addr.clone(),
                            incarnation,
                        },
                    );
                }
                Ok(other) => {
                    tracing::warn!(peer = id, %addr, ?other, "unexpected answer from member")
                }
                Err(error) => tracing::debug!(peer = id, %error, "member not reachable yet"),
            }
        }
        if nodes.len() == members.len() {
            match raft.initialize(nodes).await {
                Ok(()) => {
                    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "cluster formed");
                    return;
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => return,
                Err(error) => tracing::warn!(%error, "forming the cluster failed; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
