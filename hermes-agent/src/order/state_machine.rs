//! The state machine is the local application: the requests of committed entries are delivered to
//! the app in log order, one at a time. Each request has a sequence number, its position in the
//! total order (the same on every replica), which the app receives as `Hermes-Log-Index`. Around
//! delivery, this module keeps what makes it exactly-once:
//!
//! - progress (the last entry applied, the last request delivered) is persisted as each request
//!   is delivered, so a restarted agent neither skips nor repeats; the one request that was in
//!   flight during a crash is delivered again with the same `Hermes-Log-Index`, for the app to
//!   recognise;
//! - requests are deduplicated on (origin, request id) over a window of recent requests, so a
//!   proposal retried through a leader change is delivered once; the window is rebuilt from the
//!   log on start, so every replica decides alike;
//! - on the request's origin node, the client waiting for it gets the app's response.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::File,
    io::{Cursor, Write as _},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use openraft::{RaftLogReader, RaftSnapshotBuilder, storage::RaftStateMachine};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::{
    log_store::{LogStore, decode, encode},
    typ::{
        Command, Entry, EntryPayload, LogId, NodeId, Snapshot, SnapshotMeta, StorageError,
        StorageIOError, StoredMembership, TypeConfig,
    },
};
use crate::deliver::{App, Response, hooks::Hooks};

/// Requests over which duplicates are recognised. A retried proposal lands within the request
/// timeout of the original; at 20k requests/s that is 13 s.
pub const DEDUP_WINDOW: u64 = 1 << 18;
/// Recent response digests kept for comparison between replicas.
const DIGESTS: usize = 4096;

/// State shared with interception and the admin API.
pub struct Applied {
    node_id: NodeId,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    /// Index of the last entry applied (0: none), for readers to wait on.
    applied: watch::Sender<u64>,
    requests: AtomicU64,
    deliveries: AtomicU64,
    digests: Mutex<VecDeque<(u64, u64)>>,
    app_reachable: Arc<AtomicBool>,
}

impl Applied {
    /// Registers interest in the response to this node's request `id`.
    pub fn register(&self, id: u64) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        rx
    }

    /// Withdraws interest (the client gave up or went away).
    pub fn forget(&self, id: u64) {
        self.waiters.lock().unwrap().remove(&id);
    }

    /// Index of the last entry delivered (0: none).
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until entry `index` is applied here.
    pub async fn applied_at_least(&self, index: u64) {
        let _ = self
            .applied
            .subscribe()
            .wait_for(|applied| *applied >= index)
            .await;
    }

    /// Sequence number of the last request handled: requests ordered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// App requests delivered since the log began.
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Whether the last delivery attempt reached the app.
    pub fn app_reachable(&self) -> bool {
        self.app_reachable.load(Ordering::Relaxed)
    }

    /// `(log index, digest of status and body)` of recent deliveries at or after `from`.
    pub fn digests(&self, from: u64) -> Vec<(u64, u64)> {
        let digests = self.digests.lock().unwrap();
        digests
            .iter()
            .filter(|(i, _)| *i >= from)
            .copied()
            .collect()
    }
}

/// What survives a restart besides the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Progress {
    /// The last entry whose requests were all delivered.
    applied: Option<LogId>,
    /// Requests in the entries up to `applied`: the sequence number of its last one.
    requests: u64,
    /// Sequence number of the last request delivered (or recognised as a duplicate). Beyond
    /// `requests` while an entry is being applied.
    delivered: u64,
    /// Requests delivered to the app, duplicates not counted.
    deliveries: u64,
}

/// The latest snapshot, built or installed, as its metadata and bytes.
type CurrentSnapshot = Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>;

/// What a snapshot carries besides its metadata.
#[derive(Serialize, Deserialize)]
struct SnapshotState {
    requests: u64,
    deliveries: u64,
    dedup: Vec<(u64, (NodeId, u64))>,
    /// The app's state, captured by the snapshot hook; `None` without hooks.
    app: Option<Vec<u8>>,
}

pub struct StateMachine {
    applied: Arc<Applied>,
    app: App,
    hooks: Option<Hooks>,
    /// Where the latest snapshot is kept, so a restarted node still has it after compaction.
    snapshot_path: PathBuf,
    progress: Progress,
    progress_file: ProgressFile,
    membership: StoredMembership,
    membership_path: PathBuf,
    dedup: Dedup,
    current: CurrentSnapshot,
}

