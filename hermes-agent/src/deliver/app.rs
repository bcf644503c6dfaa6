//! The connections to the local app. Each client connection's requests reach the app over an
//! app connection of their own, named by the client connection ([`ConnKey`]): it is opened at
//! its first request and closed where the log says so on every replica alike (a request or an
//! answer that closes it, or another client's first request once `--app-connections` are
//! open: the one unused the longest goes). So what an app does wrong on one connection (a body
//! left unread, a stray byte) touches only that client, as without Hermes, and a client's
//! keep-alive requests reuse their connection. Ordered requests, reads off the log and
//! snapshot hooks take their turn on the app ([`App::turn`], a fair lock): one exchange at a
//! time.
//!
//! An app that serves fewer connections at once than are open (a single-threaded server keeps
//! reading an idle keep-alive connection until it closes, and takes no other) would wait on one
//! while Hermes waits on another, whose request comes later in the log: a deadlock direct
//! access does not have. So when a request on a connection the app has not answered on yet gets
//! no answer for [`SWITCH_AFTER`] while other app connections are open (idle: one exchange runs
//! at a time), they are closed; if the answer then comes at once (twice in a row), the app is
//! taken to serve at most as many connections as were open besides, and no more are kept open
//! from then on (1: connections are switched between clients, not shared). A slow answer on a connection the app
//! answered on before is only slow.
//!
//! An exchange writes the request and reads the answer at once: an app may answer before it has
//! read the whole request (refusing it, or streaming its answer), and then it has the request.
//! An answer that comes in pieces is acknowledged at once (`TCP_QUICKACK`, set when the answer
//! read so far is not whole): an app that writes an answer's head and body in two writes with
//! Nagle's algorithm on (Python's `http.server`, many small servers) holds the body back until
//! the head is acknowledged, and a kept-alive connection that just sent a request would delay
//! that acknowledgement by 40 ms. A whole answer's acknowledgement still rides on the next
//! request.
//!
//! A kept-alive connection is checked before it is written on: bytes nobody asked for, or the
//! app's close, make it be replaced by a new one first. It is also closed once it has been idle
//! for a while (before apps that close idle connections, many after 5 s, would, so that a
//! request never meets the app's close; and so that an app serving one connection at a time can
//! serve other local clients meanwhile), after an exchange that was cut off, and after any
//! answer that may leave bytes on it: an answer that came before the request was written whole,
//! an error answer to a request with a body (apps often refuse without reading the body, which
//! they would then take for the next request), and a bodiless answer (to HEAD, or a 204 or 304)
//! that announced a body the app may send anyway.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsRawFd,
    pin::Pin,
    sync::Arc,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    task::{Context, Poll},
    time::Duration,
};

use bytes::BytesMut;
use nix::{
    errno::Errno,
    libc, setsockopt_impl, sockopt_impl,
    sys::socket::{MsgFlags, recv},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpStream, tcp::ReadHalf},
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use crate::{
    http::response::{self, ReadError, Response},
    order::typ::ConnKey,
    steer::source,
    telemetry::Telemetry,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// A connection idle this long is replaced rather than reused.
const MAX_IDLE: Duration = Duration::from_secs(2);
/// Requests up to this size go out in one write.
const ONE_WRITE: usize = 16 * 1024;
/// A request unanswered this long while other app connections are open makes them close: the
/// app may be one that serves fewer connections at once.
pub const SWITCH_AFTER: Duration = Duration::from_millis(100);
/// An answer this soon after the others were closed says that the app was waiting for that.
const PROMPT: Duration = Duration::from_millis(10);

/// The local application.
#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    /// Where the app is reached from.
    source: std::net::Ipv4Addr,
    /// The network namespace the app lives in; `None`: the agent's own.
    netns: Option<crate::steer::netns::Netns>,
    limits: response::Limits,
    /// An answer taking longer than this makes the app count as slow (it is waited for still).
    slow_after: Duration,
    /// App connections open at once at most: `--app-connections`, lowered once the app was seen
    /// to serve fewer.
    limit: AtomicUsize,
    /// [`SWITCH_AFTER`] (a test may wait longer).
    switch_after: Duration,
    /// The limit the last switch suggested, if its answer came at once (0: none).
    suspected: AtomicUsize,
    connections: Mutex<Connections>,
    /// Whether the last attempt to reach the app succeeded.
    reachable: AtomicBool,
    /// Whether the app is taking longer than `slow_after` to answer.
    slow: AtomicBool,
    telemetry: Arc<Telemetry>,
}

