//! Publishes a full run: `docs/benchmarks.md` (the method, then the run's summary) and the plots
//! in `docs/bench/`.
use std::path::Path;

use anyhow::Context as _;

use super::{results::Results, summary, workload::Workload};

/// How the benchmark works; the part of `docs/benchmarks.md` that does not change between runs.
const METHOD: &str = include_str!("method.md");

pub fn publish(run_dir: &Path, results: &Results) -> anyhow::Result<()> {
    let docs = crate::workspace_root().join("docs");
    let plots = docs.join("bench");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    for workload in Workload::ALL {
        for extension in ["svg", "png"] {
            let name = format!("{}.{extension}", workload.name());
            std::fs::copy(run_dir.join(&name), plots.join(&name))
                .with_context(|| format!("copying {name} to {}", plots.display()))?;
        }
    }
    let page = format!(
        "<!-- Written by `cargo xtask bench` from xtask/src/bench/method.md and the run's \
         summary: edit those, not this file. -->\n{METHOD}\n## Latest results\n\n{}",
        summary::render(results, "###", "bench/")
    );
    let path = docs.join("benchmarks.md");
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
