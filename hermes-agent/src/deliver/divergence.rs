//! Divergence detection: the one failure active replication cannot survive silently is replicas
//! that stop being identical (an app that is not deterministic, a replica that missed a
//! request). Every replica keeps a digest of each answer ([`super::digests`]); every second
//! each node compares its digests, one by one, with those of the other voters.
//!
//! An answer that differs is reported: the first such in `/status`, every one in the
//! metrics and the log (at error level, with the digests). With `--on-divergence fence`, a node
//! whose answer a majority of the voters did not give stops applying and reports not ready,
//! until it heals from a healthy replica's snapshot (with snapshot hooks, see
//! `crate::node::heal`), an operator resumes it (`hermes-agent ctl resume`), or it is rebuilt.
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;

use super::state_machine::Applied;
use crate::{
    order::{
        peer::{
            Peers,
            server::Answers,
            wire::{Call, Digest, Offered, Reply},
        },
        typ::{NodeId, Raft},
    },
    telemetry::Telemetry,
};

/// How often digests are compared.
const EVERY: Duration = Duration::from_secs(1);
/// Digests asked of a peer at once.
pub const BATCH: usize = 1024;

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

    /// This replica healed from a healthy one's snapshot: what was found no longer holds (the
    /// metrics still count it).
    pub fn healed(&self) {
        *self.first.lock().unwrap() = None;
    }

    /// Requests up to this one have been compared with the other voters.
    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Relaxed)
    }
}

/// What one peer said it has.
struct Report {
    /// What its digests cover (`None`: a peer of the previous version did not say).
    what: Option<Digest>,
    /// It is fenced: it applies nothing, so its digests will not come.
    fenced: bool,
    /// Every digest up to this request is there, or will never be.
    settled: u64,
    digests: BTreeMap<u64, u64>,
}

