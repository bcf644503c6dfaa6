//! Who campaigns, and when: Hermes starts elections, not openraft's timer (`enable_elect` is
//! off).
//!
//! openraft 0.9 lets each voter campaign on its own timer, drawn once per process, a lease plus
//! a random election timeout after it last heard a leader. When the leader dies under load, the
//! followers' logs differ by what was in flight, and a follower that restarted recently may
//! still be catching up by a thousand entries. If the follower with the shorter log campaigns
//! first, the other refuses it by log without adopting its term, then campaigns itself in that
//! same term and is refused in turn (the first already voted for itself); the next round waits
//! for a timer again. Writes stopped for 1.5 to 2.7 s that way.
//!
//! So here a voter that has heard no leader for a lease ([`LEASE`]) asks the other voters where
//! their logs end and how long they have not heard a leader ([`Call::Standing`]). It campaigns
//! only if a majority (itself included) answered, so that a node cut off from the others does
//! not raise its term again and again and depose the leader when it comes back; and only once
//! none of them has heard a leader for a lease either, since until then they refuse any vote.
//! The voter with the most up-to-date log (the lowest id among equals) campaigns at once; the
//! others hold off for [`HOLD`] more and campaign only if nothing came meanwhile (the best one
//! died as it was asked, say). A campaign that did not win is tried again after [`RETRY`], the
//! voters ranked afresh. A leader that is stopping names its successor ([`Call::TakeOver`]),
//! which campaigns at once, and again, before the others, once their leases on that leader
//! have run out.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::{
    sync::Notify,
    time::{Instant, sleep_until, timeout_at},
};

use super::{
    log_store::LogStore,
    peer::{
        Peers,
        wire::{Call, Reply, Standing},
    },
    propose::Merger,
    typ::{Metrics, NodeId, Raft},
};

/// openraft's leader lease (the maximum election timeout, 400 ms) and a margin: a voter refuses
/// every candidate until a lease has passed since it last heard its leader, and the voters'
/// clocks only agree so far. Also, with the heartbeat every 100 ms, long enough not to take a
/// leader slowed by load for a dead one.
pub const LEASE: Duration = Duration::from_millis(430);
/// How much longer than the most up-to-date voter the others wait before campaigning.
pub const HOLD: Duration = Duration::from_millis(200);
/// Until a campaign that did not win is tried again: a vote request's timeout and some.
pub const RETRY: Duration = Duration::from_millis(250);
/// How long a voter named by a stopping leader goes on campaigning before the others.
const TAKE_OVER: Duration = Duration::from_secs(2);
/// How long a voter waits for the others' standing.
const ASK: Duration = Duration::from_millis(150);
/// How much longer it waits for the rest once a majority answered: a voter cut off (the old
/// leader, often) never does.
const STRAGGLERS: Duration = Duration::from_millis(20);

/// What a node heard of leaders and candidates, and what its elections are to do.
pub struct Elector {
    heard: Mutex<Heard>,
    /// The node is stopping: it campaigns no more.
    stopped: AtomicBool,
    wake: Notify,
    log: LogStore,
    /// Closed while this node hands its leadership over.
    merger: Merger,
}

#[derive(Debug)]
struct Heard {
    /// The last time a leader was heard, or a vote granted (or the node started).
    quiet_since: Instant,
    /// A stopping leader, and its term, asked this node to take over, then.
    take_over: Option<(NodeId, u64, Instant)>,
}

impl Elector {
    pub fn new(log: LogStore, merger: Merger) -> Self {
        Self {
            heard: Mutex::new(Heard {
                quiet_since: Instant::now(),
                take_over: None,
            }),
            stopped: AtomicBool::new(false),
            wake: Notify::new(),
            log,
            merger,
        }
    }

    /// This node accepted AppendEntries or a snapshot from a leader, or granted a candidate its
    /// vote (and gives it time to win).
    pub fn heard(&self) {
        self.heard.lock().unwrap().quiet_since = Instant::now();
    }

    /// The node is stopping: it campaigns no more (it still votes).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// How long this node has not heard a leader.
    fn quiet(&self) -> Duration {
        self.heard.lock().unwrap().quiet_since.elapsed()
    }

