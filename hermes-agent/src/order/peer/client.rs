//! The client side of the peer transport: one persistent connection per peer, shared by Raft
//! replication and proposal forwarding, with calls pipelined on it. Each call carries this
//! node's id, which the peer checks against this node's certificate.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
};

use super::{
    tls::Security,
    warnings::Warnings,
    wire::{self, Call, Reply},
};
use crate::order::{log_store, typ::NodeId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection on which calls have waited this long with nothing coming is closed when one
/// times out, and the next call opens a new one: after a spell of packet loss, TCP's
/// retransmission backoff can keep an old one silent for many seconds after the network is
/// well again.
const SILENT: Duration = Duration::from_secs(1);

/// Why a call got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// Sent, but the connection failed before the reply.
    #[error("connection to {0} lost")]
    Lost(String),
    #[error("no reply from {0} within {1:?}")]
    Timeout(String, Duration),
    /// Nothing was sent: the call does not fit in a frame.
    #[error("{0}")]
    TooLarge(std::io::Error),
    #[error("{0}")]
    Encode(std::io::Error),
}

impl CallError {
    /// Whether the peer may have received the call.
    pub fn maybe_sent(&self) -> bool {
        matches!(self, Self::Lost(_) | Self::Timeout(..))
    }
}

/// Turns a peer address that is not `HOST:PORT` into one to dial (pod mode names members by
/// their pods, whose addresses change when they are rescheduled); `None`: it cannot be reached.
#[derive(Clone)]
pub struct Resolve(pub Arc<ResolveFn>);

pub type ResolveFn = dyn Fn(&str) -> Option<String> + Send + Sync;

impl std::fmt::Debug for Resolve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolve")
    }
}

/// A peer as connections know it: its node id and its address.
type PeerKey = (NodeId, String);

/// Connections to peers, by node and address.
#[derive(Clone)]
pub struct Peers {
    peers: Arc<Mutex<HashMap<PeerKey, Arc<Peer>>>>,
    /// This node.
    me: NodeId,
    /// Largest frame sent or accepted.
    max_frame: usize,
    security: Security,
    resolve: Option<Resolve>,
    calls: Arc<Calls>,
}

/// Calls of this node's peer transport, for the metrics.
#[derive(Debug, Default)]
pub struct Calls {
    /// AppendEntries sent, received.
    pub append_entries: [AtomicU64; 2],
    /// Forwarded batches sent, received.
    pub forwards: [AtomicU64; 2],
}

/// Where a call went, for [`Calls`].
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    Sent = 0,
    Received = 1,
}

