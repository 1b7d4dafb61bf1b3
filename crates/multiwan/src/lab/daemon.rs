//! `multiwan run` started inside the lab's router namespace, shared by `multiwan lab`, the
//! benchmarks and the namespace tests: start it, read its `state.json`, signal and stop it.
//! Dropping it stops the daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::topology::Topology;

/// A running daemon.
#[derive(Debug)]
pub struct LabDaemon {
    pub child: Child,
    /// Its `state.json`.
    pub state_path: PathBuf,
    log: PathBuf,
}

impl LabDaemon {
    /// Starts `multiwan run -c CFG --run-dir RUN_DIR` (with `--cleanup` if asked) in the
    /// router namespace, logging to `log`, and waits until it has written its first state.
    pub fn start(
        topo: &Topology,
        bin: &Path,
        cfg: &str,
        run_dir: &Path,
        log: &Path,
        cleanup: bool,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut c = topo.router.command(bin);
        c.arg("run");
        if cleanup {
            c.arg("--cleanup");
        }
        c.args(["-c", cfg, "--run-dir"])
            .arg(run_dir)
            .env("MULTIWAN_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        let child = c.spawn().context("starting multiwan run")?;
        let mut d = Self {
            child,
            state_path: run_dir.join("state.json"),
            log: log.to_path_buf(),
        };
        let start = Instant::now();
        while !d.state_path.exists() {
            if let Some(status) = d.child.try_wait()? {
                bail!("multiwan run exited ({status}):\n{}", d.log());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("multiwan run did not start within 10 s:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's state.json, once written.
    pub fn state(&self) -> Option<Value> {
        let text = std::fs::read_to_string(&self.state_path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// (uplink, state with its reason) for every uplink.
    pub fn states(&self) -> Vec<(String, String)> {
        let v = self.state().unwrap_or_default();
        v["uplinks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| {
                let name = u["name"].as_str().unwrap_or("?").to_string();
                let state = u["state"].as_str().unwrap_or("?");
                let state = match u["detail"].as_str() {
                    Some(d) => format!("{state} ({d})"),
                    None => state.to_string(),
                };
                (name, state)
            })
            .collect()
    }

    /// `up`, `degraded` or `down` for one uplink.
    pub fn uplink_state(&self, name: &str) -> Option<String> {
        let v = self.state()?;
        v["uplinks"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == name)
            .and_then(|u| u["state"].as_str().map(String::from))
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .context("signalling the daemon")
    }

    /// Stops the daemon (SIGTERM) and checks that it exited cleanly.
    pub fn stop(mut self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("multiwan run exited with {status}");
        }
        Ok(())
    }
}

impl Drop for LabDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}
