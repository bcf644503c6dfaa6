//! Proposing: gets this node's client requests into the log. Requests that arrive while earlier
//! batches are in flight are gathered into one batch ([`Proposer`]); a follower forwards its
//! batches to the leader. The leader gathers the batches that arrive while its entry is in
//! flight, its own and those forwarded, into the next entry ([`Merger`]), so that under load one
//! append (one fsync, one round of replication) orders the requests of every node; at low load
//! an entry is a single request and waits for nothing.
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{
    elect::Elector,
    gather::{Bounds, Gatherer, Item},
    identity::Identity,
    in_flight::InFlight,
    leader_changed,
    log_store::LogStore,
    peer::{
        Peers,
        client::{Calls, Direction},
        wire::{Call, ForwardError, Reply},
    },
    typ::{Batch, Command, Metrics, NodeId, Proposal, Raft},
};

/// Batches in flight at once from one node. Two: a node's next batch is made while its last
/// one is ordered.
const BATCHES_IN_FLIGHT: u32 = 2;
/// Permits for the leader's entries in flight. An entry takes both: it is in flight alone, so
/// that whatever arrives meanwhile goes into the next, and under load one fsync and one round of
/// replication serve as many requests as can share them (measured on 2 cores, three nodes, 48
/// clients: one entry and two batches in flight order ~10 requests per entry against ~3.7 with
/// four and four, at the same or higher throughput, with fewer forwards and fsyncs). An entry
/// opened by a batch of [`LARGE`] bytes or more is full enough already and takes one, so that
/// two such are in flight at once and large requests still stream.
const ENTRIES_IN_FLIGHT: u32 = 2;
/// A batch this large opens an entry that needs no company (see [`ENTRIES_IN_FLIGHT`]).
const LARGE: usize = MAX_BATCH_BYTES / 4;
/// Requests in one batch at most.
const MAX_BATCH: usize = 256;
/// Bytes in one batch, and in one entry, at most (a single larger request, or batch, still goes
/// alone), counting [`COMMAND_OVERHEAD`] per request besides its payload.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// What a request costs in an entry besides its payload (its ids and lengths, its batch's),
/// rounded up: an entry of many small requests must fit in a frame as well as one large one.
const COMMAND_OVERHEAD: usize = 64;
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

impl Item for Command {
    fn bytes(&self) -> usize {
        self.payload.len() + COMMAND_OVERHEAD
    }
}

impl Item for Batch {
    fn bytes(&self) -> usize {
        self.commands.iter().map(Item::bytes).sum()
    }
}

/// Batches proposals and routes them to the leader.
pub struct Proposer {
    requests: Gatherer<Command, Outcome>,
}

impl Proposer {
    /// `identity` makes batch ids unique across restarts and incarnations; `in_flight` gives
    /// each batch its floor; `merger` proposes them while this node leads.
    pub fn start(
        raft: Raft,
        merger: Merger,
        peers: Peers,
        elector: Arc<Elector>,
        identity: Identity,
        in_flight: Arc<InFlight>,
        timeout: Duration,
    ) -> Self {
        let route = Arc::new(Route {
            raft,
            merger,
            peers,
            elector,
            identity,
            in_flight,
            sequence: AtomicU64::new(identity.first_id()),
            timeout,
        });
        let bounds = Bounds {
            permits: BATCHES_IN_FLIGHT,
            takes: |_| 1,
            items: MAX_BATCH,
            bytes: MAX_BATCH_BYTES,
        };
        let requests = Gatherer::start(bounds, move |commands| {
            let route = Arc::clone(&route);
            async move { route.propose(commands).await }
        });
        Self { requests }
    }

    /// Proposes `command` (in a batch) and says what became of it.
    pub async fn propose(&self, command: Command) -> Outcome {
        let outcome = self.requests.submit(command).await;
        outcome.unwrap_or(Outcome::Failed { maybe_sent: false })
    }
}

