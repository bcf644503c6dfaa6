//! `cargo xtask`: the project's commands. See `cargo xtask --help`.
mod bench;
mod chaos;
mod demo;
mod fuzz;
mod image;
mod manifests;
mod setup;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use hermes_lab::chaos::Length;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test Hermes")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build and test Hermes (Debian packages, rust-src,
    /// bpf-linker, cargo-fuzz), and check that the eBPF toolchain fits together. Idempotent.
    Setup,
    /// Build the agent (release) and run it in the foreground with the given flags, e.g.
    /// `cargo xtask build-and-load -- --port 8080 --passthrough`.
    BuildAndLoad {
        /// Flags for hermes-agent (see `hermes-agent --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show Hermes at work: a replicated log app on three lab nodes, 300 concurrent requests, a
    /// leader crash and its recovery. Needs root.
    Demo,
    /// Faults under load: a three-node cluster of the log app under mixed load while faults come
    /// in turn (kill -9 of agents and apps, the leader cut off, packet loss, the leader stopped
    /// and restarted, the leader's machine frozen), then the invariant checker: every
    /// acknowledged write exactly once in every replica, replicas identical. Prints each fault's
    /// unavailability and the longest pause in acknowledged writes while it lasted, and per kind
    /// the count, the longest, the p99 and the longest pause. By default 20 faults of
    /// each kind (about 10 minutes).
    /// Needs root.
    Chaos {
        /// How many faults of each kind (seven kinds; four are leader faults).
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Run this many seconds instead of a number of rounds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Seconds between faults (each lasts this long, then is healed).
        #[arg(long, default_value_t = 4)]
        every: u64,
        /// Clients writing (and reading) all the time.
        #[arg(long, default_value_t = 12)]
        clients: usize,
    },
    /// Write a CA and certificates for the peers of a cluster: `ca.pem`, and per node
    /// `node-<id>.pem` and `node-<id>-key.pem`, naming node `<id>` as `hermes-node-<id>`, for
    /// `hermes-agent --peer-cert --peer-key --peer-ca`; with `--pods`, one certificate for
    /// pod mode's agents instead, `hermes-agent.pem` naming `hermes-agent`. For labs and
    /// trials: in production, use your own CA.
    Certs {
        /// Nodes `1..=N` get a certificate.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// For pod mode: the agents' one certificate (`hermes-agent pods`).
        #[arg(long, conflicts_with = "nodes")]
        pods: bool,
        /// Where to write them.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Build the agent's container image from deploy/Dockerfile, as the tests build it: the
    /// release agent first (after setup), then podman (or docker) with a context that holds
    /// only that binary.
    Image {
        /// The image's name and tag.
        #[arg(long, default_value = "hermes-agent:0.1.0")]
        tag: String,
        /// Passed to `podman build` as they are, e.g. `--isolation chroot --pull=never` where
        /// no registry or container network is reachable (docs/kubernetes.md).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        build_args: Vec<String>,
    },
    /// Network namespaces as hosts, for trying things by hand.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Run the whole test suite, including the privileged lab tests and the agent's image built
    /// and run with podman (needs root), and validate the Kubernetes manifests offline against
    /// the API's schemas. Runs setup first.
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz the agent's parsers (HTTP requests and responses, chunked bodies, peer frames, admin
    /// requests) with cargo-fuzz on the eBPF build's nightly: builds the targets in fuzz/, runs
    /// each for the given time, prints its executions, and fails if any crashed (the input is
    /// left in fuzz/artifacts/<target>/).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (default: all of them).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        targets: Vec<String>,
    },
    /// Measure Hermes against its baselines (the log app alone, behind a passthrough agent,
    /// behind nginx; etcd for replicated writes), each in a fresh lab on this machine: latency at
    /// low load and throughput up to saturation, CPU per request. Writes raw points, plots and a
    /// summary to bench/results/<UTC time>/ and publishes them to docs/benchmarks.md. Needs root;
    /// takes about 20 minutes.
    Bench {
        /// A tiny run (about a second per point) that checks that the harness works and its
        /// output is complete; its numbers mean nothing and docs/ is left alone.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create a lab of N nodes and leave it running.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Delete every lab on this machine, with the processes and pins inside.
    Down,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(&[]).map(drop),
        Task::BuildAndLoad { args } => build_and_load(&args),
        Task::Certs {
            pods: true, dir, ..
        } => {
            let files =
                hermes_lab::certs::Authority::new("hermes")?.write_named(&dir, "hermes-agent")?;
            println!("pod mode's agents: {}", files.args().join(" "));
            Ok(())
        }
        Task::Certs { nodes, dir, .. } => certs(nodes, &dir),
        Task::Image { tag, build_args } => {
            let ebpf = setup::run(&[])?;
            cargo(&ebpf, &["build", "--release", "--package", "hermes-agent"])?;
            let agent = target_dir().join("release/hermes-agent");
            image::run(&agent, workspace_root(), &tag, &build_args)
        }
        Task::Lab { command } => lab(command),
        Task::Demo => demo::run(&build_cluster_binaries(demo::PACKAGES)?),
        Task::Chaos {
            rounds,
            seconds,
            every,
            clients,
        } => {
            let length = match seconds {
                Some(seconds) => Length::Time(Duration::from_secs(seconds)),
                None => Length::Rounds(rounds),
            };
            chaos::run(&build_cluster_binaries(&[])?, length, every, clients)
        }
        Task::Test { args } => test(&args),
        Task::Fuzz { seconds, targets } => fuzz::run(&setup::run(&[])?, seconds, &targets),
        Task::Bench { quick } => bench::run(&build_cluster_binaries(bench::PACKAGES)?, quick),
    }
}

