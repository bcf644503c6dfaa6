//! The leader's side of a linearizable read (`--reads linearizable`): its read index, which a
//! reader waits for this replica to apply before its app answers.
use super::{
    peer::wire::ForwardError,
    typ::{NodeId, Raft},
};

/// On the leader: confirms leadership with a quorum and returns the index a reader must wait for.
pub async fn read_index_on_leader(raft: &Raft, node_id: NodeId) -> Result<u64, ForwardError> {
    let leader = raft.metrics().borrow().current_leader;
    if leader != Some(node_id) {
        return Err(ForwardError::NotLeader(leader));
    }
    match raft.get_read_log_id().await {
        Ok((read, _applied)) => Ok(read.map_or(0, |id| id.index)),
        Err(error) => Err(ForwardError::Failed(error.to_string())),
    }
}
