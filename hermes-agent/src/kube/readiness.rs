//! Readiness that a Service sees. The agent sets the condition `hermes.io/ready` on the status
//! of each labelled pod of its node: `True` while the pod's member is ready (its `/readyz`:
//! steering attached, a leader known, caught up, not fenced, the app answering), `False` with
//! the reason otherwise (not protected yet, or not protected at all), and `False` on every pod
//! when the agent stops, as their ports then fail closed until the next agent takes them over.
//! A pod that lists the condition in its `readinessGates` is Ready, and gets a Service's
//! clients, only while it is `True`.
//!
//! It runs in a task of its own, apart from the reconciling of pods and members: the API being
//! slow or away holds no reconcile back.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use k8s_openapi::{
    api::core::v1::{Pod, PodCondition, PodStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;

use super::{View, pod::PodKey};

/// The condition's type, which a pod's `readinessGates` name.
pub const CONDITION: &str = "hermes.io/ready";
/// How often the pods' readiness is looked at.
const EVERY: Duration = Duration::from_secs(1);
/// A reason that changes while the readiness does not (e.g. "catching up: applied N of M") is
/// set again at most this often.
const REASON_EVERY: Duration = Duration::from_secs(10);
/// How long one round of patches may take.
const PATCH_WITHIN: Duration = Duration::from_secs(5);
/// How long the agent's stop waits for its pods to be set not ready.
pub const WITHDRAW_WITHIN: Duration = Duration::from_secs(2);
/// Why every pod is set not ready when the agent stops.
const STOPPING: &str = "the node's Hermes agent is stopping: the pod's port is closed until the next one takes it over";

/// Sets the conditions of the pods in `view` as their readiness changes, until `stop`; then
/// sets them all not ready.
pub async fn run(client: Client, view: Arc<Mutex<View>>, mut stop: watch::Receiver<bool>) {
    let mut reported = Reported::default();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            () = tokio::time::sleep(EVERY) => {}
        }
        let due = reported.due(&view);
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            () = reported.patch(&client, due) => {}
        }
    }
    // Every pod of the view, set or not: a first patch cut short by the stop may have landed.
    let all = reported.all_not_ready(&view, STOPPING);
    let _ = tokio::time::timeout(WITHDRAW_WITHIN, reported.patch(&client, all)).await;
}

/// A pod's readiness to set: its uid, its name, why it is not ready (`None`: ready), and
/// whether that flipped since it was last set.
struct Due {
    uid: String,
    key: PodKey,
    not_ready: Option<String>,
    flipped: bool,
}

/// What was last set on each pod, by uid: why it is not ready (`None`: ready), and when.
#[derive(Default)]
struct Reported {
    set: BTreeMap<String, (PodKey, Option<String>, Instant)>,
    /// Pods whose last patch failed (warned once until one succeeds).
    failing: BTreeSet<String>,
}

impl Reported {
    /// The pods of `view` whose readiness changed since it was last set.
    fn due(&mut self, view: &Mutex<View>) -> Vec<Due> {
        let now: Vec<(String, PodKey, Option<String>)> = {
            let view = view.lock().unwrap();
            view.pods
                .iter()
                .map(|(key, pod)| (pod.uid.clone(), key.clone(), pod.not_ready()))
                .collect()
        };
        self.set.retain(|uid, _| now.iter().any(|(u, ..)| u == uid));
        now.into_iter()
            .filter_map(|(uid, key, not_ready)| {
                let flipped = match self.set.get(&uid) {
                    None => true,
                    Some((_, was, at)) => {
                        let flipped = was.is_none() != not_ready.is_none();
                        if !flipped && (*was == not_ready || at.elapsed() < REASON_EVERY) {
                            return None;
                        }
                        flipped
                    }
                };
                Some(Due {
                    uid,
                    key,
                    not_ready,
                    flipped,
                })
            })
            .collect()
    }

