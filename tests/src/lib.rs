//! Helpers shared by the integration tests: a lab per test, the agent and the apps inside it,
//! and whole clusters.

pub mod daemonset;
pub mod podman;
pub mod pods;
pub mod resp;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
};

pub use hermes_lab::{
    Lab, Node, Process, client,
    cluster::{App, Cluster, STARTUP, wait_until},
    load::{Load, Sent, check_replicas},
};

/// Runs `hermes-agent ARGS` here (an offline tool: `recover`, `restore`); whether it
/// succeeded, and what it printed (stdout, then stderr).
pub fn agent_tool(args: &[&str]) -> (bool, String) {
    let bin = hermes_lab::binary("hermes-agent").expect("binaries");
    let output = std::process::Command::new(bin)
        .args(args)
        .output()
        .expect("hermes-agent runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Snapshot hooks for the apps that serve their state at `GET/PUT /state` (the log app, the
/// register app), reached on loopback inside the node (not steered).
pub const TAKE: &str = r#"curl -sf -o "$HERMES_SNAPSHOT" http://127.0.0.1:8080/state"#;
pub const RESTORE: &str =
    r#"curl -sf -X PUT --data-binary @"$HERMES_SNAPSHOT" http://127.0.0.1:8080/state"#;

/// The agent's flags for snapshots with [`TAKE`] and [`RESTORE`]: one every `every` entries,
/// keeping `keep` entries behind it.
pub fn snapshot_args(every: &'static str, keep: &'static str) -> [&'static str; 8] {
    [
        "--snapshot-every",
        every,
        "--keep-log",
        keep,
        "--snapshot-cmd",
        TAKE,
        "--restore-cmd",
        RESTORE,
    ]
}

/// A started cluster of `nodes` running `app`, with binaries built next to the tests.
pub fn cluster(nodes: usize, app: App, agent_args: &[&str]) -> Cluster {
    let bin = hermes_lab::binary("hermes-agent").expect("binaries");
    let mut cluster =
        Cluster::new(lab(nodes), bin.parent().unwrap(), app, agent_args).expect("cluster");
    cluster.start().expect("cluster up");
    cluster
}

/// A started cluster of three members running `app` on a lab of `nodes`: the others are free to
/// join it, or to take a member's place.
pub fn three_of(nodes: usize, app: App, agent_args: &[&str]) -> Cluster {
    let bin = hermes_lab::binary("hermes-agent").expect("binaries");
    let mut cluster =
        Cluster::new(lab(nodes), bin.parent().unwrap(), app, agent_args).expect("cluster");
    cluster.members = 3;
    cluster.start().expect("cluster up");
    cluster
}

/// A lab of `nodes` for one test. Without root the test fails: it never passes unrun.
pub fn lab(nodes: usize) -> Lab {
    Lab::up(nodes).expect("cannot create the lab (run as root; `cargo xtask test` does)")
}

/// Starts a workspace binary inside `node`.
pub fn spawn(node: &Node, binary: &str, args: &[&str]) -> Process {
    let path = hermes_lab::binary(binary).expect("binary");
    let mut command = node.command(path).expect("command inside the node");
    command
        .args(args)
        .env("RUST_LOG", "info,openraft=warn,hermes_agent=debug");
    Process::spawn(format!("{binary} on node {}", node.id), command).expect("spawn")
}

/// Starts an agent in `node` and waits until it steers.
pub fn agent(node: &Node, args: &[&str]) -> Process {
    let mut agent = spawn(node, "hermes-agent", args);
    agent
        .wait_for("steering attached", STARTUP)
        .expect("agent up");
    agent
}

/// Starts `hermes-echo` in `node`, named `name`, listening on `addrs`.
pub fn echo(node: &Node, name: &str, addrs: &[&str]) -> Process {
    let mut args = vec![name];
    args.extend_from_slice(addrs);
    let mut app = spawn(node, "hermes-echo", &args);
    app.wait_for("listening", STARTUP).expect("echo app up");
    app
}

/// What `hermes-echo` said about a connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Greeting {
    pub app: String,
    pub peer: SocketAddr,
    /// Connections the app had accepted, this one included.
    pub conn: u64,
}

/// Reads the greeting line `hermes-echo` sends first.
pub fn greeting(stream: &TcpStream) -> Greeting {
    let mut line = String::new();
    // One byte at a time, so that nothing after the line is consumed.
    let mut reader = BufReader::with_capacity(1, stream);
    reader.read_line(&mut line).expect("greeting");
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in greeting {line:?}"))
            .to_owned()
    };
    Greeting {
        app: field("app"),
        peer: field("peer").parse().expect("peer address"),
        conn: field("conn").parse().expect("connection count"),
    }
}

/// Checks the OpenMetrics text format line by line: `# TYPE/HELP/UNIT` comments, samples of
/// `name{labels} value`, each family's `# TYPE` once, and `# EOF` last.
pub fn check_exposition(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let mut types = std::collections::BTreeSet::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap();
            assert!(["TYPE", "HELP", "UNIT"].contains(&kind), "{line}");
            if kind == "TYPE" {
                assert!(types.insert(comment.to_owned()), "a family twice: {line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
}
