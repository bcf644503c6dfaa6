//! The log's tables in redb, and reading them.
use std::ops::Bound;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;

use super::decode;
use crate::order::typ::{Entry, StorageError, StorageIOError};

pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const VOTE: &str = "vote";
pub const COMMITTED: &str = "committed";
pub const PURGED: &str = "purged";
/// What the entries are made of: [`FORMAT_VERSION`], little-endian.
pub const FORMAT: &str = "format";
/// 2: batches carry their floor, HTTP requests their client connection; 3: an entry holds the
/// batches of several nodes.
pub const FORMAT_VERSION: u32 = 3;

pub fn read_range(
    db: &Database,
    range: (Bound<u64>, Bound<u64>),
    last_only: bool,
) -> Result<Vec<Entry>, StorageError> {
    let read = |e: &dyn std::error::Error| -> StorageError {
        StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
    };
    let txn = db.begin_read().map_err(|e| read(&e))?;
    let table = txn.open_table(LOG).map_err(|e| read(&e))?;
    let mut rows = table.range(range).map_err(|e| read(&e))?;
    let mut entries = Vec::new();
    if last_only {
        if let Some(row) = rows.next_back() {
            let (_, value) = row.map_err(|e| read(&e))?;
            entries.push(decode(value.value()).map_err(|e| read(&e))?);
        }
        return Ok(entries);
    }
    for row in rows {
        let (_, value) = row.map_err(|e| read(&e))?;
        entries.push(decode(value.value()).map_err(|e| read(&e))?);
    }
    Ok(entries)
}

pub fn read_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>, StorageError> {
    let read = |e: &dyn std::error::Error| -> StorageError {
        StorageIOError::read(&std::io::Error::other(e.to_string())).into()
    };
    let txn = db.begin_read().map_err(|e| read(&e))?;
    let table = txn.open_table(META).map_err(|e| read(&e))?;
    match table.get(key).map_err(|e| read(&e))? {
        Some(value) => decode(value.value()).map(Some).map_err(|e| read(&e)),
        None => Ok(None),
    }
}
