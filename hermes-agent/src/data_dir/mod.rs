//! The data directory, opened once: every file a node keeps (identity, boot count, Raft log,
//! membership, snapshot, delivery progress, the snapshot hooks' file, pod mode's group) is
//! reached through its descriptor, by a single name, never by a path.
//!
//! In pod mode the directory lies in the pod's volume, which the pod's containers may change at
//! any moment while the agent, root and in the host's PID namespace, works there: a symbolic
//! link planted at `progress` pointing to `/proc/1/root/etc/...` must not make the agent write a
//! host file. So every name is opened with `openat2(2)` and `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` (no link is followed, nothing
//! mounted over a name is entered), and what was opened must be a regular file with a single
//! link (another hard link could be a name outside the directory), for reads as for writes, for
//! as long as the node runs. A file is replaced by creating `NAME.tmp` anew (`O_EXCL`), then
//! renaming it over `NAME`, both relative to the directory. A directory holding a symbolic link
//! under any name is refused when it is opened, so a node that finds one does not start.
//!
//! Host mode opens `--data-dir` with the same type: one code path.
//!
//! # Minimum kernel version
//!
//! `openat2(2)`: Linux 5.6.
#[cfg(test)]
mod tests;

use std::{
    fmt,
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::{
    dir::{Dir, Type},
    errno::Errno,
    fcntl::{AtFlags, FcntlArg, OFlag, OpenHow, ResolveFlag, fcntl, open, openat2, renameat},
    libc,
    sys::stat::{FileStat, Mode, fstat, fstatat},
    unistd::{UnlinkatFlags, fsync, unlinkat},
};

/// A node's data directory, open. Clones share the descriptor.
#[derive(Clone)]
pub struct DataDir(Arc<Opened>);

struct Opened {
    fd: OwnedFd,
    /// Where the directory is, for messages and for the snapshot hooks' commands.
    path: PathBuf,
}

/// A name in the data directory that the node refuses to use.
#[derive(Debug, thiserror::Error)]
#[error("data directory {}: `{name}` {why}", dir.display())]
pub struct Refused {
    pub dir: PathBuf,
    pub name: String,
    pub why: Why,
}

/// Why a name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("is a symbolic link; refusing to follow it")]
    Link,
    #[error("is {0}, not a regular file; refusing to use it")]
    NotRegular(&'static str),
    #[error(
        "has more than one hard link (another may be outside the directory); refusing to use it"
    )]
    HardLinked,
    #[error("has another filesystem mounted on it; refusing to enter it")]
    Mount,
    #[error("is not the name of a file in the directory; refusing it")]
    Name,
}

