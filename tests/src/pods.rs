//! Pod mode in a lab: lab nodes as Kubernetes nodes, each with a `hermes-agent pods` on its
//! host network; pods made of network namespaces and cgroups ([`hermes_lab::pods`]); a fake API
//! server that the agents list and watch through a kubeconfig, as they would a real one.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hermes_lab::{
    Lab, Process,
    apiserver::ApiServer,
    certs::{Authority, NodeFiles, write_private},
    client,
    cluster::{ADMIN_PORT, PORT, STARTUP},
    pods::{Driver, NAMESPACE, Pod},
};
use serde_json::{Value, json};

/// Where the agents serve their metrics to anyone (`--metrics-addr`), on their node's address.
pub const METRICS_PORT: u16 = 9181;

/// A lab for pod mode.
pub struct PodLab {
    pub api: ApiServer,
    pub dir: tempfile::TempDir,
    certs: NodeFiles,
    agents: Vec<Option<Process>>,
    /// Variables every agent started from now on gets besides the lab's (its members'
    /// settings, e.g. `HERMES_PROTOCOL`).
    pub agent_env: Vec<(String, String)>,
    // Last: dropped after the pods and agents.
    pub lab: Lab,
}

impl PodLab {
    /// `nodes` lab nodes with pod networking, the API server, no agent yet.
    pub fn new(nodes: usize) -> Self {
        let lab = crate::lab(nodes);
        hermes_lab::pods::network(&lab).expect("pod network");
        let api = ApiServer::start(SocketAddr::new(lab.gateway.into(), 0)).expect("API server");
        let dir = tempfile::tempdir().expect("temporary directory");
        api.kubeconfig(&dir.path().join("kubeconfig"))
            .expect("kubeconfig");
        let certs = Authority::new("hermes pods lab")
            .and_then(|ca| ca.write_named(&dir.path().join("certs"), "hermes-agent"))
            .expect("certificates");
        write_private(&dir.path().join("admin-token"), b"lab-admin-token\n").expect("token");
        Self {
            api,
            dir,
            certs,
            agents: (0..nodes).map(|_| None).collect(),
            agent_env: Vec::new(),
            lab,
        }
    }

    /// Starts `hermes-agent pods` on node `node`; returns once it has listed its pods.
    pub fn start_agent(&mut self, node: usize) {
        let lab_node = self.lab.node(node);
        let path = hermes_lab::binary("hermes-agent").expect("binary");
        let mut command = lab_node.command(path).expect("command inside the node");
        let state = self.dir.path().join(format!("state-{node}"));
        command
            .arg("pods")
            .env(
                "RUST_LOG",
                "info,openraft=warn,hermes_agent=debug,kube=warn,hyper=warn",
            )
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("HERMES_NODE_NAME", &lab_node.netns)
            .env("HERMES_STATE_DIR", &state)
            .env(
                "HERMES_ADMIN_TOKEN_FILE",
                self.dir.path().join("admin-token"),
            )
            .env("HERMES_PEER_CERT", &self.certs.cert)
            .env("HERMES_PEER_KEY", &self.certs.key)
            .env("HERMES_PEER_CA", &self.certs.ca)
            .env("HERMES_GRACE_PERIOD", "2s")
            .env("HERMES_METRICS_ADDR", format!("0.0.0.0:{METRICS_PORT}"))
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        let mut agent =
            Process::spawn(format!("pod agent on node {node}"), command).expect("agent starts");
        agent
            .wait_for("listed the labelled pods of this node", STARTUP)
            .expect("agent lists its pods");
        self.agents[node - 1] = Some(agent);
    }

    /// kill -9 of node `node`'s agent.
    pub fn kill_agent(&mut self, node: usize) {
        if let Some(mut agent) = self.agents[node - 1].take() {
            agent.kill().expect("kill");
        }
    }

    pub fn agent(&mut self, node: usize) -> &mut Process {
        self.agents[node - 1].as_mut().expect("agent running")
    }

