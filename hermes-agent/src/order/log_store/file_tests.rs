//! The log's file: what a crash, a truncation, a purge and a second process do to it.
use std::os::unix::fs::FileExt as _;

use super::*;

/// Entry `index` of `term`, with a payload of `size` bytes.
fn entry(term: u64, index: u64, size: usize) -> Entry {
    crate::testing::entry(term, index, vec![term as u8; size].into())
}

fn append(disk: &mut Disk, entries: &[Entry]) {
    let encoded: Vec<_> = entries.iter().map(|e| encode(e).unwrap()).collect();
    let records: Vec<_> = entries
        .iter()
        .zip(&encoded)
        .map(|(e, bytes)| Record::Entry {
            index: e.log_id.index,
            bytes,
        })
        .collect();
    disk.append(&records).unwrap();
    disk.file().sync_data().unwrap();
}

/// A new log in a directory of its own.
fn opened() -> (tempfile::TempDir, DataDir, Disk) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::create(tmp.path()).unwrap();
    let disk = Disk::open(&dir, u64::MAX).unwrap();
    (tmp, dir, disk)
}

fn entries(disk: &Disk) -> Vec<Entry> {
    disk.span(..).read().unwrap()
}

fn ids(disk: &Disk) -> Vec<(u64, u64)> {
    entries(disk)
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[test]
fn a_torn_write_is_cut_off_so_that_nothing_behind_it_comes_back() {
    let (_tmp, dir, mut disk) = opened();
    append(
        &mut disk,
        &[entry(1, 1, 10), entry(1, 2, 10), entry(1, 3, 10)],
    );
    // A crash in the middle of a write of entries 4 and 5: a sector of 4 never reached the
    // disk (it reads as zeros), 5 did.
    let (end, file) = (disk.end, disk.file());
    let (mut four, mut five) = (Vec::new(), Vec::new());
    let (e4, e5) = (
        encode(&entry(1, 4, 3000)).unwrap(),
        encode(&entry(1, 5, 10)).unwrap(),
    );
    Record::Entry {
        index: 4,
        bytes: &e4,
    }
    .encode(&mut four)
    .unwrap();
    Record::Entry {
        index: 5,
        bytes: &e5,
    }
    .encode(&mut five)
    .unwrap();
    let sector = (end / SECTOR + 2) * SECTOR - end;
    four[sector as usize..][..SECTOR as usize].fill(0);
    file.write_all_at(&four, end).unwrap();
    file.write_all_at(&five, end + four.len() as u64).unwrap();
    drop((disk, file));

    let mut disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(ids(&disk), [(1, 1), (1, 2), (1, 3)]);
    // Entry 4 again, as long as the torn one: entry 5 of the torn write would follow it.
    append(&mut disk, &[entry(2, 4, 3000)]);
    drop(disk);
    let disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(ids(&disk), [(1, 1), (1, 2), (1, 3), (2, 4)]);
}

#[test]
fn a_record_damaged_but_not_torn_is_refused_not_cut_away() {
    let (_tmp, dir, mut disk) = opened();
    append(
        &mut disk,
        &[entry(1, 1, 10), entry(1, 2, 10), entry(1, 3, 10)],
    );
    let (end, file) = (disk.end, disk.file());
    drop(disk);
    // A bit changed in entry 2, acknowledged long ago.
    let mut byte = [0];
    let at = end - 70;
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 4], at).unwrap();
    let error = Disk::open(&dir, u64::MAX)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("damaged"), "{error}");
    assert!(file.metadata().unwrap().len() > end, "nothing was cut");
}

#[test]
fn a_batch_that_cannot_follow_is_refused_before_anything_is_written() {
    let (_tmp, dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10), entry(1, 2, 10)]);
    let (three, five) = (
        encode(&entry(1, 3, 10)).unwrap(),
        encode(&entry(1, 5, 10)).unwrap(),
    );
    let gap = [
        Record::Entry {
            index: 3,
            bytes: &three,
        },
        Record::Entry {
            index: 5,
            bytes: &five,
        },
    ];
    let end = disk.end;
    let error = disk.append(&gap).expect_err("refused").to_string();
    assert!(error.contains("entry 5 where entry 4"), "{error}");
    assert_eq!((disk.end, ids(&disk)), (end, vec![(1, 1), (1, 2)]));
    disk.append(&[Record::Vote(Vote::new(5, 1))]).unwrap();
    drop(disk);
    let disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(ids(&disk), [(1, 1), (1, 2)]);
    assert_eq!(disk.vote(), Some(Vote::new(5, 1)));
}

