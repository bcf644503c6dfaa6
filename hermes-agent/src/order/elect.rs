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
//! only once a majority of the voters (itself included; of each configuration while the
//! membership changes, as a candidate needs) have heard no leader for a lease: a
//! node cut off from the others does not raise its term again and again, to depose the leader
//! when it comes back, and a majority of the voters it asks grant votes (their leases ran). Of
//! those quiet voters, the one with the most up-to-date log (the lowest id among equals)
//! campaigns at once; the others hold off for [`HOLD`] more and campaign only if nothing came
//! meanwhile (the best one died as it was asked, say). A campaign that did not win is tried
//! again after [`RETRY`], the voters ranked afresh. A leader that is stopping names its
//! successor ([`Call::TakeOver`]), which campaigns at once (see [`crate::order::handover`]),
//! and again, before the others, once a majority is quiet. When a voter refuses the question
//! (a peer of an older version, or a node not yet in the cluster), openraft's own timer is
//! switched on, as it was before, until a later round in which none refuses; a stopping node
//! switches it off.
use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use openraft::ServerState;
use tokio::{
    sync::Notify,
    time::{Instant, sleep_until, timeout_at},
};

use super::{
    log_store::LogStore,
    peer::{
        Peers,
        server::Elections,
        wire::{Call, Reply, Standing},
    },
    typ::{Metrics, NodeId, Raft},
};

/// openraft's leader lease, its `election_timeout_max`: a voter refuses every candidate until a
/// lease has passed since it last heard its leader.
pub const LEADER_LEASE_MS: u64 = 400;
/// The lease and a margin (the voters' clocks agree only so far). With the heartbeat every
/// 100 ms, also long enough not to take a leader slowed by load for a dead one.
const LEASE: Duration = Duration::from_millis(LEADER_LEASE_MS + 30);
/// How much longer than the most up-to-date voter the others wait before campaigning.
const HOLD: Duration = Duration::from_millis(200);
/// Until a campaign that did not win is tried again: a vote request's timeout and some.
const RETRY: Duration = Duration::from_millis(250);
/// How long a voter named by a stopping leader goes on campaigning before the others.
const TAKE_OVER: Duration = Duration::from_secs(2);
/// How long a voter waits for the others' standing.
const ASK: Duration = Duration::from_millis(150);
/// How much longer it waits for the rest once a majority answered: a voter cut off (the old
/// leader, often) never does.
const STRAGGLERS: Duration = Duration::from_millis(20);
/// How long a follower goes on naming a leader it no longer hears ([`Elector::leader`]): as
/// long as a request waits for a leader.
pub const LEADER_LOST: Duration = Duration::from_secs(3);
/// How often a node not yet in a cluster looks again.
const UNFORMED: Duration = Duration::from_millis(20);

/// What a node heard of leaders and candidates, and what its elections are to do.
pub struct Elector {
    heard: Mutex<Heard>,
    /// The node is stopping: it campaigns no more (it still votes).
    stopped: AtomicBool,
    wake: Notify,
    log: LogStore,
}

struct Heard {
    /// The last time a leader was heard, or a vote granted (or the node started).
    quiet_since: Instant,
    /// A stopping leader asked this node to take over, then.
    take_over: Option<(NodeId, Instant)>,
}

impl Elector {
    pub fn new(log: LogStore) -> Self {
        Self {
            heard: Mutex::new(Heard {
                quiet_since: Instant::now(),
                take_over: None,
            }),
            stopped: AtomicBool::new(false),
            wake: Notify::new(),
            log,
        }
    }

