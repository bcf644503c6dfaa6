//! Handing leadership over on a planned stop, so that writes pause for less than an election
//! timeout instead of waiting for the others to notice that the leader is gone.
//!
//! openraft 0.9 has no leadership transfer, and a follower that heard from its leader less than
//! a lease ago (the maximum election timeout) refuses to vote for anyone. So the stopping
//! leader: proposes nothing more (followers' batches wait for the next leader); waits until
//! what it proposed is committed and its most up-to-date voter has all of it; sends one last
//! heartbeat (the commit index), then none; and tells that voter to take over
//! ([`Call::TakeOver`]). The voter campaigns as soon as a lease has passed since that last
//! heartbeat, before any follower's own election timeout: its log is the longest, so it wins.
//! Writes pause for about a lease, against a lease plus a random election timeout otherwise.
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

/// Added to the lease before campaigning: the last heartbeat reached the other voters before
/// the call did, but their clocks only agree so far.
const MARGIN: Duration = Duration::from_millis(30);
/// How often the stopping leader looks at its progress.
const POLL: Duration = Duration::from_millis(5);

/// On the leader (`me`), stopping: hands leadership to its most up-to-date voter within
/// `within`; returns that voter, or why not.
pub async fn hand_over(
    raft: &Raft,
    log: &LogStore,
    merger: &Merger,
    peers: &Peers,
    me: NodeId,
    within: Duration,
) -> Result<NodeId, String> {
    let deadline = Instant::now() + within;
    let leads = |raft: &Raft| raft.metrics().borrow().current_leader == Some(me);
    if !leads(raft) {
        return Err("not the leader".into());
    }
    merger.close();
    // What was proposed is committed here, and the successor has all of it.
    let successor = loop {
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(me) {
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
        if committed >= last && matched >= last {
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
    let wait = deadline.saturating_duration_since(Instant::now());
    match peers
        .get(successor, &addr)
        .call(&Call::TakeOver, wait)
        .await
    {
        Ok(Reply::TakeOver(Ok(()))) => Ok(successor),
        Ok(Reply::TakeOver(Err(why))) => Err(format!("node {successor} refused: {why}")),
        Ok(other) => Err(format!("node {successor} answered {other:?}")),
        Err(error) => Err(error.to_string()),
    }
}

/// On a voter asked by its leader `from` to take over: campaigns once a lease has passed, unless
/// another leader came meanwhile.
pub fn take_over(raft: &Raft, from: NodeId) -> Result<(), String> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(from) {
        return Err(format!("node {from} is not the leader here"));
    }
    let mut voters = metrics.membership_config.membership().voter_ids();
    if !voters.any(|id| id == metrics.id) {
        return Err("this node does not vote".into());
    }
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let raft = raft.clone();
    tokio::spawn(async move {
        sleep(lease + MARGIN).await;
        // Still the stopping leader's follower: no one else campaigned first.
        if raft.metrics().borrow().current_leader == Some(from) {
            tracing::info!(from, "taking over from the stopping leader");
            let _ = raft.trigger().elect().await;
        }
    });
    Ok(())
}
