//! Steering: loads the `sk_lookup` program, points it at the agent's listeners and pins it in
//! bpffs so that it keeps steering (fail closed) while no agent runs.
//!
//! Every start loads a fresh program and maps, attaches them, and only then renames the new pins
//! over the old ones; the old link dies with its last pin. Between attach and rename both programs
//! run and the newer one's socket selection wins, so there is no moment in which a connection
//! can reach the app directly. This also replaces pins left by an older binary, or pins whose
//! namespace died and whose inode number was reused.
mod bpffs;
mod drops;
pub mod netns;
pub mod source;

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, SockMap},
    programs::{SkLookup, links::FdLink},
};
use hermes_common::{
    FAIL_OPEN, LISTENER_V4, LISTENER_V6, POLICY_MAP, PROGRAM, Policy, SOCKETS_MAP, STAT_BYPASSED,
    STAT_DROPPED, STAT_STEERED, STATS_MAP,
};

/// The compiled `hermes-ebpf` object, built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hermes-ebpf"));

/// Pin names inside a pin directory. The link goes last: replacing it is what switches over.
const PIN_PROGRAM: &str = "program";
const PIN_LINK: &str = "link";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot use bpffs at {path}: {source}")]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("cannot open network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error(
        "cannot load the eBPF object (it needs root, or CAP_BPF and CAP_NET_ADMIN with a seccomp profile that allows bpf(2)): {0}"
    )]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("cannot pin in bpffs: {0}")]
    Pin(#[from] aya::pin::PinError),
    #[error("the eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("the eBPF program's log: {0}")]
    Log(#[from] aya_log::Error),
}

/// The agent's sockets that steered connections are handed to.
pub struct Listeners {
    pub v4: std::net::TcpListener,
    /// `None` when the namespace has no IPv6; IPv6 connections are then dropped (or passed, when
    /// failing open).
    pub v6: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds the listeners on loopback, on ports the kernel picks: the program hands them
    /// connections for the protected port whatever their own address.
    pub fn bind() -> io::Result<Self> {
        let v4 = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let v6 = match std::net::TcpListener::bind(("::1", 0)) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "no IPv6 listener; IPv6 connections will not be steered");
                None
            }
        };
        Ok(Self { v4, v6 })
    }
}

/// What to steer.
pub struct Target<'a> {
    /// Namespace file; `None` for the agent's own namespace.
    pub netns: Option<&'a Path>,
    pub port: u16,
    pub fail_open: bool,
    pub bpffs: &'a Path,
    /// The agent's delivery address: connections from it are not steered.
    pub source: Option<std::net::Ipv4Addr>,
    /// Pod mode: the uid of the pod whose namespace this is. It names the pins too, as the
    /// inode of a namespace that is gone is soon another's: a pod's stale pins, detached late,
    /// must not be those of the pod that came after it.
    pub pod: Option<&'a str>,
}

impl Target<'_> {
    fn netns_path(&self) -> &Path {
        self.netns.unwrap_or(Path::new(netns::OWN))
    }

    /// `<bpffs>/hermes/netns-<inode>-port-<port>`: one per protected namespace and port, with
    /// `-pod-<uid>` after it in pod mode.
    pub fn pin_dir(&self) -> Result<PathBuf, Error> {
        let path = self.netns_path();
        let inode = netns::inode(path).map_err(|source| Error::Netns {
            path: path.into(),
            source,
        })?;
        let mut name = format!("netns-{inode}-port-{}", self.port);
        if let Some(uid) = self.pod {
            name.push_str("-pod-");
            name.push_str(uid);
        }
        Ok(self.bpffs.join("hermes").join(name))
    }
}

/// Attached steering: where it is pinned, and its counters.
pub struct Steering {
    pins: PathBuf,
    stats: PerCpuArray<MapData, u64>,
}

/// Connections the program has handled since this agent attached it.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub steered: u64,
    pub dropped: u64,
    pub bypassed: u64,
}

impl Steering {
    pub fn pins(&self) -> &Path {
        &self.pins
    }

