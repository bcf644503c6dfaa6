//! `hermes-agent ctl`: the command-line front of the admin API (status and membership).
//!
//! Answers are printed as a table for people or as JSON for programs (`-o json`), and the exit
//! status tells a script what went wrong: the API unreachable, the caller unauthorized, or the
//! request refused.
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::{
    admin::token,
    config::{CtlAction, CtlArgs, Output},
    http::response,
    node::backup::Backup,
};

/// Exit status when the admin API cannot be reached, or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 69;
/// Exit status when the admin API refused the request (it says why).
pub const EXIT_REFUSED: u8 = 75;
/// Exit status when the admin API wants a token, or another one.
pub const EXIT_UNAUTHORIZED: u8 = 77;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "cannot reach the admin API at {0}: {1} (is the agent running? ctl talks to --admin, loopback by default)"
    )]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error("the admin API at {0} did not answer within {1:?} (--timeout)")]
    Timeout(std::net::SocketAddr, Duration),
    #[error("the admin API at {0} closed the connection without answering")]
    Lost(std::net::SocketAddr),
    #[error(
        "the admin API at {0} closed the connection in the middle of its answer: a change may \
         have been made (see `ctl status`)"
    )]
    Cut(std::net::SocketAddr),
    #[error(
        "the admin API answered {0}: {1} (give the agent's token with --admin-token-file or HERMES_ADMIN_TOKEN_FILE)"
    )]
    Unauthorized(u16, String),
    #[error("the admin API answered {0}: {1}")]
    Refused(u16, String),
    #[error("the admin API failed ({0}): {1}; see the agent's log")]
    Failed(u16, String),
    #[error("unexpected answer from the admin API: {0}")]
    Garbled(String),
    #[error("node {0} is not a member")]
    NotAMember(u64),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("cannot write {0}: {1}")]
    Write(std::path::PathBuf, std::io::Error),
    #[error("cannot start: {0}")]
    Runtime(std::io::Error),
}

impl CtlError {
    /// The process's exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Connect(..) | Self::Timeout(..) | Self::Lost(_) => EXIT_UNREACHABLE,
            Self::Unauthorized(..) => EXIT_UNAUTHORIZED,
            Self::Refused(..) | Self::NotAMember(_) => EXIT_REFUSED,
            Self::Failed(..)
            | Self::Cut(_)
            | Self::Garbled(_)
            | Self::Token(_)
            | Self::Write(..)
            | Self::Runtime(_) => 1,
        }
    }
}

/// How long `backup` waits for its file at least: longer than the admin API gives a request
/// (the agent builds a snapshot for it).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(70);

/// How long `add-learner` follows the new node's catching up.
const FOLLOW: Duration = Duration::from_secs(600);

pub fn run(args: &CtlArgs) -> Result<(), CtlError> {
    let api = Api::new(args)?;
    match &args.action {
        CtlAction::Status => {
            let status = api.call("GET", "/status", None)?;
            match args.output {
                Output::Json => print_json(&status),
                Output::Table => print!("{}", table(&status)),
            }
        }
        CtlAction::AddLearner { id, addr } => {
            let status = api.call(
                "POST",
                "/cluster/learners",
                Some(json!({ "id": id, "addr": addr })),
            )?;
            match args.output {
                Output::Json => print_json(&status),
                Output::Table => {
                    println!("node {id} ({addr}) added as a learner");
                    follow(&api, *id)?;
                }
            }
        }
        CtlAction::Promote { id } => {
            let mut voters = voters(&api)?;
            voters.push(*id);
            set_voters(&api, &voters)?;
        }
        CtlAction::Remove { id } => {
            let mut voters = voters(&api)?;
            if !voters.contains(id) {
                let status = api.call("GET", "/status", None)?;
                let learner = status["members"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|m| m["id"].as_u64() == Some(*id)));
                if !learner {
                    return Err(CtlError::NotAMember(*id));
                }
                // A learner (e.g. a pod deleted while it joined) is forgotten at once.
                let body = json!({ "id": id });
                let status = api.call("POST", "/cluster/learners/remove", Some(body))?;
                api.done(&format!("learner {id} removed"), &status);
                return Ok(());
            }
            voters.retain(|v| v != id);
            set_voters(&api, &voters)?;
        }
        CtlAction::Voters { ids } => set_voters(&api, ids)?,
        CtlAction::Backup { file } => backup(&api, file)?,
        CtlAction::Resume => {
            let status = api.call("POST", "/divergence/resume", Some(json!({})))?;
            api.done("resumed: the replica applies again", &status);
        }
    }
    Ok(())
}

