//! What the fuzz targets share: the layout of an input, a stream that hands out its bytes in
//! pieces, the runtime the async readers run on, and reading requests off a connection as the
//! interception and the admin API do.
//!
//! An input is `[flags][n sizes][data]`: the low 3 bits of `flags` are `n`, the number of bytes
//! after it that give the sizes of the pieces the data arrives in (size `b + 1`, taken in turn);
//! `n == 0` means all at once. The other bits of `flags` are each target's own choices.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};

use hermes_agent::http::{
    Invalid,
    request::{self, Limits, Reader, Scan},
};
use tokio::io::{AsyncRead, ReadBuf};

/// An input taken apart.
pub struct Input<'a> {
    /// The first byte; bits 3 to 7 are the target's own.
    pub flags: u8,
    /// Sizes of the pieces the data arrives in, in turn (never empty; never 0).
    pub sizes: Vec<usize>,
    pub data: &'a [u8],
}

impl<'a> Input<'a> {
    /// `None` for an empty input.
    pub fn parse(input: &'a [u8]) -> Option<Self> {
        let (&flags, rest) = input.split_first()?;
        let n = usize::from(flags & 7).min(rest.len());
        let (sizes, data) = rest.split_at(n);
        let sizes = if sizes.is_empty() {
            vec![usize::MAX]
        } else {
            sizes.iter().map(|b| usize::from(*b) + 1).collect()
        };
        Some(Self { flags, sizes, data })
    }

    /// Whether flag bit `bit` (3 to 7) is set.
    pub fn flag(&self, bit: u8) -> bool {
        self.flags & (1 << bit) != 0
    }

    /// The data as a stream that gives it in pieces of the input's sizes.
    pub fn pieces(&self) -> Pieces<'a> {
        Pieces {
            data: self.data,
            sizes: self.sizes.clone(),
            turn: 0,
        }
    }

    /// The ends of the growing prefixes the data arrives in: each piece's end, in turn.
    pub fn prefix_ends(&self) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut end = 0;
        let mut turn = 0;
        while end < self.data.len() {
            end = end.saturating_add(self.sizes[turn % self.sizes.len()]);
            end = end.min(self.data.len());
            ends.push(end);
            turn += 1;
        }
        ends
    }
}

/// A stream giving its bytes in pieces of the given sizes, in turn.
pub struct Pieces<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let size = this.sizes[this.turn % this.sizes.len()];
        this.turn += 1;
        let n = size.min(this.data.len()).min(buf.remaining());
        let (piece, rest) = this.data.split_at(n);
        buf.put_slice(piece);
        this.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Runs `future` to completion on the process's one current-thread runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime")
        })
        .block_on(future)
}

/// A client address: IPv4, or IPv6 when `v6`.
pub fn client(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
    }
}

/// Small limits, so that short inputs meet them.
pub const SMALL: Limits = Limits {
    max_head: 200,
    max_fields: 6,
    max_body: 40,
};

/// Limits a canonical request never meets: it grows a little each time it is parsed.
pub const ROOMY: Limits = Limits {
    max_head: 1 << 20,
    max_fields: 1000,
    max_body: u64::MAX,
};

/// A request as the agent would order it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub canonical: Vec<u8>,
    pub close: bool,
    pub expect_continue: bool,
}

/// How reading a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed between requests.
    Eof,
    /// A request said the connection closes after it.
    Stop,
    /// The client closed mid-request.
    Closed,
    /// Refused with this status.
    Refused(u16),
}

/// Everything a connection gives: the requests, then how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub got: Vec<Got>,
    pub end: End,
}

