//! The lab: network namespaces as hosts on one machine.
//!
//! A lab `hlab<i>` is a bridge in the root namespace with address 198.18.i.254/24 and
//! fd00:4865:726d:i::fe/64, and nodes `hlab<i>-n<k>`, each a network namespace with a veth on the
//! bridge and addresses 198.18.i.k and fd00:4865:726d:i::k. The root namespace is the clients'
//! host. Labs get distinct `i`, so concurrent runs do not collide. Dropping a [`Lab`] kills the
//! processes it started (by PID), deletes its namespaces, links and bpffs pins, even when a test
//! fails.
//!
//! [`pods`] makes Kubernetes-like pods in a lab's nodes, and [`apiserver`] fakes the API server
//! that lists and watches them, for pod mode.
//!
//! [`cluster`] runs Hermes clusters in a lab, their peers authenticated with [`certs`];
//! [`client`] is a small HTTP client for them.
//!
//! Everything here needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN).
pub mod apiserver;
pub mod certs;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod load;
pub mod pods;
mod process;

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

pub use process::Process;

/// Prefix of every lab's bridge and namespaces; `lab down` removes whatever carries it.
pub const PREFIX: &str = "hlab";

/// One host of a lab.
#[derive(Debug, Clone)]
pub struct Node {
    /// 1-based, as in `--node-id`.
    pub id: usize,
    /// Name for `ip netns`.
    pub netns: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The root-namespace end of the node's veth: set it down to cut the node off.
    pub link: String,
}

impl Node {
    /// The namespace as a file, for `--netns`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// Connects from inside the node (so, e.g., to its loopback). The socket stays in the node's
    /// namespace for its whole life.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.run_inside(|| TcpStream::connect(addr))
    }

    /// Runs `f` on a thread that has entered the node's namespace.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let netns = File::open(self.netns_path())?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&netns)?;
                    f()
                })
                .join()
                .expect("thread inside the node panicked")
        })
    }

    /// A command that will run inside the node's namespace (and only there: mounts are shared).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        use std::os::unix::process::CommandExt as _;
        let netns = File::open(self.netns_path())?;
        let mut command = Command::new(program);
        // SAFETY: `setns` is async-signal-safe; `netns` is moved into the closure and outlives it.
        unsafe {
            command.pre_exec(move || setns(&netns));
        }
        Ok(command)
    }
}

fn setns(netns: &File) -> io::Result<()> {
    Ok(nix::sched::setns(
        netns,
        nix::sched::CloneFlags::CLONE_NEWNET,
    )?)
}

/// A lab; torn down on drop unless [`Lab::keep`] was called.
pub struct Lab {
    pub index: u8,
    pub nodes: Vec<Node>,
    /// The root namespace's address on the lab's bridge: where clients come from.
    pub gateway: Ipv4Addr,
    keep: bool,
}

impl Lab {
    /// Creates a lab of `nodes` hosts.
    pub fn up(nodes: usize) -> io::Result<Self> {
        require_root()?;
        if nodes == 0 || nodes > 200 {
            return Err(io::Error::other(format!(
                "a lab has 1 to 200 nodes, not {nodes}"
            )));
        }
        // Serialise index allocation among concurrent processes (parallel tests, benches).
        let lock = nix::fcntl::Flock::lock(
            File::create("/run/hermes-lab.lock")?,
            nix::fcntl::FlockArg::LockExclusive,
        )
        .map_err(|(_, errno)| io::Error::from(errno))?;
        let index = (1..=254u8)
            .find(|i| !Path::new(&format!("/sys/class/net/{PREFIX}{i}")).exists())
            .ok_or_else(|| {
                io::Error::other("all 254 lab indices are in use; run `cargo xtask lab down`")
            })?;
        let bridge = format!("{PREFIX}{index}");
        let mut lab = Self {
            index,
            nodes: Vec::new(),
            gateway: Ipv4Addr::new(198, 18, index, 254),
            keep: false,
        };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        drop(lock);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.gateway),
            "dev",
            &bridge,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/64", ip6(index, 0xfe)),
            "dev",
            &bridge,
            "nodad",
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for id in 1..=nodes {
            let node = Node {
                id,
                netns: format!("{PREFIX}{index}-n{id}"),
                ip: Ipv4Addr::new(198, 18, index, id as u8),
                ip6: ip6(index, id as u16),
                link: format!("{PREFIX}{index}n{id}"),
            };
            ip(&["netns", "add", &node.netns])?;
            lab.nodes.push(node.clone());
            let ns = node.netns.as_str();
            ip(&[
                "link", "add", &node.link, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", &node.link, "master", &bridge, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", node.ip),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/64", node.ip6),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    pub fn node(&self, id: usize) -> &Node {
        &self.nodes[id - 1]
    }

    /// Leaves the lab in place when dropped (`cargo xtask lab up`).
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// Cuts `node` off the network (its veth goes down), or reconnects it.
    pub fn set_connected(&self, node: &Node, connected: bool) -> io::Result<()> {
        ip(&[
            "link",
            "set",
            &node.link,
            if connected { "up" } else { "down" },
        ])
    }

    /// Loses `percent` of the packets to and from `node` (nftables in the node; the kernel
    /// here has no netem), or none again with `None`.
    pub fn set_loss(&self, node: &Node, percent: Option<u32>) -> io::Result<()> {
        use std::io::Write as _;
        let script = match percent {
            Some(p) => format!(
                "table inet hermes_loss {{\n\
                 chain input {{ type filter hook input priority 0; policy accept; iifname \"eth0\" numgen random mod 100 < {p} drop; }}\n\
                 chain output {{ type filter hook output priority 0; policy accept; oifname \"eth0\" numgen random mod 100 < {p} drop; }}\n\
                 }}\n"
            ),
            None => "delete table inet hermes_loss\n".to_owned(),
        };
        let mut nft = node
            .command("nft")?
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot run nft (install nftables): {e}"))
            })?;
        nft.stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())?;
        let output = nft.wait_with_output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "nft failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// Deletes the lab now, reporting what went wrong.
    pub fn down(mut self) -> io::Result<()> {
        self.keep = true;
        teardown(self.index)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep
            && let Err(error) = teardown(self.index)
        {
            eprintln!("hermes-lab: tearing down lab {}: {error}", self.index);
        }
    }
}

