//! `hermes-logapp`: the sample application of the Hermes paper, and the benchmark app.
//!
//! - `POST /insert` appends the request body as one line to the log file and answers
//!   `201 Created` with the new line number (and `Location: /line/N`);
//! - `GET /line/N` returns line N (1-based), `404` past the end;
//! - `GET /count` returns the number of lines;
//! - `GET /state` returns the whole state (for snapshots), `PUT /state` replaces it: 8 bytes of
//!   the last Hermes log index appended, 8 bytes of the line it became (both zero without
//!   `--dedup`), then the file.
//!
//! The file is the state: a restarted app continues it. Each insert is one `write(2)` (no fsync),
//! so the file is complete whenever the app has answered. Bodies may not contain line breaks.
//!
//! By default the app does not help Hermes: every `POST /insert` appends, whatever its headers,
//! as an unchanged app would. Hermes delivers each request once, except the one the app itself was
//! processing when it died: that one Hermes delivers again, naming its log index
//! (`Hermes-Log-Index`), as every request it delivers. With `--dedup` the app makes that
//! redelivery harmless: before appending it records "index I becomes line L" in
//! `<file>.hermes-index`, and a request whose index it has already appended gets the original
//! answer and appends nothing. Without `--dedup` that file is neither read nor written.
use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    net::SocketAddr,
    os::unix::fs::FileExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::{Buf, BytesMut};
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[derive(Parser)]
#[command(
    version,
    about = "The Hermes paper's log server: POST /insert, GET /line/N, GET /count"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The log file (created if missing; an existing one is continued).
    #[arg(long)]
    file: PathBuf,
    /// When the file is new, fill it with this many deterministic lines first.
    #[arg(long, default_value_t = 0)]
    prepopulate: usize,
    /// Bytes per pre-populated line.
    #[arg(long, default_value_t = 128)]
    line_bytes: usize,
    /// Largest body accepted.
    #[arg(long, default_value_t = 16 << 20)]
    max_body: usize,
    /// Append a request with a `Hermes-Log-Index` already appended only once (exactly-once even
    /// when the app dies with a request in flight). Off: every insert appends.
    #[arg(long)]
    dedup: bool,
}

/// The lines, in memory for reads, and the file they are appended to.
struct Log {
    file: File,
    data: Vec<u8>,
    /// Start of each line in `data`, plus the end.
    starts: Vec<usize>,
    /// With `--dedup`: what was appended last for which Hermes log index.
    intent: Option<Intent>,
}

/// The last Hermes log index appended, and the line it became, in memory and in a file.
struct Intent {
    /// `(index, line)`; `None` before the first.
    last: Option<(u64, usize)>,
    file: File,
}

impl Intent {
    fn open(log: &std::path::Path) -> io::Result<Self> {
        let mut path = log.to_owned().into_os_string();
        path.push(".hermes-index");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut record = [0u8; 16];
        let last = file
            .read_exact_at(&mut record, 0)
            .ok()
            .map(|()| decode_intent(&record));
        Ok(Self { last, file })
    }

    fn set(&mut self, index: u64, line: usize) -> io::Result<()> {
        self.file.write_all_at(&encode_intent(index, line), 0)?;
        self.last = Some((index, line));
        Ok(())
    }
}

fn encode_intent(index: u64, line: usize) -> [u8; 16] {
    let mut record = [0u8; 16];
    record[..8].copy_from_slice(&index.to_le_bytes());
    record[8..].copy_from_slice(&(line as u64).to_le_bytes());
    record
}

fn decode_intent(record: &[u8; 16]) -> (u64, usize) {
    let index = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
    let line = u64::from_le_bytes(record[8..].try_into().expect("8 bytes"));
    (index, line as usize)
}

/// What an insert did.
enum Inserted {
    /// Appended as this line.
    Line(usize),
    /// This log index was appended before, as this line.
    Again(usize),
    /// An index older than the last one appended: not a redelivery Hermes makes.
    Stale(u64),
}

