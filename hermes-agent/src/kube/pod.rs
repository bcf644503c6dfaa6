//! What the agent reads of a Pod: its group (a label), and in annotations its protected port,
//! its peer port, where in its volume Hermes keeps the member's state, and which container has
//! that volume. Everything is checked here, once: a bad annotation is an error that names it.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Component, Path, PathBuf},
};

use k8s_openapi::api::core::v1::Pod;

/// The label that puts a pod under protection; its value names the pod's group.
pub const GROUP_LABEL: &str = "hermes.io/group";
/// The protected port (required).
pub const PORT: &str = "hermes.io/port";
/// Where the member's peers reach it, in the pod (default [`DEFAULT_RAFT_PORT`]).
pub const RAFT_PORT: &str = "hermes.io/raft-port";
/// The directory, inside the container, for the member's log and delivery progress: on the
/// app's volume (required).
pub const DATA: &str = "hermes.io/data";
/// The container whose filesystem [`DATA`] is in (default: the pod's first container).
pub const CONTAINER: &str = "hermes.io/container";
/// How many pods the group is formed with (the StatefulSet's first `replicas`; default 1): the
/// pod with ordinal 0 forms the group only once that many of its pods answer, none in a cluster.
pub const GROUP_SIZE: &str = "hermes.io/group-size";
/// The StatefulSet controller's label with the pod's ordinal.
const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

pub const DEFAULT_RAFT_PORT: u16 = 7000;

/// A pod, as one namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod carrying the group label, as the agent understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protected {
    pub key: PodKey,
    pub uid: String,
    pub group: String,
    pub node: Option<String>,
    pub port: u16,
    pub raft_port: u16,
    /// Absolute, without `.` or `..`.
    pub data: PathBuf,
    pub container: String,
    /// The runtime's ids (without `containerd://`) of [`Self::container`], and of the pod's
    /// init containers, those that have one: where the data volume is reached.
    pub container_ids: Vec<String>,
    /// The pod's addresses once it has them; the first is `status.podIP`.
    pub ips: Vec<IpAddr>,
    /// Being deleted: no new connections, the member drains.
    pub terminating: bool,
    /// The pod's ordinal in its StatefulSet: only ordinal 0 forms a group.
    pub ordinal: Option<u64>,
    /// Pods the group is formed with.
    pub group_size: usize,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("the pod has no {0}")]
    Missing(&'static str),
    #[error("annotation {0}: `{1}` is not a port (1 to 65535)")]
    Port(&'static str, String),
    #[error(
        "annotation {DATA}: `{0}` is not an absolute path without `.` or `..` (a directory on the app's volume)"
    )]
    Data(String),
    #[error("the pod's uid `{0}` is not a Kubernetes uid")]
    Uid(String),
    #[error("annotation {CONTAINER}: the pod has no container `{0}`")]
    Container(String),
    #[error("annotation {GROUP_SIZE}: `{0}` is not a number of pods (1 to 255)")]
    GroupSize(String),
    #[error("{0} `{1}` has characters an address cannot have")]
    Name(&'static str, String),
}

impl Protected {
    /// Reads `pod`; `label` is the group label (usually [`GROUP_LABEL`]). `None`: the pod does
    /// not carry the label.
    pub fn from_pod(pod: &Pod, label: &str) -> Option<Result<Self, PodError>> {
        let meta = &pod.metadata;
        let group = meta.labels.as_ref()?.get(label)?.clone();
        Some(Self::read(pod, group))
    }

    fn read(pod: &Pod, group: String) -> Result<Self, PodError> {
        let meta = &pod.metadata;
        let none = BTreeMap::new();
        let annotations = meta.annotations.as_ref().unwrap_or(&none);
        let namespace = meta
            .namespace
            .clone()
            .ok_or(PodError::Missing("namespace"))?;
        let name = meta.name.clone().ok_or(PodError::Missing("name"))?;
        // They become a member's address, `<namespace>/<name>:<port>`.
        for (what, text) in [("namespace", &namespace), ("name", &name)] {
            if text.is_empty()
                || !text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(PodError::Name(what, text.clone()));
            }
        }
        let uid = meta.uid.clone().ok_or(PodError::Missing("uid"))?;
        if uid.is_empty()
            || uid.len() > 64
            || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(PodError::Uid(uid));
        }
        let raft_port = annotated_port(annotations, RAFT_PORT)?.unwrap_or(DEFAULT_RAFT_PORT);
        let group_size = match annotations.get(GROUP_SIZE) {
            None => 1,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(size) if (1..=255).contains(&size) => size,
                _ => return Err(PodError::GroupSize(text.clone())),
            },
        };
        let port = annotated_port(annotations, PORT)?
            .ok_or(PodError::Missing("annotation hermes.io/port"))?;
        if raft_port == port {
            return Err(PodError::Port(RAFT_PORT, raft_port.to_string()));
        }
        let data = annotations
            .get(DATA)
            .ok_or(PodError::Missing("annotation hermes.io/data"))?;
        let data = clean_path(data).ok_or_else(|| PodError::Data(data.clone()))?;
        let spec = pod.spec.as_ref().ok_or(PodError::Missing("spec"))?;
        let container = match annotations.get(CONTAINER) {
            Some(name) if spec.containers.iter().any(|c| &c.name == name) => name.clone(),
            Some(name) => return Err(PodError::Container(name.clone())),
            None => spec
                .containers
                .first()
                .ok_or(PodError::Missing("container"))?
                .name
                .clone(),
        };
        let status = pod.status.as_ref();
        let main = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.name == container);
        let init = status
            .and_then(|s| s.init_container_statuses.as_ref())
            .into_iter()
            .flatten();
        let container_ids = main
            .chain(init)
            .filter_map(|c| c.container_id.as_deref())
            .map(|id| id.rsplit_once("://").map_or(id, |(_, id)| id))
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .map(str::to_owned)
            .collect();
        let mut ips: Vec<IpAddr> = Vec::new();
        let primary = status.and_then(|s| s.pod_ip.as_deref());
        let others = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| ip.ip.as_str());
        for text in primary.into_iter().chain(others) {
            if let Ok(ip) = text.parse()
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
        let ordinal = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_INDEX))
            .and_then(|i| i.parse().ok())
            .or_else(|| name.rsplit_once('-').and_then(|(_, n)| n.parse().ok()));
        Ok(Self {
            key: PodKey { namespace, name },
            uid,
            group,
            node: spec.node_name.clone(),
            port,
            raft_port,
            data,
            container,
            container_ids,
            ips,
            terminating: meta.deletion_timestamp.is_some(),
            ordinal,
            group_size,
        })
    }

    /// The member's address, as its peers and the membership name it: the pod, not its IP,
    /// which changes when the pod is rescheduled.
    pub fn member_addr(&self) -> String {
        format!("{}:{}", self.key, self.raft_port)
    }
}

