//! A leader's own log and the quorum, in process, against a one-node cluster: openraft goes on
//! while the leader's entries are written, and counts the leader in their quorum only once they
//! are on its disk.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;

use super::testing::single_node;
use crate::{
    http::ordered::Ordered,
    testing::{Act, FakeApp, OK},
};

fn post() -> Bytes {
    Ordered {
        conn: 1,
        request: "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi".into(),
    }
    .to_payload()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_counts_itself_in_a_quorum_only_once_its_log_has_the_entry_on_disk() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let last = node.log.last().map(|id| id.index);

    let held = node.log.hold_writes();
    let submitting = tokio::spawn({
        let node = Arc::clone(&node);
        async move { node.submit(post()).await }
    });
    // openraft appended the entry and went on without waiting for the disk (the metrics are
    // published once the commands that followed the append have run, a commit among them)...
    // (The bound only turns an openraft that waits for the disk into a failure, not a hang.)
    let mut metrics = node.raft.metrics();
    let appended = tokio::time::timeout(
        Duration::from_secs(60),
        metrics.wait_for(|m| m.last_log_index > last),
    )
    .await
    .expect("openraft waited for the leader's own write before it went on")
    .unwrap()
    .last_log_index;
    // ...but the leader, the only voter, does not count itself yet: it is not committed.
    assert!(node.log.committed().map(|id| id.index) < appended);
    assert!(app.seen().is_empty());

    drop(held);
    let answer = submitting.await.unwrap().unwrap();
    assert_eq!(answer.status, 200);
    assert!(node.log.committed().map(|id| id.index) >= appended);
    assert_eq!(app.seen().len(), 1);
}
