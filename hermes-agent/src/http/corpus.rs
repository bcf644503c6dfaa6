//! A corpus of hostile and sloppy messages, from the request-smuggling literature (PortSwigger's
//! research, the HTTP Garden's findings, Kestrel CVE-2025-55315, Go CVE-2025-22871), each with
//! the one outcome the module must give it however its bytes arrive: in one piece, one byte a
//! read, or in random pieces through a duplex pipe. Then a mutation loop over the corpus, which
//! checks that nothing panics, that the outcome does not depend on how the bytes arrive, and that
//! what comes out re-parses to itself.
//!
//! Every table test runs all its cases and reports every failing one at once.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};

use super::{
    Invalid, Version,
    chunked::Chunked,
    request::{self, Limits, Reader, Scan},
    response,
};

/// The client every request case comes from, unless it says otherwise.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
/// What the canonical form adds for [`CLIENT`] when the client sent no forwarding fields.
const FWD: &[u8] = b"X-Forwarded-For: 192.0.2.7\r\nForwarded: for=192.0.2.7\r\n";
/// The request line and `Host` most body cases share.
const POST: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\n";
/// The chunked decoder's bound on a trailer section (`chunked::MAX_TRAILERS`).
const MAX_TRAILERS: usize = 16 * 1024;

/// The concatenation of byte strings, arrays and vectors.
macro_rules! cat {
    ($($part:expr),+ $(,)?) => {
        [$(&$part[..]),+].concat()
    };
}

