//! Readiness that a Service sees. The agent sets the condition `hermes.io/ready` on the status
//! of each labelled pod of its node: `True` while the pod's member is ready (its `/readyz`:
//! steering attached, a leader known, caught up, not fenced, the app answering), `False` with
//! the reason otherwise (not protected yet, or not protected at all), and `False` on every pod
//! when the agent stops, as their ports then fail closed until the next agent takes them over.
//! A pod that lists the condition in its `readinessGates` is Ready, and gets a Service's
//! clients, only while it is `True`.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Pod, PodCondition, PodStatus},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use super::{View, pod::PodKey};

/// The condition's type, which a pod's `readinessGates` name.
pub const CONDITION: &str = "hermes.io/ready";
/// A reason that changes while the readiness does not (e.g. "catching up: applied N of M") is
/// set again at most this often.
const REASON_EVERY: Duration = Duration::from_secs(10);
/// How long one patch may take.
const PATCH_WITHIN: Duration = Duration::from_secs(5);

/// What was last set on each pod, by uid: why it is not ready (`None`: ready), and when.
#[derive(Default)]
pub struct Reported {
    set: BTreeMap<String, (Option<String>, Instant)>,
    /// Pods whose last patch failed (warned once until one succeeds).
    failing: BTreeSet<String>,
}

impl Reported {
    /// Sets the condition of every pod in `view` whose readiness changed since it was last set.
    pub async fn report(&mut self, client: &Client, view: &std::sync::Mutex<View>) {
        let now: Vec<(String, PodKey, Option<String>)> = {
            let view = view.lock().unwrap();
            view.pods
                .iter()
                .map(|(key, pod)| {
                    let not_ready = match &pod.member {
                        Some((admin, _)) => crate::admin::not_ready(admin),
                        None => Some(pod.state.clone()),
                    };
                    (pod.uid.clone(), key.clone(), not_ready)
                })
                .collect()
        };
        self.set.retain(|uid, _| now.iter().any(|(u, ..)| u == uid));
        for (uid, key, not_ready) in now {
            let due = match self.set.get(&uid) {
                None => true,
                Some((was, at)) => {
                    was.is_none() != not_ready.is_none()
                        || (*was != not_ready && at.elapsed() >= REASON_EVERY)
                }
            };
            if !due {
                continue;
            }
            let flipped = self
                .set
                .get(&uid)
                .is_none_or(|(was, _)| was.is_none() != not_ready.is_none());
            self.patch(client, &uid, &key, not_ready, flipped).await;
        }
    }

    /// Sets every pod reported so far not ready, saying `why` (the agent stops).
    pub async fn withdraw(&mut self, client: &Client, view: &std::sync::Mutex<View>, why: &str) {
        let pods: Vec<(String, PodKey)> = {
            let view = view.lock().unwrap();
            view.pods
                .iter()
                .filter(|(_, pod)| self.set.contains_key(&pod.uid))
                .map(|(key, pod)| (pod.uid.clone(), key.clone()))
                .collect()
        };
        for (uid, key) in pods {
            let flipped = self.set.get(&uid).is_some_and(|(was, _)| was.is_none());
            self.patch(client, &uid, &key, Some(why.to_owned()), flipped)
                .await;
        }
    }

    async fn patch(
        &mut self,
        client: &Client,
        uid: &str,
        key: &PodKey,
        not_ready: Option<String>,
        flipped: bool,
    ) {
        let api = Api::<Pod>::namespaced(client.clone(), &key.namespace);
        let status = Patch::Strategic(condition(not_ready.as_deref(), flipped));
        let patched = tokio::time::timeout(
            PATCH_WITHIN,
            api.patch_status(&key.name, &PatchParams::default(), &status),
        )
        .await;
        match patched {
            Ok(Ok(_)) => {
                tracing::debug!(pod = %key, ready = not_ready.is_none(), "readiness set");
                self.failing.remove(uid);
                self.set.insert(uid.to_owned(), (not_ready, Instant::now()));
            }
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {PATCH_WITHIN:?}"),
                };
                if self.failing.insert(uid.to_owned()) {
                    tracing::warn!(
                        pod = %key,
                        error,
                        "cannot set the pod's {CONDITION} condition (RBAC: patch pods/status); \
                         tried again every second"
                    );
                }
            }
        }
    }
}

/// The status patch that sets the condition: ready if `not_ready` is `None`, else not, saying
/// why. The transition time is set only when the readiness `flipped`.
fn condition(not_ready: Option<&str>, flipped: bool) -> Pod {
    let condition = PodCondition {
        type_: CONDITION.to_owned(),
        status: if not_ready.is_none() { "True" } else { "False" }.to_owned(),
        reason: Some(
            if not_ready.is_none() {
                "MemberReady"
            } else {
                "MemberNotReady"
            }
            .to_owned(),
        ),
        message: Some(
            not_ready
                .unwrap_or("the pod's Hermes member is ready")
                .to_owned(),
        ),
        last_transition_time: flipped.then(|| Time(Timestamp::now())),
        ..PodCondition::default()
    };
    Pod {
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

    #[test]
    fn the_patch_sets_one_condition_and_its_time_only_when_it_flips() {
        let patch = serde_json::to_value(condition(Some("no leader"), false)).unwrap();
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["type"], CONDITION);
        assert_eq!(conditions[0]["status"], "False");
        assert_eq!(conditions[0]["message"], "no leader");
        assert!(conditions[0].get("lastTransitionTime").is_none());
        // Nothing else of the pod: a strategic merge patch changes only what it holds.
        assert!(patch["metadata"].as_object().is_none_or(|m| m.is_empty()));
        assert!(patch.get("spec").is_none());
        let patch = serde_json::to_value(condition(None, true)).unwrap();
        let ready = &patch["status"]["conditions"][0];
        assert_eq!(ready["status"], "True");
        assert!(ready["lastTransitionTime"].is_string());
    }
}
