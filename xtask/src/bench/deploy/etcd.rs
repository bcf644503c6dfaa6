//! `etcd-3`: Debian's etcd (3.4), three members, clients on every member through the JSON
//! gateway. The reference for what a replicated, durable store costs on this machine. Its
//! members speak mutual TLS to each other, as Hermes' peers do (`etcd-3-plain`: plain HTTP,
//! etcd's default).
use std::net::SocketAddr;

use anyhow::Context as _;
use hermes_lab::{Lab, Process, certs::Authority};

use super::Deployment;
use crate::bench::{api::Api, probe};

const ETCD: &str = "/usr/bin/etcd";
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// `tls`: the members authenticate each other with certificates from a CA of the lab's own.
pub fn deploy(tls: bool) -> anyhow::Result<Deployment> {
    let lab = Lab::up(3).context("creating a lab of 3 nodes")?;
    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let scheme = if tls { "https" } else { "http" };
    let initial_cluster = lab
        .nodes
        .iter()
        .map(|node| format!("n{}={scheme}://{}:{PEER_PORT}", node.id, node.ip))
        .collect::<Vec<_>>()
        .join(",");
    let authority = Authority::new("etcd lab").context("making a CA for etcd's peers")?;
    let mut members = Vec::new();
    for node in &lab.nodes {
        let peer_url = format!("{scheme}://{}:{PEER_PORT}", node.ip);
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
        if tls {
            // The certificate names the member's address, which its peers dial.
            let certs = authority
                .write_named(&files.path().join("certs"), &node.ip.to_string())
                .context("writing etcd's peer certificates")?;
            command
                .arg("--peer-cert-file")
                .arg(&certs.cert)
                .arg("--peer-key-file")
                .arg(&certs.key)
                .arg("--peer-trusted-ca-file")
                .arg(&certs.ca)
                .arg("--peer-client-cert-auth");
        }
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
        counts: None,
        nodes: 0,
        _running: Box::new((members, lab, files)),
    })
}
