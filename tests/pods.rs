//! Pod mode (issue 12): `hermes-agent pods` on each lab node protects the labelled pods there,
//! found through a fake API server that lists and watches Pods as the real one does. Pods are
//! network namespaces with processes in cgroups named as the kubelet names them; namespaces,
//! cgroups, eBPF and Raft are real.
use std::{
    collections::{BTreeSet, HashSet},
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use hermes_lab::{
    client,
    cluster::PORT,
    pods::{Driver, Pod},
};
use hermes_tests::{
    pods::{PodLab, netns_inode, pins, wait},
    resp::{Redis, Reply},
};
use serde_json::Value;

fn addr(pod: &Pod) -> SocketAddr {
    SocketAddr::new(pod.ip.into(), PORT)
}

/// Starts the log app in `pod`, its file on the pod's volume.
fn start_log_app(pod: &mut Pod) {
    let file = pod.mount.join("app.log");
    let program = hermes_lab::binary("hermes-logapp").expect("binary");
    let args = ["--listen", "0.0.0.0:8080", "--file", file.to_str().unwrap()];
    pod.start_app(&program, &args, "listening")
        .expect("log app");
}

/// The log app's file, as its volume holds it.
fn app_lines(lab: &PodLab, volume: &str) -> Vec<String> {
    let text = std::fs::read_to_string(lab.volume(volume).join("app.log")).unwrap_or_default();
    text.lines().map(str::to_owned).collect()
}

/// `count` POSTs from the clients' host, spread over `pods`, 10 at a time; every one answered 201.
fn load(pods: &[&Pod], tag: &str, count: usize) {
    let addrs: Vec<SocketAddr> = pods.iter().map(|p| addr(p)).collect();
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let addrs = addrs.clone();
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                for i in (t..count).step_by(10) {
                    let body = format!("{tag}-{i}");
                    let answer = client::post(addrs[i % addrs.len()], "/insert", body.as_bytes())
                        .expect("POST");
                    assert_eq!(answer.status, 201, "{body}: {}", answer.text());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client");
    }
}

/// The voters and learners of the group, as `node`'s member of `pod` sees them.
fn membership(lab: &PodLab, node: usize, pod: &str) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
    let status = lab.pod_status(node, pod)?;
    let members = status["member"]["members"].as_array()?;
    let ids = |voter: bool| {
        members
            .iter()
            .filter(|m| m["voter"].as_bool() == Some(voter))
            .filter_map(|m| m["id"].as_u64())
            .collect()
    };
    Some((ids(true), ids(false)))
}

fn member_id(lab: &PodLab, node: usize, pod: &str) -> u64 {
    wait(&format!("{pod}'s member id"), || {
        lab.pod_status(node, pod)?["member"]["node_id"].as_u64()
    })
}

