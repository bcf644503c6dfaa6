//! Raw TCP mode in process, on a multi-thread runtime, in front of a one-node cluster and an app
//! whose state depends on how its connections' commands interleave.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use openraft::RaftLogReader as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};

use super::tcp::{MAX_CHUNK, Tcp};
use crate::{
    deliver::tcp::TcpMode,
    node::{Node, testing::single_node},
    order::typ::EntryPayload,
    tcp::{Chunk, Event},
    testing::LineApp,
};

/// A one-node cluster in raw TCP mode in front of `app`, and where its clients connect.
async fn tcp_node(app: &LineApp, dir: &std::path::Path) -> (Arc<Node>, SocketAddr) {
    tcp_node_holding(app, dir, 64 << 20).await
}

/// [`tcp_node`], holding at most `held_per_client` bytes of the app for one slow client.
async fn tcp_node_holding(
    app: &LineApp,
    dir: &std::path::Path,
    held_per_client: u64,
) -> (Arc<Node>, SocketAddr) {
    let node = single_node(app.addr, dir, |settings| {
        settings.tcp = Some(TcpMode {
            quiet: Duration::from_millis(200),
            client_stall: Duration::from_secs(30),
            held_for_clients: 64 << 20,
            held_per_client,
        });
    })
    .await;
    let handler = Tcp {
        node: Arc::clone(&node),
        idle_timeout: Duration::from_secs(60),
        budget: Arc::new(Semaphore::new(4 * MAX_CHUNK)),
    };
    (node, super::serve_in_test(handler))
}

/// The events in the node's log, in log order, with their origin's connection id.
async fn logged(node: &Node) -> Vec<Chunk> {
    let last = node.metrics().last_log_index.unwrap_or(0);
    let mut log = node.log.clone();
    let entries = log.try_get_log_entries(1..last + 1).await.unwrap();
    entries
        .into_iter()
        .filter_map(|entry| match entry.payload {
            EntryPayload::Normal(proposal) => Some(proposal.batches),
            _ => None,
        })
        .flatten()
        .flat_map(|batch| batch.commands)
        .map(|command| Chunk::decode(&command.payload).expect("an event"))
        .collect()
}

