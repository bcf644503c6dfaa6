//! Keeps the load inside the lab. A lab torn down under a running benchmark (say, by
//! `cargo xtask lab down` in another shell) leaves its addresses to the default route, and the
//! load generator would send its requests out of the machine: refuse instead.
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};

/// Fails unless every target is reached through a lab's bridge.
pub fn targets_in_lab(targets: &[SocketAddr]) -> anyhow::Result<()> {
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    for target in targets {
        if !in_lab(&routes, target.ip()) {
            bail!(
                "{target} is no longer reached through a lab bridge (was the lab torn down?); \
                 not sending load there"
            );
        }
    }
    Ok(())
}

/// Whether `/proc/net/route` routes `ip` to an interface of a lab (a directly connected
/// network: the labs' bridges carry no gateways).
fn in_lab(routes: &str, ip: IpAddr) -> bool {
    let IpAddr::V4(ip) = ip else {
        return false;
    };
    // The table holds addresses as the kernel stores them: network byte order, printed as a
    // native (little-endian here) integer.
    let ip = u32::from_ne_bytes(ip.octets());
    routes.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| fields.get(i).and_then(|f| u32::from_str_radix(f, 16).ok());
        match (fields.first(), hex(1), hex(7)) {
            (Some(iface), Some(destination), Some(mask)) => {
                iface.starts_with(hermes_lab::PREFIX) && mask != 0 && ip & mask == destination
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
hlab2\t000212C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";

    #[test]
    fn only_lab_bridges_count() {
        assert!(in_lab(ROUTES, "198.18.2.1".parse().unwrap()));
        assert!(!in_lab(ROUTES, "198.18.3.1".parse().unwrap()));
        assert!(!in_lab(ROUTES, "192.0.2.7".parse().unwrap()));
    }
}