    /// Every pod of `view`, and every pod set so far, not ready for `why`.
    fn all_not_ready(&self, view: &Mutex<View>, why: &str) -> Vec<Due> {
        let mut pods: BTreeMap<String, PodKey> = self
            .set
            .iter()
            .map(|(uid, (key, ..))| (uid.clone(), key.clone()))
            .collect();
        for (key, pod) in &view.lock().unwrap().pods {
            pods.insert(pod.uid.clone(), key.clone());
        }
        pods.into_iter()
            .map(|(uid, key)| Due {
                flipped: self.set.get(&uid).is_none_or(|(_, was, _)| was.is_none()),
                uid,
                key,
                not_ready: Some(why.to_owned()),
            })
            .collect()
    }

    /// Sets the conditions `due`, all at once.
    async fn patch(&mut self, client: &Client, due: Vec<Due>) {
        let patches = due.into_iter().map(|due| async move {
            let api = Api::<Pod>::namespaced(client.clone(), &due.key.namespace);
            let status = Patch::Strategic(condition(&due));
            let patched = tokio::time::timeout(
                PATCH_WITHIN,
                api.patch_status(&due.key.name, &PatchParams::default(), &status),
            )
            .await;
            let outcome = match patched {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no answer within {PATCH_WITHIN:?}")),
            };
            (due, outcome)
        });
        for (due, outcome) in join_all(patches).await {
            match outcome {
                Ok(()) => {
                    tracing::debug!(pod = %due.key, ready = due.not_ready.is_none(), "readiness set");
                    self.failing.remove(&due.uid);
                    self.set
                        .insert(due.uid, (due.key, due.not_ready, Instant::now()));
                }
                Err(error) => {
                    if self.failing.insert(due.uid) {
                        tracing::warn!(
                            pod = %due.key,
                            error,
                            "cannot set the pod's {CONDITION} condition (is `patch` on pods/status \
                             allowed?); tried again every second"
                        );
                    }
                }
            }
        }
    }
}

/// The status patch that sets the condition of `due`. Its uid is a precondition: a pod made
/// anew under the same name is not patched. The transition time is set only when the readiness
/// flipped.
fn condition(due: &Due) -> Pod {
    let ready = due.not_ready.is_none();
    let condition = PodCondition {
        type_: CONDITION.to_owned(),
        status: if ready { "True" } else { "False" }.to_owned(),
        reason: Some(
            if ready {
                "MemberReady"
            } else {
                "MemberNotReady"
            }
            .to_owned(),
        ),
        message: Some(
            due.not_ready
                .clone()
                .unwrap_or_else(|| "the pod's Hermes member is ready".to_owned()),
        ),
        last_transition_time: due.flipped.then(|| Time(Timestamp::now())),
        ..PodCondition::default()
    };
    Pod {
        metadata: ObjectMeta {
            uid: Some(due.uid.clone()),
            ..ObjectMeta::default()
        },
        status: Some(PodStatus {
            conditions: Some(vec![condition]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(not_ready: Option<&str>, flipped: bool) -> Due {
        Due {
            uid: "u-1".into(),
            key: PodKey {
                namespace: "ns".into(),
                name: "app-0".into(),
            },
            not_ready: not_ready.map(str::to_owned),
            flipped,
        }
    }

    #[test]
    fn the_patch_sets_one_condition_of_that_pod_and_its_time_only_when_it_flips() {
        let patch = serde_json::to_value(condition(&due(Some("no leader"), false))).unwrap();
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["type"], CONDITION);
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[0]["message"], "no leader");
        assert!(conditions[0].get("lastTransitionTime").is_none());
        // Nothing else of the pod but its uid: a strategic merge patch changes what it holds.
        assert_eq!(patch["metadata"], serde_json::json!({ "uid": "u-1" }));
        assert!(patch.get("spec").is_none());
        let patch = serde_json::to_value(condition(&due(None, true))).unwrap();
        let ready = &patch["status"]["conditions"][0];
        assert_eq!(ready["status"], "True");
        assert!(ready["lastTransitionTime"].is_string());
    }
}
