//! Raw TCP mode's delivery rules across restarts, against an app whose state depends on how the
//! commands of its connections interleave: a chunk the app may have is never written again,
//! connections lost with the agent are opened again for their next event, the origin's
//! restart closes its earlier connections everywhere, and what the app sent on a connection is
//! digested for comparison between replicas.
use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;

use super::{
    App, Delivery, Outcome,
    progress::ProgressFile,
    tcp::{Clients, Connections},
};
use crate::{
    http::response::Limits,
    order::{
        TcpMode,
        digests::{Digest, Digests, StreamDigest},
        log_store::LogStore,
        state_machine::{Replica, StateMachine},
        typ::{Batch, Command, Entry, EntryPayload, LogId},
    },
    tcp::{Chunk, Event},
    testing::LineApp,
};

/// A replica's delivery in raw TCP mode (node 9), its progress in `dir`.
fn delivery(dir: &Path, app: &LineApp) -> Delivery {
    let app = Arc::new(App::new(
        app.addr,
        std::net::Ipv4Addr::LOCALHOST,
        Duration::from_secs(5),
        Limits::default(),
        Arc::default(),
    ));
    Delivery::open(&dir.join("progress"), app, Some(connections())).unwrap()
}

/// A replica's delivery in raw TCP mode (node 9), its progress in `dir`, with `--digest bytes`:
/// its digests are kept in what it returns.
fn digesting(dir: &Path, app: &LineApp) -> (Delivery, Arc<Digests>) {
    let mut delivery = delivery(dir, app);
    let digests = Arc::new(Digests::new(Digest::Bytes));
    delivery
        .tcp_mut()
        .unwrap()
        .digest_into(Arc::clone(&digests));
    (delivery, digests)
}

/// Node 9's app connections.
fn connections() -> Connections {
    Connections::new(
        (9, 1),
        Arc::new(Clients::default()),
        TcpMode {
            quiet: Duration::from_millis(200),
            client_stall: Duration::from_secs(5),
            held_for_clients: 1 << 20,
            held_per_client: 1 << 20,
        },
    )
}

/// Event `event` of connection `conn` of origin 1 (incarnation 1), as command `id`.
async fn apply(delivery: &mut Delivery, seq: u64, conn: u64, event: Event) -> Outcome {
    let payload = Chunk::new(conn, event).encode();
    delivery.deliver(seq, (1, 1, seq), &payload).await.unwrap()
}

fn data(text: &'static str) -> Event {
    Event::Data(Bytes::from_static(text.as_bytes()))
}

