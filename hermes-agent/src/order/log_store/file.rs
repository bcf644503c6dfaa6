//! The log's file: records appended, each framed by its length and a checksum. An entry is
//! written once, as it was encoded; a truncation, a vote, the commit index and a purge are
//! records too, so the file is only ever appended to, and reading it from the start rebuilds the
//! log: where each entry's bytes are, the vote, the commit index, how far the log was purged.
//!
//! - Zeros are written and synced ahead of the records, some [`GROW`] bytes at a time, by the
//!   writer between two writes and without holding the file ([`Growth`]), so that a record's
//!   `fdatasync` writes its own bytes and nothing else: no block to allocate, no size or inode
//!   to write. Here an append of 10 KB and its `fdatasync` cost 136-152 µs and 50-59 µs of CPU
//!   into zeros written before, 203-263 µs and 77-98 µs into a hole (a redb commit of a 1.5 KiB
//!   entry 280 µs and 140 µs). Every byte of the log is written twice (the zeros, then the
//!   record), which costs little next to the syncs. A write that finds no zeros ahead of it (a
//!   batch larger than them, or the zeros could not be written: a disk nearly full) makes the
//!   file longer by a hole, as before. The records end where the zeros begin (no record has a
//!   length of zero).
//! - A crash may leave the last records written in part (a torn write): the pages that reached
//!   the disk hold what was written, the others still read as zeros. Reading stops at the first
//!   record whose length or checksum is wrong. If a part of it that lies in one 512-byte sector
//!   is all zeros, it is a torn write: the file is cut there before anything else is written,
//!   so that no record written later can ever be followed by an older one that survived the
//!   tear. Otherwise the log is damaged (a bit changed on the disk), and the node refuses it
//!   rather than cut away what it acknowledged; so too a record longer than the file (a tear
//!   only leaves zeros: it never makes a length longer). Damage that cannot be told from a tear
//!   is taken for one (as etcd does): a whole sector of zeros in a record, or a length made
//!   longer, but not beyond the file, in one of the last records.
//! - An entry is no longer than `--max-frame` (no peer could send or take a longer one): a file
//!   whose log holds a longer one is refused at start, so that reading an entry never allocates
//!   what the file says (a data directory on a volume that a pod writes, in pod mode).
//! - What reading found is synced before the log is used: records written, but not synced,
//!   before the agent was killed are in the page cache, and a power loss could still take them.
//! - A purge only records how far the log was purged. Once the purged part is larger than
//!   [`COMPACT`] and than what is left, the writer writes the file anew with what is left,
//!   atomically ([`DataDir::replace_with`]), after it acknowledged the purge.
//! - After a failed write or sync the file is cut back to where that write began, and takes no
//!   more: what reached the disk is unknown.
//!
//! Where each entry's bytes are is kept in memory, 16 bytes an entry: a read goes straight to an
//! entry's bytes.
use std::{
    collections::VecDeque,
    fs::File,
    io::{self, BufReader, BufWriter, Read as _, Write as _},
    ops::{Bound, RangeBounds},
    os::unix::fs::FileExt,
    sync::Arc,
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::{decode, encode};
use crate::{
    data_dir::DataDir,
    order::typ::{Entry, LogId, Vote},
};

/// The log's file in the data directory.
pub const FILE: &str = "raft.log";
/// Locked (`flock`) while a process has the log open.
pub const LOCK: &str = "raft.lock";
/// The log of an older Hermes (redb), which this one does not read.
pub const OLD_FILE: &str = "log.redb";
/// What a second process that opens the log is told.
pub const ALREADY_OPEN: &str = "the Raft log is open in another process";
/// What the entries are made of. 2: batches carry their floor, HTTP requests their client
/// connection; 3: an entry holds the batches of several nodes.
pub const FORMAT_VERSION: u32 = 3;

/// Once fewer than half of this are left, zeros are written ahead of the records up to the next
/// multiple of it (8 MiB in about 8 ms here); and the step by which a write that finds no zeros
/// makes the file longer.
const GROW: u64 = 8 << 20;
/// Zeros to write ahead, a piece at a time.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// Purged bytes that make it worth writing the file anew.
const COMPACT: u64 = 64 << 20;
/// A record's length and checksum.
const HEADER: u64 = 8;
/// Bytes of a record other than an entry at most (a vote, a log id): reading the file at start
/// allocates no more per record, whatever its lengths say.
const SMALL: usize = 4096;
/// A file system block.
const BLOCK: u64 = 4096;
/// What a torn write leaves whole or zero: a disk sector.
const SECTOR: u64 = 512;

const FORMAT: u8 = 1;
const ENTRY: u8 = 2;
const TRUNCATE: u8 = 3;
const VOTE: u8 = 4;
const COMMITTED: u8 = 5;
const PURGED: u8 = 6;

/// What a record says.
#[derive(Debug, PartialEq)]
pub enum Record<'a> {
    /// The first record of a file: [`FORMAT_VERSION`].
    Format(u32),
    /// An entry, encoded.
    Entry {
        index: u64,
        bytes: &'a [u8],
    },
    /// The entries from this index on are gone.
    Truncate(u64),
    Vote(Vote),
    Committed(Option<LogId>),
    /// The entries up to this one are gone.
    Purged(LogId),
}

