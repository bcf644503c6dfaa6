//! The peer frame decoder: `wire::read_frame` with a cap, frame after frame, over the input in
//! pieces, then each frame's body decoded as the server and the client decode it (postcard, as
//! `log_store::decode` does): a call (with and without the sender's id before it) and a reply.
//!
//! Flags: bits 3 and 4 choose the cap. Checked: no panic; the same frames whatever the pieces;
//! no frame over the cap; no more memory taken than bytes sent (a frame announcing more than
//! comes costs what comes); whatever decodes encodes and decodes back to the same bytes.
#![no_main]

use std::io;

use hermes_agent::order::{
    log_store::decode,
    peer::wire::{self, Call, MIN_FRAME, Reply},
    typ::NodeId,
};
use hermes_fuzz::{Input, block_on};
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::AsyncRead;

/// Bytes of a frame's length and id.
const HEADER: usize = 12;

/// The frames of `stream` (id and body), and how the stream ends.
async fn frames(
    mut stream: impl AsyncRead + Unpin,
    max: usize,
    sent: usize,
) -> (Vec<(u64, Vec<u8>)>, Result<(), io::ErrorKind>) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    loop {
        let read = wire::read_frame(&mut stream, &mut buf, max).await;
        assert!(
            buf.capacity() <= 2 * sent + 64,
            "{} bytes taken for {sent} bytes sent",
            buf.capacity()
        );
        match read {
            Ok(Some(id)) => {
                assert!(buf.len() + HEADER <= max, "a frame over the cap");
                frames.push((id, buf.clone()));
            }
            Ok(None) => return (frames, Ok(())),
            Err(error) => return (frames, Err(error.kind())),
        }
    }
}

/// If `body` decodes as a `T`: encoded again in a frame, it reads back and decodes to a value
/// that encodes to the same frame.
fn round_trip<T: Serialize + DeserializeOwned>(id: u64, body: &[u8]) {
    let Ok(value) = decode::<T>(body) else {
        return;
    };
    let frame = wire::frame(id, &value, usize::MAX).expect("encoding what was decoded");
    let (again, end) = block_on(frames(&frame[..], usize::MAX, frame.len()));
    assert_eq!(end, Ok(()));
    let [(again_id, again_body)] = &again[..] else {
        panic!("{} frames from one", again.len());
    };
    assert_eq!(*again_id, id);
    let value: T = decode(again_body).expect("what was encoded decodes");
    let frame_again = wire::frame(id, &value, usize::MAX).expect("encoding again");
    assert_eq!(frame, frame_again, "decoding and encoding changes a frame");
}

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let max = [HEADER + 1, 256, 4096, MIN_FRAME][usize::from(input.flags >> 3 & 3)];
    let sent = input.data.len();
    let (pieces, whole) = block_on(async {
        (
            frames(input.pieces(), max, sent).await,
            frames(input.data, max, sent).await,
        )
    });
    assert_eq!(pieces, whole, "the frames depend on the pieces");
    for (id, body) in &whole.0 {
        round_trip::<Call>(*id, body);
        round_trip::<(NodeId, Call)>(*id, body);
        round_trip::<Reply>(*id, body);
    }
});
