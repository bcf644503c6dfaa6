//! The agent's image (issue 12): built from the unchanged `deploy/Dockerfile` with podman, and
//! run as `deploy/daemonset.yaml` runs it, one container per lab node. Three agent containers
//! replicate an app that de-duplicates nothing; a container killed (`podman kill`) leaves its
//! node's port closed while the app still answers on loopback, and a new container takes over
//! with the same data; a container stopped as the kubelet stops it in a rolling upgrade
//! (`podman stop`: SIGTERM, then the pod's grace) exits 0, also leaves the port closed, and its
//! successor takes over. Nothing acknowledged is lost, nothing is applied twice, and the replicas
//! end identical. Last, the uninstall: `hermes-agent detach`, run from the image, opens a
//! stopped agent's port again.
//!
//! Needs root, podman, runc and debootstrap (`cargo xtask test` installs them), and Debian's
//! package servers the first time (the base image) and for the Dockerfile's `apt-get`.
use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use hermes_tests::{
    App, Cluster, Load, Node, Sent, check_replicas, client,
    daemonset::{DaemonSet, Pods},
    lab,
    podman::{Image, workspace},
    wait_until,
};

const PORT: u16 = hermes_lab::cluster::PORT;

#[test]
fn agent_containers_replicate_fail_closed_when_killed_or_stopped_and_new_ones_take_over() {
    let started = Instant::now();
    let image = Image::build().expect("cannot build the image");
    eprintln!(
        "image {}: base image {}, built in {:.1} s",
        image.name,
        image
            .base_made_in
            .map_or("found in podman's store".into(), |d| {
                format!("made in {:.1} s", d.as_secs_f64())
            }),
        image.built_in.as_secs_f64()
    );
    let daemonset = DaemonSet::read(&workspace().join("deploy/daemonset.yaml"))
        .expect("cannot read deploy/daemonset.yaml");
    let pods = Pods::new(&image, daemonset).expect("pods");
    let bin = hermes_lab::binary("hermes-agent").expect("binaries");
    let mut cluster =
        Cluster::new(lab(3), bin.parent().unwrap(), App::Append, &[]).expect("cluster");
    cluster.set_launcher(pods.clone());
    cluster
        .start()
        .expect("the apps, three agent containers and a leader");

    for id in 1..=3 {
        // The node's id came from the ConfigMap's node list, by the node's name.
        let status = cluster.status(id).expect("status");
        assert_eq!(status["node_id"].as_u64(), Some(id as u64), "{status}");
        wait_ready(&cluster, &pods, id);
        assert_eq!(pods.probe(&cluster, id, "livenessProbe").unwrap(), 200);
        // The ConfigMap's HERMES_METRICS_ADDR: the metrics, from off the node, without a token.
        let metrics = SocketAddr::new(cluster.addr(id).ip(), 9181);
        let scraped = client::get(metrics, "/metrics").expect("the metrics endpoint");
        assert_eq!(scraped.status, 200, "{}", scraped.text());
        assert!(
            scraped.text().contains("hermes_ready 1"),
            "{}",
            scraped.text()
        );
    }

    // `kubectl exec POD -- hermes-agent ctl ...` (docs/kubernetes.md): a change to the cluster,
    // asked of the leader, finds the admin token in the container's environment. (The voters
    // it names are the voters already: nothing changes.)
    let leader = cluster.wait_for_leader().unwrap();
    let changed = pods
        .exec(leader, &["hermes-agent", "ctl", "voters", "1,2,3"])
        .expect("`hermes-agent ctl voters` in the leader's container");
    eprintln!("ctl voters in the container: {changed}");

    let mut sent = Sent::default();
    post_through_every_node(&cluster, "first", &mut sent);
    let load = Load::start(&cluster.addrs(), 6);
    load.wait_for_acks(30).unwrap();

    // A crash: the leader's container is killed.
    let killed = cluster.wait_for_leader().unwrap();
    cluster.kill_agent(killed).unwrap();
    assert_fails_closed(&cluster, killed);
    load.wait_for_acks(30)
        .expect("the two other nodes carry on");
    cluster.start_agent(killed).unwrap();
    wait_ready(&cluster, &pods, killed);
    post_through_every_node(&cluster, "after-kill", &mut sent);
    load.wait_for_acks(30).unwrap();

    // A rolling upgrade's step: another node's container is stopped as the kubelet stops it.
    let stopped = killed % 3 + 1;
    let stopping = Instant::now();
    let code = pods.stop(stopped).unwrap();
    let drained = stopping.elapsed();
    assert_eq!(code, 0, "a stopped agent exits 0 after its drain");
    assert_fails_closed(&cluster, stopped);
    let starting = Instant::now();
    cluster.start_agent(stopped).unwrap();
    let steering = starting.elapsed();
    wait_ready(&cluster, &pods, stopped);
    eprintln!(
        "rolling restart of node {stopped}: stopped in {:.1} s, a new container steered {:.1} s \
         after it was started, ready after {:.1} s",
        drained.as_secs_f64(),
        steering.as_secs_f64(),
        starting.elapsed().as_secs_f64()
    );
    post_through_every_node(&cluster, "after-stop", &mut sent);
    load.wait_for_acks(30).unwrap();

    let by_load = load.stop();
    sent.all.extend(by_load.all);
    sent.acked.extend(by_load.acked);
    cluster.wait_converged().unwrap();
    let files = cluster.files();
    assert!(
        files.iter().all(|file| file == &files[0]),
        "the replicas' files differ"
    );
    // No request delivered twice: an agent's death never re-sends a request its app had.
    let lines = check_replicas(&files, &[0, 0, 0], &sent).unwrap();

    // Uninstall, on one node: with its agent stopped the port stays closed, although the app
    // listens on all addresses (as the lab's apps do); `hermes-agent detach` from the image
    // removes the steering, and clients reach the app directly again.
    let node = cluster.lab.node(1).clone();
    assert_eq!(pods.stop(1).unwrap(), 0);
    let addr = cluster.addr(1);
    assert!(
        client::get(addr, "/count").is_err(),
        "a stopped agent's port let a request through"
    );
    pods.detach(&cluster, 1).expect("hermes-agent detach");
    assert!(
        !pins(&node).exists(),
        "detach left {}",
        pins(&node).display()
    );
    let direct = client::get(addr, "/count").expect("the app after detach");
    assert_eq!(direct.status, 200, "{}", direct.text());
    eprintln!(
        "{lines} requests replicated through the containers ({} failed while nodes were down: \
         {:?}); {:.1} s in all",
        sent.all.len() - sent.acked.len(),
        by_load.failures,
        started.elapsed().as_secs_f64()
    );
}

