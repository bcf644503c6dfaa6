//! Handing leadership over on a planned stop, so that writes pause for less than an election
//! timeout instead of waiting for the others to notice that the leader is gone.
//!
//! openraft 0.9 has no leadership transfer, and a follower that heard from its leader less than
//! a lease ago (the maximum election timeout) refuses to vote for anyone. So the stopping
//! leader: proposes nothing more (followers' batches wait for the next leader); waits until
//! what it proposed is committed and its most up-to-date voter has all of it; sends one last
//! heartbeat (the commit index), then none; and tells that voter to take over
//! ([`Call::TakeOver`], with its term). The voter campaigns once a lease has passed since the
//! last AppendEntries it had from the leader, if that leader still leads in that term: before
//! any follower's own election timeout, and with the longest log, so it normally wins. Writes
//! pause for about a lease, against a lease plus a random election timeout otherwise. If
//! anything goes wrong, the others elect a leader as they would have anyway.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::{Instant, sleep, sleep_until};

use super::{
    log_store::LogStore,
    peer::{
        Peers,
        wire::{Call, Reply},
    },
    propose::Merger,
    typ::{Metrics, NodeId, Raft},
};

/// Added to the lease before campaigning: the other voters had the leader's last AppendEntries
/// no later than the successor, but their clocks only agree so far.
const MARGIN: Duration = Duration::from_millis(30);
/// How often the stopping leader looks at its progress.
const POLL: Duration = Duration::from_millis(5);
/// How long the stopping leader waits for the successor's answer, at least.
const CALL: Duration = Duration::from_millis(500);

/// When this node last had AppendEntries, and from whom: a successor campaigns a lease after the
/// last one.
#[derive(Debug, Default)]
pub struct Appends(Mutex<Option<(NodeId, Instant)>>);

impl Appends {
    /// Node `from` sent AppendEntries now.
    pub fn heard(&self, from: NodeId) {
        *self.0.lock().unwrap() = Some((from, Instant::now()));
    }

    /// When `from` last sent AppendEntries, if it was the last to.
    fn last_from(&self, from: NodeId) -> Option<Instant> {
        match *self.0.lock().unwrap() {
            Some((node, at)) if node == from => Some(at),
            _ => None,
        }
    }
}

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
    let addr = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&successor)
        .map(|member| member.addr.clone())
        .ok_or_else(|| format!("node {successor} has no address"))?;
    let wait = deadline.saturating_duration_since(Instant::now()).max(CALL);
    let call = Call::TakeOver { term };
    match peers.get(successor, &addr).call(&call, wait).await {
        Ok(Reply::TakeOver(Ok(()))) => Ok(successor),
        Ok(Reply::TakeOver(Err(why))) => Err(format!("node {successor} refused: {why}")),
        Ok(other) => Err(format!("node {successor} answered {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

/// On a voter asked by its leader `from`, in `term`, to take over: campaigns once a lease has
/// passed since the last AppendEntries from it, if it still leads in that term (no one else
/// campaigned first).
pub fn take_over(
    raft: &Raft,
    appends: Arc<Appends>,
    from: NodeId,
    term: u64,
) -> Result<(), String> {
    let still = move |m: &Metrics| m.current_leader == Some(from) && m.current_term == term;
    let metrics = raft.metrics().borrow().clone();
    if !still(&metrics) {
        return Err(format!("node {from} does not lead in term {term} here"));
    }
    let mut voters = metrics.membership_config.membership().voter_ids();
    if !voters.any(|id| id == metrics.id) {
        return Err("this node does not vote".into());
    }
    let lease = Duration::from_millis(raft.config().election_timeout_max) + MARGIN;
    let raft = raft.clone();
    tokio::spawn(async move {
        // Until a lease has passed since the leader's last AppendEntries here (the others had
        // theirs no later), however late that came.
        let mut expires = Instant::now() + lease;
        loop {
            sleep_until(expires).await;
            match appends.last_from(from) {
                Some(last) if last + lease > expires => expires = last + lease,
                _ => break,
            }
        }
        if still(&raft.metrics().borrow()) {
            tracing::info!(from, term, "taking over from the stopping leader");
            let _ = raft.trigger().elect().await;
        }
    });
    Ok(())
}
