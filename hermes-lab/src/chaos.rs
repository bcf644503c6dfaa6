//! Chaos: mixed load on a log-app cluster for a while, with a fault injected in turn every few
//! seconds (kill -9 of the leader's agent, of a follower's agent, of an app; the leader cut off;
//! 30% of a follower's packets lost; the leader's agent stopped and started again, as a rolling
//! restart does; the leader's machine frozen, agent and app), each healed before the next; then
//! the invariant checker: every request acknowledged to a client is in every replica exactly
//! once, the replicas are byte-identical, and nothing is there that no client sent.
use std::{
    collections::BTreeMap,
    fmt, io,
    time::{Duration, Instant},
};

use crate::{
    cluster::{Cluster, wait_until},
    load::{Load, Sent, check_replicas},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillLeader,
    KillFollower,
    KillApp,
    PartitionLeader,
    LossyFollower,
    RestartLeader,
    FreezeLeader,
}

impl Fault {
    /// Every kind of fault, in the order they come.
    pub const ALL: [Fault; 7] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PartitionLeader,
        Fault::KillApp,
        Fault::LossyFollower,
        Fault::RestartLeader,
        Fault::FreezeLeader,
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillLeader => "kill -9 leader agent",
            Fault::KillFollower => "kill -9 follower agent",
            Fault::KillApp => "kill -9 an app",
            Fault::PartitionLeader => "cut the leader off",
            Fault::LossyFollower => "30% packet loss at a follower",
            Fault::RestartLeader => "SIGTERM leader agent, restart",
            Fault::FreezeLeader => "freeze the leader's machine",
        })
    }
}

pub struct Config {
    /// How long faults keep coming.
    pub length: Length,
    /// Time between faults; each fault lasts this long, then is healed.
    pub every: Duration,
    pub clients: usize,
}

/// How long a chaos run lasts.
#[derive(Clone, Copy, Debug)]
pub enum Length {
    /// Faults come until this much time has passed.
    Time(Duration),
    /// Every kind of fault comes this many times.
    Rounds(usize),
}

/// One fault, and how long the cluster took no write after it.
pub struct Injected {
    pub at: Duration,
    pub fault: Fault,
    pub node: usize,
    /// Until writes sent after the fault were acknowledged again; `None`: not within the fault.
    pub unavailable: Option<Duration>,
    /// The longest time no write was acknowledged to any client while the fault lasted.
    pub pause: Duration,
}

pub struct Report {
    pub injected: Vec<Injected>,
    pub sent: Sent,
    /// The checker's verdict: the number of lines in every replica, or what is wrong.
    pub verdict: Result<usize, String>,
}

/// How long writes were unavailable after the faults of one kind.
pub struct PerFault {
    pub count: usize,
    /// `None`: at least one fault's writes did not come back within the fault.
    pub longest: Option<Duration>,
    pub p99: Option<Duration>,
    /// The longest pause in acknowledged writes during one of them.
    pub longest_pause: Duration,
}

impl Report {
    pub fn per_fault(&self) -> BTreeMap<Fault, PerFault> {
        let mut times: BTreeMap<Fault, Vec<Option<Duration>>> = BTreeMap::new();
        let mut pauses: BTreeMap<Fault, Duration> = BTreeMap::new();
        for injected in &self.injected {
            times
                .entry(injected.fault)
                .or_default()
                .push(injected.unavailable);
            let pause = pauses.entry(injected.fault).or_default();
            *pause = (*pause).max(injected.pause);
        }
        times
            .into_iter()
            .map(|(fault, times)| {
                // Sorted with `None` (longer than the fault) last.
                let mut sorted: Vec<Option<Duration>> = times;
                sorted.sort_by_key(|time| (time.is_none(), *time));
                let rank = (sorted.len() * 99).div_ceil(100).max(1) - 1;
                let per = PerFault {
                    count: sorted.len(),
                    longest: *sorted.last().expect("one at least"),
                    p99: sorted[rank],
                    longest_pause: pauses[&fault],
                };
                (fault, per)
            })
            .collect()
    }
}

