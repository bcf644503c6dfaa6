//! Network namespaces: entering one, and naming one stably while it lives.
use std::{fs::File, io, os::unix::fs::MetadataExt, path::Path};

use nix::sched::{CloneFlags, setns};

/// The calling thread's own network namespace.
pub const OWN: &str = "/proc/thread-self/ns/net";

/// Moves the calling thread into the network namespace `path`. Threads it creates afterwards
/// (e.g. a tokio runtime's) start there too; do this before starting them.
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    setns(&file, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// The inode number of the namespace: the same for every file naming it, unique while it lives.
pub fn inode(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// An open network namespace: sockets for it are made on a thread that enters it, so that the
/// agent itself stays where it is (pod mode serves many namespaces from one process). Holding it
/// keeps the namespace alive, and so its inode number unique.
#[derive(Clone)]
pub struct Netns {
    file: std::sync::Arc<File>,
    inode: u64,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "netns:[{}]", self.inode)
    }
}

impl Netns {
    /// Opens the namespace `path` names (e.g. `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        Ok(Self {
            file: std::sync::Arc::new(file),
            inode,
        })
    }

    /// The namespace's inode number: unique among the namespaces alive.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// A path naming the namespace for as long as this handle lives (for [`super::Target`]).
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd as _;
        format!("/proc/self/fd/{}", self.file.as_raw_fd()).into()
    }

    /// Runs `f` on a thread of its own inside the namespace: sockets it makes live there for
    /// good. The calling thread never leaves its own namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        let file = &self.file;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(file.as_ref(), CloneFlags::CLONE_NEWNET)?;
                    f()
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a thread in a namespace panicked")))
        })
    }

    /// A tokio TCP socket made inside the namespace, for `addr`'s family.
    pub fn tcp_socket(&self, addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpSocket> {
        self.run(|| match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })
    }

    /// A listener on `addr` inside the namespace (in a runtime: it is registered with it).
    pub fn listen(&self, addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let listener = self.run(|| std::net::TcpListener::bind(addr))?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }
}