/// The app connections open, by client connection.
#[derive(Debug, Default)]
struct Connections {
    open: HashMap<ConnKey, Connection>,
    /// Counts exchanges: which connection was used the longest ago.
    clock: u64,
}

#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    idle_since: Instant,
    /// The `clock` of its last exchange.
    used: u64,
    /// The app answered on it: it took the connection.
    answered: bool,
}

/// How far a request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Every byte was written.
    Whole,
    /// The app answered before every byte was written: it has the request.
    Early,
    /// Its head went out whole, not all its body, and no answer came: the app cannot have all of
    /// it.
    Head,
    /// Not even its head went out whole, and no answer came: the app cannot have it.
    Nothing,
}

/// What came of an exchange.
#[derive(Debug)]
pub struct Exchanged {
    pub sent: Sent,
    /// The answer, or why there is none.
    pub answer: Result<Response, ReadError>,
}

impl App {
    /// The app at `addr`, reached from `source`, with at most `connections` app connections
    /// open at once.
    pub fn new(
        addr: SocketAddr,
        source: std::net::Ipv4Addr,
        slow_after: Duration,
        limits: response::Limits,
        connections: usize,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            addr,
            source,
            netns: None,
            telemetry,
            limits,
            slow_after,
            limit: AtomicUsize::new(connections.max(1)),
            switch_after: SWITCH_AFTER,
            suspected: AtomicUsize::new(0),
            connections: Mutex::default(),
            reachable: AtomicBool::new(true),
            slow: AtomicBool::new(false),
        }
    }

    /// Closes the other connections when a request on a new one gets no answer for
    /// `switch_after` (instead of [`SWITCH_AFTER`]).
    pub fn switching_after(mut self, switch_after: Duration) -> Self {
        self.switch_after = switch_after;
        self
    }

    /// The app lives in `netns` (pod mode): its connections are made there.
    pub fn in_netns(mut self, netns: Option<crate::steer::netns::Netns>) -> Self {
        self.netns = netns;
        self
    }

    /// Whether the app answers: reachable, and not stuck on a request.
    pub fn healthy(&self) -> bool {
        self.reachable.load(Ordering::Relaxed) && !self.slow.load(Ordering::Relaxed)
    }

    /// App connections kept open at most, now.
    pub fn connection_limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(super) fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    pub(super) fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::Relaxed);
    }

    pub(super) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// How long an answer may take before the app counts as slow.
    pub(super) fn slow_after(&self) -> Duration {
        self.slow_after
    }

    /// Opens a new connection to the app, again and again while it cannot be reached.
    pub(super) async fn connect(&self) -> TcpStream {
        let mut delay = RETRY_MIN;
        let mut failures = 0u64;
        loop {
            let connect = source::connect_in(self.netns.as_ref(), self.source, self.addr);
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            match connected {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    if failures > 0 {
                        tracing::info!(app = %self.addr, failures, "app reachable again");
                    }
                    self.set_reachable(true);
                    return stream;
                }
                Err(error) => {
                    self.set_reachable(false);
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(app = %self.addr, %error, failures, "cannot reach the app; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Closes connections whenever they have been idle for a while, for as long as the app is
    /// in use (see the module's documentation).
    pub fn close_when_idle(self: &Arc<Self>) {
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MAX_IDLE / 2).await;
                let Some(app) = app.upgrade() else { return };
                if let Ok(mut connections) = app.connections.try_lock() {
                    connections
                        .open
                        .retain(|_, connection| connection.idle_since.elapsed() < MAX_IDLE);
                }
            }
        });
    }

    /// Waits for this caller's turn on the app (callers are served in order).
    pub async fn turn(&self) -> Turn<'_> {
        Turn {
            app: self,
            connections: self.connections.lock().await,
        }
    }

    /// Sends a request that changes nothing (a read off the log) on client connection `conn`'s
    /// app connection and returns the answer; once more on a new connection if the app closed
    /// the one used without answering.
    pub async fn read(
        &self,
        conn: ConnKey,
        request: &[u8],
        method: &str,
    ) -> Result<Response, ReadError> {
        let mut turn = self.turn().await;
        let mut answer = Err(ReadError::Closed);
        for _ in 0..2 {
            turn.ready(conn).await;
            let exchanged = turn
                .exchange(conn, request, &[], method, false, || Ok(()))
                .await
                .map_err(|_| ReadError::Closed)?;
            answer = exchanged.answer;
            if !matches!(answer, Err(ReadError::Closed)) {
                break;
            }
        }
        answer
    }
}

