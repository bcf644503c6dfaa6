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
//!   It goes again each time the connection ends so (each replica's app must end up with it, if
//!   the app is merely restarted), [`MAX_SENDS`] times at most (an app that dies of a request or
//!   closes on it gets it as often on every replica).
//! - Requests proposed twice (a retry through a leader change) are recognised by their key and
//!   delivered once, however late the second copy lands ([`sessions`]).
//! - A machine crash loses what was only in the page cache: before the first byte of a request
//!   goes to the app, "requests up to D may have begun" is durable (one sync for the next
//!   [`PROMISED`] requests); after the machine restarted, the requests after the last one known
//!   written, up to D (at most 1.5 times [`PROMISED`]), are in doubt (sent once more, counted).
//! - Each client connection's requests go to the app over an app connection of their own
//!   ([`app`]): what an app does wrong on one connection touches no other client.
//!
//! In raw TCP mode the log holds connection events instead of requests, and [`tcp`] applies
//! them, under the same rules, and one more: a replica never writes a suffix of a connection's
//! stream. The connections it had open when its agent stopped are gone with the agent; an event
//! of one of them that carries bytes is not applied, and the replica fences itself (its app may
//! now differ from the others').
//!
//! [`state_machine`] is the app as Raft's state machine: it takes the committed entries of
//! ordering's log and hands their requests to [`Delivery`]. [`app`] is the connection to the
//! app; [`hooks`] are the snapshot commands; [`progress`] is what survives a restart;
//! [`digests`] and [`divergence`] compare the replicas' answers.
pub mod app;
#[cfg(test)]
mod crash_tests;
pub mod digests;
pub mod divergence;
pub mod hooks;
pub(crate) mod progress;
pub mod sessions;
pub mod state_machine;
pub mod tcp;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;

use std::{
    fs::File,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;

pub use app::App;
use app::Sent;
use digests::answer_digest;
use progress::ProgressFile;
pub use progress::{Progress, Storage, boot_id, initial as initial_progress};
pub use sessions::Sessions;

use crate::{
    http::{
        ordered::Ordered,
        request::CLOSE,
        response::{ReadError, Response},
    },
    order::{
        peer::wire::Digest,
        typ::{LogId, NodeId, RequestKey},
    },
    tcp::Chunk,
};

/// The header that tells the app a request's position in the total order, the same on every
/// replica.
pub const LOG_INDEX_HEADER: &str = "Hermes-Log-Index";

/// Requests that may begin going to the app after one sync of the progress. The next promise is
/// synced when half of this one is left, so a machine crash can leave up to 1.5 times as many in
/// doubt. One sync per request (or per entry) would cost the apply loop a disk flush each, and
/// so most of its throughput (docs/decisions.md).
pub const PROMISED: u64 = 256;

/// Sends of one request at most in one life of the agent while the app's connection ends before
/// its answer each time (an app that dies of it and is restarted, or closes on it): the same
/// number on every replica, whatever the timing of each.
const MAX_SENDS: u32 = 4;

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
    /// A TCP connection's event this replica cannot apply as the others do: why. The replica
    /// fences itself.
    Diverged(String),
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
            (Self::Duplicate | Self::Earlier | Self::Event | Self::Diverged(_), _) => None,
        }
    }
}

/// Exactly-once delivery of the ordered requests to the app.
#[derive(Debug)]
pub struct Delivery {
    app: Arc<App>,
    /// Shared with the planned stop, which writes the last record.
    file: Arc<Mutex<ProgressFile>>,
    progress: Progress,
    /// Requests one sync of the progress lets begin ([`PROMISED`]; tests make it small).
    promised: u64,
    sessions: Sessions,
    /// Raw TCP mode's app connections; `None` in HTTP mode.
    tcp: Option<tcp::Connections>,
}

/// Records a planned stop in the progress (see [`ProgressFile::stop`]).
#[derive(Debug, Clone)]
pub struct Stopper {
    file: Arc<Mutex<ProgressFile>>,
}

impl Delivery {
    /// Opens the progress kept in `file` (opened by the data directory: never by a path);
    /// `boot` is the kernel's boot id.
    pub fn open(
        file: File,
        boot: u128,
        app: Arc<App>,
        tcp: Option<tcp::Connections>,
    ) -> std::io::Result<Self> {
        Self::on(ProgressFile::open(file)?, boot, app, tcp)
    }

