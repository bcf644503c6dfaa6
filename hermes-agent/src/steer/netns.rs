//! Network namespaces: entering one, and naming one stably while it lives.
use std::{fs::File, io, os::unix::fs::MetadataExt, path::Path};

use nix::sched::{CloneFlags, setns};

/// The calling thread's own network namespace.
pub const OWN: &str = "/proc/thread-self/ns/net";

/// Moves the calling thread into the network namespace `path`. Threads it creates afterwards
/// (e.g. a tokio runtime's) start there too; do this before starting them.
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    setns(&file, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// The inode number of the namespace: the same for every file naming it, unique while it lives.
pub fn inode(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}
