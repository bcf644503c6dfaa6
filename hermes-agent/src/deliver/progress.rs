//! What delivery persists besides the Raft log: how far requests have gone to the app.
//!
//! Kept in three slots, each record with a sequence number and a checksum. A record written
//! without a sync goes to the slot that holds neither the last synced record nor the one written
//! last; while a sync is under way, to the one that holds neither the last synced record nor the
//! one being synced. So neither a torn write nor a write-back of part of them can destroy the
//! record a crash falls back to; the newest whole record is the one read. Most records are written
//! with `pwrite` alone: a page-cache write survives the agent's own crash (kill -9). A machine
//! crash (a power loss) loses what was only in the page cache, so before the first byte of a
//! request goes to the app, a durable record must promise "requests up to D may have begun",
//! for a run of requests ahead ([`super::PROMISED`]); the next promise is synced by a thread of
//! its own while the current one still covers what is delivered, so that delivery does not
//! wait for the disk. After a restart of the machine (the kernel's boot id changed), what was
//! written after the last sync may be gone: the requests after the last one known written, up
//! to D, are in doubt. A planned stop syncs a last record that says exactly how far delivery
//! got.
use std::{
    fs::File,
    os::unix::fs::FileExt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
};

use serde::{Deserialize, Serialize};

use super::digests::fnv1a;
use crate::order::{
    log_store::{decode, encode},
    typ::LogId,
};

/// Bytes of one record at most.
const RECORD: usize = 256;
/// Bytes from one slot to the next: a page, and a file system block, of its own each, so that
/// a write torn by a power loss garbles no other slot (a device writes back a block whole or
/// not at all, not a part of it with a part of its neighbour's).
const SLOT: usize = 4096;
/// Slots in the file.
const SLOTS: usize = 3;

/// How far delivery has come. Requests are numbered in log order (the same on every replica):
/// `seq` below is such a number.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    /// The last entry whose requests were all handled.
    pub applied: Option<LogId>,
    /// The `seq` of the last request of the entries up to `applied`.
    pub requests: u64,
    /// The request whose first byte may have gone to the app: `written` or `written + 1`.
    pub writing: u64,
    /// The last request the app certainly has: its last byte went to the app, or the app
    /// answered it (or it was recognised as a duplicate and not sent). Not sent again, but for
    /// `doubted`.
    pub written: u64,
    /// The last request whose outcome is known (its answer was read, or it has none).
    pub answered: u64,
    /// Requests delivered to the app, duplicates not counted.
    pub deliveries: u64,
    /// Requests sent once more because Hermes could not tell whether the app had them.
    pub in_doubt: u64,
    /// The requests after `answered` up to this one are in doubt: each is sent once more.
    pub doubted: u64,
    /// Requests written before the agent stopped whose answer it never read: if the app stopped
    /// with it, it may not have run them.
    pub unconfirmed: u64,
    /// A snapshot is being installed: the app's state may be half restored.
    pub installing: bool,
    /// No request after this one has begun going to the app: synced before one does.
    pub durable_through: u64,
    /// The kernel's boot id when this record was written.
    pub boot: u128,
    /// Written, and synced, by a planned stop: nothing after `writing` began.
    pub stopped: bool,
}

/// Where the record lives: a file, or, in tests, one that can lose what was not synced.
pub trait Storage: Send + Sync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Makes what was written durable.
    fn sync(&self) -> std::io::Result<()>;
}

impl Storage for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// The file that holds [`Progress`].
pub struct ProgressFile {
    storage: Arc<dyn Storage>,
    seq: u64,
    /// The slot of the last record synced: not written again until another one is.
    synced: usize,
    /// The slot written last.
    written: usize,
    /// Requests up to this one may begin: a durable record promises no more.
    durable: u64,
    /// The sync of a record promising more, asked for and not known done yet.
    syncing: Option<Syncing>,
    /// Where syncs run away from the caller; `None`: on the caller's thread, when asked.
    background: Option<Background>,
    /// The last record written.
    last: Progress,
    /// A planned stop recorded it: every later record says so too.
    stopped: bool,
    /// Whether records meant to survive a machine crash are synced (`--no-progress-sync`).
    sync: bool,
}

