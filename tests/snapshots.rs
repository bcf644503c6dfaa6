//! Snapshots of the app's state (issue 5): with hooks, the log is compacted, and a new replica
//! starts from a snapshot plus the log after it.
use hermes_tests::{App, Cluster, client, lab, wait_until};

#[test]
fn with_hooks_the_log_is_compacted_and_a_new_replica_installs_a_snapshot() {
    let lab = lab(4);
    let bin = hermes_lab::binary("hermes-agent").unwrap();
    let args = hermes_tests::snapshot_args("40", "5");
    let mut cluster = Cluster::new(lab, bin.parent().unwrap(), App::Log, &args).unwrap();
    cluster.members = 3;
    cluster.start().unwrap();
    let post = |cluster: &Cluster, nodes: &[usize], tag: &str, count: usize| {
        for n in 0..count {
            let node = nodes[n % nodes.len()];
            let response = client::post(
                cluster.addr(node),
                "/insert",
                format!("{tag}-{n}").as_bytes(),
            )
            .unwrap();
            assert_eq!(response.status, 201, "{}", response.text());
        }
    };
    post(&cluster, &[1, 2, 3], "early", 200);
    let leader = wait_until("a leader", || cluster.leader_among(&[1, 2, 3])).unwrap();
    let compacted = wait_until("a snapshot and a compacted log", || {
        let status = cluster.status(leader)?;
        (status["snapshot_index"].as_u64()? > 0 && status["purged_index"].as_u64()? > 0)
            .then_some(status)
    })
    .unwrap();
    assert!(compacted["purged_index"].as_u64() > Some(1), "{compacted}");

    // Node 4, empty, joins: the entries it lacks are gone from the log, so it gets a snapshot.
    cluster.start_app(4).unwrap();
    cluster.start_agent(4).unwrap();
    let addr = cluster.raft_addr(4);
    let added = cluster.ctl(leader, &["add-learner", "4", &addr]).unwrap();
    assert!(added.contains("caught up"), "{added}");
    cluster.wait_converged().unwrap();
    assert_eq!(cluster.file(4), cluster.file(1));
    let restored = cluster.agent(4).unwrap().output();
    assert!(
        restored
            .iter()
            .any(|line| line.contains("restoring the app from a snapshot")),
        "node 4 did not start from a snapshot"
    );

    // And it goes on from there, also after a restart.
    cluster.ctl(leader, &["promote", "4"]).unwrap();
    post(&cluster, &[1, 2, 3, 4], "later", 60);
    cluster.kill_agent(4).unwrap();
    post(&cluster, &[1, 2, 3], "while-4-is-down", 20);
    cluster.start_agent(4).unwrap();
    cluster.wait_converged().unwrap();
    for id in 2..=4 {
        assert_eq!(cluster.file(id), cluster.file(1), "node {id}");
    }
    assert_eq!(cluster.file(1).iter().filter(|&&b| b == b'\n').count(), 280);
}