    /// Takes up the progress `kept` in its file. A request written before the agent stopped
    /// whose answer it never read is counted as unconfirmed: it is not sent again (the app has
    /// it), but if the app stopped too, it may not have run it. After the machine restarted
    /// (`boot` is not the record's), the requests that may have begun after the last one known
    /// written are in doubt.
    pub fn on(
        kept: (ProgressFile, Progress),
        boot: u128,
        app: Arc<App>,
        tcp: Option<tcp::Connections>,
    ) -> std::io::Result<Self> {
        let (mut file, mut progress) = kept;
        let written = progress.written;
        if written > progress.answered && progress.doubted < written {
            tracing::warn!(
                seq = written,
                "the agent stopped before the app answered this request; it is not sent again, \
                 but if the app stopped too it may not have run it"
            );
            progress.unconfirmed += 1;
            progress.answered = written;
        }
        if progress.boot != boot && !progress.stopped && progress.durable_through > written {
            tracing::warn!(
                from = written + 1,
                to = progress.durable_through,
                "the machine restarted while these requests may have been going to the app, and \
                 what was recorded of them since may be lost: each is sent once more, with \
                 {LOG_INDEX_HEADER}, and counted in doubt as it is"
            );
            progress.doubted = progress.doubted.max(progress.durable_through);
        }
        // Nothing after what was begun has begun in this life: the first request that does
        // makes a new promise durable.
        progress.durable_through = progress.writing.max(written);
        progress.boot = boot;
        progress.stopped = false;
        // Durable at once: what is in doubt stays so through another crash.
        file.write_synced(&progress)?;
        Ok(Self {
            app,
            file: Arc::new(Mutex::new(file)),
            progress,
            promised: PROMISED,
            sessions: Sessions::default(),
            tcp,
        })
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Sets the sessions (rebuilt from the log on start).
    pub fn set_sessions(&mut self, sessions: Sessions) {
        self.sessions = sessions;
    }

    /// The sessions, for a snapshot.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Raw TCP mode's app connections; `None` in HTTP mode.
    pub fn tcp_mut(&mut self) -> Option<&mut tcp::Connections> {
        self.tcp.as_mut()
    }

    /// Lets one sync of the progress cover `n` requests instead of [`PROMISED`].
    #[cfg(test)]
    pub fn promising(&mut self, n: u64) {
        self.promised = n.max(1);
    }

    /// Syncs nothing of the progress (`--no-progress-sync`; see [`ProgressFile::without_syncs`]).
    pub fn without_syncs(&mut self) {
        self.file.lock().unwrap().without_syncs();
    }

    /// What records a planned stop.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            file: Arc::clone(&self.file),
        }
    }

    /// A batch of `origin` (node, incarnation) made with `floor` is applied next.
    pub fn advance(&mut self, origin: (NodeId, u64), floor: u64) {
        self.sessions.advance(origin, floor);
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
        // Counted in doubt, and not answered yet: sent once more still.
        let resending = seq > progress.answered && seq <= progress.doubted;
        if seq <= progress.answered || (seq <= progress.written && !resending) {
            // Handled before a restart, whose rebuild may not have seen it: remember it, so that
            // a retry of it is recognised, and the TCP connection it opened or closed (a copy was
            // not applied, and is not now).
            if self.sessions.first(key)
                && let Some(connections) = &mut self.tcp
                && let Some(chunk) = Chunk::decode(request)
            {
                connections.replayed((key.0, key.1, chunk.conn), &chunk.event);
            }
            return Ok(Outcome::Earlier);
        }
        if !self.sessions.first(key) {
            tracing::debug!(seq, ?key, "duplicate proposal; not delivered again");
            self.progress.writing = self.progress.writing.max(seq);
            self.progress.written = seq;
            self.progress.answered = seq;
            self.write()?;
            return Ok(Outcome::Duplicate);
        }
        if self.tcp.is_some() {
            return self.deliver_event(seq, key, request, resending).await;
        }
        let Some((conn, head, body)) = Ordered::decode(request).and_then(|ordered| {
            let (head, body) = split(&ordered.request)?;
            Some((ordered.conn, head.to_vec(), ordered.request.slice_ref(body)))
        }) else {
            tracing::error!(seq, "not an HTTP request; nothing sent to the app");
            return self.outcome(seq, Outcome::Unanswered("not an HTTP request"));
        };
        let conn = (key.0, key.1, conn);
        let method = head.split(|b| *b == b' ').next().unwrap_or_default();
        let method = std::str::from_utf8(method).unwrap_or_default().to_owned();
        let close = head
            .windows(CLOSE.len() + 2)
            .any(|w| w[2..] == *CLOSE && w[..2] == *b"\r\n");
        let mut head = head;
        head.extend_from_slice(format!("{LOG_INDEX_HEADER}: {seq}\r\n\r\n").as_bytes());

        let app = Arc::clone(&self.app);
        let mut turn = app.turn().await;
        // Going to the app once more: counted as it goes (the count durable before it goes).
        let mut again = resending;
        if !again && self.progress.writing == seq {
            // Begun before the agent stopped: whether the app got it is unknown.
            again = true;
            self.doubt(seq, "the agent stopped while writing it");
        }
        let mut uncounted = again;
        let mut delay = RETRY_MIN;
        // Sends in this life whose connection ended before an answer.
        let mut ended = 0;
        loop {
            turn.ready(conn).await;
            let counting = std::mem::take(&mut uncounted);
            if counting {
                self.progress.in_doubt += 1;
            }
            self.begin(seq, counting)?;
            let (progress, file) = (&mut self.progress, &self.file);
            let delivered = || {
                if progress.written < seq {
                    progress.written = seq;
                    progress.deliveries += 1;
                }
                file.lock().unwrap().write(progress)
            };
            let exchanged = turn
                .exchange(conn, &head, &body, &method, close, delivered)
                .await?;
            let why = match (exchanged.sent, exchanged.answer) {
                (_, Ok(response)) => return self.outcome(seq, Outcome::Answered(response)),
                (Sent::Nothing | Sent::Head, _) => {
                    // The app cannot have it whole (its body, at least, did not all go out, and
                    // no answer came): send it again.
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
                (_, Err(ReadError::Closed)) if ended + 1 < MAX_SENDS => {
                    ended += 1;
                    if !again {
                        again = true;
                        self.doubt(seq, "the app's connection ended before its answer");
                        // Kept at once: an agent that dies before it sends again must not take
                        // the request for one the app has.
                        self.write()?;
                    }
                    // Each time it goes again, counted.
                    uncounted = true;
                    // Not at once: a dying app takes a moment to stop listening.
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    continue;
                }
                (_, Err(ReadError::Closed)) => {
                    tracing::warn!(
                        seq,
                        sends = MAX_SENDS,
                        "the app's connection ended before its answer each time; not sending it \
                         again"
                    );
                    "the app's connection ended before its answer"
                }
            };
            return self.outcome(seq, Outcome::Unanswered(why));
        }
    }

    /// Applies event `seq` of a TCP connection of `key`'s origin; `resending`: it may have
    /// been applied before the machine restarted.
    async fn deliver_event(
        &mut self,
        seq: u64,
        key: RequestKey,
        payload: &Bytes,
        resending: bool,
    ) -> std::io::Result<Outcome> {
        let Some(chunk) = Chunk::decode(payload) else {
            tracing::error!(seq, "not a TCP connection event; nothing sent to the app");
            return self.outcome(seq, Outcome::Unanswered("not a TCP connection event"));
        };
        let app = Arc::clone(&self.app);
        // Held until the progress is written: a planned stop waits for it.
        let _turn = app.turn().await;
        let conn = (key.0, key.1, chunk.conn);
        let Self {
            file,
            progress,
            promised,
            tcp: Some(connections),
            ..
        } = self
        else {
            unreachable!("TCP mode")
        };
        // Applied once more after the machine restarted: counted as it goes.
        let writing = || {
            progress.in_doubt += u64::from(resending);
            begin(progress, file, seq, *promised, resending)
        };
        let applied = connections
            .apply(&app, seq, conn, chunk.event, writing)
            .await?;
        match applied {
            tcp::Applied::Done => {
                self.progress.deliveries += 1;
                self.outcome(seq, Outcome::Event)
            }
            tcp::Applied::Ignored => self.outcome(seq, Outcome::Event),
            tcp::Applied::Broken(event) => {
                let why = format!(
                    "this replica lost the app's connection {conn:?} when its agent stopped, and \
                     the event {seq} of it ({event}) cannot be applied here: the app would get \
                     the rest of a stream without its beginning. The other replicas applied it"
                );
                tracing::error!(seq, ?conn, "{why}");
                // Not recorded as handled yet: the caller fences first (see `pass_over`).
                Ok(Outcome::Diverged(why))
            }
        }
    }

    /// Right before the first byte of request `seq` goes to the app: see [`begin`].
    fn begin(&mut self, seq: u64, sync: bool) -> std::io::Result<()> {
        begin(&mut self.progress, &self.file, seq, self.promised, sync)
    }

    /// Writes the progress as it is now.
    fn write(&mut self) -> std::io::Result<()> {
        self.file.lock().unwrap().write(&self.progress)
    }

    /// Records that request `seq`'s outcome is known, and returns it.
    fn outcome(&mut self, seq: u64, outcome: Outcome) -> std::io::Result<Outcome> {
        self.progress.writing = self.progress.writing.max(seq);
        self.progress.written = self.progress.written.max(seq);
        self.progress.answered = seq;
        self.write()?;
        Ok(outcome)
    }

    /// Marks request `seq` as in doubt: it goes to the app once more (also after a restart),
    /// and is counted as it goes (see [`begin`]).
    fn doubt(&mut self, seq: u64, why: &str) {
        tracing::warn!(
            seq,
            why,
            "in doubt whether the app has the request: sending it once more, with {LOG_INDEX_HEADER}: {seq}"
        );
        self.progress.doubted = self.progress.doubted.max(seq);
    }

    /// Records that request `seq`, which this replica could not apply as the others did
    /// ([`Outcome::Diverged`]), is passed over.
    pub fn pass_over(&mut self, seq: u64) -> std::io::Result<()> {
        self.outcome(seq, Outcome::Event).map(drop)
    }

    /// Records that every request of entry `log_id` was handled.
    pub fn finish_entry(&mut self, log_id: LogId) -> std::io::Result<()> {
        self.progress.applied = Some(log_id);
        self.progress.requests = self.progress.written;
        self.write()
    }

    /// Marks the app's state as being replaced by a snapshot's.
    pub fn begin_install(&mut self) -> std::io::Result<()> {
        self.progress.installing = true;
        self.write()
    }

    /// Records that the app's state is the snapshot's: up to request `requests` of entry
    /// `applied`, with `deliveries` and the snapshot's sessions.
    pub fn finish_install(
        &mut self,
        applied: Option<LogId>,
        requests: u64,
        deliveries: u64,
        sessions: Sessions,
    ) -> std::io::Result<()> {
        self.progress = Progress {
            applied,
            requests,
            writing: requests,
            written: requests,
            answered: requests,
            deliveries,
            installing: false,
            durable_through: requests,
            ..self.progress
        };
        self.sessions = sessions;
        self.file.lock().unwrap().write_synced(&self.progress)
    }
}

impl Stopper {
    /// Records that the agent stops on purpose, once no delivery is in flight and none will
    /// start: the progress, as last written, is exact, durably.
    pub fn stop(&self) -> std::io::Result<()> {
        self.file.lock().unwrap().stop()
    }
}

/// Records in `progress` and its `file`, right before the first byte of request `seq` goes to
/// the app, that it may have begun, behind a durable promise of `promised` requests (see
/// [`ProgressFile::begin`]); `sync`: it is counted in doubt, and the count must survive.
fn begin(
    progress: &mut Progress,
    file: &Mutex<ProgressFile>,
    seq: u64,
    promised: u64,
    sync: bool,
) -> std::io::Result<()> {
    if !sync && progress.writing == seq {
        return Ok(());
    }
    file.lock().unwrap().begin(progress, seq, promised, sync)
}

/// A canonical request split after its last field line's CRLF, before the empty line.
fn split(request: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&request[..end + 2], &request[end + 4..]))
}
