//! A run's output directory, `bench/results/<UTC time>/`, and the raw points in it.
use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{csv, environment::Environment, point::Point, redis::RedisPoint};

/// `points.json`: every point, and what they were measured with.
#[derive(Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    /// UTC, `YYYY-MM-DDTHH-MM-SSZ`: also the name of the run's directory.
    pub started: String,
    pub environment: Environment,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub points: Vec<Point>,
    /// Raw TCP mode's benchmark (Redis).
    #[serde(default)]
    pub redis: Vec<RedisPoint>,
}

/// Creates the directory for a run that started at `started`.
pub fn create_dir(started: &str) -> anyhow::Result<PathBuf> {
    let dir = crate::workspace_root().join("bench/results").join(started);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes `points.json` and `points.csv` into `dir`.
pub fn write(dir: &Path, results: &Results) -> anyhow::Result<()> {
    let json = dir.join("points.json");
    let text = serde_json::to_string_pretty(results).context("serialising the points")?;
    std::fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    csv::write(&dir.join("points.csv"), &results.points)
}

/// Reads `points.json` back.
pub fn read(dir: &Path) -> anyhow::Result<Results> {
    let json = dir.join("points.json");
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))
}

/// `time` in UTC as `YYYY-MM-DDTHH-MM-SSZ` (no colons, which some file systems and tools
/// dislike in names).
pub fn utc_timestamp(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        let at = |s| utc_timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00-00-00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00-00-00Z");
        assert_eq!(at(1_795_545_775), "2026-11-24T18-42-55Z");
    }
}
