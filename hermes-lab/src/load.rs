//! Clients that post unique bodies to a log app cluster, and the check of the replicas' files
//! against what they sent.
use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{client, cluster::wait_until};

/// Client threads posting `client<c>-request<n>` to `POST /insert` in a loop (and, if asked,
/// reading `GET /count` in between).
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    acks: Arc<Acks>,
    threads: Vec<JoinHandle<Sent>>,
}

/// When the clients' writes were acknowledged: the last, and the longest time without one.
#[derive(Debug)]
struct Acks {
    started: Instant,
    /// Microseconds after `started`.
    last: AtomicU64,
    longest_silence: AtomicU64,
    /// The longest silence since [`Load::longest_pause`] was last called.
    longest_pause: AtomicU64,
}

impl Acks {
    /// A write was acknowledged now (or the load stopped now).
    fn acked(&self) {
        let now = self.started.elapsed().as_micros() as u64;
        // A client that read the clock before another but comes later moves nothing back.
        let before = self.last.fetch_max(now, Ordering::Relaxed);
        let silence = now.saturating_sub(before);
        self.longest_silence.fetch_max(silence, Ordering::Relaxed);
        self.longest_pause.fetch_max(silence, Ordering::Relaxed);
    }
}

/// What the clients sent, and which of it the cluster acknowledged (201).
#[derive(Default, Debug)]
pub struct Sent {
    pub all: Vec<Vec<u8>>,
    pub acked: Vec<Vec<u8>>,
    /// Failures by kind, e.g. "503" or "connection refused".
    pub failures: BTreeMap<String, usize>,
    /// Reads answered 200.
    pub reads: usize,
    /// The longest time no write was acknowledged to any client, from the start of the load
    /// until it stopped.
    pub longest_silence: Duration,
}

impl Sent {
    /// Adds what another load sent.
    pub fn add(&mut self, other: Sent) {
        self.all.extend(other.all);
        self.acked.extend(other.acked);
        self.reads += other.reads;
        for (kind, count) in other.failures {
            *self.failures.entry(kind).or_default() += count;
        }
        self.longest_silence = self.longest_silence.max(other.longest_silence);
    }
}

impl Load {
    /// `clients` threads; client `c` talks to `addrs[c % addrs.len()]`.
    pub fn start(addrs: &[SocketAddr], clients: usize) -> Self {
        Self::spawn(addrs, 0..clients, false)
    }

    /// Like [`Load::start`], with clients numbered from `first` on: loads one after the other
    /// whose clients' bodies never repeat.
    pub fn numbered(addrs: &[SocketAddr], clients: usize, first: usize) -> Self {
        Self::spawn(addrs, first..first + clients, false)
    }

    /// Like [`Load::start`], with a read between writes.
    pub fn mixed(addrs: &[SocketAddr], clients: usize) -> Self {
        Self::spawn(addrs, 0..clients, true)
    }

