//! Network namespaces for the lab, the benchmarks and the tests: create with a unique name,
//! run commands or threads inside, and always remove — on drop (panic included), from a
//! Ctrl-C handler through a process-wide registry, and at the next run when a process was
//! killed (its pid in the name is dead).
//!
//! **Invariant:** nothing here changes the root namespace. Interfaces are created directly
//! inside their namespaces (`ip -n NS link add ... peer ... netns OTHER`).
//!
//! **Invariant:** removing a namespace first stops every process in it (SIGTERM, SIGKILL after
//! a short grace), and catches any that slipped in before the name was gone. A daemon started
//! in a namespace therefore never outlives it, whichever way the lab ends; before this, Ctrl-C
//! removed the namespaces and left `multiwan run` running as root in a deleted namespace.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long processes get to exit after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(3);

/// Names of namespaces this process created and has not removed yet.
fn registry() -> &'static Mutex<BTreeSet<String>> {
    static R: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// Removes every namespace this process still owns, stopping the processes in them first
/// (for signal handlers and exit paths).
pub fn cleanup_all() {
    let names: Vec<String> = {
        let mut g = match registry().lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        SHUTTING_DOWN.store(true, Ordering::SeqCst);
        std::mem::take(&mut *g).into_iter().collect()
    };
    remove(&names);
}

/// Set by [`cleanup_all`]: no namespace is created after it.
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// The nsfs inode of a named namespace: what `/proc/PID/ns/net` of its processes points at.
fn inode(name: &str) -> Option<u64> {
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

/// Processes (not threads: a namespace thread of this process is never listed, and this
/// process never is) whose network namespace has one of `inodes`. Exited processes not yet
/// reaped have no namespace any more and are not listed.
fn pids_in(inodes: &BTreeSet<u64>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| {
                    let l = l
                        .to_str()?
                        .strip_prefix("net:[")?
                        .strip_suffix(']')?
                        .to_string();
                    l.parse::<u64>().ok()
                })
                .is_some_and(|ino| inodes.contains(&ino))
        })
        .collect()
}

/// Stops every process in the namespaces with `inodes`: SIGTERM, then SIGKILL for those still
/// there after [`GRACE`]; returns how many it signalled. Bounded: gives up after two graces.
fn stop_processes(inodes: &BTreeSet<u64>) -> usize {
    let first = pids_in(inodes);
    if first.is_empty() {
        return 0;
    }
    for pid in &first {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let start = Instant::now();
    let mut killed = false;
    loop {
        let left = pids_in(inodes);
        if left.is_empty() || start.elapsed() > 2 * GRACE {
            break;
        }
        if start.elapsed() > GRACE || killed {
            // Late arrivals (started while we waited) get no grace of their own.
            for pid in &left {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.len()
}

/// Stops the processes in `names`, deletes the namespaces, then stops any process that entered
/// one of them between the scan and the deletion (found by inode, so the name is not needed).
fn remove(names: &[String]) {
    let inodes: BTreeSet<u64> = names.iter().filter_map(|n| inode(n)).collect();
    stop_processes(&inodes);
    for n in names {
        let _ = Command::new("ip")
            .args(["netns", "del", n])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    stop_processes(&inodes);
}

/// Removes namespaces named `<prefix><pid>-...` left behind by a process that no longer runs
/// (a `kill -9`ed lab or test), with whatever still runs in them. Returns how many.
pub fn reap_stale(prefix: &str) -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return 0;
    };
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let pid = name.strip_prefix(prefix)?.split('-').next()?;
            (pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists())
                .then(|| name.to_string())
        })
        .collect();
    remove(&stale);
    stale.len()
}

/// Processes whose command line contains `needle` (this process excluded): how the tests
/// prove that nothing they started survives, by naming their private directory.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmd.contains(needle).then(|| (pid, cmd.trim().to_string()))
        })
        .collect()
}

