//! Divergence detection: the one failure active replication cannot survive silently is replicas
//! that stop being identical (an app that is not deterministic, a replica that missed a
//! request). Every replica keeps a digest of each answer (its status and, unless
//! `--digest status`, its body); every second each node compares its digests, request by
//! request, with those of the other voters.
//!
//! A request whose answers differ is reported: the first such in `/status`, every one in the
//! metrics and the log (at error level, with the digests). With `--on-divergence fence`, a node
//! whose answer a majority of the voters did not give stops applying and reports not ready,
//! until an operator resumes it (`hermes-agent ctl resume`) or rebuilds it.
use std::{
    collections::BTreeMap,
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
use crate::telemetry::Telemetry;

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
    /// The request (its position in the total order, `Hermes-Log-Index`).
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

/// What one peer said it has.
struct Report {
    /// The first request it still keeps a digest of.
    oldest: u64,
    digests: BTreeMap<u64, u64>,
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
        let (_, mine) = applied.digests(checked + 1, BATCH);
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
            let call = Call::Digests { from: first };
            if let Ok(Reply::Digests { oldest, digests }) =
                peers.get(*id, addr).call(&call, EVERY).await
            {
                let digests = digests.into_iter().take(BATCH).collect();
                reports.insert(*id, Report { oldest, digests });
            }
        }
        let all = voters.len() + 1;
        for (seq, digest) in mine {
            // Peers that can still say what they answered: not those that forgot it (they
            // keep recent digests only), and not those that had none (a duplicate, or the
            // request in flight when their agent stopped).
            let mut behind = false;
            let mut others = BTreeMap::new();
            for (id, report) in &reports {
                match report.digests.get(&seq) {
                    Some(theirs) => {
                        others.insert(*id, *theirs);
                    }
                    None if seq >= report.oldest
                        && report
                            .digests
                            .last_key_value()
                            .is_none_or(|(last, _)| *last < seq) =>
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
                "replicas diverged: their apps answered this request differently"
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
