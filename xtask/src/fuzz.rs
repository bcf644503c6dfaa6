//! `cargo xtask fuzz`: builds the fuzz targets (`fuzz/`, cargo-fuzz and libFuzzer) with the
//! nightly that setup chose and runs each for a while, one after the other.
//!
//! Each target runs on a scratch corpus (`fuzz/target/corpus/<target>/`, kept between runs so
//! that later runs start where earlier ones stopped) seeded read-only from the committed corpus
//! (`fuzz/corpus/<target>/`), which libFuzzer never writes to. Its output goes to
//! `fuzz/target/logs/<target>.log`; what it finds to `fuzz/artifacts/<target>/`.
//!
//! The agent's build script builds the eBPF program with a nested cargo; cargo-fuzz's flags
//! (sanitizers, `--cfg fuzzing`) do not reach it: cargo-fuzz passes `--target`, so its
//! `RUSTFLAGS` apply to the target's crates only, not to build scripts, and aya-build gives the
//! nested cargo its own flags in `CARGO_ENCODED_RUSTFLAGS`, which cargo prefers to `RUSTFLAGS`.
//! So the fuzz build embeds the real program, and needs nothing the main build does not.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::setup::EbpfToolchain;

/// The targets, in `fuzz/fuzz_targets/`.
pub const TARGETS: &[&str] = &["request", "response", "chunked", "peer_frame", "admin"];

/// libFuzzer's options for every run: inputs of up to 4 KiB (the committed seeds fit), and an
/// input that takes 10 s is a hang, reported as a crash.
const OPTIONS: &[&str] = &["-max_len=4096", "-timeout=10", "-print_final_stats=1"];

/// What one target's run gave.
struct Run {
    target: String,
    executions: Option<u64>,
    /// Artifacts libFuzzer wrote (crashes, leaks, timeouts, out-of-memory; slow units).
    artifacts: Vec<String>,
    ok: bool,
    log: PathBuf,
    took: Duration,
}

