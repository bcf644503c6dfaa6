//! Finding a pod on this node: its network namespace and its container's filesystem.
//!
//! The network namespace is that of a process whose cgroup names the pod's uid (as the kubelet
//! names it) and which holds the pod's IP (Istio's check): a process of another pod, or one that
//! merely claims the pod's cgroup from another namespace, is not taken. If two namespaces pass,
//! neither is taken. A namespace is named by its inode: a sandbox made anew is a new namespace.
//! The container's filesystem is reached through `/proc/<pid>/root` of one of its processes,
//! resolved inside that root so that no link in the pod leads the agent out of it.
use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    os::{fd::OwnedFd, unix::fs::MetadataExt as _},
    path::{Component, Path},
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2},
    sys::stat::{Mode, mkdirat},
};

use super::{cgroup, pod::Protected};
use crate::steer::netns::Netns;

/// A process of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProcess {
    pub pid: u32,
    /// Its network namespace's inode.
    pub netns: u64,
    /// The container it runs in (`None`: the pod's own cgroup).
    pub container: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("the pod has no IP yet")]
    NoIp,
    #[error("no process of the pod runs on this node yet")]
    NoProcess,
    #[error("no process of the pod is in a network namespace holding its IP {0}")]
    NoNamespace(IpAddr),
    #[error(
        "processes of the pod are in {0} network namespaces that hold its IP: not protecting a \
         pod whose namespace is ambiguous"
    )]
    Ambiguous(usize),
    #[error("container {0} has no process on this node yet")]
    NoContainer(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The processes under `proc` (e.g. `/proc`) in pod `uid`'s cgroup. Processes that end while
/// they are read are left out.
pub fn processes(proc: &Path, uid: &str) -> io::Result<Vec<PodProcess>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(proc)? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        let Some(container) = cgroup::container_in_pod(&cgroups, uid) else {
            continue;
        };
        let Ok(netns) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        found.push(PodProcess {
            pid,
            netns: netns.ino(),
            container,
        });
    }
    found.sort_by_key(|p| p.pid);
    Ok(found)
}

/// Whether a process under `proc` of pod `uid` is still in the network namespace with inode
/// `netns` (the pod's own: once it is gone, its inode may be another namespace's).
pub fn netns_in_use(proc: &Path, uid: &str, netns: u64) -> io::Result<bool> {
    Ok(processes(proc, uid)?.iter().any(|p| p.netns == netns))
}

/// The one namespace among `processes` that holds the pod's IP, asked of a process in each
/// with `holds`; returns a process in it.
pub fn choose(
    processes: &[PodProcess],
    ip: IpAddr,
    mut holds: impl FnMut(&PodProcess) -> io::Result<bool>,
) -> Result<PodProcess, DiscoverError> {
    if processes.is_empty() {
        return Err(DiscoverError::NoProcess);
    }
    let mut by_netns: BTreeMap<u64, &PodProcess> = BTreeMap::new();
    for process in processes {
        by_netns.entry(process.netns).or_insert(process);
    }
    let mut holding = Vec::new();
    for process in by_netns.values() {
        // A process that ended meanwhile tells nothing.
        if holds(process).unwrap_or(false) {
            holding.push((*process).clone());
        }
    }
    match holding.len() {
        0 => Err(DiscoverError::NoNamespace(ip)),
        1 => Ok(holding.remove(0)),
        n => Err(DiscoverError::Ambiguous(n)),
    }
}

/// Where a protected pod is on this node.
#[derive(Debug)]
pub struct Found {
    pub netns: Netns,
    /// A process of the pod in that namespace.
    pub pid: u32,
    /// A process of the container with the data volume, in that namespace.
    pub container_pid: u32,
}

/// Finds `pod`'s network namespace under `proc`: a process in it, and the namespace.
pub fn find_netns(
    proc: &Path,
    pod: &Protected,
) -> Result<(Vec<PodProcess>, PodProcess, Netns), DiscoverError> {
    let ip = *pod.ips.first().ok_or(DiscoverError::NoIp)?;
    let processes = processes(proc, &pod.uid)?;
    let chosen = choose(&processes, ip, |p| {
        let netns = Netns::open(&proc.join(p.pid.to_string()).join("ns/net"))?;
        holds(&netns, ip)
    })?;
    let netns = Netns::open(&proc.join(chosen.pid.to_string()).join("ns/net"))?;
    // The process may have been replaced between the two looks: the namespace opened must be
    // the one checked.
    if netns.inode() != chosen.netns {
        return Err(DiscoverError::NoProcess);
    }
    Ok((processes, chosen, netns))
}