impl StateMachine {
    /// Opens the state kept in `dir` and rebuilds the duplicate window from `log`.
    pub async fn open(
        dir: &Path,
        node_id: NodeId,
        app: App,
        hooks: Option<Hooks>,
        log: &mut LogStore,
    ) -> Result<(Self, Arc<Applied>), StorageError> {
        let progress_file = ProgressFile::open(&dir.join("applied"))
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let progress = progress_file.read();
        let membership_path = dir.join("membership");
        let membership = match std::fs::read(&membership_path) {
            Ok(bytes) => decode(&bytes).map_err(|e| StorageIOError::read_state_machine(&e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoredMembership::default(),
            Err(e) => return Err(StorageIOError::read_state_machine(&e).into()),
        };
        let snapshot_path = dir.join("snapshot");
        let current: Option<(SnapshotMeta, Vec<u8>)> = match std::fs::read(&snapshot_path) {
            Ok(bytes) => Some(decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        // The duplicate window: the log since the snapshot, then the snapshot's own window.
        let (first, older) = match &current {
            Some((meta, bytes)) => {
                let state: SnapshotState = decode(bytes)
                    .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
                (meta.last_log_id.map_or(1, |id| id.index + 1), state.dedup)
            }
            None => (1, Vec::new()),
        };
        let applied = progress.applied.map_or(0, |id| id.index);
        let dedup = Dedup::rebuild(log, first, applied, progress.requests, older).await?;
        let shared = Arc::new(Applied {
            node_id,
            waiters: Mutex::default(),
            applied: watch::Sender::new(applied),
            requests: AtomicU64::new(progress.requests),
            deliveries: AtomicU64::new(progress.deliveries),
            digests: Mutex::default(),
            app_reachable: app.reachable(),
        });
        let machine = Self {
            applied: Arc::clone(&shared),
            app,
            hooks,
            snapshot_path,
            progress,
            progress_file,
            membership,
            membership_path,
            dedup,
            current: Arc::new(Mutex::new(current)),
        };
        Ok((machine, shared))
    }

    /// Delivers request `seq` (unless it is a duplicate) and records that it is done.
    async fn deliver(
        &mut self,
        log_id: LogId,
        seq: u64,
        command: Command,
    ) -> Result<(), StorageError> {
        if self.dedup.contains(&command.key()) {
            tracing::debug!(
                seq,
                origin = command.origin,
                id = command.id,
                "duplicate proposal; not delivered again"
            );
            self.progress.delivered = seq;
            self.applied.requests.store(seq, Ordering::Relaxed);
            return self.save_progress(log_id);
        }
        let response = self.app.deliver(&command.payload, seq).await;
        self.progress.deliveries += 1;
        self.progress.delivered = seq;
        self.save_progress(log_id)?;
        self.applied
            .deliveries
            .store(self.progress.deliveries, Ordering::Relaxed);
        self.applied.requests.store(seq, Ordering::Relaxed);
        self.dedup.insert(seq, command.key());
        {
            let mut digests = self.applied.digests.lock().unwrap();
            if digests.len() == DIGESTS {
                digests.pop_front();
            }
            digests.push_back((seq, digest(response.status, response.body())));
        }
        if command.origin == self.applied.node_id
            && let Some(waiter) = self.applied.waiters.lock().unwrap().remove(&command.id)
        {
            let _ = waiter.send(response);
        }
        Ok(())
    }

    fn save_progress(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.progress_file
            .write(&self.progress)
            .map_err(|e| StorageIOError::apply(log_id, &e).into())
    }

    fn save_membership(&self) -> Result<(), StorageError> {
        let bytes =
            encode(&self.membership).map_err(|e| StorageIOError::write_state_machine(&e))?;
        write_atomically(&self.membership_path, &bytes)
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.progress.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    self.save_membership()?;
                }
                EntryPayload::Normal(batch) => {
                    let first = self.progress.requests + 1;
                    for (seq, command) in (first..).zip(batch.commands) {
                        if seq > self.progress.delivered {
                            self.deliver(entry.log_id, seq, command).await?;
                        } else {
                            // Delivered before a restart, which rebuilt the window only up to
                            // the previous entry: remember it, so a retry of it is recognised.
                            self.dedup.insert(seq, command.key());
                        }
                    }
                    self.progress.requests = self.progress.delivered;
                }
            }
            self.progress.applied = Some(entry.log_id);
            self.save_progress(entry.log_id)?;
            self.applied.applied.send_replace(entry.log_id.index);
            replies.push(());
        }
        Ok(replies)
    }

    /// Runs in order with `apply`, so the app's state captured here is exactly that of
    /// `applied`. (openraft builds the snapshot itself in another task, concurrently with
    /// applying more entries.)
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let app = match &self.hooks {
            Some(hooks) => Some(hooks.capture(&self.applied.app_reachable).await),
            None => None,
        };
        SnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: self.progress.applied,
                last_membership: self.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    self.progress.applied.map_or(0, |id| id.index),
                    self.progress.deliveries
                ),
            },
            state: SnapshotState {
                requests: self.progress.requests,
                deliveries: self.progress.deliveries,
                dedup: self.dedup.order.iter().copied().collect(),
                app,
            },
            current: Arc::clone(&self.current),
            path: self.snapshot_path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let signature = Some(meta.signature());
        let bytes = snapshot.into_inner();
        let state: SnapshotState =
            decode(&bytes).map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        match (&state.app, &self.hooks) {
            (Some(app), Some(hooks)) => {
                tracing::info!(snapshot = %meta.snapshot_id, bytes = app.len(), "restoring the app from a snapshot");
                hooks.restore(app, &self.applied.app_reachable).await;
            }
            (Some(_), None) => {
                let error = std::io::Error::other(
                    "the snapshot holds the app's state; restoring it needs --restore-cmd",
                );
                return Err(StorageIOError::write_snapshot(signature, &error).into());
            }
            // Without the app's state in it, a snapshot can only stand in for entries that
            // carried no app request: anything else would leave this replica's app behind.
            (None, _) if state.deliveries != self.progress.deliveries => {
                let error = std::io::Error::other(format!(
                    "the snapshot covers {} app requests, this replica delivered {}; it holds no \
                     app state, so installing it would skip requests",
                    state.deliveries, self.progress.deliveries
                ));
                return Err(StorageIOError::write_snapshot(signature, &error).into());
            }
            (None, _) => {}
        }
        self.dedup = Dedup::from_window(state.dedup);
        self.membership = meta.last_membership.clone();
        self.save_membership()?;
        self.progress.applied = meta.last_log_id;
        self.progress.requests = state.requests;
        self.progress.delivered = state.requests;
        self.progress.deliveries = state.deliveries;
        self.applied
            .requests
            .store(state.requests, Ordering::Relaxed);
        self.applied
            .deliveries
            .store(state.deliveries, Ordering::Relaxed);
        keep_snapshot(&self.snapshot_path, &self.current, meta, bytes)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        self.progress_file
            .write(&self.progress)
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        self.applied
            .applied
            .send_replace(meta.last_log_id.map_or(0, |id| id.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self
            .current
            .lock()
            .unwrap()
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
    }
}