/// Has the node take a backup, checks it, and keeps it in `file` (whole, or not at all).
fn backup(api: &Api, file: &std::path::Path) -> Result<(), CtlError> {
    let limits = response::Limits {
        max_body: u64::MAX,
        ..response::Limits::default()
    };
    // The snapshot hook may take a while: as long as the agent lets it.
    let timeout = api.args.timeout.max(BACKUP_TIMEOUT);
    let answer = api.exchange("POST", "/backup", Some(json!({})), &limits, timeout)?;
    let summary = Backup::from_file(&answer.body)
        .and_then(|backup| backup.summary())
        .map_err(|e| CtlError::Garbled(format!("the backup it sent: {e}")))?;
    keep(file, &answer.body).map_err(|e| CtlError::Write(file.to_owned(), e))?;
    match api.args.output {
        Output::Json => print_json(&json!({
            "file": file,
            "bytes": answer.body.len(),
            "entry": summary.entry.map_or(0, |id| id.index),
            "requests": summary.contents.requests,
            "deliveries": summary.contents.deliveries,
            "voters": summary.voters,
        })),
        Output::Table => println!(
            "backup written to {} ({} bytes): {summary}",
            file.display(),
            answer.body.len()
        ),
    }
    Ok(())
}

/// Writes `bytes` to `file` whole or not at all: to `FILE.partial` first (made anew, readable
/// by its owner only: it holds the app's state), synced, then renamed over `file`.
pub(crate) fn keep(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    // One left by a run that died: removed, never written through (it may be a link).
    let _ = std::fs::remove_file(&partial);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut out| {
            let done = out.write_all(bytes).and_then(|()| out.sync_all());
            if done.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            done
        });
    written?;
    if let Err(error) = std::fs::rename(&partial, file) {
        let _ = std::fs::remove_file(&partial);
        return Err(error);
    }
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::File::open(parent)?.sync_all()
}

fn voters(api: &Api) -> Result<Vec<u64>, CtlError> {
    let status = api.call("GET", "/status", None)?;
    let members = status["members"]
        .as_array()
        .ok_or_else(|| CtlError::Garbled(status.to_string()))?;
    Ok(members
        .iter()
        .filter(|m| m["voter"].as_bool() == Some(true))
        .filter_map(|m| m["id"].as_u64())
        .collect())
}

fn set_voters(api: &Api, voters: &[u64]) -> Result<(), CtlError> {
    let body = json!({ "voters": voters });
    let status = api.call("POST", "/cluster/membership", Some(body))?;
    api.done(&format!("voters are now {voters:?}"), &status);
    Ok(())
}

