//! Snapshots of the app's state (issue 5): with hooks, the log is compacted, and a new replica
//! starts from a snapshot plus the log after it.
use hermes_tests::{App, Cluster, Load, client, wait_until};

#[test]
fn with_hooks_the_log_is_compacted_and_a_new_replica_installs_a_snapshot() {
    let args = hermes_tests::snapshot_args("40", "5");
    let mut cluster = hermes_tests::three_of(4, App::Log, &args);
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

/// A backup taken under load, and everything lost: a new cluster started from it holds exactly
/// the source's state at the backup's entry (the log app does not de-duplicate: its first
/// `deliveries` lines), takes writes, and a node that joins it gets the same state.
#[test]
fn a_backup_taken_under_load_starts_a_new_cluster_with_the_state_at_its_entry() {
    let args = hermes_tests::snapshot_args("2000", "100");
    let mut cluster = hermes_tests::three_of(5, App::Log, &args);
    let load = Load::start(&cluster.addrs()[..3], 4);
    load.wait_for_acks(300).unwrap();
    let file = cluster.data_dir(1).with_extension("backup");
    let path = file.to_str().unwrap();
    let applied = cluster.status(2).unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    let taken = cluster.ctl(2, &["-o", "json", "backup", path]).unwrap();
    let taken: serde_json::Value = serde_json::from_str(&taken).unwrap();
    assert!(
        taken["entry"].as_u64().unwrap() >= applied,
        "as of when it was asked for, at least: {taken}"
    );
    let deliveries = taken["deliveries"].as_u64().unwrap() as usize;
    load.wait_for_acks(200).unwrap();
    load.stop();
    cluster.wait_converged().unwrap();
    let source = cluster.file(1);
    let lines: Vec<&[u8]> = source.split_inclusive(|b| *b == b'\n').collect();
    assert!(
        deliveries > 0 && lines.len() > deliveries,
        "taken under load, with writes after it: {taken}, {} lines",
        lines.len()
    );
    let at_backup = lines[..deliveries].concat();

    // Everything is lost.
    for id in 1..=3 {
        cluster.kill_agent(id).unwrap();
        cluster.kill_app(id).unwrap();
    }
    let restore = |args: &[&str]| hermes_tests::agent_tool(&[&["restore", path], args].concat());
    let data = cluster.data_dir(4);
    let (addr, data) = (cluster.raft_addr(4), data.to_str().unwrap().to_owned());
    let new_node = ["--data-dir", &data, "--node-id", "4", "--addr", &addr];
    let (done, text) = restore(&[&new_node[..], &["--dry-run"]].concat());
    assert!(
        done && text.contains(&format!("{deliveries} delivered")),
        "{text}"
    );
    let (done, text) = restore(&new_node);
    assert!(done, "{text}");
    eprintln!("{text}");
    let (done, text) = restore(&new_node);
    assert!(!done && text.contains("not empty"), "a second time: {text}");
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let copy = file.with_extension("damaged");
    std::fs::write(&copy, damaged).unwrap();
    let damaged = ["restore", copy.to_str().unwrap(), "--dry-run"];
    let (done, text) = hermes_tests::agent_tool(&[&damaged[..], &new_node].concat());
    assert!(!done && text.contains("damaged"), "{text}");

    // Node 4, its app empty, starts from the backup alone, and takes writes.
    cluster.start_app(4).unwrap();
    cluster.start_agent(4).unwrap();
    wait_until("node 4 to lead", || cluster.leader_among(&[4])).unwrap();
    assert!(
        cluster.file(4) == at_backup,
        "node 4's app holds the state at the backup"
    );
    let mut expected = at_backup;
    for n in 0..20 {
        let body = format!("after-{n}");
        let response = client::post(cluster.addr(4), "/insert", body.as_bytes()).unwrap();
        assert_eq!(response.status, 201, "{}", response.text());
        expected.extend(body.bytes().chain([b'\n']));
    }
    assert!(cluster.file(4) == expected);
    // The total order goes on where the backup left it.
    let requests = cluster.status(4).unwrap()["requests"].as_u64().unwrap();
    assert_eq!(requests, taken["requests"].as_u64().unwrap() + 20);

    // Node 5, empty, joins it and gets the same state.
    cluster.start_app(5).unwrap();
    cluster.start_agent(5).unwrap();
    let added = cluster
        .ctl(4, &["add-learner", "5", &cluster.raft_addr(5)])
        .unwrap();
    assert!(added.contains("caught up"), "{added}");
    cluster.ctl(4, &["promote", "5"]).unwrap();
    wait_until("node 5's app to hold the same state", || {
        (cluster.file(5) == expected).then_some(())
    })
    .unwrap();
}

/// One replica's app state is changed behind Hermes' back (a line inserted by a client that
/// reaches the app directly, on loopback inside its node): its answers no longer match, it is
/// fenced, and it heals itself from the others' snapshot through the restore hook, then applies
/// on. Every replica ends identical and ready, and the line nobody sent through Hermes is gone.
/// The log app does not de-duplicate.
#[test]
fn a_replica_whose_app_was_changed_behind_hermes_heals_from_the_others() {
    let hooks = hermes_tests::snapshot_args("200", "20");
    let args = [&hooks[..], &["--on-divergence", "fence"]].concat();
    let cluster = hermes_tests::cluster(3, App::Log, &args);
    let load = Load::start(&cluster.addrs(), 4);
    load.wait_for_acks(100).unwrap();

    let node = cluster.lab.node(3);
    let app = std::net::SocketAddr::from(([127, 0, 0, 1], hermes_lab::cluster::PORT));
    let sneaked = node
        .run_inside(move || client::post(app, "/insert", b"behind-hermes-back"))
        .unwrap();
    assert_eq!(sneaked.status, 201, "{}", sneaked.text());
    wait_until("node 3 fenced", || {
        let ready = cluster.admin(3, "/readyz")?;
        (ready.status == 503 && ready.text().contains("fenced")).then_some(())
    })
    .unwrap();
    wait_until("node 3 healed and ready", || {
        (cluster.admin(3, "/readyz")?.status == 200).then_some(())
    })
    .unwrap();
    // What was found no longer holds.
    wait_until("node 3 to report no divergence", || {
        cluster.status(3)?["divergence"].is_null().then_some(())
    })
    .unwrap();

    load.wait_for_acks(200).unwrap();
    let sent = load.stop();
    cluster.wait_converged().unwrap();
    let files = cluster.files();
    let lines = hermes_tests::check_replicas(&files, &cluster.in_doubt(), &sent).unwrap();
    assert!(lines >= 300, "{lines} lines");
}
