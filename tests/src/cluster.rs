//! A Hermes cluster in a lab: per node an app and an agent, with their files in a temporary
//! directory; processes can be killed and restarted by PID.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Lab, Process, STARTUP, client, lab, spawn};

/// The app each node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// `hermes-logapp`, the paper's log server.
    Log,
    /// `hermes-http-echo`, which answers with the request it received.
    HttpEcho,
}

pub const PORT: u16 = 8080;
pub const RAFT_PORT: u16 = 7000;
/// How long a test waits for the cluster to get somewhere before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Cluster {
    pub lab: Lab,
    dir: tempfile::TempDir,
    app: App,
    agent_args: Vec<String>,
    apps: Vec<Option<Process>>,
    agents: Vec<Option<Process>>,
}

impl Cluster {
    /// A lab of `nodes`, each running `app` and an agent with `agent_args` besides the cluster's.
    /// `None` when privileged tests are skipped.
    pub fn start(nodes: usize, app: App, agent_args: &[&str]) -> Option<Self> {
        let lab = lab(nodes)?;
        let mut cluster = Self {
            lab,
            dir: tempfile::tempdir().expect("temporary directory"),
            app,
            agent_args: agent_args.iter().map(|s| s.to_string()).collect(),
            apps: (0..nodes).map(|_| None).collect(),
            agents: (0..nodes).map(|_| None).collect(),
        };
        for id in 1..=nodes {
            cluster.start_app(id);
        }
        for id in 1..=nodes {
            cluster.start_agent(id);
        }
        cluster.wait_for_leader();
        Some(cluster)
    }

    pub fn nodes(&self) -> usize {
        self.lab.nodes.len()
    }

    /// Where clients reach node `id`.
    pub fn addr(&self, id: usize) -> SocketAddr {
        SocketAddr::new(self.lab.node(id).ip.into(), PORT)
    }

    /// The log app's file on node `id`.
    pub fn file_path(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("app-{id}.log"))
    }

    pub fn file(&self, id: usize) -> Vec<u8> {
        std::fs::read(self.file_path(id)).unwrap_or_default()
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("data-{id}"))
    }

    pub fn start_app(&mut self, id: usize) {
        let node = self.lab.node(id);
        let listen = format!("127.0.0.1:{PORT}");
        let mut app = match self.app {
            App::Log => {
                let file = self.file_path(id);
                spawn(
                    node,
                    "hermes-logapp",
                    &["--listen", &listen, "--file", file.to_str().unwrap()],
                )
            }
            App::HttpEcho => spawn(node, "hermes-http-echo", &[&listen]),
        };
        app.wait_for("listening", STARTUP).expect("app up");
        self.apps[id - 1] = Some(app);
    }

    pub fn kill_app(&mut self, id: usize) {
        if let Some(mut app) = self.apps[id - 1].take() {
            app.kill().expect("kill app");
        }
    }

    pub fn start_agent(&mut self, id: usize) {
        let peers: Vec<String> = self
            .lab
            .nodes
            .iter()
            .map(|n| format!("{}={}:{RAFT_PORT}", n.id, n.ip))
            .collect();
        let data_dir = self.data_dir(id);
        let mut args = vec![
            "--port".to_owned(),
            PORT.to_string(),
            "--node-id".into(),
            id.to_string(),
            "--peers".into(),
            peers.join(","),
            "--data-dir".into(),
            data_dir.to_str().unwrap().to_owned(),
        ];
        args.extend(self.agent_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = spawn(self.lab.node(id), "hermes-agent", &args);
        agent
            .wait_for("steering attached", STARTUP)
            .expect("agent up");
        self.agents[id - 1] = Some(agent);
    }

    /// kill -9 of node `id`'s agent; its app keeps running.
    pub fn kill_agent(&mut self, id: usize) {
        if let Some(mut agent) = self.agents[id - 1].take() {
            agent.kill().expect("kill agent");
        }
    }

    pub fn agent(&mut self, id: usize) -> Option<&mut Process> {
        self.agents[id - 1].as_mut()
    }

    /// `GET /status` of node `id`'s admin API; `None` if it does not answer.
    pub fn status(&self, id: usize) -> Option<Value> {
        let body = self.admin(id, "/status")?.body;
        serde_json::from_slice(&body).ok()
    }

    /// A `GET` on node `id`'s admin API (loopback inside the node).
    pub fn admin(&self, id: usize, path: &str) -> Option<client::Response> {
        let node = self.lab.node(id);
        let path = path.to_owned();
        node.run_inside(move || client::get(SocketAddr::from(([127, 0, 0, 1], 9180)), &path))
            .ok()
    }

    /// The leader, as the running agents agree on it.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<Option<u64>> = (1..=self.nodes())
            .filter(|id| self.agents[id - 1].is_some())
            .map(|id| self.status(id).and_then(|s| s["leader_id"].as_u64()))
            .collect();
        let first = (*leaders.first()?)?;
        leaders
            .iter()
            .all(|l| *l == Some(first))
            .then_some(first as usize)
    }

    pub fn wait_for_leader(&self) -> usize {
        eventually("a leader all running agents agree on", || self.leader())
    }

    /// Waits until every running agent has applied all it has committed, and they agree.
    pub fn wait_converged(&self) -> u64 {
        eventually("running agents applied the same, complete log", || {
            let mut applied = Vec::new();
            for id in (1..=self.nodes()).filter(|id| self.agents[id - 1].is_some()) {
                let status = self.status(id)?;
                let (commit, done) = (
                    status["commit_index"].as_u64()?,
                    status["applied_index"].as_u64()?,
                );
                if done < commit {
                    return None;
                }
                applied.push(done);
            }
            applied.windows(2).all(|w| w[0] == w[1]).then(|| applied[0])
        })
    }
}

