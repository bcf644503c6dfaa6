//! Steering (issue 2): inbound connections to the protected port are served through the agent,
//! the agent's own loopback connections and other ports are not steered, the port fails closed
//! (or open) without an agent, and `detach` restores direct access; a second signal stops an
//! agent at once, with a failure status.
use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use hermes_tests::{Process, agent, echo, greeting, lab};

const PORT: u16 = 8080;
const PASSTHROUGH: &[&str] = &["--port", "8080", "--passthrough"];

fn connect(ip: impl Into<IpAddr>, port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::new(ip.into(), port), Duration::from_secs(10))
}

/// The peer the app saw is the client itself: the connection was not steered.
fn assert_direct(stream: &TcpStream) {
    let seen = greeting(stream);
    let local = stream.local_addr().unwrap();
    assert_eq!(
        seen.peer,
        SocketAddr::new(local.ip().to_canonical(), local.port())
    );
}

/// The agent's delivery address (`--app-source`'s default): never loopback.
const DELIVERY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 72, 1));

/// The app saw the agent's delivery address, not the client: the agent relayed the connection.
fn assert_steered(stream: &TcpStream) -> u64 {
    let seen = greeting(stream);
    assert_eq!(seen.peer.ip(), DELIVERY, "app saw {seen:?}");
    assert_ne!(seen.peer, stream.local_addr().unwrap());
    seen.conn
}

fn assert_refused(ip: impl Into<IpAddr>) {
    match connect(ip, PORT) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(stream) => panic!("connected, app said {:?}", greeting(&stream)),
    }
}

#[test]
fn steered_connections_reach_the_app_through_the_agent_intact() {
    let lab = lab(1);
    let node = lab.node(1);
    let _app = echo(node, "a", &["[::]:8080"]);
    let _agent = agent(node, PASSTHROUGH);

    assert_steered(&connect(node.ip, PORT).unwrap());
    assert_steered(&connect(node.ip6, PORT).unwrap());

    // 10 MiB up and back, then half-close in both directions.
    let mut stream = connect(node.ip, PORT).unwrap();
    assert_steered(&stream);
    let body: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut writer = stream.try_clone().unwrap();
    let sent = body.clone();
    let upload = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::with_capacity(body.len());
    stream.read_to_end(&mut echoed).unwrap();
    upload.join().unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echoed bytes differ from those sent");

    // Many request/response exchanges on one kept-alive connection.
    let stream = connect(node.ip, PORT).unwrap();
    assert_steered(&stream);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for i in 0..1000 {
        writeln!(writer, "request {i}").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, format!("request {i}\n"));
    }
}

#[test]
fn loopback_and_other_ports_are_not_steered() {
    let lab = lab(1);
    let node = lab.node(1);
    let _app = echo(node, "a", &["[::]:8080", "[::]:8081"]);
    let _agent = agent(node, PASSTHROUGH);

    assert_direct(&connect(node.ip, 8081).unwrap());
    assert_direct(&connect(node.ip6, 8081).unwrap());
    assert_direct(&node.connect(([127, 0, 0, 1], PORT).into()).unwrap());
    assert_direct(
        &node
            .connect((std::net::Ipv6Addr::LOCALHOST, PORT).into())
            .unwrap(),
    );
    // And the same port from outside is steered.
    assert_steered(&connect(node.ip, PORT).unwrap());
}

#[test]
fn killed_agent_fails_closed_until_a_new_one_takes_over() {
    let lab = lab(1);
    let node = lab.node(1);
    let _app = echo(node, "a", &["[::]:8080"]);
    let mut first = agent(node, PASSTHROUGH);
    let before = assert_steered(&connect(node.ip, PORT).unwrap());

    first.kill().unwrap();
    assert_refused(node.ip);
    assert_refused(node.ip6);

    let mut second = agent(node, PASSTHROUGH);
    // The program reported what it dropped while no agent ran; the new agent read it.
    let reported = second
        .wait_for("no agent listens (failing closed)", Duration::from_secs(5))
        .unwrap();
    assert!(
        reported.contains("dropped a connection to port 8080"),
        "{reported}"
    );
    let after = assert_steered(&connect(node.ip, PORT).unwrap());
    assert_eq!(
        after,
        before + 1,
        "the app accepted connections while no agent ran"
    );
    assert_steered(&connect(node.ip6, PORT).unwrap());
}