/// How long writes were unavailable, when they came back before the fault's turn ended.
fn unavailability(unavailable: Option<Duration>) -> String {
    unavailable.map_or("more than the fault lasted".into(), |d| format!("{d:.2?}"))
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>6.1?}  {:<30} node {}  writes unavailable for {} (longest pause {:.2?})",
            self.at,
            self.fault.to_string(),
            self.node,
            unavailability(self.unavailable),
            self.pause
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "faults:")?;
        for injected in &self.injected {
            writeln!(f, "  {injected}")?;
        }
        writeln!(f, "unavailability per kind of fault:")?;
        for (fault, per) in self.per_fault() {
            writeln!(
                f,
                "  {:<30} {:>3} faults, longest {}, p99 {}; longest pause {:.2?}",
                fault.to_string(),
                per.count,
                unavailability(per.longest),
                unavailability(per.p99),
                per.longest_pause
            )?;
        }
        writeln!(
            f,
            "requests: {} writes sent, {} acknowledged, {} reads answered; failures: {:?}",
            self.sent.all.len(),
            self.sent.acked.len(),
            self.sent.reads,
            self.sent.failures
        )?;
        match &self.verdict {
            Ok(lines) => write!(
                f,
                "verdict: PASS: {lines} lines, identical on every replica; every acknowledged write exactly once; nothing unsent"
            ),
            Err(problem) => write!(f, "verdict: FAIL: {problem}"),
        }
    }
}

