//! `points.csv`: one row per point, in the order of [`Point`]'s fields (a [`Flow`]'s flattened);
//! empty cells for absent CPU figures, counters and disk figures. Read back to check that what was written is well formed.
use std::path::Path;

use anyhow::{Context as _, bail};

use super::{flow::Flow, point::Point};

const HEADER: &str = "setup,workload,low_load,offered,achieved,completed,errors,p50_ms,p90_ms,\
                      p99_ms,p999_ms,max_ms,mean_ms,app_cpu_us_per_req,proxy_cpu_us_per_req,saturated,\
                      requests_per_entry,entries_per_s,syncs_per_s,append_entries_per_s,\
                      forwards_per_s,app_round_trips_per_s,disk_sync_ms";

pub fn write(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    let mut text = format!("{HEADER}\n");
    for p in points {
        let cpu = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.1}"));
        let flow = |f: fn(&Flow) -> f64| cpu(p.flow.as_ref().map(f));
        text.push_str(&format!(
            "{},{},{},{},{:.1},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{}\n",
            p.setup,
            p.workload,
            p.low_load,
            p.offered,
            p.achieved,
            p.completed,
            p.errors,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms,
            p.p999_ms,
            p.max_ms,
            p.mean_ms,
            cpu(p.app_cpu_us_per_req),
            cpu(p.proxy_cpu_us_per_req),
            p.saturated,
            flow(|f| f.requests_per_entry),
            flow(|f| f.entries_per_s),
            flow(|f| f.syncs_per_s),
            flow(|f| f.append_entries_per_s),
            flow(|f| f.forwards_per_s),
            flow(|f| f.app_round_trips_per_s),
            p.disk_sync_ms.map_or_else(String::new, |v| format!("{v:.3}")),
        ));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn read(path: &Path) -> anyhow::Result<Vec<Point>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        bail!("{}: the header is not `{HEADER}`", path.display());
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            parse_row(line).with_context(|| format!("{} row {}", path.display(), i + 1))
        })
        .collect()
}

fn parse_row(line: &str) -> anyhow::Result<Point> {
    let cells: Vec<&str> = line.split(',').collect();
    let columns = HEADER.split(',').count();
    if cells.len() != columns {
        bail!("{} cells instead of {columns}", cells.len());
    }
    let number = |i: usize| -> anyhow::Result<f64> {
        cells[i]
            .parse()
            .with_context(|| format!("column {i} is not a number: `{}`", cells[i]))
    };
    let count = |i: usize| -> anyhow::Result<u64> {
        cells[i]
            .parse()
            .with_context(|| format!("column {i} is not a count: `{}`", cells[i]))
    };
    let flag = |i: usize| -> anyhow::Result<bool> {
        cells[i]
            .parse()
            .with_context(|| format!("column {i} is not true/false: `{}`", cells[i]))
    };
    let optional = |i: usize| -> anyhow::Result<Option<f64>> {
        if cells[i].is_empty() {
            Ok(None)
        } else {
            number(i).map(Some)
        }
    };
    Ok(Point {
        setup: cells[0].to_owned(),
        workload: cells[1].to_owned(),
        low_load: flag(2)?,
        offered: number(3)?,
        achieved: number(4)?,
        completed: count(5)?,
        errors: count(6)?,
        p50_ms: number(7)?,
        p90_ms: number(8)?,
        p99_ms: number(9)?,
        p999_ms: number(10)?,
        max_ms: number(11)?,
        mean_ms: number(12)?,
        app_cpu_us_per_req: optional(13)?,
        proxy_cpu_us_per_req: optional(14)?,
        saturated: flag(15)?,
        flow: match (16..22).map(optional).collect::<anyhow::Result<Vec<_>>>()?[..] {
            [
                Some(requests_per_entry),
                Some(entries_per_s),
                Some(syncs_per_s),
                Some(append_entries_per_s),
                Some(forwards_per_s),
                Some(app_round_trips_per_s),
            ] => Some(Flow {
                requests_per_entry,
                entries_per_s,
                syncs_per_s,
                append_entries_per_s,
                forwards_per_s,
                app_round_trips_per_s,
            }),
            _ => None,
        },
        disk_sync_ms: optional(22)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back() {
        let mut point = Point {
            setup: "hermes-3".into(),
            workload: "post".into(),
            low_load: false,
            offered: 1000.0,
            achieved: 999.5,
            completed: 4998,
            errors: 2,
            p50_ms: 1.25,
            p90_ms: 2.5,
            p99_ms: 4.0,
            p999_ms: 8.0,
            max_ms: 9.125,
            mean_ms: 1.5,
            app_cpu_us_per_req: Some(12.5),
            proxy_cpu_us_per_req: None,
            saturated: false,
            flow: None,
            disk_sync_ms: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("points.csv");
        write(&path, std::slice::from_ref(&point)).unwrap();
        assert_eq!(read(&path).unwrap(), vec![point.clone()]);
        point.flow = Some(Flow {
            requests_per_entry: 10.5,
            entries_per_s: 400.0,
            syncs_per_s: 401.5,
            append_entries_per_s: 800.0,
            forwards_per_s: 600.0,
            app_round_trips_per_s: 4200.0,
        });
        point.disk_sync_ms = Some(0.125);
        write(&path, std::slice::from_ref(&point)).unwrap();
        assert_eq!(read(&path).unwrap(), vec![point]);
    }
}