#[test]
fn killed_agent_with_fail_open_lets_clients_reach_the_app_directly() {
    let lab = lab(1);
    let node = lab.node(1);
    let _app = echo(node, "a", &["[::]:8080"]);
    let mut agent = agent(node, &["--port", "8080", "--passthrough", "--fail-open"]);
    assert_steered(&connect(node.ip, PORT).unwrap());

    agent.kill().unwrap();
    assert_direct(&connect(node.ip, PORT).unwrap());
    assert_direct(&connect(node.ip6, PORT).unwrap());
}

#[test]
fn sigterm_drains_and_keeps_steering_until_detach() {
    let lab = lab(1);
    let node = lab.node(1);
    let _app = echo(node, "a", &["[::]:8080"]);
    let mut agent = agent(node, PASSTHROUGH);
    let stream = connect(node.ip, PORT).unwrap();
    assert_steered(&stream);

    agent.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    agent
        .wait_for("no longer accepting", Duration::from_secs(10))
        .unwrap();
    // In flight: still served.
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    writeln!(&stream, "still here").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "still here\n");
    // New: refused, the steering is still in place.
    assert_refused(node.ip);
    // The agent exits 0 once its last connection is done.
    drop((reader, stream));
    let status = agent.wait(Duration::from_secs(15)).unwrap();
    assert!(status.success(), "agent exited with {status}");
    assert_refused(node.ip);

    let netns = node.netns_path();
    let mut detach = Command::new(hermes_lab::binary("hermes-agent").unwrap());
    detach.args([
        "detach",
        "--port",
        "8080",
        "--netns",
        netns.to_str().unwrap(),
    ]);
    let status = Process::spawn("detach", detach)
        .unwrap()
        .wait(Duration::from_secs(15))
        .unwrap();
    assert!(status.success(), "detach exited with {status}");
    assert_direct(&connect(node.ip, PORT).unwrap());
    assert_direct(&connect(node.ip6, PORT).unwrap());
}

#[test]
fn a_second_signal_stops_at_once_with_a_failure_status() {
    let lab = lab(1);
    let node = lab.node(1);
    let _app = echo(node, "a", &["[::]:8080"]);
    let mut agent = agent(
        node,
        &["--port", "8080", "--passthrough", "--grace-period", "10m"],
    );
    // A client connection held open: draining would wait for it the whole grace period.
    let stream = connect(node.ip, PORT).unwrap();
    assert_steered(&stream);

    agent.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    agent.wait_for("draining", Duration::from_secs(10)).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGINT).unwrap();
    let status = agent.wait(Duration::from_secs(15)).unwrap();
    // 128 + SIGINT: the stop was not clean, and says so.
    assert_eq!(status.code(), Some(130), "agent exited with {status}");
    drop(stream);
}

#[test]
fn two_namespaces_and_two_ports_are_protected_independently() {
    let lab = lab(2);
    let (one, two) = (lab.node(1), lab.node(2));
    let _app_one = echo(one, "one", &["[::]:8080"]);
    let _app_two = echo(two, "two", &["[::]:8080", "[::]:9090"]);
    let mut agent_one = agent(one, PASSTHROUGH);
    let _agent_two = agent(two, PASSTHROUGH);
    let _agent_two_b = agent(
        two,
        &[
            "--port",
            "9090",
            "--passthrough",
            "--admin",
            "127.0.0.1:9181",
        ],
    );

    let app_of = |stream: TcpStream| {
        let seen = greeting(&stream);
        assert_eq!(seen.peer.ip(), DELIVERY, "{seen:?}");
        seen.app
    };
    assert_eq!(app_of(connect(one.ip, PORT).unwrap()), "one");
    assert_eq!(app_of(connect(two.ip, PORT).unwrap()), "two");
    assert_eq!(app_of(connect(two.ip, 9090).unwrap()), "two");

    agent_one.kill().unwrap();
    assert_refused(one.ip);
    assert_eq!(app_of(connect(two.ip, PORT).unwrap()), "two");
    assert_eq!(app_of(connect(two.ip6, 9090).unwrap()), "two");
}
