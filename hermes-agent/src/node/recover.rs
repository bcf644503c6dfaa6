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
//! Recover one survivor only: the most up-to-date one (whose last entry has the highest term,
//! then the highest index). The other survivors, named in `--voters`, start unchanged and follow
//! it: its new entry's term is above all of theirs. Two survivors recovered each on its own
//! could each write an entry of its own, and one would truncate entries the other committed.
//!
//! What this costs: entries committed by the lost nodes that never reached this one are lost;
//! entries this node has that were not known committed are committed now. The lost nodes must
//! never come back with their data: they would still take themselves for a majority of the old
//! cluster.
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
        log_store::{LONGEST_ENTRY, LogStore},
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
    #[error("this node's agent is still running (its log is locked): stop it first")]
    Running,
    #[error("cannot open the log: {0}")]
    Open(Box<StorageError>),
    #[error("the data directory holds no log")]
    NoLog,
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
    /// The last entry of the log, and the last known committed (or applied).
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
        let last_term = self.last.map_or(0, |id| id.leader_id.term);
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
            "this node's log ends at entry {last} of term {last_term}; it knew entries up to \
             {committed} committed."
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
            "requests committed by the lost nodes beyond this entry, if any, are lost. Recover \
             one survivor only, the most up-to-date (`recover --dry-run` on each: the highest \
             last term, then the highest last entry); start the others unchanged, named in \
             --voters: they follow it."
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
    // An older Hermes' log is refused when opened, saying why.
    if !dir.contains(crate::order::log_store::FILE)?
        && !dir.contains(crate::order::log_store::OLD_FILE)?
    {
        return Err(RecoverError::NoLog);
    }
    runtime.block_on(async {
        let mut log = LogStore::open(&dir, 1 << 20, LONGEST_ENTRY).map_err(|e| {
            // The log is locked while open (the store passes the refusal on as text): the agent
            // holds it.
            if e.to_string()
                .contains(crate::order::log_store::ALREADY_OPEN)
            {
                RecoverError::Running
            } else {
                RecoverError::Open(Box::new(e))
            }
        })?;
        let state = log.get_log_state().await?;
        let mut last = state.last_log_id;
        // A snapshot installed before its log was purged (a crash between the two): the state
        // machine is ahead of the log. Purge as openraft does at start, so that the entry goes
        // after everything applied.
        let applied = state_machine::stored_applied(&dir)?;
        if let Some(applied) = applied
            && Some(applied) > last
        {
            if !dry_run {
                // Entries of an older term beyond it were never committed: a snapshot of a
                // later term replaced them.
                if let Some(stale) = last.filter(|last| last.index > applied.index) {
                    log.truncate(LogId::new(stale.leader_id, applied.index + 1))
                        .await?;
                }
                log.purge(applied).await?;
            }
            last = Some(applied);
        }
        // As openraft finds it: the last membership entry after what is applied, or else the
        // state machine's.
        let after = applied.max(state.last_purged_log_id);
        let membership = match last_membership(&mut log, after).await? {
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
        let (entry, vote) = membership_entry(node_id, vote.leader_id.term + 1, last, nodes);
        let plan = Plan {
            node_id,
            voters_before: membership.voter_ids().collect(),
            members_before,
            last,
            committed: log.read_committed().await?.max(applied),
            vote,
            entry,
        };
        if !dry_run {
            write(&mut log, &plan.entry, &plan.vote).await?;
        }
        Ok(plan)
    })
}

/// The entry that makes `nodes` the only members, all voters, right after `last`, under `term`,
/// and node `node_id`'s vote for itself in that term (not committed: it is elected anew).
pub(crate) fn membership_entry(
    node_id: NodeId,
    term: u64,
    last: Option<LogId>,
    nodes: BTreeMap<NodeId, Member>,
) -> (Entry, Vote) {
    let voters: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let entry = Entry {
        log_id: LogId::new(
            CommittedLeaderId::new(term, node_id),
            last.map_or(0, |id| id.index) + 1,
        ),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    };
    (entry, Vote::new(term, node_id))
}

/// Saves `vote`, then appends `entry` (see [`membership_entry`]), durably.
pub(crate) async fn write(
    log: &mut LogStore,
    entry: &Entry,
    vote: &Vote,
) -> Result<(), StorageError> {
    log.save_vote(vote).await?;
    log.blocking_append([entry.clone()]).await
}

