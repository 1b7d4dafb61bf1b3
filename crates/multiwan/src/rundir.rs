//! The run directory (`/run/multiwan`): checked before the daemon trusts it, files written in
//! it without following symlinks, and the pid file held under `flock` for the daemon's life.
//!
//! Why: everything in it (state, the drained uplinks, saved sysctls, the control socket) is
//! read back by root. A directory that someone else owns or can write, or a name that is a
//! symlink, would let a local user make root write or read a file of their choosing.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// The network namespace's inode number: the per-namespace state files in the run directory
/// are named after it.
pub fn netns_id() -> Result<String> {
    let ns = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(ns
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect())
}

/// File name of the pid file inside the run directory.
pub const PID_FILE: &str = "multiwan.pid";

/// Creates the run directory (mode 0700) if it is missing; otherwise checks that it is a real
/// directory (not a symlink), owned by the daemon's effective uid and writable by nobody else.
/// Refuses with the reason, changing nothing.
pub fn prepare(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating run directory {}", dir.display()))?;
        }
        Err(e) => {
            return Err(e).with_context(|| format!("inspecting run directory {}", dir.display()))
        }
        Ok(_) => {}
    }
    // Checked after creating too: whatever is there now is what we will use.
    check(dir)
}

/// The checks of [`prepare`] on an existing path.
pub fn check(dir: &Path) -> Result<()> {
    let md = std::fs::symlink_metadata(dir)
        .with_context(|| format!("inspecting run directory {}", dir.display()))?;
    let ft = md.file_type();
    if ft.is_symlink() {
        bail!(
            "run directory {} is a symlink; refusing to use it (give the real directory with --run-dir)",
            dir.display()
        );
    }
    if !ft.is_dir() {
        bail!("run directory {} is not a directory", dir.display());
    }
    let euid = nix::unistd::geteuid().as_raw();
    if md.uid() != euid {
        bail!(
            "run directory {} is owned by uid {}, not by the daemon's uid {euid}; refusing to use it",
            dir.display(),
            md.uid()
        );
    }
    let mode = md.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "run directory {} is group or world writable (mode {mode:04o}); refusing to use it (chmod go-w)",
            dir.display()
        );
    }
    Ok(())
}

