//! What the agent has pinned for which pod, kept in its state directory, so that an agent
//! restarted after a pod was deleted still detaches it: a file
//! `pods/<pod uid>.<netns inode>.<port>` holding the pin directory and the pod's `namespace/name`, written before the steering is
//! attached and removed after it is detached.
use std::{
    io,
    path::{Path, PathBuf},
};

/// One pinned steering of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub uid: String,
    /// `namespace/name`.
    pub pod: String,
    pub netns: u64,
    pub port: u16,
    pub pins: PathBuf,
}

pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records under `state_dir`.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("pods");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn file(&self, record: &Record) -> PathBuf {
        let Record {
            uid, netns, port, ..
        } = record;
        self.dir.join(format!("{uid}.{netns}.{port}"))
    }

    /// Records `record`, durably, before its pins exist.
    pub fn add(&self, record: &Record) -> io::Result<()> {
        use std::io::Write as _;
        let path = self.file(record);
        let tmp = self
            .dir
            .join(format!(".{}.{}.{}", record.uid, record.netns, record.port));
        let mut file = std::fs::File::create(&tmp)?;
        let text = format!("{}\n{}\n", record.pins.to_string_lossy(), record.pod);
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    pub fn remove(&self, record: &Record) -> io::Result<()> {
        match std::fs::remove_file(self.file(record)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every record; unreadable or foreign files are skipped (and said so).
    pub fn all(&self) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let mut parts = name.rsplitn(3, '.');
            let (port, netns, uid) = (parts.next(), parts.next(), parts.next());
            let parsed = uid.zip(netns).zip(port).and_then(|((uid, netns), port)| {
                let netns = netns.parse().ok()?;
                let port = port.parse().ok()?;
                let text = std::fs::read_to_string(entry.path()).ok()?;
                let mut lines = text.lines();
                let (pins, pod) = (lines.next()?, lines.next()?);
                Some(Record {
                    uid: uid.to_owned(),
                    pod: pod.to_owned(),
                    netns,
                    port,
                    pins: PathBuf::from(pins),
                })
            });
            match parsed {
                Some(record) => records.push(record),
                None => tracing::warn!(file = %entry.path().display(), "not a pod record; ignored"),
            }
        }
        records.sort_by(|a, b| (&a.uid, a.netns, a.port).cmp(&(&b.uid, b.netns, b.port)));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let record = Record {
            uid: "0b8a3c1e-5f6d".into(),
            pod: "shop/app-0".into(),
            netns: 4026532000,
            port: 8080,
            pins: "/sys/fs/bpf/hermes/netns-4026532000-port-8080".into(),
        };
        records.add(&record).unwrap();
        let again = Records::open(dir.path()).unwrap();
        assert_eq!(again.all().unwrap(), std::slice::from_ref(&record));
        again.remove(&record).unwrap();
        again.remove(&record).unwrap();
        assert!(again.all().unwrap().is_empty());
    }
}