    /// The node is stopping: it campaigns no more (nor does openraft's timer), and a leader
    /// tells the others it is as good as gone ([`Standing::quiet_ms`]).
    pub fn stop(&self, raft: &Raft) {
        self.stopped.store(true, Ordering::Relaxed);
        raft.runtime_config().elect(false);
        self.wake.notify_one();
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The leader as this node knows it (in `metrics`): itself while it leads; another while
    /// this node has heard from it within [`LEADER_LOST`]. openraft names the last leader until
    /// another is elected; a node that heard none for that long (the leader died, or this node
    /// is cut off, and in a minority no election starts) knows none.
    pub fn leader(&self, metrics: &Metrics) -> Option<NodeId> {
        match metrics.current_leader {
            Some(leader) if leader == metrics.id => Some(leader),
            Some(leader) if self.quiet() < LEADER_LOST => Some(leader),
            _ => None,
        }
    }

    /// How long this node has not heard a leader (nor granted a vote).
    fn quiet(&self) -> Duration {
        self.heard.lock().unwrap().quiet_since.elapsed()
    }
}

impl Elections for Elector {
    fn heard(&self) {
        self.heard.lock().unwrap().quiet_since = Instant::now();
    }

    fn standing(&self, metrics: &Metrics) -> Result<Standing, String> {
        if let Err(fatal) = &metrics.running_state {
            return Err(format!("raft has stopped: {fatal}"));
        }
        let quiet_ms = match metrics.state {
            ServerState::Leader if self.stopped() => u64::MAX,
            // Unknown until a quorum first answers a new leader: as good as heard.
            ServerState::Leader => metrics.millis_since_quorum_ack.unwrap_or(0),
            _ => millis(self.quiet()),
        };
        Ok(Standing {
            last_log: self.log.last(),
            quiet_ms,
            // A leader does not campaign (openraft ignores it): rank the others.
            campaigns: !self.stopped() && metrics.state != ServerState::Leader,
        })
    }

