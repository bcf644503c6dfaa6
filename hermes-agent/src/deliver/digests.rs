//! What a replica remembers of its app's answers, to compare with the other replicas'
//! ([`super::divergence`]): a digest per sequence number, for the most recent ones.
//!
//! In HTTP mode a request's digest covers its answer (`--digest status-and-body`, the default)
//! or only its status (`--digest status`). In raw TCP mode, with `--digest bytes`, a
//! connection's digest covers every byte the app sent on it, from the connect until the app
//! closed it, and is kept under the sequence number of the `Close` event: it comes once both
//! have happened, possibly after digests of later events ([`Digests::expect`]).
use std::{
    collections::{BTreeSet, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::order::peer::wire::Digest;

/// Recent digests kept for comparison between replicas.
const KEPT: usize = 4096;

/// The digests of this replica's answers, kept for comparison, by sequence number.
#[derive(Debug)]
pub struct Digests {
    what: Digest,
    kept: Mutex<Kept>,
    /// Counts [`Self::forget_through`]: a comparison that read digests before one must not act
    /// on them.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct Kept {
    digests: VecDeque<(u64, u64)>,
    /// Every request up to this one was handled.
    handled: u64,
    /// Digests that will come (raw TCP mode: connections closed here whose app has not closed
    /// them yet).
    coming: BTreeSet<u64>,
}

/// What a replica has of its digests from some sequence number on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The first sequence number whose digest is still kept (older ones were forgotten).
    pub oldest: u64,
    /// Every digest up to this sequence number is here, or will never be: a missing one is not
    /// coming.
    pub settled: u64,
    /// `(sequence number, digest)`, in order.
    pub digests: Vec<(u64, u64)>,
}

#[cfg(test)]
impl Default for Digests {
    fn default() -> Self {
        Self::new(Digest::StatusAndBody)
    }
}

impl Digests {
    pub fn new(what: Digest) -> Self {
        Self {
            what,
            kept: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// What the digests cover.
    pub fn what(&self) -> Digest {
        self.what
    }

    /// Request `seq` was handled, with `digest` (if it has one to compare).
    pub fn answer(&self, seq: u64, digest: Option<u64>) {
        let mut kept = self.kept.lock().unwrap();
        if let Some(digest) = digest {
            kept.keep(seq, digest);
        }
        kept.handled = kept.handled.max(seq);
    }

    /// Every request up to `seq` was handled (or stands for the app's state: a snapshot's).
    pub fn handled(&self, seq: u64) {
        let mut kept = self.kept.lock().unwrap();
        kept.handled = kept.handled.max(seq);
    }

    /// The digest of `seq` will come later, by [`Self::record`] or [`Self::forgo`].
    pub fn expect(&self, seq: u64) {
        self.kept.lock().unwrap().coming.insert(seq);
    }

    /// The digest of `seq` that was expected will not come.
    pub fn forgo(&self, seq: u64) {
        self.kept.lock().unwrap().coming.remove(&seq);
    }

    /// Forgets the digests up to `seq`, all handled: they are of answers given from a state the
    /// app no longer has (a replica that healed from another's snapshot).
    pub fn forget_through(&self, seq: u64) {
        let mut kept = self.kept.lock().unwrap();
        let after = kept.digests.partition_point(|(kept, _)| *kept <= seq);
        kept.digests.drain(..after);
        kept.coming.retain(|coming| *coming > seq);
        kept.handled = kept.handled.max(seq);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes with every [`Self::forget_through`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The digest of `seq` that was expected.
    pub fn record(&self, seq: u64, digest: u64) {
        let mut kept = self.kept.lock().unwrap();
        kept.coming.remove(&seq);
        kept.keep(seq, digest);
    }

    /// At most `limit` digests from `from` on.
    pub fn report(&self, from: u64, limit: usize) -> Report {
        let kept = self.kept.lock().unwrap();
        let oldest = kept
            .digests
            .front()
            .map_or(kept.handled + 1, |(seq, _)| *seq);
        let settled = match kept.coming.first() {
            Some(coming) => kept.handled.min(coming - 1),
            None => kept.handled,
        };
        let from = kept.digests.partition_point(|(seq, _)| *seq < from);
        Report {
            oldest,
            settled,
            digests: kept.digests.range(from..).take(limit).copied().collect(),
        }
    }
}

impl Kept {
    /// Keeps `digest` under `seq`, in order (it may come after later ones), the first one only,
    /// forgetting the oldest beyond [`KEPT`].
    fn keep(&mut self, seq: u64, digest: u64) {
        let at = self.digests.partition_point(|(kept, _)| *kept < seq);
        if self.digests.get(at).is_some_and(|(kept, _)| *kept == seq) {
            return;
        }
        if self.digests.len() == KEPT {
            if at == 0 {
                return;
            }
            self.digests.pop_front();
            self.digests.insert(at - 1, (seq, digest));
        } else {
            self.digests.insert(at, (seq, digest));
        }
    }
}

/// An HTTP answer's digest, over its status and body: equal on replicas whose apps answered
/// alike.
pub fn answer_digest(status: u16, body: &[u8]) -> u64 {
    fnv1a(&[&status.to_be_bytes(), body])
}

/// FNV-1a over `parts` one after the other. (Defined, unlike std's hashers, so that replicas
/// and files of different builds agree.)
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|part| part.iter())
        .fold(0xcbf2_9ce4_8422_2325, |hash: u64, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The digest of a byte stream, fed as the bytes come: the same however they were split. Its
/// length (modulo 2^32) and its CRC-32 (hardware-assisted: every replica reads every byte its
/// app sends).
#[derive(Debug, Default)]
pub struct StreamDigest {
    crc: crc32fast::Hasher,
    len: u64,
}

impl StreamDigest {
    pub fn update(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn finish(self) -> u64 {
        (self.len << 32) | u64::from(self.crc.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::{Digests, KEPT, Report, StreamDigest, fnv1a};

    #[test]
    fn a_replica_that_healed_forgets_the_digests_of_the_state_it_left() {
        let digests = Digests::default();
        for seq in 1..=5 {
            digests.answer(seq, Some(seq * 10));
        }
        digests.expect(7);
        digests.forget_through(8);
        let report = digests.report(1, 10);
        assert!(report.digests.is_empty(), "{report:?}");
        assert_eq!(report.settled, 8, "nothing up to 8 is still to come");
        digests.answer(9, Some(90));
        assert_eq!(digests.report(1, 10).digests, [(9, 90)]);
    }

    /// Progress files and peers of other builds agree only if this stays FNV-1a.
    #[test]
    fn fnv1a_is_the_standard_one_over_the_parts_in_a_row() {
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"fo", b"", b"obar"]), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn digests_are_kept_in_order_of_sequence_number_whenever_they_come_and_the_oldest_go() {
        let digests = Digests::default();
        for seq in [5, 2, 9, 7] {
            digests.record(seq, seq * 10);
        }
        digests.record(5, 0);
        digests.handled(9);
        assert_eq!(
            digests.report(3, 2),
            Report {
                oldest: 2,
                settled: 9,
                digests: vec![(5, 50), (7, 70)]
            }
        );
        for seq in 10..10 + KEPT as u64 {
            digests.answer(seq, Some(0));
        }
        digests.answer(10 + KEPT as u64, None);
        let report = digests.report(0, usize::MAX);
        assert_eq!(
            (report.oldest, report.settled, report.digests.len()),
            (10, 10 + KEPT as u64, KEPT)
        );
        // One older than all kept comes too late: it is not kept. One among them is.
        digests.record(9, 90);
        assert_eq!(digests.report(0, 1).digests, [(10, 0)]);
        digests.record(11 + KEPT as u64, 1);
        let report = digests.report(0, usize::MAX);
        assert_eq!(report.digests.first(), Some(&(11, 0)));
        assert_eq!(report.digests.last(), Some(&(11 + KEPT as u64, 1)));
    }

    #[test]
    fn a_digest_that_comes_late_goes_in_its_place_among_a_full_window() {
        let digests = Digests::default();
        for n in 0..KEPT as u64 {
            digests.answer(10 + 2 * n, Some(n));
        }
        digests.record(13, 99);
        let kept = digests.report(0, usize::MAX).digests;
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[..3], [(12, 1), (13, 99), (14, 2)]);
    }

    #[test]
    fn what_is_settled_stops_below_a_digest_still_to_come() {
        let digests = Digests::default();
        assert_eq!(digests.report(1, 10).oldest, 1);
        digests.handled(3);
        digests.expect(4);
        digests.answer(4, None);
        digests.expect(6);
        digests.answer(8, None);
        assert_eq!(digests.report(1, 10).settled, 3);
        digests.record(4, 44);
        assert_eq!(digests.report(1, 10).settled, 5);
        digests.forgo(6);
        assert_eq!(
            digests.report(1, 10),
            Report {
                oldest: 4,
                settled: 8,
                digests: vec![(4, 44)]
            }
        );
    }

    #[test]
    fn a_streams_digest_does_not_depend_on_how_it_was_split() {
        let digest = |parts: &[&[u8]]| {
            let mut digest = StreamDigest::default();
            for part in parts {
                digest.update(part);
            }
            digest.finish()
        };
        let whole = digest(&[b"OK 1\nEOF 1\n"]);
        assert_eq!(digest(&[b"OK 1\nE", b"", b"OF 1\n"]), whole);
        assert_ne!(digest(&[b"OK 2\nEOF 1\n"]), whole);
        assert_ne!(digest(&[b"OK 1\nEOF 1\n\0"]), whole);
    }
}
