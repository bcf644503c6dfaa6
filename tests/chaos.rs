//! The chaos test, short: mixed load on a log app that de-duplicates nothing, while faults come
//! in turn; the invariant checker must pass. `cargo xtask chaos` runs the long version.
use std::{collections::BTreeSet, time::Duration};

use hermes_lab::chaos::{self, Config, Fault, Length};
use hermes_tests::{App, cluster};

#[test]
fn chaos_passes_the_invariant_checker() {
    let mut cluster = cluster(3, App::Log, &[]);
    let config = Config {
        // Each kind of fault once (about 30 s).
        length: Length::Rounds(1),
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
    let happened: BTreeSet<Fault> = report.injected.iter().map(|i| i.fault).collect();
    assert_eq!(
        happened,
        Fault::ALL.into_iter().collect(),
        "every kind of fault came at least once"
    );
    report.verdict.unwrap();
    assert!(!report.sent.acked.is_empty());
}