/// Bytes for a failure message: escaped, and cut if long.
fn show(bytes: &[u8]) -> String {
    const MAX: usize = 240;
    if bytes.len() <= MAX {
        bytes.escape_ascii().to_string()
    } else {
        format!("{}... ({} bytes)", bytes[..MAX].escape_ascii(), bytes.len())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Feeding bytes.

/// xorshift64: deterministic, and enough for picking pieces and mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A stream that gives at most `step` bytes a read, and is not ready every other poll.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    step: usize,
    stall: bool,
}

impl Trickle {
    fn new(data: Vec<u8>, step: usize) -> Self {
        Self {
            data,
            at: 0,
            step,
            stall: false,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.stall = !this.stall;
        if this.stall {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = this
            .step
            .min(this.data.len() - this.at)
            .min(buf.remaining());
        buf.put_slice(&this.data[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

/// A pipe that a task writes `data` into in random pieces (1 to 200 bytes), then closes.
fn pieces(data: Vec<u8>, seed: u64) -> DuplexStream {
    let (mut tx, rx) = tokio::io::duplex(512);
    tokio::spawn(async move {
        let mut rng = Rng::new(seed);
        let mut at = 0;
        while at < data.len() {
            let n = (1 + rng.below(200)).min(data.len() - at);
            if tx.write_all(&data[at..at + n]).await.is_err() {
                return; // the reader is gone
            }
            at += n;
            tokio::task::yield_now().await;
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// Requests: what comes out of a connection.

/// A request the agent would order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    canonical: Vec<u8>,
    close: bool,
    expect_continue: bool,
}

/// How reading a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed between requests.
    Eof,
    /// A request said the connection closes after it: nothing more is read.
    Stop,
    /// The client closed mid-request: nothing to answer.
    Closed,
    /// Refused with this status.
    Refused(u16),
}

/// Everything a connection gives: the requests, then how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    got: Vec<Got>,
    end: End,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for got in &self.got {
            write!(f, "\"{}\"", show(&got.canonical))?;
            if got.close {
                write!(f, " (close)")?;
            }
            if got.expect_continue {
                write!(f, " (100-continue)")?;
            }
            write!(f, ", ")?;
        }
        write!(f, "then {:?}", self.end)
    }
}

/// One request with `canonical`, then the client closes.
fn ok(canonical: impl AsRef<[u8]>) -> Outcome {
    eof().then(canonical)
}

/// Nothing produced: refused with `status`.
fn refused(status: u16) -> Outcome {
    Outcome {
        got: Vec::new(),
        end: End::Refused(status),
    }
}

/// Nothing produced: the client closed mid-request.
fn closed() -> Outcome {
    Outcome {
        got: Vec::new(),
        end: End::Closed,
    }
}

/// Nothing at all: the client closed before sending anything.
fn eof() -> Outcome {
    Outcome {
        got: Vec::new(),
        end: End::Eof,
    }
}

impl Outcome {
    /// Then another request, with `canonical`.
    fn then(mut self, canonical: impl AsRef<[u8]>) -> Self {
        self.got.push(Got {
            canonical: canonical.as_ref().to_vec(),
            close: false,
            expect_continue: false,
        });
        self.end = End::Eof;
        self
    }

    /// The last request closes the connection.
    fn close(mut self) -> Self {
        self.got.last_mut().expect("a request").close = true;
        self.end = End::Stop;
        self
    }

    /// The last request waits for `100 Continue`.
    fn cont(mut self) -> Self {
        self.got.last_mut().expect("a request").expect_continue = true;
        self
    }

    fn then_refused(mut self, status: u16) -> Self {
        self.end = End::Refused(status);
        self
    }

    fn then_closed(mut self) -> Self {
        self.end = End::Closed;
        self
    }
}

/// A request case: a name, the client's bytes, and what must come of them.
struct Case {
    name: &'static str,
    raw: Vec<u8>,
    want: Outcome,
    limits: Limits,
    client: IpAddr,
}

fn case(name: &'static str, raw: impl AsRef<[u8]>, want: Outcome) -> Case {
    Case {
        name,
        raw: raw.as_ref().to_vec(),
        want,
        limits: Limits::default(),
        client: CLIENT,
    }
}

impl Case {
    fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn client(mut self, client: IpAddr) -> Self {
        self.client = client;
        self
    }
}

/// Reads requests off `stream` as the interception does, until the connection ends.
async fn read_requests(stream: impl AsyncRead + Unpin, limits: Limits, client: IpAddr) -> Outcome {
    let end_of = |error: request::ReadError| match error {
        request::ReadError::Invalid(invalid) => End::Refused(invalid.status()),
        request::ReadError::Closed => End::Closed,
    };
    let mut reader = Reader::new(stream, limits);
    let mut got = Vec::new();
    let end = loop {
        if !reader.ready().await {
            break End::Eof;
        }
        let head = match reader.head().await {
            Ok(head) => head,
            Err(error) => break end_of(error),
        };
        let body = match reader.body(&head, |_| true, Invalid::Overloaded).await {
            Ok(body) => body,
            Err(error) => break end_of(error),
        };
        let (close, expect_continue) = (head.close, head.expect_continue);
        got.push(Got {
            canonical: head.canonical(client, &body).to_vec(),
            close,
            expect_continue,
        });
        if close {
            break End::Stop;
        }
    };
    Outcome { got, end }
}

/// The first head of `raw` by `parse_head` alone, given all of it at once or one byte more each
/// call (with one `Scan`): its length and canonical form (no body), or the refusal's status.
fn first_head(
    raw: &[u8],
    limits: &Limits,
    client: IpAddr,
    bytewise: bool,
) -> Result<Option<(usize, Vec<u8>)>, u16> {
    let mut scan = Scan::default();
    let ends: Box<dyn Iterator<Item = usize>> = if bytewise {
        Box::new(0..=raw.len())
    } else {
        Box::new(std::iter::once(raw.len()))
    };
    for end in ends {
        match request::parse_head(&raw[..end], limits, &mut scan) {
            Ok(None) => {}
            Ok(Some((head, len))) => return Ok(Some((len, head.canonical(client, b"").to_vec()))),
            Err(invalid) => return Err(invalid.status()),
        }
    }
    Ok(None)
}

async fn check_request(case: Case, seed: u64) -> Vec<String> {
    let Case {
        name,
        raw,
        want,
        limits,
        client,
    } = case;
    let mut failures = Vec::new();
    let outcomes = [
        (
            "in one piece",
            read_requests(&raw[..], limits, client).await,
        ),
        (
            "one byte a read",
            read_requests(Trickle::new(raw.clone(), 1), limits, client).await,
        ),
        (
            "in random pieces",
            read_requests(pieces(raw.clone(), seed), limits, client).await,
        ),
    ];
    for (how, outcome) in outcomes {
        if outcome != want {
            failures.push(format!(
                "{name} ({how}):\n    want {want}\n    got  {outcome}"
            ));
        }
    }
    let whole = first_head(&raw, &limits, client, false);
    let bytewise = first_head(&raw, &limits, client, true);
    if whole != bytewise {
        failures.push(format!(
            "{name}: parse_head gives {whole:?} on all the bytes, {bytewise:?} byte by byte"
        ));
    }
    match whole {
        Err(status) if want != refused(status) => failures.push(format!(
            "{name}: parse_head refuses with {status}, the reader gives {want}"
        )),
        Ok(None) if !want.got.is_empty() => {
            failures.push(format!("{name}: parse_head finds no head"));
        }
        _ => {}
    }
    failures
}

/// A 1.1 GET for `/` with `Host: a`, then `fields`.
fn get(fields: &[u8]) -> Vec<u8> {
    cat!(b"GET / HTTP/1.1\r\nHost: a\r\n", fields, b"\r\n")
}

/// A 1.1 POST for `/` with `Host: a`, then `fields`, then `body`.
fn post(fields: &[u8], body: &[u8]) -> Vec<u8> {
    cat!(POST, fields, b"\r\n", body)
}

/// A 1.1 POST for `/` with `Host: a` and a chunked `body`.
fn chunked(body: &[u8]) -> Vec<u8> {
    post(b"Transfer-Encoding: chunked\r\n", body)
}

/// The canonical form of a request without a body: `head` (its request line and end-to-end
/// fields), the forwarding fields, the empty line.
fn canon(head: &[u8]) -> Vec<u8> {
    cat!(head, FWD, b"\r\n")
}

/// The canonical form of a request after which the agent closes its connection to the app (a
/// HEAD, or a body on GET, OPTIONS, DELETE or TRACE), without a body.
fn canon_closing(head: &[u8]) -> Vec<u8> {
    cat!(head, FWD, b"Connection: close\r\n\r\n")
}

/// The canonical form of a 1.1 request with `body`.
fn canon_body(head: &[u8], body: &[u8]) -> Vec<u8> {
    let length = format!("Content-Length: {}\r\n\r\n", body.len());
    cat!(head, FWD, length.as_bytes(), body)
}

/// The canonical form of a 1.0 GET for `target` with `Host: a`.
fn canon10(target: &[u8]) -> Vec<u8> {
    cat!(
        b"GET ",
        target,
        b" HTTP/1.0\r\nHost: a\r\n",
        FWD,
        b"Connection: keep-alive\r\n\r\n"
    )
}

/// A GET whose head is exactly `len` bytes, and its canonical form.
fn head_of(len: usize) -> (Vec<u8>, Vec<u8>) {
    let start = b"GET / HTTP/1.1\r\nHost: a\r\nX: ";
    let filler = vec![b'a'; len - start.len() - 4];
    (
        cat!(start, filler, b"\r\n\r\n"),
        canon(&cat!(start, filler, b"\r\n")),
    )
}

/// A GET with `n` field lines (`Host` and `n - 1` others), and its canonical form.
fn with_fields(n: usize) -> (Vec<u8>, Vec<u8>) {
    let fields: Vec<u8> = (1..n)
        .flat_map(|i| format!("X-{i}: {i}\r\n").into_bytes())
        .collect();
    (
        get(&fields),
        canon(&cat!(b"GET / HTTP/1.1\r\nHost: a\r\n", fields)),
    )
}

fn request_cases() -> Vec<Case> {
    let get_a = canon(b"GET / HTTP/1.1\r\nHost: a\r\n");
    let hello = canon_body(POST, b"hello");
    let small_body = Limits {
        max_body: 8,
        ..Limits::default()
    };
    let v6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
    let mapped: IpAddr = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
    let (at_head_limit, at_head_limit_canon) = head_of(32 * 1024);
    let (fields_100, fields_100_canon) = with_fields(100);
    let filled_trailer = cat!(b"X: ", vec![b'a'; MAX_TRAILERS - 3], b"\r\n");

    let mut cases = vec![
        // Empty lines before the request line: ignored (RFC 9112 section 2.2), if CRLF.
        case("leading CRLF", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", ok(&get_a)),
        case(
            "three leading CRLFs",
            b"\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(&get_a),
        ),
        case(
            "HEAD after an empty line",
            b"\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(canon_closing(b"HEAD / HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "leading bare LF",
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "leading CRLF, then a bare LF",
            b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "leading bare CR",
            b"\r\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "leading SP",
            b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "leading NUL",
            b"\x00GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "empty lines between pipelined requests",
            cat!(get(b""), b"\r\n\r\n", get(b"")),
            ok(&get_a).then(&get_a),
        ),
        // Line endings: CRLF only.
        case(
            "bare LF after the request line",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "bare LF after a field line",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            refused(400),
        ),
        case(
            "bare LF as the empty line",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            refused(400),
        ),
        case(
            "bare LF everywhere",
            b"GET / HTTP/1.1\nHost: a\n\n",
            refused(400),
        ),
        case(
            "bare LF in the target",
            b"GET /a\nb HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case("bare CR in a value", get(b"X: a\rb\r\n"), refused(400)),
        case(
            "bare CR ending the request line",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "CR CR LF",
            b"GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "bare CR before the empty line",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",
            refused(400),
        ),
        // Control bytes, and bytes outside ASCII.
        case("NUL in a value", get(b"X: a\x00b\r\n"), refused(400)),
        case("NUL in a name", get(b"X\x00Y: a\r\n"), refused(400)),
        case(
            "NUL in the target",
            b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "NUL in the method",
            b"G\x00ET / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case("DEL in a value", get(b"X: a\x7fb\r\n"), refused(400)),
        case("ESC in a value", get(b"X: \x1b[31m\r\n"), refused(400)),
        case("vertical tab in a value", get(b"X: a\x0bb\r\n"), refused(400)),
        case("form feed in a name", get(b"X\x0c: a\r\n"), refused(400)),
        case(
            "DEL in the target",
            b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "HTAB in the target",
            b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "HTAB inside a value",
            get(b"X: a\tb\r\n"),
            ok(canon(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n")),
        ),
        case(
            "obs-text (Latin-1) in a value",
            get(b"X: caf\xe9\r\n"),
            ok(canon(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n")),
        ),
        case(
            "UTF-8 in a value",
            get(b"X: caf\xc3\xa9\r\n"),
            ok(canon(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n")),
        ),
        case("obs-text in a name", get(b"Caf\xe9: a\r\n"), refused(400)),
        // Field line syntax (RFC 9112 section 5).
        case("obs-fold with SP", get(b"X: a\r\n b\r\n"), refused(400)),
        case("obs-fold with HTAB", get(b"X: a\r\n\tb\r\n"), refused(400)),
        case(
            "obs-fold continuing Transfer-Encoding",
            post(
                b"Transfer-Encoding: gzip,\r\n chunked\r\n",
                b"0\r\n\r\n",
            ),
            refused(400),
        ),
        case(
            "first field line starting with SP",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            refused(400),
        ),
        case(
            "SP before the colon",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            refused(400),
        ),
        case(
            "HTAB before the colon of Content-Length",
            post(b"Content-Length\t: 5\r\n", b"hello"),
            refused(400),
        ),
        case(
            "SP before the colon of Transfer-Encoding",
            post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
            refused(400),
        ),
        case("empty field name", get(b": a\r\n"), refused(400)),
        case("parenthesis in a name", get(b"X(a): b\r\n"), refused(400)),
        case("SP inside a name", get(b"X a: b\r\n"), refused(400)),
        case("slash in a name", get(b"X/Y: b\r\n"), refused(400)),
        case("field line without a colon", get(b"X-A b\r\n"), refused(400)),
        case(
            "blanks around a value trimmed",
            get(b"X: \t a b \t\r\n"),
            ok(canon(b"GET / HTTP/1.1\r\nHost: a\r\nX: a b\r\n")),
        ),
        case(
            "empty value",
            get(b"X:\r\n"),
            ok(canon(b"GET / HTTP/1.1\r\nHost: a\r\nX: \r\n")),
        ),
        case(
            "names keep their case, repeated fields their order",
            get(b"x-a: 1\r\nX-A: 2\r\nX-B: 3\r\n"),
            ok(canon(
                b"GET / HTTP/1.1\r\nHost: a\r\nx-a: 1\r\nX-A: 2\r\nX-B: 3\r\n",
            )),
        ),
        // RFC 9110 allows `_` in names; an app that folds it to `-` (CGI, WSGI) would see
        // framing the agent does not: refused.
        case(
            "Content_Length refused",
            post(b"Content_Length: 5\r\n", b""),
            refused(400),
        ),
        case(
            "Transfer_Encoding refused",
            post(b"Transfer_Encoding: chunked\r\n", b""),
            refused(400),
        ),
        case(
            "X_Custom passed on (no field it could stand for)",
            post(b"X_Custom: 1\r\n", b""),
            ok(canon(b"POST / HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\n")),
        ),
        // Content-Length: digits only, one value (RFC 9110 section 8.6).
        case(
            "CL +5",
            post(b"Content-Length: +5\r\n", b"hello"),
            refused(400),
        ),
        case("CL -1", post(b"Content-Length: -1\r\n", b""), refused(400)),
        case(
            "CL with U+00A0 before",
            post(b"Content-Length: \xc2\xa05\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL with U+00A0 after",
            post(b"Content-Length: 5\xc2\xa0\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL with U+3000 before",
            post(b"Content-Length: \xe3\x80\x805\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL 5 5",
            post(b"Content-Length: 5 5\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL 5,5",
            post(b"Content-Length: 5,5\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL 5, 5",
            post(b"Content-Length: 5, 5\r\n", b"hello"),
            refused(400),
        ),
        case(
            "two equal CL fields",
            post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
            refused(400),
        ),
        case(
            "two different CL fields",
            post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
            refused(400),
        ),
        case(
            "CL 2^64",
            post(b"Content-Length: 18446744073709551616\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL 2^64-1",
            post(b"Content-Length: 18446744073709551615\r\n", b"hello"),
            refused(413),
        ),
        case(
            "CL one over max_body",
            post(b"Content-Length: 8388609\r\n", b"hello"),
            refused(413),
        ),
        case(
            "CL with leading zeros",
            post(b"Content-Length: 0005\r\n", b"hello"),
            ok(&hello),
        ),
        case(
            "CL 0",
            post(b"Content-Length: 0\r\n", b""),
            ok(canon_body(POST, b"")),
        ),
        case(
            "CL with HTAB around",
            post(b"Content-Length:\t5\t\r\n", b"hello"),
            ok(&hello),
        ),
        case("empty CL", post(b"Content-Length:\r\n", b""), refused(400)),
        case(
            "CL 0x5",
            post(b"Content-Length: 0x5\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL 5.0",
            post(b"Content-Length: 5.0\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL ending in a vertical tab",
            post(b"Content-Length: 5\x0b\r\n", b"hello"),
            refused(400),
        ),
        case(
            "CL larger than what is sent",
            post(b"Content-Length: 10\r\n", b"hello"),
            closed(),
        ),
        case(
            "CL smaller than what is sent: the rest is the next request",
            post(b"Content-Length: 3\r\n", b"hello"),
            ok(canon_body(POST, b"hel")).then_closed(),
        ),
        case(
            "GET with a body (its app connection is closed after it)",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            ok(cat!(
                b"GET / HTTP/1.1\r\nHost: a\r\n",
                FWD,
                b"Connection: close\r\nContent-Length: 2\r\n\r\nhi"
            )),
        ),
        case(
            "body over max_body",
            post(b"Content-Length: 9\r\n", b"123456789"),
            refused(413),
        )
        .limits(small_body),
        // Transfer-Encoding (RFC 9112 section 6.1).
        case(
            "TE chunked in HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            refused(400),
        ),
        case(
            "TE and CL",
            post(
                b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            refused(400),
        ),
        case(
            "CL and TE",
            post(
                b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            refused(400),
        ),
        case(
            "CL and TE xchunked",
            post(
                b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n",
                b"hello",
            ),
            refused(400),
        ),
        case(
            "TE chunked, chunked",
            post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
            refused(400),
        ),
        case(
            "TE gzip",
            post(b"Transfer-Encoding: gzip\r\n", b"hello"),
            refused(400),
        ),
        case(
            "TE gzip, chunked",
            post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
            refused(501),
        ),
        case(
            "TE identity, chunked",
            post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"),
            refused(501),
        ),
        case(
            "TE chunked;q=1",
            post(b"Transfer-Encoding: chunked;q=1\r\n", b"0\r\n\r\n"),
            refused(400),
        ),
        case(
            "TE Chunked",
            post(b"Transfer-Encoding: Chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            ok(&hello),
        ),
        case(
            "TE CHUNKED",
            post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            ok(&hello),
        ),
        case(
            "TE gzip and chunked in two fields",
            post(
                b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
            ),
            refused(501),
        ),
        case(
            "TE chunked in two fields",
            post(
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
            ),
            refused(400),
        ),
        case(
            "TE chunked and gzip in two fields",
            post(
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
                b"0\r\n\r\n",
            ),
            refused(400),
        ),
        case(
            "TE with U+00A0 before chunked",
            post(b"Transfer-Encoding: \xc2\xa0chunked\r\n", b"0\r\n\r\n"),
            refused(400),
        ),
        case(
            "TE with U+00A0 after chunked",
            post(b"Transfer-Encoding: chunked\xc2\xa0\r\n", b"0\r\n\r\n"),
            refused(400),
        ),
        case(
            "empty TE",
            post(b"Transfer-Encoding:\r\n", b""),
            refused(400),
        ),
        case(
            "TE identity",
            post(b"Transfer-Encoding: identity\r\n", b""),
            refused(400),
        ),
        case(
            "TE with an empty list element",
            post(b"Transfer-Encoding: , chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            ok(&hello),
        ),
        case(
            "TE with HTAB around",
            post(b"Transfer-Encoding:\tchunked\t\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
            ok(&hello),
        ),
        // Chunked bodies (RFC 9112 section 7.1).
        case(
            "chunked, two chunks",
            chunked(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            ok(canon_body(POST, b"hello world")),
        ),
        case(
            "chunked, empty body",
            chunked(b"0\r\n\r\n"),
            ok(canon_body(POST, b"")),
        ),
        case(
            "chunked, uppercase hex",
            chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),
            ok(canon_body(POST, b"0123456789")),
        ),
        case(
            "chunked, empty size line",
            chunked(b"\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, size +5",
            chunked(b"+5\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, size -5",
            chunked(b"-5\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, size 0x5",
            chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, SP before the size",
            chunked(b" 5\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, SP after the size",
            chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, LF inside an extension",
            chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, LF ending an extension (Kestrel CVE-2025-55315)",
            chunked(b"2;\nxx\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, NUL inside an extension",
            chunked(b"5;a\x00\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, bare CR inside an extension",
            chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, quoted extension",
            chunked(b"5;name=\"a b;c\\\"d\"\r\nhello\r\n0\r\n\r\n"),
            ok(&hello),
        ),
        case(
            "chunked, token extensions with blanks",
            chunked(b"5 ; a = b;c\r\nhello\r\n0;last=1\r\n\r\n"),
            ok(&hello),
        ),
        case(
            "chunked, extension without a name",
            chunked(b"5;=b\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, unterminated quoted extension",
            chunked(b"5;a=\"b\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, size line at its limit",
            chunked(&cat!(b"5;a=", vec![b'x'; 4092], b"\r\nhello\r\n0\r\n\r\n")),
            ok(&hello),
        ),
        case(
            "chunked, size line over its limit",
            chunked(&cat!(b"5;a=", vec![b'x'; 4093], b"\r\nhello\r\n0\r\n\r\n")),
            refused(400),
        ),
        case(
            "chunked, 17 hex digits: 2^64",
            chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, 17 hex digits with a leading zero",
            chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
            ok(&hello),
        ),
        case(
            "chunked, size 2^64-1",
            chunked(b"ffffffffffffffff\r\nhello\r\n"),
            refused(413),
        ),
        case(
            "chunked, size one over max_body",
            chunked(b"800001\r\nhello\r\n"),
            refused(413),
        ),
        case(
            "chunked, chunks adding up to more than max_body",
            chunked(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"),
            refused(413),
        )
        .limits(small_body),
        case(
            "chunked, no CRLF after the data",
            chunked(b"5\r\nhello0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, data longer than its size",
            chunked(b"3\r\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, bare LF after the data",
            chunked(b"5\r\nhello\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, bare LF after the size (Go CVE-2025-22871)",
            chunked(b"5\nhello\r\n0\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, bare LF after the last chunk",
            chunked(b"5\r\nhello\r\n0\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, bare LF in the trailers",
            chunked(b"5\r\nhello\r\n0\r\nX: a\nY: b\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, obs-fold in the trailers",
            chunked(b"5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, trailer line without a colon",
            chunked(b"5\r\nhello\r\n0\r\nX a\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, trailer with an empty name",
            chunked(b"5\r\nhello\r\n0\r\n: a\r\n\r\n"),
            refused(400),
        ),
        case(
            "chunked, trailers checked and dropped",
            chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\nContent-Length: 99\r\n\r\n"),
            ok(&hello),
        ),
        case(
            "chunked, a trailer section over its limit",
            chunked(&cat!(b"0\r\nX: ", vec![b'a'; 20_000], b"\r\n\r\n")),
            refused(431),
        ),
        case(
            "chunked, a trailer line filling the section, then another",
            chunked(&cat!(b"0\r\n", filled_trailer, b"Y: b\r\n\r\n")),
            refused(431),
        ),
        case(
            "chunked, then a pipelined request",
            chunked(b"5\r\nhello\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
            ok(&hello).then(canon(b"GET /2 HTTP/1.1\r\nHost: a\r\n")),
        ),
        case("chunked, EOF inside the data", chunked(b"5\r\nhel"), closed()),
        case("chunked, EOF inside a size line", chunked(b"5"), closed()),
        case(
            "chunked, EOF before the last CRLF",
            chunked(b"5\r\nhello\r\n0\r\n"),
            closed(),
        ),
        // Host (RFC 9112 section 3.2).
        case("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n", refused(400)),
        case("two Hosts", get(b"Host: b\r\n"), refused(400)),
        case("two equal Hosts", get(b"Host: a\r\n"), refused(400)),
        case(
            "Host with a SP",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            refused(400),
        ),
        case(
            "Host with a slash",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            refused(400),
        ),
        case(
            "Host with userinfo",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            refused(400),
        ),
        case(
            "Host with a question mark",
            b"GET / HTTP/1.1\r\nHost: a?b\r\n\r\n",
            refused(400),
        ),
        case(
            "empty Host",
            b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            ok(canon(b"GET / HTTP/1.1\r\nHost: \r\n")),
        ),
        case(
            "Host an IPv6 literal with a port",
            b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n",
            ok(canon(b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n")),
        ),
        case(
            "Host with blanks around",
            b"GET / HTTP/1.1\r\nHost: \t a \t\r\n\r\n",
            ok(&get_a),
        ),
        case(
            "no Host in HTTP/1.0",
            b"GET / HTTP/1.0\r\n\r\n",
            ok(cat!(
                b"GET / HTTP/1.0\r\n",
                FWD,
                b"Connection: keep-alive\r\n\r\n"
            ))
            .close(),
        ),
        case(
            "two Hosts in HTTP/1.0",
            b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            refused(400),
        ),
        // Request targets (RFC 9112 section 3.2).
        case(
            "absolute-form http",
            b"GET http://a/x?y=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(canon(b"GET http://a/x?y=1 HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "absolute-form https with a port, another Host",
            b"GET https://a:8443/x HTTP/1.1\r\nHost: b\r\n\r\n",
            ok(canon(b"GET https://a:8443/x HTTP/1.1\r\nHost: b\r\n")),
        ),
        case(
            "absolute-form, scheme in capitals",
            b"GET HTTP://A/ HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(canon(b"GET HTTP://A/ HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "absolute-form without a path",
            b"GET http://a HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(canon(b"GET http://a HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "absolute-form with userinfo",
            b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "absolute-form without a host",
            b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "absolute-form with a backslash",
            b"GET http://a\\b/ HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "absolute-form ftp",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "absolute-form without Host",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            refused(400),
        ),
        case(
            "authority-form with GET",
            b"GET a:80 HTTP/1.1\r\nHost: a:80\r\n\r\n",
            refused(400),
        ),
        case(
            "asterisk-form with OPTIONS",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(canon(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "asterisk-form with GET",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "fragment",
            b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "UTF-8 in the target",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "Latin-1 in the target",
            b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "origin-form starting with //",
            b"GET //a/b HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(canon(b"GET //a/b HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "CONNECT",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            refused(501),
        ),
        case(
            "connect, in lower case",
            b"connect / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(501),
        ),
        case(
            "head, in lower case",
            b"head / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(501),
        ),
        case(
            "get, in lower case: another method, passed on",
            b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
            ok(canon(b"get / HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "two SPs in the request line",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "HTAB between method and target",
            b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "no target",
            b"GET HTTP/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        // Versions.
        case(
            "HTTP/1.2",
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "HTTP/2.0",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "the HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            refused(400),
        ),
        case("HTTP/0.9: no version", b"GET /\r\n\r\n", refused(400)),
        case(
            "version in lower case",
            b"GET / http/1.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "SP after the version",
            b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "HTTP/1.10",
            b"GET / HTTP/1.10\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        case(
            "HTTP/01.1",
            b"GET / HTTP/01.1\r\nHost: a\r\n\r\n",
            refused(400),
        ),
        // Expect (RFC 9110 section 10.1.1).
        case(
            "Expect 100-continue",
            post(b"Expect: 100-continue\r\nContent-Length: 5\r\n", b"hello"),
            ok(&hello).cont(),
        ),
        case(
            "Expect 100-continue in HTTP/1.0",
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
            ok(cat!(
                b"POST / HTTP/1.0\r\n",
                FWD,
                b"Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
            ))
            .close(),
        ),
        case(
            "Expect 100-continue without a body",
            get(b"Expect: 100-continue\r\n"),
            ok(&get_a),
        ),
        case(
            "Expect 100-Continue with a chunked body",
            post(
                b"Expect: 100-Continue\r\nTransfer-Encoding: chunked\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            ok(&hello).cont(),
        ),
        case(
            "Expect something else",
            post(b"Expect: 200-ok\r\nContent-Length: 5\r\n", b"hello"),
            refused(417),
        ),
        case(
            "Expect 100-continue and something else",
            post(b"Expect: 100-continue, x\r\nContent-Length: 5\r\n", b"hello"),
            refused(417),
        ),
        case("empty Expect", get(b"Expect:\r\n"), refused(417)),
        // Upgrade, Connection and the fields the agent owns.
        case(
            "Upgrade websocket",
            get(b"Connection: Upgrade\r\nUpgrade: websocket\r\n"),
            refused(501),
        ),
        case(
            "Upgrade h2c",
            get(b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"),
            refused(501),
        ),
        case(
            "Connection: close",
            get(b"Connection: close\r\n"),
            ok(&get_a).close(),
        ),
        case(
            "nothing read after Connection: close",
            cat!(get(b"Connection: close\r\n"), get(b"")),
            ok(&get_a).close(),
        ),
        case(
            "Connection: keep-alive in HTTP/1.1",
            get(b"Connection: keep-alive\r\n"),
            ok(&get_a),
        ),
        case(
            "Connection: keep-alive, Close",
            get(b"Connection: keep-alive, Close\r\n"),
            ok(&get_a).close(),
        ),
        // RFC 9110 section 7.6.1 has a proxy remove the fields Connection names; the agent keeps
        // them (see the report).
        case(
            "Connection naming a field",
            get(b"Connection: X-A\r\nX-A: 1\r\n"),
            ok(canon(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n")),
        ),
        case(
            "HTTP/1.0 without keep-alive",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            ok(canon10(b"/")).close(),
        ),
        case(
            "HTTP/1.0 keep-alive, then another request",
            b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\nHost: a\r\n\r\n",
            ok(canon10(b"/")).then(canon10(b"/2")).close(),
        ),
        case(
            "hop-by-hop fields dropped",
            get(b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nX-A: 1\r\n"),
            ok(canon(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n")),
        ),
        case(
            "a client's Hermes-Log-Index dropped",
            get(b"Hermes-Log-Index: 7\r\nhermes-log-index: 8\r\n"),
            ok(&get_a),
        ),
        case(
            "X-Forwarded-For extended",
            get(b"X-Forwarded-For: 10.0.0.1\r\n"),
            ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\nForwarded: for=192.0.2.7\r\n\r\n"),
        ),
        case(
            "X-Forwarded-For and Forwarded over several fields",
            get(b"X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1;proto=https\r\nx-forwarded-for: 10.0.0.2, 10.0.0.3\r\n"),
            ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\nForwarded: for=10.0.0.1;proto=https, for=192.0.2.7\r\n\r\n"),
        ),
        case(
            "an IPv6 client",
            get(b"Forwarded: for=10.0.0.1\r\n"),
            ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 2001:db8::7\r\nForwarded: for=10.0.0.1, for=\"[2001:db8::7]\"\r\n\r\n"),
        )
        .client(v6),
        case("an IPv4-mapped IPv6 client", get(b""), ok(&get_a)).client(mapped),
        // Bounds.
        case(
            "a head of exactly max_head",
            &at_head_limit,
            ok(at_head_limit_canon),
        ),
        case(
            "a head one byte over max_head",
            head_of(32 * 1024 + 1).0,
            refused(431),
        ),
        case(
            "a head over 32 KiB",
            get(&cat!(b"X: ", vec![b'a'; 33_000], b"\r\n")),
            refused(431),
        ),
        case("100 field lines", &fields_100, ok(fields_100_canon)),
        case("101 field lines", with_fields(101).0, refused(431)),
        case(
            "20000 CRLFs before the request line",
            cat!(b"\r\n".repeat(20_000), get(b"")),
            refused(431),
        ),
        // Connections.
        case(
            "two pipelined requests",
            cat!(get(b""), b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"),
            ok(&get_a).then(canon(b"GET /2 HTTP/1.1\r\nHost: a\r\n")),
        ),
        case(
            "a CRLF after the last request",
            cat!(get(b""), b"\r\n"),
            ok(&get_a).then_closed(),
        ),
        case(
            "a valid request, then an invalid one",
            cat!(get(b""), b"GET / HTTP/1.1\r\n\r\n"),
            ok(&get_a).then_refused(400),
        ),
        case("nothing at all", b"", eof()),
        case(
            "a head cut short",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            closed(),
        ),
    ];
    cases.sort_by_key(|case| case.name);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_corpus() {
    let cases = request_cases();
    let count = cases.len();
    assert!(count >= 110, "only {count} request cases");
    let names: Vec<&str> = cases.iter().map(|case| case.name).collect();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "two request cases with one name"
    );
    let tasks: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(i, case)| (case.name, tokio::spawn(check_request(case, i as u64))))
        .collect();
    let mut failures = Vec::new();
    for (name, task) in tasks {
        match task.await {
            Ok(failed) => failures.extend(failed),
            Err(error) => failures.push(format!("{name}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) among {count} request cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Responses: what reaches the client.

/// What reading one response gives: the bytes a 1.1 client gets (`to_client(Http11, close)`),
/// whether the app's connection closes after it, and what is left of the app's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ok {
        head: Vec<u8>,
        body: Vec<u8>,
        close: bool,
        rest: Vec<u8>,
    },
    Err(response::ReadError),
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok {
                head,
                body,
                close,
                rest,
            } => write!(
                f,
                "head \"{}\" body \"{}\" close {close} rest \"{}\"",
                show(head),
                show(body),
                show(rest)
            ),
            Self::Err(error) => write!(f, "{error:?}"),
        }
    }
}

/// A response with `head` and `body`, the connection kept, nothing left.
fn answer(head: impl AsRef<[u8]>, body: impl AsRef<[u8]>) -> Answer {
    Answer::Ok {
        head: head.as_ref().to_vec(),
        body: body.as_ref().to_vec(),
        close: false,
        rest: Vec::new(),
    }
}

fn invalid(reason: &'static str) -> Answer {
    Answer::Err(response::ReadError::Invalid(reason))
}

/// The app closed before any byte of an answer.
fn app_closed() -> Answer {
    Answer::Err(response::ReadError::Closed)
}

/// The app closed in the middle of its answer.
fn app_cut() -> Answer {
    Answer::Err(response::ReadError::Cut)
}

impl Answer {
    fn close(mut self) -> Self {
        if let Self::Ok { close, .. } = &mut self {
            *close = true;
        }
        self
    }

    fn rest(mut self, left: &[u8]) -> Self {
        if let Self::Ok { rest, .. } = &mut self {
            *rest = left.to_vec();
        }
        self
    }
}

struct ResponseCase {
    name: &'static str,
    raw: Vec<u8>,
    method: &'static str,
    want: Answer,
    limits: response::Limits,
}

fn rcase(name: &'static str, raw: impl AsRef<[u8]>, want: Answer) -> ResponseCase {
    ResponseCase {
        name,
        raw: raw.as_ref().to_vec(),
        method: "GET",
        want,
        limits: response::Limits::default(),
    }
}

impl ResponseCase {
    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn limits(mut self, limits: response::Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Reads one response from `buf` and then `stream`, as delivery does.
async fn read_response(
    mut stream: impl AsyncRead + Unpin,
    mut buf: BytesMut,
    method: &str,
    limits: &response::Limits,
) -> Answer {
    match response::read(&mut stream, &mut buf, method, limits).await {
        Err(error) => Answer::Err(error),
        Ok(response) => {
            let (head, body) = response.to_client(Version::Http11, response.close);
            let mut rest = buf.to_vec();
            stream
                .read_to_end(&mut rest)
                .await
                .expect("reading what is left");
            Answer::Ok {
                head: head.to_vec(),
                body: body.to_vec(),
                close: response.close,
                rest,
            }
        }
    }
}

async fn check_response(case: ResponseCase, seed: u64) -> Vec<String> {
    let ResponseCase {
        name,
        raw,
        method,
        want,
        limits,
    } = case;
    // Heads are parsed again on each read: one byte a read is quadratic in a large head.
    let step = if raw.len() <= 16 * 1024 { 1 } else { 997 };
    let answers = [
        (
            "already in the buffer",
            read_response(&[][..], BytesMut::from(&raw[..]), method, &limits).await,
        ),
        (
            "in one piece",
            read_response(&raw[..], BytesMut::new(), method, &limits).await,
        ),
        (
            "one byte a read",
            read_response(
                Trickle::new(raw.clone(), step),
                BytesMut::new(),
                method,
                &limits,
            )
            .await,
        ),
        (
            "in random pieces",
            read_response(pieces(raw.clone(), seed), BytesMut::new(), method, &limits).await,
        ),
    ];
    answers
        .into_iter()
        .filter(|(_, answer)| *answer != want)
        .map(|(how, answer)| format!("{name} ({how}):\n    want {want}\n    got  {answer}"))
        .collect()
}

/// A 200 with `n` field lines (`n - 1` others and `Content-Length: 2`), and the head a client
/// gets for it.
fn response_with_fields(n: usize) -> (Vec<u8>, Vec<u8>) {
    let fields: Vec<u8> = (1..n)
        .flat_map(|i| format!("X-{i}: {i}\r\n").into_bytes())
        .collect();
    (
        cat!(
            b"HTTP/1.1 200 OK\r\n",
            fields,
            b"Content-Length: 2\r\n\r\nhi"
        ),
        cat!(b"HTTP/1.1 200 OK\r\n", fields, b"Content-Length: 2\r\n\r\n"),
    )
}

/// A 200 whose head is exactly `len` bytes (and needs no change for a client).
fn response_head_of(len: usize) -> Vec<u8> {
    let (start, end) = (
        &b"HTTP/1.1 200 OK\r\nX: "[..],
        &b"\r\nContent-Length: 0\r\n\r\n"[..],
    );
    cat!(start, vec![b'a'; len - start.len() - end.len()], end)
}

fn response_cases() -> Vec<ResponseCase> {
    let ok_hello = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello");
    let small_body = response::Limits {
        max_body: 4,
        ..response::Limits::default()
    };
    let (fields_150, fields_150_head) = response_with_fields(150);
    let (fields_256, fields_256_head) = response_with_fields(256);
    let at_head_limit = response_head_of(64 * 1024);
    let mut cases = vec![
        rcase(
            "Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
            answer(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
                b"hello",
            ),
        ),
        rcase(
            "Content-Length 0",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
        ),
        rcase(
            "Content-Length with leading zeros",
            b"HTTP/1.1 200 OK\r\nContent-Length: 005\r\n\r\nhello",
            ok_hello.clone(),
        ),
        rcase(
            "chunked, extensions and trailers dropped",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5;a=b\r\nhello\r\n6;q=\"x y\"\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", b"hello world"),
        ),
        rcase(
            "TE and CL: chunked wins, the connection closes",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                b"hello",
            )
            .close(),
        ),
        rcase(
            "TE gzip",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b",
            invalid("a transfer coding other than chunked"),
        ),
        rcase(
            "TE gzip, chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            invalid("a transfer coding other than chunked"),
        ),
        rcase(
            "TE chunked in HTTP/1.0 keep-alive: the connection closes",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                b"hello",
            )
            .close(),
        ),
        rcase(
            "conflicting CL fields",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            invalid("invalid or conflicting Content-Length"),
        ),
        rcase(
            "equal CL fields",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            ok_hello.clone(),
        ),
        rcase(
            "CL 5, 5",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
            ok_hello.clone(),
        ),
        rcase(
            "CL 5, 6",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
            invalid("invalid or conflicting Content-Length"),
        ),
        rcase(
            "CL +5",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
            invalid("invalid or conflicting Content-Length"),
        ),
        rcase(
            "CL 2^64-1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nhello",
            invalid("body larger than the limit"),
        ),
        rcase(
            "CL 2^64",
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\nhello",
            invalid("invalid or conflicting Content-Length"),
        ),
        rcase(
            "HEAD answered with CL: no body read, the bytes after stay",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"")
                .rest(b"HTTP/1.1 204 No Content\r\n\r\n"),
        )
        .method("HEAD"),
        rcase(
            "HEAD answered with TE chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            answer(b"HTTP/1.1 200 OK\r\n\r\n", b""),
        )
        .method("HEAD"),
        rcase(
            "HEAD answered without a length",
            b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n",
            answer(b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n", b""),
        )
        .method("HEAD"),
        rcase(
            "204 with CL: no body read",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
            answer(b"HTTP/1.1 204 No Content\r\n\r\n", b"").rest(b"hello"),
        ),
        rcase(
            "304 with CL: passed on, no body read",
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\n",
            answer(
                b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\n",
                b"",
            ),
        ),
        rcase(
            "304 with TE chunked",
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            answer(b"HTTP/1.1 304 Not Modified\r\n\r\n", b""),
        ),
        rcase(
            "100 Continue before the answer",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            ok_hello.clone(),
        ),
        rcase(
            "103 Early Hints before the answer",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            answer(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", b""),
        ),
        rcase(
            "several interim answers",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            ok_hello.clone(),
        ),
        rcase(
            "101 Switching Protocols",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            invalid("101 to a request that asked for no upgrade"),
        ),
        rcase(
            "EOF after an interim answer",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            app_cut(),
        ),
        rcase(
            "close-delimited, HTTP/1.0",
            b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nabc",
            answer(
                b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                b"abc",
            )
            .close(),
        ),
        rcase(
            "close-delimited, HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nabc",
            answer(
                b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
                b"abc",
            )
            .close(),
        ),
        rcase(
            "close-delimited, empty",
            b"HTTP/1.1 200 OK\r\n\r\n",
            answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                b"",
            )
            .close(),
        ),
        rcase(
            "EOF mid-body",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
            app_cut(),
        ),
        rcase(
            "EOF mid-chunk",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            app_cut(),
        ),
        rcase(
            "EOF mid-head",
            b"HTTP/1.1 200 OK\r\nContent-",
            app_cut(),
        ),
        rcase("EOF before any byte", b"", app_closed()),
        rcase(
            "Latin-1 field value kept as bytes",
            b"HTTP/1.1 200 OK\r\nX-Name: Jos\xe9\r\nContent-Length: 0\r\n\r\n",
            answer(
                b"HTTP/1.1 200 OK\r\nX-Name: Jos\xe9\r\nContent-Length: 0\r\n\r\n",
                b"",
            ),
        ),
        // httparse gives an obs-text reason phrase as empty; clients ignore reasons.
        rcase(
            "obs-text reason phrase",
            b"HTTP/1.1 200 \xc4\xe9\r\nContent-Length: 0\r\n\r\n",
            answer(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", b""),
        ),
        rcase(
            "no reason phrase",
            b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
            answer(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", b""),
        ),
        rcase(
            "status 099",
            b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
            invalid("status code out of range"),
        ),
        rcase(
            "status 600",
            b"HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n",
            invalid("status code out of range"),
        ),
        rcase(
            "150 field lines",
            &fields_150,
            answer(fields_150_head, b"hi"),
        ),
        rcase(
            "256 field lines",
            &fields_256,
            answer(fields_256_head, b"hi"),
        ),
        rcase(
            "257 field lines",
            response_with_fields(257).0,
            invalid("too many fields"),
        ),
        rcase(
            "300 field lines",
            response_with_fields(300).0,
            invalid("too many fields"),
        ),
        rcase(
            "a head of exactly max_head",
            &at_head_limit,
            answer(&at_head_limit, b""),
        ),
        rcase(
            "a head one byte over max_head",
            response_head_of(64 * 1024 + 1),
            invalid("head too large"),
        ),
        rcase(
            "a 70 KiB head",
            response_head_of(70 * 1024),
            invalid("head too large"),
        ),
        rcase(
            "bare LF line endings",
            b"HTTP/1.1 200 OK\nX: y\nContent-Length: 5\n\nhello",
            answer(
                b"HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 5\r\n\r\n",
                b"hello",
            ),
        ),
        rcase(
            "an empty line before the status line",
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            ok_hello.clone(),
        ),
        rcase(
            "stray bytes after the response stay",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloGARBAGE\r\n",
            ok_hello.clone().rest(b"GARBAGE\r\n"),
        ),
        rcase(
            "stray bytes after a chunked response stay",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\r\nX",
            ok_hello.clone().rest(b"\r\nX"),
        ),
        rcase(
            "HTTP/1.0 keep-alive",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
            ok_hello.clone(),
        ),
        rcase(
            "HTTP/1.0 without keep-alive",
            b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                b"hello",
            )
            .close(),
        ),
        rcase(
            "Connection: close on HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
            answer(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                b"hello",
            )
            .close(),
        ),
        rcase(
            "hop-by-hop fields dropped",
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTrailer: X\r\nHermes-Log-Index: 9\r\nConnection: X-A\r\nX-B: 2\r\nContent-Length: 5\r\n\r\nhello",
            answer(
                b"HTTP/1.1 200 OK\r\nX-B: 2\r\nContent-Length: 5\r\n\r\n",
                b"hello",
            ),
        ),
        rcase(
            "chunked, bare LF after a size",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            invalid("chunked body"),
        ),
        rcase(
            "chunked, obs-fold in the trailers",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: a\r\n b\r\n\r\n",
            invalid("chunked body"),
        ),
        rcase(
            "chunked, body over max_body",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            invalid("chunked body"),
        )
        .limits(small_body),
        rcase(
            "CL, body over max_body",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            invalid("body larger than the limit"),
        )
        .limits(small_body),
        rcase(
            "close-delimited, body over max_body",
            b"HTTP/1.1 200 OK\r\n\r\nhello",
            invalid("body larger than the limit"),
        )
        .limits(small_body),
        rcase(
            "obs-fold in a field",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            invalid("malformed head"),
        ),
        rcase(
            "SP before a colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
            invalid("malformed head"),
        ),
        rcase(
            "NUL in a value",
            b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
            invalid("malformed head"),
        ),
        rcase(
            "HTTP/2.0 status line",
            b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            invalid("malformed head"),
        ),
        rcase(
            "HEAD with conflicting CLs: nothing to frame",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            answer(b"HTTP/1.1 200 OK\r\n\r\n", b""),
        )
        .method("HEAD"),
    ];
    cases.sort_by_key(|case| case.name);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_corpus() {
    let cases = response_cases();
    let count = cases.len();
    assert!(count >= 35, "only {count} response cases");
    let names: Vec<&str> = cases.iter().map(|case| case.name).collect();
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "two response cases with one name"
    );
    let tasks: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(i, case)| (case.name, tokio::spawn(check_response(case, i as u64))))
        .collect();
    let mut failures = Vec::new();
    for (name, task) in tasks {
        match task.await {
            Ok(failed) => failures.extend(failed),
            Err(error) => failures.push(format!("{name}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) among {count} response cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Mutations.

const REQUEST_MUTATIONS: usize = 4000;
const RESPONSE_MUTATIONS: usize = 2000;
const CHUNKED_MUTATIONS: usize = 3000;

/// Pieces a mutation inserts: line ends, separators, digits, bytes parsers disagree on, and
/// whole fields that change framing.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b",",
    b";",
    b"=",
    b"\"",
    b"\\",
    b"0",
    b"5",
    b"f",
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\xc2\xa0",
    b"chunked",
    b"\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Host: a\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"X-Forwarded-For: 10.0.0.1\r\n",
    b"Forwarded: for=a\r\n",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"HEAD",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"18446744073709551615",
    b"204",
    b"304",
];

/// A few random changes to a random member of `corpus`.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(3) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if at < out.len() => out[at] ^= 1 << rng.below(8),
            1 if at < out.len() => out[at] = rng.below(256) as u8,
            2 => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            3 | 4 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            5 => {
                let end = (at + rng.below(32)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(end..end, piece);
            }
            6 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// `canonical` as it is once parsed and made canonical again for the same client: only the
/// forwarding fields grow, by the client once more.
fn forwarded_again(canonical: &[u8]) -> Vec<u8> {
    let end = find(canonical, b"\r\n\r\n").expect("a canonical head") + 2;
    let (head, rest) = canonical.split_at(end);
    let mut out = Vec::with_capacity(canonical.len() + 32);
    for line in head.split_inclusive(|b| *b == b'\n') {
        let text = &line[..line.len() - 2];
        out.extend_from_slice(text);
        if text.starts_with(b"X-Forwarded-For: ") {
            out.extend_from_slice(b", 192.0.2.7");
        } else if text.starts_with(b"Forwarded: ") {
            out.extend_from_slice(b", for=192.0.2.7");
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(rest);
    out
}

async fn mutated_request(input: Vec<u8>) -> Option<String> {
    let limits = Limits::default();
    let _ = request::parse_head(&input, &limits, &mut Scan::default());
    let whole = read_requests(&input[..], limits, CLIENT).await;
    let bytewise = read_requests(Trickle::new(input.clone(), 1), limits, CLIENT).await;
    if whole != bytewise {
        return Some(format!(
            "in one piece: {whole}\n    one byte a read: {bytewise}"
        ));
    }
    // The canonical form grows a little each round; it must not meet the bounds.
    let roomy = Limits {
        max_head: 1 << 20,
        max_fields: 1000,
        max_body: u64::MAX,
    };
    for got in &whole.got {
        let again = read_requests(&got.canonical[..], roomy, CLIENT).await;
        // A canonical request that closes the app connection asks for a close itself.
        let closing = got
            .canonical
            .windows(21)
            .any(|w| w == b"\r\nConnection: close\r\n");
        let want = ok(forwarded_again(&got.canonical));
        let want = if closing { want.close() } else { want };
        if again != want {
            return Some(format!(
                "canonical \"{}\" parses to {again}, not {want}",
                show(&got.canonical)
            ));
        }
    }
    None
}

async fn mutated_response(input: Vec<u8>) -> Option<String> {
    let limits = response::Limits::default();
    let roomy = response::Limits {
        max_head: 1 << 20,
        max_fields: 4096,
        max_body: u64::MAX,
    };
    for method in ["GET", "HEAD"] {
        let buffered = read_response(&[][..], BytesMut::from(&input[..]), method, &limits).await;
        let bytewise = read_response(
            Trickle::new(input.clone(), 1),
            BytesMut::new(),
            method,
            &limits,
        )
        .await;
        if buffered != bytewise {
            return Some(format!(
                "{method}: buffered: {buffered}\n    one byte a read: {bytewise}"
            ));
        }
        // What a client gets reads back as itself.
        if let Answer::Ok {
            head, body, close, ..
        } = &buffered
        {
            let sent = cat!(head, body);
            let again = read_response(&[][..], BytesMut::from(&sent[..]), method, &roomy).await;
            let want = Answer::Ok {
                head: head.clone(),
                body: body.clone(),
                close: *close,
                rest: Vec::new(),
            };
            if again != want {
                return Some(format!(
                    "{method}: what the client gets, \"{}\", reads back as {again}",
                    show(&sent)
                ));
            }
        }
    }
    None
}

/// Decodes a chunked `input` given `step` more bytes a call: the body and the bytes used once
/// done, `None` if it never is, or the refusal's status.
fn decode_chunked(input: &[u8], step: usize, max: u64) -> Result<Option<(Vec<u8>, usize)>, u16> {
    let mut chunked = Chunked::default();
    let mut body = Vec::new();
    let (mut used, mut fed) = (0, 0);
    while !chunked.done() {
        if fed == input.len() {
            return Ok(None);
        }
        fed = (fed + step).min(input.len());
        used += chunked
            .decode(&input[used..fed], &mut body, max)
            .map_err(|invalid| invalid.status())?;
    }
    Ok(Some((body, used)))
}

fn mutated_chunked(input: &[u8]) -> Option<String> {
    const MAX: u64 = 64;
    let whole = decode_chunked(input, input.len().max(1), MAX);
    if let Ok(Some((body, used))) = &whole
        && (body.len() as u64 > MAX || *used > input.len())
    {
        return Some(format!("{whole:?}: out of bounds"));
    }
    for step in [1, 2, 7] {
        let pieces = decode_chunked(input, step, MAX);
        if pieces != whole {
            return Some(format!(
                "all at once: {whole:?}\n    {step} bytes a call: {pieces:?}"
            ));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutations_do_not_panic() {
    let small = |raw: &Vec<u8>| raw.len() <= 4096;
    let requests: Vec<Vec<u8>> = request_cases()
        .into_iter()
        .map(|case| case.raw)
        .filter(small)
        .collect();
    let responses: Vec<Vec<u8>> = response_cases()
        .into_iter()
        .map(|case| case.raw)
        .filter(small)
        .collect();
    let mut chunked: Vec<Vec<u8>> = requests
        .iter()
        .chain(&responses)
        .filter_map(|raw| {
            let at = find(raw, b"Transfer-Encoding: chunked\r\n")?;
            let end = at + find(&raw[at..], b"\r\n\r\n")? + 4;
            Some(raw[end..].to_vec())
        })
        .collect();
    chunked.push(
        b"5\r\nhello\r\n6;ext=1 ; b=\"q\\\"s\"\r\n world\r\n0\r\nX-T: v\r\n\r\nNEXT".to_vec(),
    );

    let mut rng = Rng::new(0x4865_726d_6573);
    let mut tasks = Vec::new();
    for _ in 0..REQUEST_MUTATIONS {
        let input = mutate(&mut rng, &requests);
        let task = tokio::spawn(mutated_request(input.clone()));
        tasks.push(("request", input, task));
    }
    for _ in 0..RESPONSE_MUTATIONS {
        let input = mutate(&mut rng, &responses);
        let task = tokio::spawn(mutated_response(input.clone()));
        tasks.push(("response", input, task));
    }
    for _ in 0..CHUNKED_MUTATIONS {
        let input = mutate(&mut rng, &chunked);
        let copy = input.clone();
        let task = tokio::spawn(async move { mutated_chunked(&copy) });
        tasks.push(("chunked body", input, task));
    }
    let count = tasks.len();
    let mut failures = Vec::new();
    for (kind, input, task) in tasks {
        let failure = match task.await {
            Ok(None) => continue,
            Ok(Some(failure)) => failure,
            Err(error) => error.to_string(),
        };
        failures.push(format!("{kind} \"{}\":\n    {failure}", show(&input)));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s) among {count} mutations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