impl Calls {
    pub fn count(counter: &[AtomicU64; 2], direction: Direction) {
        counter[direction as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(counter: &[AtomicU64; 2]) -> [u64; 2] {
        counter.each_ref().map(|n| n.load(Ordering::Relaxed))
    }
}

impl Peers {
    pub fn new(me: NodeId, max_frame: usize, security: Security) -> Self {
        Self {
            peers: Arc::default(),
            me,
            max_frame,
            security,
            resolve: None,
            calls: Arc::default(),
        }
    }

    /// Peers whose addresses go through `resolve` before they are dialled.
    pub fn resolving(mut self, resolve: Option<Resolve>) -> Self {
        self.resolve = resolve;
        self
    }

    /// Node `id`, reached at `addr`.
    pub fn get(&self, id: NodeId, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap();
        let key = (id, addr.to_owned());
        Arc::clone(peers.entry(key).or_insert_with(|| {
            Arc::new(Peer {
                id,
                addr: addr.to_owned(),
                me: self.me,
                max_frame: self.max_frame,
                security: self.security.clone(),
                resolve: self.resolve.clone(),
                connection: tokio::sync::Mutex::default(),
                unreachable: Warnings::default(),
            })
        }))
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// What this node's peer transport counted.
    pub fn calls(&self) -> &Arc<Calls> {
        &self.calls
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// Closes every connection: the next calls open new ones (with new certificates).
    pub fn reset(&self) {
        for peer in self.peers.lock().unwrap().values() {
            if let Ok(slot) = peer.connection.try_lock()
                && let Some(connection) = slot.as_ref()
            {
                connection.close();
            }
        }
    }
}

pub struct Peer {
    id: NodeId,
    addr: String,
    me: NodeId,
    max_frame: usize,
    security: Security,
    resolve: Option<Resolve>,
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    unreachable: Warnings,
}

struct Connection {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    calls: Mutex<Waiting>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Tells its reading and writing tasks to end (which closes the stream).
    stop: watch::Sender<bool>,
}

/// The calls waiting for their reply on a connection.
#[derive(Default)]
struct Waiting {
    calls: HashMap<u64, oneshot::Sender<Vec<u8>>>,
    /// When the first call since the last frame was sent (`None`: none since): nothing came
    /// after it.
    since: Option<Instant>,
}

impl Waiting {
    fn insert(&mut self, id: u64, reply: oneshot::Sender<Vec<u8>>) {
        self.since.get_or_insert_with(Instant::now);
        self.calls.insert(id, reply);
    }

    /// Takes call `id`'s reply slot as its frame came.
    fn answered(&mut self, id: u64) -> Option<oneshot::Sender<Vec<u8>>> {
        let call = self.calls.remove(&id);
        self.since = (!self.calls.is_empty()).then(Instant::now);
        call
    }

    /// Forgets call `id` (its caller stopped waiting).
    fn forget(&mut self, id: u64) {
        self.calls.remove(&id);
    }

    /// How long calls were sent with nothing coming.
    fn silent_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |since| since.elapsed())
    }
}

impl Connection {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders fails every waiting call.
        *self.calls.lock().unwrap() = Waiting::default();
        self.stop.send_replace(true);
    }

    /// Resolves once the connection is closed.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stop = self.stop.subscribe();
        async move {
            let _ = stop.wait_for(|stop| *stop).await;
        }
    }
}

/// Removes a call's entry if the caller stops waiting.
struct CallGuard<'a>(&'a Connection, u64);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.calls.lock().unwrap().forget(self.1);
    }
}

