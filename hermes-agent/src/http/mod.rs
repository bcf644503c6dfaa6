//! HTTP/1.1 message framing shared by interception (requests from clients) and delivery
//! (responses from the app). Parsing is httparse's; this module decides where a message ends,
//! without copying it: both sides relay the bytes exactly as received.
use bytes::Bytes;

/// Headers a message may have at most.
const MAX_HEADERS: usize = 100;

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why bytes are not a message we accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("header section too large")]
    HeadersTooLarge,
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl From<httparse::Error> for Invalid {
    fn from(error: httparse::Error) -> Self {
        match error {
            httparse::Error::TooManyHeaders => Self::HeadersTooLarge,
            _ => Self::Malformed("syntax"),
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Bytes of the request line and headers, including the blank line.
    pub len: usize,
    pub method: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub body: Body,
    /// The client asked for `100 Continue` before sending the body.
    pub expect_continue: bool,
    /// The connection must close after the response.
    pub close: bool,
    /// Value of an existing `X-Forwarded-For`, to extend.
    pub forwarded_for: Option<String>,
}

/// Parses a request head from the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, Invalid> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let method = request
        .method
        .ok_or(Invalid::Malformed("no method"))?
        .to_owned();
    let version = request.version.ok_or(Invalid::Malformed("no version"))?;
    if method == "CONNECT" {
        return Err(Invalid::Unsupported("CONNECT"));
    }
    let framing = Framing::of(request.headers)?;
    if framing.upgrade {
        return Err(Invalid::Unsupported("Upgrade"));
    }
    let body = match (framing.chunked, framing.length) {
        (true, Some(_)) => return Err(Invalid::Malformed("both Content-Length and chunked")),
        (true, None) => Body::Chunked,
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::None,
    };
    let close = if version == 0 {
        !framing.keep_alive
    } else {
        framing.close
    };
    let forwarded_for = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_owned);
    Ok(Some(RequestHead {
        len,
        method,
        version,
        body,
        expect_continue: framing.expect_continue,
        close,
        forwarded_for,
    }))
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub body: Body,
    /// The app closes the connection after this response.
    pub close: bool,
}

/// Parses a response head; `request_method` decides whether a body follows (`HEAD`).
pub fn parse_response(buf: &[u8], request_method: &str) -> Result<Option<ResponseHead>, Invalid> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.ok_or(Invalid::Malformed("no status"))?;
    let version = response.version.ok_or(Invalid::Malformed("no version"))?;
    let framing = Framing::of(response.headers)?;
    let body = if request_method == "HEAD"
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        Body::None
    } else if framing.chunked {
        Body::Chunked
    } else if let Some(n) = framing.length {
        Body::Length(n)
    } else {
        Body::UntilClose
    };
    let close = body == Body::UntilClose
        || if version == 0 {
            !framing.keep_alive
        } else {
            framing.close
        };
    Ok(Some(ResponseHead {
        len,
        status,
        body,
        close,
    }))
}

/// What the headers say about framing and the connection.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    expect_continue: bool,
}

impl Framing {
    fn of(headers: &[httparse::Header<'_>]) -> Result<Self, Invalid> {
        let mut framing = Self::default();
        for header in headers {
            let value = std::str::from_utf8(header.value)
                .map_err(|_| Invalid::Malformed("header value"))?;
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let n: u64 = value
                    .trim()
                    .parse()
                    .map_err(|_| Invalid::Malformed("Content-Length"))?;
                if framing.length.is_some_and(|m| m != n) {
                    return Err(Invalid::Malformed("conflicting Content-Length"));
                }
                framing.length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Only `chunked`, and last, is something we can frame.
                let last = value.rsplit(',').next().unwrap_or("").trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return Err(Invalid::Unsupported("Transfer-Encoding other than chunked"));
                }
                framing.chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    framing.close |= token.eq_ignore_ascii_case("close");
                    framing.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                framing.upgrade = true;
            } else if name.eq_ignore_ascii_case("expect") {
                if !value.trim().eq_ignore_ascii_case("100-continue") {
                    return Err(Invalid::Unsupported("Expect other than 100-continue"));
                }
                framing.expect_continue = true;
            }
        }
        Ok(framing)
    }
}

/// Longest chunk-size line (the size and its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 32 * 1024;

