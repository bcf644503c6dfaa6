//! Backups: one file holding the replicated state at a log entry (the app's state, captured by
//! the snapshot hook between two deliveries, what delivery keeps besides it, the entry, and the
//! membership), with a checksum; and `hermes-agent restore`, which makes it the state of a new
//! cluster's first node.
//!
//! A backup is a snapshot of the node that took it, as Raft snapshots are: `POST /backup` has
//! the node build one now ([`super::Node::backup`]), and sends the file. Restoring writes it
//! into an empty data directory as the snapshot to install, with a log that starts after it and
//! holds one entry, naming the new node the only voter (as `recover` does). At start, the state
//! machine installs the snapshot through the restore hook; the node elects itself, and the
//! others join it with `--join` and catch up from the same snapshot.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use openraft::{Membership, StoredMembership, storage::RaftLogStorage as _};

use super::Node;
use crate::{
    data_dir::DataDir,
    deliver::state_machine::{self, Contents},
    order::{
        identity::Identity,
        log_store::{LONGEST_ENTRY, LogStore, decode, encode},
        typ::{LogId, Member, NodeId, SnapshotMeta, StorageError},
    },
};

/// What a backup file begins with (its format's version included).
const MAGIC: &[u8] = b"hermes backup 1\n";
/// Longest a backup may take to be ready (the snapshot hook included): the admin API gives a
/// request 60 s in all, the file's transfer included.
const BUILD_WITHIN: Duration = Duration::from_secs(45);
/// How long one ask for a snapshot is waited on before it is asked again (openraft passes over
/// an ask while it builds one).
const ASK_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a Hermes backup (it does not begin as one)")]
    NotABackup,
    #[error("the backup is damaged: its checksum does not match (cut short, or changed)")]
    Damaged,
    #[error("the backup cannot be read: {0}")]
    Decode(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the backup holds no app state: it was taken without snapshot hooks")]
    NoAppState,
    #[error("the backup's log entry is missing or out of range")]
    NoEntry,
    #[error("--addr {0} is not HOST:PORT")]
    Addr(String),
    #[error("cannot read {0}: {1}")]
    Read(std::path::PathBuf, std::io::Error),
    #[error("{0} is not empty: restore seeds a new node's data directory")]
    NotEmpty(std::path::PathBuf),
    #[error("{0}")]
    Identity(#[from] crate::order::identity::IdentityError),
    #[error("the log: {0}")]
    Log(Box<StorageError>),
}

impl From<StorageError> for BackupError {
    fn from(error: StorageError) -> Self {
        Self::Log(Box::new(error))
    }
}

/// A snapshot, as a backup file carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub meta: SnapshotMeta,
    pub snapshot: Vec<u8>,
}

impl Backup {
    /// The file: [`MAGIC`], the snapshot with its metadata (as the state machine keeps it),
    /// and the CRC-32 of all before it.
    pub fn to_file(&self) -> std::io::Result<Vec<u8>> {
        Ok(framed(&encode(&(&self.meta, &self.snapshot))?))
    }

    pub fn from_file(file: &[u8]) -> Result<Self, BackupError> {
        let body = file.strip_prefix(MAGIC).ok_or(BackupError::NotABackup)?;
        let (body, checksum) = body.split_last_chunk::<4>().ok_or(BackupError::Damaged)?;
        if crc32fast::hash(&file[..MAGIC.len() + body.len()]) != u32::from_le_bytes(*checksum) {
            return Err(BackupError::Damaged);
        }
        let (meta, snapshot) = decode(body).map_err(BackupError::Decode)?;
        Ok(Self { meta, snapshot })
    }

    /// What it holds.
    pub fn summary(&self) -> Result<Summary, BackupError> {
        Ok(Summary {
            entry: self.meta.last_log_id,
            voters: self.meta.last_membership.membership().voter_ids().collect(),
            contents: state_machine::contents(&self.snapshot).map_err(BackupError::Decode)?,
        })
    }
}

impl Node {
    /// A backup of the replicated state as of now (everything committed when it was asked
    /// for): a snapshot this replica builds through the hooks once it has applied that much, as
    /// a backup file. Why not, if not.
    pub async fn backup(&self) -> Result<Vec<u8>, String> {
        if !self.hooks {
            return Err(
                "a backup needs the snapshot hooks (--snapshot-cmd and --restore-cmd): \
                        without them Hermes cannot capture the app's state"
                    .into(),
            );
        }
        if self.applied.fenced() || self.divergence.first().is_some_and(|found| found.minority) {
            return Err(
                "this replica's answers diverged from the others': take the backup on \
                        another node"
                    .into(),
            );
        }
        let deadline = tokio::time::Instant::now() + BUILD_WITHIN;
        let target = self
            .read_index()
            .await
            .map_err(|e| format!("what is committed cannot be known: {e}"))?;
        if target == 0 {
            return Err("nothing is committed yet: there is no state to back up".into());
        }
        tokio::time::timeout_at(deadline, self.applied.applied_at_least(target))
            .await
            .map_err(|_| format!("this replica did not apply entry {target} in time"))?;
        loop {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| e.to_string())?;
            let built = self
                .raft
                .wait(Some(ASK_EVERY))
                .metrics(
                    |m| m.snapshot.is_some_and(|id| id.index >= target),
                    "a snapshot for a backup",
                )
                .await;
            if built.is_ok() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no snapshot was built within {BUILD_WITHIN:?}; see the agent's log (the \
                     snapshot hook)"
                ));
            }
        }
        // Read and framed off the runtime: it may be large.
        let file = self
            .dir
            .blocking(|dir| {
                let snapshot = state_machine::stored_snapshot_file(dir)?
                    .ok_or_else(|| std::io::Error::other("no snapshot is kept"))?;
                Ok(framed(&snapshot))
            })
            .await
            .map_err(|e| format!("the snapshot cannot be read: {e}"))?;
        tracing::info!(entry = target, bytes = file.len(), "backup taken");
        Ok(file)
    }
}