/// The membership of the last membership entry in the log after entry `after`, if there is
/// one (the state machine has the one before).
async fn last_membership(
    log: &mut LogStore,
    after: Option<LogId>,
) -> Result<Option<Membership<NodeId, Member>>, StorageError> {
    // Entries read at once: they may be large.
    const CHUNK: u64 = 64;
    let first = after.map_or(0, |id| id.index + 1);
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

#[cfg(test)]
mod tests {
    use openraft::StoredMembership;

    use super::*;
    use crate::{deliver::progress::ProgressFile, order::log_store::encode};

    fn member(id: NodeId) -> Member {
        Member {
            addr: format!("10.0.0.{id}:7000"),
            incarnation: id,
        }
    }

    fn membership(voters: &[NodeId]) -> Membership<NodeId, Member> {
        let nodes: BTreeMap<_, _> = voters.iter().map(|id| (*id, member(*id))).collect();
        Membership::new(vec![voters.iter().copied().collect()], nodes)
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// What a snapshot installed up to entry 10 of term 2 leaves in the state machine: the
    /// progress, and the snapshot's membership (four voters, from entry 9).
    fn snapshot_installed(dir: &DataDir) {
        let (mut progress_file, mut progress) =
            ProgressFile::open(dir.open_file("progress").unwrap()).unwrap();
        progress.applied = Some(log_id(2, 10));
        progress_file.write(&progress).unwrap();
        let snapshot = StoredMembership::new(Some(log_id(2, 9)), membership(&[1, 2, 3, 4]));
        dir.replace("membership", &encode(&snapshot).unwrap())
            .unwrap();
    }

    /// A crash after a snapshot was installed, before the log was purged: the state machine
    /// applied up to entry 10 (with the snapshot's membership), the log ends at 3 with an older
    /// membership. The recovery goes after entry 10, and starts from the snapshot's membership.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_state_machine_ahead_of_the_log_is_recovered_after_what_it_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        Identity::load(&dir, 2).unwrap();
        {
            let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
            let old = Entry {
                log_id: log_id(1, 3),
                payload: EntryPayload::Membership(membership(&[1, 2, 3])),
            };
            log.purge(log_id(1, 2)).await.unwrap();
            log.blocking_append([old]).await.unwrap();
            log.save_vote(&Vote::new(4, 1)).await.unwrap();
        }
        snapshot_installed(&dir);

        let path = tmp.path().to_owned();
        let voters: BTreeSet<NodeId> = [2, 4].into();
        let plan = tokio::task::spawn_blocking(move || run(&path, &voters, false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            plan.members_before.len(),
            4,
            "the snapshot's membership: {plan}"
        );
        assert_eq!(
            plan.entry.log_id,
            LogId::new(CommittedLeaderId::new(5, 2), 11)
        );
        assert_eq!(plan.vote, Vote::new(5, 2));

        let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 10)));
        assert_eq!(state.last_log_id, Some(plan.entry.log_id));
        let entries = log.try_get_log_entries(11..12).await.unwrap();
        let EntryPayload::Membership(recovered) = &entries[0].payload else {
            panic!("{:?}", entries[0]);
        };
        assert_eq!(recovered.voter_ids().collect::<Vec<_>>(), [2, 4]);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
    }

    /// The same, with the log longer than what was applied, in an older term than the snapshot:
    /// its entries beyond the snapshot were replaced by it, and go.
    #[tokio::test(flavor = "multi_thread")]
    async fn entries_of_an_older_term_beyond_a_snapshot_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        Identity::load(&dir, 2).unwrap();
        {
            let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
            let entries = (1..=12).map(|index| Entry {
                log_id: log_id(1, index),
                payload: EntryPayload::Membership(membership(&[1, 2, 3])),
            });
            log.blocking_append(entries).await.unwrap();
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
        }
        snapshot_installed(&dir);

        let path = tmp.path().to_owned();
        let plan = tokio::task::spawn_blocking(move || run(&path, &[2].into(), false))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(plan.entry.log_id.index, 11);
        let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(plan.entry.log_id));
        assert_eq!(log.try_get_log_entries(11..).await.unwrap().len(), 1);
    }

    #[test]
    fn a_directory_without_a_log_or_without_this_node_among_the_voters_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("none");
        let error = run(&missing, &[1].into(), true).unwrap_err();
        assert!(matches!(error, RecoverError::Missing(_)), "{error}");
        let dir = DataDir::create(tmp.path()).unwrap();
        Identity::load(&dir, 3).unwrap();
        let error = run(tmp.path(), &[1, 2].into(), true).unwrap_err();
        assert!(matches!(error, RecoverError::NotAmongVoters(3)), "{error}");
        let error = run(tmp.path(), &[3].into(), true).unwrap_err();
        assert!(matches!(error, RecoverError::NoLog), "{error}");
    }
}
