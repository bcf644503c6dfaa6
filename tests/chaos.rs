//! The chaos test (issue 5), short: mixed load while faults come in turn; the invariant checker
//! must pass. `cargo xtask chaos` runs the long version.
use std::time::Duration;

use hermes_lab::chaos::{self, Config};
use hermes_tests::{App, cluster};

#[test]
fn chaos_passes_the_invariant_checker() {
    let mut cluster = cluster(3, App::Log, &[]);
    let config = Config {
        duration: Duration::from_secs(24),
        every: Duration::from_secs(4),
        clients: 6,
    };
    let report = chaos::run(&mut cluster, &config, |injected| {
        eprintln!(
            "{:?} {} on node {}: {:?}",
            injected.at, injected.fault, injected.node, injected.unavailable
        );
    })
    .unwrap();
    eprintln!("{report}");
    assert!(
        report.injected.len() >= 5,
        "every kind of fault came at least once"
    );
    report.verdict.unwrap();
    assert!(!report.sent.acked.is_empty());
}
