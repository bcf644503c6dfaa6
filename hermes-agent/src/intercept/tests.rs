//! Interception in process, on a multi-thread runtime, in front of a one-node cluster and a
//! scripted app: per-connection order, what is never processed, refusals, the budgets of
//! bodies and answers.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{Notify, Semaphore},
};

use super::http::{Http, Limits, Reads};
use crate::{
    http::{
        Response, request,
        response::{self, ReadError},
    },
    node::{Node, read::ReadMode, testing::single_node},
    testing::{Act, FakeApp, OK},
};

/// Serves steered-like connections on loopback with an HTTP handler for `node`; where clients
/// connect, and the node's budget of body bytes.
fn intercept(node: Arc<Node>, max_body: u64, budget: usize) -> (SocketAddr, Arc<Semaphore>) {
    let (handler, budget) = handler(node, max_body, budget);
    (super::serve_in_test(handler), budget)
}

/// An HTTP handler for `node` with this budget of body bytes, and room for any answer.
fn handler(node: Arc<Node>, max_body: u64, budget: usize) -> (Http, Arc<Semaphore>) {
    let budget = Arc::new(Semaphore::new(budget));
    let handler = Http {
        node,
        limits: Limits {
            http: request::Limits {
                max_body,
                ..Default::default()
            },
            client_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
        },
        reads: Reads {
            mode: ReadMode::Ordered,
            methods: Arc::from(Vec::new()),
        },
        budget: Arc::clone(&budget),
        answers: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
    };
    (handler, budget)
}

