//! Snapshot hooks: the operator's commands that capture the app's state into a file and restore
//! it from one. They let Hermes compact its log: a snapshot holds the app's state as of a log
//! index, and a new or lagging replica starts from it instead of replaying the whole log.
//!
//! Each command runs with `sh -c`, with the file's path in `HERMES_SNAPSHOT`. A hook that fails
//! is retried, like a delivery to an app that is down: nothing is skipped, the replica waits.
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::process::Command;

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
    pub async fn capture(&self, healthy: &Arc<AtomicBool>) -> Vec<u8> {
        self.until_done(
            "snapshot",
            &self.snapshot,
            healthy,
            || {
                let _ = std::fs::remove_file(&self.file);
                Ok(())
            },
            || std::fs::read(&self.file),
        )
        .await
    }

    /// Makes `state` the app's state with the restore command.
    pub async fn restore(&self, state: &[u8], healthy: &Arc<AtomicBool>) {
        self.until_done(
            "restore",
            &self.restore,
            healthy,
            || std::fs::write(&self.file, state),
            || Ok(()),
        )
        .await;
    }

    /// Runs `command` between `before` and `after` until all three succeed.
    async fn until_done<T>(
        &self,
        what: &str,
        command: &str,
        healthy: &Arc<AtomicBool>,
        before: impl Fn() -> std::io::Result<()>,
        after: impl Fn() -> std::io::Result<T>,
    ) -> T {
        let mut delay = RETRY_MIN;
        let mut failures = 0u64;
        loop {
            let attempt = async {
                before()?;
                self.run(command).await?;
                after()
            };
            match attempt.await {
                Ok(value) => {
                    if failures > 0 {
                        tracing::info!(what, failures, "snapshot hook succeeded");
                        healthy.store(true, Ordering::Relaxed);
                    }
                    return value;
                }
                Err(error) => {
                    failures += 1;
                    healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(what, command, %error, failures, "snapshot hook failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
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
        let healthy = Arc::new(AtomicBool::new(true));
        assert_eq!(ok.capture(&healthy).await, b"state v1");
        ok.restore(b"state v2", &healthy).await;
        assert_eq!(std::fs::read(&app).unwrap(), b"state v2");

        // Fails twice (the marker files count attempts), then succeeds.
        let flaky = format!(
            "if [ ! -e {0}/one ]; then touch {0}/one; exit 1; fi; if [ ! -e {0}/two ]; then touch {0}/two; exit 1; fi; echo ok > \"$HERMES_SNAPSHOT\"",
            dir.path().display()
        );
        let flaky = hooks(dir.path(), &flaky, "true");
        assert_eq!(flaky.capture(&healthy).await, b"ok\n");
        assert!(healthy.load(Ordering::Relaxed));
    }
}
