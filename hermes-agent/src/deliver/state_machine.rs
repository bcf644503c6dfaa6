//! The state machine is the local application: the requests of committed entries go to the app in
//! log order, one at a time, through [`Delivery`], which keeps them exactly-once. Around it this
//! module keeps what Raft needs (the applied state, the membership, snapshots) and hands the
//! outcome of each request to the client waiting for it on its origin node.
//!
//! Each request has a sequence number, its position in the total order (the same on every
//! replica), which the app receives as `Hermes-Log-Index`.
use std::{
    collections::{HashMap, HashSet},
    io::Cursor,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use openraft::{RaftLogReader, RaftSnapshotBuilder, storage::RaftStateMachine};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot, watch};

use super::{
    App, Delivery, Outcome, Sessions, Stopper, digests::Digests, hooks::Hooks, tcp::Connections,
};
use crate::{
    data_dir::DataDir,
    http::Response,
    order::{
        log_store::{LogStore, decode, encode},
        typ::{
            Command, ConnKey, Entry, EntryPayload, LogId, NodeId, RequestKey, Snapshot,
            SnapshotMeta, StorageError, StorageIOError, StoredMembership, TypeConfig,
        },
    },
    tcp::Chunk,
};

/// What a waiting client learns: the app's answer, or why there is none.
pub type Answer = Result<Response, &'static str>;

/// A snapshot to heal from: its metadata and bytes.
pub type Healing = Arc<(SnapshotMeta, Vec<u8>)>;

/// What interception and the admin API see of the state machine.
#[derive(Debug)]
pub struct Applied {
    node_id: NodeId,
    incarnation: u64,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Index of the last entry applied (0: none), for readers to wait on.
    applied: watch::Sender<u64>,
    requests: AtomicU64,
    deliveries: AtomicU64,
    in_doubt: AtomicU64,
    unconfirmed: AtomicU64,
    digests: Arc<Digests>,
    /// Set when this replica diverged and is fenced: it applies nothing until resumed.
    fenced: watch::Sender<bool>,
    /// Why it was fenced, last.
    fenced_because: Mutex<Option<String>>,
    /// A healthy replica's snapshot for this fenced one to heal from ([`Self::heal`]).
    healing: watch::Sender<Option<Healing>>,
    /// The entry whose request waits for the fence to lift (0: none waits).
    waiting_in: AtomicU64,
    heals: AtomicU64,
    /// Where a fence is kept across restarts (the file [`FENCED`]).
    dir: DataDir,
    /// The command after which delivery stops for good (a planned stop in raw TCP mode).
    halt_after: Mutex<Option<RequestKey>>,
    halted: Notify,
    /// Records a planned stop in the progress.
    stopper: Stopper,
    app: Arc<App>,
}

