//! A group: the pods that carry the same group label value in one namespace, each with a Raft
//! member, wherever they run. Peers come from the API (the [`Directory`] of every labelled pod),
//! never from configuration:
//!
//! - a member's address is its pod, `<namespace>/<name>:<raft port>`, resolved to the pod's
//!   current IP when dialled, so a pod rescheduled elsewhere stays the same member;
//! - the pod with ordinal 0 forms the group, alone, once the group has `hermes.io/group-size`
//!   pods, every other one answers, and none is in a cluster yet (a StatefulSet has one such pod
//!   at a time; nothing else ever forms one, so two clusters cannot start side by side);
//! - the leader adds every other pod of the group that is in no cluster as a learner, and
//!   promotes caught-up learners one at a time while the voters are fewer than the group's pods;
//! - nothing is ever removed but by an operator (`hermes-agent ctl --pod ... remove`): a member
//!   that is gone may come back with its volume.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use super::pod::{PodKey, Protected};
use crate::{
    node::Node,
    order::{
        peer::{
            client::Resolve,
            wire::{Call, MembershipChange, Reply},
        },
        typ::Member,
    },
};

/// How often a member looks at its group.
const EVERY: Duration = Duration::from_millis(500);
const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// A learner this many entries behind the leader's log counts as caught up.
const CAUGHT_UP: u64 = 16;

/// Every labelled pod of the cluster, as the API last showed it.
#[derive(Clone, Default)]
pub struct Directory(Arc<RwLock<BTreeMap<PodKey, Protected>>>);

impl Directory {
    pub fn set(&self, pod: Protected) {
        self.0.write().unwrap().insert(pod.key.clone(), pod);
    }

    pub fn remove(&self, key: &PodKey) {
        self.0.write().unwrap().remove(key);
    }

    /// Replaces everything (after a full list).
    pub fn replace(&self, pods: impl IntoIterator<Item = Protected>) {
        *self.0.write().unwrap() = pods.into_iter().map(|p| (p.key.clone(), p)).collect();
    }

    /// The pods of `pod`'s group (itself included) that are not being deleted.
    pub fn group_of(&self, pod: &Protected) -> Vec<Protected> {
        self.0
            .read()
            .unwrap()
            .values()
            .filter(|p| p.key.namespace == pod.key.namespace && p.group == pod.group)
            .filter(|p| !p.terminating)
            .cloned()
            .collect()
    }

    /// Dials member addresses (`<namespace>/<name>:<port>`) at their pods' current IPs.
    pub fn resolver(&self) -> Resolve {
        let directory = self.clone();
        Resolve(Arc::new(move |addr: &str| {
            let (pod, port) = addr.rsplit_once(':')?;
            let (namespace, name) = pod.split_once('/')?;
            let key = PodKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            };
            let ip = *directory.0.read().unwrap().get(&key)?.ips.first()?;
            Some(std::net::SocketAddr::new(ip, port.parse().ok()?).to_string())
        }))
    }
}

/// What a pod's member said of itself.
#[derive(Debug, Clone, Copy)]
struct Hello {
    id: u64,
    incarnation: u64,
    initialized: bool,
}

async fn hello(node: &Node, pod: &Protected) -> Option<Hello> {
    // The id is not known yet: 0 names no node (with TLS, agents share one name).
    match node
        .peers()
        .get(0, &pod.member_addr())
        .call(&Call::Hello, HELLO_TIMEOUT)
        .await
    {
        Ok(Reply::Hello {
            node_id,
            incarnation,
            initialized,
            ..
        }) => Some(Hello {
            id: node_id,
            incarnation,
            initialized,
        }),
        _ => None,
    }
}

/// Looks after `node`'s part in its group, for as long as it runs.
pub async fn tend(node: Arc<Node>, pod: Protected, directory: Directory) {
    loop {
        tokio::time::sleep(EVERY).await;
        if !node.raft.is_initialized().await.unwrap_or(true) {
            if pod.ordinal == Some(0) && may_form(&node, &pod, &directory).await {
                let me = Member {
                    addr: pod.member_addr(),
                    incarnation: node.identity.incarnation,
                };
                match node.raft.initialize(BTreeMap::from([(node.id, me)])).await {
                    Ok(()) => {
                        tracing::info!(pod = %pod.key, group = pod.group, node_id = node.id, "group formed")
                    }
                    Err(error) => {
                        tracing::warn!(pod = %pod.key, %error, "forming the group failed")
                    }
                }
            }
            continue;
        }
        if node.metrics().current_leader == Some(node.id) {
            grow(&node, &pod, &directory).await;
        }
    }
}

