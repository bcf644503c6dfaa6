//! `hermes-agent recover`: after the loss of a majority for good, makes the survivors the only
//! voters, offline, so that they form a cluster again (as etcd's `--force-new-cluster` and
//! rqlite's `peers.json` do).
//!
//! Raft cannot commit without a majority of the voters it knows, and no membership change can
//! be committed without one either. So the change is written where Raft reads it at start: a
//! membership entry at the end of this node's log, under a term above every term it has seen,
//! with its vote moved to that term. At start, Raft takes the last membership entry of the log
//! for the cluster's; the node, alone or with the other survivors recovered the same way, elects
//! a leader, which commits that entry and every entry before it.
//!
//! What this costs: entries committed by the lost nodes that never reached this one are lost
//! (recover the survivor with the longest log); entries this node has that were not known
//! committed are committed now. The lost nodes must never come back with their data: they
//! would still take themselves for a majority of the old cluster.
use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    CommittedLeaderId, Membership, RaftLogReader as _,
    storage::{RaftLogStorage as _, RaftLogStorageExt as _},
};

use crate::{
    data_dir::DataDir,
    deliver::state_machine,
    order::{
        identity::Identity,
        log_store::LogStore,
        typ::{Entry, EntryPayload, LogId, Member, NodeId, StorageError, Vote},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("no data directory at {0}")]
    Missing(std::path::PathBuf),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the data directory holds no identity: it never belonged to a node")]
    NoIdentity,
    #[error("{0}")]
    Identity(#[from] crate::order::identity::IdentityError),
    #[error(
        "cannot open the log ({0}): is this node's agent still running? Stop it first; recover \
         works on a stopped node only"
    )]
    Open(Box<StorageError>),
    #[error("the log: {0}")]
    Log(Box<StorageError>),
    #[error("the log holds no membership: this node never was part of a cluster")]
    NoMembership,
    #[error("--voters must name this node ({0}): it is the one being recovered")]
    NotAmongVoters(NodeId),
    #[error(
        "node {0} is not a member of the cluster this node knows ({1}): its address is unknown"
    )]
    Unknown(NodeId, String),
}

impl From<StorageError> for RecoverError {
    fn from(error: StorageError) -> Self {
        Self::Log(Box::new(error))
    }
}

/// What `recover` found and what it will write.
#[derive(Debug)]
pub struct Plan {
    pub node_id: NodeId,
    /// The members the log names now, voters first.
    pub voters_before: BTreeSet<NodeId>,
    pub members_before: BTreeMap<NodeId, Member>,
    pub last: Option<LogId>,
    pub committed: Option<LogId>,
    /// The membership entry appended, and the vote saved with it.
    pub entry: Entry,
    pub vote: Vote,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let index = |id: Option<LogId>| id.map_or(0, |id| id.index);
        let (last, committed) = (index(self.last), index(self.committed));
        let voters: Vec<_> = match &self.entry.payload {
            EntryPayload::Membership(m) => m.voter_ids().collect(),
            _ => Vec::new(),
        };
        let before: Vec<_> = self.voters_before.iter().collect();
        writeln!(f, "node {}: voters {before:?} -> {voters:?}", self.node_id)?;
        for (id, member) in &self.members_before {
            let fate = if voters.contains(id) {
                "kept"
            } else {
                "dropped"
            };
            writeln!(f, "  node {id} at {member}: {fate}")?;
        }
        writeln!(
            f,
            "this node's log ends at entry {last}; it knew entries up to {committed} committed."
        )?;
        if last > committed {
            writeln!(
                f,
                "entries {} to {last} were not known committed here: the new cluster commits \
                 and applies them (their clients may have been told the outcome is unknown).",
                committed + 1
            )?;
        }
        writeln!(
            f,
            "requests committed by the lost nodes beyond entry {last}, if any, are lost: if \
             another survivor's log is longer (`last_log_index` in its /status, or `recover \
             --dry-run` there), recover that one instead."
        )?;
        writeln!(
            f,
            "the membership entry {} is appended in term {}.",
            self.entry.log_id.index, self.vote.leader_id.term
        )?;
        write!(
            f,
            "never start the dropped nodes with their data again: they would still take \
             themselves for a majority. Wipe them and add them back with --join."
        )
    }
}

/// Reads the node's state in `dir` and plans the recovery with `voters`; writes it unless
/// `dry_run`. Refuses while the node's agent runs (its log is locked).
pub fn run(
    dir: &std::path::Path,
    voters: &BTreeSet<NodeId>,
    dry_run: bool,
) -> Result<Plan, RecoverError> {
    if !dir.is_dir() {
        return Err(RecoverError::Missing(dir.to_owned()));
    }
    let dir = DataDir::create(dir)?;
    let node_id = Identity::recorded(&dir)?.ok_or(RecoverError::NoIdentity)?;
    if !voters.contains(&node_id) {
        return Err(RecoverError::NotAmongVoters(node_id));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut log = LogStore::open(&dir, 1 << 20).map_err(|e| RecoverError::Open(Box::new(e)))?;
        let state = log.get_log_state().await?;
        let membership = match last_membership(&mut log, state.last_purged_log_id).await? {
            Some(membership) => membership,
            None => state_machine::stored_membership(&dir)?.membership().clone(),
        };
        let members_before: BTreeMap<NodeId, Member> = membership
            .nodes()
            .map(|(id, member)| (*id, member.clone()))
            .collect();
        if members_before.is_empty() {
            return Err(RecoverError::NoMembership);
        }
        let nodes = voters
            .iter()
            .map(|id| match members_before.get(id) {
                Some(member) => Ok((*id, member.clone())),
                None => {
                    let known: Vec<_> = members_before.keys().collect();
                    Err(RecoverError::Unknown(*id, format!("{known:?}")))
                }
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let vote = log.read_vote().await?.unwrap_or_default();
        let term = vote.leader_id.term + 1;
        let last = state.last_log_id;
        let entry = Entry {
            log_id: LogId::new(
                CommittedLeaderId::new(term, node_id),
                last.map_or(0, |id| id.index) + 1,
            ),
            payload: EntryPayload::Membership(Membership::new(vec![voters.clone()], nodes)),
        };
        let plan = Plan {
            node_id,
            voters_before: membership.voter_ids().collect(),
            members_before,
            last,
            committed: log.read_committed().await?,
            vote: Vote::new(term, node_id),
            entry,
        };
        if !dry_run {
            log.save_vote(&plan.vote).await?;
            log.blocking_append([plan.entry.clone()]).await?;
        }
        Ok(plan)
    })
}

/// The membership of the last membership entry in the log, if one is left (a snapshot may have
/// taken it: then the state machine has it).
async fn last_membership(
    log: &mut LogStore,
    purged: Option<LogId>,
) -> Result<Option<Membership<NodeId, Member>>, StorageError> {
    const CHUNK: u64 = 1024;
    let first = purged.map_or(0, |id| id.index + 1);
    let Some(mut end) = log
        .get_log_state()
        .await?
        .last_log_id
        .map(|id| id.index + 1)
    else {
        return Ok(None);
    };
    while end > first {
        let start = end.saturating_sub(CHUNK).max(first);
        let entries = log.try_get_log_entries(start..end).await?;
        let found = entries
            .into_iter()
            .rev()
            .find_map(|entry| match entry.payload {
                EntryPayload::Membership(membership) => Some(membership),
                _ => None,
            });
        if found.is_some() {
            return Ok(found);
        }
        end = start;
    }
    Ok(None)
}
