//! A one-node cluster for the in-process tests, in front of a fake app ([`crate::testing`]).
use std::{sync::Arc, time::Duration};

use super::{Node, Settings};

/// A one-node cluster in front of the app at `app`, its data in `dir`, once it leads; `tune`
/// changes its settings first.
pub async fn single_node(
    app: std::net::SocketAddr,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut Settings),
) -> Arc<Node> {
    let mut settings = single_node_settings(app, dir);
    tune(&mut settings);
    let node = Node::start(settings).await.expect("node starts");
    let mut metrics = node.raft.metrics();
    metrics
        .wait_for(|m| m.current_leader == Some(1))
        .await
        .expect("it leads");
    node
}

/// The settings of [`single_node`].
pub fn single_node_settings(app: std::net::SocketAddr, dir: &std::path::Path) -> Settings {
    let local: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    Settings {
        node_id: 1,
        join: false,
        raft_addr: local,
        members: [(1, local.to_string())].into(),
        data_dir: dir.to_owned(),
        app,
        app_source: std::net::Ipv4Addr::LOCALHOST,
        app_timeout: Duration::from_secs(5),
        response_limits: crate::http::response::Limits::default(),
        app_connections: 64,
        sync_progress: true,
        request_timeout: Duration::from_secs(10),
        max_pending: 64,
        log_cache: 1 << 20,
        max_frame: 32 << 20,
        peer_tls: None,
        telemetry: Arc::default(),
        digest: crate::order::peer::wire::Digest::StatusAndBody,
        on_divergence: crate::deliver::divergence::OnDivergence::Warn,
        snapshots: None,
        placement: Default::default(),
        tcp: None,
    }
}