impl Peer {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `call` and waits up to `timeout` for the reply.
    pub async fn call(&self, call: &Call, timeout: Duration) -> Result<Reply, CallError> {
        let connection = self.connection().await?;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::frame(id, &(self.me, call), self.max_frame).map_err(|e| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                CallError::TooLarge(e)
            } else {
                CallError::Encode(e)
            }
        })?;
        let (tx, rx) = oneshot::channel();
        connection.calls.lock().unwrap().insert(id, tx);
        let _guard = CallGuard(&connection, id);
        // Closed meanwhile (after it dropped the waiting calls): no reply can come.
        if connection.closed.load(Ordering::Acquire) || connection.frames.send(frame).is_err() {
            connection.close();
            return Err(CallError::Lost(self.addr.clone()));
        }
        let body = match tokio::time::timeout(timeout, rx).await {
            Ok(body) => body.map_err(|_| CallError::Lost(self.addr.clone()))?,
            Err(_) => {
                if connection.calls.lock().unwrap().silent_for() >= SILENT {
                    tracing::debug!(
                        peer = self.id,
                        addr = %self.addr,
                        "calls waited on the connection a while with nothing coming: opening a \
                         new one"
                    );
                    connection.close();
                }
                return Err(CallError::Timeout(self.addr.clone(), timeout));
            }
        };
        log_store::decode(&body).map_err(|_| CallError::Lost(self.addr.clone()))
    }

    async fn connection(&self) -> Result<Arc<Connection>, CallError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref().filter(|c| !c.closed.load(Ordering::Acquire)) {
            return Ok(Arc::clone(connection));
        }
        let connect_error = |e| CallError::Connect(self.addr.clone(), e);
        let dial = match &self.resolve {
            Some(resolve) => (resolve.0)(&self.addr).ok_or_else(|| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address known for it",
                ))
            })?,
            None => self.addr.clone(),
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let stream = TcpStream::connect(&dial).await?;
            stream.set_nodelay(true)?;
            match &self.security {
                Security::Tls(tls) => tls.connect(stream, self.id).await,
                Security::Insecure => Ok(Box::new(stream) as Box<dyn super::tls::Io>),
            }
        })
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
        let stream = match stream {
            Ok(stream) => {
                let failures = self.unreachable.succeeded();
                if failures > 0 {
                    tracing::info!(peer = self.id, addr = %self.addr, failures, "peer reached again");
                }
                stream
            }
            Err(error) => {
                if let Some(failures) = self.unreachable.failed(Instant::now()) {
                    tracing::warn!(
                        peer = self.id,
                        addr = %self.addr,
                        %error,
                        failures,
                        "cannot reach peer (failures counts the tries since the last such warning)"
                    );
                }
                return Err(connect_error(error));
            }
        };
        let (mut reader, writer) = tokio::io::split(stream);
        let (frames, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let connection = Arc::new(Connection {
            frames,
            calls: Mutex::default(),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            stop: watch::Sender::new(false),
        });
        let for_writer = Arc::clone(&connection);
        let stopped = connection.stopped();
        tokio::spawn(async move {
            tokio::select! {
                _ = wire::write_frames(writer, &mut queue) => {}
                () = stopped => {}
            }
            for_writer.close();
        });
        let for_reader = Arc::clone(&connection);
        let max_frame = self.max_frame;
        let addr = self.addr.clone();
        let stopped = connection.stopped();
        tokio::spawn(async move {
            let read = async {
                let mut buf = Vec::new();
                loop {
                    match wire::read_frame(&mut reader, &mut buf, max_frame).await {
                        Ok(Some(id)) => {
                            if let Some(call) = for_reader.calls.lock().unwrap().answered(id) {
                                let _ = call.send(std::mem::take(&mut buf));
                            }
                        }
                        Ok(None) => break,
                        Err(error) => {
                            tracing::debug!(peer = %addr, %error, "peer connection failed");
                            break;
                        }
                    }
                }
            };
            tokio::select! {
                () = read => {}
                () = stopped => {}
            }
            for_reader.close();
        });
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};

    use super::*;

    /// A peer that answers, then falls silent (its connections stay open): calls time out, and
    /// once calls went unanswered for [`SILENT`], the connection is given up for a new one; a
    /// connection merely idle that long is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_silent_for_long_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicU64::new(0));
        let mute = Arc::new(AtomicBool::new(false));
        let (counted, muted) = (Arc::clone(&accepted), Arc::clone(&mute));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let muted = Arc::clone(&muted);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Ok(Some(id)) = wire::read_frame(&mut stream, &mut buf, 1 << 20).await
                    {
                        if !muted.load(Ordering::SeqCst) {
                            let reply = wire::frame(id, &Reply::Rejected("no".into()), 1 << 20);
                            stream.write_all(&reply.unwrap()).await.unwrap();
                        }
                    }
                    // Kept open, silent, as a connection in retransmission backoff is.
                    std::future::pending::<()>().await;
                });
            }
        });
        let peers = Peers::new(1, 1 << 20, Security::Insecure);
        let peer = peers.get(2, &addr);
        let call = Call::Compare { from: 1 };
        let short = Duration::from_millis(50);
        assert!(matches!(
            peer.call(&call, short).await,
            Ok(Reply::Rejected(_))
        ));
        tokio::time::sleep(SILENT).await;
        mute.store(true, Ordering::SeqCst);
        let started = Instant::now();
        while started.elapsed() < SILENT {
            let error = peer.call(&call, short).await.unwrap_err();
            assert!(matches!(error, CallError::Timeout(..)), "{error}");
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                1,
                "idle, then silent briefly"
            );
        }
        let _ = peer.call(&call, short).await;
        let _ = peer.call(&call, short).await;
        // The peer counts it once it takes it (an upper bound, never a window).
        let counted = tokio::time::timeout(Duration::from_secs(10), async {
            while accepted.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        counted.await.expect("a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "one new connection");
    }
}
