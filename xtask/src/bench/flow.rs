//! What the Hermes agents counted during a point, read from their `/metrics`: how many requests
//! share a log entry, and how often each node appends, syncs, replicates, forwards and asks its
//! app. It explains a throughput, so that a regression shows its cause.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The counters summed over the agents of a deployment, at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub entries: f64,
    pub entry_requests: f64,
    pub syncs: f64,
    pub append_entries: f64,
    pub forwards: f64,
    pub app_round_trips: f64,
}

impl Counts {
    /// Adds the counters in `metrics`, one agent's `/metrics` text.
    pub fn add(&mut self, metrics: &str) {
        for line in metrics.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let counter = match name {
                "hermes_log_entries_total" => &mut self.entries,
                "hermes_log_entry_requests_total" => &mut self.entry_requests,
                "hermes_log_syncs_total" => &mut self.syncs,
                r#"hermes_peer_calls_total{kind="append_entries",direction="sent"}"# => {
                    &mut self.append_entries
                }
                r#"hermes_peer_calls_total{kind="forward",direction="sent"}"# => &mut self.forwards,
                "hermes_app_seconds_count" => &mut self.app_round_trips,
                _ => continue,
            };
            *counter += value;
        }
    }
}

/// The counters' rates over a point, on a deployment of `nodes` agents.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Requests per log entry.
    pub requests_per_entry: f64,
    /// Entries appended per second, per node.
    pub entries_per_s: f64,
    /// Log syncs (fsyncs) per second, per node.
    pub syncs_per_s: f64,
    /// AppendEntries sent per second, all nodes.
    pub append_entries_per_s: f64,
    /// Batches forwarded to the leader per second, all nodes.
    pub forwards_per_s: f64,
    /// Exchanges with the app per second, per node.
    pub app_round_trips_per_s: f64,
}

impl Flow {
    pub fn between(before: Counts, after: Counts, elapsed: Duration, nodes: usize) -> Self {
        let grown = |f: fn(&Counts) -> f64| (f(&after) - f(&before)).max(0.0);
        let per_s = |n: f64| n / elapsed.as_secs_f64().max(1e-9);
        let per_node = |n: f64| per_s(n) / nodes.max(1) as f64;
        let entries = grown(|c| c.entries);
        Self {
            requests_per_entry: if entries > 0.0 {
                grown(|c| c.entry_requests) / entries
            } else {
                0.0
            },
            entries_per_s: per_node(entries),
            syncs_per_s: per_node(grown(|c| c.syncs)),
            append_entries_per_s: per_s(grown(|c| c.append_entries)),
            forwards_per_s: per_s(grown(|c| c.forwards)),
            app_round_trips_per_s: per_node(grown(|c| c.app_round_trips)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_the_metrics_and_turned_into_rates() {
        let metrics = |n: u64| {
            format!(
                "# HELP hermes_log_entries Entries\nhermes_log_entries_total {n}\n\
                 hermes_log_entry_requests_total {}\nhermes_log_syncs_total {n}\n\
                 hermes_peer_calls_total{{kind=\"append_entries\",direction=\"sent\"}} {}\n\
                 hermes_peer_calls_total{{kind=\"append_entries\",direction=\"received\"}} 999\n\
                 hermes_peer_calls_total{{kind=\"forward\",direction=\"sent\"}} {n}\n\
                 hermes_app_seconds_count {}\nhermes_app_seconds_sum 1.5\n",
                10 * n,
                2 * n,
                10 * n
            )
        };
        let mut before = Counts::default();
        let mut after = Counts::default();
        for node in 0..2 {
            before.add(&metrics(100 * node));
            after.add(&metrics(100 * node + 50));
        }
        let flow = Flow::between(before, after, Duration::from_secs(2), 2);
        assert_eq!(
            flow,
            Flow {
                requests_per_entry: 10.0,
                entries_per_s: 25.0,
                syncs_per_s: 25.0,
                append_entries_per_s: 100.0,
                forwards_per_s: 50.0,
                app_round_trips_per_s: 250.0,
            }
        );
    }
}
