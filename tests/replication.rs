//! Replicated HTTP (issue 3): requests to any node are ordered through Raft and every replica's
//! unchanged app receives them in the same order; failures lose no acknowledged request.
use std::collections::HashSet;

use hermes_tests::{App, Load, check_replicas, client, cluster, wait_until};

#[test]
fn concurrent_posts_to_all_nodes_reach_every_replica_once_in_one_order() {
    let cluster = cluster(3, App::Log, &[]);
    let addrs = cluster.addrs();
    let clients: Vec<_> = (0..30)
        .map(|c| {
            let addr = addrs[c % 3];
            std::thread::spawn(move || {
                (0..10)
                    .map(|r| {
                        let body = format!("client{c}-request{r}");
                        let response =
                            client::post(addr, "/insert", body.as_bytes()).expect("POST");
                        (body, response)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(answers.len(), 300);
    cluster.wait_converged().unwrap();

    let file = cluster.file(1);
    for id in [2, 3] {
        assert!(
            cluster.file(id) == file,
            "node {id}'s file differs from node 1's"
        );
    }
    let lines: Vec<&str> = std::str::from_utf8(&file).unwrap().lines().collect();
    assert_eq!(lines.len(), 300);
    assert_eq!(
        lines.iter().collect::<HashSet<_>>().len(),
        300,
        "a body appears twice"
    );
    for (body, response) in &answers {
        assert_eq!(response.status, 201, "{body}: {}", response.text());
        // The answer is the client's own node's app's: the line its body became there.
        let line: usize = response.text().trim().parse().unwrap();
        assert_eq!(lines[line - 1], body);
        assert_eq!(
            response.header("Location"),
            Some(format!("/line/{line}").as_str())
        );
    }
}

#[test]
fn followers_accept_requests_and_app_statuses_and_headers_reach_clients() {
    let cluster = cluster(3, App::Log, &[]);
    let leader = cluster.wait_for_leader().unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    let created = client::post(cluster.addr(follower), "/insert", b"through a follower").unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(created.header("Location"), Some("/line/1"));
    assert_eq!(created.header("Content-Type"), Some("text/plain"));
    assert_eq!(created.text(), "1\n");

    for id in 1..=3 {
        let line = client::get(cluster.addr(id), "/line/1").unwrap();
        assert_eq!(
            (line.status, line.text().as_str()),
            (200, "through a follower")
        );
        let missing = client::get(cluster.addr(id), "/line/2").unwrap();
        assert_eq!(missing.status, 404);
    }
    let wrong = client::get(cluster.addr(follower), "/insert").unwrap();
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("Allow"), Some("POST"));
    cluster.wait_converged().unwrap();
    assert_eq!(cluster.file(leader), b"through a follower\n");
}

#[test]
fn refused_requests_get_their_status_and_are_never_ordered() {
    let cluster = cluster(
        3,
        App::Log,
        &["--max-body", "1KiB", "--client-timeout", "1s"],
    );
    let node = cluster.addr(2);
    let huge_header = format!(
        "GET /line/1 HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "x".repeat(40 * 1024)
    );
    let many_headers = format!("GET /line/1 HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(150));
    let chunk = format!("100\r\n{}\r\n", "y".repeat(256));
    let chunked_too_big = format!(
        "POST /insert HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(5)
    );
    let cases: Vec<(u16, Vec<u8>)> = vec![
        (400, b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        (
            400,
            b"POST /insert HTTP/1.1\r\nContent-Length: ten\r\n\r\n".to_vec(),
        ),
        (
            400,
            b"POST /insert HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        ),
        (431, huge_header.into_bytes()),
        (431, many_headers.into_bytes()),
        (
            413,
            format!(
                "POST /insert HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n{}",
                "z".repeat(2000)
            )
            .into_bytes(),
        ),
        (413, chunked_too_big.into_bytes()),
        (
            501,
            b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        ),
        (501, b"CONNECT example.org:443 HTTP/1.1\r\n\r\n".to_vec()),
        (
            400,
            b"POST /insert HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
        ),
        (
            501,
            b"POST /insert HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                .to_vec(),
        ),
        (
            400,
            b"POST /insert HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".to_vec(),
        ),
        // Too slow: the body never completes.
        (
            408,
            b"POST /insert HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
        ),
    ];
    for (status, raw) in &cases {
        let mut stream = client::connect(node).unwrap();
        std::io::Write::write_all(&mut stream, raw).unwrap();
        let response = client::read_response(&mut stream, &mut Vec::new(), "").unwrap();
        assert_eq!(
            response.status,
            *status,
            "for {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
        assert_eq!(response.header("Connection"), Some("close"));
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut rest).unwrap();
        assert!(rest.is_empty(), "the connection stays open after a refusal");
    }
    // Nothing of it was ordered: the first request that is becomes line 1, on every node.
    let first = client::post(node, "/insert", b"first").unwrap();
    assert_eq!((first.status, first.text().as_str()), (201, "1\n"));
    cluster.wait_converged().unwrap();
    for id in 1..=3 {
        assert_eq!(cluster.file(id), b"first\n", "node {id}");
    }
}

#[test]
fn killing_the_leader_under_load_loses_no_acknowledged_request() {
    let mut cluster = cluster(3, App::Log, &[]);
    let addrs = cluster.addrs();
    let load = Load::start(&addrs, 9);
    load.wait_for_acks(100).unwrap();

    let old_leader = cluster.wait_for_leader().unwrap();
    cluster.kill_agent(old_leader).unwrap();
    let new_leader = wait_until("a new leader among the survivors", || {
        cluster.leader().filter(|leader| *leader != old_leader)
    })
    .unwrap();
    assert_ne!(new_leader, old_leader);
    load.wait_for_acks(100).unwrap();

    cluster.start_agent(old_leader).unwrap();
    load.wait_for_acks(50).unwrap();
    let sent = load.stop();
    cluster.wait_converged().unwrap();
    let files = cluster.files();
    let lines = check_replicas(&files, &cluster.in_doubt(), &sent).unwrap();
    assert!(lines >= sent.acked.len());
    // Clients of the dead node got answers or connection errors, never a hang (which shows as a
    // read timing out).
    assert!(
        !sent
            .failures
            .keys()
            .any(|kind| kind.contains("timed out") || kind.contains("would block")),
        "{:?}",
        sent.failures
    );
    eprintln!(
        "{} sent, {} acknowledged, {lines} lines; failures: {:?}",
        sent.all.len(),
        sent.acked.len(),
        sent.failures
    );
}

#[test]
fn a_killed_agent_restarted_delivers_nothing_twice_and_skips_nothing() {
    let mut cluster = cluster(3, App::Log, &[]);
    let addrs = cluster.addrs();
    let load = Load::start(&addrs, 9);
    load.wait_for_acks(100).unwrap();

    // A follower's agent, while its app keeps running and entries keep coming.
    let leader = cluster.wait_for_leader().unwrap();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    for _ in 0..3 {
        cluster.kill_agent(victim).unwrap();
        load.wait_for_acks(50).unwrap();
        cluster.start_agent(victim).unwrap();
        load.wait_for_acks(50).unwrap();
    }
    let sent = load.stop();
    cluster.wait_converged().unwrap();
    let files = cluster.files();
    check_replicas(&files, &cluster.in_doubt(), &sent).unwrap();
}

/// The alert rules shipped (`deploy/prometheus/alerts.yaml`) are whole, and every metric they
/// use is one a running agent serves: renaming a metric breaks this test, not an operator's
/// alert.
#[test]
fn the_alert_rules_use_only_metrics_an_agent_serves() {
    let path = hermes_tests::podman::workspace().join("deploy/prometheus/alerts.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let groups = rules["groups"].as_array().unwrap();
    let rules: Vec<&serde_json::Value> = groups
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .collect();
    assert!(rules.len() >= 10, "{} rules", rules.len());
    let mut used = HashSet::new();
    for rule in rules {
        let alert = rule["alert"].as_str().unwrap();
        let severity = rule["labels"]["severity"].as_str();
        assert!(matches!(severity, Some("critical" | "warning")), "{alert}");
        assert!(rule["annotations"]["summary"].is_string(), "{alert}");
        let expr = rule["expr"].as_str().unwrap();
        for (at, _) in expr.match_indices("hermes_") {
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }

    let cluster = cluster(3, App::Log, &[]);
    let leader = wait_until("a leader", || cluster.leader()).unwrap();
    let metrics = cluster.admin(leader, "/metrics").unwrap().text();
    // The series themselves, by the names Prometheus stores.
    let served: HashSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    for name in &used {
        assert!(
            served.contains(name.as_str()),
            "{name} is not served:\n{metrics}"
        );
    }
    assert!(used.len() >= 10, "{used:?}");
}

/// `--log-format json`: every line the agent writes is one JSON object with a level and a
/// message, for a log collector.
#[test]
fn the_agent_logs_one_json_object_per_line_when_asked() {
    let mut cluster = cluster(1, App::Log, &["--log-format", "json"]);
    let response = client::post(cluster.addr(1), "/insert", b"logged").unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    let output = cluster.agent(1).unwrap().output();
    assert!(output.len() >= 3, "{output:?}");
    for line in &output {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    let attached = |line: &String| line.contains("steering attached");
    assert!(output.iter().any(attached), "{output:?}");
}
