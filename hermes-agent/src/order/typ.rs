//! The Raft type configuration, in one place: no other file spells openraft's generics.
use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node of the cluster, as in `--node-id`.
pub type NodeId = u64;

/// A client request, opaque to ordering: only `intercept` and `deliver` know its protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The node whose client sent it: only there is the app's response returned.
    pub origin: NodeId,
    /// The origin's incarnation: random, drawn when its data directory was made, so that a node
    /// whose data was wiped never reuses an id.
    pub incarnation: u64,
    /// Unique per origin incarnation, across restarts: `(boot << 40) | sequence`.
    pub id: u64,
    /// The request as the app will receive it.
    pub payload: Bytes,
}

impl Command {
    /// What the state machine deduplicates on.
    pub fn key(&self) -> RequestKey {
        (self.origin, self.incarnation, self.id)
    }
}

/// (origin, incarnation, id): unique for every request ever proposed.
pub type RequestKey = (NodeId, u64, u64);

/// A client connection, unique in the cluster: (origin, its incarnation, the id the origin drew
/// for it). Every replica delivers its requests (or, in raw TCP mode, applies its events) on an
/// app connection of its own.
pub type ConnKey = (NodeId, u64, u64);

/// The requests of one node that travel together: a node batches the requests its clients sent
/// while its previous batches were in flight, so that one append (one fsync) orders them all.
/// Every command of a batch is the proposing node's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique per proposing node, across restarts: lets the proposer learn when it is committed.
    pub id: BatchId,
    /// The lowest request id the proposing node (this incarnation) still had in flight when it
    /// made the batch: a request with a lower id is settled (committed, or given up by its
    /// client), so a copy of it that lands later is never delivered
    /// ([`crate::deliver::sessions`]).
    pub floor: u64,
    pub commands: Vec<Command>,
}

/// (proposing node, its incarnation, `(boot << 40) | sequence`).
pub type BatchId = (NodeId, u64, u64);

/// What one log entry holds: the batches the leader proposed together, its own and those its
/// followers forwarded while its earlier entries were in flight, applied in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub batches: Vec<Batch>,
}

impl From<Batch> for Proposal {
    fn from(batch: Batch) -> Self {
        Self {
            batches: vec![batch],
        }
    }
}

impl Proposal {
    /// The id the proposal is watched by: its first batch's.
    pub fn id(&self) -> Option<BatchId> {
        self.batches.first().map(|batch| batch.id)
    }

    /// The requests it holds.
    pub fn requests(&self) -> usize {
        self.batches.iter().map(|batch| batch.commands.len()).sum()
    }
}

/// A member of the cluster, as the membership records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Where its peers reach it.
    pub addr: String,
    /// Its incarnation (see [`Command::incarnation`]): a node that lost its data is another
    /// member, under another id, never this one.
    pub incarnation: u64,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (incarnation {:016x})", self.addr, self.incarnation)
    }
}

openraft::declare_raft_types!(
    /// Hermes' Raft types.
    pub TypeConfig:
        D = Proposal,
        R = (),
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;
pub type LogFlushed = openraft::storage::LogFlushed<TypeConfig>;
pub type Metrics = openraft::RaftMetrics<NodeId, Member>;

pub mod rpc {
    //! Raft messages between peers.
    use super::{Member, NodeId, TypeConfig};
    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
    pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
    pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
    pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
    pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
    pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Member>;
    pub type RpcError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, Member, RaftError<E>>;
}