impl Applied {
    /// Registers interest in the answer to this node's request `id`.
    pub fn register(&self, id: u64) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        rx
    }

    /// Withdraws interest (the client gave up or went away).
    pub fn forget(&self, id: u64) {
        self.waiters.lock().unwrap().remove(&id);
    }

    /// Index of the last entry applied (0: none).
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

    /// Requests sent to the app a second time because Hermes could not tell whether it had
    /// them.
    pub fn in_doubt(&self) -> u64 {
        self.in_doubt.load(Ordering::Relaxed)
    }

    /// Requests written before the agent stopped whose answer it never read: not sent again,
    /// but if the app stopped too, it may not have run them.
    pub fn unconfirmed(&self) -> u64 {
        self.unconfirmed.load(Ordering::Relaxed)
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// The digests of the app's answers, for comparison with other replicas.
    pub fn digests(&self) -> &Digests {
        &self.digests
    }

    /// Whether this replica is fenced (see [`super::divergence`]).
    pub fn fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Why this replica is fenced; `None` if it is not.
    pub fn fenced_because(&self) -> Option<String> {
        self.fenced()
            .then(|| self.fenced_because.lock().unwrap().clone())
            .flatten()
    }

    /// Fences this replica: it applies nothing more until resumed, and reports not ready,
    /// saying `why`. The fence is kept in the data directory: a restart does not lift it.
    pub fn fence(&self, why: String) {
        tracing::error!(
            why,
            "fenced: this replica stops applying and reports not ready until it heals from \
             another replica's snapshot (with snapshot hooks, in HTTP mode), an operator \
             resumes it (`hermes-agent ctl resume`), or it is rebuilt"
        );
        if let Err(error) = self.dir.replace(FENCED, why.as_bytes()) {
            tracing::error!(%error, "cannot keep the fence in the data directory");
        }
        *self.fenced_because.lock().unwrap() = Some(why);
        self.fenced.send_replace(true);
    }

    /// Follows whether this replica is fenced.
    pub fn fenced_subscribe(&self) -> watch::Receiver<bool> {
        self.fenced.subscribe()
    }

    /// Lets a fenced replica apply again.
    pub fn resume(&self) -> std::io::Result<()> {
        self.dir.remove(FENCED)?;
        self.healing.send_replace(None);
        self.fenced.send_replace(false);
        Ok(())
    }

    /// How many times this replica healed from another's snapshot since it started.
    pub fn heals(&self) -> u64 {
        self.heals.load(Ordering::Relaxed)
    }

    /// Makes delivery stop for good right after the command with `key` (once it is applied).
    pub fn halt_after(&self, key: RequestKey) {
        *self.halt_after.lock().unwrap() = Some(key);
    }

    /// Resolves once delivery stopped after the command given to [`Self::halt_after`].
    pub async fn halted(&self) {
        self.halted.notified().await;
    }

    /// Records a planned stop in the progress: call once no delivery is in flight, nor will be.
    pub fn record_stop(&self) -> std::io::Result<()> {
        self.stopper.stop()
    }

    /// A snapshot this replica offers fenced ones to heal from, of at most `limit` bytes (more
    /// is an error): the file (its metadata and bytes, encoded together), its last entry, and
    /// the requests it covers. The one pinned for healing, if it reaches entry `at_least`;
    /// otherwise the latest kept, pinned now (copied: openraft replaces the latest as it builds
    /// snapshots, and one offered must stay until its answers have been compared with the
    /// other replicas').
    pub fn snapshot_to_offer(
        &self,
        at_least: u64,
        limit: usize,
    ) -> std::io::Result<Option<(Vec<u8>, u64, u64)>> {
        let read = |name: &str| -> std::io::Result<Option<(Vec<u8>, u64, u64)>> {
            let Some(file) = self.dir.read(name, limit as u64)? else {
                return Ok(None);
            };
            let (meta, bytes): (SnapshotMeta, Vec<u8>) = decode(&file)?;
            let requests = contents(&bytes)?.requests;
            Ok(Some((
                file,
                meta.last_log_id.map_or(0, |id| id.index),
                requests,
            )))
        };
        if let Some(pinned) = read(PINNED)?
            && pinned.1 >= at_least
        {
            return Ok(Some(pinned));
        }
        let latest = read(SNAPSHOT)?;
        if let Some((file, last, _)) = &latest
            && *last >= at_least
        {
            self.dir.replace(PINNED, file)?;
        }
        Ok(latest)
    }

    /// The entry in which a request waits for the fence to lift, if one does: a snapshot to
    /// heal from must cover it.
    pub fn waiting_in(&self) -> Option<u64> {
        Some(self.waiting_in.load(Ordering::Relaxed)).filter(|index| *index > 0)
    }

    /// Gives this fenced replica `snapshot` (a healthy replica's) to heal from, through the
    /// restore hook, when a request waits in an entry the snapshot covers.
    pub fn heal(&self, snapshot: Healing) {
        self.healing.send_replace(Some(snapshot));
    }

    /// Waits while this replica is fenced; a snapshot to heal from, if one came meanwhile.
    async fn unfenced(&self) -> Option<Healing> {
        let mut fenced = self.fenced.subscribe();
        let mut healing = self.healing.subscribe();
        loop {
            let still = *fenced.borrow_and_update();
            if !still {
                return None;
            }
            healing.borrow_and_update();
            let mut given = None;
            self.healing.send_if_modified(|healing| {
                given = healing.take();
                given.is_some()
            });
            if given.is_some() {
                return given;
            }
            tokio::select! {
                _ = fenced.changed() => {}
                _ = healing.changed() => {}
            }
        }
    }

    /// Takes note of what became of request `seq`.
    fn record(&self, seq: u64, command: &Command, outcome: Outcome, delivery: &Delivery) {
        let progress = delivery.progress();
        self.requests.store(seq, Ordering::Relaxed);
        self.deliveries
            .store(progress.deliveries, Ordering::Relaxed);
        self.in_doubt.store(progress.in_doubt, Ordering::Relaxed);
        self.unconfirmed
            .store(progress.unconfirmed, Ordering::Relaxed);
        self.digests
            .answer(seq, outcome.digest(self.digests.what()));
        let answer = match outcome {
            Outcome::Answered(response) => Ok(response),
            Outcome::Unanswered(why) => Err(why),
            // Not applied here (fenced already, before the event counted as handled): whoever
            // waits for it waits for a resumption.
            Outcome::Diverged(_) => return,
            // Applied, with no answer of its own (a connection event), or applied before.
            Outcome::Duplicate | Outcome::Earlier | Outcome::Event => Err("no answer of its own"),
        };
        if command.origin == self.node_id
            && command.incarnation == self.incarnation
            && let Some(waiter) = self.waiters.lock().unwrap().remove(&command.id)
        {
            let _ = waiter.send(answer);
        }
    }
}

/// The latest snapshot, built or installed, as its metadata and bytes.
/// openraft builds snapshots in a task of their own, concurrently with installing one: the lock
/// is held across the write of the file, so the two never write it at once.
type CurrentSnapshot = Arc<tokio::sync::Mutex<Option<(SnapshotMeta, Vec<u8>)>>>;

