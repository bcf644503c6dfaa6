//! Request framing: heads, then Content-Length or chunked bodies, request after request, through
//! `request::Reader` (as the interception reads a client) and `request::parse_head` alone.
//!
//! Flags: bit 3, small limits (so that short inputs meet them); bit 4, an IPv6 client.
//! Checked: no panic; the same outcome whatever pieces the bytes arrive in; `parse_head` agrees
//! with the reader; each request's canonical form parses to itself.
#![no_main]

use hermes_agent::http::request::Limits;
use hermes_fuzz::{Input, SMALL, check_requests, client};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    let limits = if input.flag(3) {
        SMALL
    } else {
        Limits::default()
    };
    check_requests(&input, limits, client(input.flag(4)), usize::MAX);
});
