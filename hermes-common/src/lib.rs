//! Names and map layouts shared by the `sk_lookup` program (`hermes-ebpf`) and the agent, so both
//! sides spell them once.
#![no_std]

/// Name of the `sk_lookup` program in the eBPF object.
pub const PROGRAM: &str = "hermes_steer";
/// SOCKMAP holding the agent's listening sockets: [`LISTENER_V4`] and [`LISTENER_V6`].
pub const SOCKETS_MAP: &str = "HERMES_SOCKETS";
/// Array with one [`Policy`] at index 0.
pub const POLICY_MAP: &str = "HERMES_POLICY";

/// SOCKMAP index of the agent's IPv4 listener.
pub const LISTENER_V4: u32 = 0;
/// SOCKMAP index of the agent's IPv6 listener.
pub const LISTENER_V6: u32 = 1;
/// Number of SOCKMAP entries.
pub const SOCKETS: u32 = 2;

/// What the program steers and what it does when the agent is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Protected local port, host byte order. 0 means "not configured yet": steer nothing.
    pub port: u32,
    /// [`FAIL_OPEN`] or 0.
    pub flags: u32,
    /// The IPv4 address the agent delivers to the app from, network byte order: connections
    /// from it are the agent's own, and are not steered. 0: none.
    pub source: u32,
}

/// With this flag a connection to the protected port reaches the app directly when no agent
/// listens; without it (the default) such a connection is dropped.
pub const FAIL_OPEN: u32 = 1;

#[cfg(feature = "user")]
// SAFETY: `Policy` is `repr(C)`, `Copy`, and has no padding (three `u32`).
unsafe impl aya::Pod for Policy {}

/// Per-CPU counters of the program's verdicts, indexed by the `STAT_*` constants.
pub const STATS_MAP: &str = "HERMES_STATS";
/// Connections handed to an agent listener.
pub const STAT_STEERED: u32 = 0;
/// Connections dropped because no agent listener was there (fail closed).
pub const STAT_DROPPED: u32 = 1;
/// Connections let through to the app because no agent listener was there (fail open).
pub const STAT_BYPASSED: u32 = 2;
/// Number of counters.
pub const STATS: u32 = 3;
