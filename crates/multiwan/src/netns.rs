//! Network namespaces for the lab and the tests: create with a unique name, run commands or
//! threads inside, and always remove — on drop (panic included), and from a Ctrl-C handler
//! through a process-wide registry.
//!
//! **Invariant:** nothing here changes the root namespace. Interfaces are created directly
//! inside their namespaces (`ip -n NS link add ... peer ... netns OTHER`).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};

/// Names of namespaces this process created and has not removed yet.
fn registry() -> &'static Mutex<BTreeSet<String>> {
    static R: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// Removes every namespace this process still owns (for signal handlers and exit paths).
pub fn cleanup_all() {
    let names: Vec<String> = match registry().lock() {
        Ok(mut g) => std::mem::take(&mut *g).into_iter().collect(),
        Err(p) => std::mem::take(&mut *p.into_inner()).into_iter().collect(),
    };
    for n in names {
        delete(&n);
    }
}

fn delete(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Removes namespaces named `<prefix><pid>-...` left behind by a process that no longer runs
/// (a `kill -9`ed lab or test). Returns how many were removed.
pub fn reap_stale(prefix: &str) -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return 0;
    };
    let mut n = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            delete(name);
            n += 1;
        }
    }
    n
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
    /// Creates `name` (which must not exist) with loopback up.
    pub fn create(name: &str) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        registry()
            .lock()
            .map_err(|_| anyhow::anyhow!("namespace registry poisoned"))?
            .insert(name.to_string());
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
                        // Never run the closure outside its namespace.
                        std::process::abort();
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
        delete(&self.name);
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
