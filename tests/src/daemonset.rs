//! Agents in containers, run as `deploy/daemonset.yaml` runs them: one per lab node, from the
//! manifest's own pod spec. The node's network namespace stands for the host network
//! (`hostNetwork: true`), the lab node's name for the Kubernetes node name (`spec.nodeName`), the
//! cluster's data directory of the node for the node's `/var/lib/hermes`; `/sys/fs/bpf` is the
//! machine's, as it is on a node. The container's command, its environment (the ConfigMap's
//! `HERMES_*`), its privileges and its mounts are the manifest's, read from it.
//!
//! What a user edits in the ConfigMap for their cluster (the node names and ids, the peers'
//! addresses) is set to the lab's, in one place: `LabConfig`; the Secrets the user creates (the
//! peers' certificates, the admin token) hold the lab cluster's files.
use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use hermes_lab::{
    Node, Process, client,
    cluster::{Cluster, Launcher, PORT, STARTUP},
};
use serde::Deserialize as _;
use serde_norway::Value;

use crate::podman::{Image, RUN_LABEL, podman};

/// Limits below this machine's hard limits (podman's defaults exceed them and runc fails);
/// Kubernetes has no setting for them: the node's container runtime decides.
const ULIMITS: &[&str] = &["nofile=10000:10000", "nproc=10000:10000"];

/// The parts of the manifests that say how an agent runs.
#[derive(Clone, Debug)]
pub struct DaemonSet {
    /// The data of the ConfigMaps, by name.
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// The pod template's spec.
    pod: Value,
}

impl DaemonSet {
    /// Reads the manifests (`deploy/daemonset.yaml`): its DaemonSet and ConfigMaps.
    pub fn read(path: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let mut config_maps = BTreeMap::new();
        let mut pod = None;
        for document in serde_norway::Deserializer::from_str(&text) {
            let object = Value::deserialize(document).map_err(invalid)?;
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            match object["kind"].as_str() {
                Some("ConfigMap") => {
                    let data = serde_norway::from_value(object["data"].clone()).map_err(invalid)?;
                    config_maps.insert(name.to_owned(), data);
                }
                Some("DaemonSet") => pod = Some(object["spec"]["template"]["spec"].clone()),
                _ => {}
            }
        }
        let pod = pod.ok_or_else(|| io::Error::other("no DaemonSet in the manifests"))?;
        Ok(Self { config_maps, pod })
    }

    /// The agent's container (the pod's first).
    fn container(&self) -> &Value {
        &self.pod["containers"][0]
    }

    /// The pod's init containers, in the order they run.
    fn init_containers(&self) -> Vec<&Value> {
        self.pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .collect()
    }

