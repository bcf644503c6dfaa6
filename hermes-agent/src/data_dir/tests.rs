//! What a data directory refuses, and that nothing outside it changes when it does: the
//! directory gains its links after it was opened, as a pod's volume can at any time.
use std::{
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
};

use super::{DataDir, Refused, Why};

/// A data directory `data` and, beside it, `outside` holding `target` (a file) and `dir` (a
/// directory holding `file`), each with known bytes.
struct Setup {
    _root: tempfile::TempDir,
    data: PathBuf,
    outside: PathBuf,
}

const TARGET: &[u8] = b"a file outside the data directory";

impl Setup {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("target"), TARGET).unwrap();
        std::fs::write(outside.join("dir/file"), TARGET).unwrap();
        Self {
            _root: root,
            data,
            outside,
        }
    }

    /// Every file outside, with its bytes.
    fn outside(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut dirs = vec![self.outside.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push((path.clone(), std::fs::read(&path).unwrap()));
                }
            }
        }
        files.sort();
        files
    }
}

/// The refusal of `result`, which must be one.
fn refusal<T: std::fmt::Debug>(result: std::io::Result<T>) -> (String, Why, String) {
    let error = result.expect_err("refused");
    let refused = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
        .unwrap_or_else(|| panic!("not a refusal: {error}"));
    (refused.name.clone(), refused.why, error.to_string())
}

/// Every operation on `name` is refused with `why`.
fn all_refused(dir: &DataDir, name: &str, why: Why) {
    let results = [
        ("open_file", refusal(dir.open_file(name))),
        ("read", refusal(dir.read(name, 1 << 20))),
        (
            "replace",
            refusal(dir.replace(name, b"written by the node")),
        ),
        ("remove", refusal(dir.remove(name))),
        ("contains", refusal(dir.contains(name))),
    ];
    for (operation, (refused, found, message)) in results {
        assert_eq!(
            (refused.as_str(), found),
            (name, why),
            "{operation}: {message}"
        );
        assert!(message.contains(&format!("`{name}`")), "{message}");
    }
}

