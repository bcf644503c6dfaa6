//! What the in-process tests share: a scripted fake app that misbehaves on purpose (a one-node
//! cluster in front of it is `node::testing`'s).
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// A plain answer.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// What the fake app does with a request (the `n`th whose head it read). Acts that end in a state a test must see first
/// (a close, stray bytes) tell `done` once they are there, so that no test waits on a timer.
#[derive(Clone)]
pub enum Act {
    /// Reads the whole request, writes these bytes, keeps the connection.
    Reply(&'static [u8]),
    /// Like `Reply`, then closes the connection (an idle timeout), and tells `done`.
    ReplyThenClose(&'static [u8], Arc<Notify>),
    /// Like `Reply`, then writes more bytes nobody asked for in a second write, and tells
    /// `done`.
    ReplyThenStray(&'static [u8], &'static [u8], Arc<Notify>),
    /// Reads only the head, answers at once, never reads the body (and keeps the connection:
    /// what it reads next is taken for a request, badly).
    ReplyBeforeBody(&'static [u8]),
    /// Reads only the head, answers at once, and closes with the body unread.
    ReplyBeforeBodyAndClose(&'static [u8]),
    /// Reads only the head, writes these bytes, then reads the body (a streaming app, or one
    /// that sends `100 Continue` unasked), then writes the second bytes.
    AnswerWhileReading(&'static [u8], &'static [u8]),
    /// Reads the whole request, writes these bytes, closes.
    ReplyAndClose(&'static [u8]),
    /// Reads the whole request and closes without a word (the app closed on it, or died and
    /// came back at once: it still listens).
    Die,
    /// Reads the whole request, and the app dies: it closes the connection and stops listening
    /// (connections are refused) until the [`Crash`]'s `back` is told. (Not in an app serving
    /// one connection at a time.)
    Crash(Crash),
    /// Reads only the head and closes without a word, the body unread (the app died while the
    /// request came): it cannot have run it.
    DieAfterHead,
    /// Reads the whole request, waits to be told, then replies.
    ReplyWhenTold(Arc<Notify>, &'static [u8]),
    /// Reads the whole request and never answers.
    Hang,
}

/// How the fake app dies ([`Act::Crash`]).
#[derive(Clone)]
pub struct Crash {
    /// Told when the app may listen again.
    pub back: Arc<Notify>,
    /// The connection that comes next is completed before the listener closes, and ends at
    /// once: the kernel completes connections to a dying app's listener until it is gone.
    pub slowly: bool,
}

/// A request as the fake app read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub index: u64,
    pub method: String,
    pub body: Vec<u8>,
}

pub struct FakeApp {
    pub addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    crashes: Arc<AtomicUsize>,
}

impl FakeApp {
    /// Starts an app that does `script(n)` with its `n`th request (0-based), on as many
    /// connections at once as it is given.
    pub async fn start(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        Self::serving(false, script).await
    }

    /// Starts an app like [`Self::start`] that serves one connection at a time, as Python's
    /// stock `http.server` does: it reads a connection until it closes before it takes the next.
    pub async fn one_at_a_time(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        Self::serving(true, script).await
    }

    async fn serving(serial: bool, script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (record, count) = (Arc::clone(&seen), Arc::clone(&connections));
        // Heads read so far: the script's `n`.
        let heads = Arc::new(AtomicUsize::new(0));
        let dying = Dying::default();
        let crashes = Arc::clone(&dying.crashes);
        tokio::spawn(async move {
            let mut listener = listener;
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap().0,
                    () = dying.crashing.notified() => {
                        let crash = dying.crash.lock().unwrap().take().expect("a crash");
                        if crash.slowly {
                            dying.stopped.notify_one();
                            let (mut late, _) = listener.accept().await.unwrap();
                            // The kernel takes the request; the app never reads it.
                            let mut buf = Vec::new();
                            while !whole_request(&buf) && read_more(&mut late, &mut buf).await {}
                            drop(listener);
                        } else {
                            drop(listener);
                            dying.stopped.notify_one();
                        }
                        dying.crashes.fetch_add(1, Ordering::SeqCst);
                        crash.back.notified().await;
                        listener = TcpListener::bind(addr).await.unwrap();
                        continue;
                    }
                };
                count.fetch_add(1, Ordering::SeqCst);
                let served = serve(
                    stream,
                    Arc::clone(&record),
                    Arc::clone(&heads),
                    Arc::clone(&script),
                    dying.clone(),
                );
                if serial {
                    served.await;
                } else {
                    tokio::spawn(served);
                }
            }
        });
        Self {
            addr,
            seen,
            connections,
            crashes,
        }
    }

    /// Times the app died ([`Act::Crash`]) so far.
    pub fn crashes(&self) -> usize {
        self.crashes.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until the app has read `n` requests.
    pub async fn wait_seen(&self, n: usize) {
        while self.seen.lock().unwrap().len() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How a connection's task tells the listener that the app dies ([`Act::Crash`]).
#[derive(Clone, Default)]
struct Dying {
    crash: Arc<Mutex<Option<Crash>>>,
    crashing: Arc<Notify>,
    /// Crashes so far, counted once the listener is closed.
    crashes: Arc<AtomicUsize>,
    /// Told once the listener takes no more connections.
    stopped: Arc<Notify>,
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    heads: Arc<AtomicUsize>,
    script: Arc<impl Fn(usize) -> Act + Send + Sync>,
    dying: Dying,
) {
    let mut buf = Vec::new();
    loop {
        // The head, then (unless the script says otherwise) the body.
        let (head_len, index, method, length) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut request = httparse::Request::new(&mut fields);
                if request.parse(&buf[..end + 4]).is_err() {
                    // What an app that took the rest of a body for a request does.
                    let _ = stream.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n").await;
                    return;
                }
                let field = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<u64>().ok())
                };
                break (
                    end + 4,
                    field("hermes-log-index").unwrap_or(0),
                    request.method.unwrap_or("").to_owned(),
                    field("content-length").unwrap_or(0) as usize,
                );
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        let act = script(heads.fetch_add(1, Ordering::SeqCst));
        if matches!(act, Act::DieAfterHead) {
            return;
        }
        let record = |body: Vec<u8>| {
            seen.lock().unwrap().push(Seen {
                index,
                method: method.clone(),
                body,
            });
        };
        match &act {
            Act::ReplyBeforeBody(answer) | Act::ReplyBeforeBodyAndClose(answer) => {
                buf.drain(..head_len);
                record(Vec::new());
                let _ = stream.write_all(answer).await;
                if matches!(act, Act::ReplyBeforeBodyAndClose(_)) {
                    return;
                }
                continue;
            }
            Act::AnswerWhileReading(first, _) => {
                let _ = stream.write_all(first).await;
            }
            _ => {}
        }
        while buf.len() < head_len + length {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        record(buf[head_len..head_len + length].to_vec());
        buf.drain(..head_len + length);
        match act {
            Act::Reply(answer) => {
                let _ = stream.write_all(answer).await;
            }
            Act::ReplyThenClose(answer, done) => {
                let _ = stream.write_all(answer).await;
                drop(stream);
                done.notify_one();
                return;
            }
            Act::ReplyThenStray(answer, stray, done) => {
                let _ = stream.write_all(answer).await;
                let _ = stream.write_all(stray).await;
                done.notify_one();
            }
            Act::AnswerWhileReading(_, rest) => {
                let _ = stream.write_all(rest).await;
            }
            Act::ReplyAndClose(answer) => {
                let _ = stream.write_all(answer).await;
                return;
            }
            Act::Die => return,
            Act::Crash(crash) => {
                *dying.crash.lock().unwrap() = Some(crash);
                dying.crashing.notify_one();
                dying.stopped.notified().await;
                return;
            }
            Act::ReplyWhenTold(told, answer) => {
                told.notified().await;
                let _ = stream.write_all(answer).await;
            }
            Act::Hang => std::future::pending::<()>().await,
            Act::ReplyBeforeBody(_) | Act::ReplyBeforeBodyAndClose(_) | Act::DieAfterHead => {
                unreachable!("handled above")
            }
        }
    }
}

/// Whether `buf` holds a whole request (with a `Content-Length` body, if any).
fn whole_request(buf: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(head)) = request.parse(buf) else {
        return false;
    };
    let length = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= head + length
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A line-protocol app for raw TCP mode, whose state depends on how the commands of its
/// connections interleave: one journal shared by every connection. Commands, one per line:
/// `APPEND <word>` (answers `OK <journal length>`), `ECHO <n>` then `n` bytes (answers them),
/// `QUIT` (answers `BYE`, then closes). When its client half-closes it answers `EOF <commands
/// on this connection>` and closes. Like Redis, it answers once it has done every command it
/// read. It takes its time over each command (up to 2 ms, varying), so commands written to two
/// connections one right after the other may be taken in either order.
pub struct LineApp {
    pub addr: std::net::SocketAddr,
    journal: Arc<Mutex<Vec<String>>>,
    open: Arc<AtomicUsize>,
}

impl LineApp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let journal = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (shared, count) = (Arc::clone(&journal), Arc::clone(&open));
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (journal, count) = (Arc::clone(&shared), Arc::clone(&count));
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    serve_lines(stream, journal).await;
                    count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            journal,
            open,
        }
    }

    /// Connections open to it now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections are open to it.
    pub async fn wait_open(&self, n: usize) {
        while self.open() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The words appended, in the order the app took them.
    pub fn journal(&self) -> Vec<String> {
        self.journal.lock().unwrap().clone()
    }
}

async fn serve_lines(mut stream: TcpStream, journal: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut commands = 0;
    // What it owes its client: written once every command it has read is done, as Redis does.
    let mut answers = Vec::new();
    // A `BIG` answer is among them: once it is written, the journal says `BIG sent`.
    let mut big = false;
    loop {
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            if !answers.is_empty()
                && stream
                    .write_all(&std::mem::take(&mut answers))
                    .await
                    .is_err()
            {
                return;
            }
            if std::mem::take(&mut big) {
                journal.lock().unwrap().push("BIG sent".into());
            }
            if !read_more(&mut stream, &mut buf).await {
                let _ = stream
                    .write_all(format!("EOF {commands}\n").as_bytes())
                    .await;
                return;
            }
            continue;
        };
        let line = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..=end);
        commands += 1;
        let work = line.bytes().map(u64::from).sum::<u64>() % 2000;
        tokio::time::sleep(Duration::from_micros(work)).await;
        match line.split_once(' ') {
            Some(("APPEND", word)) => {
                let mut journal = journal.lock().unwrap();
                journal.push(word.to_owned());
                answers.extend_from_slice(format!("OK {}\n", journal.len()).as_bytes());
            }
            Some(("BIG", n)) => {
                let n: usize = n.parse().unwrap();
                answers.resize(answers.len() + n, b'x');
                answers.push(b'\n');
                big = true;
            }
            Some(("ECHO", n)) => {
                let n: usize = n.parse().unwrap();
                while buf.len() < n {
                    if !read_more(&mut stream, &mut buf).await {
                        return;
                    }
                }
                answers.extend(buf.drain(..n));
            }
            _ if line == "QUIT" => {
                answers.extend_from_slice(b"BYE\n");
                let _ = stream.write_all(&answers).await;
                return;
            }
            _ => answers.extend_from_slice(format!("ERR {line}\n").as_bytes()),
        }
    }
}

/// Log entry `index` of `term`: one batch of one command of node 1 (incarnation 1), whose id is
/// the index, carrying `payload`.
pub fn entry(term: u64, index: u64, payload: bytes::Bytes) -> crate::order::typ::Entry {
    use crate::order::typ::{Batch, Command, EntryPayload, LogId, Proposal};
    crate::order::typ::Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal::from(Batch {
            id: (1, 1, index),
            floor: 0,
            commands: vec![Command {
                origin: 1,
                incarnation: 1,
                id: index,
                payload,
            }],
        })),
    }
}
