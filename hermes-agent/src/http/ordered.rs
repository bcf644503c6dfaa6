//! An HTTP request as the log carries it: the client connection it came on, then its canonical
//! form. Every replica delivers the requests of one client connection over an app connection
//! of their own ([`crate::deliver::app`]), so that what an app does wrong on one connection
//! (a body left unread, a stray byte) touches only that client, as it would without Hermes.
use bytes::Bytes;

use super::RequestHead;

/// Bytes before the canonical request: the connection id.
const HEAD: usize = 8;

/// A request of client connection `conn` (an id its origin drew; with the command's origin and
/// incarnation it names the connection in the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordered {
    pub conn: u64,
    /// The canonical request.
    pub request: Bytes,
}

impl Ordered {
    /// The command payload for request `head` with `body`, from a client at `client` on
    /// connection `conn`.
    pub fn encode(conn: u64, head: RequestHead, client: std::net::IpAddr, body: &[u8]) -> Bytes {
        head.canonical_after(&conn.to_le_bytes(), client, body)
    }

    /// The command payload that carries it.
    pub fn to_payload(&self) -> Bytes {
        [&self.conn.to_le_bytes()[..], &self.request]
            .concat()
            .into()
    }

    /// Reads a command's payload; `None` if it is not one (a peer that is not a Hermes of this
    /// protocol).
    pub fn decode(payload: &Bytes) -> Option<Self> {
        let conn = u64::from_le_bytes(payload.get(..HEAD)?.try_into().ok()?);
        Some(Self {
            conn,
            request: payload.slice(HEAD..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_connection_and_the_canonical_request() {
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n";
        let parse = || {
            let limits = crate::http::request::Limits::default();
            let mut scan = crate::http::request::Scan::default();
            crate::http::request::parse_head(raw, &limits, &mut scan)
                .unwrap()
                .unwrap()
                .0
        };
        let client = std::net::IpAddr::from([10, 0, 0, 9]);
        let canonical = parse().canonical(client, b"hi");
        let head = parse();
        let payload = Ordered::encode(u64::MAX - 3, head, client, b"hi");
        let ordered = Ordered::decode(&payload).unwrap();
        assert_eq!(ordered.conn, u64::MAX - 3);
        assert_eq!(ordered.request, canonical);
        assert_eq!(ordered.to_payload(), payload);
        assert_eq!(Ordered::decode(&Bytes::from_static(b"short")), None);
    }
}