    /// A pod of group `group` on `node` (slot: its address), running `app` (`Log` or
    /// `HttpEcho`), its volume `volume` (a name: the same name is the same volume); not yet
    /// known to the API.
    pub fn pod(
        &self,
        node: usize,
        slot: u8,
        name: &str,
        group: &str,
        volume: &str,
        driver: Driver,
    ) -> Pod {
        let volume = self.dir.path().join("volumes").join(volume);
        let mount = self.dir.path().join("mnt").join(name);
        let mut pod =
            Pod::create(&self.lab, node, slot, name, driver, &volume, &mount).expect("pod sandbox");
        let ordinal = name.rsplit_once('-').map_or("0", |(_, n)| n).to_owned();
        pod.labels = json!({ "hermes.io/group": group, "apps.kubernetes.io/pod-index": ordinal });
        pod.annotations = json!({
            "hermes.io/port": PORT.to_string(),
            "hermes.io/data": pod.mount.join("hermes").to_str().unwrap(),
            "hermes.io/container": "app",
        });
        pod
    }

    /// Publishes `pod` (as it is now) to the API.
    pub fn publish(&self, pod: &Pod) {
        self.api.apply(pod.object());
    }

    /// Marks `pod` as being deleted (the kubelet then stops it).
    pub fn terminate(&self, pod: &Pod) {
        let mut object = pod.object();
        object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        self.api.apply(object);
    }

    /// `GET path` on node `node`'s admin API.
    pub fn admin(&self, node: usize, path: &str) -> Option<client::Response> {
        let path = path.to_owned();
        self.lab
            .node(node)
            .run_inside(move || client::get(SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)), &path))
            .ok()
    }

    /// Node `node`'s agent's metrics endpoint (`--metrics-addr`), asked from off the node.
    pub fn metrics(&self, node: usize) -> String {
        let addr = SocketAddr::new(self.lab.node(node).ip.into(), METRICS_PORT);
        let scraped = client::get(addr, "/metrics").expect("metrics endpoint");
        assert_eq!(scraped.status, 200, "{}", scraped.text());
        scraped.text()
    }

    /// Node `node`'s view of pod `name` (its entry in `/status`).
    pub fn pod_status(&self, node: usize, name: &str) -> Option<Value> {
        let status: Value = serde_json::from_slice(&self.admin(node, "/status")?.body).ok()?;
        status["pods"]
            .as_array()?
            .iter()
            .find(|p| p["pod"] == format!("{NAMESPACE}/{name}"))
            .cloned()
    }

    /// Waits until node `node` protects pod `pod` in the pod's current namespace; returns its
    /// member's status.
    pub fn wait_protected(&self, node: usize, pod: &Pod) -> Value {
        let netns = netns_inode(&pod.netns_path());
        let pins = format!("/netns-{netns}-port-{PORT}-pod-{}", pod.uid);
        wait(
            &format!("pod {} protected in netns {netns}", pod.name),
            || {
                let status = self.pod_status(node, &pod.name)?;
                let member = &status["member"];
                (status["state"] == "protected"
                    && member["steering"]["pins"].as_str()?.ends_with(&pins))
                .then(|| member.clone())
            },
        )
    }

    /// Waits until node `node`'s member of `pod` is ready (in a group with a leader, caught
    /// up, its app answering).
    pub fn wait_ready(&self, node: usize, pod: &Pod) {
        wait(&format!("pod {}'s member ready", pod.name), || {
            let status = self.pod_status(node, &pod.name)?;
            (status["member"]["ready"] == true).then_some(())
        })
    }

    /// Runs `ctl --pod lab/NAME ARGS` against node `node`'s agent.
    pub fn ctl(&self, node: usize, pod: &str, args: &[&str]) -> std::process::Output {
        let path = hermes_lab::binary("hermes-agent").expect("binary");
        let mut command = self.lab.node(node).command(path).expect("command");
        command
            .arg("ctl")
            .args(["--pod", &format!("{NAMESPACE}/{pod}")])
            .arg("--admin-token-file")
            .arg(self.dir.path().join("admin-token"))
            .args(args);
        command.output().expect("ctl runs")
    }

    /// The volume directory of volume `name`.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.dir.path().join("volumes").join(name)
    }
}

/// The inode of a network namespace file.
pub fn netns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).expect("namespace file").ino()
}

/// Polls `check` until it gives something, for a minute at most; panics with `what` then.
pub fn wait<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pin directory for a pod's namespace and the protected port.
pub fn pins(pod: &Pod) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/hermes/netns-{}-port-{PORT}-pod-{}",
        netns_inode(&pod.netns_path()),
        pod.uid
    ))
}
