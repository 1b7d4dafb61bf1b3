//! The transition hook (`[daemon] hook`, like mwan3.user): one hook thread runs the calls one
//! at a time in the order of the transitions, from a bounded queue, each with a clean
//! environment and killed (with its process group) after 30 s. Before every run the file is
//! checked: a hook that someone other than root can change would run their code as root.
//!
//! Why one thread: on a fast flap two hooks started side by side can finish out of order and
//! leave the system in the state of the older transition. Why a bounded queue that drops the
//! oldest call: a hook that hangs must not make the daemon buffer without limit, and the
//! newest transition is the one that describes the present.

use std::collections::VecDeque;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Pending calls kept while a hook runs; beyond it the oldest is dropped.
pub const QUEUE: usize = 32;
/// A hook still running after this is killed.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The only `PATH` a hook gets.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a hook is told about a transition (as environment variables).
#[derive(Debug, Clone)]
pub struct HookCall {
    pub uplink: String,
    /// `ipv4` or `ipv6`: the family whose health changed.
    pub family: String,
    pub interface: String,
    pub old_state: String,
    pub new_state: String,
    pub reason: String,
}

/// One queued run.
#[derive(Debug, Clone)]
struct Job {
    path: String,
    call: HookCall,
    /// `MULTIWAN_SEQUENCE`: counts transitions since the daemon started, so a hook can tell
    /// that calls were dropped.
    seq: u64,
}

/// A FIFO that drops its oldest entry when full.
#[derive(Debug)]
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    ready: Condvar,
    cap: usize,
}

impl<T> Queue<T> {
    fn new(cap: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            cap,
        }
    }

    /// Adds `item`; returns the entry dropped to make room.
    fn push(&self, item: T) -> Option<T> {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let dropped = (q.len() >= self.cap).then(|| q.pop_front()).flatten();
        q.push_back(item);
        self.ready.notify_one();
        dropped
    }

    /// Waits for the next entry.
    fn pop(&self) -> T {
        let mut q = self.items.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(item) = q.pop_front() {
                return item;
            }
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The hook thread's queue, started with the first call (`None`: it could not start).
fn runner() -> Option<&'static Arc<Queue<Job>>> {
    static RUNNER: OnceLock<Option<Arc<Queue<Job>>>> = OnceLock::new();
    RUNNER
        .get_or_init(|| {
            let q = Arc::new(Queue::new(QUEUE));
            let worker = q.clone();
            let started = std::thread::Builder::new()
                .name("hook".into())
                .spawn(move || loop {
                    let job = worker.pop();
                    // A panic while running one hook must not end hooks for good.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_job(&job, TIMEOUT)
                    }));
                    if ran.is_err() {
                        tracing::error!(hook = %job.path, "running the hook panicked; the hook thread goes on");
                    }
                });
            match started {
                Ok(_) => Some(q),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the hook thread; hooks will not run");
                    None
                }
            }
        })
        .as_ref()
}

/// Queues a hook run for a transition; never blocks the caller.
pub fn run_hook(path: &str, call: HookCall) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let job = Job {
        path: path.to_string(),
        call,
        seq: SEQ.fetch_add(1, Ordering::Relaxed) + 1,
    };
    let Some(q) = runner() else { return };
    if let Some(old) = q.push(job) {
        tracing::warn!(
            hook = %old.path,
            uplink = %old.call.uplink,
            sequence = old.seq,
            new_state = %old.call.new_state,
            "hook queue full ({QUEUE} pending): dropped the oldest call"
        );
    }
}

fn world_writable_dir(file: &Path) -> Result<(), String> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let md =
        std::fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    if md.permissions().mode() & 0o002 != 0 {
        return Err(format!("its directory {} is world writable", dir.display()));
    }
    Ok(())
}

/// Checks that `path` is safe to run as root: a regular executable file owned by root (or
/// `euid`), writable by nobody else, in directories nobody else can write (both the one named
/// and, through symlinks, the real one). Returns the real path, which is what runs.
pub fn check_hook(path: &Path, euid: u32) -> Result<PathBuf, String> {
    world_writable_dir(path)?;
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve it: {e}"))?;
    world_writable_dir(&real)?;
    let md = std::fs::metadata(&real).map_err(|e| format!("cannot inspect it: {e}"))?;
    let mode = md.permissions().mode();
    if !md.file_type().is_file() {
        return Err(format!("{} is not a regular file", real.display()));
    }
    if mode & 0o111 == 0 {
        return Err(format!("{} is not executable", real.display()));
    }
    if md.uid() != 0 && md.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}, not by root",
            real.display(),
            md.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} is group or world writable (mode {:04o})",
            real.display(),
            mode & 0o7777
        ));
    }
    Ok(real)
}