    /// `terminationGracePeriodSeconds` (Kubernetes' default: 30).
    pub fn grace_seconds(&self) -> u64 {
        self.pod["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30)
    }

    /// Where the container's probe `kind` (e.g. `readinessProbe`) asks: `httpGet` only.
    pub fn probe(&self, kind: &str) -> io::Result<(SocketAddr, String)> {
        let get = &self.container()[kind]["httpGet"];
        let host: IpAddr = get["host"]
            .as_str()
            .ok_or_else(|| io::Error::other(format!("{kind} has no httpGet host")))?
            .parse()
            .map_err(invalid)?;
        let port = get["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| io::Error::other(format!("{kind} has no numeric httpGet port")))?;
        let path = get["path"].as_str().unwrap_or("/").to_owned();
        Ok((SocketAddr::new(host, port), path))
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Runs a cluster's agents as containers of `image`, as the DaemonSet's pods; a
/// [`Launcher`] for [`Cluster::set_launcher`]. Clones share it.
#[derive(Clone)]
pub struct Pods(Arc<Inner>);

struct Inner {
    image: String,
    run: String,
    daemonset: DaemonSet,
    /// The ConfigMap volumes' files, per node.
    dir: tempfile::TempDir,
}

impl Pods {
    pub fn new(image: &Image, daemonset: DaemonSet) -> io::Result<Self> {
        Ok(Self(Arc::new(Inner {
            image: image.name.clone(),
            run: image.run.clone(),
            daemonset,
            dir: tempfile::tempdir()?,
        })))
    }

    pub fn daemonset(&self) -> &DaemonSet {
        &self.0.daemonset
    }

    /// The name of node `id`'s container (a new one replaces the old under the same name).
    pub fn container(&self, id: usize) -> String {
        format!("hermes-test-{}-n{id}", self.0.run)
    }

    /// Stops node `id`'s container as the kubelet does (SIGTERM, SIGKILL after the pod's grace
    /// period) and returns its exit code.
    pub fn stop(&self, id: usize) -> io::Result<i32> {
        let name = self.container(id);
        let grace = self.daemonset().grace_seconds().to_string();
        podman(&["stop", "--time", &grace, &name])?;
        podman(&["wait", &name])?
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("podman wait {name}: {e}")))
    }

    /// Uninstalls Hermes from node `id` as docs/kubernetes.md says: `hermes-agent detach` from
    /// the image, privileged, in the node's (host) network with the host's bpffs, configured by
    /// the ConfigMap's `HERMES_PORT`. Returns its output.
    pub fn detach(&self, cluster: &Cluster, id: usize) -> io::Result<String> {
        let port = self
            .daemonset()
            .config_maps
            .values()
            .find_map(|data| data.get("HERMES_PORT"))
            .ok_or_else(|| io::Error::other("no HERMES_PORT in the ConfigMap"))?;
        let mut args = self.podman_run(cluster.lab.node(id));
        args.extend(
            [
                "--rm",
                "--privileged",
                "--volume",
                "/sys/fs/bpf:/sys/fs/bpf",
                "--env",
                &format!("HERMES_PORT={port}"),
                &self.0.image,
                "detach",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman(&args)
    }

    /// Runs `command` in node `id`'s agent container, as `kubectl exec` does: with the
    /// container's environment, not its start script's. Its output, if it exits 0.
    pub fn exec(&self, id: usize, command: &[&str]) -> io::Result<String> {
        let name = self.container(id);
        podman(&[&["exec", name.as_str()], command].concat())
    }

    /// The HTTP status of node `id`'s probe `kind` (e.g. `readinessProbe`), asked as the kubelet
    /// asks it, in the node's (host) network.
    pub fn probe(&self, cluster: &Cluster, id: usize, kind: &str) -> io::Result<u16> {
        let (addr, path) = self.daemonset().probe(kind)?;
        let response = cluster
            .lab
            .node(id)
            .run_inside(move || client::get(addr, &path))?;
        Ok(response.status)
    }

    /// `podman run` for a container of this run in `node`'s network, with the runtime and limits
    /// this machine needs.
    fn podman_run(&self, node: &Node) -> Vec<String> {
        let mut args: Vec<String> = [
            "--runtime",
            "runc",
            "run",
            "--label",
            &format!("{RUN_LABEL}={}", self.0.run),
            "--network",
            &format!("ns:{}", node.netns_path().display()),
        ]
        .map(String::from)
        .into();
        for limit in ULIMITS {
            args.extend(["--ulimit".into(), limit.to_string()]);
        }
        args
    }

    /// `podman run` arguments for node `id`'s `container` of the pod spec, named `name`.
    fn run_args(
        &self,
        cluster: &Cluster,
        id: usize,
        container: &Value,
        name: String,
    ) -> io::Result<Vec<String>> {
        let pod = &self.daemonset().pod;
        let node = cluster.lab.node(id);
        if pod["hostNetwork"].as_bool() != Some(true) {
            return Err(io::Error::other(
                "the DaemonSet's pods are not on the host network: the lab runs no pod network",
            ));
        }
        let lab = LabConfig::new(cluster, id);
        let env = self.environment(container, node, &lab)?;
        let mounts = self.mounts(container, cluster, id, &env, &lab)?;

        let mut args = self.podman_run(node);
        args.extend(["--name".into(), name]);
        args.extend(security(container)?);
        for (name, value) in env {
            args.extend(["--env".into(), format!("{name}={value}")]);
        }
        for Mount {
            host,
            inside,
            options,
        } in mounts
        {
            let volume = format!("{}:{}:{options}", host.display(), inside.display());
            args.extend(["--volume".into(), volume]);
        }
        // `command` replaces the image's ENTRYPOINT, `args` its CMD.
        let command = strings(&container["command"]);
        if !command.is_empty() {
            let json = serde_json::to_string(&command).map_err(invalid)?;
            args.extend(["--entrypoint".into(), json]);
        }
        args.push(self.0.image.clone());
        args.extend(strings(&container["args"]));
        Ok(args)
    }

    /// The container's environment: `envFrom` its ConfigMaps, then `env`, then what the lab
    /// sets that no ConfigMap has.
    fn environment(
        &self,
        container: &Value,
        node: &Node,
        lab: &LabConfig,
    ) -> io::Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for source in container["envFrom"].as_sequence().into_iter().flatten() {
            let name = source["configMapRef"]["name"]
                .as_str()
                .ok_or_else(|| io::Error::other("envFrom other than a configMapRef"))?;
            // Keys that are not variable names (`node-ids`) are skipped, as Kubernetes does.
            let data = self.config_map(name, lab)?;
            env.extend(data.into_iter().filter(|(key, _)| is_variable(key)));
        }
        for variable in container["env"].as_sequence().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap_or_default().to_owned();
            let value = match (
                variable["value"].as_str(),
                variable["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            ) {
                (Some(value), _) => value.to_owned(),
                (None, Some("spec.nodeName")) => node.netns.clone(),
                _ => return Err(io::Error::other(format!("no lab value for env {name}"))),
            };
            env.insert(name, value);
        }
        for (name, value) in &lab.values {
            if is_variable(name) {
                env.insert(name.clone(), value.clone());
            }
        }
        if container == self.daemonset().container()
            && env.get("HERMES_PORT") != Some(&PORT.to_string())
        {
            return Err(io::Error::other(format!(
                "the ConfigMap's HERMES_PORT is {:?}; the lab's apps listen on {PORT}",
                env.get("HERMES_PORT")
            )));
        }
        Ok(env)
    }

    /// The container's volumes: host paths as the lab has them, ConfigMaps as files; and the
    /// files the lab's configuration names.
    fn mounts(
        &self,
        container: &Value,
        cluster: &Cluster,
        id: usize,
        env: &BTreeMap<String, String>,
        lab: &LabConfig,
    ) -> io::Result<Vec<Mount>> {
        let pod = &self.daemonset().pod;
        let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
        let mut mounts = lab.mounts.clone();
        for mount in container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let name = mount["name"].as_str().unwrap_or_default();
            let inside = PathBuf::from(mount["mountPath"].as_str().unwrap_or_default());
            let volume = volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .ok_or_else(|| io::Error::other(format!("no volume {name}")))?;
            let (host, options) = if let Some(path) = volume["hostPath"]["path"].as_str() {
                let host = if path == "/sys/fs/bpf" {
                    // The machine's bpffs: the lab's nodes share a kernel, as processes do.
                    PathBuf::from(path)
                } else if env.get("HERMES_DATA_DIR").map(Path::new) == Some(inside.as_path()) {
                    cluster.data_dir(id)
                } else {
                    return Err(io::Error::other(format!("no lab path for hostPath {path}")));
                };
                if volume["hostPath"]["type"].as_str() == Some("DirectoryOrCreate") {
                    std::fs::create_dir_all(&host)?;
                }
                let options = match mount["mountPropagation"].as_str() {
                    Some("Bidirectional") => "rshared",
                    Some("HostToContainer") => "rslave",
                    _ => "rprivate",
                };
                (host, options)
            } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
                // The Secrets docs/kubernetes.md has the user create, with the lab's files.
                let dir = self.0.dir.path().join(format!("n{id}-{name}"));
                std::fs::create_dir_all(&dir)?;
                match secret {
                    "hermes-peer-tls" => {
                        for node in 1..=cluster.nodes() {
                            let files = cluster.certs(node);
                            let key = |path: &Path| dir.join(path.file_name().unwrap_or_default());
                            std::fs::copy(&files.cert, key(&files.cert))?;
                            std::fs::copy(&files.key, key(&files.key))?;
                            std::fs::copy(&files.ca, key(&files.ca))?;
                        }
                    }
                    "hermes-admin-token" => {
                        hermes_lab::certs::write_private(
                            &dir.join("token"),
                            &std::fs::read(cluster.token_file())?,
                        )?;
                    }
                    other => {
                        return Err(io::Error::other(format!(
                            "no lab content for Secret {other}"
                        )));
                    }
                }
                (dir, "ro")
            } else if let Some(config) = volume["configMap"]["name"].as_str() {
                let dir = self.0.dir.path().join(format!("n{id}-{name}"));
                std::fs::create_dir_all(&dir)?;
                for (key, value) in self.config_map(config, lab)? {
                    std::fs::write(dir.join(key), value)?;
                }
                (dir, "ro")
            } else {
                return Err(io::Error::other(format!(
                    "volume {name}: no lab equivalent"
                )));
            };
            mounts.push(Mount {
                host,
                inside,
                options: options.into(),
            });
        }
        Ok(mounts)
    }

    /// ConfigMap `name`'s data, with the lab's values for the keys it has.
    fn config_map(&self, name: &str, lab: &LabConfig) -> io::Result<BTreeMap<String, String>> {
        let mut data = self
            .daemonset()
            .config_maps
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("no ConfigMap {name}")))?;
        for (key, value) in &lab.values {
            if let Some(entry) = data.get_mut(key) {
                entry.clone_from(value);
            }
        }
        Ok(data)
    }
}

