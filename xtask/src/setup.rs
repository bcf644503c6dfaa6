//! `cargo xtask setup`: makes a fresh Debian-like machine able to build and test Hermes.
//!
//! The eBPF object is compiled by a nightly rustc and linked by bpf-linker, which must use the
//! same LLVM major version (a mismatch fails with "Invalid record"). bpf-linker is built against
//! Debian's LLVM of the nightly's major. The fuzz targets build with the same nightly, through
//! cargo-fuzz.
use std::process::Command;

use anyhow::{Context as _, bail};

/// The nightly known to work here (rustc 1.97, LLVM 22), installed when `nightly` is missing.
const PINNED_NIGHTLY: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Installed when `cargo fuzz` is missing; runs on the nightly above (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Debian packages the build and the lab need, beyond LLVM.
const PACKAGES: &[&str] = &["iproute2", "curl", "nftables"];

/// The toolchain that compiles the eBPF program.
pub struct EbpfToolchain {
    /// For `rustup run`, e.g. `nightly`.
    pub toolchain: String,
}

/// Makes the machine ready; `extra`: Debian packages the task needs besides the build's and
/// the lab's.
pub fn run(extra: &[&str]) -> anyhow::Result<EbpfToolchain> {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!(
            "setup: warning: this kernel has no BTF (/sys/kernel/btf/vmlinux); Hermes needs Linux >= 5.9 with BTF to run"
        );
    }
    let toolchain = nightly()?;
    let llvm = rustc_llvm_major(&toolchain)?;
    let mut packages: Vec<String> = PACKAGES
        .iter()
        .chain(extra)
        .map(|p| p.to_string())
        .collect();
    packages.push(format!("llvm-{llvm}-dev"));
    packages.push(format!("libllvm{llvm}"));
    apt_install(&packages)?;
    rust_src(&toolchain)?;
    bpf_linker(llvm)?;
    cargo_fuzz()?;
    eprintln!("setup: ok (eBPF: {toolchain}, LLVM {llvm}, bpf-linker {BPF_LINKER_VERSION})");
    Ok(EbpfToolchain { toolchain })
}

fn nightly() -> anyhow::Result<String> {
    for toolchain in ["nightly", PINNED_NIGHTLY] {
        if output("rustup", &["run", toolchain, "rustc", "--version"]).is_ok() {
            return Ok(toolchain.into());
        }
    }
    eprintln!("setup: no nightly toolchain; installing {PINNED_NIGHTLY}");
    run_command(Command::new("rustup").args([
        "toolchain",
        "install",
        PINNED_NIGHTLY,
        "--profile",
        "minimal",
    ]))
    .with_context(|| {
        format!("cannot install {PINNED_NIGHTLY}; install it with rustup and retry")
    })?;
    Ok(PINNED_NIGHTLY.into())
}

fn rustc_llvm_major(toolchain: &str) -> anyhow::Result<u32> {
    let version = output("rustup", &["run", toolchain, "rustc", "-vV"])?;
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse().ok())
        .with_context(|| format!("no LLVM version in `rustc -vV` of {toolchain}:\n{version}"))
}

fn rust_src(toolchain: &str) -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--installed", "--toolchain", toolchain],
    )?;
    if !installed.lines().any(|line| line.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to {toolchain}");
        run_command(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            toolchain,
        ]))?;
    }
    Ok(())
}

/// Installs the Debian packages that are missing (as root), or says what to install.
fn apt_install(packages: &[String]) -> anyhow::Result<()> {
    let missing: Vec<&String> = packages
        .iter()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p.as_str()])
                .is_ok_and(|status| status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if !std::path::Path::new("/etc/debian_version").exists() {
        bail!(
            "this is not a Debian-like system: install the equivalents of {list} yourself, then retry"
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("missing packages {list}: run `sudo apt-get install -y {list}` or run setup as root");
    }
    eprintln!("setup: installing {list}");
    run_command(Command::new("apt-get").args(["update", "-q"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker(llvm: u32) -> anyhow::Result<()> {
    let installed =
        output("bpf-linker", &["--version"]).is_ok_and(|v| v.contains(BPF_LINKER_VERSION));
    if !installed {
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm} (takes a few minutes)"
        );
        run_command(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    BPF_LINKER_VERSION,
                ])
                .args([
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{llvm}"),
                ])
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")),
        )?;
    }
    let path = output("which", &["bpf-linker"])?;
    let libraries = output("ldd", &[path.trim()])?;
    let linked = libraries.split_whitespace().find_map(|word| {
        word.strip_prefix("libLLVM.so.")?
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    match linked {
        Some(major) if major == llvm => Ok(()),
        Some(major) => bail!(
            "bpf-linker uses LLVM {major} but the nightly rustc uses LLVM {llvm}; rebuild it: \
             `cargo install bpf-linker --force --no-default-features --features llvm-{llvm}` \
             with LLVM_PREFIX=/usr/lib/llvm-{llvm}"
        ),
        None => {
            eprintln!(
                "setup: warning: cannot tell which LLVM bpf-linker uses (statically linked?); expecting {llvm}"
            );
            Ok(())
        }
    }
}

/// cargo-fuzz, for `cargo xtask fuzz` (and so for the tests), from crates.io.
fn cargo_fuzz() -> anyhow::Result<()> {
    if output("cargo", &["fuzz", "--version"]).is_ok() {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run_command(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
