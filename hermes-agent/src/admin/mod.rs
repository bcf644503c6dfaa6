//! The admin API (loopback by default):
//!
//! - `GET /status` (JSON), `GET /healthz`, `GET /readyz`;
//! - `GET /digests?from=N`: digests of the app's responses by request sequence number, to
//!   compare replicas;
//! - `POST /cluster/learners` `{"id": 4, "addr": "10.0.0.4:7000"}`: add a node as a learner;
//! - `POST /cluster/membership` `{"voters": [1, 2, 3, 4]}`: make exactly these the voters
//!   (promotes learners, removes voters left out).
//!
//! `hermes-agent ctl` is the command-line front of it.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::json;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use crate::{
    http::{
        Response, Version,
        request::{self, ReadError, Reader},
    },
    order::{Node, peer::wire::MembershipChange, propose},
    steer::Steering,
};

/// What the admin API reads of a request.
const LIMITS: request::Limits = request::Limits {
    max_head: 16 * 1024,
    max_fields: 64,
    max_body: 64 * 1024,
};
/// Longest a request may take, membership changes included.
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Admin {
    pub steering: Steering,
    /// `None` in passthrough mode.
    pub node: Option<Arc<Node>>,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, connection(stream, &admin)).await;
        });
    }
}

/// An answer: status and JSON or text body.
struct Answer {
    status: u16,
    json: bool,
    body: String,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            json: false,
            body: body.into() + "\n",
        }
    }

    fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            json: true,
            body: value.to_string() + "\n",
        }
    }
}

/// Serves one request, then closes.
async fn connection(stream: TcpStream, admin: &Admin) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut requests = Reader::new(reader, LIMITS);
    let answer = match requests.head().await {
        Err(ReadError::Closed) => return Ok(()),
        Err(ReadError::Invalid(invalid)) => Answer::text(invalid.status(), invalid.to_string()),
        Ok(head) => match requests
            .body(&head, |_| true, crate::http::Invalid::Overloaded)
            .await
        {
            Err(ReadError::Closed) => return Ok(()),
            Err(ReadError::Invalid(invalid)) => Answer::text(invalid.status(), invalid.to_string()),
            Ok(body) => {
                let target = head.target().to_owned();
                route(admin, &head.method, &target, &body).await
            }
        },
    };
    let content_type = if answer.json {
        "application/json"
    } else {
        "text/plain"
    };
    let response = Response::own(answer.status, content_type, answer.body);
    let (head, body) = response.to_client(Version::Http11, true);
    writer.write_all(&head).await?;
    writer.write_all(&body).await?;
    writer.shutdown().await
}

async fn route(admin: &Admin, method: &str, target: &str, body: &[u8]) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/healthz") => Answer::text(200, "ok"),
        ("GET", "/readyz") => match not_ready(admin) {
            None => Answer::text(200, "ready"),
            Some(reason) => Answer::text(503, format!("not ready: {reason}")),
        },
        ("GET", "/status") => Answer::json(200, status(admin)),
        ("GET", "/digests") => {
            let from = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("from="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let digests = admin
                .node
                .as_ref()
                .map(|n| n.applied.digests(from))
                .unwrap_or_default();
            Answer::json(200, json!(digests))
        }
        ("POST", "/cluster/learners") => {
            #[derive(Deserialize)]
            struct Learner {
                id: u64,
                addr: String,
            }
            match serde_json::from_slice::<Learner>(body) {
                Ok(Learner { id, addr }) => {
                    change(admin, MembershipChange::AddLearner { id, addr }).await
                }
                Err(error) => Answer::text(
                    400,
                    format!("expected {{\"id\": N, \"addr\": \"HOST:PORT\"}}: {error}"),
                ),
            }
        }
        ("POST", "/cluster/membership") => {
            #[derive(Deserialize)]
            struct Voters {
                voters: BTreeSet<u64>,
            }
            match serde_json::from_slice::<Voters>(body) {
                Ok(Voters { voters }) if !voters.is_empty() => {
                    change(admin, MembershipChange::Voters(voters)).await
                }
                Ok(_) => Answer::text(400, "a cluster needs at least one voter"),
                Err(error) => {
                    Answer::text(400, format!("expected {{\"voters\": [N, ...]}}: {error}"))
                }
            }
        }
        (
            _,
            "/healthz"
            | "/readyz"
            | "/status"
            | "/digests"
            | "/cluster/learners"
            | "/cluster/membership",
        ) => Answer::text(405, "wrong method"),
        _ => Answer::text(404, "unknown path; see the admin API in the README"),
    }
}

async fn change(admin: &Admin, change: MembershipChange) -> Answer {
    let Some(node) = &admin.node else {
        return Answer::text(409, "passthrough mode has no cluster");
    };
    match node.change_membership(change).await {
        Ok(()) => Answer::json(200, status(admin)),
        Err(error) => Answer::text(409, error),
    }
}

/// Why this node should not get traffic yet, if it should not.
fn not_ready(admin: &Admin) -> Option<String> {
    let node = admin.node.as_ref()?;
    let metrics = node.metrics();
    if metrics.current_leader.is_none() {
        return Some("no leader".into());
    }
    if propose::cut_off(&metrics) {
        return Some("leader cut off from a quorum".into());
    }
    let applied = node.applied.applied_index();
    if applied < node.startup_commit {
        return Some(format!(
            "catching up: applied {applied} of {} committed at start",
            node.startup_commit
        ));
    }
    if !node.is_member() {
        return Some("not a member of the cluster".into());
    }
    if !node.app().healthy() {
        return Some("the app does not answer, or is slow to".into());
    }
    None
}

fn status(admin: &Admin) -> serde_json::Value {
    let stats = admin.steering.stats();
    let steering = json!({
        "pins": admin.steering.pins().display().to_string(),
        "steered": stats.steered,
        "dropped": stats.dropped,
        "bypassed": stats.bypassed,
    });
    let Some(node) = &admin.node else {
        return json!({ "mode": "passthrough", "ready": true, "steering": steering });
    };
    let metrics = node.metrics();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let members: Vec<_> = membership
        .nodes()
        .map(|(id, n)| json!({ "id": id, "addr": n.addr, "voter": voters.contains(id) }))
        .collect();
    // On the leader: how far each member's log matches.
    let replication: Option<serde_json::Map<String, serde_json::Value>> =
        metrics.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, matched)| (id.to_string(), json!(matched.map_or(0, |m| m.index))))
                .collect()
        });
    json!({
        "mode": "replicated",
        "node_id": node.id,
        "incarnation": format!("{:016x}", node.identity.incarnation),
        "state": format!("{:?}", metrics.state),
        "leader_id": metrics.current_leader,
        "term": metrics.current_term,
        "last_log_index": metrics.last_log_index.unwrap_or(0),
        "commit_index": node.log.committed().map_or(0, |id| id.index),
        "applied_index": node.applied.applied_index(),
        "snapshot_index": metrics.snapshot.map_or(0, |id| id.index),
        "purged_index": metrics.purged.map_or(0, |id| id.index),
        "requests": node.applied.requests(),
        "deliveries": node.applied.deliveries(),
        "members": members,
        "replication": replication,
        "pending": node.pending(),
        "in_doubt": node.applied.in_doubt(),
        "log_cache_bytes": node.log.cached_bytes(),
        "app_healthy": node.app().healthy(),
        "ready": not_ready(admin).is_none(),
        "steering": steering,
    })
}