/// Finds `pod` under `proc`: its namespace, and a process of its data container there.
pub fn find(proc: &Path, pod: &Protected) -> Result<Found, DiscoverError> {
    let (processes, chosen, netns) = find_netns(proc, pod)?;
    // The data container, or while the pod initialises, one of its init containers (which
    // mount the same volume): the first that runs.
    let container_pid = pod
        .container_ids
        .iter()
        .find_map(|id| {
            processes
                .iter()
                .find(|p| p.netns == chosen.netns && p.container.as_ref() == Some(id))
        })
        .ok_or_else(|| DiscoverError::NoContainer(pod.container.clone()))?
        .pid;
    Ok(Found {
        netns,
        pid: chosen.pid,
        container_pid,
    })
}

/// Whether `ip` is an address of an interface in `netns` (asked with netlink from inside).
pub fn holds(netns: &Netns, ip: IpAddr) -> io::Result<bool> {
    netns.run(|| {
        Ok(nix::ifaddrs::getifaddrs()
            .map_err(io::Error::from)?
            .filter_map(|a| a.address)
            .any(|address| {
                address.as_sockaddr_in().map(|a| IpAddr::from(a.ip())) == Some(ip)
                    || address.as_sockaddr_in6().map(|a| IpAddr::from(a.ip())) == Some(ip)
            }))
    })
}

/// Whether `path` lies on a mount other than the root one in the mount namespace of process
/// `pid` (a volume, not the container's own, throwaway, filesystem).
pub fn on_volume(proc: &Path, pid: u32, path: &Path) -> io::Result<bool> {
    let mountinfo = std::fs::read_to_string(proc.join(pid.to_string()).join("mountinfo"))?;
    Ok(mountinfo.lines().any(|line| {
        // The fifth field is the mount point, with spaces and the like as octal escapes.
        line.split(' ')
            .nth(4)
            .map(unescape_octal)
            .is_some_and(|point| point != "/" && path.starts_with(&point))
    }))
}

fn unescape_octal(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out + rest
}

