//! The writer thread: takes every write queued, appends them to the log's file in one write,
//! syncs it once, and only then tells openraft the entries are durable (group commit).
use std::{
    sync::{Mutex, Weak, mpsc},
    time::Instant,
};

use tokio::sync::oneshot;

use super::{
    Inner,
    file::{Disk, Record},
};
use crate::order::typ::{LogFlushed, LogId, Vote};

/// Most operations written at once.
const BATCH: usize = 4096;
/// Bytes of entries written at once, at most (one entry may be larger).
const BATCH_BYTES: usize = 16 << 20;

pub type Done = oneshot::Sender<Result<(), String>>;

pub enum Write {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed,
    },
    Vote {
        vote: Vote,
        done: Done,
    },
    Truncate {
        from: u64,
        done: Done,
    },
    Purge {
        upto: LogId,
        done: Done,
    },
}

/// Writes what is queued until the queue closes.
pub fn write_loop(disk: &Mutex<Disk>, queue: &mpsc::Receiver<Write>, shared: &Weak<Inner>) {
    grow_ahead(disk);
    while let Ok(first) = queue.recv() {
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match queue.try_recv() {
                Ok(write) => {
                    bytes += write.bytes();
                    batch.push(write);
                }
                Err(_) => break,
            }
        }
        // The commit index saved with these entries: never beyond the last of them durable
        // after this write (a follower may hear of a commit before it has the entries).
        let appended = batch.iter().rev().find_map(|write| match write {
            Write::Append { entries, .. } => entries.last().map(|(id, _)| *id),
            _ => None,
        });
        let committed = shared.upgrade().and_then(|s| {
            let state = s.state.lock().unwrap();
            let durable = state.durable.max(appended);
            match (state.committed, durable) {
                (Some(committed), Some(durable)) if committed.index > durable.index => {
                    Some(durable)
                }
                (committed, _) => committed,
            }
        });
        #[cfg(test)]
        if let Some(shared) = shared.upgrade() {
            shared.wait_while_held();
        }
        let started = Instant::now();
        let result = write_batch(disk, &batch, committed).map_err(|e| e.to_string());
        let purged = result == Ok(true);
        let result = result.map(drop);
        if let (Some(shared), Ok(())) = (shared.upgrade(), &result) {
            shared
                .counts
                .syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(histogram) = shared.sync_seconds.get() {
                histogram.observe(started.elapsed().as_secs_f64());
            }
        }
        // Those waiting for the entries to be durable hear it first: openraft's next step may
        // be to apply them.
        if let Some(shared) = shared.upgrade() {
            let mut state = shared.state.lock().unwrap();
            match (&result, appended) {
                (Err(_), _) => {
                    shared.durable.send_replace(super::Durable::Failed);
                }
                // Unless truncated since (openraft waits for a truncation before it appends
                // again, so the log ids compare as their indexes would).
                (Ok(()), Some(appended)) if state.last_log_id >= Some(appended) => {
                    state.durable = state.durable.max(Some(appended));
                    shared.durable_now(&state);
                }
                _ => {}
            }
            // Keep the newest entries; drop the oldest durable ones.
            let (budget, durable) = (shared.cache_budget, state.durable);
            state.cache.shrink(budget, durable);
        }
        for write in batch {
            match write {
                Write::Append { flushed, .. } => {
                    flushed.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Write::Truncate { done, .. }
                | Write::Purge { done, .. }
                | Write::Vote { done, .. } => {
                    let _ = done.send(result.clone());
                }
            }
        }
        // After the purge was acknowledged: openraft waits for it.
        if purged {
            compact(disk);
        }
        grow_ahead(disk);
    }
}

/// Writes zeros ahead of the records if few are left, without holding the disk: the next syncs
/// write records into blocks the file has already (see [`super::file`]).
fn grow_ahead(disk: &Mutex<Disk>) {
    let Some(growth) = disk.lock().unwrap().growth() else {
        return;
    };
    let written = growth.write();
    disk.lock().unwrap().grown(&growth, written);
}

/// Writes the file anew without what was purged, if that is worth it. The disk is taken only to
/// swap the files, so readers go on; appends wait for the copy (of what the purge left: the
/// entries kept after a snapshot, usually).
fn compact(disk: &Mutex<Disk>) {
    let compaction = match disk.lock().unwrap().compaction() {
        Ok(Some(compaction)) => compaction,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("cannot write the Raft log's file anew: {e}");
            return;
        }
    };
    match compaction.write() {
        Ok(compacted) => disk.lock().unwrap().compacted(compacted),
        Err((e, false)) => {
            tracing::warn!(
                "writing the Raft log's file anew without its purged entries failed (kept as it \
                 is, tried again at the next purge): {e}"
            );
        }
        Err((e, true)) => {
            tracing::error!(
                "writing the Raft log's file anew failed once it replaced the old one: the log \
                 takes no more writes (the next one fails, and openraft stops the node, which \
                 starts again from the file in place): {e}"
            );
            disk.lock().unwrap().fail(&e);
        }
    }
}

impl Write {
    /// Bytes of entries it writes.
    fn bytes(&self) -> usize {
        match self {
            Self::Append { entries, .. } => entries.iter().map(|(_, bytes)| bytes.len()).sum(),
            _ => 0,
        }
    }
}

/// Appends `batch`, with the commit index `committed` if it appends entries, and syncs it;
/// whether it purged.
fn write_batch(
    disk: &Mutex<Disk>,
    batch: &[Write],
    committed: Option<LogId>,
) -> std::io::Result<bool> {
    let mut records = Vec::new();
    let (mut appends, mut purges) = (false, false);
    for write in batch {
        match write {
            Write::Append { entries, .. } => {
                appends = true;
                records.extend(entries.iter().map(|(id, bytes)| Record::Entry {
                    index: id.index,
                    bytes,
                }));
            }
            Write::Vote { vote, .. } => records.push(Record::Vote(*vote)),
            Write::Truncate { from, .. } => records.push(Record::Truncate(*from)),
            Write::Purge { upto, .. } => {
                purges = true;
                records.push(Record::Purged(*upto));
            }
        }
    }
    if appends && committed.is_some() {
        records.push(Record::Committed(committed));
    }
    let (file, at) = {
        let mut disk = disk.lock().unwrap();
        let at = disk.end();
        disk.append(&records)?;
        (disk.file(), at)
    };
    if let Err(e) = file.sync_data() {
        disk.lock().unwrap().fail_since(at, &e);
        return Err(e);
    }
    Ok(purges)
}