/// Shows how far the learner has caught up, when `api` is the leader's (it alone knows).
fn follow(api: &Api, id: u64) -> Result<(), CtlError> {
    let started = Instant::now();
    loop {
        let status = api.call("GET", "/status", None)?;
        let Some(matched) = status["replication"][id.to_string()].as_u64() else {
            println!("follow its progress in the leader's /status (\"replication\")");
            return Ok(());
        };
        let last = status["last_log_index"].as_u64().unwrap_or(0);
        print!("\r  node {id} has {matched} of {last} log entries");
        let _ = std::io::stdout().flush();
        if matched >= last {
            println!("\n  caught up; `ctl promote {id}` makes it a voter");
            return Ok(());
        }
        if started.elapsed() > FOLLOW {
            println!("\n  still catching up; check /status later");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// The admin API, as `ctl` calls it.
struct Api<'a> {
    args: &'a CtlArgs,
    authorization: String,
    runtime: tokio::runtime::Runtime,
}

impl<'a> Api<'a> {
    fn new(args: &'a CtlArgs) -> Result<Self, CtlError> {
        let authorization = match &args.admin_token_file {
            Some(path) => format!("Authorization: Bearer {}\r\n", token::read(path)?),
            None => String::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CtlError::Runtime)?;
        Ok(Self {
            args,
            authorization,
            runtime,
        })
    }

    /// What a change did: a line for people, or the status the API answered with.
    fn done(&self, message: &str, status: &Value) {
        match self.args.output {
            Output::Json => print_json(status),
            Output::Table => println!("{message}; members: {}", members(status)),
        }
    }

    /// One request; its JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        let limits = response::Limits::default();
        let response = self.exchange(method, path, body, &limits, self.args.timeout)?;
        let body = String::from_utf8_lossy(&response.body);
        serde_json::from_str(&body).map_err(|_| CtlError::Garbled(body.into_owned()))
    }

    /// One request, its answer read within `limits` and `timeout`; an error unless it is 200.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        limits: &response::Limits,
        timeout: Duration,
    ) -> Result<response::Response, CtlError> {
        let admin = self.args.admin;
        // In pod mode, one agent serves a member per pod: `--pod` picks one.
        let path = &match &self.args.pod {
            Some(pod) => format!("/pods/{pod}{path}"),
            None => path.to_owned(),
        };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: hermes\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.authorization,
            body.len()
        );
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(admin)
                .await
                .map_err(|e| CtlError::Connect(admin, e))?;
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| CtlError::Connect(admin, e))?;
            let mut buf = bytes::BytesMut::new();
            response::read(&mut stream, &mut buf, method, limits)
                .await
                .map_err(|e| match e {
                    response::ReadError::Closed => CtlError::Lost(admin),
                    response::ReadError::Cut => CtlError::Cut(admin),
                    response::ReadError::Invalid(why) => CtlError::Garbled(why.into()),
                })
        };
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, exchange).await })
            .map_err(|_| CtlError::Timeout(admin, timeout))??;
        if response.status == 200 {
            return Ok(response);
        }
        let why = String::from_utf8_lossy(&response.body).trim().to_owned();
        match response.status {
            status @ (401 | 403) => Err(CtlError::Unauthorized(status, why)),
            // 503: not now (no leader, the token unreadable); 4xx: not this.
            status @ (400..=499 | 503) => Err(CtlError::Refused(status, why)),
            status => Err(CtlError::Failed(status, why)),
        }
    }
}

/// The members a status lists, on one line: `1 (voter) 2 (voter) 4 (learner)`.
fn members(status: &Value) -> String {
    let Some(members) = status["members"].as_array() else {
        return "?".into();
    };
    let each = members.iter().map(|m| {
        let role = if m["voter"].as_bool() == Some(true) {
            "voter"
        } else {
            "learner"
        };
        format!("{} ({role})", m["id"])
    });
    each.collect::<Vec<_>>().join(" ")
}

/// A JSON answer as people read it: one `key  value` line per field, nested objects by their
/// dotted keys, and lists of objects as tables with a header.
fn table(value: &Value) -> String {
    let mut lines = Vec::new();
    let mut tables = String::new();
    flatten("", value, &mut lines, &mut tables);
    let width = lines.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in lines {
        out.push_str(&format!("{key:width$}  {value}\n"));
    }
    out + &tables
}

fn flatten(prefix: &str, value: &Value, lines: &mut Vec<(String, String)>, tables: &mut String) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, lines, tables);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let nested = |item: &Value| {
                let fields = item.as_object().into_iter().flat_map(|o| o.values());
                fields.clone().any(|v| v.is_object() || v.is_array())
            };
            if items.iter().any(nested) {
                // Too deep for a row each (pod mode's members): a block each.
                for (i, item) in items.iter().enumerate() {
                    tables.push_str(&format!("\n{prefix}[{i}]:\n"));
                    for line in table(item).lines() {
                        let indent = if line.is_empty() { "" } else { "  " };
                        tables.push_str(&format!("{indent}{line}\n"));
                    }
                }
            } else {
                tables.push_str(&format!("\n{prefix}:\n{}", rows(items)));
            }
        }
        value => lines.push((prefix.to_owned(), cell(value))),
    }
}

/// Objects as the rows of a table, one column per key any of them has.
fn rows(items: &[Value]) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for item in items.iter().filter_map(Value::as_object) {
        for key in item.keys() {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    let cells: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].len())
                .fold(c.len(), usize::max)
        })
        .collect();
    let line = |row: Vec<String>| {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let header = line(columns.iter().map(|c| c.to_uppercase()).collect());
    cells
        .into_iter()
        .map(line)
        .fold(header, |out, row| out + &row)
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        value => value.to_string(),
    }
}

#[cfg(test)]
mod tests;