/// A record's sync under way.
#[derive(Debug, Clone, Copy)]
struct Syncing {
    generation: u64,
    /// Where the record is: not written again until it is synced.
    slot: usize,
    /// What it promises.
    promise: u64,
}

/// Where the syncs asked for run, so that a promise is durable before the requests it covers
/// come, without their delivery waiting for the disk.
enum Background {
    /// A thread of its own.
    Thread(SyncThread),
    /// The caller's thread, `after` polls past the ask: a sync that ends late, at a point tests
    /// choose.
    #[cfg(test)]
    Late {
        storage: Arc<dyn Storage>,
        after: u32,
        left: Option<u32>,
    },
}

/// A thread that syncs the storage when asked.
struct SyncThread {
    ask: mpsc::Sender<u64>,
    /// The last sync asked for that is done, and whether one failed.
    done: Arc<(AtomicU64, AtomicBool)>,
    asked: u64,
}

impl SyncThread {
    fn start(storage: Arc<dyn Storage>) -> std::io::Result<Self> {
        let (ask, asks) = mpsc::channel::<u64>();
        let done = Arc::new((AtomicU64::new(0), AtomicBool::new(false)));
        let report = Arc::clone(&done);
        std::thread::Builder::new()
            .name("hermes-progress-sync".into())
            .spawn(move || {
                while let Ok(generation) = asks.recv() {
                    if storage.sync().is_err() {
                        report.1.store(true, Ordering::Release);
                    }
                    report.0.store(generation, Ordering::Release);
                }
            })?;
        Ok(Self {
            ask,
            done,
            asked: 0,
        })
    }
}

impl Background {
    /// Asks for a sync; returns its generation.
    fn ask(&mut self) -> std::io::Result<u64> {
        match self {
            Self::Thread(thread) => {
                thread.asked += 1;
                thread
                    .ask
                    .send(thread.asked)
                    .map_err(|_| std::io::Error::other("the progress's sync thread stopped"))?;
                Ok(thread.asked)
            }
            #[cfg(test)]
            Self::Late { after, left, .. } => {
                *left = Some(*after);
                Ok(0)
            }
        }
    }

    /// Whether sync `generation` is done; an error if a sync failed (then nothing it was
    /// to make durable is).
    fn done(&mut self, generation: u64) -> std::io::Result<bool> {
        match self {
            Self::Thread(thread) => {
                // The thread stores a failure before the generation it failed: read in the
                // other order, a sync seen done is seen failed if it failed.
                let done = thread.done.0.load(Ordering::Acquire) >= generation;
                if thread.done.1.load(Ordering::Acquire) {
                    return Err(std::io::Error::other(
                        "syncing the delivery progress failed",
                    ));
                }
                Ok(done)
            }
            #[cfg(test)]
            Self::Late { storage, left, .. } => match left {
                Some(0) => {
                    *left = None;
                    storage.sync().map(|()| true)
                }
                Some(n) => {
                    *n -= 1;
                    Ok(false)
                }
                None => Ok(false),
            },
        }
    }
}