    fn spawn(addrs: &[SocketAddr], clients: std::ops::Range<usize>, reads: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let acks = Arc::new(Acks {
            started: Instant::now(),
            last: AtomicU64::new(0),
            longest_silence: AtomicU64::new(0),
            longest_pause: AtomicU64::new(0),
        });
        let threads = clients
            .map(|c| {
                let (stop, acked, acks, addr) = (
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    Arc::clone(&acks),
                    addrs[c % addrs.len()],
                );
                std::thread::spawn(move || client_loop(c, addr, reads, &stop, &acked, &acks))
            })
            .collect();
        Self {
            stop,
            acked,
            acks,
            threads,
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// The longest time no write was acknowledged to any client since the last call (or the
    /// start of the load), until now.
    pub fn longest_pause(&self) -> Duration {
        let now = self.acks.started.elapsed().as_micros() as u64;
        let since_last = now.saturating_sub(self.acks.last.load(Ordering::Relaxed));
        let longest = self.acks.longest_pause.swap(0, Ordering::Relaxed);
        Duration::from_micros(longest.max(since_last))
    }

    /// Waits until `more` further requests have been acknowledged.
    pub fn wait_for_acks(&self, more: usize) -> std::io::Result<()> {
        let target = self.acked() + more;
        wait_until(&format!("{target} acknowledged requests"), || {
            (self.acked() >= target).then_some(())
        })
    }

    /// Stops the clients (each finishes its request in progress) and returns what they sent.
    pub fn stop(mut self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        // The silence until the load stopped counts too (not the time the clients take to end).
        self.acks.acked();
        let mut total = Sent::default();
        for thread in std::mem::take(&mut self.threads) {
            total.add(thread.join().expect("client thread"));
        }
        let longest = self.acks.longest_silence.load(Ordering::Relaxed);
        total.longest_silence = Duration::from_micros(longest);
        total
    }
}

impl Drop for Load {
    /// Clients left running would go on posting to whatever lab next gets these addresses.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn client_loop(
    c: usize,
    addr: SocketAddr,
    reads: bool,
    stop: &AtomicBool,
    acked: &AtomicUsize,
    acks: &Acks,
) -> Sent {
    let mut sent = Sent::default();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if reads {
            match client::get(addr, "/count") {
                Ok(response) if response.status == 200 => sent.reads += 1,
                Ok(response) => {
                    *sent
                        .failures
                        .entry(format!("read {}", response.status))
                        .or_default() += 1
                }
                Err(error) => {
                    *sent
                        .failures
                        .entry(format!("read {}", error.kind()))
                        .or_default() += 1
                }
            }
        }
        let body = format!("client{c}-request{n}").into_bytes();
        sent.all.push(body.clone());
        match client::post(addr, "/insert", &body) {
            Ok(response) if response.status == 201 => {
                sent.acked.push(body);
                acked.fetch_add(1, Ordering::Relaxed);
                acks.acked();
            }
            Ok(response) => {
                *sent
                    .failures
                    .entry(response.status.to_string())
                    .or_default() += 1
            }
            Err(error) => {
                *sent.failures.entry(error.kind().to_string()).or_default() += 1;
                // A refused connection fails at once: do not spin on it.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    sent
}

/// Checks replicas' log files against what clients sent: no line nobody sent, every
/// acknowledged body present, all files identical, no line twice, and each client's
/// acknowledged requests in the order it sent them (a client sends one at a time). The one exception: replica
/// `i` may hold a line twice in a row (a request its app got once more because Hermes could not
/// tell whether it had it) at most `in_doubt[i]` times, the number of such requests it reported;
/// the files are compared without those second copies. Returns the number of distinct lines.
pub fn check_replicas(files: &[Vec<u8>], in_doubt: &[u64], sent: &Sent) -> Result<usize, String> {
    let all: HashSet<&[u8]> = sent.all.iter().map(Vec::as_slice).collect();
    let mut replicas = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut doubled = 0;
        for line in file.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if !all.contains(line) {
                return Err(format!("{} was never sent", String::from_utf8_lossy(line)));
            }
            if lines.last() == Some(&line) {
                doubled += 1;
                continue;
            }
            lines.push(line);
        }
        let allowed = in_doubt.get(i).copied().unwrap_or(0);
        if doubled > allowed {
            return Err(format!(
                "node {} holds {doubled} lines twice in a row, but reported {allowed} requests in doubt",
                i + 1
            ));
        }
        replicas.push(lines);
    }
    let first = replicas.first().ok_or("no replicas")?;
    for (i, lines) in replicas.iter().enumerate().skip(1) {
        if lines != first {
            return Err(format!("the files of node 1 and node {} differ", i + 1));
        }
    }
    let mut seen = HashSet::new();
    for line in first {
        if !seen.insert(*line) {
            return Err(format!("{} appears twice", String::from_utf8_lossy(line)));
        }
    }
    if let Some(missing) = sent
        .acked
        .iter()
        .find(|body| !seen.contains(body.as_slice()))
    {
        return Err(format!(
            "acknowledged {} is missing",
            String::from_utf8_lossy(missing)
        ));
    }
    let acked: HashSet<&[u8]> = sent.acked.iter().map(Vec::as_slice).collect();
    let mut last = BTreeMap::new();
    for line in first.iter().filter(|line| acked.contains(*line)) {
        let Some((client, n)) = client_and_number(line) else {
            continue;
        };
        if last.insert(client, n).is_some_and(|before| before > n) {
            return Err(format!(
                "client {client}'s request {n} comes after a later one of its requests"
            ));
        }
    }
    Ok(seen.len())
}

/// `client<c>-request<n>`, as the load's clients name their bodies.
fn client_and_number(line: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let (client, n) = text.strip_prefix("client")?.split_once("-request")?;
    Some((client.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_catches_what_it_should() {
        let sent = Sent {
            all: vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
            acked: vec![b"a".to_vec(), b"b".to_vec()],
            ..Sent::default()
        };
        let strict = [0, 0];
        let check = |files: &[&[u8]], in_doubt: &[u64]| {
            let files: Vec<Vec<u8>> = files.iter().map(|f| f.to_vec()).collect();
            check_replicas(&files, in_doubt, &sent)
        };
        assert_eq!(check(&[b"a\nb\n", b"a\nb\n"], &strict), Ok(2));
        assert_eq!(check(&[b"b\na\nc\n"], &strict), Ok(3));
        assert!(
            check(&[b"a\nb\n", b"b\na\n"], &strict)
                .unwrap_err()
                .contains("differ")
        );
        assert!(
            check(&[b"a\nb\na\n"], &strict)
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            check(&[b"a\nb\nz\n"], &strict)
                .unwrap_err()
                .contains("never sent")
        );
        assert!(check(&[b"a\n"], &strict).unwrap_err().contains("missing"));
        // A line twice in a row: only as often as the node reported requests in doubt.
        let doubled: &[&[u8]] = &[b"a\na\nb\n", b"a\nb\n"];
        assert!(check(doubled, &strict).unwrap_err().contains("in doubt"));
        assert_eq!(check(doubled, &[1, 0]), Ok(2));
        assert!(check(&[b"a\na\nb\nb\n", b"a\nb\n"], &[1, 0]).is_err());
        assert!(
            check(&[b"a\nb\na\n", b"a\nb\n"], &[5, 0]).is_err(),
            "not in a row"
        );
        let ordered = Sent {
            all: vec![b"client1-request0".to_vec(), b"client1-request1".to_vec()],
            acked: vec![b"client1-request0".to_vec(), b"client1-request1".to_vec()],
            ..Sent::default()
        };
        let files = [b"client1-request1\nclient1-request0\n".to_vec()];
        assert!(
            check_replicas(&files, &[0], &ordered)
                .unwrap_err()
                .contains("comes after")
        );
    }
}
