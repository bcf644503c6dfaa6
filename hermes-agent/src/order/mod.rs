//! Ordering: every node's client requests go through one Raft log (openraft), and each node's
//! state machine delivers the committed entries, in order, to its local app.
//!
//! - [`typ`]: the Raft type configuration; [`log_store`]: the durable log (redb);
//!   [`state_machine`]: delivery to the app, exactly once;
//! - [`peer`]: the peer transport.
//!
//! [`Node::submit`] is what interception calls: it proposes a request (directly on the leader,
//! forwarded by followers), follows leader changes, and returns the local app's response once
//! this node has delivered it.
#![allow(
    clippy::result_large_err,
    reason = "openraft's storage traits return its StorageError; boxing it here would only move the copy"
)]
pub mod log_store;
pub mod membership;
pub mod peer;
pub mod propose;
pub mod read;
pub mod state_machine;
pub mod typ;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use openraft::{
    BasicNode, SnapshotPolicy,
    error::{InitializeError, RaftError},
};
use tokio::{
    net::TcpListener,
    sync::Semaphore,
    time::{Instant, sleep_until},
};

use crate::deliver::{App, Response};
use log_store::LogStore;
use peer::wire::{Call, Reply};
use peer::{Network, Peers, server};
use propose::{Outcome, Proposer};
use state_machine::{Applied, StateMachine};
use typ::{Command, Metrics, NodeId, Raft};

/// What a node needs to know to start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: NodeId,
    /// Join a running cluster instead of forming one.
    pub join: bool,
    /// Where peers reach this node.
    pub raft_addr: SocketAddr,
    /// The initial voters and their peer addresses (this node included).
    pub members: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    pub app: SocketAddr,
    pub app_timeout: Duration,
    /// Longest a client waits for its request to be ordered and answered.
    pub request_timeout: Duration,
    /// Requests of this node's clients in flight at most.
    pub max_pending: usize,
    /// Snapshots of the app's state, which allow compacting the log; `None`: keep the whole log.
    pub snapshots: Option<Snapshots>,
}

/// When and how to snapshot the app's state.
#[derive(Clone, Debug)]
pub struct Snapshots {
    /// Shell command writing the app's state to `$HERMES_SNAPSHOT`.
    pub snapshot_cmd: String,
    /// Shell command replacing the app's state with `$HERMES_SNAPSHOT`.
    pub restore_cmd: String,
    /// Entries between snapshots.
    pub every: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    pub keep: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("storage: {0}")]
    Storage(#[from] typ::StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen for peers on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// How long a request waits for a leader to take it before the client gets 503: longer than an
/// election (with its random timeouts) normally takes.
pub const LEADERLESS: Duration = Duration::from_secs(3);

/// Why a request was not answered by the app.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("too many requests in flight on this node")]
    Overloaded,
    #[error("no leader could be reached; the request was not ordered")]
    NoLeader,
    #[error("not answered within the request timeout; the outcome is unknown")]
    Timeout,
    #[error("the app did not answer the read: {0}")]
    App(String),
}

/// A running Raft node and the means to submit requests to it.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub applied: Arc<Applied>,
    pub log: LogStore,
    /// Commit index when the node started: readiness waits until it is applied.
    pub startup_commit: u64,
    proposer: Proposer,
    reads: crate::deliver::Reads,
    peers: Peers,
    boot: u64,
    sequence: AtomicU64,
    pending: Semaphore,
    max_pending: usize,
    request_timeout: Duration,
}

