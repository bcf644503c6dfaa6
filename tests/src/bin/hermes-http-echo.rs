//! An HTTP app for the protocol tests. `GET|POST /...` answers 200 with the request exactly as
//! received (head and body) as its body; `/status/<code>` answers that status with headers of its
//! own; `/chunked` answers with a chunked body and a trailer; `/close` answers with a body
//! delimited by closing the connection. `HEAD` gets the headers only.
use std::{
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
};

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("listening on {addr}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(stream);
        });
    }
}

fn serve(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let (head_len, method, path, body_len, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
                let body = body_len(request.headers, &buf[len..]);
                let close = request.version == Some(0)
                    || request.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                    });
                if let Some(body) = body {
                    let method = request.method.unwrap_or("").to_owned();
                    break (
                        len,
                        method,
                        request.path.unwrap_or("").to_owned(),
                        body,
                        close,
                    );
                }
            }
            let mut chunk = [0; 64 * 1024];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let request: Vec<u8> = buf.drain(..head_len + body_len).collect();
        let head_only = method == "HEAD";
        let connection = if close { "Connection: close\r\n" } else { "" };
        let mut out = Vec::new();
        if let Some(code) = path.strip_prefix("/status/") {
            let body = format!("status {code}\n");
            write!(
                out,
                "HTTP/1.1 {code} Chosen\r\nX-App: hermes-http-echo\r\nSet-Cookie: a=b\r\nContent-Length: {}\r\n{connection}\r\n",
                body.len()
            )?;
            if !head_only {
                out.extend_from_slice(body.as_bytes());
            }
        } else if path == "/chunked" {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Done\r\n{connection}\r\n"
            )?;
            if !head_only {
                out.extend_from_slice(b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Done: yes\r\n\r\n");
            }
        } else if path == "/close" {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            if !head_only {
                out.extend_from_slice(b"until the connection closes");
            }
            stream.write_all(&out)?;
            return Ok(());
        } else {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{connection}\r\n",
                request.len()
            )?;
            if !head_only {
                out.extend_from_slice(&request);
            }
        }
        stream.write_all(&out)?;
        if close {
            return Ok(());
        }
    }
}

/// Bytes of the body that follows, once all of it is in `rest`.
fn body_len(headers: &[httparse::Header<'_>], rest: &[u8]) -> Option<usize> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        return hermes_lab::client::chunked_len(rest);
    }
    let length = header("content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok())
        .unwrap_or(0);
    (rest.len() >= length).then_some(length)
}
