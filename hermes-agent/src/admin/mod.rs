//! The admin API (loopback by default):
//!
//! - `GET /status` (JSON), `GET /healthz`, `GET /readyz`;
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text);
//! - `GET /digests?from=N`: digests of the app's responses by request sequence number (in raw
//!   TCP mode: of what the app sent on a connection, by its `Close`), to compare replicas;
//! - `POST /cluster/learners` `{"id": 4, "addr": "10.0.0.4:7000"}`: add a node as a learner;
//! - `POST /cluster/learners/remove` `{"id": 4}`: forget a learner;
//! - `POST /cluster/membership` `{"voters": [1, 2, 3, 4]}`: make exactly these the voters
//!   (promotes learners, removes voters left out);
//! - `POST /divergence/resume`: a replica fenced after a divergence applies again;
//! - `POST /backup`: a backup of this replica's state as of now (`node::backup`), as a file;
//!   only with the snapshot hooks.
//!
//! What changes the cluster (`POST`) needs `Authorization: Bearer <token>`, the token read from
//! `--admin-token-file`, and `Content-Type: application/json` (so that no browser form can
//! post it); without a token file such changes are refused. Reads are open on loopback; from
//! elsewhere (an admin address that is not loopback) they need the token too.
//!
//! `--metrics-addr` serves `GET /metrics` alone, to anyone, for a Prometheus off the node
//! ([`serve_metrics`]).
//!
//! `hermes-agent ctl` is the command-line front of it.
#[cfg(test)]
mod tests;
pub mod token;

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::json;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use crate::{
    http::{
        RequestHead, Response, Version,
        request::{self, ReadError, Reader},
    },
    node::Node,
    order::{
        peer::{tls::Security, wire::MembershipChange},
        propose,
    },
    steer::Steering,
    telemetry::{State, Telemetry, Totals},
};

/// What the admin API reads of a request (public for the fuzz targets).
pub const LIMITS: request::Limits = request::Limits {
    max_head: 16 * 1024,
    max_fields: 64,
    max_body: 64 * 1024,
};
/// Longest a request may take, membership changes included.
const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Admin {
    pub steering: Steering,
    pub telemetry: Arc<Telemetry>,
    /// `None` in passthrough mode.
    pub node: Option<Arc<Node>>,
    /// Where the bearer token is; `None`: no change to the cluster is taken.
    pub token_file: Option<PathBuf>,
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TIMEOUT, connection(stream, peer, &admin)).await;
        });
    }
}

/// An answer: status, content type, body.
pub(crate) struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Answer {
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain",
            body: (body.into() + "\n").into_bytes(),
        }
    }

    /// The metrics, in the exposition format `encode` wrote them in (OpenMetrics text).
    pub(crate) fn metrics(encoded: String) -> Self {
        Self {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: encoded.into_bytes(),
        }
    }

    pub(crate) fn json(status: u16, value: serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: (value.to_string() + "\n").into_bytes(),
        }
    }
}

/// Serves one request, then closes.
async fn connection(stream: TcpStream, peer: SocketAddr, admin: &Admin) -> std::io::Result<()> {
    let route =
        async |method: &str, target: &str, body: &[u8]| route(admin, method, target, body).await;
    answer_one(
        stream,
        peer,
        Access::Admin(admin.token_file.as_deref()),
        route,
    )
    .await
}

/// The listener of `--metrics-addr`, if one is given; or the address that cannot be bound.
pub async fn bind_metrics(
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, (SocketAddr, std::io::Error)> {
    match addr {
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| (addr, e)),
        None => Ok(None),
    }
}

/// Scrapes served at once on the metrics address; more connections are closed at once.
const SCRAPES: usize = 16;
/// Longest a scrape may take, reading the request included.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` alone on `listener`, to anyone (`--metrics-addr`): what `encode` says
/// at each scrape. Whoever reaches the address may ask, so it serves few at once, briefly.
pub async fn serve_metrics(listener: TcpListener, encode: Arc<dyn Fn() -> String + Send + Sync>) {
    let scrapes = Arc::new(tokio::sync::Semaphore::new(SCRAPES));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(scrape) = Arc::clone(&scrapes).try_acquire_owned() else {
            continue; // dropped: closed
        };
        let encode = Arc::clone(&encode);
        tokio::spawn(async move {
            let route = async |method: &str, target: &str, _: &[u8]| {
                let path = target.split_once('?').map_or(target, |(path, _)| path);
                match (method, path) {
                    ("GET", "/metrics") => Answer::metrics(encode()),
                    (_, "/metrics") => Answer::text(405, "GET only"),
                    _ => Answer::text(404, "only GET /metrics here (the admin API has the rest)"),
                }
            };
            let answered = answer_one(stream, peer, Access::ReadOnly, route);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answered).await;
            drop(scrape);
        });
    }
}

