//! The Pod watches, with kube-rs: the labelled pods on this node (field selector
//! `spec.nodeName`), which the agent protects, and the labelled pods of the whole cluster,
//! where members find their peers. A full list comes first, and again whenever the watch
//! cannot resume (e.g. 410 Gone); it replaces what was known, so that a restarted agent
//! reconciles from it.
use std::{collections::BTreeMap, sync::Arc};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::Notify;

use super::{
    group::Directory,
    pod::{PodError, PodKey, Protected},
};

/// The labelled pods of this node, by uid.
#[derive(Default)]
pub struct Local {
    pub pods: BTreeMap<String, Result<Protected, (PodKey, PodError)>>,
    /// A full list has been seen.
    pub synced: bool,
}

/// Keeps `local` up to date with the pods labelled `label` on node `node`, and tells `changed`.
pub async fn local(
    client: Client,
    label: String,
    node: String,
    local: Arc<std::sync::Mutex<Local>>,
    changed: Arc<Notify>,
) {
    let config = watcher::Config::default()
        .labels(&label)
        .fields(&format!("spec.nodeName={node}"));
    let stream = watcher(Api::<Pod>::all(client), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listing = BTreeMap::new();
    let read = |pod: &Pod| -> Option<(String, Result<Protected, (PodKey, PodError)>)> {
        let uid = pod.metadata.uid.clone()?;
        // The API honours the selector; a pod elsewhere would not be ours to protect anyway.
        if pod.spec.as_ref()?.node_name.as_deref() != Some(node.as_str()) {
            return None;
        }
        let key = PodKey {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        };
        Some((uid, Protected::from_pod(pod, &label)?.map_err(|e| (key, e))))
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(pod)) => listing.extend(read(&pod)),
            Ok(watcher::Event::InitDone) => {
                let mut local = local.lock().unwrap();
                local.pods = std::mem::take(&mut listing);
                local.synced = true;
                tracing::info!(pods = local.pods.len(), "listed the labelled pods of this node");
            }
            Ok(watcher::Event::Apply(pod)) => {
                let mut local = local.lock().unwrap();
                match read(&pod) {
                    Some((uid, pod)) => drop(local.pods.insert(uid, pod)),
                    None => drop(pod.metadata.uid.as_ref().map(|uid| local.pods.remove(uid))),
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    local.lock().unwrap().pods.remove(uid);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "watching this node's pods failed; retrying");
                continue;
            }
        }
        changed.notify_one();
    }
}

/// Keeps `directory` up to date with every pod labelled `label`.
pub async fn cluster(client: Client, label: String, directory: Directory) {
    let config = watcher::Config::default().labels(&label);
    let stream = watcher(Api::<Pod>::all(client), config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listing = Vec::new();
    let key = |pod: &Pod| PodKey {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listing.extend(Protected::from_pod(&pod, &label).and_then(Result::ok))
            }
            Ok(watcher::Event::InitDone) => directory.replace(std::mem::take(&mut listing)),
            Ok(watcher::Event::Apply(pod)) => match Protected::from_pod(&pod, &label) {
                Some(Ok(protected)) => directory.set(protected),
                _ => directory.remove(&key(&pod)),
            },
            Ok(watcher::Event::Delete(pod)) => directory.remove(&key(&pod)),
            Err(error) => tracing::warn!(%error, "watching the cluster's labelled pods failed; retrying"),
        }
    }
}
