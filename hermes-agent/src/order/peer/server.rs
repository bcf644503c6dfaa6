//! The server side of the peer transport: serves Raft RPCs and forwarded proposals, each call on
//! its own task so that a slow one does not hold up the others on the connection.
use std::{sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::wire::{self, Call, ForwardError, Reply};
use crate::order::{
    log_store::{self, LogStore},
    membership,
    propose::{self, Outcome},
    read,
    typ::{NodeId, Raft},
};

pub struct Server {
    pub raft: Raft,
    pub log: LogStore,
    pub node_id: NodeId,
    /// How long a forwarded proposal may wait to be applied here.
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
    let mut buf = Vec::new();
    while let Some(id) = wire::read_frame(&mut reader, &mut buf).await? {
        let request = log_store::decode::<Call>(&buf);
        let (server, frames) = (Arc::clone(&server), frames.clone());
        tokio::spawn(async move {
            let response = match request {
                Ok(request) => handle(&server, request).await,
                Err(error) => Reply::Rejected(error.to_string()),
            };
            match wire::frame(id, &response) {
                Ok(frame) => {
                    let _ = frames.send(frame);
                }
                Err(error) => tracing::error!(%error, "cannot encode a response"),
            }
        });
    }
    Ok(())
}

async fn handle(server: &Server, request: Call) -> Reply {
    let raft = &server.raft;
    match request {
        Call::AppendEntries(rpc) => Reply::AppendEntries(raft.append_entries(rpc).await),
        Call::Vote(rpc) => Reply::Vote(raft.vote(rpc).await),
        Call::InstallSnapshot(rpc) => Reply::InstallSnapshot(raft.install_snapshot(rpc).await),
        Call::Forward(batch) => {
            let leader = raft.metrics().borrow().current_leader;
            if leader != Some(server.node_id) {
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
            membership::change_on_leader(raft, server.node_id, change).await,
        ),
        Call::ReadIndex => Reply::ReadIndex(read::read_index_on_leader(raft, server.node_id).await),
        Call::Hello => Reply::Hello {
            node_id: server.node_id,
            initialized: raft.is_initialized().await.unwrap_or(false),
        },
    }
}
