//! One protected pod: a Raft member with its own thread and runtime, its sockets in the pod's
//! network namespace (steered listeners, peer listener, connections to the app from the
//! delivery address), its state in the pod's volume, its steering pinned for that namespace.
//! Stopping it drains it (no new connections, requests in flight finish, the delivery in flight
//! completes) and leaves the steering pinned: the port fails closed until it is detached.
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{oneshot, watch};

use super::{
    Context,
    discover::{self, Found},
    group,
    pod::Protected,
    record::Record,
};
use crate::{
    admin::Admin,
    config::{Cli, Config, Invocation},
    data_dir::DataDir,
    node::{Node, Placement},
    order::identity::Identity,
    steer,
};

/// Ids of members made by pod mode are drawn at random below this (safe in JSON numbers).
const MAX_ID: u64 = 1 << 48;

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("the data directory on the pod's volume: {0}")]
    Data(std::io::Error),
    #[error("the data directory on the pod's volume: {0}")]
    Identity(#[from] crate::order::identity::IdentityError),
    #[error("the agent's HERMES_* settings: {0}")]
    Settings(String),
    #[error("cannot listen in the pod's network namespace: {0}")]
    Listen(std::io::Error),
    #[error("cannot record the pod's steering: {0}")]
    Record(std::io::Error),
    #[error("cannot give the pod's network namespace the delivery address: {0}")]
    Source(std::io::Error),
    #[error(transparent)]
    Start(Box<crate::order::StartError>),
    #[error(transparent)]
    Steer(#[from] steer::Error),
    #[error("the member's thread could not start: {0}")]
    Thread(std::io::Error),
    #[error(
        "the pod's volume holds the state of a member of group {recorded}, not of {labelled}: \
         empty the data directory to make the pod a new member of {labelled}"
    )]
    OtherGroup { recorded: String, labelled: String },
}

/// The file in a member's data directory naming its group.
const GROUP: &str = "group";