impl Log {
    fn open(args: &Args) -> io::Result<Self> {
        let mut file = File::options()
            .read(true)
            .append(true)
            .create(true)
            .open(&args.file)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        if data.last().is_some_and(|&b| b != b'\n') {
            // A torn last line (crash mid-write): drop it, as the app never acknowledged it.
            let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            data.truncate(keep);
            file.set_len(keep as u64)?;
        }
        let intent = if args.dedup {
            Some(Intent::open(&args.file)?)
        } else {
            None
        };
        let mut log = Self {
            file,
            data: Vec::new(),
            starts: vec![0],
            intent,
        };
        for line in data.split_inclusive(|&b| b == b'\n') {
            log.data.extend_from_slice(&line[..line.len() - 1]);
            log.starts.push(log.data.len());
        }
        if log.count() == 0 && args.prepopulate > 0 {
            let mut batch = Vec::with_capacity(args.prepopulate * (args.line_bytes + 1));
            for n in 1..=args.prepopulate {
                let line = prepopulated_line(n, args.line_bytes);
                batch.extend_from_slice(&line);
                batch.push(b'\n');
                log.data.extend_from_slice(&line);
                log.starts.push(log.data.len());
            }
            log.file.write_all(&batch)?;
        }
        Ok(log)
    }

    /// The intent record (zeros without `--dedup`), then the file.
    fn state(&self) -> Vec<u8> {
        let (index, line) = self
            .intent
            .as_ref()
            .and_then(|intent| intent.last)
            .unwrap_or((0, 0));
        let mut state = Vec::with_capacity(16 + self.data.len() + self.count());
        state.extend_from_slice(&encode_intent(index, line));
        for n in 1..=self.count() {
            state.extend_from_slice(&self.data[self.starts[n - 1]..self.starts[n]]);
            state.push(b'\n');
        }
        state
    }

    /// Makes `state` (as [`Log::state`] gives it) the log's; returns the number of lines. Without
    /// `--dedup` the intent record is checked for length only.
    fn replace(&mut self, state: &[u8]) -> io::Result<usize> {
        let invalid = |what| io::Error::new(io::ErrorKind::InvalidData, what);
        let (record, file) = state
            .split_at_checked(16)
            .ok_or_else(|| invalid("shorter than 16 bytes"))?;
        if file.last().is_some_and(|&b| b != b'\n') {
            return Err(invalid("the file does not end with a line break"));
        }
        if let Some(intent) = &mut self.intent {
            let (index, line) = decode_intent(record.try_into().expect("16 bytes"));
            intent.set(index, line)?;
        }
        self.file.set_len(0)?;
        self.file.write_all(file)?;
        self.data.clear();
        self.starts = vec![0];
        for line in file.split_inclusive(|&b| b == b'\n') {
            self.data.extend_from_slice(&line[..line.len() - 1]);
            self.starts.push(self.data.len());
        }
        Ok(self.count())
    }

    fn count(&self) -> usize {
        self.starts.len() - 1
    }

    fn line(&self, n: usize) -> Option<&[u8]> {
        (1..=self.count())
            .contains(&n)
            .then(|| &self.data[self.starts[n - 1]..self.starts[n]])
    }

    /// Appends `line`; with `--dedup`, not if it is the request of a Hermes log `index` appended
    /// before. Without `--dedup`, `index` is ignored.
    fn insert(&mut self, line: &[u8], index: Option<u64>) -> io::Result<Inserted> {
        let next = self.count() + 1;
        if let (Some(intent), Some(index)) = (&mut self.intent, index) {
            if let Some((last, last_line)) = intent.last {
                if index < last {
                    return Ok(Inserted::Stale(index));
                }
                if index == last && next > last_line {
                    return Ok(Inserted::Again(last_line));
                }
            }
            intent.set(index, next)?;
        }
        self.append(line).map(Inserted::Line)
    }

    fn append(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut record = Vec::with_capacity(line.len() + 1);
        record.extend_from_slice(line);
        record.push(b'\n');
        self.file.write_all(&record)?;
        self.data.extend_from_slice(line);
        self.starts.push(self.data.len());
        Ok(self.count())
    }
}

