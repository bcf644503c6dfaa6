//! The client side of the peer transport: one persistent connection per peer, shared by Raft
//! replication and proposal forwarding, with calls pipelined on it.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use openraft::{
    RaftNetwork, RaftNetworkFactory,
    error::{NetworkError, RPCError, RemoteError, Unreachable},
    network::RPCOption,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use super::wire::{self, Call, Reply};
use crate::order::{
    log_store,
    typ::{NodeId, TypeConfig, rpc},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call got no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// Sent, but the connection failed before the response.
    #[error("connection to {0} lost")]
    Lost(String),
    #[error("no response from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}")]
    Encode(std::io::Error),
}

impl CallError {
    /// Whether the peer may have received the request.
    pub fn maybe_sent(&self) -> bool {
        matches!(self, Self::Lost(_) | Self::Timeout(..))
    }
}

/// Connections to peers by address.
#[derive(Clone, Default)]
pub struct Peers {
    peers: Arc<Mutex<HashMap<String, Arc<Peer>>>>,
}

impl Peers {
    pub fn get(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap();
        Arc::clone(peers.entry(addr.to_owned()).or_insert_with(|| {
            Arc::new(Peer {
                addr: addr.to_owned(),
                connection: tokio::sync::Mutex::default(),
            })
        }))
    }
}

pub struct Peer {
    addr: String,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

struct Connection {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    calls: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
}

impl Connection {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders fails every waiting call.
        self.calls.lock().unwrap().clear();
    }
}

/// Removes a call's entry if the caller stops waiting.
struct CallGuard<'a>(&'a Connection, u64);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.calls.lock().unwrap().remove(&self.1);
    }
}

impl Peer {
    /// Sends `request` and waits up to `timeout` for the response.
    pub async fn call(&self, request: &Call, timeout: Duration) -> Result<Reply, CallError> {
        let connection = self.connection().await?;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::frame(id, request).map_err(CallError::Encode)?;
        let (tx, rx) = oneshot::channel();
        connection.calls.lock().unwrap().insert(id, tx);
        let _guard = CallGuard(&connection, id);
        if connection.frames.send(frame).is_err() {
            connection.close();
            return Err(CallError::Lost(self.addr.clone()));
        }
        let body = tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| CallError::Timeout(self.addr.clone(), timeout))?
            .map_err(|_| CallError::Lost(self.addr.clone()))?;
        log_store::decode(&body).map_err(|_| CallError::Lost(self.addr.clone()))
    }

    async fn connection(&self) -> Result<Arc<Connection>, CallError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.closed.load(Ordering::Acquire)) {
            return Ok(Arc::clone(connection));
        }
        let connect_error = |e| CallError::Connect(self.addr.clone(), e);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let (mut reader, writer) = stream.into_split();
        let (frames, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let connection = Arc::new(Connection {
            frames,
            calls: Mutex::default(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        let for_writer = Arc::clone(&connection);
        tokio::spawn(async move {
            let _ = wire::write_frames(writer, &mut queue).await;
            for_writer.close();
        });
        let for_reader = Arc::clone(&connection);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(Some(id)) = wire::read_frame(&mut reader, &mut buf).await {
                if let Some(call) = for_reader.calls.lock().unwrap().remove(&id) {
                    let _ = call.send(std::mem::take(&mut buf));
                }
            }
            for_reader.close();
        });
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }
}

/// openraft's view of the network.
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &openraft::BasicNode) -> PeerNetwork {
        PeerNetwork {
            target,
            peer: self.peers.get(&node.addr),
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    peer: Arc<Peer>,
}

impl PeerNetwork {
    async fn call<E: std::error::Error>(
        &self,
        request: Call,
        option: &RPCOption,
    ) -> Result<Reply, rpc::RpcError<E>> {
        self.peer
            .call(&request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Connect(..) | CallError::Lost(_) => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                CallError::Timeout(..) | CallError::Encode(_) => {
                    RPCError::Network(NetworkError::new(&e))
                }
            })
    }

    fn unexpected<E: std::error::Error>(&self, response: &Reply) -> rpc::RpcError<E> {
        let error = std::io::Error::other(format!(
            "unexpected response from node {}: {response:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&error))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: rpc::AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<rpc::AppendEntriesResponse, rpc::RpcError> {
        match self.call(Call::AppendEntries(rpc), &option).await? {
            Reply::AppendEntries(result) => {
                result.map_err(|e| RemoteError::new(self.target, e).into())
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: rpc::InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<rpc::InstallSnapshotResponse, rpc::RpcError<rpc::InstallSnapshotError>> {
        match self.call(Call::InstallSnapshot(rpc), &option).await? {
            Reply::InstallSnapshot(result) => {
                result.map_err(|e| RemoteError::new(self.target, e).into())
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: rpc::VoteRequest,
        option: RPCOption,
    ) -> Result<rpc::VoteResponse, rpc::RpcError> {
        match self.call(Call::Vote(rpc), &option).await? {
            Reply::Vote(result) => result.map_err(|e| RemoteError::new(self.target, e).into()),
            other => Err(self.unexpected(&other)),
        }
    }
}
