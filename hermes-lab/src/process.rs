//! Processes started in a lab: killed by PID when dropped, their output kept for inspection and
//! printed if the test that owns them fails.
use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Write as _},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    /// Where each line is also written as it comes, with the time it came ([`Process::log_to`]).
    file: Mutex<Option<File>>,
}

/// A child process with its stdout and stderr captured line by line.
pub struct Process {
    name: String,
    child: Child,
    output: Arc<Output>,
}

impl Process {
    /// Starts `command` with stdout and stderr captured.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> io::Result<Self> {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        let output = Arc::new(Output::default());
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        collect(stdout, Arc::clone(&output));
        collect(stderr, Arc::clone(&output));
        Ok(Self {
            name,
            child,
            output,
        })
    }

    /// From now on, also appends each line the process prints to `path`, after the time since
    /// the Unix epoch it came at (kept after the process and its test are gone).
    pub fn log_to(&self, path: &Path) -> io::Result<()> {
        let mut file = File::options().create(true).append(true).open(path)?;
        let lines = self.output.lines.lock().unwrap();
        for line in lines.iter() {
            writeln!(file, "{:.6} {line}", since_epoch())?;
        }
        *self.output.file.lock().unwrap() = Some(file);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line of output contains `needle`; fails if the process exits first or
    /// `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.output.lines.lock().unwrap();
                if let Some(line) = lines[seen..].iter().find(|line| line.contains(needle)) {
                    return Ok(line.clone());
                }
                seen = lines.len();
                let wait = deadline.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    return Err(self.failure(format!("no `{needle}` within {timeout:?}")));
                }
                let _unused = self
                    .output
                    .changed
                    .wait_timeout(lines, wait.min(Duration::from_millis(100)))
                    .unwrap();
            }
            if let Some(status) = self.child.try_wait()? {
                // Give the readers a moment to deliver the last lines before judging.
                std::thread::sleep(Duration::from_millis(50));
                let lines = self.output.lines.lock().unwrap();
                if let Some(line) = lines[seen..].iter().find(|line| line.contains(needle)) {
                    return Ok(line.clone());
                }
                drop(lines);
                return Err(self.failure(format!("exited ({status}) before `{needle}`")));
            }
        }
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> Vec<String> {
        self.output.lines.lock().unwrap().clone()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        self.child.kill()?;
        self.child.wait()
    }

    /// Sends `signal` (e.g. `Signal::SIGTERM`) to the process, which is not reaped yet.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        Ok(kill(Pid::from_raw(self.child.id() as i32), signal)?)
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(format!("still running after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines it printed, to explain why it failed.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.output.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn failure(&self, what: String) -> io::Error {
        io::Error::other(format!(
            "{}: {what}; last output:\n{}",
            self.name,
            self.tail(30)
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- output of {} ---", self.name);
            for line in self.output.lines.lock().unwrap().iter() {
                eprintln!("{line}");
            }
        }
    }
}

fn collect(stream: impl Read + Send + 'static, output: Arc<Output>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(file) = output.file.lock().unwrap().as_mut() {
                let _ = writeln!(file, "{:.6} {line}", since_epoch());
            }
            output.lines.lock().unwrap().push(line);
            output.changed.notify_all();
        }
    });
}

/// Seconds since the Unix epoch.
fn since_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
