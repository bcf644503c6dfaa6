//! The chunked transfer coding (RFC 9112 section 7.1), decoded strictly and as it arrives: a body
//! that comes in many reads is decoded piece by piece, and each byte is looked at once.
//!
//! Strict means: a chunk size is hexadecimal digits only, lines end in CRLF (a bare CR or LF is an
//! error), extensions are `;name[=token|"quoted"]` with optional blanks around `;` and `=` and
//! nothing else, trailer fields are well-formed field lines. Extensions and trailers are checked,
//! then dropped: the decoded body is all that is kept.
use super::{Invalid, fields};

/// Longest chunk-size line (the size and its extensions), CRLF excluded.
const MAX_SIZE_LINE: usize = 4096;
/// Longest trailer section, CRLFs included.
const MAX_TRAILERS: usize = 16 * 1024;

/// A chunked body being decoded.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    /// Bytes of trailer section seen so far.
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer field lines, then an empty line.
    Trailers,
    Done,
}

impl Chunked {
    /// Decodes what it can of `input` (the bytes after those used by earlier calls) into `body`,
    /// which may not grow beyond `max` bytes; returns how many bytes of `input` it used.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>, max: u64) -> Result<usize, Invalid> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(at),
                State::Size => {
                    let too_long = Invalid::Malformed("chunk size line too long");
                    let Some(end) = line_end(rest, MAX_SIZE_LINE, too_long)? else {
                        return Ok(at);
                    };
                    let size = chunk_size(&rest[..end])?;
                    at += end + 2;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        if (body.len() as u64)
                            .checked_add(size)
                            .is_none_or(|n| n > max)
                        {
                            return Err(Invalid::BodyTooLarge(max));
                        }
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take =
                        usize::try_from(left).map_or(rest.len(), |left| left.min(rest.len()));
                    body.extend_from_slice(&rest[..take]);
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        at += 2;
                        self.state = State::Size;
                    }
                    [] | [b'\r'] => return Ok(at),
                    _ => return Err(Invalid::Malformed("chunk data not followed by CRLF")),
                },
                State::Trailers => {
                    // A line may end (its CRLF) just past the bound: then there is no room left.
                    let room = MAX_TRAILERS.saturating_sub(self.trailers);
                    let Some(end) = line_end(rest, room, Invalid::HeadTooLarge)? else {
                        return Ok(at);
                    };
                    if end > 0 {
                        fields::check_line(&rest[..end])?;
                    }
                    at += end + 2;
                    self.trailers += end + 2;
                    if end == 0 {
                        self.state = State::Done;
                    }
                }
            }
        }
    }

    /// Whether the last chunk and the trailer section are in.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }
}

/// Where the CRLF ending the line at the start of `buf` is, once it has arrived. A bare CR or LF
/// is an error, and so (`too_long`) is a line of more than `max` bytes.
fn line_end(buf: &[u8], max: usize, too_long: Invalid) -> Result<Option<usize>, Invalid> {
    for (i, &byte) in buf.iter().enumerate() {
        match byte {
            b'\r' => {
                return match buf.get(i + 1) {
                    Some(b'\n') => Ok(Some(i)),
                    Some(_) => Err(Invalid::Malformed("bare CR")),
                    None => Ok(None),
                };
            }
            b'\n' => return Err(Invalid::Malformed("bare LF")),
            _ if i >= max => return Err(too_long),
            _ => {}
        }
    }
    Ok(None)
}

/// `1*HEXDIG [ chunk-ext ]`.
fn chunk_size(line: &[u8]) -> Result<u64, Invalid> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(Invalid::Malformed("chunk size"));
    }
    let mut size: u64 = 0;
    for &digit in &line[..digits] {
        let value = (digit as char).to_digit(16).expect("a hex digit") as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(value))
            .ok_or(Invalid::Malformed("chunk size too large"))?;
    }
    extensions(&line[digits..])?;
    Ok(size)
}