/// The lab's values for what a user sets in the ConfigMap (the nodes' names and ids, the peers'
/// addresses).
struct LabConfig {
    /// ConfigMap keys or environment variables, and their values.
    values: Vec<(String, String)>,
    /// The files that the values name.
    mounts: Vec<Mount>,
}

impl LabConfig {
    fn new(cluster: &Cluster, id: usize) -> Self {
        let node_ids: String = cluster
            .lab
            .nodes
            .iter()
            .map(|node| format!("{} {}\n", node.netns, node.id))
            .collect();
        let mut values = vec![
            ("node-ids".to_owned(), node_ids),
            ("HERMES_PEERS".to_owned(), cluster.peers(id)),
        ];
        if id > cluster.members {
            values.push(("HERMES_JOIN".into(), "true".into()));
        }
        // The cluster's own agent flags, as the variables the agent reads them from.
        values.extend(flags_as_env(&cluster.agent_args));
        Self {
            values,
            mounts: Vec::new(),
        }
    }
}

impl Launcher for Pods {
    fn start(&mut self, cluster: &Cluster, id: usize) -> io::Result<Process> {
        let name = self.container(id);
        // The node's earlier container, if any, goes (as the kubelet replaces a pod's).
        podman(&["rm", "--force", "--ignore", "--time", "0", &name])?;
        // The init containers first, each to its end, as the kubelet runs them.
        for (n, init) in self.daemonset().init_containers().into_iter().enumerate() {
            let mut args = self.run_args(cluster, id, init, format!("{name}-init{n}"))?;
            args.insert(
                args.iter().position(|a| a == "run").expect("run") + 1,
                "--rm".into(),
            );
            eprintln!("$ podman {}", args.join(" "));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            podman(&args)?;
        }
        let args = self.run_args(cluster, id, self.daemonset().container(), name.clone())?;
        eprintln!("$ podman {}", args.join(" "));
        let mut command = std::process::Command::new("podman");
        command.args(&args);
        let mut agent = Process::spawn(format!("container {name}"), command)?;
        agent.wait_for("steering attached", STARTUP)?;
        Ok(agent)
    }

