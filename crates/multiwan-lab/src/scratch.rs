//! Private scratch space for files that root commands read (configs, run directories, daemon
//! logs): a fresh directory with a random name and mode 0700, removed when dropped. Predictable
//! paths in shared temp space would let a local user who wins the race plant what root runs;
//! command batches for `ip -batch` and `nft -f` go through stdin instead and never touch disk.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;

use anyhow::{Context, Result};
pub use tempfile::TempDir;

/// Creates a private directory under `$TMPDIR` (or /tmp) named `multiwan-<label>-XXXXXX`.
pub fn private_dir(label: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("multiwan-{label}-"))
        .permissions(Permissions::from_mode(0o700))
        .tempdir()
        .with_context(|| format!("creating a private directory for {label}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_private_and_unpredictable() {
        let a = private_dir("t").expect("a");
        let b = private_dir("t").expect("b");
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "mode {mode:o}");
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists(), "removed on drop");
    }
}