impl Record<'_> {
    /// Appends the record, framed, to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        let start = buf.len();
        buf.extend_from_slice(&[0; HEADER as usize]);
        match self {
            Self::Format(version) => {
                buf.push(FORMAT);
                buf.extend_from_slice(&version.to_le_bytes());
            }
            Self::Entry { index, bytes } => {
                buf.push(ENTRY);
                buf.extend_from_slice(&index.to_le_bytes());
                buf.extend_from_slice(bytes);
            }
            Self::Truncate(from) => {
                buf.push(TRUNCATE);
                buf.extend_from_slice(&from.to_le_bytes());
            }
            Self::Vote(vote) => {
                buf.push(VOTE);
                buf.extend_from_slice(&encode(vote)?);
            }
            Self::Committed(committed) => {
                buf.push(COMMITTED);
                buf.extend_from_slice(&encode(committed)?);
            }
            Self::Purged(upto) => {
                buf.push(PURGED);
                buf.extend_from_slice(&encode(upto)?);
            }
        }
        let body = &buf[start + HEADER as usize..];
        let len = u32::try_from(body.len())
            .map_err(|_| io::Error::other("a log record of 4 GiB or more"))?;
        let sum = checksum(len, body);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }

    /// The record whose body (after its length and checksum) is `body`.
    fn decode(body: &[u8]) -> io::Result<Record<'_>> {
        let damaged = || {
            io::Error::other(format!(
                "a log record of kind {:?} is damaged",
                body.first()
            ))
        };
        let (&kind, rest) = body.split_first().ok_or_else(damaged)?;
        let number = |bytes: &[u8]| -> io::Result<u64> {
            let bytes = bytes.get(..8).ok_or_else(damaged)?;
            Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
        };
        Ok(match kind {
            FORMAT => Record::Format(u32::from_le_bytes(rest.try_into().map_err(|_| damaged())?)),
            ENTRY => Record::Entry {
                index: number(rest)?,
                bytes: rest.get(8..).unwrap_or_default(),
            },
            TRUNCATE => Record::Truncate(number(rest)?),
            VOTE => Record::Vote(decode(rest)?),
            COMMITTED => Record::Committed(decode(rest)?),
            PURGED => Record::Purged(decode(rest)?),
            _ => return Err(damaged()),
        })
    }
}

fn checksum(len: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;

/// Which entries the log holds: what a record may follow.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shape {
    /// The index of the first entry held.
    first: u64,
    /// Entries held.
    len: u64,
    purged: Option<u64>,
}

