//! Requests from clients, parsed strictly (RFC 9112, RFC 9110) and re-serialized in one canonical
//! form: that form, never the client's bytes, is what is ordered and what every replica's app
//! receives. So no leniency of ours can differ from the app's: there is nothing left to disagree
//! on. What is ambiguous is refused before anything is ordered.
//!
//! The canonical request: the request line as parsed; the client's end-to-end fields in their
//! order, as `name: value` with CRLF; then `X-Forwarded-For` and `Forwarded` (the client's own
//! values extended with its address), `Connection: close` for a request after which the agent does
//! not use its connection to the app again (see [`CLOSE`]), else `Connection: keep-alive` for
//! HTTP/1.0, one `Content-Length` for a request with a body, and the decoded body. Hop-by-hop
//! fields, `Transfer-Encoding`, `Expect` and trailers are not passed on.
use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{
    Invalid, Version,
    chunked::Chunked,
    fields::{self, Coding, Codings, Persistence},
};

/// Bounds on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line and fields, leading empty lines included.
    pub max_head: usize,
    /// Field lines.
    pub max_fields: usize,
    /// Decoded body.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 32 * 1024,
            max_fields: 100,
            max_body: 8 << 20,
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head, checked, with its canonical form so far.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    target: String,
    pub version: Version,
    pub framing: Framing,
    /// The client asked for `100 Continue` before it sends the body (never for HTTP/1.0).
    pub expect_continue: bool,
    /// The connection closes after this request.
    pub close: bool,
    /// The request line and the end-to-end fields, canonical.
    canonical: Vec<u8>,
    /// The client's `X-Forwarded-For` and `Forwarded` values, joined.
    forwarded_for: Vec<u8>,
    forwarded: Vec<u8>,
}

