//! The agent's image, built from the unchanged `deploy/Dockerfile` with Debian's podman (and
//! runc), as a user builds it.
//!
//! No image registry is reachable here, so the base image the Dockerfile names
//! (`FROM debian:<suite>-slim`) is made with `debootstrap --variant=minbase <suite>` and imported
//! under that very name, once per machine: it stays in podman's store for later runs, and so do
//! the layers of the Dockerfile's steps before it copies the binary in (its `apt-get`), tagged
//! [`CACHE`]. Everything else a run makes (its image, tagged per run, and its containers,
//! labelled per run) is removed when its [`Image`] is dropped, also when the test fails.
use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The label that marks the containers of one run (its value is the run's id).
pub const RUN_LABEL: &str = "io.hermes.test-run";
/// The tag that keeps the layers of the Dockerfile's steps before its first COPY across runs.
const CACHE: &str = "localhost/hermes-agent-build-cache:latest";
/// Held while the base image is made and the image built: concurrent runs share podman's store.
const LOCK: &str = "/run/hermes-image.lock";

/// The workspace's root directory.
pub fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lies in the workspace")
}

/// The agent's image, built for one test run; removed with the run's containers when dropped.
pub struct Image {
    /// `localhost/hermes-agent:test-<run>`.
    pub name: String,
    /// This run's id, in container names and labels.
    pub run: String,
    /// How long making the base image took (`None`: it was in podman's store already).
    pub base_made_in: Option<Duration>,
    /// How long `podman build` took.
    pub built_in: Duration,
}

impl Image {
    /// Builds `deploy/Dockerfile` with the release `hermes-agent` built next to the tests in the
    /// context (where the Dockerfile copies it from: `target/release/hermes-agent`), making the
    /// base image first if podman's store lacks it.
    pub fn build() -> io::Result<Self> {
        podman(&["--version"]).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{e}; install podman, runc and debootstrap (`cargo xtask test` runs setup, \
                     which does)"
                ),
            )
        })?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // The process id first: a run whose process is gone is stale (see `remove_stale`).
        let run = format!("{}-{}", std::process::id(), now.as_millis() % 1_000_000_000);
        let dockerfile = workspace().join("deploy/Dockerfile");
        let text = std::fs::read_to_string(&dockerfile)?;
        let base = base_image(&text)?;

        let lock =
            nix::fcntl::Flock::lock(File::create(LOCK)?, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, errno)| io::Error::from(errno))?;
        remove_stale();
        let base_made_in = if podman(&["image", "exists", &base]).is_ok() {
            None
        } else {
            let start = Instant::now();
            make_base_image(&base)?;
            Some(start.elapsed())
        };

        // The context holds only what the Dockerfile copies, where it copies it from.
        let context = tempfile::tempdir()?;
        let release = context.path().join("target/release");
        std::fs::create_dir_all(&release)?;
        let agent = hermes_lab::binary("hermes-agent")?;
        if std::fs::hard_link(&agent, release.join("hermes-agent")).is_err() {
            std::fs::copy(&agent, release.join("hermes-agent"))?;
        }
        let mut image = Self {
            name: format!("localhost/hermes-agent:test-{run}"),
            run,
            base_made_in,
            built_in: Duration::ZERO,
        };
        let start = Instant::now();
        // `--isolation chroot`: the RUN steps use the host's network, no container network.
        // `--pull never`: the base image comes from the store, never from a registry.
        let dockerfile = dockerfile.to_str().expect("UTF-8 path");
        let context = context.path().to_str().expect("UTF-8 path");
        podman(&[
            "build",
            "--isolation",
            "chroot",
            "--pull=never",
            "--file",
            dockerfile,
            "--tag",
            &image.name,
            context,
        ])
        .map_err(|e| io::Error::new(e.kind(), format!("building the image: {e}")))?;
        image.built_in = start.elapsed();
        keep_cache(&text, &base, &image.name)?;
        drop(lock);
        Ok(image)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let filter = format!("label={RUN_LABEL}={}", self.run);
        match podman(&["ps", "--all", "--quiet", "--filter", &filter]) {
            Ok(ids) => {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "--force", "--time", "0"];
                    args.extend(ids);
                    if let Err(e) = podman(&args) {
                        eprintln!("podman: removing this run's containers: {e}");
                    }
                }
            }
            Err(e) => eprintln!("podman: listing this run's containers: {e}"),
        }
        // Also removes the layers only this image used; the base image stays.
        if let Err(e) = podman(&["rmi", "--force", "--ignore", &self.name]) {
            eprintln!("podman: removing {}: {e}", self.name);
        }
    }
}