/// Whether this pod (ordinal 0) may form its group: every other pod of the group answers and
/// none is in a cluster. One that is would have this pod join it instead (the leader adds it).
async fn may_form(node: &Node, pod: &Protected, directory: &Directory) -> bool {
    let group = directory.group_of(pod);
    if group.len() < pod.group_size {
        tracing::debug!(pod = %pod.key, size = pod.group_size, present = group.len(), "waiting for the group's pods before forming it");
        return false;
    }
    for other in group {
        if other.key == pod.key {
            continue;
        }
        match hello(node, &other).await {
            Some(hello) if !hello.initialized => {}
            Some(_) => return false,
            None => {
                tracing::debug!(pod = %pod.key, other = %other.key, "waiting for the group's pods to answer before forming it");
                return false;
            }
        }
    }
    true
}

/// On the leader: adds the group's new pods as learners, and promotes one caught-up learner.
async fn grow(node: &Node, pod: &Protected, directory: &Directory) {
    let group = directory.group_of(pod);
    let metrics = node.metrics();
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let members: BTreeMap<u64, Member> = membership
        .nodes()
        .map(|(id, member)| (*id, member.clone()))
        .collect();
    for other in &group {
        if other.key == pod.key || other.ips.is_empty() {
            continue;
        }
        let Some(hello) = hello(node, other).await else {
            continue;
        };
        match members.get(&hello.id) {
            Some(member) if member.incarnation == hello.incarnation => continue,
            Some(_) => {
                tracing::error!(pod = %other.key, id = hello.id, "the pod's member has the id of another member; not adding it");
                continue;
            }
            None if hello.initialized => {
                tracing::error!(pod = %other.key, id = hello.id, "the pod's member belongs to another cluster; not adding it (its volume holds another group's state)");
                continue;
            }
            None => {}
        }
        let change = MembershipChange::AddLearner {
            id: hello.id,
            addr: other.member_addr(),
        };
        match node.change_membership(change).await {
            Ok(()) => {
                tracing::info!(pod = %other.key, id = hello.id, "added the pod's member as a learner")
            }
            Err(error) => {
                tracing::warn!(pod = %other.key, %error, "cannot add the pod's member yet")
            }
        }
        // One change at a time.
        return;
    }
    if voters.len() >= group.len() {
        return;
    }
    let present: BTreeSet<String> = group.iter().map(Protected::member_addr).collect();
    let last = metrics.last_log_index.unwrap_or(0);
    let caught_up = |id: &u64| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(id).copied().flatten())
            .is_some_and(|matched| matched.index + CAUGHT_UP >= last)
    };
    let learner = members
        .iter()
        .filter(|(id, member)| !voters.contains(id) && present.contains(&member.addr))
        .map(|(id, _)| *id)
        .find(caught_up);
    if let Some(learner) = learner {
        let mut promoted = voters.clone();
        promoted.insert(learner);
        match node
            .change_membership(MembershipChange::Voters(promoted))
            .await
        {
            Ok(()) => tracing::info!(
                group = pod.group,
                id = learner,
                "promoted a caught-up learner to voter"
            ),
            Err(error) => tracing::warn!(id = learner, %error, "cannot promote the learner yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, terminating: bool) -> Protected {
        Protected {
            key: PodKey {
                namespace: "shop".into(),
                name: name.into(),
            },
            uid: "u".into(),
            group: "orders".into(),
            node: None,
            port: 8080,
            raft_port: 7000,
            data: "/d".into(),
            container: "app".into(),
            container_ids: Vec::new(),
            ips: vec![ip.parse().unwrap()],
            terminating,
            ordinal: None,
            group_size: 1,
        }
    }

    #[test]
    fn members_are_dialled_at_their_pods_current_ip() {
        let directory = Directory::default();
        directory.set(pod("app-0", "10.0.0.1", false));
        let resolve = directory.resolver();
        assert_eq!(
            (resolve.0)("shop/app-0:7000").as_deref(),
            Some("10.0.0.1:7000")
        );
        directory.set(pod("app-0", "fd00::9", false));
        assert_eq!(
            (resolve.0)("shop/app-0:7000").as_deref(),
            Some("[fd00::9]:7000")
        );
        assert_eq!((resolve.0)("shop/app-1:7000"), None);
        assert_eq!((resolve.0)("10.0.0.1:7000"), None);
        directory.set(pod("app-1", "10.0.0.2", true));
        let mut other = pod("app-2", "10.0.0.3", false);
        other.group = "payments".into();
        directory.set(other);
        let group: Vec<_> = directory
            .group_of(&pod("app-0", "10.0.0.1", false))
            .into_iter()
            .map(|p| p.key.name)
            .collect();
        assert_eq!(group, ["app-0"]);
    }
}
