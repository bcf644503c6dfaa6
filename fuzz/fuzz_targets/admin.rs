//! The admin API's request parsing: one request (the API answers it and closes), head and body,
//! through `request::Reader` with the admin API's limits (`hermes_agent::admin::LIMITS`), and the
//! fields it decides on (`Authorization`, `Content-Type`) looked up with `RequestHead::field`.
//!
//! Flags: bit 4, an IPv6 client. Checked as for `request`: no panic; the same outcome whatever
//! pieces the bytes arrive in; `parse_head` agrees with the reader; the canonical form parses to
//! itself. And `field` gives the first such field's value as httparse reads it, blanks trimmed.
#![no_main]

use hermes_agent::{
    admin::LIMITS,
    http::request::{self, Scan},
};
use hermes_fuzz::{Input, check_requests, client};
use libfuzzer_sys::fuzz_target;

/// The fields the admin API reads, and one it does not act on.
const FIELDS: &[&str] = &["authorization", "content-type", "host"];

fn trim(value: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !blank(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// `RequestHead::field` against httparse's reading of the same head.
fn check_fields(data: &[u8]) {
    let Ok(Some((head, len))) = request::parse_head(data, &LIMITS, &mut Scan::default()) else {
        return;
    };
    let mut start = 0;
    while data[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let mut slots = vec![httparse::EMPTY_HEADER; LIMITS.max_fields];
    let mut parsed = httparse::Request::new(&mut slots);
    assert!(
        matches!(
            parsed.parse(&data[start..len]),
            Ok(httparse::Status::Complete(_))
        ),
        "a head parse_head took, httparse does not"
    );
    for name in FIELDS {
        let want = parsed
            .headers
            .iter()
            .find(|field| field.name.eq_ignore_ascii_case(name))
            .map(|field| trim(field.value));
        assert_eq!(head.field(name), want, "the {name} field");
    }
}

fuzz_target!(|input: &[u8]| {
    let Some(input) = Input::parse(input) else {
        return;
    };
    check_requests(&input, LIMITS, client(input.flag(4)), 1);
    check_fields(input.data);
});
