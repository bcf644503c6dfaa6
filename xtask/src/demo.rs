//! `cargo xtask demo`: a replicated log app on three lab nodes, a leader crash, and recovery;
//! then raw TCP mode with Redis; narrated for a newcomer.
use std::{path::Path, process::Command, time::Instant};

use anyhow::Context as _;
use hermes_lab::{
    Lab, client,
    cluster::{App, Cluster, wait_until},
};

pub fn run(bin: &Path) -> anyhow::Result<()> {
    step("1. A lab: three network namespaces as hosts, on a bridge");
    let lab = Lab::up(3)?;
    for node in &lab.nodes {
        println!("   node {}: {}", node.id, node.ip);
    }
    let mut cluster = Cluster::new(lab, bin, App::Log, &[])?;

    step(
        "2. On each node: the unchanged log app on port 8080, and a Hermes agent steering that port",
    );
    let leader = cluster.start()?;
    println!("   the agents formed a Raft cluster; leader: node {leader}");

    step("3. 300 concurrent POST /insert from 30 clients, to all three nodes' port 8080");
    let started = Instant::now();
    let statuses = post_concurrently(&cluster, &[1, 2, 3], 30, 10, "first");
    println!("   answers: {statuses} in {:.2?}", started.elapsed());
    cluster.wait_converged()?;
    table(&cluster)?;

    step(&format!(
        "4. kill -9 the leader, node {leader}: its agent and its app"
    ));
    let killed = Instant::now();
    cluster.kill_agent(leader)?;
    cluster.kill_app(leader)?;
    let survivors: Vec<usize> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = wait_until("a new leader", || cluster.leader().filter(|l| *l != leader))?;
    let elected = killed.elapsed();
    // Failover as a client sees it: until a write to a survivor is acknowledged.
    wait_until("a write to a survivor", || {
        let answer = client::post(cluster.addr(survivors[0]), "/insert", b"failover-probe").ok()?;
        (answer.status == 201).then_some(())
    })?;
    println!(
        "   node {new_leader} leads after {elected:.2?}; the first write after the crash (a line of its own) was acknowledged after {:.2?}",
        killed.elapsed()
    );
    println!("   clients of node {leader} get refused connections: its port fails closed");

    step("5. 100 more POSTs, to the survivors");
    let statuses = post_concurrently(&cluster, &survivors, 10, 10, "second");
    println!("   answers: {statuses}");
    cluster.wait_converged()?;
    table(&cluster)?;

    step(&format!(
        "6. Restart node {leader} (app and agent, same files): it catches up from the log"
    ));
    cluster.start_app(leader)?;
    cluster.start_agent(leader)?;
    cluster.wait_converged()?;
    table(&cluster)?;
    let files = cluster.files();
    anyhow::ensure!(
        files.windows(2).all(|w| w[0] == w[1]),
        "the replicas differ"
    );
    println!(
        "   all three files are identical: every replica saw the same requests in the same order"
    );

    step("7. Tearing the lab down");
    drop(cluster);
    tcp(bin)?;
    println!("\n   done");
    Ok(())
}

/// Debian packages the demo needs besides the build's: Redis, for raw TCP mode.
pub const PACKAGES: &[&str] = &["redis-server", "redis-tools"];