/// The words of the `APPEND` commands in the log, in log order.
async fn appended(node: &Node) -> Vec<String> {
    logged(node)
        .await
        .into_iter()
        .filter_map(|chunk| match chunk.event {
            Event::Data(bytes) => Some(String::from_utf8(bytes.to_vec()).unwrap()),
            _ => None,
        })
        .flat_map(|text| {
            text.lines()
                .filter_map(|line| line.strip_prefix("APPEND ").map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Reads from `stream` until it has `n` lines.
async fn lines(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    while buf.iter().filter(|b| **b == b'\n').count() < n {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8(buf)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the app's journal has `n` words.
async fn journal_of(app: &LineApp, n: usize) -> Vec<String> {
    loop {
        let journal = app.journal();
        if journal.len() >= n {
            return journal;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_of_all_connections_reach_the_app_in_log_order() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = tcp_node(&app, dir.path()).await;
    const CLIENTS: usize = 6;
    const ROUNDS: usize = 20;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            for round in 0..ROUNDS {
                // Pipelined: three commands in one write, every other round.
                let words: Vec<String> = (0..if round % 2 == 0 { 3 } else { 1 })
                    .map(|i| format!("c{c}r{round}i{i}"))
                    .collect();
                let batch: String = words.iter().map(|w| format!("APPEND {w}\n")).collect();
                stream.write_all(batch.as_bytes()).await.unwrap();
                let answers = lines(&mut stream, words.len()).await;
                assert!(answers.iter().all(|a| a.starts_with("OK ")), "{answers:?}");
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let words = CLIENTS * ROUNDS * 2;
    let journal = journal_of(&app, words).await;
    // What the log says the app was given, in order (once the metrics show all of it).
    let ordered = loop {
        let ordered = appended(&node).await;
        if ordered.len() >= words {
            break ordered;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(ordered.len(), words);
    assert_eq!(
        journal, ordered,
        "the app took the commands out of log order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_close_is_passed_on_and_the_reply_still_comes_back() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = tcp_node(&app, dir.path()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"APPEND a\nAPPEND b\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "OK 1\nOK 2\nEOF 2\n");
    drop(stream);
    // The connection ends in the log with the half-close, then the close.
    let conn = loop {
        let events = logged(&node).await;
        if events.last().is_some_and(|c| c.event == Event::Close) {
            let n = events.len();
            assert_eq!(events[0].event, Event::Open, "{events:?}");
            assert_eq!(events[n - 2].event, Event::Shutdown, "{events:?}");
            assert!(
                events[1..n - 2]
                    .iter()
                    .all(|c| matches!(c.event, Event::Data(_))),
                "{events:?}"
            );
            break events[0].conn;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(logged(&node).await.iter().all(|c| c.conn == conn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_app_closing_first_closes_the_client() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = tcp_node(&app, dir.path()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"APPEND a\nQUIT\n").await.unwrap();
    let mut got = String::new();
    stream.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "OK 1\nBYE\n");
    // The client, told the app is done, closes: that is ordered, with no half-close first.
    drop(stream);
    loop {
        let events = logged(&node).await;
        if events.last().is_some_and(|c| c.event == Event::Close) {
            assert!(!events.iter().any(|c| c.event == Event::Shutdown));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binary_data_of_several_mebibytes_arrives_intact_in_bounded_chunks() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = tcp_node(&app, dir.path()).await;
    let size = 5 << 20;
    let data: Vec<u8> = (0..size).map(|i: usize| (i * 7 + i / 251) as u8).collect();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let send = async {
        writer
            .write_all(format!("ECHO {size}\n").as_bytes())
            .await
            .unwrap();
        writer.write_all(&data).await.unwrap();
    };
    let mut echoed = vec![0u8; size];
    let receive = reader.read_exact(&mut echoed);
    let ((), received) = tokio::join!(send, receive);
    received.unwrap();
    assert!(echoed == data, "the echo differs from what was sent");
    let chunks: Vec<usize> = logged(&node)
        .await
        .into_iter()
        .filter_map(|chunk| match chunk.event {
            Event::Data(bytes) => Some(bytes.len()),
            _ => None,
        })
        .collect();
    assert!(chunks.len() >= size / MAX_CHUNK, "{chunks:?}");
    assert!(chunks.iter().all(|len| *len <= MAX_CHUNK), "{chunks:?}");
    assert_eq!(
        chunks.iter().sum::<usize>(),
        size + format!("ECHO {size}\n").len()
    );
}

/// Waits until the app's journal holds `entry`, for a minute at most.
async fn journal_holds(app: &LineApp, entry: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !app.journal().iter().any(|e| e == entry) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the journal never had {entry:?}: {:?}",
            app.journal()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_does_not_read_yet_does_not_hold_its_app_back() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr) = tcp_node(&app, dir.path()).await;
    // 32 MiB: more than the sockets between the app and the client buffer.
    const SIZE: usize = 32 << 20;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(format!("BIG {SIZE}\n").as_bytes())
        .await
        .unwrap();
    // The app finishes writing its answer while the client reads none of it: the origin reads
    // the app as fast as the other replicas do, whatever its client's pace.
    journal_holds(&app, "BIG sent").await;
    // And the client, still connected, gets all of it.
    let mut answer = vec![0u8; SIZE + 1];
    client.read_exact(&mut answer).await.unwrap();
    assert!(answer[..SIZE].iter().all(|b| *b == b'x') && answer[SIZE] == b'\n');
    client.write_all(b"APPEND after\n").await.unwrap();
    assert!(lines(&mut client, 1).await[0].starts_with("OK "));
    assert_eq!(app.journal(), ["BIG sent", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_holding_more_than_the_budget_is_given_up_and_its_connection_closed() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = tcp_node_holding(&app, dir.path(), 1 << 20).await;
    const SIZE: usize = 8 << 20;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(format!("BIG {SIZE}\n").as_bytes())
        .await
        .unwrap();
    journal_holds(&app, "BIG sent").await;
    // Given up: the client's connection is reset (not closed: it must not take what it got
    // for all of the answer), and its `Close` is ordered, which closes the app's connection.
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match slow.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => got += n,
            Err(error) => break Err(error.kind()),
        }
    };
    assert_eq!(ended, Err(std::io::ErrorKind::ConnectionReset));
    assert!(got < SIZE, "the slow client got all {got} bytes");
    app.wait_open(0).await;
    assert!(
        logged(&node)
            .await
            .iter()
            .any(|chunk| chunk.event == Event::Close),
        "no Close ordered"
    );
    // Others are served as before.
    let mut other = TcpStream::connect(addr).await.unwrap();
    other.write_all(b"APPEND next\n").await.unwrap();
    assert!(lines(&mut other, 1).await[0].starts_with("OK "));
    assert_eq!(app.journal(), ["BIG sent", "next"]);
}
