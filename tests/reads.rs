//! Reads off the log (`--reads`): linearizable reads see every write acknowledged before them,
//! on any node; local reads are answered even by a replica cut off from the others.

use hermes_tests::{App, client, cluster, wait_until};

#[test]
fn linearizable_reads_see_every_acknowledged_write_and_stay_off_the_log() {
    let cluster = cluster(3, App::Log, &["--reads", "linearizable"]);
    for n in 1..=60 {
        let (writer, reader) = (1 + n % 3, 1 + (n + 1) % 3);
        let body = format!("write-{n}");
        let created = client::post(cluster.addr(writer), "/insert", body.as_bytes()).unwrap();
        assert_eq!(created.status, 201, "{}", created.text());
        // At once, on another node: the write is there.
        let location = created.header("Location").unwrap();
        let read = client::get(cluster.addr(reader), location).unwrap();
        assert_eq!((read.status, read.text()), (200, body));
    }
    cluster.wait_converged().unwrap();
    for id in 1..=3 {
        let status = cluster.status(id).unwrap();
        assert_eq!(
            status["requests"], 60,
            "only the writes were ordered: {status}"
        );
    }
}

#[test]
fn local_reads_are_answered_by_a_replica_cut_off_from_the_others() {
    let cluster = cluster(3, App::Log, &["--reads", "local"]);
    let created = client::post(cluster.addr(1), "/insert", b"before the cut").unwrap();
    assert_eq!(created.status, 201);
    cluster.wait_converged().unwrap();
    let leader = cluster.wait_for_leader().unwrap();
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    cluster
        .lab
        .set_connected(cluster.lab.node(cut), false)
        .unwrap();
    let node = cluster.lab.node(cut);
    let addr = cluster.addr(cut);
    let read = node
        .run_inside(move || client::get(addr, "/line/1"))
        .unwrap();
    assert_eq!((read.status, read.text().as_str()), (200, "before the cut"));
    // A write there cannot be ordered.
    wait_until("the cut-off replica to lose its leader", || {
        cluster.status(cut)?["leader_id"].is_null().then_some(())
    })
    .unwrap();
    let write = node
        .run_inside(move || client::post(addr, "/insert", b"cut off"))
        .unwrap();
    assert_eq!(write.status, 503, "{}", write.text());
    cluster
        .lab
        .set_connected(cluster.lab.node(cut), true)
        .unwrap();
}

fn put(addr: std::net::SocketAddr, value: &str) -> client::Response {
    let raw = format!(
        "PUT /register HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{value}",
        value.len()
    );
    client::exchange(addr, raw.as_bytes()).unwrap()
}

/// Python's `http.server` serves one connection at a time: an agent that kept a second one
/// open (for reads, or while a snapshot hook talks to the app) would deadlock it.
#[test]
fn an_app_that_serves_one_connection_at_a_time_gets_writes_reads_and_snapshots() {
    for mode in ["linearizable", "local"] {
        let snapshots = hermes_tests::snapshot_args("10", "2");
        let args = [
            &["--reads", mode][..],
            &snapshots,
            &["--request-timeout", "30s"],
        ]
        .concat();
        let cluster = cluster(3, App::Register, &args);
        for n in 1..=40 {
            let writer = 1 + n % 3;
            let value = format!("{mode}-{n}");
            let written = put(cluster.addr(writer), &value);
            assert_eq!(written.status, 204, "{mode} write {n}: {}", written.text());
            // A local read sees the write on the node that answered it; a linearizable one
            // sees it everywhere.
            let readers: Vec<usize> = if mode == "local" {
                vec![writer]
            } else {
                vec![1, 2, 3]
            };
            for reader in readers {
                let read = client::get(cluster.addr(reader), "/register").unwrap();
                assert_eq!(
                    (read.status, read.text()),
                    (200, value.clone()),
                    "{mode} read {n} on node {reader}"
                );
            }
        }
        cluster.wait_converged().unwrap();
        for id in 1..=3 {
            let status = cluster.status(id).unwrap();
            assert!(
                status["snapshot_index"].as_u64() > Some(0),
                "node {id} took a snapshot through its one connection: {status}"
            );
            assert_eq!(
                status["requests"], 40,
                "only the writes were ordered: {status}"
            );
            assert_eq!(cluster.file(id), format!("{mode}-40").as_bytes());
        }
    }
}
