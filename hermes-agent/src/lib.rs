//! The Hermes agent: makes an unchanged TCP/HTTP application fault tolerant by active replication.
//!
//! - [`config`]: flags and `HERMES_*` environment.
//! - [`steer`]: the eBPF `sk_lookup` program that steers the protected port to the agent, pinned
//!   so that it fails closed while no agent runs.
//! - [`intercept`]: accepts steered connections and serves them (for now: [`intercept::passthrough`]).
//!
//! [`run`] is the whole daemon, so tests and `main` start it the same way.
pub mod config;
pub mod intercept;
pub mod steer;

use std::future::Future;

pub use config::Config;

/// Why an agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for steered connections: {0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Steer(#[from] steer::Error),
}

/// Runs an agent in the current network namespace until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let listeners = steer::Listeners::bind().map_err(Error::Listen)?;
    steer::attach(
        &steer::Target {
            netns: config.netns.as_deref(),
            port: config.port,
            fail_open: config.fail_open,
            bpffs: &config.bpffs,
        },
        &listeners,
    )?;
    let handler = intercept::passthrough::Passthrough {
        app: config.app_addr(),
    };
    intercept::serve(listeners, handler, shutdown, config.grace_period)
        .await
        .map_err(Error::Listen)
}
