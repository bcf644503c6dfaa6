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

/// A labelled pod as read: protected, or why not.
pub type Read = Result<Protected, (PodKey, PodError)>;

/// The labelled pods of this node, by uid.
#[derive(Default)]
pub struct Local {
    pub pods: BTreeMap<String, Read>,
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
    let read = |pod: &Pod| -> Option<(String, Read)> {
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
                tracing::info!(
                    pods = local.pods.len(),
                    "listed the labelled pods of this node"
                );
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
            Err(error) => {
                tracing::warn!(%error, "watching the cluster's labelled pods failed; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use hermes_lab::apiserver::ApiServer;
    use serde_json::json;

    use super::*;

    fn pod(name: &str, node: &str, labelled: bool) -> serde_json::Value {
        let labels = if labelled {
            json!({ "hermes.io/group": "g" })
        } else {
            json!({})
        };
        json!({
            "metadata": { "name": name, "namespace": "ns", "uid": format!("00000000-0000-0000-0000-00000000000{}", name.len()),
                "labels": labels, "annotations": { "hermes.io/port": "80", "hermes.io/data": "/d" } },
            "spec": { "nodeName": node, "containers": [ { "name": "app" } ] },
        })
    }

    async fn names(local: &std::sync::Mutex<Local>, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        for _ in 0..200 {
            {
                let local = local.lock().unwrap();
                let have: BTreeSet<String> = local
                    .pods
                    .values()
                    .map(|p| p.as_ref().map(|p| p.key.name.clone()).unwrap_or_default())
                    .collect();
                if local.synced && have == want {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the watch never showed exactly {want:?}");
    }

    #[tokio::test]
    async fn this_nodes_labelled_pods_are_listed_watched_and_listed_again_after_410() {
        let api = ApiServer::start(([127, 0, 0, 1], 0).into()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        api.kubeconfig(&path).unwrap();
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        api.apply(pod("a", "w1", true));
        api.apply(pod("bb", "w2", true));
        api.apply(pod("ccc", "w1", false));
        let local = Arc::new(std::sync::Mutex::new(Local::default()));
        let changed = Arc::new(Notify::new());
        tokio::spawn(super::local(
            client,
            "hermes.io/group".into(),
            "w1".into(),
            Arc::clone(&local),
            changed,
        ));
        names(&local, &["a"]).await;
        api.apply(pod("dddd", "w1", true));
        names(&local, &["a", "dddd"]).await;
        api.delete("ns", "a");
        names(&local, &["dddd"]).await;
        // The label taken off: no longer protected.
        api.apply(pod("dddd", "w1", false));
        names(&local, &[]).await;
        api.apply(pod("eeeee", "w1", true));
        names(&local, &["eeeee"]).await;
        // The history is compacted and the watch breaks: resuming (from a version from before
        // the compaction, whatever the watcher had seen) gets 410 Gone, the watcher lists
        // again, and what changed since is seen.
        api.compact();
        api.break_watches();
        api.delete("ns", "eeeee");
        api.apply(pod("ffffff", "w1", true));
        names(&local, &["ffffff"]).await;
        let requests = api.requests();
        let lists = requests
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count();
        assert!(lists >= 2, "no second list after 410: {requests:#?}");
        assert!(
            requests
                .iter()
                .all(|r| r.contains("fieldSelector=spec.nodeName%3Dw1")
                    && r.contains("labelSelector=hermes.io%2Fgroup")),
            "{requests:#?}"
        );
    }
}
