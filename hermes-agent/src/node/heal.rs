//! A replica that heals itself. Once fenced (its answers diverged from the majority's), a
//! replica with snapshot hooks restores the app's state from a healthy replica's snapshot
//! through the restore hook, applies the log on from there, and is ready again, without an
//! operator. Without hooks, or in raw TCP mode, it stays fenced and says what to do.
//!
//! The snapshot must cover the entry the fenced replica stopped in, so that nothing between is
//! missed: this node asks the other voters for one that does ([`Call::Snapshot`]). A healthy
//! replica (neither fenced nor diverged) offers the snapshot it keeps once every answer it
//! covers was compared with the others', or builds one for the next ask. The state machine
//! installs it when a request waits in an entry it covers, passes over what it covers, and
//! lifts the fence ([`crate::deliver::state_machine`]). A replica fenced with nothing to
//! deliver heals when the next request comes.
use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::{
    sync::watch,
    time::{sleep, timeout},
};

use super::Node;
use crate::{
    deliver::state_machine::{self, Healing},
    order::{
        self,
        log_store::decode,
        peer::wire::{Call, Offered, Reply},
        typ::{NodeId, SnapshotMeta},
    },
};

/// How long a peer may take to send its snapshot (it may be large).
const ASK: Duration = Duration::from_secs(30);
/// Between rounds of asking, at first; it doubles up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(500);
const LONGEST_WAIT: Duration = Duration::from_secs(10);
/// How long a snapshot handed to the state machine may take to be installed (the restore hook
/// runs meanwhile; a replica with nothing to deliver takes it only once requests come).
const INSTALL_WITHIN: Duration = Duration::from_secs(30);

/// Heals the replica of `node` whenever it is fenced, for as long as the node lives.
pub(crate) async fn heal(node: Weak<Node>) {
    let Some(mut fenced) = node.upgrade().map(|node| node.applied.fenced_subscribe()) else {
        return;
    };
    loop {
        if fenced.wait_for(|fenced| *fenced).await.is_err() {
            return;
        }
        let Some(node) = node.upgrade() else {
            return;
        };
        if let Some(why) = node.cannot_heal() {
            tracing::error!(
                why,
                "this replica is fenced and cannot heal itself: make its app agree with the \
                 others' and run `hermes-agent ctl resume`, or replace it (docs/operations.md, \
                 \"A replica fenced\")"
            );
        } else {
            node.heal_now(&mut fenced).await;
        }
        drop(node);
        if fenced.wait_for(|fenced| !*fenced).await.is_err() {
            return;
        }
    }
}

impl Node {
    /// Asks the others for a snapshot and hands it to the state machine until the fence lifts.
    async fn heal_now(&self, fenced: &mut watch::Receiver<bool>) {
        let heals = self.applied.heals();
        let mut wait = FIRST_WAIT;
        let mut rounds = 0;
        while self.applied.fenced() && self.raft.metrics().borrow().running_state.is_ok() {
            match self.snapshot_to_heal_from().await {
                Ok(snapshot) => {
                    let entry = snapshot.0.last_log_id.map_or(0, |id| id.index);
                    tracing::info!(entry, "healing from a healthy replica's snapshot");
                    self.applied.heal(snapshot);
                    let lifted = fenced.wait_for(|fenced| !*fenced);
                    if timeout(INSTALL_WITHIN, lifted).await.is_ok() {
                        break;
                    }
                }
                Err(why) => {
                    rounds += 1;
                    if rounds % 10 == 0 {
                        tracing::warn!(why, rounds, "still no snapshot to heal from");
                    } else {
                        tracing::info!(why, "no snapshot to heal from yet");
                    }
                }
            }
            sleep(wait).await;
            wait = (wait * 2).min(LONGEST_WAIT);
        }
        if self.applied.heals() > heals {
            self.divergence.healed();
        }
    }

    /// Why this replica cannot heal itself, if it cannot.
    fn cannot_heal(&self) -> Option<&'static str> {
        if !self.hooks {
            Some(
                "without snapshot hooks (--snapshot-cmd, --restore-cmd) the app's state cannot \
                 be restored from another replica's",
            )
        } else if self.tcp {
            Some("in raw TCP mode a replica does not heal itself yet")
        } else {
            None
        }
    }

    /// A snapshot of another voter's that covers the entry in which this replica stopped (the
    /// next one, while it has no request waiting). One voter builds one if none has it.
    async fn snapshot_to_heal_from(&self) -> Result<Healing, String> {
        let at_least = self
            .applied
            .waiting_in()
            .unwrap_or(self.applied.applied_index() + 1);
        let mut refusals = Vec::new();
        for (id, addr) in self.others_leader_first() {
            let call = Call::Snapshot { at_least };
            match self.peers.get(id, &addr).call(&call, ASK).await {
                Ok(Reply::Snapshot(Offered::Snapshot(file))) => match usable(&file, at_least) {
                    Ok(snapshot) => return Ok(snapshot),
                    Err(why) => refusals.push(format!("node {id}'s snapshot {why}")),
                },
                Ok(Reply::Snapshot(Offered::Building)) => {
                    refusals.push(format!("node {id} builds one"));
                    break;
                }
                Ok(Reply::Snapshot(Offered::Refused(why))) => {
                    refusals.push(format!("node {id}: {why}"));
                }
                Ok(_) => refusals.push(format!("node {id} does not offer snapshots")),
                Err(error) => refusals.push(format!("node {id}: {error}")),
            }
        }
        Err(refusals.join("; "))
    }

    /// The other voters and their addresses, the leader first.
    fn others_leader_first(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let mut others: Vec<(NodeId, String)> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.id)
            .filter_map(|id| Some((id, order::address(&metrics, id)?)))
            .collect();
        others.sort_by_key(|(id, _)| Some(*id) != metrics.current_leader);
        others
    }
}

/// The snapshot in a peer's `file`, if it can be healed from at entry `at_least`; otherwise
/// what is wrong with it.
fn usable(file: &[u8], at_least: u64) -> Result<Healing, String> {
    let (meta, bytes): (SnapshotMeta, Vec<u8>) =
        decode(file).map_err(|e| format!("cannot be read: {e}"))?;
    let contents = state_machine::contents(&bytes).map_err(|e| format!("cannot be read: {e}"))?;
    if contents.app.is_none() {
        return Err("holds no app state".into());
    }
    if meta.last_log_id.is_none_or(|last| last.index < at_least) {
        return Err(format!("does not reach entry {at_least}"));
    }
    Ok(Arc::new((meta, bytes)))
}
