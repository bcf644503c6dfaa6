//! Peer authentication in process, against a one-node cluster with TLS: peers without a
//! certificate of the CA, or whose certificate names another node than the one their calls
//! claim, or that are not members, are refused, and nothing they send is ordered; certificates
//! and CA rotate without a restart; connections that do not complete their handshake, or that
//! come beyond the cap, are closed.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use hermes_lab::certs::{Authority, NodeFiles};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{Node, testing::single_node};
use crate::{
    deliver::divergence::Answering,
    order::{
        elect::Elector,
        log_store,
        peer::{
            Peers, server,
            tls::{Files, PeerTls, Security},
            wire::{self, Call, ForwardError, Reply, Target},
        },
        propose::Merger,
        typ::{Batch, Command},
    },
    testing::{Act, FakeApp, OK},
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
    forward_as(from, 1)
}

/// A batch node `from` forwards, of its incarnation `incarnation`.
fn forward_as(from: u64, incarnation: u64) -> Call {
    Call::Forward(Batch {
        id: (from, incarnation, 1),
        floor: 0,
        commands: vec![Command {
            origin: from,
            incarnation,
            id: 1,
            payload: crate::http::ordered::Ordered {
                conn: 1,
                request: bytes::Bytes::from_static(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"),
            }
            .to_payload(),
        }],
    })
}

const WAIT: Duration = Duration::from_secs(5);
/// An upper bound for what must happen, never a window for what must not.
const LONG: Duration = Duration::from_secs(60);

/// A peer server for `node`, as the node's own is.
fn server_for(node: &Node) -> server::Server {
    server::Server {
        raft: node.raft.clone(),
        answers: Arc::new(Answering {
            applied: Arc::clone(&node.applied),
            divergence: Arc::clone(&node.divergence),
        }),
        merger: Merger::start(node.raft.clone(), node.log.clone()),
        elections: Arc::new(Elector::new(node.log.clone())),
        peers: node.peers().clone(),
        identity: node.identity,
        forward_timeout: WAIT,
        handshake_timeout: server::HANDSHAKE_TIMEOUT,
        max_handshakes: server::MAX_HANDSHAKES,
        max_connections: server::MAX_CONNECTIONS,
    }
}

/// Serves `server` on a listener of its own; where it listens.
async fn serve(server: server::Server) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(listener, Arc::new(server)));
    addr
}

/// Whether the server closed `stream` (without a byte), waiting as long as it takes.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(LONG, stream.read(&mut byte)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

/// Says hello as node 2 over TLS on `stream`, a connection to node 1's peer port.
async fn hello_on(stream: TcpStream, two: &NodeFiles) -> std::io::Result<Reply> {
    hello_held(stream, two).await.map(|(_, reply)| reply)
}

