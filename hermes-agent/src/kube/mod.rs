//! Pod mode (Kubernetes): one agent per node, in a DaemonSet, protects every pod on its node
//! that carries the group label, each in the pod's own network namespace, with one Raft member
//! per pod in this one process (the ztunnel pattern, with `sk_lookup` instead of iptables).
//!
//! - [`pod`]: what the agent reads of a Pod (label, annotations);
//! - [`watch`]: the Pod watches through the API server (kube-rs);
//! - [`cgroup`], [`discover`]: finding a pod's network namespace and its container's files;
//! - [`member`]: a protected pod's member, its sockets in the pod's namespace, its state in the
//!   pod's volume; [`group`]: how members of a group find each other, form, join, promote;
//! - [`record`]: what is pinned for which pod, across restarts of the agent;
//! - [`admin`]: the agent's admin API, with every member's under `/pods/NAMESPACE/NAME/`.
//!
//! [`run`] reconciles what runs with what the API says: a labelled pod gets a member once its
//! namespace is found; a pod being deleted is drained (its port fails closed); a deleted pod is
//! detached; a pod whose sandbox was made anew (a new namespace) is drained, detached from the
//! old namespace and protected in the new one. After a restart the first full list decides, and
//! the pins of the previous agent keep every port closed until its pod's member takes over.
pub mod admin;
pub mod cgroup;
pub mod discover;
pub mod group;
pub mod member;
pub mod metrics;
pub mod pod;
pub mod readiness;
pub mod record;
pub mod watch;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::Args;
use tokio::sync::Notify;

use member::Member;
use pod::{PodKey, Protected};
use record::Records;

/// How often the agent looks at its pods even without news from the API (a sandbox made anew
/// shows only on the node).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// The state of a pod whose member is yet to be started, and why.
pub const WAITING: &str = "waiting";
/// A pod whose member is yet to be started, or not ready, holds the agent's readiness back for
/// this long at most after the agent first listed it (one that cannot be protected, or whose
/// group stays unready, must not stall a rolling update of the agents for ever).
pub const HOLDS_READINESS: Duration = Duration::from_secs(60);

/// `hermes-agent pods`: pod mode.
#[derive(Args, Debug, Clone)]
pub struct PodsArgs {
    /// This node's name (from the downward API's `spec.nodeName`): only pods scheduled here
    /// are protected.
    #[arg(long, env = "HERMES_NODE_NAME")]
    pub node_name: String,

    /// The label that puts a pod under protection; its value names the pod's group.
    #[arg(long, env = "HERMES_GROUP_LABEL", default_value = pod::GROUP_LABEL)]
    pub group_label: String,

    /// The host's /proc: the agent runs in the host's PID namespace (`hostPID`), or has the
    /// host's /proc mounted here.
    #[arg(long, env = "HERMES_PROC", default_value = "/proc")]
    pub proc: PathBuf,

    /// Where the agent records what it pinned for which pod (so that an agent restarted after a
    /// pod was deleted detaches it).
    #[arg(long, env = "HERMES_STATE_DIR", default_value = "/var/lib/hermes")]
    pub state_dir: PathBuf,

    /// Admin API: `/status` lists the protected pods, `/pods/NAMESPACE/NAME/...` is each pod's
    /// member's (status, readiness, metrics, membership).
    #[arg(long, env = "HERMES_ADMIN", default_value = "127.0.0.1:9180")]
    pub admin: SocketAddr,

    /// Also serve `GET /metrics`, and nothing else, here, to anyone (no token): every protected
    /// pod's member's metrics in one exposition, labelled `namespace`, `pod`, `group` and
    /// `member`, for a Prometheus that scrapes from off the node.
    #[arg(long, env = "HERMES_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// The admin API's bearer token (mode 0600), for changes to a group (see `ctl --pod`).
    #[arg(long, env = "HERMES_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// How the log on standard error is written: `text`, or `json` (one object per line).
    #[arg(long, env = "HERMES_LOG_FORMAT", value_enum, default_value_t = crate::config::LogFormat::Text)]
    pub log_format: crate::config::LogFormat,

