//! `direct`: the log app alone on one node, listening on the node's address: the baseline.
use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;
use hermes_lab::{
    Lab, Process,
    cluster::{PORT, STARTUP},
};

use super::Deployment;
use crate::bench::api::{self, Api};

pub fn deploy(bin: &Path) -> anyhow::Result<Deployment> {
    let lab = Lab::up(1).context("creating a lab of 1 node")?;
    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let node = lab.node(1);
    let mut command = node
        .command(bin.join("hermes-logapp"))
        .context("entering node 1")?;
    command
        .args(["--listen", &format!("0.0.0.0:{PORT}"), "--file"])
        .arg(files.path().join("app.log"))
        .args(api::logapp_args());
    let mut app = Process::spawn("hermes-logapp on node 1", command)?;
    app.wait_for("listening", STARTUP)?;
    let deployment = Deployment {
        targets: vec![SocketAddr::new(node.ip.into(), PORT)],
        api: Api::LogApp,
        app_pids: vec![app.pid()],
        proxy_pids: Vec::new(),
        counts: None,
        nodes: 0,
        _running: Box::new((app, lab, files)),
    };
    deployment.wait_answering()?;
    Ok(deployment)
}
