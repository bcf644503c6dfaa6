//! Responses: the app's, framed totally (RFC 9112 section 6.3) whatever it sends, and the agent's
//! own. Both reach a client re-serialized by [`Response::to_client`]: the status line and the
//! end-to-end fields as the app gave them, and framing of the agent's (`Content-Length`,
//! `Connection`). Transfer codings, hop-by-hop fields and trailers are not passed on, so a client
//! never sees framing it could read differently from the agent.
//!
//! An app's response that cannot be framed or passed on is an [`ReadError::Invalid`], never a
//! panic or a wait: the caller closes the connection (what follows on it cannot be trusted).
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{
    Version,
    chunked::Chunked,
    fields::{self, Coding, Codings, Persistence},
};

/// Bounds on what an app may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head: usize,
    pub max_fields: usize,
    /// Decoded body.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 64 * 1024,
            max_fields: 256,
            max_body: 64 << 20,
        }
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `HTTP/1.1 <status> <reason>` and the end-to-end fields, each line with its CRLF.
    head: Bytes,
    pub body: Bytes,
    /// No body by rule: an answer to HEAD, or a 204 or 304.
    bodiless: bool,
    /// The `Content-Length` the app gave a bodiless answer (it describes the body a GET would
    /// get), passed on as it is.
    declared: Option<u64>,
    /// A bodiless answer that announced a body (a length, or a coding): an app may send one
    /// anyway, late.
    lingering: bool,
    /// The app closes its connection after this response.
    pub close: bool,
}

/// Why no response could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The app sent something that is not a response the agent can frame and pass on.
    #[error("invalid response from the app: {0}")]
    Invalid(&'static str),
    /// The connection ended (closed, reset) before any byte of a response.
    #[error("the app's connection ended before it answered")]
    Closed,
    /// The connection ended in the middle of the response: the app had the request.
    #[error("the app's connection ended in the middle of its answer")]
    Cut,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    head: Vec<u8>,
    framing: Framing,
    bodiless: bool,
    declared: Option<u64>,
    lingering: bool,
    close: bool,
    /// Why the response, though it can be framed, cannot be passed on.
    unrelayable: Option<&'static str>,
}

/// Reads one final response from `stream` (1xx interim answers are skipped) into a response for
/// a request with `method`. `buf` holds bytes read earlier; what follows the response stays in
/// it.
pub async fn read(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    method: &str,
    limits: &Limits,
) -> Result<Response, ReadError> {
    let mut received = !buf.is_empty();
    let head = loop {
        let (head, len) = loop {
            if let Some(parsed) = parse_head(buf, method == "HEAD", limits)? {
                break parsed;
            }
            if buf.len() > limits.max_head {
                return Err(ReadError::Invalid("head too large"));
            }
            fill(stream, buf, &mut received).await?;
        };
        buf.advance(len);
        match head.status {
            101 => {
                return Err(ReadError::Invalid(
                    "101 to a request that asked for no upgrade",
                ));
            }
            100..=199 => continue,
            _ => {}
        }
        // Known from the head: no need to wait for a body that would not be passed on.
        if let Some(reason) = head.unrelayable {
            return Err(ReadError::Invalid(reason));
        }
        break head;
    };
    let too_large = ReadError::Invalid("body larger than the limit");
    let body = match head.framing {
        Framing::None => Bytes::new(),
        Framing::Length(n) => {
            if n > limits.max_body {
                return Err(too_large);
            }
            let n = n as usize;
            // The length is the sender's word: the rest is reserved as it comes.
            buf.reserve(n.saturating_sub(buf.len()).min(RESERVED_AHEAD));
            while buf.len() < n {
                fill(stream, buf, &mut received).await?;
            }
            buf.split_to(n).freeze()
        }
        Framing::Chunked => {
            let mut chunked = Chunked::default();
            let mut body = Vec::new();
            loop {
                let used = chunked
                    .decode(buf, &mut body, limits.max_body)
                    .map_err(|_| ReadError::Invalid("chunked body"))?;
                buf.advance(used);
                if chunked.done() {
                    break Bytes::from(body);
                }
                fill(stream, buf, &mut received).await?;
            }
        }
        Framing::UntilClose => loop {
            if buf.len() as u64 > limits.max_body {
                return Err(too_large);
            }
            buf.reserve(16 * 1024);
            match stream.read_buf(buf).await {
                Ok(0) => break buf.split().freeze(),
                Ok(_) => {}
                Err(_) => return Err(ReadError::Cut),
            }
        },
    };
    Ok(Response {
        status: head.status,
        head: Bytes::from(head.head),
        body,
        bodiless: head.bodiless,
        declared: head.declared,
        lingering: head.lingering,
        close: head.close,
    })
}

/// Reads more; `received` says whether any byte of the response came before.
/// The most reserved at once for a body whose length the head announced.
const RESERVED_AHEAD: usize = 1 << 20;

async fn fill(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    received: &mut bool,
) -> Result<(), ReadError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    match stream.read_buf(buf).await {
        Ok(n) if n > 0 => {
            *received = true;
            Ok(())
        }
        _ if *received => Err(ReadError::Cut),
        _ => Err(ReadError::Closed),
    }
}

