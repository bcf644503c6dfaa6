//! Measures one point: runs `hermes-loadgen` against a deployment at one offered rate and samples
//! the CPU time of the deployment's processes around the measured part of the run.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::{
    cpu,
    deploy::{Deployment, Setup},
    disk,
    flow::Flow,
    guard,
    plan::{self, Plan},
    point::Point,
    workload::Workload,
};

/// The load generator starts sending this long after it starts (it sets up its connections'
/// schedules first).
const LOADGEN_START: Duration = Duration::from_millis(100);
/// How often to check, while the load runs, that the targets are still in the lab.
const GUARD_INTERVAL: Duration = Duration::from_millis(50);

/// What `hermes-loadgen --json` writes (the fields used here).
#[derive(Deserialize)]
struct Report {
    achieved_rate: f64,
    completed: u64,
    errors: BTreeMap<String, u64>,
    latency_ms: Latency,
}

#[derive(Deserialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

/// Where a point is measured.
pub struct Bench<'a> {
    pub plan: &'a Plan,
    /// Where the workspace's release binaries are.
    pub bin: &'a Path,
    /// Where the load generator's report goes.
    pub scratch: &'a Path,
}

impl Bench<'_> {
    /// Measures `setup` under `workload` at `rate` requests per second, open loop.
    pub fn point(
        &self,
        setup: Setup,
        deployment: &Deployment,
        workload: Workload,
        rate: f64,
        low_load: bool,
    ) -> anyhow::Result<Point> {
        let json = self.scratch.join("loadgen.json");
        let targets: Vec<String> = deployment.targets.iter().map(|t| t.to_string()).collect();
        let loadgen = self.bin.join("hermes-loadgen");
        let mut command = Command::new(&loadgen);
        command
            .args(["--targets", &targets.join(",")])
            .args(["--rate", &rate.to_string()])
            .args(["--connections", &plan::connections(rate).to_string()])
            .args(["--duration", &self.plan.duration.as_secs_f64().to_string()])
            .args(["--warmup", &self.plan.warmup.as_secs_f64().to_string()])
            .args(deployment.api.loadgen_args(workload.read_ratio()))
            .args(workload.loadgen_args())
            .args(["--label", &format!("{setup}/{}", workload.name())])
            .arg("--json")
            .arg(&json)
            .arg("--quiet")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        guard::targets_in_lab(&deployment.targets)?;
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", loadgen.display()))?;
        // Count CPU from the end of the warm-up, as the load generator counts requests.
        std::thread::sleep(LOADGEN_START + self.plan.warmup);
        let before = cpu_used(deployment);
        let counted_from = Instant::now();
        let counts_before = deployment.counts.as_ref().map(|counts| counts());
        while child
            .try_wait()
            .context("waiting for hermes-loadgen")?
            .is_none()
        {
            if let Err(error) = guard::targets_in_lab(&deployment.targets) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(error);
            }
            std::thread::sleep(GUARD_INTERVAL);
        }
        let after = cpu_used(deployment);
        let counted_for = counted_from.elapsed();
        let counts_after = deployment.counts.as_ref().map(|counts| counts());
        // Where the lab's files are, once the load is off it.
        let disk_sync_ms = disk::sync_ms(self.scratch);
        let output = child
            .wait_with_output()
            .context("reading hermes-loadgen's output")?;
        if !output.status.success() {
            bail!(
                "hermes-loadgen failed ({}) after {:.1?}:\n{}",
                output.status,
                started.elapsed(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let [app_before, proxy_before] = before?;
        let [app_after, proxy_after] = after?;
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("parsing hermes-loadgen's report {}", json.display()))?;
        let per_request = |cpu: Duration| {
            (report.completed > 0).then(|| cpu.as_secs_f64() * 1e6 / report.completed as f64)
        };
        let mut point = Point {
            setup: setup.name().to_owned(),
            workload: workload.name().to_owned(),
            low_load,
            offered: rate,
            achieved: report.achieved_rate,
            completed: report.completed,
            errors: report.errors.values().sum(),
            p50_ms: report.latency_ms.p50,
            p90_ms: report.latency_ms.p90,
            p99_ms: report.latency_ms.p99,
            p999_ms: report.latency_ms.p999,
            max_ms: report.latency_ms.max,
            mean_ms: report.latency_ms.mean,
            app_cpu_us_per_req: per_request(app_after.saturating_sub(app_before)),
            proxy_cpu_us_per_req: (!deployment.proxy_pids.is_empty())
                .then(|| per_request(proxy_after.saturating_sub(proxy_before)))
                .flatten(),
            saturated: false,
            flow: match (counts_before, counts_after) {
                (Some(before), Some(after)) => Some(Flow::between(
                    before?,
                    after?,
                    counted_for,
                    deployment.nodes,
                )),
                _ => None,
            },
            disk_sync_ms,
        };
        point.saturated = point.overloaded();
        if !report.errors.is_empty() {
            eprintln!("  errors: {:?}", report.errors);
        }
        Ok(point)
    }
}

/// CPU time used so far by the deployment's apps and by its proxies.
fn cpu_used(deployment: &Deployment) -> anyhow::Result<[Duration; 2]> {
    cpu::used([&deployment.app_pids, &deployment.proxy_pids])
}
