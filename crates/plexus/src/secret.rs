//! The cluster's shared secret: read from a file only its owner can read, or made afresh.
//!
//! Invariant: a secret file that other users could read (any group or other permission
//! bit) is refused, so a secret is never used while it may have leaked on this machine.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub use plexus_proto::auth::Secret;
use plexus_proto::auth::MAX_SECRET_LEN;

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read the secret file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Users other than its owner may read the file.
    #[error(
        "the secret file {path} may be read by other users (mode {mode:o}): make it owner-only (chmod 600)"
    )]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file's content is not a usable secret.
    #[error("the secret file {path}: {source}")]
    Unusable {
        /// The file.
        path: String,
        /// Why.
        source: plexus_proto::auth::BadSecret,
    },
}

/// Reads the secret in `path` (its bytes, as they are), refusing a file that other users
/// may read.
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let shown = path.display().to_string();
    let io = |source| SecretError::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Exposed { path: shown, mode });
    }
    let mut bytes = Vec::new();
    // One byte beyond the limit tells a file too long from one just long enough.
    file.take(MAX_SECRET_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Secret::new(bytes).map_err(|source| SecretError::Unusable {
        path: shown,
        source,
    })
}

/// A fresh secret of 32 random bytes from the operating system.
pub fn generate_secret() -> std::io::Result<Secret> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    Secret::new(bytes.to_vec()).map_err(std::io::Error::other)
}

/// Writes a fresh secret to `path`, owner-only, refusing to replace an existing file.
pub fn write_new_secret_file(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes: Vec<u8> = {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
        bytes.to_vec()
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_only_if_its_owner_alone_can_read_it() {
        let dir = std::env::temp_dir().join(format!("plexus-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("cluster.secret");
        let _ = std::fs::remove_file(&path);
        write_new_secret_file(&path).expect("written");
        assert!(write_new_secret_file(&path).is_err(), "never replaced");
        let secret = read_secret_file(&path).expect("owner-only file is read");
        assert_eq!(format!("{secret:?}"), "Secret(32 bytes)");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::Exposed { mode: 0o640, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, b"short").expect("write");
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::Unusable { .. })
        ));
        assert!(matches!(
            read_secret_file(&dir.join("absent")),
            Err(SecretError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
