//! Messages between peers, and their framing: `[u32 length][u64 call id][postcard body]`, the
//! length counting the id and the body. A call's body is `(sender's node id, Call)`; a reply's,
//! a [`Reply`]. Calls carry ids so that one connection per peer serves
//! many at once, pipelined. A frame's length is checked against a cap before anything is read
//! for it, and its body is read as it arrives, not allocated up front.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter},
    sync::mpsc,
};

use crate::order::typ::{Batch, LogId, NodeId, rpc};

/// The smallest cap on frames a node may be given: room for Raft's messages and a batch of
/// small requests.
pub const MIN_FRAME: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// Raft's own calls, each for one incarnation of one member: a node that lost its data and
    /// came back under its old id refuses them.
    AppendEntries(Target, rpc::AppendEntriesRequest),
    Vote(Target, rpc::VoteRequest),
    InstallSnapshot(Target, rpc::InstallSnapshotRequest),
    /// Client requests accepted by a follower, for the leader to propose as one entry.
    Forward(Batch),
    /// Who are you, and are you part of a cluster already?
    Hello,
    /// A membership change, for the leader to make.
    ChangeMembership(MembershipChange),
    /// For a linearizable read: confirm your leadership, and name the log index the reader's
    /// replica must have applied.
    ReadIndex,
    /// The digests of your answers from request `from` on: what peers of the previous version
    /// ask, and what is asked of them ([`Self::Compare`] replaces it).
    Digests {
        from: u64,
    },
    /// The digests of your answers from request `from` on, and how far they are settled
    /// (divergence detection). New variants go last: peers of another version decode the rest.
    Compare {
        from: u64,
    },
    /// From the leader of `term`, which is stopping and sends no more heartbeats: campaign now
    /// ([`crate::order::handover`]).
    TakeOver {
        term: u64,
    },
    /// Where does your log end, and how long have you not heard a leader? Asked by a voter that
    /// thinks of campaigning ([`crate::order::elect`]).
    Standing,
    /// The snapshot you keep, if it covers entry `at_least`: a fenced replica heals from it.
    Snapshot {
        at_least: u64,
    },
}

/// The member a Raft call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub id: NodeId,
    pub incarnation: u64,
}

/// A change to the cluster's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Start replicating to a new node, which does not vote yet.
    AddLearner { id: NodeId, addr: String },
    /// Make exactly these nodes the voters (learners among them are promoted; voters left out
    /// are removed from the cluster).
    Voters(BTreeSet<NodeId>),
    /// Forget these learners (a voter must be removed with [`Self::Voters`] first).
    RemoveLearners(BTreeSet<NodeId>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<rpc::AppendEntriesResponse, rpc::RaftError>),
    Vote(Result<rpc::VoteResponse, rpc::RaftError>),
    InstallSnapshot(
        Result<rpc::InstallSnapshotResponse, rpc::RaftError<rpc::InstallSnapshotError>>,
    ),
    Forward(Result<(), ForwardError>),
    Hello {
        node_id: NodeId,
        incarnation: u64,
        initialized: bool,
        /// The members this node knows, with their incarnations.
        members: BTreeMap<NodeId, u64>,
    },
    ChangeMembership(Result<(), String>),
    ReadIndex(Result<u64, ForwardError>),
    /// The answer to [`Call::Digests`], for peers of the previous version.
    Digests {
        /// The first request whose digest is still kept.
        oldest: u64,
        digests: Vec<(u64, u64)>,
    },
    /// The call was refused (could not be decoded, or was not for this node): why.
    Rejected(String),
    /// The answer to [`Call::Compare`]. New variants go last, as in [`Call`].
    Compare {
        /// What the digests cover (`--digest`): digests of another kind are not compared.
        what: Digest,
        /// This node is fenced: it applies nothing, so its digests will not come.
        fenced: bool,
        /// Every digest up to this request is here, or will never be.
        settled: u64,
        digests: Vec<(u64, u64)>,
    },
    /// The answer to [`Call::TakeOver`]: whether this node campaigns.
    TakeOver(Result<(), String>),
    /// The answer to [`Call::Standing`], or why this node cannot say (its Raft has stopped).
    Standing(Result<Standing, String>),
    /// The answer to [`Call::Snapshot`].
    Snapshot(Offered),
}

/// What a replica offers a fenced one to heal from ([`Call::Snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Offered {
    /// The snapshot it keeps: its metadata and bytes, encoded together as the state machine
    /// keeps them.
    Snapshot(Vec<u8>),
    /// It keeps none that covers the entry, and builds one now: ask again.
    Building,
    /// It has none to offer, and why (it is fenced or diverged too, or has not applied that
    /// far, or the snapshot is too large for a frame).
    Refused(String),
}

/// Where a voter stands, as it tells another that thinks of campaigning ([`Call::Standing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The last entry of its log.
    pub last_log: Option<LogId>,
    /// Milliseconds since it last heard a leader; on a leader, since a majority last answered
    /// it (0 until the first answers; `u64::MAX`: it is stopping).
    pub quiet_ms: u64,
    /// It would campaign (it is not stopping).
    pub campaigns: bool,
}

/// What replicas compare (`--digest`), as [`Reply::Compare`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Digest {
    /// HTTP: the status and the body of every answer.
    StatusAndBody,
    /// HTTP: the status only (for apps whose bodies legitimately differ, such as those with a
    /// time in them).
    Status,
    /// Raw TCP: every byte the app sent on a connection, once it has closed it.
    Bytes,
    /// Nothing: no divergence is looked for.
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Failed(String),
}

