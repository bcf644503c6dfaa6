//! A Hermes cluster in a lab: per node an app and an agent, their files in a temporary
//! directory; processes can be killed (by PID) and restarted with the same data.
use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Lab, Node, Process,
    certs::{Authority, NodeFiles, write_private},
    client,
};

/// The app each node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// `hermes-logapp`, the paper's log server. It de-duplicates nothing unless the cluster's
    /// `app_args` add `--dedup`.
    Log,
    /// `hermes-http-echo` (from the tests), which answers with the request it received.
    HttpEcho,
    /// `tests/apps/append.py`: every POST appends its body as a line; no de-duplication.
    Append,
    /// `tests/apps/record.py`: appends every request, byte for byte as received, to its file.
    Record,
    /// `tests/apps/register.py`: one register (`PUT`/`GET /register`, `GET`/`PUT /state`).
    Register,
    /// `tests/apps/random.py`: `Append` whose every answer carries a per-process random number.
    Random,
    /// `tests/apps/sloppy.py`: `Append`, whose `POST /ping` answers without reading the body.
    Sloppy,
    /// Python's own `python3 -m http.server --protocol HTTP/1.1` (Python 3.11 or later), serving
    /// the files of a folder (`hello.txt` holds `hello`). It writes an answer's head and its body
    /// in two writes, with Nagle's algorithm on.
    Stock,
    /// Debian's `redis-server` (raw TCP mode), in memory only, its `DEBUG` commands allowed on
    /// loopback (for `DEBUG DIGEST`).
    Redis,
}

impl App {
    /// The Python script (run with `python3`) of an app from `tests/apps/`; `None` for the apps
    /// that are workspace binaries. The scripts serve one connection at a time.
    pub fn script(self) -> Option<PathBuf> {
        let name = match self {
            Self::Log | Self::HttpEcho | Self::Stock | Self::Redis => return None,
            Self::Append => "append.py",
            Self::Record => "record.py",
            Self::Register => "register.py",
            Self::Random => "random.py",
            Self::Sloppy => "sloppy.py",
        };
        let lab = Path::new(env!("CARGO_MANIFEST_DIR"));
        let workspace = lab.parent().expect("hermes-lab lies in the workspace");
        Some(workspace.join("tests").join("apps").join(name))
    }
}

/// `redis-server`'s arguments besides its port and files: every address, in memory only, its
/// `DEBUG` commands allowed on loopback (for `DEBUG DIGEST`).
pub const REDIS_ARGS: &[&str] = &[
    "--bind",
    "0.0.0.0",
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
    "--enable-debug-command",
    "local",
];
/// What `redis-server` prints once it serves.
pub const REDIS_READY: &str = "Ready to accept connections";

/// The protected port: where apps listen (on loopback) and clients connect (on node addresses).
pub const PORT: u16 = 8080;
pub const RAFT_PORT: u16 = 7000;
pub const ADMIN_PORT: u16 = 9180;
/// Set (to anything), clusters keep their directory (data directories, apps' files, and every
/// process's output with the time of each line) instead of deleting it, and say where it is.
pub const KEEP: &str = "HERMES_LAB_KEEP";
/// The `RUST_LOG` the lab's processes get, when set (otherwise theirs is removed).
pub const LOG_FILTER: &str = "HERMES_LAB_RUST_LOG";

fn keeping() -> bool {
    std::env::var_os(KEEP).is_some()
}

/// How long a process may take to come up.
pub const STARTUP: Duration = Duration::from_secs(20);
/// How long to wait for the cluster to get somewhere before giving up.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Cluster {
    pub lab: Lab,
    bin: PathBuf,
    dir: tempfile::TempDir,
    app: App,
    /// Agent flags besides the cluster's own.
    pub agent_args: Vec<String>,
    /// App flags besides the cluster's own (e.g. `--prepopulate 1000` or `--dedup` for the log
    /// app).
    pub app_args: Vec<String>,
    /// Nodes `1..=members` form the cluster; later ones join it (`--join`) when started.
    pub members: usize,
    apps: Vec<Option<Process>>,
    agents: Vec<Option<Process>>,
    /// Starts and kills agents instead of running them as processes in their nodes.
    launcher: Option<Box<dyn Launcher>>,
    /// Each node's TLS files for its peers (from a CA of the cluster's own).
    certs: Vec<NodeFiles>,
    /// The lab node (machine) each node runs on, by node id: its own unless [`Self::place`]d.
    hosts: Vec<usize>,
}

