//! `hermes_steer`: an `sk_lookup` program that hands inbound TCP connections for the protected
//! port to the Hermes agent's listener, except those to a loopback address and those from the
//! agent's own delivery address (its connections to the app).
//!
//! What it drops because no agent listens (failing closed) it reports through aya-log: the
//! first drop on a CPU and every power of two after it, so a flood costs a few records. The
//! steered path logs nothing.
//!
//! # Minimum kernel version
//!
//! `sk_lookup` programs need Linux 5.9.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::{map, sk_lookup},
    maps::{Array, PerCpuArray, SockMap},
    programs::SkLookupContext,
};
use aya_log_ebpf::warn;
use hermes_common::{
    FAIL_OPEN, LISTENER_V4, LISTENER_V6, Policy, SOCKETS, STAT_BYPASSED, STAT_DROPPED,
    STAT_STEERED, STATS,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

#[map]
static HERMES_SOCKETS: SockMap = SockMap::with_max_entries(SOCKETS, 0);

#[map]
static HERMES_POLICY: Array<Policy> = Array::with_max_entries(1, 0);

#[map]
static HERMES_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS, 0);

#[sk_lookup]
pub fn hermes_steer(ctx: SkLookupContext) -> u32 {
    match try_steer(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_steer(ctx: &SkLookupContext) -> Result<u32, u32> {
    // SAFETY: the kernel hands the program a valid `bpf_sk_lookup` for the duration of the call.
    let lookup = unsafe { &*ctx.lookup };
    let policy = HERMES_POLICY.get(0).ok_or(SK_PASS)?;
    if lookup.protocol != IPPROTO_TCP || policy.port == 0 || lookup.local_port != policy.port {
        return Ok(SK_PASS);
    }
    let listener = match lookup.family {
        // The agent delivering to the app.
        AF_INET if policy.source != 0 && lookup.remote_ip4 == policy.source => {
            return Ok(SK_PASS);
        }
        AF_INET if !is_loopback_v4(lookup.local_ip4) => LISTENER_V4,
        AF_INET6 if !is_loopback_v6(&lookup.local_ip6) => LISTENER_V6,
        _ => return Ok(SK_PASS),
    };
    if HERMES_SOCKETS.redirect_sk_lookup(ctx, listener, 0).is_ok() {
        count(STAT_STEERED);
        Ok(SK_PASS)
    } else if policy.flags & FAIL_OPEN != 0 {
        count(STAT_BYPASSED);
        Ok(SK_PASS)
    } else {
        // No live agent socket: an unordered request would silently break replica equality.
        let dropped = count(STAT_DROPPED);
        if dropped.is_power_of_two() {
            warn!(
                ctx,
                "dropped a connection to port {} from port {}: no agent listens (failing closed); {} dropped on this CPU",
                policy.port,
                u16::from_be(lookup.remote_port as u16),
                dropped
            );
        }
        Ok(SK_DROP)
    }
}

/// `ip` is in network byte order: 127.0.0.0/8.
fn is_loopback_v4(ip: u32) -> bool {
    u32::from_be(ip) >> 24 == 127
}

/// `::1`, or an IPv4-mapped loopback address (`::ffff:127.0.0.0/104`).
fn is_loopback_v6(ip: &[u32; 4]) -> bool {
    let [a, b, c, d] = ip.map(u32::from_be);
    a == 0 && b == 0 && ((c == 0 && d == 1) || (c == 0xffff && is_loopback_v4(ip[3])))
}

/// Counts one more `stat` on this CPU; returns this CPU's count (0 if the map failed).
fn count(stat: u32) -> u64 {
    match HERMES_STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, and the program is not preempted while it runs on this CPU.
        Some(counter) => unsafe {
            *counter += 1;
            *counter
        },
        None => 0,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
