//! The Hermes agent: makes an unchanged TCP/HTTP application fault tolerant by active replication.
//!
//! - [`config`]: flags and `HERMES_*` environment.
//! - [`steer`]: the eBPF `sk_lookup` program that steers the protected port to the agent, pinned
//!   so that it fails closed while no agent runs.
//! - [`intercept`]: accepts steered connections and parses their requests ([`intercept::http`]),
//!   or orders their events in raw TCP mode ([`intercept::tcp`], events in [`tcp`]), or only
//!   relays bytes ([`intercept::passthrough`]).
//! - [`node`]: a running node, which interception calls: it wires [`order`] and [`deliver`]
//!   together.
//! - [`order`]: totally orders the requests of all nodes through Raft (the log, the peers).
//! - [`deliver`]: Raft's state machine: delivers the committed requests, in log order, to the
//!   local app, and compares the replicas' answers.
//! - [`admin`]: status, health, readiness and membership over HTTP; [`ctl`] is its command line.
//! - [`http`]: HTTP/1.1 framing shared by interception, delivery and the admin API.
//! - [`telemetry`]: what the agent counts, for Prometheus.
//! - [`kube`]: pod mode, for Kubernetes: a member per labelled pod of the node.
//! - [`data_dir`]: a node's data directory, whose files are reached only through it.
//!
//! A request goes down one pipeline, intercept → order → deliver, and the imports run one way:
//! [`intercept`] calls [`node`], which uses [`deliver`] and [`order`]; [`deliver`] builds on
//! [`order`]'s log and types; [`order`] imports neither.
//!
//! [`run`] is the whole daemon, so tests and `main` start it the same way.
pub mod admin;
pub mod config;
pub mod ctl;
pub mod data_dir;
pub mod deliver;
pub mod http;
pub mod intercept;
pub mod kube;
pub mod node;
pub mod order;
pub mod steer;
pub mod tcp;
pub mod telemetry;
#[cfg(test)]
mod testing;

use std::{future::Future, net::SocketAddr, sync::Arc};

pub use config::Config;

/// Why an agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen for steered connections: {0}")]
    Listen(std::io::Error),
    #[error("cannot serve the admin API on {0}: {1}")]
    Admin(SocketAddr, std::io::Error),
    #[error("cannot serve the metrics on {0} (--metrics-addr): {1}")]
    Metrics(SocketAddr, std::io::Error),
    #[error(transparent)]
    Start(#[from] order::StartError),
    #[error(transparent)]
    Steer(#[from] steer::Error),
    #[error("cannot give this network namespace the delivery address (--app-source): {0}")]
    Source(std::io::Error),
}

/// Runs an agent in the current network namespace until `shutdown` resolves, once `config`
/// is found valid.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    config.validate()?;
    let settings = config.settings()?;
    let telemetry = settings
        .as_ref()
        .map_or_else(Arc::default, |settings| Arc::clone(&settings.telemetry));
    let listeners = steer::Listeners::bind().map_err(Error::Listen)?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin)
        .await
        .map_err(|e| Error::Admin(config.admin, e))?;
    let metrics_listener = admin::bind_metrics(config.metrics_addr)
        .await
        .map_err(|(addr, e)| Error::Metrics(addr, e))?;
    let node = match settings {
        Some(settings) => Some(node::Node::start(settings).await?),
        None => None,
    };
    steer::source::ensure(config.app_source).map_err(Error::Source)?;
    let steering = steer::attach(
        &steer::Target {
            netns: config.netns.as_deref(),
            port: config.port,
            fail_open: config.fail_open,
            bpffs: &config.bpffs,
            source: Some(config.app_source),
            pod: None,
        },
        &listeners,
    )?;
    let admin = Arc::new(admin::Admin {
        steering,
        node: node.clone(),
        token_file: config.admin_token_file.clone(),
        telemetry,
    });
    tokio::spawn(admin::serve(admin_listener, Arc::clone(&admin)));
    if let Some(listener) = metrics_listener {
        let encode = move || admin::metrics(&admin);
        tokio::spawn(admin::serve_metrics(listener, Arc::new(encode)));
    }
    serve(&config, node.as_ref(), listeners, shutdown)
        .await
        .map_err(Error::Listen)
}

