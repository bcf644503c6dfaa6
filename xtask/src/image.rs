//! `cargo xtask image`: the agent's container image, built from `deploy/Dockerfile` as the tests
//! build it: the release agent built first with the eBPF toolchain that setup chose, and a
//! build context that holds that binary alone, where the Dockerfile copies it from.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Builds the image `tag` with podman, or docker where there is no podman; `build_args` go to
/// `build` as they are (e.g. `--isolation chroot --pull=never` offline).
pub fn run(agent: &Path, workspace: &Path, tag: &str, build_args: &[String]) -> anyhow::Result<()> {
    let tool = ["podman", "docker"]
        .into_iter()
        .find(|tool| Command::new(tool).arg("--version").output().is_ok())
        .context("neither podman nor docker is installed")?;
    let context = tempfile::tempdir()?;
    let release = context.path().join("target/release");
    std::fs::create_dir_all(&release)?;
    std::fs::copy(agent, release.join("hermes-agent"))
        .with_context(|| format!("copying {}", agent.display()))?;
    let dockerfile = workspace.join("deploy/Dockerfile");
    let mut command = Command::new(tool);
    command
        .arg("build")
        .args(build_args)
        .arg("--file")
        .arg(&dockerfile)
        .args(["--tag", tag])
        .arg(context.path());
    eprintln!("$ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("running {tool}"))?;
    if !status.success() {
        bail!("{tool} build failed ({status})");
    }
    println!("built {tag}; push it to your registry and set `image:` in deploy/*.yaml to it");
    Ok(())
}