async fn journal_of(app: &LineApp, n: usize) -> Vec<String> {
    while app.journal().len() < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.journal()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restart_nothing_is_written_twice_and_lost_connections_are_opened_again() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replica = delivery(dir.path(), &app);
    apply(&mut replica, 1, 7, Event::Open).await;
    apply(&mut replica, 2, 7, data("APPEND a\n")).await;
    apply(&mut replica, 3, 8, Event::Open).await;
    assert_eq!(journal_of(&app, 1).await, ["a"]);
    app.wait_open(2).await;
    // The agent dies: its connections to the app go with it.
    drop(replica);
    app.wait_open(0).await;
    let mut restarted = delivery(dir.path(), &app);
    // Raft replays what it had not recorded as applied: nothing of it is written again.
    for (seq, conn, event) in [
        (1, 7, Event::Open),
        (2, 7, data("APPEND a\n")),
        (3, 8, Event::Open),
    ] {
        let outcome = apply(&mut restarted, seq, conn, event).await;
        assert!(matches!(outcome, Outcome::Earlier), "{seq}: {outcome:?}");
    }
    assert_eq!(app.open(), 0);
    // The next chunk of a lost connection goes to a new one.
    apply(&mut restarted, 4, 7, data("APPEND b\n")).await;
    apply(&mut restarted, 5, 8, data("APPEND c\n")).await;
    assert_eq!(journal_of(&app, 3).await, ["a", "b", "c"]);
    assert_eq!(app.open(), 2);
    assert_eq!(restarted.progress().in_doubt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_begun_when_the_agent_died_is_in_doubt_and_not_written_again() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replica = delivery(dir.path(), &app);
    apply(&mut replica, 1, 7, Event::Open).await;
    apply(&mut replica, 2, 7, data("APPEND a\n")).await;
    let progress = replica.progress().clone();
    drop(replica);
    // As if the agent died with the first bytes of chunk 3 gone to the app.
    let (mut file, _) = ProgressFile::open(&dir.path().join("progress")).unwrap();
    file.write(&super::Progress {
        writing: 3,
        ..progress
    })
    .unwrap();
    let mut restarted = delivery(dir.path(), &app);
    let outcome = apply(&mut restarted, 3, 7, data("APPEND maybe\n")).await;
    assert!(matches!(outcome, Outcome::Event), "{outcome:?}");
    assert_eq!(restarted.progress().in_doubt, 1);
    apply(&mut restarted, 4, 7, data("APPEND b\n")).await;
    assert_eq!(journal_of(&app, 2).await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_origin_restarting_closes_its_earlier_connections_for_good() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replica = delivery(dir.path(), &app);
    let (old, new) = (5, 1 << 40);
    apply(&mut replica, 1, old, Event::Open).await;
    apply(&mut replica, 2, old + 1, Event::Open).await;
    apply(&mut replica, 3, new, Event::Open).await;
    app.wait_open(3).await;
    // Origin 1 restarted: its connections below `new` went with it.
    apply(&mut replica, 4, new, Event::Lost).await;
    app.wait_open(1).await;
    // A late event of an earlier connection opens nothing.
    apply(&mut replica, 5, old, data("APPEND late\n")).await;
    apply(&mut replica, 6, new, data("APPEND now\n")).await;
    assert_eq!(journal_of(&app, 1).await, ["now"]);
    assert_eq!(app.open(), 1);
}

/// Node 9's state machine in raw TCP mode, kept in `dir`, in front of `app`.
async fn state_machine(dir: &Path, app: &LineApp, log: &mut LogStore) -> StateMachine {
    let replica = Replica {
        node_id: 9,
        incarnation: 1,
        app: Arc::new(App::new(
            app.addr,
            std::net::Ipv4Addr::LOCALHOST,
            Duration::from_secs(5),
            Limits::default(),
            Arc::default(),
        )),
        hooks: None,
        digests: Arc::default(),
        tcp: Some(connections()),
    };
    StateMachine::open(dir, replica, log).await.unwrap().0
}

/// Log entry `index`: event `event` of connection `conn` of origin 1 (incarnation 1).
fn entry(index: u64, conn: u64, event: Event) -> Entry {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch {
            id: (1, 1, index),
            commands: vec![Command {
                origin: 1,
                incarnation: 1,
                id: index,
                payload: Chunk::new(conn, event).encode(),
            }],
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarted_after_an_origin_restarted_still_ignores_its_earlier_connections() {
    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&dir.path().join("log.redb"), 1 << 20).unwrap();
    // Origin 1 opened connection 5, then restarted: its connections below 10 are gone.
    let before = vec![entry(1, 5, Event::Open), entry(2, 10, Event::Lost)];
    log.blocking_append(before.clone()).await.unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    machine.apply(before).await.unwrap();
    app.wait_open(0).await;
    // This replica restarts; then a late event of connection 5 (a forward of the origin's
    // earlier life, committed after its `Lost`) is applied, here as on the replicas that
    // did not restart: ignored.
    drop(machine);
    let late = entry(3, 5, data("APPEND late\n"));
    log.blocking_append([late.clone()]).await.unwrap();
    let mut restarted = state_machine(dir.path(), &app, &mut log).await;
    restarted
        .apply([late, entry(4, 11, Event::Open)])
        .await
        .unwrap();
    app.wait_open(1).await;
    assert_eq!(app.journal(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_delivered_just_before_a_crash_still_counts_after_it() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replica = delivery(dir.path(), &app);
    apply(&mut replica, 1, 5, Event::Open).await;
    app.wait_open(1).await;
    // Origin 1 restarted; this replica applies its `Lost`, then dies before the entry holding
    // it is finished: the log scan at start does not see it.
    apply(&mut replica, 2, 10, Event::Lost).await;
    drop(replica);
    app.wait_open(0).await;
    let mut restarted = delivery(dir.path(), &app);
    let outcome = apply(&mut restarted, 2, 10, Event::Lost).await;
    assert!(matches!(outcome, Outcome::Earlier), "{outcome:?}");
    // A late event of connection 5 is ignored, as on every other replica.
    apply(&mut restarted, 3, 5, data("APPEND late\n")).await;
    apply(&mut restarted, 4, 11, Event::Open).await;
    apply(&mut restarted, 5, 11, data("APPEND now\n")).await;
    assert_eq!(journal_of(&app, 1).await, ["now"]);
    assert_eq!(app.open(), 1);
}

/// The digests kept once every one up to `seq` has come (or will not): events up to `seq`
/// were applied.
async fn settled(digests: &Digests, seq: u64) -> Vec<(u64, u64)> {
    digests.handled(seq);
    let settled = async {
        loop {
            let report = digests.report(0, usize::MAX);
            if report.settled >= seq {
                return report.digests;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .expect("the digests of closed connections come, or are given up")
}

fn stream(bytes: &[u8]) -> u64 {
    let mut digest = StreamDigest::default();
    digest.update(bytes);
    digest.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_digest_what_their_apps_sent_on_each_connection_and_one_that_answered_otherwise_differs()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    for n in 0..3 {
        let app = LineApp::start().await;
        if n == 2 {
            // This replica's app had a word the others did not: its answers count one more.
            let mut stray = tokio::net::TcpStream::connect(app.addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stray, b"APPEND stray\n")
                .await
                .unwrap();
            journal_of(&app, 1).await;
        }
        let dir = dir.path().join(n.to_string());
        std::fs::create_dir(&dir).unwrap();
        let (delivery, digests) = digesting(&dir, &app);
        replicas.push((app, delivery, digests));
    }
    let mut kept = Vec::new();
    for (_, delivery, digests) in &mut replicas {
        apply(delivery, 1, 7, Event::Open).await;
        apply(delivery, 2, 7, data("APPEND a\n")).await;
        apply(delivery, 3, 8, Event::Open).await;
        // The app's answer to it comes after the close: it is part of the digest.
        apply(delivery, 4, 7, Event::Close).await;
        // The app closes first; the connection's digest waits for its `Close`.
        apply(delivery, 5, 8, data("APPEND b\nQUIT\n")).await;
        apply(delivery, 6, 8, Event::Close).await;
        kept.push(settled(digests, 6).await);
    }
    assert_eq!(
        kept[0],
        [(4, stream(b"OK 1\nEOF 1\n")), (6, stream(b"OK 2\nBYE\n"))]
    );
    assert_eq!(kept[1], kept[0]);
    assert_eq!(
        kept[2],
        [(4, stream(b"OK 2\nEOF 1\n")), (6, stream(b"OK 3\nBYE\n"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_reopened_after_a_restart_or_closed_by_a_lost_are_not_digested() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut replica, _) = digesting(dir.path(), &app);
    apply(&mut replica, 1, 7, Event::Open).await;
    apply(&mut replica, 2, 7, data("APPEND a\n")).await;
    journal_of(&app, 1).await;
    drop(replica);
    app.wait_open(0).await;
    let (mut restarted, digests) = digesting(dir.path(), &app);
    // Connection 7 is opened anew: its app sends "OK 2" and "EOF 1" here, "OK 1", "OK 2" and
    // "EOF 2" on replicas that kept it. Not compared.
    apply(&mut restarted, 3, 7, data("APPEND b\n")).await;
    apply(&mut restarted, 4, 7, Event::Close).await;
    apply(&mut restarted, 5, 8, Event::Open).await;
    apply(&mut restarted, 6, 8, Event::Close).await;
    // Connection 20 goes with its origin's earlier life: one `Lost` closes it, and maybe
    // others. Not compared.
    apply(&mut restarted, 7, 20, Event::Open).await;
    apply(&mut restarted, 8, 20, data("APPEND c\n")).await;
    apply(&mut restarted, 9, 30, Event::Lost).await;
    apply(&mut restarted, 10, 30, Event::Open).await;
    apply(&mut restarted, 11, 30, Event::Close).await;
    assert_eq!(
        settled(&digests, 11).await,
        [(6, stream(b"EOF 0\n")), (11, stream(b"EOF 0\n"))]
    );
}
