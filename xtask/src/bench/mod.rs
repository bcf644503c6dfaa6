//! `cargo xtask bench`: measures Hermes against its baselines, each setup in a fresh lab on this
//! machine, and writes the raw points, plots and a summary to `bench/results/<UTC time>/`.
//!
//! [`deploy`] brings the setups up, [`sweep`] measures one setup under one workload point by
//! point ([`measure`], with [`cpu`]), [`results`], [`plot`] and [`summary`] write the output,
//! [`check`] proves it complete (`--quick`), and [`docs`] publishes a full run.
mod api;
mod check;
mod cpu;
mod csv;
mod deploy;
mod disk;
mod docs;
mod environment;
mod flow;
mod guard;
mod measure;
mod plan;
mod plot;
mod point;
mod probe;
mod redis;
mod results;
mod summary;
mod sweep;
mod workload;

use std::{
    path::Path,
    time::{Instant, SystemTime},
};

use anyhow::Context as _;

use deploy::Setup;
use environment::Environment;
use measure::Bench;
use plan::Plan;
use results::Results;
use workload::Workload;

/// Debian packages of the reference setups (Redis for raw TCP mode, with its load tool), and of
/// the plots' font. The tests use Redis too.
pub const PACKAGES: &[&str] = &[
    "etcd-server",
    "nginx-light",
    "redis-server",
    "redis-tools",
    "fonts-dejavu-core",
];

/// Runs the benchmark with the release binaries in `bin` (setup installs [`PACKAGES`]).
pub fn run(bin: &Path, quick: bool) -> anyhow::Result<()> {
    plot::load_font()?;
    let plan = Plan::new(quick);
    let started = results::utc_timestamp(SystemTime::now());
    let dir = results::create_dir(&started)?;
    let mut results = Results {
        command: plan.command().to_owned(),
        started,
        environment: Environment::probe()?,
        duration_s: plan.duration.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        points: Vec::new(),
        redis: Vec::new(),
    };
    println!(
        "bench: {} into {}\nbench: {}",
        results.command,
        dir.display(),
        results.environment.describe()
    );
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let bench = Bench {
        plan: &plan,
        bin,
        scratch: scratch.path(),
    };
    let clock = Instant::now();
    for setup in Setup::ALL {
        println!("bench: bringing up {setup}");
        let deployment = setup
            .deploy(bin)
            .with_context(|| format!("bringing up {setup}"))?;
        for &workload in setup.workloads() {
            let points = sweep::run(&bench, setup, &deployment, workload, clock)
                .with_context(|| format!("measuring {setup} under {}", workload.name()))?;
            results.points.extend(points);
            // Written as it goes, so that a failure later keeps what was measured.
            results::write(&dir, &results)?;
        }
    }
    results.redis = redis::run(bin, quick).context("measuring Redis in raw TCP mode")?;
    results::write(&dir, &results)?;
    for workload in Workload::ALL {
        plot::draw(&dir, workload, &results.points)?;
    }
    let summary = dir.join("summary.md");
    let text = format!(
        "# Hermes benchmark, {}\n\n{}",
        results.started,
        summary::render(&results, "##", "")
    );
    std::fs::write(&summary, text).with_context(|| format!("writing {}", summary.display()))?;
    if quick {
        check::output(&dir)?;
        println!("bench: the output is complete and well formed");
    } else {
        docs::publish(&dir, &results)?;
        println!("bench: published to docs/benchmarks.md and docs/bench/");
    }
    println!(
        "bench: done in {:.0?}; results in {}",
        clock.elapsed(),
        dir.display()
    );
    Ok(())
}
