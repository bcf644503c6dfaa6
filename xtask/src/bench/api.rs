//! The two services the setups expose, and how the load generator and the readiness probe speak
//! to each: the log app (`POST /insert`, `GET /line/N`) and etcd's JSON gateway.

/// Lines the log app starts with; reads pick one of them.
pub const LINES: usize = 1000;
/// Bytes per pre-populated line and per written body or value.
pub const PAYLOAD_BYTES: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    LogApp,
    Etcd,
}

impl Api {
    /// Load generator flags for `read_ratio` percent reads; the rest are writes.
    pub fn loadgen_args(self, read_ratio: u32) -> Vec<String> {
        let mut args = vec!["--read-ratio".to_owned(), read_ratio.to_string()];
        match self {
            Self::LogApp => args.extend([
                "--lines".to_owned(),
                LINES.to_string(),
                "--body-bytes".to_owned(),
                PAYLOAD_BYTES.to_string(),
            ]),
            // etcd stores base64-decoded values. The load generator's payload is base64
            // characters in multiples of 4; 168 of them are 126 bytes, and the fixed "AAA=" adds
            // the last 2, so that etcd stores exactly PAYLOAD_BYTES, like the log app.
            Self::Etcd => args.extend(
                [
                    "--body-bytes",
                    "168",
                    "--write",
                    "POST /v3/kv/put",
                    "--write-body",
                    r#"{"key":"{key}","value":"{value}AAA="}"#,
                    "--header",
                    "Content-Type: application/json",
                ]
                .map(str::to_owned),
            ),
        }
        args
    }

    /// A request that succeeds only once the service is fully up: for the log app, the last
    /// pre-populated line exists; for etcd, a write is committed.
    pub fn probe(self) -> Vec<u8> {
        match self {
            Self::LogApp => {
                format!("GET /line/{LINES} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes()
            }
            Self::Etcd => {
                let body = r#"{"key":"cHJvYmU=","value":"cHJvYmU="}"#;
                format!(
                    "POST /v3/kv/put HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
        }
    }
}

/// The log app's flags that give every setup the same starting state.
pub fn logapp_args() -> Vec<String> {
    vec![
        "--prepopulate".to_owned(),
        LINES.to_string(),
        "--line-bytes".to_owned(),
        PAYLOAD_BYTES.to_string(),
    ]
}
