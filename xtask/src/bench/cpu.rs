//! CPU time (user + system) of processes and all their descendants, from `/proc/<pid>/stat`:
//! nginx does its work in child processes, and the kernel counts a child's time in its parent
//! only once the child is reaped.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, bail};

/// The CPU time used so far by each group of `roots` and their descendants, from one look at
/// `/proc`.
pub fn used<const N: usize>(groups: [&[u32]; N]) -> anyhow::Result<[Duration; N]> {
    let processes = snapshot()?;
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, process) in &processes {
        children.entry(process.parent).or_default().push(pid);
    }
    let per_second = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks,
        _ => bail!("sysconf(_SC_CLK_TCK) failed"),
    };
    let mut used = [Duration::ZERO; N];
    for (roots, used) in groups.into_iter().zip(&mut used) {
        let mut ticks = 0;
        let mut pending = Vec::new();
        for &root in roots {
            // A dead child stays a zombie until the lab reaps it.
            if processes.get(&root).is_none_or(|p| p.exited) {
                bail!("process {root} of the setup under test has exited");
            }
            pending.push(root);
        }
        while let Some(pid) = pending.pop() {
            ticks += processes[&pid].ticks;
            pending.extend(children.get(&pid).into_iter().flatten());
        }
        *used = Duration::from_secs_f64(ticks as f64 / per_second as f64);
    }
    Ok(used)
}

/// What `/proc/<pid>/stat` tells about a process.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    parent: u32,
    /// A zombie, or dead.
    exited: bool,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

/// Every process by pid.
fn snapshot() -> anyhow::Result<HashMap<u32, Stat>> {
    let mut processes = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry.context("reading /proc")?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process may exit between listing and reading: it no longer uses CPU.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let parsed = parse_stat(&stat).with_context(|| format!("unexpected /proc/{pid}/stat"))?;
        processes.insert(pid, parsed);
    }
    Ok(processes)
}

/// Parses a `stat` line. The command name (field 2) may contain spaces and parentheses, so
/// fields are counted from its closing parenthesis.
fn parse_stat(stat: &str) -> Option<Stat> {
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // After the name: state (field 3), ppid (4), ..., utime (14), stime (15).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        parent: fields.get(1)?.parse().ok()?,
        exited: matches!(*fields.first()?, "Z" | "X"),
        ticks: utime + stime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 1 0 9 0 0";
        let parsed = Stat {
            parent: 7,
            exited: false,
            ticks: 281,
        };
        assert_eq!(parse_stat(stat), Some(parsed));
        let zombie = stat.replace(") S ", ") Z ");
        assert!(parse_stat(&zombie).unwrap().exited);
    }

    #[test]
    fn counts_this_process() {
        let pid = std::process::id();
        assert!(used([&[pid]]).is_ok());
    }
}
