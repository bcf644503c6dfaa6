//! The server side of the peer transport: serves Raft's calls and forwarded proposals, each call
//! on its own task so that a slow one does not hold up the others on the connection, and at most
//! [`CALLS_PER_CONNECTION`] at once (then the connection is read no further until one is done).
//! Whoever can reach the peer port can open connections: at most [`MAX_CONNECTIONS`] are served
//! at once (more are closed at once), and one that has not completed its TLS handshake within
//! [`HANDSHAKE_TIMEOUT`] is closed.
//!
//! Who may call what: every call names the node it comes from, and with TLS the peer's
//! certificate must name that node. Only members may vote, append, install snapshots, forward
//! proposals, ask for a read index or change the membership; a node that is in no cluster yet
//! takes Raft's calls from any authenticated peer, to learn its members from the leader (a
//! learner being added, a member of a cluster being formed). What a call says of its sender
//! (the leader or candidate of a vote, the origin of forwarded requests) must be its sender.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};

use super::{
    Peers,
    client::{Calls, Direction},
    tls::{Io, Presented, Security},
    wire::{self, Call, ForwardError, Offered, Reply, Standing, Target},
};
use crate::order::{
    identity::Identity,
    log_store, membership,
    propose::{Merger, Outcome},
    read_index,
    typ::{Metrics, NodeId, Raft, rpc::AppendEntriesResponse},
};

/// Calls of one connection served at once.
const CALLS_PER_CONNECTION: usize = 64;
/// Authenticated peer connections served at once: each peer keeps one (two for a moment when it
/// reconnects), so this leaves room for large clusters.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections still in their TLS handshake at once. Beyond, the one that has been at it the
/// longest is closed: strangers that connect and send nothing cannot keep a peer out, as a
/// peer's handshake takes milliseconds.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a connection may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An established peer connection that carries nothing (its peer lost power, say) is found out
/// by TCP keepalive after this long, then a few probes.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// What this replica tells peers that compare their answers with its own ([`Call::Digests`],
/// [`Call::Compare`]): the digests its delivery keeps. Ordering only carries the calls.
pub trait Answers: Send + Sync {
    /// The reply to [`Call::Digests`] from request `from` on.
    fn digests(&self, from: u64) -> Reply;
    /// The reply to [`Call::Compare`] from request `from` on.
    fn compare(&self, from: u64) -> Reply;
    /// What this replica offers a fenced one that needs a snapshot covering entry `at_least`,
    /// at most `limit` bytes: [`Offered::Building`] if it should build one (the caller does).
    /// Reads a file: called off the runtime.
    fn snapshot(&self, at_least: u64, limit: usize) -> Offered;
}

/// What this node's elections hear from its peers, and answer them ([`Call::Standing`],
/// [`Call::TakeOver`]): ordering's elector keeps it ([`crate::order::elect`]).
pub trait Elections: Send + Sync {
    /// This node accepted AppendEntries or a snapshot from a leader, or granted a candidate its
    /// vote (and gives it time to win).
    fn heard(&self);
    /// Where this node stands, for a voter that thinks of campaigning.
    fn standing(&self, metrics: &Metrics) -> Result<Standing, String>;
    /// Node `from`, leading in `term` and stopping, asks this node to take over: whether it
    /// may (then it campaigns at once, and goes on campaigning before the others for a while).
    fn take_over(&self, metrics: &Metrics, from: NodeId, term: u64) -> Result<(), String>;
}

pub struct Server {
    pub raft: Raft,
    pub answers: Arc<dyn Answers>,
    /// Proposes forwarded batches while this node leads.
    pub merger: Merger,
    pub elections: Arc<dyn Elections>,
    pub peers: Peers,
    pub identity: Identity,
    /// How long a forwarded proposal may wait to be committed here.
    pub forward_timeout: Duration,
    /// How long a connection may take to complete its TLS handshake ([`HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
    /// Connections in their handshake at once ([`MAX_HANDSHAKES`]); beyond, the oldest goes.
    pub max_handshakes: usize,
    /// Authenticated connections served at once ([`MAX_CONNECTIONS`]); more are closed.
    pub max_connections: usize,
}