#[test]
fn a_group_of_pods_on_three_nodes_forms_one_raft_group_and_follows_its_pods() {
    let mut lab = PodLab::new(3);
    lab.agent_env = vec![("HERMES_ON_DIVERGENCE".into(), "fence".into())];
    for node in 1..=3 {
        lab.start_agent(node);
    }
    let mut pods = vec![
        lab.pod(1, 1, "app-0", "orders", "app-0", Driver::Cgroupfs),
        lab.pod(2, 1, "app-1", "orders", "app-1", Driver::Systemd),
        lab.pod(3, 1, "app-2", "orders", "app-2", Driver::Cgroupfs),
    ];
    for pod in &mut pods {
        pod.annotations["hermes.io/group-size"] = "3".into();
    }
    // A process claiming app-1's cgroup from node 2's own namespace, older than the pod's
    // processes: the discovery must not take its namespace for the pod's.
    let node2 = lab.lab.node(2).netns_path();
    pods[1].impostor(&node2).expect("impostor");
    for pod in &mut pods {
        start_log_app(pod);
    }
    for pod in &pods {
        lab.publish(pod);
    }
    for (i, pod) in pods.iter().enumerate() {
        let member = lab.wait_protected(i + 1, pod);
        assert_eq!(member["mode"], "replicated");
    }
    let ids: Vec<u64> = (0..3)
        .map(|i| member_id(&lab, i + 1, &pods[i].name))
        .collect();
    // app-0 formed the group; the others joined as learners and were promoted.
    wait("one group of three voters", || {
        let (voters, learners) = membership(&lab, 1, "app-0")?;
        (voters == ids.iter().copied().collect() && learners.is_empty()).then_some(())
    });

    // Served through the agents, from the clients' host: every replica gets every request.
    let all: Vec<&Pod> = pods.iter().collect();
    load(&all, "first", 150);
    let converged = |lab: &PodLab, volumes: &[&str], lines: usize| {
        wait(&format!("{volumes:?} identical with {lines} lines"), || {
            let first = app_lines(lab, volumes[0]);
            (first.len() == lines && volumes.iter().all(|v| app_lines(lab, v) == first))
                .then_some(first)
        })
    };
    let lines = converged(&lab, &["app-0", "app-1", "app-2"], 150);
    assert_eq!(
        lines.iter().collect::<HashSet<_>>().len(),
        150,
        "a request delivered twice"
    );
    for (i, pod) in pods.iter().enumerate() {
        let status = lab.pod_status(i + 1, &pod.name).unwrap();
        assert!(status["member"]["steering"]["steered"].as_u64().unwrap() > 0);
        // One scrape per agent, from off the node (`--metrics-addr`): its members' metrics,
        // each family once, each sample labelled with its pod.
        let metrics = lab.metrics(i + 1);
        hermes_tests::check_exposition(&metrics);
        let labels = format!(
            r#"namespace="lab",pod="{}",group="orders",member="{}""#,
            pod.name, ids[i]
        );
        assert!(
            metrics.contains(&format!("hermes_ready{{{labels}}} 1")),
            "{labels}: {metrics}"
        );
        assert!(
            metrics.contains(&format!("hermes_requests_total{{{labels},")),
            "{metrics}"
        );
    }

    // app-2 is deleted: while it terminates its port is closed (its app still runs), then its
    // steering is detached.
    let detached = pins(&pods[2]);
    assert!(detached.exists());
    lab.terminate(&pods[2]);
    wait("app-2 drained", || {
        let status = lab.pod_status(3, "app-2")?;
        (status["state"] != "protected").then_some(())
    });
    match TcpStream::connect_timeout(&addr(&pods[2]), Duration::from_secs(5)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a terminating pod's port let a connection through"),
    }
    assert!(detached.exists(), "detached before the pod was gone");
    // Gone from the API while its app still runs (a forced deletion): the port stays closed
    // until nothing is left in the pod's namespace.
    lab.api.delete(hermes_lab::pods::NAMESPACE, "app-2");
    wait("app-2 gone from the agent's view", || {
        lab.pod_status(3, "app-2").is_none().then_some(())
    });
    pods[2].kill_all();
    wait("app-2's steering detached", || {
        (!detached.exists()).then_some(())
    });
    let old = pods.pop().expect("app-2");
    drop(old);

    // app-2 comes back elsewhere with an empty volume: a new member, which joins as a learner and
    // catches up from the log. The old member stays a voter until an operator removes it.
    let mut fresh = lab.pod(3, 2, "app-2", "orders", "app-2-new", Driver::Cgroupfs);
    start_log_app(&mut fresh);
    lab.publish(&fresh);
    lab.wait_protected(3, &fresh);
    let new_id = member_id(&lab, 3, "app-2");
    assert_ne!(new_id, ids[2], "an empty volume must make a new member");
    converged(&lab, &["app-0", "app-1", "app-2-new"], 150);
    let (voters, learners) = membership(&lab, 1, "app-0").unwrap();
    assert_eq!((voters.len(), learners), (3, BTreeSet::from([new_id])));
    let removed = lab.ctl(1, "app-0", &["remove", &ids[2].to_string()]);
    assert!(removed.status.success(), "ctl remove: {removed:?}");
    wait("the new member promoted", || {
        let (voters, learners) = membership(&lab, 2, "app-1")?;
        (voters == BTreeSet::from([ids[0], ids[1], new_id]) && learners.is_empty()).then_some(())
    });
    load(&[&pods[0], &pods[1], &fresh], "second", 60);
    converged(&lab, &["app-0", "app-1", "app-2-new"], 210);

    // Readiness that a Service sees (issue 20): the agents set each pod's `hermes.io/ready`
    // condition, in the API server's record, True while its member is ready. app-1's app goes
    // down and a request comes: app-1's member holds it back, and the condition turns False,
    // saying why. The app back, the request is delivered and the condition is True again.
    for pod in ["app-0", "app-1", "app-2"] {
        wait(&format!("{pod} ready in the API"), || {
            (readiness(&lab, pod)?.0 == "True").then_some(())
        });
    }
    pods[1].kill_app();
    load(&[&pods[0]], "while-app-1-is-down", 1);
    let why = wait("app-1 not ready in the API", || {
        let (status, message) = readiness(&lab, "app-1")?;
        (status == "False").then_some(message)
    });
    assert!(why.contains("app does not answer"), "{why}");
    assert_eq!(readiness(&lab, "app-0").unwrap().0, "True");
    start_log_app(&mut pods[1]);
    wait("app-1 ready again in the API", || {
        (readiness(&lab, "app-1")?.0 == "True").then_some(())
    });
    converged(&lab, &["app-0", "app-1", "app-2-new"], 211);
    // A member fenced: app-1's app is changed behind Hermes' back (on the pod's loopback, which
    // is not steered), then a request comes. app-1's answer differs from the two others', its
    // member fences itself (`HERMES_ON_DIVERGENCE=fence`), and the condition turns False
    // saying so; `ctl resume` lifts the fence and the condition is True again.
    let local = SocketAddr::from(([127, 0, 0, 1], PORT));
    let sneaked = pods[1]
        .run_inside(move || client::post(local, "/insert", b"behind-hermes-back"))
        .unwrap();
    assert_eq!(sneaked.status, 201, "{}", sneaked.text());
    load(&[&pods[0]], "after-the-change", 1);
    wait("app-1 fenced in the API", || {
        let (status, message) = readiness(&lab, "app-1")?;
        (status == "False" && message.contains("fenced")).then_some(())
    });
    assert_eq!(readiness(&lab, "app-0").unwrap().0, "True");
    let resumed = lab.ctl(2, "app-1", &["resume"]);
    assert!(resumed.status.success(), "ctl resume: {resumed:?}");
    wait("app-1 ready again after resume", || {
        (readiness(&lab, "app-1")?.0 == "True").then_some(())
    });
    // An agent that stops leaves its pods' ports closed: it says so first.
    lab.agent(1)
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let why = wait("app-0 not ready once its agent stops", || {
        let (status, message) = readiness(&lab, "app-0")?;
        (status == "False").then_some(message)
    });
    assert!(why.contains("agent is stopping"), "{why}");
}