/// Who may ask what.
#[derive(Clone, Copy)]
pub(crate) enum Access<'a> {
    /// The admin API: reads open on loopback, the rest with the token in this file (none: no
    /// change is taken).
    Admin(Option<&'a std::path::Path>),
    /// Reads only, from anywhere.
    ReadOnly,
}

/// Reads one request, checks that it is `allowed`, answers it with `route` (method, target,
/// body), then closes.
pub(crate) async fn answer_one(
    stream: TcpStream,
    peer: SocketAddr,
    access: Access<'_>,
    route: impl AsyncFnOnce(&str, &str, &[u8]) -> Answer,
) -> std::io::Result<()> {
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
            Ok(body) => match allowed(access, peer, &head) {
                Err(refused) => refused,
                Ok(()) => {
                    let target = head.target().to_owned();
                    route(&head.method, &target, &body).await
                }
            },
        },
    };
    let response = Response::own(answer.status, answer.content_type, answer.body);
    let (head, body) = response.to_client(Version::Http11, true);
    writer.write_all(&head).await?;
    writer.write_all(&body).await?;
    writer.shutdown().await
}

/// Whether the request may be served: see the module's documentation.
pub(crate) fn allowed(
    access: Access<'_>,
    peer: SocketAddr,
    head: &RequestHead,
) -> Result<(), Answer> {
    let writes = head.method != "GET" && head.method != "HEAD";
    let token_file = match access {
        Access::ReadOnly if writes => return Err(Answer::text(405, "read only")),
        Access::ReadOnly => return Ok(()),
        Access::Admin(token_file) => token_file,
    };
    if !writes && peer.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    let Some(path) = token_file else {
        return Err(Answer::text(
            403,
            "changes to the cluster need the agent to be started with --admin-token-file",
        ));
    };
    let token = match token::read(path) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(%error, "cannot read the admin token");
            return Err(Answer::text(
                503,
                "the admin token cannot be read; see the agent's log",
            ));
        }
    };
    let presented = head
        .field("authorization")
        .and_then(|value| value.strip_prefix(b"Bearer "));
    if !presented.is_some_and(|presented| token::matches(presented, &token)) {
        return Err(Answer::text(
            401,
            "a valid `Authorization: Bearer <token>` is needed",
        ));
    }
    let json = head.field("content-type").is_some_and(|value| {
        let media = value.split(|b| *b == b';').next().unwrap_or_default();
        media.trim_ascii().eq_ignore_ascii_case(b"application/json")
    });
    if writes && !json {
        return Err(Answer::text(
            415,
            "changes are sent as `Content-Type: application/json`",
        ));
    }
    Ok(())
}

