//! What the admin API shows of a replica, in process, against a one-node cluster.
use super::{replica_status, state};
use crate::{
    deliver::progress::{ProgressFile, file_in},
    node::testing::single_node,
    telemetry::Totals,
    testing::{Act, FakeApp, OK},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_written_before_a_restart_and_never_answered_shows_as_unconfirmed() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    // What an agent that stopped after writing request 1 to the app, before reading its
    // answer, left behind.
    let (mut file, mut progress) = ProgressFile::open(file_in(dir.path())).unwrap();
    progress.writing = 1;
    progress.written = 1;
    progress.deliveries = 1;
    file.write(&progress).unwrap();
    drop(file);

    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let status = replica_status(&node);
    assert_eq!(status["unconfirmed"], 1, "{status}");
    assert_eq!(status["in_doubt"], 0, "{status}");
    node.telemetry.state(&state(&node));
    node.telemetry.totals(|| {
        let mut totals = Totals::default();
        node.count(&mut totals);
        totals
    });
    let metrics = node.telemetry.encode();
    assert!(
        metrics.contains("\nhermes_unconfirmed_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nhermes_in_doubt_total 0\n"), "{metrics}");
}

/// The value of the series `name` (its whole name, labels included) in `metrics`.
fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_say_who_leads_how_often_it_changed_and_what_the_log_costs() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let scrape = || {
        node.telemetry.state(&state(&node));
        node.telemetry.totals(|| {
            let mut totals = Totals::default();
            node.count(&mut totals);
            totals
        });
        node.telemetry.encode()
    };
    // The leader in office at the start is not a change (tests/failures.rs counts a handover).
    assert_eq!(value(&scrape(), "hermes_leader_changes_total"), Some(0.0));
    let metrics = scrape();
    let version = format!(
        "hermes_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&metrics, &version), Some(1.0), "{metrics}");
    assert_eq!(value(&metrics, "hermes_is_leader"), Some(1.0), "{metrics}");
    // Forming the cluster wrote the log: its syncs were timed, and its file has a size.
    assert!(
        value(&metrics, "hermes_log_sync_seconds_count") >= Some(1.0),
        "{metrics}"
    );
    let bytes = value(&metrics, "hermes_log_bytes").unwrap_or(0.0);
    let on_disk = std::fs::metadata(dir.path().join(crate::order::log_store::FILE))
        .unwrap()
        .len();
    assert_eq!(bytes, on_disk as f64, "{metrics}");
    assert!(
        value(&metrics, "hermes_disk_available_bytes") > Some(0.0),
        "{metrics}"
    );
    assert_eq!(replica_status(&node)["version"], env!("CARGO_PKG_VERSION"));
}
