//! Raw TCP mode's side of the app: every replica keeps, per client connection, a connection to
//! its app, and applies the connection's events to it in log order ([`crate::tcp`]): connect,
//! write, shut down for writing, close.
//!
//! What comes back from the app is read as it comes, on every replica alike, whatever the
//! client's pace: on the connection's origin it goes on to the client (copied once, and held
//! within a byte budget shared by all connections until the client has taken it); elsewhere it
//! is read and dropped. A client that lets its share grow past the
//! budget, or takes nothing for a while, is given up: its connection is closed, and the
//! interception orders its `Close`. (If the origin read the app only as fast as its client
//! reads, the origin's app would process that connection's next commands later than the other
//! replicas' apps do.) When the app closes its side, the client's side is closed too.
//!
//! With `--digest bytes`, every replica digests what its app sends on a connection, from its
//! open until the app closes it; once the connection's `Close` is applied too, the digest is
//! kept under that event's sequence number, for comparison with the other replicas
//! ([`super::digests`]). A connection this replica reopened after a restart, closed by
//! its origin's `Lost`, reset by the app, or that the app did not close within [`LINGER`] of its
//! `Close` has no digest here: it is not compared.
//!
//! Across connections, what an app does depends on when it reads each: after writing a chunk,
//! half-closing or closing a connection, the next event of *another* connection waits until the
//! app has reacted (its reply has begun, or it closed the connection), or until
//! [`Connections::quiet`] has passed without that. Request/response servers (Redis,
//! memcached, most RPC) answer a request once they have processed it, so every replica processes
//! the requests of all connections in log order. What this cannot make identical is documented
//! in `docs/tcp.md`.
//!
//! A replica whose agent stopped lost its app connections with it (the kernel closed them); the
//! other replicas still have theirs. A replica never writes a suffix of a connection's stream
//! (a fresh connection that starts inside a message would have the app parse the rest of it
//! as messages of their own: a value holding a command runs it). So at start, the connections
//! the log had open when the agent stopped are *broken* here: the agent orders an
//! [`Event::Abandon`] of them, which closes them on every replica at one point of the log (their
//! clients are reset). An event of a broken connection that comes before that point is not
//! applied here: a close or half-close changes nothing, but bytes the others' apps received
//! and this one's did not may make them differ, so this replica fences itself
//! ([`Applied::Broken`]). A planned stop orders an `Abandon` of every open connection and
//! applies it before the agent exits, so that nothing is broken when it is back. The first
//! event after the agent starts waits the quiet time: the app may still be busy with a chunk
//! written just before the agent stopped.
//!
//! When a membership change removes a node, every replica closes that node's connections at
//! that point of the log, and ignores its events from there on: it can order none of them
//! (their closes included).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Buf as _, Bytes};
use tokio::{
    io::AsyncWriteExt,
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch},
    task::JoinHandle,
    time::{Instant, sleep_until},
};

use super::{
    App,
    digests::{Digests, StreamDigest},
};
use crate::{
    order::{
        peer::wire::Digest,
        typ::{ConnKey, NodeId},
    },
    tcp::Event,
};

/// Bytes read from the app at once.
const BUFFER: usize = 64 * 1024;
/// How long the app's bytes are still read after a connection is closed (its answer to the
/// last chunk, until the app closes too), before the reading stops.
const LINGER: Duration = Duration::from_secs(5);

/// How raw TCP mode applies connection events.
#[derive(Clone, Copy, Debug)]
pub struct TcpMode {
    /// After a chunk, how long another connection's event waits at most for the app's reply.
    pub quiet: Duration,
    /// How long a client may take to accept the app's bytes before it is given up.
    pub client_stall: Duration,
    /// Bytes of the app's replies held, over all connections, for clients that have not taken
    /// them yet; a client that would hold more is given up.
    pub held_for_clients: u64,
    /// The same, for one client.
    pub held_per_client: u64,
}

/// The client ends of this node's connections, waiting for their `Open` to be applied here.
#[derive(Debug, Default)]
pub struct Clients {
    waiting: Mutex<HashMap<u64, ClientEnd>>,
}

/// Where the app's bytes for a client go.
#[derive(Debug)]
struct ClientEnd {
    writer: OwnedWriteHalf,
    /// Told how the client's side ended, or dropped when the connection is closed for another
    /// reason.
    ended: oneshot::Sender<End>,
}