/// What a snapshot carries besides its metadata.
#[derive(Serialize, Deserialize)]
struct SnapshotState {
    requests: u64,
    deliveries: u64,
    sessions: Sessions,
    /// The app's state, captured by the snapshot hook; `None` without hooks.
    app: Option<Vec<u8>>,
}

pub struct StateMachine {
    applied: Arc<Applied>,
    delivery: Delivery,
    hooks: Option<Hooks>,
    /// Where the membership and the latest snapshot are kept (so that a restarted node still
    /// has the snapshot after compaction).
    dir: DataDir,
    membership: StoredMembership,
    current: CurrentSnapshot,
    /// The last entry handed to `apply` (so read from the log). Behind `applied` only after
    /// this replica healed from a snapshot ahead of openraft's view: the entries between are
    /// passed over as they come.
    returned: watch::Sender<u64>,
    /// This node's log: no entry goes to the app before it is durable there.
    log: LogStore,
}

/// The most read of a file the state machine keeps that holds no app state.
const SMALL_FILE: u64 = 64 << 20;

/// Files of the state machine in the data directory.
const PROGRESS: &str = "progress";
/// Why the replica is fenced, while it is.
const FENCED: &str = "fenced";
/// What delivery keeps besides the app, as of an entry ([`Checkpoint`]).
const CHECKPOINT: &str = "checkpoint";
/// Entries between checkpoints.
const CHECKPOINT_EVERY: u64 = 4096;

/// What delivery keeps besides the app (the sessions, and in raw TCP mode the connections), as
/// it was once entry `applied` was applied: a start replays the log from there on rather than
/// from the snapshot, or from its first entry (without snapshot hooks the log is whole).
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    applied: LogId,
    sessions: Sessions,
    tcp: Option<crate::deliver::tcp::Kept>,
}

impl Checkpoint {
    /// Makes it what delivery starts from; the entry to replay the log from.
    fn restore(self, tcp: Option<&mut Connections>) -> (u64, Sessions) {
        if let (Some(connections), Some(kept)) = (tcp, self.tcp) {
            connections.restore(kept);
        }
        (self.applied.index + 1, self.sessions)
    }
}
const MEMBERSHIP: &str = "membership";
const SNAPSHOT: &str = "snapshot";
/// A copy of a snapshot offered to fenced replicas to heal from ([`Applied::snapshot_to_offer`]).
const PINNED: &str = "snapshot-offered";
/// The progress file of Hermes before delivery counted "written" and "in doubt".
const OLD_PROGRESS: &str = "applied";

/// The membership the state machine keeps in `dir`: the last one applied, or a snapshot's.
pub fn stored_membership(dir: &DataDir) -> std::io::Result<StoredMembership> {
    match dir.read(MEMBERSHIP, SMALL_FILE)? {
        Some(bytes) => decode(&bytes),
        None => Ok(StoredMembership::default()),
    }
}

/// The last entry the state machine in `dir` applied, as its progress says (a snapshot
/// installed counts as applied up to its last entry).
pub fn stored_applied(dir: &DataDir) -> std::io::Result<Option<LogId>> {
    if !dir.contains(PROGRESS)? {
        return Ok(None);
    }
    let (_, progress) = super::progress::ProgressFile::open(dir.open_file(PROGRESS)?)?;
    Ok(progress.applied)
}

/// The file of the snapshot kept in `dir` (the latest built or installed): its metadata and
/// bytes, encoded together.
pub fn stored_snapshot_file(dir: &DataDir) -> std::io::Result<Option<Vec<u8>>> {
    dir.read(SNAPSHOT, u64::MAX)
}

/// Makes the snapshot `bytes` with `meta` the state of the new node in `dir` (a restore from a
/// backup): its state machine installs it at start, through the restore hook.
pub fn seed(dir: &DataDir, meta: &SnapshotMeta, bytes: &[u8]) -> std::io::Result<()> {
    dir.replace(MEMBERSHIP, &encode(&meta.last_membership)?)?;
    dir.replace(SNAPSHOT, &encode(&(meta, bytes))?)
}

/// What a snapshot holds besides its metadata, as a backup's summary tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contents {
    /// Requests ordered up to it (the last one's `Hermes-Log-Index`).
    pub requests: u64,
    /// App requests delivered up to it.
    pub deliveries: u64,
    /// Bytes of the app's state, if it holds it.
    pub app: Option<usize>,
}

/// What the snapshot `bytes` hold.
pub fn contents(bytes: &[u8]) -> std::io::Result<Contents> {
    let state: SnapshotState = decode(bytes)?;
    Ok(Contents {
        requests: state.requests,
        deliveries: state.deliveries,
        app: state.app.as_ref().map(Vec::len),
    })
}

