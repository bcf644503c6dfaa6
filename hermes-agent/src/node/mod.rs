//! A node: wires ordering ([`crate::order`]) and delivery ([`crate::deliver`]) together. [`Node`]
//! opens the data directory, the Raft log and the state machine, starts Raft, the peer server,
//! the proposer and the divergence watch, and is what interception and the admin API call.
//!
//! - [`read`]: reads off the log; [`membership`]: membership changes asked of this node;
//!   [`recover`]: the survivors of a lost majority made the only voters, offline.
//!
//! [`Node::submit`] is what interception calls: it proposes a request (directly on the leader,
//! forwarded by followers), follows leader changes, and returns the local app's answer once this
//! node has delivered it.
pub mod backup;
#[cfg(test)]
mod data_dir_tests;
#[cfg(test)]
mod durability_tests;
mod heal;
pub mod membership;
#[cfg(test)]
mod peer_tests;
pub mod read;
pub mod recover;
#[cfg(test)]
pub mod testing;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use openraft::SnapshotPolicy;
use tokio::{
    net::TcpListener,
    sync::Semaphore,
    time::{Instant, sleep_until},
};

use crate::{
    data_dir::DataDir,
    deliver::{
        App, digests,
        divergence::{self, Answering, Divergence, OnDivergence},
        hooks::Hooks,
        state_machine::{Applied, Replica, StateMachine},
        tcp::{Clients, Connections, TcpMode},
    },
    http::{Response, response},
    order::{
        StartError, bootstrap,
        elect::{self, Elector},
        handover,
        identity::{Identity, IdentityError},
        in_flight::{Flying, InFlight},
        log_store::LogStore,
        peer::{
            self, Network, Peers,
            client::Calls,
            server::{self, Elections},
            tls::{PeerTls, Security},
        },
        propose::{Merger, Outcome, Proposer},
        typ::{Command, ConnKey, Metrics, NodeId, Raft},
    },
    tcp::{Chunk, Event},
    telemetry::Telemetry,
};

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
    /// Where the app is reached from.
    pub app_source: std::net::Ipv4Addr,
    /// An answer taking longer makes the app count as slow (it is still waited for).
    pub app_timeout: Duration,
    /// What an app's answer may be.
    pub response_limits: response::Limits,
    /// App connections open at once at most (HTTP mode; `--app-connections`).
    pub app_connections: usize,
    /// Whether the delivery progress is synced before requests go to the app, so that a machine
    /// crash repeats no request silently (`--no-progress-sync` turns it off).
    pub sync_progress: bool,
    /// Longest a client waits for its request to be ordered and answered.
    pub request_timeout: Duration,
    /// Requests of this node's clients in flight at most.
    pub max_pending: usize,
    /// Bytes of log entries kept in memory.
    pub log_cache: usize,
    /// Largest peer frame sent or accepted.
    pub max_frame: usize,
    /// The node's TLS credentials for its peers; `None`: plain TCP (`--insecure-peers`).
    pub peer_tls: Option<peer::tls::Files>,
    /// Where the node counts what happens.
    pub telemetry: Arc<Telemetry>,
    /// What replicas compare to find divergence.
    pub digest: peer::wire::Digest,
    /// What a divergence found on this node does.
    pub on_divergence: OnDivergence,
    /// Snapshots of the app's state, which allow compacting the log; `None`: keep the whole log.
    pub snapshots: Option<Snapshots>,
    /// Where the node's sockets live and how it names its peers (pod mode); the default is the
    /// agent's own namespace, with peers by address and certificates by node id.
    pub placement: Placement,
    /// Raw TCP mode: the log holds connection events; `None`: HTTP requests.
    pub tcp: Option<TcpMode>,
}

