//! HTTP/1.1 interception: reads each request of a steered connection, submits it for ordering,
//! and relays the app's response exactly as the app sent it. Keep-alive and pipelining (answers
//! go back in request order), HTTP/1.0, `Expect: 100-continue`, `X-Forwarded-For`. A request that
//! breaks a rule gets its status (400, 408, 413, 431, 501), closes the connection, and is never
//! ordered.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::Handler;
use crate::{
    deliver::Response,
    http::{self, Body, Invalid},
    order::{Node, SubmitError, read::ReadMode},
};

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 32 * 1024;
/// Requests of one connection in flight at once.
const PIPELINE: usize = 16;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body: u64,
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

/// A request read from a client.
struct Request {
    /// As the app will get it.
    payload: Bytes,
    method: String,
    /// The connection closes after it.
    close: bool,
}

/// Why a request is refused; each maps to a status.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("request not complete within {0:?}")]
    TooSlow(Duration),
}

impl Refusal {
    fn status(&self) -> (u16, &'static str) {
        match self {
            Self::Invalid(Invalid::Malformed(_)) => (400, "Bad Request"),
            Self::Invalid(Invalid::HeadersTooLarge) => (431, "Request Header Fields Too Large"),
            Self::Invalid(Invalid::Unsupported(_)) => (501, "Not Implemented"),
            Self::BodyTooLarge(_) => (413, "Content Too Large"),
            Self::TooSlow(_) => (408, "Request Timeout"),
        }
    }
}

/// What the writer sends back, in request order.
enum Reply {
    Continue,
    Answer {
        answer: JoinHandle<Result<Response, SubmitError>>,
        close: bool,
    },
    Refuse(Refusal),
}

impl Handler for Http {
    async fn serve(self, client: TcpStream, peer: SocketAddr, mut stop: watch::Receiver<bool>) {
        let _ = client.set_nodelay(true);
        let (mut reader, writer) = client.into_split();
        let (replies, queue) = mpsc::channel(PIPELINE);
        let writer = tokio::spawn(write_replies(writer, queue, peer));
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let forwarded = peer.ip().to_canonical().to_string();
        loop {
            let request = read_request(
                &mut reader,
                &mut buf,
                &self.limits,
                &mut stop,
                &replies,
                &forwarded,
            )
            .await;
            let reply = match request {
                Ok(Some(Request {
                    payload,
                    method,
                    close,
                })) => {
                    let node = Arc::clone(&self.node);
                    let read = self.reads.mode_for(&method);
                    let answer = tokio::spawn(async move {
                        match read {
                            Some(mode) => node.read(payload, mode).await,
                            None => node.submit(payload).await,
                        }
                    });
                    Reply::Answer { answer, close }
                }
                Ok(None) => break,
                Err(refusal) => {
                    tracing::debug!(%peer, %refusal, "request refused");
                    Reply::Refuse(refusal)
                }
            };
            let last = matches!(reply, Reply::Refuse(_) | Reply::Answer { close: true, .. });
            if replies.send(reply).await.is_err() || last {
                break;
            }
        }
        drop(replies);
        let _ = writer.await;
    }
}