/// `fd00:4865:726d:<index>::<host>` ("Herm" in the ULA range).
fn ip6(index: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x4865, 0x726d, index.into(), 0, 0, 0, host)
}

/// Deletes lab `index`: processes in its namespaces, pins of those namespaces, namespaces,
/// bridge. Whatever is already gone is fine.
pub fn teardown(index: u8) -> io::Result<()> {
    let prefix = format!("{PREFIX}{index}-");
    let namespaces: Vec<String> = list_netns()?
        .into_iter()
        .filter(|netns| netns.starts_with(&prefix))
        .collect();
    for netns in &namespaces {
        kill_all_in(netns);
        if let Ok(meta) = std::fs::metadata(Path::new("/var/run/netns").join(netns)) {
            remove_pins(meta.ino());
        }
    }
    // A namespace dies asynchronously, and its veths with it: delete the veths first, and the
    // bridge (which marks the index as taken) last, so all names are free when this returns.
    let veth = format!("{PREFIX}{index}n");
    let mut first_error = None;
    for entry in std::fs::read_dir("/sys/class/net")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix(&veth)
            .is_some_and(|id| id.parse::<u8>().is_ok())
            && let Err(error) = ip(&["link", "del", &name])
        {
            first_error.get_or_insert(error);
        }
    }
    for netns in &namespaces {
        if let Err(error) = ip(&["netns", "del", netns]) {
            first_error.get_or_insert(error);
        }
    }
    let bridge = format!("{PREFIX}{index}");
    if Path::new("/sys/class/net").join(&bridge).exists()
        && let Err(error) = ip(&["link", "del", &bridge])
    {
        first_error.get_or_insert(error);
    }
    first_error.map_or(Ok(()), Err)
}

/// Tears down every lab on this machine (`cargo xtask lab down`). Returns their indices.
pub fn teardown_all() -> io::Result<Vec<u8>> {
    require_root()?;
    let mut indices: Vec<u8> = list_netns()?
        .iter()
        .filter_map(|name| name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok())
        .collect();
    for entry in std::fs::read_dir("/sys/class/net")? {
        let name = entry?.file_name();
        if let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX)?.parse().ok())
        {
            indices.push(index);
        }
    }
    indices.sort_unstable();
    indices.dedup();
    for &index in &indices {
        teardown(index)?;
    }
    Ok(indices)
}

fn list_netns() -> io::Result<Vec<String>> {
    match std::fs::read_dir("/var/run/netns") {
        Ok(entries) => entries
            .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// SIGKILL to every process in the namespace, by PID.
fn kill_all_in(netns: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes the agent's pins for a namespace about to be deleted (`hermes-agent` pins under
/// `/sys/fs/bpf/hermes/netns-<inode>-port-<port>`, and `-pod-<uid>` after it in pod mode).
pub(crate) fn remove_pins(netns_inode: u64) {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf/hermes") else {
        return;
    };
    let prefix = format!("netns-{netns_inode}-port-");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(e.kind(), format!("cannot run `ip` (install iproute2): {e}"))
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn require_root() -> io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the lab needs root: it creates network namespaces, links and eBPF programs",
        ))
    }
}

/// A binary of this workspace, built next to the running executable (tests run from
/// `target/<profile>/deps`, xtask from `target/<profile>`).
pub fn binary(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n != "deps") {
            break;
        }
        dir = d.parent();
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{name} is not built next to {}; build the workspace's binaries in the same profile \
             first (`cargo xtask test` does)",
            exe.display()
        ),
    ))
}