/// How the app's side of a client's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The app closed its side, and the client's was closed after the app's last byte.
    AppClosed,
    /// The client did not take the app's bytes (see the module's documentation), or its
    /// connection was abandoned: it is given up (reset).
    GivenUp,
}

impl Clients {
    /// Hands over the client's writing side for connection `conn`, before its `Open` is
    /// proposed. The receiver resolves once the app's side is done.
    pub fn register(&self, conn: u64, writer: OwnedWriteHalf) -> oneshot::Receiver<End> {
        let (ended, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap()
            .insert(conn, ClientEnd { writer, ended });
        receiver
    }

    /// Withdraws connection `conn`'s client, if its `Open` was not applied yet.
    pub fn forget(&self, conn: u64) {
        self.waiting.lock().unwrap().remove(&conn);
    }

    fn take(&self, conn: u64) -> Option<ClientEnd> {
        self.waiting.lock().unwrap().remove(&conn)
    }
}

/// The app connections of one replica, and the events applied to them.
pub struct Connections {
    /// This node and its incarnation: connections it is the origin of are relayed.
    me: (NodeId, u64),
    clients: Arc<Clients>,
    /// After a chunk, how long another connection's event waits at most for the reply.
    quiet: Duration,
    /// What slow clients may make this node hold.
    hold: Hold,
    /// Where the digests of what the app sent on each connection go; `None`: not digested.
    digests: Option<Arc<Digests>>,
    open: HashMap<ConnKey, AppConn>,
    /// Connections open in the log whose app connection this replica lost when its agent
    /// stopped (see the module's documentation).
    broken: HashSet<ConnKey>,
    /// Per origin and incarnation: connections with ids below this went with an earlier life
    /// of the origin ([`Event::Lost`]).
    lost_below: HashMap<(NodeId, u64), u64>,
    /// The nodes in the cluster (node, incarnation), as the last membership applied says;
    /// `None` before one is known. The events of other nodes are ignored.
    members: Option<HashSet<(NodeId, u64)>>,
    /// The last event applied, for the wait before another connection's event.
    last: Option<Written>,
    /// Nothing was applied since the agent started: the app may still be busy with a chunk an
    /// earlier life of the agent wrote, on a connection that went with it.
    fresh: bool,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.open.len())
            .field("broken", &self.broken.len())
            .finish_non_exhaustive()
    }
}

struct AppConn {
    writer: OwnedWriteHalf,
    /// Bytes the app has sent on it so far.
    received: watch::Receiver<u64>,
    relay: JoinHandle<()>,
    /// Tells the relay to give its client up (reset it).
    abandon: Option<oneshot::Sender<()>>,
    /// Where the digest of all the app sent on it goes, and the digest, once the app has
    /// closed it; `None`: not digested.
    digest: Option<(Arc<Digests>, oneshot::Receiver<u64>)>,
}

impl AppConn {
    /// Closes the app's connection for writing; what the app still sends is read for a while
    /// yet (its answer to the last chunk may come after the close). The digest of all it sent
    /// is kept under `seq`, the event that closed it (`None`: not kept).
    fn close(self, seq: Option<u64>) {
        drop(self.writer);
        let mut relay = self.relay;
        let keep = seq.zip(self.digest).map(|(seq, (digests, digest))| {
            digests.expect(seq);
            (seq, digests, digest)
        });
        tokio::spawn(async move {
            let until = Instant::now() + LINGER;
            if let Some((seq, digests, digest)) = keep {
                match tokio::time::timeout_at(until, digest).await {
                    Ok(Ok(digest)) => digests.record(seq, digest),
                    _ => digests.forgo(seq),
                }
            }
            if tokio::time::timeout_at(until, &mut relay).await.is_err() {
                relay.abort();
            }
        });
    }
}

/// An event applied to the app's connection (a chunk written, a half-close or a close).
struct Written {
    conn: ConnKey,
    /// Bytes received on its connection: before the event was applied, and from then on (the
    /// sender is dropped when the app closes the connection).
    mark: u64,
    received: watch::Receiver<u64>,
    at: Instant,
}

impl AppConn {
    /// Closes it and resets its client (if this node has it): what the client got is not all
    /// there would have been.
    fn abandon(mut self) {
        // The relay may have ended already (the app closed): then there is no client to reset.
        if let Some(abandon) = self.abandon.take() {
            let _ = abandon.send(());
        }
        self.close(None);
    }
}

