//! Raw TCP mode (issue 13) with Debian's `redis-server`, which nobody here wrote and which
//! de-duplicates nothing: clients on every node whose commands' results depend on how they
//! interleave, binary and large values, half-closes, the server closing first, short and long
//! connections, agents killed under load. Replicas are compared with Redis' own tools
//! (`DEBUG DIGEST`, `LRANGE`), and also by Hermes' digests of what Redis sent (`--digest bytes`),
//! which must agree with them.
use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use hermes_lab::cluster::PORT;
use hermes_tests::{
    App, Cluster, cluster, lab,
    resp::{self, Redis, Reply},
    wait_until,
};

const TCP: &[&str] = &["--protocol", "tcp"];
/// TCP mode, comparing what the replicas' servers sent.
const DIGESTED: &[&str] = &["--protocol", "tcp", "--digest", "bytes"];

/// Each node's `DEBUG DIGEST` (a digest of its whole dataset), in node order.
fn digests(cluster: &Cluster) -> Vec<String> {
    (1..=cluster.nodes())
        .map(|id| resp::cli(cluster.lab.node(id), PORT, &["DEBUG", "DIGEST"]))
        .collect()
}

/// The list `key` as node `id`'s Redis has it.
fn list(cluster: &Cluster, id: usize, key: &str) -> Vec<String> {
    let text = resp::cli(cluster.lab.node(id), PORT, &["LRANGE", key, "0", "-1"]);
    text.lines().map(str::to_owned).collect()
}

fn int(reply: &Reply) -> i64 {
    match reply {
        Reply::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// A client's commands on one connection: appends to one list and one string shared by every
/// client, increments, sets and deletes, pipelined every third round; now and then a short
/// connection of its own. Returns the list values Redis acknowledged.
fn commands(addr: SocketAddr, client: usize, rounds: usize) -> Vec<String> {
    let mut redis = Redis::connect(addr).unwrap();
    let mut acked = Vec::new();
    for round in 0..rounds {
        let value = format!("c{client}-{round}");
        let key = format!("k{}", round % 5);
        if round % 3 == 0 {
            let replies = redis
                .pipeline(&[
                    &[b"RPUSH", b"list", value.as_bytes()],
                    &[b"APPEND", b"string", format!("{value};").as_bytes()],
                    &[b"INCR", b"counter"],
                    &[b"SET", key.as_bytes(), value.as_bytes()],
                ])
                .unwrap();
            assert!(int(&replies[0]) > 0);
        } else {
            assert!(int(&redis.call(&[b"RPUSH", b"list", value.as_bytes()]).unwrap()) > 0);
            int(&redis.call(&[b"INCR", b"counter"]).unwrap());
        }
        acked.push(value.clone());
        if round % 7 == 0 {
            redis.call(&[b"DEL", key.as_bytes()]).unwrap();
        }
        if round % 11 == 0 {
            let mut short = Redis::connect(addr).unwrap();
            let short_value = format!("{value}-short");
            int(&short
                .call(&[b"RPUSH", b"list", short_value.as_bytes()])
                .unwrap());
            acked.push(short_value);
        }
    }
    acked
}

/// Bytes of every value, `\r\n` and NUL included.
fn binary(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7 + i / 256) % 256) as u8)
        .collect()
}

