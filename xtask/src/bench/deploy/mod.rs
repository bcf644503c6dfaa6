//! The setups under test, each brought up in a fresh lab and answering before it is returned:
//! where clients send requests, which processes do the work, and how to speak to them.
mod direct;
mod etcd;
mod hermes;
mod nginx;

use std::{any::Any, fmt, net::SocketAddr, path::Path};

use super::{api::Api, flow::Counts, probe, workload::Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// The log app alone, clients connect to it.
    Direct,
    /// The log app behind a Hermes agent that only intercepts and relays bytes.
    Passthrough,
    /// The log app behind Hermes, one replica.
    Hermes1,
    /// The log app behind Hermes, three replicas, clients spread over all three.
    Hermes3,
    /// As `hermes-3`, with reads off the log (`--reads linearizable`).
    Hermes3Reads,
    /// As `hermes-3`, without syncing the delivery progress (`--no-progress-sync`): what
    /// surviving a power loss costs (writes only).
    Hermes3Unsynced,
    /// etcd, three members speaking mutual TLS to each other, clients spread over all three
    /// (writes only).
    Etcd3,
    /// As `etcd-3`, its members speaking plain HTTP to each other (etcd's default).
    Etcd3Plain,
    /// The log app behind nginx as a reverse proxy: a conventional proxy's cost, to compare
    /// with interception.
    NginxProxy,
}

impl Setup {
    pub const ALL: [Self; 9] = [
        Self::Direct,
        Self::Passthrough,
        Self::Hermes1,
        Self::Hermes3,
        Self::Hermes3Reads,
        Self::Hermes3Unsynced,
        Self::Etcd3,
        Self::Etcd3Plain,
        Self::NginxProxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Passthrough => "passthrough",
            Self::Hermes1 => "hermes-1",
            Self::Hermes3 => "hermes-3",
            Self::Hermes3Reads => "hermes-3-reads",
            Self::Hermes3Unsynced => "hermes-3-unsynced",
            Self::Etcd3 => "etcd-3",
            Self::Etcd3Plain => "etcd-3-plain",
            Self::NginxProxy => "nginx-proxy",
        }
    }

    /// What this setup is measured under: etcd is a key-value store, not the log app, so only
    /// its writes compare; linearizable reads change nothing for writes; the progress sync is
    /// measured where it is paid most, on writes alone.
    pub fn workloads(self) -> &'static [Workload] {
        match self {
            Self::Etcd3 | Self::Etcd3Plain | Self::Hermes3Unsynced => &[Workload::Post],
            Self::Hermes3Reads => &[Workload::Mixed, Workload::Get],
            _ => &Workload::ALL,
        }
    }

    /// Brings the setup up with the binaries in `bin`; every target answers once it returns.
    pub fn deploy(self, bin: &Path) -> anyhow::Result<Deployment> {
        Ok(match self {
            Self::Direct => direct::deploy(bin)?,
            Self::Passthrough => hermes::passthrough(bin)?,
            Self::Hermes1 => hermes::replicated(1, bin, &[])?,
            Self::Hermes3 => hermes::replicated(3, bin, &[])?,
            Self::Hermes3Reads => hermes::replicated(3, bin, &["--reads", "linearizable"])?,
            Self::Hermes3Unsynced => hermes::replicated(3, bin, &["--no-progress-sync"])?,
            Self::Etcd3 => etcd::deploy(true)?,
            Self::Etcd3Plain => etcd::deploy(false)?,
            Self::NginxProxy => nginx::deploy(bin)?,
        })
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A running setup; dropping it stops its processes and tears its lab down.
pub struct Deployment {
    /// Where clients send requests; the load is spread over them.
    pub targets: Vec<SocketAddr>,
    pub api: Api,
    /// The processes that hold the state: log apps, or etcd members.
    pub app_pids: Vec<u32>,
    /// The processes in front of the apps: Hermes agents, or nginx; empty where there are none.
    pub proxy_pids: Vec<u32>,
    /// Reads the Hermes agents' counters, summed (Hermes setups with Raft only).
    pub counts: Option<Box<dyn Fn() -> anyhow::Result<Counts>>>,
    /// Agents counted by `counts`.
    pub nodes: usize,
    /// The lab, processes and files that keep the setup running, in the order to drop them.
    _running: Box<dyn Any>,
}

impl Deployment {
    /// Waits until every target answers successfully.
    pub fn wait_answering(&self) -> anyhow::Result<()> {
        let probe = self.api.probe();
        for &target in &self.targets {
            probe::wait_answering(target, &probe)?;
        }
        Ok(())
    }
}