/// How long a planned stop waits, at most, for the order that abandons the connections still
/// open to be committed (raw TCP mode; see [`node::Node::abandon_connections`]).
const ABANDON_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Of the grace period, what a planned stop keeps at most for what comes after draining the
/// clients (a quarter of it, up to this).
const AFTER_DRAINING: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a stopping leader tries, at most, to hand its leadership over: writes wait meanwhile,
/// and a request waits [`node::LEADERLESS`] for a leader before its client gets 503.
const HAND_OVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// A budget of `bytes` bytes, one permit each (at most what a semaphore holds).
pub fn byte_budget(bytes: u64) -> Arc<tokio::sync::Semaphore> {
    let permits = usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    Arc::new(tokio::sync::Semaphore::new(permits))
}

/// Serves the steered clients, until `shutdown`, as `config` says: their requests (or TCP
/// connection events) ordered by `node`, or relayed to the app unordered if there is none
/// (`--passthrough`). Then stops `node`, letting the delivery in flight finish.
pub async fn serve(
    config: &Config,
    node: Option<&Arc<node::Node>>,
    listeners: steer::Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // The whole stop, draining included, ends within the grace period from the signal: the one
    // number an operator sets the pod's terminationGracePeriodSeconds above.
    let signalled = std::sync::OnceLock::new();
    let shutdown = async {
        shutdown.await;
        let _ = signalled.set(tokio::time::Instant::now());
    };
    // Draining clients may take the grace period but for a part kept for what comes after it
    // (the handover, the delivery in flight).
    let drain = config.grace_period - (config.grace_period / 4).min(AFTER_DRAINING);
    let max_connections = usize::try_from(config.max_connections).unwrap_or(usize::MAX);
    // Bytes of client requests (or of TCP chunks) held at once, until ordered.
    let budget = byte_budget(config.body_budget);
    let served = match node {
        None => {
            let handler = intercept::passthrough::Passthrough {
                app: config.app_addr(),
                source: config.app_source,
            };
            intercept::serve(listeners, handler, shutdown, drain, max_connections).await
        }
        Some(node) if config.protocol == config::Protocol::Tcp => {
            let handler = intercept::tcp::Tcp {
                node: Arc::clone(node),
                idle_timeout: config.idle_timeout(),
                budget,
            };
            intercept::serve(listeners, handler, shutdown, drain, max_connections).await
        }
        Some(node) => {
            let limits = intercept::http::Limits {
                http: http::request::Limits {
                    max_body: config.max_body,
                    ..Default::default()
                },
                client_timeout: config.client_timeout,
                idle_timeout: config.idle_timeout(),
            };
            let reads = intercept::http::Reads {
                mode: config.reads,
                methods: config
                    .read_methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
            };
            let handler = intercept::http::Http {
                node: Arc::clone(node),
                limits,
                reads,
                budget,
                // The app's answers held for slow clients: a second budget of the same size.
                answers: byte_budget(config.body_budget),
            };
            intercept::serve(listeners, handler, shutdown, drain, max_connections).await
        }
    };
    if let Some(node) = node {
        let deadline = *signalled.get_or_init(tokio::time::Instant::now) + config.grace_period;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        // Raw TCP mode: no connection is left open behind this replica. One commit (if it
        // takes long, there is no leader), then this replica's apply up to it.
        node.abandon_connections(ABANDON_WITHIN.min(left()), deadline)
            .await;
        node.step_down(HAND_OVER_WITHIN.min(left())).await;
        let _ = node.raft.shutdown().await;
        // A delivery in flight finishes: the app gets no request cut in half, and the progress
        // says exactly what it has.
        if tokio::time::timeout(left(), node.finish_delivery())
            .await
            .is_err()
        {
            tracing::warn!("a delivery was still in flight when the grace period ended");
        }
    }
    served
}