    pub fn stats(&self) -> Stats {
        let read = |index| {
            self.stats
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        Stats {
            steered: read(STAT_STEERED),
            dropped: read(STAT_DROPPED),
            bypassed: read(STAT_BYPASSED),
        }
    }
}

/// Steers `target` to `listeners` and pins the result.
pub fn attach(target: &Target<'_>, listeners: &Listeners) -> Result<Steering, Error> {
    let dir = target.pin_dir()?;
    let bpffs_error = |source| Error::Bpffs {
        path: target.bpffs.into(),
        source,
    };
    bpffs::ensure_mounted(target.bpffs).map_err(bpffs_error)?;
    std::fs::create_dir_all(&dir).map_err(bpffs_error)?;

    drops::report_earlier(&dir.join(PIN_PROGRAM));
    let mut ebpf = Ebpf::load(EBPF_OBJECT)?;
    let logger = aya_log::EbpfLogger::init_with_logger(&mut ebpf, drops::ToTracing)?;
    let mut policy: Array<_, Policy> = ebpf
        .take_map(POLICY_MAP)
        .ok_or(Error::Missing(POLICY_MAP))?
        .try_into()?;
    let flags = if target.fail_open { FAIL_OPEN } else { 0 };
    policy.set(
        0,
        Policy {
            port: target.port.into(),
            flags,
            source: target
                .source
                .map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
        },
        0,
    )?;
    let mut sockets: SockMap<_> = ebpf
        .take_map(SOCKETS_MAP)
        .ok_or(Error::Missing(SOCKETS_MAP))?
        .try_into()?;
    sockets.set(LISTENER_V4, &listeners.v4.as_raw_fd(), 0)?;
    if let Some(v6) = &listeners.v6 {
        sockets.set(LISTENER_V6, &v6.as_raw_fd(), 0)?;
    }

    let stats = ebpf.take_map(STATS_MAP).ok_or(Error::Missing(STATS_MAP))?;

    let program: &mut SkLookup = ebpf
        .program_mut(PROGRAM)
        .ok_or(Error::Missing(PROGRAM))?
        .try_into()?;
    program.load()?;
    let netns_path = target.netns_path();
    let netns = File::open(netns_path).map_err(|source| Error::Netns {
        path: netns_path.into(),
        source,
    })?;
    let link = program.attach(netns)?;
    let link: FdLink = program.take_link(link)?.into();

    // Maps stay alive through the program that uses them; pin them too, for inspection
    // (`bpftool map dump pinned ...`).
    replace_pin(&dir, POLICY_MAP, |path| policy.pin(path))?;
    replace_pin(&dir, SOCKETS_MAP, |path| sockets.pin(path))?;
    replace_pin(&dir, STATS_MAP, |path| stats.pin(path))?;
    let stats = stats.try_into()?;
    replace_pin(&dir, PIN_PROGRAM, |path| program.pin(path))?;
    replace_pin(&dir, PIN_LINK, |path| link.pin(path).map(drop))?;
    tracing::info!(
        port = target.port,
        netns = %netns_path.display(),
        v4 = %listeners.v4.local_addr().map_err(bpffs_error)?,
        v6 = ?listeners.v6.as_ref().and_then(|l| l.local_addr().ok()),
        fail_open = target.fail_open,
        pins = %dir.display(),
        "steering attached: non-loopback TCP connections to the port go to the agent"
    );
    drops::follow(logger);
    Ok(Steering { pins: dir, stats })
}

/// Pins under a temporary name, then renames over the old pin, so the name never goes missing.
fn replace_pin(
    dir: &Path,
    name: &str,
    pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> Result<(), Error> {
    // bpffs reserves dots in names.
    let fresh = dir.join(format!("{name}_new"));
    let _ = std::fs::remove_file(&fresh);
    pin(&fresh)?;
    std::fs::rename(&fresh, dir.join(name)).map_err(|source| Error::Bpffs {
        path: dir.into(),
        source,
    })
}

/// Removes the steering of `target` for good: unpinning the link detaches the program.
/// Returns whether there was anything to remove.
pub fn detach(target: &Target<'_>) -> Result<bool, Error> {
    let dir = target.pin_dir()?;
    let detached = detach_pins(&dir)?;
    if detached {
        tracing::info!(port = target.port, pins = %dir.display(), "steering detached");
    }
    Ok(detached)
}

/// Removes the steering pinned in `dir` (an [`Steering::pins`]), the link first. Returns whether
/// there was anything to remove.
pub fn detach_pins(dir: &Path) -> Result<bool, Error> {
    let dir = dir.to_owned();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(Error::Bpffs { path: dir, source }),
    };
    let bpffs_error = |source| Error::Bpffs {
        path: dir.clone(),
        source,
    };
    // The link first, so that steering stops before anything else goes.
    let link = dir.join(PIN_LINK);
    if link.exists() {
        std::fs::remove_file(&link).map_err(bpffs_error)?;
    }
    for entry in entries {
        let path = entry.map_err(bpffs_error)?.path();
        if path != link {
            std::fs::remove_file(&path).map_err(bpffs_error)?;
        }
    }
    std::fs::remove_dir(&dir).map_err(bpffs_error)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pins_of_a_pod_are_named_by_its_uid_too() {
        let target = |pod| Target {
            netns: None,
            port: 8080,
            fail_open: false,
            bpffs: Path::new("/sys/fs/bpf"),
            source: None,
            pod,
        };
        let host = target(None).pin_dir().unwrap();
        let name = host.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("netns-") && name.ends_with("-port-8080"),
            "{name}"
        );
        // Two pods whose namespaces had the same inode (one gone, one after it) never share
        // pins: detaching the first one's late does not open the second one's port.
        let first = target(Some("0b8a3c1e-5f6d")).pin_dir().unwrap();
        let second = target(Some("77aa3c1e-0000")).pin_dir().unwrap();
        assert_ne!(first, second);
        assert_eq!(
            first,
            host.with_file_name(format!("{name}-pod-0b8a3c1e-5f6d"))
        );
    }
}
