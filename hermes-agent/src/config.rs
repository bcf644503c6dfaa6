//! Command line and environment: every flag of the agent can also come from `HERMES_<FLAG>`.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, CommandFactory as _, Parser, Subcommand};

use crate::{deliver::divergence::OnDivergence, node::read::ReadMode, order::peer::wire::Digest};

/// What the protected port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1: requests are parsed, ordered, and answered with the local app's response.
    Http,
    /// Any protocol over TCP: connection events (open, the bytes as read, half-close, close)
    /// are ordered; each replica applies them to a connection of its own to its app.
    Tcp,
}

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
    pub tool: Option<Tool>,
    #[command(flatten)]
    pub agent: Option<Config>,
}

/// The subcommands alone (see [`Cli::invocation`]).
#[derive(Parser, Debug)]
#[command(name = "hermes-agent", version)]
struct Tools {
    #[command(subcommand)]
    tool: Tool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Agent(Box<Config>),
    Detach(DetachArgs),
    Ctl(CtlArgs),
    Recover(RecoverArgs),
    Restore(RestoreArgs),
    Pods(crate::kube::PodsArgs),
}

impl From<Tool> for Invocation {
    fn from(tool: Tool) -> Self {
        match tool {
            Tool::Detach(args) => Self::Detach(args),
            Tool::Ctl(args) => Self::Ctl(args),
            Tool::Recover(args) => Self::Recover(args),
            Tool::Restore(args) => Self::Restore(args),
            Tool::Pods(args) => Self::Pods(args),
        }
    }
}

impl Cli {
    /// Parses `args` (program name first) into what to do.
    pub fn invocation<I, T>(args: I) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        // A subcommand is parsed without the agent's flags: their `HERMES_*` variables (a
        // DaemonSet sets them for the agent) would otherwise count as agent flags given, and
        // make `ctl` or `pods` ask for --port.
        let tool = args.get(1).and_then(|a| a.to_str());
        if tool.is_some_and(<Tool as Subcommand>::has_subcommand) {
            return Ok(Tools::try_parse_from(args)?.tool.into());
        }
        let cli = Self::try_parse_from(args)?;
        match (cli.tool, cli.agent) {
            (Some(tool), _) => Ok(tool.into()),
            (None, Some(config)) => Ok(Invocation::Agent(Box::new(config))),
            (None, None) => Err(Self::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--port is required",
            )),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Tool {
    /// Remove the steering of a port for good (uninstall): afterwards clients reach the app
    /// directly. A running agent keeps serving the connections it already accepted.
    Detach(DetachArgs),
    /// Talk to a running agent's admin API: status, and cluster membership (add a node as a
    /// learner, promote it to voter, remove a node).
    #[command(
        after_help = "Exit status: 0 done; 69 the admin API cannot be reached or did not \
answer within --timeout; 75 it refused (e.g. no leader, not a member: the message says why); \
77 not authorized (no token, or the wrong one); 1 anything else."
    )]
    Ctl(CtlArgs),
    /// After the loss of a majority for good: make the nodes given the only voters, so that
    /// they form a cluster again. Offline: stop this node's agent first; start it again after.
    /// Prints what the node has and what may be lost. Never start the dropped nodes with their
    /// data again (wipe them, and add them back with --join).
    Recover(RecoverArgs),
    /// Start a new cluster from a backup (`ctl backup`): makes it the state of the new
    /// cluster's first node, in an empty data directory, the only voter. Start the agent with
    /// the snapshot hooks, its app empty: the restore hook gives the app the backup's state.
    /// Other nodes join it with --join (`ctl add-learner`, `ctl promote`).
    Restore(RestoreArgs),
    /// Pod mode (Kubernetes): protect every pod on this node that carries the group label, each
    /// in its own network namespace, with a Raft member per pod. The members' limits and peer
    /// security come from the same `HERMES_*` variables as the agent's flags.
    Pods(crate::kube::PodsArgs),
}

