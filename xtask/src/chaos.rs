//! `cargo xtask chaos`: a three-node log-app cluster under mixed load while faults come in turn,
//! then the invariant checker's verdict (see `hermes_lab::chaos`).
use std::{path::Path, time::Duration};

use hermes_lab::{
    Lab,
    chaos::{self, Config, Length},
    cluster::{App, Cluster},
};

pub fn run(bin: &Path, length: Length, every: u64, clients: usize) -> anyhow::Result<()> {
    let mut cluster = Cluster::new(Lab::up(3)?, bin, App::Log, &[])?;
    cluster.start()?;
    let how_long = match length {
        Length::Time(time) => format!("{} s", time.as_secs()),
        Length::Rounds(rounds) => format!("{rounds} faults of each kind"),
    };
    println!(
        "chaos: {how_long}, mixed load from {clients} clients on 3 nodes, a fault every {every} s"
    );
    let config = Config {
        length,
        every: Duration::from_secs(every),
        clients,
    };
    let report = chaos::run(&mut cluster, &config, |injected| println!("  {injected}"))?;
    println!("{report}");
    anyhow::ensure!(report.verdict.is_ok(), "the invariant checker failed");
    Ok(())
}