/// Raw TCP mode: Redis on three nodes, clients on all of them, an agent killed under load.
fn tcp(bin: &Path) -> anyhow::Result<()> {
    step(
        "8. Raw TCP mode: an unchanged redis-server on three new nodes, agents with --protocol tcp",
    );
    let lab = Lab::up(3)?;
    let mut cluster = Cluster::new(lab, bin, App::Redis, &["--protocol", "tcp"])?;
    let leader = cluster.start()?;
    println!("   leader: node {leader}; every connection's bytes are ordered, not parsed");

    step("9. redis-benchmark on all three nodes at once: INCR one counter, LPUSH one list");
    let load = |cluster: &Cluster, nodes: &[usize]| -> anyhow::Result<()> {
        let children = nodes
            .iter()
            .map(|id| {
                Command::new("redis-benchmark")
                    .args(["-h", &cluster.lab.node(*id).ip.to_string(), "-p", "8080"])
                    .args(["-c", "10", "-n", "2000", "-t", "incr,lpush", "-q"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .context("starting redis-benchmark")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (id, child) in nodes.iter().zip(children) {
            let output = child.wait_with_output()?;
            anyhow::ensure!(output.status.success(), "redis-benchmark failed");
            let text = String::from_utf8_lossy(&output.stdout);
            for line in text.lines().filter_map(|l| l.rsplit('\r').next()) {
                if !line.trim().is_empty() {
                    println!("   node {id}: {}", line.trim());
                }
            }
        }
        Ok(())
    };
    load(&cluster, &[1, 2, 3])?;
    cluster.wait_converged()?;
    redis_table(&cluster)?;

    let follower = (1..=3).find(|id| *id != leader).unwrap_or(1);
    step(&format!(
        "10. A rolling restart of node {follower}'s agent (SIGTERM, then started again): it \
         abandons the connections still open, on every replica, before it stops"
    ));
    let (stopped, _) = cluster.stop_agent(follower, std::time::Duration::from_secs(60))?;
    anyhow::ensure!(stopped.success(), "node {follower}'s agent: {stopped}");
    cluster.start_agent(follower)?;
    load(&cluster, &[1, 2, 3])?;
    cluster.wait_converged()?;
    redis_table(&cluster)?;
    let digests = redis_digests(&cluster)?;
    anyhow::ensure!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "the Redis replicas differ"
    );
    println!("   Redis' own DEBUG DIGEST is the same on all three");

    step(&format!(
        "11. The same load, with node {follower}'s agent killed (kill -9) and restarted meanwhile"
    ));
    let survivors: Vec<usize> = (1..=3).filter(|id| *id != follower).collect();
    let pid = cluster
        .agent(follower)
        .map(|agent| agent.pid().to_string())
        .context("the follower's agent")?;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let loading = scope.spawn(|| load(&cluster, &survivors));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let killed = Command::new("kill").args(["-9", &pid]).status()?;
        anyhow::ensure!(killed.success(), "kill -9 {pid} failed");
        println!("   killed node {follower}'s agent");
        loading.join().expect("load thread")
    })?;
    // Reaps the killed agent.
    cluster.kill_agent(follower)?;
    cluster.start_agent(follower)?;
    // The restarted replica has applied everything, or fenced itself.
    let fenced = cluster.wait_settled()?.contains(&follower).then(|| {
        let status = cluster.status(follower).unwrap_or_default();
        status["fenced_because"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    redis_table(&cluster)?;
    let digests = redis_digests(&cluster)?;
    let (a, b) = (survivors[0] - 1, survivors[1] - 1);
    anyhow::ensure!(
        digests[a] == digests[b],
        "the replicas that kept going differ"
    );
    match fenced {
        None => {
            anyhow::ensure!(
                digests[follower - 1] == digests[a],
                "node {follower} differs without fencing itself"
            );
            println!(
                "   Redis' own DEBUG DIGEST is the same on all three: node {follower} missed \
                 nothing, and got nothing twice"
            );
        }
        Some(why) => println!(
            "   nodes {survivors:?} are identical and go on. Node {follower} fenced itself (not \
             ready, applying nothing): {}\n   A replica never resumes a connection in the \
             middle of its stream; a killed agent under load usually costs its replica, which is \
             rebuilt by rejoining as a new node (docs/tcp.md). Use SIGTERM for restarts.",
            why
        ),
    }
    step("12. Tearing the lab down");
    drop(cluster);
    Ok(())
}

/// What each node's Redis holds, as `redis-cli` on its loopback (not steered) sees it.
fn redis_table(cluster: &Cluster) -> anyhow::Result<()> {
    println!("   node  counter  list length  DEBUG DIGEST");
    for id in 1..=cluster.nodes() {
        let counter = redis_cli(cluster, id, &["GET", "counter:__rand_int__"])?;
        let length = redis_cli(cluster, id, &["LLEN", "mylist"])?;
        let digest = redis_cli(cluster, id, &["DEBUG", "DIGEST"])?;
        println!("   {id:>4}  {counter:>7}  {length:>11}  {digest}");
    }
    Ok(())
}

/// Each node's Redis `DEBUG DIGEST`, in node order.
fn redis_digests(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    (1..=cluster.nodes())
        .map(|id| redis_cli(cluster, id, &["DEBUG", "DIGEST"]))
        .collect()
}

fn redis_cli(cluster: &Cluster, id: usize, args: &[&str]) -> anyhow::Result<String> {
    let output = cluster
        .lab
        .node(id)
        .command("redis-cli")?
        .args(["-h", "127.0.0.1", "-p", "8080"])
        .args(args)
        .output()
        .context("running redis-cli")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// `clients` threads each post `requests` bodies to the given nodes; returns a summary of the
/// statuses, e.g. "300 x 201".
fn post_concurrently(
    cluster: &Cluster,
    nodes: &[usize],
    clients: usize,
    requests: usize,
    tag: &str,
) -> String {
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addr = cluster.addr(nodes[c % nodes.len()]);
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                (0..requests)
                    .map(|r| {
                        let body = format!("{tag}-client{c}-request{r}");
                        client::post(addr, "/insert", body.as_bytes())
                            .map_or_else(|e| e.to_string(), |r| r.status.to_string())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for thread in threads {
        for status in thread.join().expect("client thread") {
            *counts.entry(status).or_default() += 1;
        }
    }
    counts
        .iter()
        .map(|(status, n)| format!("{n} x {status}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(cluster: &Cluster) -> anyhow::Result<()> {
    println!("   node  running  lines  sha256 of the app's file");
    for id in 1..=cluster.nodes() {
        let path = cluster.file_path(id);
        let lines = cluster.file(id).iter().filter(|&&b| b == b'\n').count();
        let digest = Command::new("sha256sum")
            .arg(&path)
            .output()
            .context("sha256sum")?;
        let digest = String::from_utf8_lossy(&digest.stdout);
        let digest = digest.split_whitespace().next().unwrap_or("?");
        let running = if cluster.is_running(id) { "yes" } else { "no" };
        println!(
            "   {id:>4}  {running:>7}  {lines:>5}  {}",
            &digest[..16.min(digest.len())]
        );
    }
    Ok(())
}