fn annotated_port(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<u16>, PodError> {
    match annotations.get(key) {
        None => Ok(None),
        Some(text) => match text.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(Some(port)),
            _ => Err(PodError::Port(key, text.clone())),
        },
    }
}

/// `text` as an absolute path of normal components only.
fn clean_path(text: &str) -> Option<PathBuf> {
    let path = Path::new(text);
    if !path.is_absolute() || text.contains('\0') || text.len() > 1024 {
        return None;
    }
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (clean != Path::new("/")).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    fn labelled(annotations: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": "app-1", "namespace": "shop", "uid": "0b8a3c1e-5f6d-4e2a-9c7b-1d2e3f4a5b6c",
                "labels": { "hermes.io/group": "orders" },
                "annotations": annotations,
            },
            "spec": { "nodeName": "worker-2", "containers": [
                { "name": "sidecar" }, { "name": "app" } ] },
            "status": {
                "podIP": "10.1.2.3",
                "podIPs": [ { "ip": "10.1.2.3" }, { "ip": "fd00::3" } ],
                "containerStatuses": [ { "name": "app", "containerID": "containerd://abc123",
                    "image": "x", "imageID": "", "ready": true, "restartCount": 0 } ],
            },
        }))
    }

    #[test]
    fn a_labelled_pod_with_its_annotations() {
        let pod = labelled(serde_json::json!({
            "hermes.io/port": "8080", "hermes.io/data": "/var/lib/app/./hermes",
            "hermes.io/container": "app",
        }));
        let p = Protected::from_pod(&pod, GROUP_LABEL).unwrap().unwrap();
        assert_eq!(p.key.to_string(), "shop/app-1");
        assert_eq!((p.port, p.raft_port), (8080, 7000));
        assert_eq!(p.data, Path::new("/var/lib/app/hermes"));
        assert_eq!(p.container_ids, ["abc123"]);
        assert_eq!(
            p.ips,
            [
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse().unwrap()
            ]
        );
        assert_eq!(p.ordinal, Some(1));
        assert_eq!(p.member_addr(), "shop/app-1:7000");
        assert_eq!(p.node.as_deref(), Some("worker-2"));
        assert!(!p.terminating);
        assert!(Protected::from_pod(&pod, "other.io/group").is_none());
    }

    #[test]
    fn bad_annotations_are_named() {
        let bad = |annotations| {
            Protected::from_pod(&labelled(annotations), GROUP_LABEL)
                .unwrap()
                .unwrap_err()
        };
        use serde_json::json;
        assert_eq!(
            bad(json!({ "hermes.io/data": "/d" })),
            PodError::Missing("annotation hermes.io/port")
        );
        assert!(matches!(
            bad(json!({ "hermes.io/port": "0", "hermes.io/data": "/d" })),
            PodError::Port(..)
        ));
        assert!(matches!(
            bad(
                json!({ "hermes.io/port": "80", "hermes.io/raft-port": "80", "hermes.io/data": "/d" })
            ),
            PodError::Port(..)
        ));
        for data in ["d", "/a/../etc", "/", ""] {
            assert!(matches!(
                bad(json!({ "hermes.io/port": "80", "hermes.io/data": data })),
                PodError::Data(_)
            ));
        }
        assert!(matches!(
            bad(
                json!({ "hermes.io/port": "80", "hermes.io/data": "/d", "hermes.io/container": "nope" })
            ),
            PodError::Container(_)
        ));
        // Without the annotation: the first container, which has not started.
        let p = Protected::from_pod(
            &labelled(json!({ "hermes.io/port": "80", "hermes.io/data": "/d" })),
            GROUP_LABEL,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.container.as_str(), "sidecar");
        assert!(p.container_ids.is_empty());
    }
}