/// Parses `NAMESPACE/NAME`.
fn parse_pod(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty()
                && !name.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-./".contains(&b)) =>
        {
            Ok(text.to_owned())
        }
        _ => Err(format!("`{text}` is not NAMESPACE/NAME")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct CtlArgs {
    /// The agent's admin API.
    #[arg(long, env = "HERMES_ADMIN", default_value = "127.0.0.1:9180")]
    pub admin: SocketAddr,
    /// The file holding the admin API's bearer token (the agent's --admin-token-file).
    #[arg(long, env = "HERMES_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// In pod mode: the protected pod whose member to talk to, NAMESPACE/NAME (without it,
    /// `status` lists every pod the agent protects).
    #[arg(long, value_parser = parse_pod)]
    pub pod: Option<String>,
    /// How answers are printed: `table` for people, `json` for programs.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Longest each call to the admin API may take, connecting included.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub action: CtlAction,
}

/// How the agent writes its log.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Invocation {
    /// How this invocation writes its log: the agents as asked, the tools as text.
    pub fn log_format(&self) -> LogFormat {
        match self {
            Self::Agent(config) => config.log_format,
            Self::Pods(args) => args.log_format,
            Self::Detach(_) | Self::Ctl(_) | Self::Recover(_) | Self::Restore(_) => LogFormat::Text,
        }
    }
}

/// How `ctl` prints answers.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CtlAction {
    /// Print the node's status.
    Status,
    /// Add a node (started with --join) as a learner: it receives the log but does not vote
    /// yet. Shows its progress when asked of the leader.
    AddLearner {
        /// The new node's --node-id.
        id: u64,
        /// Where its peers reach it (its --raft-addr), HOST:PORT.
        addr: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node from the cluster (a voter or a learner): it receives no more entries.
    Remove { id: u64 },
    /// Make exactly these nodes the voters, e.g. `voters 1,2,4`.
    Voters {
        #[arg(value_delimiter = ',', required = true)]
        ids: Vec<u64>,
    },
    /// Let a replica fenced after a divergence (`--on-divergence fence`) apply again, once its
    /// app has been made to agree with the others.
    Resume,
    /// Take a backup: the node builds a snapshot through its snapshot hooks (the app's state at
    /// a log entry, between two deliveries, with the membership) and it is written to FILE,
    /// with a checksum. `hermes-agent restore` starts a new cluster from it.
    Backup { file: PathBuf },
}

#[derive(Args, Debug, Clone)]
pub struct RecoverArgs {
    /// The data directory of this node (its agent stopped).
    #[arg(long, env = "HERMES_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The voters from now on, e.g. `3` or `2,3`: this node, and each other survivor. Recover
    /// one survivor only, the most up-to-date (`--dry-run` on each: the highest last term, then
    /// the highest last entry); start the others unchanged: they follow it.
    #[arg(long, value_delimiter = ',', required = true)]
    pub voters: Vec<u64>,
    /// Print what would be done, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file (`hermes-agent ctl backup FILE`).
    pub file: PathBuf,
    /// The new node's data directory: it must not exist, or be empty.
    #[arg(long, env = "HERMES_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The new node's id (its --node-id).
    #[arg(long, env = "HERMES_NODE_ID")]
    pub node_id: u64,
    /// Where its peers will reach it, HOST:PORT (its --raft-addr).
    #[arg(long)]
    pub addr: String,
    /// Check the backup and print what it holds; write nothing.
    #[arg(long)]
    pub dry_run: bool,
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
    /// Pod mode: the uid of the pod (`kubectl get pod NAME -o jsonpath={.metadata.uid}`), whose
    /// namespace `--netns` is.
    #[arg(long, value_parser = pod_uid)]
    pub pod: Option<String>,
}

/// A pod's uid: it names a directory, so nothing but what Kubernetes puts in one.
fn pod_uid(uid: &str) -> Result<String, String> {
    if !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        Ok(uid.to_owned())
    } else {
        Err("a pod's uid is hexadecimal digits and dashes".into())
    }
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

    /// Where the unchanged application is reached. Default: the --app-source address, on the
    /// protected port (an app listening on 0.0.0.0 gets it). Not loopback: see --app-source.
    #[arg(long, env = "HERMES_APP")]
    pub app: Option<SocketAddr>,

    /// The IPv4 address the agent connects to the app from. Not loopback, so that the app never
    /// takes a remote client for a local one (it learns the client from X-Forwarded-For); the
    /// same on every replica. Added to `lo` (scope host) if missing; the steering lets
    /// connections from it through.
    #[arg(long, env = "HERMES_APP_SOURCE", default_value_t = crate::steer::source::DEFAULT)]
    pub app_source: std::net::Ipv4Addr,

    /// What the port speaks: `http` (requests are ordered) or `tcp` (connection events and
    /// the bytes of each read are ordered, for servers that do not speak HTTP: key-value
    /// stores, caches, RPC). docs/tcp.md says which servers TCP mode keeps identical.
    #[arg(long, env = "HERMES_PROTOCOL", value_enum, default_value_t = Protocol::Http)]
    pub protocol: Protocol,

    /// TCP mode: after a chunk is written to the app, the next event of another connection
    /// waits until the app's reply has begun, or this long without one.
    #[arg(long, env = "HERMES_TCP_QUIET", default_value = "10ms", value_parser = parse_duration)]
    pub tcp_quiet: Duration,

    /// When no agent is listening (crashed, stopped), let connections reach the app directly
    /// instead of dropping them. Trades replica equality for availability.
    #[arg(long, env = "HERMES_FAIL_OPEN")]
    pub fail_open: bool,

    /// Interception only: proxy each steered connection to the app as a byte stream, without
    /// ordering. For measuring the cost of interception, not for replication.
    #[arg(long, env = "HERMES_PASSTHROUGH")]
    pub passthrough: bool,

    /// On SIGTERM/SIGINT, how long to let in-flight requests finish before exiting. A second
    /// signal exits at once, with status 128 + its number (143, 130): the stop was not clean.
    #[arg(long, env = "HERMES_GRACE_PERIOD", default_value = "20s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Where bpffs is (or will be) mounted; pins go under `<bpffs>/hermes/`.
    #[arg(long, env = "HERMES_BPFFS", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,

    /// Threads serving connections and Raft (the log writer has its own). One avoids
    /// cross-thread wake-ups and is the fastest where the agent shares a few cores with the app
    /// (measured on 2 cores); more help an agent that is the bottleneck on a bigger machine.
    #[arg(long, env = "HERMES_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// This node's id in the cluster: one of the ids in --peers.
    #[arg(long, env = "HERMES_NODE_ID", help_heading = "Replication")]
    pub node_id: Option<u64>,

    /// The cluster's voters and where their peers listen: ID=HOST:PORT,... (this node included,
    /// same list on every node). The member with the lowest id forms the cluster once all answer.
    #[arg(long, env = "HERMES_PEERS", value_parser = parse_members, help_heading = "Replication")]
    pub peers: Option<Members>,

    /// This node joins a running cluster (`hermes-agent ctl add-learner` on a member adds it):
    /// it never forms a cluster of its own, whatever --peers says.
    #[arg(long, env = "HERMES_JOIN", help_heading = "Replication")]
    pub join: bool,

    /// Where to listen for peers. Default: this node's address in --peers.
    #[arg(long, env = "HERMES_RAFT_ADDR", help_heading = "Replication")]
    pub raft_addr: Option<SocketAddr>,

    /// This node's certificate (PEM), from the cluster's CA, naming it with the DNS name
    /// `hermes-node-<id>` (`cargo xtask certs` makes a lab set). Peers authenticate each other
    /// with mutual TLS; the files are read again when they change.
    #[arg(long, env = "HERMES_PEER_CERT", requires_all = ["peer_key", "peer_ca"], help_heading = "Peer security")]
    pub peer_cert: Option<PathBuf>,

    /// The private key of --peer-cert (PEM).
    #[arg(long, env = "HERMES_PEER_KEY", requires_all = ["peer_cert", "peer_ca"], help_heading = "Peer security")]
    pub peer_key: Option<PathBuf>,

    /// The CA certificates (PEM) peers' certificates must come from.
    #[arg(long, env = "HERMES_PEER_CA", requires_all = ["peer_cert", "peer_key"], help_heading = "Peer security")]
    pub peer_ca: Option<PathBuf>,

    /// Talk to peers in plain TCP, unauthenticated: whoever can reach the peer port can then
    /// order requests on every replica and read every request. For trusted networks and tests
    /// only; a warning is logged at start.
    #[arg(long, env = "HERMES_INSECURE_PEERS", conflicts_with_all = ["peer_cert", "peer_key", "peer_ca"], help_heading = "Peer security")]
    pub insecure_peers: bool,

    /// Where the Raft log, vote and delivery progress are kept. Keep it across restarts: a node
    /// restarted with it rejoins with its log and delivers nothing twice. Its files are never
    /// reached through a symbolic link: a node whose data directory holds one refuses to start.
    #[arg(long, env = "HERMES_DATA_DIR", help_heading = "Replication")]
    pub data_dir: Option<PathBuf>,

    /// Do not sync the delivery progress before requests go to the app (by default one
    /// fdatasync for the requests of the entries applied together). Then, after a machine
    /// crash (a power loss), requests delivered just before it may be delivered again without
    /// being counted in doubt: only for apps whose own state does not survive a machine crash
    /// either (kept in memory).
    #[arg(long, env = "HERMES_NO_PROGRESS_SYNC", help_heading = "Replication")]
    pub no_progress_sync: bool,

    /// Shell command that writes the app's state to the file named by `$HERMES_SNAPSHOT`.
    /// With --restore-cmd, lets Hermes take snapshots and compact its log; a new or lagging
    /// replica then starts from a snapshot. Without them the log is kept whole.
    #[arg(
        long,
        env = "HERMES_SNAPSHOT_CMD",
        requires = "restore_cmd",
        help_heading = "Snapshots"
    )]
    pub snapshot_cmd: Option<String>,

    /// Shell command that replaces the app's state with the file named by `$HERMES_SNAPSHOT`.
    #[arg(
        long,
        env = "HERMES_RESTORE_CMD",
        requires = "snapshot_cmd",
        help_heading = "Snapshots"
    )]
    pub restore_cmd: Option<String>,

    /// Log entries between snapshots (with the hooks).
    #[arg(long, env = "HERMES_SNAPSHOT_EVERY", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Snapshots")]
    pub snapshot_every: u64,

    /// Log entries kept behind a snapshot, so that a follower lagging a little needs no snapshot.
    #[arg(
        long,
        env = "HERMES_KEEP_LOG",
        default_value_t = 1000,
        help_heading = "Snapshots"
    )]
    pub keep_log: u64,

    /// Admin API (status, health, readiness, membership).
    #[arg(long, env = "HERMES_ADMIN", default_value = "127.0.0.1:9180")]
    pub admin: SocketAddr,

    /// Also serve `GET /metrics`, and nothing else, here, to anyone (no token): for a
    /// Prometheus that scrapes from off the node. Default: the metrics are on the admin API only.
    #[arg(long, env = "HERMES_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// How the log on standard error is written: `text` for people, `json` (one object per
    /// line) for a log collector.
    #[arg(long, env = "HERMES_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A file holding the admin API's bearer token (mode 0600; read again on every request
    /// that needs it). Changes to the cluster need it; reads need it unless they come from
    /// loopback. Without it, the cluster cannot be changed through the admin API.
    #[arg(long, env = "HERMES_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Largest request body accepted (larger: 413). Units: k, KiB, M, MiB, G, GiB.
    #[arg(long, env = "HERMES_MAX_BODY", default_value = "8MiB", value_parser = parse_size, help_heading = "Limits")]
    pub max_body: u64,

    /// A request, once begun, must arrive completely within this (or: 408).
    #[arg(long, env = "HERMES_CLIENT_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = "Limits")]
    pub client_timeout: Duration,

    /// Close client connections idle for this long: HTTP connections kept alive with no
    /// request (default 60s), TCP connections whose client sent nothing (default 1h).
    #[arg(long, env = "HERMES_IDLE_TIMEOUT", value_parser = parse_duration, help_heading = "Limits")]
    pub idle_timeout: Option<Duration>,

    /// Longest a client waits for its request to be ordered and answered (then: 504, outcome
    /// unknown; or 503 when no leader could take it).
    #[arg(long, env = "HERMES_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = "Limits")]
    pub request_timeout: Duration,

    /// App connections open at once at most (HTTP). Each client connection's requests reach the
    /// app over a connection of their own, opened at its first request and kept for its next
    /// ones; beyond this many, the one unused the longest is closed. An app that serves fewer
    /// connections at once (a single-threaded server that keeps reading an idle connection
    /// until it closes) is recognised by itself: when a request on a new connection gets no
    /// answer for 100 ms while other app connections are open, those are closed, and if the
    /// answer then comes at once (twice in a row), no more than the app took are kept open from
    /// then on. 1: one at a time, switched between clients.
    #[arg(long, env = "HERMES_APP_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=100_000), help_heading = "Limits")]
    pub app_connections: u64,

    /// An app answer taking longer than this makes the node report the app slow (not ready).
    /// The answer is still waited for: a request the app has is never sent twice.
    #[arg(long, env = "HERMES_APP_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = "Limits")]
    pub app_timeout: Duration,

    /// Largest body of an app's answer (larger: the client gets 502). In TCP mode: the most of
    /// the app's bytes held for one client that has not taken them yet (more: the client is
    /// given up).
    #[arg(long, env = "HERMES_MAX_RESPONSE", default_value = "64MiB", value_parser = parse_size, help_heading = "Limits")]
    pub max_response: u64,

    /// Request body bytes held at once over all client connections (more: 503 with
    /// Retry-After); in TCP mode, client bytes not yet ordered (more: the clients wait). And a
    /// second budget of the same size: the app's answers (in TCP mode, its bytes) held for slow
    /// clients that have not taken them yet (more: the client is reset, never sent part of an
    /// answer). Bounds the memory clients can make the node use.
    #[arg(long, env = "HERMES_BODY_BUDGET", default_value = "256MiB", value_parser = parse_size, help_heading = "Limits")]
    pub body_budget: u64,

    /// Client connections served at once (more: 503 and closed).
    #[arg(long, env = "HERMES_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000), help_heading = "Limits")]
    pub max_connections: u64,

    /// Bytes of recent log entries kept in memory (for replication and apply); older ones are
    /// read from disk.
    #[arg(long, env = "HERMES_LOG_CACHE", default_value = "64MiB", value_parser = parse_size, help_heading = "Limits")]
    pub log_cache: u64,

    /// Largest message between peers, and so the longest log entry (a log that holds a longer
    /// one, written before this was lowered, is refused at start). At least --max-body plus
    /// 1 MiB: one request must fit.
    #[arg(long, env = "HERMES_MAX_FRAME", default_value = "32MiB", value_parser = parse_size, help_heading = "Limits")]
    pub max_frame: u64,

    /// How requests with a --read-methods method are served: `ordered` (through the log, like
    /// every request), `linearizable` (off the log, once this replica has applied what the
    /// leader had committed when the read began), or `local` (off the log, at once; may miss the
    /// latest writes).
    #[arg(long, env = "HERMES_READS", value_enum, default_value_t = ReadMode::Ordered)]
    pub reads: ReadMode,

    /// What replicas compare to find divergence. HTTP: the status and the body of every answer
    /// (the default), or only the status (for apps whose bodies legitimately differ, such as
    /// those with a time in them), or nothing (`off`). Raw TCP: nothing (the default), or
    /// every byte the app sent on a connection (`bytes`), compared once it has closed it: only
    /// for servers whose every reply is the same on every replica (docs/tcp.md).
    #[arg(long, env = "HERMES_DIGEST", value_enum, help_heading = "Divergence")]
    pub digest: Option<Digest>,

    /// What a replica whose answers diverged from the majority's does: `warn` (report it in
    /// /status, /metrics and the log, carry on) or `fence` (also stop applying and report not
    /// ready, until `hermes-agent ctl resume`).
    #[arg(long, env = "HERMES_ON_DIVERGENCE", value_enum, default_value_t = OnDivergence::Warn, help_heading = "Divergence")]
    pub on_divergence: OnDivergence,

    /// Methods that do not change the app's state, for --reads.
    #[arg(
        long,
        env = "HERMES_READ_METHODS",
        value_delimiter = ',',
        default_value = "GET,HEAD,OPTIONS"
    )]
    pub read_methods: Vec<String>,

    /// Requests of this node's clients waiting for the log at most (more: 503 with Retry-After).
    #[arg(
        long,
        env = "HERMES_MAX_PENDING",
        default_value_t = 4096,
        help_heading = "Limits"
    )]
    pub max_pending: usize,
}

