//! `etcd-3`: Debian's etcd (3.4), three members, clients on every member through the JSON
//! gateway. The reference for what a replicated, durable store costs on this machine.
use std::net::SocketAddr;

use anyhow::Context as _;
use hermes_lab::{Lab, Process};

use super::Deployment;
use crate::bench::{api::Api, probe};

const ETCD: &str = "/usr/bin/etcd";
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

pub fn deploy() -> anyhow::Result<Deployment> {
    let lab = Lab::up(3).context("creating a lab of 3 nodes")?;
    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let initial_cluster = lab
        .nodes
        .iter()
        .map(|node| format!("n{}=http://{}:{PEER_PORT}", node.id, node.ip))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for node in &lab.nodes {
        let peer_url = format!("http://{}:{PEER_PORT}", node.ip);
        let client_url = format!("http://{}:{CLIENT_PORT}", node.ip);
        let mut command = node
            .command(ETCD)
            .with_context(|| format!("entering node {}", node.id))?;
        command
            .args(["--name", &format!("n{}", node.id)])
            .arg("--data-dir")
            .arg(files.path().join(format!("n{}", node.id)))
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            // etcd 3.4's default logger is deprecated and ignores --log-level.
            .args(["--logger", "zap", "--log-level", "error"]);
        members.push(
            Process::spawn(format!("etcd on node {}", node.id), command)
                .context("starting etcd (install Debian's etcd-server)")?,
        );
    }
    let targets: Vec<SocketAddr> = lab
        .nodes
        .iter()
        .map(|node| SocketAddr::new(node.ip.into(), CLIENT_PORT))
        .collect();
    // A member answers only once a quorum has formed; say why if that never happens.
    for ((target, member), node) in targets.iter().zip(&members).zip(&lab.nodes) {
        probe::wait_answering(*target, &Api::Etcd.probe()).with_context(|| {
            format!(
                "etcd on node {} did not come up; it printed:\n{}",
                node.id,
                member.tail(20)
            )
        })?;
    }
    Ok(Deployment {
        targets,
        api: Api::Etcd,
        app_pids: members.iter().map(Process::pid).collect(),
        proxy_pids: Vec::new(),
        _running: Box::new((members, lab, files)),
    })
}