impl Node {
    /// Opens the node's storage, starts Raft and the peer server, and forms the cluster when all
    /// members are reachable for the first time.
    pub async fn start(settings: Settings) -> Result<Arc<Self>, StartError> {
        let dir = &settings.data_dir;
        let dir_error = |e| StartError::DataDir(dir.clone(), e);
        std::fs::create_dir_all(dir).map_err(dir_error)?;
        let boot = next_boot(dir).map_err(dir_error)?;
        let mut log = LogStore::open(&dir.join("log.redb"))?;
        let startup_commit = log.committed().map_or(0, |id| id.index);
        let app = App::new(settings.app, settings.app_timeout);
        let hooks = settings
            .snapshots
            .as_ref()
            .map(|s| crate::deliver::hooks::Hooks {
                snapshot: s.snapshot_cmd.clone(),
                restore: s.restore_cmd.clone(),
                file: dir.join("app-state"),
                timeout: settings.app_timeout,
            });
        let (state_machine, applied) =
            StateMachine::open(dir, settings.node_id, app, hooks, &mut log).await?;

        let config = openraft::Config {
            cluster_name: "hermes".into(),
            // Failover within a second, yet tolerant of a busy machine's scheduling delays: a
            // follower waits for 6 to 12 missed heartbeats.
            heartbeat_interval: 50,
            election_timeout_min: 300,
            election_timeout_max: 600,
            max_payload_entries: 1024,
            // Without snapshot hooks the app's state cannot be captured: keep the whole log, so
            // that a new or wiped replica replays it from the start.
            snapshot_policy: settings
                .snapshots
                .as_ref()
                .map_or(SnapshotPolicy::Never, |s| {
                    SnapshotPolicy::LogsSinceLast(s.every)
                }),
            max_in_snapshot_log_to_keep: settings.snapshots.as_ref().map_or(0, |s| s.keep),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let peers = Peers::default();
        let raft = Raft::new(
            settings.node_id,
            Arc::new(config),
            Network {
                peers: peers.clone(),
            },
            log.clone(),
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let listener = TcpListener::bind(settings.raft_addr)
            .await
            .map_err(|e| StartError::Listen(settings.raft_addr, e))?;
        tokio::spawn(server::serve(
            listener,
            Arc::new(server::Server {
                raft: raft.clone(),
                log: log.clone(),
                node_id: settings.node_id,
                forward_timeout: settings.request_timeout,
            }),
        ));
        if !settings.join {
            tokio::spawn(bootstrap(
                raft.clone(),
                peers.clone(),
                settings.node_id,
                settings.members.clone(),
            ));
        }
        tracing::info!(
            node_id = settings.node_id,
            raft = %settings.raft_addr,
            data = %dir.display(),
            boot,
            applied = applied.applied_index(),
            committed = startup_commit,
            "raft node started"
        );
        let proposer = Proposer::start(
            raft.clone(),
            log.clone(),
            peers.clone(),
            settings.node_id,
            boot,
            settings.request_timeout,
        );
        Ok(Arc::new(Self {
            id: settings.node_id,
            raft,
            applied,
            log,
            startup_commit,
            proposer,
            reads: crate::deliver::Reads::new(settings.app, settings.app_timeout),
            peers,
            boot,
            sequence: AtomicU64::new(0),
            pending: Semaphore::new(settings.max_pending),
            max_pending: settings.max_pending,
            request_timeout: settings.request_timeout,
        }))
    }

    /// Orders `payload` and returns this node's app response to it.
    pub async fn submit(&self, payload: Bytes) -> Result<Response, SubmitError> {
        let _permit = self
            .pending
            .try_acquire()
            .map_err(|_| SubmitError::Overloaded)?;
        let id = (self.boot << 40) | self.sequence.fetch_add(1, Ordering::Relaxed);
        let command = Command {
            origin: self.id,
            id,
            payload,
        };
        let answered = self.applied.register(id);
        let _forget = Forget(&self.applied, id);
        let deadline = Instant::now() + self.request_timeout;
        let maybe_proposed = AtomicBool::new(false);
        tokio::select! {
            response = answered => response.map_err(|_| SubmitError::Timeout),
            given_up = self.propose(command, &maybe_proposed) => Err(given_up),
            () = sleep_until(deadline) => Err(if maybe_proposed.load(Ordering::Relaxed) {
                SubmitError::Timeout
            } else {
                SubmitError::NoLeader
            }),
        }
    }

    /// Proposes `command` until the leader has committed it, then waits (the local apply
    /// answers). Follows leader changes; the state machine drops duplicates of retried proposals.
    /// Gives up early, with [`SubmitError::NoLeader`], when no leader took it for
    /// [`LEADERLESS`] and no leader may have received it.
    async fn propose(&self, command: Command, maybe_proposed: &AtomicBool) -> SubmitError {
        let mut backoff = Duration::from_millis(20);
        let started = Instant::now();
        loop {
            match self.proposer.propose(command.clone()).await {
                Outcome::Committed => {
                    maybe_proposed.store(true, Ordering::Relaxed);
                    return std::future::pending().await;
                }
                Outcome::NotLeader(_) => {}
                Outcome::Failed { maybe_sent } => {
                    if maybe_sent {
                        maybe_proposed.store(true, Ordering::Relaxed);
                    }
                }
            }
            if !maybe_proposed.load(Ordering::Relaxed) && started.elapsed() > LEADERLESS {
                return SubmitError::NoLeader;
            }
            self.await_leader_news(&mut backoff).await;
        }
    }

    /// Waits for news of the leader (any change in Raft's metrics), `backoff` at most, which
    /// doubles, up to half a second, for the next wait.
    async fn await_leader_news(&self, backoff: &mut Duration) {
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(*backoff, metrics.changed()).await;
        *backoff = (*backoff * 2).min(Duration::from_millis(500));
    }

    pub fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// Requests of this node's clients now waiting for the log.
    pub fn pending(&self) -> usize {
        self.max_pending - self.pending.available_permits()
    }
}

/// The leader this node knows of, and where its peers reach it.
fn leader(raft: &Raft) -> (Option<NodeId>, Option<String>) {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let leader = metrics.current_leader;
    let addr = leader.and_then(|l| {
        metrics
            .membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.addr.clone())
    });
    (leader, addr)
}

/// Withdraws a waiter when its request is done or abandoned.
struct Forget<'a>(&'a Applied, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// Counts the node's starts, so that request ids never repeat across restarts.
fn next_boot(dir: &Path) -> std::io::Result<u64> {
    let path = dir.join("boot");
    let boot = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(std::io::Error::other)? + 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => return Err(e),
    };
    if boot >= 1 << 24 {
        return Err(std::io::Error::other("more than 2^24 restarts"));
    }
    state_machine::write_atomically(&path, boot.to_string().as_bytes())?;
    Ok(boot)
}

