//! The durable Raft log, an append-only [`file`], with group commit.
//!
//! `append` puts entries in an in-memory [`cache`], where readers see them at once, and queues
//! them to the [`writer`] thread. The writer takes everything queued, appends it to the file in
//! one write, syncs it once (`fdatasync`), and only then tells openraft the entries are
//! durable. The cache also keeps the most recent durable entries, which
//! replication reads, within a budget of bytes; older ones are read from disk on a blocking
//! thread. Operations that must be in order with appends (truncate, purge, vote) go through the
//! same queue and wait for their commit. The commit index is saved with appends, never beyond
//! the last durable entry.
//!
//! The store also tells proposers when their batch is committed (openraft itself answers a
//! proposal only once the leader has applied it, which waits for the app).
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    ops::{Bound, RangeBounds},
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    task::{Context, Poll},
};

mod cache;
mod file;
mod writer;

use openraft::{RaftLogReader, storage::RaftLogStorage};
use prometheus_client::metrics::histogram::Histogram;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{oneshot, watch};

use super::typ::{
    BatchId, Entry, EntryPayload, LogFlushed, LogId, LogState, NodeId, StorageError,
    StorageIOError, TypeConfig, Vote,
};
use crate::data_dir::DataDir;
use cache::Cache;
use file::Disk;
pub use file::{ALREADY_OPEN, FILE, OLD_FILE};
use writer::{Done, Write, write_loop};

/// The longest entry any `--max-frame` lets a peer send.
pub const LONGEST_ENTRY: u64 = u32::MAX as u64;

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    disk: Arc<Mutex<Disk>>,
    state: Mutex<State>,
    /// Bytes of durable entries the cache keeps.
    cache_budget: usize,
    watches: Mutex<Watches>,
    /// `None` only while dropping.
    writer: Option<mpsc::Sender<Write>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    counts: Counts,
    /// Where the writer records how long each sync took, once the node gives it one.
    sync_seconds: OnceLock<Histogram>,
    /// How far the entries are durable, for those that wait for it.
    durable: watch::Sender<Durable>,
    /// While set, the writer waits before each write ([`LogStore::hold_writes`]).
    #[cfg(test)]
    hold: (Mutex<bool>, std::sync::Condvar),
}

/// How far the log's entries are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durable {
    /// Up to this entry's index.
    Through(Option<u64>),
    /// The log can no longer write.
    Failed,
}

impl Inner {
    /// Tells those waiting that the entries are durable up to `state.durable`, now (which a
    /// truncation lowers); nothing more once the log failed.
    fn durable_now(&self, state: &State) {
        let now = Durable::Through(state.durable.map(|id| id.index));
        self.durable.send_if_modified(|durable| {
            let changed = *durable != Durable::Failed && *durable != now;
            if changed {
                *durable = now;
            }
            changed
        });
    }
}

/// What the log counts, for the metrics.
#[derive(Default)]
struct Counts {
    entries: AtomicU64,
    /// Commands in the entries appended.
    requests: AtomicU64,
    /// Transactions the writer made durable.
    syncs: AtomicU64,
}

