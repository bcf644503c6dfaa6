//! The BPF filesystem, where steering is pinned so that it outlives the agent.
use std::{io, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Mounts bpffs at `root` unless one is mounted there already.
pub fn ensure_mounted(root: &Path) -> io::Result<()> {
    std::fs::create_dir_all(root)?;
    if statfs(root)?.filesystem_type() == BPF_FS_MAGIC {
        return Ok(());
    }
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    tracing::info!(root = %root.display(), "mounted bpffs");
    Ok(())
}
