//! Handing leadership over on a planned stop, so that writes pause for less than an election
//! timeout instead of waiting for the others to notice that the leader is gone.
//!
//! openraft 0.9 has no leadership transfer, and a follower that heard from its leader less than
//! a lease ago (the maximum election timeout) refuses to vote for anyone. So the stopping
//! leader: proposes nothing more (followers' batches wait for the next leader); waits until
//! what it proposed is committed and its most up-to-date voter has all of it; sends one last
//! heartbeat (the commit index), then none; tells that voter to take over ([`Call::TakeOver`],
//! with its term); and stays up until another leader is known, within its time. The voter
//! campaigns at once, if that leader still leads in that term. A leader's own lease on itself
//! dates from its election (or its restart), so a lease after that the stopping leader grants
//! its vote to a successor whose log is as long as its own, and steps down: with three voters,
//! that vote is all the successor needs, and writes pause for milliseconds. Otherwise (more
//! voters, a leader elected less than a lease ago), the successor campaigns again, before the
//! others, once a majority has not heard the stopping leader for a lease
//! ([`crate::order::elect`]). If anything goes wrong, the others elect a leader as they would
//! have anyway.
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{
    log_store::LogStore,
    peer::{
        Peers,
        wire::{Call, Reply},
    },
    propose::Merger,
    typ::{NodeId, Raft},
};

/// How often the stopping leader looks at its progress.
const POLL: Duration = Duration::from_millis(5);
/// How long the stopping leader waits for the successor's answer, at least.
const CALL: Duration = Duration::from_millis(500);

/// On a stopping node (`me`): if it leads, hands leadership to its most up-to-date voter
/// within `within`, and returns that voter, or why not (then the node proposes and sends
/// heartbeats again, as before); `Ok(None)` if it does not lead.
pub async fn hand_over(
    raft: &Raft,
    log: &LogStore,
    merger: &Merger,
    peers: &Peers,
    me: NodeId,
    within: Duration,
) -> Result<Option<NodeId>, String> {
    let term = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        if metrics.current_leader != Some(me) {
            return Ok(None);
        }
        metrics.current_term
    };
    merger.close();
    let handed = hand_over_closed(raft, log, peers, me, term, within).await;
    if handed.is_err() {
        merger.reopen();
        raft.runtime_config().heartbeat(true);
    }
    handed.map(Some)
}

async fn hand_over_closed(
    raft: &Raft,
    log: &LogStore,
    peers: &Peers,
    me: NodeId,
    term: u64,
    within: Duration,
) -> Result<NodeId, String> {
    let deadline = Instant::now() + within;
    // What was proposed is committed here, and the successor has all of it.
    let successor = loop {
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(me) || metrics.current_term != term {
            return Err("no longer the leader".into());
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let committed = log.committed().map_or(0, |id| id.index);
        let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let best = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != me && voters.contains(id))
            .map(|(id, matched)| (matched.map_or(0, |m| m.index), *id))
            .max();
        let Some((matched, successor)) = best else {
            return Err("no other voter".into());
        };
        // No proposal of this node's is in flight, and none can start: the merger is closed.
        if committed >= last && matched >= last && log.watching() == 0 {
            break successor;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {successor} has {matched} of {last} entries, {committed} committed"
            ));
        }
        sleep(POLL).await;
    };
    let _ = raft.trigger().heartbeat().await;
    raft.runtime_config().heartbeat(false);
    let addr = super::address(&raft.metrics().borrow(), successor)
        .ok_or_else(|| format!("node {successor} has no address"))?;
    let wait = deadline.saturating_duration_since(Instant::now()).max(CALL);
    let call = Call::TakeOver { term };
    match peers.get(successor, &addr).call(&call, wait).await {
        Ok(Reply::TakeOver(Ok(()))) => {
            // The successor campaigns: stay up to vote for it. With three voters, this node's
            // vote is all it needs, while the other follower's lease on this leader runs.
            let wait = deadline.saturating_duration_since(Instant::now()).max(CALL);
            let mut metrics = raft.metrics();
            let moved = metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != me));
            if tokio::time::timeout(wait, moved).await.is_err() {
                tracing::info!(
                    successor,
                    "no other leader yet: the successor campaigns again once a majority has \
                     not heard this one for a lease"
                );
            }
            Ok(successor)
        }
        Ok(Reply::TakeOver(Err(why))) => Err(format!("node {successor} refused: {why}")),
        Ok(other) => Err(format!("node {successor} answered {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}