#[test]
fn files_are_made_read_replaced_and_removed() {
    let setup = Setup::new();
    let dir = DataDir::create(&setup.data).unwrap();
    assert_eq!(dir.read("progress", 1 << 20).unwrap(), None);
    assert!(!dir.contains("progress").unwrap());
    let mut file = dir.open_file("progress").unwrap();
    std::io::Write::write_all(&mut file, b"slots").unwrap();
    let mode = std::fs::metadata(setup.data.join("progress"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(dir.read("progress", 1 << 20).unwrap().unwrap(), b"slots");

    // A `.tmp` a crash left behind is no obstacle.
    std::fs::write(setup.data.join("membership.tmp"), b"half").unwrap();
    dir.replace("membership", b"one").unwrap();
    dir.replace("membership", b"two").unwrap();
    assert_eq!(dir.read("membership", 1 << 20).unwrap().unwrap(), b"two");
    assert!(!dir.contains("membership.tmp").unwrap());
    dir.remove("membership").unwrap();
    dir.remove("membership").unwrap();
    assert_eq!(dir.read("membership", 1 << 20).unwrap(), None);
}

#[test]
fn links_to_files_and_directories_outside_are_refused() {
    let setup = Setup::new();
    let dir = DataDir::create(&setup.data).unwrap();
    let before = setup.outside();
    let links: [(&str, PathBuf); 5] = [
        ("progress", setup.outside.join("target")),
        ("raft.log", setup.outside.join("dir")),
        ("relative", Path::new("../outside/target").to_owned()),
        // Dangling: a create through it would make a file outside.
        ("snapshot", setup.outside.join("new")),
        ("boot", "/proc/self/root/etc/hostname".into()),
    ];
    for (name, target) in &links {
        symlink(target, setup.data.join(name)).unwrap();
        all_refused(&dir, name, Why::Link);
    }
    assert_eq!(setup.outside(), before);
    // A new opening of the directory finds the links at once.
    let (name, why, message) = refusal(DataDir::create(&setup.data));
    assert_eq!(why, Why::Link, "{message}");
    assert!(links.iter().any(|(link, _)| *link == name));
    assert!(
        message.ends_with("is a symbolic link; refusing to follow it"),
        "{message}"
    );
}

#[test]
fn a_file_larger_than_what_is_read_of_it_is_refused_before_it_is_read() {
    let setup = Setup::new();
    let dir = DataDir::create(&setup.data).unwrap();
    // Sparse: it costs the disk nothing, and would cost memory all its size.
    let file = std::fs::File::create(setup.data.join("identity")).unwrap();
    file.set_len(1 << 40).unwrap();
    let error = dir.read("identity", 4096).unwrap_err();
    assert!(error.to_string().contains("larger than"), "{error}");
    std::fs::write(setup.data.join("identity"), b"node 1\n").unwrap();
    assert_eq!(dir.read("identity", 4096).unwrap().unwrap(), b"node 1\n");
}

#[test]
fn names_must_be_single_components() {
    let setup = Setup::new();
    let dir = DataDir::create(&setup.data).unwrap();
    let before = setup.outside();
    for name in [
        "..",
        ".",
        "",
        "../outside/target",
        "x/../../outside/target",
        "/etc/hostname",
    ] {
        all_refused(&dir, name, Why::Name);
    }
    // Through a link to a directory outside, too.
    symlink(setup.outside.join("dir"), setup.data.join("dir")).unwrap();
    all_refused(&dir, "dir/file", Why::Name);
    assert_eq!(setup.outside(), before);
}

#[test]
fn a_tmp_link_planted_before_a_replace_is_refused() {
    let setup = Setup::new();
    let dir = DataDir::create(&setup.data).unwrap();
    dir.replace("membership", b"kept").unwrap();
    let before = setup.outside();
    symlink(
        setup.outside.join("target"),
        setup.data.join("membership.tmp"),
    )
    .unwrap();
    let (name, why, message) = refusal(dir.replace("membership", b"new"));
    assert_eq!(
        (name.as_str(), why),
        ("membership.tmp", Why::Link),
        "{message}"
    );
    // Dangling, to where a file would be made.
    std::fs::remove_file(setup.data.join("membership.tmp")).unwrap();
    symlink(setup.outside.join("new"), setup.data.join("membership.tmp")).unwrap();
    let (name, why, _) = refusal(dir.replace("membership", b"new"));
    assert_eq!((name.as_str(), why), ("membership.tmp", Why::Link));
    assert_eq!(setup.outside(), before);
    assert_eq!(dir.read("membership", 1 << 20).unwrap().unwrap(), b"kept");
}

#[test]
fn a_file_with_another_hard_link_is_refused() {
    let setup = Setup::new();
    let dir = DataDir::create(&setup.data).unwrap();
    let before = setup.outside();
    std::fs::hard_link(setup.outside.join("target"), setup.data.join("progress")).unwrap();
    all_refused(&dir, "progress", Why::HardLinked);
    std::fs::hard_link(
        setup.outside.join("dir/file"),
        setup.data.join("snapshot.tmp"),
    )
    .unwrap();
    let (name, why, _) = refusal(dir.replace("snapshot", b"new"));
    assert_eq!((name.as_str(), why), ("snapshot.tmp", Why::HardLinked));
    assert_eq!(setup.outside(), before);
}

#[test]
fn fifos_directories_and_sockets_are_refused_without_blocking() {
    let setup = Setup::new();
    let dir = DataDir::create(&setup.data).unwrap();
    nix::unistd::mkfifo(&setup.data.join("progress"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    all_refused(&dir, "progress", Why::NotRegular("a FIFO"));
    std::fs::create_dir(setup.data.join("snapshot")).unwrap();
    all_refused(&dir, "snapshot", Why::NotRegular("a directory"));
    let _socket = std::os::unix::net::UnixListener::bind(setup.data.join("boot")).unwrap();
    for (operation, (name, why, message)) in [
        ("open_file", refusal(dir.open_file("boot"))),
        ("read", refusal(dir.read("boot", 1 << 20))),
        ("contains", refusal(dir.contains("boot"))),
    ] {
        assert_eq!(name, "boot", "{operation}");
        assert!(matches!(why, Why::NotRegular(_)), "{operation}: {message}");
    }
}
