//! Membership changes: adding a node (as a learner, then a voter) and removing one. Any node
//! takes them; a follower passes them to the leader, which makes them through Raft
//! ([`change_on_leader`]).
use std::time::Duration;

use super::{
    peer::{
        Peers,
        wire::{Call, MembershipChange, Reply},
    },
    typ::{Member, NodeId, Raft},
};

/// Longest a membership change may take (a joint configuration commits in two rounds).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// Makes `change` on this node, which must be the leader. A learner is asked who it is first:
/// its id must be the one given, and a node the cluster knows as another incarnation (one that
/// lost its data) is not let in under that id.
pub async fn change_on_leader(
    raft: &Raft,
    peers: &Peers,
    node_id: NodeId,
    change: MembershipChange,
) -> Result<(), String> {
    let leader = raft.metrics().borrow().current_leader;
    if leader != Some(node_id) {
        return Err(format!("not the leader (leader: {leader:?}); retry"));
    }
    let changed = match change {
        MembershipChange::AddLearner { id, addr } => {
            let incarnation = match peers.get(id, &addr).call(&Call::Hello, TIMEOUT).await {
                Ok(Reply::Hello {
                    node_id,
                    incarnation,
                    ..
                }) if node_id == id => incarnation,
                Ok(Reply::Hello { node_id, .. }) => {
                    return Err(format!("{addr} is node {node_id}, not node {id}"));
                }
                Ok(other) => return Err(format!("unexpected answer from {addr}: {other:?}")),
                Err(error) => return Err(format!("cannot reach node {id} at {addr}: {error}")),
            };
            let known = raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .map(|member| member.incarnation);
            if known.is_some_and(|known| known != incarnation) {
                return Err(format!(
                    "node {id} is a member already, as another incarnation (it lost its data): \
                     remove it first, and add the new node under a new id"
                ));
            }
            tracing::info!(id, %addr, "adding a learner");
            // Not blocking: catching up may take long; progress shows in the leader's /status.
            let member = Member { addr, incarnation };
            raft.add_learner(id, member, false).await
        }
        MembershipChange::Voters(voters) => {
            tracing::info!(?voters, "changing the voters");
            raft.change_membership(voters, false).await
        }
        MembershipChange::RemoveLearners(learners) => {
            tracing::info!(?learners, "removing learners");
            let remove = openraft::ChangeMembers::RemoveNodes(learners);
            raft.change_membership(remove, false).await
        }
    };
    changed.map(drop).map_err(|e| e.to_string())
}