/// A backup file around `snapshot` (a snapshot and its metadata, encoded together):
/// [`MAGIC`], it, and the CRC-32 of both.
fn framed(snapshot: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(MAGIC.len() + snapshot.len() + 4);
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(snapshot);
    let checksum = crc32fast::hash(&file);
    file.extend(checksum.to_le_bytes());
    file
}

/// What a backup holds, as people read it.
#[derive(Debug)]
pub struct Summary {
    pub entry: Option<LogId>,
    pub voters: Vec<NodeId>,
    pub contents: Contents,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (index, term) = self
            .entry
            .map_or((0, 0), |id| (id.index, id.leader_id.term));
        write!(
            f,
            "the state at log entry {index} (term {term}): requests up to Hermes-Log-Index {}, {} \
             delivered to the app; {}; taken in a cluster of voters {:?}",
            self.contents.requests,
            self.contents.deliveries,
            match self.contents.app {
                Some(bytes) => format!("the app's state is {bytes} bytes"),
                None => "no app state".to_owned(),
            },
            self.voters
        )
    }
}

/// Makes the backup in `file` the state of node `node_id`, reached by its peers at `addr`, in
/// the new data directory `data_dir`: the first node of a new cluster, its only member (the
/// snapshot's membership is replaced with it). Writes nothing if `dry_run`. Its summary.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    node_id: NodeId,
    addr: &str,
    dry_run: bool,
) -> Result<Summary, BackupError> {
    let bytes = std::fs::read(file).map_err(|e| BackupError::Read(file.to_owned(), e))?;
    let backup = Backup::from_file(&bytes)?;
    drop(bytes);
    let summary = backup.summary()?;
    if summary.contents.app.is_none() {
        return Err(BackupError::NoAppState);
    }
    let last = backup.meta.last_log_id.ok_or(BackupError::NoEntry)?;
    let term = last
        .leader_id
        .term
        .checked_add(1)
        .filter(|_| last.index < u64::MAX)
        .ok_or(BackupError::NoEntry)?;
    if !addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    {
        return Err(BackupError::Addr(addr.to_owned()));
    }
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        return Err(BackupError::NotEmpty(data_dir.to_owned()));
    }
    if dry_run {
        return Ok(summary);
    }
    std::fs::create_dir_all(data_dir)?;
    let dir = DataDir::create(data_dir)?;
    let identity = Identity::load(&dir, node_id)?;
    let members = BTreeMap::from([(
        node_id,
        Member {
            addr: addr.to_owned(),
            incarnation: identity.incarnation,
        },
    )]);
    // The new cluster's history begins here, with this node alone: the nodes that join it
    // install this snapshot, and take its leader for a member.
    let meta = SnapshotMeta {
        last_membership: StoredMembership::new(
            Some(last),
            Membership::new(vec![BTreeSet::from([node_id])], members.clone()),
        ),
        ..backup.meta
    };
    state_machine::seed(&dir, &meta, &backup.snapshot)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut log = LogStore::open(&dir, 1 << 20, LONGEST_ENTRY)?;
        log.purge(last).await?;
        let (entry, vote) = super::recover::membership_entry(node_id, term, Some(last), members);
        super::recover::write(&mut log, &entry, &vote).await
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> Backup {
        Backup {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
                last_membership: Default::default(),
                snapshot_id: "42-40".into(),
            },
            snapshot: b"state".to_vec(),
        }
    }

    #[test]
    fn a_backup_reads_back_as_written_and_any_change_to_it_is_found() {
        let file = backup().to_file().unwrap();
        assert_eq!(Backup::from_file(&file).unwrap(), backup());
        for at in [0, MAGIC.len(), file.len() / 2, file.len() - 1] {
            let mut changed = file.clone();
            changed[at] ^= 1;
            assert!(
                Backup::from_file(&changed).is_err(),
                "a bit flipped at {at}"
            );
        }
        for cut in [0, 3, MAGIC.len(), file.len() - 1] {
            assert!(Backup::from_file(&file[..cut]).is_err(), "cut at {cut}");
        }
    }
}
