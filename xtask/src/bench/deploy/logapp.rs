//! Starts the log app on a lab node, pre-populated like every other setup's.
use std::path::Path;

use anyhow::Context as _;
use hermes_lab::{Node, Process, cluster::STARTUP};

use crate::bench::api;

/// The log app on `node`, listening on `listen`, its log in `file`.
pub fn spawn(node: &Node, bin: &Path, listen: &str, file: &Path) -> anyhow::Result<Process> {
    let mut command = node
        .command(bin.join("hermes-logapp"))
        .with_context(|| format!("entering node {}", node.id))?;
    command
        .arg("--listen")
        .arg(listen)
        .arg("--file")
        .arg(file)
        .args(api::logapp_args());
    let mut app = Process::spawn(format!("hermes-logapp on node {}", node.id), command)?;
    app.wait_for("listening", STARTUP)?;
    Ok(app)
}