struct Route {
    raft: Raft,
    merger: Merger,
    peers: Peers,
    /// Which leader this node still hears.
    elector: Arc<Elector>,
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
        let (leader, addr) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let leader = self.elector.leader(&metrics);
            (leader, leader.and_then(|id| super::address(&metrics, id)))
        };
        match (leader, addr) {
            (Some(leader), _) if leader == self.identity.node_id => self.merger.commit(batch).await,
            (Some(leader), Some(addr)) => {
                let peer = self.peers.get(leader, &addr);
                let call = Call::Forward(batch);
                Calls::count(&self.peers.calls().forwards, Direction::Sent);
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

/// Proposes batches on the leader, its own and those its followers forwarded: the batches that
/// arrive while an entry is in flight go into the next entry together (see
/// [`ENTRIES_IN_FLIGHT`]).
#[derive(Clone)]
pub struct Merger {
    batches: Gatherer<Batch, Outcome>,
    /// Set when this node hands its leadership over: it proposes nothing more.
    closed: Arc<AtomicBool>,
}

impl Merger {
    pub fn start(raft: Raft, log: LogStore) -> Self {
        Self::with(move |proposal| {
            let (raft, log) = (raft.clone(), log.clone());
            async move { commit(&raft, &log, proposal).await }
        })
    }

    /// A merger whose entries are committed by `commit`.
    fn with<F, C>(commit: C) -> Self
    where
        C: Fn(Proposal) -> F + Send + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let bounds = Bounds {
            permits: ENTRIES_IN_FLIGHT,
            // An entry opened by a small batch is in flight alone; a large one leaves room for
            // another large one.
            takes: |bytes| if bytes >= LARGE { 1 } else { ENTRIES_IN_FLIGHT },
            items: usize::MAX,
            bytes: MAX_BATCH_BYTES,
        };
        let closed = Arc::new(AtomicBool::new(false));
        let shut = Arc::clone(&closed);
        let batches = Gatherer::start(bounds, move |batches| {
            // Batches gathered before the merger closed are not proposed after: openraft never
            // saw them, so they go to the next leader.
            let proposed = (!shut.load(Ordering::Relaxed)).then(|| commit(Proposal { batches }));
            async move {
                match proposed {
                    Some(proposed) => proposed.await,
                    None => Outcome::NotLeader(None),
                }
            }
        });
        Self { batches, closed }
    }

    /// Proposes nothing more: batches are sent on (to the next leader) as if this node did not
    /// lead. Its leadership is being handed over.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Proposes again: the handover did not happen.
    pub fn reopen(&self) {
        self.closed.store(false, Ordering::Relaxed);
    }

    /// Proposes `batch` (in an entry with others) and says what became of it: once closed,
    /// [`Outcome::NotLeader`] (the gatherer checks it as each entry goes out).
    pub async fn commit(&self, batch: Batch) -> Outcome {
        let outcome = self.batches.submit(batch).await;
        outcome.unwrap_or(Outcome::Failed { maybe_sent: false })
    }
}

/// Proposes `proposal` on this node, the leader, and waits until it is committed (not until it
/// is applied here: that waits for the app, and the proposer's own node answers its clients).
/// Once openraft has taken the proposal, any failure may still see it committed.
async fn commit(raft: &Raft, log: &LogStore, proposal: Proposal) -> Outcome {
    if cut_off(&raft.metrics().borrow()) {
        return Outcome::NotLeader(None);
    }
    let Some(id) = proposal.id() else {
        return Outcome::Committed;
    };
    // Withdrawn when dropped.
    let mut committed = log.watch(id);
    match raft.client_write_ff(proposal).await {
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use bytes::Bytes;
    use tokio::sync::{Semaphore, oneshot};

    use super::*;

    /// An upper bound for what must happen, never a window for what must not.
    const LONG: Duration = Duration::from_secs(60);

    /// A batch of node `origin` holding one request of `bytes` bytes.
    fn batch(origin: NodeId, sequence: u64, bytes: usize) -> Batch {
        Batch {
            id: (origin, 1, sequence),
            floor: sequence,
            commands: vec![Command {
                origin,
                incarnation: 1,
                id: sequence,
                payload: Bytes::from(vec![b'x'; bytes]),
            }],
        }
    }

    /// A merger whose entries are committed when the test lets them go, one permit each, and
    /// which records each entry with how many were committed when it was proposed.
    struct Scripted {
        merger: Merger,
        proposed: Arc<Mutex<Vec<(Proposal, usize)>>>,
        commits: Arc<Semaphore>,
    }

    impl Scripted {
        fn new() -> Self {
            let proposed = Arc::new(Mutex::new(Vec::new()));
            let commits = Arc::new(Semaphore::new(0));
            let committed = Arc::new(AtomicUsize::new(0));
            let merger = {
                let (proposed, commits) = (Arc::clone(&proposed), Arc::clone(&commits));
                Merger::with(move |proposal| {
                    let done = committed.load(Ordering::SeqCst);
                    proposed.lock().unwrap().push((proposal, done));
                    let (commits, committed) = (Arc::clone(&commits), Arc::clone(&committed));
                    async move {
                        commits.acquire().await.unwrap().forget();
                        committed.fetch_add(1, Ordering::SeqCst);
                        Outcome::Committed
                    }
                })
            };
            Self {
                merger,
                proposed,
                commits,
            }
        }

        /// Queues `batch` as a proposer would, without waiting.
        fn queue(&self, batch: Batch) -> oneshot::Receiver<Outcome> {
            self.merger.batches.queue(batch)
        }

        /// Waits until `n` entries were proposed.
        async fn proposed(&self, n: usize) {
            let until = tokio::time::Instant::now() + LONG;
            while self.proposed.lock().unwrap().len() < n {
                assert!(
                    tokio::time::Instant::now() < until,
                    "{n} entries never proposed"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        /// Each entry's batches (origin, sequence), and how many entries were committed when it
        /// was proposed.
        fn entries(&self) -> Vec<(Vec<(NodeId, u64)>, usize)> {
            let proposed = self.proposed.lock().unwrap();
            let shape = |p: &Proposal| p.batches.iter().map(|b| (b.id.0, b.id.2)).collect();
            proposed.iter().map(|(p, done)| (shape(p), *done)).collect()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_arriving_while_an_entry_is_in_flight_share_the_next_entry() {
        let scripted = Scripted::new();
        // The leader's (node 1) first batch goes alone: nothing is in flight.
        let first = scripted.queue(batch(1, 1, 10));
        scripted.proposed(1).await;
        // While it is in flight: two followers' forwarded batches, the leader's next one, a
        // forward whose sender stopped waiting, and a batch too large to share the entry.
        let forwarded = [
            scripted.queue(batch(2, 1, 10)),
            scripted.queue(batch(3, 1, 10)),
        ];
        let own = scripted.queue(batch(1, 2, 10));
        drop(scripted.queue(batch(2, 2, 10)));
        let large = scripted.queue(batch(3, 2, MAX_BATCH_BYTES));
        scripted.commits.add_permits(3);
        assert_eq!(first.await.unwrap(), Outcome::Committed);
        for outcome in forwarded.into_iter().chain([own, large]) {
            assert_eq!(outcome.await.unwrap(), Outcome::Committed);
        }
        assert_eq!(
            scripted.entries(),
            [
                (vec![(1, 1)], 0),
                (vec![(2, 1), (3, 1), (1, 2)], 1),
                (vec![(3, 2)], 2)
            ],
            "forwarded batches share an entry with the leader's own, one entry in flight at a \
             time; one nobody waits for is not proposed; an entry stays within \
             {MAX_BATCH_BYTES} bytes but for a lone batch"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn large_entries_stream_two_at_a_time_and_a_small_one_waits_for_both() {
        let scripted = Scripted::new();
        // Each over half an entry: they cannot share one.
        let large = [
            scripted.queue(batch(1, 1, 2 * LARGE)),
            scripted.queue(batch(2, 1, 2 * LARGE)),
        ];
        scripted.proposed(2).await;
        let small = scripted.queue(batch(3, 1, 10));
        scripted.commits.add_permits(3);
        for outcome in large.into_iter().chain([small]) {
            assert_eq!(outcome.await.unwrap(), Outcome::Committed);
        }
        assert_eq!(
            scripted.entries(),
            [(vec![(1, 1)], 0), (vec![(2, 1)], 0), (vec![(3, 1)], 2)],
            "both large entries in flight at once, the small one only after both"
        );
    }
}
