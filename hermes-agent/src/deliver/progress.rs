//! What delivery persists besides the Raft log: how far requests have gone to the app.
//!
//! Kept in two alternating slots with a sequence number and a checksum, so that a torn write
//! leaves the previous record readable. Written with `pwrite` and no fsync: a page-cache write
//! survives the agent's own crash (kill -9), the case that matters; a machine crash takes the
//! app's unsynced state with it too.
use std::{fs::File, os::unix::fs::FileExt, path::Path};

use serde::{Deserialize, Serialize};

use crate::order::{
    digests::fnv1a,
    log_store::{decode, encode},
    typ::LogId,
};

/// Bytes of one slot.
const SLOT: usize = 256;

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
    /// The last request counted in doubt: it is sent once more, until it is answered.
    pub doubted: u64,
    /// Requests written before the agent stopped whose answer it never read: if the app stopped
    /// with it, it may not have run them.
    pub unconfirmed: u64,
    /// A snapshot is being installed: the app's state may be half restored.
    pub installing: bool,
}

/// The file that holds [`Progress`].
#[derive(Debug)]
pub struct ProgressFile {
    file: File,
    seq: u64,
}

impl ProgressFile {
    pub fn open(path: &Path) -> std::io::Result<(Self, Progress)> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut this = Self { file, seq: 0 };
        let (seq, progress) = this.best().unwrap_or_default();
        this.seq = seq;
        Ok((this, progress))
    }

    fn best(&self) -> Option<(u64, Progress)> {
        (0..2)
            .filter_map(|slot| {
                let mut buf = [0u8; SLOT];
                self.file
                    .read_exact_at(&mut buf, (slot * SLOT) as u64)
                    .ok()?;
                let len = u16::from_le_bytes([buf[0], buf[1]]) as usize;
                let body = buf.get(2..2 + len)?;
                let sum = buf.get(2 + len..10 + len)?;
                (fnv1a(&[body]).to_le_bytes() == sum).then_some(())?;
                decode::<(u64, Progress)>(body).ok()
            })
            .max_by_key(|(seq, _)| *seq)
    }

    pub fn write(&mut self, progress: &Progress) -> std::io::Result<()> {
        self.seq += 1;
        let body = encode(&(self.seq, progress))?;
        if body.len() + 10 > SLOT {
            return Err(std::io::Error::other("progress record too large"));
        }
        let mut buf = [0u8; SLOT];
        buf[..2].copy_from_slice(&(body.len() as u16).to_le_bytes());
        buf[2..2 + body.len()].copy_from_slice(&body);
        buf[2 + body.len()..10 + body.len()].copy_from_slice(&fnv1a(&[&body]).to_le_bytes());
        self.file.write_all_at(&buf, (self.seq % 2) * SLOT as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_a_torn_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("progress");
        let (mut file, progress) = ProgressFile::open(&path).unwrap();
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
        };
        let second = Progress {
            deliveries: 2,
            ..Progress::default()
        };
        file.write(&largest).unwrap();
        file.write(&second).unwrap();
        assert_eq!(ProgressFile::open(&path).unwrap().1, second);
        // Tear the newest slot: the previous record is what remains.
        file.file
            .write_all_at(&[0xff; 8], (file.seq % 2) * SLOT as u64 + 4)
            .unwrap();
        assert_eq!(ProgressFile::open(&path).unwrap().1, largest);
    }
}
