//! What the agent counts, in Prometheus' terms (prometheus-client), served by the admin API at
//! `GET /metrics`. Events are counted where they happen (interception, ordering, delivery);
//! states (Raft's term and indexes, the steering program's counters, TLS failures) are read
//! when the metrics are asked for.
use std::sync::Mutex;

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};

type Labels = Vec<(&'static str, String)>;

/// The agent's metrics.
#[derive(Debug)]
pub struct Telemetry {
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    in_flight: Gauge,
    commit_seconds: Histogram,
    apply_seconds: Histogram,
    app_seconds: Histogram,
    app_failures: Family<Labels, Counter>,
    in_doubt: Counter,
    fenced: Gauge,
    ready: Gauge,
    is_leader: Gauge,
    leader_changes: Counter,
    unconfirmed: Counter,
    divergences: Counter,
    term: Gauge,
    leader: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    replication_lag: Family<Labels, Gauge>,
    steering: Family<Labels, Counter>,
    handshake_failures: Counter,
    log_entries: Counter,
    log_entry_requests: Counter,
    log_syncs: Counter,
    log_sync_seconds: Histogram,
    log_bytes: Gauge,
    disk_available: Gauge,
    hook_failures: Family<Labels, Counter>,
    peer_calls: Family<Labels, Counter>,
    tcp_events: Family<Labels, Counter>,
    tcp_connections: Gauge,
    /// What the steering program and TLS had counted at the last scrape.
    seen: Mutex<Seen>,
}

/// What was counted elsewhere (the steering program, TLS, the log, the peer transport), as
/// read at a scrape: totals since the start.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// The steering program's verdicts: steered, dropped, bypassed.
    pub steering: [u64; 3],
    pub handshake_failures: u64,
    /// Entries appended to this node's log, the requests in them, and the log's syncs.
    pub log_entries: u64,
    pub log_entry_requests: u64,
    pub log_syncs: u64,
    /// Requests sent to the app once more because Hermes could not tell whether it had them.
    pub in_doubt: u64,
    /// Requests written before the agent stopped whose answer it never read.
    pub unconfirmed: u64,
    /// Leaders this node has seen take office (a new term or a new leader).
    pub leader_changes: u64,
    /// AppendEntries sent and received, and forwarded batches sent (attempted) and received.
    pub append_entries: [u64; 2],
    pub forwards: [u64; 2],
}

#[derive(Debug, Default)]
struct Seen {
    totals: Totals,
}

