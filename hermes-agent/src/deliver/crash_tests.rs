//! Delivery through crashes at every step: the agent's (the page cache keeps every write) and
//! the machine's (a power loss: writes not yet synced are lost, in part, and the last one may
//! be torn at any byte). Whatever the crash, no request is skipped, and none reaches the app
//! twice unless it was counted in doubt.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;

use super::{App, Delivery, Storage, progress::ProgressFile};
use crate::{
    http::{ordered::Ordered, response::Limits},
    order::typ::LogId,
    testing::{Act, FakeApp, OK},
};

/// A disk for the progress file that can crash.
#[derive(Clone, Default)]
struct Disk(Arc<Mutex<DiskState>>);

#[derive(Default)]
struct DiskState {
    /// What survives a power loss.
    durable: Vec<u8>,
    /// What reads see (the page cache).
    cached: Vec<u8>,
    /// Writes since the last sync, in order.
    unsynced: Vec<(usize, Vec<u8>)>,
    /// Writes and syncs so far.
    ops: usize,
    /// The write or sync during which the agent dies: it fails, and so does every later one.
    dies_at: Option<usize>,
}

fn put(buf: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if buf.len() < offset + bytes.len() {
        buf.resize(offset + bytes.len(), 0);
    }
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl DiskState {
    /// Counts an operation; fails it if the agent is dead by then.
    fn op(&mut self) -> std::io::Result<()> {
        self.ops += 1;
        match self.dies_at {
            Some(at) if self.ops >= at => Err(std::io::Error::other("the agent died here")),
            _ => Ok(()),
        }
    }
}

impl Storage for Disk {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let state = self.0.lock().unwrap();
        let offset = offset as usize;
        let bytes = state
            .cached
            .get(offset..offset + buf.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut state = self.0.lock().unwrap();
        state.op()?;
        put(&mut state.cached, offset as usize, buf);
        state.unsynced.push((offset as usize, buf.to_vec()));
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        let mut state = self.0.lock().unwrap();
        state.op()?;
        state.durable = state.cached.clone();
        state.unsynced.clear();
        Ok(())
    }
}

/// How the agent's death is survived.
#[derive(Clone, Copy, Debug)]
enum Crash {
    /// Only the agent died: the page cache kept every write.
    Agent,
    /// The machine lost power: no write since the last sync survived.
    PowerLost,
    /// The machine lost power after writing back some of what was not synced (a random part,
    /// in any order), the last of it torn at a random byte.
    PowerLostTorn(u64),
}

impl Disk {
    /// The disk as the next start finds it.
    fn after(&self, crash: Crash) -> Disk {
        let state = self.0.lock().unwrap();
        let mut disk = match crash {
            Crash::Agent => state.cached.clone(),
            Crash::PowerLost => state.durable.clone(),
            Crash::PowerLostTorn(seed) => {
                let mut random = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = move || {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    random
                };
                let mut disk = state.durable.clone();
                let mut kept: Vec<&(usize, Vec<u8>)> =
                    state.unsynced.iter().filter(|_| next() % 2 == 0).collect();
                // Written back in any order.
                for i in (1..kept.len()).rev() {
                    kept.swap(i, next() as usize % (i + 1));
                }
                let last = kept.len().saturating_sub(1);
                for (i, (offset, bytes)) in kept.into_iter().enumerate() {
                    let len = if i == last {
                        next() as usize % (bytes.len() + 1)
                    } else {
                        bytes.len()
                    };
                    put(&mut disk, *offset, &bytes[..len]);
                }
                disk
            }
        };
        // A file never shrinks.
        disk.resize(disk.len().max(state.cached.len()), 0);
        Disk(Arc::new(Mutex::new(DiskState {
            durable: disk.clone(),
            cached: disk,
            ..DiskState::default()
        })))
    }

    fn dies_at(&self, op: usize) {
        self.0.lock().unwrap().dies_at = Some(op);
    }

    fn ops(&self) -> usize {
        self.0.lock().unwrap().ops
    }
}

/// Requests per entry, and entries, applied in one go as openraft does.
const PER_ENTRY: u64 = 3;
const ENTRIES: u64 = 2;
const BOOT: u128 = 7;
const REBOOTED: u128 = 8;

fn request(seq: u64) -> Bytes {
    Ordered {
        conn: 1,
        request: format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n{seq}").into(),
    }
    .to_payload()
}

/// Applies the entries after the progress's last applied one, as openraft does after a start;
/// stops at the first error (the agent died).
async fn apply(delivery: &mut Delivery) -> std::io::Result<()> {
    let first_entry = delivery.progress().applied.map_or(1, |id| id.index + 1);
    delivery.plan(ENTRIES * PER_ENTRY);
    for entry in first_entry..=ENTRIES {
        let first = delivery.progress().requests + 1;
        for seq in first..first + PER_ENTRY {
            delivery.deliver(seq, (1, 1, seq), &request(seq)).await?;
        }
        let id = LogId::new(openraft::CommittedLeaderId::new(1, 1), entry);
        delivery.finish_entry(id)?;
    }
    Ok(())
}

fn app_of(fake: &FakeApp) -> Arc<App> {
    Arc::new(App::new(
        fake.addr,
        std::net::Ipv4Addr::LOCALHOST,
        Duration::from_secs(5),
        Limits::default(),
        64,
        Arc::default(),
    ))
}

/// The agent dies at operation `dies_at` of the progress file, and comes back after `crash`;
/// returns, per request, how many times the app received it, and the requests counted in doubt.
async fn run(dies_at: Option<usize>, crash: Crash) -> (BTreeMap<u64, usize>, u64) {
    let fake = FakeApp::start(|_| Act::Reply(OK)).await;
    let disk = Disk::default();
    let kept = ProgressFile::on(Box::new(disk.clone()), true).unwrap();
    if let Some(op) = dies_at {
        disk.dies_at(disk.ops() + op);
    }
    // The agent may die as it opens the progress, too.
    let died = match Delivery::on(kept, BOOT, app_of(&fake), None) {
        Ok(mut delivery) => apply(&mut delivery).await.is_err(),
        Err(_) => true,
    };
    assert_eq!(died, dies_at.is_some(), "died at {dies_at:?}");
    let mut in_doubt = 0;
    if died {
        let disk = disk.after(crash);
        let boot = match crash {
            Crash::Agent => BOOT,
            Crash::PowerLost | Crash::PowerLostTorn(_) => REBOOTED,
        };
        let kept = ProgressFile::on(Box::new(disk), false).expect("the progress can be read");
        let mut restarted = Delivery::on(kept, boot, app_of(&fake), None).unwrap();
        apply(&mut restarted).await.unwrap();
        in_doubt = restarted.progress().in_doubt;
        assert_eq!(restarted.progress().requests, ENTRIES * PER_ENTRY);
    }
    let mut received = BTreeMap::new();
    for seen in fake.seen() {
        *received.entry(seen.index).or_default() += 1;
    }
    (received, in_doubt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_any_step_skips_nothing_and_repeats_only_what_is_counted_in_doubt() {
    let (received, _) = run(None, Crash::Agent).await;
    let all: BTreeMap<u64, usize> = (1..=ENTRIES * PER_ENTRY).map(|seq| (seq, 1)).collect();
    assert_eq!(received, all, "without a crash");
    // Writes and syncs of the progress when nothing fails.
    let steps = {
        let fake = FakeApp::start(|_| Act::Reply(OK)).await;
        let disk = Disk::default();
        let kept = ProgressFile::on(Box::new(disk.clone()), true).unwrap();
        let before = disk.ops();
        let mut delivery = Delivery::on(kept, BOOT, app_of(&fake), None).unwrap();
        apply(&mut delivery).await.unwrap();
        disk.ops() - before
    };
    assert!(steps > 10, "{steps} steps");
    let mut repeated_somewhere = false;
    for step in 1..=steps {
        let torn = (0..16).map(|seed| Crash::PowerLostTorn(seed * 1000 + step as u64));
        for crash in [Crash::Agent, Crash::PowerLost].into_iter().chain(torn) {
            let (received, in_doubt) = run(Some(step), crash).await;
            let what = format!("died at step {step}, {crash:?}: received {received:?}");
            for seq in 1..=ENTRIES * PER_ENTRY {
                assert!(received.contains_key(&seq), "request {seq} skipped; {what}");
            }
            assert!(received.values().all(|n| *n <= 2), "{what}");
            let twice = received.values().filter(|n| **n == 2).count() as u64;
            assert!(
                twice <= in_doubt,
                "{twice} sent twice, {in_doubt} counted in doubt; {what}"
            );
            repeated_somewhere |= twice > 0;
            if let Crash::Agent = crash {
                // The agent's own crash loses no write: at most the request being written is in
                // doubt.
                assert!(in_doubt <= 1, "{what}");
            }
        }
    }
    assert!(repeated_somewhere, "some crash left a request in doubt");
}
