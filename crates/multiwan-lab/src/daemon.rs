//! `multiwan run` started inside the lab's router namespace, shared by the lab, the
//! benchmarks and the router's namespace tests: start it, read its `state.json` and its log
//! lines (with their timestamps), signal and stop it. Dropping it stops the daemon: SIGTERM,
//! then SIGKILL after a grace, and the child is always reaped.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::topology::{Family, Topology};

/// A running daemon.
#[derive(Debug)]
pub struct LabDaemon {
    pub child: Child,
    /// Its `state.json`.
    pub state_path: PathBuf,
    run_dir: PathBuf,
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
            run_dir: run_dir.to_path_buf(),
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

    /// How many bytes the daemon has logged so far: an offset for [`Self::log_since`].
    pub fn log_len(&self) -> usize {
        std::fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// The log lines written after byte `offset`, with their timestamps.
    pub fn log_since(&self, offset: usize) -> Vec<LogLine> {
        self.log()
            .get(offset..)
            .unwrap_or("")
            .lines()
            .map(LogLine::parse)
            .collect()
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
                let mut state = match u["detail"].as_str() {
                    Some(d) => format!("{state} ({d})"),
                    None => state.to_string(),
                };
                if let Some(s6) = u["ipv6"]["state"].as_str() {
                    state = format!("IPv4 {state}, IPv6 {s6}");
                    if let Some(d) = u["ipv6"]["detail"].as_str() {
                        state += &format!(" ({d})");
                    }
                }
                (name, state)
            })
            .collect()
    }

    /// `up`, `degraded` or `down` for one uplink (its IPv4 state: `state.json` keeps IPv4 at
    /// the top of each uplink and IPv6 in an `ipv6` object).
    pub fn uplink_state(&self, name: &str) -> Option<String> {
        self.uplink_state_of(name, Family::V4)
    }

    /// `up`, `degraded` or `down` for one family of one uplink; None if the uplink does not
    /// carry that family (no `gateway6`) or there is no state yet.
    pub fn uplink_state_of(&self, name: &str, family: Family) -> Option<String> {
        let v = self.state()?;
        let u = v["uplinks"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == name)?;
        let f = match family {
            Family::V4 => u,
            Family::V6 => &u["ipv6"],
        };
        f["state"].as_str().map(String::from)
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig)
            .context("signalling the daemon")
    }

    /// Stops the daemon (SIGTERM) and checks that it exited cleanly within 10 s and that no
    /// process naming its run directory (a hook, a second daemon) survived it.
    pub fn stop(mut self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = wait_bounded(&mut self.child, Duration::from_secs(10))?;
        let Some(status) = status else {
            bail!(
                "multiwan run ignored SIGTERM for 10 s and was killed:\n{}",
                self.log()
            );
        };
        if !status.success() {
            bail!("multiwan run exited with {status}");
        }
        let left = crate::netns::processes_mentioning(&self.run_dir.display().to_string());
        if !left.is_empty() {
            bail!("processes outlived the daemon: {left:?}");
        }
        Ok(())
    }
}

/// Waits up to `limit` for the child; kills it (and reaps it) if it has not exited by then.
/// `Ok(None)` means it had to be killed.
fn wait_bounded(child: &mut Child, limit: Duration) -> Result<Option<std::process::ExitStatus>> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait()?;
    Ok(None)
}

impl Drop for LabDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = wait_bounded(&mut self.child, Duration::from_secs(5));
        }
    }
}

/// One line of the daemon's log (tracing's plain format:
/// `2026-01-02T03:04:05.678901Z  INFO target: message key=value ...`).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When the daemon wrote it, in seconds since the Unix epoch (the system clock, the same
    /// one [`std::time::SystemTime`] reads here), if the line starts with a timestamp.
    pub unix_s: Option<f64>,
    pub text: String,
}

impl LogLine {
    /// Reads one line of the daemon's log.
    pub fn parse(line: &str) -> Self {
        Self {
            unix_s: line.split_whitespace().next().and_then(parse_utc),
            text: line.to_string(),
        }
    }

    /// Whether the message (or anything on the line) contains `s`.
    pub fn has(&self, s: &str) -> bool {
        self.text.contains(s)
    }

    /// The value of `key=value` on the line, without quotes.
    pub fn field(&self, key: &str) -> Option<&str> {
        let pat = format!(" {key}=");
        let rest = &self.text[self.text.find(&pat)? + pat.len()..];
        let v = rest.split_whitespace().next()?;
        Some(v.trim_matches('"'))
    }

    /// A numeric field such as `took_ms`.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.field(key)?.parse().ok()
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac]Z` → seconds since the Unix epoch.
fn parse_utc(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from the civil date (the proleptic Gregorian calendar), counting years from March
    // so that the leap day is the last day of the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// Seconds since the Unix epoch now, on the clock the daemon's log timestamps use.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_utc("2000-03-01T00:00:00.5Z"), Some(951_868_800.5));
        assert_eq!(
            parse_utc("2024-02-29T12:34:56.250000Z"),
            Some(1_709_210_096.25)
        );
        assert_eq!(parse_utc("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc("INFO"), None);
    }

    #[test]
    fn reads_fields() {
        let l = LogLine::parse(
            "2024-02-29T12:34:56.250000Z  INFO multiwan::daemon: kernel updated took_ms=42 usable={\"a\"} uplink=\"isp1\"",
        );
        assert_eq!(l.unix_s, Some(1_709_210_096.25));
        assert_eq!(l.number("took_ms"), Some(42.0));
        assert_eq!(l.field("uplink"), Some("isp1"));
        assert_eq!(l.field("missing"), None);
        assert!(l.has("kernel updated"));
    }
}
