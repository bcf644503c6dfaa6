//! HTTP/1.1 through Hermes (issue 3): what the app receives, and what the client gets back, byte
//! for byte; keep-alive, pipelining, HTTP/1.0, chunked bodies, `Expect: 100-continue`.
use std::io::{Read, Write};

use hermes_tests::{
    App,
    client::{self, read_response},
    cluster,
};

/// What the echo app received, from its answer.
fn received(response: &client::Response) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response.text()
}

#[test]
fn the_app_gets_the_request_with_forwarding_and_log_index_headers() {
    let cluster = cluster(1, App::HttpEcho, &[]);
    let got = received(&client::post(cluster.addr(1), "/anything?x=1", b"payload").unwrap());
    assert!(
        got.starts_with("POST /anything?x=1 HTTP/1.1\r\nHost: hermes\r\nContent-Length: 7\r\n"),
        "{got}"
    );
    assert!(
        got.contains(&format!("\r\nX-Forwarded-For: {}\r\n", cluster.lab.gateway)),
        "{got}"
    );
    assert!(got.contains("\r\nHermes-Log-Index: "), "{got}");
    assert!(got.ends_with("\r\n\r\npayload"), "{got}");

    // An existing X-Forwarded-For is extended; a client's own Hermes-Log-Index is not trusted.
    let raw = b"GET /x HTTP/1.1\r\nX-Forwarded-For: 10.1.1.1\r\nHermes-Log-Index: 999999\r\n\r\n";
    let got = received(&client::exchange(cluster.addr(1), raw).unwrap());
    assert!(
        got.contains(&format!(
            "X-Forwarded-For: 10.1.1.1, {}\r\n",
            cluster.lab.gateway
        )),
        "{got}"
    );
    assert!(!got.contains("999999"), "{got}");
}

#[test]
fn app_responses_reach_the_client_exactly() {
    let cluster = cluster(1, App::HttpEcho, &[]);
    let addr = cluster.addr(1);
    let chosen = client::get(addr, "/status/418").unwrap();
    assert_eq!(
        chosen.raw,
        b"HTTP/1.1 418 Chosen\r\nX-App: hermes-http-echo\r\nSet-Cookie: a=b\r\nContent-Length: 11\r\n\r\nstatus 418\n"
    );
    let chunked = client::get(addr, "/chunked").unwrap();
    assert_eq!(
        chunked.raw,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Done\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Done: yes\r\n\r\n"
    );
    let until_close = client::get(addr, "/close").unwrap();
    assert_eq!(
        until_close.raw,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the connection closes"
    );
    let mut stream = client::connect(addr).unwrap();
    stream
        .write_all(b"HEAD /status/201 HTTP/1.1\r\n\r\n")
        .unwrap();
    let head_response = read_response(&mut stream, &mut Vec::new(), "HEAD").unwrap();
    assert_eq!(head_response.status, 201);
    assert!(head_response.body.is_empty());
}

#[test]
fn keep_alive_pipelining_and_http_1_0() {
    let cluster = cluster(1, App::HttpEcho, &[]);
    let addr = cluster.addr(1);
    // Ten requests in one write: ten answers, in order, on the same connection.
    let mut stream = client::connect(addr).unwrap();
    let batch: String = (0..10)
        .map(|i| format!("GET /pipelined/{i} HTTP/1.1\r\nHost: h\r\n\r\n"))
        .collect();
    stream.write_all(batch.as_bytes()).unwrap();
    let mut pending = Vec::new();
    for i in 0..10 {
        let response = read_response(&mut stream, &mut pending, "GET").unwrap();
        assert!(received(&response).starts_with(&format!("GET /pipelined/{i} HTTP/1.1\r\n")));
    }
    // Then more, one by one, still on it.
    for i in 0..20 {
        stream
            .write_all(format!("GET /sequential/{i} HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        let response = read_response(&mut stream, &mut pending, "GET").unwrap();
        assert!(received(&response).starts_with(&format!("GET /sequential/{i} ")));
    }
    // HTTP/1.0 without keep-alive: one answer, then the connection closes.
    let mut old = client::connect(addr).unwrap();
    old.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    old.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("GET /old HTTP/1.0\r\n"),
        "{text}"
    );
}

#[test]
fn chunked_requests_and_expect_continue() {
    let cluster = cluster(1, App::HttpEcho, &[]);
    let addr = cluster.addr(1);
    let chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
    let got = received(&client::exchange(addr, chunked).unwrap());
    assert!(
        got.ends_with("\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"),
        "{got}"
    );

    let mut stream = client::connect(addr).unwrap();
    stream
        .write_all(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut pending = Vec::new();
    let interim = read_response(&mut stream, &mut pending, "POST").unwrap();
    assert_eq!(interim.raw, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").unwrap();
    let got = received(&read_response(&mut stream, &mut pending, "POST").unwrap());
    assert!(
        got.ends_with("\r\n\r\nhello") && !got.to_lowercase().contains("expect:"),
        "{got}"
    );
}