/// Builds every target, then runs each of `only` (every target when empty) for `seconds`;
/// fails if any found something.
pub fn run(ebpf: &EbpfToolchain, seconds: u64, only: &[String]) -> anyhow::Result<()> {
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for name in only {
            if !TARGETS.contains(&name.as_str()) {
                bail!("no fuzz target {name}; there are {}", TARGETS.join(", "));
            }
        }
        TARGETS
            .iter()
            .copied()
            .filter(|t| only.iter().any(|o| o == t))
            .collect()
    };
    let fuzz_dir = crate::workspace_root().join("fuzz");
    let target_dir = fuzz_dir.join("target");
    let status = cargo_fuzz(ebpf, &fuzz_dir, &["build"], &target_dir)
        .status()
        .context("cannot run cargo fuzz")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let mut runs = Vec::new();
    for target in targets {
        let run = run_target(ebpf, &fuzz_dir, &target_dir, target, seconds)?;
        println!("{}", summary(&run));
        runs.push(run);
    }
    let failed: Vec<String> = runs
        .iter()
        .filter(|run| !run.ok)
        .map(|run| {
            let found = if run.artifacts.is_empty() {
                "no artifact written".to_string()
            } else {
                run.artifacts.join(", ")
            };
            format!(
                "{}: {found} (log: {}; reproduce with `rustup run {} cargo fuzz run {} <file>` in {})",
                run.target,
                run.log.display(),
                ebpf.toolchain,
                run.target,
                crate::workspace_root().display()
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("fuzzing found crashes:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn run_target(
    ebpf: &EbpfToolchain,
    fuzz_dir: &Path,
    target_dir: &Path,
    target: &str,
    seconds: u64,
) -> anyhow::Result<Run> {
    let scratch = target_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("corpus").join(target);
    let logs = target_dir.join("logs");
    for dir in [&scratch, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    eprintln!("fuzz: {target} for {seconds} s (log: {})", log.display());
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let scratch = scratch.to_str().context("non-UTF-8 path")?;
    let seeds = seeds.to_str().context("non-UTF-8 path")?;
    let time = format!("-max_total_time={seconds}");
    let mut args = vec!["run", target, scratch, seeds];
    args.push("--");
    args.push(&time);
    args.extend(OPTIONS);
    let started = Instant::now();
    let status = cargo_fuzz(ebpf, fuzz_dir, &args, target_dir)
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .context("cannot run cargo fuzz")?;
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    Ok(Run {
        target: target.to_string(),
        executions: executions(&output),
        artifacts: artifacts(&output),
        ok: status.success(),
        log,
        took: started.elapsed(),
    })
}

/// `cargo fuzz <args>` with the nightly, in the workspace, building into `target_dir`.
fn cargo_fuzz(ebpf: &EbpfToolchain, fuzz_dir: &Path, args: &[&str], target_dir: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", &ebpf.toolchain, "cargo", "fuzz"])
        .args(args.iter().take_while(|a| **a != "--"))
        .arg("--fuzz-dir")
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(target_dir)
        .args(args.iter().skip_while(|a| **a != "--"))
        .current_dir(crate::workspace_root())
        .env("HERMES_EBPF_TOOLCHAIN", &ebpf.toolchain)
        .stdin(Stdio::null());
    command
}

/// The number of inputs run, from libFuzzer's final statistics (or its last words).
fn executions(output: &str) -> Option<u64> {
    let stat = output.lines().rev().find_map(|line| {
        line.strip_prefix("stat::number_of_executed_units:")?
            .trim()
            .parse()
            .ok()
    });
    stat.or_else(|| {
        output.lines().rev().find_map(|line| {
            line.strip_prefix("Done ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    })
}

/// The files libFuzzer wrote what it found to.
fn artifacts(output: &str) -> Vec<String> {
    let mut found: Vec<String> = output
        .lines()
        .filter_map(|line| {
            let at = line.find("Test unit written to ")?;
            Some(
                line[at + "Test unit written to ".len()..]
                    .trim()
                    .to_string(),
            )
        })
        .collect();
    found.dedup();
    found
}

fn summary(run: &Run) -> String {
    let executions = run
        .executions
        .map_or_else(|| "? executions".to_string(), |n| format!("{n} executions"));
    let found = match (run.ok, run.artifacts.is_empty()) {
        (true, true) => "nothing found".to_string(),
        (true, false) => format!("no crash; slow inputs: {}", run.artifacts.join(", ")),
        (false, true) => format!("FAILED, see {}", run.log.display()),
        (false, false) => format!("FOUND {}", run.artifacts.join(", ")),
    };
    format!(
        "fuzz: {:<10} {executions} in {:.1} s, {found}",
        run.target,
        run.took.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let clean = "#1048576\tpulse  cov: 1288 ft: 5321 corp: 612/38Kb exec/s: 52428\n\
                     Done 1571423 runs in 31 second(s)\n\
                     stat::number_of_executed_units: 1571424\n\
                     stat::average_exec_per_sec:     50691\n";
        assert_eq!(executions(clean), Some(1_571_424));
        assert!(artifacts(clean).is_empty());
        let without_stats = "#2\tINITED\nDone 77 runs in 1 second(s)\n";
        assert_eq!(executions(without_stats), Some(77));
        let crash = "==12==ERROR: libFuzzer: deadly signal\n\
                     MS: 1 ChangeBit-; base unit: 0\n\
                     artifact_prefix='/w/fuzz/artifacts/request/'; Test unit written to /w/fuzz/artifacts/request/crash-da39a3ee\n\
                     stat::number_of_executed_units: 4096\n";
        assert_eq!(executions(crash), Some(4096));
        assert_eq!(
            artifacts(crash),
            vec!["/w/fuzz/artifacts/request/crash-da39a3ee".to_string()]
        );
        assert_eq!(executions("error: no such target"), None);
    }
}
