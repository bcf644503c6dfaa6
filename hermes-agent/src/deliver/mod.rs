//! Delivery: the state machine's side of the app, and the one place that answers "was request N
//! delivered?". The app is unchanged: it deduplicates nothing, may be slow, may close idle
//! connections, answer before reading a body, send bytes nobody asked for, or crash. The rules
//! that keep its replicas identical anyway:
//!
//! - A request counts as delivered once its last byte is written to the app's socket (the kernel
//!   holds it; the app gets it even if the agent dies this instant). "Written up to N" is
//!   persisted right after that write, before the answer is awaited; "writing N" right before
//!   it. After the agent's crash delivery resumes at N + 1: a written request is not sent again.
//! - A written request is never sent again because of the agent's own trouble: not on a slow
//!   answer (it is waited for; the app is reported slow), not on an answer that cannot be framed
//!   (the origin's client gets 502), not on a stale kept-alive connection (checked before writing).
//! - What Hermes cannot decide: the app's connection ending after a whole request and before its
//!   answer (the app died, or closed on it), or the agent dying between "writing N" and "written
//!   N". The request is then sent once more, after the app is back, with `Hermes-Log-Index: N`,
//!   and counted as in doubt. Apps that want exactly-once even then deduplicate on that header.
//! - Requests proposed twice (a retry through a leader change) are recognised by their key and
//!   delivered once ([`dedup`]).
//!
//! In raw TCP mode the log holds connection events instead of requests, and [`tcp`] applies
//! them, under the same rules: a chunk whose first byte may have gone to the app is never
//! written again (after a crash in the middle of one it is counted in doubt).
//!
//! [`app`] is the connection to the app; [`hooks`] are the snapshot commands; [`progress`] is
//! what survives a restart.
pub mod app;
mod dedup;
pub mod hooks;
pub(crate) mod progress;
pub mod tcp;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;

pub use app::App;
use app::Sent;
pub use dedup::{Dedup, WINDOW as DEDUP_WINDOW};
pub use progress::Progress;
use progress::ProgressFile;

use crate::{
    http::{
        request::CLOSE,
        response::{ReadError, Response},
    },
    order::{
        digests::{Digest, answer_digest},
        typ::{LogId, RequestKey},
    },
    tcp::Chunk,
};

/// The header that tells the app a request's position in the total order, the same on every
/// replica.
pub const LOG_INDEX_HEADER: &str = "Hermes-Log-Index";

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    /// The app answered.
    Answered(Response),
    /// Delivered, but there is no answer to pass on (the origin's client gets 502): why.
    Unanswered(&'static str),
    /// A second copy of a request delivered before: not sent.
    Duplicate,
    /// Written before this agent restarted; its answer went with the agent.
    Earlier,
    /// A TCP connection's event, applied (its answer, if any, is a byte stream of its own).
    Event,
}

impl Outcome {
    /// A digest of what the app answered (its status, and its body unless only the status is
    /// compared), to compare replicas: `None` when this replica has no answer of its own to
    /// compare, or nothing is compared.
    pub fn digest(&self, what: Digest) -> Option<u64> {
        match (self, what) {
            // Raw TCP mode's digests are of connections, not of events (`tcp`).
            (_, Digest::Off | Digest::Bytes) => None,
            (Self::Answered(response), Digest::StatusAndBody) => {
                Some(answer_digest(response.status, &response.body))
            }
            (Self::Answered(response), Digest::Status) => Some(answer_digest(response.status, b"")),
            (Self::Unanswered(_), _) => Some(answer_digest(0, b"no answer")),
            (Self::Duplicate | Self::Earlier | Self::Event, _) => None,
        }
    }
}

/// Exactly-once delivery of the ordered requests to the app.
#[derive(Debug)]
pub struct Delivery {
    app: Arc<App>,
    file: ProgressFile,
    progress: Progress,
    dedup: Dedup,
    /// Raw TCP mode's app connections; `None` in HTTP mode.
    tcp: Option<tcp::Connections>,
}

