//! Recognising a request proposed twice, however late its second copy lands: a proposal retried
//! through a leader change, or after a lost reply, can be in the log twice, and only its first
//! copy is delivered.
//!
//! Each origin (a node in one incarnation) is a client session, as in section 6.3 of the Raft
//! thesis: its batches carry the lowest request id it still had in flight when it made them
//! (the batch's *floor*). A request below the floor is settled: its origin saw it committed, or
//! its client gave up on it (and was told the outcome is unknown). So per origin, the state
//! machine keeps the highest floor seen and the ids at or above it that were delivered; a copy
//! of a request is recognised as long as it can still come, and the memory this takes is
//! bounded by what the origin has in flight, not by how long a retry may take. Every replica
//! builds the same sessions from the same log, so every replica decides alike; snapshots carry
//! them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::order::typ::{NodeId, RequestKey};

/// A node in one incarnation: the requests it proposes share their id sequence.
pub type Origin = (NodeId, u64);

/// Every origin's session.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    sessions: BTreeMap<Origin, Session>,
}

/// What is known of one origin's requests.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Requests below it are settled.
    floor: u64,
    /// Delivered ids at or above the floor, as ranges `start..end`: an origin's ids follow one
    /// another, so what was delivered is a few runs, split by what is still in flight.
    delivered: BTreeMap<u64, u64>,
}

impl Sessions {
    /// Takes note of a batch of `origin` made with `floor`: its requests below it are settled.
    pub fn advance(&mut self, origin: Origin, floor: u64) {
        let session = self.sessions.entry(origin).or_default();
        if floor <= session.floor {
            return;
        }
        session.floor = floor;
        let mut kept = session.delivered.split_off(&floor);
        if let Some((_, &end)) = session.delivered.last_key_value()
            && end > floor
        {
            kept.insert(floor, end);
        }
        session.delivered = kept;
    }

    /// Whether `key` is a request seen for the first time; if so it is remembered. `false` for
    /// a copy of one delivered before, or of one already settled.
    pub fn first(&mut self, key: RequestKey) -> bool {
        let (origin, incarnation, id) = key;
        let session = self.sessions.entry((origin, incarnation)).or_default();
        id >= session.floor && session.insert(id)
    }

    /// Ranges of delivered ids held, over all origins: what the sessions cost in memory.
    pub fn size(&self) -> usize {
        self.sessions.values().map(|s| s.delivered.len()).sum()
    }
}

impl Session {
    /// Adds `id`; `false` if it was there.
    fn insert(&mut self, id: u64) -> bool {
        let next = id.saturating_add(1);
        let before = self
            .delivered
            .range(..=id)
            .next_back()
            .map(|(&s, &e)| (s, e));
        if let Some((_, end)) = before
            && id < end
        {
            return false;
        }
        // Joins the run ending at `id` and the one starting right after it, if there are.
        let start = match before {
            Some((start, end)) if end == id => start,
            _ => id,
        };
        let end = self.delivered.remove(&next).unwrap_or(next);
        self.delivered.insert(start, end);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_recognised_however_late_and_settled_requests_are_forgotten() {
        let mut sessions = Sessions::default();
        let a = (1, 7);
        sessions.advance(a, 100);
        for id in [100, 101, 103] {
            assert!(sessions.first((1, 7, id)), "{id}");
        }
        assert!(!sessions.first((1, 7, 101)), "a copy");
        assert!(!sessions.first((1, 7, 99)), "below the floor: settled");
        assert!(sessions.first((1, 8, 101)), "another incarnation's id 101");
        assert!(sessions.first((2, 7, 101)), "another node's id 101");
        // Request 102 stays in flight for as long as it takes (the origin's floor stays at
        // 102): millions of requests later, a copy of 103 is still recognised, and the session
        // holds one run, not millions of ids.
        for id in 104..1_000_000 {
            sessions.advance(a, 102);
            assert!(sessions.first((1, 7, id)));
        }
        assert!(!sessions.first((1, 7, 103)));
        assert!(!sessions.first((1, 7, 101)), "settled");
        assert_eq!(
            sessions.sessions[&a].delivered,
            BTreeMap::from([(103, 1_000_000)])
        );
        // 102 comes, once.
        assert!(sessions.first((1, 7, 102)));
        assert!(!sessions.first((1, 7, 102)));
        assert_eq!(
            sessions.sessions[&a].delivered,
            BTreeMap::from([(102, 1_000_000)])
        );
        // Once nothing below 500000 is in flight, what lies below is forgotten.
        sessions.advance(a, 500_000);
        assert_eq!(
            sessions.sessions[&a].delivered,
            BTreeMap::from([(500_000, 1_000_000)])
        );
        assert!(
            !sessions.first((1, 7, 102)),
            "still recognised: below the floor"
        );
        // A floor seen late (a batch made earlier, committed later) changes nothing.
        sessions.advance(a, 200);
        assert_eq!(sessions.sessions[&a].floor, 500_000);
        assert_eq!(sessions.size(), 3);
    }

    #[test]
    fn runs_join_whichever_order_ids_come_in() {
        let mut session = Session::default();
        for id in [5, 3, 4, 9, 7, 8, 6] {
            assert!(session.insert(id));
        }
        assert_eq!(session.delivered, BTreeMap::from([(3, 10)]));
        for id in 3..10 {
            assert!(!session.insert(id));
        }
    }
}
