//! Who this node is, across restarts: its id, its incarnation and its boot count, kept in its data
//! directory.
//!
//! The incarnation is random, drawn when the data directory is made. Request ids carry it, so a
//! node whose data was wiped never reuses one; the membership records it, so such a node can
//! never act as the member it was (it has no vote, no log): it must join as a new member.
use std::io::{self, Read as _};

use super::{log_store, typ::NodeId};
use crate::data_dir::DataDir;

const FILE: &str = "identity";
const BOOT: &str = "boot";
/// Restarts a node can have: the boot count takes the top bits of a 64-bit request id.
const MAX_BOOTS: u64 = 1 << 24;

#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub node_id: NodeId,
    pub incarnation: u64,
    /// Starts of this incarnation, this one included.
    pub boot: u64,
    /// The data directory was empty: this is the incarnation's first start.
    pub fresh: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the data directory belongs to node {found}, not --node-id {given}")]
    OtherNode { found: NodeId, given: NodeId },
    #[error(
        "the data directory holds a Raft log but no identity: it was made by an older Hermes, \
         which this one cannot read; start this node with an empty data directory and --join"
    )]
    Older,
    #[error("the identity file is damaged: {0}")]
    Damaged(String),
    #[error("more than {MAX_BOOTS} restarts")]
    TooManyBoots,
}

impl Identity {
    /// Loads the identity kept in `dir`, or makes one if `dir` is new, and counts this start.
    pub fn load(dir: &DataDir, node_id: NodeId) -> Result<Self, IdentityError> {
        let (incarnation, fresh) = match read_text(dir, FILE)? {
            Some(text) => {
                let (found, incarnation) =
                    parse(&text).ok_or_else(|| IdentityError::Damaged(text.clone()))?;
                if found != node_id {
                    return Err(IdentityError::OtherNode {
                        found,
                        given: node_id,
                    });
                }
                (incarnation, false)
            }
            None => {
                if dir.contains(log_store::FILE)? || dir.contains(log_store::OLD_FILE)? {
                    return Err(IdentityError::Older);
                }
                let incarnation = random()?;
                let text = format!("node {node_id}\nincarnation {incarnation:016x}\n");
                dir.replace(FILE, text.as_bytes())?;
                (incarnation, true)
            }
        };
        let boot = match read_text(dir, BOOT)? {
            Some(text) => {
                text.trim()
                    .parse::<u64>()
                    .map_err(|_| IdentityError::Damaged(format!("boot count `{text}`")))?
                    + 1
            }
            None => 1,
        };
        if boot >= MAX_BOOTS {
            return Err(IdentityError::TooManyBoots);
        }
        dir.replace(BOOT, boot.to_string().as_bytes())?;
        Ok(Self {
            node_id,
            incarnation,
            boot,
            fresh,
        })
    }

    /// The node id recorded in `dir`, if it holds an identity (pod mode draws a new one for an
    /// empty data directory).
    pub fn recorded(dir: &DataDir) -> Result<Option<NodeId>, IdentityError> {
        match read_text(dir, FILE)? {
            Some(text) => parse(&text)
                .map(|(id, _)| Some(id))
                .ok_or(IdentityError::Damaged(text)),
            None => Ok(None),
        }
    }

    /// The first id of this start's requests (and batches): ids never repeat across restarts.
    pub fn first_id(&self) -> u64 {
        self.boot << 40
    }
}

/// File `name` of `dir` as text; `None` if there is none.
fn read_text(dir: &DataDir, name: &str) -> Result<Option<String>, IdentityError> {
    // A few lines; more is not a file of ours.
    match dir.read(name, 4096)? {
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| IdentityError::Damaged(String::from_utf8_lossy(e.as_bytes()).into())),
        None => Ok(None),
    }
}

fn parse(text: &str) -> Option<(NodeId, u64)> {
    let mut node = None;
    let mut incarnation = None;
    for line in text.lines() {
        match line.split_once(' ')? {
            ("node", id) => node = id.parse().ok(),
            ("incarnation", hex) => incarnation = u64::from_str_radix(hex, 16).ok(),
            _ => return None,
        }
    }
    Some((node?, incarnation?))
}

pub(crate) fn random() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_across_restarts_new_when_wiped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(tmp.path()).unwrap();
        let first = Identity::load(&dir, 3).unwrap();
        assert!(first.fresh);
        assert_eq!(first.boot, 1);
        let again = Identity::load(&dir, 3).unwrap();
        assert!(!again.fresh);
        assert_eq!((again.incarnation, again.boot), (first.incarnation, 2));
        assert!(again.first_id() > first.first_id());
        assert!(matches!(
            Identity::load(&dir, 4),
            Err(IdentityError::OtherNode { found: 3, given: 4 })
        ));
        let wiped_tmp = tempfile::tempdir().unwrap();
        let wiped = DataDir::create(wiped_tmp.path()).unwrap();
        let other = Identity::load(&wiped, 3).unwrap();
        assert_ne!(other.incarnation, first.incarnation);
        std::fs::write(wiped_tmp.path().join("identity"), "garbage").unwrap();
        assert!(matches!(
            Identity::load(&wiped, 3),
            Err(IdentityError::Damaged(_))
        ));
    }
}
