//! `summary.md`: per workload, each setup's saturation throughput and low-load latency, with
//! ratios to the baselines, and what the run measured on.
use std::fmt::Write as _;

use super::{
    deploy::Setup,
    flow::Flow,
    plan::{LOW_RATE, MAX_ERROR_SHARE, P90_LIMIT_MS},
    point::{Point, micros},
    results::Results,
    workload::Workload,
};

/// The summary as Markdown: `heading` is the level of its sections ("##"), `images` the path
/// prefix of the plots.
pub fn render(results: &Results, heading: &str, images: &str) -> String {
    let mut out = String::new();
    let env = &results.environment;
    let _ = writeln!(
        out,
        "Command: `{}`, started {} (UTC).\n\nMachine: {}.\n\nEach point: {} s measured after {} s \
         of warm-up, open loop; low load is {LOW_RATE} requests/s; a sweep stops at its first \
         saturated point: p90 over {P90_LIMIT_MS} ms, under 90% of the offered rate achieved, or \
         over {}% errors.\n",
        results.command,
        results.started,
        env.describe(),
        results.duration_s,
        results.warmup_s,
        MAX_ERROR_SHARE * 100.0
    );
    for workload in Workload::ALL {
        let rows: Vec<Row<'_>> = Setup::ALL
            .iter()
            .filter_map(|&setup| Row::new(setup, workload, &results.points))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "{heading} {}: {}\n",
            workload.name(),
            workload.description()
        );
        table(&mut out, workload, &rows);
        flows(&mut out, &rows);
        let _ = writeln!(
            out,
            "\nSaturation: the highest achieved rate whose p90 stayed within {P90_LIMIT_MS} ms \
             with at most {errors}% errors; \"≥\" where even the highest offered rate did not \
             saturate, which makes ratios to it bounds. CPU per request at that point, summed over the nodes: app = the log apps \
             or the etcd members, proxy = the Hermes agents or nginx. Disk sync: the median time of \
             a 128-byte write and its fdatasync on the lab's disk, right after the low-load point \
             and the saturation point.\n\n![{name}]({images}{name}.svg)\n",
            name = workload.name(),
            errors = MAX_ERROR_SHARE * 100.0
        );
    }
    out.push_str(&super::redis::render(&results.redis, heading));
    out
}

/// A setup's figures under one workload.
struct Row<'a> {
    setup: Setup,
    /// The point of the saturation throughput, if any stayed within the limits.
    best: Option<&'a Point>,
    /// No point saturated: the setup can do more than was offered.
    unsaturated: bool,
    low: Option<&'a Point>,
}

impl<'a> Row<'a> {
    fn new(setup: Setup, workload: Workload, points: &'a [Point]) -> Option<Self> {
        let mine: Vec<&Point> = points.iter().filter(|p| p.is(setup, workload)).collect();
        if mine.is_empty() {
            return None;
        }
        Some(Self {
            setup,
            best: mine
                .iter()
                .copied()
                .filter(|p| p.within_limits())
                .max_by(|a, b| a.achieved.total_cmp(&b.achieved)),
            unsaturated: !mine.iter().any(|p| p.saturated),
            low: mine.iter().copied().find(|p| p.low_load),
        })
    }

    fn saturation(&self) -> Option<f64> {
        self.best.map(|p| p.achieved)
    }
}

fn table(out: &mut String, workload: Workload, rows: &[Row<'_>]) {
    let find = |setup| rows.iter().find(|row| row.setup == setup);
    let direct = find(Setup::Direct);
    // etcd is measured under writes only; it is the reference for what replication costs.
    // Its peers on TLS, as Hermes' are; and on plain HTTP, etcd's default.
    let etcds: Vec<&Row<'_>> = [Setup::Etcd3, Setup::Etcd3Plain]
        .into_iter()
        .filter_map(find)
        .filter(|_| workload == Workload::Post)
        .collect();
    let mut columns = vec!["setup", "saturation (req/s)", "÷ direct"];
    let headings: Vec<String> = etcds
        .iter()
        .map(|etcd| format!("÷ {}", etcd.setup.name()))
        .collect();
    columns.extend(headings.iter().map(String::as_str));
    columns.extend([
        "p50 at low load (ms)",
        "p90 at low load (ms)",
        "p50 ÷ direct",
        "app CPU/req",
        "proxy CPU/req",
        "disk sync, low load / saturation (ms)",
    ]);
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns.len() - 1));
    for row in rows {
        let saturation = match row.saturation() {
            Some(rate) if row.unsaturated => format!("≥ {rate:.0}"),
            Some(rate) => format!("{rate:.0}"),
            None => format!("< {LOW_RATE}"),
        };
        let mut cells = vec![row.setup.name().to_owned(), saturation];
        cells.push(direct.map_or_else(|| "-".to_owned(), |direct| throughput_ratio(row, direct)));
        for etcd in &etcds {
            cells.push(throughput_ratio(row, etcd));
        }
        let p50 = row.low.map(|p| p.p50_ms);
        cells.extend([
            ms(p50),
            ms(row.low.map(|p| p.p90_ms)),
            ratio(p50, direct.and_then(|d| d.low).map(|p| p.p50_ms)),
            micros(row.best.and_then(|p| p.app_cpu_us_per_req)),
            micros(row.best.and_then(|p| p.proxy_cpu_us_per_req)),
            format!(
                "{} / {}",
                ms(row.low.and_then(|p| p.disk_sync_ms)),
                ms(row.best.and_then(|p| p.disk_sync_ms))
            ),
        ]);
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

/// What the Hermes agents counted at each setup's saturation point, where they count.
fn flows(out: &mut String, rows: &[Row<'_>]) {
    let counted: Vec<(&Row<'_>, &Flow)> = rows
        .iter()
        .filter_map(|row| Some((row, row.best?.flow.as_ref()?)))
        .collect();
    if counted.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nAt saturation, what the agents counted: requests per log entry; per node and second, \
         entries appended, log syncs and app round trips; over all nodes per second, \
         AppendEntries sent and batches forwarded to the leader.\n\n\
         | setup | requests/entry | entries/s | syncs/s | app round trips/s | AppendEntries/s | \
         forwards/s |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (row, flow) in counted {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            row.setup.name(),
            flow.requests_per_entry,
            flow.entries_per_s,
            flow.syncs_per_s,
            flow.app_round_trips_per_s,
            flow.append_entries_per_s,
            flow.forwards_per_s
        );
    }
}

/// `row`'s saturation throughput over `base`'s, as a bound where either did not saturate.
fn throughput_ratio(row: &Row<'_>, base: &Row<'_>) -> String {
    if row.setup == base.setup {
        return "1.00".to_owned();
    }
    let ratio = ratio(row.saturation(), base.saturation());
    match (row.unsaturated, base.unsaturated) {
        _ if ratio == "-" => ratio,
        (false, false) => ratio,
        (true, false) => format!("≥ {ratio}"),
        (false, true) => format!("≤ {ratio}"),
        (true, true) => "-".to_owned(),
    }
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 => format!("{:.2}", value / base),
        _ => "-".to_owned(),
    }
}

/// Milliseconds with the digits that matter.
fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(ms) if ms < 1.0 => format!("{ms:.3}"),
        Some(ms) if ms < 10.0 => format!("{ms:.2}"),
        Some(ms) => format!("{ms:.1}"),
    }
}