/// What a replica delivers to, and as whom.
pub struct Replica {
    pub node_id: NodeId,
    /// This node's boot count ([`crate::order::identity`]).
    pub incarnation: u64,
    pub app: Arc<App>,
    pub hooks: Option<Hooks>,
    /// The divergence digests: what they cover (`--digest`), and where they are kept (shared
    /// with raw TCP mode's connections, which add theirs as the app closes them).
    pub digests: Arc<Digests>,
    /// The app connections of raw TCP mode; `None` in HTTP mode.
    pub tcp: Option<Connections>,
    /// Whether the progress is synced before requests go to the app (`--no-progress-sync`).
    pub sync_progress: bool,
}

impl StateMachine {
    /// Opens the state kept in `dir`, finishes a snapshot install a crash interrupted, and
    /// rebuilds from `log` what delivery keeps besides the app: the sessions that recognise
    /// duplicates, and in raw TCP mode which connections are open (broken here now) and which
    /// origins restarted.
    pub async fn open(
        dir: &DataDir,
        replica: Replica,
        log: &mut LogStore,
    ) -> Result<(Self, Arc<Applied>), StorageError> {
        let Replica {
            node_id,
            incarnation,
            app,
            hooks,
            digests,
            tcp,
            sync_progress,
        } = replica;
        let read_error =
            |e: &std::io::Error| StorageError::from(StorageIOError::read_state_machine(e));
        let older = dir.contains(OLD_PROGRESS).map_err(|e| read_error(&e))?;
        if older && !dir.contains(PROGRESS).map_err(|e| read_error(&e))? {
            return Err(read_error(&std::io::Error::other(format!(
                "{} holds the delivery progress of an older Hermes, which this one cannot \
                 read; start this node with a new, empty data directory and --join",
                dir.path().display()
            ))));
        }
        let boot = crate::deliver::boot_id().map_err(|e| read_error(&e))?;
        if !dir.contains(PROGRESS).map_err(|e| read_error(&e))? {
            let initial = crate::deliver::initial_progress().map_err(|e| read_error(&e))?;
            dir.replace(PROGRESS, &initial)
                .map_err(|e| read_error(&e))?;
        }
        let progress = dir.open_file(PROGRESS).map_err(|e| read_error(&e))?;
        let mut delivery =
            Delivery::open(progress, boot, Arc::clone(&app), tcp).map_err(|e| read_error(&e))?;
        if !sync_progress {
            delivery.without_syncs();
        }
        let mut membership = stored_membership(dir).map_err(|e| read_error(&e))?;
        let current: Option<(SnapshotMeta, Vec<u8>)> = match dir
            // With hooks, the app's state is in it (and the operator's directory holds it);
            // without, what delivery keeps besides the app, which is small.
            .read(SNAPSHOT, if hooks.is_some() { u64::MAX } else { SMALL_FILE })
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        {
            Some(bytes) => {
                Some(decode(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?)
            }
            None => None,
        };
        let snapshot_state = match &current {
            Some((meta, bytes)) => Some((
                meta.clone(),
                decode::<SnapshotState>(bytes)
                    .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?,
            )),
            None => None,
        };
        let applied = delivery.progress().applied;
        let newer = snapshot_state
            .as_ref()
            .is_some_and(|(meta, _)| meta.last_log_id > applied);
        if delivery.progress().installing || newer {
            // A crash interrupted installing the kept snapshot (a snapshot built here is never
            // newer than what is applied): the app's state may be half replaced. Restoring is
            // idempotent: do it again, then record it.
            let (meta, state) = snapshot_state.as_ref().ok_or_else(|| {
                read_error(&std::io::Error::other("installing a snapshot that is gone"))
            })?;
            tracing::warn!(
                snapshot = %meta.snapshot_id,
                "installing the kept snapshot (a restore from a backup, or an install a crash \
                 interrupted)"
            );
            match (&state.app, &hooks) {
                (Some(app_state), Some(hooks)) => hooks.restore(app_state, &app).await,
                (Some(_), None) => {
                    return Err(read_error(&std::io::Error::other(
                        "the snapshot to install holds the app's state; restoring it needs \
                         --snapshot-cmd and --restore-cmd",
                    )));
                }
                (None, _) => {}
            }
            // The snapshot's membership, as the install saves it (a crash may have come first).
            membership = meta.last_membership.clone();
            encode(&membership)
                .and_then(|bytes| dir.replace(MEMBERSHIP, &bytes))
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            delivery
                .finish_install(
                    meta.last_log_id,
                    state.requests,
                    state.deliveries,
                    state.sessions.clone(),
                )
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        }
        // What delivery keeps: the newest of the snapshot's and the checkpoint's (not past what
        // was applied: a machine crash may have taken the progress back), then the log's since.
        let progress = delivery.progress().clone();
        let checkpoint = dir
            .read(CHECKPOINT, SMALL_FILE)
            .map_err(|e| read_error(&e))?
            .map(|bytes| decode::<Checkpoint>(&bytes))
            .transpose()
            .map_err(|e| read_error(&e))?
            .filter(|checkpoint| Some(checkpoint.applied) <= progress.applied);
        let snapshot = snapshot_state.map(|(meta, state)| (meta.last_log_id, state.sessions));
        let (first, sessions) = match (snapshot, checkpoint) {
            (Some((at, _)), Some(checkpoint)) if Some(checkpoint.applied) > at => {
                checkpoint.restore(delivery.tcp_mut())
            }
            (None, Some(checkpoint)) => checkpoint.restore(delivery.tcp_mut()),
            (Some((at, sessions)), _) => (at.map_or(1, |id| id.index + 1), sessions),
            (None, None) => (1, Sessions::default()),
        };
        let sessions = replay(log, first, &progress, sessions, delivery.tcp_mut()).await?;
        delivery.set_sessions(sessions);
        if let Some(connections) = delivery.tcp_mut() {
            connections.digest_into(Arc::clone(&digests));
            if membership.log_id().is_some() {
                connections.keep_members(members(membership.membership()));
            }
        }
        let applied = progress.applied.map_or(0, |id| id.index);
        digests.handled(progress.requests);
        let fenced_because = dir
            .read(FENCED, SMALL_FILE)
            .map_err(|e| read_error(&e))?
            .map(|why| String::from_utf8_lossy(&why).into_owned());
        if let Some(why) = &fenced_because {
            tracing::error!(
                why,
                "this replica was fenced before it stopped, and still is"
            );
        }
        let shared = Arc::new(Applied {
            node_id,
            incarnation,
            waiters: Mutex::default(),
            applied: watch::Sender::new(applied),
            requests: AtomicU64::new(progress.requests),
            deliveries: AtomicU64::new(progress.deliveries),
            in_doubt: AtomicU64::new(progress.in_doubt),
            unconfirmed: AtomicU64::new(progress.unconfirmed),
            digests,
            fenced: watch::Sender::new(fenced_because.is_some()),
            fenced_because: Mutex::new(fenced_because),
            healing: watch::Sender::new(None),
            waiting_in: AtomicU64::new(0),
            heals: AtomicU64::new(0),
            dir: dir.clone(),
            halt_after: Mutex::default(),
            halted: Notify::new(),
            stopper: delivery.stopper(),
            app,
        });
        let machine = Self {
            applied: Arc::clone(&shared),
            delivery,
            hooks,
            dir: dir.clone(),
            membership,
            current: Arc::new(tokio::sync::Mutex::new(current)),
            returned: watch::Sender::new(applied),
            log: log.clone(),
        };
        Ok((machine, shared))
    }

    /// What recognises requests proposed twice.
    pub fn sessions(&self) -> &Sessions {
        self.delivery.sessions()
    }

    /// In raw TCP mode, the connections of other origins that were open here when the agent
    /// stopped: gone with it, so the agent's restart must have them abandoned.
    pub fn broken_connections(&mut self) -> Vec<ConnKey> {
        self.delivery
            .tcp_mut()
            .map(|connections| connections.broken())
            .unwrap_or_default()
    }

    /// Keeps what delivery keeps besides the app as of entry `applied`, just applied.
    async fn checkpoint(&mut self, applied: LogId) -> Result<(), StorageError> {
        let checkpoint = Checkpoint {
            applied,
            sessions: self.delivery.sessions().clone(),
            tcp: self
                .delivery
                .tcp_mut()
                .map(|connections| connections.kept()),
        };
        let bytes = encode(&checkpoint).map_err(|e| StorageIOError::write_state_machine(&e))?;
        write_atomically(&self.dir, CHECKPOINT, bytes)
            .await
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    /// Stops delivering for good if `command` is the one a planned stop asked to stop after.
    async fn halt_if_asked(&self, command: &Command) {
        if *self.applied.halt_after.lock().unwrap() != Some(command.key()) {
            return;
        }
        tracing::info!("delivery stops here: the agent is stopping");
        self.applied.halted.notify_one();
        std::future::pending::<()>().await;
    }

    async fn save_membership(&self) -> Result<(), StorageError> {
        let bytes =
            encode(&self.membership).map_err(|e| StorageIOError::write_state_machine(&e))?;
        write_atomically(&self.dir, MEMBERSHIP, bytes)
            .await
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }

    /// Installs a snapshot (openraft's, or one to heal from); returns the number of requests it
    /// covers. Crash-consistent: the snapshot is kept on disk first, then the progress says
    /// "installing", then the app's state is restored, then the progress records the snapshot.
    /// A crash in between restores again at start.
    async fn install(&mut self, meta: &SnapshotMeta, bytes: Vec<u8>) -> Result<u64, StorageError> {
        let signature = Some(meta.signature());
        let failed = |e: std::io::Error| StorageIOError::write_snapshot(signature.clone(), &e);
        let state: SnapshotState =
            decode(&bytes).map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        match (&state.app, &self.hooks) {
            (Some(_), None) => {
                return Err(failed(std::io::Error::other(
                    "the snapshot holds the app's state; restoring it needs --restore-cmd",
                ))
                .into());
            }
            // Without the app's state in it, a snapshot can only stand in for entries that
            // carried no app request: anything else would leave this replica's app behind.
            (None, _) if state.deliveries != self.delivery.progress().deliveries => {
                return Err(failed(std::io::Error::other(format!(
                    "the snapshot covers {} app requests, this replica delivered {}; it holds no \
                     app state, so installing it would skip requests",
                    state.deliveries,
                    self.delivery.progress().deliveries
                )))
                .into());
            }
            _ => {}
        }
        keep_snapshot(&self.dir, &self.current, meta, bytes)
            .await
            .map_err(failed)?;
        self.delivery.begin_install().map_err(failed)?;
        if let (Some(app), Some(hooks)) = (&state.app, &self.hooks) {
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes = app.len(),
                "restoring the app from a snapshot"
            );
            hooks.restore(app, self.delivery.app()).await;
        }
        self.membership = meta.last_membership.clone();
        self.save_membership().await?;
        self.delivery
            .finish_install(
                meta.last_log_id,
                state.requests,
                state.deliveries,
                state.sessions,
            )
            .map_err(failed)?;
        self.applied
            .requests
            .store(state.requests, Ordering::Relaxed);
        self.applied.digests.handled(state.requests);
        self.applied
            .deliveries
            .store(state.deliveries, Ordering::Relaxed);
        self.applied
            .applied
            .send_replace(meta.last_log_id.map_or(0, |id| id.index));
        Ok(state.requests)
    }

    /// Whether entry `log_id` is already applied, a snapshot this replica healed from covering
    /// it (its requests are in the app's state); then it is passed over, as applied.
    fn pass_over(&self, log_id: LogId, replies: &mut Vec<()>) -> bool {
        let covered = self
            .delivery
            .progress()
            .applied
            .is_some_and(|applied| applied.index >= log_id.index);
        if covered {
            replies.push(());
            self.returned.send_replace(log_id.index);
        }
        covered
    }

    /// Waits while this replica is fenced. If a snapshot to heal from comes meanwhile that
    /// covers the entry being applied (`applying`), installs it and lifts the fence: then the
    /// rest of that entry, and any other it covers, are passed over (`true`). An older one is
    /// dropped (the healer asks again).
    async fn heal_if_fenced(&mut self, applying: LogId) -> Result<bool, StorageError> {
        if !self.applied.fenced() {
            return Ok(false);
        }
        self.applied
            .waiting_in
            .store(applying.index, Ordering::Relaxed);
        let healed = self.heal_when_given(applying).await;
        self.applied.waiting_in.store(0, Ordering::Relaxed);
        healed
    }

    async fn heal_when_given(&mut self, applying: LogId) -> Result<bool, StorageError> {
        while let Some(healing) = self.applied.unfenced().await {
            let (meta, bytes) = &*healing;
            if let Err(why) = self.can_heal_from(meta, bytes, applying) {
                tracing::warn!(
                    snapshot = %meta.snapshot_id,
                    applying = applying.index,
                    why,
                    "a snapshot to heal from not used"
                );
                continue;
            }
            tracing::info!(
                snapshot = %meta.snapshot_id,
                applying = applying.index,
                "healing: restoring the app from a healthy replica's snapshot"
            );
            let requests = self.install(meta, bytes.clone()).await?;
            // The digests of this replica's answers until then are of a state that is gone.
            self.applied.digests.forget_through(requests);
            self.applied
                .resume()
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            self.applied.heals.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                snapshot = %meta.snapshot_id,
                requests,
                "healed: the app holds the healthy replicas' state; applying on"
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// Why this replica cannot heal from the snapshot `bytes` with `meta` while a request of
    /// entry `applying` waits, if it cannot.
    fn can_heal_from(
        &self,
        meta: &SnapshotMeta,
        bytes: &[u8],
        applying: LogId,
    ) -> Result<(), String> {
        if meta
            .last_log_id
            .is_none_or(|last| last.index < applying.index)
        {
            return Err("it does not cover the entry whose request waits".into());
        }
        let state = contents(bytes).map_err(|e| format!("it cannot be read: {e}"))?;
        if state.app.is_none() || self.hooks.is_none() {
            return Err("it holds no app state, or this replica has no restore hook".into());
        }
        if state.requests < self.delivery.progress().requests {
            return Err(format!(
                "it covers {} requests, fewer than this replica handled",
                state.requests
            ));
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.delivery.progress().applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let failed = |e: std::io::Error| StorageIOError::apply(entry.log_id, &e);
            // A leader's followers may commit an entry before the leader's own log has it on
            // disk (it sends them its entries while it writes them): the app gets nothing this
            // replica's log could lose in a crash, so that a restart never finds a request
            // delivered that its log does not hold.
            self.log
                .durable_through(entry.log_id.index)
                .await
                .map_err(failed)?;
            if self.pass_over(entry.log_id, &mut replies) {
                continue;
            }
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(membership) => {
                    if let Some(connections) = self.delivery.tcp_mut() {
                        connections.keep_members(members(&membership));
                    }
                    self.membership = StoredMembership::new(Some(entry.log_id), membership);
                    self.save_membership().await?;
                }
                EntryPayload::Normal(proposal) => {
                    let mut seq = self.delivery.progress().requests;
                    'entry: for batch in proposal.batches {
                        let (origin, incarnation, _) = batch.id;
                        self.delivery.advance((origin, incarnation), batch.floor);
                        for command in batch.commands {
                            seq += 1;
                            if self.heal_if_fenced(entry.log_id).await? {
                                break 'entry;
                            }
                            let outcome = self
                                .delivery
                                .deliver(seq, command.key(), &command.payload)
                                .await
                                .map_err(failed)?;
                            if let Outcome::Diverged(why) = &outcome {
                                // Fenced for good first, then the event is passed over: a crash
                                // in between finds the fence, never the event merely gone.
                                self.applied.fence(why.clone());
                                self.delivery.pass_over(seq).map_err(failed)?;
                            }
                            self.applied.record(seq, &command, outcome, &self.delivery);
                            self.halt_if_asked(&command).await;
                        }
                    }
                }
            }
            // Healed half way through it.
            if self.pass_over(entry.log_id, &mut replies) {
                continue;
            }
            self.delivery.finish_entry(entry.log_id).map_err(failed)?;
            self.applied.applied.send_replace(entry.log_id.index);
            if entry.log_id.index.is_multiple_of(CHECKPOINT_EVERY) {
                self.checkpoint(entry.log_id).await?;
            }
            replies.push(());
            self.returned.send_replace(entry.log_id.index);
        }
        Ok(replies)
    }

    /// Runs in order with `apply`, so the app's state captured here is exactly that of
    /// `applied`. (openraft builds the snapshot itself in another task, concurrently with
    /// applying more entries.)
    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let app = match &self.hooks {
            Some(hooks) => Some(hooks.capture(self.delivery.app()).await),
            None => None,
        };
        let progress = self.delivery.progress();
        SnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: progress.applied,
                last_membership: self.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    progress.applied.map_or(0, |id| id.index),
                    progress.deliveries
                ),
            },
            state: SnapshotState {
                requests: progress.requests,
                deliveries: progress.deliveries,
                sessions: self.delivery.sessions().clone(),
                app,
            },
            current: Arc::clone(&self.current),
            dir: self.dir.clone(),
            returned: self.returned.subscribe(),
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
        self.install(meta, snapshot.into_inner()).await?;
        // openraft applies on after it.
        let last = meta.last_log_id.map_or(0, |id| id.index);
        self.returned.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self
            .current
            .lock()
            .await
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
    dir: DataDir,
    returned: watch::Receiver<u64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let failed =
            |e: std::io::Error| StorageIOError::write_snapshot(Some(self.meta.signature()), &e);
        // openraft purges the log up to a snapshot it is told of: not before it has handed
        // every entry the snapshot covers to `apply` (a replica that healed from a snapshot
        // ahead of openraft's view passes them over as they come).
        let last = self.meta.last_log_id.map_or(0, |id| id.index);
        if self
            .returned
            .wait_for(|returned| *returned >= last)
            .await
            .is_err()
        {
            return Err(failed(std::io::Error::other("the state machine has stopped")).into());
        }
        let bytes = encode(&self.state).map_err(failed)?;
        keep_snapshot(&self.dir, &self.current, &self.meta, bytes.clone())
            .await
            .map_err(failed)?;
        tracing::info!(snapshot = %self.meta.snapshot_id, bytes = bytes.len(), "snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

/// Makes `bytes` the current snapshot, on disk first: before openraft may purge the log it
/// stands for, and so that a restarted node still has it. A snapshot no newer than the current
/// one (one built while a newer one was installed) is left aside.
async fn keep_snapshot(
    dir: &DataDir,
    current: &CurrentSnapshot,
    meta: &SnapshotMeta,
    bytes: Vec<u8>,
) -> std::io::Result<()> {
    let mut current = current.lock().await;
    if current
        .as_ref()
        .is_some_and(|(kept, _)| kept.last_log_id >= meta.last_log_id)
    {
        tracing::debug!(snapshot = %meta.snapshot_id, "a snapshot as new is kept already");
        return Ok(());
    }
    let file = encode(&(meta, &bytes))?;
    write_atomically(dir, SNAPSHOT, file).await?;
    *current = Some((meta.clone(), bytes));
    Ok(())
}

/// The nodes (node, incarnation) of `membership`, voters and learners.
fn members(
    membership: &openraft::Membership<NodeId, crate::order::typ::Member>,
) -> HashSet<(NodeId, u64)> {
    membership
        .nodes()
        .map(|(id, member)| (*id, member.incarnation))
        .collect()
}

/// Replays what the log holds from entry `first` up to where delivery had come (`progress`:
/// the entries up to `applied`, and the requests of the next one up to `answered`) into
/// `sessions`, which held what came before `first`, and into the TCP connections if there are:
/// what was applied before this start. TCP mode takes no snapshots, so its log is whole.
async fn replay(
    log: &mut LogStore,
    first: u64,
    progress: &crate::deliver::Progress,
    mut sessions: Sessions,
    mut tcp: Option<&mut Connections>,
) -> Result<Sessions, StorageError> {
    let applied = progress.applied.map_or(0, |id| id.index);
    // Of the entry being applied when the agent stopped, the requests handled.
    let partly =
        usize::try_from(progress.answered.saturating_sub(progress.requests)).unwrap_or(usize::MAX);
    let mut start = first;
    // A few entries at a time: an entry may hold many requests.
    while start <= applied + 1 {
        let end = (applied + 1).min(start.saturating_add(63));
        for entry in log.try_get_log_entries(start..end + 1).await? {
            let EntryPayload::Normal(proposal) = entry.payload else {
                continue;
            };
            let mut handled = if entry.log_id.index > applied {
                partly
            } else {
                usize::MAX
            };
            // As far as the apply got: a batch's floor counts only once the requests before it
            // were handled (a later batch of the same node may have a floor above them).
            for batch in &proposal.batches {
                if handled == 0 {
                    break;
                }
                let (origin, incarnation, _) = batch.id;
                sessions.advance((origin, incarnation), batch.floor);
                for command in &batch.commands {
                    if handled == 0 {
                        break;
                    }
                    handled -= 1;
                    // A copy, or a request below its node's floor, was not applied: neither is it
                    // here.
                    if !sessions.first(command.key()) {
                        continue;
                    }
                    if let Some(connections) = tcp.as_deref_mut()
                        && let Some(chunk) = Chunk::decode(&command.payload)
                    {
                        let conn = (command.origin, command.incarnation, chunk.conn);
                        connections.replayed(conn, &chunk.event);
                    }
                }
            }
        }
        start = end + 1;
    }
    Ok(sessions)
}

/// Replaces file `name` of `dir` with `bytes`, durably (a crash leaves the old or the new
/// file), on a blocking thread: fsyncs do not hold up the runtime.
async fn write_atomically(
    dir: &DataDir,
    name: &'static str,
    bytes: Vec<u8>,
) -> std::io::Result<()> {
    dir.blocking(move |dir| dir.replace(name, &bytes)).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::testing::{StoreBuilder, Suite};
    use tempfile::TempDir;

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
            let tmp = tempfile::tempdir().expect("temporary directory");
            let dir = DataDir::create(tmp.path()).expect("data directory");
            let mut log = LogStore::open(&dir, 1 << 20, u64::MAX)?;
            // The suite applies no app requests: the app is never contacted.
            let app = App::new(
                ([127, 0, 0, 1], 9).into(),
                std::net::Ipv4Addr::LOCALHOST,
                Duration::from_secs(1),
                crate::http::response::Limits::default(),
                64,
                Arc::default(),
            );
            let replica = Replica {
                node_id: 1,
                incarnation: 1,
                app: Arc::new(app),
                hooks: None,
                digests: Default::default(),
                tcp: None,
                sync_progress: true,
            };
            let (state_machine, _) = StateMachine::open(&dir, replica, &mut log).await?;
            Ok((tmp, log, state_machine))
        }
    }

    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    /// A leader's followers can commit an entry before the leader's own log has it on disk (it
    /// sends them its entries while it writes them): the entry reaches the app only once it is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_entry_reaches_the_app_only_once_the_log_has_it_on_disk() {
        use crate::testing::{Act, FakeApp, OK};

        let app = FakeApp::start(|_| Act::Reply(OK)).await;
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let mut log = LogStore::open(&dir, 1 << 20, u64::MAX).unwrap();
        let replica = Replica {
            node_id: 1,
            incarnation: 1,
            app: Arc::new(App::new(
                app.addr,
                std::net::Ipv4Addr::LOCALHOST,
                Duration::from_secs(5),
                crate::http::response::Limits::default(),
                64,
                Arc::default(),
            )),
            hooks: None,
            digests: Default::default(),
            tcp: None,
            sync_progress: true,
        };
        let (mut machine, _) = StateMachine::open(&dir, replica, &mut log).await.unwrap();
        let request = crate::http::ordered::Ordered {
            conn: 1,
            request: "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi".into(),
        };
        let entry = crate::testing::entry(1, 1, request.to_payload());

        // The log holds the entry (as openraft's would before it applies it), not on disk.
        let (held, appending) = log.append_held(entry.clone()).await;
        let applying = tokio::spawn(async move { machine.apply([entry]).await });
        // The apply waits for the log, which cannot write: nothing has gone to the app. (The
        // bound only turns an apply that never waits into a failure rather than a hang.)
        let waits = async {
            while log.durable_waiters() == 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), waits)
            .await
            .expect("the apply never waited for the log");
        assert!(app.seen().is_empty(), "delivered before the log had it");
        drop(held);
        appending.await.unwrap().unwrap();
        applying.await.unwrap().unwrap();
        assert_eq!(app.seen().len(), 1);
    }
}