    fn take_over(&self, metrics: &Metrics, from: NodeId, term: u64) -> Result<(), String> {
        if self.stopped() {
            return Err("this node is stopping too".into());
        }
        if metrics.current_leader != Some(from) || metrics.current_term != term {
            return Err(format!("node {from} does not lead in term {term} here"));
        }
        if !votes(metrics) {
            return Err("this node does not vote".into());
        }
        self.heard.lock().unwrap().take_over = Some((from, Instant::now()));
        Ok(())
    }
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
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
        let next = match next(&elector, &raft, &current, &peers).await {
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

async fn next(elector: &Elector, raft: &Raft, metrics: &Metrics, peers: &Peers) -> Next {
    let now = Instant::now();
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    if voters.is_empty() {
        return Next::WaitUntil(now + UNFORMED);
    }
    let chosen = {
        let mut heard = elector.heard.lock().unwrap();
        // A handover counts until a leader comes, for a while.
        heard.take_over = heard.take_over.filter(|(from, at)| {
            metrics.current_leader.is_none_or(|leader| leader == *from) && at.elapsed() < TAKE_OVER
        });
        heard.take_over
    };
    if elector.stopped() || metrics.state == ServerState::Leader || !votes(metrics) {
        return Next::WaitUntil(now + LEASE);
    }
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
            let addr = super::address(metrics, *id);
            async move {
                let peer = peers.get(*id, &addr?);
                Some((*id, peer.call(&Call::Standing, ASK).await.ok()?))
            }
        })
        .collect();
    let mut standings = Vec::new();
    let mut unasked = false;
    let mut until = now + ASK;
    // Until every voter answered, or a majority did and the others had a little longer.
    while let Ok(Some(answer)) = timeout_at(until, asks.next()).await {
        match answer {
            Some((id, Reply::Standing(Ok(standing)))) => standings.push((id, standing)),
            Some((_, Reply::Rejected(_))) => unasked = true,
            _ => {}
        }
        if standings.len() + 1 > voters.len() / 2 {
            until = until.min(Instant::now() + STRAGGLERS);
        }
    }
    raft.runtime_config().elect(unasked);
    // Measured again: while the others answered, a leader may have come, or a candidate that
    // this node voted for.
    let quiet = elector.quiet();
    let last_log = elector.log.last();
    standings.push((
        metrics.id,
        Standing {
            last_log,
            quiet_ms: millis(quiet),
            campaigns: true,
        },
    ));
    let next = decide(
        metrics.id,
        membership.get_joint_config(),
        &standings,
        chosen.is_some(),
        Instant::now(),
    );
    if next == Next::Campaign {
        tracing::info!(
            ?quiet,
            ?last_log,
            answered = standings.len(),
            successor = chosen.is_some(),
            "campaigning: a majority of the voters heard no leader for a lease"
        );
    }
    next
}

/// Whether node `me` campaigns now, given the `standings` of the voters that answered (its own
/// among them) out of the voters of `configs` (two while the membership changes: a candidate
/// needs a majority of each); `chosen`: a stopping leader named it.
fn decide(
    me: NodeId,
    configs: &[BTreeSet<NodeId>],
    standings: &[(NodeId, Standing)],
    chosen: bool,
    now: Instant,
) -> Next {
    // How long a majority of every configuration has heard no leader: of each, the quiet time
    // of its majority-th quietest voter that answered.
    let mut since = None::<Duration>;
    for config in configs {
        let mut quiet: Vec<Duration> = standings
            .iter()
            .filter(|(id, _)| config.contains(id))
            .map(|(_, standing)| Duration::from_millis(standing.quiet_ms))
            .collect();
        quiet.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&of_config) = quiet.get(config.len() / 2) else {
            // No majority answered: this node could not win, and would only raise its term.
            return Next::WaitUntil(now + RETRY);
        };
        since = Some(since.map_or(of_config, |since| since.min(of_config)));
    }
    let Some(since) = since else {
        return Next::WaitUntil(now + RETRY);
    };
    let mine = standings
        .iter()
        .find(|(id, _)| *id == me)
        .map_or(Duration::ZERO, |(_, standing)| {
            Duration::from_millis(standing.quiet_ms)
        });
    // A majority has heard no leader for `since`, this node for `mine`: until both are a
    // lease, there may be a leader, and voters that would refuse any candidate.
    let wait = LEASE.saturating_sub(since).max(LEASE.saturating_sub(mine));
    if !wait.is_zero() {
        return Next::WaitUntil(now + wait);
    }
    let best = standings
        .iter()
        .filter(|(_, standing)| standing.campaigns && standing.quiet_ms >= millis(LEASE))
        .max_by_key(|(id, standing)| (standing.last_log, std::cmp::Reverse(*id)))
        .map(|(id, _)| *id);
    if chosen || best == Some(me) || since >= LEASE + HOLD {
        Next::Campaign
    } else {
        Next::WaitUntil(now + (LEASE + HOLD - since))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    /// One configuration of voters 1 to `n`.
    fn all(n: u64) -> Vec<BTreeSet<NodeId>> {
        vec![(1..=n).collect()]
    }

    fn standing(term: u64, index: u64, quiet_ms: u64) -> Standing {
        Standing {
            last_log: Some(LogId::new(CommittedLeaderId::new(term, 1), index)),
            quiet_ms,
            campaigns: true,
        }
    }

    #[test]
    fn the_voter_with_the_longest_log_campaigns_first_and_the_others_hold_off() {
        let now = Instant::now();
        let standings = [(1, standing(2, 3032, 440)), (2, standing(2, 4383, 450))];
        assert_eq!(decide(2, &all(3), &standings, false, now), Next::Campaign);
        assert_eq!(
            decide(1, &all(3), &standings, false, now),
            Next::WaitUntil(now + (LEASE + HOLD - Duration::from_millis(440)))
        );
        // Nothing came of the best one's campaign: the other campaigns too.
        let later = [(1, standing(2, 3032, 640)), (2, standing(2, 4383, 650))];
        assert_eq!(decide(1, &all(3), &later, false, now), Next::Campaign);
        // A voter cut off for long holds off as long as the others.
        let back = [(1, standing(2, 3032, 9000)), (2, standing(2, 4383, 450))];
        assert_ne!(decide(1, &all(3), &back, false, now), Next::Campaign);
        // A later term beats a longer log, as in Raft's vote.
        let standings = [(1, standing(3, 10, 440)), (2, standing(2, 4383, 450))];
        assert_eq!(decide(1, &all(3), &standings, false, now), Next::Campaign);
        // Equal logs: the lowest id.
        let standings = [(3, standing(2, 7, 440)), (2, standing(2, 7, 440))];
        assert_eq!(decide(2, &all(3), &standings, false, now), Next::Campaign);
        assert_ne!(decide(3, &all(3), &standings, false, now), Next::Campaign);
        // Named by the stopping leader: it campaigns, though its log is not the longest.
        assert_eq!(decide(3, &all(3), &standings, true, now), Next::Campaign);
    }

    #[test]
    fn no_voter_campaigns_without_a_majority_or_while_one_still_hears_a_leader() {
        let now = Instant::now();
        let alone = [(1, standing(2, 9, 5000))];
        assert_eq!(
            decide(1, &all(3), &alone, false, now),
            Next::WaitUntil(now + RETRY)
        );
        assert_eq!(decide(1, &all(1), &alone, false, now), Next::Campaign);
        let three_of_five = [(1, standing(2, 9, 500)), (4, standing(2, 9, 500))];
        assert_eq!(
            decide(1, &all(5), &three_of_five, false, now),
            Next::WaitUntil(now + RETRY)
        );
        let hearing = [(1, standing(2, 9, 500)), (2, standing(2, 5, 130))];
        assert_eq!(
            decide(1, &all(3), &hearing, false, now),
            Next::WaitUntil(now + Duration::from_millis(300))
        );
        // Not even when a stopping leader named it: the other would refuse.
        assert_ne!(decide(1, &all(3), &hearing, true, now), Next::Campaign);
        let leading = [(1, standing(2, 9, 500)), (2, standing(2, 5, 0))];
        assert_ne!(decide(1, &all(3), &leading, false, now), Next::Campaign);
    }

    #[test]
    fn a_quiet_majority_elects_though_a_minority_still_hears_its_leader() {
        let now = Instant::now();
        // Of five, node 2 still hears a leader that reaches no majority; 1, 3 and 4 do not.
        let standings = [
            (1, standing(2, 9, 600)),
            (2, standing(2, 9, 50)),
            (3, standing(2, 8, 500)),
            (4, standing(2, 8, 450)),
        ];
        assert_eq!(decide(1, &all(5), &standings, false, now), Next::Campaign);
        // Node 2's log is as long, but it hears a leader: it is not ranked.
        assert_ne!(decide(3, &all(5), &standings, false, now), Next::Campaign);
    }

    #[test]
    fn a_stopping_voter_is_not_ranked() {
        let now = Instant::now();
        let mut stopping = standing(2, 99, 500);
        stopping.campaigns = false;
        let standings = [(1, standing(2, 9, 500)), (2, stopping)];
        assert_eq!(decide(1, &all(3), &standings, false, now), Next::Campaign);
    }

    #[test]
    fn while_the_membership_changes_a_majority_of_each_configuration_must_be_quiet() {
        let now = Instant::now();
        let joint: Vec<BTreeSet<NodeId>> = vec![[1, 2, 3].into(), [3, 4, 5].into()];
        // 1, 2 and 3 are a majority of the five, and of the old three, but of the new three
        // only 3 is quiet: 4 and 5 may still hear a leader.
        let old_side = [
            (1, standing(2, 9, 600)),
            (2, standing(2, 9, 600)),
            (3, standing(2, 9, 600)),
            (4, standing(2, 9, 20)),
        ];
        assert_ne!(decide(1, &joint, &old_side, false, now), Next::Campaign);
        assert_eq!(decide(1, &all(5), &old_side, false, now), Next::Campaign);
        let both = [
            (1, standing(2, 9, 600)),
            (2, standing(2, 9, 600)),
            (4, standing(2, 9, 600)),
            (5, standing(2, 9, 600)),
        ];
        assert_eq!(decide(1, &joint, &both, false, now), Next::Campaign);
    }
}
