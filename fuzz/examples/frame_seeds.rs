//! Writes the `peer_frame` seed corpus (`fuzz/corpus/peer_frame/`): frames of real calls (a
//! call's body is the sender's id and the call) and replies, made by `wire::frame` as peers make
//! them, each input prefixed for the target (see `hermes_fuzz::Input`). Run it again when the wire format changes:
//! `cargo run --manifest-path fuzz/Cargo.toml --example frame_seeds`.
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use hermes_agent::{
    http::ordered::Ordered,
    order::{
        peer::wire::{self, Call, ForwardError, MembershipChange, Reply, Target},
        typ::{
            Batch, Command, Entry, EntryPayload, LogId, Member, NodeId, Proposal, SnapshotMeta,
            Vote, rpc,
        },
    },
};
use openraft::{CommittedLeaderId, Membership, StoredMembership};
use serde::Serialize;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn members() -> Membership<NodeId, Member> {
    let nodes: BTreeMap<NodeId, Member> = (1..=3)
        .map(|id| {
            let member = Member {
                addr: format!("10.0.0.{id}:7000"),
                incarnation: 0x1000 + id,
            };
            (id, member)
        })
        .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

fn batch(requests: &[&[u8]]) -> Batch {
    Batch {
        id: (2, 0x1002, 7),
        floor: 1 << 40,
        commands: requests
            .iter()
            .enumerate()
            .map(|(i, request)| Command {
                origin: 2,
                incarnation: 0x1002,
                id: (1 << 40) | i as u64,
                payload: Ordered {
                    conn: (1 << 40) | 3,
                    request: Bytes::copy_from_slice(request),
                }
                .to_payload(),
            })
            .collect(),
    }
}

fn calls() -> Vec<(&'static str, Call)> {
    let to = Target {
        id: 2,
        incarnation: 0x1002,
    };
    let get = b"GET /log HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nForwarded: for=192.0.2.7\r\n\r\n";
    let post = b"POST /log HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\nForwarded: for=192.0.2.7\r\nContent-Length: 5\r\n\r\nhello";
    let entries = vec![
        Entry {
            log_id: log_id(3, 10),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(3, 11),
            payload: EntryPayload::Normal(Proposal {
                batches: vec![batch(&[get]), batch(&[post])],
            }),
        },
        Entry {
            log_id: log_id(3, 12),
            payload: EntryPayload::Membership(members()),
        },
    ];
    vec![
        (
            "append",
            Call::AppendEntries(
                to,
                rpc::AppendEntriesRequest {
                    vote: Vote::new_committed(3, 1),
                    prev_log_id: Some(log_id(2, 9)),
                    entries,
                    leader_commit: Some(log_id(3, 9)),
                },
            ),
        ),
        (
            "heartbeat",
            Call::AppendEntries(
                to,
                rpc::AppendEntriesRequest {
                    vote: Vote::new_committed(3, 1),
                    prev_log_id: Some(log_id(3, 12)),
                    entries: Vec::new(),
                    leader_commit: Some(log_id(3, 12)),
                },
            ),
        ),
        (
            "vote",
            Call::Vote(
                to,
                rpc::VoteRequest {
                    vote: Vote::new(4, 3),
                    last_log_id: Some(log_id(3, 12)),
                },
            ),
        ),
        (
            "snapshot",
            Call::InstallSnapshot(
                to,
                rpc::InstallSnapshotRequest {
                    vote: Vote::new_committed(3, 1),
                    meta: SnapshotMeta {
                        last_log_id: Some(log_id(3, 12)),
                        last_membership: StoredMembership::new(Some(log_id(3, 12)), members()),
                        snapshot_id: "3-12-1".into(),
                    },
                    offset: 0,
                    data: b"{\"log\":[\"hello\"]}".to_vec(),
                    done: true,
                },
            ),
        ),
        ("forward", Call::Forward(batch(&[post]))),
        ("hello", Call::Hello),
        (
            "add-learner",
            Call::ChangeMembership(MembershipChange::AddLearner {
                id: 4,
                addr: "10.0.0.4:7000".into(),
            }),
        ),
        (
            "voters",
            Call::ChangeMembership(MembershipChange::Voters(BTreeSet::from([1, 2, 3, 4]))),
        ),
        ("read-index", Call::ReadIndex),
        ("digests", Call::Digests { from: 17 }),
        ("compare", Call::Compare { from: 17 }),
    ]
}

fn replies() -> Vec<(&'static str, Reply)> {
    vec![
        (
            "append-ok",
            Reply::AppendEntries(Ok(rpc::AppendEntriesResponse::Success)),
        ),
        (
            "append-conflict",
            Reply::AppendEntries(Ok(rpc::AppendEntriesResponse::Conflict)),
        ),
        (
            "append-higher",
            Reply::AppendEntries(Ok(rpc::AppendEntriesResponse::HigherVote(Vote::new(5, 2)))),
        ),
        (
            "vote-granted",
            Reply::Vote(Ok(rpc::VoteResponse {
                vote: Vote::new(4, 3),
                vote_granted: true,
                last_log_id: Some(log_id(3, 12)),
            })),
        ),
        (
            "snapshot-ok",
            Reply::InstallSnapshot(Ok(rpc::InstallSnapshotResponse {
                vote: Vote::new_committed(3, 1),
            })),
        ),
        ("forward-ok", Reply::Forward(Ok(()))),
        (
            "forward-not-leader",
            Reply::Forward(Err(ForwardError::NotLeader(Some(1)))),
        ),
        (
            "hello",
            Reply::Hello {
                node_id: 2,
                incarnation: 0x1002,
                initialized: true,
                members: BTreeMap::from([(1, 0x1001), (2, 0x1002), (3, 0x1003)]),
            },
        ),
        (
            "change-refused",
            Reply::ChangeMembership(Err("not the leader".into())),
        ),
        ("read-index", Reply::ReadIndex(Ok(12))),
        (
            "digests",
            Reply::Digests {
                oldest: 17,
                digests: vec![(17, 0x5eed_0001), (18, 0x5eed_0002), (19, 0x5eed_0003)],
            },
        ),
        ("rejected", Reply::Rejected("cannot decode the call".into())),
        (
            "compare",
            Reply::Compare {
                what: hermes_agent::order::peer::wire::Digest::Bytes,
                fenced: false,
                settled: 19,
                digests: vec![(17, 0x5eed_0001), (19, 0x5eed_0003)],
            },
        ),
    ]
}

fn frame(id: u64, body: &impl Serialize) -> Vec<u8> {
    wire::frame(id, body, wire::MIN_FRAME).expect("a frame within the cap")
}

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/peer_frame");
    std::fs::create_dir_all(&dir)?;
    // Flags: the cap is MIN_FRAME (bits 3 and 4 set); pieces as `pieces` says.
    let write = |name: &str, pieces: &[u8], frames: &[u8]| {
        let flags = 0x18 | pieces.len() as u8;
        let input = [&[flags][..], pieces, frames].concat();
        std::fs::write(dir.join(name), input)
    };
    let mut stream = Vec::new();
    for (i, (name, call)) in calls().into_iter().enumerate() {
        let id = 100 + i as u64;
        let framed = frame(id, &(2 as NodeId, &call));
        write(&format!("call-{name}"), &[], &framed)?;
        stream.extend_from_slice(&framed);
    }
    for (i, (name, reply)) in replies().into_iter().enumerate() {
        write(
            &format!("reply-{name}"),
            &[],
            &frame(100 + i as u64, &reply),
        )?;
    }
    // A connection's worth: calls one after another, arriving in small pieces.
    write("calls-in-pieces", &[0, 6, 40], &stream)?;
    // Hostile framing: a huge announced length, a length under the header, a frame cut short.
    let huge = [&(1u32 << 31).to_le_bytes()[..], &7u64.to_le_bytes()].concat();
    write("huge-length", &[], &huge)?;
    let short = [&4u32.to_le_bytes()[..], &7u64.to_le_bytes()].concat();
    write("length-under-header", &[], &short)?;
    let hello = frame(9, &(2 as NodeId, Call::Hello));
    write("cut-short", &[], &hello[..hello.len() - 1])?;
    write("cut-in-header", &[], &hello[..7])?;
    Ok(())
}