    /// With peer TLS: the DNS name every agent's certificate carries. Members have no
    /// certificates of their own; the agents' authenticate them (`HERMES_PEER_CERT`, ...).
    #[arg(long, env = "HERMES_PEER_NAME", default_value = "hermes-agent")]
    pub peer_name: String,
}

/// What every member shares.
pub struct Context {
    pub args: PodsArgs,
    pub directory: group::Directory,
    pub records: Records,
}

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("{0}")]
    Environment(String),
    #[error("cannot reach the Kubernetes API (kubeconfig, or the in-cluster service account): {0}")]
    Client(#[from] ::kube::Error),
    #[error("the state directory {0}: {1}")]
    State(PathBuf, std::io::Error),
    #[error("cannot serve the admin API on {0}: {1}")]
    Admin(SocketAddr, std::io::Error),
    #[error("cannot serve the metrics on {0} (--metrics-addr): {1}")]
    Metrics(SocketAddr, std::io::Error),
}

/// What the admin API shows of a pod.
#[derive(Clone)]
pub struct PodView {
    pub uid: String,
    pub group: String,
    pub state: String,
    pub member: Option<(Arc<crate::admin::Admin>, tokio::runtime::Handle)>,
    /// When this agent first listed the pod.
    pub since: std::time::Instant,
}

impl PodView {
    /// Why the pod is not ready, if it is not: its member's reason, or, without a member, the
    /// pod's state.
    pub fn not_ready(&self) -> Option<String> {
        match &self.member {
            Some((admin, _)) => crate::admin::not_ready(admin),
            None => Some(self.state.clone()),
        }
    }
}

/// What the admin API shows.
#[derive(Default)]
pub struct View {
    pub node: String,
    pub synced: bool,
    pub pods: BTreeMap<PodKey, PodView>,
}

/// Checks the environment the members' configuration comes from (bad: exit 64).
pub fn check(args: &PodsArgs) -> Result<(), PodsError> {
    if args.node_name.is_empty() {
        return Err(PodsError::Environment("--node-name is empty".into()));
    }
    member::check_environment().map_err(PodsError::Environment)
}

/// Runs pod mode until `shutdown` resolves; then drains every member, leaving their steering
/// pinned (fail closed) for the next agent.
pub async fn run(args: PodsArgs, shutdown: impl Future<Output = ()>) -> Result<(), PodsError> {
    check(&args)?;
    let records =
        Records::open(&args.state_dir).map_err(|e| PodsError::State(args.state_dir.clone(), e))?;
    // The API client's TLS uses the process's default provider: ring, as the peers do.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ::kube::Client::try_default().await?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin)
        .await
        .map_err(|e| PodsError::Admin(args.admin, e))?;
    let metrics_listener = crate::admin::bind_metrics(args.metrics_addr)
        .await
        .map_err(|(addr, e)| PodsError::Metrics(addr, e))?;
    let context = Arc::new(Context {
        args: args.clone(),
        directory: group::Directory::default(),
        records,
    });
    let local = Arc::new(Mutex::new(watch::Local::default()));
    let changed = Arc::new(Notify::new());
    let view = Arc::new(Mutex::new(View {
        node: args.node_name.clone(),
        ..View::default()
    }));
    tokio::spawn(watch::local(
        client.clone(),
        args.group_label.clone(),
        args.node_name.clone(),
        Arc::clone(&local),
        Arc::clone(&changed),
    ));
    tokio::spawn(watch::cluster(
        client.clone(),
        args.group_label.clone(),
        context.directory.clone(),
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&view),
        args.admin_token_file.clone(),
    ));
    if let Some(listener) = metrics_listener {
        let view = Arc::clone(&view);
        let encode = move || metrics::merged(&view);
        tokio::spawn(crate::admin::serve_metrics(listener, Arc::new(encode)));
    }
    tracing::info!(
        node = args.node_name,
        label = args.group_label,
        "pod mode: watching this node's labelled pods"
    );
    let (stop_readiness, readiness_stop) = tokio::sync::watch::channel(false);
    let readiness = tokio::spawn(readiness::run(
        client.clone(),
        Arc::clone(&view),
        readiness_stop,
    ));
    let mut reconciler = Reconciler {
        context,
        client,
        members: BTreeMap::new(),
        view,
        seen: BTreeMap::new(),
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = changed.notified() => {}
            () = tokio::time::sleep(RECONCILE_EVERY) => {}
        }
        let (pods, synced) = {
            let local = local.lock().unwrap();
            (local.pods.clone(), local.synced)
        };
        if synced {
            reconciler.reconcile(&pods).await;
        }
    }
    // The pods are set not ready first (their ports close as their members drain), within
    // `readiness::WITHDRAW_WITHIN` and a round of patches under way.
    stop_readiness.send_replace(true);
    let _ = readiness.await;
    let members = std::mem::take(&mut reconciler.members);
    futures_util::future::join_all(members.into_values().map(Member::stop)).await;
    Ok(())
}

