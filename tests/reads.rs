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
