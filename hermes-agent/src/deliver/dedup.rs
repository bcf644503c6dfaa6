//! Recognising a request proposed twice: a proposal retried through a leader change (or after a
//! lost reply) can land in the log twice, and only its first copy is delivered. Keys of the last
//! [`WINDOW`] requests are kept; every replica builds the same window from the same log, so every
//! replica decides alike.
use std::collections::{HashSet, VecDeque};

use crate::order::typ::RequestKey;

/// Requests over which duplicates are recognised. A retried proposal lands within the request
/// timeout of the original; at 20k requests/s that is 13 s.
pub const WINDOW: u64 = 1 << 18;

/// Keys of the last [`WINDOW`] requests, by sequence number.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashSet<RequestKey>,
    order: VecDeque<(u64, RequestKey)>,
}

impl Dedup {
    /// The window as a snapshot carries it, oldest first.
    pub fn from_window(window: Vec<(u64, RequestKey)>) -> Self {
        let mut dedup = Self::default();
        for (seq, key) in window {
            dedup.insert(seq, key);
        }
        dedup
    }

    /// The window, oldest first, for a snapshot.
    pub fn window(&self) -> Vec<(u64, RequestKey)> {
        self.order.iter().copied().collect()
    }

    pub fn contains(&self, key: &RequestKey) -> bool {
        self.seen.contains(key)
    }

    /// Remembers request `seq`, forgetting those that fall out of the window.
    pub fn insert(&mut self, seq: u64, key: RequestKey) {
        self.seen.insert(key);
        self.order.push_back((seq, key));
        while let Some(&(oldest, key)) = self.order.front() {
            if oldest + WINDOW > seq {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_beyond_the_window() {
        let mut dedup = Dedup::default();
        dedup.insert(1, (1, 1, 7));
        assert!(dedup.contains(&(1, 1, 7)));
        assert!(!dedup.contains(&(1, 2, 7)), "another incarnation's id 7");
        dedup.insert(WINDOW, (2, 1, 7));
        assert!(dedup.contains(&(1, 1, 7)));
        dedup.insert(WINDOW + 1, (2, 1, 8));
        assert!(!dedup.contains(&(1, 1, 7)));
        assert!(dedup.contains(&(2, 1, 7)));
        assert_eq!(Dedup::from_window(dedup.window()).window(), dedup.window());
    }
}
