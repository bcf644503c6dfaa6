//! One setup under one workload: the low-load point, then offered rates in increasing order
//! until the setup saturates, then a bisection between the last rate that kept up and the first
//! that did not.
use std::time::Instant;

use super::{
    deploy::{Deployment, Setup},
    measure::Bench,
    plan::LOW_RATE,
    point::Point,
    workload::Workload,
};

/// Measures the points and prints each as it is done; `started` is when the whole run began.
pub fn run(
    bench: &Bench<'_>,
    setup: Setup,
    deployment: &Deployment,
    workload: Workload,
    started: Instant,
) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    let mut measure = |rate: f64, low_load: bool| -> anyhow::Result<bool> {
        let point = bench.point(setup, deployment, workload, rate, low_load)?;
        let elapsed = started.elapsed().as_secs();
        println!("[{:>2}:{:02}] {point}", elapsed / 60, elapsed % 60);
        let saturated = point.saturated;
        points.push(point);
        if saturated {
            // An overloaded setup may still be working off a backlog (a Hermes follower
            // delivering what was committed): let it finish, or it would slow the next point.
            let settling = Instant::now();
            deployment.wait_answering()?;
            let settled = settling.elapsed();
            if settled.as_secs() >= 1 {
                println!("        {setup} took {settled:.1?} to answer again after overload");
            }
        }
        Ok(saturated)
    };
    // The low-load point is there for its latency and is not part of the sweep: the sweep's
    // first rate is always measured.
    measure(LOW_RATE, true)?;
    let mut kept_up = LOW_RATE;
    let mut saturated_at = None;
    for &rate in &bench.plan.rates {
        if measure(rate, false)? {
            saturated_at = Some(rate);
            // Past saturation only latency grows.
            break;
        }
        kept_up = rate;
    }
    if let Some(mut too_much) = saturated_at {
        for _ in 0..bench.plan.refinements {
            let rate = (kept_up * too_much).sqrt().round();
            if measure(rate, false)? {
                too_much = rate;
            } else {
                kept_up = rate;
            }
        }
    }
    Ok(points)
}