    /// `podman kill` (SIGKILL), and waits until the container has exited.
    fn kill(&mut self, id: usize) -> io::Result<()> {
        let name = self.container(id);
        podman(&["kill", &name])?;
        podman(&["wait", &name]).map(drop)
    }
}

/// A bind mount into a container.
#[derive(Clone)]
struct Mount {
    host: PathBuf,
    inside: PathBuf,
    options: String,
}

/// A YAML list of strings.
fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// `--flag value` as `HERMES_FLAG=value`, a flag without a value as `HERMES_FLAG=true`.
fn flags_as_env(args: &[String]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let mut args = args.iter().peekable();
    while let Some(flag) = args.next() {
        let Some(flag) = flag.strip_prefix("--") else {
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => match args.peek() {
                Some(value) if !value.starts_with("--") => (flag, args.next().cloned()),
                _ => (flag, None),
            },
        };
        let variable = format!("HERMES_{}", name.replace('-', "_").to_uppercase());
        env.push((variable, value.unwrap_or_else(|| "true".into())));
    }
    env
}

/// A C identifier, as an environment variable from a ConfigMap must be.
fn is_variable(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `podman run` arguments for the container's `securityContext`, as Kubernetes applies it.
/// Kubernetes allows `Bidirectional` mount propagation to privileged containers only.
fn security(container: &Value) -> io::Result<Vec<String>> {
    let context = &container["securityContext"];
    if context["privileged"].as_bool() == Some(true) {
        return Ok(vec!["--privileged".into()]);
    }
    let propagating = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|mount| mount["mountPropagation"].as_str() == Some("Bidirectional"));
    if propagating {
        return Err(io::Error::other(format!(
            "container {:?} is not privileged, and Kubernetes refuses Bidirectional mount \
             propagation to it",
            container["name"]
        )));
    }
    let mut args = Vec::new();
    let capabilities = |key: &str| strings(&context["capabilities"][key]);
    for (flag, key) in [("--cap-drop", "drop"), ("--cap-add", "add")] {
        for capability in capabilities(key) {
            let capability = match capability.as_str() {
                "ALL" => capability,
                name => format!("CAP_{name}"),
            };
            args.extend([flag.into(), capability]);
        }
    }
    match context["seccompProfile"]["type"].as_str() {
        Some("Unconfined") => args.extend(["--security-opt".into(), "seccomp=unconfined".into()]),
        None | Some("RuntimeDefault") => {}
        Some(other) => {
            return Err(io::Error::other(format!(
                "seccomp profile {other}: no lab equivalent"
            )));
        }
    }
    match context["appArmorProfile"]["type"].as_str() {
        Some("Unconfined") => args.extend(["--security-opt".into(), "apparmor=unconfined".into()]),
        None | Some("RuntimeDefault") => {}
        Some(other) => {
            return Err(io::Error::other(format!(
                "AppArmor profile {other}: no lab equivalent"
            )));
        }
    }
    if let Some(kind) = context["seLinuxOptions"]["type"].as_str() {
        args.extend(["--security-opt".into(), format!("label=type:{kind}")]);
    }
    if context["allowPrivilegeEscalation"].as_bool() == Some(false) {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    Ok(args)
}
