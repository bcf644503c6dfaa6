//! How fast the disk syncs at the moment. Every setup keeps its durable files (Hermes' log,
//! etcd's WAL) on the same disk, and on a shared machine the latency of one sync swings by a
//! factor of ten from one minute to the next. A write that waits for a sync slows with it, so
//! each point records what a sync cost right after it: a ratio between two setups measured at
//! different moments can be read against it.
use std::{fs::File, io::Write as _, os::unix::fs::FileExt, path::Path, time::Instant};

use anyhow::Context as _;

/// Syncs timed per probe.
const SYNCS: usize = 32;
/// Bytes written before each sync: about one log entry's.
const WRITE: usize = 128;
/// Where each write goes, from the last: a block of its own each, as appends to a log do.
const STRIDE: u64 = 4096;

/// The median time, in ms, of a write of [`WRITE`] bytes and its `fdatasync` in a new file
/// in `dir`, whose blocks are written and synced beforehand (as the log's are: a sync then
/// writes data, not the file's metadata). `None`, and a warning, when it cannot be timed: the
/// figure explains the others, it does not stop a run.
pub fn sync_ms(dir: &Path) -> Option<f64> {
    timed(dir)
        .inspect_err(|error| eprintln!("bench: warning: {error:#}"))
        .ok()
}

fn timed(dir: &Path) -> anyhow::Result<f64> {
    let file = tempfile::tempfile_in(dir)
        .with_context(|| format!("creating a file to time syncs in {}", dir.display()))?;
    time_syncs(&file).with_context(|| format!("timing syncs in {}", dir.display()))
}

fn time_syncs(mut file: &File) -> std::io::Result<f64> {
    file.write_all(&vec![0; SYNCS * STRIDE as usize])?;
    file.sync_all()?;
    let mut times = Vec::with_capacity(SYNCS);
    for block in 0..SYNCS as u64 {
        let started = Instant::now();
        file.write_all_at(&[b'x'; WRITE], block * STRIDE)?;
        file.sync_data()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[SYNCS / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_times_syncs_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(sync_ms(dir.path()).is_some());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_probe_where_no_file_can_be_made_says_where_and_gives_none() {
        let nowhere = Path::new("/nonexistent/hermes-bench");
        let error = timed(nowhere).unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/hermes-bench"));
        assert_eq!(sync_ms(nowhere), None);
    }
}
