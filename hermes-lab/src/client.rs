//! A small HTTP/1.1 client for the tests: sends raw requests, reads whole responses.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// A response as the client received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The response exactly as received.
    pub raw: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `raw` on a new connection and reads one response.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let mut stream = connect(addr)?;
    stream.write_all(raw)?;
    read_response(&mut stream, &mut Vec::new(), "")
}

pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> io::Result<Response> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: hermes\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, &raw)
}

pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: hermes\r\n\r\n").as_bytes(),
    )
}

/// Reads one response from `stream`; `pending` holds bytes read beyond earlier responses.
/// `method` is that of the request (a `HEAD` response has no body).
pub fn read_response(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    method: &str,
) -> io::Result<Response> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response
            .parse(pending)
            .map_err(|e| io::Error::other(format!("bad response: {e}")))?;
        if let httparse::Status::Complete(head) = parsed {
            let status = response.code.unwrap_or(0);
            let header_list: Vec<(String, String)> = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let find = |name: &str| {
                header_list
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let body_len = if method == "HEAD"
                || (100..200).contains(&status)
                || status == 204
                || status == 304
            {
                Some(0)
            } else if find("transfer-encoding").is_some() {
                chunked_len(&pending[head..])
            } else if let Some(length) = find("content-length") {
                let length: usize = length.trim().parse().map_err(io::Error::other)?;
                (pending.len() >= head + length).then_some(length)
            } else {
                None // until close
            };
            let until_close = find("transfer-encoding").is_none()
                && find("content-length").is_none()
                && body_len.is_none();
            if let Some(body_len) = body_len {
                let raw: Vec<u8> = pending.drain(..head + body_len).collect();
                return Ok(Response {
                    status,
                    headers: header_list,
                    body: raw[head..].to_vec(),
                    raw,
                });
            }
            if until_close {
                stream.read_to_end(pending)?;
                let raw = std::mem::take(pending);
                return Ok(Response {
                    status,
                    headers: header_list,
                    body: raw[head..].to_vec(),
                    raw,
                });
            }
        }
        let mut chunk = [0; 64 * 1024];
        // A read with a timeout fails with EINTR after the process was stopped and continued
        // (signal(7)), as a loaded CI machine may do; `read_to_end` retries it, `read` does not.
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            read => read?,
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a full response",
            ));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Bytes of the chunked body (trailers included) at the start of `buf`, once all of it is there.
pub fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let Ok(httparse::Status::Complete((used, size))) = httparse::parse_chunk_size(&buf[at..])
        else {
            return None;
        };
        at += used;
        if size == 0 {
            let trailers = &buf[at..];
            if trailers.starts_with(b"\r\n") {
                return Some(at + 2);
            }
            return trailers
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|end| at + end + 4);
        }
        at += size as usize + 2;
        if at > buf.len() {
            return None;
        }
    }
}
