//! Header fields (RFC 9110 section 5): the grammar pieces both directions share, and the fields
//! whose meaning the agent acts on.

use super::Invalid;

/// Fields a proxy does not pass on (RFC 9110 section 7.6.1), and those whose framing the agent
/// redoes. `Hermes-Log-Index` is the agent's own: a client's is dropped, never trusted.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "hermes-log-index",
];

/// Whether a field is end-to-end: passed on as it is.
pub fn is_end_to_end(name: &str) -> bool {
    !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Fields whose meaning the agent acts on, or adds itself.
const ACTED_ON: &[&str] = &["host", "expect", "x-forwarded-for", "forwarded"];

/// Whether a name with `_` for `-` spells a field the agent acts on (`Content_Length`): servers
/// that map `_` and `-` alike (CGI and WSGI do) would take it for that field, the agent not.
pub fn is_disguised(name: &str) -> bool {
    name.contains('_')
        && HOP_BY_HOP.iter().chain(ACTED_ON).any(|known| {
            known.len() == name.len()
                && name
                    .bytes()
                    .zip(known.bytes())
                    .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
        })
}

/// `tchar` of RFC 9110 section 5.6.2.
pub fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Length of the token at the start of `bytes` (0: none).
pub fn token_len(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| is_tchar(**b)).count()
}

/// `bytes` without leading blanks (SP, HTAB).
pub fn skip_blanks(bytes: &[u8]) -> &[u8] {
    let blanks = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[blanks..]
}

/// `bytes` without blanks at either end.
pub fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let bytes = skip_blanks(bytes);
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Length of the quoted-string at the start of `bytes`, quotes included; `None` if it is not one.
pub fn quoted_len(bytes: &[u8]) -> Option<usize> {
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'"' => return Some(i + 1),
            b'\\' => {
                let escaped = *bytes.get(i + 1)?;
                if !is_field_byte(escaped) {
                    return None;
                }
                i += 2;
            }
            _ if is_field_byte(byte) => i += 1,
            _ => return None,
        }
    }
    None
}

/// A byte allowed in a field value: HTAB, SP, VCHAR, obs-text.
pub fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= b' ' && byte != 0x7f)
}

/// Checks a field line (`name ":" OWS value OWS`, without its CRLF) as RFC 9112 section 5 has
/// it: no blank before the colon, no obs-fold, no control characters.
pub fn check_line(line: &[u8]) -> Result<(), Invalid> {
    let name = token_len(line);
    if name == 0 || line.get(name) != Some(&b':') {
        return Err(Invalid::Malformed("field line"));
    }
    if !line[name + 1..].iter().all(|b| is_field_byte(*b)) {
        return Err(Invalid::Malformed("field value"));
    }
    Ok(())
}

/// A `Content-Length` value: digits only (no sign, no blanks inside, no list), within u64.
pub fn content_length(value: &[u8]) -> Result<u64, Invalid> {
    const BAD: Invalid = Invalid::Malformed("Content-Length");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    value.iter().try_fold(0u64, |n, digit| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit - b'0')))
            .ok_or(BAD)
    })
}

/// The elements of a comma-separated list field (RFC 9110 section 5.6.1), blanks trimmed,
/// empty elements skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_blanks)
        .filter(|element| !element.is_empty())
}

/// What `Connection` (RFC 9112 section 9.3) says about keeping the connection open.
#[derive(Debug, Default, Clone, Copy)]
pub struct Persistence {
    pub close: bool,
    pub keep_alive: bool,
}

impl Persistence {
    pub fn add(&mut self, value: &[u8]) {
        for option in list(value) {
            self.close |= option.eq_ignore_ascii_case(b"close");
            self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
        }
    }

    /// Whether the connection closes after this message, for a message of HTTP/1.`minor`.
    pub fn closes(&self, minor: u8) -> bool {
        self.close || (minor == 0 && !self.keep_alive)
    }
}

/// The transfer codings a `Transfer-Encoding` field lists, over all its lines.
#[derive(Debug, Default)]
pub struct Codings {
    /// How many times `chunked` appears.
    chunked: usize,
    /// Whether `chunked` is the last coding.
    chunked_last: bool,
    /// Whether a coding other than `chunked` appears.
    others: bool,
    /// Whether any value was given at all.
    present: bool,
}

