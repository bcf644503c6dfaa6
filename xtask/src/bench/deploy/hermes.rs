//! `passthrough`, `hermes-1` and `hermes-3`: the log app behind Hermes agents, in a
//! [`Cluster`].
use std::{path::Path, rc::Rc};

use anyhow::Context as _;
use hermes_lab::{
    Lab,
    cluster::{App, Cluster},
};

use super::Deployment;
use crate::bench::{
    api::{self, Api},
    flow::Counts,
};

/// One node whose agent only intercepts and relays.
pub fn passthrough(bin: &Path) -> anyhow::Result<Deployment> {
    let mut cluster = cluster(1, bin, &["--passthrough"])?;
    // A passthrough agent joins no Raft cluster, so there is no leader to wait for.
    cluster.start_app(1).context("starting the log app")?;
    cluster
        .start_agent(1)
        .context("starting the passthrough agent")?;
    deployment(cluster, false)
}

/// A Hermes cluster of `nodes` replicas, agents with `agent_args` besides the cluster's.
pub fn replicated(nodes: usize, bin: &Path, agent_args: &[&str]) -> anyhow::Result<Deployment> {
    let mut cluster = cluster(nodes, bin, agent_args)?;
    cluster
        .start()
        .with_context(|| format!("starting a Hermes cluster of {nodes}"))?;
    deployment(cluster, true)
}

/// A cluster of the log app on a fresh lab of `nodes`, nothing started yet.
pub(super) fn cluster(nodes: usize, bin: &Path, agent_args: &[&str]) -> anyhow::Result<Cluster> {
    let lab = Lab::up(nodes).with_context(|| format!("creating a lab of {nodes} nodes"))?;
    let mut cluster =
        Cluster::new(lab, bin, App::Log, agent_args).context("creating the cluster's directory")?;
    cluster.app_args = api::logapp_args();
    Ok(cluster)
}

/// The cluster as a deployment, once every node answers; `raft`: its agents order requests, and
/// their counters are read.
fn deployment(mut cluster: Cluster, raft: bool) -> anyhow::Result<Deployment> {
    let count = cluster.nodes();
    let nodes = 1..=count;
    let targets = cluster.addrs();
    let app_pids = nodes
        .clone()
        .filter_map(|id| Some(cluster.app(id)?.pid()))
        .collect();
    let proxy_pids = nodes
        .filter_map(|id| Some(cluster.agent(id)?.pid()))
        .collect();
    let cluster = Rc::new(cluster);
    let counted = Rc::clone(&cluster);
    let counts = move || {
        let mut counts = Counts::default();
        for id in 1..=counted.nodes() {
            let metrics = counted
                .admin(id, "/metrics")
                .with_context(|| format!("reading node {id}'s metrics"))?;
            counts.add(&metrics.text());
        }
        Ok(counts)
    };
    let deployment = Deployment {
        targets,
        api: Api::LogApp,
        app_pids,
        proxy_pids,
        counts: raft.then(|| Box::new(counts) as Box<dyn Fn() -> anyhow::Result<Counts>>),
        nodes: count,
        _running: Box::new(cluster),
    };
    deployment.wait_answering()?;
    Ok(deployment)
}
