//! Proposing: gets this node's client requests into the log. Requests that arrive while earlier
//! proposals are in flight are batched into one entry, so that under load one append (one fsync,
//! one round of replication) orders many of them; at low load a batch is a single request and
//! waits for nothing. The leader proposes its batches itself; a follower forwards them to it.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    identity::Identity,
    in_flight::InFlight,
    leader_changed,
    log_store::LogStore,
    peer::{
        Peers,
        wire::{Call, ForwardError, Reply},
    },
    typ::{Batch, Command, Metrics, NodeId, Raft},
};

/// Batches in flight at once from one node.
const IN_FLIGHT: usize = 4;
/// Requests in one batch at most.
const MAX_BATCH: usize = 256;
/// Payload bytes in one batch at most (a single larger request still goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// A leader that has heard from no quorum for this long is probably cut off: it takes no more
/// proposals, which could not commit.
pub const QUORUM_SILENCE_MS: u64 = 1500;

/// Whether this node leads but has heard from no quorum for [`QUORUM_SILENCE_MS`] (openraft
/// reports the silence on a leader only).
pub fn cut_off(metrics: &Metrics) -> bool {
    metrics
        .millis_since_quorum_ack
        .is_some_and(|ms| ms > QUORUM_SILENCE_MS)
}

/// What became of a proposal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The leader committed it: the local apply will answer.
    Committed,
    /// No leader known, or the node asked is not the leader (it may name the one that is).
    NotLeader(Option<NodeId>),
    /// The leader could not be reached or failed; it may have received the proposal.
    Failed { maybe_sent: bool },
}

struct Pending {
    command: Command,
    outcome: oneshot::Sender<Outcome>,
}

/// Batches proposals and routes them to the leader.
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// `identity` makes batch ids unique across restarts and incarnations; `in_flight` gives
    /// each batch its floor.
    pub fn start(
        raft: Raft,
        log: LogStore,
        peers: Peers,
        identity: Identity,
        in_flight: Arc<InFlight>,
        timeout: Duration,
    ) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        let route = Arc::new(Route {
            raft,
            log,
            peers,
            identity,
            in_flight,
            sequence: AtomicU64::new(identity.first_id()),
            timeout,
        });
        tokio::spawn(batch(pending, route));
        Self { queue }
    }

    /// Proposes `command` (in a batch) and says what became of it.
    pub async fn propose(&self, command: Command) -> Outcome {
        let (outcome, receive) = oneshot::channel();
        if self.queue.send(Pending { command, outcome }).is_err() {
            return Outcome::Failed { maybe_sent: false };
        }
        receive
            .await
            .unwrap_or(Outcome::Failed { maybe_sent: false })
    }
}

async fn batch(mut queue: mpsc::UnboundedReceiver<Pending>, route: Arc<Route>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    // A request that did not fit in the previous batch: it opens the next.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // Whatever arrived while waiting for a permit goes along, within the batch's bounds: an
        // entry never grows past one request over MAX_BATCH_BYTES, so it fits in a frame.
        let mut bytes = first.command.payload.len();
        let mut pending = vec![first];
        while pending.len() < MAX_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            if bytes + next.command.payload.len() > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.command.payload.len();
            pending.push(next);
        }
        let route = Arc::clone(&route);
        tokio::spawn(async move {
            let (commands, waiters): (Vec<_>, Vec<_>) =
                pending.into_iter().map(|p| (p.command, p.outcome)).unzip();
            let outcome = route.propose(commands).await;
            drop(permit);
            for waiter in waiters {
                let _ = waiter.send(outcome);
            }
        });
    }
}

struct Route {
    raft: Raft,
    log: LogStore,
    peers: Peers,
    identity: Identity,
    in_flight: Arc<InFlight>,
    sequence: AtomicU64,
    timeout: Duration,
}

impl Route {
    async fn propose(&self, commands: Vec<Command>) -> Outcome {
        let id = (
            self.identity.node_id,
            self.identity.incarnation,
            self.sequence.fetch_add(1, Ordering::Relaxed),
        );
        // Taken after the commands were: every one of them is in flight, so at or above it.
        let floor = self.in_flight.floor();
        let batch = Batch {
            id,
            floor,
            commands,
        };
        let (leader, addr) = super::leader(&self.raft);
        match (leader, addr) {
            (Some(leader), _) if leader == self.identity.node_id => {
                commit(&self.raft, &self.log, batch).await
            }
            (Some(leader), Some(addr)) => {
                let peer = self.peers.get(leader, &addr);
                let call = Call::Forward(batch);
                let forwarded = tokio::select! {
                    forwarded = peer.call(&call, self.timeout) => forwarded,
                    // A leader that lost its place (cut off, say) may never answer: the batch
                    // goes to the next one, and the log drops a second copy.
                    () = leader_changed(&self.raft, leader) => {
                        return Outcome::Failed { maybe_sent: true };
                    }
                };
                match forwarded {
                    Ok(Reply::Forward(Ok(()))) => Outcome::Committed,
                    Ok(Reply::Forward(Err(ForwardError::NotLeader(next)))) => {
                        Outcome::NotLeader(next)
                    }
                    Ok(other) => {
                        tracing::debug!(leader, ?other, "forwarding failed");
                        Outcome::Failed { maybe_sent: true }
                    }
                    Err(error) => {
                        tracing::debug!(leader, %error, "forwarding failed");
                        Outcome::Failed {
                            maybe_sent: error.maybe_sent(),
                        }
                    }
                }
            }
            _ => Outcome::NotLeader(None),
        }
    }
}

/// Proposes `batch` on this node, the leader, and waits until it is committed (not until it is
/// applied here: that waits for the app, and the proposer's own node answers its clients).
/// Once openraft has taken the batch, any failure may still see it committed.
pub async fn commit(raft: &Raft, log: &LogStore, batch: Batch) -> Outcome {
    if cut_off(&raft.metrics().borrow()) {
        return Outcome::NotLeader(None);
    }
    // Withdrawn when dropped: also when the caller stops waiting (a forward's timeout).
    let mut committed = log.watch(batch.id);
    match raft.client_write_ff(batch).await {
        Err(_) => Outcome::Failed { maybe_sent: false },
        Ok(applied) => tokio::select! {
            Ok(()) = &mut committed => Outcome::Committed,
            result = applied => match result {
                Ok(Ok(_)) => Outcome::Committed,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "proposal failed after openraft took it");
                    Outcome::Failed { maybe_sent: true }
                }
                Err(_) => Outcome::Failed { maybe_sent: true },
            },
        },
    }
}
