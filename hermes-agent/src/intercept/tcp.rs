//! Raw TCP interception: orders the events of each steered connection ([`crate::tcp`]); the
//! app's bytes come back to the client from the local app's connection, as delivery applies the
//! events ([`crate::deliver::tcp`]).
//!
//! A connection's events are ordered one after another: event k + 1 is proposed only once event
//! k is committed, so they enter the log in the order they happened, whatever the runtime's
//! thread count. What the client sends meanwhile is read (up to [`MAX_CHUNK`] bytes, within the
//! node's byte budget; beyond that the client waits) and goes into the next chunk.
//!
//! Once its `Open` is ordered, a connection always ends with an ordered `Close` (or, if this
//! agent dies first, with the `Lost` its restart orders): the client closed, reset, or idled
//! past the idle timeout, the app closed its side and the client then closed, the client was
//! given up for not taking the app's bytes ([`crate::deliver::tcp`]), or the agent is stopping.
//!
//! The budget is taken only for bytes the client has sent: a connection waiting for its client
//! holds none.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{BufMut as _, BytesMut};
use tokio::{
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, sleep_until},
};

use super::Handler;
use crate::{
    deliver::tcp::End,
    node::{Node, SubmitError},
    tcp::{Chunk, Event},
};

/// The largest chunk ordered at once.
pub const MAX_CHUNK: usize = 256 * 1024;
/// Bytes read from the client at once.
const READ: usize = 64 * 1024;

#[derive(Clone)]
pub struct Tcp {
    pub node: Arc<Node>,
    /// A connection with no bytes from its client for this long is closed.
    pub idle_timeout: Duration,
    /// Client bytes this node holds at most, over all its connections, until they are ordered.
    pub budget: Arc<Semaphore>,
}

/// Where a connection is.
#[derive(Debug, Default)]
struct State {
    /// The client will send no more (it closed, or its half).
    client_done: bool,
    /// The client's connection failed (reset): no half-close to pass on.
    client_failed: bool,
    /// The half-close was ordered.
    shut: bool,
    /// The app closed its side (and the client's was closed after it).
    app_done: bool,
}

impl Handler for Tcp {
    async fn serve(self, client: TcpStream, peer: SocketAddr, mut stop: watch::Receiver<bool>) {
        let _ = client.set_nodelay(true);
        let node = &self.node;
        let conn = node.next_connection();
        let (mut reader, writer) = client.into_split();
        let mut app_done = node.clients.register(conn, writer);
        let _forget = Forget(node, conn);
        if let Err(error) = node.order(Chunk::new(conn, Event::Open).encode()).await {
            tracing::debug!(%peer, %error, "connection not ordered");
            return;
        }
        let mut state = State::default();
        let mut buf = BytesMut::new();
        // Budget taken for the bytes in `buf`.
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut in_flight = None;
        let mut idle = Instant::now() + self.idle_timeout;
        let mut stopping = false;
        loop {
            if in_flight.is_none() {
                let next = if !buf.is_empty() {
                    Some((Event::Data(buf.split().freeze()), held.take()))
                } else if state.client_done
                    && !state.shut
                    && !state.client_failed
                    && !state.app_done
                {
                    state.shut = true;
                    Some((Event::Shutdown, None))
                } else {
                    None
                };
                if let Some((event, permit)) = next {
                    in_flight = Some(Box::pin(self.order(conn, event, permit)));
                    continue;
                }
                if stopping || (state.client_done && (state.app_done || state.client_failed)) {
                    break;
                }
            }
            let room = MAX_CHUNK - buf.len();
            let reading = !state.client_done && !stopping && room > 0;
            tokio::select! {
                ordered = async { in_flight.as_mut().expect("in flight").as_mut().await }, if in_flight.is_some() => {
                    in_flight = None;
                    if let Err(error) = ordered {
                        tracing::debug!(%peer, %error, "connection event not ordered; giving up");
                        return;
                    }
                }
                read = read_within(&mut reader, &mut buf, room, &self.budget), if reading => match read {
                    Ok((0, _)) => state.client_done = true,
                    Ok((_, permit)) => {
                        idle = Instant::now() + self.idle_timeout;
                        match &mut held {
                            Some(held) => held.merge(permit),
                            None => held = Some(permit),
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "client connection failed");
                        state.client_done = true;
                        state.client_failed = true;
                    }
                },
                end = &mut app_done, if !state.app_done => {
                    state.app_done = true;
                    if end == Ok(End::GivenUp) {
                        tracing::debug!(%peer, "the client does not take the app's bytes; closing it");
                        stopping = true;
                    }
                }
                () = sleep_until(idle), if !stopping => {
                    tracing::debug!(%peer, "connection idle; closing it");
                    stopping = true;
                }
                _ = stop.wait_for(|stop| *stop), if !stopping => stopping = true,
            }
        }
        if let Err(error) = self.order(conn, Event::Close, None).await {
            tracing::debug!(%peer, %error, "connection close not ordered");
        }
    }
}

impl Tcp {
    /// Orders `event` of connection `conn`; `permit` (the budget its bytes took) is given back
    /// once it is committed.
    async fn order(
        &self,
        conn: u64,
        event: Event,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), SubmitError> {
        let ordered = self.node.order(Chunk::new(conn, event).encode()).await;
        drop(permit);
        ordered
    }
}

/// Reads at most `room` bytes from the client into `buf`, once the client has sent something
/// and the budget has room for it; returns how many, and the budget they hold (what was not
/// read is given back).
async fn read_within(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    room: usize,
    budget: &Arc<Semaphore>,
) -> std::io::Result<(usize, OwnedSemaphorePermit)> {
    let want = room.min(READ);
    loop {
        reader.readable().await?;
        let mut permit = Arc::clone(budget)
            .acquire_many_owned(want as u32)
            .await
            .map_err(std::io::Error::other)?;
        buf.reserve(want);
        match reader.try_read_buf(&mut (&mut *buf).limit(want)) {
            Ok(n) => {
                drop(permit.split(want - n));
                return Ok((n, permit));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Withdraws the client end from delivery when the connection is done, if its `Open` was not
/// applied yet.
struct Forget<'a>(&'a Node, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.clients.forget(self.1);
    }
}