/// Cluster members: node id to peer address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members(pub BTreeMap<u64, String>);

/// Parses `1=host:port,2=host:port`.
fn parse_members(text: &str) -> Result<Members, String> {
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` is not a node id"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(format!("`{addr}` is not HOST:PORT"));
        }
        if members.insert(id, addr.to_owned()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("no members".into());
    }
    Ok(Members(members))
}

/// Parses `65536`, `64k`, `64KiB`, `8M`, `8MiB`, `1G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 8MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` in `{text}`")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A configuration that parses but cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--app {0} is a loopback address: the app would see every client as a local one. Let \
         the app listen on 0.0.0.0 (or on --app-source) and leave --app out"
    )]
    AppOnLoopback(SocketAddr),
    #[error(
        "--app-source {0} cannot be the agent's own address for the app: it must be a \
         non-loopback IPv4 address (the default is 169.254.72.1)"
    )]
    BadSource(std::net::Ipv4Addr),
    #[error("{0} is required (or --passthrough, for interception without replication)")]
    Missing(&'static str),
    #[error("--node-id {0} is not one of the --peers")]
    NotAMember(u64),
    #[error(
        "--peers gives node {0} the address `{1}`, which is not an IP:PORT to listen on; give --raft-addr"
    )]
    NoListenAddr(u64, String),
    #[error("{0}")]
    Limits(String),
    #[error(transparent)]
    Token(#[from] crate::admin::token::TokenError),
    #[error("{0} cannot be used with --protocol tcp: {1}")]
    NotForTcp(&'static str, &'static str),
    #[error("{0} is for --protocol tcp: {1}")]
    OnlyForTcp(&'static str, &'static str),
    #[error(
        "peers must authenticate each other: give --peer-cert, --peer-key and --peer-ca \
         (`cargo xtask certs` makes a lab set), or --insecure-peers on a trusted network"
    )]
    NoPeerSecurity,
}

impl Config {
    /// Where the application is reached.
    pub fn app_addr(&self) -> SocketAddr {
        self.app
            .unwrap_or_else(|| SocketAddr::from((self.app_source, self.port)))
    }

    /// What replicas compare (see --digest).
    pub fn digest(&self) -> Digest {
        self.digest.unwrap_or(match self.protocol {
            Protocol::Http => Digest::StatusAndBody,
            Protocol::Tcp => Digest::Off,
        })
    }

    /// How long a client connection may idle (see --idle-timeout).
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(match self.protocol {
            Protocol::Http => Duration::from_secs(60),
            Protocol::Tcp => Duration::from_secs(3600),
        })
    }

    /// Checks what clap cannot: combinations of flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.app_source.is_loopback() || self.app_source.is_unspecified() {
            return Err(ConfigError::BadSource(self.app_source));
        }
        let app = self.app_addr();
        if app.ip().to_canonical().is_loopback() {
            return Err(ConfigError::AppOnLoopback(app));
        }
        self.check_limits()?;
        if self.protocol == Protocol::Tcp {
            if self.snapshot_cmd.is_some() {
                return Err(ConfigError::NotForTcp(
                    "--snapshot-cmd",
                    "a snapshot of the app cannot hold its open connections, nor a command \
                     whose bytes are split over log entries",
                ));
            }
            if matches!(self.digest, Some(Digest::Status | Digest::StatusAndBody)) {
                return Err(ConfigError::NotForTcp(
                    "--digest status and status-and-body",
                    "a byte stream has no answers to tell apart; replicas compare nothing \
                     (the default), or every byte the app sends (--digest bytes)",
                ));
            }
            if self.reads != ReadMode::Ordered {
                return Err(ConfigError::NotForTcp(
                    "--reads",
                    "a byte stream has no reads to tell apart; everything is ordered",
                ));
            }
        }
        if self.protocol == Protocol::Http && self.digest == Some(Digest::Bytes) {
            return Err(ConfigError::OnlyForTcp(
                "--digest bytes",
                "HTTP answers are compared by status and body (the default), by status, or not \
                 at all (off)",
            ));
        }
        if let Some(path) = &self.admin_token_file {
            crate::admin::token::read(path)?;
        }
        self.settings().map(drop)
    }

    /// Limits that contradict one another.
    fn check_limits(&self) -> Result<(), ConfigError> {
        let bad = |text: String| Err(ConfigError::Limits(text));
        if self.max_body > u64::from(u32::MAX) {
            return bad(format!("--max-body {} is over 4 GiB", self.max_body));
        }
        if self.body_budget < self.max_response {
            return bad(format!(
                "--body-budget {} is less than --max-response {}: no answer that large could be \
                 held for its client",
                self.body_budget, self.max_response
            ));
        }
        if self.body_budget < self.max_body {
            return bad(format!(
                "--body-budget {} is less than --max-body {}: no request that large could be taken",
                self.body_budget, self.max_body
            ));
        }
        let chunk = crate::intercept::tcp::MAX_CHUNK as u64;
        if self.protocol == Protocol::Tcp && self.body_budget < chunk {
            return bad(format!(
                "--body-budget {} is less than a TCP chunk ({chunk} bytes)",
                self.body_budget
            ));
        }
        let min_frame = (self.max_body + (1 << 20)).max(crate::order::peer::wire::MIN_FRAME as u64);
        if self.max_frame < min_frame || self.max_frame > u64::from(u32::MAX) {
            return bad(format!(
                "--max-frame {} must be at least {min_frame} (--max-body plus 1 MiB) and under 4 GiB",
                self.max_frame
            ));
        }
        Ok(())
    }

    /// What the Raft node needs; `None` in passthrough mode.
    pub fn settings(&self) -> Result<Option<crate::node::Settings>, ConfigError> {
        if self.passthrough {
            return Ok(None);
        }
        let node_id = self.node_id.ok_or(ConfigError::Missing("--node-id"))?;
        let Members(members) = self.peers.clone().ok_or(ConfigError::Missing("--peers"))?;
        let data_dir = self
            .data_dir
            .clone()
            .ok_or(ConfigError::Missing("--data-dir"))?;
        let own = members
            .get(&node_id)
            .ok_or(ConfigError::NotAMember(node_id))?;
        let raft_addr = match self.raft_addr {
            Some(addr) => addr,
            None => own
                .parse()
                .map_err(|_| ConfigError::NoListenAddr(node_id, own.clone()))?,
        };
        Ok(Some(crate::node::Settings {
            node_id,
            join: self.join,
            raft_addr,
            members,
            data_dir,
            app: self.app_addr(),
            app_source: self.app_source,
            app_timeout: self.app_timeout,
            response_limits: crate::http::response::Limits {
                max_body: self.max_response,
                ..Default::default()
            },
            app_connections: usize::try_from(self.app_connections).unwrap_or(usize::MAX),
            sync_progress: !self.no_progress_sync,
            request_timeout: self.request_timeout,
            max_pending: self.max_pending,
            log_cache: usize::try_from(self.log_cache).unwrap_or(usize::MAX),
            max_frame: self.max_frame as usize,
            peer_tls: self.peer_tls()?,
            telemetry: std::sync::Arc::default(),
            digest: self.digest(),
            on_divergence: self.on_divergence,
            snapshots: self.snapshot_cmd.clone().zip(self.restore_cmd.clone()).map(
                |(snapshot_cmd, restore_cmd)| crate::node::Snapshots {
                    snapshot_cmd,
                    restore_cmd,
                    every: self.snapshot_every,
                    keep: self.keep_log,
                },
            ),
            placement: Default::default(),
            tcp: (self.protocol == Protocol::Tcp).then_some(crate::deliver::tcp::TcpMode {
                quiet: self.tcp_quiet,
                client_stall: self.client_timeout,
                held_for_clients: self.body_budget,
                held_per_client: self.max_response,
            }),
        }))
    }
}

impl Config {
    /// The TLS files for peers; `None` with --insecure-peers.
    fn peer_tls(&self) -> Result<Option<crate::order::peer::tls::Files>, ConfigError> {
        match (&self.peer_cert, &self.peer_key, &self.peer_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::order::peer::tls::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            _ if self.insecure_peers => Ok(None),
            _ => Err(ConfigError::NoPeerSecurity),
        }
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
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!("`{text}` is more than a year"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// The longest duration a flag takes: a year. Longer ones would overflow the clock.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, clap::Error> {
        Cli::invocation(std::iter::once("hermes-agent").chain(args.iter().copied()))
    }

    fn agent(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Invocation::Agent(config)) => *config,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn the_app_is_reached_from_the_delivery_address_never_on_loopback() {
        let config = agent(&["--port", "8080", "--passthrough"]);
        assert_eq!(config.app_addr(), "169.254.72.1:8080".parse().unwrap());
        config.validate().unwrap();
        let config = agent(&["--port", "80", "--app", "127.0.0.1:80", "--passthrough"]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::AppOnLoopback(..))
        ));
        let config = agent(&["--port", "80", "--app-source", "127.0.0.2", "--passthrough"]);
        assert!(matches!(config.validate(), Err(ConfigError::BadSource(..))));
        agent(&["--port", "80", "--app", "10.0.0.1:80", "--passthrough"])
            .validate()
            .unwrap();
    }

    #[tokio::test]
    async fn an_agent_started_with_an_invalid_config_does_not_start() {
        // Invalid (the delivery address is loopback), and harmless if it were not refused: its
        // admin address cannot be bound, so it would fail before steering anything.
        let config = agent(&[
            "--port",
            "80",
            "--passthrough",
            "--app-source",
            "127.0.0.2",
            "--admin",
            "192.0.2.1:9",
        ]);
        let stopped = crate::run(config, std::future::pending()).await;
        assert!(
            matches!(
                stopped,
                Err(crate::Error::Config(ConfigError::BadSource(_)))
            ),
            "{stopped:?}"
        );
    }

    #[test]
    fn replication_needs_its_flags() {
        let config = agent(&["--port", "80"]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Missing("--node-id"))
        ));
        let full = [
            "--insecure-peers",
            "--port",
            "80",
            "--node-id",
            "2",
            "--peers",
            "1=10.0.0.1:7000,2=10.0.0.2:7000",
            "--data-dir",
            "/d",
        ];
        let settings = agent(&full).settings().unwrap().unwrap();
        assert_eq!(settings.raft_addr, "10.0.0.2:7000".parse().unwrap());
        assert_eq!(settings.members.len(), 2);
        let stranger = agent(&[
            "--insecure-peers",
            "--port",
            "80",
            "--node-id",
            "3",
            "--peers",
            "1=10.0.0.1:7000",
            "--data-dir",
            "/d",
        ]);
        assert!(matches!(
            stranger.validate(),
            Err(ConfigError::NotAMember(3))
        ));
        assert!(parse(&["--port", "80", "--peers", "1=nowhere"]).is_err());
        assert!(parse(&["--port", "80", "--peers", "1=a:1,1=b:2"]).is_err());
    }

    #[test]
    fn tcp_mode_compares_bytes_or_nothing_and_http_mode_answers() {
        let tcp = ["--port", "6379", "--protocol", "tcp", "--passthrough"];
        for http_only in ["status", "status-and-body"] {
            let config = agent(&[&tcp[..], &["--digest", http_only]].concat());
            assert!(matches!(config.validate(), Err(ConfigError::NotForTcp(..))));
        }
        assert_eq!(agent(&tcp).digest(), Digest::Off);
        let bytes = agent(&[&tcp[..], &["--digest", "bytes"]].concat());
        bytes.validate().unwrap();
        assert_eq!(bytes.digest(), Digest::Bytes);
        let http = ["--port", "80", "--passthrough"];
        assert_eq!(agent(&http).digest(), Digest::StatusAndBody);
        let config = agent(&[&http[..], &["--digest", "bytes"]].concat());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::OnlyForTcp(..))
        ));
    }

    #[test]
    fn port_is_required_and_not_zero() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--port", "0"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
    }

    #[test]
    fn subcommands_are_parsed_without_the_agents_flags() {
        assert!(matches!(parse(&["ctl", "status"]), Ok(Invocation::Ctl(_))));
        assert!(matches!(
            parse(&["ctl", "--pod", "shop/app-0", "status"]),
            Ok(Invocation::Ctl(CtlArgs { pod: Some(_), .. }))
        ));
        assert!(parse(&["ctl", "--pod", "app-0", "status"]).is_err());
        assert!(matches!(
            parse(&["pods", "--node-name", "worker-1"]),
            Ok(Invocation::Pods(_))
        ));
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