/// A running member.
pub struct Member {
    pub pod: Protected,
    pub netns: u64,
    /// A process of the pod in that namespace (checked to notice a sandbox made anew).
    pub pid: u32,
    pub node_id: u64,
    pub pins: PathBuf,
    pub admin: Arc<Admin>,
    /// The member's runtime: its admin routes run there.
    pub runtime: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    /// Starts the member of `pod`, found at `found`, on a thread of its own; returns once it
    /// steers the pod's port.
    pub async fn start(
        context: Arc<Context>,
        pod: Protected,
        found: Found,
    ) -> Result<Self, MemberError> {
        let (started, startup) = oneshot::channel();
        let (stop, stopping) = watch::channel(false);
        let name = format!("pod {}", pod.key);
        let (for_thread, pod_for_thread) = (Arc::clone(&context), pod.clone());
        let netns = found.netns.inode();
        let pid = found.pid;
        let thread = std::thread::Builder::new()
            .name(format!("hermes {}", pod.key.name))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(MemberError::Thread(error)));
                        return;
                    }
                };
                runtime.block_on(run(for_thread, pod_for_thread, found, started, stopping));
                // Whatever the member left running (peer server, replication) ends with it.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(MemberError::Thread)?;
        let (admin, runtime, node_id, pins) = match startup.await {
            Ok(Ok(started)) => started,
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(MemberError::Thread(std::io::Error::other(format!(
                    "{name}: the member's thread ended while starting"
                ))));
            }
        };
        Ok(Self {
            pod,
            netns,
            pid,
            node_id,
            pins,
            admin,
            runtime,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the member's thread has ended (it should not, unless stopped).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Drains the member and waits for its thread to end; the steering stays pinned.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

type Started = (Arc<Admin>, tokio::runtime::Handle, u64, PathBuf);

/// The member's life, on its own runtime.
async fn run(
    context: Arc<Context>,
    pod: Protected,
    found: Found,
    started: oneshot::Sender<Result<Started, MemberError>>,
    mut stopping: watch::Receiver<bool>,
) {
    let (config, node, listeners, admin) = match start(&context, &pod, &found).await {
        Ok(parts) => parts,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let pins = admin.steering.pins().to_owned();
    let handle = tokio::runtime::Handle::current();
    if started
        .send(Ok((Arc::clone(&admin), handle, node.id, pins)))
        .is_err()
    {
        return;
    }
    tokio::spawn(group::tend(
        Arc::clone(&node),
        pod.clone(),
        context.directory.clone(),
    ));
    let shutdown = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    if let Err(error) = crate::serve(&config, Some(&node), listeners, shutdown).await {
        tracing::error!(pod = %pod.key, %error, "serving the pod's port failed");
    }
    tracing::info!(pod = %pod.key, "member stopped; the pod's port stays closed until it is detached or taken over");
}

/// Everything a member needs, in the order that keeps the pod safe: the steering is attached
/// last, once the member can serve, and is recorded before it exists.
async fn start(
    context: &Context,
    pod: &Protected,
    found: &Found,
) -> Result<(Config, Arc<Node>, steer::Listeners, Arc<Admin>), MemberError> {
    let netns = found.netns.clone();
    let on_volume = discover::on_volume(&context.args.proc, found.container_pid, &pod.data)
        .map_err(MemberError::Data)?;
    if !on_volume {
        return Err(MemberError::Data(std::io::Error::other(format!(
            "{} is not on a volume of the container (its state would go with the container)",
            pod.data.display()
        ))));
    }
    // Every file in it is reached through this descriptor, never by a path, for as long as the
    // member lives: the pod can change its volume at any time.
    let data = discover::open_data_dir(&context.args.proc, found.container_pid, &pod.data)
        .and_then(|fd| DataDir::from_fd(fd, pod.data.clone()))
        .map_err(MemberError::Data)?;
    belongs_to_group(&data, pod)?;
    let node_id = match Identity::recorded(&data)? {
        Some(id) => id,
        None => loop {
            let id = crate::order::identity::random().map_err(MemberError::Data)? % MAX_ID;
            if id != 0 {
                break id;
            }
        },
    };
    let config = member_config(pod, node_id, data.path())?;
    let mut settings = config
        .settings()
        .map_err(|e| MemberError::Settings(e.to_string()))?
        .ok_or_else(|| MemberError::Settings("pod mode replicates: not --passthrough".into()))?;
    let telemetry = Arc::clone(&settings.telemetry);
    settings.placement = Placement {
        netns: Some(netns.clone()),
        resolve: Some(context.directory.resolver()),
        peer_name: Some(context.args.peer_name.clone()),
        data_dir: Some(data),
    };
    let target_path = netns.path();
    let target = steer::Target {
        netns: Some(&target_path),
        port: pod.port,
        fail_open: config.fail_open,
        bpffs: &config.bpffs,
        source: Some(config.app_source),
        pod: Some(&pod.uid),
    };
    let record = Record {
        uid: pod.uid.clone(),
        pod: pod.key.to_string(),
        netns: netns.inode(),
        port: pod.port,
        pins: target.pin_dir()?,
    };
    context.records.add(&record).map_err(MemberError::Record)?;
    let listeners = netns
        .run(steer::Listeners::bind)
        .map_err(MemberError::Listen)?;
    let node = Node::start(settings)
        .await
        .map_err(|e| MemberError::Start(Box::new(e)))?;
    let source = config.app_source;
    netns
        .run(|| steer::source::ensure(source))
        .map_err(MemberError::Source)?;
    let steering = steer::attach(&target, &listeners)?;
    tracing::info!(
        pod = %pod.key,
        group = pod.group,
        node_id,
        netns = netns.inode(),
        port = pod.port,
        "pod protected"
    );
    let admin = Arc::new(Admin {
        steering,
        telemetry,
        node: Some(Arc::clone(&node)),
        token_file: context.args.admin_token_file.clone(),
    });
    Ok((config, node, listeners, admin))
}

/// The member's configuration: the agent's `HERMES_*` environment, and the pod's own.
/// `data_dir` only names the directory: the member reaches it through the [`DataDir`] it opened.
fn member_config(
    pod: &Protected,
    node_id: u64,
    data_dir: &std::path::Path,
) -> Result<Config, MemberError> {
    let any: std::net::IpAddr = match pod.ips.first() {
        Some(std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    let args = [
        "hermes-agent".to_owned(),
        "--port".into(),
        pod.port.to_string(),
        "--node-id".into(),
        node_id.to_string(),
        "--peers".into(),
        format!("{node_id}={}", pod.member_addr()),
        "--raft-addr".into(),
        std::net::SocketAddr::new(any, pod.raft_port).to_string(),
        "--data-dir".into(),
        data_dir.to_string_lossy().into_owned(),
        "--join".into(),
    ];
    match Cli::invocation(args) {
        Ok(Invocation::Agent(config)) => {
            config
                .validate()
                .map_err(|e| MemberError::Settings(e.to_string()))?;
            Ok(*config)
        }
        Ok(_) => Err(MemberError::Settings("not an agent's configuration".into())),
        Err(error) => Err(MemberError::Settings(error.to_string())),
    }
}

/// Checks that the agent's environment makes a valid member configuration (at start, so that a
/// mistake exits with 64 instead of failing every pod), and that it sets nothing pod mode
/// decides per pod or cannot do.
pub fn check_environment() -> Result<(), String> {
    let probe = Protected {
        key: super::pod::PodKey {
            namespace: "check".into(),
            name: "check-0".into(),
        },
        uid: "0".into(),
        group: "check".into(),
        node: None,
        port: 1,
        raft_port: 2,
        data: "/".into(),
        container: "check".into(),
        container_ids: Vec::new(),
        ips: Vec::new(),
        terminating: false,
        ordinal: Some(0),
        group_size: 1,
    };
    let config = member_config(&probe, 1, std::path::Path::new("/nonexistent"))
        .map_err(|e| e.to_string())?;
    if config.netns.is_some() || config.app.is_some() || config.passthrough {
        return Err(
            "HERMES_NETNS, HERMES_APP and HERMES_PASSTHROUGH do not apply to pod mode: each pod's \
             namespace and port come from the pod"
                .into(),
        );
    }
    if config.snapshot_cmd.is_some() {
        return Err(
            "snapshot hooks (HERMES_SNAPSHOT_CMD, HERMES_RESTORE_CMD) are not available in pod \
             mode yet: the log is kept whole"
                .into(),
        );
    }
    Ok(())
}

/// Records the pod's group (`<namespace>/<group>`) in its data directory, or checks that the one
/// recorded is the pod's: a member of one group (its log, its vote) must not become a member of
/// another when the pod's label changes.
fn belongs_to_group(data_dir: &DataDir, pod: &Protected) -> Result<(), MemberError> {
    let labelled = format!("{}/{}", pod.key.namespace, pod.group);
    match data_dir.read(GROUP, 4096).map_err(MemberError::Data)? {
        Some(recorded) if recorded == labelled.as_bytes() => Ok(()),
        Some(recorded) => Err(MemberError::OtherGroup {
            recorded: String::from_utf8_lossy(&recorded).into_owned(),
            labelled,
        }),
        None => data_dir
            .replace(GROUP, labelled.as_bytes())
            .map_err(MemberError::Data),
    }
}

/// Detaches the steering recorded in `record` and forgets it.
pub fn detach(context: &Context, record: &Record) {
    match steer::detach_pins(&record.pins) {
        Ok(true) => tracing::info!(pins = %record.pins.display(), "pod's steering detached"),
        Ok(false) => {}
        Err(error) => {
            tracing::error!(pins = %record.pins.display(), %error, "cannot detach the pod's steering");
            return;
        }
    }
    if let Err(error) = context.records.remove(record) {
        tracing::error!(%error, "cannot remove the pod's record");
    }
}

/// Whether the netns `netns` is still that of the pod's process `pid`.
pub fn still_there(context: &Context, pid: u32, netns: u64) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(context.args.proc.join(pid.to_string()).join("ns/net"))
        .is_ok_and(|meta| meta.ino() == netns)
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("pod", &self.pod.key)
            .field("netns", &self.netns)
            .field("node_id", &self.node_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &str, group: &str) -> Protected {
        Protected {
            key: super::super::pod::PodKey {
                namespace: namespace.into(),
                name: "orders-0".into(),
            },
            uid: "0".into(),
            group: group.into(),
            node: None,
            port: 8080,
            raft_port: 7000,
            data: "/data/hermes".into(),
            container: "app".into(),
            container_ids: Vec::new(),
            ips: Vec::new(),
            terminating: false,
            ordinal: Some(0),
            group_size: 1,
        }
    }

    #[test]
    fn a_volume_stays_with_the_group_it_first_served() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        belongs_to_group(&dir, &pod("shop", "orders")).unwrap();
        belongs_to_group(&dir, &pod("shop", "orders")).unwrap();
        for other in [pod("shop", "carts"), pod("other", "orders")] {
            let refused = belongs_to_group(&dir, &other).unwrap_err();
            assert!(
                matches!(&refused, MemberError::OtherGroup { recorded, .. } if recorded == "shop/orders"),
                "{refused}"
            );
        }
    }

    /// The group file is read and written through the directory: a link the pod plants there
    /// (or at the file replacing it) is refused, and what it points to is left alone.
    #[test]
    fn a_link_at_the_group_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (data, outside) = (root.path().join("data"), root.path().join("outside"));
        let dir = DataDir::create(&data).unwrap();
        std::fs::write(&outside, b"outside").unwrap();
        for name in [GROUP, "group.tmp"] {
            std::os::unix::fs::symlink(&outside, data.join(name)).unwrap();
            let refused = belongs_to_group(&dir, &pod("shop", "orders")).unwrap_err();
            let message = refused.to_string();
            assert!(
                message.contains(&format!(
                    "`{name}` is a symbolic link; refusing to follow it"
                )),
                "{message}"
            );
            assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
            std::fs::remove_file(data.join(name)).unwrap();
        }
        belongs_to_group(&dir, &pod("shop", "orders")).unwrap();
        assert_eq!(std::fs::read(data.join(GROUP)).unwrap(), b"shop/orders");
    }
}