impl std::fmt::Debug for ProgressFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressFile")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl ProgressFile {
    /// Opens the progress kept in `file`, opened to read and write (by
    /// [`crate::data_dir::DataDir::open_file`]: never by a path); an empty file holds none yet.
    pub fn open(file: File) -> std::io::Result<(Self, Progress)> {
        let len = file.metadata()?.len();
        // In this layout a file ends where a slot or a record in one does; one that does not is
        // of another layout (an earlier version's slots were 256 bytes apart), whose records
        // are not where these are read.
        let tail = len % SLOT as u64;
        if len > (SLOTS * SLOT) as u64 || (tail != 0 && tail != RECORD as u64) {
            return Err(std::io::Error::other(format!(
                "the delivery progress file holds {len} bytes, which is not this version's \
                 layout (slots {SLOT} bytes apart): reading it could send requests twice"
            )));
        }
        let empty = len == 0;
        let storage: Arc<dyn Storage> = Arc::new(file);
        let background = Background::Thread(SyncThread::start(Arc::clone(&storage))?);
        let (mut this, progress) = Self::on(storage, empty)?;
        this.background = Some(background);
        Ok((this, progress))
    }

    /// Opens the progress kept in `storage`; `empty`: it was just made, and holds nothing.
    /// Syncs run on the caller's thread (as tests need them to).
    pub fn on(storage: Arc<dyn Storage>, empty: bool) -> std::io::Result<(Self, Progress)> {
        let mut this = Self {
            storage,
            seq: 0,
            synced: 0,
            written: 0,
            durable: 0,
            syncing: None,
            background: None,
            last: Progress::default(),
            stopped: false,
            sync: true,
        };
        if empty {
            // A first record, synced: from now on the file always holds one that can be read.
            let progress = Progress::default();
            this.write_synced(&progress)?;
            return Ok((this, progress));
        }
        let (slot, seq, progress) = this.best().ok_or_else(|| {
            std::io::Error::other(
                "the delivery progress cannot be read (none of its records is whole): \
                 delivering from it could send requests twice",
            )
        })?;
        // What is read is made durable: from now on it is the last synced record.
        this.storage.sync()?;
        (this.seq, this.synced, this.written) = (seq, slot, slot);
        this.last = progress.clone();
        Ok((this, progress))
    }

    /// The newest whole record: its slot, sequence number and progress.
    fn best(&self) -> Option<(usize, u64, Progress)> {
        (0..SLOTS)
            .filter_map(|slot| {
                let mut buf = [0u8; RECORD];
                self.storage
                    .read_exact_at(&mut buf, (slot * SLOT) as u64)
                    .ok()?;
                let len = u16::from_le_bytes([buf[0], buf[1]]) as usize;
                let body = buf.get(2..2 + len)?;
                let sum = buf.get(2 + len..10 + len)?;
                (fnv1a(&[body]).to_le_bytes() == sum).then_some(())?;
                let (seq, progress) = decode::<(u64, Progress)>(body).ok()?;
                Some((slot, seq, progress))
            })
            .max_by_key(|(_, seq, _)| *seq)
    }

    /// Writes `progress`; it survives the agent's crash, not the machine's.
    pub fn write(&mut self, progress: &Progress) -> std::io::Result<()> {
        self.seq += 1;
        self.last = Progress {
            stopped: self.stopped,
            ..progress.clone()
        };
        let buf = slot(self.seq, &self.last)?;
        // Not the last synced record's slot; and not the one written last (which holds the
        // newest record, should this write be torn), or, while a record's sync is under way,
        // not that one's.
        let spared = self.syncing.map_or(self.written, |syncing| syncing.slot);
        let slot = (0..SLOTS)
            .find(|slot| *slot != self.synced && *slot != spared)
            .expect("three slots");
        self.storage.write_all_at(&buf, (slot * SLOT) as u64)?;
        self.written = slot;
        Ok(())
    }

    /// Writes `progress` and makes it durable: it survives a machine crash.
    pub fn write_synced(&mut self, progress: &Progress) -> std::io::Result<()> {
        self.write(progress)?;
        if self.sync {
            self.storage.sync()?;
            self.synced = self.written;
            // What it promises, and no more: a record may promise less than the one before
            // (a snapshot installed, a planned stop), and it is now the one read after a crash.
            self.durable = progress.durable_through;
            // It supersedes whatever was under way.
            self.syncing = None;
        }
        Ok(())
    }

    /// Records in `progress`, right before the first byte of request `seq` goes to the app,
    /// that it may have begun. A record promising that no request after `durable_through` has
    /// begun must be durable first: if none covers `seq` yet (or if `sync`: what is recorded
    /// must survive a machine crash), this one is written and synced at once, promising the
    /// next `promise` requests; otherwise it is written, and the next promise is made durable
    /// in the background before it is needed.
    pub fn begin(
        &mut self,
        progress: &mut Progress,
        seq: u64,
        promise: u64,
        sync: bool,
    ) -> std::io::Result<()> {
        if self.stopped {
            return Err(std::io::Error::other(
                "a planned stop was recorded: no request may begin after it",
            ));
        }
        let promise = promise.max(1);
        progress.writing = seq;
        if !self.sync {
            // Promised all the same, unsynced: should the record survive a power loss, what
            // it promises is counted in doubt.
            progress.durable_through = progress
                .durable_through
                .max(seq.saturating_add(promise - 1));
            return self.write(progress);
        }
        self.poll()?;
        self.promise(progress, seq, promise, sync)?;
        debug_assert!(
            seq <= self.durable,
            "request {seq} began past the durable promise"
        );
        Ok(())
    }

    /// Writes `progress` behind a durable promise that covers `seq` (see [`Self::begin`]).
    fn promise(
        &mut self,
        progress: &mut Progress,
        seq: u64,
        promise: u64,
        sync: bool,
    ) -> std::io::Result<()> {
        if sync || seq > self.durable {
            let promised = seq.saturating_add(promise - 1);
            progress.durable_through = progress.durable_through.max(promised);
            return self.write_synced(progress);
        }
        if self.syncing.is_some() || seq.saturating_add(promise / 2) <= self.durable {
            return self.write(progress);
        }
        progress.durable_through = progress
            .durable_through
            .max(self.durable.saturating_add(promise));
        if self.background.is_none() {
            return self.write_synced(progress);
        }
        // Written first, then its sync asked for: a sync that began before the write would not
        // make it durable.
        self.write(progress)?;
        let generation = self.background.as_mut().expect("checked").ask()?;
        self.syncing = Some(Syncing {
            generation,
            slot: self.written,
            promise: progress.durable_through,
        });
        Ok(())
    }

    /// Takes note of a sync done in the background.
    fn poll(&mut self) -> std::io::Result<()> {
        let Some(background) = &mut self.background else {
            return Ok(());
        };
        // A failed sync is reported whether or not its promise is still awaited.
        let done = background.done(self.syncing.map_or(0, |syncing| syncing.generation))?;
        let Some(syncing) = self.syncing.filter(|_| done) else {
            return Ok(());
        };
        self.synced = syncing.slot;
        self.durable = self.durable.max(syncing.promise);
        self.syncing = None;
        Ok(())
    }

    /// Syncs what is asked in the background `after` polls past the ask, on the caller's thread:
    /// a sync that ends late, deterministically.
    #[cfg(test)]
    pub(crate) fn syncing_late(&mut self, after: u32) {
        self.background = Some(Background::Late {
            storage: Arc::clone(&self.storage),
            after,
            left: None,
        });
    }

    /// Syncs nothing from now on: after a machine crash, requests may be delivered again
    /// without being counted in doubt (`--no-progress-sync`).
    pub fn without_syncs(&mut self) {
        self.sync = false;
        // Its thread ends with it.
        self.background = None;
    }

    /// Records a planned stop: nothing after the last record's `writing` has begun, nor will,
    /// and after a restart of the machine that record is exact.
    pub fn stop(&mut self) -> std::io::Result<()> {
        self.stopped = true;
        let last = Progress {
            durable_through: self.last.writing.max(self.last.written),
            ..self.last.clone()
        };
        self.write_synced(&last)
    }
}