/// [`hello_on`], and the connection, kept open until what is returned with the answer drops.
async fn hello_held(
    stream: TcpStream,
    two: &NodeFiles,
) -> std::io::Result<(Box<dyn std::any::Any + Send>, Reply)> {
    let tls = PeerTls::load(files(two)).unwrap();
    let stream = tls.connect(stream, 1).await?;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let frame = wire::frame(1, &(2u64, Call::Hello), 1 << 20)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    let mut buf = Vec::new();
    wire::read_frame(&mut reader, &mut buf, 1 << 20)
        .await?
        .ok_or(std::io::ErrorKind::UnexpectedEof)?;
    Ok((Box::new((reader, writer)), log_store::decode(&buf)?))
}

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

    // Node 1 itself, for an incarnation it is not (one before its data was lost): refused.
    let one = PeerTls::load(Files {
        cert: dir.path().join("certs").join("node-1.pem"),
        key: dir.path().join("certs").join("node-1-key.pem"),
        ca: dir.path().join("certs").join("ca.pem"),
    })
    .unwrap();
    let itself = Peers::new(1, 1 << 20, Security::Tls(one));
    let other_life = node.identity.incarnation.wrapping_add(1);
    let refused = itself
        .get(1, &at)
        .call(&forward_as(1, other_life), WAIT)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Reply::Rejected(why) if why.contains("another incarnation")),
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
    // Counted by the server once its side of each handshake ends, which may be after the
    // client's (the bound only turns a miscount into a failure, not a hang).
    let Security::Tls(tls) = node.peer_security() else {
        panic!("TLS expected")
    };
    let counted = async {
        while tls.handshake_failures() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), counted)
        .await
        .expect("the failed handshakes are counted");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_that_never_complete_a_handshake_are_closed() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (node, _ca, two) = secured(dir.path(), &app).await;
    let at = serve(server::Server {
        handshake_timeout: Duration::from_millis(200),
        ..server_for(&node)
    })
    .await;
    // Connections that send nothing, and one that stops in the middle of its hello.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(at).await.unwrap());
    }
    let mut halfway = TcpStream::connect(at).await.unwrap();
    halfway
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    silent.push(halfway);
    for stream in &mut silent {
        assert!(closed_by_server(stream).await, "closed after the timeout");
    }
    // A peer that completes its handshake is served as before.
    let stream = TcpStream::connect(at).await.unwrap();
    let hello = hello_on(stream, &two).await.unwrap();
    assert!(
        matches!(hello, Reply::Hello { node_id: 1, .. }),
        "{hello:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_in_their_handshake_cannot_keep_a_peer_out_and_peers_are_capped() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (node, _ca, two) = secured(dir.path(), &app).await;
    // No handshake timeout to speak of: only the caps close connections here.
    let at = serve(server::Server {
        handshake_timeout: Duration::from_secs(3600),
        max_handshakes: 2,
        max_connections: 1,
        ..server_for(&node)
    })
    .await;
    // Strangers that connect and send nothing: beyond two, the oldest is closed.
    let mut first = TcpStream::connect(at).await.unwrap();
    let _second = TcpStream::connect(at).await.unwrap();
    let _third = TcpStream::connect(at).await.unwrap();
    assert!(
        closed_by_server(&mut first).await,
        "the oldest handshake closed"
    );
    // A peer still gets in (its handshake pushes the next oldest stranger out), and is served.
    let peer = TcpStream::connect(at).await.unwrap();
    let (held, hello) = hello_held(peer, &two).await.unwrap();
    assert!(
        matches!(hello, Reply::Hello { node_id: 1, .. }),
        "{hello:?}"
    );
    // One authenticated connection at most: a second is closed once it is through.
    assert!(
        hello_on(TcpStream::connect(at).await.unwrap(), &two)
            .await
            .is_err(),
        "beyond the cap"
    );
    drop(held);
    // Once it is gone, a new connection takes its slot.
    let served = tokio::time::timeout(LONG, async {
        loop {
            let stream = TcpStream::connect(at).await.unwrap();
            if let Ok(hello) = hello_on(stream, &two).await {
                break hello;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a slot is given back");
    assert!(
        matches!(served, Reply::Hello { node_id: 1, .. }),
        "{served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_that_times_out_leaves_no_watch_behind() {
    let app = FakeApp::start(|_| Act::Reply(OK)).await;
    let dir = tempfile::tempdir().unwrap();
    let (node, _ca, _) = secured(dir.path(), &app).await;
    let at = serve(server::Server {
        forward_timeout: Duration::from_millis(200),
        ..server_for(&node)
    })
    .await;
    // Node 1 itself forwards (a member may), with its own certificate.
    let certs = dir.path().join("certs");
    let one = Files {
        cert: certs.join("node-1.pem"),
        key: certs.join("node-1-key.pem"),
        ca: certs.join("ca.pem"),
    };
    let forwarder = Peers::new(1, 1 << 20, Security::Tls(PeerTls::load(one).unwrap()));

    // The leader's Raft is held busy: nothing it is asked to propose can be committed until it
    // is let go.
    let (frozen, is_frozen) = tokio::sync::oneshot::channel();
    let (thaw, thawed) = std::sync::mpsc::channel::<()>();
    node.raft.external_request(move |_| {
        let _ = frozen.send(());
        let _ = thawed.recv();
    });
    is_frozen.await.unwrap();
    let reply = forwarder
        .get(1, &at.to_string())
        .call(&forward_as(1, node.identity.incarnation), WAIT)
        .await
        .unwrap();
    assert!(
        matches!(&reply, Reply::Forward(Err(ForwardError::Failed(why))) if why.contains("not committed")),
        "{reply:?}"
    );
    thaw.send(()).unwrap();
    // Let go, the leader commits it after all (the forwarder was told the outcome is unknown),
    // and its watch goes with the entry.
    tokio::time::timeout(LONG, app.wait_seen(1)).await.unwrap();
    assert_eq!(node.log.watching(), 0);
}
