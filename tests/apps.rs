//! The Python test apps (`tests/apps/*.py`) on loopback, without a lab or Hermes: no root
//! needed. Each test starts the scripts as a cluster would (`python3 SCRIPT --listen ADDR --file
//! PATH`) on a free port and talks to them with plain `TcpStream`s.
use std::{
    io::{self, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use hermes_tests::{App, Process, STARTUP, client, client::Response};
use nix::sys::signal::Signal;

/// A directory of its own for one test, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hermes-apps-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("test directory");
        Self(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A script running on 127.0.0.1.
struct Running {
    process: Process,
    addr: SocketAddr,
}

/// Starts `app`'s script with `file` as its state, on a free port, and waits until it listens.
fn start(app: App, file: &std::path::Path) -> Running {
    let script = app.script().expect("a Python app");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .args(["--listen", &addr.to_string(), "--file"])
        .arg(file);
    let mut process = Process::spawn(format!("{}", script.display()), command).expect("python3");
    process.wait_for("listening", STARTUP).expect("listening");
    Running { process, addr }
}

impl Running {
    fn connect(&self) -> TcpStream {
        client::connect(self.addr).expect("connect")
    }

    /// SIGTERM: the script exits at once (it is idle), with success; it printed nothing but the
    /// line that says it listens (no request logs).
    fn stop(mut self) {
        self.process.signal(Signal::SIGTERM).expect("SIGTERM");
        let status = self.process.wait(Duration::from_secs(10)).expect("exit");
        assert!(status.success(), "{status}");
        let output = self.process.output();
        assert_eq!(output.len(), 1, "{output:?}");
        assert!(output[0].contains("listening"), "{output:?}");
    }
}

/// A connection that keeps bytes read beyond one response for the next.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, raw: &[u8]) -> io::Result<Response> {
        self.stream.write_all(raw)?;
        self.receive(raw)
    }

    /// The response to `raw`, sent before.
    fn receive(&mut self, raw: &[u8]) -> io::Result<Response> {
        let method = if raw.starts_with(b"HEAD ") {
            "HEAD"
        } else {
            ""
        };
        client::read_response(&mut self.stream, &mut self.pending, method)
    }
}

fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: apps\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn put(path: &str, body: &str) -> Vec<u8> {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: apps\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: apps\r\n\r\n").into_bytes()
}

#[test]
fn append_numbers_lines_and_appends_a_repeated_post_twice() {
    let dir = Dir::new("append");
    let file = dir.file("append.log");
    let app = start(App::Append, &file);
    let mut conn = Conn::new(app.connect());
    // The same request twice, as Hermes would redeliver it: it appends twice.
    let insert = post("/insert", "one", "Hermes-Log-Index: 7\r\n");
    for n in 1..=2 {
        let response = conn.send(&insert).unwrap();
        assert_eq!((response.status, response.text()), (201, format!("{n}\n")));
        assert_eq!(response.header("Content-Length"), Some("2"));
    }
    // Any path appends; keep-alive holds across requests.
    assert_eq!(
        conn.send(&post("/elsewhere", "two", "")).unwrap().text(),
        "3\n"
    );
    assert_eq!(conn.send(&get("/count")).unwrap().text(), "3\n");
    assert_eq!(conn.send(&get("/line/1")).unwrap().text(), "one");
    assert_eq!(conn.send(&get("/line/3")).unwrap().text(), "two");
    let missing = conn.send(&get("/line/4")).unwrap();
    assert_eq!(missing.status, 404);
    let head = conn.send(b"HEAD /count HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(std::fs::read(&file).unwrap(), b"one\none\ntwo\n");
    drop(conn);
    app.stop();

    // A restarted app continues its file.
    let app = start(App::Append, &file);
    assert_eq!(client::get(app.addr, "/count").unwrap().text(), "3\n");
    let response = client::post(app.addr, "/", b"three").unwrap();
    assert_eq!((response.status, response.text()), (201, "4\n".to_owned()));
    assert_eq!(std::fs::read(&file).unwrap(), b"one\none\ntwo\nthree\n");
    app.stop();
}

#[test]
fn record_writes_exactly_the_bytes_received() {
    let dir = Dir::new("record");
    let file = dir.file("record.log");
    let app = start(App::Record, &file);
    let mut conn = Conn::new(app.connect());
    // Odd but legal: mixed case, spaces around values, a tab, obs-text, an empty value.
    let first = b"POST /a/b?c=d HTTP/1.1\r\nHOST:  apps \r\nx-odd:\tv\xe9lue\r\nX-Empty:\r\n\
                  Hermes-Log-Index: 12\r\ncontent-length: 7\r\n\r\nbody\r\n."
        .to_vec();
    let second = get("/second");
    let third = put("/third", "x");
    for (n, request) in [&first, &second, &third].into_iter().enumerate() {
        let response = conn.send(request).unwrap();
        assert_eq!(
            (response.status, response.text()),
            (200, format!("record {}\n", n + 1))
        );
    }
    let mut expected = Vec::new();
    for request in [&first, &second, &third] {
        expected.extend_from_slice(format!("{}\n", request.len()).as_bytes());
        expected.extend_from_slice(request);
        expected.push(b'\n');
    }
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&file).unwrap()),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(std::fs::read(&file).unwrap(), expected);
    drop(conn);
    app.stop();

    // Restarted, it counts on from the records in its file.
    let app = start(App::Record, &file);
    assert_eq!(client::get(app.addr, "/").unwrap().text(), "record 4\n");
    app.stop();
}

