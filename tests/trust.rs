//! Trust: peers authenticated by certificates that rotate under traffic.
use hermes_lab::certs::Authority;
use hermes_tests::{App, Cluster, Load, check_exposition, check_replicas, cluster, wait_until};

/// Waits until every node has reloaded its peer certificates `generation` times.
fn reloaded(cluster: &Cluster, generation: u64) {
    wait_until(
        &format!("every node to reload its certificates ({generation})"),
        || {
            (1..=cluster.nodes())
                .all(|id| {
                    cluster
                        .status(id)
                        .and_then(|s| s["peer_tls"]["generation"].as_u64())
                        >= Some(generation)
                })
                .then_some(())
        },
    )
    .unwrap();
}

#[test]
fn certificates_and_the_ca_rotate_while_traffic_flows() {
    let cluster = cluster(3, App::Append, &[]);
    let load = Load::start(&cluster.addrs(), 6);
    load.wait_for_acks(50).unwrap();
    let ids: Vec<u64> = (1..=3).collect();
    let new = Authority::new("the next CA").unwrap();
    let staged = tempfile::tempdir().unwrap();
    let renewed = new.write(staged.path(), &ids).unwrap();
    let old_ca = std::fs::read(&cluster.certs(1).ca).unwrap();
    let both = [old_ca, std::fs::read(&renewed[0].ca).unwrap()].concat();

    // 1: every node trusts both CAs.
    std::fs::write(&cluster.certs(1).ca, &both).unwrap();
    reloaded(&cluster, 1);
    load.wait_for_acks(50).unwrap();
    // 2: every node shows a certificate of the new CA.
    for id in 1..=3 {
        let files = cluster.certs(id);
        std::fs::copy(&renewed[id - 1].cert, &files.cert).unwrap();
        std::fs::copy(&renewed[id - 1].key, &files.key).unwrap();
    }
    reloaded(&cluster, 2);
    load.wait_for_acks(50).unwrap();
    // 3: only the new CA is trusted.
    std::fs::copy(&renewed[0].ca, &cluster.certs(1).ca).unwrap();
    reloaded(&cluster, 3);
    load.wait_for_acks(50).unwrap();

    let sent = load.stop();
    cluster.wait_converged().unwrap();
    let files = cluster.files();
    let lines = check_replicas(&files, &cluster.in_doubt(), &sent).unwrap();
    assert!(lines >= 150);
}

/// A request to node `id`'s admin API from inside the node (loopback).
fn admin(cluster: &Cluster, id: usize, raw: String) -> hermes_tests::client::Response {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], hermes_lab::cluster::ADMIN_PORT));
    cluster
        .lab
        .node(id)
        .run_inside(move || hermes_tests::client::exchange(addr, raw.as_bytes()))
        .unwrap()
}

