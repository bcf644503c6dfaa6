//! Kubernetes-like pods in a lab, for pod mode: a pod is a network namespace (`hlab<i>-p<k>-<s>`,
//! so the lab's teardown deletes it) with a veth to its lab node, an IP from 198.19.<i>.0/24
//! routed through that node, a "sandbox" process and an app process, each in a cgroup named as
//! the kubelet names a container's (cgroupfs or systemd driver), and a volume: a host directory
//! the app process sees, bind-mounted in its own mount namespace, at a path that is empty on the
//! host. The Pod object for the fake API server comes from [`Pod::object`].
//!
//! Dropping a [`Pod`] kills its processes (by PID), removes the pins made for its namespace,
//! deletes the namespace and its cgroups.
use std::{
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};

use crate::{Lab, Process, ip};

/// How the kubelet names a pod's cgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// The namespace lab pods live in.
pub const NAMESPACE: &str = "lab";

/// Routes pods' addresses through their nodes: once per lab, before its pods.
pub fn network(lab: &Lab) -> io::Result<()> {
    for node in &lab.nodes {
        sysctl(&node.netns, "net.ipv4.ip_forward", "1")?;
        for other in &lab.nodes {
            let subnet = format!("{}/28", subnet(lab.index, other.id));
            if other.id == node.id {
                continue;
            }
            ip(&[
                "-n",
                &node.netns,
                "route",
                "add",
                &subnet,
                "via",
                &other.ip.to_string(),
            ])?;
        }
        let subnet = format!("{}/28", subnet(lab.index, node.id));
        ip(&["route", "replace", &subnet, "via", &node.ip.to_string()])?;
    }
    Ok(())
}

/// Node `node`'s pod addresses: 198.19.<index>.<16 node>/28.
fn subnet(index: u8, node: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, index, (node * 16) as u8)
}

fn sysctl(netns: &str, key: &str, value: &str) -> io::Result<()> {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ])
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "sysctl {key} in {netns}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid system).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(path))
        })
        .next()
        .ok_or_else(|| io::Error::other("no cgroup v2 hierarchy is mounted"))
}

fn random_hex(bytes: usize) -> io::Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A pod of a lab node.
pub struct Pod {
    pub name: String,
    pub uid: String,
    /// The lab node it runs on (1-based), and that node's name for the API.
    pub node: usize,
    pub node_name: String,
    pub ip: Ipv4Addr,
    /// Its network namespace, for `ip netns`.
    pub netns: String,
    /// The pod's volume on the host.
    pub volume: PathBuf,
    /// Where the app sees the volume (an empty directory on the host).
    pub mount: PathBuf,
    pub driver: Driver,
    /// Labels and annotations of its object (the group label, the port, ...).
    pub labels: Value,
    pub annotations: Value,
    node_netns: String,
    link: String,
    sandbox_id: String,
    app_id: String,
    init_id: String,
    cgroups: Vec<PathBuf>,
    sandbox: Option<Process>,
    app: Option<Process>,
    init: Option<Process>,
    impostors: Vec<Process>,
}

impl Pod {
    /// Makes pod `name` on lab node `node`, slot `slot` (1 to 15: its address), its volume
    /// `volume` seen by its app at `mount`; its sandbox runs, its app does not yet.
    pub fn create(
        lab: &Lab,
        node: usize,
        slot: u8,
        name: &str,
        driver: Driver,
        volume: &Path,
        mount: &Path,
    ) -> io::Result<Self> {
        assert!((1..16).contains(&slot), "a node has pod slots 1 to 15");
        let lab_node = lab.node(node);
        let uid = {
            let hex = random_hex(16)?;
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        };
        std::fs::create_dir_all(volume)?;
        std::fs::create_dir_all(mount)?;
        let mut pod = Self {
            name: name.to_owned(),
            uid,
            node,
            node_name: lab_node.netns.clone(),
            ip: Ipv4Addr::from(u32::from(subnet(lab.index, node)) + u32::from(slot)),
            netns: format!(
                "{}-p{node}-{slot}",
                crate::PREFIX.to_owned() + &lab.index.to_string()
            ),
            volume: volume.to_owned(),
            mount: mount.to_owned(),
            driver,
            labels: json!({}),
            annotations: json!({}),
            node_netns: lab_node.netns.clone(),
            link: format!("hp{}x{node}x{slot}", lab.index),
            sandbox_id: String::new(),
            app_id: String::new(),
            init_id: String::new(),
            cgroups: Vec::new(),
            sandbox: None,
            app: None,
            init: None,
            impostors: Vec::new(),
        };
        pod.sandbox_up()?;
        Ok(pod)
    }