#[test]
fn truncations_votes_commits_and_purges_survive_a_reopen() {
    let (_tmp, dir, mut disk) = opened();
    let first: Vec<_> = (1..=10).map(|i| entry(1, i, 10)).collect();
    append(&mut disk, &first);
    let vote = Vote::new(2, 3);
    let committed = Some(first[3].log_id);
    disk.append(&[
        Record::Vote(vote),
        Record::Truncate(6),
        Record::Committed(committed),
    ])
    .unwrap();
    append(&mut disk, &[entry(2, 6, 20), entry(2, 7, 20)]);
    disk.append(&[Record::Purged(first[2].log_id)]).unwrap();
    let expected = [(1, 4), (1, 5), (2, 6), (2, 7)];
    assert_eq!(ids(&disk), expected);
    drop(disk);

    let disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(ids(&disk), expected);
    assert_eq!(entries(&disk)[2], entry(2, 6, 20));
    assert_eq!(disk.last_index(), Some(7));
    assert_eq!(
        (disk.vote(), disk.committed(), disk.purged()),
        (Some(vote), committed, Some(first[2].log_id))
    );
    assert_eq!(
        disk.span(5..7).read().unwrap(),
        [entry(1, 5, 10), entry(2, 6, 20)]
    );
}

#[test]
fn a_log_purged_past_its_end_takes_the_next_entry_after_the_purge() {
    let (_tmp, dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10), entry(1, 2, 10)]);
    // A snapshot installed beyond the log.
    disk.append(&[Record::Purged(entry(3, 50, 0).log_id)])
        .unwrap();
    assert_eq!(disk.last_index(), None);
    append(&mut disk, &[entry(3, 51, 10)]);
    drop(disk);
    let disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(ids(&disk), [(3, 51)]);
    assert_eq!(disk.purged().map(|p| p.index), Some(50));
}

#[test]
fn a_file_mostly_purged_is_written_anew_with_the_rest() {
    let (_tmp, dir, mut disk) = opened();
    disk.compact = 50 << 10;
    let all: Vec<_> = (1..=100).map(|i| entry(1, i, 1000)).collect();
    append(&mut disk, &all);
    let vote = Vote::new(1, 1);
    disk.append(&[Record::Vote(vote), Record::Committed(Some(all[94].log_id))])
        .unwrap();
    let before = disk.end;
    // Purged up to 40: less than is left, kept as it is.
    disk.append(&[Record::Purged(all[39].log_id)]).unwrap();
    assert!(disk.compaction().unwrap().is_none(), "not written anew");
    disk.append(&[Record::Purged(all[89].log_id)]).unwrap();
    let compacted = disk
        .compaction()
        .unwrap()
        .expect("worth it")
        .write()
        .unwrap();
    disk.compacted(compacted);
    assert!(
        disk.end < before / 5,
        "written anew: {} of {before} bytes",
        disk.end
    );
    assert_eq!(entries(&disk), all[90..]);
    append(&mut disk, &[entry(1, 101, 1000)]);
    drop(disk);

    let disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(entries(&disk)[..10], all[90..]);
    assert_eq!(disk.last_index(), Some(101));
    assert_eq!(
        (disk.vote(), disk.committed(), disk.purged()),
        (Some(vote), Some(all[94].log_id), Some(all[89].log_id))
    );
    assert!(!dir.contains("raft.log.tmp").unwrap());
}

#[test]
fn a_second_process_and_an_older_log_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // The lock belongs to the open file description: a second one in this process stands for
    // another process.
    let disk = Disk::open(&DataDir::create(tmp.path()).unwrap(), u64::MAX).unwrap();
    let error = Disk::open(&DataDir::create(tmp.path()).unwrap(), u64::MAX)
        .err()
        .expect("refused");
    assert!(error.to_string().contains(ALREADY_OPEN), "{error}");
    drop(disk);
    Disk::open(&DataDir::create(tmp.path()).unwrap(), u64::MAX).unwrap();

    let old = tempfile::tempdir().unwrap();
    std::fs::write(old.path().join(OLD_FILE), b"redb").unwrap();
    let error = Disk::open(&DataDir::create(old.path()).unwrap(), u64::MAX)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("older Hermes"), "{error}");
}

#[test]
fn a_length_made_longer_is_damage_and_a_header_never_written_a_tear() {
    let (_tmp, dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10)]);
    let second = disk.end;
    append(&mut disk, &[entry(1, 2, 10), entry(1, 3, 10)]);
    let (end, file) = (disk.end, disk.file());
    drop(disk);
    // A high bit of entry 2's length changed: a tear only leaves zeros, never a longer length.
    let mut byte = [0];
    file.read_exact_at(&mut byte, second + 3).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], second + 3).unwrap();
    let error = Disk::open(&dir, u64::MAX)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("longer than the file"), "{error}");
    file.write_all_at(&byte, second + 3).unwrap();

    // Entries 4 and 5 written at once, and the sector with 4's header never reached the disk.
    let mut disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(disk.end, end);
    let end = disk.end;
    append(&mut disk, &[entry(1, 4, 1000), entry(1, 5, 10)]);
    drop(disk);
    let sector = (end / SECTOR + 1) * SECTOR;
    file.write_all_at(&vec![0; (sector - end) as usize], end)
        .unwrap();
    let disk = Disk::open(&dir, u64::MAX).unwrap();
    assert_eq!(ids(&disk), [(1, 1), (1, 2), (1, 3)]);
    assert_eq!(disk.len(), end);
}