/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`, and nothing else.
fn extensions(mut rest: &[u8]) -> Result<(), Invalid> {
    const BAD: Invalid = Invalid::Malformed("chunk extension");
    while !rest.is_empty() {
        rest = fields::skip_blanks(rest);
        rest = rest.strip_prefix(b";").ok_or(BAD)?;
        rest = fields::skip_blanks(rest);
        let name = fields::token_len(rest);
        if name == 0 {
            return Err(BAD);
        }
        rest = &rest[name..];
        let after = fields::skip_blanks(rest);
        if let Some(value) = after.strip_prefix(b"=") {
            let value = fields::skip_blanks(value);
            let len = match value.first() {
                Some(b'"') => fields::quoted_len(value).ok_or(BAD)?,
                _ => fields::token_len(value),
            };
            if len == 0 {
                return Err(BAD);
            }
            rest = &value[len..];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the body and the bytes used, once done.
    fn decode(input: &[u8], step: usize) -> Result<Option<(Vec<u8>, usize)>, Invalid> {
        let mut chunked = Chunked::default();
        let mut body = Vec::new();
        let (mut used, mut fed) = (0, 0);
        while !chunked.done() {
            if fed == input.len() {
                return Ok(None);
            }
            fed = (fed + step).min(input.len());
            used += chunked.decode(&input[used..fed], &mut body, 1 << 20)?;
        }
        Ok(Some((body, used)))
    }

    #[test]
    fn decodes_in_any_pieces() {
        let input = b"5\r\nhello\r\n6;ext=1 ; b=\"q\\\"s\"\r\n world\r\n0\r\nX-T: v\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, input.len()] {
            assert_eq!(
                decode(input, step).unwrap(),
                Some((b"hello world".to_vec(), input.len() - 4)),
                "step {step}"
            );
        }
        assert_eq!(decode(b"5\r\nhel", 2).unwrap(), None);
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap(), Some((Vec::new(), 5)));
    }

    #[test]
    fn refuses_what_parsers_disagree_on() {
        for bad in [
            &b"\r\n"[..],                             // an empty size line is not the last chunk
            b"+5\r\nhello\r\n0\r\n\r\n",              // a sign
            b" 5\r\nhello\r\n0\r\n\r\n",              // leading blank
            b"5 \r\nhello\r\n0\r\n\r\n",              // trailing blank without an extension
            b"5\nhello\r\n0\r\n\r\n",                 // bare LF
            b"5\rhello\r\n0\r\n\r\n",                 // bare CR
            b"5;a\nb\r\nhello\r\n",                   // LF inside an extension
            b"5;a\x00\r\nhello\r\n",                  // NUL inside an extension
            b"5;\r\nhello\r\n",                       // an empty extension
            b"5;a=\r\nhello\r\n",                     // an empty value
            b"5;a=\"x\r\nhello\r\n",                  // an unterminated quoted value
            b"5\r\nhelloXY0\r\n\r\n",                 // data longer than its size
            b"5\r\nhello\r\n0\r\nX: a\nY: b\r\n\r\n", // bare LF in the trailers
            b"5\r\nhello\r\n0\r\n bad\r\n\r\n",       // obs-fold in the trailers
            b"5\r\nhello\r\n0\r\nNo colon\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n", // 2^64: too large
        ] {
            assert!(
                decode(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                decode(bad, bad.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bodies_and_lines_are_bounded() {
        let mut chunked = Chunked::default();
        assert_eq!(
            chunked.decode(b"ffff\r\n", &mut Vec::new(), 100),
            Err(Invalid::BodyTooLarge(100))
        );
        let long = [b"5;a=".as_slice(), &[b'x'; MAX_SIZE_LINE]].concat();
        assert!(
            Chunked::default()
                .decode(&long, &mut Vec::new(), 100)
                .is_err()
        );
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"X-Trailer: 0123456789\r\n");
        }
        assert!(
            Chunked::default()
                .decode(&trailers, &mut Vec::new(), 100)
                .is_err()
        );
    }
}