/// A unique name stem: `<prefix><pid>-<counter>`.
pub fn unique_stem(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace owned by this process; removed on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `name` (which must not exist) with loopback up. Refused once [`cleanup_all`]
    /// ran: the lab is shutting down and nothing may be created behind the cleanup's back.
    pub fn create(name: &str) -> Result<Self> {
        {
            // Held across `ip netns add`, so a concurrent cleanup either sees this namespace
            // in the registry or runs before it exists and makes it refuse.
            let mut g = registry()
                .lock()
                .map_err(|_| anyhow::anyhow!("namespace registry poisoned"))?;
            if SHUTTING_DOWN.load(Ordering::SeqCst) {
                bail!("shutting down: not creating namespace {name}");
            }
            run(Command::new("ip").args(["netns", "add", name]))
                .with_context(|| format!("creating network namespace {name}"))?;
            g.insert(name.to_string());
        }
        let ns = Self {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.name).args(args);
        run(&mut c)
    }

    /// Runs `ip -n NS -batch -` with `batch` on stdin (one command per line; no file).
    pub fn ip_batch(&self, batch: &str) -> Result<String> {
        let mut c = Command::new("ip");
        c.arg("-n").arg(&self.name).args(["-batch", "-"]);
        run_with_input(&mut c, batch)
    }

    /// Loads an nft script inside the namespace with `nft -f -` on stdin (no file).
    pub fn nft(&self, script: &str) -> Result<String> {
        let mut c = self.command("nft");
        c.args(["-f", "-"]);
        run_with_input(&mut c, script)
    }

    /// The processes whose network namespace is this one.
    pub fn processes(&self) -> Vec<i32> {
        inode(&self.name)
            .map(|i| pids_in(&BTreeSet::from([i])))
            .unwrap_or_default()
    }

    /// A command that runs inside the namespace (`ip netns exec NS PROGRAM`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a program inside the namespace and returns stdout; fails with stderr on error.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut c = self.command(program);
        c.args(args);
        run(&mut c)
    }

    /// Writes a sysctl inside the namespace (never the root namespace). Done from a thread that
    /// entered the namespace, since `/proc/sys/net` shows the opening task's namespace; this
    /// needs no `sysctl` binary.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        let value = value.to_string();
        let key = key.to_string();
        self.spawn(move || std::fs::write(&path, value).with_context(|| format!("setting {key}")))?
            .join()
            .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
    }

    /// Reads a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let key = key.to_string();
        self.spawn(move || {
            std::fs::read_to_string(&path)
                .map(|v| v.trim().to_string())
                .with_context(|| format!("reading {key}"))
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("sysctl thread panicked"))?
    }

    /// Runs `f` on a new thread whose network namespace is this one. Sockets created there
    /// live in this namespace.
    pub fn spawn<T, F>(&self, f: F) -> Result<JoinHandle<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::Builder::new()
            .name(format!("ns-{}", self.name))
            .spawn(move || {
                match nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                    Ok(()) => {
                        let _ = tx.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        // Never run the closure outside its namespace. This happens when the
                        // namespace is removed (an interrupt's clean-up) between the open and
                        // the setns: the file is then a plain one. End only this thread, and
                        // quietly: the caller already has the error, and `resume_unwind`
                        // calls no panic hook.
                        std::panic::resume_unwind(Box::new(format!("setns: {e}")));
                    }
                }
                f()
            })
            .context("spawning namespace thread")?;
        match rx.recv() {
            Ok(Ok(())) => Ok(h),
            Ok(Err(e)) => bail!("setns into {}: {e}", self.name),
            Err(_) => bail!("namespace thread for {} died", self.name),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(std::slice::from_ref(&self.name));
        if let Ok(mut g) = registry().lock() {
            g.remove(&self.name);
        }
    }
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Runs a command, returning stdout or an error that includes the command and its stderr.
pub fn run(c: &mut Command) -> Result<String> {
    let out: Output = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            c,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on its stdin, returning stdout like [`run`].
pub fn run_with_input(c: &mut Command, input: &str) -> Result<String> {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {c:?}"))?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let input = input.to_string();
    // From another thread, so a command that writes a lot before reading all its input
    // cannot deadlock against us.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {c:?}"))?;
    let wrote = writer
        .join()
        .map_err(|_| anyhow::anyhow!("stdin writer panicked"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            c,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    wrote.with_context(|| format!("writing the input of {c:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interrupt's clean-up can remove a namespace between `spawn`'s open and its setns:
    /// the open then finds the plain file `ip netns del` has unmounted but not yet unlinked.
    /// That must be an error of this call, never an abort of the whole lab (a Ctrl-C then
    /// ended the lab with SIGABRT instead of 130).
    #[test]
    fn spawn_into_a_namespace_removed_under_it_is_an_error_not_an_abort() {
        let ns = Netns::create(&format!("mwtest{}-setns", std::process::id())).expect("netns");
        let path = format!("/run/netns/{}", ns.name());
        // `umount`, not nix's: its mount feature would change nix's symbol names in the
        // router's build too, and so stale the router's profiled code order.
        let st = Command::new("umount")
            .args(["-l", &path])
            .status()
            .expect("umount");
        assert!(st.success(), "umount {path}: {st}");
        assert!(std::fs::metadata(&path).expect("the file stays").is_file());
        let err = ns.spawn(|| 1).expect_err("ran outside its namespace");
        assert!(err.to_string().contains("setns into"), "{err}");
        drop(ns);
        assert!(!Path::new(&path).exists(), "{path} left behind");
    }
}