/// The content of a new progress file: no progress. Made whole before it is in the directory
/// (renamed there): a file that holds no whole record is never taken for one that holds none.
pub fn initial() -> std::io::Result<Vec<u8>> {
    let mut file = vec![0; SLOTS * SLOT];
    file[..RECORD].copy_from_slice(&slot(1, &Progress::default())?);
    Ok(file)
}

/// Record number `seq`, `progress`, as a slot holds it: its length, its bytes, their checksum.
fn slot(seq: u64, progress: &Progress) -> std::io::Result<[u8; RECORD]> {
    let body = encode(&(seq, progress))?;
    if body.len() + 10 > RECORD {
        return Err(std::io::Error::other("progress record too large"));
    }
    let mut buf = [0u8; RECORD];
    buf[..2].copy_from_slice(&(body.len() as u16).to_le_bytes());
    buf[2..2 + body.len()].copy_from_slice(&body);
    buf[2 + body.len()..10 + body.len()].copy_from_slice(&fnv1a(&[&body]).to_le_bytes());
    Ok(buf)
}

/// The kernel's boot id: it changes when the machine restarts.
pub fn boot_id() -> std::io::Result<u128> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    u128::from_str_radix(&hex, 16)
        .map_err(|_| std::io::Error::other(format!("cannot read the boot id `{}`", text.trim())))
}