/// The app, held by one caller.
pub struct Turn<'a> {
    app: &'a App,
    connections: MutexGuard<'a, Connections>,
}

impl Turn<'_> {
    /// Makes sure a clean connection is open for client connection `conn`: connects (again and
    /// again while the app cannot be reached) unless the kept-alive one is fit for use. A new
    /// one first closes the connection unused the longest if as many as the app takes are open.
    pub async fn ready(&mut self, conn: ConnKey) {
        let app = self.app;
        if let Some(connection) = self.connections.open.get(&conn) {
            let idle = connection.idle_since.elapsed();
            match clean(&connection.stream) {
                Ok(()) if idle < MAX_IDLE && connection.buf.is_empty() => return,
                Ok(()) => {}
                Err(Stray) => tracing::warn!(
                    app = %app.addr,
                    "the app sent bytes nobody asked for; not reusing its connection"
                ),
                Err(Ended) => {
                    tracing::debug!(app = %app.addr, "the app closed its idle connection")
                }
            }
            self.connections.open.remove(&conn);
        }
        let limit = app.connection_limit();
        while self.connections.open.len() >= limit {
            let oldest = self.connections.open.iter().min_by_key(|(_, c)| c.used);
            let Some((&oldest, _)) = oldest else { break };
            self.connections.open.remove(&oldest);
        }
        let stream = app.connect().await;
        self.connections.open.insert(
            conn,
            Connection {
                stream,
                buf: BytesMut::new(),
                idle_since: Instant::now(),
                used: 0,
                answered: false,
            },
        );
    }

    /// Writes `head` then `body` on client connection `conn`'s app connection (made ready
    /// first) while reading the answer to a request with `method`, however long it takes (the
    /// app is reported slow meanwhile). `delivered` is called as soon as the app certainly has
    /// the request: its last byte is written, or its answer came. `close` says the request asked
    /// the app to close the connection. The connection is kept only after an exchange that
    /// leaves nothing on it. An error is `delivered`'s.
    pub async fn exchange(
        &mut self,
        conn: ConnKey,
        head: &[u8],
        body: &[u8],
        method: &str,
        close: bool,
        mut delivered: impl FnMut() -> std::io::Result<()>,
    ) -> std::io::Result<Exchanged> {
        let app = self.app;
        // Out of the map while in use: if the caller stops waiting, the connection, with a
        // request or an answer half on it, is dropped, and nobody reads that as theirs.
        let Some(mut connection) = self.connections.open.remove(&conn) else {
            return Ok(Exchanged {
                sent: Sent::Nothing,
                answer: Err(ReadError::Closed),
            });
        };
        let written = AtomicUsize::new(0);
        let mut told = false;
        let started = Instant::now();
        // When the other connections were closed for this request's sake, and how many. Only on
        // a connection the app has not taken yet can it be waiting for them.
        let mut switched: Option<(Instant, usize)> = None;
        let may_switch = !connection.answered;
        let answer = {
            let Connection { stream, buf, .. } = &mut connection;
            let (mut reader, mut writer) = stream.split();
            let write = write_parts(&mut writer, head, body, &written);
            let mut reader = QuickAcking {
                reader: &mut reader,
                read: false,
            };
            let read = response::read(&mut reader, buf, method, &app.limits);
            tokio::pin!(write, read);
            let mut writing = true;
            let slow = tokio::time::sleep(app.slow_after);
            tokio::pin!(slow);
            loop {
                let others = self.connections.open.len();
                tokio::select! {
                    biased;
                    result = &mut write, if writing => {
                        writing = false;
                        if result.is_ok() {
                            told = true;
                            delivered()?;
                        }
                        // A failed write: an answer may be there all the same (the app refused
                        // and closed); the read decides.
                    }
                    answer = &mut read => break answer,
                    () = tokio::time::sleep_until(started + app.switch_after), if may_switch && others > 0 && switched.is_none() => {
                        tracing::info!(
                            app = %app.addr,
                            others,
                            "no answer yet while other app connections are open: closing them, \
                             in case the app serves one connection at a time"
                        );
                        self.connections.open.clear();
                        switched = Some((Instant::now(), others));
                    }
                    () = &mut slow => {
                        slow.as_mut().reset(Instant::now() + app.slow_after);
                        app.slow.store(true, Ordering::Relaxed);
                        tracing::warn!(
                            app = %app.addr,
                            waited = ?started.elapsed(),
                            "the app has not taken the request or answered it yet; still waiting \
                             (a request is never sent twice)"
                        );
                    }
                }
            }
        };
        app.slow.store(false, Ordering::Relaxed);
        app.telemetry.exchanged(started.elapsed().as_secs_f64());
        match &answer {
            Ok(_) => {}
            Err(ReadError::Invalid(_)) => app.telemetry.app_failed("invalid_answer"),
            Err(ReadError::Cut) => app.telemetry.app_failed("answer_cut_short"),
            Err(ReadError::Closed) => app.telemetry.app_failed("no_answer"),
        }
        if let Some((at, others)) = switched
            && answer.is_ok()
        {
            if at.elapsed() <= PROMPT {
                // It answered as soon as the others were gone: it serves no more than them at
                // once. Believed the second time in a row: an app merely slow to answer may,
                // once, answer right then.
                let limit = others.max(1);
                let before = app.suspected.swap(limit, Ordering::Relaxed);
                if before != 0 {
                    let limit = limit.min(before);
                    if limit < app.limit.fetch_min(limit, Ordering::Relaxed) {
                        tracing::info!(
                            app = %app.addr,
                            limit,
                            "the app serves at most this many connections at once: no more are \
                             kept open"
                        );
                    }
                }
            } else {
                app.suspected.store(0, Ordering::Relaxed);
            }
        }
        let written = written.into_inner();
        let whole = written == head.len() + body.len();
        let sent = match (&answer, whole) {
            (_, true) => Sent::Whole,
            (Err(ReadError::Closed), false) if written >= head.len() => Sent::Head,
            (Err(ReadError::Closed), false) => Sent::Nothing,
            (_, false) => Sent::Early,
        };
        if !told && matches!(sent, Sent::Whole | Sent::Early) {
            delivered()?;
        }
        let reuse = !close
            && sent == Sent::Whole
            && connection.buf.is_empty()
            && matches!(&answer, Ok(response)
                if !response.close
                    && !response.may_linger()
                    && (body.is_empty() || response.status < 400));
        if reuse {
            self.connections.clock += 1;
            connection.used = self.connections.clock;
            connection.idle_since = Instant::now();
            connection.answered = true;
            self.connections.open.insert(conn, connection);
        }
        Ok(Exchanged { sent, answer })
    }

    /// Closes every app connection (a snapshot hook runs next; the next [`Turn::ready`] opens
    /// a new one).
    pub fn close(&mut self) {
        self.connections.open.clear();
    }
}

