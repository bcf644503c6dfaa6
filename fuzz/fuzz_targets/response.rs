//! Response framing: `response::read` (as delivery reads the app) for a GET and for a HEAD, over
//! the input in pieces and already buffered, then `Response::to_client` and a second read of
//! what a client would get.
//!
//! Flags: bit 3, small limits. Checked: no panic; the same answer (and the same bytes left
//! over) whatever pieces the bytes arrive in; a body within the limit; what a client gets reads
//! back as the same response and re-serializes to the same bytes.
#![no_main]

use bytes::BytesMut;
use hermes_agent::http::{
    Version,
    response::{self, Limits, ReadError, Response},
};
use hermes_fuzz::{Input, block_on};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt};

const SMALL: Limits = Limits {
    max_head: 200,
    max_fields: 6,
    max_body: 40,
};

/// Limits that what the agent sends a client never meets.
const ROOMY: Limits = Limits {
    max_head: 1 << 20,
    max_fields: 4096,
    max_body: u64::MAX,
};

/// Reads one response from `buf`, then `stream`: the response and every byte left after it.
async fn read(
    mut stream: impl AsyncRead + Unpin,
    mut buf: BytesMut,
    method: &str,
    limits: &Limits,
) -> Result<(Response, Vec<u8>), ReadError> {
    let response = response::read(&mut stream, &mut buf, method, limits).await?;
    let mut rest = buf.to_vec();
    stream
        .read_to_end(&mut rest)
        .await
        .expect("reading from memory");
    Ok((response, rest))
}

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let limits = if input.flag(3) {
        SMALL
    } else {
        Limits::default()
    };
    for method in ["GET", "HEAD"] {
        let (pieces, buffered) = block_on(async {
            (
                read(input.pieces(), BytesMut::new(), method, &limits).await,
                read(&[][..], BytesMut::from(input.data), method, &limits).await,
            )
        });
        // Errors compare by kind: a head both too long and malformed further on is refused for
        // one or the other depending on how much of it had come.
        let kind = |answer: &Result<(Response, Vec<u8>), ReadError>| match answer {
            Err(ReadError::Invalid(_)) => Err(ReadError::Invalid("")),
            other => other.clone(),
        };
        assert_eq!(
            kind(&pieces),
            kind(&buffered),
            "{method}: the answer depends on the pieces"
        );
        let Ok((response, _)) = buffered else {
            continue;
        };
        assert!(response.body.len() as u64 <= limits.max_body);
        assert!((200..=599).contains(&response.status));
        for client in [Version::Http11, Version::Http10] {
            let (head, body) = response.to_client(client, response.close);
            let sent = [&head[..], &body[..]].concat();
            let (again, rest) = block_on(read(&[][..], BytesMut::from(&sent[..]), method, &ROOMY))
                .unwrap_or_else(|error| {
                    panic!(
                        "{method}: what a client gets, {:?}, does not read back: {error}",
                        sent.escape_ascii().to_string()
                    )
                });
            assert!(rest.is_empty(), "{method}: bytes after what a client gets");
            assert_eq!(again.status, response.status);
            assert_eq!(again.body, body, "{method}: the body read back");
            assert_eq!(again.close, response.close, "{method}: close read back");
            assert_eq!(
                again.to_client(client, response.close),
                (head, body),
                "{method}: what a client gets changes when read back"
            );
        }
    }
});
