//! The server side of the peer transport: serves Raft's calls and forwarded proposals, each call
//! on its own task so that a slow one does not hold up the others on the connection, and at most
//! [`CALLS_PER_CONNECTION`] at once (then the connection is read no further until one is done).
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};

use super::{
    Peers,
    wire::{self, Call, ForwardError, Reply, Target},
};
use crate::order::{
    identity::Identity,
    log_store::{self, LogStore},
    membership,
    propose::{self, Outcome},
    read,
    typ::Raft,
};

/// Calls of one connection served at once.
const CALLS_PER_CONNECTION: usize = 64;

pub struct Server {
    pub raft: Raft,
    pub log: LogStore,
    pub peers: Peers,
    pub identity: Identity,
    /// How long a forwarded proposal may wait to be committed here.
    pub forward_timeout: Duration,
}

pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    if let Err(error) = connection(stream, server).await {
                        tracing::debug!(%peer, %error, "peer connection ended");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accepting peer connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, server: Arc<Server>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut reader, writer) = stream.into_split();
    let (frames, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move { wire::write_frames(writer, &mut queue).await });
    let calls = Arc::new(Semaphore::new(CALLS_PER_CONNECTION));
    let max_frame = server.peers.max_frame();
    let mut buf = Vec::new();
    while let Some(id) = wire::read_frame(&mut reader, &mut buf, max_frame).await? {
        let call = log_store::decode::<Call>(&buf);
        let Ok(permit) = Arc::clone(&calls).acquire_owned().await else {
            break;
        };
        let (server, frames) = (Arc::clone(&server), frames.clone());
        tokio::spawn(async move {
            let reply = match call {
                Ok(call) => handle(&server, call).await,
                Err(error) => Reply::Rejected(format!("cannot decode the call: {error}")),
            };
            drop(permit);
            match wire::frame(id, &reply, max_frame) {
                Ok(frame) => {
                    let _ = frames.send(frame);
                }
                Err(error) => tracing::error!(%error, "cannot encode a reply"),
            }
        });
    }
    Ok(())
}

/// Refuses Raft calls meant for another node, or for another incarnation of this one (the node
/// this one was before its data was lost).
fn for_me(server: &Server, target: Target) -> Result<(), Reply> {
    let me = &server.identity;
    if target.id == me.node_id && target.incarnation == me.incarnation {
        return Ok(());
    }
    tracing::error!(
        ?target,
        node_id = me.node_id,
        incarnation = format!("{:016x}", me.incarnation),
        "refusing a Raft call for another node or incarnation: if this node's data was lost, \
         remove it from the cluster and join it under a new id"
    );
    Err(Reply::Rejected(format!(
        "this is node {} incarnation {:016x}, not node {} incarnation {:016x}",
        me.node_id, me.incarnation, target.id, target.incarnation
    )))
}

async fn handle(server: &Server, call: Call) -> Reply {
    let raft = &server.raft;
    match call {
        Call::AppendEntries(target, rpc) => match for_me(server, target) {
            Ok(()) => Reply::AppendEntries(raft.append_entries(rpc).await),
            Err(refused) => refused,
        },
        Call::Vote(target, rpc) => match for_me(server, target) {
            Ok(()) => Reply::Vote(raft.vote(rpc).await),
            Err(refused) => refused,
        },
        Call::InstallSnapshot(target, rpc) => match for_me(server, target) {
            Ok(()) => Reply::InstallSnapshot(raft.install_snapshot(rpc).await),
            Err(refused) => refused,
        },
        Call::Forward(batch) => {
            let leader = raft.metrics().borrow().current_leader;
            if leader != Some(server.identity.node_id) {
                return Reply::Forward(Err(ForwardError::NotLeader(leader)));
            }
            let commit = propose::commit(raft, &server.log, batch);
            Reply::Forward(
                match tokio::time::timeout(server.forward_timeout, commit).await {
                    Ok(Outcome::Committed) => Ok(()),
                    Ok(Outcome::NotLeader(leader)) => Err(ForwardError::NotLeader(leader)),
                    Ok(Outcome::Failed { .. }) => {
                        Err(ForwardError::Failed("the proposal failed".into()))
                    }
                    Err(_) => Err(ForwardError::Failed(
                        "not committed within the request timeout".into(),
                    )),
                },
            )
        }
        Call::ChangeMembership(change) => Reply::ChangeMembership(
            membership::change_on_leader(raft, &server.peers, server.identity.node_id, change)
                .await,
        ),
        Call::ReadIndex => {
            Reply::ReadIndex(read::read_index_on_leader(raft, server.identity.node_id).await)
        }
        Call::Hello => {
            let metrics = raft.metrics().borrow().clone();
            let members: BTreeMap<_, _> = metrics
                .membership_config
                .membership()
                .nodes()
                .map(|(id, member)| (*id, member.incarnation))
                .collect();
            Reply::Hello {
                node_id: server.identity.node_id,
                incarnation: server.identity.incarnation,
                initialized: raft.is_initialized().await.unwrap_or(false),
                members,
            }
        }
    }
}