/// Latencies from 100 µs to about 26 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Default for Telemetry {
    fn default() -> Self {
        let this = Self {
            registry: Mutex::new(Registry::with_prefix("hermes")),
            requests: Family::default(),
            in_flight: Gauge::default(),
            commit_seconds: seconds(),
            apply_seconds: seconds(),
            app_seconds: seconds(),
            app_failures: Family::default(),
            in_doubt: Counter::default(),
            fenced: Gauge::default(),
            ready: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            unconfirmed: Counter::default(),
            divergences: Counter::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            replication_lag: Family::default(),
            steering: Family::default(),
            handshake_failures: Counter::default(),
            log_entries: Counter::default(),
            log_entry_requests: Counter::default(),
            log_syncs: Counter::default(),
            log_sync_seconds: seconds(),
            log_bytes: Gauge::default(),
            disk_available: Gauge::default(),
            hook_failures: Family::default(),
            peer_calls: Family::default(),
            tcp_events: Family::default(),
            tcp_connections: Gauge::default(),
            seen: Mutex::default(),
        };
        {
            let mut r = this.registry.lock().unwrap();
            r.register(
                "build",
                "The agent's version",
                Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
            );
            r.register(
                "requests",
                "Client requests answered, by outcome and status class",
                this.requests.clone(),
            );
            r.register(
                "requests_in_flight",
                "Requests of this node's clients waiting for the log or the app",
                this.in_flight.clone(),
            );
            r.register(
                "commit_seconds",
                "From a request's proposal until the leader committed it",
                this.commit_seconds.clone(),
            );
            r.register(
                "apply_seconds",
                "From a request's commit until this node's app answered it",
                this.apply_seconds.clone(),
            );
            r.register(
                "app_seconds",
                "One exchange with the app: the request written, its answer read",
                this.app_seconds.clone(),
            );
            r.register(
                "app_failures",
                "Exchanges with the app that gave no answer to pass on, by kind",
                this.app_failures.clone(),
            );
            r.register(
                "in_doubt",
                "Requests sent to the app once more because Hermes could not tell whether it had \
                 them, over the replica's life",
                this.in_doubt.clone(),
            );
            r.register(
                "fenced",
                "1 while this replica is fenced (it applies nothing; /status says why)",
                this.fenced.clone(),
            );
            r.register(
                "ready",
                "1 while the node takes clients (/readyz answers 200; /status says why not)",
                this.ready.clone(),
            );
            r.register(
                "is_leader",
                "1 while this node is the Raft leader",
                this.is_leader.clone(),
            );
            r.register(
                "leader_changes",
                "Leaders this node has seen take office (a new leader, or a new term)",
                this.leader_changes.clone(),
            );
            r.register(
                "unconfirmed",
                "Requests written to the app before the agent stopped whose answer it never read, \
                 over the replica's life: not sent again, but if the app stopped too it may not \
                 have run them",
                this.unconfirmed.clone(),
            );
            r.register(
                "divergences",
                "Requests whose answer here differed from the other replicas'",
                this.divergences.clone(),
            );
            r.register("raft_term", "The current Raft term", this.term.clone());
            r.register(
                "raft_leader",
                "The node this node takes for the leader (0: none)",
                this.leader.clone(),
            );
            r.register(
                "raft_commit_index",
                "The last log index known committed",
                this.commit_index.clone(),
            );
            r.register(
                "raft_applied_index",
                "The last log index applied to the app",
                this.applied_index.clone(),
            );
            r.register(
                "replication_lag",
                "On the leader: log entries each follower lacks",
                this.replication_lag.clone(),
            );
            r.register(
                "steering",
                "Connections to the protected port, by the steering program's verdict",
                this.steering.clone(),
            );
            r.register(
                "peer_tls_handshake_failures",
                "TLS handshakes with peers that failed, both ways",
                this.handshake_failures.clone(),
            );
            r.register(
                "log_entries",
                "Entries appended to this node's log, its leaders' blank and membership entries \
                 included (requests per entry: hermes_log_entry_requests_total / \
                 hermes_log_entries_total)",
                this.log_entries.clone(),
            );
            r.register(
                "log_entry_requests",
                "Requests (raw TCP mode: connection events) in the entries appended to this \
                 node's log",
                this.log_entry_requests.clone(),
            );
            r.register(
                "log_syncs",
                "Writes of this node's log made durable (each one fsync, of any number of entries)",
                this.log_syncs.clone(),
            );
            r.register(
                "log_sync_seconds",
                "One write of this node's log made durable: its write and fdatasync",
                this.log_sync_seconds.clone(),
            );
            r.register(
                "log_bytes",
                "Size of this node's log file on disk",
                this.log_bytes.clone(),
            );
            r.register(
                "disk_available_bytes",
                "Space left for the agent on the data directory's filesystem",
                this.disk_available.clone(),
            );
            r.register(
                "hook_failures",
                "Snapshot hooks that failed (each is retried), by hook (snapshot, restore)",
                this.hook_failures.clone(),
            );
            // Present from the start, at 0, for alerts on their increase.
            for hook in ["snapshot", "restore"] {
                let _ = this
                    .hook_failures
                    .get_or_create(&vec![("hook", hook.to_owned())]);
            }
            r.register(
                "peer_calls",
                "Calls between peers, by kind (append_entries: Raft replication; forward: a \
                 follower's batch of requests for the leader) and direction (sent, received)",
                this.peer_calls.clone(),
            );
            r.register(
                "tcp_events",
                "Raw TCP mode: connection events applied to the app, by kind (ignored: of a \
                 connection closed; broken: of one this replica lost when its agent stopped, \
                 not applied)",
                this.tcp_events.clone(),
            );
            r.register(
                "tcp_app_connections",
                "Raw TCP mode: connections to the app this replica holds",
                this.tcp_connections.clone(),
            );
        }
        this
    }
}

/// How a client's request ended, for [`Telemetry::request`].
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// The app's answer went to the client.
    Answered,
    /// Refused before it was ordered (malformed, too large, over a budget).
    Refused,
    /// Not ordered: no leader, not a member, too many waiting.
    Unavailable,
    /// Maybe ordered, not answered in time.
    Unknown,
    /// Delivered, but the app gave no answer to pass on.
    AppFailed,
    /// Answered, but the client was reset: its answer did not fit in the node's budget for
    /// answers held for clients (slow clients held it).
    Reset,
}

impl Telemetry {
    pub fn request(&self, outcome: Outcome, status: u16) {
        let outcome = match outcome {
            Outcome::Answered => "answered",
            Outcome::Refused => "refused",
            Outcome::Unavailable => "unavailable",
            Outcome::Unknown => "unknown",
            Outcome::AppFailed => "app_failed",
            Outcome::Reset => "reset",
        };
        let class = format!("{}xx", status / 100);
        self.requests
            .get_or_create(&vec![("outcome", outcome.to_owned()), ("class", class)])
            .inc();
    }