impl Delivery {
    /// Opens the progress kept at `path`. A request written before the agent stopped whose
    /// answer it never read is counted as unconfirmed: it is not sent again (the app has it),
    /// but if the app stopped too, it may not have run it.
    pub fn open(
        path: &Path,
        app: Arc<App>,
        tcp: Option<tcp::Connections>,
    ) -> std::io::Result<Self> {
        let (mut file, mut progress) = ProgressFile::open(path)?;
        let written = progress.written;
        if written > progress.answered && progress.doubted != written {
            tracing::warn!(
                seq = written,
                "the agent stopped before the app answered this request; it is not sent again, \
                 but if the app stopped too it may not have run it"
            );
            progress.unconfirmed += 1;
            progress.answered = written;
            file.write(&progress)?;
        }
        Ok(Self {
            app,
            file,
            progress,
            dedup: Dedup::default(),
            tcp,
        })
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Sets the duplicate window (rebuilt from the log on start).
    pub fn set_dedup(&mut self, dedup: Dedup) {
        self.dedup = dedup;
    }

    /// Raw TCP mode's app connections; `None` in HTTP mode.
    pub fn tcp_mut(&mut self) -> Option<&mut tcp::Connections> {
        self.tcp.as_mut()
    }

    /// The duplicate window, for a snapshot.
    pub fn dedup_window(&self) -> Vec<(u64, RequestKey)> {
        self.dedup.window()
    }

    /// Delivers request `seq` (its position in the total order) with `key`, unless it was
    /// delivered before, and returns what became of it. Errors are the progress file's.
    pub async fn deliver(
        &mut self,
        seq: u64,
        key: RequestKey,
        request: &Bytes,
    ) -> std::io::Result<Outcome> {
        let progress = &self.progress;
        // Counted in doubt before a restart, and not answered yet: sent once more still.
        let resending = progress.doubted == seq && progress.answered < seq;
        if seq <= progress.answered || (seq <= progress.written && !resending) {
            // Delivered before a restart, which rebuilt the window only up to the previous
            // entry: remember it, so that a retry of it is recognised.
            self.dedup.insert(seq, key);
            // So was a `Lost` of that entry, which the rebuild at start did not see either.
            if let Some(connections) = &mut self.tcp
                && let Some(lost) = tcp::lost(key, request)
            {
                connections.restore_lost([lost]);
            }
            return Ok(Outcome::Earlier);
        }
        if self.dedup.contains(&key) {
            tracing::debug!(seq, ?key, "duplicate proposal; not delivered again");
            self.progress.writing = seq;
            self.progress.written = seq;
            self.progress.answered = seq;
            self.file.write(&self.progress)?;
            return Ok(Outcome::Duplicate);
        }
        self.dedup.insert(seq, key);
        if self.tcp.is_some() {
            return self.deliver_event(seq, key, request).await;
        }
        let Some((head, body)) = split(request) else {
            tracing::error!(seq, "not an HTTP request; nothing sent to the app");
            return self.outcome(seq, Outcome::Unanswered("not an HTTP request"));
        };
        let method = head.split(|b| *b == b' ').next().unwrap_or_default();
        let method = std::str::from_utf8(method).unwrap_or_default();
        let close = head
            .windows(CLOSE.len() + 2)
            .any(|w| w[2..] == *CLOSE && w[..2] == *b"\r\n");
        let mut head = head.to_vec();
        head.extend_from_slice(format!("{LOG_INDEX_HEADER}: {seq}\r\n\r\n").as_bytes());

        let app = Arc::clone(&self.app);
        let mut turn = app.turn().await;
        let mut again = resending;
        if !again && self.progress.writing == seq {
            // Begun before the agent stopped: whether the app got it is unknown.
            again = true;
            self.doubt(seq, "the agent stopped while writing it")?;
        }
        let mut delay = RETRY_MIN;
        loop {
            turn.ready().await;
            if self.progress.writing != seq {
                // Right before the first byte goes out.
                self.progress.writing = seq;
                self.file.write(&self.progress)?;
            }
            let (progress, file) = (&mut self.progress, &mut self.file);
            let delivered = || {
                if progress.written < seq {
                    progress.written = seq;
                    progress.deliveries += 1;
                }
                file.write(progress)
            };
            let exchanged = turn.exchange(&head, body, method, close, delivered).await?;
            let why = match (exchanged.sent, exchanged.answer) {
                (_, Ok(response)) => return self.outcome(seq, Outcome::Answered(response)),
                (Sent::Nothing, _) => {
                    // The app cannot have it (not even its head went out): send it again.
                    tracing::debug!(seq, "writing to the app failed; sending again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    continue;
                }
                (_, Err(ReadError::Invalid(why))) => {
                    tracing::warn!(
                        seq,
                        why,
                        "the app's answer cannot be passed on; not sending again"
                    );
                    why
                }
                (_, Err(ReadError::Cut)) => {
                    tracing::warn!(
                        seq,
                        "the app's answer was cut short; it had the request: not sending it again"
                    );
                    "the app's answer was cut short"
                }
                (_, Err(ReadError::Closed)) if !again => {
                    again = true;
                    self.doubt(seq, "the app's connection ended before its answer")?;
                    continue;
                }
                (_, Err(ReadError::Closed)) => {
                    tracing::warn!(seq, "the app's connection ended before its answer, twice");
                    "the app's connection ended before its answer"
                }
            };
            return self.outcome(seq, Outcome::Unanswered(why));
        }
    }

    /// Applies event `seq` of a TCP connection of `key`'s origin.
    async fn deliver_event(
        &mut self,
        seq: u64,
        key: RequestKey,
        payload: &Bytes,
    ) -> std::io::Result<Outcome> {
        let Some(chunk) = Chunk::decode(payload) else {
            tracing::error!(seq, "not a TCP connection event; nothing sent to the app");
            return self.outcome(seq, Outcome::Unanswered("not a TCP connection event"));
        };
        if self.progress.writing == seq {
            // Begun before the agent stopped: the app may have part of the chunk, on a
            // connection that went with the agent. It is not written again.
            tracing::warn!(
                seq,
                "the agent stopped while writing this chunk to the app; it is not written again, \
                 and the app may have had part of it"
            );
            self.progress.in_doubt += 1;
            return self.outcome(seq, Outcome::Event);
        }
        let app = Arc::clone(&self.app);
        // Held until the progress is written: a planned stop waits for it.
        let _turn = app.turn().await;
        let Self {
            file,
            progress,
            tcp: Some(connections),
            ..
        } = self
        else {
            unreachable!("TCP mode")
        };
        let writing = || {
            progress.writing = seq;
            file.write(progress)
        };
        let conn = (key.0, key.1, chunk.conn);
        let applied = connections
            .apply(&app, seq, conn, chunk.event, writing)
            .await?;
        if applied != tcp::Applied::Ignored {
            self.progress.deliveries += 1;
        }
        self.outcome(seq, Outcome::Event)
    }

    /// Records that request `seq`'s outcome is known, and returns it.
    fn outcome(&mut self, seq: u64, outcome: Outcome) -> std::io::Result<Outcome> {
        self.progress.writing = self.progress.writing.max(seq);
        self.progress.written = self.progress.written.max(seq);
        self.progress.answered = seq;
        self.file.write(&self.progress)?;
        Ok(outcome)
    }

    /// Counts request `seq` as in doubt: it goes to the app once more (also after a restart).
    fn doubt(&mut self, seq: u64, why: &str) -> std::io::Result<()> {
        tracing::warn!(
            seq,
            why,
            "in doubt whether the app has the request: sending it once more, with {LOG_INDEX_HEADER}: {seq}"
        );
        self.progress.in_doubt += 1;
        self.progress.doubted = seq;
        self.file.write(&self.progress)
    }

    /// Records that every request of entry `log_id` was handled.
    pub fn finish_entry(&mut self, log_id: LogId) -> std::io::Result<()> {
        self.progress.applied = Some(log_id);
        self.progress.requests = self.progress.written;
        self.file.write(&self.progress)
    }

    /// Marks the app's state as being replaced by a snapshot's.
    pub fn begin_install(&mut self) -> std::io::Result<()> {
        self.progress.installing = true;
        self.file.write(&self.progress)
    }

    /// Records that the app's state is the snapshot's: up to request `requests` of entry
    /// `applied`, with `deliveries` and the snapshot's duplicate window.
    pub fn finish_install(
        &mut self,
        applied: Option<LogId>,
        requests: u64,
        deliveries: u64,
        window: Vec<(u64, RequestKey)>,
    ) -> std::io::Result<()> {
        self.progress = Progress {
            applied,
            requests,
            writing: requests,
            written: requests,
            answered: requests,
            deliveries,
            installing: false,
            ..self.progress
        };
        self.dedup = Dedup::from_window(window);
        self.file.write(&self.progress)
    }
}

/// A canonical request split after its last field line's CRLF, before the empty line.
fn split(request: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&request[..end + 2], &request[end + 4..]))
}