/// Polls `check` until it gives a value; panics after [`PATIENCE`] naming `what`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clients posting unique bodies to `POST /insert` in a loop, spread over nodes.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Sent>>,
}

/// What the clients sent, and which of it the cluster acknowledged (201).
#[derive(Default, Debug)]
pub struct Sent {
    pub all: Vec<Vec<u8>>,
    pub acked: Vec<Vec<u8>>,
    /// Failures by kind, e.g. "503", "connection refused".
    pub failures: std::collections::BTreeMap<String, usize>,
}

impl Load {
    /// `clients` threads; client `c` talks to `addrs[c % addrs.len()]`.
    pub fn start(addrs: &[SocketAddr], clients: usize) -> Self {
        use std::sync::{Arc, atomic::Ordering};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|c| {
                let (stop, acked, addr) = (
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    addrs[c % addrs.len()],
                );
                std::thread::spawn(move || {
                    let mut sent = Sent::default();
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let body = format!("client{c}-request{n}").into_bytes();
                        sent.all.push(body.clone());
                        match client::post(addr, "/insert", &body) {
                            Ok(response) if response.status == 201 => {
                                sent.acked.push(body);
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(response) => {
                                *sent
                                    .failures
                                    .entry(response.status.to_string())
                                    .or_default() += 1
                            }
                            Err(error) => {
                                *sent.failures.entry(error.kind().to_string()).or_default() += 1;
                                // A refused connection fails at once: do not spin.
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                    sent
                })
            })
            .collect();
        Self {
            stop,
            acked,
            threads,
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` further requests have been acknowledged.
    pub fn wait_for_acks(&self, more: usize) {
        let target = self.acked() + more;
        eventually(&format!("{target} acknowledged requests"), || {
            (self.acked() >= target).then_some(())
        });
    }

    pub fn stop(self) -> Sent {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = Sent::default();
        for thread in self.threads {
            let sent = thread.join().expect("client thread");
            total.all.extend(sent.all);
            total.acked.extend(sent.acked);
            for (kind, count) in sent.failures {
                *total.failures.entry(kind).or_default() += count;
            }
        }
        total
    }
}

/// Checks the replicas' files against what clients sent: all identical, no line twice, no line
/// nobody sent, every acknowledged body present. Returns the number of lines.
pub fn assert_replicas_consistent(cluster: &Cluster, sent: &Sent) -> usize {
    use std::collections::HashSet;
    let first = cluster.file(1);
    for id in 2..=cluster.nodes() {
        assert!(
            cluster.file(id) == first,
            "the files of node 1 and node {id} differ"
        );
    }
    let lines: Vec<&[u8]> = first
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut seen = HashSet::new();
    let all: HashSet<&[u8]> = sent.all.iter().map(Vec::as_slice).collect();
    for line in &lines {
        assert!(
            seen.insert(*line),
            "{} appears twice",
            String::from_utf8_lossy(line)
        );
        assert!(
            all.contains(line),
            "{} was never sent",
            String::from_utf8_lossy(line)
        );
    }
    for body in &sent.acked {
        assert!(
            seen.contains(body.as_slice()),
            "acknowledged {} is missing",
            String::from_utf8_lossy(body)
        );
    }
    lines.len()
}
