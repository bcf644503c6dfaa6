//! Peer authentication in process, against a one-node cluster with TLS: peers without a
//! certificate of the CA, or whose certificate names another node than the one their calls
//! claim, or that are not members, are refused, and nothing they send is ordered; certificates
//! and CA rotate without a restart.
use std::{sync::Arc, time::Duration};

use hermes_lab::certs::{Authority, NodeFiles};

use super::{
    Peers,
    tls::{Files, PeerTls, Security},
    wire::{Call, Reply, Target},
};
use crate::{
    order::{
        Node,
        typ::{Batch, Command},
    },
    testing::{Act, FakeApp, OK, single_node},
};

fn files(node: &NodeFiles) -> Files {
    Files {
        cert: node.cert.clone(),
        key: node.key.clone(),
        ca: node.ca.clone(),
    }
}

/// A client speaking as node `me` with `node`'s certificate.
fn peers(me: u64, node: &NodeFiles) -> Peers {
    let tls = PeerTls::load(files(node)).unwrap();
    Peers::new(me, 1 << 20, Security::Tls(tls))
}

/// A node 1 with TLS from a fresh CA; the CA, and node 2's files from it.
async fn secured(dir: &std::path::Path, app: &FakeApp) -> (Arc<Node>, Authority, NodeFiles) {
    let ca = Authority::new("test ca").unwrap();
    let written = ca.write(&dir.join("certs"), &[1, 2]).unwrap();
    let node_one = files(&written[0]);
    let node = single_node(app.addr, &dir.join("data"), |s| {
        s.peer_tls = Some(node_one);
    })
    .await;
    (node, ca, written[1].clone())
}

fn addr(node: &Node) -> String {
    node.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&1)
        .unwrap()
        .addr
        .clone()
}

fn forward(from: u64) -> Call {
    Call::Forward(Batch {
        id: (from, 1, 1),
        floor: 0,
        commands: vec![Command {
            origin: from,
            incarnation: 1,
            id: 1,
            payload: bytes::Bytes::from_static(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"),
        }],
    })
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_authenticated_members_speaking_for_themselves_are_heard() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (node, ca, two) = secured(dir.path(), &app).await;
    let at = addr(&node);

    // A peer with a certificate of the CA may say hello, but is no member: it may not forward
    // requests, nor vote.
    let member_not = peers(2, &two);
    let hello = member_not
        .get(1, &at)
        .call(&Call::Hello, WAIT)
        .await
        .unwrap();
    assert!(
        matches!(hello, Reply::Hello { node_id: 1, .. }),
        "{hello:?}"
    );
    let refused = member_not
        .get(1, &at)
        .call(&forward(2), WAIT)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Reply::Rejected(why) if why.contains("not a member")),
        "{refused:?}"
    );
    let target = Target {
        id: 1,
        incarnation: node.identity.incarnation,
    };
    let vote = Call::Vote(
        target,
        openraft::raft::VoteRequest::new(openraft::Vote::new(99, 2), None),
    );
    let refused = member_not.get(1, &at).call(&vote, WAIT).await.unwrap();
    assert!(matches!(&refused, Reply::Rejected(_)), "{refused:?}");

    // Node 2's certificate speaking for node 1 (the member): refused.
    let spoofing = peers(1, &two);
    let refused = spoofing.get(1, &at).call(&forward(1), WAIT).await.unwrap();
    assert!(
        matches!(&refused, Reply::Rejected(why) if why.contains("does not name node 1")),
        "{refused:?}"
    );

    // A certificate from another CA, and no TLS at all: no connection.
    let other = Authority::new("another ca")
        .unwrap()
        .write(&dir.path().join("other"), &[1])
        .unwrap();
    let stranger = peers(1, &other[0]);
    assert!(stranger.get(1, &at).call(&Call::Hello, WAIT).await.is_err());
    let plain = Peers::new(1, 1 << 20, Security::Insecure);
    assert!(plain.get(1, &at).call(&Call::Hello, WAIT).await.is_err());
    // A server whose certificate names another node than the one dialled: refused by the
    // client.
    let confused = peers(2, &two);
    assert!(confused.get(3, &at).call(&Call::Hello, WAIT).await.is_err());

    // Nothing of it was ordered, no term moved.
    assert_eq!(node.applied.requests(), 0);
    assert!(node.metrics().current_term < 99);
    assert!(app.seen().is_empty());
    match node.peer_security() {
        Security::Tls(tls) => assert!(tls.handshake_failures() >= 2),
        Security::Insecure => panic!("TLS expected"),
    }
    drop(ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_and_the_ca_rotate_without_a_restart() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (node, old_ca, two) = secured(dir.path(), &app).await;
    let at = addr(&node);
    let Security::Tls(tls) = node.peer_security().clone() else {
        panic!("TLS expected")
    };
    let before = peers(2, &two);
    assert!(before.get(1, &at).call(&Call::Hello, WAIT).await.is_ok());

    // A new CA: node 1's files are replaced in place (certificate, key, CA).
    let new_ca = Authority::new("new ca").unwrap();
    let renewed = new_ca.write(&dir.path().join("renewed"), &[1, 2]).unwrap();
    let one = &renewed[0];
    let certs = dir.path().join("certs");
    std::fs::copy(&one.cert, certs.join("node-1.pem")).unwrap();
    std::fs::copy(&one.key, certs.join("node-1-key.pem")).unwrap();
    std::fs::copy(&one.ca, certs.join("ca.pem")).unwrap();
    // Not a timing window: wait as long as it takes for the reload.
    while tls.generation() == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old credentials no longer get in, on the connection they had or a new one; the new
    // ones do.
    assert!(before.get(1, &at).call(&Call::Hello, WAIT).await.is_err());
    assert!(
        peers(2, &two)
            .get(1, &at)
            .call(&Call::Hello, WAIT)
            .await
            .is_err()
    );
    let after = peers(2, &renewed[1]);
    assert!(matches!(
        after.get(1, &at).call(&Call::Hello, WAIT).await,
        Ok(Reply::Hello { node_id: 1, .. })
    ));
    drop(old_ca);
}