/// What a message's transfer codings allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No `Transfer-Encoding`.
    None,
    /// Exactly `chunked`.
    Chunked,
    /// `chunked` last, after other codings the agent cannot decode.
    ChunkedAfterOthers,
    /// Not ending in `chunked` (or `chunked` twice): the length cannot be known from it.
    Unframed,
}

impl Codings {
    pub fn add(&mut self, value: &[u8]) {
        self.present = true;
        for coding in list(value) {
            // Parameters (`;q=...`) make a coding something other than plain `chunked`.
            let chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked += usize::from(chunked);
            self.others |= !chunked;
            self.chunked_last = chunked;
        }
    }

    pub fn coding(&self) -> Coding {
        match (self.present, self.chunked, self.chunked_last, self.others) {
            (false, ..) => Coding::None,
            (true, 1, true, false) => Coding::Chunked,
            (true, 1, true, true) => Coding::ChunkedAfterOthers,
            _ => Coding::Unframed,
        }
    }
}

/// A `Host` value (`uri-host [ ":" port ]`): the characters of a reg-name, an IP literal or an
/// address, and a port; nothing that could end the authority early (`/`, `@`, `?`, `#`, blanks).
pub fn is_host(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"0"), Ok(0));
        assert_eq!(content_length(b"0042"), Ok(42));
        assert_eq!(content_length(b"18446744073709551615"), Ok(u64::MAX));
        for bad in [
            &b""[..],
            b"+5",
            b"-5",
            b"5 5",
            b"5,5",
            b"0x5",
            b"18446744073709551616",
            "\u{a0}5".as_bytes(),
            "5\u{3000}".as_bytes(),
        ] {
            assert!(content_length(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transfer_codings() {
        let coding = |values: &[&[u8]]| {
            let mut codings = Codings::default();
            values.iter().for_each(|v| codings.add(v));
            codings.coding()
        };
        assert_eq!(coding(&[]), Coding::None);
        assert_eq!(coding(&[b"chunked"]), Coding::Chunked);
        assert_eq!(coding(&[b"Chunked"]), Coding::Chunked);
        assert_eq!(coding(&[b" , chunked ,"]), Coding::Chunked);
        assert_eq!(coding(&[b"gzip, chunked"]), Coding::ChunkedAfterOthers);
        assert_eq!(coding(&[b"gzip", b"chunked"]), Coding::ChunkedAfterOthers);
        assert_eq!(coding(&[b"chunked, gzip"]), Coding::Unframed);
        assert_eq!(coding(&[b"chunked, chunked"]), Coding::Unframed);
        assert_eq!(coding(&[b"chunked", b"chunked"]), Coding::Unframed);
        assert_eq!(coding(&[b"gzip"]), Coding::Unframed);
        assert_eq!(coding(&[b""]), Coding::Unframed);
        assert_eq!(coding(&[b"chunked;q=1"]), Coding::Unframed);
        assert_eq!(coding(&["chunked\u{a0}".as_bytes()]), Coding::Unframed);
    }

    #[test]
    fn underscores_do_not_disguise_framing_fields() {
        assert!(is_disguised("Content_Length"));
        assert!(is_disguised("transfer_encoding"));
        assert!(is_disguised("X_Forwarded_For"));
        assert!(!is_disguised("X_Custom"));
        assert!(!is_disguised("Content-Length"));
    }

    #[test]
    fn field_lines_and_quoted_strings() {
        assert!(check_line(b"X-A: b c").is_ok());
        assert!(check_line(b"X-A:").is_ok());
        assert!(check_line(b"X-A: caf\xe9").is_ok(), "obs-text is legal");
        assert!(check_line(b"X-A : b").is_err());
        assert!(check_line(b" X-A: b").is_err());
        assert!(check_line(b"X-A: b\x00").is_err());
        assert!(check_line(b"X-A: b\rc").is_err());
        assert_eq!(quoted_len(b"\"a\\\"b\" rest"), Some(6));
        assert_eq!(quoted_len(b"\"open"), None);
        assert_eq!(quoted_len(b"\"a\nb\""), None);
        assert!(is_host(b"example.org:8080"));
        assert!(is_host(b"[::1]:80"));
        assert!(!is_host(b"a b"));
        assert!(!is_host(b"a/b"));
        assert!(!is_host(b"user@host"));
    }
}
