//! HTTP/1.1 (RFC 9112, RFC 9110), in one place: everything in the agent that reads or writes HTTP
//! (interception, delivery, the admin API, `ctl`) goes through this module.
//!
//! - [`request`]: requests parsed strictly and re-serialized in a canonical form, which is what is
//!   ordered and what every app receives; the reader that takes them off a client connection.
//! - [`response`]: app responses framed totally, whatever the app sends; the agent's own
//!   responses; both re-serialized for the client.
//! - [`ordered`]: a request as the log carries it, with the client connection it came on.
//! - [`chunked`]: the chunked transfer coding, decoded as it arrives (public for the fuzz
//!   targets); `fields`: field grammar and the fields whose meaning the agent acts on.
//!
//! Every length read from the network is checked before anything is allocated for it, all
//! arithmetic on lengths is checked, and field values are bytes (obs-text is legal).
pub mod chunked;
#[cfg(test)]
mod corpus;
mod fields;
pub mod ordered;
pub mod request;
pub mod response;

pub use request::{Framing, RequestHead};
pub use response::Response;

/// The HTTP/1 minor versions there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn minor(self) -> u8 {
        match self {
            Self::Http10 => 0,
            Self::Http11 => 1,
        }
    }

    /// ` HTTP/1.x`, as it ends a request line.
    fn text(self) -> &'static [u8] {
        match self {
            Self::Http10 => b" HTTP/1.0",
            Self::Http11 => b" HTTP/1.1",
        }
    }
}

/// Why a request is refused; each has its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("header section too large")]
    HeadTooLarge,
    #[error("body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("not implemented: {0}")]
    Unsupported(&'static str),
    #[error("only `Expect: 100-continue` is understood")]
    Expectation,
    #[error("too many request bytes in flight on this node; retry")]
    Overloaded,
}

impl Invalid {
    /// The status a client gets for it.
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::HeadTooLarge => 431,
            Self::BodyTooLarge(_) => 413,
            Self::Unsupported(_) => 501,
            Self::Expectation => 417,
            Self::Overloaded => 503,
        }
    }
}