/// Runs chaos on a started `cluster` of the log app; `progress` hears of each fault.
pub fn run(
    cluster: &mut Cluster,
    config: &Config,
    mut progress: impl FnMut(&Injected),
) -> io::Result<Report> {
    let addrs = cluster.addrs();
    let load = Load::mixed(&addrs, config.clients);
    load.wait_for_acks(config.clients)?;
    let started = Instant::now();
    let mut injected = Vec::new();
    for (turn, fault) in Fault::ALL.iter().copied().cycle().enumerate() {
        let over = match config.length {
            Length::Time(time) => started.elapsed() >= time,
            Length::Rounds(rounds) => turn >= rounds * Fault::ALL.len(),
        };
        if over {
            break;
        }
        let leader = cluster.wait_for_leader()?;
        let followers: Vec<usize> = (1..=cluster.nodes()).filter(|id| *id != leader).collect();
        let node = match fault {
            Fault::KillLeader
            | Fault::PartitionLeader
            | Fault::RestartLeader
            | Fault::FreezeLeader => leader,
            _ => followers[turn % followers.len()],
        };
        let at = started.elapsed();
        let acked = load.acked();
        let since = Instant::now();
        load.longest_pause();
        inject(cluster, fault, node)?;
        // Each client had at most one write in flight: once `clients` more are acknowledged,
        // at least one was sent after the fault.
        let mut unavailable = None;
        while since.elapsed() < config.every {
            if unavailable.is_none() && load.acked() >= acked + config.clients {
                unavailable = Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pause = load.longest_pause();
        heal(cluster, fault, node)?;
        // Let the cluster settle (e.g. the reconnected old leader's election) before the next
        // fault, so that each fault's figure is its own.
        cluster.wait_for_leader()?;
        let done = Injected {
            at,
            fault,
            node,
            unavailable,
            pause,
        };
        progress(&done);
        injected.push(done);
    }
    let sent = load.stop();
    cluster.wait_converged()?;
    let files = cluster.files();
    let in_doubt = cluster.in_doubt();
    let verdict = check_replicas(&files, &in_doubt, &sent)
        .and_then(|lines| no_alarm_but_in_doubt(cluster, &in_doubt).map(|()| lines));
    Ok(Report {
        injected,
        sent,
        verdict,
    })
}

/// Once every node has compared its answers with the others': a node found to have diverged
/// (its answers not the majority's) must be one that reported requests in doubt (its app may
/// have run one twice), or have differed only from nodes that did; the deterministic app
/// diverges otherwise nowhere.
fn no_alarm_but_in_doubt(cluster: &Cluster, in_doubt: &[u64]) -> Result<(), String> {
    let requests = (1..=cluster.nodes())
        .filter_map(|id| cluster.status(id)?["requests"].as_u64())
        .max()
        .unwrap_or(0);
    for id in 1..=cluster.nodes() {
        wait_until(&format!("node {id} to compare its answers"), || {
            (cluster.status(id)?["compared_up_to"].as_u64()? >= requests).then_some(())
        })
        .map_err(|e| e.to_string())?;
    }
    for id in 1..=cluster.nodes() {
        let status = cluster
            .status(id)
            .ok_or(format!("node {id} does not answer"))?;
        let divergence = &status["divergence"];
        if divergence["minority"] == true && !explained(id, divergence, in_doubt) {
            return Err(format!(
                "node {id} diverged without any request in doubt: {divergence}"
            ));
        }
        if !divergence.is_null() && in_doubt.iter().all(|n| *n == 0) {
            return Err(format!("node {id} found a divergence: {divergence}"));
        }
        if !divergence.is_null() {
            eprintln!(
                "node {id} found a divergence, explained by requests in doubt (per node: \
                 {in_doubt:?}): {divergence}"
            );
        }
    }
    Ok(())
}

/// Whether node `id`'s answer not being the majority's (`divergence`, as `/status` has it) is
/// explained by requests in doubt: its own, or those of every node that answered otherwise. (A
/// node whose answer differs from the one other node that had one, the third not known, counts
/// as not the majority's: it cannot tell which of the two is right.)
fn explained(id: usize, divergence: &serde_json::Value, in_doubt: &[u64]) -> bool {
    if in_doubt[id - 1] > 0 {
        return true;
    }
    let Some(digests) = divergence["digests"].as_object() else {
        return false;
    };
    let mine = &digests[&id.to_string()];
    digests
        .iter()
        .filter(|(_, theirs)| *theirs != mine)
        .all(|(other, _)| {
            other
                .parse::<usize>()
                .ok()
                .and_then(|other| in_doubt.get(other.checked_sub(1)?))
                .is_some_and(|n| *n > 0)
        })
}

fn inject(cluster: &mut Cluster, fault: Fault, node: usize) -> io::Result<()> {
    match fault {
        Fault::KillLeader | Fault::KillFollower => cluster.kill_agent(node),
        Fault::KillApp => cluster.kill_app(node),
        Fault::PartitionLeader => cluster.lab.set_connected(cluster.lab.node(node), false),
        Fault::LossyFollower => cluster.lab.set_loss(cluster.lab.node(node), Some(30)),
        Fault::RestartLeader => cluster
            .stop_agent(node, Duration::from_secs(30))
            .map(|_| ()),
        Fault::FreezeLeader => cluster.freeze(node, true),
    }
}

fn heal(cluster: &mut Cluster, fault: Fault, node: usize) -> io::Result<()> {
    match fault {
        Fault::KillLeader | Fault::KillFollower => cluster.start_agent(node),
        Fault::KillApp => cluster.start_app(node),
        Fault::PartitionLeader => cluster.lab.set_connected(cluster.lab.node(node), true),
        Fault::LossyFollower => cluster.lab.set_loss(cluster.lab.node(node), None),
        Fault::RestartLeader => {
            cluster.start_agent(node)?;
            cluster.wait_ready(node)
        }
        Fault::FreezeLeader => cluster.freeze(node, false),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::explained;

    #[test]
    fn a_divergence_is_explained_only_by_requests_in_doubt_where_the_answers_differ() {
        let tie = json!({"seq": 9, "minority": true, "digests": {"1": "aa", "2": "bb"}});
        // Node 2 differs from node 1 alone (node 3 unknown), and node 1 sent a request twice.
        assert!(explained(2, &tie, &[1, 0, 0]));
        assert!(!explained(2, &tie, &[0, 0, 1]), "node 3 had no say");
        assert!(explained(2, &tie, &[0, 1, 0]), "its own");
        let outvoted = json!({"minority": true, "digests": {"1": "aa", "2": "bb", "3": "aa"}});
        assert!(
            !explained(2, &outvoted, &[1, 0, 0]),
            "node 3 answered otherwise too"
        );
        assert!(explained(2, &outvoted, &[1, 0, 1]));
    }
}
