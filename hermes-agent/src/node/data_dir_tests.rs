//! A node whose data directory holds, or later gains, symbolic links at every name it reads or
//! writes, each pointing outside the directory (as a pod can plant them in its own volume):
//! nothing outside changes, and the node refuses, saying which file and why.
use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;

use super::{
    Node, Settings, Snapshots,
    testing::{single_node, single_node_settings},
};
use crate::{
    http::ordered::Ordered,
    order::typ::Member,
    testing::{Act, FakeApp, OK},
};

/// Every name a node reads or writes in its data directory (pod mode's `group` is
/// `kube::member`'s, tested there).
const NAMES: &[&str] = &[
    "identity",
    "identity.tmp",
    "boot",
    "boot.tmp",
    "raft.log",
    "raft.log.tmp",
    "raft.lock",
    // The log of an older Hermes, looked for at start.
    "log.redb",
    "progress",
    // The progress file of an older Hermes, looked for at start.
    "applied",
    "membership",
    "membership.tmp",
    "snapshot",
    "snapshot.tmp",
    // A copy offered to fenced replicas to heal from.
    "snapshot-offered",
    "snapshot-offered.tmp",
    "app-state",
];

const REFUSED: &str = "is a symbolic link; refusing to follow it";

/// Settings with snapshot hooks (only taken when asked for).
fn settings(app: &FakeApp, data: &Path) -> Settings {
    let mut settings = single_node_settings(app.addr, data);
    with_hooks(&mut settings);
    settings
}

fn with_hooks(settings: &mut Settings) {
    settings.snapshots = Some(Snapshots {
        snapshot_cmd: "printf 'the app state' > \"$HERMES_SNAPSHOT\"".into(),
        restore_cmd: "true".into(),
        every: 1 << 40,
        keep: 1000,
    });
}

/// A request as the log carries it, from one client connection.
fn post(body: &str) -> Bytes {
    let request = format!(
        "POST /log HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Ordered {
        conn: 1,
        request: request.into(),
    }
    .to_payload()
}

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Replaces whatever is at `name` in `data` with a link to `target`.
fn plant(data: &Path, name: &str, target: &Path) {
    match std::fs::remove_file(data.join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{name}: {e}"),
        _ => {}
    }
    symlink(target, data.join(name)).unwrap();
}

/// Starting a node on `settings` fails; why.
async fn refused_start(settings: Settings, case: &str) -> String {
    match Node::start(settings).await {
        Ok(_) => panic!("{case}: the node started"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_at_any_name_makes_start_refuse() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    // A data directory in use: a node delivered there, took a snapshot, and stopped.
    let used = tempfile::tempdir().unwrap();
    let node = single_node(app.addr, used.path(), with_hooks).await;
    node.submit(post("kept")).await.unwrap();
    node.raft.trigger().snapshot().await.unwrap();
    node.raft
        .metrics()
        .wait_for(|m| m.snapshot.is_some())
        .await
        .unwrap();
    node.raft.shutdown().await.unwrap();
    let used_files = files(used.path());

    for name in NAMES {
        for in_use in [false, true] {
            // To a file outside, or to where one would be made.
            for dangling in [false, true] {
                let root = tempfile::tempdir().unwrap();
                let (data, outside) = (root.path().join("data"), root.path().join("outside"));
                std::fs::create_dir_all(&data).unwrap();
                std::fs::create_dir_all(&outside).unwrap();
                std::fs::write(outside.join("target"), b"a host file").unwrap();
                if in_use {
                    for (path, bytes) in &used_files {
                        std::fs::write(data.join(path.file_name().unwrap()), bytes).unwrap();
                    }
                }
                let target = outside.join(if dangling { "new" } else { "target" });
                plant(&data, name, &target);
                let before = files(&outside);

                let case = format!("{name} (in use: {in_use}, dangling: {dangling})");
                let error = refused_start(settings(&app, &data), &case).await;
                assert!(
                    error.contains(&format!("`{name}` {REFUSED}")),
                    "{case}: {error}"
                );
                assert_eq!(files(&outside), before, "{case}");
            }
        }
    }
}

/// What makes the running node write a file it has not opened yet.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// A membership change: `membership` is replaced.
    Membership,
    /// A snapshot, with the hooks: `app-state` is removed and read, `snapshot` replaced.
    Snapshot,
}

async fn links_planted_while_running(then: Then) {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let root = tempfile::tempdir().unwrap();
    let (data, outside) = (root.path().join("data"), root.path().join("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    let node = single_node(app.addr, &data, with_hooks).await;
    node.submit(post("before")).await.unwrap();

    // The volume gains a link at every name, each to a file of its own outside.
    for name in NAMES {
        let target = outside.join(name);
        std::fs::write(&target, format!("the host's {name}")).unwrap();
        plant(&data, name, &target);
    }
    let before = files(&outside);

    // Requests are still delivered: the log and the progress are the files the node opened
    // before the links came, not what the names point to now.
    for i in 0..5 {
        let answer = node.submit(post(&format!("after {i}"))).await.unwrap();
        assert_eq!(&answer.body[..], b"ok");
    }
    assert_eq!(app.seen().len(), 6);
    assert_eq!(files(&outside), before, "{then:?}: delivering");

    let name = match then {
        Then::Membership => {
            let learner = Member {
                addr: "127.0.0.1:9".into(),
                incarnation: 2,
            };
            if let Ok(added) = node.raft.add_learner(2, learner, false).await {
                panic!("the membership changed through the links: {added:?}");
            }
            "membership.tmp"
        }
        Then::Snapshot => {
            node.raft.trigger().snapshot().await.unwrap();
            // The hooks' file is a link: the snapshot hook fails (the app counts as unhealthy),
            // again and again, until the link goes.
            while node.applied.app().healthy() {
                let metrics = node.raft.metrics().borrow().clone();
                assert!(
                    metrics.snapshot.is_none() && metrics.running_state.is_ok(),
                    "the snapshot hook went through the link: {metrics:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(files(&outside), before, "{then:?}: capturing");
            std::fs::remove_file(data.join("app-state")).unwrap();
            "snapshot.tmp"
        }
    };
    // The node stops, saying why (rather than writing what it was writing).
    let metrics = node
        .raft
        .metrics()
        .wait_for(|m| m.running_state.is_err() || m.snapshot.is_some())
        .await
        .unwrap()
        .clone();
    let stopped = match metrics.running_state {
        Err(fatal) => fatal.to_string(),
        Ok(()) => panic!("{then:?}: the node wrote through the links: {metrics:?}"),
    };
    assert!(
        stopped.contains(&format!("`{name}` {REFUSED}")),
        "{then:?}: {stopped}"
    );
    assert_eq!(files(&outside), before, "{then:?}: {stopped}");

    // And it does not start again.
    let error = refused_start(settings(&app, &data), &format!("{then:?}")).await;
    assert!(error.contains(REFUSED), "{then:?}: {error}");
    assert_eq!(files(&outside), before, "{then:?}: restarting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_planted_while_running_are_not_followed_by_a_membership_change() {
    links_planted_while_running(Then::Membership).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_planted_while_running_are_not_followed_by_a_snapshot() {
    links_planted_while_running(Then::Snapshot).await;
}