/// Opens (making what is missing, mode 0700) the directory `path` of the filesystem process
/// `pid` sees, under `proc`. Every component is resolved inside that root, and none may be a
/// symbolic link: nothing in the pod can point the agent elsewhere.
pub fn open_data_dir(proc: &Path, pid: u32, path: &Path) -> io::Result<OwnedFd> {
    let root = open(
        &proc.join(pid.to_string()).join("root"),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let mut dir = root;
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let next = match openat2(&dir, name, how) {
            Err(Errno::ENOENT) => {
                match mkdirat(&dir, name, Mode::S_IRWXU) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(error) => return Err(error.into()),
                }
                openat2(&dir, name, how)
            }
            other => other,
        };
        dir = next.map_err(|error| match error {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => io::Error::other(format!(
                "{}: a symbolic link or a file in the path (links are not followed in a pod)",
                path.display()
            )),
            error => io::Error::from(error),
        })?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b8a3c1e-5f6d-4e2a-9c7b-1d2e3f4a5b6c";

    /// A fake `/proc`: `pid` → (cgroup file, namespace name).
    fn fake_proc(processes: &[(u32, String, &str)]) -> tempfile::TempDir {
        let proc = tempfile::tempdir().unwrap();
        let namespaces = proc.path().join("namespaces");
        std::fs::create_dir(&namespaces).unwrap();
        std::fs::create_dir(proc.path().join("self")).unwrap();
        for (pid, cgroup, netns) in processes {
            let dir = proc.path().join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
            // One file per namespace name, hard-linked: the same inode, as in nsfs.
            let ns = namespaces.join(netns);
            if !ns.exists() {
                std::fs::write(&ns, netns).unwrap();
            }
            std::fs::hard_link(&ns, dir.join("ns/net")).unwrap();
        }
        proc
    }

    /// Which fake namespaces hold the pod's IP.
    fn holds_in(proc: &Path, holding: &[&str]) -> impl FnMut(&PodProcess) -> io::Result<bool> {
        let proc = proc.to_owned();
        let holding: Vec<String> = holding.iter().map(|s| s.to_string()).collect();
        move |p| {
            let name = std::fs::read_to_string(proc.join(p.pid.to_string()).join("ns/net"))?;
            Ok(holding.contains(&name))
        }
    }

    #[test]
    fn a_namespace_is_in_use_while_a_process_of_the_pod_is_in_it() {
        use std::os::unix::fs::MetadataExt as _;
        let pod = format!("0::/kubepods/besteffort/pod{UID}/app\n");
        let proc = fake_proc(&[
            (1, "0::/init.scope\n".into(), "host"),
            (50, pod, "pod"),
            // Another pod's process, in a namespace that got the same inode.
            (60, "0::/kubepods/besteffort/podother/x\n".into(), "pod"),
        ]);
        let inode = |name: &str| {
            std::fs::metadata(proc.path().join("namespaces").join(name))
                .unwrap()
                .ino()
        };
        assert!(netns_in_use(proc.path(), UID, inode("pod")).unwrap());
        assert!(!netns_in_use(proc.path(), UID, inode("host")).unwrap());
        std::fs::remove_dir_all(proc.path().join("50")).unwrap();
        assert!(!netns_in_use(proc.path(), UID, inode("pod")).unwrap());
    }

    #[test]
    fn the_pods_namespace_is_the_one_holding_its_ip() {
        let pod = |c: &str| format!("0::/kubepods/besteffort/pod{UID}/{c}\n");
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let proc = fake_proc(&[
            (1, "0::/init.scope\n".into(), "host"),
            // A foreign process claiming the pod's cgroup from another namespace comes first.
            (40, pod("fake"), "elsewhere"),
            (50, pod("pause"), "pod"),
            (51, pod("abc"), "pod"),
            (60, "0::/kubepods/besteffort/podother/x\n".into(), "pod2"),
        ]);
        let processes = processes(proc.path(), UID).unwrap();
        assert_eq!(
            processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [40, 50, 51]
        );
        let chosen = choose(&processes, ip, holds_in(proc.path(), &["pod", "pod2"])).unwrap();
        assert_eq!(chosen.pid, 50);
        assert_eq!(
            processes
                .iter()
                .find(|p| p.container.as_deref() == Some("abc"))
                .unwrap()
                .netns,
            chosen.netns
        );
        // Nobody holds the IP: nothing is taken.
        assert!(matches!(
            choose(&processes, ip, holds_in(proc.path(), &[])),
            Err(DiscoverError::NoNamespace(_))
        ));
        // Two namespaces hold it: ambiguous, nothing is taken.
        assert!(matches!(
            choose(&processes, ip, holds_in(proc.path(), &["pod", "elsewhere"])),
            Err(DiscoverError::Ambiguous(2))
        ));
        assert!(matches!(
            choose(&[], ip, |_| Ok(true)),
            Err(DiscoverError::NoProcess)
        ));
    }

    #[test]
    fn the_data_dir_must_be_on_a_volume() {
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc.path().join("9")).unwrap();
        std::fs::write(
            proc.path().join("9/mountinfo"),
            "1 0 0:1 / / rw - overlay overlay rw\n\
             2 1 8:1 /volumes/x /var/lib/my\\040app rw - ext4 /dev/sda1 rw\n",
        )
        .unwrap();
        assert!(on_volume(proc.path(), 9, Path::new("/var/lib/my app/hermes")).unwrap());
        assert!(!on_volume(proc.path(), 9, Path::new("/var/lib/other")).unwrap());
        assert!(!on_volume(proc.path(), 9, Path::new("/var/lib/my")).unwrap());
    }

    #[test]
    fn the_data_dir_is_made_inside_the_root_and_links_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let proc = tempfile::tempdir().unwrap();
        std::fs::create_dir(proc.path().join("7")).unwrap();
        std::os::unix::fs::symlink(root.path(), proc.path().join("7/root")).unwrap();
        open_data_dir(proc.path(), 7, Path::new("/var/lib/app/hermes")).unwrap();
        let made = root.path().join("var/lib/app/hermes");
        assert!(made.is_dir());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(made.metadata().unwrap().permissions().mode() & 0o777, 0o700);
        // A link in the pod pointing out of it is not followed.
        std::os::unix::fs::symlink("/etc", root.path().join("var/evil")).unwrap();
        let error = open_data_dir(proc.path(), 7, Path::new("/var/evil/hermes")).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(!Path::new("/etc/hermes").exists());
    }
}