/// Line `n` of a pre-populated log: its number, then a letter repeated, `bytes` long.
fn prepopulated_line(n: usize, bytes: usize) -> Vec<u8> {
    let mut line = format!("{n:08}-").into_bytes();
    line.resize(bytes.max(line.len()), b'a' + (n % 26) as u8);
    line.truncate(bytes);
    line
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let log = match Log::open(&args) {
        Ok(log) => Arc::new(Mutex::new(log)),
        Err(error) => {
            eprintln!(
                "hermes-logapp: cannot open {}: {error}",
                args.file.display()
            );
            std::process::exit(1);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("hermes-logapp: cannot listen on {}: {error}", args.listen);
            std::process::exit(1);
        }
    };
    println!(
        "hermes-logapp listening on {} with {} lines in {}{}",
        args.listen,
        log.lock().unwrap().count(),
        args.file.display(),
        if args.dedup {
            ", de-duplicating on Hermes-Log-Index"
        } else {
            ""
        }
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let log = Arc::clone(&log);
        let max_body = args.max_body;
        tokio::spawn(async move {
            let _ = connection(stream, &log, max_body).await;
        });
    }
}

async fn connection(mut stream: TcpStream, log: &Mutex<Log>, max_body: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(1024);
    loop {
        let request = loop {
            match parse(&buf, max_body) {
                Ok(Some(request)) => break Ok(request),
                Ok(None) => {}
                Err(status) => break Err(status),
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        out.clear();
        let close = match request {
            Ok(request) => {
                respond(&mut out, log, &request)?;
                buf.advance(request.len);
                request.close
            }
            Err((status, reason)) => {
                write_response(&mut out, status, reason, &[], b"", true);
                true
            }
        };
        stream.write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

struct Request {
    /// Bytes of the whole request in the buffer.
    len: usize,
    post: bool,
    /// GET or HEAD.
    get: bool,
    /// HEAD: the response is a GET's without its body.
    head: bool,
    put: bool,
    path: String,
    body: Vec<u8>,
    close: bool,
    /// `Hermes-Log-Index`, when delivered by Hermes (only `--dedup` looks at it, and refuses a
    /// value that is not a number).
    log_index: Option<Result<u64, std::num::ParseIntError>>,
}

/// A status and reason to refuse a request with.
type Refusal = (u16, &'static str);

/// Parses one request from the start of `buf`; `Ok(None)`: more bytes needed.
fn parse(buf: &[u8], max_body: usize) -> Result<Option<Request>, Refusal> {
    const BAD: Refusal = (400, "Bad Request");
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let head = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => return Ok(None),
        _ => return Err(BAD),
    };
    let mut length = None;
    let mut chunked = false;
    let mut close = request.version == Some(0);
    let mut log_index = None;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| BAD)?.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| BAD)?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if header.name.eq_ignore_ascii_case("hermes-log-index") {
            log_index = Some(value.parse::<u64>());
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close")
                || (close && !value.eq_ignore_ascii_case("keep-alive"));
        }
    }
    let (body, len) = if chunked {
        match dechunk(&buf[head..], max_body)? {
            Some((body, used)) => (body, head + used),
            None => return Ok(None),
        }
    } else {
        let length = length.unwrap_or(0);
        if length > max_body {
            return Err((413, "Content Too Large"));
        }
        if buf.len() < head + length {
            return Ok(None);
        }
        (buf[head..head + length].to_vec(), head + length)
    };
    let method = request.method.unwrap_or("");
    Ok(Some(Request {
        len,
        post: method == "POST",
        get: method == "GET" || method == "HEAD",
        head: method == "HEAD",
        put: method == "PUT",
        path: request.path.unwrap_or("").to_owned(),
        body,
        close,
        log_index,
    }))
}

/// Decodes a chunked body; returns it and the bytes it took, or `None` if incomplete.
fn dechunk(mut buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, Refusal> {
    let total = buf.len();
    let mut body = Vec::new();
    loop {
        let (used, size) = match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err((400, "Bad Request")),
        };
        buf = &buf[used..];
        let size = size as usize;
        if size == 0 {
            // Skip trailers up to the blank line.
            loop {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                buf = &buf[end + 2..];
                if end == 0 {
                    return Ok(Some((body, total - buf.len())));
                }
            }
        }
        if body.len() + size > max_body {
            return Err((413, "Content Too Large"));
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

fn respond(out: &mut Vec<u8>, log: &Mutex<Log>, request: &Request) -> io::Result<()> {
    answer(out, log, request)?;
    if request.head
        && let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n")
    {
        out.truncate(end + 4);
    }
    Ok(())
}

fn answer(out: &mut Vec<u8>, log: &Mutex<Log>, request: &Request) -> io::Result<()> {
    let close = request.close;
    let path = request.path.as_str();
    if path == "/insert" {
        if !request.post {
            write_response(
                out,
                405,
                "Method Not Allowed",
                &[("Allow", "POST")],
                b"use POST\n",
                close,
            );
        } else if request.body.iter().any(|&b| b == b'\n' || b == b'\r') {
            write_response(
                out,
                400,
                "Bad Request",
                &[],
                b"the body is one line: no line breaks\n",
                close,
            );
        } else if request.log_index.as_ref().is_some_and(Result::is_err)
            && log.lock().unwrap().intent.is_some()
        {
            let body = b"Hermes-Log-Index is not a number\n";
            write_response(out, 400, "Bad Request", &[], body, close);
        } else {
            let index = request.log_index.clone().and_then(Result::ok);
            let inserted = log.lock().unwrap().insert(&request.body, index)?;
            match inserted {
                Inserted::Line(n) | Inserted::Again(n) => {
                    let location = format!("/line/{n}");
                    let body = format!("{n}\n");
                    let headers = [("Location", location.as_str())];
                    write_response(out, 201, "Created", &headers, body.as_bytes(), close);
                }
                Inserted::Stale(index) => {
                    let body = format!("log index {index} is older than the last one appended\n");
                    write_response(out, 409, "Conflict", &[], body.as_bytes(), close);
                }
            }
        }
    } else if let Some(n) = path.strip_prefix("/line/") {
        if !request.get {
            write_response(
                out,
                405,
                "Method Not Allowed",
                &[("Allow", "GET")],
                b"use GET\n",
                close,
            );
            return Ok(());
        }
        let log = log.lock().unwrap();
        match n.parse().ok().and_then(|n| log.line(n)) {
            Some(line) => write_response(out, 200, "OK", &[], line, close),
            None => write_response(out, 404, "Not Found", &[], b"no such line\n", close),
        }
    } else if path == "/state" && request.get {
        let state = log.lock().unwrap().state();
        write_response(out, 200, "OK", &[], &state, close);
    } else if path == "/state" && request.put {
        match log.lock().unwrap().replace(&request.body) {
            Ok(count) => {
                write_response(out, 200, "OK", &[], format!("{count}\n").as_bytes(), close)
            }
            Err(error) if error.kind() == io::ErrorKind::InvalidData => write_response(
                out,
                400,
                "Bad Request",
                &[],
                format!("{error}\n").as_bytes(),
                close,
            ),
            Err(error) => return Err(error),
        }
    } else if path == "/count" && request.get {
        let count = log.lock().unwrap().count();
        write_response(out, 200, "OK", &[], format!("{count}\n").as_bytes(), close);
    } else {
        write_response(
            out,
            404,
            "Not Found",
            &[],
            b"try POST /insert, GET /line/N, GET /count\n",
            close,
        );
    }
    Ok(())
}

fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepopulated_lines_are_deterministic() {
        assert_eq!(prepopulated_line(3, 12), b"00000003-ddd");
        assert_eq!(prepopulated_line(3, 128).len(), 128);
    }

    #[test]
    fn a_log_index_is_appended_once() {
        let dir = std::env::temp_dir().join(format!("hermes-logapp-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args = Args::parse_from([
            "hermes-logapp",
            "--dedup",
            "--file",
            dir.join("log").to_str().unwrap(),
        ]);
        let mut log = Log::open(&args).unwrap();
        assert!(matches!(
            log.insert(b"a", Some(5)).unwrap(),
            Inserted::Line(1)
        ));
        assert!(matches!(
            log.insert(b"a", Some(5)).unwrap(),
            Inserted::Again(1)
        ));
        assert!(matches!(log.insert(b"b", None).unwrap(), Inserted::Line(2)));
        drop(log);
        // After a restart: index 5 is known, 7 is new, 6 is stale.
        let mut log = Log::open(&args).unwrap();
        assert!(matches!(
            log.insert(b"a", Some(5)).unwrap(),
            Inserted::Again(1)
        ));
        assert!(matches!(
            log.insert(b"c", Some(7)).unwrap(),
            Inserted::Line(3)
        ));
        assert!(matches!(
            log.insert(b"x", Some(6)).unwrap(),
            Inserted::Stale(6)
        ));
        assert_eq!(std::fs::read(dir.join("log")).unwrap(), b"a\nb\nc\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_repeated_log_index_appends_twice_unless_dedup() {
        let dir = std::env::temp_dir().join(format!("hermes-logapp-dedup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let insert = |index: &str, body: &str| {
            let raw = format!(
                "POST /insert HTTP/1.1\r\nHermes-Log-Index: {index}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            parse(raw.as_bytes(), 100).unwrap().unwrap()
        };
        let send = |log: &Mutex<Log>, request: &Request| {
            let mut out = Vec::new();
            respond(&mut out, log, request).unwrap();
            String::from_utf8(out).unwrap()
        };
        for dedup in [false, true] {
            let file = dir.join(if dedup { "dedup" } else { "plain" });
            let mut argv = vec!["hermes-logapp", "--file", file.to_str().unwrap()];
            argv.extend(dedup.then_some("--dedup"));
            let log = Mutex::new(Log::open(&Args::parse_from(argv)).unwrap());
            // Hermes redelivers the request in flight when the app died, with the same index.
            let first = send(&log, &insert("9", "a"));
            let again = send(&log, &insert("9", "a"));
            assert!(first.ends_with("\r\n\r\n1\n"), "{first:?}");
            let (file_now, line) = if dedup {
                (&b"a\n"[..], "1")
            } else {
                (&b"a\na\n"[..], "2")
            };
            assert!(again.starts_with("HTTP/1.1 201 "), "{again:?}");
            assert!(again.ends_with(&format!("\r\n\r\n{line}\n")), "{again:?}");
            assert_eq!(std::fs::read(&file).unwrap(), file_now, "dedup: {dedup}");
            // Without --dedup the header is not even looked at; with it, it must be a number.
            let odd = send(&log, &insert("x", "b"));
            let status = if dedup { "400" } else { "201" };
            assert!(odd.starts_with(&format!("HTTP/1.1 {status} ")), "{odd:?}");
            let mut intent = file.into_os_string();
            intent.push(".hermes-index");
            assert_eq!(
                std::path::Path::new(&intent).exists(),
                dedup,
                "the intent file is only for --dedup"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn state_moves_between_logs() {
        let dir = std::env::temp_dir().join(format!("hermes-logapp-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let open = |name: &str| {
            Log::open(&Args::parse_from([
                "hermes-logapp",
                "--dedup",
                "--file",
                dir.join(name).to_str().unwrap(),
            ]))
            .unwrap()
        };
        let mut source = open("a");
        source.insert(b"one", Some(3)).unwrap();
        source.insert(b"two", Some(4)).unwrap();
        let mut target = open("b");
        target.insert(b"stale", None).unwrap();
        assert_eq!(target.replace(&source.state()).unwrap(), 2);
        assert_eq!(std::fs::read(dir.join("b")).unwrap(), b"one\ntwo\n");
        assert!(matches!(
            target.insert(b"two", Some(4)).unwrap(),
            Inserted::Again(2)
        ));
        drop(target);
        let mut reopened = open("b");
        assert!(matches!(
            reopened.insert(b"three", Some(5)).unwrap(),
            Inserted::Line(3)
        ));
        assert!(reopened.replace(b"short").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn head_gets_the_head_of_the_get_response_only() {
        let dir = std::env::temp_dir().join(format!("hermes-logapp-head-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let args = Args::parse_from(["hermes-logapp", "--file", dir.join("log").to_str().unwrap()]);
        let log = Mutex::new(Log::open(&args).unwrap());
        let mut out = Vec::new();
        let head = parse(b"HEAD /count HTTP/1.1\r\n\r\n", 100)
            .unwrap()
            .unwrap();
        respond(&mut out, &log, &head).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse(
            b"POST /insert HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET",
            100,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.body.as_slice(), r.len, r.post), (&b"abc"[..], 47, true));
        let r = parse(b"POST /insert HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n", 100)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"abc");
        assert!(
            parse(b"POST /insert HTTP/1.1\r\nContent-Length: 3\r\n\r\nab", 100)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            parse(b"POST /insert HTTP/1.1\r\nContent-Length: 300\r\n\r\n", 100).err(),
            Some((413, "Content Too Large"))
        );
        assert!(
            parse(b"GET / HTTP/1.0\r\n\r\n", 100)
                .unwrap()
                .unwrap()
                .close
        );
    }
}
