//! Pod mode's admin API: the agent's own `/healthz`, `/readyz` (200 once the first full list
//! of this node's pods has been reconciled and every labelled pod's member is started and ready,
//! each for a while at most, so that a rolling update of the agents waits for each node's
//! members) and `/status` (every labelled pod of this node: its state, and its member's
//! status); and each protected pod's member's admin API under `/pods/NAMESPACE/NAME/`
//! (`status`, `readyz`, `metrics`, `cluster/...`, as in host-network mode), served on that
//! member's runtime. Tokens and loopback rules are host-network mode's.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::net::TcpListener;

use super::View;
use crate::admin::{self, Answer};

const TIMEOUT: Duration = Duration::from_secs(60);

pub async fn serve(listener: TcpListener, view: Arc<Mutex<View>>, token_file: Option<PathBuf>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (view, token_file) = (Arc::clone(&view), token_file.clone());
        tokio::spawn(async move {
            let route = async |method: &str, target: &str, body: &[u8]| {
                route(&view, method, target, body).await
            };
            let access = admin::Access::Admin(token_file.as_deref());
            let answered = admin::answer_one(stream, peer, access, route);
            let _ = tokio::time::timeout(TIMEOUT, answered).await;
        });
    }
}

async fn route(view: &Mutex<View>, method: &str, target: &str, body: &[u8]) -> Answer {
    if let Some(rest) = target.strip_prefix("/pods/") {
        let mut parts = rest.splitn(3, '/');
        let (Some(namespace), Some(name)) = (parts.next(), parts.next()) else {
            return Answer::text(404, "expected /pods/NAMESPACE/NAME/...");
        };
        let path = format!("/{}", parts.next().unwrap_or("status"));
        let member = view
            .lock()
            .unwrap()
            .pods
            .iter()
            .find(|(key, _)| key.namespace == namespace && key.name == name)
            .map(|(_, pod)| (pod.member.clone(), pod.state.clone()));
        return match member {
            None => Answer::text(
                404,
                format!("no labelled pod {namespace}/{name} on this node"),
            ),
            Some((None, state)) => Answer::text(503, format!("{namespace}/{name} is {state}")),
            Some((Some((member, runtime)), _)) => {
                let (method, body) = (method.to_owned(), body.to_vec());
                // On the member's own runtime, where its peer connections live.
                let answer = runtime
                    .spawn(async move { admin::route(&member, &method, &path, &body).await });
                answer
                    .await
                    .unwrap_or_else(|_| Answer::text(503, "the pod's member stopped"))
            }
        };
    }
    match (method, target) {
        ("GET", "/healthz") => Answer::text(200, "ok"),
        ("GET", "/readyz") => match not_ready(&view.lock().unwrap()) {
            None => Answer::text(200, "ready"),
            Some(why) => Answer::text(503, format!("not ready: {why}")),
        },
        ("GET", "/status") => Answer::json(200, status(&view.lock().unwrap())),
        (_, "/healthz" | "/readyz" | "/status") => Answer::text(405, "wrong method"),
        _ => Answer::text(
            404,
            "unknown path: /status, /healthz, /readyz, or /pods/NAMESPACE/NAME/... for a pod's member",
        ),
    }
}

/// Why the agent is not ready, if it is not: its pods not listed yet, or the first labelled pod
/// whose member is yet to be started, or is not ready, for [`super::HOLDS_READINESS`] at most
/// after the agent listed it. (Pods that cannot be protected hold nothing back.)
fn not_ready(view: &View) -> Option<String> {
    if !view.synced {
        return Some("this node's pods are not listed yet".into());
    }
    view.pods.iter().find_map(|(key, pod)| {
        let counts = pod.member.is_some() || pod.state.starts_with(super::WAITING);
        if !counts || pod.since.elapsed() >= super::HOLDS_READINESS {
            return None;
        }
        let why = pod.not_ready()?;
        Some(format!("{key}: {why}"))
    })
}

fn status(view: &View) -> serde_json::Value {
    let pods: Vec<_> = view
        .pods
        .iter()
        .map(|(key, pod)| {
            json!({
                "pod": key.to_string(),
                "uid": pod.uid,
                "group": pod.group,
                "state": pod.state,
                "member": pod.member.as_ref().map(|(member, _)| admin::status(member)),
            })
        })
        .collect();
    json!({
        "mode": "pods",
        "node": view.node,
        "synced": view.synced,
        "pods": pods,
    })
}
