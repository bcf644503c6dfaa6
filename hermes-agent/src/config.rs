//! Command line and environment: every flag of the agent can also come from `HERMES_<FLAG>`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand};

/// Exit code for bad configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// Hermes agent: makes an unchanged TCP/HTTP service on this node fault tolerant by steering its
/// port to the agent (eBPF sk_lookup) and replicating its requests.
#[derive(Parser, Debug)]
#[command(
    name = "hermes-agent",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub agent: Option<Config>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Agent(Config),
    Detach(DetachArgs),
}

impl Cli {
    /// Parses `args` (program name first) into what to do.
    pub fn invocation<I, T>(args: I) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Self::try_parse_from(args)?;
        match (cli.command, cli.agent) {
            (Some(Command::Detach(args)), _) => Ok(Invocation::Detach(args)),
            (None, Some(config)) => Ok(Invocation::Agent(config)),
            (None, None) => Err(Self::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--port is required",
            )),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Remove the steering of a port for good (uninstall): afterwards clients reach the app
    /// directly. A running agent keeps serving the connections it already accepted.
    Detach(DetachArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DetachArgs {
    /// Network namespace whose steering to remove (default: this process's own).
    #[arg(long, env = "HERMES_NETNS")]
    pub netns: Option<PathBuf>,
    /// The protected port.
    #[arg(long, env = "HERMES_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Where bpffs is (or will be) mounted.
    #[arg(long, env = "HERMES_BPFFS", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

/// Configuration of a running agent.
#[derive(Args, Debug, Clone)]
pub struct Config {
    /// The protected TCP port. Inbound connections to it on any non-loopback address are steered
    /// to the agent.
    #[arg(long, env = "HERMES_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,

    /// Network namespace to protect, as a file (e.g. /var/run/netns/NAME or /proc/PID/ns/net).
    /// The agent does all its networking inside it. Default: the agent's own.
    #[arg(long, env = "HERMES_NETNS")]
    pub netns: Option<PathBuf>,

    /// Where the unchanged application listens. Default: 127.0.0.1:PORT. It must be a loopback
    /// address when it uses the protected port, or the agent would steer its own connections.
    #[arg(long, env = "HERMES_APP")]
    pub app: Option<SocketAddr>,

    /// When no agent is listening (crashed, stopped), let connections reach the app directly
    /// instead of dropping them. Trades replica equality for availability.
    #[arg(long, env = "HERMES_FAIL_OPEN")]
    pub fail_open: bool,

    /// Interception only: proxy each steered connection to the app as a byte stream, without
    /// ordering. For measuring the cost of interception, not for replication.
    #[arg(long, env = "HERMES_PASSTHROUGH")]
    pub passthrough: bool,

    /// On SIGTERM/SIGINT, how long to let in-flight requests finish before exiting.
    #[arg(long, env = "HERMES_GRACE_PERIOD", default_value = "20s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Where bpffs is (or will be) mounted; pins go under `<bpffs>/hermes/`.
    #[arg(long, env = "HERMES_BPFFS", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

/// A configuration that parses but cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--app {0} uses the protected port {1} on a non-loopback address: the agent's own \
         connections to the app would be steered back to it; run the app on 127.0.0.1:{1}"
    )]
    AppSteered(SocketAddr, u16),
    #[error("replicated mode is not available yet; run with --passthrough")]
    ReplicationUnavailable,
}

impl Config {
    /// Where the application listens.
    pub fn app_addr(&self) -> SocketAddr {
        self.app
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    /// Checks what clap cannot: combinations of flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let app = self.app_addr();
        if app.port() == self.port && !app.ip().is_loopback() {
            return Err(ConfigError::AppSteered(app, self.port));
        }
        if !self.passthrough {
            return Err(ConfigError::ReplicationUnavailable);
        }
        Ok(())
    }
}

/// Parses `250ms`, `20s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 500ms, 20s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, clap::Error> {
        Cli::invocation(std::iter::once("hermes-agent").chain(args.iter().copied()))
    }

    fn agent(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Invocation::Agent(config)) => config,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn app_defaults_to_loopback_on_the_port() {
        let config = agent(&["--port", "8080", "--passthrough"]);
        assert_eq!(config.app_addr(), "127.0.0.1:8080".parse().unwrap());
        config.validate().unwrap();
    }

    #[test]
    fn app_on_the_protected_port_must_be_loopback() {
        let config = agent(&["--port", "80", "--app", "10.0.0.1:80", "--passthrough"]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::AppSteered(..))
        ));
        agent(&["--port", "80", "--app", "10.0.0.1:81", "--passthrough"])
            .validate()
            .unwrap();
    }

    #[test]
    fn port_is_required_and_not_zero() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--port", "0"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
    }

    #[test]
    fn detach_needs_no_agent_flags() {
        assert!(matches!(
            parse(&["detach", "--port", "80"]),
            Ok(Invocation::Detach(DetachArgs { port: 80, .. }))
        ));
        assert!(parse(&["detach"]).is_err());
    }
}