impl DataDir {
    /// Opens the directory at `path`, made (with its parents) if missing: host mode's
    /// `--data-dir`. The operator chose that path: links on the way to it are followed.
    pub fn create(path: &Path) -> io::Result<Self> {
        let failed = |e: io::Error| {
            io::Error::new(e.kind(), format!("data directory {}: {e}", path.display()))
        };
        std::fs::create_dir_all(path).map_err(failed)?;
        let fd = open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| failed(e.into()))?;
        Self::from_fd(fd, path.to_owned())
    }

    /// Takes the directory `fd`, opened already (pod mode: inside the pod's volume, without
    /// following links on the way); `path` names it in messages.
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> io::Result<Self> {
        let dir = Self(Arc::new(Opened { fd, path }));
        dir.refuse_links()?;
        Ok(dir)
    }

    /// Where the directory is.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Opens file `name` to read and write, made (mode 0600) if missing; a file made is in the
    /// directory durably (the directory is synced).
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let made = !self.contains(name)?;
        let file = self
            .open(name, OFlag::O_RDWR | OFlag::O_CREAT)?
            .ok_or_else(|| self.failed(name, Errno::ENOENT.into()))?;
        if made {
            fsync(self.fd()).map_err(|e| self.failed(".", e.into()))?;
        }
        Ok(file)
    }

    /// The bytes of file `name`, at most `limit` of them (a larger file is refused, before
    /// anything is read: whoever can write the directory chooses its size); `None` if there is
    /// none.
    pub fn read(&self, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(file) = self.open(name, OFlag::O_RDONLY)? else {
            return Ok(None);
        };
        let size = file.metadata().map_err(|e| self.failed(name, e))?.len();
        let too_large = || {
            self.failed(
                name,
                io::Error::other(format!(
                    "larger than the {limit} bytes the node reads of it"
                )),
            )
        };
        if size > limit {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| self.failed(name, e))?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(Some(bytes))
    }

    /// Makes `bytes` the content of file `name`, atomically and durably: a crash leaves the old
    /// file or the new one. The new one is written as `NAME.tmp`, made anew, synced, renamed over
    /// `name`; then the directory is synced.
    pub fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.replace_with(name, |file| file.write_all(bytes))
    }

    /// [`Self::replace`], with the new file's content written by `write`.
    pub fn replace_with(
        &self,
        name: &str,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        self.check_name(name)?;
        let tmp = format!("{name}.tmp");
        // One a crash left behind goes; anything but such a file is refused.
        self.remove(&tmp)?;
        // What is replaced must be a file the node could have written.
        self.contains(name)?;
        let mut file = self
            .open(&tmp, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL)?
            .ok_or_else(|| self.failed(&tmp, Errno::ENOENT.into()))?;
        write(&mut file)
            .and_then(|()| file.sync_all())
            .map_err(|e| self.failed(&tmp, e))?;
        renameat(self.fd(), tmp.as_str(), self.fd(), name)
            .map_err(|e| self.failed(name, e.into()))?;
        fsync(self.fd()).map_err(|e| self.failed(".", e.into()))
    }

    /// Removes file `name`, if there is one.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        if !self.contains(name)? {
            return Ok(());
        }
        match unlinkat(self.fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.failed(name, e.into())),
        }
    }

    /// Whether there is a file `name`. Anything else under that name (a link, a directory, a
    /// file with other links) is refused.
    pub fn contains(&self, name: &str) -> io::Result<bool> {
        self.check_name(name)?;
        match fstatat(self.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => self.check(name, &stat).map(|()| true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.failed(name, e.into())),
        }
    }

    /// Runs `work` with this directory on a thread where blocking (reads, fsyncs) does not hold
    /// up the runtime.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Self) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let dir = self.clone();
        tokio::task::spawn_blocking(move || work(&dir))
            .await
            .map_err(io::Error::other)?
    }

    /// Opens `name` with `flags`; `None` if it does not exist (and `flags` do not make it).
    fn open(&self, name: &str, flags: OFlag) -> io::Result<Option<File>> {
        self.check_name(name)?;
        // O_NONBLOCK: a FIFO planted under the name must not hold the open up; O_NOCTTY: nor
        // may a terminal become the agent's. Neither matters to the regular file that passes.
        let mut how = OpenHow::new()
            .flags(
                flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
            )
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_XDEV,
            );
        if flags.contains(OFlag::O_CREAT) {
            how = how.mode(Mode::S_IRUSR | Mode::S_IWUSR);
        }
        let fd = match openat2(self.fd(), name, how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(self.refused(name, Why::Link)),
            // A name is one component: only a mount can take the path off the directory's
            // filesystem.
            Err(Errno::EXDEV) => return Err(self.refused(name, Why::Mount)),
            Err(Errno::EISDIR) => return Err(self.refused(name, Why::NotRegular("a directory"))),
            // A socket, or a device without a driver.
            Err(Errno::ENXIO | Errno::ENODEV) => {
                return Err(self.refused(name, Why::NotRegular("a special file")));
            }
            Err(e) => return Err(self.failed(name, e.into())),
        };
        let stat = fstat(&fd).map_err(|e| self.failed(name, e.into()))?;
        self.check(name, &stat)?;
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| self.failed(name, e.into()))?;
        Ok(Some(File::from(fd)))
    }

    /// Refuses `stat` unless it is that of a regular file with one link.
    fn check(&self, name: &str, stat: &FileStat) -> io::Result<()> {
        let why = match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG if stat.st_nlink == 1 => return Ok(()),
            libc::S_IFREG => Why::HardLinked,
            libc::S_IFLNK => Why::Link,
            libc::S_IFDIR => Why::NotRegular("a directory"),
            libc::S_IFIFO => Why::NotRegular("a FIFO"),
            libc::S_IFSOCK => Why::NotRegular("a socket"),
            libc::S_IFCHR => Why::NotRegular("a character device"),
            libc::S_IFBLK => Why::NotRegular("a block device"),
            _ => Why::NotRegular("of an unknown kind"),
        };
        Err(self.refused(name, why))
    }

    fn check_name(&self, name: &str) -> io::Result<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(self.refused(name, Why::Name));
        }
        Ok(())
    }

    /// Refuses the directory if any name in it is a symbolic link.
    fn refuse_links(&self) -> io::Result<()> {
        let mut entries = Dir::openat(
            self.fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.failed(".", e.into()))?;
        for entry in entries.iter() {
            let entry = entry.map_err(|e| self.failed(".", e.into()))?;
            let name = entry.file_name();
            let link = match entry.file_type() {
                Some(kind) => kind == Type::Symlink,
                // The filesystem does not say in the entry: ask.
                None => fstatat(self.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|stat| stat.st_mode & libc::S_IFMT == libc::S_IFLNK),
            };
            if link {
                return Err(self.refused(&name.to_string_lossy(), Why::Link));
            }
        }
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }

    fn refused(&self, name: &str, why: Why) -> io::Error {
        io::Error::other(Refused {
            dir: self.0.path.clone(),
            name: name.to_owned(),
            why,
        })
    }

    /// `error`, saying which file it is about.
    fn failed(&self, name: &str, error: io::Error) -> io::Error {
        io::Error::new(
            error.kind(),
            format!(
                "data directory {}: `{name}`: {error}",
                self.0.path.display()
            ),
        )
    }
}

impl fmt::Debug for DataDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DataDir").field(&self.0.path).finish()
    }
}
