//! Builds the eBPF object (`hermes-ebpf`) for the agent to embed, with the nightly toolchain
//! named by `HERMES_EBPF_TOOLCHAIN` (default `nightly`; `cargo xtask setup` checks it).
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=HERMES_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("HERMES_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        None | Some("") | Some("nightly") => Toolchain::Nightly,
        Some(other) => Toolchain::Custom(other),
    };
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("hermes-agent has no parent directory"))?
        .join("hermes-ebpf");
    let root_dir = root_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "hermes-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
}