/// Where a node lives, for pod mode (one agent, a node per pod, each in its pod's network
/// namespace). The default: the agent's own namespace, as in host-network mode.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// The namespace of the app and of the node's peer listener; `None`: the agent's own.
    pub netns: Option<crate::steer::netns::Netns>,
    /// Turns member addresses into ones to dial; `None`: they are dialled as they are.
    pub resolve: Option<peer::client::Resolve>,
    /// The one name every peer's certificate carries; `None`: `hermes-node-<id>`, per node.
    pub peer_name: Option<String>,
    /// The data directory, opened already (pod mode: in the pod's volume); `None`:
    /// [`Settings::data_dir`], opened (and made if missing) at start.
    pub data_dir: Option<DataDir>,
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

/// How long a request waits for a leader to take it before the client gets 503: several times
/// what an election normally takes (about half a second after a leader fault).
pub const LEADERLESS: Duration = Duration::from_secs(3);

/// Why a request was not answered by the app.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("too many requests in flight on this node")]
    Overloaded,
    #[error("no leader could be reached; the request was not ordered")]
    NoLeader,
    #[error("this node is not a member of the cluster; the request was not ordered")]
    NotMember,
    #[error("not answered within the request timeout; the outcome is unknown")]
    Timeout,
    #[error("the app gave no answer that can be passed on: {0}")]
    App(String),
}

impl SubmitError {
    /// Whether the request was certainly not ordered (so the client may send it again).
    pub fn not_ordered(&self) -> bool {
        matches!(self, Self::Overloaded | Self::NoLeader | Self::NotMember)
    }
}

/// A running Raft node and the means to submit requests to it.
pub struct Node {
    pub id: NodeId,
    pub identity: Identity,
    pub raft: Raft,
    pub applied: Arc<Applied>,
    pub log: LogStore,
    /// Commit index when the node started: readiness waits until it is applied.
    pub startup_commit: u64,
    /// Divergences found between this replica and the others.
    pub divergence: Arc<Divergence>,
    pub telemetry: Arc<Telemetry>,
    /// In raw TCP mode, the client ends of this node's connections until they are opened.
    pub clients: Arc<Clients>,
    app: Arc<App>,
    proposer: Proposer,
    /// Proposes on this node while it leads.
    merger: Merger,
    /// Starts this node's elections.
    elector: Arc<Elector>,
    peers: Peers,
    /// This node's request ids.
    in_flight: Arc<InFlight>,
    /// This node's connection ids (raw TCP mode, and the app connections of HTTP clients).
    connections: AtomicU64,
    /// Raw TCP mode.
    tcp: bool,
    /// Leaders seen taking office.
    leaders: Arc<AtomicU64>,
    /// What the start had to order first is applied here ([`Self::announced`]).
    announced: AtomicBool,
    pending: Semaphore,
    max_pending: usize,
    request_timeout: Duration,
    /// Where the node keeps its state (its latest snapshot, for a backup).
    dir: DataDir,
    /// Whether the snapshot hooks are set: without them, no backup holds the app's state.
    hooks: bool,
}