/// Parses the response head at the start of `buf`, once it is complete.
fn parse_head(
    buf: &[u8],
    head_request: bool,
    limits: &Limits,
) -> Result<Option<(Head, usize)>, ReadError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_fields];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::Invalid("too many fields")),
        Err(_) => return Err(ReadError::Invalid("malformed head")),
    };
    // Whether the head came in one read or in many.
    if len > limits.max_head {
        return Err(ReadError::Invalid("head too large"));
    }
    let status = response.code.ok_or(ReadError::Invalid("no status"))?;
    // RFC 9110 section 15: 100 to 599; outside, not even three digits once re-serialized.
    if !(100..=599).contains(&status) {
        return Err(ReadError::Invalid("status code out of range"));
    }
    let minor = response.version.ok_or(ReadError::Invalid("no version"))?;
    let mut head = Vec::with_capacity(len + 64);
    head.extend_from_slice(format!("HTTP/1.1 {status} ").as_bytes());
    head.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut lengths: Option<Result<u64, ()>> = None;
    let mut codings = Codings::default();
    let mut persistence = Persistence::default();
    for field in response.headers.iter() {
        let (name, value) = (field.name, fields::trim_blanks(field.value));
        if name.eq_ignore_ascii_case("content-length") {
            for element in value.split(|b| *b == b',').map(fields::trim_blanks) {
                let length = fields::content_length(element).map_err(drop);
                lengths = match lengths {
                    None => Some(length),
                    Some(seen) if seen == length => Some(seen),
                    Some(_) => Some(Err(())),
                };
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.add(value);
        } else if name.eq_ignore_ascii_case("connection") {
            persistence.add(value);
        } else if fields::is_end_to_end(name) {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
    }
    let bodiless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let coding = codings.coding();
    // RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing; the
    // connection closes after it.
    let mut close = persistence.closes(minor) || (minor == 0 && coding != Coding::None);
    let mut unrelayable = None;
    let framing = if bodiless {
        Framing::None
    } else {
        match (coding, lengths) {
            (Coding::Chunked, length) => {
                // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length; such a
                // message may be an attack, so the connection is not used again.
                close |= length.is_some();
                Framing::Chunked
            }
            (Coding::ChunkedAfterOthers, _) => {
                unrelayable = Some("a transfer coding other than chunked");
                Framing::Chunked
            }
            (Coding::Unframed, _) => {
                unrelayable = Some("a transfer coding other than chunked");
                Framing::UntilClose
            }
            (Coding::None, Some(Ok(n))) => Framing::Length(n),
            (Coding::None, Some(Err(()))) => {
                return Err(ReadError::Invalid("invalid or conflicting Content-Length"));
            }
            (Coding::None, None) => Framing::UntilClose,
        }
    };
    close |= framing == Framing::UntilClose;
    let declared = match lengths {
        Some(Ok(n)) if bodiless && coding == Coding::None => Some(n),
        _ => None,
    };
    let lingering = bodiless && (declared.is_some_and(|n| n > 0) || coding != Coding::None);
    let head = Head {
        status,
        head,
        framing,
        bodiless,
        declared,
        lingering,
        close,
        unrelayable,
    };
    Ok(Some((head, len)))
}

impl Response {
    /// A response of the agent's own.
    pub fn own(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n",
            reason(status)
        );
        Self {
            status,
            head: Bytes::from(head),
            body: body.into(),
            bodiless: false,
            declared: None,
            lingering: false,
            close: false,
        }
    }

    /// Whether the app may still send bytes after this answer (a body it announced but must not
    /// send): its connection should not be used again.
    pub fn may_linger(&self) -> bool {
        self.lingering
    }

    /// Adds a field (`name: value`) to the head.
    pub fn with_field(mut self, name: &str, value: &str) -> Self {
        let mut head = BytesMut::from(&self.head[..]);
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        self.head = head.freeze();
        self
    }

    /// The head and the body to send to a client of HTTP/`client` version; `close` says that the
    /// connection closes after it.
    pub fn to_client(&self, client: Version, close: bool) -> (Bytes, Bytes) {
        let mut head = BytesMut::with_capacity(self.head.len() + 64);
        head.extend_from_slice(&self.head);
        let length = if self.status == 204 || (100..200).contains(&self.status) {
            None
        } else if self.bodiless {
            self.declared
        } else {
            Some(self.body.len() as u64)
        };
        if let Some(length) = length {
            head.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
        }
        if close {
            head.extend_from_slice(b"Connection: close\r\n");
        } else if client == Version::Http10 {
            head.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let body = if self.bodiless {
            Bytes::new()
        } else {
            self.body.clone()
        };
        (head.freeze(), body)
    }
}

/// The reason phrase the agent gives its own responses.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A length announced far beyond what comes costs what came, not what was announced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_announced_length_is_not_reserved_ahead_of_its_bytes() {
        let limits = Limits {
            max_body: u64::MAX,
            ..Limits::default()
        };
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\npartial";
        let mut buf = BytesMut::new();
        let read = read(&mut &answer[..], &mut buf, "GET", &limits).await;
        assert!(matches!(read, Err(ReadError::Cut)));
        assert!(buf.capacity() <= 2 * RESERVED_AHEAD, "{}", buf.capacity());
    }
}
