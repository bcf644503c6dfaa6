//! Delivery against a scripted fake app that misbehaves on purpose: each request must reach the
//! app exactly once (or, in the one undecidable case, once more and counted in doubt), and each
//! outcome must be the one the rules in [`super`] give.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{
    App, Delivery, Outcome,
    progress::{self, ProgressFile},
};
use crate::{
    data_dir::DataDir,
    http::{Response, Version, ordered::Ordered, response::Limits},
    order::{
        log_store::LogStore,
        typ::{Batch, Command, Entry, EntryPayload, LogId, Proposal},
    },
    testing::{Act, Crash, FakeApp, OK, Seen},
};

/// The client connection the tests' requests come on (with origin 1, incarnation 1).
const CONN: u64 = 7;
/// The boot id the tests' agents run under: a restart in these tests is the agent's, not the
/// machine's.
const BOOT: u128 = 1;

/// `request` as the log carries it, from client connection [`CONN`].
fn ordered(request: impl Into<Bytes>) -> Bytes {
    Ordered {
        conn: CONN,
        request: request.into(),
    }
    .to_payload()
}

fn post(body: &str) -> Bytes {
    ordered(format!(
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// As the canonical form has it: a HEAD closes the app connection after it.
fn head_request() -> Bytes {
    ordered(Bytes::from_static(
        b"HEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ))
}

/// A delivery to `app` whose progress lives in `dir`, with answers called slow after `slow`.
fn delivery(dir: &std::path::Path, app: &FakeApp, slow: Duration) -> (Delivery, Arc<App>) {
    let app = handle(app, slow);
    let delivery = Delivery::open(progress::file_in(dir), BOOT, Arc::clone(&app), None).unwrap();
    (delivery, app)
}

fn answered(outcome: &Outcome) -> &Response {
    match outcome {
        Outcome::Answered(response) => response,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn to_client(response: &Response) -> Vec<u8> {
    let (head, body) = response.to_client(Version::Http11, false);
    [head, body].concat()
}

fn seen(index: u64, body: &str) -> Seen {
    Seen {
        index,
        method: "POST".into(),
        body: body.as_bytes().to_vec(),
    }
}

const SECOND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stray_bytes_after_an_answer_are_never_taken_for_the_next_answer() {
    // Stray bytes in the same write as the answer, then in a write of their own.
    let stray_written = Arc::new(Notify::new());
    let told = Arc::clone(&stray_written);
    let app = FakeApp::start(move |n| match n {
        0 => Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"),
        1 => Act::ReplyThenStray(
            OK,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
            Arc::clone(&told),
        ),
        _ => Act::Reply(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmine"),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let first = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert_eq!(&answered(&first).body[..], b"ok");
    let second = delivery.deliver(2, (1, 1, 2), &post("b")).await.unwrap();
    assert_eq!(&answered(&second).body[..], b"ok");
    // Bytes nobody asked for that are there before the next request is written (on loopback,
    // written is there) are seen: the connection is replaced. (Bytes that come later still
    // cannot be told from an answer: see the HEAD and 204 cases for the answers that invite
    // them.)
    stray_written.notified().await;
    let third = delivery.deliver(3, (1, 1, 3), &post("c")).await.unwrap();
    assert_eq!(answered(&third).status, 201);
    assert_eq!(&answered(&third).body[..], b"mine");
    assert_eq!(app.seen(), [seen(1, "a"), seen(2, "b"), seen(3, "c")]);
    assert_eq!(
        app.connections(),
        3,
        "no connection with stray bytes was reused"
    );
    assert_eq!(delivery.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_before_the_body_was_read_ends_the_connection() {
    let app = FakeApp::start(|n| match n {
        // A body far larger than the socket buffers: the app answers while it is written.
        0 => Act::ReplyBeforeBody(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig"),
        // The same, and the app closes with the body unread (the kernel resets the
        // connection): the answer is still read, and the request is not sent again.
        1 => {
            Act::ReplyBeforeBodyAndClose(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
        }
        // A small body refused unread: written whole before the answer came.
        2 => Act::ReplyBeforeBody(b"HTTP/1.1 405 No\r\nContent-Length: 2\r\n\r\nno"),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let big = "x".repeat(16 << 20);
    let first = delivery.deliver(1, (1, 1, 1), &post(&big)).await.unwrap();
    assert_eq!(answered(&first).status, 413);
    let second = delivery.deliver(2, (1, 1, 2), &post(&big)).await.unwrap();
    assert_eq!(answered(&second).status, 413);
    let third = delivery
        .deliver(3, (1, 1, 3), &post("small"))
        .await
        .unwrap();
    assert_eq!(answered(&third).status, 405);
    let fourth = delivery.deliver(4, (1, 1, 4), &post("next")).await.unwrap();
    assert_eq!(&answered(&fourth).body[..], b"ok");
    let indexes: Vec<u64> = app.seen().iter().map(|s| s.index).collect();
    assert_eq!(indexes, [1, 2, 3, 4], "each request reached the app once");
    assert_eq!(app.seen()[3], seen(4, "next"));
    assert_eq!(app.connections(), 4);
    assert_eq!(delivery.progress().written, 4);
    assert_eq!(delivery.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_that_answers_while_it_reads_the_body_gets_all_of_it() {
    let app = FakeApp::start(|n| match n {
        // A streaming app: the head of its answer first, the rest once it has the body.
        0 => Act::AnswerWhileReading(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nfoo\r\n",
            b"3\r\nbar\r\n0\r\n\r\n",
        ),
        // An app that sends 100 Continue although nobody asked.
        1 => Act::AnswerWhileReading(b"HTTP/1.1 100 Continue\r\n\r\n", OK),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let big = "y".repeat(8 << 20);
    let streamed = delivery.deliver(1, (1, 1, 1), &post(&big)).await.unwrap();
    assert_eq!(&answered(&streamed).body[..], b"foobar");
    let continued = delivery.deliver(2, (1, 1, 2), &post(&big)).await.unwrap();
    assert_eq!(&answered(&continued).body[..], b"ok");
    let next = delivery.deliver(3, (1, 1, 3), &post("z")).await.unwrap();
    assert_eq!(&answered(&next).body[..], b"ok");
    let seen = app.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen[..2].iter().all(|s| s.body.len() == 8 << 20),
        "whole bodies"
    );
    assert_eq!(delivery.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_the_app_closed_is_replaced_before_writing() {
    let closed = Arc::new(Notify::new());
    let told = Arc::clone(&closed);
    let app = FakeApp::start(move |_| Act::ReplyThenClose(OK, Arc::clone(&told))).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    for seq in 1..=4 {
        let outcome = delivery
            .deliver(seq, (1, 1, seq), &post(&seq.to_string()))
            .await
            .unwrap();
        assert_eq!(&answered(&outcome).body[..], b"ok");
        closed.notified().await;
    }
    let indexes: Vec<u64> = app.seen().iter().map(|s| s.index).collect();
    assert_eq!(indexes, [1, 2, 3, 4]);
    assert_eq!(delivery.progress().in_doubt, 0, "nothing was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn odd_but_legal_answers_are_passed_on() {
    const LATIN1: &[u8] = b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok";
    const INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone";
    let many: &'static [u8] = {
        let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..150 {
            answer.extend_from_slice(format!("X-F{i}: {i}\r\n").as_bytes());
        }
        answer.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        answer.leak()
    };
    let app = FakeApp::start(move |n| match n {
        0 => Act::Reply(LATIN1),
        1 => Act::Reply(many),
        2 => Act::Reply(INTERIM),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let latin1 = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert_eq!(
        to_client(answered(&latin1)),
        b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok"
    );
    let many = delivery.deliver(2, (1, 1, 2), &post("b")).await.unwrap();
    let many = to_client(answered(&many));
    assert!(many.windows(11).any(|w| w == b"X-F149: 149"));
    let interim = delivery.deliver(3, (1, 1, 3), &post("c")).await.unwrap();
    assert_eq!(
        to_client(answered(&interim)),
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone"
    );
    assert_eq!(app.seen().len(), 3);
    assert_eq!(
        app.connections(),
        1,
        "a connection that served odd answers is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodiless_answers_that_announce_a_body_end_the_connection() {
    // Buggy apps that send a body after a HEAD answer, or after a 204, in a later write: on a
    // reused connection it would become the next request's answer.
    let late = Arc::new(Notify::new());
    let told = Arc::clone(&late);
    let app = FakeApp::start(move |n| match n {
        0 => Act::ReplyThenStray(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            b"hello",
            Arc::clone(&told),
        ),
        1 => Act::ReplyThenStray(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            b"hello",
            Arc::clone(&told),
        ),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let head = delivery
        .deliver(1, (1, 1, 1), &head_request())
        .await
        .unwrap();
    assert_eq!(
        to_client(answered(&head)),
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        "the length describes what a GET would get; no body"
    );
    let no_content = delivery.deliver(2, (1, 1, 2), &post("b")).await.unwrap();
    assert_eq!(answered(&no_content).status, 204);
    late.notified().await;
    let next = delivery.deliver(3, (1, 1, 3), &post("c")).await.unwrap();
    assert_eq!(&answered(&next).body[..], b"ok", "not a late body");
    assert_eq!(app.seen().len(), 3);
    assert_eq!(app.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_that_cannot_be_passed_on_are_not_retried() {
    let app = FakeApp::start(|n| match n {
        0 => Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nok"),
        1 => Act::Reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b"),
        2 => Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
        3 => Act::Reply(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
        4 => Act::Reply(b"NOT HTTP AT ALL\r\n\r\n"),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    for seq in 1..=5 {
        let outcome = delivery
            .deliver(seq, (1, 1, seq), &post("x"))
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Unanswered(_)),
            "request {seq}: {outcome:?}"
        );
        assert_eq!(
            app.seen().len() as u64,
            seq,
            "request {seq} reached the app once"
        );
    }
    let last = delivery.deliver(6, (1, 1, 6), &post("y")).await.unwrap();
    assert_eq!(&answered(&last).body[..], b"ok");
    assert_eq!(app.seen().len(), 6);
    assert_eq!(delivery.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_cut_short_is_not_retried_the_app_had_the_request() {
    let app = FakeApp::start(|n| match n {
        0 => Act::ReplyAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let cut = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert!(matches!(cut, Outcome::Unanswered(_)), "{cut:?}");
    let next = delivery.deliver(2, (1, 1, 2), &post("b")).await.unwrap();
    assert_eq!(&answered(&next).body[..], b"ok");
    assert_eq!(app.seen(), [seen(1, "a"), seen(2, "b")]);
    assert_eq!(delivery.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_app_is_waited_for_reported_and_never_sent_the_request_twice() {
    let told = Arc::new(Notify::new());
    let release = Arc::clone(&told);
    let app = FakeApp::start(move |_| Act::ReplyWhenTold(Arc::clone(&told), OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, app_handle) = delivery(dir.path(), &app, Duration::from_millis(50));
    let delivering = tokio::spawn(async move {
        let outcome = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
        (delivery, outcome)
    });
    // Not a timing window: wait as long as it takes for the app to count as slow.
    while app_handle.healthy() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.notify_one();
    let (delivery, outcome) = delivering.await.unwrap();
    assert_eq!(&answered(&outcome).body[..], b"ok");
    assert!(app_handle.healthy());
    assert_eq!(app.seen(), [seen(1, "a")]);
    assert_eq!(delivery.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_that_dies_with_a_written_request_gets_it_again_counted_in_doubt() {
    let sends = super::MAX_SENDS as usize;
    let app = FakeApp::start(move |n| match n {
        0 => Act::Die,
        1 => Act::Reply(OK),
        n if n < 2 + sends => Act::Die,
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let again = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert_eq!(&answered(&again).body[..], b"ok");
    assert_eq!(
        app.seen(),
        [seen(1, "a"), seen(1, "a")],
        "the same log index twice"
    );
    assert_eq!(delivery.progress().in_doubt, 1);
    // Closed on each time: no more than MAX_SENDS times, each after the first counted.
    let lost = delivery.deliver(2, (1, 1, 2), &post("b")).await.unwrap();
    assert!(matches!(lost, Outcome::Unanswered(_)), "{lost:?}");
    assert_eq!(app.seen().len(), 2 + sends);
    assert_eq!(delivery.progress().in_doubt, 1 + sends as u64 - 1);
    let next = delivery.deliver(3, (1, 1, 3), &post("c")).await.unwrap();
    assert_eq!(&answered(&next).body[..], b"ok");
    assert_eq!(app.seen().len(), 3 + sends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_an_agent_crash_a_written_request_is_not_sent_again() {
    let app = FakeApp::start(|n| match n {
        0 => Act::Hang,
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    // The agent dies while it waits for the answer to request 1: its task is dropped.
    let crashed = tokio::spawn(async move {
        let _ = delivery.deliver(1, (1, 1, 1), &post("a")).await;
    });
    app.wait_seen(1).await;
    crashed.abort();
    let _ = crashed.await;
    // Restarted: the entry is applied again from its first request.
    let (mut restarted, _) = delivery_again(dir.path(), &app);
    let earlier = restarted.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert!(matches!(earlier, Outcome::Earlier), "{earlier:?}");
    let next = restarted.deliver(2, (1, 1, 2), &post("b")).await.unwrap();
    assert_eq!(&answered(&next).body[..], b"ok");
    assert_eq!(app.seen(), [seen(1, "a"), seen(2, "b")]);
    assert_eq!(restarted.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_writing_and_written_makes_the_request_in_doubt() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    // What the progress says after a crash in the middle of writing request 2.
    let (mut file, mut progress) = ProgressFile::open(progress::file_in(dir.path())).unwrap();
    progress.written = 1;
    progress.answered = 1;
    progress.writing = 2;
    progress.requests = 1;
    file.write(&progress).unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let outcome = delivery.deliver(2, (1, 1, 2), &post("b")).await.unwrap();
    assert_eq!(&answered(&outcome).body[..], b"ok");
    assert_eq!(app.seen(), [seen(2, "b")]);
    assert_eq!(
        delivery.progress().in_doubt,
        1,
        "sent once more, and counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_in_doubt_is_still_sent_once_more_after_a_restart() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    // The agent stopped after the app's connection ended without an answer to request 1 (so
    // it marked it in doubt), before sending it again (it is counted as it goes again).
    let (mut file, mut progress) = ProgressFile::open(progress::file_in(dir.path())).unwrap();
    progress.writing = 1;
    progress.written = 1;
    progress.doubted = 1;
    progress.deliveries = 1;
    file.write(&progress).unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let outcome = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert_eq!(&answered(&outcome).body[..], b"ok");
    assert_eq!(app.seen(), [seen(1, "a")], "sent once more");
    let progress = delivery.progress();
    assert_eq!(
        (progress.in_doubt, progress.deliveries, progress.unconfirmed),
        (1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_written_request_whose_answer_the_agent_never_read_is_unconfirmed() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut file, mut progress) = ProgressFile::open(progress::file_in(dir.path())).unwrap();
    progress.writing = 1;
    progress.written = 1;
    progress.deliveries = 1;
    file.write(&progress).unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    assert_eq!(delivery.progress().unconfirmed, 1);
    let earlier = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert!(
        matches!(earlier, Outcome::Earlier),
        "not sent again: {earlier:?}"
    );
    assert!(app.seen().is_empty());
    let (delivery, _) = delivery_again(dir.path(), &app);
    assert_eq!(delivery.progress().unconfirmed, 1, "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_cut_off_leaves_nothing_on_the_connection_for_the_next_request() {
    let held = Arc::new(Notify::new());
    let release = Arc::clone(&held);
    let app = FakeApp::start(move |n| match n {
        0 => Act::ReplyWhenTold(
            Arc::clone(&held),
            b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nsecret report!",
        ),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, handle) = delivery(dir.path(), &app, SECOND);
    // A client gives up on its read (its request timed out) while the app works on it.
    let reading = tokio::spawn({
        let handle = Arc::clone(&handle);
        async move {
            handle
                .read(
                    (1, 1, CONN),
                    b"GET /report HTTP/1.1\r\nHost: a\r\n\r\n",
                    "GET",
                )
                .await
        }
    });
    app.wait_seen(1).await;
    reading.abort();
    let _ = reading.await;
    release.notify_one();
    let write = delivery.deliver(1, (1, 1, 1), &post("w")).await.unwrap();
    assert_eq!(&answered(&write).body[..], b"ok", "not the read's answer");
    assert_eq!(app.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_proposal_never_reaches_the_app() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    delivery.deliver(1, (2, 7, 10), &post("a")).await.unwrap();
    let again = delivery.deliver(2, (2, 7, 10), &post("a")).await.unwrap();
    assert!(matches!(again, Outcome::Duplicate));
    let other_incarnation = delivery.deliver(3, (2, 8, 10), &post("c")).await.unwrap();
    assert!(matches!(other_incarnation, Outcome::Answered(_)));
    assert_eq!(app.seen(), [seen(1, "a"), seen(3, "c")]);
    assert_eq!(delivery.progress().written, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_take_their_turn_on_the_one_connection() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, handle) = delivery(dir.path(), &app, SECOND);
    for seq in 1..=5 {
        delivery
            .deliver(seq, (1, 1, seq), &post("w"))
            .await
            .unwrap();
        let read = handle
            .read((1, 1, CONN), b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n", "GET")
            .await
            .unwrap();
        assert_eq!(&read.body[..], b"ok");
    }
    assert_eq!(
        app.connections(),
        1,
        "ordered requests and reads shared one connection"
    );
    assert_eq!(app.seen().len(), 10);
}

/// The fake app, as delivery reaches it, with answers called slow after `slow`.
fn handle(app: &FakeApp, slow: Duration) -> Arc<App> {
    Arc::new(
        App::new(
            app.addr,
            std::net::Ipv4Addr::LOCALHOST,
            slow,
            Limits::default(),
            64,
            Arc::default(),
        )
        // The fake app serves every connection at once: a slow exchange on a busy machine must
        // not make it look like one that does not (an_app_serving_one_connection_at_a_time...
        // shows that).
        .switching_after(Duration::from_secs(3600)),
    )
}

/// The delivery of a restarted agent.
fn delivery_again(dir: &std::path::Path, app: &FakeApp) -> (Delivery, Arc<App>) {
    delivery(dir, app, SECOND)
}

/// Node 9's state machine in HTTP mode, kept in `dir`, in front of `app`.
async fn state_machine(
    dir: &std::path::Path,
    app: &FakeApp,
    log: &mut LogStore,
) -> super::state_machine::StateMachine {
    let replica = super::state_machine::Replica {
        node_id: 9,
        incarnation: 1,
        app: handle(app, SECOND),
        hooks: None,
        digests: Arc::default(),
        tcp: None,
        sync_progress: true,
    };
    let dir = DataDir::create(dir).unwrap();
    super::state_machine::StateMachine::open(&dir, replica, log)
        .await
        .unwrap()
        .0
}

/// Log entry `index`: a batch of origin `origin` (incarnation 1) made with `floor`, holding
/// requests `ids`.
fn entry(index: u64, origin: u64, floor: u64, ids: impl IntoIterator<Item = u64>) -> Entry {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal::from(Batch {
            id: (origin, 1, index),
            floor,
            commands: ids
                .into_iter()
                .map(|id| Command {
                    origin,
                    incarnation: 1,
                    id,
                    payload: post("x"),
                })
                .collect(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_landing_after_far_more_requests_than_any_window_is_not_delivered_again() {
    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    // Origin 2's request 7 is committed and delivered; its origin never hears of it (cut off)
    // and keeps it in flight. Origin 2 goes on with other requests meanwhile, and so do the
    // others; the batches of origin 2 carry 7 as their floor.
    let first = vec![entry(1, 2, 7, [7])];
    log.blocking_append(first.clone()).await.unwrap();
    machine.apply(first).await.unwrap();
    let mut entries = Vec::new();
    for index in 2..=4 {
        entries.push(entry(index, 2, 7, [index * 10, index * 10 + 1]));
    }
    log.blocking_append(entries.clone()).await.unwrap();
    machine.apply(entries).await.unwrap();
    assert_eq!(app.seen().len(), 7);
    // Then far more requests than the 2^18 a window used to hold are ordered and delivered
    // (here: recorded as delivered before this replica restarted; its start rebuilds what it
    // knows of them from the log, as it would have learnt it applying them).
    drop(machine);
    const MANY: u64 = 300_000;
    let mut next_index = 5;
    let mut ids = 1_000..1_000 + MANY;
    while ids.start < ids.end {
        let batch: Vec<u64> = ids.by_ref().take(1000).collect();
        let origin = 3 + next_index % 2;
        log.blocking_append([entry(next_index, origin, batch[0], batch)])
            .await
            .unwrap();
        next_index += 1;
    }
    let (mut file, mut progress) = ProgressFile::open(progress::file_in(dir.path())).unwrap();
    let delivered = 7 + MANY;
    progress.applied = Some(LogId::new(
        openraft::CommittedLeaderId::new(1, 1),
        next_index - 1,
    ));
    (
        progress.requests,
        progress.writing,
        progress.written,
        progress.answered,
    ) = (delivered, delivered, delivered, delivered);
    file.write(&progress).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    // Origin 2's retry of request 7 lands now, with a request it has not sent before.
    let late = vec![entry(next_index, 2, 7, [7, 50])];
    log.blocking_append(late.clone()).await.unwrap();
    machine.apply(late).await.unwrap();
    let seen = app.seen();
    assert_eq!(seen.len(), 8, "request 7 once, and request 50");
    assert_eq!(seen[7].index, delivered + 2);
    // What recognises it is bounded by what was in flight, not by how much was ordered.
    // (Origin 2's runs of ids between 7 and what it still has in flight, one per other origin.)
    let size = machine.sessions().size();
    assert!(size <= 8, "{size}");
}

/// Request `body` of client connection `conn` (origin 1, incarnation 1).
fn post_on(conn: u64, body: &str) -> Bytes {
    Ordered {
        conn,
        request: format!(
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into(),
    }
    .to_payload()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_the_app_leaves_unread_touches_no_other_client() {
    // The app answers the first request before reading its body, and keeps the connection:
    // the body stays there, and the app would take it for the start of the next request.
    let app = FakeApp::start(|n| match n {
        0 => Act::ReplyBeforeBody(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast"),
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let sloppy = delivery
        .deliver(1, (1, 1, 1), &post_on(1, "left unread"))
        .await;
    assert_eq!(&answered(&sloppy.unwrap()).body[..], b"fast");
    // Other clients' requests go on connections of their own, whole.
    for (seq, conn) in [(2, 2), (3, 3), (4, 2)] {
        let outcome = delivery
            .deliver(seq, (1, 1, seq), &post_on(conn, "mine"))
            .await
            .unwrap();
        assert_eq!(&answered(&outcome).body[..], b"ok", "request {seq}");
    }
    assert_eq!(
        app.connections(),
        3,
        "one per client connection, kept alive"
    );
    let seen = app.seen();
    assert_eq!(
        seen[1..],
        [seen_at(2, "mine"), seen_at(3, "mine"), seen_at(4, "mine")]
    );
}

fn seen_at(index: u64, body: &str) -> Seen {
    seen(index, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_serving_one_connection_at_a_time_gets_them_one_at_a_time() {
    let app = FakeApp::one_at_a_time(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let handle = Arc::new(App::new(
        app.addr,
        std::net::Ipv4Addr::LOCALHOST,
        SECOND,
        Limits::default(),
        64,
        Arc::default(),
    ));
    let mut delivery = Delivery::open(
        progress::file_in(dir.path()),
        BOOT,
        Arc::clone(&handle),
        None,
    )
    .unwrap();
    assert_eq!(handle.connection_limit(), 64);
    // Client connection 1's request leaves its app connection open (kept alive): the app
    // keeps reading it, and would never take client connection 2's. Hermes sees the app take
    // nothing, closes the idle connection, and from then on keeps one open at a time.
    for (seq, conn) in [(1, 1), (2, 2), (3, 3), (4, 1), (5, 3)] {
        let outcome = delivery
            .deliver(seq, (1, 1, seq), &post_on(conn, "x"))
            .await
            .unwrap();
        assert_eq!(&answered(&outcome).body[..], b"ok", "request {seq}");
    }
    assert_eq!(handle.connection_limit(), 1);
    assert_eq!(app.seen().len(), 5);
    assert_eq!(app.connections(), 5, "switched at every other client");
    // A read off the log takes its turn the same way.
    let read = handle
        .read((1, 1, 4), b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n", "GET")
        .await
        .unwrap();
    assert_eq!(&read.body[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_the_limit_the_connection_unused_the_longest_is_closed() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let handle = Arc::new(
        App::new(
            app.addr,
            std::net::Ipv4Addr::LOCALHOST,
            SECOND,
            Limits::default(),
            2,
            Arc::default(),
        )
        .switching_after(Duration::from_secs(3600)),
    );
    let mut delivery = Delivery::open(progress::file_in(dir.path()), BOOT, handle, None).unwrap();
    for (seq, conn) in [(1, 1), (2, 2), (3, 1), (4, 3), (5, 1), (6, 2)] {
        delivery
            .deliver(seq, (1, 1, seq), &post_on(conn, "x"))
            .await
            .unwrap();
    }
    // 1 and 2 open; 3 closes 2 (unused the longest); 1 is kept; 2 comes back on a new one.
    assert_eq!(app.connections(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_body_did_not_all_go_out_is_sent_again_not_counted_in_doubt() {
    // The app dies after the head of a body far larger than the socket buffers: it cannot have
    // the request, so it is sent again, and nothing is in doubt.
    let app = FakeApp::start(|n| match n {
        0 => Act::DieAfterHead,
        _ => Act::Reply(OK),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut delivery, _) = delivery(dir.path(), &app, SECOND);
    let big = "x".repeat(16 << 20);
    let outcome = delivery.deliver(1, (1, 1, 1), &post(&big)).await.unwrap();
    assert_eq!(&answered(&outcome).body[..], b"ok");
    assert_eq!(app.seen().len(), 1);
    assert_eq!(app.seen()[0].body.len(), big.len());
    assert_eq!(delivery.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sessions_rebuilt_at_start_are_those_applying_built() {
    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    // Copies of requests (7 twice in one entry, 9 in a later one, 8 below the floor by then),
    // floors that advance and one that comes late, requests of two nodes.
    let entries = vec![
        entry(1, 2, 7, [7, 8, 7]),
        entry(2, 3, 100, [100, 101]),
        entry(3, 2, 7, [9, 10]),
        entry(4, 2, 9, [9, 11, 8]),
        entry(5, 2, 8, [12]),
        entry(6, 3, 101, [101, 102]),
    ];
    log.blocking_append(entries.clone()).await.unwrap();
    machine.apply(entries).await.unwrap();
    let delivered: Vec<u64> = app.seen().iter().map(|s| s.index).collect();
    // Delivered once each: 7, 8, 100, 101, 9, 10, 11, 12, 102.
    assert_eq!(delivered, [1, 2, 4, 5, 6, 7, 9, 11, 13]);
    let live = machine.sessions().clone();
    drop(machine);
    let restarted = state_machine(dir.path(), &app, &mut log).await;
    assert_eq!(*restarted.sessions(), live);
}

/// Blank log entries `indexes` (as a leader's first entry is).
pub(super) fn blanks(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes
        .map(|index| Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_replays_the_log_from_its_last_checkpoint() {
    use openraft::storage::{RaftLogStorage as _, RaftLogStorageExt as _, RaftStateMachine as _};
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    // Request 7 of node 2 (still in flight there), then entries up to a checkpoint.
    let mut entries = vec![entry(1, 2, 7, [7])];
    entries.extend(blanks(2..=4096));
    log.blocking_append(entries.clone()).await.unwrap();
    machine.apply(entries).await.unwrap();
    drop(machine);
    // The log before the checkpoint is not read again: here it is gone.
    log.purge(LogId::new(openraft::CommittedLeaderId::new(1, 1), 4096))
        .await
        .unwrap();
    let mut restarted = state_machine(dir.path(), &app, &mut log).await;
    let late = vec![entry(4097, 2, 7, [7, 8])];
    log.blocking_append(late.clone()).await.unwrap();
    restarted.apply(late).await.unwrap();
    let seen: Vec<u64> = app.seen().iter().map(|s| s.index).collect();
    assert_eq!(seen, [1, 3], "the copy of 7 recognised, 8 delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_past_what_the_progress_says_was_applied_is_not_used() {
    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    let mut entries = vec![entry(1, 2, 7, [7]), entry(2, 2, 9, [9])];
    entries.extend(blanks(3..=4096));
    log.blocking_append(entries.clone()).await.unwrap();
    machine.apply(entries).await.unwrap();
    drop(machine);
    // The machine lost power: the progress is back at entry 1 (as its last synced record had
    // it), the checkpoint at 4096 is not.
    let (mut file, mut progress) = ProgressFile::open(progress::file_in(dir.path())).unwrap();
    progress.applied = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 1));
    (
        progress.requests,
        progress.writing,
        progress.written,
        progress.answered,
    ) = (1, 1, 1, 1);
    progress.durable_through = 1;
    file.write(&progress).unwrap();
    let mut restarted = state_machine(dir.path(), &app, &mut log).await;
    // Entry 2 is applied again: request 9 is not taken for one delivered.
    restarted.apply(vec![entry(2, 2, 9, [9])]).await.unwrap();
    let seen: Vec<u64> = app.seen().iter().map(|s| s.index).collect();
    assert_eq!(seen, [1, 2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_in_the_middle_of_an_entry_of_several_batches_delivers_the_rest() {
    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    // One entry, two batches of node 2: the later one made once request 11 was given up by its
    // client, so its floor lies above 11, which the earlier batch still carries.
    let batch = |floor, ids: &[u64]| match entry(1, 2, floor, ids.iter().copied()).payload {
        EntryPayload::Normal(proposal) => proposal.batches.into_iter().next().unwrap(),
        _ => unreachable!(),
    };
    let merged = Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(Proposal {
            batches: vec![batch(10, &[10, 11]), batch(12, &[12])],
        }),
    };
    log.blocking_append([merged.clone()]).await.unwrap();
    machine.apply([merged.clone()]).await.unwrap();
    let seen: Vec<u64> = app.seen().iter().map(|s| s.index).collect();
    assert_eq!(seen, [1, 2, 3], "every request of the entry, in order");
    drop(machine);
    // The agent stopped after the entry's first request: its progress says so.
    let (mut file, mut progress) = ProgressFile::open(progress::file_in(dir.path())).unwrap();
    progress.applied = None;
    progress.requests = 0;
    (progress.writing, progress.written, progress.answered) = (1, 1, 1);
    progress.durable_through = 1;
    file.write(&progress).unwrap();
    let mut restarted = state_machine(dir.path(), &app, &mut log).await;
    // Applied again, the entry delivers the rest: 11 is not taken for one below the later
    // batch's floor, which the apply had not reached when the agent stopped.
    restarted.apply([merged]).await.unwrap();
    let seen: Vec<u64> = app.seen().iter().map(|s| s.index).collect();
    assert_eq!(seen, [1, 2, 3, 2, 3]);
}

/// Tells the fake app to come back each time it died of a request and delivery found it down
/// (a connection refused), until `delivering` finishes; its outcome.
async fn bring_back_until_done(
    app: &FakeApp,
    app_handle: &App,
    back: &Notify,
    delivering: tokio::task::JoinHandle<(Delivery, Outcome)>,
) -> (Delivery, Outcome) {
    let bring_back = async {
        let mut crashes = 0;
        while !delivering.is_finished() {
            if app.crashes() > crashes && !app_handle.healthy() {
                crashes += 1;
                back.notify_one();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    // An upper bound for what must happen.
    tokio::time::timeout(Duration::from_secs(60), bring_back)
        .await
        .expect("delivery finishes");
    delivering.await.unwrap()
}

/// A fake app that dies (`slowly` or not: see [`Crash`]) of the requests `dies` picks by their
/// number, and answers the others; what brings it back.
async fn dying_app(
    slowly: bool,
    dies: impl Fn(usize) -> bool + Send + Sync + 'static,
) -> (FakeApp, Arc<Notify>) {
    let back = Arc::new(Notify::new());
    let crash = Crash {
        back: Arc::clone(&back),
        slowly,
    };
    let app = FakeApp::start(move |n| {
        if dies(n) {
            Act::Crash(crash.clone())
        } else {
            Act::Reply(OK)
        }
    })
    .await;
    (app, back)
}

/// Delivers request 1, `post("a")`, in a task of its own.
fn deliver_first(mut delivery: Delivery) -> tokio::task::JoinHandle<(Delivery, Outcome)> {
    tokio::spawn(async move {
        let outcome = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
        (delivery, outcome)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resend_that_reaches_a_dying_app_ends_too_and_the_app_gets_it_when_back() {
    // The app dies with request 1; the resend reaches it while it dies (its listener still
    // takes connections), and ends at once; the app is down; then it is back.
    let (app, back) = dying_app(true, |n| n == 0).await;
    let dir = tempfile::tempdir().unwrap();
    let (delivery, app_handle) = delivery(dir.path(), &app, SECOND);
    let delivering = deliver_first(delivery);
    let (delivery, outcome) = bring_back_until_done(&app, &app_handle, &back, delivering).await;
    assert_eq!(&answered(&outcome).body[..], b"ok");
    assert_eq!(app.crashes(), 1);
    assert_eq!(
        app.seen(),
        [seen(1, "a"), seen(1, "a")],
        "the app that came back ran it"
    );
    assert_eq!(delivery.progress().in_doubt, 2, "sent again twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_that_dies_of_a_request_gets_it_a_bounded_number_of_times() {
    let (app, back) = dying_app(false, |_| true).await;
    let dir = tempfile::tempdir().unwrap();
    let (delivery, app_handle) = delivery(dir.path(), &app, SECOND);
    let delivering = deliver_first(delivery);
    let (delivery, outcome) = bring_back_until_done(&app, &app_handle, &back, delivering).await;
    assert!(matches!(outcome, Outcome::Unanswered(_)), "{outcome:?}");
    let sends = super::MAX_SENDS as usize;
    assert_eq!(app.seen(), vec![seen(1, "a"); sends]);
    assert_eq!(delivery.progress().in_doubt, sends as u64 - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_that_dies_while_it_waits_to_send_again_sends_again_after_its_restart() {
    let (app, back) = dying_app(false, |n| n == 0).await;
    let dir = tempfile::tempdir().unwrap();
    let (delivery, app_handle) = delivery(dir.path(), &app, SECOND);
    let delivering = deliver_first(delivery);
    // The app died with the request, and delivery found it down: the agent dies now.
    tokio::time::timeout(Duration::from_secs(60), async {
        while app.crashes() == 0 || app_handle.healthy() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the app is seen down");
    delivering.abort();
    let _ = delivering.await;
    back.notify_one();
    let (mut delivery, _) = delivery_again(dir.path(), &app);
    let outcome = delivery.deliver(1, (1, 1, 1), &post("a")).await.unwrap();
    assert_eq!(&answered(&outcome).body[..], b"ok");
    assert_eq!(app.seen(), [seen(1, "a"), seen(1, "a")]);
    assert_eq!(delivery.progress().in_doubt, 1);
}