pub(crate) async fn route(admin: &Admin, method: &str, target: &str, body: &[u8]) -> Answer {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/healthz") => Answer::text(200, "ok"),
        ("GET", "/readyz") => match not_ready(admin) {
            None => Answer::text(200, "ready"),
            Some(reason) => Answer::text(503, format!("not ready: {reason}")),
        },
        ("GET", "/status") => Answer::json(200, status(admin)),
        ("GET", "/metrics") => Answer::metrics(metrics(admin)),
        ("GET", "/digests") => {
            let from = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("from="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let digests = admin
                .node
                .as_ref()
                .map(|n| n.applied.digests().report(from, usize::MAX).digests)
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
        ("POST", "/cluster/learners/remove") => {
            #[derive(Deserialize)]
            struct Learner {
                id: u64,
            }
            match serde_json::from_slice::<Learner>(body) {
                Ok(Learner { id }) => {
                    change(admin, MembershipChange::RemoveLearners([id].into())).await
                }
                Err(error) => Answer::text(400, format!("expected {{\"id\": N}}: {error}")),
            }
        }
        ("POST", "/backup") => match &admin.node {
            Some(node) => match node.backup().await {
                Ok(file) => Answer {
                    status: 200,
                    content_type: "application/octet-stream",
                    body: file,
                },
                Err(why) => Answer::text(409, why),
            },
            None => Answer::text(409, "passthrough mode has no replicated state"),
        },
        ("POST", "/divergence/resume") => match &admin.node {
            Some(node) => match node.applied.resume() {
                Ok(()) => {
                    tracing::warn!("resumed by an operator after a divergence");
                    // The operator made the app agree: what was found no longer holds.
                    node.divergence.healed();
                    Answer::json(200, status(admin))
                }
                Err(error) => Answer::text(500, format!("the fence cannot be lifted: {error}")),
            },
            None => Answer::text(409, "passthrough mode has no replicas"),
        },
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
            | "/metrics"
            | "/digests"
            | "/cluster/learners"
            | "/cluster/learners/remove"
            | "/cluster/membership"
            | "/backup"
            | "/divergence/resume",
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
pub(crate) fn not_ready(admin: &Admin) -> Option<String> {
    let node = admin.node.as_ref()?;
    // First: it does not pass while fenced, whatever else holds it up.
    if let Some(why) = node.applied.fenced_because() {
        return Some(format!("fenced: {why}"));
    }
    let metrics = node.metrics();
    if node.leader(&metrics).is_none() {
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
    if !node.announced() {
        return Some("abandoning the connections this replica lost when its agent stopped".into());
    }
    if !node.app().healthy() {
        return Some("the app does not answer, or is slow to".into());
    }
    None
}

/// The metrics, with the state of the moment.
pub(crate) fn metrics(admin: &Admin) -> String {
    let state = match &admin.node {
        Some(node) => State {
            ready: not_ready(admin).is_none(),
            ..state(node)
        },
        // Passthrough: ready whenever it answers; it has no replica.
        None => State {
            ready: true,
            ..State::default()
        },
    };
    admin.telemetry.state(&state);
    admin.telemetry.totals(|| {
        let stats = admin.steering.stats();
        let mut totals = Totals {
            steering: [stats.steered, stats.dropped, stats.bypassed],
            ..Totals::default()
        };
        if let Some(node) = &admin.node {
            if let Security::Tls(tls) = node.peer_security() {
                totals.handshake_failures = tls.handshake_failures();
            }
            node.count(&mut totals);
        }
        totals
    });
    admin.telemetry.encode()
}

/// The replica's state of the moment, for the metrics; whether it is ready is the admin's to say.
fn state(node: &Node) -> State {
    let metrics = node.metrics();
    let last = metrics.last_log_index.unwrap_or(0);
    let lags = metrics
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != node.id)
        .map(|(id, matched)| (*id, last.saturating_sub(matched.map_or(0, |m| m.index))))
        .collect();
    State {
        in_flight: node.pending(),
        fenced: node.applied.fenced(),
        ready: false,
        is_leader: metrics.current_leader == Some(node.id),
        log_bytes: node.log.file_bytes(),
        disk_available: node.log.disk_available(),
        term: metrics.current_term,
        leader: node.leader(&metrics).unwrap_or(0),
        commit_index: node.log.committed().map_or(0, |id| id.index),
        applied_index: node.applied.applied_index(),
        lags,
    }
}

pub(crate) fn status(admin: &Admin) -> serde_json::Value {
    let stats = admin.steering.stats();
    let steering = json!({
        "pins": admin.steering.pins().display().to_string(),
        "steered": stats.steered,
        "dropped": stats.dropped,
        "bypassed": stats.bypassed,
    });
    let Some(node) = &admin.node else {
        return json!({
            "version": env!("CARGO_PKG_VERSION"),
            "mode": "passthrough",
            "ready": true,
            "steering": steering,
        });
    };
    let mut status = replica_status(node);
    status["ready"] = json!(not_ready(admin).is_none());
    status["steering"] = steering;
    status
}

/// What `/status` says of the replica itself.
fn replica_status(node: &Node) -> serde_json::Value {
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
        "version": env!("CARGO_PKG_VERSION"),
        "mode": "replicated",
        "node_id": node.id,
        "incarnation": format!("{:016x}", node.identity.incarnation),
        "state": format!("{:?}", metrics.state),
        "leader_id": node.leader(&metrics),
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
        "unconfirmed": node.applied.unconfirmed(),
        "divergence": node.divergence.first(),
        "compared_up_to": node.divergence.checked(),
        "fenced": node.applied.fenced(),
        "fenced_because": node.applied.fenced_because(),
        "peer_tls": match node.peer_security() {
            Security::Tls(tls) => json!({
                "generation": tls.generation(),
                "handshake_failures": tls.handshake_failures(),
            }),
            Security::Insecure => json!(null),
        },
        "log_cache_bytes": node.log.cached_bytes(),
        "app_healthy": node.app().healthy(),
    })
}
