//! Divergence detection: the one failure active replication cannot survive silently is replicas
//! that stop being identical (an app that is not deterministic, a replica that missed a
//! request). Every replica keeps a digest of each answer (its status and, unless
//! `--digest status`, its body); in raw TCP mode, of everything the app sent on a connection,
//! from its open until the app closed it, kept under the sequence number of the event that
//! closed the connection. Every second each node compares its digests, one by one, with those
//! of the other voters.
//!
//! An answer that differs is reported: the first such in `/status`, every one in the
//! metrics and the log (at error level, with the digests). With `--on-divergence fence`, a node
//! whose answer a majority of the voters did not give stops applying and reports not ready,
//! until an operator resumes it (`hermes-agent ctl resume`) or rebuilds it.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

use super::{
    peer::{
        Peers,
        wire::{Call, Reply},
    },
    state_machine::Applied,
    typ::{NodeId, Raft},
};
use crate::{deliver::Outcome, telemetry::Telemetry};

/// How often digests are compared.
const EVERY: Duration = Duration::from_secs(1);
/// Digests asked of a peer at once.
pub const BATCH: usize = 1024;
/// Recent digests kept for comparison between replicas.
const KEPT: usize = 4096;

/// What replicas compare of each answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Digest {
    /// HTTP: the status and the body of every answer. Raw TCP: every byte the app sent on a
    /// connection.
    StatusAndBody,
    /// HTTP: the status only (for apps whose bodies legitimately differ, such as those with a
    /// time in them).
    Status,
    /// Nothing: no divergence is looked for.
    Off,
}

/// The digests of this replica's answers, kept for comparison, by sequence number.
#[derive(Debug)]
pub struct Digests {
    what: Digest,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    digests: VecDeque<(u64, u64)>,
    /// Every request up to this one was handled.
    handled: u64,
    /// Digests that will come (raw TCP mode: connections closed here whose app has not closed
    /// them yet).
    coming: BTreeSet<u64>,
}

/// What a replica has of its digests from some sequence number on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The first sequence number whose digest is still kept (older ones were forgotten).
    pub oldest: u64,
    /// Every digest up to this sequence number is here, or will never be: a missing one is not
    /// coming.
    pub settled: u64,
    /// `(sequence number, digest)`, in order.
    pub digests: Vec<(u64, u64)>,
}

impl Default for Digests {
    fn default() -> Self {
        Self::new(Digest::StatusAndBody)
    }
}

impl Digests {
    pub fn new(what: Digest) -> Self {
        Self {
            what,
            kept: Mutex::default(),
        }
    }

    /// What the digests cover.
    pub fn what(&self) -> Digest {
        self.what
    }

    /// Request `seq` was handled, and this is what became of it: its digest is kept, if it has
    /// one to compare.
    pub fn answer(&self, seq: u64, outcome: &Outcome) {
        if let Some(digest) = outcome.digest(self.what) {
            self.record(seq, digest);
        }
        self.handled(seq);
    }

    /// Every request up to `seq` was handled (or stands for the app's state: a snapshot's).
    pub fn handled(&self, seq: u64) {
        let mut kept = self.kept.lock().unwrap();
        kept.handled = kept.handled.max(seq);
    }

    /// The digest of `seq` will come later, by [`Self::record`] or [`Self::forgo`].
    pub fn expect(&self, seq: u64) {
        self.kept.lock().unwrap().coming.insert(seq);
    }

    /// The digest of `seq` that was expected will not come.
    pub fn forgo(&self, seq: u64) {
        self.kept.lock().unwrap().coming.remove(&seq);
    }

    /// Keeps `digest` under `seq`, in order (it may come after later ones), forgetting the
    /// oldest beyond [`KEPT`].
    pub fn record(&self, seq: u64, digest: u64) {
        let mut kept = self.kept.lock().unwrap();
        kept.coming.remove(&seq);
        let digests = &mut kept.digests;
        if digests.len() == KEPT {
            if digests.front().is_some_and(|(oldest, _)| seq < *oldest) {
                return;
            }
            digests.pop_front();
        }
        let at = digests.partition_point(|(kept, _)| *kept < seq);
        digests.insert(at, (seq, digest));
    }

    /// At most `limit` digests from `from` on.
    pub fn report(&self, from: u64, limit: usize) -> Report {
        let kept = self.kept.lock().unwrap();
        let oldest = kept
            .digests
            .front()
            .map_or(kept.handled + 1, |(seq, _)| *seq);
        let settled = kept.coming.first().map_or(kept.handled, |seq| seq - 1);
        let from = kept.digests.partition_point(|(seq, _)| *seq < from);
        Report {
            oldest,
            settled,
            digests: kept.digests.range(from..).take(limit).copied().collect(),
        }
    }
}

/// What to do about a divergence found on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnDivergence {
    /// Report it, carry on.
    Warn,
    /// Report it, and stop applying if this node's answer is not the majority's.
    Fence,
}

/// The first divergence found.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The request (its position in the total order, `Hermes-Log-Index`); in raw TCP mode, the
    /// event that closed the connection on which the app's bytes differ.
    pub seq: u64,
    /// This node's digest, and each other voter's that had one.
    pub digests: BTreeMap<NodeId, String>,
    /// This node's answer was not the majority's: it is the one that diverged.
    pub minority: bool,
}

/// What is known of divergences on this node.
#[derive(Debug, Default)]
pub struct Divergence {
    first: Mutex<Option<Found>>,
    /// Requests up to this one have been compared.
    checked: AtomicU64,
}