impl Cluster {
    /// A cluster on `lab`, with binaries from `bin`; nothing runs until started. Its peers
    /// authenticate each other with certificates from a CA made for it (unless `agent_args`
    /// has `--insecure-peers`).
    pub fn new(lab: Lab, bin: &Path, app: App, agent_args: &[&str]) -> io::Result<Self> {
        let nodes = lab.nodes.len();
        let mut dir = tempfile::tempdir()?;
        if keeping() {
            dir.disable_cleanup(true);
            eprintln!(
                "hermes-lab: {KEEP} is set: the cluster's files and its processes' output are \
                 kept in {}",
                dir.path().display()
            );
        }
        let ids: Vec<u64> = (1..=nodes as u64).collect();
        let certs = Authority::new("hermes lab")?.write(&dir.path().join("certs"), &ids)?;
        write_private(&dir.path().join("admin-token"), b"lab-admin-token\n")?;
        Ok(Self {
            lab,
            bin: bin.to_owned(),
            dir,
            app,
            agent_args: agent_args.iter().map(|s| s.to_string()).collect(),
            app_args: Vec::new(),
            members: nodes,
            apps: (0..nodes).map(|_| None).collect(),
            agents: (0..nodes).map(|_| None).collect(),
            launcher: None,
            certs,
            hosts: (1..=nodes).collect(),
        })
    }