#[test]
fn register_holds_its_value_and_serves_one_connection_at_a_time() {
    let dir = Dir::new("register");
    let file = dir.file("register");
    let app = start(App::Register, &file);
    let mut first = Conn::new(app.connect());
    let set = first.send(&put("/register", "forty-two")).unwrap();
    assert_eq!((set.status, set.body.len()), (204, 0));
    assert_eq!(first.send(&get("/register")).unwrap().text(), "forty-two");
    assert_eq!(std::fs::read(&file).unwrap(), b"forty-two");

    // `first` stays open: a second client is accepted by the kernel, but not served.
    let mut second = Conn::new(app.connect());
    let wait = Duration::from_millis(700);
    second.stream.set_read_timeout(Some(wait)).unwrap();
    let request = get("/register");
    let blocked = second.send(&request).unwrap_err();
    assert!(
        matches!(
            blocked.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{blocked}"
    );
    // Once the first closes, the second gets its answer.
    drop(first);
    second
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = second.receive(&request).unwrap();
    assert_eq!(
        (answer.status, answer.text()),
        (200, "forty-two".to_owned())
    );

    // The snapshot hooks' endpoints: the whole state, and its replacement.
    assert_eq!(second.send(&get("/state")).unwrap().text(), "forty-two");
    assert_eq!(second.send(&put("/state", "seven")).unwrap().status, 204);
    assert_eq!(second.send(&get("/register")).unwrap().text(), "seven");
    assert_eq!(std::fs::read(&file).unwrap(), b"seven");
    drop(second);
    app.stop();
}

#[test]
fn random_answers_carry_one_number_per_process() {
    let dir = Dir::new("random");
    let number = |response: Response| {
        let text = response.text();
        let (_, number) = text
            .trim_end()
            .rsplit_once(" random=")
            .unwrap_or_else(|| panic!("no random number in {text:?}"));
        number.to_owned()
    };
    let mut numbers = Vec::new();
    for name in ["a", "b"] {
        let file = dir.file(name);
        let app = start(App::Random, &file);
        let mut conn = Conn::new(app.connect());
        let appended = conn.send(&post("/", "line", "")).unwrap();
        assert_eq!(appended.status, 201);
        assert!(appended.text().starts_with("1 random="), "{appended:?}");
        let mine = number(appended);
        assert_eq!(number(conn.send(&get("/count")).unwrap()), mine);
        assert_eq!(number(conn.send(&get("/line/1")).unwrap()), mine);
        assert_eq!(number(conn.send(&get("/line/9")).unwrap()), mine);
        assert_eq!(std::fs::read(&file).unwrap(), b"line\n");
        drop(conn);
        app.stop();
        numbers.push(mine);
    }
    assert_ne!(numbers[0], numbers[1], "two processes, two random numbers");
}