impl Shape {
    /// The shape after `record`; an error if it cannot follow.
    fn after(mut self, record: &Record) -> io::Result<Self> {
        match *record {
            Record::Entry { index, .. } => {
                if index >= u64::MAX - 1 {
                    return Err(io::Error::other(format!("an entry of index {index}")));
                }
                // An entry the purge covers is in the snapshot already (openraft's storage
                // suite appends such entries; a node never does).
                if self.purged.is_some_and(|purged| index <= purged) {
                    return Ok(self);
                }
                // An entry in place of one held replaces it and those after it.
                self.len = self.len.min(index.saturating_sub(self.first));
                let expected = match self.len {
                    0 => self.purged.map(|purged| purged + 1),
                    n => Some(self.first + n),
                };
                if let Some(expected) = expected
                    && index != expected
                {
                    return Err(io::Error::other(format!(
                        "entry {index} where entry {expected} was expected"
                    )));
                }
                if self.len == 0 {
                    self.first = index;
                }
                self.len += 1;
            }
            Record::Truncate(from) => self.len = self.len.min(from.saturating_sub(self.first)),
            Record::Purged(upto) => {
                if upto.index >= u64::MAX - 1 {
                    return Err(io::Error::other(format!("a purge up to {}", upto.index)));
                }
                self.purged = Some(upto.index);
                let gone = (upto.index + 1).saturating_sub(self.first).min(self.len);
                (self.first, self.len) = (self.first + gone, self.len - gone);
            }
            Record::Format(_) | Record::Vote(_) | Record::Committed(_) => {}
        }
        Ok(self)
    }
}

/// Where an entry's encoded bytes are in the file.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    offset: u64,
    len: u32,
}

/// The open log file and what reading it found.
pub struct Disk {
    dir: DataDir,
    file: Arc<File>,
    _lock: Flock<File>,
    /// Where the next record goes.
    end: u64,
    /// The file's length: [`Self::end`] and zeros after it.
    len: u64,
    /// Where the zeros written ahead of the records end (after it, up to `len`, perhaps a hole).
    zeroed: u64,
    /// The disk had no room for the zeros: not tried again until the file is written anew.
    cannot_zero: bool,
    /// The index of `places[0]`.
    first: u64,
    places: VecDeque<Place>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    /// Purged bytes that make it worth writing the file anew: [`COMPACT`], less in tests.
    compact: u64,
    /// Bytes of one entry at most (`--max-frame`: no peer could send or take a longer one), so
    /// that reading an entry allocates no more than that, whatever the file says.
    max_entry: u64,
    /// Why nothing more is written.
    failed: Option<String>,
}