#[test]
fn redis_replicas_stay_identical_whatever_the_interleaving_of_clients_on_every_node() {
    let cluster = cluster(3, App::Redis, DIGESTED);
    let addrs = cluster.addrs();
    let mut clients = Vec::new();
    for (n, addr) in addrs.iter().cycle().take(9).enumerate() {
        let addr = *addr;
        clients.push(thread::spawn(move || commands(addr, n, 40)));
    }
    // Meanwhile: binary values, and one large value per node (several MiB, many chunks).
    for (id, addr) in addrs.iter().enumerate() {
        let mut redis = Redis::connect(*addr).unwrap();
        let small = binary(300, id);
        let key = format!("bin{id}");
        let set = redis.call(&[b"SET", key.as_bytes(), &small]).unwrap();
        assert_eq!(set, Reply::Status("OK".into()));
        let big = binary(3 << 20, id);
        let key = format!("big{id}");
        assert_eq!(
            redis.call(&[b"SET", key.as_bytes(), &big]).unwrap(),
            Reply::Status("OK".into())
        );
        assert_eq!(
            redis.call(&[b"GET", key.as_bytes()]).unwrap(),
            Reply::Bulk(Some(big)),
            "a large value read back through another connection's node"
        );
    }
    let acked: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    cluster.wait_converged().unwrap();

    let digests = digests(&cluster);
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    // Hermes' own comparison agrees: every replica digested what Redis sent on each of the 48
    // connections (9 clients with 4 short ones each, 3 for the binary values) alike, and
    // compared it with the others without an alarm.
    no_divergence(&cluster, 48);
    let lists: Vec<Vec<String>> = (1..=3).map(|id| list(&cluster, id, "list")).collect();
    assert!(lists.iter().all(|l| *l == lists[0]), "the lists differ");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for value in &lists[0] {
        *counts.entry(value).or_default() += 1;
    }
    for value in &acked {
        assert_eq!(
            counts.get(value.as_str()),
            Some(&1),
            "{value} not exactly once"
        );
    }
    assert_eq!(lists[0].len(), acked.len());
    let counter = resp::cli(cluster.lab.node(1), PORT, &["GET", "counter"]);
    assert_eq!(counter, (9 * 40).to_string());
    // The interleaving really did vary: values of different clients alternate in the list.
    let switches = lists[0]
        .windows(2)
        .filter(|w| w[0].split('-').next() != w[1].split('-').next())
        .count();
    assert!(switches > 9, "only {switches} switches between clients");
    for id in 1..=3 {
        assert_eq!(cluster.status(id).unwrap()["in_doubt"], 0);
    }
}