/// Finds the end of a chunked body that starts at `buf[0]`, as it arrives: each call resumes
/// after the chunks already complete, so a body that comes in many pieces is scanned once.
#[derive(Default)]
pub struct Chunked {
    /// Where the first chunk not yet complete begins.
    at: usize,
}

impl Chunked {
    /// `Ok(Some(len))` once the last chunk and the trailers are in, `Ok(None)` if more bytes
    /// are needed (call again with the same `buf`, grown).
    pub fn end(&mut self, buf: &[u8]) -> Result<Option<usize>, Invalid> {
        loop {
            let (size_len, size) = match httparse::parse_chunk_size(&buf[self.at..]) {
                Ok(httparse::Status::Complete(parsed)) => parsed,
                Ok(httparse::Status::Partial) if buf.len() - self.at > MAX_CHUNK_LINE => {
                    return Err(Invalid::Malformed("chunk size line too long"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(Invalid::Malformed("chunk size")),
            };
            let data = self.at + size_len;
            if size == 0 {
                // Trailers: header lines up to an empty line.
                let mut at = data;
                loop {
                    match find_crlf(&buf[at..]) {
                        Some(0) => return Ok(Some(at + 2)),
                        Some(end) => at += end + 2,
                        None if buf.len() - data > MAX_TRAILERS => {
                            return Err(Invalid::HeadersTooLarge);
                        }
                        None => return Ok(None),
                    }
                }
            }
            let next = usize::try_from(size)
                .ok()
                .and_then(|size| data.checked_add(size)?.checked_add(2))
                .ok_or(Invalid::Malformed("chunk size"))?;
            if buf.len() < next {
                return Ok(None);
            }
            if &buf[next - 2..next] != b"\r\n" {
                return Err(Invalid::Malformed("chunk without CRLF"));
            }
            self.at = next;
        }
    }
}

/// The end of a complete chunked body at the start of `buf` (see [`Chunked`]).
#[cfg(test)]
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, Invalid> {
    Chunked::default().end(buf)
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// `message`, whose head is its first `head_len` bytes, with `line` (a header without CRLF)
/// added to the head and the headers named in `drop` removed; the body follows unchanged.
pub fn rewrite(message: &[u8], head_len: usize, line: &str, drop: &[&str]) -> Vec<u8> {
    let (head, body) = message.split_at(head_len);
    let mut out = Vec::with_capacity(message.len() + line.len() + 2);
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    if let Some(first) = lines.next() {
        out.extend_from_slice(first);
    }
    for header in lines {
        if header == b"\r\n" || header == b"\n" {
            break;
        }
        let name = header.split(|&b| b == b':').next().unwrap_or_default();
        if drop.iter().any(|d| name.eq_ignore_ascii_case(d.as_bytes())) {
            continue;
        }
        out.extend_from_slice(header);
    }
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// A complete response of the agent's own (not the app's): `retry` adds `Retry-After: 1`,
/// `close` says that the connection closes after it.
pub fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    body: &str,
    retry: bool,
    close: bool,
) -> Bytes {
    let retry = if retry { "Retry-After: 1\r\n" } else { "" };
    let connection = if close { "Connection: close\r\n" } else { "" };
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{retry}{connection}\r\n{body}",
        body.len()
    ))
}

/// The method of a serialised request: its first word.
pub fn method_of(request: &[u8]) -> &str {
    let end = request.iter().position(|&b| b == b' ').unwrap_or(0);
    std::str::from_utf8(&request[..end]).unwrap_or("")
}

/// Length of the head (request line, headers, blank line) of a complete serialised message.
pub fn head_len(message: &[u8]) -> Option<usize> {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_framing() {
        let head = parse_request(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.body, head.close, head.version),
            (Body::Length(5), false, 1)
        );
        assert_eq!(head.len, 48);
        let head = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(head.close, "HTTP/1.0 closes unless keep-alive");
        let head = parse_request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.close);
        let head = parse_request(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.body, Body::Chunked);
        assert!(head.expect_continue);
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n")
                .unwrap()
                .map(|h| h.len),
            None
        );
    }

    #[test]
    fn requests_we_refuse() {
        let refuse = |raw: &[u8]| parse_request(raw).unwrap_err();
        assert_eq!(
            refuse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Invalid::Malformed("Content-Length")
        );
        assert!(matches!(
            refuse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Invalid::Malformed(_)
        ));
        assert!(matches!(
            refuse(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Invalid::Malformed(_)
        ));
        assert_eq!(
            refuse(b"CONNECT a:443 HTTP/1.1\r\n\r\n"),
            Invalid::Unsupported("CONNECT")
        );
        assert_eq!(
            refuse(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            Invalid::Unsupported("Upgrade")
        );
        assert!(matches!(
            refuse(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Invalid::Unsupported(_)
        ));
        assert!(matches!(
            refuse(b"G\x01T / HTTP/1.1\r\n\r\n"),
            Invalid::Malformed(_)
        ));
        let many: Vec<u8> = [
            &b"GET / HTTP/1.1\r\n"[..],
            &b"A: b\r\n".repeat(MAX_HEADERS + 1),
            b"\r\n",
        ]
        .concat();
        assert_eq!(refuse(&many), Invalid::HeadersTooLarge);
    }

    #[test]
    fn response_framing() {
        let parse = |raw: &[u8], method| parse_response(raw, method).unwrap().unwrap();
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "GET").body,
            Body::Length(3)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD").body,
            Body::None
        );
        assert_eq!(
            parse(b"HTTP/1.1 204 No Content\r\n\r\n", "GET").body,
            Body::None
        );
        let until_close = parse(b"HTTP/1.1 200 OK\r\n\r\n", "GET");
        assert_eq!(
            (until_close.body, until_close.close),
            (Body::UntilClose, true)
        );
        assert!(parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "GET").close);
        assert_eq!(parse(b"HTTP/1.1 100 Continue\r\n\r\n", "POST").status, 100);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(chunked_len(b"5\r\nhello\r\n0\r\n\r\nNEXT"), Ok(Some(15)));
        assert_eq!(
            chunked_len(b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"),
            Ok(Some(33))
        );
        assert_eq!(chunked_len(b"5\r\nhel"), Ok(None));
        assert_eq!(chunked_len(b"5\r\nhello\r\n0\r\n"), Ok(None));
        assert!(chunked_len(b"5\r\nhelloXX0\r\n\r\n").is_err());
        assert!(chunked_len(b"zz\r\n").is_err());
        // Unbounded size lines and trailers are refused, not buffered.
        let long_line = [b"5;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        assert!(chunked_len(&long_line).is_err());
        let long_trailer = [b"0\r\nX: ".as_slice(), &[b'x'; MAX_TRAILERS]].concat();
        assert_eq!(chunked_len(&long_trailer), Err(Invalid::HeadersTooLarge));
    }

    #[test]
    fn chunked_bodies_arriving_byte_by_byte() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n";
        let mut chunked = Chunked::default();
        for end in 0..body.len() {
            assert_eq!(chunked.end(&body[..end]), Ok(None), "after {end} bytes");
        }
        assert_eq!(chunked.end(body), Ok(Some(body.len())));
        assert_eq!(chunked.at, 30, "resumes after the complete chunks");
    }

    /// Mangled messages (truncated, bytes replaced, bytes inserted) never panic the parsers.
    #[test]
    fn mangled_input_is_refused_or_incomplete_never_a_panic() {
        let samples: [&[u8]; 3] = [
            b"POST /insert HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET /line/1 HTTP/1.0\r\nContent-Length: 3\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nabc",
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\n42",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let interesting = b"\r\n:;0 -9fFxX\t\x00\xff";
        for round in 0..20_000 {
            let mut message = samples[round % samples.len()].to_vec();
            for _ in 0..1 + random(4) {
                let at = random(message.len() + 1);
                let byte = interesting[random(interesting.len())];
                match random(3) {
                    0 => message.truncate(at),
                    1 if at < message.len() => message[at] = byte,
                    _ => message.insert(at, byte),
                }
            }
            let _ = parse_request(&message);
            let _ = parse_response(&message, "GET");
            let _ = parse_response(&message, "HEAD");
            let _ = chunked_len(&message);
            if let Some(head) = head_len(&message) {
                let _ = chunked_len(&message[head..]);
                let _ = rewrite(&message, head, "X-Forwarded-For: 1", &["expect"]);
            }
            let _ = method_of(&message);
        }
    }

    #[test]
    fn head_rewriting() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
        let out = rewrite(head, head.len(), "X-Forwarded-For: 1.2.3.4", &["expect"]);
        assert_eq!(
            out,
            b"POST / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
        );
        assert_eq!(method_of(b"HEAD / HTTP/1.1\r\n\r\n"), "HEAD");
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
    }
}
