//! Waits until a service answers a request successfully: before measuring, and after a point
//! that overloaded it, so that no backlog leaks into the next measurement.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::bail;
use hermes_lab::client;

use super::guard;

/// How long a service may take to answer: generous, because an overloaded Hermes cluster first
/// works off what its followers have committed but not yet delivered.
const PATIENCE: Duration = Duration::from_secs(180);

pub fn wait_answering(addr: SocketAddr, request: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        guard::targets_in_lab(&[addr])?;
        let last = match client::exchange(addr, request) {
            Ok(response) if (200..300).contains(&response.status) => return Ok(()),
            Ok(response) => format!("status {}: {}", response.status, response.text().trim()),
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            let line = String::from_utf8_lossy(request);
            let line = line.lines().next().unwrap_or_default();
            bail!("{addr} did not answer `{line}` successfully within {PATIENCE:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
