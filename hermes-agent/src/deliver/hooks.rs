//! Snapshot hooks: the operator's commands that capture the app's state into a file and restore
//! it from one. They let Hermes compact its log: a snapshot holds the app's state as of a log
//! index, and a new or lagging replica starts from it instead of replaying the whole log.
//!
//! Each command runs with `sh -c`, with the file's path in `HERMES_SNAPSHOT`, while the agent
//! holds its turn on the app with its connection closed: a hook that talks to an app serving one
//! connection at a time gets through, and no request reaches the app meanwhile. A hook that
//! fails is retried, like a delivery to an app that is down: nothing is skipped, the replica
//! waits.
//!
//! The file is `app-state` in the data directory. The commands reach it by its path (they are
//! shell commands); the agent itself only through the [`DataDir`], which refuses a link there.
//! A path is only safe to give them where nobody else can change the directory: pod mode, whose
//! directory is in the pod's volume, has no hooks.
use std::time::Duration;

use tokio::process::Command;

use super::App;
use crate::data_dir::DataDir;

/// The hooks' file in the data directory.
pub const FILE: &str = "app-state";

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The commands, and the directory of their file.
#[derive(Clone, Debug)]
pub struct Hooks {
    /// Writes the app's state to `$HERMES_SNAPSHOT`.
    pub snapshot: String,
    /// Replaces the app's state with `$HERMES_SNAPSHOT`.
    pub restore: String,
    pub dir: DataDir,
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
                self.dir.blocking(|dir| dir.remove(FILE)).await?;
                self.run(&self.snapshot).await?;
                self.dir
                    // Written by the operator's command: as large as the app's state is.
                    .blocking(|dir| dir.read(FILE, u64::MAX))
                    .await?
                    .ok_or_else(|| std::io::Error::other("the snapshot command wrote no file"))
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
                let state = state.to_vec();
                self.dir
                    .blocking(move |dir| dir.replace(FILE, &state))
                    .await?;
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
            .env("HERMES_SNAPSHOT", self.dir.path().join(FILE))
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
    fn succeeded<T>(&self, app: &App, what: &'static str, value: T) -> T {
        if self.failures > 0 {
            tracing::info!(what, failures = self.failures, "snapshot hook succeeded");
            app.set_reachable(true);
        }
        value
    }

    async fn failed(
        &mut self,
        app: &App,
        what: &'static str,
        command: &str,
        error: std::io::Error,
    ) {
        self.failures += 1;
        app.set_reachable(false);
        app.telemetry().hook_failed(what);
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
            dir: DataDir::create(dir).unwrap(),
            timeout: Duration::from_secs(10),
        }
    }

    /// An app nobody listens for: the hooks need none, and its connection is never opened.
    fn nowhere() -> App {
        App::new(
            ([127, 0, 0, 1], 9).into(),
            std::net::Ipv4Addr::LOCALHOST,
            Duration::from_secs(1),
            crate::http::response::Limits::default(),
            64,
            std::sync::Arc::default(),
        )
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
        let nowhere = nowhere();
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
        let metrics = nowhere.telemetry().encode();
        let failures = "hermes_hook_failures_total{hook=\"snapshot\"} 2\n";
        assert!(metrics.contains(failures), "{metrics}");
    }

    /// Resolves once a hook of `app` has failed.
    async fn failed(app: &App) {
        while app.healthy() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A link at the hooks' file (one the snapshot command left, or one planted before a
    /// restore) is neither read nor written through: the hook fails, and is retried until the
    /// link is gone.
    #[tokio::test]
    async fn a_link_at_the_file_is_refused_until_it_goes() {
        let root = tempfile::tempdir().unwrap();
        let (data, outside) = (root.path().join("data"), root.path().join("outside"));
        std::fs::write(&outside, b"outside").unwrap();
        let link = data.join(FILE);
        let marker = root.path().join("marker");
        let snapshot = format!(
            "if [ ! -e {0} ]; then touch {0}; ln -s {1} \"$HERMES_SNAPSHOT\"; else printf captured > \"$HERMES_SNAPSHOT\"; fi",
            marker.display(),
            outside.display()
        );
        let hooks = hooks(&data, &snapshot, "true");
        let app = nowhere();

        let capture = hooks.capture(&app);
        tokio::pin!(capture);
        tokio::select! {
            captured = &mut capture => {
                panic!("captured {:?} through a link", String::from_utf8_lossy(&captured))
            }
            () = failed(&app) => {}
        }
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        std::fs::remove_file(&link).unwrap();
        assert_eq!(capture.await, b"captured");
        assert!(app.healthy());
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");

        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let restore = hooks.restore(b"restored", &app);
        tokio::pin!(restore);
        tokio::select! {
            () = &mut restore => panic!("restored through a link"),
            () = failed(&app) => {}
        }
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        std::fs::remove_file(&link).unwrap();
        restore.await;
        assert_eq!(std::fs::read(&link).unwrap(), b"restored");
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
    }
}
