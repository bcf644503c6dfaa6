//! Gathering: what queues up while earlier groups are in flight goes out together as the next
//! group, so that under load one round trip serves many; at low load a group is a single item
//! and waits for nothing. A node gathers its clients' requests into batches, and the leader the
//! batches of every node into log entries ([`super::propose`]).
use std::{future::Future, sync::Arc};

use tokio::sync::{Semaphore, mpsc, oneshot};

/// What is gathered.
pub trait Item: Send + 'static {
    /// Bytes it adds to a group.
    fn bytes(&self) -> usize;
}

/// How groups are made.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Permits shared by the groups in flight.
    pub permits: u32,
    /// Permits a group takes, by the bytes of the item that opens it.
    pub takes: fn(usize) -> u32,
    /// Items in one group at most.
    pub items: usize,
    /// Bytes in one group at most (a single larger item still goes alone).
    pub bytes: usize,
}

/// An item waiting for its group, and where the group's outcome `O` goes.
struct Waiting<T, O> {
    item: T,
    outcome: oneshot::Sender<O>,
}

/// Where items queue up to be gathered.
pub struct Gatherer<T, O> {
    queue: mpsc::UnboundedSender<Waiting<T, O>>,
}

impl<T, O> Clone for Gatherer<T, O> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Item, O: Copy + Send + 'static> Gatherer<T, O> {
    /// Starts gathering within `bounds`: each group goes out with `send`, and each of its items
    /// gets the outcome.
    pub fn start<F, S>(bounds: Bounds, send: S) -> Self
    where
        S: Fn(Vec<T>) -> F + Send + 'static,
        F: Future<Output = O> + Send + 'static,
    {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(gather(waiting, bounds, send));
        Self { queue }
    }

    /// Queues `item` and says what became of its group; `None` if it went out in none (the
    /// gathering stopped).
    pub async fn submit(&self, item: T) -> Option<O> {
        self.queue(item).await.ok()
    }

    /// Queues `item`; what became of its group comes on the receiver. Dropping the receiver
    /// withdraws the item if its group has not gone out yet.
    pub fn queue(&self, item: T) -> oneshot::Receiver<O> {
        let (outcome, receive) = oneshot::channel();
        // A gathering that stopped drops the sender: the receiver says so.
        let _ = self.queue.send(Waiting { item, outcome });
        receive
    }
}

async fn gather<T, O, F, S>(
    mut queue: mpsc::UnboundedReceiver<Waiting<T, O>>,
    bounds: Bounds,
    send: S,
) where
    T: Item,
    O: Copy + Send + 'static,
    S: Fn(Vec<T>) -> F,
    F: Future<Output = O> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(bounds.permits as usize));
    // An item that did not fit in the previous group: it opens the next.
    let mut carried: Option<Waiting<T, O>> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.item.bytes();
        let takes = (bounds.takes)(bytes);
        let Ok(permit) = Arc::clone(&in_flight).acquire_many_owned(takes).await else {
            return;
        };
        // Whatever arrived meanwhile goes along, within the bounds. Items nobody waits for any
        // more (a request given up, a forward that timed out) are left out: they are not sent,
        // and their senders send them again or gave them up.
        let mut group = vec![first];
        while group.len() < bounds.items {
            let Ok(next) = queue.try_recv() else { break };
            if next.outcome.is_closed() {
                continue;
            }
            let more = next.item.bytes();
            if bytes + more > bounds.bytes {
                carried = Some(next);
                break;
            }
            bytes += more;
            group.push(next);
        }
        group.retain(|waiting| !waiting.outcome.is_closed());
        if group.is_empty() {
            continue;
        }
        let (items, waiters): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|waiting| (waiting.item, waiting.outcome))
            .unzip();
        let sent = send(items);
        tokio::spawn(async move {
            let outcome = sent.await;
            drop(permit);
            for waiter in waiters {
                let _ = waiter.send(outcome);
            }
        });
    }
}
