//! Delivery: sends ordered requests to the unchanged local app over a kept-alive connection,
//! one at a time, and reads each full response. When the app is unreachable or fails mid-way, it
//! waits and retries, forever: an entry is never skipped.
//!
//! Every request carries a `Hermes-Log-Index` header with its log index. Apps may ignore it; an
//! app that wants exactly-once records the index with its state and recognises the one request
//! that can arrive twice: the entry in flight when the agent or the app crashed, or when a
//! connection failed mid-request, which is delivered again with the same index.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::http::{self, Body};

pub mod hooks;

/// Name of the header that marks a possible re-delivery.
pub const LOG_INDEX_HEADER: &str = "Hermes-Log-Index";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The app's complete response, as it sent it.
#[derive(Clone, Debug)]
pub struct Response {
    pub bytes: Bytes,
    pub status: u16,
    /// Where the body starts in `bytes`.
    pub body_at: usize,
    /// The client connection must close after it (the app closed, or said so).
    pub close: bool,
}

impl Response {
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.body_at..]
    }
}

/// Why one exchange with the app failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("the app closed the connection before a complete response")]
    Closed,
    #[error("the app sent an invalid response: {0}")]
    Invalid(#[from] http::Invalid),
}

/// A kept-alive connection to the app, opened when first needed.
#[derive(Default)]
struct Connection {
    stream: Option<TcpStream>,
    buffer: BytesMut,
}

impl Connection {
    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Sends `request` and reads the full response, once more on a new connection if a
    /// kept-alive one turns out closed (most likely by the app, while idle); the connection
    /// closes on failure, or when the app says so.
    async fn exchange(
        &mut self,
        addr: SocketAddr,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Response, AttemptError> {
        let reused = self.is_open();
        let mut result = self.try_exchange(addr, request, timeout).await;
        if reused && matches!(result, Err(AttemptError::Closed)) {
            self.stream = None;
            result = self.try_exchange(addr, request, timeout).await;
        }
        if !matches!(&result, Ok(response) if !response.close) {
            self.stream = None;
        }
        result
    }

    async fn try_exchange(
        &mut self,
        addr: SocketAddr,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Response, AttemptError> {
        if self.stream.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| AttemptError::Connect(std::io::ErrorKind::TimedOut.into()))?
                .map_err(AttemptError::Connect)?;
            stream.set_nodelay(true).map_err(AttemptError::Connect)?;
            self.stream = Some(stream);
        }
        self.buffer.clear();
        let method = http::method_of(request);
        let (stream, buffer) = (
            self.stream.as_mut().expect("connected above"),
            &mut self.buffer,
        );
        tokio::time::timeout(timeout, async {
            stream.write_all(request).await?;
            read_response(stream, buffer, method).await
        })
        .await
        .map_err(|_| AttemptError::Timeout(timeout))?
    }
}

/// The local application, as the state machine delivers to it.
pub struct App {
    addr: SocketAddr,
    timeout: Duration,
    connection: Connection,
    /// Whether the last attempt reached the app; readiness reports it.
    reachable: Arc<AtomicBool>,
}

impl App {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            connection: Connection::default(),
            reachable: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Shared flag: did the last delivery attempt reach the app?
    pub fn reachable(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reachable)
    }

    /// Delivers `request`, the entry at `index`, and returns the app's response, retrying until
    /// it gets one.
    pub async fn deliver(&mut self, request: &[u8], index: u64) -> Response {
        let mut delay = RETRY_MIN;
        let mut failures = 0u64;
        let request = with_log_index(request, index);
        loop {
            match self
                .connection
                .exchange(self.addr, &request, self.timeout)
                .await
            {
                Ok(response) => {
                    if failures > 0 {
                        tracing::info!(index, failures, app = %self.addr, "app reachable again");
                    }
                    self.reachable.store(true, Ordering::Relaxed);
                    return response;
                }
                Err(error) => {
                    self.reachable.store(false, Ordering::Relaxed);
                    if (failures + 1).is_power_of_two() {
                        tracing::warn!(index, failures, app = %self.addr, %error, "delivery failed; retrying");
                    }
                    failures += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// Requests that are not ordered (reads, with `--reads linearizable|local`), sent to the app on
/// connections of their own, concurrently with the ordered ones.
pub struct Reads {
    addr: SocketAddr,
    timeout: Duration,
    idle: std::sync::Mutex<Vec<Connection>>,
}

impl Reads {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            idle: std::sync::Mutex::default(),
        }
    }

    /// Sends `request` once (again on a new connection if a kept-alive one had gone stale).
    pub async fn send(&self, request: &[u8]) -> Result<Response, AttemptError> {
        let mut connection = self.idle.lock().unwrap().pop().unwrap_or_default();
        let result = connection.exchange(self.addr, request, self.timeout).await;
        if connection.is_open() {
            self.idle.lock().unwrap().push(connection);
        }
        result
    }
}

/// Reads one final response (skipping interim 1xx ones) into `buffer`.
async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    method: &str,
) -> Result<Response, AttemptError> {
    loop {
        let head = loop {
            if let Some(head) = http::parse_response(buffer, method)? {
                break head;
            }
            if buffer.len() > 64 * 1024 {
                return Err(http::Invalid::HeadersTooLarge.into());
            }
            read_more(stream, buffer).await?;
        };
        if (100..200).contains(&head.status) {
            let _ = buffer.split_to(head.len);
            continue;
        }
        let total = match head.body {
            Body::None => head.len,
            Body::Length(n) => {
                let total = head.len
                    + usize::try_from(n).map_err(|_| http::Invalid::Malformed("length"))?;
                buffer.reserve(total.saturating_sub(buffer.len()));
                while buffer.len() < total {
                    read_more(stream, buffer).await?;
                }
                total
            }
            Body::Chunked => {
                let mut chunked = http::Chunked::default();
                loop {
                    if let Some(len) = chunked.end(&buffer[head.len..])? {
                        break head.len + len;
                    }
                    read_more(stream, buffer).await?;
                }
            }
            Body::UntilClose => {
                while stream.read_buf(buffer).await? != 0 {}
                buffer.len()
            }
        };
        // Anything beyond the response is a protocol error of the app; do not reuse.
        let close = head.close || buffer.len() > total;
        let bytes = buffer.split_to(total).freeze();
        return Ok(Response {
            bytes,
            status: head.status,
            body_at: head.len,
            close,
        });
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut BytesMut) -> Result<(), AttemptError> {
    if buffer.capacity() - buffer.len() < 4096 {
        buffer.reserve(16 * 1024);
    }
    if stream.read_buf(buffer).await? == 0 {
        return Err(AttemptError::Closed);
    }
    Ok(())
}

fn with_log_index(request: &[u8], index: u64) -> Vec<u8> {
    let head = http::head_len(request).unwrap_or(request.len());
    let line = format!("{LOG_INDEX_HEADER}: {index}");
    http::rewrite(request, head, &line, &[LOG_INDEX_HEADER])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_their_log_index() {
        let marked = with_log_index(
            b"POST /insert HTTP/1.1\r\nHost: a\r\nHermes-Log-Index: 1\r\n\r\nbody",
            42,
        );
        assert_eq!(
            marked,
            b"POST /insert HTTP/1.1\r\nHost: a\r\nHermes-Log-Index: 42\r\n\r\nbody"
        );
    }
}
