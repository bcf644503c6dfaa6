//! One measured point: a setup under one workload at one offered rate, and whether it was
//! saturated.
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    deploy::Setup,
    flow::Flow,
    plan::{MAX_ERROR_SHARE, MIN_ACHIEVED_SHARE, P90_LIMIT_MS},
    workload::Workload,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub setup: String,
    pub workload: String,
    /// The low-load point, measured before the sweep.
    pub low_load: bool,
    /// Offered requests per second (open loop).
    pub offered: f64,
    /// Requests answered successfully per second of measured time.
    pub achieved: f64,
    pub completed: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// CPU time of the apps (log apps, or etcd members) per completed request, summed over nodes.
    pub app_cpu_us_per_req: Option<f64>,
    /// CPU time of what sits in front of the apps (Hermes agents, or nginx) per completed
    /// request; `None` where nothing does.
    pub proxy_cpu_us_per_req: Option<f64>,
    /// See [`Point::overloaded`].
    pub saturated: bool,
    /// What the Hermes agents counted (Hermes setups with Raft only).
    #[serde(default)]
    pub flow: Option<Flow>,
    /// What one sync of the disk took right after the point (see [`super::disk`]); `None` in
    /// runs from before it was measured.
    #[serde(default)]
    pub disk_sync_ms: Option<f64>,
}

impl Point {
    /// Whether it was measured on `setup` under `workload`.
    pub fn is(&self, setup: Setup, workload: Workload) -> bool {
        self.setup == setup.name() && self.workload == workload.name()
    }

    /// Whether the setup could not keep up with the offered rate: latency beyond the limit, too
    /// little of the offered rate achieved, or too many errors.
    pub fn overloaded(&self) -> bool {
        self.p90_ms > P90_LIMIT_MS
            || self.achieved < MIN_ACHIEVED_SHARE * self.offered
            || self.error_share() > MAX_ERROR_SHARE
    }

    /// Whether this point counts towards the saturation throughput: latency and errors within
    /// the limits (a point may count while achieving less than offered).
    pub fn within_limits(&self) -> bool {
        self.p90_ms <= P90_LIMIT_MS && self.error_share() <= MAX_ERROR_SHARE
    }

    fn error_share(&self) -> f64 {
        let attempts = self.completed + self.errors;
        if attempts == 0 {
            1.0
        } else {
            self.errors as f64 / attempts as f64
        }
    }
}

/// The live progress line.
impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<11} {:<5} offered {:>6.0}/s  achieved {:>6.0}/s  p50 {:>8.3} ms  p90 {:>8.3} ms  \
             errors {:>5}  cpu/req app {} proxy {}  disk sync {}{}",
            self.setup,
            self.workload,
            self.offered,
            self.achieved,
            self.p50_ms,
            self.p90_ms,
            self.errors,
            micros(self.app_cpu_us_per_req),
            micros(self.proxy_cpu_us_per_req),
            millis(self.disk_sync_ms),
            if self.saturated { "  SATURATED" } else { "" }
        )
    }
}

/// A duration in ms for people: "0.25 ms", or "-" when there is none.
pub fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2} ms"))
}

/// A CPU figure for people: "123 µs", or "-" when there is none.
pub fn micros(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |us| format!("{us:.0} µs"))
}
