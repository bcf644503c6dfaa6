//! HTTP/1.1 interception: reads each request of a steered connection strictly, orders its
//! canonical form, and answers with the local app's response.
//!
//! A connection's requests are handled one after another: request k + 1 is proposed only once
//! request k is answered. So a connection's requests enter the log in the order its client sent
//! them, whatever the runtime's thread count, and nothing pipelined behind a request whose answer
//! closes the connection is ever processed (RFC 9112 section 9.6). Pipelined requests are read
//! ahead but wait their turn.
//!
//! The app's answer closes the client's connection when the app closes its own after it, unless
//! the agent asked for that close (the canonical form's `Connection: close`, for a HEAD say):
//! then the client, which did not ask, keeps its connection.
//!
//! The app's answer waits for its client within the node's budget for answers (`--body-budget`,
//! a second budget of that size): a client whose answer does not fit, because slow clients hold
//! the budget, is reset, never sent part of its answer.
//!
//! A request that breaks a rule gets its status (400, 408, 413, 417, 431, 501, or 503 when the
//! node's budget of body bytes is spent), closes the connection, and is never ordered. After an
//! answer whose outcome is unknown (504) the connection closes too: a later request of it could
//! otherwise be ordered before the earlier one.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

use super::Handler;
use crate::{
    http::{
        Framing, Invalid, RequestHead, Response, Version,
        ordered::Ordered,
        request::{self, ReadError, Reader},
    },
    node::{Node, SubmitError, read::ReadMode},
    telemetry::Outcome,
};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub http: request::Limits,
    /// A request, once begun, must be complete within this.
    pub client_timeout: Duration,
    /// A kept-alive connection may idle this long between requests.
    pub idle_timeout: Duration,
}

#[derive(Clone)]
pub struct Http {
    pub node: Arc<Node>,
    pub limits: Limits,
    pub reads: Reads,
    /// Request body bytes this node holds at most, over all its client connections.
    pub budget: Arc<Semaphore>,
    /// Bytes of the answers this node holds at most for clients that have not taken them yet,
    /// over all its client connections: a client whose answer does not fit is reset.
    pub answers: Arc<Semaphore>,
}

/// Which requests skip the log, and how they are answered.
#[derive(Clone, Debug)]
pub struct Reads {
    pub mode: ReadMode,
    /// Methods that do not change the app's state.
    pub methods: Arc<[String]>,
}

impl Reads {
    /// How to serve a request with this method; `None`: through the log.
    fn mode_for(&self, method: &str) -> Option<ReadMode> {
        (self.mode != ReadMode::Ordered && self.methods.iter().any(|m| m == method))
            .then_some(self.mode)
    }
}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// What a client that would go past `--max-connections` gets.
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Retry-After: 1\r\nContent-Length: 43\r\nConnection: close\r\n\r\nhermes: too many connections on this node\r\n";
/// How long a refused client's unread bytes are drained before its connection closes, so that
/// it reads its answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);

impl Handler for Http {
    async fn serve(self, client: TcpStream, peer: SocketAddr, mut stop: watch::Receiver<bool>) {
        let _ = client.set_nodelay(true);
        // Its requests reach every replica's app on an app connection of their own.
        let conn = self.node.next_connection();
        let (reader, mut writer) = client.into_split();
        let mut requests = Reader::new(reader, self.limits.http);
        loop {
            let more = tokio::select! {
                more = requests.ready() => more,
                _ = stop.wait_for(|stop| *stop) => false,
                () = tokio::time::sleep(self.limits.idle_timeout) => false,
            };
            if !more {
                break;
            }
            let read = tokio::time::timeout(
                self.limits.client_timeout,
                self.read(&mut requests, &mut writer),
            );
            let (answer, version, close, outcome) = match read.await {
                Ok(Ok((head, body, budget))) => {
                    let (version, close) = (head.version, head.close);
                    // The app closing its connection after a request the agent asked it to
                    // close (a HEAD, say) is no reason to close the client's.
                    let agents_close = head.closes_app_connection(&body);
                    let answer = self.answer(conn, head, body, peer).await;
                    drop(budget);
                    let close = close || answer.as_ref().is_ok_and(|r| r.close && !agents_close);
                    match answer {
                        Ok(response) => (response, version, close, Outcome::Answered),
                        Err(error) => {
                            tracing::debug!(%peer, %error, "request not answered");
                            let unknown = error == SubmitError::Timeout;
                            let outcome = match error {
                                SubmitError::Timeout => Outcome::Unknown,
                                SubmitError::App(_) => Outcome::AppFailed,
                                _ => Outcome::Unavailable,
                            };
                            (refusal(&error), version, close || unknown, outcome)
                        }
                    }
                }
                Ok(Err(ReadError::Closed)) => break,
                Ok(Err(ReadError::Invalid(invalid))) => {
                    tracing::debug!(%peer, %invalid, "request refused");
                    self.node
                        .telemetry
                        .request(Outcome::Refused, invalid.status());
                    let own = Response::own(
                        invalid.status(),
                        "text/plain",
                        format!("hermes: {invalid}\n"),
                    );
                    refuse(requests, writer, own).await;
                    return;
                }
                Err(_) => {
                    self.node.telemetry.request(Outcome::Refused, 408);
                    let own =
                        Response::own(408, "text/plain", "hermes: request not complete in time\n");
                    refuse(requests, writer, own).await;
                    return;
                }
            };
            let (head, body) = answer.to_client(version, close);
            let Some(mut held) = self.hold(head.len() + body.len()) else {
                tracing::debug!(
                    %peer,
                    bytes = head.len() + body.len(),
                    "the node holds as many answers for clients as --body-budget allows: \
                     resetting a client rather than sending part of its answer"
                );
                self.node.telemetry.request(Outcome::Reset, answer.status);
                reset(requests, writer);
                return;
            };
            self.node.telemetry.request(outcome, answer.status);
            let stall = self.limits.client_timeout;
            if write(&mut writer, &head, &body, stall, Some(&mut held))
                .await
                .is_err()
                || close
            {
                break;
            }
        }
        let _ = writer.shutdown().await;
    }

