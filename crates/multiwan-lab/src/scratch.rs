//! Private scratch space for files that root commands read (configs, run directories, daemon
//! logs): a fresh directory with a random name and mode 0700, removed when dropped. Predictable
//! paths in shared temp space would let a local user who wins the race plant what root runs;
//! command batches for `ip -batch` and `nft -f` go through stdin instead and never touch disk.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
pub use tempfile::TempDir;

/// Where later private directories go, once set: inside the lab's own private directory, so
/// that the interrupt path, which exits without unwinding, removes them all with it.
static BASE: OnceLock<PathBuf> = OnceLock::new();

/// Puts every later [`private_dir`] of this process inside `dir` (the first call wins).
pub fn set_base(dir: PathBuf) {
    let _ = BASE.set(dir);
}

/// Private directories made outside the base ([`private_tmpfs_dir`]): removed by
/// [`remove_outside_base`] on the interrupt path.
static OUTSIDE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Where a tmpfs is on every Debian machine (systemd mounts `/run` on one too, but a
/// container may not).
const TMPFS: &str = "/dev/shm";

/// A private directory (as [`private_dir`]) on a tmpfs, like the daemon's `/run/multiwan`
/// under systemd (`RuntimeDirectory=`, on the `/run` tmpfs), for measurements that must not
/// count a disk file system's work; `None` when `/dev/shm` is not a tmpfs.
pub fn private_tmpfs_dir(label: &str) -> Result<Option<TempDir>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().take(3).eq(["tmpfs", TMPFS, "tmpfs"]))
    {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("multiwan-{label}-"))
        .permissions(Permissions::from_mode(0o700))
        .tempdir_in(TMPFS)
        .with_context(|| format!("creating a private directory for {label} in {TMPFS}"))?;
    if let Ok(mut list) = OUTSIDE.lock() {
        list.push(dir.path().to_path_buf());
    }
    Ok(Some(dir))
}

/// Removes every directory [`private_tmpfs_dir`] made that still exists (for the interrupt
/// path, which exits without dropping them).
pub fn remove_outside_base() {
    if let Ok(list) = OUTSIDE.lock() {
        for p in list.iter() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Creates a private directory named `multiwan-<label>-XXXXXX` under the base set with
/// [`set_base`], else under `$TMPDIR` (or /tmp).
pub fn private_dir(label: &str) -> Result<TempDir> {
    let prefix = format!("multiwan-{label}-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).permissions(Permissions::from_mode(0o700));
    match BASE.get() {
        Some(base) => b.tempdir_in(base),
        None => b.tempdir(),
    }
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