impl Divergence {
    pub fn first(&self) -> Option<Found> {
        self.first.lock().unwrap().clone()
    }

    /// Requests up to this one have been compared with the other voters.
    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }
}

/// Compares digests with the other voters for as long as the runtime runs.
pub async fn watch(
    me: NodeId,
    raft: Raft,
    peers: Peers,
    applied: Arc<Applied>,
    divergence: Arc<Divergence>,
    telemetry: Arc<Telemetry>,
    policy: OnDivergence,
) {
    // Requests up to this one are compared.
    let mut checked = 0;
    loop {
        tokio::time::sleep(EVERY).await;
        let report = applied.digests().report(checked + 1, BATCH);
        // Not beyond what is settled here: a digest still to come must not be passed over.
        let mine: Vec<(u64, u64)> = report
            .digests
            .into_iter()
            .take_while(|(seq, _)| *seq <= report.settled)
            .collect();
        let Some(&(first, _)) = mine.first() else {
            continue;
        };
        let voters: Vec<(NodeId, String)> = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter(|id| *id != me)
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect()
        };
        if voters.is_empty() {
            checked = mine.last().map_or(checked, |(seq, _)| *seq);
            divergence.checked.store(checked, Ordering::Relaxed);
            continue;
        }
        // What each peer that answered has: (its settled point, its digests).
        let mut reports: BTreeMap<NodeId, (u64, BTreeMap<u64, u64>)> = BTreeMap::new();
        for (id, addr) in &voters {
            let call = Call::Digests { from: first };
            if let Ok(Reply::Digests {
                settled, digests, ..
            }) = peers.get(*id, addr).call(&call, EVERY).await
            {
                let digests = digests.into_iter().take(BATCH).collect();
                reports.insert(*id, (settled, digests));
            }
        }
        let all = voters.len() + 1;
        for (seq, digest) in mine {
            // Peers that can still say what they answered: not those that forgot it (they
            // keep recent digests only), and not those that have none (a duplicate, the
            // request in flight when their agent stopped, a TCP connection they lost).
            let mut behind = false;
            let mut others = BTreeMap::new();
            for (id, (settled, digests)) in &reports {
                match digests.get(&seq) {
                    Some(theirs) => {
                        others.insert(*id, *theirs);
                    }
                    // Not there yet, or beyond what it sent (it sends a batch at most).
                    None if seq > *settled
                        || (digests.len() >= BATCH
                            && digests
                                .last_key_value()
                                .is_some_and(|(last, _)| *last < seq)) =>
                    {
                        behind = true;
                    }
                    None => {}
                }
            }
            if behind || (others.is_empty() && reports.len() < voters.len()) {
                // Wait for the peers to get there (or to answer at all).
                break;
            }
            checked = seq;
            divergence.checked.store(checked, Ordering::Relaxed);
            if others.values().all(|theirs| *theirs == digest) {
                continue;
            }
            let agree = 1 + others.values().filter(|theirs| **theirs == digest).count();
            // A majority of all voters answered otherwise: this node is the odd one.
            let minority = others.len() + 1 > all / 2 && agree <= all / 2;
            telemetry.diverged();
            let mut digests: BTreeMap<NodeId, String> = others
                .iter()
                .map(|(id, d)| (*id, format!("{d:016x}")))
                .collect();
            digests.insert(me, format!("{digest:016x}"));
            tracing::error!(
                seq,
                ?digests,
                minority,
                "replicas diverged: their apps answered differently (the request at this \
                 position, or in raw TCP mode the connection closed by this event)"
            );
            let mut first = divergence.first.lock().unwrap();
            if first.is_none() {
                *first = Some(Found {
                    seq,
                    digests,
                    minority,
                });
            }
            if minority && policy == OnDivergence::Fence && !applied.fenced() {
                tracing::error!(
                    seq,
                    "fenced: this replica stops applying and reports not ready until an \
                     operator resumes it (`hermes-agent ctl resume`) or rebuilds it"
                );
                applied.fence(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Digest, Digests, KEPT, Report};

    #[test]
    fn digests_are_kept_in_order_of_sequence_number_whenever_they_come_and_the_oldest_go() {
        let digests = Digests::new(Digest::StatusAndBody);
        for seq in [5, 2, 9, 7] {
            digests.record(seq, seq * 10);
        }
        digests.handled(9);
        assert_eq!(
            digests.report(3, 2),
            Report {
                oldest: 2,
                settled: 9,
                digests: vec![(5, 50), (7, 70)]
            }
        );
        for seq in 10..10 + KEPT as u64 {
            digests.record(seq, 0);
        }
        let report = digests.report(0, usize::MAX);
        assert_eq!((report.oldest, report.digests.len()), (10, KEPT));
        // One older than all kept comes too late: it is not kept.
        digests.record(9, 90);
        assert_eq!(digests.report(0, 1).digests, [(10, 0)]);
    }

    #[test]
    fn what_is_settled_stops_below_a_digest_still_to_come() {
        let digests = Digests::default();
        assert_eq!(digests.report(1, 10).oldest, 1);
        digests.handled(3);
        digests.expect(4);
        digests.handled(4);
        digests.expect(6);
        digests.handled(8);
        assert_eq!(digests.report(1, 10).settled, 3);
        digests.record(4, 44);
        assert_eq!(digests.report(1, 10).settled, 5);
        digests.forgo(6);
        assert_eq!(
            digests.report(1, 10),
            Report {
                oldest: 4,
                settled: 8,
                digests: vec![(4, 44)]
            }
        );
    }
}
