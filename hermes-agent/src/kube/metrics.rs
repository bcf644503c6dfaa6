//! Pod mode's metrics endpoint (`--metrics-addr`): the metrics of every protected pod's member
//! in one exposition, each sample labelled with its pod's `namespace`, `pod`, `group` and
//! `member` id, so that one scrape per agent sees all of its node's members. A metric family
//! is written once, with the samples of every member (the format allows a family only once).
use std::sync::Mutex;

use super::View;

/// Every member's metrics of `view`, merged.
pub fn merged(view: &Mutex<View>) -> String {
    let members: Vec<_> = {
        let view = view.lock().unwrap();
        view.pods
            .iter()
            .filter_map(|(key, pod)| {
                let (admin, _) = pod.member.as_ref()?;
                let id = admin.node.as_ref().map_or(0, |node| node.id);
                let labels = [
                    ("namespace", key.namespace.as_str()),
                    ("pod", key.name.as_str()),
                    ("group", pod.group.as_str()),
                    ("member", &id.to_string()),
                ]
                .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
                .join(",");
                Some((labels, std::sync::Arc::clone(admin)))
            })
            .collect()
    };
    let parts: Vec<(String, String)> = members
        .into_iter()
        .map(|(labels, admin)| (labels, crate::admin::metrics(&admin)))
        .collect();
    merge(&parts)
}

/// A metric family: its `# HELP`/`# TYPE`/`# UNIT` lines, then its samples.
struct Family {
    name: String,
    lines: Vec<String>,
}

/// Merges expositions (OpenMetrics text), each with the labels (`name="value",...`) to add to
/// its samples.
fn merge(parts: &[(String, String)]) -> String {
    let mut families: Vec<Family> = Vec::new();
    for (labels, text) in parts {
        // Where this part's current family is in `families`, and whether it was new with it.
        let mut current: Option<(usize, bool)> = None;
        for line in text.lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let name = meta.split_whitespace().nth(1).unwrap_or_default();
                let same = current.is_some_and(|(at, _)| families[at].name == name);
                if !same {
                    current = Some(match families.iter().position(|f| f.name == name) {
                        Some(at) => (at, false),
                        None => {
                            families.push(Family {
                                name: name.to_owned(),
                                lines: Vec::new(),
                            });
                            (families.len() - 1, true)
                        }
                    });
                }
                if let Some((at, true)) = current {
                    families[at].lines.push(line.to_owned());
                }
                continue;
            }
            let Some((at, _)) = current else {
                continue; // a sample outside any family: not what prometheus-client writes
            };
            families[at].lines.push(labelled(line, labels));
        }
    }
    let mut out = String::new();
    for family in families {
        for line in family.lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A sample line with `labels` added to its own.
fn labelled(sample: &str, labels: &str) -> String {
    let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
    let (name, rest) = sample.split_at(name_end);
    match rest.strip_prefix('{') {
        Some(rest) if rest.starts_with('}') => format!("{name}{{{labels}{rest}"),
        Some(rest) => format!("{name}{{{labels},{rest}"),
        None => format!("{name}{{{labels}}}{rest}"),
    }
}

/// A label value as the format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_is_written_once_with_every_members_samples_labelled() {
        let one = "# HELP hermes_ready Ready.\n# TYPE hermes_ready gauge\nhermes_ready 1\n\
                   # HELP hermes_requests Requests.\n# TYPE hermes_requests counter\n\
                   hermes_requests_total{outcome=\"ok\"} 5\n# EOF\n";
        let two = "# HELP hermes_ready Ready.\n# TYPE hermes_ready gauge\nhermes_ready 0\n\
                   # HELP hermes_requests Requests.\n# TYPE hermes_requests counter\n\
                   hermes_requests_total{} 2\n# EOF\n";
        let merged = merge(&[
            ("pod=\"a\"".to_owned(), one.to_owned()),
            ("pod=\"b\"".to_owned(), two.to_owned()),
        ]);
        assert_eq!(
            merged,
            "# HELP hermes_ready Ready.\n# TYPE hermes_ready gauge\n\
             hermes_ready{pod=\"a\"} 1\nhermes_ready{pod=\"b\"} 0\n\
             # HELP hermes_requests Requests.\n# TYPE hermes_requests counter\n\
             hermes_requests_total{pod=\"a\",outcome=\"ok\"} 5\n\
             hermes_requests_total{pod=\"b\"} 2\n# EOF\n"
        );
    }

    #[test]
    fn two_agents_real_expositions_merge_with_every_family_once() {
        let one = crate::telemetry::Telemetry::default();
        let two = crate::telemetry::Telemetry::default();
        one.request(crate::telemetry::Outcome::Answered, 201);
        one.exchanged(0.003);
        two.request(crate::telemetry::Outcome::Unavailable, 503);
        two.exchanged(0.001);
        let merged = merge(&[
            ("pod=\"a\"".to_owned(), one.encode()),
            ("pod=\"b\"".to_owned(), two.encode()),
        ]);
        let types: Vec<&str> = merged
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .collect();
        let unique: std::collections::BTreeSet<&&str> = types.iter().collect();
        assert_eq!(types.len(), unique.len(), "{merged}");
        assert!(types.len() > 10, "{merged}");
        assert!(merged.ends_with("# EOF\n"));
        assert_eq!(merged.matches("# EOF").count(), 1);
        for line in merged.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.contains("{pod=\"a\"") || line.contains("{pod=\"b\""),
                "{line}"
            );
        }
        // A histogram's samples stay together under its family, both pods' buckets included.
        let buckets = |pod: &str| {
            merged
                .lines()
                .filter(|l| l.starts_with(&format!("hermes_app_seconds_bucket{{pod=\"{pod}\"")))
                .count()
        };
        assert!(buckets("a") > 1 && buckets("a") == buckets("b"), "{merged}");
    }

    #[test]
    fn nothing_to_merge_is_an_empty_exposition() {
        assert_eq!(merge(&[]), "# EOF\n");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
