//! Snapshot hooks: the operator's commands that capture the app's state into a file and restore
//! it from one. They let Hermes compact its log: a snapshot holds the app's state as of a log
//! index, and a new or lagging replica starts from it instead of replaying the whole log.
//!
//! Each command runs with `sh -c`, with the file's path in `HERMES_SNAPSHOT`, while the agent
//! holds its turn on the app with its connection closed: a hook that talks to an app serving one
//! connection at a time gets through, and no request reaches the app meanwhile. A hook that
//! fails is retried, like a delivery to an app that is down: nothing is skipped, the replica
//! waits.
use std::{path::PathBuf, time::Duration};

use tokio::process::Command;

use super::App;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The commands, and where their file lives.
#[derive(Clone, Debug)]
pub struct Hooks {
    /// Writes the app's state to `$HERMES_SNAPSHOT`.
    pub snapshot: String,
    /// Replaces the app's state with `$HERMES_SNAPSHOT`.
    pub restore: String,
    pub file: PathBuf,
    pub timeout: Duration,
}

impl Hooks {
    /// The app's state, as the snapshot command captured it.
    pub async fn capture(&self, app: &App) -> Vec<u8> {
        let mut turn = app.turn().await;
        turn.close();
        let mut retry = Retry::default();
        loop {
            let attempt = async {
                match tokio::fs::remove_file(&self.file).await {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                self.run(&self.snapshot).await?;
                tokio::fs::read(&self.file).await
            };
            match attempt.await {
                Ok(state) => return retry.succeeded(app, "snapshot", state),
                Err(error) => retry.failed(app, "snapshot", &self.snapshot, error).await,
            }
        }
    }

    /// Makes `state` the app's state with the restore command.
    pub async fn restore(&self, state: &[u8], app: &App) {
        let mut turn = app.turn().await;
        turn.close();
        let mut retry = Retry::default();
        loop {
            let attempt = async {
                tokio::fs::write(&self.file, state).await?;
                self.run(&self.restore).await
            };
            match attempt.await {
                Ok(()) => return retry.succeeded(app, "restore", ()),
                Err(error) => retry.failed(app, "restore", &self.restore, error).await,
            }
        }
    }

    async fn run(&self, command: &str) -> std::io::Result<()> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("HERMES_SNAPSHOT", &self.file)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(self.timeout, child)
            .await
            .map_err(|_| std::io::Error::other(format!("no result within {:?}", self.timeout)))??;
        if output.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }
}

/// Retrying a hook: the app counts as unhealthy while its hooks fail.
struct Retry {
    delay: Duration,
    failures: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            delay: RETRY_MIN,
            failures: 0,
        }
    }
}

impl Retry {
    fn succeeded<T>(&self, app: &App, what: &str, value: T) -> T {
        if self.failures > 0 {
            tracing::info!(what, failures = self.failures, "snapshot hook succeeded");
            app.set_reachable(true);
        }
        value
    }

    async fn failed(&mut self, app: &App, what: &str, command: &str, error: std::io::Error) {
        self.failures += 1;
        app.set_reachable(false);
        tracing::warn!(what, command, %error, failures = self.failures, "snapshot hook failed; retrying");
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(dir: &std::path::Path, snapshot: &str, restore: &str) -> Hooks {
        Hooks {
            snapshot: snapshot.into(),
            restore: restore.into(),
            file: dir.join("app-state"),
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn commands_see_the_file_and_failures_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::write(&app, b"state v1").unwrap();
        let restore = format!("cp \"$HERMES_SNAPSHOT\" {}", app.display());
        let ok = hooks(
            dir.path(),
            &format!("cp {} \"$HERMES_SNAPSHOT\"", app.display()),
            &restore,
        );
        // No app listens: the hooks need none, and its connection is never opened.
        let nowhere = App::new(
            ([127, 0, 0, 1], 9).into(),
            std::net::Ipv4Addr::LOCALHOST,
            Duration::from_secs(1),
            crate::http::response::Limits::default(),
            64,
            std::sync::Arc::default(),
        );
        assert_eq!(ok.capture(&nowhere).await, b"state v1");
        ok.restore(b"state v2", &nowhere).await;
        assert_eq!(std::fs::read(&app).unwrap(), b"state v2");

        // Fails twice (the marker files count attempts), then succeeds.
        let flaky = format!(
            "if [ ! -e {0}/one ]; then touch {0}/one; exit 1; fi; if [ ! -e {0}/two ]; then touch {0}/two; exit 1; fi; echo ok > \"$HERMES_SNAPSHOT\"",
            dir.path().display()
        );
        let flaky = hooks(dir.path(), &flaky, "true");
        assert_eq!(flaky.capture(&nowhere).await, b"ok\n");
        assert!(nowhere.healthy());
    }
}
