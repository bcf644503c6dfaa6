//! Reads that skip the log (`--reads linearizable|local`), for requests whose method does not
//! change the app's state (by default GET, HEAD and OPTIONS).
//!
//! A linearizable read asks the leader for a read index: the leader confirms it still leads with
//! a round of heartbeats to a quorum and names its commit index; once this replica has applied
//! that far, its app has every write that was acknowledged before the read began, and answers.
//! A local read is answered by the local app at once, possibly without the latest writes.
//!
//! Either way the read takes its turn on the app's one connection, between ordered requests:
//! an app that serves one connection at a time is never asked for a second.
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{LEADERLESS, Node, SubmitError};
use crate::{
    http::{Response, ordered::Ordered},
    order::{
        self,
        peer::wire::{Call, Reply},
        read_index::read_index_on_leader,
    },
};

/// How reads are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadMode {
    /// Through the log like every request: the paper's behaviour.
    Ordered,
    /// Off the log, after a read index from the leader.
    Linearizable,
    /// Off the log, at once: may miss the latest writes.
    Local,
}

impl Node {
    /// Answers a read with the local app's response, off the log.
    pub async fn read(&self, payload: Bytes, mode: ReadMode) -> Result<Response, SubmitError> {
        let _permit = self.admit()?;
        let read = async {
            if mode == ReadMode::Linearizable {
                let index = self.read_index().await?;
                self.applied.applied_at_least(index).await;
            }
            let Some(ordered) = Ordered::decode(&payload) else {
                return Err(SubmitError::App("not an HTTP request".into()));
            };
            let request = ordered.request;
            let method = request.split(|b| *b == b' ').next().unwrap_or_default();
            let method = std::str::from_utf8(method).unwrap_or_default();
            // On the client's own app connection, as its ordered requests.
            let conn = (self.id, self.identity.incarnation, ordered.conn);
            self.app
                .read(conn, &request, method)
                .await
                .map_err(|e| SubmitError::App(e.to_string()))
        };
        tokio::time::timeout(self.request_timeout, read)
            .await
            .unwrap_or(Err(SubmitError::Timeout))
    }

    /// The leader's read index; `NoLeader` when no leader confirms one within [`LEADERLESS`].
    pub(crate) async fn read_index(&self) -> Result<u64, SubmitError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let (leader, addr) = order::leader(&self.raft);
            let index = match (leader, addr) {
                (Some(leader), _) if leader == self.id => {
                    read_index_on_leader(&self.raft, self.id).await.ok()
                }
                (Some(leader), Some(addr)) => match self
                    .peers
                    .get(leader, &addr)
                    .call(&Call::ReadIndex, LEADERLESS)
                    .await
                {
                    Ok(Reply::ReadIndex(Ok(index))) => Some(index),
                    _ => None,
                },
                _ => None,
            };
            if let Some(index) = index {
                return Ok(index);
            }
            if started.elapsed() > LEADERLESS {
                return Err(SubmitError::NoLeader);
            }
            self.await_leader_news(&mut backoff).await;
        }
    }
}
