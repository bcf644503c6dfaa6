//! The connection to the local app. There is one: ordered requests, reads off the log and
//! snapshot hooks take their turn on it ([`App::turn`], a fair lock), so an app that serves one
//! connection at a time (Python's `http.server`, say) is never asked for a second.
//!
//! A kept-alive connection is checked before it is written on: bytes nobody asked for, or the
//! app's close, make it be replaced by a new one first. It is also replaced once it has been idle
//! for a while, before apps that close idle connections (many do after 5 s) would, and after
//! answers that may leave part of a request unread: one that began before the request was
//! written whole, and an error answer to a request with a body (apps often refuse without
//! reading the body, which they would then take for the start of the next request).
use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use bytes::BytesMut;
use nix::{
    errno::Errno,
    sys::socket::{MsgFlags, recv},
};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use crate::http::response::{self, ReadError, Response};

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
    limits: response::Limits,
    /// An answer taking longer than this makes the app count as slow (it is waited for still).
    slow_after: Duration,
    connection: Mutex<Connection>,
    /// Whether the last attempt to reach the app succeeded.
    reachable: AtomicBool,
    /// Whether the app is taking longer than `slow_after` to answer.
    slow: AtomicBool,
}

#[derive(Debug)]
struct Connection {
    stream: Option<TcpStream>,
    buf: BytesMut,
    idle_since: Instant,
    /// The request on it had a body the app may not have read all of.
    unread: bool,
}

/// How a request went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Its last byte was written.
    Whole,
    /// The app began to answer before the whole request was written: it has the request.
    Early,
}

impl App {
    pub fn new(addr: SocketAddr, slow_after: Duration, limits: response::Limits) -> Self {
        Self {
            addr,
            limits,
            slow_after,
            connection: Mutex::new(Connection {
                stream: None,
                buf: BytesMut::new(),
                idle_since: Instant::now(),
                unread: false,
            }),
            reachable: AtomicBool::new(true),
            slow: AtomicBool::new(false),
        }
    }

    /// Whether the app answers: reachable, and not stuck on a request.
    pub fn healthy(&self) -> bool {
        self.reachable.load(Ordering::Relaxed) && !self.slow.load(Ordering::Relaxed)
    }

    pub(super) fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// Waits for this caller's turn on the connection (callers are served in order).
    pub async fn turn(&self) -> Turn<'_> {
        Turn {
            app: self,
            connection: self.connection.lock().await,
        }
    }

    /// Sends a request that changes nothing (a read off the log) and returns the answer; once
    /// more on a new connection if the app closed the one used.
    pub async fn read(&self, request: &[u8], method: &str) -> Result<Response, ReadError> {
        let mut turn = self.turn().await;
        let mut result = Err(ReadError::Closed);
        for _ in 0..2 {
            turn.ready().await;
            if turn.send(request, &[]).await.is_err() {
                turn.close();
                continue;
            }
            result = turn.receive(method).await;
            if !matches!(result, Err(ReadError::Closed)) {
                break;
            }
        }
        result
    }
}

/// The connection, held by one caller.
pub struct Turn<'a> {
    app: &'a App,
    connection: MutexGuard<'a, Connection>,
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
        let mut delay = RETRY_MIN;
        let mut failures = 0u64;
        loop {
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.app.addr))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            match connected {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    if failures > 0 {
                        tracing::info!(app = %self.app.addr, failures, "app reachable again");
                    }
                    self.app.set_reachable(true);
                    self.connection.stream = Some(stream);
                    self.connection.buf.clear();
                    return;
                }
                Err(error) => {
                    self.app.set_reachable(false);
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(app = %self.app.addr, %error, failures, "cannot reach the app; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Writes `head` then `body`: `Ok` once the last byte is in the kernel's hands, or once the
    /// app has begun to answer (then the rest is not written). An error means the app has no
    /// whole request and has not answered.
    pub async fn send(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<Sent> {
        let connection = &mut *self.connection;
        let stream = connection
            .stream
            .as_mut()
            .ok_or(std::io::ErrorKind::NotConnected)?;
        connection.unread = !body.is_empty();
        let fd = stream.as_raw_fd();
        let (reader, mut writer) = stream.split();
        let write = async {
            if head.len() + body.len() <= ONE_WRITE {
                let mut message = Vec::with_capacity(head.len() + body.len());
                message.extend_from_slice(head);
                message.extend_from_slice(body);
                writer.write_all(&message).await
            } else {
                writer.write_all(head).await?;
                writer.write_all(body).await
            }
        };
        tokio::pin!(write);
        loop {
            tokio::select! {
                biased;
                written = &mut write => return written.map(|()| Sent::Whole),
                readable = reader.readable() => {
                    readable?;
                    // Readiness can be stale: ask the kernel whether an answer is there (and
                    // let tokio forget the readiness if not).
                    let peeked = reader
                        .as_ref()
                        .try_io(Interest::READABLE, || Ok(peek(fd)?));
                    match peeked {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Ok(n) if n > 0 => {
                            connection.unread = true;
                            return Ok(Sent::Early);
                        }
                        // Closed on us: the rest cannot be written.
                        _ => return Err(std::io::ErrorKind::ConnectionReset.into()),
                    }
                }
            }
        }
    }

    /// Reads the answer to a request with `method`, however long it takes (the app is reported
    /// slow meanwhile). The connection is closed after an answer that ends it, and after any
    /// failure.
    pub async fn receive(&mut self, method: &str) -> Result<Response, ReadError> {
        let app = self.app;
        let result = {
            let connection = &mut *self.connection;
            let Some(stream) = connection.stream.as_mut() else {
                return Err(ReadError::Closed);
            };
            let read = response::read(stream, &mut connection.buf, method, &app.limits);
            tokio::pin!(read);
            let started = Instant::now();
            loop {
                tokio::select! {
                    result = &mut read => break result,
                    () = tokio::time::sleep(app.slow_after) => {
                        app.slow.store(true, Ordering::Relaxed);
                        tracing::warn!(
                            app = %app.addr,
                            waited = ?started.elapsed(),
                            "the app has not answered yet; still waiting (a request is never sent twice)"
                        );
                    }
                }
            }
        };
        app.slow.store(false, Ordering::Relaxed);
        // Bytes after the answer are the app's mistake: the connection is not reused. Nor after
        // an answer that may have left part of the request unread.
        let unread = self.connection.unread;
        let reuse = matches!(&result, Ok(response) if !response.close && (!unread || response.status < 400))
            && self.connection.buf.is_empty();
        if reuse {
            self.connection.idle_since = Instant::now();
        } else {
            self.close();
        }
        result
    }

    /// Closes the connection (the next [`Turn::ready`] opens a new one).
    pub fn close(&mut self) {
        self.connection.stream = None;
        self.connection.buf.clear();
    }
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
    match peek(stream.as_raw_fd()) {
        Err(Errno::EAGAIN) => Ok(()),
        Ok(0) | Err(_) => Err(Ended),
        Ok(_) => Err(Stray),
    }
}

/// Whether bytes wait on the socket (`Ok(n > 0)`), it was closed (`Ok(0)`), or neither yet
/// (`EAGAIN`), without taking any.
fn peek(fd: std::os::fd::RawFd) -> nix::Result<usize> {
    let mut byte = [0u8; 1];
    recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)
}
