//! openraft's view of the network: Raft's calls on the peer connections, each addressed to one
//! incarnation of a member.
use std::{sync::Arc, time::Duration};

use openraft::{
    RaftNetwork, RaftNetworkFactory,
    error::{NetworkError, PayloadTooLarge, RPCError, RemoteError, Unreachable},
    network::{Backoff, RPCOption},
};

use super::{
    client::{CallError, Calls, Direction, Peer, Peers},
    wire::{Call, Reply, Target},
};
use crate::order::typ::{Member, NodeId, TypeConfig, rpc};

pub struct Network {
    peers: Peers,
}

impl Network {
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerNetwork {
        PeerNetwork {
            target: Target {
                id: target,
                incarnation: node.incarnation,
            },
            peer: self.peers.get(target, &node.addr),
            calls: Arc::clone(self.peers.calls()),
        }
    }
}

pub struct PeerNetwork {
    target: Target,
    peer: Arc<Peer>,
    calls: Arc<Calls>,
}

impl PeerNetwork {
    async fn call(&self, call: Call, option: &RPCOption) -> Result<Reply, CallError> {
        self.peer.call(&call, option.hard_ttl()).await
    }

    fn unexpected<E: std::error::Error>(&self, reply: &Reply) -> rpc::RpcError<E> {
        if let Reply::Rejected(why) = reply {
            tracing::warn!(
                peer = self.target.id,
                addr = self.peer.addr(),
                why,
                "peer refused a Raft call"
            );
        }
        let error = std::io::Error::other(format!(
            "unexpected reply from node {}: {reply:?}",
            self.target.id
        ));
        RPCError::Network(NetworkError::new(&error))
    }
}

fn failed<E: std::error::Error>(error: CallError) -> rpc::RpcError<E> {
    match error {
        CallError::Connect(..) | CallError::Lost(_) => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        CallError::Timeout(..) | CallError::Encode(_) | CallError::TooLarge(_) => {
            RPCError::Network(NetworkError::new(&error))
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    /// How long the leader waits before it tries an unreachable follower again: 50 ms, doubling
    /// up to 200 ms (openraft's default, 500 ms, is how long a follower that restarted may wait
    /// for its first entries, while a commit may need it).
    fn backoff(&self) -> Backoff {
        let mut wait = Duration::from_millis(25);
        Backoff::new(std::iter::from_fn(move || {
            wait = (wait * 2).min(Duration::from_millis(200));
            Some(wait)
        }))
    }

    async fn append_entries(
        &mut self,
        rpc: rpc::AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<rpc::AppendEntriesResponse, rpc::RpcError> {
        let entries = rpc.entries.len() as u64;
        Calls::count(&self.calls.append_entries, Direction::Sent);
        match self
            .call(Call::AppendEntries(self.target, rpc), &option)
            .await
        {
            Ok(Reply::AppendEntries(result)) => {
                result.map_err(|e| RemoteError::new(self.target.id, e).into())
            }
            Ok(other) => Err(self.unexpected(&other)),
            // Over the frame cap: openraft sends fewer entries at a time.
            Err(CallError::TooLarge(_)) if entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Err(error) => Err(failed(error)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: rpc::InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<rpc::InstallSnapshotResponse, rpc::RpcError<rpc::InstallSnapshotError>> {
        match self
            .call(Call::InstallSnapshot(self.target, rpc), &option)
            .await
            .map_err(failed)?
        {
            Reply::InstallSnapshot(result) => {
                result.map_err(|e| RemoteError::new(self.target.id, e).into())
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: rpc::VoteRequest,
        option: RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        match self
            .call(Call::Vote(self.target, rpc), &option)
            .await
            .map_err(failed)?
        {
            Reply::Vote(result) => result.map_err(|e| RemoteError::new(self.target.id, e).into()),
            other => Err(self.unexpected(&other)),
        }
    }
}