#[test]
fn cluster_changes_need_the_token_and_json_reads_stay_open_on_loopback() {
    let mut cluster = hermes_tests::three_of(4, App::Append, &[]);
    let body = r#"{"id": 4, "addr": "198.18.0.4:7000"}"#;
    let change = |extra: &str| {
        format!(
            "POST /cluster/learners HTTP/1.1\r\nHost: h\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let json = "Content-Type: application/json\r\n";
    // No token, a wrong token, the token with a form's content type: refused.
    assert_eq!(admin(&cluster, 1, change(json)).status, 401);
    let wrong = format!("Authorization: Bearer guessed\r\n{json}");
    assert_eq!(admin(&cluster, 1, change(&wrong)).status, 401);
    let form = "Authorization: Bearer lab-admin-token\r\nContent-Type: text/plain\r\n";
    assert_eq!(admin(&cluster, 1, change(form)).status, 415);
    // Reads need nothing on loopback.
    let status = admin(
        &cluster,
        1,
        "GET /status HTTP/1.1\r\nHost: h\r\n\r\n".into(),
    );
    assert_eq!(status.status, 200);
    // Nothing changed; `ctl`, which reads the token file, changes the cluster.
    cluster.start_app(4).unwrap();
    cluster.start_agent(4).unwrap();
    let members = |cluster: &Cluster| {
        cluster.status(1).unwrap()["members"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(members(&cluster), 3);
    let leader = wait_until("a leader", || cluster.leader_among(&[1, 2, 3])).unwrap();
    let added = cluster
        .ctl(leader, &["add-learner", "4", &cluster.raft_addr(4)])
        .unwrap();
    assert!(added.contains("added as a learner"), "{added}");
    assert_eq!(members(&cluster), 4);

    // `ctl` tells a script what went wrong by its exit status.
    let exit = |args: &[&str]| {
        let output = cluster.ctl_as_is(leader, args).unwrap();
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), text)
    };
    let token = cluster.token_file();
    let token = token.to_str().unwrap();
    let (code, text) = exit(&["voters", "1,2,3"]);
    assert_eq!(code, Some(77), "no token: {text}");
    let (code, text) = exit(&["--admin-token-file", token, "voters", "1,9"]);
    assert_eq!(code, Some(75), "node 9 is no member: {text}");
    let (code, text) = exit(&["--admin", "127.0.0.1:1", "status"]);
    assert_eq!(code, Some(69), "nothing listens: {text}");
    let backup = cluster.data_dir(leader).with_extension("backup");
    let backup = backup.to_str().unwrap();
    let (code, text) = exit(&["--admin-token-file", token, "backup", backup]);
    assert_eq!(code, Some(75), "no snapshot hooks: {text}");
    assert!(text.contains("snapshot hooks"), "says why: {text}");
    assert!(!std::path::Path::new(backup).exists());
    let output = cluster
        .ctl_as_is(leader, &["-o", "json", "status"])
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["node_id"], leader, "{status}");
    assert_eq!(members(&cluster), 4, "nothing refused changed the cluster");
}

/// The app reaches its admin pages only from loopback; through Hermes a client is not local.
#[test]
fn a_remote_client_never_reaches_the_app_as_a_local_one() {
    let cluster = cluster(3, App::Append, &[]);
    for id in 1..=3 {
        let remote = hermes_tests::client::get(cluster.addr(id), "/admin").unwrap();
        assert_eq!(remote.status, 403, "node {id}: {}", remote.text());
    }
    // A local client, straight to the app on loopback (not steered): let in.
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], hermes_lab::cluster::PORT));
    let node = cluster.lab.node(1);
    let direct = node
        .run_inside(move || hermes_tests::client::get(local, "/admin"))
        .unwrap();
    assert_eq!(direct.status, 200, "{}", direct.text());
}

/// An app that puts a random number of its own in every answer: its replicas differ from the
/// first request on, and every replica finds it.
#[test]
fn replicas_whose_answers_differ_are_flagged_and_fenced() {
    let cluster = cluster(3, App::Random, &["--on-divergence", "fence"]);
    for n in 0..3 {
        let answer = hermes_tests::client::post(cluster.addr(1 + n % 3), "/x", b"line").unwrap();
        assert_eq!(answer.status, 201, "{}", answer.text());
    }
    for id in 1..=3 {
        let status = wait_until(&format!("node {id} to find the divergence"), || {
            let status = cluster.status(id)?;
            (!status["divergence"].is_null() && status["fenced"] == true).then_some(status)
        })
        .unwrap();
        assert_eq!(
            status["divergence"]["seq"], 1,
            "the first request: {status}"
        );
        assert_eq!(status["divergence"]["minority"], true, "{status}");
        assert_eq!(
            status["divergence"]["digests"].as_object().unwrap().len(),
            3,
            "{status}"
        );
        let ready = cluster.admin(id, "/readyz").unwrap();
        assert_eq!(ready.status, 503, "{}", ready.text());
        assert!(ready.text().contains("fenced"), "{}", ready.text());
        let metrics = cluster.admin(id, "/metrics").unwrap().text();
        assert!(
            metric(&metrics, "hermes_divergences_total") >= 1.0,
            "{metrics}"
        );
    }
    let applied = cluster.status(1).unwrap()["applied_index"]
        .as_u64()
        .unwrap();
    cluster.ctl(1, &["resume"]).unwrap();
    assert_eq!(cluster.status(1).unwrap()["fenced"], false);
    assert!(
        cluster.status(1).unwrap()["applied_index"]
            .as_u64()
            .unwrap()
            >= applied
    );
}

