//! What a run measured on: the machine, the Hermes commit, the versions of the reference
//! systems. Recorded with every run, since numbers mean little without it.
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Environment {
    /// CPUs this process may use (`nproc`).
    pub cpus: usize,
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// `git describe` of the workspace, `-dirty` with uncommitted changes.
    pub commit: String,
    pub etcd: String,
    pub nginx: String,
}

impl Environment {
    pub fn probe() -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading the kernel release")?
            .trim()
            .to_owned();
        Ok(Self {
            cpus: std::thread::available_parallelism()
                .context("counting CPUs")?
                .get(),
            cpu_model,
            kernel,
            commit: first_line("git", &["describe", "--always", "--dirty"]),
            // `etcd --version` prints "etcd Version: 3.4.23" first.
            etcd: first_line("etcd", &["--version"]).replace("etcd Version: ", ""),
            // `nginx -v` prints "nginx version: nginx/1.22.1" (on stderr).
            nginx: first_line("nginx", &["-v"]).replace("nginx version: nginx/", ""),
        })
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "{} × {}, Linux {}; Hermes {}, etcd {}, nginx {}",
            self.cpus, self.cpu_model, self.kernel, self.commit, self.etcd, self.nginx
        )
    }
}

/// The first line a command prints on stdout or stderr; "unknown" if it cannot run. A missing
/// version string must not stop a benchmark whose setups will report the real problem.
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .current_dir(crate::workspace_root())
        .output()
        .ok()
        .and_then(|out| {
            let text = [out.stdout, out.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            text.lines().next().map(|line| line.trim().to_owned())
        })
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
