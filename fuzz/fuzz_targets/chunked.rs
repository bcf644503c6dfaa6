//! The chunked decoder (`hermes_agent::http::chunked::Chunked`), fed the input at once and in
//! pieces, as a body arrives.
//!
//! Flags: bits 3 and 4 choose the bound on the decoded body. Checked: no panic; the same result
//! whatever the pieces; never more bytes used than given, nor a body over the bound; a decoded
//! body encoded again decodes to itself.
#![no_main]

use hermes_agent::http::chunked::Chunked;
use hermes_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// Decodes `data` given in growing prefixes ending at `ends`: the body and the bytes used once
/// done, `None` if it never is, or the refusal's status.
fn decode(data: &[u8], ends: &[usize], max: u64) -> Result<Option<(Vec<u8>, usize)>, u16> {
    let mut chunked = Chunked::default();
    let mut body = Vec::new();
    let mut used = 0;
    for &end in ends {
        let given = &data[used..end];
        let n = chunked
            .decode(given, &mut body, max)
            .map_err(|invalid| invalid.status())?;
        assert!(n <= given.len(), "used more than it was given");
        assert!(body.len() as u64 <= max, "a body over the bound");
        used += n;
        if chunked.done() {
            return Ok(Some((body, used)));
        }
    }
    Ok(None)
}

/// `body` in chunks of `size` bytes, with an extension and a trailer.
fn encode(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:x};e=\"v\"\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let max = [0, 7, 64, 1 << 20][usize::from(input.flags >> 3 & 3)];
    let data = input.data;
    let whole = decode(data, &[data.len()], max);
    let pieces = decode(data, &input.prefix_ends(), max);
    assert_eq!(whole, pieces, "the result depends on the pieces");
    if let Ok(Some((body, _))) = whole {
        let size = input.sizes[0].min(1 << 16);
        let encoded = encode(&body, size);
        assert_eq!(
            decode(&encoded, &[encoded.len()], max),
            Ok(Some((body, encoded.len()))),
            "a decoded body encoded again"
        );
    }
});