impl Disk {
    /// Opens the log in `dir`, made if missing, and reads it; refused while another process
    /// has it open, or if an entry the log holds is longer than `max_entry` bytes.
    pub fn open(dir: &DataDir, max_entry: u64) -> io::Result<Self> {
        let lock = Flock::lock(dir.open_file(LOCK)?, FlockArg::LockExclusiveNonblock).map_err(
            |(_, e)| match e {
                Errno::EWOULDBLOCK => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{}: {ALREADY_OPEN}", dir.path().display()),
                ),
                e => e.into(),
            },
        )?;
        if dir.contains(OLD_FILE)? {
            return Err(io::Error::other(format!(
                "{}: the Raft log was written by an older Hermes ({OLD_FILE}), which this one \
                 does not read: stop every node, let each finish delivering, then start every \
                 node on this version with empty data directories (the apps keep their state, \
                 identical on every replica); a cluster never mixes versions of the log",
                dir.path().display()
            )));
        }
        let file = dir.open_file(FILE)?;
        let len = file.metadata()?.len();
        let mut disk = Self {
            dir: dir.clone(),
            file: Arc::new(file),
            _lock: lock,
            end: 0,
            len,
            // Unknown for a file written before (its zeros may be a hole): written again.
            zeroed: 0,
            cannot_zero: false,
            first: 0,
            places: VecDeque::new(),
            vote: None,
            committed: None,
            purged: None,
            compact: COMPACT,
            max_entry,
            failed: None,
        };
        disk.replay()?;
        if disk.end == 0 {
            disk.append(&[Record::Format(FORMAT_VERSION)])?;
        }
        disk.file.sync_all()?;
        Ok(disk)
    }

    /// Reads every whole record, and cuts off a torn write after them; refuses a damaged log.
    fn replay(&mut self) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        let mut reader = BufReader::with_capacity(1 << 20, &*file);
        let mut header = [0; HEADER as usize];
        // The beginning of a record's body: all of it but for an entry's bytes.
        let (mut prefix, mut chunk) = (Vec::with_capacity(SMALL), vec![0; 64 << 10]);
        let mut offset = 0;
        while offset + HEADER <= self.len {
            reader.read_exact(&mut header)?;
            let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let sum = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            // Never more than the file holds: the length is the file's to say.
            if len == 0 || offset + HEADER + u64::from(len) > self.len {
                break;
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&len.to_le_bytes());
            prefix.clear();
            let mut left = len as usize;
            while left > 0 {
                let piece = &mut chunk[..left.min(64 << 10)];
                reader.read_exact(piece)?;
                hasher.update(piece);
                let kept = piece.len().min(SMALL - prefix.len());
                prefix.extend_from_slice(&piece[..kept]);
                left -= piece.len();
            }
            if hasher.finalize() != sum {
                break;
            }
            if prefix.len() < len as usize && prefix.first() != Some(&ENTRY) {
                return Err(self.damaged(offset, &io::Error::other("a record too long")));
            }
            let record = Record::decode(&prefix).map_err(|e| self.damaged(offset, &e))?;
            match (offset, &record) {
                (0, Record::Format(FORMAT_VERSION)) => {}
                (0, Record::Format(version)) => {
                    return Err(io::Error::other(format!(
                        "{}: the Raft log is of format {version}, which this Hermes (format \
                         {FORMAT_VERSION}) cannot read: stop every node, let each finish \
                         delivering, then start every node on this version with empty data \
                         directories (the apps keep their state, identical on every replica); \
                         a cluster never mixes formats",
                        self.dir.path().display()
                    )));
                }
                (0, _) => {
                    return Err(self.damaged(offset, &io::Error::other("no format record")));
                }
                _ => {}
            }
            self.apply(&record, offset + HEADER, len)
                .map_err(|e| self.damaged(offset, &e))?;
            offset += HEADER + u64::from(len);
        }
        self.end = offset;
        // Of the entries the log holds (not those truncated or purged since).
        let longest = (self.first..)
            .zip(&self.places)
            .find(|(_, place)| u64::from(place.len) > self.max_entry);
        if let Some((index, place)) = longest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: entry {index} of the Raft log is {} bytes long, more than --max-frame \
                     ({} bytes) lets a peer send: written with a larger --max-frame (start with \
                     that one again), or not by Hermes",
                    self.dir.path().display(),
                    place.len,
                    self.max_entry
                ),
            ));
        }
        let written = self.written_after(offset)?;
        if written == 0 {
            return Ok(());
        }
        // A record is there, but not whole: torn, or damaged. A tear only leaves zeros, so it
        // never makes a length longer.
        let len = match offset + HEADER <= self.len {
            true => u64::from(u32::from_le_bytes(self.read_array(offset)?)),
            false => 0,
        };
        let end = offset + HEADER + len;
        let why = if end > self.len {
            Some("a record longer than the file")
        } else if !self.has_zero_sector(offset, end)? {
            Some(
                "a record whose checksum is wrong, and not by a torn write (no sector of it is zeros)",
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err(self.damaged(
                offset,
                &io::Error::other(format!("{why}; not cutting it and what follows away")),
            ));
        }
        tracing::warn!(
            offset,
            bytes = written,
            "the Raft log ends in a write torn by a crash, never synced: cutting it off"
        );
        self.file.set_len(offset)?;
        self.len = offset;
        Ok(())
    }

    fn read_array<const N: usize>(&self, offset: u64) -> io::Result<[u8; N]> {
        let mut bytes = [0; N];
        self.file.read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    /// Whether, in a sector that `start..end` reaches into, everything from `start` on is zeros
    /// (a sector that never reached the disk reads as zeros to its end: nothing after `start` was
    /// written before).
    fn has_zero_sector(&self, start: u64, end: u64) -> io::Result<bool> {
        let mut sector = [0; SECTOR as usize];
        let mut at = start;
        while at < end.min(self.len) {
            let until = ((at / SECTOR + 1) * SECTOR).min(self.len);
            let part = &mut sector[..(until - at) as usize];
            self.file.read_exact_at(part, at)?;
            if part.iter().all(|b| *b == 0) {
                return Ok(true);
            }
            at = until;
        }
        Ok(false)
    }

    /// Bytes from `offset` up to the last one that is not zero.
    fn written_after(&self, offset: u64) -> io::Result<u64> {
        let mut at = offset;
        let mut last = offset;
        let mut chunk = vec![0; 1 << 20];
        let file: &File = &self.file;
        while at < self.len {
            let n = file.read_at(&mut chunk, at)?;
            if n == 0 {
                break;
            }
            if let Some(i) = chunk[..n].iter().rposition(|b| *b != 0) {
                last = at + i as u64 + 1;
            }
            at += n as u64;
        }
        Ok(last - offset)
    }

    fn damaged(&self, offset: u64, e: &io::Error) -> io::Error {
        io::Error::other(format!(
            "{}: the Raft log is damaged at byte {offset}: {e}",
            self.dir.path().display()
        ))
    }

    /// Takes what `record`, whose body of `len` bytes begins at `at`, says into the log's state.
    fn apply(&mut self, record: &Record, at: u64, len: u32) -> io::Result<()> {
        let shape = self.shape().after(record)?;
        let kept = |n: u64| usize::try_from(n).expect("entries held in memory");
        match *record {
            Record::Format(_) => {}
            Record::Entry { index, .. } if self.purged.is_some_and(|p| index <= p.index) => {}
            Record::Entry { .. } => {
                self.places.truncate(kept(shape.len - 1));
                self.places.push_back(Place {
                    offset: at + 1 + 8,
                    len: len - 1 - 8,
                });
            }
            Record::Truncate(_) => self.places.truncate(kept(shape.len)),
            Record::Vote(vote) => self.vote = Some(vote),
            Record::Committed(committed) => self.committed = committed,
            Record::Purged(upto) => {
                self.purged = Some(upto);
                self.places.drain(..self.places.len() - kept(shape.len));
            }
        }
        self.first = shape.first;
        Ok(())
    }

    fn shape(&self) -> Shape {
        Shape {
            first: self.first,
            len: self.places.len() as u64,
            purged: self.purged.map(|p| p.index),
        }
    }

    /// Writes `records` after the last one (not synced: see [`Self::file`]).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(format!(
                "the Raft log takes no more writes: {why}"
            )));
        }
        // Checked before anything is written: the file never holds what a start would refuse.
        records
            .iter()
            .try_fold(self.shape(), |shape, record| shape.after(record))?;
        for record in records {
            if let Record::Entry { index, bytes } = record
                && bytes.len() as u64 > self.max_entry
            {
                return Err(io::Error::other(format!(
                    "entry {index} is {} bytes long, more than --max-frame ({} bytes) lets a \
                     peer send: not written",
                    bytes.len(),
                    self.max_entry
                )));
            }
        }
        let mut buf = Vec::new();
        let mut starts = Vec::with_capacity(records.len());
        for record in records {
            starts.push(buf.len());
            record.encode(&mut buf)?;
        }
        let at = self.end;
        let end = at + buf.len() as u64;
        let written = (|| {
            if end > self.len {
                let len = end.next_multiple_of(GROW);
                self.file.set_len(len)?;
                self.len = len;
            }
            self.file.write_all_at(&buf, at)
        })();
        if let Err(e) = written {
            self.fail_since(at, &e);
            return Err(e);
        }
        self.end = end;
        for (record, start) in records.iter().zip(starts) {
            let len = u32::from_le_bytes(buf[start..start + 4].try_into().expect("4 bytes"));
            self.apply(record, at + start as u64 + HEADER, len)
                .expect("checked before it was written");
        }
        Ok(())
    }

    /// The zeros to write ahead of the records, if fewer than half of [`GROW`] are left. They
    /// begin at the block after the last record, so that they never rewrite a page that holds
    /// one (whose writing back could fail).
    pub fn growth(&self) -> Option<Growth> {
        let from = self.zeroed.max(self.end.next_multiple_of(BLOCK));
        if self.cannot_zero || self.failed.is_some() || from >= self.end + GROW / 2 {
            return None;
        }
        Some(Growth {
            file: Arc::clone(&self.file),
            from,
            to: (self.end + GROW / 2).next_multiple_of(GROW),
        })
    }

    /// Takes the zeros written ahead, or that they could not be: for want of space, the file
    /// grows by holes from then on (until it is written anew); for any other error, the file
    /// takes no more writes (a failed sync is reported once, and the records' next sync would
    /// not see it).
    pub fn grown(&mut self, growth: &Growth, written: io::Result<()>) {
        if written.is_err() {
            // Partly written, perhaps: the file's length is the file's to say.
            let len = self
                .file
                .metadata()
                .map_or(self.len, |metadata| metadata.len());
            self.len = self.len.max(len);
        }
        match written {
            // The file they were written to is the one in use: only the writer appends,
            // compacts and writes zeros, one at a time.
            Ok(()) => (self.zeroed, self.len) = (growth.to, self.len.max(growth.to)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::StorageFull
                        | io::ErrorKind::QuotaExceeded
                        | io::ErrorKind::FileTooLarge
                ) =>
            {
                tracing::warn!(
                    "cannot write zeros ahead of the Raft log's records ({e}): its file grows by \
                     holes until it is written anew, and each sync that reaches into one costs \
                     more"
                );
                self.cannot_zero = true;
            }
            Err(e) => {
                tracing::error!("writing zeros ahead of the Raft log's records failed: {e}");
                self.fail(&e);
            }
        }
    }

    /// Takes no more writes, `e` having left what is on the disk since `at` unknown: cuts it off
    /// as well as it can, so that a start in this boot does not take a write that failed (the
    /// kernel may keep it in the page cache, marked clean) for one that is durable.
    pub fn fail_since(&mut self, at: u64, e: &io::Error) {
        let _ = self.file.set_len(at).and_then(|()| self.file.sync_all());
        self.fail(e);
    }

    /// Takes no more writes: `e` left the file in use unknown.
    pub fn fail(&mut self, e: &io::Error) {
        self.failed.get_or_insert_with(|| e.to_string());
    }

    /// Where the next record goes.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The file, to sync what was appended without holding the disk.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn vote(&self) -> Option<Vote> {
        self.vote
    }

    pub fn committed(&self) -> Option<LogId> {
        self.committed
    }

    pub fn purged(&self) -> Option<LogId> {
        self.purged
    }

    /// The index of the last entry, if the log holds any.
    pub fn last_index(&self) -> Option<u64> {
        (!self.places.is_empty()).then(|| self.first + self.places.len() as u64 - 1)
    }

    /// Where the entries in `range` are, to read them without holding the disk.
    pub fn span(&self, range: impl RangeBounds<u64>) -> Span {
        let first = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let from = first.saturating_sub(self.first);
        let to = end.saturating_sub(self.first);
        let places = self
            .places
            .iter()
            .skip(usize::try_from(from).unwrap_or(usize::MAX))
            .take(usize::try_from(to.saturating_sub(from)).unwrap_or(usize::MAX))
            .copied()
            .collect();
        Span {
            file: self.file(),
            first: first.max(self.first),
            places,
        }
    }

    /// Once a purge left more behind than is worth keeping: what writing the file anew takes.
    pub fn compaction(&self) -> io::Result<Option<Compaction>> {
        let purged = self.places.front().map_or(self.end, |place| place.offset);
        if purged < self.compact || purged < self.end - purged || self.failed.is_some() {
            return Ok(None);
        }
        let mut head = Vec::new();
        Record::Format(FORMAT_VERSION).encode(&mut head)?;
        if let Some(vote) = self.vote {
            Record::Vote(vote).encode(&mut head)?;
        }
        Record::Committed(self.committed).encode(&mut head)?;
        // After the entries: they need not begin right after the purge.
        let mut tail = Vec::new();
        if let Some(upto) = self.purged {
            Record::Purged(upto).encode(&mut tail)?;
        }
        Ok(Some(Compaction {
            dir: self.dir.clone(),
            head,
            left: self.span(self.first..),
            tail,
        }))
    }

    /// Takes the file written anew; nothing was appended since [`Self::compaction`] (only the
    /// writer appends, and it wrote the file).
    pub fn compacted(&mut self, compacted: Compacted) {
        tracing::info!(
            before = self.end,
            after = compacted.end,
            "the Raft log's file written anew without its purged entries"
        );
        self.file = Arc::new(compacted.file);
        (self.places, self.end, self.len) = (compacted.places, compacted.end, compacted.end);
        (self.zeroed, self.cannot_zero) = (compacted.end, false);
    }
}

