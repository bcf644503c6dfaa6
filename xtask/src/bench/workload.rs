//! The Hermes paper's workloads on the log app: writes, reads, and an even mix; and writes from
//! clients that open a connection per request.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 100% `POST /insert` with a 128-byte body.
    Post,
    /// 50% `GET /line/<random 1..=1000>`, 50% `POST /insert`.
    Mixed,
    /// 100% `GET /line/<random 1..=1000>`.
    Get,
    /// As `Post`, each request on a new connection that the server closes after its answer
    /// (`Connection: close`): clients that do not keep connections alive.
    PostClose,
}

impl Workload {
    pub const ALL: [Self; 4] = [Self::Post, Self::Mixed, Self::Get, Self::PostClose];

    pub fn name(self) -> &'static str {
        match self {
            Self::Post => "post",
            Self::Mixed => "mixed",
            Self::Get => "get",
            Self::PostClose => "post-close",
        }
    }

    /// Percentage of reads.
    pub fn read_ratio(self) -> u32 {
        match self {
            Self::Post | Self::PostClose => 0,
            Self::Mixed => 50,
            Self::Get => 100,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Post => "100% POST /insert, 128-byte body",
            Self::Mixed => "50% GET /line/<random>, 50% POST /insert",
            Self::Get => "100% GET /line/<random 1..1000>",
            Self::PostClose => {
                "100% POST /insert, 128-byte body, each on a new connection (`Connection: close`)"
            }
        }
    }

    /// The load generator's arguments for this workload besides the API's.
    pub fn loadgen_args(self) -> &'static [&'static str] {
        match self {
            Self::PostClose => &["--header", "Connection: close"],
            _ => &[],
        }
    }
}