/// Finds and parses the head at the start of `buf`: `Ok(None)` until all of it is in; then the
/// head and the number of bytes it took. `scan` keeps how far earlier calls looked, so that a
/// head arriving in many pieces is scanned once.
pub fn parse_head(
    buf: &[u8],
    limits: &Limits,
    scan: &mut Scan,
) -> Result<Option<(RequestHead, usize)>, Invalid> {
    // RFC 9112 section 2.2: empty lines before the request line are ignored.
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    if start > limits.max_head {
        return Err(Invalid::HeadTooLarge);
    }
    // Not yet past the empty lines: scanning starts at the request line.
    if matches!(&buf[start..], [] | [b'\r']) {
        return Ok(None);
    }
    let Some(end) = scan.head_end(&buf[start..], limits.max_head - start)? else {
        return Ok(None);
    };
    let head = &buf[start..start + end];
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_fields];
    let mut request = httparse::Request::new(&mut slots);
    match request.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Ok(_) => return Err(Invalid::Malformed("request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(Invalid::HeadTooLarge),
        Err(httparse::Error::Token | httparse::Error::Version) => {
            return Err(Invalid::Malformed("request line"));
        }
        Err(_) => return Err(Invalid::Malformed("field line")),
    }
    let method = request.method.ok_or(Invalid::Malformed("request line"))?;
    let target = request.path.ok_or(Invalid::Malformed("request line"))?;
    let version = match request.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(Invalid::Malformed("HTTP version")),
    };
    // Methods are case-sensitive (RFC 9110 section 9.1), but servers that fold case would take
    // `connect` for a tunnel and `head` for a request whose answer has no body: the app and the
    // agent would frame the exchange differently. No one implements these spellings: 501.
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Invalid::Unsupported("CONNECT"));
    }
    if method != "HEAD" && method.eq_ignore_ascii_case("HEAD") {
        return Err(Invalid::Unsupported("HEAD spelled in another case"));
    }
    check_target(method, target)?;

    let mut canonical = Vec::with_capacity(head.len() + 128);
    canonical.extend_from_slice(method.as_bytes());
    canonical.push(b' ');
    canonical.extend_from_slice(target.as_bytes());
    canonical.extend_from_slice(version.text());
    canonical.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut codings = Codings::default();
    let mut persistence = Persistence::default();
    let mut hosts = 0;
    let mut expect_continue = false;
    let (mut forwarded_for, mut forwarded) = (Vec::new(), Vec::new());
    for field in request.headers.iter() {
        let (name, value) = (field.name, fields::trim_blanks(field.value));
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        if is("content-length") {
            if length.is_some() {
                return Err(Invalid::Malformed("more than one Content-Length"));
            }
            length = Some(fields::content_length(value)?);
        } else if is("transfer-encoding") {
            if version == Version::Http10 {
                return Err(Invalid::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            codings.add(value);
        } else if is("connection") {
            persistence.add(value);
        } else if is("upgrade") {
            return Err(Invalid::Unsupported("Upgrade"));
        } else if is("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(Invalid::Expectation);
            }
            // RFC 9110 section 10.1.1: an HTTP/1.0 client's expectation is ignored.
            expect_continue = version == Version::Http11;
        } else if is("x-forwarded-for") {
            join(&mut forwarded_for, value);
        } else if is("forwarded") {
            join(&mut forwarded, value);
        } else if fields::is_disguised(name) {
            return Err(Invalid::Malformed(
                "a field name with `_` for `-` that spells a framing field",
            ));
        } else if fields::is_end_to_end(name) {
            if is("host") {
                hosts += 1;
                if !fields::is_host(value) {
                    return Err(Invalid::Malformed("Host"));
                }
            }
            canonical.extend_from_slice(name.as_bytes());
            canonical.extend_from_slice(b": ");
            canonical.extend_from_slice(value);
            canonical.extend_from_slice(b"\r\n");
        }
    }
    match (version, hosts) {
        (Version::Http11, 1) | (Version::Http10, 0 | 1) => {}
        (_, 0) => return Err(Invalid::Malformed("no Host")),
        _ => return Err(Invalid::Malformed("more than one Host")),
    }
    let framing = match (codings.coding(), length) {
        (Coding::None, None) => Framing::None,
        (Coding::None, Some(n)) => Framing::Length(n),
        (_, Some(_)) => {
            return Err(Invalid::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        (Coding::Chunked, None) => Framing::Chunked,
        (Coding::ChunkedAfterOthers, None) => {
            return Err(Invalid::Unsupported("transfer codings other than chunked"));
        }
        (Coding::Unframed, None) => {
            return Err(Invalid::Malformed(
                "Transfer-Encoding that does not end in chunked",
            ));
        }
    };
    if framing == Framing::None {
        expect_continue = false;
    }
    let head = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        version,
        framing,
        expect_continue,
        close: persistence.closes(version.minor()),
        canonical,
        forwarded_for,
        forwarded,
    };
    Ok(Some((head, start + end)))
}

/// How far the search for the end of a head has come.
#[derive(Debug, Default)]
pub struct Scan {
    at: usize,
    line_start: usize,
}

impl Scan {
    /// Where the empty line ending the head at the start of `buf` ends, once it is in. Every
    /// line must end in CRLF: a bare CR or LF is an error.
    fn head_end(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, Invalid> {
        while let Some(&byte) = buf.get(self.at) {
            let after_cr = self.at > 0 && buf[self.at - 1] == b'\r';
            match byte {
                b'\n' if !after_cr => return Err(Invalid::Malformed("bare LF")),
                b'\n' if self.at - 1 == self.line_start => return Ok(Some(self.at + 1)),
                b'\n' => self.line_start = self.at + 1,
                _ if after_cr => return Err(Invalid::Malformed("bare CR")),
                _ => {}
            }
            self.at += 1;
            // `at` bytes are in and the head is not over: it is longer than that.
            if self.at >= max {
                return Err(Invalid::HeadTooLarge);
            }
        }
        Ok(None)
    }
}

/// The request-target (RFC 9112 section 3.2): visible ASCII, no fragment; origin form, absolute
/// form for http(s), or `*` for OPTIONS. (Authority form is CONNECT's, refused before.)
fn check_target(method: &str, target: &str) -> Result<(), Invalid> {
    const BAD: Invalid = Invalid::Malformed("request target");
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(BAD);
    }
    if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        return Ok(());
    }
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let authority = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Err(BAD);
    };
    let host = authority.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || !fields::is_host(host.as_bytes()) {
        return Err(BAD);
    }
    Ok(())
}

