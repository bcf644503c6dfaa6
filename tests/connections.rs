//! Each client connection's requests reach every replica's app over an app connection of their
//! own (issue 17, hole 5), with Python's stock `http.server` (`tests/apps/sloppy.py`), which
//! nobody here wrote and which answers `POST /ping` without reading its body: the unread body
//! stays on that connection, and the app reads it as the start of the connection's next request.
//! Without Hermes that hurts only the sloppy client; through Hermes it must be the same: the
//! other clients' requests, sent in between through every node, run and get their own answers
//! on every replica, whether the app serves one connection at a time or a thread per connection.
use std::{io::Write as _, net::TcpStream};

use hermes_lab::cluster::Cluster;
use hermes_tests::{
    App,
    client::{self, read_response},
    lab,
};

fn sloppy_cluster(threading: bool) -> Cluster {
    let bin = hermes_lab::binary("hermes-agent").expect("binaries");
    let mut cluster = Cluster::new(lab(3), bin.parent().unwrap(), App::Sloppy, &[]).unwrap();
    if threading {
        cluster.app_args.push("--threading".into());
    }
    cluster.start().unwrap();
    cluster
}

/// A `POST /ping` with a body the app leaves unread: the start of a request line, which the app
/// then reads with whatever comes next on the connection.
fn ping() -> &'static [u8] {
    b"POST /ping HTTP/1.1\r\nHost: hermes\r\nContent-Length: 12\r\n\r\nGET /nothing"
}

fn append(body: &str) -> Vec<u8> {
    format!(
        "POST /append HTTP/1.1\r\nHost: hermes\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `raw` on `stream` and reads the answer.
fn send(stream: &mut TcpStream, raw: &[u8]) -> client::Response {
    stream.write_all(raw).unwrap();
    read_response(stream, &mut Vec::new(), "").unwrap()
}

fn others_are_untouched_by_a_sloppy_client(threading: bool) {
    let cluster = sloppy_cluster(threading);
    // The sloppy client keeps its connection, through node 1.
    let mut sloppy = client::connect(cluster.addr(1)).unwrap();
    let mut sent = Vec::new();
    for round in 0..4 {
        // What the sloppy client gets after its first ping depends on the app, as without
        // Hermes (a threaded app reads its next ping after the unread body, and refuses it);
        // every replica answers it alike (checked below).
        let pong = send(&mut sloppy, ping());
        if round == 0 {
            assert_eq!((pong.status, pong.text().as_str()), (200, "pong\n"));
        }
        if pong.header("connection") == Some("close") {
            sloppy = client::connect(cluster.addr(1)).unwrap();
        }
        // Other clients, kept-alive and fresh, through every node, before the sloppy client's
        // next request.
        for node in 1..=3 {
            let body = format!("r{round}-n{node}");
            let mut other = client::connect(cluster.addr(node)).unwrap();
            let answer = send(&mut other, &append(&body));
            assert_eq!(answer.status, 201, "{body}: {}", answer.text());
            sent.push(body);
            let body = format!("r{round}-n{node}-again");
            let answer = send(&mut other, &append(&body));
            assert_eq!(answer.status, 201, "{body}: {}", answer.text());
            sent.push(body);
        }
    }
    cluster.wait_converged().unwrap();
    let files = cluster.files();
    assert!(files.iter().all(|f| *f == files[0]), "replicas differ");
    let lines: Vec<String> = String::from_utf8_lossy(&files[0])
        .lines()
        .map(str::to_owned)
        .collect();
    for body in &sent {
        let copies = lines.iter().filter(|line| *line == body).count();
        assert_eq!(copies, 1, "{body} in {lines:?}");
    }
    // Every replica's app answered every request alike (the digests of the answers agree).
    let last = cluster.status(1).unwrap()["requests"].as_u64().unwrap();
    for id in 1..=3 {
        let status = hermes_tests::wait_until(&format!("node {id} to compare its answers"), || {
            let status = cluster.status(id)?;
            (status["compared_up_to"].as_u64()? >= last).then_some(status)
        })
        .unwrap();
        assert!(status["divergence"].is_null(), "node {id}: {status}");
    }
}

#[test]
fn a_body_left_unread_by_an_app_serving_one_connection_at_a_time_harms_no_other_client() {
    others_are_untouched_by_a_sloppy_client(false);
}

#[test]
fn a_body_left_unread_by_an_app_with_a_thread_per_connection_harms_no_other_client() {
    others_are_untouched_by_a_sloppy_client(true);
}
