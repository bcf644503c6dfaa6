//! What the admin API shows of a replica, in process, against a one-node cluster.
use super::{replica_status, state};
use crate::{
    deliver::progress::{ProgressFile, file_in},
    node::testing::single_node,
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
    let metrics = node.telemetry.encode();
    assert!(metrics.contains("\nhermes_unconfirmed 1\n"), "{metrics}");
    assert!(metrics.contains("\nhermes_in_doubt 0\n"), "{metrics}");
}