    /// On a voter asked by its leader `from`, stopping in `term`, to take over (it campaigns at
    /// once, see [`crate::order::handover`]): should that campaign not win, it campaigns again
    /// as soon as a majority of the voters have not heard a leader for a lease, whatever their
    /// logs, unless another leader came meanwhile, or [`TAKE_OVER`] passed.
    pub fn take_over(&self, metrics: &Metrics, from: NodeId, term: u64) -> Result<(), String> {
        if !leads(metrics, from, term) {
            return Err(format!("node {from} does not lead in term {term} here"));
        }
        if !votes(metrics) {
            return Err("this node does not vote".into());
        }
        self.heard.lock().unwrap().take_over = Some((from, term, Instant::now()));
        self.wake.notify_one();
        Ok(())
    }

    /// Where this node stands, for a voter that thinks of campaigning.
    pub fn standing(&self, metrics: &Metrics) -> Standing {
        let quiet_ms = if metrics.current_leader != Some(metrics.id) {
            millis(self.quiet())
        } else if self.merger.is_closed() {
            u64::MAX
        } else {
            0
        };
        Standing {
            last_log: self.log.last(),
            quiet_ms,
        }
    }
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

fn leads(metrics: &Metrics, leader: NodeId, term: u64) -> bool {
    metrics.current_leader == Some(leader) && metrics.current_term == term
}

fn votes(metrics: &Metrics) -> bool {
    let mut voters = metrics.membership_config.membership().voter_ids();
    voters.any(|id| id == metrics.id)
}

/// What a node does next about elections.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Campaign,
    /// Look again then.
    WaitUntil(Instant),
}

/// Runs this node's elections for as long as its Raft runs.
pub async fn run(elector: Arc<Elector>, raft: Raft, peers: Peers) {
    let metrics = raft.metrics();
    // Ends when Raft has stopped (its metrics' sender is gone).
    while metrics.has_changed().is_ok() {
        let current = metrics.borrow().clone();
        let next = match next(&elector, &current, &peers).await {
            Next::Campaign => {
                if raft.trigger().elect().await.is_err() {
                    return;
                }
                Instant::now() + RETRY
            }
            Next::WaitUntil(at) => at,
        };
        tokio::select! {
            () = sleep_until(next) => {}
            () = elector.wake.notified() => {}
        }
    }
}

async fn next(elector: &Elector, metrics: &Metrics, peers: &Peers) -> Next {
    let now = Instant::now();
    if elector.stopped.load(Ordering::Relaxed)
        || metrics.current_leader == Some(metrics.id)
        || !votes(metrics)
    {
        return Next::WaitUntil(now + LEASE);
    }
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    if voters.len() == 1 {
        // Nobody else to hear from, or to ask.
        return Next::Campaign;
    }
    let quiet = elector.quiet();
    if quiet < LEASE {
        return Next::WaitUntil(now + (LEASE - quiet));
    }
    let mut asks: FuturesUnordered<_> = voters
        .iter()
        .filter(|id| **id != metrics.id)
        .map(|id| {
            let addr = membership.get_node(id).map(|member| member.addr.clone());
            async move {
                let peer = peers.get(*id, &addr?);
                match peer.call(&Call::Standing, ASK).await {
                    Ok(Reply::Standing(standing)) => Some((*id, standing)),
                    _ => None,
                }
            }
        })
        .collect();
    let mut standings = Vec::new();
    let mut until = now + ASK;
    // Until every voter answered, or a majority did and the others had a little longer.
    while let Ok(Some(answer)) = timeout_at(until, asks.next()).await {
        standings.extend(answer);
        if standings.len() + 1 > voters.len() / 2 {
            until = until.min(Instant::now() + STRAGGLERS);
        }
    }
    // Measured again: while the others answered, a leader may have come, or a candidate that
    // this node voted for.
    let quiet = elector.quiet();
    standings.push((
        metrics.id,
        Standing {
            last_log: elector.log.last(),
            quiet_ms: millis(quiet),
        },
    ));
    let chosen = {
        let mut heard = elector.heard.lock().unwrap();
        // A handover counts until another leader comes, for a while.
        heard.take_over = heard.take_over.filter(|(from, _, at)| {
            metrics.current_leader.is_none_or(|leader| leader == *from) && at.elapsed() < TAKE_OVER
        });
        heard.take_over
    };
    let next = decide(
        metrics.id,
        voters.len(),
        &standings,
        chosen.is_some(),
        Instant::now(),
    );
    if next == Next::Campaign {
        let last_log = elector.log.last();
        match chosen {
            Some((from, term, _)) => {
                tracing::info!(
                    from,
                    term,
                    ?last_log,
                    "taking over from the stopping leader"
                );
            }
            None => tracing::info!(
                quiet = ?quiet,
                ?last_log,
                answered = standings.len(),
                "campaigning: no leader heard for a lease, by a majority of the voters"
            ),
        }
    }
    next
}

