//! `direct`: the log app alone on one node, listening on the node's address: the baseline.
use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;
use hermes_lab::{Lab, cluster::PORT};

use super::{Deployment, logapp};
use crate::bench::api::Api;

pub fn deploy(bin: &Path) -> anyhow::Result<Deployment> {
    let lab = Lab::up(1).context("creating a lab of 1 node")?;
    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let node = lab.node(1);
    let app = logapp::spawn(
        node,
        bin,
        &format!("0.0.0.0:{PORT}"),
        &files.path().join("app.log"),
    )?;
    Ok(Deployment {
        targets: vec![SocketAddr::new(node.ip.into(), PORT)],
        api: Api::LogApp,
        app_pids: vec![app.pid()],
        proxy_pids: Vec::new(),
        _running: Box::new((app, lab, files)),
    })
}