/// Removes what earlier runs left behind when their process was killed before its guard ran:
/// containers and images of runs whose process (the run id's first part) is gone.
fn remove_stale() {
    let dead = |run: &str| {
        run.split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let format = format!("{{{{.ID}}}} {{{{index .Labels \"{RUN_LABEL}\"}}}}");
    let filter = format!("label={RUN_LABEL}");
    if let Ok(list) = podman(&["ps", "--all", "--filter", &filter, "--format", &format]) {
        for (id, run) in list.lines().filter_map(|line| line.split_once(' ')) {
            if dead(run) {
                let _ = podman(&["rm", "--force", "--time", "0", id]);
            }
        }
    }
    let format = "{{.Repository}}:{{.Tag}}";
    let filter = "reference=localhost/hermes-agent:test-*";
    if let Ok(list) = podman(&["images", "--filter", filter, "--format", format]) {
        for image in list.lines() {
            if image
                .rsplit_once(":test-")
                .is_some_and(|(_, run)| dead(run))
            {
                let _ = podman(&["rmi", "--force", "--ignore", image]);
            }
        }
    }
}

/// Tags the image of the Dockerfile's last step before it first copies anything in (here: the
/// `apt-get` layer) as [`CACHE`], so that removing a run's image keeps it and the next run's
/// build starts from it. A cache it replaces is removed, unless something still uses it.
fn keep_cache(dockerfile: &str, base: &str, image: &str) -> io::Result<()> {
    let steps = instructions(dockerfile);
    let Some(copy) = steps.iter().position(|s| s == "COPY" || s == "ADD") else {
        return Ok(());
    };
    let mut chain = Vec::new(); // the image of each step, from the last one down
    let base_id = podman(&["image", "inspect", "--format", "{{.ID}}", base])?;
    let mut id = podman(&["image", "inspect", "--format", "{{.ID}}", image])?;
    while id.trim() != base_id.trim() && !id.trim().is_empty() {
        chain.push(id.trim().to_owned());
        id = podman(&["image", "inspect", "--format", "{{.Parent}}", id.trim()])?;
    }
    chain.reverse();
    // Steps after FROM, each with its image; a copy as the first step leaves nothing to keep.
    if chain.len() != steps.len() - 1 || copy <= 1 {
        eprintln!(
            "podman: no layer cache kept ({} images for {} steps)",
            chain.len(),
            steps.len() - 1
        );
        return Ok(());
    }
    let keep = &chain[copy - 2];
    let before = podman(&["image", "inspect", "--format", "{{.ID}}", CACHE]).ok();
    podman(&["tag", keep, CACHE])?;
    if let Some(before) = before.map(|id| id.trim().to_owned())
        && before != *keep
    {
        let _ = podman(&["rmi", &before]);
    }
    Ok(())
}

/// The instructions of a Dockerfile (`FROM`, `RUN`, `COPY`, ...), in order.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut steps = Vec::new();
    let mut continued = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && !continued) {
            continue;
        }
        if !continued && let Some(word) = line.split_whitespace().next() {
            steps.push(word.to_uppercase());
        }
        continued = line.ends_with('\\');
    }
    steps
}

/// The base image a Dockerfile starts `FROM`, if it is one this test can make: `debian:<suite>`
/// or `debian:<suite>-slim`.
fn base_image(dockerfile: &str) -> io::Result<String> {
    let from = dockerfile
        .lines()
        .find_map(|line| line.trim().strip_prefix("FROM "))
        .map(str::trim)
        .ok_or_else(|| io::Error::other("deploy/Dockerfile has no FROM line"))?;
    if suite(from).is_none() {
        return Err(io::Error::other(format!(
            "deploy/Dockerfile starts from {from}; the tests can make debian:<suite>[-slim] only \
             (no registry is reachable here)"
        )));
    }
    Ok(from.to_owned())
}

/// `bookworm` for `debian:bookworm-slim`.
fn suite(image: &str) -> Option<&str> {
    let tag = image.strip_prefix("debian:")?;
    let suite = tag.strip_suffix("-slim").unwrap_or(tag);
    suite
        .chars()
        .all(|c| c.is_ascii_lowercase())
        .then_some(suite)
}

/// `debootstrap --variant=minbase`, then `tar -C DIR -c . | podman import - NAME`.
fn make_base_image(name: &str) -> io::Result<()> {
    let suite = suite(name).expect("checked by base_image");
    eprintln!("podman: making the base image {name} with debootstrap (once per machine)");
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let root = dir.path().join("root");
    let output = Command::new("debootstrap")
        .args(["--variant=minbase", suite])
        .arg(&root)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run debootstrap: {e}")));
    // debootstrap mounts /proc and /sys inside the root; a failed run may leave them there, and
    // removing the directory must not descend into them.
    unmount_below(&root);
    let output = output?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "debootstrap {suite} failed ({}): {}",
            output.status,
            tail(&output.stdout, &output.stderr)
        )));
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()?;
    let import = Command::new("podman")
        .args(["import", "-", name])
        .stdin(tar.stdout.take().expect("piped"))
        .output()?;
    let tarred = tar.wait()?;
    if !tarred.success() || !import.status.success() {
        return Err(io::Error::other(format!(
            "tar ({tarred}) | podman import ({}): {}",
            import.status,
            tail(&import.stdout, &import.stderr)
        )));
    }
    Ok(())
}

/// Lazily unmounts whatever is mounted at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Runs `podman ARGS`; its stdout, or an error with what it said.
pub fn podman(args: &[&str]) -> io::Result<String> {
    let output = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run podman: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`podman {}` failed ({}): {}",
            args.join(" "),
            output.status,
            tail(&output.stdout, &output.stderr)
        )))
    }
}

/// The last lines of a command's output, to say why it failed.
fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout).into_owned() + &String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
