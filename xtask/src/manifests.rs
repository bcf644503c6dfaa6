//! The Kubernetes manifests (`deploy/*.yaml`) checked offline against the API's schemas, with
//! `kubernetes-validate` from PyPI, which bundles them. It is installed once into a virtual
//! environment under `target/`.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// The validator's version; it has the schemas of Kubernetes 1.25 to 1.37.
const VALIDATOR: &str = "1.37.0";
/// The Kubernetes versions the manifests must be valid for: the one the agent's API types will
/// target (k8s-openapi's `v1_33`) and the newest the validator knows.
const KUBERNETES: &[&str] = &["1.33", "1.37"];

/// Validates every `deploy/*.yaml` strictly (no unknown fields) against each of [`KUBERNETES`].
pub fn validate(workspace: &Path, target: &Path) -> anyhow::Result<()> {
    let tool = install(&target.join("kubernetes-validate"))?;
    let mut manifests: Vec<_> = std::fs::read_dir(workspace.join("deploy"))?
        .map(|entry| Ok(entry?.path()))
        .collect::<std::io::Result<_>>()?;
    manifests.retain(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    manifests.sort();
    if manifests.is_empty() {
        bail!("no manifests in deploy/");
    }
    for version in KUBERNETES {
        let status = Command::new(&tool)
            .args(["--kubernetes-version", version, "--strict", "--quiet"])
            .args(&manifests)
            .status()
            .with_context(|| format!("cannot run {}", tool.display()))?;
        if !status.success() {
            bail!("the manifests in deploy/ are not valid for Kubernetes {version} (see above)");
        }
    }
    eprintln!(
        "manifests: {} valid for Kubernetes {}",
        manifests
            .iter()
            .map(|p| p.strip_prefix(workspace).unwrap_or(p).display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        KUBERNETES.join(" and ")
    );
    Ok(())
}

/// The validator in a virtual environment at `venv`, installed there if it is not yet.
fn install(venv: &Path) -> anyhow::Result<std::path::PathBuf> {
    let tool = venv.join("bin/kubernetes-validate");
    let installed = Command::new(&tool)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(VALIDATOR));
    if installed {
        return Ok(tool);
    }
    eprintln!(
        "manifests: installing kubernetes-validate {VALIDATOR} into {}",
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .status()
        .context("cannot run python3 (install Python 3 with its venv module)")?;
    if !status.success() {
        bail!("python3 -m venv failed: on Debian, `apt-get install python3-venv`");
    }
    let status = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            &format!("kubernetes-validate=={VALIDATOR}"),
        ])
        .status()
        .context("cannot run pip")?;
    if !status.success() {
        bail!("pip could not install kubernetes-validate {VALIDATOR}");
    }
    Ok(tool)
}
