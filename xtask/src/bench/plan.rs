//! How much to measure: point durations, the offered rates, and when a sweep has saturated.
use std::time::Duration;

/// A point is saturated when its p90 latency exceeds this.
pub const P90_LIMIT_MS: f64 = 200.0;
/// ... or when it achieved less than this share of the offered rate.
pub const MIN_ACHIEVED_SHARE: f64 = 0.9;
/// ... or when more than this share of its requests failed.
pub const MAX_ERROR_SHARE: f64 = 0.01;

/// The open-loop rate of the low-load point, which gives the latency of an idle system.
pub const LOW_RATE: f64 = 200.0;

pub struct Plan {
    pub quick: bool,
    /// Measured time per point.
    pub duration: Duration,
    /// Load before each point's measurement, not counted.
    pub warmup: Duration,
    /// Offered rates of the sweep, in order; a sweep stops at its first saturated point.
    pub rates: Vec<f64>,
    /// Points measured after the first saturated one, each halving (geometrically) the interval
    /// between the highest rate that kept up and the lowest that did not.
    pub refinements: u32,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            // Proves the harness end to end; the numbers mean nothing.
            Self {
                quick,
                duration: Duration::from_secs(1),
                warmup: Duration::from_millis(500),
                rates: vec![500.0],
                refinements: 0,
            }
        } else {
            Self {
                quick,
                duration: Duration::from_secs(5),
                warmup: Duration::from_secs(1),
                // Doubling from 500/s up to 128000/s, beyond what the load generator and the
                // log app alone serve together on two cores; a setup that keeps up even then
                // is reported as "≥" its best rate.
                rates: (0..9).map(|i| 500.0 * f64::from(1 << i)).collect(),
                // Doubling alone knows the saturation throughput only within a factor of 2, and
                // would make every ratio between setups a power of 2; two more points narrow it
                // to about 19%.
                refinements: 2,
            }
        }
    }

    /// The command that runs this plan, for the reports.
    pub fn command(&self) -> &'static str {
        if self.quick {
            "cargo xtask bench --quick"
        } else {
            "cargo xtask bench"
        }
    }
}

/// Open-loop connections for `rate`: enough that each one sends at most 100 requests per second,
/// since the load generator's timers have millisecond granularity.
pub fn connections(rate: f64) -> u64 {
    ((rate / 100.0).ceil() as u64).max(16)
}