    /// The pod's namespace file.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.netns)
    }

    /// Its network namespace, its link to the node, its sandbox process.
    fn sandbox_up(&mut self) -> io::Result<()> {
        let (ns, node) = (self.netns.as_str(), self.node_netns.as_str());
        ip(&["netns", "add", ns])?;
        ip(&[
            "-n", node, "link", "add", &self.link, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            "169.254.1.1/32",
            "dev",
            &self.link,
        ])?;
        ip(&["-n", node, "link", "set", &self.link, "up"])?;
        ip(&[
            "-n",
            node,
            "route",
            "add",
            &format!("{}/32", self.ip),
            "dev",
            &self.link,
        ])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", self.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        self.sandbox_id = random_hex(32)?;
        let mut command = self.in_cgroup(&self.sandbox_id.clone(), &self.netns_path())?;
        command.args(["sleep", "infinity"]);
        self.sandbox = Some(Process::spawn(
            format!("sandbox of pod {}", self.name),
            command,
        )?);
        Ok(())
    }

    /// Makes (and remembers) the cgroup of container `id` of this pod.
    fn cgroup(&mut self, id: &str) -> io::Result<PathBuf> {
        let root = cgroup2_root()?;
        let dir = match self.driver {
            Driver::Cgroupfs => root
                .join("kubepods/besteffort")
                .join(format!("pod{}", self.uid))
                .join(id),
            Driver::Systemd => root
                .join("kubepods.slice/kubepods-besteffort.slice")
                .join(format!(
                    "kubepods-besteffort-pod{}.slice",
                    self.uid.replace('-', "_")
                ))
                .join(format!("cri-containerd-{id}.scope")),
        };
        std::fs::create_dir_all(&dir)?;
        self.cgroups.push(dir.clone());
        Ok(dir)
    }

    /// Starts an init container (one that waits, with the volume mounted as the app will), as
    /// a pod has before its app runs.
    pub fn start_init(&mut self) -> io::Result<()> {
        self.init_id = random_hex(32)?;
        let command = self.container(&self.init_id.clone(), Path::new("sleep"), &["infinity"])?;
        self.init = Some(Process::spawn(
            format!("init container of pod {}", self.name),
            command,
        )?);
        Ok(())
    }

    /// The init container is done.
    pub fn finish_init(&mut self) {
        if let Some(mut init) = self.init.take() {
            let _ = init.kill();
        }
    }

    /// A command that runs what is appended to it in container `id`'s cgroup (made here) and the
    /// network namespace `netns` (a file): `sh` puts itself in the cgroup, then becomes `nsenter`.
    fn in_cgroup(&mut self, id: &str, netns: &Path) -> io::Result<Command> {
        let cgroup = self.cgroup(id)?;
        let mut command = Command::new("sh");
        command.args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && shift && exec nsenter "$@""#,
            "sh",
        ]);
        command.arg(&cgroup);
        command.arg(format!("--net={}", netns.display()));
        Ok(command)
    }

    /// A command that runs `program args` as container `id` of the pod: in its cgroup, in the
    /// pod's network namespace, in a mount namespace of its own where the volume is at
    /// [`Self::mount`].
    fn container(&mut self, id: &str, program: &Path, args: &[&str]) -> io::Result<Command> {
        let mut command = self.in_cgroup(id, &self.netns_path())?;
        command.args(["unshare", "--mount", "--propagation", "private", "sh", "-c"]);
        command.arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#);
        command.arg("sh");
        command.arg(&self.volume);
        command.arg(&self.mount);
        command.arg(program);
        command.args(args);
        Ok(command)
    }

    /// Starts the app, `program args`, in the pod: its namespace, a container's cgroup, and a
    /// mount namespace of its own where the volume is at [`Self::mount`]. `ready` is a line it
    /// prints once it serves.
    pub fn start_app(&mut self, program: &Path, args: &[&str], ready: &str) -> io::Result<()> {
        self.app_id = random_hex(32)?;
        let command = self.container(&self.app_id.clone(), program, args)?;
        let mut app = Process::spawn(format!("app of pod {}", self.name), command)?;
        app.wait_for(ready, crate::cluster::STARTUP)?;
        self.app = Some(app);
        Ok(())
    }

    /// A process that claims to be this pod: in a container cgroup of the pod's, but in the
    /// network namespace `netns` (a file), not the pod's. It lives as long as the pod.
    pub fn impostor(&mut self, netns: &Path) -> io::Result<u32> {
        let id = random_hex(32)?;
        let mut command = self.in_cgroup(&id, netns)?;
        command.args(["sleep", "infinity"]);
        let impostor = Process::spawn(format!("impostor of pod {}", self.name), command)?;
        let pid = impostor.pid();
        self.impostors.push(impostor);
        Ok(pid)
    }

    /// kill -9 of the app.
    pub fn kill_app(&mut self) {
        if let Some(mut app) = self.app.take() {
            let _ = app.kill();
        }
        self.finish_init();
    }

    /// kill -9 of the app and the sandbox: nothing is left in the pod's namespace (which stays,
    /// named, with the agent's pins for it).
    pub fn kill_all(&mut self) {
        self.kill_app();
        if let Some(mut sandbox) = self.sandbox.take() {
            let _ = sandbox.kill();
        }
    }

    /// The pod's sandbox dies and the kubelet makes a new one: a new network namespace with the
    /// same address, new containers (the app must be started again).
    pub fn recreate_sandbox(&mut self) -> io::Result<()> {
        self.kill_all();
        // As the CNI plugin does: the link goes with the sandbox, even while someone (the
        // agent) still holds the old namespace open.
        ip(&["-n", &self.node_netns, "link", "del", &self.link])?;
        ip(&["netns", "del", &self.netns])?;
        self.sandbox_up()
    }

    /// The Pod object as the API server would show it.
    pub fn object(&self) -> Value {
        let mut statuses = Vec::new();
        if self.app.is_some() {
            statuses.push(json!({
                "name": "app", "containerID": format!("containerd://{}", self.app_id),
                "image": "lab", "imageID": "", "ready": true, "restartCount": 0,
            }));
        }
        let mut inits = Vec::new();
        if !self.init_id.is_empty() {
            inits.push(json!({
                "name": "wait-for-hermes", "containerID": format!("containerd://{}", self.init_id),
                "image": "lab", "imageID": "", "ready": false, "restartCount": 0,
            }));
        }
        json!({
            "metadata": {
                "name": self.name, "namespace": NAMESPACE, "uid": self.uid,
                "labels": self.labels, "annotations": self.annotations,
            },
            "spec": { "nodeName": self.node_name, "containers": [ { "name": "app" } ] },
            "status": {
                "phase": "Running", "podIP": self.ip.to_string(),
                "podIPs": [ { "ip": self.ip.to_string() } ],
                "containerStatuses": statuses,
                "initContainerStatuses": inits,
            },
        })
    }

    /// Runs `f` on a thread inside the pod's network namespace.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let netns = std::fs::File::open(self.netns_path())?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    f()
                })
                .join()
                .expect("thread inside the pod panicked")
        })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.kill_all();
        for mut impostor in self.impostors.drain(..) {
            let _ = impostor.kill();
        }
        // The agents' pins for the pod's namespace go with it (they are named by its inode).
        if let Ok(meta) = std::fs::metadata(self.netns_path()) {
            use std::os::unix::fs::MetadataExt as _;
            crate::remove_pins(meta.ino());
        }
        let _ = ip(&["-n", &self.node_netns, "link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.netns]);
        for dir in self.cgroups.iter().rev() {
            let _ = std::fs::remove_dir(dir);
            // The pod's own cgroup (and the slices above it, if no other test uses them).
            let mut parent = dir.parent();
            while let Some(dir) = parent {
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
                parent = dir.parent();
            }
        }
    }
}