fn join(list: &mut Vec<u8>, value: &[u8]) {
    if !list.is_empty() {
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(value);
}

impl RequestHead {
    /// The request-target, as the client sent it (checked).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The value of the first end-to-end field called `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.canonical
            .split(|b| *b == b'\n')
            .skip(1)
            .find_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|b| *b == b':')?;
                let value = line[colon + 1..]
                    .strip_prefix(b" ")
                    .unwrap_or(&line[colon + 1..]);
                line[..colon]
                    .eq_ignore_ascii_case(name.as_bytes())
                    .then_some(value)
            })
    }

    /// Whether the canonical form of this request with `body` carries [`CLOSE`]: the agent's
    /// own doing, which the client did not ask for.
    pub fn closes_app_connection(&self, body: &[u8]) -> bool {
        closes_app_connection(&self.method, body)
    }

    /// The canonical request, for a client at `client` and the decoded `body`.
    pub fn canonical(self, client: IpAddr, body: &[u8]) -> Bytes {
        self.canonical_after(&[], client, body)
    }

    /// `prefix`, then the canonical request (one copy of the body, whatever carries it).
    pub fn canonical_after(self, prefix: &[u8], client: IpAddr, body: &[u8]) -> Bytes {
        let client = client.to_canonical();
        let mut out = BytesMut::with_capacity(
            prefix.len()
                + self.canonical.len()
                + self.forwarded_for.len()
                + self.forwarded.len()
                + body.len()
                + 160,
        );
        out.extend_from_slice(prefix);
        out.extend_from_slice(&self.canonical);
        let list_with = |out: &mut BytesMut, name: &[u8], list: &[u8], item: &str| {
            out.extend_from_slice(name);
            out.extend_from_slice(list);
            if !list.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(item.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        list_with(
            &mut out,
            b"X-Forwarded-For: ",
            &self.forwarded_for,
            &client.to_string(),
        );
        let node = match client {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        list_with(&mut out, b"Forwarded: ", &self.forwarded, &node);
        if closes_app_connection(&self.method, body) {
            out.extend_from_slice(CLOSE);
        } else if self.version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        if self.framing != Framing::None {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out.freeze()
    }
}

/// The field line a canonical request carries when the agent does not use its connection to the
/// app after it.
pub const CLOSE: &[u8] = b"Connection: close\r\n";

/// Whether a request gets `Connection: close`: a HEAD (apps that answer HEAD as GET send the
/// body late, which would become the next request's answer), and a request with a body whose
/// method gives a body no meaning (apps often do not read it, and would take it for the next
/// request).
fn closes_app_connection(method: &str, body: &[u8]) -> bool {
    method == "HEAD"
        || (!body.is_empty() && matches!(method, "GET" | "OPTIONS" | "DELETE" | "TRACE"))
}

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The client closed or failed; nothing to answer.
    #[error("the connection closed mid-request")]
    Closed,
}

/// Reads requests from a client, one at a time: the head, then (once the caller has decided to
/// take it) the body.
#[derive(Debug)]
pub struct Reader<R> {
    stream: R,
    buf: BytesMut,
    limits: Limits,
    scan: Scan,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(stream: R, limits: Limits) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(4096),
            limits,
            scan: Scan::default(),
        }
    }

    /// The stream, for what is left to do with it.
    pub fn into_inner(self) -> R {
        self.stream
    }

    /// Waits for the first byte of the next request; `false` when the client closed instead.
    pub async fn ready(&mut self) -> bool {
        !self.buf.is_empty() || self.fill().await.is_ok()
    }

    /// Whether bytes after the head have arrived already.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads the next request's head.
    pub async fn head(&mut self) -> Result<RequestHead, ReadError> {
        loop {
            if let Some((head, len)) = parse_head(&self.buf, &self.limits, &mut self.scan)? {
                let _ = self.buf.split_to(len);
                self.scan = Scan::default();
                return Ok(head);
            }
            self.fill().await?;
        }
    }

    /// Reads the body `head` announces, calling `reserve` with each growth of the decoded body
    /// before it is kept; `reserve` returning `false` ends reading with `refused`.
    pub async fn body(
        &mut self,
        head: &RequestHead,
        mut reserve: impl FnMut(u64) -> bool,
        refused: Invalid,
    ) -> Result<Bytes, ReadError> {
        let max = self.limits.max_body;
        match head.framing {
            Framing::None => Ok(Bytes::new()),
            Framing::Length(n) => {
                if n > max {
                    return Err(Invalid::BodyTooLarge(max).into());
                }
                if !reserve(n) {
                    return Err(refused.into());
                }
                let n = n as usize;
                self.buf.reserve(n.saturating_sub(self.buf.len()));
                while self.buf.len() < n {
                    self.fill().await?;
                }
                Ok(self.buf.split_to(n).freeze())
            }
            Framing::Chunked => {
                let mut chunked = Chunked::default();
                let mut body = Vec::new();
                loop {
                    let before = body.len();
                    let used = chunked.decode(&self.buf, &mut body, max)?;
                    let _ = self.buf.split_to(used);
                    if !reserve((body.len() - before) as u64) {
                        return Err(refused.into());
                    }
                    if chunked.done() {
                        return Ok(Bytes::from(body));
                    }
                    self.fill().await?;
                }
            }
        }
    }

    /// Reads more bytes; `Closed` at the end of the stream or on an error.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(ReadError::Closed),
        }
    }
}