/// Reads requests off `stream` as the interception does (head, then body, then the canonical
/// form), until the connection ends, or after `most` requests.
pub async fn read_requests(
    stream: impl AsyncRead + Unpin,
    limits: Limits,
    client: IpAddr,
    most: usize,
) -> Outcome {
    let end_of = |error: request::ReadError| match error {
        request::ReadError::Invalid(invalid) => End::Refused(invalid.status()),
        request::ReadError::Closed => End::Closed,
    };
    let mut reader = Reader::new(stream, limits);
    let mut got = Vec::new();
    let end = loop {
        if got.len() == most || !reader.ready().await {
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
        assert!(
            body.len() as u64 <= limits.max_body,
            "a body over the limit"
        );
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

/// The first head of `data` by `parse_head` alone, given the growing prefixes that end at `ends`
/// (with one `Scan`): its length and canonical form without a body, or the refusal's status.
pub fn first_head(
    data: &[u8],
    ends: impl IntoIterator<Item = usize>,
    limits: &Limits,
    client: IpAddr,
) -> Result<Option<(usize, Vec<u8>)>, u16> {
    let mut scan = Scan::default();
    for end in ends {
        match request::parse_head(&data[..end], limits, &mut scan) {
            Ok(None) => {}
            Ok(Some((head, len))) => {
                assert!(len <= end, "a head longer than its bytes");
                return Ok(Some((len, head.canonical(client, b"").to_vec())));
            }
            Err(invalid) => return Err(invalid.status()),
        }
    }
    Ok(None)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a canonical request from `client` becomes once parsed and made canonical again for the
/// same client: only the forwarding fields grow, by the client once more; and whether it closes
/// the connection (it says `Connection: close`).
pub fn canonical_again(canonical: &[u8], client: IpAddr) -> (Vec<u8>, bool) {
    let end = find(canonical, b"\r\n\r\n").expect("a canonical head") + 2;
    let (head, rest) = canonical.split_at(end);
    let (xff, fwd) = match client {
        IpAddr::V4(v4) => (format!(", {v4}"), format!(", for={v4}")),
        IpAddr::V6(v6) => (format!(", {v6}"), format!(", for=\"[{v6}]\"")),
    };
    let mut out = Vec::with_capacity(canonical.len() + 64);
    let mut close = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let text = &line[..line.len() - 2];
        out.extend_from_slice(text);
        if text.starts_with(b"X-Forwarded-For: ") {
            out.extend_from_slice(xff.as_bytes());
        } else if text.starts_with(b"Forwarded: ") {
            out.extend_from_slice(fwd.as_bytes());
        }
        close |= text == b"Connection: close";
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(rest);
    (out, close)
}

/// Reads `data` as one connection, in the input's pieces and at once, with `limits`: the outcome
/// must not depend on how the bytes arrive, `parse_head` alone must agree with the reader on the
/// first head, and every request's canonical form must parse to itself (its forwarding fields
/// grown by the client). `most`: requests read at most.
pub fn check_requests(input: &Input<'_>, limits: Limits, client: IpAddr, most: usize) {
    let data = input.data;
    let (pieces, whole) = block_on(async {
        (
            read_requests(input.pieces(), limits, client, most).await,
            read_requests(data, limits, client, most).await,
        )
    });
    assert_eq!(pieces, whole, "the outcome depends on how the bytes arrive");

    let at_once = first_head(data, [data.len()], &limits, client);
    let growing = first_head(data, input.prefix_ends(), &limits, client);
    assert_eq!(
        at_once, growing,
        "parse_head depends on how the bytes arrive"
    );
    match &at_once {
        Err(status) => assert_eq!(
            whole,
            Outcome {
                got: Vec::new(),
                end: End::Refused(*status)
            },
            "parse_head refuses, the reader does not"
        ),
        Ok(None) => assert!(whole.got.is_empty(), "parse_head finds no head"),
        Ok(Some((len, _))) => assert!(*len <= data.len()),
    }

    for got in &whole.got {
        let again = block_on(read_requests(&got.canonical[..], ROOMY, client, usize::MAX));
        let (canonical, close) = canonical_again(&got.canonical, client);
        let want = Outcome {
            got: vec![Got {
                canonical,
                close,
                expect_continue: false,
            }],
            end: if close { End::Stop } else { End::Eof },
        };
        assert_eq!(
            again,
            want,
            "the canonical request {:?} does not parse to itself",
            got.canonical.escape_ascii().to_string()
        );
    }
}
