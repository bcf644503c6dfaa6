//! `hermes-agent ctl`: the command-line front of the admin API (status and membership).
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::{
    admin::token,
    config::{CtlAction, CtlArgs},
    http::response,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "cannot reach the admin API at {0}: {1} (is the agent running? ctl talks to --admin, loopback by default)"
    )]
    Connect(std::net::SocketAddr, std::io::Error),
    #[error("the admin API answered {0}: {1}")]
    Refused(u16, String),
    #[error("unexpected answer from the admin API: {0}")]
    Garbled(String),
    #[error("node {0} is not a member")]
    NotAMember(u64),
    #[error(transparent)]
    Token(#[from] token::TokenError),
}

/// How long `add-learner` follows the new node's catching up.
const FOLLOW: Duration = Duration::from_secs(600);

pub fn run(args: &CtlArgs) -> Result<(), CtlError> {
    match &args.action {
        CtlAction::Status => {
            let status = request(args, "GET", "/status", None)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&status).unwrap_or_default()
            );
        }
        CtlAction::AddLearner { id, addr } => {
            request(
                args,
                "POST",
                "/cluster/learners",
                Some(json!({ "id": id, "addr": addr })),
            )?;
            println!("node {id} ({addr}) added as a learner");
            follow(args, *id)?;
        }
        CtlAction::Promote { id } => {
            let mut voters = voters(args)?;
            voters.push(*id);
            set_voters(args, &voters)?;
        }
        CtlAction::Remove { id } => {
            let mut voters = voters(args)?;
            if !voters.contains(id) {
                let status = request(args, "GET", "/status", None)?;
                let learner = status["members"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|m| m["id"].as_u64() == Some(*id)));
                if !learner {
                    return Err(CtlError::NotAMember(*id));
                }
                // A learner (e.g. a pod deleted while it joined) is forgotten at once.
                let body = json!({ "id": id });
                let status = request(args, "POST", "/cluster/learners/remove", Some(body))?;
                println!("learner {id} removed; members: {}", status["members"]);
                return Ok(());
            }
            voters.retain(|v| v != id);
            set_voters(args, &voters)?;
        }
        CtlAction::Voters { ids } => set_voters(args, ids)?,
        CtlAction::Resume => {
            request(args, "POST", "/divergence/resume", Some(json!({})))?;
            println!("resumed: the replica applies again");
        }
    }
    Ok(())
}

fn voters(args: &CtlArgs) -> Result<Vec<u64>, CtlError> {
    let status = request(args, "GET", "/status", None)?;
    let members = status["members"]
        .as_array()
        .ok_or_else(|| CtlError::Garbled(status.to_string()))?;
    Ok(members
        .iter()
        .filter(|m| m["voter"].as_bool() == Some(true))
        .filter_map(|m| m["id"].as_u64())
        .collect())
}

fn set_voters(args: &CtlArgs, voters: &[u64]) -> Result<(), CtlError> {
    let status = request(
        args,
        "POST",
        "/cluster/membership",
        Some(json!({ "voters": voters })),
    )?;
    println!("voters are now {voters:?}; members: {}", status["members"]);
    Ok(())
}

/// Shows how far the learner has caught up, when `admin` is the leader's (it alone knows).
fn follow(args: &CtlArgs, id: u64) -> Result<(), CtlError> {
    let started = Instant::now();
    loop {
        let status = request(args, "GET", "/status", None)?;
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

/// One request to the admin API; its JSON answer.
fn request(
    args: &CtlArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CtlError> {
    let admin = args.admin;
    // In pod mode, one agent serves a member per pod: `--pod` picks one.
    let path = &match &args.pod {
        Some(pod) => format!("/pods/{pod}{path}"),
        None => path.to_owned(),
    };
    let authorization = match &args.admin_token_file {
        Some(path) => format!("Authorization: Bearer {}\r\n", token::read(path)?),
        None => String::new(),
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: hermes\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Connect(admin, e))?;
    let response = runtime.block_on(async {
        let mut stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(admin))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                .map_err(|e| CtlError::Connect(admin, e))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| CtlError::Connect(admin, e))?;
        let mut buf = bytes::BytesMut::new();
        response::read(&mut stream, &mut buf, method, &response::Limits::default())
            .await
            .map_err(|e| CtlError::Garbled(e.to_string()))
    })?;
    let body = String::from_utf8_lossy(&response.body);
    if response.status != 200 {
        return Err(CtlError::Refused(response.status, body.trim().to_owned()));
    }
    serde_json::from_str(&body).map_err(|_| CtlError::Garbled(body.into_owned()))
}
