//! This node's requests in flight: the ids it has handed out and not yet seen settled. The lowest
//! of them is the floor every batch carries ([`super::typ::Batch::floor`]): a request leaves
//! the set once its origin saw it committed, or once its client gave up on it, so nothing below
//! the floor can still be retried by this node, and the state machine forgets it
//! ([`crate::deliver::sessions`]).
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

/// The ids in flight, and the next to hand out.
#[derive(Debug)]
pub struct InFlight {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    ids: BTreeSet<u64>,
    next: u64,
}

/// A request id in flight, until this is dropped.
#[derive(Debug)]
pub struct Flying {
    in_flight: Arc<InFlight>,
    pub id: u64,
}

impl InFlight {
    /// Ids are handed out from `first` on.
    pub fn new(first: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                ids: BTreeSet::new(),
                next: first,
            }),
        })
    }

    /// A new request id, in flight until the [`Flying`] is dropped.
    pub fn start(self: &Arc<Self>) -> Flying {
        let mut state = self.state.lock().unwrap();
        let id = state.next;
        state.next += 1;
        state.ids.insert(id);
        Flying {
            in_flight: Arc::clone(self),
            id,
        }
    }

    /// The lowest id in flight, or, with none, the next to be handed out.
    pub fn floor(&self) -> u64 {
        let state = self.state.lock().unwrap();
        state.ids.first().copied().unwrap_or(state.next)
    }
}

impl Drop for Flying {
    fn drop(&mut self) {
        self.in_flight.state.lock().unwrap().ids.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_oldest_request_not_settled() {
        let in_flight = InFlight::new(1 << 40);
        assert_eq!(in_flight.floor(), 1 << 40);
        let a = in_flight.start();
        let b = in_flight.start();
        let c = in_flight.start();
        assert_eq!((a.id, b.id, c.id), (1 << 40, (1 << 40) + 1, (1 << 40) + 2));
        drop(b);
        assert_eq!(
            in_flight.floor(),
            a.id,
            "an older request still in flight holds it"
        );
        drop(a);
        assert_eq!(in_flight.floor(), c.id);
        drop(c);
        assert_eq!(
            in_flight.floor(),
            (1 << 40) + 3,
            "none in flight: the next id"
        );
    }
}