/// The connections in their handshake, oldest first, each with what closes it.
#[derive(Default)]
struct Handshakes {
    next: u64,
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let handshakes = Arc::new(Mutex::new(Handshakes::default()));
    let slots = Arc::new(Semaphore::new(server.max_connections));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (id, evicted) = {
                    let mut handshakes = handshakes.lock().unwrap();
                    if handshakes.waiting.len() >= server.max_handshakes.max(1)
                        && let Some((_, oldest)) = handshakes.waiting.pop_front()
                    {
                        tracing::debug!(%peer, "too many peer handshakes; closing the oldest");
                        let _ = oldest.send(());
                    }
                    let (evict, evicted) = oneshot::channel();
                    let id = handshakes.next;
                    handshakes.next += 1;
                    handshakes.waiting.push_back((id, evict));
                    (id, evicted)
                };
                let (server, handshakes, slots) = (
                    Arc::clone(&server),
                    Arc::clone(&handshakes),
                    Arc::clone(&slots),
                );
                tokio::spawn(async move {
                    let shaken = tokio::select! {
                        shaken = handshake(stream, &server) => shaken,
                        _ = evicted => Err(std::io::Error::other("evicted by newer handshakes")),
                    };
                    handshakes
                        .lock()
                        .unwrap()
                        .waiting
                        .retain(|(waiting, _)| *waiting != id);
                    let Ok(slot) = slots.try_acquire_owned() else {
                        tracing::debug!(%peer, "too many peer connections; closing one");
                        return;
                    };
                    let served = match shaken {
                        Ok(shaken) => calls(shaken, server).await,
                        Err(error) => Err(error),
                    };
                    if let Err(error) = served {
                        tracing::debug!(%peer, %error, "peer connection ended");
                    }
                    drop(slot);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accepting peer connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection past its handshake: the stream, the certificate the peer presented (`None`
/// without TLS) and the certificates' generation then.
type Shaken = (Box<dyn Io>, Option<Presented>, u64);

/// Completes a connection's TLS handshake (within the server's time limit).
async fn handshake(stream: TcpStream, server: &Server) -> std::io::Result<Shaken> {
    stream.set_nodelay(true)?;
    let keepalive = nix::sys::socket::sockopt::KeepAlive;
    let _ = nix::sys::socket::setsockopt(&stream, keepalive, &true);
    let _ = nix::sys::socket::setsockopt(
        &stream,
        nix::sys::socket::sockopt::TcpKeepIdle,
        &(KEEPALIVE.as_secs() as u32),
    );
    match server.peers.security() {
        Security::Tls(tls) => {
            let generation = tls.generation();
            let (stream, presented) = tls.accept(stream, server.handshake_timeout).await?;
            Ok((stream, Some(presented), generation))
        }
        Security::Insecure => Ok((Box::new(stream), None, 0)),
    }
}

/// Serves the calls of an authenticated connection until it ends.
async fn calls(shaken: Shaken, server: Arc<Server>) -> std::io::Result<()> {
    let (stream, presented, generation) = shaken;
    let security = server.peers.security().clone();
    let (mut reader, writer) = tokio::io::split(stream);
    let (frames, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move { wire::write_frames(writer, &mut queue).await });
    let calls = Arc::new(Semaphore::new(CALLS_PER_CONNECTION));
    let max_frame = server.peers.max_frame();
    let mut names = HashMap::new();
    let mut buf = Vec::new();
    while let Some(id) = wire::read_frame(&mut reader, &mut buf, max_frame).await? {
        if let Security::Tls(tls) = &security
            && tls.generation() != generation
        {
            // The certificates were reloaded: this peer shows its current ones on a new
            // connection.
            return Ok(());
        }
        let call = log_store::decode::<(NodeId, Call)>(&buf)
            .map_err(|error| format!("cannot decode the call: {error}"))
            .and_then(|(from, call)| {
                let named = match (&security, &presented) {
                    (Security::Tls(tls), Some(presented)) => *names
                        .entry(from)
                        .or_insert_with(|| tls.names(presented, from)),
                    _ => true,
                };
                if !named {
                    return Err(format!("the peer's certificate does not name node {from}"));
                }
                authorize(&server, from, &call)?;
                Ok((from, call))
            });
        let Ok(permit) = Arc::clone(&calls).acquire_owned().await else {
            break;
        };
        let (server, frames) = (Arc::clone(&server), frames.clone());
        tokio::spawn(async move {
            let reply = match call {
                Ok((from, call)) => handle(&server, from, call).await,
                Err(why) => {
                    tracing::warn!(why, "refused a peer's call");
                    Reply::Rejected(why)
                }
            };
            drop(permit);
            match wire::frame(id, &reply, max_frame) {
                Ok(frame) => {
                    let _ = frames.send(frame);
                }
                Err(error) => tracing::error!(%error, "cannot encode a reply"),
            }
        });
    }
    Ok(())
}

/// Whether node `from` may make `call`.
fn authorize(server: &Server, from: NodeId, call: &Call) -> Result<(), String> {
    let claimed = match call {
        Call::AppendEntries(_, rpc) => rpc.vote.leader_id().voted_for(),
        Call::InstallSnapshot(_, rpc) => rpc.vote.leader_id().voted_for(),
        Call::Vote(_, rpc) => rpc.vote.leader_id().voted_for(),
        Call::Forward(batch) => {
            let (origin, incarnation, _) = batch.id;
            if batch
                .commands
                .iter()
                .any(|command| (command.origin, command.incarnation) != (origin, incarnation))
            {
                return Err(format!("node {from} forwards requests of another node"));
            }
            // A node speaks for its own incarnation only: the floor of its batches settles its
            // requests.
            let metrics = server.raft.metrics();
            let member = metrics
                .borrow()
                .membership_config
                .membership()
                .get_node(&origin)
                .cloned();
            if member.is_some_and(|member| member.incarnation != incarnation) {
                return Err(format!(
                    "node {from} forwards requests of another incarnation of itself"
                ));
            }
            Some(origin)
        }
        Call::Hello
        | Call::ChangeMembership(_)
        | Call::ReadIndex
        | Call::Digests { .. }
        | Call::Compare { .. }
        | Call::TakeOver { .. }
        | Call::Standing
        | Call::Snapshot { .. } => Some(from),
    };
    if claimed != Some(from) {
        return Err(format!("node {from} speaks for node {claimed:?}"));
    }
    if matches!(call, Call::Hello) {
        return Ok(());
    }
    let metrics = server.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    if membership.get_node(&from).is_some() {
        return Ok(());
    }
    let learning = membership.nodes().next().is_none()
        && matches!(
            call,
            Call::AppendEntries(..) | Call::InstallSnapshot(..) | Call::Vote(..)
        );
    if learning {
        return Ok(());
    }
    Err(format!("node {from} is not a member"))
}

/// Refuses Raft calls meant for another node, or for another incarnation of this one (the node
/// this one was before its data was lost).
fn for_me(server: &Server, target: Target) -> Result<(), Reply> {
    let me = &server.identity;
    if target.id == me.node_id && target.incarnation == me.incarnation {
        return Ok(());
    }
    tracing::error!(
        ?target,
        node_id = me.node_id,
        incarnation = format!("{:016x}", me.incarnation),
        "refusing a Raft call for another node or incarnation: if this node's data was lost, \
         remove it from the cluster and join it under a new id"
    );
    Err(Reply::Rejected(format!(
        "this is node {} incarnation {:016x}, not node {} incarnation {:016x}",
        me.node_id, me.incarnation, target.id, target.incarnation
    )))
}

async fn handle(server: &Server, from: NodeId, call: Call) -> Reply {
    let raft = &server.raft;
    let calls = server.peers.calls();
    match &call {
        Call::AppendEntries(..) => Calls::count(&calls.append_entries, Direction::Received),
        Call::Forward(_) => Calls::count(&calls.forwards, Direction::Received),
        _ => {}
    }
    match call {
        Call::AppendEntries(target, rpc) => match for_me(server, target) {
            Ok(()) => {
                let appended = raft.append_entries(rpc).await;
                // Not from a leader this node has seen deposed.
                let accepted = |response: &AppendEntriesResponse| {
                    !matches!(response, AppendEntriesResponse::HigherVote(_))
                };
                if appended.as_ref().is_ok_and(accepted) {
                    server.elections.heard();
                }
                Reply::AppendEntries(appended)
            }
            Err(refused) => refused,
        },
        Call::Vote(target, rpc) => match for_me(server, target) {
            Ok(()) => {
                let voted = raft.vote(rpc).await;
                if voted.as_ref().is_ok_and(|response| response.vote_granted) {
                    server.elections.heard();
                }
                Reply::Vote(voted)
            }
            Err(refused) => refused,
        },
        Call::InstallSnapshot(target, rpc) => match for_me(server, target) {
            Ok(()) => {
                let vote = rpc.vote;
                let installed = raft.install_snapshot(rpc).await;
                if installed
                    .as_ref()
                    .is_ok_and(|response| response.vote == vote)
                {
                    server.elections.heard();
                }
                Reply::InstallSnapshot(installed)
            }
            Err(refused) => refused,
        },
        Call::Forward(batch) => {
            let leader = raft.metrics().borrow().current_leader;
            if leader != Some(server.identity.node_id) {
                return Reply::Forward(Err(ForwardError::NotLeader(leader)));
            }
            let commit = server.merger.commit(batch);
            Reply::Forward(
                match tokio::time::timeout(server.forward_timeout, commit).await {
                    Ok(Outcome::Committed) => Ok(()),
                    Ok(Outcome::NotLeader(leader)) => Err(ForwardError::NotLeader(leader)),
                    Ok(Outcome::Failed { .. }) => {
                        Err(ForwardError::Failed("the proposal failed".into()))
                    }
                    Err(_) => Err(ForwardError::Failed(
                        "not committed within the request timeout".into(),
                    )),
                },
            )
        }
        Call::ChangeMembership(change) => Reply::ChangeMembership(
            membership::change_on_leader(raft, &server.peers, server.identity.node_id, change)
                .await,
        ),
        Call::Digests { from } => server.answers.digests(from),
        Call::Compare { from } => server.answers.compare(from),
        Call::TakeOver { term } => {
            let taking = server
                .elections
                .take_over(&raft.metrics().borrow(), from, term);
            Reply::TakeOver(match taking {
                Ok(()) => {
                    tracing::info!(from, term, "taking over from the stopping leader");
                    raft.trigger()
                        .elect()
                        .await
                        .map_err(|error| format!("cannot campaign: {error}"))
                }
                Err(why) => Err(why),
            })
        }
        Call::Standing => Reply::Standing(server.elections.standing(&raft.metrics().borrow())),
        Call::Snapshot { at_least } => Reply::Snapshot(snapshot(server, at_least).await),
        Call::ReadIndex => {
            Reply::ReadIndex(read_index::read_index_on_leader(raft, server.identity.node_id).await)
        }
        Call::Hello => {
            let metrics = raft.metrics().borrow().clone();
            let members: BTreeMap<_, _> = metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, member)| (*id, member.incarnation))
                .collect();
            // A member whose Raft has stopped cannot say whether it is in a cluster: it must not
            // be taken for one that is not (a cluster would be formed beside its own).
            match raft.is_initialized().await {
                Ok(initialized) => Reply::Hello {
                    node_id: server.identity.node_id,
                    incarnation: server.identity.incarnation,
                    initialized,
                    members,
                },
                Err(error) => Reply::Rejected(format!("cannot answer: {error}")),
            }
        }
    }
}

/// What this replica offers a fenced peer to heal from (`crate::node::heal`): the snapshot it
/// keeps, if it covers entry `at_least`; otherwise one is built, for the next ask, if this
/// replica applied that far.
async fn snapshot(server: &Server, at_least: u64) -> Offered {
    let answers = Arc::clone(&server.answers);
    // The reply's frame holds the snapshot and a few bytes more.
    let limit = server.peers.max_frame().saturating_sub(64);
    let offered = tokio::task::spawn_blocking(move || answers.snapshot(at_least, limit))
        .await
        .unwrap_or_else(|e| Offered::Refused(e.to_string()));
    if offered == Offered::Building {
        let _ = server.raft.trigger().snapshot().await;
    }
    offered
}
