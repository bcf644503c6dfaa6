//! The BPF filesystem, where steering is pinned so that it outlives the agent.
use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at `root` unless one is mounted there already.
pub fn ensure_mounted(root: &Path) -> io::Result<()> {
    std::fs::create_dir_all(root)?;
    let path = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: `statfs` writes into the zeroed struct we pass; `path` is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let bpf = c"bpf";
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            bpf.as_ptr(),
            path.as_ptr(),
            bpf.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(root = %root.display(), "mounted bpffs");
    Ok(())
}