/// What a checkpoint keeps of the connections ([`Connections::kept`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    open: Vec<ConnKey>,
    lost_below: Vec<((NodeId, u64), u64)>,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// As the event says.
    Done,
    /// Nothing: the connection is closed, or its origin's earlier life ended.
    Ignored,
    /// Not applied: the connection is broken here (its app connection was lost when the agent
    /// stopped), and the event, of this kind, carries bytes the other replicas' apps got.
    Broken(&'static str),
}

impl Connections {
    pub fn new(me: (NodeId, u64), clients: Arc<Clients>, mode: TcpMode) -> Self {
        Self {
            me,
            clients,
            quiet: mode.quiet,
            hold: Hold {
                stall: mode.client_stall,
                budget: crate::byte_budget(mode.held_for_clients),
                per_client: usize::try_from(mode.held_per_client).unwrap_or(usize::MAX),
            },
            digests: None,
            open: HashMap::new(),
            broken: HashSet::new(),
            lost_below: HashMap::new(),
            members: None,
            last: None,
            fresh: true,
        }
    }

    /// Applies `event` (sequence number `seq`) of connection `conn` to the app. `writing` is
    /// called right before the first byte of a chunk goes to the app; its error (the progress
    /// file's) is returned.
    pub async fn apply(
        &mut self,
        app: &App,
        seq: u64,
        conn: ConnKey,
        event: Event,
        writing: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<Applied> {
        let kind = event.kind();
        let applied = self.apply_event(app, seq, conn, event, writing).await?;
        let kind = match applied {
            Applied::Done => kind,
            Applied::Ignored => "ignored",
            Applied::Broken(_) => "broken",
        };
        app.telemetry().tcp_event(kind, self.open.len());
        Ok(applied)
    }

    /// Keeps the digests of what the app sends on each connection in `digests`, if they cover
    /// bytes (`--digest bytes`).
    pub fn digest_into(&mut self, digests: Arc<Digests>) {
        self.digests = (digests.what() == Digest::Bytes).then_some(digests);
    }

    /// Takes note of `event` of connection `conn`, applied before this start (the log up to
    /// where delivery had come, read at start, then the events re-applied since): what it opened
    /// is broken here now, what it closed is gone.
    pub fn replayed(&mut self, conn: ConnKey, event: &Event) {
        match event {
            Event::Open => {
                if !self.gone(conn) {
                    self.broken.insert(conn);
                }
            }
            Event::Close => {
                self.broken.remove(&conn);
            }
            Event::Lost => self.lose(conn),
            Event::Abandon(conns) if conns.is_empty() => self.broken.clear(),
            Event::Abandon(conns) => {
                for conn in conns {
                    self.broken.remove(conn);
                }
            }
            Event::Data(_) | Event::Shutdown => {}
        }
    }

    /// What a checkpoint keeps of the connections: those open in the log (open or broken
    /// here), and the origins' restarts.
    pub fn kept(&self) -> Kept {
        let mut open: Vec<ConnKey> = self.open.keys().chain(&self.broken).copied().collect();
        open.sort_unstable();
        let mut lost_below: Vec<((NodeId, u64), u64)> =
            self.lost_below.iter().map(|(k, v)| (*k, *v)).collect();
        lost_below.sort_unstable();
        Kept { open, lost_below }
    }

    /// Starts from what a checkpoint kept: the connections open then are broken here now (the
    /// agent stopped since).
    pub fn restore(&mut self, kept: Kept) {
        self.broken = kept.open.into_iter().collect();
        self.lost_below = kept.lost_below.into_iter().collect();
    }

    /// The connections broken here, of other origins than this node (its own are closed by the
    /// `Lost` its restart orders): what this replica's restart must have abandoned.
    pub fn broken(&self) -> Vec<ConnKey> {
        let mut broken: Vec<ConnKey> = self
            .broken
            .iter()
            .filter(|&&(origin, incarnation, _)| (origin, incarnation) != self.me)
            .copied()
            .collect();
        broken.sort_unstable();
        broken
    }

    /// Takes note of the nodes in the cluster (node, incarnation), on a membership change:
    /// the connections of others are closed (they can order no more events of them), and their
    /// events ignored from now on (one in flight may still be committed).
    pub fn keep_members(&mut self, members: HashSet<(NodeId, u64)>) {
        let gone: Vec<ConnKey> = self
            .open
            .keys()
            .chain(&self.broken)
            .filter(|&&(origin, incarnation, _)| !members.contains(&(origin, incarnation)))
            .copied()
            .collect();
        self.members = Some(members);
        if !gone.is_empty() {
            tracing::info!(
                closed = gone.len(),
                "connections of nodes removed from the cluster are closed"
            );
        }
        for conn in gone {
            self.broken.remove(&conn);
            if let Some(open) = self.open.remove(&conn) {
                open.abandon();
            }
        }
    }

    /// Whether connection `conn` went with an earlier life of its origin.
    fn gone(&self, (origin, incarnation, id): ConnKey) -> bool {
        self.lost_below
            .get(&(origin, incarnation))
            .is_some_and(|below| id < *below)
    }

    /// Takes note of an origin's restart (`Lost`): its connections below `id` are gone.
    fn lose(&mut self, (origin, incarnation, id): ConnKey) {
        let below = self.lost_below.entry((origin, incarnation)).or_default();
        *below = (*below).max(id);
        self.broken
            .retain(|&(o, i, c)| !(o == origin && i == incarnation && c < id));
    }

    async fn apply_event(
        &mut self,
        app: &App,
        seq: u64,
        conn: ConnKey,
        event: Event,
        writing: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<Applied> {
        if std::mem::take(&mut self.fresh) {
            tokio::time::sleep(self.quiet).await;
        }
        if let Some(last) = self.last.take_if(|last| last.conn != conn) {
            self.settle(last).await;
        }
        let (origin, incarnation, id) = conn;
        if self
            .members
            .as_ref()
            .is_some_and(|members| !members.contains(&(origin, incarnation)))
        {
            return Ok(Applied::Ignored);
        }
        match &event {
            Event::Lost => {
                // `id` is the first connection id of the origin's new life.
                self.lose(conn);
                let ended: Vec<ConnKey> = self
                    .open
                    .keys()
                    .filter(|&&(o, i, c)| o == origin && i == incarnation && c < id)
                    .copied()
                    .collect();
                tracing::info!(
                    origin,
                    closed = ended.len(),
                    "the origin restarted: its earlier connections are closed"
                );
                for conn in ended {
                    if let Some(open) = self.open.remove(&conn) {
                        // Not digested: one event closes them all.
                        open.close(None);
                    }
                }
                return Ok(Applied::Done);
            }
            Event::Abandon(conns) => {
                let conns: Vec<ConnKey> = if conns.is_empty() {
                    self.open.keys().chain(&self.broken).copied().collect()
                } else {
                    conns.clone()
                };
                tracing::info!(
                    from = origin,
                    closed = conns.len(),
                    "connections abandoned (a replica restarted or stops): closed, their \
                     clients reset"
                );
                for conn in conns {
                    self.broken.remove(&conn);
                    if let Some(open) = self.open.remove(&conn) {
                        open.abandon();
                    }
                }
                return Ok(Applied::Done);
            }
            Event::Open => {
                if self.gone(conn) || self.open.contains_key(&conn) || self.broken.contains(&conn) {
                    return Ok(Applied::Ignored);
                }
                self.connect(app, conn).await;
                return Ok(Applied::Done);
            }
            Event::Data(_) | Event::Shutdown | Event::Close => {}
        }
        if self.broken.contains(&conn) {
            // The app's side of it ended when the agent stopped: a close or a half-close adds
            // nothing to that; bytes do.
            return Ok(match event {
                Event::Close => {
                    self.broken.remove(&conn);
                    Applied::Ignored
                }
                Event::Shutdown => Applied::Ignored,
                _ => Applied::Broken(event.kind()),
            });
        }
        if !self.open.contains_key(&conn) {
            return Ok(Applied::Ignored);
        }
        match event {
            Event::Data(bytes) => self.write(app, conn, &bytes, writing).await?,
            Event::Shutdown => {
                if let Some(open) = self.open.get_mut(&conn) {
                    let mark = *open.received.borrow();
                    let _ = open.writer.shutdown().await;
                    self.last = Some(Written::after(conn, mark, &open.received));
                }
            }
            Event::Close => {
                if let Some(open) = self.open.remove(&conn) {
                    // What the app does when a connection ends (a lock released, a blocked
                    // command given up) may matter to other connections: wait for it as for a
                    // reply.
                    let mark = *open.received.borrow();
                    self.last = Some(Written::after(conn, mark, &open.received));
                    open.close(Some(seq));
                }
            }
            Event::Open | Event::Lost | Event::Abandon(_) => unreachable!("handled above"),
        }
        Ok(Applied::Done)
    }

    /// Waits, after `last` was written, until the app's reply to it has begun, or the quiet
    /// time is over, or its connection ended.
    async fn settle(&self, mut last: Written) {
        let mark = last.mark;
        let until = last.at.checked_add(self.quiet).unwrap_or(last.at);
        let _ = tokio::time::timeout_at(until, last.received.wait_for(|n| *n > mark)).await;
    }

    /// Opens the app's connection for `conn`; what the app sends on it is digested if digests
    /// are kept.
    async fn connect(&mut self, app: &App, conn: ConnKey) {
        let (reader, writer) = app.connect().await.into_split();
        let client = (conn.0, conn.1) == self.me;
        let client = client.then(|| self.clients.take(conn.2)).flatten();
        let (count, received) = watch::channel(0);
        let (done, digest) = match &self.digests {
            Some(digests) => {
                let (done, digest) = oneshot::channel();
                (Some(done), Some((Arc::clone(digests), digest)))
            }
            None => (None, None),
        };
        let (abandon, abandoned) = oneshot::channel();
        let relay = tokio::spawn(relay(
            reader,
            client,
            count,
            self.hold.clone(),
            done,
            abandoned,
        ));
        self.open.insert(
            conn,
            AppConn {
                writer,
                received,
                relay,
                abandon: Some(abandon),
                digest,
            },
        );
    }

    /// Writes a chunk, however long the app takes to read it (it is reported slow meanwhile).
    async fn write(
        &mut self,
        app: &App,
        conn: ConnKey,
        bytes: &Bytes,
        writing: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let Some(open) = self.open.get_mut(&conn) else {
            return Ok(());
        };
        let mark = *open.received.borrow();
        writing()?;
        let write = open.writer.write_all(bytes);
        tokio::pin!(write);
        let started = Instant::now();
        let written = loop {
            tokio::select! {
                written = &mut write => break written,
                () = tokio::time::sleep(app.slow_after()) => {
                    app.set_slow(true);
                    tracing::warn!(?conn, waited = ?started.elapsed(), "the app is not reading; still writing");
                }
            }
        };
        app.set_slow(false);
        if let Err(error) = written {
            // The app closed or reset its connection: what it does with it is up to it, the same
            // on every replica that has the connection.
            tracing::debug!(?conn, %error, "the app's connection is closed; chunk dropped");
        }
        self.last = Some(Written::after(conn, mark, &open.received));
        Ok(())
    }
}

impl Written {
    fn after(conn: ConnKey, mark: u64, received: &watch::Receiver<u64>) -> Self {
        Self {
            conn,
            mark,
            received: received.clone(),
            at: Instant::now(),
        }
    }
}

/// How much of the app's bytes a slow client may make its node hold, and for how long.
#[derive(Clone)]
struct Hold {
    /// A client that takes nothing for this long is given up.
    stall: Duration,
    /// Bytes held over all connections.
    budget: Arc<Semaphore>,
    /// Bytes held for one.
    per_client: usize,
}

thread_local! {
    /// Where the app's bytes are read into: only while a read runs (it does not await).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; BUFFER]);
}

/// Reads what the app sends on a connection until it closes it, as it comes, counting the bytes
/// in `count` (dropped once the app has closed), and passes them on to the client, if this
/// node has it. What the client has not taken yet is held within `hold`; a client that would
/// hold more, or takes nothing for its stall time, is given up (the bytes are read and dropped
/// from then on). The client's side is closed after the app's, once it has everything. If
/// `done` is given, the digest of all the app sent goes to it once the app has closed the
/// connection (not if the connection failed: then what was read may not be all it sent). When
/// `abandoned` resolves, the client is given up.
async fn relay(
    app: OwnedReadHalf,
    mut client: Option<ClientEnd>,
    count: watch::Sender<u64>,
    hold: Hold,
    done: Option<oneshot::Sender<u64>>,
    mut abandoned: oneshot::Receiver<()>,
) {
    let mut count = Some(count);
    let mut digest = done.map(|done| (StreamDigest::default(), done));
    let mut pending = Pending::default();
    let mut total = 0u64;
    let mut progress = Instant::now();
    loop {
        let sending = client.is_some() && !pending.chunks.is_empty();
        if count.is_none() && !sending {
            break;
        }
        tokio::select! {
            ready = app.readable(), if count.is_some() => {
                if ready.is_err() {
                    (count, digest) = (None, None);
                    continue;
                }
                let keep = client.is_some();
                let read = SCRATCH.with_borrow_mut(|buf| {
                    app.try_read(buf).map(|n| {
                        if let Some((digest, _)) = &mut digest {
                            digest.update(&buf[..n]);
                        }
                        (n, keep.then(|| Bytes::copy_from_slice(&buf[..n])))
                    })
                });
                match read {
                    Ok((0, _)) => {
                        if let Some((digest, done)) = digest.take() {
                            let _ = done.send(digest.finish());
                        }
                        count = None;
                    }
                    Ok((n, bytes)) => {
                        total += n as u64;
                        if let Some(count) = &count {
                            count.send_replace(total);
                        }
                        let Some(bytes) = bytes else { continue };
                        if pending.bytes + n > hold.per_client {
                            give_up(&mut client, &mut pending, "it holds more of the app's bytes than --max-response");
                            continue;
                        }
                        match Arc::clone(&hold.budget).try_acquire_many_owned(n as u32) {
                            Ok(permit) => {
                                if pending.chunks.is_empty() {
                                    progress = Instant::now();
                                }
                                pending.push(bytes, permit);
                            }
                            Err(_) => give_up(&mut client, &mut pending, "the node holds as much of the apps' bytes for clients as --body-budget allows"),
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => (count, digest) = (None, None),
                }
            }
            written = write_some(&mut client, &pending), if sending => match written {
                Ok(n) => {
                    pending.advance(n);
                    progress = Instant::now();
                }
                Err(_) => give_up(&mut client, &mut pending, "its connection failed"),
            },
            () = sleep_until(progress.checked_add(hold.stall).unwrap_or(progress)), if sending => {
                give_up(&mut client, &mut pending, "it takes none of the app's bytes");
            }
            Ok(()) = &mut abandoned, if client.is_some() => {
                give_up(&mut client, &mut pending, "its connection was abandoned");
            }
        }
    }
    if let Some(mut end) = client {
        let _ = end.writer.shutdown().await;
        let _ = end.ended.send(End::AppClosed);
    }
}

/// Gives the client up: its connection is reset (not closed: what it got is not all there
/// was), and its interception told to order the `Close`.
fn give_up(client: &mut Option<ClientEnd>, pending: &mut Pending, why: &str) {
    tracing::info!(why, "giving a client up: its connection is reset");
    if let Some(end) = client.take() {
        let _ = nix::sys::socket::setsockopt(
            end.writer.as_ref(),
            nix::sys::socket::sockopt::Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
        // No FIN now: the reset comes when the interception drops the reading half.
        end.writer.forget();
        let _ = end.ended.send(End::GivenUp);
    }
    *pending = Pending::default();
}

/// Writes what it can of the first pending chunk to the client (cancel safe: a write that did
/// not complete wrote nothing).
async fn write_some(client: &mut Option<ClientEnd>, pending: &Pending) -> std::io::Result<usize> {
    match (client, pending.chunks.front()) {
        (Some(end), Some(chunk)) => match end.writer.write(chunk).await? {
            0 => Err(std::io::ErrorKind::WriteZero.into()),
            n => Ok(n),
        },
        _ => std::future::pending().await,
    }
}

/// The app's bytes a client has not taken yet, and the budget they hold.
#[derive(Default)]
struct Pending {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    held: Option<OwnedSemaphorePermit>,
}

impl Pending {
    fn push(&mut self, chunk: Bytes, permit: OwnedSemaphorePermit) {
        self.bytes += chunk.len();
        self.chunks.push_back(chunk);
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
    }

    /// `n` bytes of the first chunk were taken: their budget is given back.
    fn advance(&mut self, n: usize) {
        let Some(front) = self.chunks.front_mut() else {
            return;
        };
        front.advance(n);
        self.bytes -= n;
        if front.is_empty() {
            self.chunks.pop_front();
        }
        if let Some(held) = &mut self.held {
            drop(held.split(n));
        }
    }
}