/// What peer `id` has of its digests from `from` on; `None` if it did not say.
async fn ask(peers: &Peers, id: NodeId, addr: &str, from: u64) -> Option<Report> {
    let peer = peers.get(id, addr);
    let report = match peer.call(&Call::Compare { from }, EVERY).await.ok()? {
        Reply::Compare {
            what,
            fenced,
            settled,
            digests,
        } => Report {
            what: Some(what),
            fenced,
            settled,
            digests: digests.into_iter().take(BATCH).collect(),
        },
        // A peer of the previous version, which cannot decode `Compare`: its digests are
        // settled up to its last one.
        Reply::Rejected(why) if why.starts_with("cannot decode the call") => {
            match peer.call(&Call::Digests { from }, EVERY).await.ok()? {
                Reply::Digests { oldest, digests } => {
                    let digests: BTreeMap<u64, u64> = digests.into_iter().take(BATCH).collect();
                    let settled = digests
                        .last_key_value()
                        .map_or(oldest.saturating_sub(1), |(seq, _)| *seq);
                    Report {
                        what: None,
                        fenced: false,
                        settled,
                        digests,
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(report)
}

/// The digests of request `seq` of the peers that can say what they answered, or `None` if one
/// of them may still get one (it has not settled `seq` yet, or its report stopped short of
/// it). A peer without one is passed over: it forgot it (digests of recent requests only are
/// kept), or has none (a duplicate, the request in flight when its agent stopped, a TCP
/// connection it lost). A fenced peer is not waited for (its digests do not come while it is
/// fenced); one whose digests are of another kind than `mine` is passed over (one of the
/// previous version, which does not say, is taken to have its default kind,
/// `status-and-body`).
fn theirs(
    seq: u64,
    reports: &BTreeMap<NodeId, Report>,
    mine: Digest,
) -> Option<BTreeMap<NodeId, u64>> {
    let mut others = BTreeMap::new();
    for (id, report) in reports {
        if report.what.unwrap_or(Digest::StatusAndBody) != mine {
            continue;
        }
        match report.digests.get(&seq) {
            Some(theirs) => {
                others.insert(*id, *theirs);
            }
            None if report.fenced => {}
            None if seq > report.settled
                || (report.digests.len() >= BATCH
                    && report
                        .digests
                        .last_key_value()
                        .is_some_and(|(last, _)| *last < seq)) =>
            {
                return None;
            }
            None => {}
        }
    }
    Some(others)
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
    // Said once each: peers whose digests are of another kind; the request a comparison waits
    // on for a peer that does not answer.
    let mut other_kinds = BTreeMap::new();
    let mut waiting_on = None;
    loop {
        tokio::time::sleep(EVERY).await;
        let generation = applied.digests().generation();
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
        let mut reports = BTreeMap::new();
        for (id, addr) in &voters {
            if let Some(report) = ask(&peers, *id, addr, first).await {
                reports.insert(*id, report);
            }
        }
        let all = voters.len() + 1;
        let what = applied.digests().what();
        for (id, report) in &reports {
            let theirs = report.what.unwrap_or(Digest::StatusAndBody);
            if theirs != what && other_kinds.insert(*id, theirs) != Some(theirs) {
                tracing::warn!(
                    peer = id,
                    ?theirs,
                    mine = ?what,
                    "this peer's --digest differs: its digests are not compared"
                );
            }
        }
        for (seq, digest) in mine {
            if applied.digests().generation() != generation {
                // This replica healed meanwhile: these digests are of a state that is gone.
                break;
            }
            let Some(others) = theirs(seq, &reports, what) else {
                // Wait for the peers to get there.
                break;
            };
            if others.is_empty() && reports.len() < voters.len() {
                // A peer that did not answer may have it: wait for it.
                if waiting_on.replace(seq) != Some(seq) {
                    tracing::warn!(
                        seq,
                        "comparing digests waits for a peer that does not answer: the peers \
                         that did have no digest of this request"
                    );
                }
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
                applied.fence(format!(
                    "this replica's answers diverged from the majority's (first at request \
                     {seq}); see /status"
                ));
            }
        }
    }
}

/// What this replica tells its peers: its digests (the other side of `ask`), and the snapshot it
/// offers a fenced one to heal from.
pub struct Answering {
    pub applied: Arc<Applied>,
    pub divergence: Arc<Divergence>,
}

impl Answers for Answering {
    fn digests(&self, from: u64) -> Reply {
        let report = self.applied.digests().report(from, BATCH);
        Reply::Digests {
            oldest: report.oldest,
            digests: report.digests,
        }
    }

    fn compare(&self, from: u64) -> Reply {
        let digests = self.applied.digests();
        let report = digests.report(from, BATCH);
        Reply::Compare {
            what: digests.what(),
            fenced: self.applied.fenced(),
            settled: report.settled,
            digests: report.digests,
        }
    }

    fn snapshot(&self, at_least: u64, limit: usize) -> Offered {
        if self.applied.fenced() {
            return Offered::Refused("this replica is fenced too".into());
        }
        if self.divergence.first().is_some_and(|found| found.minority) {
            return Offered::Refused("this replica's answers diverged from the majority's".into());
        }
        match self.applied.snapshot_to_offer(at_least, limit) {
            Err(error) => Offered::Refused(format!("its snapshot: {error}")),
            // Only a state whose every answer was found to agree with the others'.
            Ok(Some((_, last, requests)))
                if last >= at_least && requests > self.divergence.checked() =>
            {
                Offered::Refused(format!(
                    "its snapshot covers requests up to {requests}, compared with the other \
                     replicas' up to {} so far",
                    self.divergence.checked()
                ))
            }
            Ok(Some((file, last, _))) if last >= at_least => Offered::Snapshot(file),
            Ok(_) if self.applied.applied_index() >= at_least => Offered::Building,
            Ok(_) => Offered::Refused(format!("it has not applied entry {at_least} yet")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{BATCH, Digest, Report, theirs};

    fn report(settled: u64, digests: &[(u64, u64)]) -> Report {
        Report {
            what: Some(Digest::Bytes),
            fenced: false,
            settled,
            digests: digests.iter().copied().collect(),
        }
    }

    #[test]
    fn a_peer_without_a_digest_is_waited_for_only_until_it_settled_that_far() {
        let bytes = Digest::Bytes;
        let reports = BTreeMap::from([(2, report(7, &[(5, 50)])), (3, report(9, &[(5, 51)]))]);
        assert_eq!(
            theirs(5, &reports, bytes),
            Some(BTreeMap::from([(2, 50), (3, 51)]))
        );
        // Neither has 6, and both settled past it: nothing to compare it with.
        assert_eq!(theirs(6, &reports, bytes), Some(BTreeMap::new()));
        // Node 2 may still get a digest of 8.
        assert_eq!(theirs(8, &reports, bytes), None);
        // A full batch ends before 9: node 3 may have more to say.
        let full: Vec<(u64, u64)> = (1..=BATCH as u64).map(|seq| (seq, 0)).collect();
        let reports = BTreeMap::from([(3, report(2 * BATCH as u64, &full))]);
        assert_eq!(theirs(BATCH as u64 + 1, &reports, bytes), None);
    }

    #[test]
    fn a_fenced_peer_is_not_waited_for_and_one_with_other_digests_is_passed_over() {
        let fenced = Report {
            fenced: true,
            ..report(1, &[(1, 10)])
        };
        let other = Report {
            what: Some(Digest::Status),
            ..report(1, &[(2, 20)])
        };
        let old = Report {
            what: None,
            ..report(9, &[(2, 21)])
        };
        let reports = BTreeMap::from([(2, fenced), (3, other), (4, old)]);
        assert_eq!(
            theirs(1, &reports, Digest::Bytes),
            Some(BTreeMap::from([(2, 10)]))
        );
        assert_eq!(theirs(2, &reports, Digest::Bytes), Some(BTreeMap::new()));
        assert_eq!(
            theirs(2, &reports, Digest::Status),
            Some(BTreeMap::from([(3, 20)]))
        );
        // A peer of the previous version is taken to have the default kind.
        assert_eq!(
            theirs(2, &reports, Digest::StatusAndBody),
            Some(BTreeMap::from([(4, 21)]))
        );
    }
}