type Pods = BTreeMap<String, watch::Read>;

struct Reconciler {
    context: Arc<Context>,
    client: ::kube::Client,
    /// By pod uid.
    members: BTreeMap<String, Member>,
    view: Arc<Mutex<View>>,
    /// When each pod (by uid) was first listed.
    seen: BTreeMap<String, std::time::Instant>,
}

impl Reconciler {
    async fn reconcile(&mut self, pods: &Pods) {
        // Members whose pod is gone, being deleted, changed, or moved to a new namespace stop.
        let uids: Vec<String> = self.members.keys().cloned().collect();
        for uid in uids {
            let member = &self.members[&uid];
            let why = match pods.get(&uid) {
                None => Some("the pod was deleted"),
                Some(Err(_)) => Some("the pod's annotations are no longer valid"),
                Some(Ok(pod)) if pod.terminating => Some("the pod is being deleted"),
                Some(Ok(pod)) if changed(&member.pod, pod) => Some("the pod's annotations changed"),
                Some(Ok(_)) if member.ended() => Some("the member ended"),
                Some(Ok(pod)) if !member::still_there(&self.context, member.pid, member.netns) => {
                    match discover::find_netns(&self.context.args.proc, pod) {
                        Ok((_, found, netns)) if netns.inode() == member.netns => {
                            if let Some(member) = self.members.get_mut(&uid) {
                                member.pid = found.pid;
                            }
                            None
                        }
                        Ok(_) => Some("the pod's sandbox was made anew (a new network namespace)"),
                        // The sandbox is gone and no new one holds the pod's IP yet.
                        Err(_) => Some("the pod's network namespace is gone"),
                    }
                }
                Some(Ok(_)) => None,
            };
            if let Some(why) = why {
                let member = self.members.remove(&uid).expect("listed");
                tracing::info!(pod = %member.pod.key, why, "draining the pod's member");
                member.stop().await;
            }
        }
        // What the admin API shows lets go of the stopped members.
        self.show(pods, BTreeMap::new());
        // The steering of pods that are gone, and of namespaces no member serves any more, goes.
        match self.context.records.all() {
            Ok(records) => {
                for record in records {
                    let keep = match (pods.get(&record.uid), self.members.get(&record.uid)) {
                        (None, _) => !self.gone(&record).await,
                        (Some(_), Some(member)) => {
                            member.netns == record.netns && member.pod.port == record.port
                        }
                        // Not served yet (or being deleted): the port stays closed meanwhile.
                        (Some(_), None) => true,
                    };
                    if !keep {
                        member::detach(&self.context, &record);
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the pod records"),
        }
        // Pods without a member get one once they are found; why the others wait.
        let mut states: BTreeMap<String, String> = BTreeMap::new();
        for (uid, pod) in pods {
            let pod = match pod {
                Err((key, error)) => {
                    states.insert(uid.clone(), format!("not protected: {error}"));
                    tracing::debug!(pod = %key, %error, "labelled pod not protected");
                    continue;
                }
                Ok(pod) => pod,
            };
            if self.members.contains_key(uid) {
                continue;
            }
            if pod.terminating {
                states.insert(uid.clone(), "being deleted: its port stays closed".into());
                continue;
            }
            let found = match discover::find(&self.context.args.proc, pod) {
                Ok(found) => found,
                Err(error) => {
                    states.insert(uid.clone(), format!("{WAITING}: {error}"));
                    continue;
                }
            };
            match Member::start(Arc::clone(&self.context), pod.clone(), found).await {
                Ok(member) => {
                    self.members.insert(uid.clone(), member);
                }
                Err(error) => {
                    tracing::warn!(pod = %pod.key, %error, "cannot protect the pod yet");
                    states.insert(uid.clone(), format!("{WAITING}: {error}"));
                }
            }
        }
        self.show(pods, states);
    }

    /// Whether the API says that the pod of `record` is gone, or no longer ours to protect
    /// (unlabelled). A pod merely missing from the watch (a wrong label or node name given to
    /// this agent, say) keeps its steering: its port stays closed rather than open unordered.
    async fn gone(&self, record: &record::Record) -> bool {
        let Some((namespace, name)) = record.pod.split_once('/') else {
            return true;
        };
        let api = ::kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
            self.client.clone(),
            namespace,
        );
        let proc = &self.context.args.proc;
        let deleted = || match discover::netns_in_use(proc, &record.uid, record.netns) {
            // A pod deleted at once (`--force --grace-period=0`) leaves the API before its
            // containers are gone: its port stays closed while they run.
            Ok(true) => {
                tracing::debug!(
                    pod = record.pod,
                    "the pod is deleted, but processes are still in its namespace: its port stays closed"
                );
                false
            }
            Ok(false) => true,
            Err(error) => {
                tracing::warn!(pod = record.pod, %error, "cannot read /proc; keeping the pod's port closed");
                false
            }
        };
        match api.get_opt(name).await {
            Ok(None) => deleted(),
            Ok(Some(pod)) if pod.metadata.uid.as_deref() != Some(record.uid.as_str()) => deleted(),
            Ok(Some(pod)) => {
                let labelled = Protected::from_pod(&pod, &self.context.args.group_label).is_some();
                let here = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(self.context.args.node_name.as_str());
                if labelled && here {
                    tracing::error!(
                        pod = record.pod,
                        "the pod is labelled and on this node, but not in this agent's watch: \
                         keeping its port closed (check the agent's node name and label)"
                    );
                    false
                } else {
                    true
                }
            }
            Err(error) => {
                tracing::warn!(pod = record.pod, %error, "cannot ask the API about a pod; keeping its port closed");
                false
            }
        }
    }

    /// Updates what the admin API shows.
    fn show(&mut self, pods: &Pods, mut states: BTreeMap<String, String>) {
        self.seen.retain(|uid, _| pods.contains_key(uid));
        for uid in pods.keys() {
            self.seen
                .entry(uid.clone())
                .or_insert_with(std::time::Instant::now);
        }
        let mut view = self.view.lock().unwrap();
        view.synced = true;
        view.pods = pods
            .iter()
            .map(|(uid, pod)| {
                let (key, group) = match pod {
                    Ok(pod) => (pod.key.clone(), pod.group.clone()),
                    Err((key, _)) => (key.clone(), String::new()),
                };
                let member = self.members.get(uid);
                let state = match member {
                    Some(_) => "protected".to_owned(),
                    None => states.remove(uid).unwrap_or_else(|| WAITING.into()),
                };
                let pod_view = PodView {
                    uid: uid.clone(),
                    group,
                    state,
                    member: member.map(|m| (Arc::clone(&m.admin), m.runtime.clone())),
                    since: self.seen[uid],
                };
                (key, pod_view)
            })
            .collect();
    }
}

/// Whether what a member was started with differs from what the pod says now.
fn changed(was: &Protected, now: &Protected) -> bool {
    (
        was.port,
        was.raft_port,
        &was.data,
        &was.container,
        &was.group,
    ) != (
        now.port,
        now.raft_port,
        &now.data,
        &now.container,
        &now.group,
    )
}