/// The progress file in directory `dir`, for tests.
#[cfg(test)]
pub(crate) fn file_in(dir: &std::path::Path) -> File {
    let dir = crate::data_dir::DataDir::create(dir).unwrap();
    dir.open_file("progress").unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let open = || ProgressFile::open(file_in(dir.path()));
        let (mut file, progress) = open().unwrap();
        assert_eq!(progress, Progress::default());
        let largest = Progress {
            applied: Some(LogId::new(
                openraft::CommittedLeaderId::new(u64::MAX, u64::MAX),
                u64::MAX,
            )),
            requests: u64::MAX,
            writing: u64::MAX,
            written: u64::MAX,
            answered: u64::MAX,
            deliveries: u64::MAX,
            in_doubt: u64::MAX,
            doubted: u64::MAX,
            unconfirmed: u64::MAX,
            installing: true,
            durable_through: u64::MAX,
            boot: u128::MAX,
            stopped: false,
        };
        let second = Progress {
            deliveries: 2,
            ..Progress::default()
        };
        file.write_synced(&largest).unwrap();
        let (synced, largest_at) = (file.synced, file.written);
        file.write(&second).unwrap();
        file.write(&Progress::default()).unwrap();
        file.write(&second).unwrap();
        assert_eq!(
            file.synced, synced,
            "records since the sync left its slot alone"
        );
        assert_ne!(file.written, synced);
        assert_eq!(open().unwrap().1, second);
        // Tear the newest slot: the previous record is what remains.
        let tear = |slot: usize| {
            Storage::write_all_at(&*file.storage, &[0x5a; 8], (slot * SLOT) as u64 + 4).unwrap()
        };
        tear(file.written);
        assert_eq!(open().unwrap().1, Progress::default());
        // And the other unsynced one: the synced record remains.
        tear(
            (0..SLOTS)
                .find(|s| *s != file.written && *s != synced)
                .unwrap(),
        );
        assert_eq!(largest_at, synced);
        assert_eq!(open().unwrap().1, largest);
        // All torn: refused, never taken for no progress at all.
        tear(synced);
        assert!(open().is_err());
    }

    #[test]
    fn a_file_of_another_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(dir.path());
        // An earlier version's three slots, 256 bytes apart, the newest record in the last:
        // read at this layout's offsets, only the oldest would be found.
        FileExt::write_all_at(&file, &slot(1, &Progress::default()).unwrap(), 0).unwrap();
        let newest = Progress {
            written: 9,
            ..Progress::default()
        };
        FileExt::write_all_at(&file, &slot(3, &newest).unwrap(), 512).unwrap();
        let error = ProgressFile::open(file).unwrap_err();
        assert!(error.to_string().contains("layout"), "{error}");
    }

    #[test]
    fn the_boot_id_is_read() {
        assert_eq!(boot_id().unwrap(), boot_id().unwrap());
    }

    /// Storage whose syncs wait until the test lets them go, and which records where each
    /// write went.
    #[derive(Default)]
    struct Held {
        bytes: std::sync::Mutex<Vec<u8>>,
        slots: std::sync::Mutex<Vec<usize>>,
        gate: std::sync::Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl Storage for Held {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let bytes = self.bytes.lock().unwrap();
            let at = offset as usize;
            buf.copy_from_slice(
                bytes
                    .get(at..at + buf.len())
                    .ok_or(std::io::ErrorKind::UnexpectedEof)?,
            );
            Ok(())
        }

        fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            let mut bytes = self.bytes.lock().unwrap();
            let at = offset as usize;
            let len = bytes.len().max(at + buf.len());
            bytes.resize(len, 0);
            bytes[at..at + buf.len()].copy_from_slice(buf);
            self.slots.lock().unwrap().push(at / SLOT);
            Ok(())
        }

        fn sync(&self) -> std::io::Result<()> {
            if let Some(gate) = &*self.gate.lock().unwrap() {
                let _ = gate.recv();
            }
            Ok(())
        }
    }

    #[test]
    fn while_a_promise_is_synced_in_the_background_neither_it_nor_the_last_synced_is_written() {
        let held = Arc::new(Held::default());
        let (mut file, mut progress) = ProgressFile::on(held.clone(), true).unwrap();
        let (release, gate) = mpsc::channel();
        *held.gate.lock().unwrap() = Some(gate);
        file.background = Some(Background::Thread(SyncThread::start(held.clone()).unwrap()));
        // Request 1: no promise covers it, one is made at once (the gate is open for it).
        release.send(()).unwrap();
        file.begin(&mut progress, 1, 4, false).unwrap();
        assert_eq!(file.durable, 4);
        let synced = file.synced;
        // Request 3: past half the promise, the next is written and synced in the background,
        // held at the gate.
        file.begin(&mut progress, 3, 4, false).unwrap();
        let in_flight = file.syncing.expect("a sync under way").slot;
        assert_ne!(in_flight, synced);
        held.slots.lock().unwrap().clear();
        for _ in 0..5 {
            file.write(&progress).unwrap();
        }
        let slots = held.slots.lock().unwrap().clone();
        assert!(
            slots
                .iter()
                .all(|slot| *slot != synced && *slot != in_flight),
            "{slots:?}, synced {synced}, in flight {in_flight}"
        );
        // Let go: once it is known done, its record is the last synced one.
        release.send(()).unwrap();
        while file.syncing.is_some() {
            file.poll().unwrap();
            std::thread::yield_now();
        }
        assert_eq!((file.synced, file.durable), (in_flight, 8));
    }

    #[test]
    fn a_synced_record_that_promises_less_lowers_the_promise() {
        let (mut file, mut progress) = ProgressFile::on(Arc::new(Held::default()), true).unwrap();
        file.begin(&mut progress, 1, 100, false).unwrap();
        assert_eq!(file.durable, 100);
        // A snapshot installed up to request 10: its synced record promises no more.
        progress = Progress {
            writing: 10,
            written: 10,
            answered: 10,
            durable_through: 10,
            ..progress
        };
        file.write_synced(&progress).unwrap();
        assert_eq!(file.durable, 10);
        // Request 11 needs a promise of its own, synced before it begins.
        file.begin(&mut progress, 11, 100, false).unwrap();
        assert_eq!((file.durable, progress.durable_through), (110, 110));
        assert_eq!(file.best().unwrap().2.durable_through, 110);
    }

    #[test]
    fn without_syncs_records_still_promise_what_may_have_begun() {
        let (mut file, mut progress) = ProgressFile::on(Arc::new(Held::default()), true).unwrap();
        file.without_syncs();
        file.begin(&mut progress, 1, 4, false).unwrap();
        file.begin(&mut progress, 5, 4, false).unwrap();
        // Should such a record survive a power loss, requests up to 8 are counted in doubt.
        assert_eq!(file.best().unwrap().2.durable_through, 8);
    }

    #[test]
    fn after_a_planned_stop_no_request_begins() {
        let (mut file, mut progress) = ProgressFile::on(Arc::new(Held::default()), true).unwrap();
        file.begin(&mut progress, 1, 4, false).unwrap();
        file.stop().unwrap();
        assert!(file.begin(&mut progress, 2, 4, false).is_err());
        let (_, _, last) = file.best().unwrap();
        assert!(last.stopped);
        assert_eq!(last.durable_through, 1);
    }

    /// Storage whose syncs fail.
    struct Failing;

    impl Storage for Failing {
        fn read_exact_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }

        fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }

        fn sync(&self) -> std::io::Result<()> {
            Err(std::io::Error::other("the disk is gone"))
        }
    }

    #[test]
    fn a_failed_background_sync_stops_delivery_even_once_overtaken() {
        let (mut file, mut progress) = ProgressFile::on(Arc::new(Held::default()), true).unwrap();
        let failing = Arc::new(Failing);
        file.storage = failing.clone();
        file.durable = 8;
        file.background = Some(Background::Thread(SyncThread::start(failing).unwrap()));
        // Past half the promise: a sync is asked for in the background, and fails.
        file.begin(&mut progress, 5, 8, false).unwrap();
        let Background::Thread(thread) = file.background.as_ref().unwrap() else {
            unreachable!()
        };
        while thread.done.0.load(Ordering::Acquire) < 1 {
            std::thread::yield_now();
        }
        // Whatever was awaited, the failure is reported.
        file.syncing = None;
        assert!(file.begin(&mut progress, 6, 8, false).is_err());
    }
}
