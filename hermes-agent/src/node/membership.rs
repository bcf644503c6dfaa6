//! Membership changes asked of this node (the admin API's): made here if it leads, passed to the
//! leader otherwise, which makes them ([`order::membership`]).
use super::Node;
use crate::order::{
    self,
    membership::{TIMEOUT, change_on_leader},
    peer::wire::{Call, MembershipChange, Reply},
};

impl Node {
    /// Makes `change`, on this node if it leads, through the leader otherwise.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), String> {
        let (leader, addr) = order::leader(&self.raft);
        let leader = leader.ok_or("no leader; retry once one is elected")?;
        if leader == self.id {
            return change_on_leader(&self.raft, &self.peers, self.id, change).await;
        }
        let addr = addr.ok_or("the leader's address is unknown")?;
        match self
            .peers
            .get(leader, &addr)
            .call(&Call::ChangeMembership(change), TIMEOUT)
            .await
        {
            Ok(Reply::ChangeMembership(result)) => result,
            Ok(other) => Err(format!("unexpected answer from the leader: {other:?}")),
            Err(error) => Err(format!("cannot reach the leader, node {leader}: {error}")),
        }
    }
}