/// Where the agent pins a node's steering of the port, in the host's bpffs.
fn pins(node: &Node) -> PathBuf {
    let netns = std::fs::metadata(node.netns_path()).unwrap().ino();
    Path::new("/sys/fs/bpf/hermes").join(format!("netns-{netns}-port-{PORT}"))
}

/// Waits until node `id` passes the DaemonSet's readiness probe.
fn wait_ready(cluster: &Cluster, pods: &Pods, id: usize) {
    wait_until(&format!("node {id}'s readiness probe"), || {
        (pods.probe(cluster, id, "readinessProbe").ok()? == 200).then_some(())
    })
    .unwrap();
}

/// One request through each node's port, each acknowledged.
fn post_through_every_node(cluster: &Cluster, tag: &str, sent: &mut Sent) {
    for id in 1..=3 {
        let body = format!("{tag}-through-node{id}").into_bytes();
        sent.all.push(body.clone());
        let response = client::post(cluster.addr(id), "/insert", &body).unwrap();
        assert_eq!(response.status, 201, "node {id}: {}", response.text());
        sent.acked.push(body);
    }
}

/// Node `id` has no agent: its steering is still pinned (in the host's bpffs), so a client's
/// connection to its port is refused or dropped, while its app still answers on loopback. The
/// requests tried here are in no sent list: found in a replica, they fail the check.
fn assert_fails_closed(cluster: &Cluster, id: usize) {
    let node = cluster.lab.node(id);
    assert!(pins(node).is_dir(), "{} is gone", pins(node).display());
    for attempt in 0..5 {
        let body = format!("bypass-node{id}-{attempt}");
        match client::post(cluster.addr(id), "/insert", body.as_bytes()) {
            Ok(response) => panic!(
                "node {id} without agent answered {}: {}",
                response.status,
                response.text()
            ),
            Err(error) => eprintln!("node {id} without agent: {error}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let app = SocketAddr::from(([127, 0, 0, 1], PORT));
    let count = node.run_inside(move || client::get(app, "/count")).unwrap();
    assert_eq!(count.status, 200, "the app on node {id}: {}", count.text());
}