/// Builds a snapshot of the state captured when it was created.
pub struct SnapshotBuilder {
    meta: SnapshotMeta,
    state: SnapshotState,
    current: CurrentSnapshot,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let failed =
            |e: std::io::Error| StorageIOError::write_snapshot(Some(self.meta.signature()), &e);
        let bytes = encode(&self.state).map_err(failed)?;
        keep_snapshot(&self.path, &self.current, &self.meta, bytes.clone()).map_err(failed)?;
        tracing::info!(snapshot = %self.meta.snapshot_id, bytes = bytes.len(), "snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

/// Makes `bytes` the current snapshot, on disk first: before openraft may purge the log it
/// stands for, and so that a restarted node still has it.
fn keep_snapshot(
    path: &Path,
    current: &CurrentSnapshot,
    meta: &SnapshotMeta,
    bytes: Vec<u8>,
) -> std::io::Result<()> {
    write_atomically(path, &encode(&(meta, &bytes))?)?;
    *current.lock().unwrap() = Some((meta.clone(), bytes));
    Ok(())
}

/// Keys of the last [`DEDUP_WINDOW`] requests, by sequence number.
#[derive(Default)]
struct Dedup {
    seen: HashSet<(NodeId, u64)>,
    order: VecDeque<(u64, (NodeId, u64))>,
}

impl Dedup {
    /// The window as it was after request `requests`, the last of entry `applied`: `older`
    /// (the snapshot's window, if the log was compacted), then the log's entries since `first`.
    async fn rebuild(
        log: &mut LogStore,
        first: u64,
        applied: u64,
        requests: u64,
        older: Vec<(u64, (NodeId, u64))>,
    ) -> Result<Self, StorageError> {
        let mut keys = Vec::new();
        let mut end = applied + 1;
        while end > first && (keys.len() as u64) < DEDUP_WINDOW {
            let start = end.saturating_sub(4096).max(first);
            let entries = log.try_get_log_entries(start..end).await?;
            for entry in entries.iter().rev() {
                if let EntryPayload::Normal(batch) = &entry.payload {
                    keys.extend(batch.commands.iter().rev().map(Command::key));
                }
            }
            end = start;
        }
        keys.truncate(DEDUP_WINDOW as usize);
        let mut dedup = Self::from_window(older);
        // Oldest first; the newest key is request `requests`.
        for (age, key) in keys.into_iter().enumerate().rev() {
            if let Some(seq) = requests.checked_sub(age as u64).filter(|seq| *seq > 0) {
                dedup.insert(seq, key);
            }
        }
        Ok(dedup)
    }

    /// The window as a snapshot carries it, oldest first.
    fn from_window(window: Vec<(u64, (NodeId, u64))>) -> Self {
        let mut dedup = Self::default();
        for (seq, key) in window {
            dedup.insert(seq, key);
        }
        dedup
    }

    fn contains(&self, key: &(NodeId, u64)) -> bool {
        self.seen.contains(key)
    }

    fn insert(&mut self, index: u64, key: (NodeId, u64)) {
        self.seen.insert(key);
        self.order.push_back((index, key));
        while let Some(&(oldest, key)) = self.order.front() {
            if oldest + DEDUP_WINDOW > index {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }
}

/// [`Progress`] in two alternating slots with a sequence number and checksum, so that a torn
/// write leaves the previous record readable. Written per entry without fsync: it survives the
/// agent's crash (the case that matters); a machine crash takes the app's unsynced state too.
struct ProgressFile {
    file: File,
    seq: u64,
}

const SLOT: usize = 128;

impl ProgressFile {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut this = Self { file, seq: 0 };
        this.seq = this.best().map_or(0, |(seq, _)| seq);
        Ok(this)
    }

    fn read(&self) -> Progress {
        self.best()
            .map(|(_, progress)| progress)
            .unwrap_or_default()
    }

    fn best(&self) -> Option<(u64, Progress)> {
        (0..2)
            .filter_map(|slot| {
                let mut buf = [0u8; SLOT];
                self.file
                    .read_exact_at(&mut buf, (slot * SLOT) as u64)
                    .ok()?;
                let len = u16::from_le_bytes([buf[0], buf[1]]) as usize;
                let body = buf.get(2..2 + len)?;
                let sum = buf.get(2 + len..10 + len)?;
                (digest(0, body).to_le_bytes() == sum).then_some(())?;
                decode::<(u64, Progress)>(body).ok()
            })
            .max_by_key(|(seq, _)| *seq)
    }

    fn write(&mut self, progress: &Progress) -> std::io::Result<()> {
        self.seq += 1;
        let body = encode(&(self.seq, progress))?;
        let mut buf = [0u8; SLOT];
        buf[..2].copy_from_slice(&(body.len() as u16).to_le_bytes());
        buf[2..2 + body.len()].copy_from_slice(&body);
        buf[2 + body.len()..10 + body.len()].copy_from_slice(&digest(0, &body).to_le_bytes());
        self.file.write_all_at(&buf, (self.seq % 2) * SLOT as u64)
    }
}

/// Replaces the file at `path` with `bytes`, durably: a crash leaves the old or the new file.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// FNV-1a over the status and the body: equal on replicas whose apps answered alike.
pub fn digest(status: u16, body: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in status.to_be_bytes().iter().chain(body) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_survives_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("applied");
        let mut file = ProgressFile::open(&path).unwrap();
        assert_eq!(file.read(), Progress::default());
        let first = Progress {
            deliveries: 1,
            ..Progress::default()
        };
        let second = Progress {
            deliveries: 2,
            ..Progress::default()
        };
        file.write(&first).unwrap();
        file.write(&second).unwrap();
        assert_eq!(ProgressFile::open(&path).unwrap().read(), second);
        // Tear the newest slot: the previous record is what remains.
        file.file
            .write_all_at(&[0xff; 8], (file.seq % 2) * SLOT as u64 + 4)
            .unwrap();
        assert_eq!(ProgressFile::open(&path).unwrap().read(), first);
    }

    #[test]
    fn dedup_forgets_beyond_the_window() {
        let mut dedup = Dedup::default();
        dedup.insert(1, (1, 7));
        assert!(dedup.contains(&(1, 7)));
        dedup.insert(DEDUP_WINDOW, (2, 7));
        assert!(dedup.contains(&(1, 7)));
        dedup.insert(DEDUP_WINDOW + 1, (2, 8));
        assert!(!dedup.contains(&(1, 7)));
        assert!(dedup.contains(&(2, 7)));
    }

    /// An app on loopback that records `(Hermes-Log-Index, body)` of each request and answers 200.
    async fn recording_app() -> (std::net::SocketAddr, Arc<Mutex<Vec<(u64, String)>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut headers = [httparse::EMPTY_HEADER; 16];
                        let mut request = httparse::Request::new(&mut headers);
                        if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                            let header = |name: &str| {
                                let h = request
                                    .headers
                                    .iter()
                                    .find(|h| h.name.eq_ignore_ascii_case(name));
                                h.map(|h| String::from_utf8_lossy(h.value).into_owned())
                            };
                            let length: usize =
                                header("content-length").map_or(0, |v| v.parse().unwrap());
                            if buf.len() >= head + length {
                                let index = header("hermes-log-index").unwrap().parse().unwrap();
                                let body =
                                    String::from_utf8_lossy(&buf[head..head + length]).into_owned();
                                record.lock().unwrap().push((index, body));
                                buf.drain(..head + length);
                                stream
                                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                    .await
                                    .unwrap();
                                continue;
                            }
                        }
                        let mut chunk = [0; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    fn entry(index: u64, commands: &[(u64, u64, &str)]) -> Entry {
        let commands = commands
            .iter()
            .map(|&(origin, id, body)| Command {
                origin,
                id,
                payload: bytes::Bytes::from(format!(
                    "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )),
            })
            .collect();
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(super::super::typ::Batch {
                id: (1, index),
                commands,
            }),
        }
    }

    #[tokio::test]
    async fn requests_are_delivered_in_order_once_with_their_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, seen) = recording_app().await;
        let mut log = LogStore::open(&dir.path().join("log.redb")).unwrap();
        let app = || App::new(addr, std::time::Duration::from_secs(5));
        let (mut machine, shared) = StateMachine::open(dir.path(), 1, app(), None, &mut log)
            .await
            .unwrap();
        let mut answered = shared.register(11);
        machine
            .apply(vec![
                entry(1, &[(2, 10, "a"), (1, 11, "b")]),
                entry(2, &[(2, 10, "a-again"), (3, 5, "c")]),
            ])
            .await
            .unwrap();
        // (2, 10) came twice: the retry is recognised and not delivered.
        let expected = vec![
            (1, "a".to_owned()),
            (2, "b".to_owned()),
            (4, "c".to_owned()),
        ];
        assert_eq!(*seen.lock().unwrap(), expected);
        assert_eq!(
            answered.try_recv().unwrap().body(),
            b"ok",
            "the origin's waiter gets the response"
        );
        assert_eq!(shared.deliveries(), 3);
        drop(machine);

        // A restart that stopped inside entry 3 after its first request: only the rest follows.
        let mut progress = ProgressFile::open(&dir.path().join("applied")).unwrap();
        let mut state = progress.read();
        assert_eq!((state.requests, state.delivered), (4, 4));
        state.delivered = 5;
        progress.write(&state).unwrap();
        let (mut machine, _) = StateMachine::open(dir.path(), 1, app(), None, &mut log)
            .await
            .unwrap();
        machine
            .apply(vec![entry(3, &[(3, 6, "d"), (3, 7, "e")])])
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().last(), Some(&(6, "e".to_owned())));
        assert_eq!(seen.lock().unwrap().len(), 4);
        // A retry of the request delivered before the restart is still recognised.
        machine
            .apply(vec![entry(4, &[(3, 6, "d-again"), (3, 8, "f")])])
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().last(), Some(&(8, "f".to_owned())));
        assert_eq!(seen.lock().unwrap().len(), 5);
    }
}
