//! What to send: the Hermes paper's workload (`GET /line/<random>` and `POST /insert` with a
//! B-byte body, R% reads), or any HTTP service through request templates.

/// Characters of generated bodies: base64's alphabet, so that a template can put them where
/// base64 is expected (etcd's JSON API), and no line breaks (the log app's bodies are lines).
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

#[derive(Clone, Debug)]
pub struct Workload {
    /// Percentage of reads, 0 to 100.
    pub read_ratio: u32,
    /// `METHOD PATH` of a read; `{line}` becomes a random line number in `1..=lines`.
    pub read: String,
    /// `METHOD PATH` of a write.
    pub write: String,
    /// Body of a write: `{key}` becomes a unique 8-character key, `{value}` the payload; empty
    /// means the payload itself.
    pub write_body: String,
    /// Extra header lines for every request.
    pub headers: Vec<String>,
    /// Bytes of generated payload (a multiple of 4, as base64).
    pub body_bytes: usize,
    pub lines: u64,
}

impl Workload {
    /// The request number `seq` of connection `conn`.
    pub fn request(&self, rng: &mut Rng, conn: u64, seq: u64, host: &str) -> (Vec<u8>, bool) {
        let read = rng.below(100) < u64::from(self.read_ratio);
        let mut out = Vec::with_capacity(256 + self.body_bytes);
        if read {
            let target = self
                .read
                .replace("{line}", &(1 + rng.below(self.lines.max(1))).to_string());
            out.extend_from_slice(format!("{target} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
            for header in &self.headers {
                out.extend_from_slice(format!("{header}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            return (out, true);
        }
        let key = key(conn, seq);
        let mut value = Vec::with_capacity(self.body_bytes);
        value.extend_from_slice(&key);
        while value.len() < self.body_bytes {
            value.push(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]);
        }
        value.truncate(self.body_bytes);
        let body = if self.write_body.is_empty() {
            value
        } else {
            let key = String::from_utf8(key.to_vec()).expect("ASCII");
            let value = String::from_utf8(value).expect("ASCII");
            self.write_body
                .replace("{key}", &key)
                .replace("{value}", &value)
                .into_bytes()
        };
        out.extend_from_slice(
            format!(
                "{} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
                self.write,
                body.len()
            )
            .as_bytes(),
        );
        for header in &self.headers {
            out.extend_from_slice(format!("{header}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        (out, false)
    }
}

/// 8 base64 characters unique per (connection, sequence): 12 bits of connection, 36 of sequence.
fn key(conn: u64, seq: u64) -> [u8; 8] {
    let mut n = (conn << 36) | (seq & ((1 << 36) - 1));
    let mut key = [b'A'; 8];
    for slot in key.iter_mut().rev() {
        *slot = ALPHABET[(n & 63) as usize];
        n >>= 6;
    }
    key
}

/// xorshift64*: fast, and good enough to pick lines and fill bodies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper(read_ratio: u32) -> Workload {
        Workload {
            read_ratio,
            read: "GET /line/{line}".into(),
            write: "POST /insert".into(),
            write_body: String::new(),
            headers: vec![],
            body_bytes: 128,
            lines: 1000,
        }
    }

    #[test]
    fn writes_carry_unique_bodies_of_the_asked_size() {
        let mut rng = Rng::new(1);
        let (a, read) = paper(0).request(&mut rng, 1, 1, "h");
        assert!(!read);
        let text = String::from_utf8(a.clone()).unwrap();
        assert!(
            text.starts_with("POST /insert HTTP/1.1\r\nHost: h\r\nContent-Length: 128\r\n\r\n"),
            "{text}"
        );
        let body = &a[a.len() - 128..];
        assert!(!body.contains(&b'\n'));
        let (b, _) = paper(0).request(&mut rng, 1, 2, "h");
        assert_ne!(
            &a[a.len() - 128..a.len() - 120],
            &b[b.len() - 128..b.len() - 120]
        );
    }

    #[test]
    fn reads_pick_existing_lines_and_ratios_hold() {
        let mut rng = Rng::new(7);
        let reads = (0..10_000)
            .filter(|i| paper(50).request(&mut rng, 0, *i, "h").1)
            .count();
        assert!((4_500..5_500).contains(&reads), "{reads}");
        for i in 0..1000 {
            let (request, _) = paper(100).request(&mut rng, 0, i, "h");
            let text = String::from_utf8(request).unwrap();
            let line: u64 = text["GET /line/".len()..]
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=1000).contains(&line));
        }
    }

    #[test]
    fn templates_fill_key_and_value() {
        let mut workload = paper(0);
        workload.write = "POST /v3/kv/put".into();
        workload.write_body = r#"{"key":"{key}","value":"{value}"}"#.into();
        let (request, _) = workload.request(&mut Rng::new(3), 2, 5, "h");
        let text = String::from_utf8(request).unwrap();
        let key = String::from_utf8(key(2, 5).to_vec()).unwrap();
        assert_eq!(key, "ACAAAAAF");
        assert!(
            text.contains(&format!(r#"{{"key":"{key}","value":"{key}"#)),
            "{text}"
        );
    }
}