/// Whether node `me` campaigns now, given the `standings` of the voters that answered (its own
/// among them) out of `voters`; `chosen`: a stopping leader named it.
fn decide(
    me: NodeId,
    voters: usize,
    standings: &[(NodeId, Standing)],
    chosen: bool,
    now: Instant,
) -> Next {
    if standings.len() <= voters / 2 {
        // No majority answered: this node could not win, and would only raise its term.
        return Next::WaitUntil(now + RETRY);
    }
    // Since when all of them have heard no leader (each counts from its own last hearing).
    let least = standings
        .iter()
        .map(|(_, standing)| Duration::from_millis(standing.quiet_ms))
        .min()
        .unwrap_or_default();
    if least < LEASE {
        // Someone heard a leader lately (this node too, maybe): it would refuse any vote until
        // its lease runs out.
        return Next::WaitUntil(now + (LEASE - least));
    }
    let best = standings
        .iter()
        .max_by_key(|(id, standing)| (standing.last_log, std::cmp::Reverse(*id)))
        .map(|(id, _)| *id);
    if chosen || best == Some(me) || least >= LEASE + HOLD {
        Next::Campaign
    } else {
        Next::WaitUntil(now + (LEASE + HOLD - least))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn standing(term: u64, index: u64, quiet_ms: u64) -> Standing {
        Standing {
            last_log: Some(LogId::new(CommittedLeaderId::new(term, 1), index)),
            quiet_ms,
        }
    }

    #[test]
    fn the_voter_with_the_longest_log_campaigns_first_and_the_others_hold_off() {
        let now = Instant::now();
        let standings = [(1, standing(2, 3032, 440)), (2, standing(2, 4383, 450))];
        assert_eq!(decide(2, 3, &standings, false, now), Next::Campaign);
        assert_eq!(
            decide(1, 3, &standings, false, now),
            Next::WaitUntil(now + (LEASE + HOLD - Duration::from_millis(440)))
        );
        // Nothing came of the best one's campaign: the other campaigns too.
        let later = [(1, standing(2, 3032, 640)), (2, standing(2, 4383, 650))];
        assert_eq!(decide(1, 3, &later, false, now), Next::Campaign);
        // A voter cut off for long holds off as long as the others.
        let back = [(1, standing(2, 3032, 9000)), (2, standing(2, 4383, 450))];
        assert_ne!(decide(1, 3, &back, false, now), Next::Campaign);
        // A later term beats a longer log, as in Raft's vote.
        let standings = [(1, standing(3, 10, 440)), (2, standing(2, 4383, 450))];
        assert_eq!(decide(1, 3, &standings, false, now), Next::Campaign);
        // Equal logs: the lowest id.
        let standings = [(3, standing(2, 7, 440)), (2, standing(2, 7, 440))];
        assert_eq!(decide(2, 3, &standings, false, now), Next::Campaign);
        assert_ne!(decide(3, 3, &standings, false, now), Next::Campaign);
        // Named by the stopping leader: it campaigns, though its log is not the longest.
        assert_eq!(decide(3, 3, &standings, true, now), Next::Campaign);
    }

    #[test]
    fn no_voter_campaigns_without_a_majority_or_while_one_still_hears_a_leader() {
        let now = Instant::now();
        let alone = [(1, standing(2, 9, 5000))];
        assert_eq!(
            decide(1, 3, &alone, false, now),
            Next::WaitUntil(now + RETRY)
        );
        assert_eq!(decide(1, 1, &alone, false, now), Next::Campaign);
        let three_of_five = [(1, standing(2, 9, 500)), (4, standing(2, 9, 500))];
        assert_eq!(
            decide(1, 5, &three_of_five, false, now),
            Next::WaitUntil(now + RETRY)
        );
        let hearing = [(1, standing(2, 9, 500)), (2, standing(2, 5, 130))];
        assert_eq!(
            decide(1, 3, &hearing, false, now),
            Next::WaitUntil(now + Duration::from_millis(300))
        );
        // Not even when a stopping leader named it: the other would refuse.
        assert_ne!(decide(1, 3, &hearing, true, now), Next::Campaign);
        let leading = [(1, standing(2, 9, 500)), (2, standing(2, 5, 0))];
        assert_ne!(decide(1, 3, &leading, false, now), Next::Campaign);
    }
}