/// Forms the cluster once: the member with the lowest id initialises it when every member answers
/// and none is part of a cluster yet. The others wait to be contacted by the leader.
async fn bootstrap(raft: Raft, peers: Peers, node_id: NodeId, members: BTreeMap<NodeId, String>) {
    if members.keys().next() != Some(&node_id) {
        return;
    }
    loop {
        if raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        let mut all_fresh = true;
        for (&id, addr) in members.iter().filter(|(id, _)| **id != node_id) {
            match peers
                .get(addr)
                .call(&Call::Hello, Duration::from_secs(1))
                .await
            {
                Ok(Reply::Hello {
                    node_id: answered,
                    initialized,
                }) if answered == id => {
                    if initialized {
                        tracing::info!(
                            peer = id,
                            "member is already in a cluster; joining it instead of forming one"
                        );
                        return;
                    }
                }
                Ok(other) => {
                    tracing::warn!(peer = id, %addr, ?other, "unexpected answer from member");
                    all_fresh = false;
                }
                Err(error) => {
                    tracing::debug!(peer = id, %error, "member not reachable yet");
                    all_fresh = false;
                }
            }
        }
        if all_fresh {
            let nodes: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            match raft.initialize(nodes).await {
                Ok(()) => {
                    tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "cluster formed");
                    return;
                }
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => return,
                Err(error) => tracing::warn!(%error, "forming the cluster failed; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
