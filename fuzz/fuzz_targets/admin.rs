//! The admin API's request parsing: one request (the API answers it and closes), head and body,
//! through `request::Reader` with the admin API's limits (`hermes_agent::admin::LIMITS`).
//!
//! Flags: bit 4, an IPv6 client. Checked as for `request`: no panic; the same outcome whatever
//! pieces the bytes arrive in; `parse_head` agrees with the reader; the canonical form parses to
//! itself.
#![no_main]

use hermes_agent::admin::LIMITS;
use hermes_fuzz::{Input, check_requests, client};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    check_requests(&input, LIMITS, client(input.flag(4)), 1);
});