impl Drop for Inner {
    /// Lets the writer finish what is queued and close the file (and its lock) before returning,
    /// so that the log can be opened again at once.
    fn drop(&mut self) {
        self.writer = None;
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes held back ([`LogStore::hold_writes`]).
#[cfg(test)]
pub struct Held(Arc<Inner>);

#[cfg(test)]
impl Drop for Held {
    fn drop(&mut self) {
        *self.0.hold.0.lock().unwrap() = false;
        self.0.hold.1.notify_all();
    }
}

#[cfg(test)]
impl Inner {
    /// Waits while writes are held.
    fn wait_while_held(&self) {
        let (held, released) = &self.hold;
        drop(
            released
                .wait_while(held.lock().unwrap(), |held| *held)
                .unwrap(),
        );
    }
}

#[derive(Default)]
struct State {
    /// Entries not yet durable, and the most recent durable ones.
    cache: Cache,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    /// The last entry the writer made durable.
    durable: Option<LogId>,
    committed: Option<LogId>,
}

/// Proposals waiting to hear that their batch is committed.
#[derive(Default)]
struct Watches {
    waiting: HashMap<BatchId, oneshot::Sender<()>>,
    /// Index of the entry each watched batch was appended as.
    placed: BTreeMap<u64, BatchId>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, keeping up to `cache_budget` bytes of durable
    /// entries in memory; refused while another process has it open, or if an entry it holds is
    /// longer than `max_entry` bytes (`--max-frame`, or [`LONGEST_ENTRY`] for the offline tools,
    /// which an operator runs on their own data directory).
    pub fn open(dir: &DataDir, cache_budget: usize, max_entry: u64) -> Result<Self, StorageError> {
        let disk = Disk::open(dir, max_entry).map_err(|e| StorageIOError::read_logs(&e))?;
        let last = match disk.last_index() {
            Some(index) => disk
                .span(index..=index)
                .read()
                .map_err(|e| StorageIOError::read_logs(&e))?
                .pop()
                .map(|entry| entry.log_id),
            None => None,
        };
        let mut state = State {
            last_purged: disk.purged(),
            committed: disk.committed(),
            ..State::default()
        };
        state.last_log_id = last.or(state.last_purged);
        state.durable = state.last_log_id;
        // Saved along with appends, never beyond the entries durable with it; checked all the same.
        if state.committed.map(|c| c.index) > state.last_log_id.map(|l| l.index) {
            state.committed = state.last_log_id;
        }
        let durable = Durable::Through(state.durable.map(|id| id.index));
        let disk = Arc::new(Mutex::new(disk));

        let (writer, queue) = mpsc::channel();
        let writer_disk = Arc::clone(&disk);
        let shared = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            let thread = std::thread::Builder::new()
                .name("hermes-log-writer".into())
                .spawn(move || write_loop(&writer_disk, &queue, &weak));
            Inner {
                disk,
                state: Mutex::new(state),
                cache_budget,
                watches: Mutex::default(),
                writer: Some(writer),
                writer_thread: thread.ok(),
                counts: Counts::default(),
                sync_seconds: OnceLock::new(),
                durable: watch::Sender::new(durable),
                #[cfg(test)]
                hold: Default::default(),
            }
        });
        if shared.writer_thread.is_none() {
            return Err(StorageIOError::write_logs(&std::io::Error::other(
                "cannot start the log writer",
            ))
            .into());
        }
        Ok(Self { inner: shared })
    }

    /// Resolves once batch `id`, appended to this log after this call, is committed; fails if
    /// the entry is truncated away (a leader change). Dropping the watch withdraws it, however
    /// the wait ends: a proposer's timeout drops it half way.
    pub fn watch(&self, id: BatchId) -> Watch {
        let (tx, rx) = oneshot::channel();
        self.inner.watches.lock().unwrap().waiting.insert(id, tx);
        Watch {
            log: self.clone(),
            id,
            committed: rx,
        }
    }

    /// Watches held now: each belongs to a proposal still waiting.
    pub fn watching(&self) -> usize {
        self.inner.watches.lock().unwrap().waiting.len()
    }

    /// Entries appended, the commands in them, and the writes made durable, since the start.
    pub fn counts(&self) -> (u64, u64, u64) {
        let counts = &self.inner.counts;
        (
            counts.entries.load(Ordering::Relaxed),
            counts.requests.load(Ordering::Relaxed),
            counts.syncs.load(Ordering::Relaxed),
        )
    }

    /// Records how long each of the log's syncs takes in `histogram` from now on.
    pub fn time_syncs(&self, histogram: Histogram) {
        let _ = self.inner.sync_seconds.set(histogram);
    }

    /// Size of the log's file on disk.
    pub fn file_bytes(&self) -> u64 {
        self.inner.disk.lock().unwrap().len()
    }

    /// Bytes left for the agent on the log's filesystem (the data directory's).
    pub fn disk_available(&self) -> u64 {
        let file = self.inner.disk.lock().unwrap().file();
        nix::sys::statvfs::fstatvfs(&*file).map_or(0, |stat| {
            stat.blocks_available().saturating_mul(stat.fragment_size())
        })
    }