impl Node {
    /// Opens the node's storage, starts Raft and the peer server, and forms the cluster when all
    /// members are reachable for the first time.
    pub async fn start(mut settings: Settings) -> Result<Arc<Self>, StartError> {
        let listener = match &settings.placement.netns {
            Some(netns) => netns.listen(settings.raft_addr),
            None => TcpListener::bind(settings.raft_addr).await,
        }
        .map_err(|e| StartError::Listen(settings.raft_addr, e))?;
        if settings.raft_addr.port() == 0 {
            // A port the system picked (in-process tests): peers learn the one it is.
            let bound = listener
                .local_addr()
                .map_err(|e| StartError::Listen(settings.raft_addr, e))?;
            settings.raft_addr = bound;
            settings.members.insert(settings.node_id, bound.to_string());
        }
        let dir = match &settings.placement.data_dir {
            Some(dir) => dir.clone(),
            None => DataDir::create(&settings.data_dir).map_err(StartError::DataDir)?,
        };
        let identity = Identity::load(&dir, settings.node_id).map_err(|e| match e {
            // The directory's own errors name it and the file.
            IdentityError::Io(e) => StartError::DataDir(e),
            e => StartError::Identity(dir.path().to_owned(), e),
        })?;
        let security = match &settings.peer_tls {
            Some(files) => Security::Tls(PeerTls::load_as(
                files.clone(),
                settings.placement.peer_name.clone(),
            )?),
            None => {
                tracing::warn!(
                    "peers are not authenticated (--insecure-peers): whoever can reach the peer \
                     port can order requests on every replica and read the whole log"
                );
                Security::Insecure
            }
        };
        let peers = Peers::new(settings.node_id, settings.max_frame, security.clone())
            .resolving(settings.placement.resolve.clone());
        if let Security::Tls(tls) = &security {
            let peers = peers.clone();
            tls.watch(move || peers.reset());
        }
        if identity.fresh && !settings.join {
            bootstrap::refuse_if_wiped(&peers, &identity, &settings.members).await?;
        }
        let mut log = LogStore::open(&dir, settings.log_cache, settings.max_frame as u64)?;
        log.time_syncs(settings.telemetry.log_sync_seconds());
        if log.resign(settings.node_id).await? {
            tracing::info!(
                "this node led before it stopped: it does not lead again in that term (its log \
                 may lack entries it had sent), a new one is elected"
            );
        }
        let startup_commit = log.committed().map_or(0, |id| id.index);
        let app = Arc::new(
            App::new(
                settings.app,
                settings.app_source,
                settings.app_timeout,
                settings.response_limits,
                settings.app_connections,
                Arc::clone(&settings.telemetry),
            )
            .in_netns(settings.placement.netns.clone()),
        );
        app.close_when_idle();
        let hooks = settings.snapshots.as_ref().map(|s| Hooks {
            snapshot: s.snapshot_cmd.clone(),
            restore: s.restore_cmd.clone(),
            dir: dir.clone(),
            timeout: settings.app_timeout,
        });
        let clients = Arc::new(Clients::default());
        let digests = Arc::new(digests::Digests::new(settings.digest));
        let connections = settings.tcp.map(|tcp| {
            Connections::new(
                (settings.node_id, identity.incarnation),
                Arc::clone(&clients),
                tcp,
            )
        });
        let replica = Replica {
            node_id: settings.node_id,
            incarnation: identity.incarnation,
            app: Arc::clone(&app),
            hooks,
            digests,
            tcp: connections,
            sync_progress: settings.sync_progress,
        };
        let (mut state_machine, applied) = StateMachine::open(&dir, replica, &mut log).await?;
        let broken = state_machine.broken_connections();

        let config = openraft::Config {
            cluster_name: "hermes".into(),
            // openraft waits one heartbeat interval for an AppendEntries answer: long enough for
            // a follower's fsync on a busy machine. A voter refuses any candidate for a lease
            // (the maximum election timeout) after it last heard its leader; Hermes starts
            // elections once a majority has been that long without a leader (see `elect`). A
            // vote request waits the minimum election timeout for its answer.
            heartbeat_interval: 100,
            election_timeout_min: 200,
            election_timeout_max: elect::LEADER_LEASE_MS,
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
            // Hermes chooses who campaigns, and when (see `elect`).
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let raft = Raft::new(
            settings.node_id,
            Arc::new(config),
            Network::new(peers.clone()),
            log.clone(),
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;

        let merger = Merger::start(raft.clone(), log.clone());
        let divergence = Arc::new(Divergence::default());
        let elector = Arc::new(Elector::new(log.clone()));
        tokio::spawn(elect::run(
            Arc::clone(&elector),
            raft.clone(),
            peers.clone(),
        ));
        tokio::spawn(server::serve(
            listener,
            Arc::new(server::Server {
                raft: raft.clone(),
                answers: Arc::new(Answering {
                    applied: Arc::clone(&applied),
                    divergence: Arc::clone(&divergence),
                }),
                merger: merger.clone(),
                elections: Arc::clone(&elector) as Arc<dyn Elections>,
                peers: peers.clone(),
                identity,
                forward_timeout: settings.request_timeout,
                handshake_timeout: server::HANDSHAKE_TIMEOUT,
                max_handshakes: server::MAX_HANDSHAKES,
                max_connections: server::MAX_CONNECTIONS,
            }),
        ));
        let leaders = Arc::new(AtomicU64::new(0));
        tokio::spawn(crate::order::follow_leaders(
            raft.clone(),
            Arc::clone(&leaders),
        ));
        tokio::spawn(divergence::watch(
            settings.node_id,
            raft.clone(),
            peers.clone(),
            Arc::clone(&applied),
            Arc::clone(&divergence),
            Arc::clone(&settings.telemetry),
            settings.on_divergence,
        ));
        if !settings.join {
            tokio::spawn(bootstrap::form(
                raft.clone(),
                peers.clone(),
                identity,
                settings.raft_addr,
                settings.members.clone(),
            ));
        }
        tracing::info!(
            node_id = settings.node_id,
            incarnation = format!("{:016x}", identity.incarnation),
            raft = %settings.raft_addr,
            data = %dir.path().display(),
            boot = identity.boot,
            applied = applied.applied_index(),
            committed = startup_commit,
            "raft node started"
        );
        let in_flight = InFlight::new(identity.first_id());
        let proposer = Proposer::start(
            raft.clone(),
            merger.clone(),
            peers.clone(),
            Arc::clone(&elector),
            identity,
            Arc::clone(&in_flight),
            settings.request_timeout,
        );
        let node = Arc::new(Self {
            id: settings.node_id,
            identity,
            raft,
            applied,
            log,
            startup_commit,
            divergence,
            telemetry: Arc::clone(&settings.telemetry),
            app,
            proposer,
            merger,
            elector,
            peers,
            in_flight,
            connections: AtomicU64::new(identity.first_id()),
            tcp: settings.tcp.is_some(),
            leaders,
            announced: AtomicBool::new(false),
            pending: Semaphore::new(settings.max_pending),
            max_pending: settings.max_pending,
            request_timeout: settings.request_timeout,
            clients,
            dir: dir.clone(),
            hooks: settings.snapshots.is_some(),
        });
        tokio::spawn(heal::heal(Arc::downgrade(&node)));
        if settings.tcp.is_some() && identity.boot > 1 {
            tokio::spawn(Arc::clone(&node).announce_restart(broken));
        } else {
            node.announced.store(true, Ordering::Relaxed);
        }
        Ok(node)
    }

    /// In raw TCP mode, after a restart: orders that the connections of other nodes this
    /// replica had open are abandoned (`broken`: it cannot apply the rest of their streams) and
    /// that those of this node's earlier life are gone (they went with the process), so that
    /// every replica closes them at the same point; then waits until that is applied here.
    async fn announce_restart(self: Arc<Self>, broken: Vec<ConnKey>) {
        if !broken.is_empty() {
            tracing::warn!(
                connections = broken.len(),
                "connections open here when the agent stopped are abandoned on every replica \
                 (their clients are reset): this replica could not apply the rest of them"
            );
        }
        let abandon = broken
            .chunks(crate::tcp::MAX_ABANDONED)
            .map(|conns| Event::Abandon(conns.to_vec()));
        let events: Vec<Event> = abandon.chain([Event::Lost]).collect();
        let mut last = None;
        for event in events {
            let conn = if event == Event::Lost {
                self.identity.first_id()
            } else {
                0
            };
            let payload = Chunk::new(conn, event).encode();
            loop {
                let (command, flying) = self.command(payload.clone());
                let id = command.id;
                let applied = self.applied.register(id);
                if self.order_command(command, flying).await.is_ok() {
                    last = Some(applied);
                    break;
                }
                // Not a member yet (joining): wait to be one.
                self.applied.forget(id);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // Applied here: the last, so the others before it.
        if let Some(applied) = last {
            let _ = applied.await;
        }
        self.announced.store(true, Ordering::Relaxed);
    }

    /// Whether what this node's start had to order first is applied here: in raw TCP mode,
    /// after a restart, that the connections it lost are abandoned.
    pub fn announced(&self) -> bool {
        self.announced.load(Ordering::Relaxed)
    }

    /// In raw TCP mode, before a planned stop: orders that every connection still open is
    /// abandoned (closed on every replica, clients reset), and stops delivering right after it,
    /// so that this replica leaves no connection open behind it: it could not apply the rest
    /// of one after its restart. Waits `to_order` at most for the order to be committed, and
    /// until `deadline` for this replica to apply it; says whether it stopped right after it.
    pub async fn abandon_connections(&self, to_order: Duration, deadline: Instant) -> bool {
        if !self.tcp {
            return true;
        }
        let (command, flying) = self.command(Chunk::new(0, Event::Abandon(Vec::new())).encode());
        self.applied.halt_after(command.key());
        let ordered = tokio::time::timeout(to_order, self.order_command(command, flying)).await;
        if !matches!(ordered, Ok(Ok(()))) {
            tracing::warn!(
                "the connections still open could not be abandoned (not ordered within \
                 {to_order:?}): after its restart this replica abandons them, and fences itself \
                 if it missed bytes of one"
            );
            return false;
        }
        if tokio::time::timeout_at(deadline, self.applied.halted())
            .await
            .is_err()
        {
            tracing::warn!(
                "the connections still open were abandoned, but this replica did not apply that \
                 within the grace period: after its restart it fences itself if it missed bytes \
                 of one"
            );
            return false;
        }
        true
    }

    /// A new connection id, unique across this node's restarts and incarnations: a client
    /// connection, and its app connection on every replica, is named by one.
    pub fn next_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed)
    }

    /// A new command of this node carrying `payload`, in flight until the [`Flying`] is dropped.
    fn command(&self, payload: Bytes) -> (Command, Flying) {
        let flying = self.in_flight.start();
        let command = Command {
            origin: self.id,
            incarnation: self.identity.incarnation,
            id: flying.id,
            payload,
        };
        (command, flying)
    }

    /// Orders `payload` (raw TCP mode's events): proposes it until it is committed, through
    /// leader changes, for as long as that takes, and returns then (not once it is applied).
    /// Fails only on a node that is not (or no longer) a member: nothing can be ordered from
    /// it then.
    pub async fn order(&self, payload: Bytes) -> Result<(), SubmitError> {
        let (command, flying) = self.command(payload);
        self.order_command(command, flying).await
    }

    /// [`Self::order`], for a command made with [`Self::command`].
    async fn order_command(&self, command: Command, _flying: Flying) -> Result<(), SubmitError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            if !self.is_member() {
                return Err(SubmitError::NotMember);
            }
            if self.proposer.propose(command.clone()).await == Outcome::Committed {
                self.telemetry.committed(started.elapsed().as_secs_f64());
                return Ok(());
            }
            self.await_leader_news(&mut backoff).await;
        }
    }