/// Reads one request; `Ok(None)` when the connection is done (closed, idle, or stopping).
async fn read_request(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    limits: &Limits,
    stop: &mut watch::Receiver<bool>,
    replies: &mpsc::Sender<Reply>,
    forwarded: &str,
) -> Result<Option<Request>, Refusal> {
    if buf.is_empty() {
        tokio::select! {
            read = reader.read_buf(buf) => if !matches!(read, Ok(n) if n > 0) { return Ok(None) },
            _ = stop.wait_for(|stop| *stop) => return Ok(None),
            () = tokio::time::sleep(limits.idle_timeout) => return Ok(None),
        }
    }
    let read = async {
        let head = loop {
            if let Some(head) = http::parse_request(buf)? {
                break head;
            }
            if buf.len() > MAX_HEAD {
                return Err(Invalid::HeadersTooLarge.into());
            }
            if !matches!(reader.read_buf(buf).await, Ok(n) if n > 0) {
                return Ok(None);
            }
        };
        if head.len > MAX_HEAD {
            return Err(Invalid::HeadersTooLarge.into());
        }
        if let Body::Length(n) = head.body
            && n > limits.max_body
        {
            return Err(Refusal::BodyTooLarge(limits.max_body));
        }
        if head.expect_continue && head.body != Body::None && buf.len() == head.len {
            let _ = replies.send(Reply::Continue).await;
        }
        let body_len = match head.body {
            Body::None | Body::UntilClose => 0,
            Body::Length(n) => {
                let n = n as usize;
                while buf.len() < head.len + n {
                    buf.reserve(head.len + n - buf.len());
                    if !matches!(reader.read_buf(buf).await, Ok(n) if n > 0) {
                        return Ok(None);
                    }
                }
                n
            }
            Body::Chunked => {
                let mut chunked = http::Chunked::default();
                loop {
                    if let Some(len) = chunked.end(&buf[head.len..])? {
                        break len;
                    }
                    if (buf.len() - head.len) as u64 > limits.max_body {
                        return Err(Refusal::BodyTooLarge(limits.max_body));
                    }
                    if !matches!(reader.read_buf(buf).await, Ok(n) if n > 0) {
                        return Ok(None);
                    }
                }
            }
        };
        if body_len as u64 > limits.max_body {
            return Err(Refusal::BodyTooLarge(limits.max_body));
        }
        let message = buf.split_to(head.len + body_len);
        let forwarded_for = match &head.forwarded_for {
            Some(earlier) => format!("X-Forwarded-For: {earlier}, {forwarded}"),
            None => format!("X-Forwarded-For: {forwarded}"),
        };
        let payload = http::rewrite(
            &message,
            head.len,
            &forwarded_for,
            &["x-forwarded-for", "expect"],
        );
        Ok(Some(Request {
            payload: Bytes::from(payload),
            method: head.method,
            close: head.close,
        }))
    };
    tokio::time::timeout(limits.client_timeout, read)
        .await
        .map_err(|_| Refusal::TooSlow(limits.client_timeout))?
}

async fn write_replies(
    mut writer: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Reply>,
    peer: SocketAddr,
) {
    while let Some(reply) = queue.recv().await {
        let (bytes, close) = match reply {
            Reply::Continue => (Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"), false),
            Reply::Answer { answer, close } => match answer.await {
                Ok(Ok(response)) => (response.bytes, close || response.close),
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "request not answered");
                    let (status, reason, retry) = match error {
                        SubmitError::Overloaded | SubmitError::NoLeader => {
                            (503, "Service Unavailable", true)
                        }
                        SubmitError::Timeout => (504, "Gateway Timeout", false),
                        SubmitError::App(_) => (502, "Bad Gateway", false),
                    };
                    (
                        own_response(status, reason, &format!("hermes: {error}\n"), retry, close),
                        close,
                    )
                }
                Err(error) => {
                    tracing::error!(%peer, %error, "request task failed");
                    (
                        own_response(
                            500,
                            "Internal Server Error",
                            "hermes: internal error\n",
                            false,
                            true,
                        ),
                        true,
                    )
                }
            },
            Reply::Refuse(refusal) => {
                let (status, reason) = refusal.status();
                (
                    own_response(status, reason, &format!("hermes: {refusal}\n"), false, true),
                    true,
                )
            }
        };
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
        if close {
            break;
        }
    }
    let _ = writer.shutdown().await;
}

/// A response of the agent's own, when there is no app response to relay.
fn own_response(status: u16, reason: &str, body: &str, retry: bool, close: bool) -> Bytes {
    http::response(status, reason, "text/plain", body, retry, close)
}