    /// Bytes of entries held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.inner.state.lock().unwrap().cache.bytes()
    }

    /// The last entry of the log, durable or not yet.
    pub fn last(&self) -> Option<LogId> {
        self.inner.state.lock().unwrap().last_log_id
    }

    /// Makes this node's own committed vote, if the log holds one, a candidate's vote again, so
    /// that a node that led before it stopped does not lead again in that term: a new one is
    /// elected. A leader sends its entries to the followers while it writes them, so its log
    /// may lack some it sent, committed ones too. Leading again in the same term, it would give
    /// their indexes to new entries under the same log ids, and a follower would take each for
    /// the entry it holds. Says whether the vote was this node's.
    pub async fn resign(&mut self, me: NodeId) -> Result<bool, StorageError> {
        match self.read_vote().await? {
            Some(vote) if vote.is_committed() && vote.leader_id().voted_for() == Some(me) => {
                self.save_vote(&Vote::new(vote.leader_id().term, me))
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Waits until the entries this log holds up to `index` are durable; fails if the log can no
    /// longer write. A leader sends its entries to its followers while it writes them, so they
    /// may be committed before its own log has them.
    pub async fn durable_through(&self, index: u64) -> std::io::Result<()> {
        // Usually it is already (always on a follower): no lock, no watch.
        if let Durable::Through(through) = *self.inner.durable.borrow()
            && through >= Some(index)
        {
            return Ok(());
        }
        let last = self.last().map(|last| last.index);
        let index = last.map_or(0, |last| last.min(index));
        let mut durable = self.inner.durable.subscribe();
        let reached = durable
            .wait_for(|durable| match durable {
                Durable::Through(through) => last.is_none() || *through >= Some(index),
                Durable::Failed => true,
            })
            .await
            .map(|durable| *durable);
        match reached {
            Ok(Durable::Through(_)) => Ok(()),
            _ => Err(std::io::Error::other(
                "the Raft log can no longer write: its entries are not durable",
            )),
        }
    }

    /// Those waiting in [`Self::durable_through`] now, or that waited and hold on to their watch.
    #[cfg(test)]
    pub fn durable_waiters(&self) -> usize {
        self.inner.durable.receiver_count()
    }

    /// Keeps the writer from writing until the hold is dropped.
    #[cfg(test)]
    pub fn hold_writes(&self) -> Held {
        *self.inner.hold.0.lock().unwrap() = true;
        Held(Arc::clone(&self.inner))
    }

    /// Appends `entry` with the writer held: on return the log holds it, not on disk, until the
    /// hold is dropped; the task ends once it is durable.
    #[cfg(test)]
    pub async fn append_held(
        &self,
        entry: Entry,
    ) -> (Held, tokio::task::JoinHandle<Result<(), StorageError>>) {
        use openraft::storage::RaftLogStorageExt as _;

        let held = self.hold_writes();
        let id = entry.log_id;
        let appending = tokio::spawn({
            let mut log = self.clone();
            async move { log.blocking_append([entry]).await }
        });
        while self.last() != Some(id) {
            tokio::task::yield_now().await;
        }
        (held, appending)
    }

    /// The commit index openraft last reported, for status and readiness.
    pub fn committed(&self) -> Option<LogId> {
        self.inner.state.lock().unwrap().committed
    }

    fn queue(&self, write: Write) -> Result<(), StorageError> {
        self.inner
            .writer
            .as_ref()
            .expect("writer lives as long as the store")
            .send(write)
            .map_err(|_| {
                StorageIOError::write_logs(&std::io::Error::other("log writer stopped")).into()
            })
    }

    async fn queue_and_wait(
        &self,
        make: impl FnOnce(Done) -> Write,
        error: fn(&std::io::Error) -> StorageIOError,
    ) -> Result<(), StorageError> {
        let (done, wait) = oneshot::channel();
        self.queue(make(done))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(error(&std::io::Error::other(message)).into()),
            Err(_) => Err(error(&std::io::Error::other("log writer stopped")).into()),
        }
    }
}

/// A proposer's wait for its batch to be committed ([`LogStore::watch`]).
pub struct Watch {
    log: LogStore,
    id: BatchId,
    committed: oneshot::Receiver<()>,
}

impl Future for Watch {
    type Output = Result<(), oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.committed).poll(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.log
            .inner
            .watches
            .lock()
            .unwrap()
            .waiting
            .remove(&self.id);
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (cached, last, first_cached) = {
            let state = self.inner.state.lock().unwrap();
            let cached: Vec<Entry> = state.cache.range(range.clone()).cloned().collect();
            let first_cached = state.cache.first_index();
            (cached, state.last_log_id.map(|id| id.index), first_cached)
        };
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        // Entries below the cache come from disk, then the cached ones follow.
        let mut found = Vec::new();
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        if first_cached.is_none_or(|first| start < first) {
            let end = first_cached.map_or(Bound::Unbounded, Bound::Excluded);
            let end = match (end, range.end_bound()) {
                (Bound::Excluded(a), Bound::Excluded(b)) => Bound::Excluded(a.min(*b)),
                (Bound::Excluded(a), Bound::Included(b)) => {
                    Bound::Excluded(a.min(b.saturating_add(1)))
                }
                (Bound::Unbounded, b) => b.cloned(),
                (other, _) => other,
            };
            // A lagging follower's entries, from disk: not on the runtime's threads.
            let span = self
                .inner
                .disk
                .lock()
                .unwrap()
                .span((Bound::Included(start), end));
            found = tokio::task::spawn_blocking(move || span.read())
                .await
                .map_err(|e| StorageIOError::read_logs(&std::io::Error::other(e)))?
                .map_err(|e| StorageIOError::read_logs(&e))?;
        }
        found.extend(cached);
        found.retain(|e| e.log_id.index <= last);
        Ok(found)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let state = self.inner.state.lock().unwrap();
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id: state.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.queue_and_wait(
            |done| Write::Vote { vote, done },
            |e| StorageIOError::write_vote(e),
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.inner.disk.lock().unwrap().vote())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.inner.state.lock().unwrap().committed = committed;
        if let Some(committed) = committed {
            let mut watches = self.inner.watches.lock().unwrap();
            let later = watches.placed.split_off(&(committed.index + 1));
            for id in std::mem::replace(&mut watches.placed, later).into_values() {
                if let Some(watch) = watches.waiting.remove(&id) {
                    let _ = watch.send(());
                }
            }
        }
        // Written along with the next append: a lost commit index is learnt again from the
        // leader, so it is not worth a write of its own.
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.state.lock().unwrap().committed)
    }

    async fn append<I>(&mut self, entries: I, flushed: LogFlushed) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Encoded before taking the locks, which replication's reads need too.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|entry| {
                let bytes =
                    encode(entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
                Ok((entry.log_id, bytes))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        {
            let mut state = self.inner.state.lock().unwrap();
            let mut watches = self.inner.watches.lock().unwrap();
            let counts = &self.inner.counts;
            counts
                .entries
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            for (entry, (_, bytes)) in entries.into_iter().zip(&encoded) {
                if let EntryPayload::Normal(proposal) = &entry.payload {
                    counts
                        .requests
                        .fetch_add(proposal.requests() as u64, Ordering::Relaxed);
                    if let Some(id) = proposal.id()
                        && watches.waiting.contains_key(&id)
                    {
                        watches.placed.insert(entry.log_id.index, id);
                    }
                }
                state.last_log_id = Some(entry.log_id);
                state.cache.insert(entry, bytes.len());
            }
        }
        self.queue(Write::Append {
            entries: encoded,
            flushed,
        })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            // Watched batches from the truncated entries will not commit: dropping their
            // senders tells the proposers.
            let mut watches = self.inner.watches.lock().unwrap();
            for id in watches.placed.split_off(&log_id.index).into_values() {
                watches.waiting.remove(&id);
            }
        }
        {
            let mut state = self.inner.state.lock().unwrap();
            state.cache.remove_from(log_id.index);
            let previous = log_id.index.checked_sub(1);
            let previous = match previous {
                Some(i) if state.last_purged.is_none_or(|p| p.index < i) => {
                    match state.cache.get(i) {
                        Some(entry) => Some(entry.log_id),
                        None => {
                            let span = self.inner.disk.lock().unwrap().span(i..=i);
                            span.read()
                                .map_err(|e| StorageIOError::read_logs(&e))?
                                .first()
                                .map(|e| e.log_id)
                        }
                    }
                }
                _ => state.last_purged,
            };
            state.last_log_id = previous;
            state.durable = state.durable.min(previous);
            self.inner.durable_now(&state);
        }
        self.queue_and_wait(
            |done| Write::Truncate {
                from: log_id.index,
                done,
            },
            |e| StorageIOError::write_logs(e),
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut state = self.inner.state.lock().unwrap();
            state.cache.remove_through(log_id.index);
            state.last_purged = Some(log_id);
            if state.last_log_id < Some(log_id) {
                state.last_log_id = Some(log_id);
            }
        }
        self.queue_and_wait(
            |done| Write::Purge { upto: log_id, done },
            |e| StorageIOError::write_logs(e),
        )
        .await
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    postcard::to_stdvec(value).map_err(std::io::Error::other)
}

