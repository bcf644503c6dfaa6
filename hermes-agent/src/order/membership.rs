//! Membership changes: adding a node (as a learner, then a voter) and removing one. Any node
//! takes them; a follower passes them to the leader, which makes them through Raft.
use std::time::Duration;

use openraft::BasicNode;

use super::{
    Node,
    peer::wire::{Call, MembershipChange, Reply},
    typ::{NodeId, Raft},
};

/// Longest a membership change may take (a joint configuration commits in two rounds).
const TIMEOUT: Duration = Duration::from_secs(30);

impl Node {
    /// Makes `change`, on this node if it leads, through the leader otherwise.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), String> {
        let (leader, addr) = super::leader(&self.raft);
        let leader = leader.ok_or("no leader; retry once one is elected")?;
        if leader == self.id {
            return change_on_leader(&self.raft, self.id, change).await;
        }
        let addr = addr.ok_or("the leader's address is unknown")?;
        match self
            .peers
            .get(&addr)
            .call(&Call::ChangeMembership(change), TIMEOUT)
            .await
        {
            Ok(Reply::ChangeMembership(result)) => result,
            Ok(other) => Err(format!("unexpected answer from the leader: {other:?}")),
            Err(error) => Err(format!("cannot reach the leader, node {leader}: {error}")),
        }
    }
}

/// Makes `change` on this node, which must be the leader.
pub async fn change_on_leader(
    raft: &Raft,
    node_id: NodeId,
    change: MembershipChange,
) -> Result<(), String> {
    let leader = raft.metrics().borrow().current_leader;
    if leader != Some(node_id) {
        return Err(format!("not the leader (leader: {leader:?}); retry"));
    }
    let changed = match change {
        MembershipChange::AddLearner { id, addr } => {
            tracing::info!(id, %addr, "adding a learner");
            // Not blocking: catching up may take long; progress shows in the leader's /status.
            raft.add_learner(id, BasicNode::new(addr), false).await
        }
        MembershipChange::Voters(voters) => {
            tracing::info!(?voters, "changing the voters");
            raft.change_membership(voters, false).await
        }
    };
    changed.map(drop).map_err(|e| e.to_string())
}
