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

/// Pre-populates the log app's file by running the app on it once. `Cluster` does not pass its
/// `app_args` to the apps it starts yet (hermes-lab's `start_app`), and an app continues an
/// existing file: this gives the cluster's apps the same starting state as the other setups'.
pub fn seed(node: &Node, bin: &Path, file: &Path) -> anyhow::Result<()> {
    // The file is complete once the app listens; port 0 keeps clear of the node's real app.
    let mut app = spawn(node, bin, "127.0.0.1:0", file)?;
    app.kill().context("stopping the seeding log app")?;
    Ok(())
}
