//! Warnings about something that keeps failing (a peer unreachable, TLS handshakes refused):
//! the first is logged at once, later ones at most once per [`EVERY`], each saying how many
//! failures it stands for, so that an operator sees the trouble without a flood of lines.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Shortest time between two warnings about the same thing.
pub const EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Warnings {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last warning was logged.
    last: Option<Instant>,
    /// Failures since then, not logged.
    unlogged: u64,
    /// Failures since the last success.
    failing: u64,
}

impl Warnings {
    /// Counts a failure at `now`; `Some(n)` if it is to be logged, standing for `n` failures
    /// (itself and those left unlogged since the last warning).
    pub fn failed(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap();
        state.unlogged += 1;
        state.failing += 1;
        if state
            .last
            .is_some_and(|last| now.duration_since(last) < EVERY)
        {
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }

    /// Counts a success; how many failures came since the last one (0: none, nothing to say).
    pub fn succeeded(&self) -> u64 {
        let mut state = self.state.lock().unwrap();
        let failing = std::mem::take(&mut state.failing);
        *state = State::default();
        failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_that_keeps_coming_is_logged_once_per_period_with_its_count() {
        let warnings = Warnings::default();
        let start = Instant::now();
        assert_eq!(warnings.failed(start), Some(1));
        for second in 1..30 {
            assert_eq!(warnings.failed(start + Duration::from_secs(second)), None);
        }
        assert_eq!(warnings.failed(start + EVERY), Some(30));
        assert_eq!(warnings.succeeded(), 31);
        assert_eq!(warnings.succeeded(), 0);
        // After a success, the next failure is news again.
        assert_eq!(warnings.failed(start + EVERY), Some(1));
    }
}