    pub fn committed(&self, seconds: f64) {
        self.commit_seconds.observe(seconds);
    }

    pub fn applied(&self, seconds: f64) {
        self.apply_seconds.observe(seconds);
    }

    pub fn exchanged(&self, seconds: f64) {
        self.app_seconds.observe(seconds);
    }

    pub fn app_failed(&self, kind: &'static str) {
        self.app_failures
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// Raw TCP mode: an event of `kind` was applied; `open` connections to the app are held.
    pub fn tcp_event(&self, kind: &'static str, open: usize) {
        self.tcp_events
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
        self.tcp_connections.set(open as i64);
    }

    /// A snapshot hook (`snapshot` or `restore`) failed.
    pub fn hook_failed(&self, hook: &'static str) {
        self.hook_failures
            .get_or_create(&vec![("hook", hook.to_owned())])
            .inc();
    }

    /// What records the log's syncs: the metrics show it.
    pub fn log_sync_seconds(&self) -> Histogram {
        self.log_sync_seconds.clone()
    }

    pub fn diverged(&self) {
        self.divergences.inc();
    }

    /// The state of the node, at a scrape.
    pub fn state(&self, state: &State) {
        self.in_flight.set(state.in_flight as i64);
        self.fenced.set(i64::from(state.fenced));
        self.ready.set(i64::from(state.ready));
        self.is_leader.set(i64::from(state.is_leader));
        self.log_bytes.set(state.log_bytes as i64);
        self.disk_available.set(state.disk_available as i64);
        self.term.set(state.term as i64);
        self.leader.set(state.leader as i64);
        self.commit_index.set(state.commit_index as i64);
        self.applied_index.set(state.applied_index as i64);
        self.replication_lag.clear();
        for (follower, lag) in &state.lags {
            self.replication_lag
                .get_or_create(&vec![("follower", follower.to_string())])
                .set(*lag as i64);
        }
    }

    /// What was counted elsewhere, at a scrape: counted as it grew since the last one. The
    /// totals are `read` under the lock, so that two scrapes at once see them in order.
    pub fn totals(&self, read: impl FnOnce() -> Totals) {
        let mut seen = self.seen.lock().unwrap();
        let now = read();
        let before = std::mem::replace(&mut seen.totals, now);
        let grown = |now: u64, before: u64| now.saturating_sub(before);
        for (verdict, (now, before)) in ["steered", "dropped", "bypassed"]
            .into_iter()
            .zip(now.steering.into_iter().zip(before.steering))
        {
            self.steering
                .get_or_create(&vec![("verdict", verdict.to_owned())])
                .inc_by(grown(now, before));
        }
        self.handshake_failures
            .inc_by(grown(now.handshake_failures, before.handshake_failures));
        self.log_entries
            .inc_by(grown(now.log_entries, before.log_entries));
        self.log_entry_requests
            .inc_by(grown(now.log_entry_requests, before.log_entry_requests));
        self.log_syncs
            .inc_by(grown(now.log_syncs, before.log_syncs));
        self.in_doubt.inc_by(grown(now.in_doubt, before.in_doubt));
        self.unconfirmed
            .inc_by(grown(now.unconfirmed, before.unconfirmed));
        self.leader_changes
            .inc_by(grown(now.leader_changes, before.leader_changes));
        let calls = [
            ("append_entries", now.append_entries, before.append_entries),
            ("forward", now.forwards, before.forwards),
        ];
        for (kind, now, before) in calls {
            for (direction, i) in [("sent", 0), ("received", 1)] {
                self.peer_calls
                    .get_or_create(&vec![
                        ("kind", kind.to_owned()),
                        ("direction", direction.to_owned()),
                    ])
                    .inc_by(grown(now[i], before[i]));
            }
        }
    }

    /// The metrics, in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry.lock().unwrap());
        out
    }
}

/// A node's state as a scrape shows it.
#[derive(Debug, Default)]
pub struct State {
    pub in_flight: usize,
    /// The replica is fenced.
    pub fenced: bool,
    /// The node takes clients.
    pub ready: bool,
    pub is_leader: bool,
    /// Size of the log file.
    pub log_bytes: u64,
    /// Space left on the data directory's filesystem.
    pub disk_available: u64,
    pub term: u64,
    pub leader: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// On the leader: (follower, entries it lacks).
    pub lags: Vec<(u64, u64)>,
}