fn post(body: &str) -> String {
    format!(
        "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one answer off `stream`; `None` once it closed.
async fn answer(stream: &mut TcpStream, buf: &mut BytesMut, method: &str) -> Option<Response> {
    match response::read(stream, buf, method, &response::Limits::default()).await {
        Ok(response) => Some(response),
        Err(ReadError::Closed) => None,
        Err(error) => panic!("bad answer from the agent: {error}"),
    }
}

/// An upper bound for what must happen, never a window for what must not.
const LONG: Duration = Duration::from_secs(60);

async fn closed(stream: &mut TcpStream, buf: &BytesMut) -> bool {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.is_ok() && rest.is_empty() && buf.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_requests_enter_the_log_in_the_order_their_client_sent_them() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let (addr, _) = intercept(Arc::clone(&node), 1 << 20, 1 << 20);
    let rounds = 20;
    let mut expected = Vec::new();
    // Several connections at once, each pipelining eight requests per round.
    let clients: Vec<_> = (0..4)
        .map(|client| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let mut buf = BytesMut::new();
                for round in 0..rounds {
                    let batch: String = (0..8)
                        .map(|i| post(&format!("c{client}-r{round}-{i}")))
                        .collect();
                    stream.write_all(batch.as_bytes()).await.unwrap();
                    for _ in 0..8 {
                        let answer = answer(&mut stream, &mut buf, "POST").await.unwrap();
                        assert_eq!(&answer.body[..], b"ok");
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    for client in 0..4 {
        for round in 0..rounds {
            for i in 0..8 {
                expected.push(format!("c{client}-r{round}-{i}"));
            }
        }
    }
    let seen = app.seen();
    assert_eq!(seen.len(), expected.len());
    for client in 0..4 {
        let own: Vec<String> = seen
            .iter()
            .map(|s| String::from_utf8(s.body.clone()).unwrap())
            .filter(|body| body.starts_with(&format!("c{client}-")))
            .collect();
        let sent: Vec<&String> = expected
            .iter()
            .filter(|body| body.starts_with(&format!("c{client}-")))
            .collect();
        assert_eq!(
            own.iter().collect::<Vec<_>>(),
            sent,
            "client {client}'s order"
        );
    }
    // And the log order is the app's order: log indexes grow.
    assert!(seen.windows(2).all(|w| w[0].index < w[1].index));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_behind_a_closing_request_or_answer_is_processed() {
    const CLOSING: &[u8] =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\nclosed";
    let app = FakeApp::start(|n| match n {
        0 => Act::Reply(CLOSING),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let (addr, _) = intercept(Arc::clone(&node), 1 << 20, 1 << 20);

    // The app's answer to the first closes the connection: the second is never ordered.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{}{}", post("first"), post("behind-answer")).as_bytes())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let first = answer(&mut stream, &mut buf, "POST").await.unwrap();
    assert_eq!(&first.body[..], b"closed");
    assert!(
        closed(&mut stream, &buf).await,
        "the connection closes after it"
    );

    // The client's own `Connection: close`, and HTTP/1.0 without keep-alive.
    for first in [
        "POST /p HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 2\r\n\r\nc1"
            .to_owned(),
        "POST /p HTTP/1.0\r\nContent-Length: 2\r\n\r\nc2".to_owned(),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("{first}{}", post("behind-request")).as_bytes())
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        assert!(answer(&mut stream, &mut buf, "POST").await.is_some());
        assert!(closed(&mut stream, &buf).await);
    }
    let bodies: Vec<Vec<u8>> = app.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, [b"first".to_vec(), b"c1".to_vec(), b"c2".to_vec()]);
    assert_eq!(
        node.applied.requests(),
        3,
        "nothing behind them was ordered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_apps_close_after_a_close_the_agent_asked_for_keeps_the_clients_connection() {
    // The app closes its connection after each request, as asked by the canonical form of a
    // HEAD and of a GET with a body, and says so.
    const HEAD_CLOSING: &[u8] =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\n";
    const CLOSING: &[u8] =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\nclosed";
    let app = FakeApp::start(|n| match n {
        0 => Act::ReplyAndClose(HEAD_CLOSING),
        2 => Act::ReplyAndClose(CLOSING),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let (addr, _) = intercept(Arc::clone(&node), 1 << 20, 1 << 20);

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = BytesMut::new();
    for (request, method) in [
        ("HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", "HEAD"),
        ("GET /g HTTP/1.1\r\nHost: h\r\n\r\n", "GET"),
        (
            "GET /g HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
            "GET",
        ),
        ("GET /g HTTP/1.1\r\nHost: h\r\n\r\n", "GET"),
    ] {
        stream.write_all(request.as_bytes()).await.unwrap();
        let got = answer(&mut stream, &mut buf, method)
            .await
            .unwrap_or_else(|| panic!("no answer to {request:?}: the connection closed"));
        assert_eq!(got.status, 200);
        assert!(
            !got.close,
            "{request:?}: the client did not ask for a close"
        );
    }
    let methods: Vec<String> = app.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["HEAD", "GET", "GET", "GET"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_order_nothing_and_continue_is_only_for_http_1_1() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let (addr, _) = intercept(Arc::clone(&node), 1000, 1 << 20);
    for (raw, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], 400),
        (
            b"\r\n\r\nPOST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
            200,
        ),
        (
            b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx",
            400,
        ),
        (
            b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n",
            413,
        ),
        (
            b"POST /p HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n",
            417,
        ),
        (
            b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut buf = BytesMut::new();
        let got = answer(&mut stream, &mut buf, "POST").await.unwrap();
        assert_eq!(got.status, status, "{}", String::from_utf8_lossy(raw));
    }
    assert_eq!(node.applied.requests(), 1, "only the valid one was ordered");

    // HTTP/1.1 waiting for 100 Continue gets it; HTTP/1.0 does not (RFC 9110 10.1.1).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hi").await.unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        answer(&mut stream, &mut buf, "POST").await.unwrap().status,
        200
    );

    let mut old = TcpStream::connect(addr).await.unwrap();
    old.write_all(b"POST /p HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let mut all = Vec::new();
    old.read_to_end(&mut all).await.unwrap();
    assert!(
        all.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&all)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_beyond_the_budget_are_refused_and_the_budget_holds() {
    // The app holds the first request: its body stays accounted for while it waits.
    let held = Arc::new(Notify::new());
    let release = Arc::clone(&held);
    let app = FakeApp::start(move |n| match n {
        0 => Act::ReplyWhenTold(Arc::clone(&held), OK),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    let (addr, budget) = intercept(Arc::clone(&node), 1000, 1000);
    let body = "b".repeat(600);
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(post(&body).as_bytes()).await.unwrap();
    app.wait_seen(1).await;
    assert_eq!(
        budget.available_permits(),
        400,
        "600 bytes held for the first body"
    );

    // Two more clients together declare more than the rest of the budget.
    let mut refused = 0;
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(post(&body).as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let got = answer(&mut stream, &mut buf, "POST").await.unwrap();
        assert_eq!(got.status, 503);
        refused += 1;
        assert!(budget.available_permits() <= 1000);
    }
    // Chunked bodies are counted as they grow.
    let mut chunked = TcpStream::connect(addr).await.unwrap();
    let chunk = "c".repeat(300);
    chunked
        .write_all(format!("POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n12c\r\n{chunk}\r\n12c\r\n{chunk}\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        answer(&mut chunked, &mut buf, "POST").await.unwrap().status,
        503
    );
    release.notify_one();
    let mut buf = BytesMut::new();
    assert_eq!(
        answer(&mut first, &mut buf, "POST").await.unwrap().status,
        200
    );
    drop(first);
    // Everything given back once answered.
    while budget.available_permits() != 1000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(refused, 2);
    assert_eq!(app.seen().len(), 1, "nothing refused reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_many_waiting_clients_get_503_while_the_app_is_held() {
    let held = Arc::new(Notify::new());
    let release = Arc::clone(&held);
    let app = FakeApp::start(move |_| Act::ReplyWhenTold(Arc::clone(&held), OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |s| s.max_pending = 2).await;
    let (addr, _) = intercept(Arc::clone(&node), 1000, 1 << 20);
    let mut waiting = Vec::new();
    for i in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(post(&format!("w{i}")).as_bytes())
            .await
            .unwrap();
        waiting.push(stream);
    }
    while node.pending() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    extra
        .write_all(post("one-too-many").as_bytes())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let refused = answer(&mut extra, &mut buf, "POST").await.unwrap();
    assert_eq!(refused.status, 503);
    let (head, _) = refused.to_client(crate::http::Version::Http11, false);
    assert!(head.windows(14).any(|w| w == b"Retry-After: 1"));
    // The app answers one request at a time, in log order, whichever client's came first
    // there: each answer lets the next one go.
    use futures_util::StreamExt as _;
    let mut answers: futures_util::stream::FuturesUnordered<_> = waiting
        .into_iter()
        .map(|mut stream| async move {
            let mut buf = BytesMut::new();
            answer(&mut stream, &mut buf, "POST").await.unwrap().status
        })
        .collect();
    release.notify_one();
    while let Some(status) = answers.next().await {
        assert_eq!(status, 200);
        release.notify_one();
    }
    assert!(app.seen().iter().all(|s| s.body != b"one-too-many"));
}

/// Waits until `done`, as long as it takes (at most [`LONG`]).
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(LONG, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("not so: {what}"));
}

/// A client that reads nothing: its receive window is as small as the kernel allows.
async fn not_reading(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_whose_answer_does_not_fit_the_budget_is_reset_never_cut() {
    // Answers far larger than what the kernel takes for a client that reads nothing (at most a
    // few MiB of socket buffers): most of an answer stays in the budget until its client reads.
    const BIG: usize = 16 << 20;
    let big: &'static [u8] = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n{}",
            "a".repeat(BIG)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let app = FakeApp::start(move |_| Act::Reply(big)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, dir.path(), |_| {}).await;
    // Room for one answer and a half.
    let total = BIG + BIG / 2;
    let answers = Arc::new(Semaphore::new(total));
    let (handler, _) = handler(Arc::clone(&node), 1000, 1 << 20);
    let addr = super::serve_in_test(Http {
        answers: Arc::clone(&answers),
        ..handler
    });
    let request = b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n";
    let in_use = |answers: &Semaphore| total - answers.available_permits();

    // A slow client: its answer waits for it, in the budget.
    let mut slow = not_reading(addr).await;
    slow.write_all(request).await.unwrap();
    until("the slow client's answer is held", || in_use(&answers) != 0).await;

    // The next answer does not fit beside it: its client is reset, with nothing of it.
    let mut over = TcpStream::connect(addr).await.unwrap();
    over.write_all(request).await.unwrap();
    let mut buf = BytesMut::new();
    assert!(
        answer(&mut over, &mut buf, "GET").await.is_none(),
        "reset, not sent part of an answer"
    );
    assert!(
        node.telemetry
            .encode()
            .contains(r#"hermes_requests_total{outcome="reset",class="2xx"} 1"#),
        "{}",
        node.telemetry.encode()
    );

    // The slow client, once it reads, gets its whole answer; and so does the next client.
    let mut buf = BytesMut::new();
    let whole = answer(&mut slow, &mut buf, "GET").await.unwrap();
    assert_eq!(whole.body.len(), BIG);
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(request).await.unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        answer(&mut next, &mut buf, "GET").await.unwrap().body.len(),
        BIG
    );

    // A slow client that goes away gives its share back.
    until("the whole answers are given back", || in_use(&answers) == 0).await;
    let mut gone = not_reading(addr).await;
    gone.write_all(request).await.unwrap();
    until("the answer is held", || in_use(&answers) != 0).await;
    drop(gone);
    until("the budget is given back", || in_use(&answers) == 0).await;
}
