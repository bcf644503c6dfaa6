//! Raw TCP mode's commands: the events of client connections, as the log carries them.
//!
//! A steered connection is a stream of events: it opens, its client's bytes arrive (as read, in
//! chunks that mean nothing to the app), its client half-closes, it closes. Every replica applies
//! them, in log order, to a connection of its own to its app ([`crate::deliver::tcp`]). A
//! connection is named by its origin node and incarnation (those of the command) and an id the
//! origin draws like a request id, unique across its restarts.
//!
//! Encoded by hand, one tag byte and the connection id, then the bytes of `Data` (or the
//! connections of `Abandon`): a decoded event borrows its bytes from the command's payload,
//! nothing is copied.
use bytes::{Buf as _, BufMut, Bytes, BytesMut};

use crate::order::typ::ConnKey;

/// What happened to a client connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client connected: every replica opens a connection to its app.
    Open,
    /// The client sent these bytes.
    Data(Bytes),
    /// The client will send no more (it half-closed): the app's connection is shut down for
    /// writing, and the app's answer still flows back.
    Shutdown,
    /// The connection is over: the app's connection is closed.
    Close,
    /// The origin restarted: every connection it had before, those with an id below this one,
    /// went with it and is closed.
    Lost,
    /// These connections (of any origin; none listed: every connection open) are closed on
    /// every replica, and their clients reset: a replica lost them in its restart, or is about
    /// to stop and must not leave any open behind it (it could never apply the rest of their
    /// streams).
    Abandon(Vec<ConnKey>),
}

impl Event {
    /// Its name, as the metrics count it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Data(_) => "data",
            Self::Shutdown => "shutdown",
            Self::Close => "close",
            Self::Lost => "lost",
            Self::Abandon(_) => "abandon",
        }
    }
}

/// An event of connection `conn` (for [`Event::Lost`]: the first id of the origin's new life).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub conn: u64,
    pub event: Event,
}

const OPEN: u8 = 1;
const DATA: u8 = 2;
const SHUTDOWN: u8 = 3;
const CLOSE: u8 = 4;
const LOST: u8 = 5;
const ABANDON: u8 = 6;
/// Tag and connection id.
const HEAD: usize = 9;
/// Bytes of a connection key in `Abandon`.
const KEY: usize = 24;
/// Connections one `Abandon` names at most (so that it fits in a chunk).
pub const MAX_ABANDONED: usize = 4096;

impl Chunk {
    pub fn new(conn: u64, event: Event) -> Self {
        Self { conn, event }
    }

    /// The command payload that carries this event.
    pub fn encode(&self) -> Bytes {
        let keys;
        let (tag, data) = match &self.event {
            Event::Open => (OPEN, &[][..]),
            Event::Data(bytes) => (DATA, &bytes[..]),
            Event::Shutdown => (SHUTDOWN, &[][..]),
            Event::Close => (CLOSE, &[][..]),
            Event::Lost => (LOST, &[][..]),
            Event::Abandon(conns) => {
                keys = conns
                    .iter()
                    .flat_map(|&(origin, incarnation, id)| [origin, incarnation, id])
                    .flat_map(u64::to_le_bytes)
                    .collect::<Vec<u8>>();
                (ABANDON, &keys[..])
            }
        };
        let mut out = BytesMut::with_capacity(HEAD + data.len());
        out.put_u8(tag);
        out.put_u64_le(self.conn);
        out.put_slice(data);
        out.freeze()
    }

    /// Reads an event from a command's payload; `None` if it is not one (a peer that is not a
    /// Hermes of this protocol).
    pub fn decode(payload: &Bytes) -> Option<Self> {
        let head = payload.get(..HEAD)?;
        let conn = u64::from_le_bytes(head[1..HEAD].try_into().ok()?);
        let bare = payload.len() == HEAD;
        let event = match head[0] {
            OPEN if bare => Event::Open,
            DATA if !bare => Event::Data(payload.slice(HEAD..)),
            SHUTDOWN if bare => Event::Shutdown,
            CLOSE if bare => Event::Close,
            LOST if bare => Event::Lost,
            ABANDON
                if (payload.len() - HEAD).is_multiple_of(KEY)
                    && (payload.len() - HEAD) / KEY <= MAX_ABANDONED =>
            {
                let mut keys = payload.slice(HEAD..);
                let mut conns = Vec::with_capacity(keys.len() / KEY);
                while keys.has_remaining() {
                    conns.push((keys.get_u64_le(), keys.get_u64_le(), keys.get_u64_le()));
                }
                Event::Abandon(conns)
            }
            _ => return None,
        };
        Some(Self { conn, event })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_is_not_an_event() {
        for event in [
            Event::Open,
            Event::Data(Bytes::from_static(b"\0\x01*1\r\n$4\r\nPING\r\n")),
            Event::Shutdown,
            Event::Close,
            Event::Lost,
            Event::Abandon(Vec::new()),
            Event::Abandon(vec![(1, u64::MAX, 7), (u64::MAX, 2, 0)]),
        ] {
            let chunk = Chunk::new(u64::MAX - 1, event);
            assert_eq!(Chunk::decode(&chunk.encode()), Some(chunk));
        }
        for bad in [
            &b""[..],
            b"\x01",
            b"\x01\0\0\0\0\0\0\0",
            b"\x02\0\0\0\0\0\0\0\0",
            b"\x01\0\0\0\0\0\0\0\0x",
            b"\x07\0\0\0\0\0\0\0\0",
            b"\x06\0\0\0\0\0\0\0\0\x01",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(Chunk::decode(&Bytes::from_static(bad)), None, "{bad:?}");
        }
    }
}