    /// Takes a place among this node's requests in flight, for a member only.
    pub(super) fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SubmitError> {
        let permit = self
            .pending
            .try_acquire()
            .map_err(|_| SubmitError::Overloaded)?;
        if !self.is_member() {
            return Err(SubmitError::NotMember);
        }
        Ok(permit)
    }

    /// Orders `payload` and returns this node's app answer to it.
    pub async fn submit(&self, payload: Bytes) -> Result<Response, SubmitError> {
        let _permit = self.admit()?;
        let (command, flying) = self.command(payload);
        let id = command.id;
        let answered = self.applied.register(id);
        let _forget = Forget(&self.applied, id);
        let started = Instant::now();
        let deadline = started + self.request_timeout;
        let maybe_proposed = AtomicBool::new(false);
        // When the proposal was committed, in microseconds after `started`.
        let committed = AtomicU64::new(u64::MAX);
        tokio::select! {
            answer = answered => {
                let at = committed.load(Ordering::Relaxed);
                if at != u64::MAX {
                    let after = started.elapsed().as_micros() as u64;
                    self.telemetry.applied(after.saturating_sub(at) as f64 / 1e6);
                }
                match answer {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(why)) => Err(SubmitError::App(why.into())),
                    Err(_) => Err(SubmitError::Timeout),
                }
            },
            given_up = self.propose(command, flying, &maybe_proposed, started, &committed) => Err(given_up),
            () = sleep_until(deadline) => Err(if maybe_proposed.load(Ordering::Relaxed) {
                SubmitError::Timeout
            } else {
                SubmitError::NoLeader
            }),
        }
    }

    /// Proposes `command` until the leader has committed it (then it is settled: `flying` is
    /// dropped), then waits (the local apply answers). Follows leader changes; the state machine
    /// drops duplicates of retried proposals. Gives up early, with [`SubmitError::NoLeader`],
    /// when no leader took it for [`LEADERLESS`] and no leader may have received it.
    async fn propose(
        &self,
        command: Command,
        flying: Flying,
        maybe_proposed: &AtomicBool,
        started: Instant,
        committed: &AtomicU64,
    ) -> SubmitError {
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.proposer.propose(command.clone()).await {
                Outcome::Committed => {
                    drop(flying);
                    maybe_proposed.store(true, Ordering::Relaxed);
                    let elapsed = started.elapsed();
                    committed.store(elapsed.as_micros() as u64, Ordering::Relaxed);
                    self.telemetry.committed(elapsed.as_secs_f64());
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

    /// The leader as this node knows it (see [`Elector::leader`]).
    pub fn leader(&self, metrics: &Metrics) -> Option<NodeId> {
        self.elector.leader(metrics)
    }

    /// Whether this node is in the cluster's membership (as a voter or a learner).
    pub fn is_member(&self) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&self.id)
            .is_some_and(|member| member.incarnation == self.identity.incarnation)
    }

    /// Requests of this node's clients now waiting for the log.
    pub fn pending(&self) -> usize {
        self.max_pending - self.pending.available_permits()
    }

    /// How this node talks to its peers.
    pub fn peer_security(&self) -> &Security {
        self.peers.security()
    }

    /// Its connections to peers (pod mode asks the pods of a group who they are).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Adds what the log and the peer transport counted to `totals`.
    pub fn count(&self, totals: &mut crate::telemetry::Totals) {
        (
            totals.log_entries,
            totals.log_entry_requests,
            totals.log_syncs,
        ) = self.log.counts();
        totals.in_doubt = self.applied.in_doubt();
        totals.unconfirmed = self.applied.unconfirmed();
        totals.leader_changes = self.leaders.load(Ordering::Relaxed);
        let calls = self.peers.calls();
        totals.append_entries = Calls::read(&calls.append_entries);
        totals.forwards = Calls::read(&calls.forwards);
    }

    /// The app, as delivery and reads reach it.
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// On a planned stop: campaigns no more, and, on the leader, hands leadership to the most
    /// up-to-date voter within `within` (see [`handover`]).
    pub async fn step_down(&self, within: Duration) {
        self.elector.stop(&self.raft);
        let (raft, log, merger) = (&self.raft, &self.log, &self.merger);
        match handover::hand_over(raft, log, merger, &self.peers, self.id, within).await {
            Ok(None) => {}
            Ok(Some(successor)) => tracing::info!(successor, "leadership handed over"),
            Err(why) => tracing::warn!(
                why,
                "leadership not handed over: the others elect a leader once they miss this one"
            ),
        }
    }

    /// Waits until the delivery in flight, if any, is done, and keeps any other from starting
    /// for as long as the process lives: a planned stop never cuts a delivery in half. Then
    /// records the stop in the progress, durably.
    pub async fn finish_delivery(&self) {
        // The turn is never given back: the process is about to exit.
        std::mem::forget(self.app.turn().await);
        if let Err(error) = self.applied.record_stop() {
            tracing::warn!(%error, "cannot record the stop in the delivery progress");
        }
    }
}

/// Withdraws a waiter when its request is done or abandoned.
struct Forget<'a>(&'a Applied, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}
