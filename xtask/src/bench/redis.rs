//! Raw TCP mode's benchmark: Debian's `redis-server` measured with its own load tool,
//! `redis-benchmark` (closed loop: a fixed number of clients, each waiting for its reply), alone,
//! behind a passthrough agent, behind Hermes with one and three replicas, and replicated by its
//! own means (a primary and two replicas, asynchronously: writes do not wait for them).
use std::{fmt::Write as _, net::SocketAddr, path::Path, process::Command};

use anyhow::{Context as _, bail};
use hermes_lab::{
    Lab,
    cluster::{App, Cluster, PORT, wait_until},
};
use serde::{Deserialize, Serialize};

/// The commands measured, as `redis-benchmark -t` names them.
pub const TESTS: [&str; 4] = ["SET", "GET", "INCR", "LPUSH"];
/// Bytes of each value written.
const VALUE_BYTES: usize = 128;
/// Keys the commands spread over.
const KEYSPACE: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisSetup {
    Direct,
    Passthrough,
    Hermes1,
    Hermes3,
    /// Redis' own replication: clients write to the primary.
    Replicated3,
}

impl RedisSetup {
    pub const ALL: [Self; 5] = [
        Self::Direct,
        Self::Passthrough,
        Self::Hermes1,
        Self::Hermes3,
        Self::Replicated3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "redis-direct",
            Self::Passthrough => "redis-passthrough",
            Self::Hermes1 => "redis-hermes-1",
            Self::Hermes3 => "redis-hermes-3",
            Self::Replicated3 => "redis-replicated-3",
        }
    }
}

/// One command measured on one setup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedisPoint {
    pub setup: String,
    pub test: String,
    /// Clients over all load processes.
    pub clients: usize,
    pub requests: usize,
    /// Replies per second, summed over the load processes.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The median latency of one client alone (the latency of an idle system).
    pub idle_p50_ms: f64,
    /// What one sync of the disk took right after the client alone (see [`super::disk`]);
    /// `None` in runs from before it was measured.
    #[serde(default)]
    pub disk_sync_ms: Option<f64>,
}

/// What `redis-benchmark` measured of one command.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Measured {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// How much to measure.
struct Load {
    clients: usize,
    requests: usize,
}

/// Measures every setup with the binaries in `bin`.
pub fn run(bin: &Path, quick: bool) -> anyhow::Result<Vec<RedisPoint>> {
    let load = if quick {
        Load {
            clients: 6,
            requests: 600,
        }
    } else {
        Load {
            clients: 48,
            requests: 30_000,
        }
    };
    let mut points = Vec::new();
    for setup in RedisSetup::ALL {
        println!("bench: bringing up {}", setup.name());
        let cluster =
            deploy(setup, bin).with_context(|| format!("bringing up {}", setup.name()))?;
        let targets = match setup {
            RedisSetup::Hermes3 => cluster.addrs(),
            _ => vec![cluster.addr(1)],
        };
        let idle = benchmark(&targets[..1], 1, if quick { 100 } else { 2000 })?;
        let disk_sync_ms = super::disk::sync_ms(&std::env::temp_dir());
        let loaded = benchmark(&targets, load.clients, load.requests)?;
        for (test, measured) in &loaded {
            let idle_p50 = idle
                .iter()
                .find(|(t, _)| t == test)
                .map_or(0.0, |(_, m)| m.p50_ms);
            let point = RedisPoint {
                setup: setup.name().to_owned(),
                test: test.clone(),
                clients: load.clients,
                requests: load.requests,
                rps: measured.rps,
                p50_ms: measured.p50_ms,
                p99_ms: measured.p99_ms,
                idle_p50_ms: idle_p50,
                disk_sync_ms,
            };
            println!(
                "        {} {}: {:.0} replies/s with {} clients, p50 {:.3} ms (one client: {:.3} ms, \
                 disk sync {})",
                point.setup,
                point.test,
                point.rps,
                point.clients,
                point.p50_ms,
                point.idle_p50_ms,
                super::point::millis(disk_sync_ms)
            );
            points.push(point);
        }
    }
    Ok(points)
}

/// Brings `setup` up on a fresh lab; every node's Redis answers once it returns.
fn deploy(setup: RedisSetup, bin: &Path) -> anyhow::Result<Cluster> {
    let nodes = match setup {
        RedisSetup::Hermes3 | RedisSetup::Replicated3 => 3,
        _ => 1,
    };
    let args: &[&str] = match setup {
        RedisSetup::Passthrough => &["--protocol", "tcp", "--passthrough", "--insecure-peers"],
        _ => &["--protocol", "tcp"],
    };
    let lab = Lab::up(nodes).with_context(|| format!("creating a lab of {nodes} nodes"))?;
    let mut cluster = Cluster::new(lab, bin, App::Redis, args)?;
    match setup {
        RedisSetup::Direct => cluster.start_app(1)?,
        RedisSetup::Passthrough => {
            cluster.start_app(1)?;
            cluster.start_agent(1)?;
        }
        RedisSetup::Hermes1 | RedisSetup::Hermes3 => {
            cluster.start()?;
        }
        RedisSetup::Replicated3 => {
            cluster.start_app(1)?;
            let primary = cluster.lab.node(1).ip.to_string();
            cluster.app_args = vec!["--replicaof".into(), primary, PORT.to_string()];
            cluster.start_app(2)?;
            cluster.start_app(3)?;
            for id in 2..=3 {
                let node = cluster.lab.node(id);
                wait_until(&format!("node {id}'s Redis replicating"), || {
                    let info = redis_cli(node, &["INFO", "replication"]).ok()?;
                    info.contains("master_link_status:up").then_some(())
                })?;
            }
        }
    }
    for target in match setup {
        RedisSetup::Hermes3 => cluster.addrs(),
        _ => vec![cluster.addr(1)],
    } {
        wait_until(&format!("Redis answering at {target}"), || {
            benchmark(&[target], 1, 10).ok()
        })?;
    }
    Ok(cluster)
}