/// Bytes of the length and id fields.
const HEADER: usize = 12;

/// A frame for `body` under call `id`; refused if longer than `max` bytes.
pub fn frame(id: u64, body: &impl Serialize, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = postcard::to_extend(body, vec![0; HEADER]).map_err(std::io::Error::other)?;
    if out.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("a frame of {} bytes is over the cap of {max}", out.len()),
        ));
    }
    let len =
        u32::try_from(out.len() - 4).map_err(|_| std::io::Error::other("frame over 4 GiB"))?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..HEADER].copy_from_slice(&id.to_le_bytes());
    Ok(out)
}

/// Writes the frames queued for a connection until the queue closes, batching those queued
/// together into one write.
pub async fn write_frames(
    writer: impl AsyncWrite + Unpin,
    queue: &mut mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(frame) = queue.recv().await {
        writer.write_all(&frame).await?;
        while let Ok(frame) = queue.try_recv() {
            writer.write_all(&frame).await?;
        }
        writer.flush().await?;
    }
    Ok(())
}

/// Reads the next frame's body into `buf`; returns its call id, or `None` at a clean end of
/// stream. A frame longer than `max` bytes is an error, found before its body is read.
pub async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<u64>> {
    let mut header = [0u8; HEADER];
    match reader.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    reader.read_exact(&mut header[1..]).await?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let body = len
        .checked_sub(HEADER - 4)
        .ok_or_else(|| std::io::Error::other("frame shorter than its header"))?;
    if len + 4 > max {
        return Err(std::io::Error::other(format!(
            "a peer announced a frame of {} bytes, over the cap of {max}",
            len + 4
        )));
    }
    buf.clear();
    // Grows as the bytes come: a peer that announces much and sends little costs little.
    let read = reader.take(body as u64).read_to_end(buf).await?;
    if read < body {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(u64::from_le_bytes(
        header[4..].try_into().expect("8 bytes"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::log_store::decode;

    #[tokio::test]
    async fn frames_round_trip() {
        let command = crate::order::typ::Command {
            origin: 2,
            incarnation: 5,
            id: 9,
            payload: bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
        };
        let batch = Batch {
            id: (2, 5, 1),
            floor: 0,
            commands: vec![command],
        };
        let mut stream = frame(7, &(2u64, Call::Forward(batch.clone())), MIN_FRAME).unwrap();
        stream.extend(frame(8, &(2u64, Call::Hello), MIN_FRAME).unwrap());
        let mut reader = &stream[..];
        let mut buf = Vec::new();
        assert_eq!(
            read_frame(&mut reader, &mut buf, MIN_FRAME).await.unwrap(),
            Some(7)
        );
        assert!(matches!(decode(&buf).unwrap(), (2u64, Call::Forward(b)) if b == batch));
        assert_eq!(
            read_frame(&mut reader, &mut buf, MIN_FRAME).await.unwrap(),
            Some(8)
        );
        assert!(matches!(decode(&buf).unwrap(), (2u64, Call::Hello)));
        assert_eq!(
            read_frame(&mut reader, &mut buf, MIN_FRAME).await.unwrap(),
            None
        );
    }

    /// Peers of different versions decode each other's calls and replies by the index of their
    /// variant (postcard): variants are only ever added last.
    #[test]
    fn variants_keep_their_index() {
        let index = |bytes: Vec<u8>| bytes[0];
        let call = |call: Call| index(postcard::to_allocvec(&call).unwrap());
        let reply = |reply: Reply| index(postcard::to_allocvec(&reply).unwrap());
        assert_eq!(call(Call::Hello), 4);
        assert_eq!(call(Call::Digests { from: 1 }), 7);
        assert_eq!(call(Call::Compare { from: 1 }), 8);
        assert_eq!(reply(Reply::Rejected(String::new())), 8);
        let compare = Reply::Compare {
            what: Digest::Bytes,
            fenced: false,
            settled: 0,
            digests: Vec::new(),
        };
        assert_eq!(reply(compare), 9);
        assert_eq!(call(Call::Standing), 10);
        assert_eq!(reply(Reply::Standing(Err(String::new()))), 11);
        assert_eq!(call(Call::Snapshot { at_least: 1 }), 11);
        assert_eq!(reply(Reply::Snapshot(Offered::Building)), 12);
        // `Compare` carries the kind of digests, by index too.
        let kinds = [
            Digest::StatusAndBody,
            Digest::Status,
            Digest::Bytes,
            Digest::Off,
        ];
        for (index, kind) in kinds.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&kind).unwrap(), [index as u8]);
        }
    }

    #[tokio::test]
    async fn a_huge_announced_length_is_refused_before_anything_is_read_for_it() {
        // 2^31 bytes announced, then nothing.
        let mut stream = (1u32 << 31).to_le_bytes().to_vec();
        stream.extend_from_slice(&7u64.to_le_bytes());
        let mut buf = Vec::new();
        let error = read_frame(&mut &stream[..], &mut buf, MIN_FRAME)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("over the cap"), "{error}");
        assert_eq!(buf.capacity(), 0, "nothing was allocated for it");
        // Within the cap but never sent: the buffer holds what came, not what was announced.
        let mut stream = 1000u32.to_le_bytes().to_vec();
        stream.extend_from_slice(&7u64.to_le_bytes());
        stream.extend_from_slice(b"short");
        assert!(
            read_frame(&mut &stream[..], &mut buf, MIN_FRAME)
                .await
                .is_err()
        );
        assert!(buf.capacity() < 1000);
        assert!(frame(1, &vec![0u8; MIN_FRAME], MIN_FRAME).is_err());
    }
}