#[test]
fn half_close_the_server_closing_first_and_many_short_connections() {
    let cluster = cluster(3, App::Redis, TCP);
    let addrs = cluster.addrs();

    // The client half-closes after its commands and still reads every reply, then the end.
    let mut redis = Redis::connect(addrs[1]).unwrap();
    redis
        .send(&resp::encode(&[b"RPUSH", b"half", b"a"]))
        .unwrap();
    redis.send(b"PING\r\n").unwrap();
    redis.shutdown_write().unwrap();
    assert_eq!(redis.rest().unwrap(), b":1\r\n+PONG\r\n");

    // The server closes first (QUIT): the client reads its answer, then the end.
    let mut redis = Redis::connect(addrs[2]).unwrap();
    redis
        .send(&resp::encode(&[b"RPUSH", b"half", b"b"]))
        .unwrap();
    redis.send(&resp::encode(&[b"QUIT"])).unwrap();
    assert_eq!(redis.rest().unwrap(), b":2\r\n+OK\r\n");

    // Many short connections from every node.
    let served = Arc::new(AtomicUsize::new(0));
    let shorts: Vec<_> = (0..6)
        .map(|n| {
            let addr = addrs[n % 3];
            let served = Arc::clone(&served);
            thread::spawn(move || {
                for i in 0..25 {
                    let mut redis = Redis::connect(addr).unwrap();
                    let value = format!("s{n}-{i}");
                    int(&redis.call(&[b"SADD", b"shorts", value.as_bytes()]).unwrap());
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for short in shorts {
        short.join().unwrap();
    }
    assert_eq!(served.load(Ordering::Relaxed), 150);
    cluster.wait_converged().unwrap();
    for id in 1..=3 {
        let node = cluster.lab.node(id);
        assert_eq!(resp::cli(node, PORT, &["SCARD", "shorts"]), "150");
        assert_eq!(list(&cluster, id, "half"), ["a", "b"]);
    }
    let digests = digests(&cluster);
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    all_connections_closed(&cluster, &[1, 2, 3]);
}

/// Each node's digests (`/digests`), in node order.
fn kept(cluster: &Cluster) -> Option<Vec<Vec<(u64, u64)>>> {
    (1..=cluster.nodes())
        .map(|id| serde_json::from_slice(&cluster.admin(id, "/digests?from=1")?.body).ok())
        .collect()
}

/// Waits until every node has digests of what its server sent on exactly `connections`
/// connections, the same everywhere, and has compared them with the other nodes' without
/// finding a divergence.
fn no_divergence(cluster: &Cluster, connections: usize) {
    wait_until("every node to digest the connections alike", || {
        let kept = kept(cluster)?;
        kept.iter()
            .all(|k| k.len() == connections && *k == kept[0])
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", kept(cluster)));
    compared_without_alarm(cluster, connections);
}

/// Waits until every node has at least `at_least` digests, checks that the digests of one
/// connection are equal wherever there are several (and that there are several of one at
/// least), then waits until every node has compared all its digests with the other nodes',
/// and checks that none found a divergence.
fn compared_without_alarm(cluster: &Cluster, at_least: usize) {
    let kept = wait_until("every node to have digests", || {
        kept(cluster).filter(|kept| kept.iter().all(|k| k.len() >= at_least))
    })
    .unwrap();
    let mut by_seq: HashMap<u64, Vec<u64>> = HashMap::new();
    for (seq, digest) in kept.iter().flatten() {
        by_seq.entry(*seq).or_default().push(*digest);
    }
    assert!(
        by_seq.values().any(|digests| digests.len() >= 2),
        "no connection digested on two nodes: {kept:?}"
    );
    for (seq, digests) in &by_seq {
        assert!(
            digests.iter().all(|d| *d == digests[0]),
            "connection closed at {seq}: {digests:?}"
        );
    }
    for (id, kept) in (1..).zip(&kept) {
        let last = kept.last().map_or(0, |(seq, _)| *seq);
        let status = wait_until(&format!("node {id} to compare its digests"), || {
            let status = cluster.status(id)?;
            (status["compared_up_to"].as_u64()? >= last).then_some(status)
        })
        .unwrap();
        assert!(status["divergence"].is_null(), "node {id}: {status}");
    }
}

/// Waits until every replica of `nodes` has closed all its connections to Redis (only
/// `redis-cli`'s own is left): every client connection ended in the log, by its close or by its
/// node's restart.
fn all_connections_closed(cluster: &Cluster, nodes: &[usize]) {
    wait_until("every replica's connections to Redis closed", || {
        nodes
            .iter()
            .all(|&id| {
                let clients = resp::cli(cluster.lab.node(id), PORT, &["CLIENT", "LIST"]);
                clients.lines().count() == 1
            })
            .then_some(())
    })
    .unwrap();
}

/// Clients that keep appending to one list through every node until stopped, reconnecting
/// (to the next node) when their connection fails; what Redis acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addrs: &[SocketAddr], clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let (stop, acked, addrs) = (Arc::clone(&stop), Arc::clone(&acked), addrs.to_vec());
                thread::spawn(move || {
                    let mut node = client;
                    let mut round = 0;
                    while !stop.load(Ordering::Relaxed) {
                        node += 1;
                        let Ok(mut redis) = Redis::connect(addrs[node % addrs.len()]) else {
                            thread::sleep(Duration::from_millis(100));
                            continue;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            round += 1;
                            let value = format!("l{client}-{round}");
                            match redis.call(&[b"RPUSH", b"load", value.as_bytes()]) {
                                Ok(Reply::Int(_)) => acked.lock().unwrap().push(value),
                                _ => break,
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            threads,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn wait_for_acks(&self, more: usize) {
        let target = self.acked() + more;
        wait_until(&format!("{target} acknowledged writes"), || {
            (self.acked() >= target).then_some(())
        })
        .unwrap();
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Agents killed under load, a follower's then the leader's: no acknowledged write is lost, none
/// runs twice anywhere, and each replica whose agent was killed either is identical to the
/// others or, having missed bytes of a connection it lost (ordered while it was down), fenced
/// itself and says so; the others are identical and go on.
#[test]
fn killing_agents_under_load_loses_no_acknowledged_write_and_replicas_stay_identical_or_fence() {
    let mut cluster = cluster(3, App::Redis, DIGESTED);
    let load = Load::start(&cluster.addrs(), 6);
    load.wait_for_acks(200);

    let leader = cluster.wait_for_leader().unwrap();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill_agent(follower).unwrap();
    // Without its agent, the node's port fails closed: nothing reaches Redis unordered.
    let refused = TcpStream::connect_timeout(&cluster.addr(follower), Duration::from_secs(1));
    assert!(
        refused.is_err(),
        "the port let a client through: {refused:?}"
    );
    load.wait_for_acks(200);
    cluster.start_agent(follower).unwrap();
    load.wait_for_acks(200);

    cluster.kill_agent(leader).unwrap();
    wait_until("a new leader", || cluster.leader().filter(|l| *l != leader)).unwrap();
    load.wait_for_acks(200);
    cluster.start_agent(leader).unwrap();
    load.wait_for_acks(200);

    let acked = load.stop();
    let fenced = cluster.wait_settled().unwrap();
    let healthy: Vec<usize> = (1..=3).filter(|id| !fenced.contains(id)).collect();
    assert!(
        healthy.contains(&(1..=3).find(|id| ![leader, follower].contains(id)).unwrap()),
        "the node never killed is healthy: fenced {fenced:?}"
    );
    for id in &fenced {
        let status = cluster.status(*id).unwrap();
        let why = status["fenced_because"].as_str().unwrap_or_default();
        assert!(
            why.contains("lost the app's connection"),
            "node {id}: {status}"
        );
    }
    // The connections of the killed agents' clients were closed on every healthy replica too.
    all_connections_closed(&cluster, &healthy);
    let digests = digests(&cluster);
    for id in &healthy {
        assert_eq!(digests[id - 1], digests[healthy[0] - 1], "{digests:?}");
    }
    if fenced.is_empty() {
        // Hermes' comparison of what Redis sent finds no divergence either (a connection a
        // replica lost with its agent is not compared), and it compared the connections that
        // lived through no restart at least: the clients reconnected after the second kill.
        compared_without_alarm(&cluster, 1);
    }
    for id in 1..=3 {
        let values = list(&cluster, id, "load");
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for value in &values {
            *counts.entry(value).or_default() += 1;
        }
        assert!(
            counts.values().all(|n| *n == 1),
            "a value twice on node {id}"
        );
        if healthy.contains(&id) {
            for value in &acked {
                assert!(
                    counts.contains_key(value.as_str()),
                    "{value} lost on node {id}"
                );
            }
        }
    }
}

/// One replica's server was changed behind Hermes' back: a connection through Hermes that
/// reads the changed key gets a different reply there. The node with the odd digest is the
/// minority and, with `--on-divergence fence`, stops applying; the other two report the
/// divergence and carry on.
#[test]
fn the_replica_whose_server_replies_otherwise_is_found_and_fenced_alone() {
    let args = [DIGESTED, &["--on-divergence", "fence"]].concat();
    let cluster = cluster(3, App::Redis, &args);
    // Straight to node 3's Redis, not through Hermes.
    resp::cli(cluster.lab.node(3), PORT, &["SET", "odd", "only here"]);
    let mut redis = Redis::connect(cluster.addr(1)).unwrap();
    assert_eq!(redis.call(&[b"GET", b"odd"]).unwrap(), Reply::Bulk(None));
    drop(redis);
    for id in 1..=3 {
        let status = wait_until(&format!("node {id} to find the divergence"), || {
            let status = cluster.status(id)?;
            (!status["divergence"].is_null()).then_some(status)
        })
        .unwrap();
        // Found at the connection's `Close`, after its `Open` and its one chunk.
        assert!(
            status["divergence"]["seq"].as_u64().unwrap() >= 3,
            "{status}"
        );
        let digests = status["divergence"]["digests"].as_object().unwrap();
        assert_eq!(digests.len(), 3, "{status}");
        assert_eq!(digests["1"], digests["2"], "{status}");
        assert_ne!(digests["1"], digests["3"], "{status}");
        let odd = id == 3;
        assert_eq!(status["divergence"]["minority"], odd, "{status}");
        if odd {
            wait_until("node 3 to fence itself", || {
                (cluster.status(3)?["fenced"] == true).then_some(())
            })
            .unwrap();
            let ready = cluster.admin(3, "/readyz").unwrap();
            assert_eq!(ready.status, 503, "{}", ready.text());
        }
    }
    // The majority carries on: a write through node 2 is answered and reaches node 1.
    let mut redis = Redis::connect(cluster.addr(2)).unwrap();
    assert_eq!(
        redis.call(&[b"SET", b"after", b"1"]).unwrap(),
        Reply::Status("OK".into())
    );
    drop(redis);
    wait_until("node 1 to apply the write", || {
        (resp::cli(cluster.lab.node(1), PORT, &["GET", "after"]) == "1").then_some(())
    })
    .unwrap();
    // And goes on comparing (without waiting for the fenced node): the write's connection is
    // digested alike on nodes 1 and 2, and compared.
    let found = cluster.status(1).unwrap()["divergence"]["seq"]
        .as_u64()
        .unwrap();
    let (after, digest) = wait_until("the write's connection to be digested", || {
        let kept = kept(&cluster)?;
        kept[0].last().copied().filter(|(seq, _)| *seq > found)
    })
    .unwrap();
    let on_node_2 = wait_until("node 2 to digest the write's connection", || {
        kept(&cluster)?[1]
            .iter()
            .find(|(seq, _)| *seq == after)
            .map(|(_, digest)| *digest)
    })
    .unwrap();
    assert_eq!(on_node_2, digest);
    for id in [1, 2] {
        wait_until(
            &format!("node {id} to compare the write's connection"),
            || (cluster.status(id)?["compared_up_to"].as_u64()? >= after).then_some(()),
        )
        .unwrap();
        assert_eq!(cluster.status(id).unwrap()["fenced"], false);
    }
}

#[test]
fn passthrough_in_tcp_mode_relays_without_ordering() {
    let bin = hermes_lab::binary("hermes-agent").unwrap();
    let mut cluster = Cluster::new(
        lab(1),
        bin.parent().unwrap(),
        App::Redis,
        &["--protocol", "tcp", "--passthrough", "--insecure-peers"],
    )
    .unwrap();
    cluster.start_app(1).unwrap();
    cluster.start_agent(1).unwrap();
    let mut redis = Redis::connect(cluster.addr(1)).unwrap();
    assert_eq!(
        redis.call(&[b"SET", b"k", &binary(70_000, 1)]).unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(
        redis.call(&[b"GET", b"k"]).unwrap(),
        Reply::Bulk(Some(binary(70_000, 1)))
    );
    assert_eq!(
        resp::cli(cluster.lab.node(1), PORT, &["STRLEN", "k"]),
        "70000"
    );
}

/// A `SET big <value>` whose value holds a Redis command after a line break, in two parts: a
/// server that took the second part for the start of a connection would run the command.
fn poisoned_set() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut value = vec![b'x'; 6000];
    value.extend_from_slice(b"\r\nFLUSHALL\r\n");
    value.extend_from_slice(&[b'y'; 6000]);
    let command = resp::encode(&[b"SET", b"big", &value]);
    let half = command.len() / 2;
    assert!(
        command[half..].windows(8).any(|w| w == b"FLUSHALL"),
        "the command is in the second part"
    );
    (command[..half].to_vec(), command[half..].to_vec(), value)
}

/// Connects to node `id` and sends the first part of [`poisoned_set`]; returns once every
/// running replica's Redis holds it (the rest of the command is awaited there).
fn half_sent(cluster: &Cluster, id: usize, first: &[u8]) -> TcpStream {
    use std::io::Write as _;
    let mut client = TcpStream::connect(cluster.addr(id)).unwrap();
    client.write_all(first).unwrap();
    wait_until("every replica's Redis to hold the half command", || {
        (1..=cluster.nodes())
            .filter(|id| cluster.is_running(*id))
            .all(|id| {
                let clients = resp::cli(cluster.lab.node(id), PORT, &["CLIENT", "LIST"]);
                clients.lines().any(|line| {
                    line.split(' ')
                        .find_map(|field| field.strip_prefix("qbuf="))
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| n > 1000)
                })
            })
            .then_some(())
    })
    .unwrap();
    client
}

/// Sends the rest of a command on a connection that was abandoned: the client finds its
/// connection reset or closed, never an answer.
fn abandoned(mut client: TcpStream, rest: &[u8]) {
    use std::io::{Read as _, Write as _};
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = client.write_all(rest);
    let mut reply = Vec::new();
    let read = client.read_to_end(&mut reply);
    assert!(
        read.is_err() || reply.is_empty(),
        "the abandoned connection was answered: {:?}",
        String::from_utf8_lossy(&reply)
    );
}

/// Whether node `id`'s Redis has `key`.
fn has(cluster: &Cluster, id: usize, key: &str) -> bool {
    resp::cli(cluster.lab.node(id), PORT, &["EXISTS", key]).trim() == "1"
}

/// Issue 17, hole 3: a replica never resumes a connection in the middle of a command. A client
/// sends half of a `SET` whose value holds `\r\nFLUSHALL\r\n`; then a replica's agent stops
/// (SIGTERM, on a follower and on the client's own node, as in a rolling restart; or kill -9)
/// and comes back. Whatever the order, no replica's Redis runs the `FLUSHALL`: the connection is
/// abandoned at one point of the log on every replica (its client reset) and the replicas stay
/// identical, or, when the rest of the command was ordered while the replica was down, that
/// replica cannot apply it and fences itself, saying why.
#[test]
fn a_restarted_replica_never_resumes_a_connection_in_the_middle_of_a_command() {
    let mut cluster = cluster(3, App::Redis, TCP);
    let addrs = cluster.addrs();
    let mut redis = Redis::connect(addrs[0]).unwrap();
    assert_eq!(
        redis.call(&[b"SET", b"keep", b"1"]).unwrap(),
        Reply::Status("OK".into())
    );
    let (first, rest, value) = poisoned_set();
    let untouched = |cluster: &Cluster| {
        cluster.wait_converged().unwrap();
        for id in 1..=3 {
            assert!(has(cluster, id, "keep"), "node {id} ran the FLUSHALL");
            assert!(!has(cluster, id, "big"), "node {id} ran the half SET");
            let status = cluster.status(id).unwrap();
            assert_eq!(status["fenced"], false, "node {id}: {status}");
        }
        let digests = digests(cluster);
        assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    };

    // A rolling restart, SIGTERM: a follower, then the client's own node.
    for id in [2, 1] {
        let client = half_sent(&cluster, 1, &first);
        let (status, _) = cluster.stop_agent(id, Duration::from_secs(60)).unwrap();
        assert!(status.success(), "node {id}'s agent: {status}");
        cluster.start_agent(id).unwrap();
        cluster.wait_ready(id).unwrap();
        abandoned(client, &rest);
        untouched(&cluster);
    }

    // kill -9 of a follower, back before the rest comes: its restart abandons the connection.
    let client = half_sent(&cluster, 1, &first);
    cluster.kill_agent(2).unwrap();
    cluster.start_agent(2).unwrap();
    cluster.wait_ready(2).unwrap();
    abandoned(client, &rest);
    untouched(&cluster);

    // kill -9 of a follower, and the rest of the command ordered while it is down: the others
    // run the whole SET; the restarted one cannot, and fences itself.
    let mut client = half_sent(&cluster, 1, &first);
    cluster.kill_agent(2).unwrap();
    {
        use std::io::Write as _;
        client.write_all(&rest).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = std::io::BufReader::new(&client);
        assert_eq!(resp::read(&mut reader).unwrap(), Reply::Status("OK".into()));
    }
    cluster.start_agent(2).unwrap();
    let status = wait_until("node 2 to fence itself", || {
        cluster.status(2).filter(|s| s["fenced"] == true)
    })
    .unwrap();
    let why = status["fenced_because"].as_str().unwrap_or_default();
    assert!(why.contains("lost the app's connection"), "{status}");
    let ready = cluster.admin(2, "/readyz").unwrap();
    assert_eq!(ready.status, 503);
    assert!(String::from_utf8_lossy(&ready.body).contains("fenced"));
    for id in [1, 3] {
        assert!(has(&cluster, id, "keep"));
        let big = resp::cli(cluster.lab.node(id), PORT, &["STRLEN", "big"]);
        assert_eq!(big.trim(), value.len().to_string(), "node {id}");
    }
    assert!(has(&cluster, 2, "keep"), "node 2 ran the FLUSHALL");
    assert!(!has(&cluster, 2, "big"));
    let digests = digests(&cluster);
    assert_eq!(digests[0], digests[2]);
    assert_ne!(digests[1], digests[0]);
}

/// A planned stop ends within the grace period from its signal, whatever it waits for (issue
/// 20: the pod's `terminationGracePeriodSeconds` must be a bound above it). Here the worst case:
/// the other two agents are gone, so neither the open connection's close nor the order that
/// abandons it can be committed; draining, abandoning and the rest each used to wait a grace
/// period, or 5 s, of their own.
#[test]
fn a_planned_stop_without_a_majority_ends_within_the_grace_period() {
    let grace = Duration::from_secs(2);
    let mut cluster = cluster(
        3,
        App::Redis,
        &["--protocol", "tcp", "--grace-period", "2s"],
    );
    let (first, _, _) = poisoned_set();
    let _client = half_sent(&cluster, 1, &first);
    for id in [2, 3] {
        cluster.kill_agent(id).unwrap();
    }
    let began = std::time::Instant::now();
    let (status, output) = cluster.stop_agent(1, Duration::from_secs(60)).unwrap();
    let took = began.elapsed();
    assert!(status.success(), "{status}: {output:?}");
    // What runs after the grace period (stopping Raft, exiting) is quick; 1.5 s is ample.
    assert!(
        took < grace + Duration::from_millis(1500),
        "the stop took {took:?} with a grace period of {grace:?}: {output:?}"
    );
    assert!(
        output.iter().any(|line| line.contains("grace period over")),
        "the stop did not wait for the connection it could not close: {output:?}"
    );
}