/// Sets up (with the Debian `packages` the task needs besides), then builds (release) what a
/// lab cluster of the log app runs and loads; returns where the binaries are.
fn build_cluster_binaries(packages: &[&str]) -> anyhow::Result<PathBuf> {
    let ebpf = setup::run(packages)?;
    cargo(
        &ebpf,
        &[
            "build",
            "--release",
            "--package",
            "hermes-agent",
            "--package",
            "hermes-logapp",
            "--package",
            "hermes-loadgen",
        ],
    )?;
    Ok(target_dir().join("release"))
}

fn build_and_load(args: &[String]) -> anyhow::Result<()> {
    let ebpf = setup::run(&[])?;
    cargo(&ebpf, &["build", "--release", "--package", "hermes-agent"])?;
    let agent = target_dir().join("release/hermes-agent");
    eprintln!("$ {} {}", agent.display(), args.join(" "));
    // Replace this process so that signals (Ctrl-C, SIGTERM) reach the agent directly.
    Err(Command::new(&agent).args(args).exec()).with_context(|| format!("exec {}", agent.display()))
}

fn certs(nodes: u64, dir: &Path) -> anyhow::Result<()> {
    let ids: Vec<u64> = (1..=nodes).collect();
    let files = hermes_lab::certs::Authority::new("hermes")?.write(dir, &ids)?;
    println!("wrote {}", files[0].ca.display());
    for (id, files) in ids.iter().zip(&files) {
        println!("node {id}: {}", files.args().join(" "));
    }
    Ok(())
}

fn lab(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Up { nodes } => {
            let lab = hermes_lab::Lab::up(nodes)?;
            println!(
                "lab {} is up; clients reach nodes from this namespace:",
                lab.index
            );
            for node in &lab.nodes {
                println!(
                    "  node {}: {} / {}  (netns {}, e.g. `ip netns exec {} ...`)",
                    node.id,
                    node.ip,
                    node.ip6,
                    node.netns_path().display(),
                    node.netns
                );
            }
            println!("remove with `cargo xtask lab down`");
            lab.keep();
        }
        LabCommand::Down => {
            let removed = hermes_lab::teardown_all()?;
            println!("removed {} lab(s) {removed:?}", removed.len());
        }
    }
    Ok(())
}

/// Debian packages of the image test (tests/image.rs): podman and runc build and run the
/// agent's image, debootstrap makes its base image.
const IMAGE_TEST_PACKAGES: &[&str] = &["podman", "runc", "debootstrap"];

fn test(args: &[String]) -> anyhow::Result<()> {
    // The suite ends with `bench --quick`: set up what it needs too.
    let ebpf = setup::run(&[bench::PACKAGES, IMAGE_TEST_PACKAGES].concat())?;
    cargo(&ebpf, &["fmt", "--all", "--check"])
        .context("code is not formatted: run `cargo fmt --all`")?;
    cargo(
        &ebpf,
        &[
            "clippy",
            "--all-targets",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    manifests::validate(workspace_root(), &target_dir())?;
    // The lab tests start the workspace's binaries: build them in the profile the tests use.
    cargo(&ebpf, &["build", "--release", "--bins"])?;
    let mut test = vec!["test", "--release"];
    test.extend(args.iter().map(String::as_str));
    cargo(&ebpf, &test)?;
    // Every fuzz target, briefly: a smoke test that they build, run and find nothing quickly.
    fuzz::run(&ebpf, 5, &[])?;
    // The benchmark harness is code too: prove that it runs and writes complete output.
    bench::run(&target_dir().join("release"), true)
}

/// Runs cargo in the workspace with the eBPF toolchain chosen by setup.
fn cargo(ebpf: &setup::EbpfToolchain, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .env("HERMES_EBPF_TOOLCHAIN", &ebpf.toolchain)
        .status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}