/// Pod `name`'s `hermes.io/ready` condition as the API server holds it: status and message.
fn readiness(lab: &PodLab, name: &str) -> Option<(String, String)> {
    let pod = lab.api.get(hermes_lab::pods::NAMESPACE, name)?;
    let conditions = pod["status"]["conditions"].as_array()?;
    let ready = conditions.iter().find(|c| c["type"] == "hermes.io/ready")?;
    let text = |field: &str| ready[field].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("message")))
}

/// What a probe of the echo app's port came back with.
#[derive(Debug, Default)]
struct Probes {
    through_agent: usize,
    direct: usize,
    closed: usize,
}

/// Asks `addr` (the HTTP echo app, which answers with the request it received) again and
/// again until `stop`: an answer whose request lacks the agent's `X-Forwarded-For` reached the
/// app unordered.
fn probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Probes> {
    std::thread::spawn(move || {
        let mut probes = Probes::default();
        while !stop.load(Ordering::Relaxed) {
            let answer =
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    s.write_all(b"GET /probe HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")?;
                    let mut answer = Vec::new();
                    s.read_to_end(&mut answer)?;
                    Ok(answer)
                });
            match answer {
                Ok(answer) if answer.starts_with(b"HTTP/1.1 200") => {
                    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
                    if text.contains("x-forwarded-for") {
                        probes.through_agent += 1;
                    } else {
                        probes.direct += 1;
                    }
                }
                // Refused, reset, or an answer that is not the app's: closed.
                _ => probes.closed += 1,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        probes
    })
}

