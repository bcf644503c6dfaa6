//! The admin API (loopback by default): `GET /status` (JSON), `/healthz`, `/readyz`, and
//! `/digests?from=N` (digests of the app's responses per log index, to compare replicas).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{order::Node, steer::Steering};

pub struct Admin {
    pub steering: Steering,
    /// `None` in passthrough mode.
    pub node: Option<Arc<Node>>,
    pub max_pending: usize,
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), connection(stream, &admin)).await;
        });
    }
}

async fn connection(mut stream: TcpStream, admin: &Admin) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = request.parse(&buf);
        let (status, content_type, body) = match parsed {
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
            Ok(httparse::Status::Complete(_)) => route(
                admin,
                request.method.unwrap_or(""),
                request.path.unwrap_or(""),
            ),
            _ => (400, "text/plain", "bad request\n".to_owned()),
        };
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "Bad Request",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return stream.write_all(response.as_bytes()).await;
    }
}

fn route(admin: &Admin, method: &str, target: &str) -> (u16, &'static str, String) {
    if method != "GET" {
        return (405, "text/plain", "only GET\n".into());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => match not_ready(admin) {
            None => (200, "text/plain", "ready\n".into()),
            Some(reason) => (503, "text/plain", format!("not ready: {reason}\n")),
        },
        "/status" => (200, "application/json", status(admin).to_string() + "\n"),
        "/digests" => {
            let from = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("from="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let digests = admin
                .node
                .as_ref()
                .map(|n| n.shared.digests(from))
                .unwrap_or_default();
            (200, "application/json", json!(digests).to_string() + "\n")
        }
        _ => (
            404,
            "text/plain",
            "unknown path; try /status, /healthz, /readyz, /digests\n".into(),
        ),
    }
}

/// Why this node should not get traffic yet, if it should not.
fn not_ready(admin: &Admin) -> Option<String> {
    let node = admin.node.as_ref()?;
    let metrics = node.metrics();
    if metrics.current_leader.is_none() {
        return Some("no leader".into());
    }
    if metrics.current_leader == Some(node.id)
        && metrics
            .millis_since_quorum_ack
            .is_some_and(|ms| ms > crate::order::propose::QUORUM_SILENCE_MS)
    {
        return Some("leader cut off from a quorum".into());
    }
    let applied = node.shared.applied_index();
    if applied < node.startup_commit {
        return Some(format!(
            "catching up: applied {applied} of {} committed at start",
            node.startup_commit
        ));
    }
    if !node.shared.app_reachable() {
        return Some("the app does not answer".into());
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
    json!({
        "mode": "replicated",
        "node_id": node.id,
        "state": format!("{:?}", metrics.state),
        "leader_id": metrics.current_leader,
        "term": metrics.current_term,
        "last_log_index": metrics.last_log_index.unwrap_or(0),
        "commit_index": node.log.committed().map_or(0, |id| id.index),
        "applied_index": node.shared.applied_index(),
        "deliveries": node.shared.deliveries(),
        "members": members,
        "pending": node.pending(admin.max_pending),
        "app_reachable": node.shared.app_reachable(),
        "ready": not_ready(admin).is_none(),
        "steering": steering,
    })
}