/// Lets the members of `gid` reach the control socket: the directory gets that group and mode
/// 0710 (enter, not list). Without a group it stays as it is.
pub fn allow_group(dir: &Path, gid: Option<u32>) -> Result<()> {
    let Some(gid) = gid else {
        return Ok(());
    };
    std::os::unix::fs::lchown(dir, None, Some(gid))
        .with_context(|| format!("giving {} to group {gid}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
        .with_context(|| format!("chmod 0710 {}", dir.display()))?;
    Ok(())
}

fn plain_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

/// Writes `dir/name` atomically without following symlinks: the bytes go to a fresh file
/// (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600) in the same directory, which is then renamed over
/// `name` (rename replaces a symlink there instead of writing through it). Readers see the
/// old or the new content, never half of one.
pub fn write_file_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    plain_name(name)?;
    // Unique per process and call, so two writers of the same name never share a temp file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Reads `dir/name`, refusing to follow a symlink there (`None` when it is missing).
pub fn read_file(dir: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    plain_name(name)?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dir.join(name));
    match f {
        Ok(mut f) => {
            let mut b = Vec::new();
            f.read_to_end(&mut b)?;
            Ok(Some(b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The pid file, locked (`flock(LOCK_EX)`) for as long as this value lives. The lock, not the
/// file's existence, says that a daemon uses the run directory: a pid file nobody holds a lock
/// on is stale (its daemon died, even by `kill -9`, and the kernel dropped the lock).
#[derive(Debug)]
pub struct PidLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl PidLock {
    /// Takes the run directory for this process; refuses with the other daemon's pid.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(PID_FILE);
        // Not O_TRUNC: the pid of a daemon holding the lock must stay readable.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = read_pid(&mut f).map_or("unknown".to_string(), |p| p.to_string());
                bail!(
                    "another multiwan daemon (pid {pid}) uses {}; give each daemon its own --run-dir",
                    dir.display()
                );
            }
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        };
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _lock: lock, path })
    }

    /// Where the pid file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// The pid of the daemon that holds the run directory's lock, if one does. The file is left
/// in place when a daemon exits (removing it while other processes may be opening it would
/// let two daemons lock two different files); the lock tells live from stale.
pub fn locked_pid(dir: &Path) -> Option<u32> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dir.join(PID_FILE))
        .ok()?;
    // A shared lock we can get means no exclusive holder: stale. We let go at once.
    match Flock::lock(file.try_clone().ok()?, FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => None,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => read_pid(&mut file),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "multiwan-rundir-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        d
    }

    #[test]
    fn a_fresh_run_dir_is_0700() {
        let base = tempdir("fresh");
        let run = base.join("a/run");
        prepare(&run).expect("created");
        let mode = std::fs::metadata(&run).expect("md").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        // Preparing again accepts what it made.
        prepare(&run).expect("again");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_symlinked_run_dir_is_refused() {
        let base = tempdir("symlink");
        let real = base.join("real");
        std::fs::create_dir(&real).expect("dir");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let link = base.join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let e = prepare(&link).expect_err("refused");
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
        let file = base.join("file");
        std::fs::write(&file, b"").expect("file");
        let e = prepare(&file).expect_err("refused");
        assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_group_or_world_writable_run_dir_is_refused() {
        let base = tempdir("writable");
        for mode in [0o777, 0o1777, 0o770, 0o720] {
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = prepare(&base).expect_err("refused");
            assert!(format!("{e:#}").contains("writable"), "{mode:o}: {e:#}");
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare(&base).expect("0755 is fine: nobody else can write");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn a_run_dir_owned_by_someone_else_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown needs root; the suite runs as root.
        }
        let base = tempdir("owner");
        std::os::unix::fs::chown(&base, Some(65534), None).expect("chown");
        let e = prepare(&base).expect_err("refused");
        assert!(format!("{e:#}").contains("owned by uid 65534"), "{e:#}");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn atomic_writes_replace_a_planted_symlink_instead_of_following_it() {
        let base = tempdir("atomic");
        let victim = base.join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, base.join("state.json")).expect("plant");
        write_file_atomic(&base, "state.json", b"{}").expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        let md = std::fs::symlink_metadata(base.join("state.json")).expect("md");
        assert!(md.file_type().is_file());
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            read_file(&base, "state.json").expect("read"),
            Some(b"{}".to_vec())
        );
        // Reading refuses a symlink too.
        std::os::unix::fs::symlink(&victim, base.join("disabled.json")).expect("plant");
        assert!(read_file(&base, "disabled.json").is_err());
        assert_eq!(read_file(&base, "missing").expect("absent"), None);
        assert!(write_file_atomic(&base, "../escape", b"x").is_err());
        // No temp files are left behind.
        let names: Vec<String> = std::fs::read_dir(&base)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn the_pid_lock_excludes_a_second_daemon_and_a_stale_file_is_not_a_daemon() {
        let base = tempdir("pid");
        assert_eq!(locked_pid(&base), None, "no file");
        let lock = PidLock::acquire(&base).expect("first");
        assert_eq!(locked_pid(&base), Some(std::process::id()));
        // flock conflicts between open files, even in one process: the second one is refused.
        let e = PidLock::acquire(&base).expect_err("second");
        assert!(
            format!("{e:#}").contains(&format!("pid {}", std::process::id())),
            "{e:#}"
        );
        drop(lock);
        // The file stays, holding our pid, but nobody holds it: stale.
        assert!(base.join(PID_FILE).exists());
        assert_eq!(locked_pid(&base), None);
        let again = PidLock::acquire(&base).expect("stale file is taken over");
        assert_eq!(locked_pid(&base), Some(std::process::id()));
        drop(again);
        // A symlink at the pid file's name is not followed.
        std::fs::remove_file(base.join(PID_FILE)).expect("rm");
        std::os::unix::fs::symlink(base.join("elsewhere"), base.join(PID_FILE)).expect("plant");
        assert!(PidLock::acquire(&base).is_err());
        assert!(!base.join("elsewhere").exists());
        std::fs::remove_dir_all(&base).expect("cleanup");
    }
}