/// Zeros to write ahead of the records, without holding the disk.
pub struct Growth {
    file: Arc<File>,
    from: u64,
    to: u64,
}

impl Growth {
    /// Writes the zeros and syncs them.
    pub fn write(&self) -> io::Result<()> {
        let mut at = self.from;
        while at < self.to {
            let piece = &ZEROS[..ZEROS.len().min((self.to - at) as usize)];
            self.file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        self.file.sync_data()
    }
}

/// Entries to read from the log's file.
pub struct Span {
    file: Arc<File>,
    /// The index of `places[0]`.
    first: u64,
    places: Vec<Place>,
}

impl Span {
    /// The entries, each checked to be the one at its index.
    pub fn read(&self) -> io::Result<Vec<Entry>> {
        let mut bytes = Vec::new();
        (self.first..)
            .zip(&self.places)
            .map(|(index, place)| {
                bytes.resize(place.len as usize, 0);
                self.file.read_exact_at(&mut bytes, place.offset)?;
                let entry: Entry = decode(&bytes)?;
                if entry.log_id.index != index {
                    return Err(io::Error::other(format!(
                        "the Raft log's file holds entry {} where entry {index} was written",
                        entry.log_id.index
                    )));
                }
                Ok(entry)
            })
            .collect()
    }
}

/// Writing the log's file anew with what a purge left, without holding the disk.
pub struct Compaction {
    dir: DataDir,
    /// The records before the entries: format, vote, commit index.
    head: Vec<u8>,
    left: Span,
    /// The purge.
    tail: Vec<u8>,
}

/// The file written anew.
pub struct Compacted {
    file: File,
    places: VecDeque<Place>,
    end: u64,
}

impl Compaction {
    /// Writes the file anew; an error says whether the new file replaced the old one (then
    /// nothing more may be written to the old one, and whether the new one is in the directory
    /// durably is unknown).
    pub fn write(self) -> Result<Compacted, (io::Error, bool)> {
        let mut places = VecDeque::with_capacity(self.left.places.len());
        let mut end = self.head.len() as u64;
        let mut new = None;
        let written = self.dir.replace_with(FILE, |file| {
            new = Some(file.try_clone()?);
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(&self.head)?;
            let (mut bytes, mut record) = (Vec::new(), Vec::new());
            for (index, place) in (self.left.first..).zip(&self.left.places) {
                bytes.resize(place.len as usize, 0);
                self.left.file.read_exact_at(&mut bytes, place.offset)?;
                record.clear();
                Record::Entry {
                    index,
                    bytes: &bytes,
                }
                .encode(&mut record)?;
                places.push_back(Place {
                    offset: end + HEADER + 1 + 8,
                    len: place.len,
                });
                out.write_all(&record)?;
                end += record.len() as u64;
            }
            out.write_all(&self.tail)?;
            end += self.tail.len() as u64;
            out.flush()
        });
        match (written, new) {
            (Ok(()), Some(file)) => Ok(Compacted { file, places, end }),
            (Ok(()), None) => unreachable!("replace_with wrote the file"),
            (Err(e), new) => {
                let tmp = format!("{FILE}.tmp");
                // The new file was made, and is no longer under its temporary name: renamed
                // (and so, when that cannot be told either).
                let replaced = new.is_some() && !self.dir.contains(&tmp).unwrap_or(false);
                let _ = self.dir.remove(&tmp);
                Err((e, replaced))
            }
        }
    }
}