#[test]
fn the_last_entry_replaced_by_one_of_a_later_term_is_the_one_read() {
    let (_tmp, dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10), entry(1, 2, 10)]);
    append(&mut disk, &[entry(2, 2, 10)]);
    assert_eq!(ids(&disk), [(1, 1), (2, 2)]);
    drop(disk);
    assert_eq!(ids(&Disk::open(&dir, u64::MAX).unwrap()), [(1, 1), (2, 2)]);
}

#[test]
fn zeros_are_written_ahead_of_the_records_where_the_file_had_a_hole() {
    use std::os::unix::fs::MetadataExt as _;
    // The file's length, and the bytes of it on the disk (st_blocks counts 512-byte units, a
    // hole none).
    let on_disk = |disk: &Disk| {
        let metadata = disk.file().metadata().unwrap();
        (metadata.len(), metadata.blocks() * 512)
    };
    let grow = |disk: &mut Disk| {
        let growth = disk
            .growth()
            .expect("fewer than half a step of zeros ahead");
        let written = growth.write();
        disk.grown(&growth, written);
        assert!(disk.growth().is_none(), "zeros enough ahead");
    };
    let (_tmp, dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10)]);
    grow(&mut disk);
    let (len, bytes) = on_disk(&disk);
    assert_eq!(len, GROW);
    assert!(bytes >= len, "{bytes} of {len} bytes on the disk");
    // An entry that reaches past the zeros: the file grows by a hole, and zeros are written
    // over it next.
    append(&mut disk, &[entry(1, 2, GROW as usize)]);
    let (len, bytes) = on_disk(&disk);
    assert_eq!(len, 2 * GROW);
    assert!(bytes < len, "a hole: {bytes} of {len} bytes on the disk");
    grow(&mut disk);
    let (len, bytes) = on_disk(&disk);
    assert_eq!(len, 2 * GROW);
    assert!(bytes >= len, "{bytes} of {len} bytes on the disk");
    append(&mut disk, &[entry(1, 3, 10)]);
    drop(disk);
    assert_eq!(
        ids(&Disk::open(&dir, u64::MAX).unwrap()),
        [(1, 1), (1, 2), (1, 3)]
    );
}

#[test]
fn zeros_that_cannot_be_written_for_want_of_space_leave_holes_and_any_other_error_stops_writes() {
    let (_tmp, _dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10)]);
    let growth = disk.growth().expect("no zeros ahead yet");
    disk.grown(&growth, Err(io::ErrorKind::StorageFull.into()));
    assert!(disk.growth().is_none(), "not tried again");
    // A record past the end still grows the file, by a hole.
    append(&mut disk, &[entry(1, 2, GROW as usize)]);
    assert_eq!(disk.len(), 2 * GROW);

    let (_tmp, _dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10)]);
    let growth = disk.growth().expect("no zeros ahead yet");
    disk.grown(&growth, Err(io::Error::from_raw_os_error(nix::libc::EIO)));
    assert!(disk.growth().is_none());
    let bytes = encode(&entry(1, 2, 10)).unwrap();
    let refused = disk.append(&[Record::Entry {
        index: 2,
        bytes: &bytes,
    }]);
    assert!(
        refused.is_err(),
        "a failed sync of the zeros stops the writes"
    );
}

#[test]
fn an_entry_longer_than_a_frame_is_refused_when_written_and_when_read() {
    let (_tmp, dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10), entry(1, 2, 5000)]);
    drop(disk);
    // Read with a smaller bound (--max-frame lowered, or a file not written by Hermes): refused,
    // before anything reads the entry's bytes into memory.
    let error = Disk::open(&dir, 4096).err().expect("refused").to_string();
    assert!(
        error.contains("entry 2") && error.contains("--max-frame"),
        "{error}"
    );
    // With the bound it was written with, read whole.
    let mut disk = Disk::open(&dir, 5000 + 64).unwrap();
    assert_eq!(ids(&disk), [(1, 1), (1, 2)]);
    // An append longer than the bound is refused before it is written.
    let bytes = encode(&entry(1, 3, 6000)).unwrap();
    let error = disk
        .append(&[Record::Entry {
            index: 3,
            bytes: &bytes,
        }])
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("entry 3") && error.contains("not written"),
        "{error}"
    );
    drop(disk);
    assert_eq!(ids(&Disk::open(&dir, u64::MAX).unwrap()), [(1, 1), (1, 2)]);
}

#[test]
fn an_entry_longer_than_a_frame_that_the_log_no_longer_holds_is_no_obstacle() {
    let (_tmp, dir, mut disk) = opened();
    append(&mut disk, &[entry(1, 1, 10), entry(1, 2, 5000)]);
    disk.append(&[Record::Truncate(2)]).unwrap();
    append(&mut disk, &[entry(2, 2, 10)]);
    drop(disk);
    assert_eq!(ids(&Disk::open(&dir, 4096).unwrap()), [(1, 1), (2, 2)]);
}
