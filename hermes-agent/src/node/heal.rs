//! A replica that heals itself. Once fenced (its answers diverged from the majority's), a
//! replica with snapshot hooks restores the app's state from a healthy replica's snapshot
//! through the restore hook, applies the log on from there, and is ready again, without an
//! operator. Without hooks, or in raw TCP mode, it stays fenced and says what to do.
//!
//! The snapshot must cover the entry the fenced replica stopped in, so that nothing between is
//! missed: this node asks the other voters for one that does; a healthy replica sends the
//! snapshot it keeps, or builds one for the next ask ([`Call::Snapshot`]). The state machine installs it when it next has a request to deliver,
//! passes over what it covers, and lifts the fence ([`crate::deliver::state_machine`]).
use std::{sync::Arc, time::Duration};

use tokio::time::{sleep, timeout};

use super::Node;
use crate::{
    deliver::state_machine::{self, Healing},
    order::{
        log_store::decode,
        peer::wire::{Call, Reply},
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

impl Node {
    /// Heals this replica whenever it is fenced, for as long as the runtime runs.
    pub(crate) async fn heal(self: Arc<Self>) {
        let mut fenced = self.applied.fenced_subscribe();
        loop {
            if fenced.wait_for(|fenced| *fenced).await.is_err() {
                return;
            }
            if let Some(why) = self.cannot_heal() {
                tracing::error!(
                    why,
                    "this replica is fenced and cannot heal itself: rebuild it (docs/operations.md, \
                     \"A replica fenced\")"
                );
                if fenced.wait_for(|fenced| !*fenced).await.is_err() {
                    return;
                }
                continue;
            }
            let mut wait = FIRST_WAIT;
            while self.applied.fenced() {
                match self.snapshot_to_heal_from().await {
                    Ok(snapshot) => {
                        let entry = snapshot.0.last_log_id.map_or(0, |id| id.index);
                        tracing::info!(entry, "healing from a healthy replica's snapshot");
                        self.applied.heal(snapshot);
                        let lifted = fenced.wait_for(|fenced| !*fenced);
                        if timeout(INSTALL_WITHIN, lifted).await.is_ok() {
                            self.divergence.healed();
                            break;
                        }
                    }
                    Err(why) => tracing::info!(why, "no snapshot to heal from yet"),
                }
                sleep(wait).await;
                wait = (wait * 2).min(LONGEST_WAIT);
            }
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
    /// next one, while it has no request waiting).
    async fn snapshot_to_heal_from(&self) -> Result<Healing, String> {
        let at_least = self
            .applied
            .waiting_in()
            .unwrap_or(self.applied.applied_index() + 1);
        let mut refusals = Vec::new();
        for (id, addr) in self.others_leader_first() {
            let call = Call::Snapshot { at_least };
            let file = match self.peers.get(id, &addr).call(&call, ASK).await {
                Ok(Reply::Snapshot(Ok(file))) => file,
                Ok(Reply::Snapshot(Err(why))) => {
                    refusals.push(format!("node {id}: {why}"));
                    continue;
                }
                Ok(_) => {
                    refusals.push(format!("node {id} does not send snapshots"));
                    continue;
                }
                Err(error) => {
                    refusals.push(format!("node {id}: {error}"));
                    continue;
                }
            };
            let (meta, bytes): (SnapshotMeta, Vec<u8>) =
                decode(&file).map_err(|e| format!("node {id}'s snapshot: {e}"))?;
            let contents = state_machine::contents(&bytes)
                .map_err(|e| format!("node {id}'s snapshot: {e}"))?;
            if contents.app.is_none() {
                return Err(format!("node {id}'s snapshot holds no app state"));
            }
            if meta.last_log_id.is_none_or(|last| last.index < at_least) {
                return Err(format!(
                    "node {id}'s snapshot does not reach entry {at_least}"
                ));
            }
            return Ok(Arc::new((meta, bytes)));
        }
        Err(refusals.join("; "))
    }

    /// The other voters and their addresses, the leader first.
    fn others_leader_first(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let mut others: Vec<(NodeId, String)> = membership
            .voter_ids()
            .filter(|id| *id != self.id)
            .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
            .collect();
        others.sort_by_key(|(id, _)| Some(*id) != metrics.current_leader);
        others
    }
}
