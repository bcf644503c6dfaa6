//! Delivery through crashes at every step: the agent's (the page cache keeps every write) and
//! the machine's (a power loss: writes not yet synced are lost, in part, and the last one may
//! be torn at any byte). Whatever the crash, no request is skipped, and none reaches the app
//! twice unless it was counted in doubt: with the progress's promises synced at once or late
//! (as the background thread does), and with a snapshot installed between the entries.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;

use super::{App, Delivery, Sessions, Storage, progress::ProgressFile};
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
const ENTRIES: u64 = 3;
const BOOT: u128 = 7;

/// How the progress is kept, and what is applied.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Requests one sync of the progress lets begin.
    promise: u64,
    /// Syncs asked for in the background end this many polls later; `None`: at once.
    late: Option<u32>,
    /// The entry not applied but installed from a snapshot made elsewhere (this replica was
    /// behind).
    install: Option<u64>,
}

/// Promises short enough to be made ahead, at once and late over these few requests.
const PLANS: [Plan; 4] = [
    Plan {
        promise: 2,
        late: None,
        install: None,
    },
    Plan {
        promise: 2,
        late: Some(0),
        install: None,
    },
    Plan {
        promise: 4,
        late: Some(2),
        install: None,
    },
    Plan {
        promise: 6,
        late: Some(1),
        install: None,
    },
];

fn request(seq: u64) -> Bytes {
    Ordered {
        conn: 1,
        request: format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n{seq}").into(),
    }
    .to_payload()
}

fn entry_id(entry: u64) -> LogId {
    LogId::new(openraft::CommittedLeaderId::new(1, 1), entry)
}

/// Installs the snapshot of everything up to `entry`, as the state machine does.
fn install(delivery: &mut Delivery, entry: u64) -> std::io::Result<()> {
    delivery.begin_install()?;
    let deliveries = delivery.progress().deliveries;
    delivery.finish_install(
        Some(entry_id(entry)),
        entry * PER_ENTRY,
        deliveries,
        Sessions::default(),
    )
}

/// Applies the entries after the progress's last applied one, as openraft does after a start
/// (first the snapshot whose install a crash interrupted), up to request `until`; stops at the
/// first error (the agent died).
async fn apply(delivery: &mut Delivery, plan: Plan, until: u64) -> std::io::Result<()> {
    if delivery.progress().installing {
        install(
            delivery,
            plan.install.expect("a snapshot was being installed"),
        )?;
    }
    let first_entry = delivery.progress().applied.map_or(1, |id| id.index + 1);
    for entry in first_entry..=ENTRIES {
        let first = delivery.progress().requests + 1;
        if plan.install == Some(entry) {
            if first > until {
                return Ok(());
            }
            install(delivery, entry)?;
            continue;
        }
        for seq in first..first + PER_ENTRY {
            if seq > until {
                return Ok(());
            }
            delivery.deliver(seq, (1, 1, seq), &request(seq)).await?;
        }
        delivery.finish_entry(entry_id(entry))?;
    }
    Ok(())
}

fn app_of(fake: &FakeApp) -> Arc<App> {
    Arc::new(
        App::new(
            fake.addr,
            std::net::Ipv4Addr::LOCALHOST,
            Duration::from_secs(5),
            Limits::default(),
            64,
            Arc::default(),
        )
        .switching_after(Duration::from_secs(3600)),
    )
}

/// How one life of the agent ends.
#[derive(Clone, Copy, Debug)]
enum End {
    /// It delivers everything.
    Finishes,
    /// It dies at write or sync `op` of the progress file, then `Crash` happens.
    Dies(usize, Crash),
    /// It stops on purpose after request `n`.
    Stops(u64),
}

/// Agents' lives on one disk, in front of one app, one after the other.
struct Lives {
    plan: Plan,
    fake: FakeApp,
    disk: Disk,
    boot: u128,
    /// The requests a start said may go to the app once more (in doubt).
    again: std::collections::BTreeSet<u64>,
    in_doubt: u64,
}

impl Lives {
    async fn new(plan: Plan) -> Self {
        let disk = Disk::default();
        put(
            &mut disk.0.lock().unwrap().cached,
            0,
            &super::initial_progress().unwrap(),
        );
        Self {
            plan,
            fake: FakeApp::start(|_| Act::Reply(OK)).await,
            disk: disk.after(Crash::Agent),
            boot: BOOT,
            again: Default::default(),
            in_doubt: 0,
        }
    }

