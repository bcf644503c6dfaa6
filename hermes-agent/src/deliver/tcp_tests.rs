//! Raw TCP mode's delivery rules across restarts, against an app whose state depends on how the
//! commands of its connections interleave: a chunk the app may have is never written again, a
//! connection lost with the agent is never resumed in the middle (the replica says it diverged
//! instead) and is closed everywhere once abandoned, the origin's restart closes its earlier
//! connections everywhere, and what the app sent on a connection is digested for comparison
//! between replicas.
use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;

use super::{
    App, Delivery, Outcome,
    progress::{self, ProgressFile},
    tcp::{Clients, Connections},
};
use crate::{
    data_dir::DataDir,
    deliver::{
        digests::{Digests, StreamDigest},
        state_machine::{Replica, StateMachine},
        tcp::TcpMode,
    },
    http::response::Limits,
    order::{
        log_store::LogStore,
        peer::wire::Digest,
        typ::{Batch, Command, Entry, EntryPayload, LogId, Proposal},
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
        64,
        Arc::default(),
    ));
    Delivery::open(progress::file_in(dir), 1, app, Some(connections())).unwrap()
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
    connections_for(Arc::new(Clients::default()))
}

/// Node 9's app connections, relaying to its `clients`.
fn connections_for(clients: Arc<Clients>) -> Connections {
    Connections::new(
        (9, 1),
        clients,
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
async fn after_a_restart_nothing_is_written_twice_and_a_lost_connection_is_never_resumed() {
    for begun in [false, true] {
        let app = LineApp::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut replica = delivery(dir.path(), &app);
        apply(&mut replica, 1, 7, Event::Open).await;
        apply(&mut replica, 2, 7, data("APPEND a\n")).await;
        apply(&mut replica, 3, 8, Event::Open).await;
        assert_eq!(journal_of(&app, 1).await, ["a"]);
        app.wait_open(2).await;
        let progress = replica.progress().clone();
        // The agent dies: its connections to the app go with it.
        drop(replica);
        app.wait_open(0).await;
        if begun {
            // As if it died with the first bytes of chunk 4 gone to the app.
            let (mut file, _) = ProgressFile::open(progress::file_in(dir.path())).unwrap();
            file.write(&super::Progress {
                writing: 4,
                ..progress
            })
            .unwrap();
        }
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
        // The next chunk of a lost connection would start the app's side in the middle of its
        // stream (the rest of a command, taken for commands): not written; the replica says
        // it cannot apply it as the others do.
        let outcome = apply(&mut restarted, 4, 7, data("\nAPPEND b\n")).await;
        assert!(
            matches!(&outcome, Outcome::Diverged(why) if why.contains("lost")),
            "{outcome:?}"
        );
        // Closing one changes nothing here.
        let outcome = apply(&mut restarted, 5, 8, Event::Close).await;
        assert!(matches!(outcome, Outcome::Event), "{outcome:?}");
        // Once connection 7 is abandoned (the restart ordered it), its events are ignored here
        // as everywhere.
        apply(&mut restarted, 6, 0, Event::Abandon(vec![(1, 1, 7)])).await;
        let outcome = apply(&mut restarted, 7, 7, data("APPEND late\n")).await;
        assert!(matches!(outcome, Outcome::Event), "{outcome:?}");
        // New connections are whole: applied.
        apply(&mut restarted, 8, 9, Event::Open).await;
        apply(&mut restarted, 9, 9, data("APPEND c\n")).await;
        assert_eq!(journal_of(&app, 2).await, ["a", "c"]);
        assert_eq!(app.open(), 1);
        assert_eq!(restarted.progress().in_doubt, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_connection_is_closed_and_its_client_reset() {
    use tokio::io::AsyncReadExt as _;
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Node 9's own client, on its connection 3.
    let clients = Arc::new(Clients::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    let (reader, writer) = accepted.into_split();
    let ended = clients.register(3, writer);
    let connections = connections_for(Arc::clone(&clients));
    let app_handle = Arc::new(App::new(
        app.addr,
        std::net::Ipv4Addr::LOCALHOST,
        Duration::from_secs(5),
        Limits::default(),
        64,
        Arc::default(),
    ));
    let mut replica = Delivery::open(
        progress::file_in(dir.path()),
        1,
        app_handle,
        Some(connections),
    )
    .unwrap();
    let own = Chunk::new(3, Event::Open).encode();
    replica.deliver(1, (9, 1, 1), &own).await.unwrap();
    apply(&mut replica, 2, 7, Event::Open).await;
    let half = Chunk::new(3, data("APPEND half")).encode();
    replica.deliver(3, (9, 1, 2), &half).await.unwrap();
    app.wait_open(2).await;
    // Every connection open is abandoned (a replica stops): both close, nothing of the half
    // command runs, and node 9's client is reset rather than closed.
    apply(&mut replica, 4, 0, Event::Abandon(Vec::new())).await;
    app.wait_open(0).await;
    assert_eq!(ended.await, Ok(super::tcp::End::GivenUp));
    // The interception drops its side then.
    drop(reader);
    let mut buf = [0u8; 16];
    assert!(
        client.read(&mut buf).await.is_err(),
        "reset, not a clean end"
    );
    let rest = Chunk::new(3, data(" rest\nAPPEND x\n")).encode();
    let outcome = replica.deliver(5, (9, 1, 3), &rest).await.unwrap();
    assert!(matches!(outcome, Outcome::Event), "{outcome:?}");
    apply(&mut replica, 6, 7, data("APPEND y\n")).await;
    apply(&mut replica, 7, 8, Event::Open).await;
    apply(&mut replica, 8, 8, data("APPEND z\n")).await;
    assert_eq!(journal_of(&app, 1).await, ["z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_removed_from_the_cluster_has_its_connections_closed() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replica = delivery(dir.path(), &app);
    apply(&mut replica, 1, 7, Event::Open).await;
    let other = Chunk::new(4, Event::Open).encode();
    replica.deliver(2, (2, 5, 2), &other).await.unwrap();
    app.wait_open(2).await;
    // Node 1 (incarnation 1) is no longer a member; node 2 is.
    replica.tcp_mut().unwrap().keep_members([(2, 5)].into());
    app.wait_open(1).await;
    let outcome = apply(&mut replica, 3, 7, data("APPEND late\n")).await;
    assert!(matches!(outcome, Outcome::Event), "{outcome:?}");
    let chunk = Chunk::new(4, data("APPEND kept\n")).encode();
    replica.deliver(4, (2, 5, 3), &chunk).await.unwrap();
    assert_eq!(journal_of(&app, 1).await, ["kept"]);
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
    open_state_machine(dir, app, log).await.0
}

/// [`state_machine`], with what the rest of the node sees of it.
async fn open_state_machine(
    dir: &Path,
    app: &LineApp,
    log: &mut LogStore,
) -> (StateMachine, Arc<crate::deliver::state_machine::Applied>) {
    let replica = Replica {
        node_id: 9,
        incarnation: 1,
        app: Arc::new(App::new(
            app.addr,
            std::net::Ipv4Addr::LOCALHOST,
            Duration::from_secs(5),
            Limits::default(),
            64,
            Arc::default(),
        )),
        hooks: None,
        digests: Arc::default(),
        tcp: Some(connections()),
        sync_progress: true,
    };
    let dir = DataDir::create(dir).unwrap();
    StateMachine::open(&dir, replica, log).await.unwrap()
}

/// Log entry `index`: event `event` of connection `conn` of origin 1 (incarnation 1).
fn entry(index: u64, conn: u64, event: Event) -> Entry {
    crate::testing::entry(1, index, Chunk::new(conn, event).encode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarted_after_an_origin_restarted_still_ignores_its_earlier_connections() {
    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
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
async fn connections_lost_in_a_restart_or_closed_by_a_lost_are_not_digested() {
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut replica, _) = digesting(dir.path(), &app);
    apply(&mut replica, 1, 7, Event::Open).await;
    apply(&mut replica, 2, 7, data("APPEND a\n")).await;
    journal_of(&app, 1).await;
    drop(replica);
    app.wait_open(0).await;
    let (mut restarted, digests) = digesting(dir.path(), &app);
    apply(&mut restarted, 1, 7, Event::Open).await;
    apply(&mut restarted, 2, 7, data("APPEND a\n")).await;
    // Connection 7 went with the agent: not applied here, and not compared.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_cannot_apply_the_rest_of_a_lost_connection_fences_itself() {
    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let before = vec![
        entry(1, 5, Event::Open),
        entry(2, 5, data("APPEND a\n")),
        entry(3, 6, Event::Open),
        entry(4, 6, Event::Close),
    ];
    log.blocking_append(before.clone()).await.unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    machine.apply(before).await.unwrap();
    assert_eq!(journal_of(&app, 1).await, ["a"]);
    // The agent stops; meanwhile the other replicas apply more of connection 5.
    drop(machine);
    app.wait_open(0).await;
    let later = vec![entry(5, 5, data("APPEND b\n")), entry(6, 7, Event::Open)];
    log.blocking_append(later.clone()).await.unwrap();
    let (mut restarted, applied) = open_state_machine(dir.path(), &app, &mut log).await;
    // What its restart must have abandoned: connection 5 of origin 1, open when it stopped.
    assert_eq!(restarted.broken_connections(), [(1, 1, 5)]);
    let applying = tokio::spawn(async move {
        let _ = restarted.apply(later).await;
    });
    let mut fenced = applied.fenced_subscribe();
    fenced.wait_for(|fenced| *fenced).await.unwrap();
    let why = applied.fenced_because().unwrap();
    assert!(why.contains("lost the app's connection"), "{why}");
    assert_eq!(app.journal(), ["a"], "nothing of connection 5 resumed");
    assert_eq!(app.open(), 0, "and nothing applied after it while fenced");
    applying.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_change_that_removes_a_node_closes_its_connections_everywhere() {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::storage::{RaftLogStorageExt as _, RaftStateMachine as _};

    use crate::order::typ::Member;
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    let opened = vec![entry(1, 5, Event::Open), entry(2, 5, data("APPEND a\n"))];
    log.blocking_append(opened.clone()).await.unwrap();
    machine.apply(opened).await.unwrap();
    assert_eq!(journal_of(&app, 1).await, ["a"]);
    // Node 1 (the connection's origin) is removed: it cannot order the connection's close any
    // more, so every replica closes it where the change is in the log.
    let member = |incarnation| Member {
        addr: "127.0.0.1:1".into(),
        incarnation,
    };
    let without_1 = openraft::Membership::new(
        vec![BTreeSet::from([2, 9])],
        BTreeMap::from([(2, member(5)), (9, member(1))]),
    );
    let change = Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 3),
        payload: EntryPayload::Membership(without_1),
    };
    let late = entry(4, 5, data("APPEND late\n"));
    log.blocking_append([change.clone(), late.clone()])
        .await
        .unwrap();
    machine.apply([change, late]).await.unwrap();
    app.wait_open(0).await;
    // Nor does it open any (an event of it in flight, committed after the change); node 2 does.
    let of_node_2 = Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), 6),
        payload: EntryPayload::Normal(Proposal::from(Batch {
            id: (2, 5, 6),
            floor: 0,
            commands: vec![Command {
                origin: 2,
                incarnation: 5,
                id: 6,
                payload: Chunk::new(7, Event::Open).encode(),
            }],
        })),
    };
    machine
        .apply([entry(5, 6, Event::Open), of_node_2])
        .await
        .unwrap();
    app.wait_open(1).await;
    assert_eq!(app.journal(), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connections_open_at_a_checkpoint_are_broken_after_a_restart_from_it() {
    use openraft::storage::{RaftLogStorage as _, RaftLogStorageExt as _, RaftStateMachine as _};
    let app = LineApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(&DataDir::create(dir.path()).unwrap(), 1 << 20, u64::MAX).unwrap();
    let mut machine = state_machine(dir.path(), &app, &mut log).await;
    // Connection 5 opens; origin 1 restarts (its connections below 7 go), and opens 8.
    let mut entries = vec![
        entry(1, 5, Event::Open),
        entry(2, 7, Event::Lost),
        entry(3, 8, Event::Open),
    ];
    entries.extend(super::tests::blanks(4..=4096));
    log.blocking_append(entries.clone()).await.unwrap();
    machine.apply(entries).await.unwrap();
    drop(machine);
    // The log before the checkpoint is not read again: here it is gone.
    log.purge(LogId::new(openraft::CommittedLeaderId::new(1, 1), 4096))
        .await
        .unwrap();
    let (mut restarted, applied) = open_state_machine(dir.path(), &app, &mut log).await;
    assert_eq!(restarted.broken_connections(), [(1, 1, 8)]);
    // A late event of connection 5 (gone with its origin's earlier life) is ignored; one of 8
    // is not resumed: the replica fences itself there.
    let later = vec![
        entry(4097, 5, Event::Open),
        entry(4098, 8, data("APPEND x\n")),
    ];
    log.blocking_append(later.clone()).await.unwrap();
    let applying = tokio::spawn(async move {
        let _ = restarted.apply(later).await;
    });
    let mut fenced = applied.fenced_subscribe();
    fenced.wait_for(|fenced| *fenced).await.unwrap();
    assert_eq!(app.open(), 0, "connection 5 not opened again");
    assert!(app.journal().is_empty(), "connection 8 not resumed");
    applying.abort();
}