    fn refuse(&self, client: TcpStream) {
        let _ = client.try_write(TOO_MANY);
    }
}

impl Http {
    /// Takes `bytes` of an answer from the node's budget for answers held for clients (given
    /// back as they are written); `None` when they do not fit.
    fn hold(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let bytes = u32::try_from(bytes).ok()?;
        Arc::clone(&self.answers).try_acquire_many_owned(bytes).ok()
    }

    /// Reads a request's head and body, with `100 Continue` when the client waits for it, and
    /// the body's bytes taken from the node's budget (given back when the permit drops).
    async fn read(
        &self,
        requests: &mut Reader<OwnedReadHalf>,
        writer: &mut OwnedWriteHalf,
    ) -> Result<(RequestHead, Bytes, Option<OwnedSemaphorePermit>), ReadError> {
        let head = requests.head().await?;
        if let Framing::Length(n) = head.framing
            && n > self.limits.http.max_body
        {
            return Err(Invalid::BodyTooLarge(self.limits.http.max_body).into());
        }
        if head.expect_continue && !requests.has_buffered() {
            let _ = writer.write_all(CONTINUE).await;
        }
        let mut budget: Option<OwnedSemaphorePermit> = None;
        let take = |bytes: u64| {
            let Ok(bytes) = u32::try_from(bytes) else {
                return false;
            };
            match Arc::clone(&self.budget).try_acquire_many_owned(bytes) {
                Ok(permit) => {
                    match &mut budget {
                        Some(held) => held.merge(permit),
                        None => budget = Some(permit),
                    }
                    true
                }
                Err(_) => false,
            }
        };
        let body = requests.body(&head, take, Invalid::Overloaded).await?;
        Ok((head, body, budget))
    }

    /// Orders the request of client connection `conn` (or reads off the log) and returns the
    /// app's answer.
    async fn answer(
        &self,
        conn: u64,
        head: RequestHead,
        body: Bytes,
        peer: SocketAddr,
    ) -> Result<Response, SubmitError> {
        let read = self.reads.mode_for(&head.method);
        let payload = Ordered::encode(conn, head, peer.ip(), &body);
        drop(body);
        match read {
            Some(mode) => self.node.read(payload, mode).await,
            None => self.node.submit(payload).await,
        }
    }
}

/// The agent's own answer when the app's cannot be had.
fn refusal(error: &SubmitError) -> Response {
    let status = match error {
        SubmitError::Overloaded | SubmitError::NoLeader | SubmitError::NotMember => 503,
        SubmitError::Timeout => 504,
        SubmitError::App(_) => 502,
    };
    let own = Response::own(status, "text/plain", format!("hermes: {error}\n"));
    if status == 503 {
        own.with_field("Retry-After", "1")
    } else {
        own
    }
}

/// Writes an answer; a client that takes nothing of it for `stall` is dropped, so that it
/// cannot hold its connection and the answer's memory for ever. The budget `held` for the
/// answer is given back as it is written.
async fn write(
    writer: &mut OwnedWriteHalf,
    head: &[u8],
    body: &[u8],
    stall: Duration,
    mut held: Option<&mut OwnedSemaphorePermit>,
) -> std::io::Result<()> {
    let joined;
    let parts: [&[u8]; 2] = if body.len() <= 16 * 1024 {
        joined = [head, body].concat();
        [joined.as_slice(), &[]]
    } else {
        [head, body]
    };
    for part in parts {
        let mut at = 0;
        while at < part.len() {
            let n = tokio::time::timeout(stall, writer.write(&part[at..]))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            at += n;
            if let Some(held) = held.as_deref_mut() {
                drop(held.split(n));
            }
        }
    }
    Ok(())
}

/// Resets the client's connection rather than closing it: the client sees an error, not an
/// orderly end it could take for a whole answer or for an idle connection's close.
fn reset(requests: Reader<OwnedReadHalf>, writer: OwnedWriteHalf) {
    let _ = nix::sys::socket::setsockopt(
        writer.as_ref(),
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    // No FIN first: the reset comes when the last half is dropped.
    writer.forget();
    drop(requests);
}

/// Answers a refused request and closes, draining what the client still sends for a moment so
/// that it reads the answer rather than a reset.
async fn refuse(requests: Reader<OwnedReadHalf>, mut writer: OwnedWriteHalf, own: Response) {
    let (head, body) = own.to_client(Version::Http11, true);
    if write(&mut writer, &head, &body, LINGER, None)
        .await
        .is_err()
    {
        return;
    }
    let _ = writer.shutdown().await;
    let mut reader = requests.into_inner();
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