/// Runs one call to completion (or kills it after `timeout`).
fn run_job(job: &Job, timeout: Duration) {
    let euid = nix::unistd::geteuid().as_raw();
    let real = match check_hook(Path::new(&job.path), euid) {
        Ok(r) => r,
        Err(reason) => {
            tracing::warn!(hook = %job.path, uplink = %job.call.uplink, %reason, "refusing to run the hook");
            return;
        }
    };
    let c = &job.call;
    let child = Command::new(&real)
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .env("MULTIWAN_UPLINK", &c.uplink)
        .env("MULTIWAN_FAMILY", &c.family)
        .env("MULTIWAN_INTERFACE", &c.interface)
        .env("MULTIWAN_OLD_STATE", &c.old_state)
        .env("MULTIWAN_NEW_STATE", &c.new_state)
        .env("MULTIWAN_REASON", &c.reason)
        .env("MULTIWAN_SEQUENCE", job.seq.to_string())
        .stdin(Stdio::null())
        // Its own process group, so a timeout also kills what it started.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(hook = %job.path, error = %e, "cannot run the hook");
            return;
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if !status.success() => {
                tracing::warn!(hook = %job.path, %status, uplink = %c.uplink, "hook failed");
                return;
            }
            Ok(Some(_)) => return,
            Ok(None) if start.elapsed() > timeout => {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                tracing::warn!(hook = %job.path, uplink = %c.uplink, "hook killed after {timeout:?}");
                return;
            }
            // Polling only while a hook runs: no wake-ups otherwise.
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(hook = %job.path, error = %e, "cannot wait for the hook");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("multiwan-hooks-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        d
    }

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    fn job(path: &Path, seq: u64) -> Job {
        Job {
            path: path.display().to_string(),
            call: HookCall {
                uplink: "isp1".into(),
                family: "ipv4".into(),
                interface: "wan1".into(),
                old_state: "up".into(),
                new_state: "down".into(),
                reason: "probes_failing".into(),
            },
            seq,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_call() {
        let q = Queue::new(2);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), None);
        assert_eq!(q.push(3), Some(1));
        assert_eq!((q.pop(), q.pop()), (2, 3));
    }

    #[test]
    fn unsafe_hooks_are_refused() {
        let d = tempdir("check");
        let euid = nix::unistd::geteuid().as_raw();
        let good = script(&d, "good", "true", 0o755);
        assert_eq!(
            check_hook(&good, euid).expect("safe"),
            std::fs::canonicalize(&good).expect("real")
        );
        let world = script(&d, "world", "true", 0o777);
        assert!(check_hook(&world, euid)
            .expect_err("world writable")
            .contains("group or world writable (mode 0777)"));
        let group = script(&d, "group", "true", 0o775);
        assert!(check_hook(&group, euid).is_err());
        let noexec = script(&d, "noexec", "true", 0o644);
        assert!(check_hook(&noexec, euid)
            .expect_err("not executable")
            .contains("not executable"));
        let sub = d.join("sub");
        std::fs::create_dir(&sub).expect("dir");
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(check_hook(&sub, euid)
            .expect_err("a directory")
            .contains("not a regular file"));
        assert!(check_hook(&d.join("missing"), euid).is_err());
        // A symlink is judged by what it points to.
        std::os::unix::fs::symlink(&world, d.join("link")).expect("symlink");
        assert!(check_hook(&d.join("link"), euid).is_err());
        // A safe file in a world-writable directory can be swapped: refused.
        let open = d.join("open");
        std::fs::create_dir(&open).expect("dir");
        let inside = script(&open, "hook", "true", 0o755);
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(check_hook(&inside, euid)
            .expect_err("dir")
            .contains("world writable"));
        if euid == 0 {
            std::os::unix::fs::chown(&good, Some(65534), None).expect("chown");
            assert!(check_hook(&good, 0)
                .expect_err("owner")
                .contains("owned by uid 65534"));
        }
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_hook_gets_a_clean_environment() {
        let d = tempdir("env");
        let out = d.join("env.txt");
        let hook = script(&d, "hook", &format!("env > {}", out.display()), 0o755);
        run_job(&job(&hook, 7), TIMEOUT);
        let env = std::fs::read_to_string(&out).expect("hook ran");
        let mut names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .filter(|k| *k != "PWD" && *k != "SHLVL" && *k != "_") // set by sh itself
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "LANG",
                "MULTIWAN_FAMILY",
                "MULTIWAN_INTERFACE",
                "MULTIWAN_NEW_STATE",
                "MULTIWAN_OLD_STATE",
                "MULTIWAN_REASON",
                "MULTIWAN_SEQUENCE",
                "MULTIWAN_UPLINK",
                "PATH"
            ],
            "{env}"
        );
        assert!(env.contains(&format!("PATH={PATH}\n")));
        assert!(env.contains("MULTIWAN_SEQUENCE=7\n"));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn a_hook_that_hangs_is_killed_with_what_it_started() {
        let d = tempdir("timeout");
        let pidfile = d.join("child.pid");
        // The background sleep is in the hook's process group and must die with it.
        let hook = script(
            &d,
            "hook",
            &format!("sleep 60 &\necho $! > {}\nwait", pidfile.display()),
            0o755,
        );
        let start = Instant::now();
        run_job(&job(&hook, 1), Duration::from_millis(500));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "killed, not waited for"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("child pid")
            .trim()
            .parse()
            .expect("pid");
        // Reaped by init eventually; killed means it is gone or a zombie at once.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "grandchild {pid} survives: {stat}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::fs::remove_dir_all(&d).expect("cleanup");
    }
}
