//! The connection to the local app. There is one: ordered requests, reads off the log and
//! snapshot hooks take their turn on it ([`App::turn`], a fair lock), so an app that serves one
//! connection at a time (Python's `http.server`, say) is never asked for a second.
//!
//! An exchange writes the request and reads the answer at once: an app may answer before it has
//! read the whole request (refusing it, or streaming its answer), and then it has the request.
//!
//! A kept-alive connection is checked before it is written on: bytes nobody asked for, or the
//! app's close, make it be replaced by a new one first. It is also closed once it has been idle
//! for a while (before apps that close idle connections, many after 5 s, would; and so that an
//! app serving one connection at a time can serve other local clients meanwhile), after an
//! exchange that was cut off, and after any answer that may leave bytes on it: an answer that
//! came before the request was written whole, an error answer to a request with a body (apps
//! often refuse without reading the body, which they would then take for the next request), and
//! a bodiless answer (to HEAD, or a 204 or 304) that announced a body the app may send anyway.
use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::Arc,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use bytes::BytesMut;
use nix::{
    errno::Errno,
    sys::socket::{MsgFlags, recv},
};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use crate::{
    http::response::{self, ReadError, Response},
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
    connection: Mutex<Connection>,
    /// Whether the last attempt to reach the app succeeded.
    reachable: AtomicBool,
    /// Whether the app is taking longer than `slow_after` to answer.
    slow: AtomicBool,
    telemetry: Arc<Telemetry>,
}

#[derive(Debug)]
struct Connection {
    stream: Option<TcpStream>,
    buf: BytesMut,
    idle_since: Instant,
    /// An exchange is under way on it: if its caller stops waiting, the connection goes.
    busy: bool,
}

/// How far a request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Every byte was written.
    Whole,
    /// The app answered before every byte was written: it has the request.
    Early,
    /// Its head went out whole, not all its body, and no answer came.
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
    pub fn new(
        addr: SocketAddr,
        source: std::net::Ipv4Addr,
        slow_after: Duration,
        limits: response::Limits,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        Self {
            addr,
            source,
            netns: None,
            telemetry,
            limits,
            slow_after,
            connection: Mutex::new(Connection {
                stream: None,
                buf: BytesMut::new(),
                idle_since: Instant::now(),
                busy: false,
            }),
            reachable: AtomicBool::new(true),
            slow: AtomicBool::new(false),
        }
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

    /// Closes the connection whenever it has been idle for a while, for as long as the app is
    /// in use (see the module's documentation).
    pub fn close_when_idle(self: &Arc<Self>) {
        let app = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MAX_IDLE / 2).await;
                let Some(app) = app.upgrade() else { return };
                if let Ok(mut connection) = app.connection.try_lock()
                    && connection.stream.is_some()
                    && !connection.busy
                    && connection.idle_since.elapsed() >= MAX_IDLE
                {
                    connection.stream = None;
                    connection.buf.clear();
                }
            }
        });
    }

    /// Waits for this caller's turn on the connection (callers are served in order).
    pub async fn turn(&self) -> Turn<'_> {
        Turn {
            app: self,
            connection: self.connection.lock().await,
        }
    }

    /// Sends a request that changes nothing (a read off the log) and returns the answer; once
    /// more on a new connection if the app closed the one used without answering.
    pub async fn read(&self, request: &[u8], method: &str) -> Result<Response, ReadError> {
        let mut turn = self.turn().await;
        let mut answer = Err(ReadError::Closed);
        for _ in 0..2 {
            turn.ready().await;
            let exchanged = turn
                .exchange(request, &[], method, false, || Ok(()))
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

/// The connection, held by one caller.
pub struct Turn<'a> {
    app: &'a App,
    connection: MutexGuard<'a, Connection>,
}

impl Drop for Turn<'_> {
    /// An exchange cut off in the middle (its caller gave up) leaves a request or an answer on
    /// the connection: nobody may read that as theirs.
    fn drop(&mut self) {
        if self.connection.busy {
            self.close();
        }
    }
}

impl Turn<'_> {
    /// Makes sure a clean connection is open: connects (again and again while the app cannot
    /// be reached) unless the kept-alive one is fit for use.
    pub async fn ready(&mut self) {
        if let Some(stream) = &self.connection.stream {
            let idle = self.connection.idle_since.elapsed();
            match clean(stream) {
                Ok(()) if idle < MAX_IDLE && self.connection.buf.is_empty() => return,
                Ok(()) => {}
                Err(Stray) => tracing::warn!(
                    app = %self.app.addr,
                    "the app sent bytes nobody asked for; not reusing its connection"
                ),
                Err(Ended) => {
                    tracing::debug!(app = %self.app.addr, "the app closed its idle connection")
                }
            }
            self.close();
        }
        let stream = self.app.connect().await;
        self.connection.stream = Some(stream);
        self.connection.buf.clear();
    }

    /// Writes `head` then `body` while reading the answer to a request with `method`, however
    /// long it takes (the app is reported slow meanwhile). `delivered` is called as soon as the
    /// app certainly has the request: its last byte is written, or its answer came. `close`
    /// says the request asked the app to close the connection. The connection is kept only
    /// after an exchange that leaves nothing on it. An error is `delivered`'s.
    pub async fn exchange(
        &mut self,
        head: &[u8],
        body: &[u8],
        method: &str,
        close: bool,
        mut delivered: impl FnMut() -> std::io::Result<()>,
    ) -> std::io::Result<Exchanged> {
        let app = self.app;
        let connection = &mut *self.connection;
        let Some(stream) = connection.stream.as_mut() else {
            return Ok(Exchanged {
                sent: Sent::Nothing,
                answer: Err(ReadError::Closed),
            });
        };
        connection.busy = true;
        let written = AtomicUsize::new(0);
        let mut told = false;
        let started = Instant::now();
        let answer = {
            let (mut reader, mut writer) = stream.split();
            let write = write_parts(&mut writer, head, body, &written);
            let read = response::read(&mut reader, &mut connection.buf, method, &app.limits);
            tokio::pin!(write, read);
            let mut writing = true;
            loop {
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
                    () = tokio::time::sleep(app.slow_after) => {
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
        connection.busy = false;
        if reuse {
            connection.idle_since = Instant::now();
        } else {
            connection.stream = None;
            connection.buf.clear();
        }
        Ok(Exchanged { sent, answer })
    }

    /// Closes the connection (the next [`Turn::ready`] opens a new one).
    pub fn close(&mut self) {
        self.connection.stream = None;
        self.connection.buf.clear();
        self.connection.busy = false;
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
