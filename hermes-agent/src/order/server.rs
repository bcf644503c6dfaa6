//! The server side of the peer transport: serves Raft RPCs and forwarded proposals, each call on
//! its own task so that a slow one does not hold up the others on the connection.
use std::{sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::{
    log_store::{self, LogStore},
    propose::{self, Outcome},
    typ::{NodeId, Raft},
    wire::{self, ForwardError, Request, Response},
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
        let request = log_store::decode::<Request>(&buf);
        let (server, frames) = (Arc::clone(&server), frames.clone());
        tokio::spawn(async move {
            let response = match request {
                Ok(request) => handle(&server, request).await,
                Err(error) => Response::Rejected(error.to_string()),
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

async fn handle(server: &Server, request: Request) -> Response {
    let raft = &server.raft;
    match request {
        Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
        Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
        Request::InstallSnapshot(rpc) => {
            Response::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        Request::Forward(batch) => {
            let leader = raft.metrics().borrow().current_leader;
            if leader != Some(server.node_id) {
                return Response::Forward(Err(ForwardError::NotLeader(leader)));
            }
            let commit = propose::commit(raft, &server.log, batch);
            Response::Forward(
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
        Request::ChangeMembership(change) => Response::ChangeMembership(
            super::membership::change_on_leader(raft, server.node_id, change).await,
        ),
        Request::ReadIndex => {
            Response::ReadIndex(super::read::read_index_on_leader(raft, server.node_id).await)
        }
        Request::Hello => Response::Hello {
            node_id: server.node_id,
            initialized: raft.is_initialized().await.unwrap_or(false),
        },
    }
}
