//! The log's entries in memory: those not yet durable, and the most recent durable ones (which
//! replication and apply read), within a budget of bytes rather than a count: entries carry
//! requests of any size.
use std::{collections::BTreeMap, ops::RangeBounds};

use crate::order::typ::{Entry, LogId};

#[derive(Debug, Default)]
pub struct Cache {
    /// Entries by index, with their encoded size.
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
}

impl Cache {
    /// Adds an entry of `bytes` encoded bytes, replacing one at the same index.
    pub fn insert(&mut self, entry: Entry, bytes: usize) {
        if let Some((_, old)) = self.entries.insert(entry.log_id.index, (entry, bytes)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
    }

    pub fn get(&self, index: u64) -> Option<&Entry> {
        self.entries.get(&index).map(|(entry, _)| entry)
    }

    pub fn range(&self, range: impl RangeBounds<u64>) -> impl Iterator<Item = &Entry> {
        self.entries.range(range).map(|(_, (entry, _))| entry)
    }

    pub fn first_index(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Drops the entries from `index` on (a truncation).
    pub fn remove_from(&mut self, index: u64) {
        let removed = self.entries.split_off(&index);
        self.bytes -= removed.values().map(|(_, bytes)| bytes).sum::<usize>();
    }

    /// Drops the entries up to `index` included (a purge).
    pub fn remove_through(&mut self, index: u64) {
        let kept = self.entries.split_off(&(index + 1));
        let removed = std::mem::replace(&mut self.entries, kept);
        self.bytes -= removed.values().map(|(_, bytes)| bytes).sum::<usize>();
    }

    /// Drops the oldest durable entries while over `budget` bytes (entries not yet durable stay:
    /// nothing else has them).
    pub fn shrink(&mut self, budget: usize, durable: Option<LogId>) {
        while self.bytes > budget {
            let Some(entry) = self.entries.first_entry() else {
                break;
            };
            if durable.is_none_or(|d| *entry.key() > d.index) {
                break;
            }
            let (_, bytes) = entry.remove();
            self.bytes -= bytes;
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::typ::EntryPayload;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn keeps_within_its_budget_of_bytes_but_never_drops_what_is_not_durable() {
        let mut cache = Cache::default();
        for index in 1..=10 {
            cache.insert(entry(index), 100);
        }
        cache.insert(entry(10), 300);
        assert_eq!(cache.bytes(), 1200);
        cache.shrink(500, Some(entry(4).log_id));
        assert_eq!((cache.first_index(), cache.bytes()), (Some(5), 800));
        cache.shrink(500, Some(entry(10).log_id));
        assert_eq!((cache.first_index(), cache.bytes()), (Some(8), 500));
        cache.remove_from(9);
        assert_eq!(cache.bytes(), 100);
        cache.remove_through(8);
        assert_eq!((cache.first_index(), cache.bytes()), (None, 0));
    }
}
