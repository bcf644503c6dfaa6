//! The Hermes paper's workloads on the log app: writes, reads, and an even mix.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 100% `POST /insert` with a 128-byte body.
    Post,
    /// 50% `GET /line/<random 1..=1000>`, 50% `POST /insert`.
    Mixed,
    /// 100% `GET /line/<random 1..=1000>`.
    Get,
}

impl Workload {
    pub const ALL: [Self; 3] = [Self::Post, Self::Mixed, Self::Get];

    pub fn name(self) -> &'static str {
        match self {
            Self::Post => "post",
            Self::Mixed => "mixed",
            Self::Get => "get",
        }
    }

    /// Percentage of reads.
    pub fn read_ratio(self) -> u32 {
        match self {
            Self::Post => 0,
            Self::Mixed => 50,
            Self::Get => 100,
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Post => "100% POST /insert, 128-byte body",
            Self::Mixed => "50% GET /line/<random>, 50% POST /insert",
            Self::Get => "100% GET /line/<random 1..1000>",
        }
    }
}
