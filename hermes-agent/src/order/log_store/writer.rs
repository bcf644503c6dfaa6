//! The writer thread: takes every write queued, writes them in one redb transaction, commits it
//! with one fsync, and only then tells openraft the entries are durable (group commit).
use std::{
    sync::{Weak, mpsc},
    time::Instant,
};

use redb::Database;
use tokio::sync::oneshot;

use super::{
    Inner, encode,
    tables::{COMMITTED, LOG, META, PURGED},
};
use crate::order::typ::{LogFlushed, LogId};

/// Most operations written in one transaction.
const BATCH: usize = 4096;

pub type Done = oneshot::Sender<Result<(), String>>;

pub enum Write {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        flushed: LogFlushed,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
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
pub fn write_loop(db: &Database, queue: &mpsc::Receiver<Write>, shared: &Weak<Inner>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        // The commit index saved with these entries: never beyond the last of them durable
        // after this transaction (a follower may hear of a commit before it has the entries).
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
        let started = Instant::now();
        let result = write_batch(db, &batch, committed).map_err(|e| e.to_string());
        if let (Some(shared), Ok(())) = (shared.upgrade(), &result) {
            shared
                .counts
                .syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(histogram) = shared.sync_seconds.get() {
                histogram.observe(started.elapsed().as_secs_f64());
            }
        }
        let mut last_appended = None;
        for write in batch {
            match write {
                Write::Append { entries, flushed } => {
                    last_appended = entries.last().map(|(id, _)| *id).or(last_appended);
                    flushed.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Write::Truncate { done, .. }
                | Write::Purge { done, .. }
                | Write::Meta { done, .. } => {
                    let _ = done.send(result.clone());
                }
            }
        }
        let (Some(shared), Some(appended), Ok(())) = (shared.upgrade(), last_appended, &result)
        else {
            continue;
        };
        let mut state = shared.state.lock().unwrap();
        if state.last_log_id >= Some(appended) {
            state.durable = state.durable.max(Some(appended));
        }
        // Keep the newest entries; drop the oldest durable ones.
        let (budget, durable) = (shared.cache_budget, state.durable);
        state.cache.shrink(budget, durable);
    }
}

fn write_batch(
    db: &Database,
    batch: &[Write],
    committed: Option<LogId>,
) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        if committed.is_some() && batch.iter().any(|w| matches!(w, Write::Append { .. })) {
            meta.insert(
                COMMITTED,
                encode(&committed).map_err(redb::Error::Io)?.as_slice(),
            )?;
        }
        for write in batch {
            match write {
                Write::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        log.insert(id.index, bytes.as_slice())?;
                    }
                }
                Write::Meta { key, value, .. } => {
                    meta.insert(*key, value.as_slice())?;
                }
                Write::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false)?;
                }
                Write::Purge { upto, .. } => {
                    log.retain_in(..=upto.index, |_, _| false)?;
                    meta.insert(
                        PURGED,
                        encode(&Some(*upto)).map_err(redb::Error::Io)?.as_slice(),
                    )?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}
