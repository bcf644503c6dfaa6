//! Messages between peers, and their framing: `[u32 length][u64 call id][postcard body]`.
//! Calls carry ids so that one connection per peer serves many at once, pipelined.
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter},
    sync::mpsc,
};

use crate::order::typ::{Batch, NodeId, rpc};

#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    AppendEntries(rpc::AppendEntriesRequest),
    Vote(rpc::VoteRequest),
    InstallSnapshot(rpc::InstallSnapshotRequest),
    /// Client requests accepted by a follower, for the leader to propose as one entry.
    Forward(Batch),
    /// Who are you, and are you part of a cluster already?
    Hello,
    /// A membership change, for the leader to make.
    ChangeMembership(MembershipChange),
    /// For a linearizable read: confirm your leadership, and name the log index the reader's
    /// replica must have applied.
    ReadIndex,
}

/// A change to the cluster's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Start replicating to a new node, which does not vote yet.
    AddLearner { id: NodeId, addr: String },
    /// Make exactly these nodes the voters (learners among them are promoted; voters left out
    /// are removed from the cluster).
    Voters(std::collections::BTreeSet<NodeId>),
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
        initialized: bool,
    },
    ChangeMembership(Result<(), String>),
    ReadIndex(Result<u64, ForwardError>),
    /// The request could not be decoded.
    Rejected(String),
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

/// A frame for `body` under call `id`.
pub fn frame(id: u64, body: &impl Serialize) -> std::io::Result<Vec<u8>> {
    let mut out = postcard::to_extend(body, vec![0; HEADER]).map_err(std::io::Error::other)?;
    let len =
        u32::try_from(out.len() - 4).map_err(|_| std::io::Error::other("message over 4 GiB"))?;
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

/// Reads the next frame into `buf`; returns its call id, or `None` at a clean end of stream.
pub async fn read_frame(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
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
        .checked_sub(8)
        .ok_or_else(|| std::io::Error::other("frame shorter than its header"))?;
    buf.clear();
    buf.resize(body, 0);
    reader.read_exact(buf).await?;
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
            id: 9,
            payload: bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
        };
        let batch = Batch {
            id: (2, 1),
            commands: vec![command],
        };
        let mut stream = frame(7, &Call::Forward(batch.clone())).unwrap();
        stream.extend(frame(8, &Call::Hello).unwrap());
        let mut reader = &stream[..];
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), Some(7));
        assert!(matches!(decode(&buf).unwrap(), Call::Forward(b) if b == batch));
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), Some(8));
        assert!(matches!(decode(&buf).unwrap(), Call::Hello));
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), None);
    }
}
