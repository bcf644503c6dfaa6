//! `ctl` against small fake admin APIs: what each failure exits with, and how answers print.
use std::{io::Read as _, io::Write as _, net::TcpListener};

use serde_json::json;

use super::*;
use crate::config::{Cli, Invocation};

fn args(admin: std::net::SocketAddr, extra: &[&str]) -> CtlArgs {
    let admin = admin.to_string();
    let mut argv = vec![
        "hermes-agent",
        "ctl",
        "--admin",
        &admin,
        "--timeout",
        "300ms",
    ];
    argv.extend_from_slice(extra);
    match Cli::invocation(argv) {
        Ok(Invocation::Ctl(args)) => args,
        other => panic!("not a ctl invocation: {other:?}"),
    }
}

/// An admin API that answers every request with `answer`, or with nothing at all.
fn fake(answer: Option<&'static str>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = [0; 4096];
            let _ = stream.read(&mut head);
            match answer {
                Some(answer) => {
                    let _ = stream.write_all(answer.as_bytes());
                }
                // Held open, unanswered, until the test process ends.
                None => std::mem::forget(stream),
            }
        }
    });
    addr
}

fn answer(status: &str, body: &str) -> &'static str {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(text.into_boxed_str())
}

#[test]
fn each_failure_has_its_own_exit_status() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = run(&args(closed, &["status"])).unwrap_err();
    assert_eq!(unreachable.exit_code(), EXIT_UNREACHABLE, "{unreachable}");

    let silent = run(&args(fake(None), &["status"])).unwrap_err();
    assert!(matches!(silent, CtlError::Timeout(..)), "{silent}");
    assert_eq!(silent.exit_code(), EXIT_UNREACHABLE);

    let unauthorized = fake(Some(answer("401 Unauthorized", "a token is needed")));
    let error = run(&args(unauthorized, &["voters", "1,2"])).unwrap_err();
    assert_eq!(error.exit_code(), EXIT_UNAUTHORIZED, "{error}");
    assert!(error.to_string().contains("--admin-token-file"), "{error}");

    let refused = fake(Some(answer("409 Conflict", "no leader")));
    let error = run(&args(refused, &["resume"])).unwrap_err();
    assert_eq!(error.exit_code(), EXIT_REFUSED, "{error}");
    assert!(error.to_string().contains("no leader"), "{error}");

    let garbled = fake(Some(answer("200 OK", "not json")));
    assert_eq!(run(&args(garbled, &["status"])).unwrap_err().exit_code(), 1);
    let failed = fake(Some(answer("500 Internal Server Error", "oops")));
    assert_eq!(run(&args(failed, &["status"])).unwrap_err().exit_code(), 1);

    // An agent that closes the connection without answering is not reached.
    let closed = fake(Some(""));
    let error = run(&args(closed, &["status"])).unwrap_err();
    assert_eq!(error.exit_code(), EXIT_UNREACHABLE, "{error}");
}

#[test]
fn a_status_prints_as_a_table_of_fields_with_the_members_beneath() {
    let status = json!({
        "node_id": 2,
        "leader_id": null,
        "peer_tls": { "generation": 1, "handshake_failures": 0 },
        "members": [
            { "id": 1, "addr": "10.0.0.1:7000", "voter": true },
            { "id": 12, "addr": "10.0.0.12:7000", "voter": false },
        ],
    });
    let text = table(&status);
    let expected = "\
node_id                      2
leader_id                    -
peer_tls.generation          1
peer_tls.handshake_failures  0

members:
  ID  ADDR            VOTER
  1   10.0.0.1:7000   true
  12  10.0.0.12:7000  false
";
    assert_eq!(text, expected, "\n{text}");
    assert_eq!(members(&status), "1 (voter) 12 (learner)");
}

#[test]
fn json_output_is_the_answer_itself() {
    let body = r#"{"node_id":3,"members":[]}"#;
    let addr = fake(Some(answer("200 OK", body)));
    let api_args = args(addr, &["-o", "json", "status"]);
    assert_eq!(api_args.output, Output::Json);
    let api = Api::new(&api_args).unwrap();
    assert_eq!(
        api.call("GET", "/status", None).unwrap(),
        json!({"node_id": 3, "members": []})
    );
}

#[test]
fn a_list_of_nested_objects_prints_as_blocks() {
    let status = json!({
        "mode": "pods",
        "pods": [{ "pod": "shop/app-0", "member": { "node_id": 7, "members": [{ "id": 7 }] } }],
    });
    let text = table(&status);
    let expected = "\
mode  pods

pods[0]:
  pod             shop/app-0
  member.node_id  7

  member.members:
    ID
    7
";
    assert_eq!(text, expected, "\n{text}");
}

#[test]
fn a_backup_is_kept_whole_for_its_owner_only_and_never_through_a_link() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.backup");
    // A link where the partial file goes (left behind, or planted): not written through.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"untouched").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("state.backup.partial")).unwrap();
    keep(&file, b"the backup").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"the backup");
    assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!dir.path().join("state.backup.partial").exists());
    // Kept over an older one.
    keep(&file, b"newer").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"newer");
}