    /// The file with the admin API's bearer token, which every agent and `ctl` use.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("admin-token")
    }

    /// Node `id`'s TLS files for its peers.
    pub fn certs(&self, id: usize) -> &NodeFiles {
        &self.certs[id - 1]
    }

    /// Starts the members' apps, then their agents, and waits for a leader.
    pub fn start(&mut self) -> io::Result<usize> {
        for id in 1..=self.members {
            self.start_app(id)?;
        }
        for id in 1..=self.members {
            self.start_agent(id)?;
        }
        self.wait_for_leader()
    }

    pub fn nodes(&self) -> usize {
        self.lab.nodes.len()
    }

    /// Where clients reach node `id`.
    pub fn addr(&self, id: usize) -> SocketAddr {
        SocketAddr::new(self.host(id).ip.into(), PORT)
    }

    /// From now on node `id` (its app and agent) runs on the machine of lab node `host`: a
    /// machine that lost its disk comes back as a new node, at the same address.
    pub fn place(&mut self, id: usize, host: usize) {
        self.hosts[id - 1] = host;
    }

    /// The machine node `id` runs on.
    fn host(&self, id: usize) -> &Node {
        self.lab.node(self.hosts[id - 1])
    }

    /// Where clients reach each node, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        (1..=self.nodes()).map(|id| self.addr(id)).collect()
    }

    /// The app's file on node `id` (all apps but `HttpEcho` keep their state in it).
    pub fn file_path(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("app-{id}.log"))
    }

    pub fn file(&self, id: usize) -> Vec<u8> {
        std::fs::read(self.file_path(id)).unwrap_or_default()
    }

    /// Every node's app file, in order.
    pub fn files(&self) -> Vec<Vec<u8>> {
        (1..=self.nodes()).map(|id| self.file(id)).collect()
    }

    /// For each node, in order, the requests its app got once more because its agent could not
    /// tell whether the app had them (`in_doubt` in `/status`; 0 for an agent that does not
    /// answer).
    pub fn in_doubt(&self) -> Vec<u64> {
        (1..=self.nodes())
            .map(|id| {
                self.status(id)
                    .and_then(|s| s["in_doubt"].as_u64())
                    .unwrap_or(0)
            })
            .collect()
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("data-{id}"))
    }

    /// Starts `binary` in `node` and waits until it prints `ready`.
    fn spawn(&self, node: &Node, binary: &str, args: &[&str], ready: &str) -> io::Result<Process> {
        let name = format!("{binary} on node {}", node.id);
        self.spawn_program(node, &self.bin.join(binary), name, args, ready)
    }

    /// Starts `program` in `node`, calling it `name`, and waits until it prints `ready`.
    fn spawn_program(
        &self,
        node: &Node,
        program: &Path,
        name: String,
        args: &[&str],
        ready: &str,
    ) -> io::Result<Process> {
        let mut command = node.command(program)?;
        // The agent's own default log levels (a cluster may be measured), unless asked.
        command.args(args).env_remove("RUST_LOG");
        if let Ok(filter) = std::env::var(LOG_FILTER) {
            command.env("RUST_LOG", filter);
        }
        let mut process = Process::spawn(&name, command)?;
        if keeping() {
            process.log_to(
                &self
                    .dir
                    .path()
                    .join(format!("{}.log", name.replace(' ', "-"))),
            )?;
        }
        process.wait_for(ready, STARTUP)?;
        Ok(process)
    }

    pub fn start_app(&mut self, id: usize) -> io::Result<()> {
        let node = self.host(id);
        // On every address: the agent reaches it from its delivery address, not loopback.
        let listen = format!("0.0.0.0:{PORT}");
        let file = self.file_path(id);
        let file = file.to_str().expect("UTF-8 path");
        let script = self.app.script();
        let dir = self.dir.path().to_str().expect("UTF-8 path").to_owned();
        let port = PORT.to_string();
        let dump = format!("dump-{id}.rdb");
        let www = self.dir.path().join(format!("www-{id}"));
        let www = www.to_str().expect("UTF-8 path").to_owned();
        let mut ready = "listening";
        let (program, mut args) = match self.app {
            App::Log => (
                self.bin.join("hermes-logapp"),
                vec!["--listen", &listen, "--file", file],
            ),
            App::HttpEcho => (self.bin.join("hermes-http-echo"), vec![listen.as_str()]),
            App::Append | App::Record | App::Register | App::Random | App::Sloppy => {
                let script = script.as_deref().expect("the app's script");
                let script = script.to_str().expect("UTF-8 path");
                let args = vec![script, "--listen", &listen, "--file", file];
                (PathBuf::from("python3"), args)
            }
            App::Stock => {
                std::fs::create_dir_all(&www)?;
                std::fs::write(Path::new(&www).join("hello.txt"), b"hello\n")?;
                ready = "Serving HTTP";
                let args = vec![
                    "-u",
                    "-m",
                    "http.server",
                    "--protocol",
                    "HTTP/1.1",
                    "--bind",
                    "0.0.0.0",
                    "--directory",
                    &www,
                    &port,
                ];
                (PathBuf::from("python3"), args)
            }
            App::Redis => {
                ready = REDIS_READY;
                let mut args = REDIS_ARGS.to_vec();
                args.extend(["--port", &port, "--dir", &dir, "--dbfilename", &dump]);
                (PathBuf::from("redis-server"), args)
            }
        };
        args.extend(self.app_args.iter().map(String::as_str));
        let shown = script.as_deref().unwrap_or(&program);
        let name = format!(
            "{} on node {id}",
            shown.file_name().unwrap_or_default().display()
        );
        let app = self.spawn_program(node, &program, name, &args, ready)?;
        self.apps[id - 1] = Some(app);
        Ok(())
    }

    /// kill -9 of node `id`'s app.
    pub fn kill_app(&mut self, id: usize) -> io::Result<()> {
        kill(&mut self.apps[id - 1])
    }

    /// Where node `id`'s peers reach it.
    pub fn raft_addr(&self, id: usize) -> String {
        format!("{}:{RAFT_PORT}", self.host(id).ip)
    }

    /// The `--peers` value for node `id`: the founding members, and itself.
    pub fn peers(&self, id: usize) -> String {
        let peers: Vec<String> = (1..=self.members.max(id))
            .filter(|n| *n <= self.members || *n == id)
            .map(|n| format!("{n}={}", self.raft_addr(n)))
            .collect();
        peers.join(",")
    }

    /// From now on, agents are started and killed by `launcher` (e.g. as containers).
    pub fn set_launcher(&mut self, launcher: impl Launcher + 'static) {
        self.launcher = Some(Box::new(launcher));
    }

    pub fn start_agent(&mut self, id: usize) -> io::Result<()> {
        if let Some(mut launcher) = self.launcher.take() {
            let agent = launcher.start(self, id);
            self.launcher = Some(launcher);
            self.agents[id - 1] = Some(agent?);
            return Ok(());
        }
        let data_dir = self.data_dir(id);
        let mut args = vec![
            "--port".to_owned(),
            PORT.to_string(),
            "--node-id".into(),
            id.to_string(),
            "--peers".into(),
            self.peers(id),
            "--data-dir".into(),
            data_dir.to_str().expect("UTF-8 path").to_owned(),
        ];
        if id > self.members {
            args.push("--join".into());
        }
        if !self.agent_args.iter().any(|a| a == "--insecure-peers") {
            args.extend(self.certs(id).args());
        }
        args.push("--admin-token-file".into());
        args.push(self.token_file().to_str().expect("UTF-8 path").to_owned());
        args.extend(self.agent_args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = self.spawn(self.host(id), "hermes-agent", &args, "steering attached")?;
        self.agents[id - 1] = Some(agent);
        Ok(())
    }

    /// kill -9 of node `id`'s agent; its app keeps running.
    pub fn kill_agent(&mut self, id: usize) -> io::Result<()> {
        if let Some(launcher) = &mut self.launcher
            && self.agents[id - 1].is_some()
        {
            launcher.kill(id)?;
        }
        kill(&mut self.agents[id - 1])
    }

    /// SIGSTOP (`frozen`) or SIGCONT to node `id`'s agent and app, as when its machine stalls.
    pub fn freeze(&mut self, id: usize, frozen: bool) -> io::Result<()> {
        use nix::sys::signal::Signal;
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        for process in [&self.agents[id - 1], &self.apps[id - 1]]
            .into_iter()
            .flatten()
        {
            process.signal(signal)?;
        }
        Ok(())
    }

    /// SIGTERM to node `id`'s agent (a planned stop), then waits for it to exit, at most
    /// `timeout`; the slot is left empty. Its exit status, and what it printed.
    pub fn stop_agent(
        &mut self,
        id: usize,
        timeout: Duration,
    ) -> io::Result<(ExitStatus, Vec<String>)> {
        let agent = self.agents[id - 1]
            .as_mut()
            .ok_or_else(|| io::Error::other(format!("node {id}'s agent is not running")))?;
        agent.signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = agent.wait(timeout)?;
        let output = agent.output();
        self.agents[id - 1] = None;
        Ok((status, output))
    }

    pub fn agent(&mut self, id: usize) -> Option<&mut Process> {
        self.agents[id - 1].as_mut()
    }

    pub fn app(&mut self, id: usize) -> Option<&mut Process> {
        self.apps[id - 1].as_mut()
    }

    pub fn is_running(&self, id: usize) -> bool {
        self.agents[id - 1].is_some()
    }

    /// Runs `hermes-agent ctl ARGS` inside node `id` against its admin API; its output, or an
    /// error with it.
    pub fn ctl(&self, id: usize, args: &[&str]) -> io::Result<String> {
        let token = self.token_file();
        let token = token.to_string_lossy();
        let output = self.ctl_as_is(id, &[&["--admin-token-file", &token], args].concat())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            Ok(text)
        } else {
            Err(io::Error::other(format!("ctl {args:?} failed: {text}")))
        }
    }

    /// Runs `hermes-agent ctl ARGS` inside node `id`, without the token unless `args` give it.
    pub fn ctl_as_is(&self, id: usize, args: &[&str]) -> io::Result<std::process::Output> {
        self.host(id)
            .command(self.bin.join("hermes-agent"))?
            .arg("ctl")
            .args(args)
            .output()
    }

    /// `GET /status` of node `id`'s admin API; `None` if it does not answer.
    pub fn status(&self, id: usize) -> Option<Value> {
        let body = self.admin(id, "/status")?.body;
        serde_json::from_slice(&body).ok()
    }

    /// A `GET` on node `id`'s admin API (loopback inside the node).
    pub fn admin(&self, id: usize, path: &str) -> Option<client::Response> {
        let path = path.to_owned();
        self.host(id)
            .run_inside(move || client::get(SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)), &path))
            .ok()
    }

    /// The leader, if the running agents agree on one.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<usize> = (1..=self.nodes())
            .filter(|id| self.is_running(*id))
            .collect();
        self.leader_among(&running)
    }

    /// The leader, if these nodes agree on one.
    pub fn leader_among(&self, nodes: &[usize]) -> Option<usize> {
        let leaders: Vec<Option<u64>> = nodes
            .iter()
            .map(|id| self.status(*id).and_then(|s| s["leader_id"].as_u64()))
            .collect();
        let first = (*leaders.first()?)?;
        leaders
            .iter()
            .all(|l| *l == Some(first))
            .then_some(first as usize)
    }

    /// Waits until node `id`'s agent takes clients (`/readyz` answers 200).
    pub fn wait_ready(&self, id: usize) -> io::Result<()> {
        wait_until(&format!("node {id} to be ready"), || {
            (self.admin(id, "/readyz")?.status == 200).then_some(())
        })
    }

    pub fn wait_for_leader(&self) -> io::Result<usize> {
        wait_until("a leader all running agents agree on", || self.leader())
    }

    /// Waits until every running agent has applied all it has committed, and they agree;
    /// returns that index.
    pub fn wait_converged(&self) -> io::Result<u64> {
        wait_until("running agents applied the same, complete log", || {
            self.converged(false).map(|(applied, _)| applied)
        })
    }

    /// Waits until every running agent that is not fenced has applied all it has committed,
    /// and they agree; returns the fenced ones (which apply nothing).
    pub fn wait_settled(&self) -> io::Result<Vec<usize>> {
        wait_until(
            "the running agents not fenced to apply the same, complete log",
            || self.converged(true).map(|(_, fenced)| fenced),
        )
    }

    /// The index the running agents (but the fenced ones, if `but_fenced`) all applied, having
    /// applied all they committed, and the fenced ones; `None` while that is not so.
    fn converged(&self, but_fenced: bool) -> Option<(u64, Vec<usize>)> {
        let mut applied = Vec::new();
        let mut fenced = Vec::new();
        for id in (1..=self.nodes()).filter(|id| self.is_running(*id)) {
            let status = self.status(id)?;
            if but_fenced && status["fenced"] == true {
                fenced.push(id);
                continue;
            }
            let (commit, done) = (
                status["commit_index"].as_u64()?,
                status["applied_index"].as_u64()?,
            );
            if done < commit {
                return None;
            }
            applied.push(done);
        }
        let agreed = applied.windows(2).all(|w| w[0] == w[1]);
        agreed.then(|| (applied.first().copied().unwrap_or(0), fenced))
    }
}

/// Runs a cluster's agents some other way than as processes in their nodes: in containers, say.
pub trait Launcher: Send + Sync {
    /// Starts node `id`'s agent in `cluster` and returns once it steers, with the process whose
    /// output is the agent's.
    fn start(&mut self, cluster: &Cluster, id: usize) -> io::Result<Process>;
    /// Kills node `id`'s agent at once, as kill -9 does (its process is reaped afterwards).
    fn kill(&mut self, id: usize) -> io::Result<()>;
}

/// Polls `check` until it gives a value; an error naming `what` after [`PATIENCE`].
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> io::Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("gave up waiting for {what}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kill -9 of the process in `slot`, if any; the slot is left empty.
fn kill(slot: &mut Option<Process>) -> io::Result<()> {
    if let Some(mut process) = slot.take() {
        process.kill()?;
    }
    Ok(())
}