/// Writes `head` then `body`, counting in `written` the bytes the kernel took.
async fn write_parts(
    writer: &mut (impl AsyncWrite + Unpin),
    head: &[u8],
    body: &[u8],
    written: &AtomicUsize,
) -> std::io::Result<()> {
    let joined;
    let parts: [&[u8]; 2] = if head.len() + body.len() <= ONE_WRITE {
        joined = [head, body].concat();
        [joined.as_slice(), &[]]
    } else {
        [head, body]
    };
    for part in parts {
        let mut at = 0;
        while at < part.len() {
            let n = writer.write(&part[at..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            at += n;
            written.fetch_add(n, Ordering::Relaxed);
        }
    }
    writer.flush().await
}

/// Reads an answer, acknowledging what came so far at once whenever more is asked for (see the
/// module's documentation; without it an answer is only slower).
struct QuickAcking<'r, 'a> {
    reader: &'r mut ReadHalf<'a>,
    /// Bytes came since the acknowledgement was last asked for.
    read: bool,
}

impl AsyncRead for QuickAcking<'_, '_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if std::mem::take(&mut self.read) {
            let _ = nix::sys::socket::setsockopt(self.reader.as_ref(), QuickAck, &true);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.reader).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.read = true;
        }
        polled
    }
}

sockopt_impl!(
    /// `TCP_QUICKACK`: acknowledge what arrived at once (the kernel leaves this mode again on
    /// its own, so it is set anew each time).
    QuickAck,
    SetOnly,
    libc::IPPROTO_TCP,
    libc::TCP_QUICKACK,
    bool
);

/// Why a kept-alive connection is not fit for the next request.
enum Unfit {
    /// Bytes nobody asked for are waiting on it.
    Stray,
    /// The app closed it, or it failed.
    Ended,
}
use Unfit::{Ended, Stray};

/// Whether a kept-alive connection has nothing waiting on it: no bytes nobody asked for, no close
/// by the app. Asks the kernel directly, not a readiness cache.
fn clean(stream: &TcpStream) -> Result<(), Unfit> {
    let mut byte = [0u8; 1];
    match recv(
        stream.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Err(Errno::EAGAIN) => Ok(()),
        Ok(0) | Err(_) => Err(Ended),
        Ok(_) => Err(Stray),
    }
}
