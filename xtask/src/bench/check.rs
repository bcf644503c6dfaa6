//! Checks that a run's output is complete and well formed (what `--quick` proves): every setup
//! and workload measured, the raw points readable in both formats, the plots and the summary
//! written. Never the numbers themselves: timings decide nothing here.
use std::path::Path;

use anyhow::bail;

use super::{
    csv,
    deploy::Setup,
    redis::{RedisSetup, TESTS},
    results,
    workload::Workload,
};

pub fn output(dir: &Path) -> anyhow::Result<()> {
    let results = results::read(dir)?;
    let rows = csv::read(&dir.join("points.csv"))?;
    let mut problems = Vec::new();
    let key = |p: &super::point::Point| {
        (
            p.setup.clone(),
            p.workload.clone(),
            p.offered,
            p.disk_sync_ms.is_some(),
        )
    };
    if rows.iter().map(key).ne(results.points.iter().map(key)) {
        problems.push("points.csv and points.json list different points".to_owned());
    }
    for setup in Setup::ALL {
        for &workload in setup.workloads() {
            let points: Vec<_> = results
                .points
                .iter()
                .filter(|p| p.is(setup, workload))
                .collect();
            let what = format!("{setup} under {}", workload.name());
            if !points.iter().any(|p| p.low_load) {
                problems.push(format!("{what}: no low-load point"));
            }
            if !points.iter().any(|p| !p.low_load) {
                problems.push(format!("{what}: no point of the sweep"));
            }
            if let Some(p) = points.iter().find(|p| p.completed == 0) {
                problems.push(format!("{what}: no request completed at {}/s", p.offered));
            }
            if let Some(p) = points.iter().find(|p| p.disk_sync_ms.is_none()) {
                problems.push(format!("{what}: no disk sync timed after {}/s", p.offered));
            }
        }
    }
    for setup in RedisSetup::ALL {
        for test in TESTS {
            let point = results
                .redis
                .iter()
                .find(|p| p.setup == setup.name() && p.test == test);
            match point {
                None => problems.push(format!("{} under {test}: not measured", setup.name())),
                Some(p) if p.rps <= 0.0 => {
                    problems.push(format!("{} under {test}: no reply", setup.name()))
                }
                Some(p) if p.disk_sync_ms.is_none() => {
                    problems.push(format!("{} under {test}: no disk sync timed", setup.name()))
                }
                Some(_) => {}
            }
        }
    }
    for workload in Workload::ALL {
        let svg = |bytes: &[u8]| bytes.windows(4).any(|w| w == b"<svg");
        let png = |bytes: &[u8]| bytes.starts_with(b"\x89PNG\r\n");
        for (extension, looks_right) in [("svg", svg as fn(&[u8]) -> bool), ("png", png)] {
            let name = format!("{}.{extension}", workload.name());
            match std::fs::read(dir.join(&name)) {
                Ok(bytes) if looks_right(&bytes) => {}
                Ok(_) => problems.push(format!("{name} is empty or not {extension}")),
                Err(error) => problems.push(format!("{name}: {error}")),
            }
        }
    }
    match std::fs::read_to_string(dir.join("summary.md")) {
        Ok(summary) => {
            for setup in Setup::ALL {
                if !summary.contains(&format!("| {setup} |")) {
                    problems.push(format!("summary.md has no row for {setup}"));
                }
            }
            for setup in RedisSetup::ALL {
                if !summary.contains(&format!("| {} | SET |", setup.name())) {
                    problems.push(format!("summary.md has no row for {}", setup.name()));
                }
            }
        }
        Err(error) => problems.push(format!("summary.md: {error}")),
    }
    if !problems.is_empty() {
        bail!(
            "the benchmark's output in {} is incomplete:\n- {}",
            dir.display(),
            problems.join("\n- ")
        );
    }
    Ok(())
}
