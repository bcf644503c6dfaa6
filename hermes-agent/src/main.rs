//! `hermes-agent`: see `hermes-agent --help`.
use std::process::ExitCode;

use anyhow::Context as _;
use hermes_agent::{
    config::{Cli, EXIT_USAGE, Invocation, LogFormat},
    steer,
};
use tracing_subscriber::EnvFilter;

/// Log levels unless `RUST_LOG` says otherwise. openraft's responder warns whenever a proposer
/// stops waiting for the leader's apply, which Hermes does by design (it waits for the commit).
const DEFAULT_LOG: &str = "info,openraft=warn,openraft::raft::responder=error";

fn main() -> ExitCode {
    let invocation = match Cli::invocation(std::env::args_os()) {
        Ok(invocation) => invocation,
        Err(error) if error.use_stderr() => {
            let _ = error.print();
            std::process::exit(EXIT_USAGE);
        }
        Err(help) => {
            let _ = help.print();
            return ExitCode::SUCCESS;
        }
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr);
    match invocation.log_format() {
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => log.json().with_current_span(false).init(),
    }
    match invocation {
        Invocation::Detach(args) => exit(detach(&args)),
        Invocation::Ctl(args) => match hermes_agent::ctl::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(error.exit_code())
            }
        },
        Invocation::Recover(args) => {
            let voters = args.voters.iter().copied().collect();
            match hermes_agent::node::recover::run(&args.data_dir, &voters, args.dry_run) {
                Ok(plan) if args.dry_run => {
                    println!("{plan}\n(dry run: nothing was changed)");
                    ExitCode::SUCCESS
                }
                Ok(plan) => {
                    println!("{plan}");
                    tracing::warn!(
                        data = %args.data_dir.display(),
                        ?voters,
                        entry = plan.entry.log_id.index,
                        "recovered: the voters are now the nodes given; start the agent"
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Invocation::Restore(args) => {
            let restored = hermes_agent::node::backup::restore(
                &args.file,
                &args.data_dir,
                args.node_id,
                &args.addr,
                args.dry_run,
            );
            match restored {
                Ok(summary) if args.dry_run => {
                    println!("{summary}\n(dry run: nothing was written)");
                    ExitCode::SUCCESS
                }
                Ok(summary) => {
                    println!(
                        "restored into {}: {summary}. Node {} is the only voter; start its agent \
                         with the snapshot hooks and an empty app",
                        args.data_dir.display(),
                        args.node_id
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Invocation::Pods(args) => {
            if let Err(error) = hermes_agent::kube::check(&args) {
                eprintln!("error: {error}");
                std::process::exit(EXIT_USAGE);
            }
            exit(pods(args))
        }
        Invocation::Agent(config) => {
            if let Err(error) = config.validate() {
                eprintln!("error: {error}");
                std::process::exit(EXIT_USAGE);
            }
            exit(agent(*config))
        }
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn detach(args: &hermes_agent::config::DetachArgs) -> anyhow::Result<()> {
    let target = steer::Target {
        netns: args.netns.as_deref(),
        port: args.port,
        fail_open: false,
        bpffs: &args.bpffs,
        source: None,
        pod: args.pod.as_deref(),
    };
    if !steer::detach(&target)? {
        tracing::info!(
            port = args.port,
            "nothing to detach: the port was not steered"
        );
    }
    Ok(())
}

fn agent(config: hermes_agent::Config) -> anyhow::Result<()> {
    raise_open_files_limit();
    // Before the runtime starts, so that every thread it creates, and so every socket, lives in
    // the protected namespace. Only the network namespace changes: pins stay in our bpffs.
    if let Some(netns) = &config.netns {
        steer::netns::enter(netns)
            .with_context(|| format!("cannot enter network namespace {}", netns.display()))?;
    }
    let mut builder = match config.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.into());
            builder
        }
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(hermes_agent::run(config, shutdown_signal()))?;
    tracing::info!("stopped; steering stays pinned (fail closed) until an agent takes over");
    Ok(())
}

fn pods(args: hermes_agent::kube::PodsArgs) -> anyhow::Result<()> {
    raise_open_files_limit();
    // Pod mode stays in the agent's own namespaces: each member makes its sockets in its pod's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(hermes_agent::kube::run(args, shutdown_signal()))?;
    tracing::info!(
        "stopped; every pod's steering stays pinned (fail closed) until an agent takes over"
    );
    Ok(())
}

/// Every client connection and the app's take a file descriptor: the soft limit (often 1024 in
/// containers) goes up to the hard one.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(%error, soft, hard, "cannot raise the open files limit");
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one ends the process at once, with the
/// status of a process killed by it (128 + its number): the stop was not clean.
async fn shutdown_signal() {
    use nix::libc::{SIGINT, SIGTERM};
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received; draining (send another to stop at once)");
    tokio::spawn(async move {
        let (name, number) = tokio::select! {
            _ = term.recv() => ("SIGTERM", SIGTERM),
            _ = int.recv() => ("SIGINT", SIGINT),
        };
        tracing::warn!(
            signal = name,
            "second signal: stopping now, without draining"
        );
        std::process::exit(128 + number);
    });
}