/// Decodes postcard: log entries, peer calls and replies (public for the fuzz targets).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    postcard::from_bytes(bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt as _;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_writes_zeros_ahead_of_what_it_appends() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
        let entries: Vec<Entry> = (1..=3)
            .map(|i| crate::testing::entry(1, i, vec![i as u8; 3000].into()))
            .collect();
        log.blocking_append(entries).await.unwrap();
        // Written after the append's zeros (the writer takes one thing at a time).
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        let metadata = log.inner.disk.lock().unwrap().file().metadata().unwrap();
        assert!(metadata.len() > 0 && metadata.len() == log.file_bytes());
        // Every byte of the file is on the disk (st_blocks counts 512-byte units; a hole, none).
        assert!(
            metadata.blocks() * 512 >= metadata.len(),
            "{} of {} bytes on the disk",
            metadata.blocks() * 512,
            metadata.len()
        );
    }

    /// A leader's appends do not wait for the disk (see `vendor/openraft`): what makes a node
    /// that changes its vote safe is that the vote is saved only after every entry appended
    /// before it is durable, so a node never leads in a new term while earlier entries it
    /// sent may still be lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_vote_is_saved_only_once_the_entries_appended_before_it_are_durable() {
        use futures_util::FutureExt as _;

        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
        let entry = crate::testing::entry(1, 1, vec![1; 3].into());
        let (held, appending) = log.append_held(entry).await;
        let voting = tokio::spawn({
            let mut log = log.clone();
            async move { log.save_vote(&Vote::new(2, 1)).await }
        });
        drop(held);
        voting.await.unwrap().unwrap();
        assert!(
            log.durable_through(1).now_or_never().is_some(),
            "the vote was saved before the entry appended first was durable"
        );
        appending.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_node_that_led_does_not_lead_again_in_the_same_term_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        {
            let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
            log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
            assert!(log.resign(1).await.unwrap());
        }
        // Durable: a candidate's vote for itself in that term, never again a leader's.
        let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        assert!(!log.resign(1).await.unwrap());
        // Another node's leadership, and a vote for another candidate, stay as they are.
        for vote in [Vote::new_committed(5, 2), Vote::new(6, 3)] {
            log.save_vote(&vote).await.unwrap();
            assert!(!log.resign(1).await.unwrap());
            assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        }
    }

    #[tokio::test]
    async fn entries_and_vote_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let vote = Vote::new(3, 2);
        {
            let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
            let entries: Vec<Entry> = (1..=3)
                .map(|i| crate::testing::entry(1, i, vec![i as u8; 3].into()))
                .collect();
            log.blocking_append(entries).await.unwrap();
            log.save_vote(&vote).await.unwrap();
        }
        let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        let entries = log.try_get_log_entries(1..).await.unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            log.get_log_state()
                .await
                .unwrap()
                .last_log_id
                .map(|id| id.index),
            Some(3)
        );
    }
}
