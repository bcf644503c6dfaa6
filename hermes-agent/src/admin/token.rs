//! The admin API's bearer token: read from a file only its owner may read (mode 0600), by the
//! agent on every request that needs it (so it can be replaced without a restart) and by
//! `hermes-agent ctl`.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the admin token file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error(
        "the admin token file {0} can be read by others (mode {1:o}): make it its owner's only \
         (chmod 600)"
    )]
    Open(PathBuf, u32),
    #[error("the admin token file {0} is empty")]
    Empty(PathBuf),
}

/// The token in `path`, without surrounding blanks.
pub fn read(path: &Path) -> Result<String, TokenError> {
    let failed = |e| TokenError::Read(path.to_owned(), e);
    let mode = std::fs::metadata(path)
        .map_err(failed)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(TokenError::Open(path.to_owned(), mode & 0o777));
    }
    let token = std::fs::read_to_string(path).map_err(failed)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Empty(path.to_owned()));
    }
    Ok(token.to_owned())
}

/// Whether `presented` is `token`, in time that does not depend on where they differ.
pub fn matches(presented: &[u8], token: &str) -> bool {
    let token = token.as_bytes();
    presented.len() == token.len()
        && presented
            .iter()
            .zip(token)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_non_empty_file_holds_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&path), Err(TokenError::Open(_, 0o644))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path).unwrap(), "s3cret");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(read(&path), Err(TokenError::Empty(_))));
        assert!(matches(b"s3cret", "s3cret"));
        assert!(!matches(b"s3cre", "s3cret"));
        assert!(!matches(b"s3creT", "s3cret"));
    }
}