/// The value of the sample named `name` (without labels) in OpenMetrics text; 0 if absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once("} ")?;
            labels
                .iter()
                .all(|label| set.split(',').any(|l| l == *label))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[test]
fn metrics_parse_and_move_with_traffic_and_a_deterministic_app_raises_no_alarm() {
    let cluster = cluster(3, App::Append, &["--metrics-addr", "0.0.0.0:9181"]);
    // `--metrics-addr`: the metrics alone, to anyone, here from off the node (the admin API
    // answers on the node's loopback only).
    let off_node = std::net::SocketAddr::new(cluster.addr(1).ip(), 9181);
    let scraped = hermes_tests::client::get(off_node, "/metrics").unwrap();
    assert_eq!(scraped.status, 200, "{}", scraped.text());
    check_exposition(&scraped.text());
    assert!(
        metric(&scraped.text(), "hermes_ready") == 1.0,
        "{}",
        scraped.text()
    );
    assert_eq!(
        hermes_tests::client::get(off_node, "/status")
            .unwrap()
            .status,
        404
    );
    let post = hermes_tests::client::post(off_node, "/metrics", b"").unwrap();
    assert_eq!(post.status, 405);
    let before = cluster.admin(1, "/metrics").unwrap();
    assert_eq!(before.status, 200);
    assert!(
        before
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        before.headers
    );
    let before = before.text();
    check_exposition(&before);
    for n in 0..20 {
        let answer =
            hermes_tests::client::post(cluster.addr(1), "/x", format!("line {n}").as_bytes())
                .unwrap();
        assert_eq!(answer.status, 201);
    }
    let refused = hermes_tests::client::exchange(cluster.addr(1), b"NOT HTTP\r\n\r\n").unwrap();
    assert_eq!(refused.status, 400);
    cluster.wait_converged().unwrap();
    let after = cluster.admin(1, "/metrics").unwrap().text();
    check_exposition(&after);
    let answered = r#"outcome="answered""#;
    let ok = r#"class="2xx""#;
    assert_eq!(
        sum(&after, "hermes_requests_total", &[answered, ok])
            - sum(&before, "hermes_requests_total", &[answered, ok]),
        20.0,
        "{after}"
    );
    assert_eq!(
        sum(
            &after,
            "hermes_requests_total",
            &[r#"outcome="refused""#, r#"class="4xx""#]
        ),
        1.0
    );
    assert!(
        sum(&after, "hermes_steering_total", &[r#"verdict="steered""#])
            >= sum(&before, "hermes_steering_total", &[r#"verdict="steered""#]) + 21.0
    );
    assert!(
        metric(&after, "hermes_commit_seconds_count") >= 20.0,
        "{after}"
    );
    assert!(
        metric(&after, "hermes_raft_applied_index") >= 20.0,
        "{after}"
    );
    assert!(metric(&after, "hermes_raft_term") >= 1.0);
    // Same app, same answers: compared, and no alarm.
    let requests = cluster.status(1).unwrap()["requests"].as_u64().unwrap();
    for id in 1..=3 {
        wait_until(&format!("node {id} to compare its digests"), || {
            (cluster.status(id)?["compared_up_to"].as_u64()? >= requests).then_some(())
        })
        .unwrap();
    }
    for id in 1..=3 {
        let status = cluster.status(id).unwrap();
        assert!(status["divergence"].is_null(), "node {id}: {status}");
        let metrics = cluster.admin(id, "/metrics").unwrap().text();
        assert_eq!(metric(&metrics, "hermes_divergences_total"), 0.0);
    }
}