    /// One life, ending with `end`; whether it delivered everything.
    async fn live(&mut self, end: End) -> bool {
        if let End::Dies(op, _) = end {
            self.disk.dies_at(self.disk.ops() + op);
        }
        let until = match end {
            End::Stops(n) => n,
            _ => u64::MAX,
        };
        // The agent may die as it opens the progress, too (it syncs what it read).
        let plan = self.plan;
        let opened = ProgressFile::on(Arc::new(self.disk.clone()), false).and_then(|mut kept| {
            if let Some(after) = plan.late {
                kept.0.syncing_late(after);
            }
            Delivery::on(kept, self.boot, app_of(&self.fake), None)
        });
        let lived = match opened {
            Ok(mut delivery) => {
                delivery.promising(plan.promise);
                let progress = delivery.progress();
                // At most one promise and a half: the next is asked for when half of the
                // current one is left.
                let doubted = progress.doubted.saturating_sub(progress.answered);
                assert!(
                    doubted <= plan.promise + plan.promise / 2,
                    "{doubted} in doubt, {plan:?}"
                );
                self.again.extend(progress.answered + 1..=progress.doubted);
                if progress.writing > progress.answered {
                    self.again.insert(progress.writing);
                }
                let applied = apply(&mut delivery, plan, until).await;
                if let End::Stops(_) = end {
                    delivery.stopper().stop().unwrap();
                }
                self.in_doubt = delivery.progress().in_doubt;
                applied.map(|()| delivery.progress().requests == ENTRIES * PER_ENTRY)
            }
            Err(error) => Err(error),
        };
        match end {
            // Fewer steps were left than that: it did not die.
            End::Dies(_, _) if lived.is_ok() => {
                self.disk.0.lock().unwrap().dies_at = None;
                lived.unwrap()
            }
            End::Dies(_, crash) => {
                self.disk = self.disk.after(crash);
                if !matches!(crash, Crash::Agent) {
                    self.boot += 1;
                }
                false
            }
            End::Stops(_) => {
                self.disk = self.disk.after(Crash::Agent);
                lived.unwrap()
            }
            End::Finishes => lived.unwrap(),
        }
    }

    /// Checks what the app received: every request but those of the snapshot installed (none
    /// of those), and more than once only what a start said was in doubt, each time counted.
    fn check(&self, what: &str) -> usize {
        let mut received = BTreeMap::<u64, usize>::new();
        for seen in self.fake.seen() {
            *received.entry(seen.index).or_default() += 1;
        }
        let what = format!(
            "{what}, {:?}: received {received:?}, in doubt {:?}",
            self.plan, self.again
        );
        let installed = self.plan.install.map_or(0..=0, |entry| {
            (entry - 1) * PER_ENTRY + 1..=entry * PER_ENTRY
        });
        for seq in 1..=ENTRIES * PER_ENTRY {
            if installed.contains(&seq) {
                assert!(
                    !received.contains_key(&seq),
                    "request {seq} delivered; {what}"
                );
            } else {
                assert!(received.contains_key(&seq), "request {seq} skipped; {what}");
            }
        }
        let mut repeats = 0;
        for (seq, n) in &received {
            if *n > 1 {
                assert!(self.again.contains(seq), "request {seq} repeated; {what}");
                repeats += n - 1;
            }
        }
        assert!(
            repeats as u64 <= self.in_doubt,
            "{repeats} repeats counted {}; {what}",
            self.in_doubt
        );
        repeats
    }
}

/// Writes and syncs of the progress in a life that delivers everything.
async fn steps(plan: Plan) -> usize {
    let mut lives = Lives::new(plan).await;
    let before = lives.disk.ops();
    assert!(lives.live(End::Finishes).await);
    lives.check("without a crash");
    lives.disk.ops() - before
}

fn crashes(step: usize) -> impl Iterator<Item = Crash> {
    let torn = (0..16).map(move |seed| Crash::PowerLostTorn(seed * 1000 + step as u64));
    [Crash::Agent, Crash::PowerLost].into_iter().chain(torn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_at_any_step_skips_nothing_and_repeats_only_what_is_counted_in_doubt() {
    for plan in PLANS {
        crash_at_every_step(plan).await;
    }
}

/// A snapshot installed while the last promise reaches past it: the install's record promises
/// only what it installed, and the next request must not begin behind the promise before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_around_a_snapshot_install_skips_nothing_and_repeats_only_what_is_counted() {
    for late in [None, Some(0), Some(1)] {
        crash_at_every_step(Plan {
            promise: 8,
            late,
            install: Some(2),
        })
        .await;
    }
}

async fn crash_at_every_step(plan: Plan) {
    let steps = steps(plan).await;
    assert!(steps > 10, "{steps} steps");
    let mut repeated_somewhere = false;
    for step in 1..=steps {
        for crash in crashes(step) {
            let mut lives = Lives::new(plan).await;
            assert!(!lives.live(End::Dies(step, crash)).await);
            assert!(lives.live(End::Finishes).await);
            let repeats = lives.check(&format!("died at step {step}, {crash:?}"));
            repeated_somewhere |= repeats > 0;
            if let Crash::Agent = crash {
                // The agent's own crash loses no write: at most the request being written is in
                // doubt.
                assert!(lives.in_doubt <= 1, "{}", lives.in_doubt);
            }
        }
    }
    assert!(
        repeated_somewhere,
        "some crash left a request in doubt ({plan:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_planned_stop_a_crash_at_any_step_repeats_only_what_is_counted() {
    let plan = PLANS[2];
    let steps = steps(plan).await;
    for stopped_after in 0..ENTRIES * PER_ENTRY {
        for step in 1..=steps {
            for crash in crashes(step).take(4) {
                let mut lives = Lives::new(plan).await;
                assert!(!lives.live(End::Stops(stopped_after)).await);
                if !lives.live(End::Dies(step, crash)).await {
                    assert!(lives.live(End::Finishes).await);
                }
                lives.check(&format!(
                    "stopped after {stopped_after}, died at step {step}, {crash:?}"
                ));
            }
        }
    }
}