/// `redis-cli` against the Redis on `node`'s loopback.
fn redis_cli(node: &hermes_lab::Node, args: &[&str]) -> anyhow::Result<String> {
    let output = node
        .command("redis-cli")?
        .args(["-h", "127.0.0.1", "-p", &PORT.to_string()])
        .args(args)
        .output()
        .context("running redis-cli")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `redis-benchmark` against every target at once, `clients` and `requests` split between
/// them; per test: replies per second (summed), p50 and p99 in ms (the slowest target's).
fn benchmark(
    targets: &[SocketAddr],
    clients: usize,
    requests: usize,
) -> anyhow::Result<Vec<(String, Measured)>> {
    let share = targets.len();
    let children = targets
        .iter()
        .map(|target| {
            Command::new("redis-benchmark")
                .args([
                    "-h",
                    &target.ip().to_string(),
                    "-p",
                    &target.port().to_string(),
                ])
                .args(["-c", &(clients / share).max(1).to_string()])
                .args(["-n", &(requests / share).max(1).to_string()])
                .args(["-t", &TESTS.join(",").to_lowercase()])
                .args(["-d", &VALUE_BYTES.to_string()])
                .args(["-r", &KEYSPACE.to_string()])
                .arg("--csv")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .context("starting redis-benchmark")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut totals: Vec<(String, Measured)> = Vec::new();
    for child in children {
        let output = child
            .wait_with_output()
            .context("running redis-benchmark")?;
        if !output.status.success() {
            bail!(
                "redis-benchmark failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        for (test, m) in parse_csv(&String::from_utf8_lossy(&output.stdout))? {
            match totals.iter_mut().find(|(t, _)| *t == test) {
                Some((_, total)) => {
                    total.rps += m.rps;
                    total.p50_ms = total.p50_ms.max(m.p50_ms);
                    total.p99_ms = total.p99_ms.max(m.p99_ms);
                }
                None => totals.push((test, m)),
            }
        }
    }
    if totals.len() != TESTS.len() {
        bail!(
            "redis-benchmark reported {} tests, not {}",
            totals.len(),
            TESTS.len()
        );
    }
    Ok(totals)
}

/// `redis-benchmark --csv`: a header, then `"TEST","rps","avg","min","p50","p95","p99","max"`.
fn parse_csv(text: &str) -> anyhow::Result<Vec<(String, Measured)>> {
    text.lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let cells: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
            let number = |i: usize| -> anyhow::Result<f64> {
                cells
                    .get(i)
                    .and_then(|c| c.parse().ok())
                    .with_context(|| format!("redis-benchmark line {line:?}"))
            };
            let measured = Measured {
                rps: number(1)?,
                p50_ms: number(4)?,
                p99_ms: number(6)?,
            };
            Ok((cells[0].to_owned(), measured))
        })
        .collect()
}

/// The section of the summary: per command, each setup's throughput and latency, with ratios to
/// Redis alone and to Redis replicated by its own means.
pub fn render(points: &[RedisPoint], heading: &str) -> String {
    let mut out = String::new();
    let Some(first) = points.first() else {
        return out;
    };
    let _ = writeln!(
        out,
        "{heading} Raw TCP mode: Redis\n\nDebian's `redis-server` (in memory), measured with \
         `redis-benchmark` ({} clients, {} requests per command, {VALUE_BYTES}-byte values over \
         {KEYSPACE} keys; for redis-hermes-3 one `redis-benchmark` per node at once, a third of \
         the clients each, replies per second summed). redis-replicated-3 is Redis' own \
         replication (a primary and two replicas, asynchronous: a reply does not wait for the \
         replicas), clients on the primary. Latency with one client alone: the idle system's. Disk \
         sync: the median time of a 128-byte write and its fdatasync on the lab's disk, right \
         after the client alone.\n",
        first.clients, first.requests
    );
    let _ = writeln!(
        out,
        "| setup | command | replies/s | ÷ direct | ÷ replicated-3 | p50 (ms) | p99 (ms) | p50, one client (ms) | disk sync (ms) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let find = |setup: RedisSetup, test: &str| {
        points
            .iter()
            .find(|p| p.setup == setup.name() && p.test == test)
    };
    for setup in RedisSetup::ALL {
        for test in TESTS {
            let Some(point) = find(setup, test) else {
                continue;
            };
            let ratio = |base: Option<&RedisPoint>| {
                base.filter(|b| b.rps > 0.0)
                    .map_or("-".to_owned(), |b| format!("{:.2}", point.rps / b.rps))
            };
            let _ = writeln!(
                out,
                "| {} | {test} | {:.0} | {} | {} | {:.3} | {:.3} | {:.3} | {} |",
                point.setup,
                point.rps,
                ratio(find(RedisSetup::Direct, test)),
                ratio(find(RedisSetup::Replicated3, test)),
                point.p50_ms,
                point.p99_ms,
                point.idle_p50_ms,
                point
                    .disk_sync_ms
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.3}"))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"SET\",\"57142.86\",\"0.089\",\"0.032\",\"0.087\",\"0.127\",\"0.159\",\"2.447\"\n";
        assert_eq!(
            parse_csv(text).unwrap(),
            [(
                "SET".to_owned(),
                Measured {
                    rps: 57142.86,
                    p50_ms: 0.087,
                    p99_ms: 0.159
                }
            )]
        );
        assert!(parse_csv("header\n\"SET\",\"fast\"\n").is_err());
    }
}