#[test]
fn an_agent_restart_reconciles_without_an_open_window_and_state_stays_in_the_volume() {
    let mut lab = PodLab::new(1);
    lab.start_agent(1);
    // This pod appears while its init container runs, before its app: the agent reaches the
    // volume through the init container and steers the port, which is what the init container
    // waits for (a connection to the port, accepted by the agent), and only then the app starts.
    let mut echo = lab.pod(1, 1, "echo-0", "echo", "echo-0", Driver::Systemd);
    echo.start_init().expect("init container");
    lab.publish(&echo);
    lab.wait_protected(1, &echo);
    let port = addr(&echo);
    echo.run_inside(move || TcpStream::connect_timeout(&port, Duration::from_secs(5)))
        .expect("the port is steered before the app runs");
    echo.finish_init();
    let program = hermes_lab::binary("hermes-http-echo").expect("binary");
    echo.start_app(&program, &["0.0.0.0:8080"], "listening")
        .expect("echo app");
    let mut log = lab.pod(1, 2, "log-0", "log", "log-0", Driver::Cgroupfs);
    start_log_app(&mut log);
    let mut gone = lab.pod(1, 3, "gone-0", "gone", "gone-0", Driver::Cgroupfs);
    start_log_app(&mut gone);
    for pod in [&echo, &log, &gone] {
        lab.publish(pod);
        lab.wait_protected(1, pod);
        lab.wait_ready(1, pod);
    }
    load(&[&log], "before", 20);
    let id = member_id(&lab, 1, "log-0");
    // The member's identity, log and delivery progress are on the pod's volume.
    let state = lab.volume("log-0").join("hermes");
    for file in ["identity", "raft.log"] {
        assert!(state.join(file).is_file(), "{file} not on the volume");
    }
    let identity = std::fs::read_to_string(state.join("identity")).unwrap();
    assert!(identity.starts_with(&format!("node {id}\n")), "{identity}");

    // The agent crashes. Until a new one takes over, every protected port stays closed; it
    // never reaches an app unordered.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(addr(&echo), Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    lab.kill_agent(1);
    // Meanwhile one pod is deleted: the new agent learns it from its first list.
    let gone_pins = pins(&gone);
    assert!(gone_pins.exists());
    lab.api.delete(hermes_lab::pods::NAMESPACE, "gone-0");
    // Its processes end; its namespace and pins stay until the agent detaches them.
    gone.kill_all();
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agent(1);
    // The agent is ready only once its pods' members are back (so that a rolling update of the
    // agents waits for them before it moves on).
    wait("the restarted agent ready", || {
        (lab.admin(1, "/readyz")?.status == 200).then_some(())
    });
    for pod in [&echo, &log] {
        let state = lab.pod_status(1, &pod.name).unwrap()["state"].clone();
        assert_eq!(
            state, "protected",
            "{}: ready before its member was back",
            pod.name
        );
    }
    for pod in [&echo, &log] {
        lab.wait_protected(1, pod);
        lab.wait_ready(1, pod);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let probes = prober.join().expect("prober");
    assert_eq!(
        probes.direct, 0,
        "requests reached the app unordered: {probes:?}"
    );
    assert!(probes.closed > 0 && probes.through_agent > 0, "{probes:?}");
    wait("the deleted pod's steering detached", || {
        (!gone_pins.exists()).then_some(())
    });
    drop(gone);

    // The member is the same (its identity came from the volume), and what it delivered
    // before is not delivered again.
    assert_eq!(member_id(&lab, 1, "log-0"), id);
    load(&[&log], "after", 20);
    wait("40 lines", || {
        (app_lines(&lab, "log-0").len() == 40).then_some(())
    });

    // The pod's sandbox is made anew (a new network namespace, the same IP): the member follows
    // it, and the old namespace's steering goes.
    let old_pins = pins(&log);
    let old_netns = netns_inode(&log.netns_path());
    log.recreate_sandbox().expect("new sandbox");
    assert_ne!(netns_inode(&log.netns_path()), old_netns);
    start_log_app(&mut log);
    lab.publish(&log);
    lab.wait_protected(1, &log);
    lab.wait_ready(1, &log);
    wait("the old sandbox's steering detached", || {
        (!old_pins.exists()).then_some(())
    });
    load(&[&log], "anew", 10);
    let lines = wait("50 lines", || {
        let lines = app_lines(&lab, "log-0");
        (lines.len() == 50).then_some(lines)
    });
    assert_eq!(
        lines.iter().collect::<HashSet<_>>().len(),
        50,
        "a request delivered twice"
    );
    assert_eq!(member_id(&lab, 1, "log-0"), id);
    let status: Value = lab.pod_status(1, "log-0").unwrap();
    assert_eq!(status["member"]["in_doubt"], 0);
}

/// Starts Debian's `redis-server` in `pod` on the protected port, as the lab's clusters run it.
fn start_redis(pod: &mut Pod) {
    use hermes_lab::cluster::{REDIS_ARGS, REDIS_READY};
    let port = PORT.to_string();
    let args = [REDIS_ARGS, &["--port", &port]].concat();
    pod.start_app(
        std::path::Path::new("/usr/bin/redis-server"),
        &args,
        REDIS_READY,
    )
    .expect("redis-server");
}

/// `DEBUG DIGEST` of the Redis in `pod` (a digest of its whole dataset), asked on its loopback.
fn redis_digest(pod: &Pod) -> String {
    let local = SocketAddr::from(([127, 0, 0, 1], PORT));
    match pod
        .run_inside(move || Redis::connect(local)?.call(&[b"DEBUG", b"DIGEST"]))
        .expect("DEBUG DIGEST")
    {
        Reply::Status(digest) => digest,
        other => panic!("DEBUG DIGEST: {other:?}"),
    }
}

/// A client of `pod` that pushes values tagged `tag` to one shared list, incrementing a shared
/// counter with each, until `stop` (after `rounds` at least), counting each round in `done`; it
/// connects again whenever its connection is reset (an agent restarting). The values Redis
/// acknowledged, and how many times the connection was reset.
fn redis_client(
    pod: &Pod,
    tag: String,
    rounds: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    let addr = addr(pod);
    std::thread::spawn(move || {
        let (mut acked, mut resets) = (Vec::new(), 0);
        let mut redis = None;
        let mut round = 0;
        let mut refused = 0;
        while round < rounds || !stop.load(Ordering::Relaxed) {
            let connection = match redis.as_mut() {
                Some(redis) => redis,
                None => match Redis::connect(addr) {
                    Ok(connected) => redis.insert(connected),
                    Err(_) => {
                        refused += 1;
                        assert!(refused < 600, "{tag}: refused 600 times in a row");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                },
            };
            let value = format!("{tag}-{round}");
            let replies = connection.pipeline(&[
                &[b"RPUSH", b"list", value.as_bytes()],
                &[b"INCR", b"counter"],
            ]);
            match replies {
                Ok(replies) if matches!(replies[0], Reply::Int(_)) => acked.push(value),
                Ok(replies) => panic!("{value}: {replies:?}"),
                // Reset: whether it ran is unknown; the next round goes on a new connection.
                Err(_) => {
                    resets += 1;
                    redis = None;
                }
            }
            round += 1;
            done.fetch_add(1, Ordering::Relaxed);
        }
        (acked, resets)
    })
}

/// Raw TCP mode in pod mode (issue 20): a group of three Debian `redis-server` pods, one per
/// node, with clients on every pod, stays identical (`DEBUG DIGEST`) through a planned restart
/// of one node's agent under load, and every acknowledged write is in every replica, once.
#[test]
fn a_group_of_redis_pods_in_tcp_mode_stays_identical_through_an_agent_restart() {
    let mut lab = PodLab::new(3);
    lab.agent_env = vec![("HERMES_PROTOCOL".into(), "tcp".into())];
    for node in 1..=3 {
        lab.start_agent(node);
    }
    let mut pods = vec![
        lab.pod(1, 1, "cache-0", "cache", "cache-0", Driver::Cgroupfs),
        lab.pod(2, 1, "cache-1", "cache", "cache-1", Driver::Systemd),
        lab.pod(3, 1, "cache-2", "cache", "cache-2", Driver::Cgroupfs),
    ];
    for pod in &mut pods {
        pod.annotations["hermes.io/group-size"] = "3".into();
        start_redis(pod);
        lab.publish(pod);
    }
    for (i, pod) in pods.iter().enumerate() {
        lab.wait_protected(i + 1, pod);
    }
    wait("the three pods ready", || {
        (0..3)
            .all(|i| {
                lab.admin(i + 1, &format!("/pods/lab/{}/readyz", pods[i].name))
                    .is_some_and(|r| r.status == 200)
            })
            .then_some(())
    });

    let done = Arc::new(AtomicUsize::new(0));
    let clients = |tag: &str, rounds, stop: &Arc<AtomicBool>| -> Vec<_> {
        pods.iter()
            .map(|pod| {
                let tag = format!("{tag}-{}", pod.name);
                redis_client(pod, tag, rounds, Arc::clone(stop), Arc::clone(&done))
            })
            .collect()
    };
    let mut acked: Vec<String> = Vec::new();
    let stopped = Arc::new(AtomicBool::new(true));
    for client in clients("first", 100, &stopped) {
        let (values, resets) = client.join().expect("client");
        assert_eq!((values.len(), resets), (100, 0), "before the restart");
        acked.extend(values);
    }

    // Node 2's agent stops as the kubelet stops it, under load, and comes back: its clients'
    // connections are abandoned on every replica, and they connect again.
    let stop = Arc::new(AtomicBool::new(false));
    let running = clients("second", 0, &stop);
    let until = |rounds| {
        wait(&format!("{rounds} rounds of the clients"), || {
            (done.load(Ordering::Relaxed) >= rounds).then_some(())
        });
    };
    until(300 + 150);
    lab.agent(2)
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = lab.agent(2).wait(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "node 2's agent: {status}");
    lab.start_agent(2);
    lab.wait_ready(2, &pods[1]);
    until(done.load(Ordering::Relaxed) + 150);
    stop.store(true, Ordering::Relaxed);
    for (client, pod) in running.into_iter().zip(&pods) {
        let (values, resets) = client.join().expect("client");
        if pod.name == "cache-1" {
            assert!(
                resets > 0,
                "node 2's client was not connected across the restart"
            );
        }
        acked.extend(values);
    }

    let digests = wait("the replicas identical", || {
        let digests: Vec<String> = pods.iter().map(redis_digest).collect();
        digests.iter().all(|d| *d == digests[0]).then_some(digests)
    });
    assert_ne!(digests[0], "0".repeat(40), "an empty dataset");
    let local = SocketAddr::from(([127, 0, 0, 1], PORT));
    let list = pods[0]
        .run_inside(move || Redis::connect(local)?.call(&[b"LRANGE", b"list", b"0", b"-1"]))
        .unwrap();
    let Reply::Array(items) = list else {
        panic!("LRANGE: {list:?}")
    };
    let items: Vec<String> = items
        .iter()
        .map(|item| match item {
            Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    let unique: HashSet<&String> = items.iter().collect();
    assert_eq!(unique.len(), items.len(), "a write applied twice");
    for value in &acked {
        assert!(
            unique.contains(value),
            "{value} acknowledged, not in the list"
        );
    }
}
