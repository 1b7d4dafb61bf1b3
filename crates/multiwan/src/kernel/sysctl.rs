//! Sysctls: read and write through `/proc/sys` (no process), and the values `apply` replaced,
//! saved per network namespace in the run directory so `down` can restore them. Only keys are
//! saved; paths are always derived from a key by the pure core ([`sysctl_path`]), which knows
//! the few keys multiwan may set — a tampered state file cannot make `down` write elsewhere.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use multiwan_core::plan::{sysctl_path, Sysctl};
use serde_json::Value;

fn path_of(key: &str) -> Result<String> {
    sysctl_path(key).ok_or_else(|| anyhow!("{key:?} is not a sysctl multiwan manages"))
}

/// The current value of `key`.
pub fn read(key: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path_of(key)?)
        .with_context(|| format!("reading {key}"))?
        .trim()
        .to_string())
}

/// Sets `key`.
pub fn write(key: &str, value: &str) -> Result<()> {
    std::fs::write(path_of(key)?, value).with_context(|| format!("setting {key} = {value}"))
}

/// Whether `key` exists here (an interface's keys go with the interface).
pub fn exists(key: &str) -> bool {
    sysctl_path(key).is_some_and(|p| Path::new(&p).exists())
}

/// Sets every sysctl that differs; returns the values they had, in order.
pub fn apply(sysctls: &[Sysctl]) -> Result<Vec<(String, String)>> {
    let mut previous = Vec::new();
    for s in sysctls {
        let current = read(&s.key)?;
        if current != s.value {
            if let Err(e) = write(&s.key, &s.value) {
                restore(&previous);
                return Err(e);
            }
            previous.push((s.key.clone(), current));
        }
    }
    Ok(previous)
}

/// Puts back values returned by [`apply`] (best effort, newest first).
pub fn restore(previous: &[(String, String)]) {
    for (k, v) in previous.iter().rev() {
        if let Err(e) = write(k, v) {
            tracing::error!(error = %format!("{e:#}"), "rollback of a sysctl failed");
        }
    }
}

/// Saved original values, keyed by network namespace so several namespaces sharing `/run`
/// never mix their state.
fn state_name() -> Result<String> {
    Ok(format!(
        "sysctl-saved-netns{}.json",
        crate::rundir::netns_id()?
    ))
}

/// Reads the saved values: key → value. Older files stored `[path, value]` pairs; the path is
/// ignored.
fn load(run_dir: &Path, name: &str) -> Result<BTreeMap<String, String>> {
    let path = run_dir.join(name);
    let text = match crate::rundir::read_file(run_dir, name)
        .with_context(|| format!("reading {}", path.display()))?
    {
        Some(t) => t,
        None => return Ok(BTreeMap::new()),
    };
    // As text, like every other JSON the router reads (one parser in the binary).
    let v: BTreeMap<String, Value> = std::str::from_utf8(&text)
        .map_err(anyhow::Error::from)
        .and_then(|t| serde_json::from_str(t).map_err(anyhow::Error::from))
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (k, v) in v {
        let value = match &v {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .get(1)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}: bad entry for {k}", path.display()))?,
            _ => return Err(anyhow!("{}: bad entry for {k}", path.display())),
        };
        out.insert(k, value);
    }
    Ok(out)
}

/// Whether the values saved by an earlier apply can be read (there are none yet, or they
/// parse): an apply must not replace values it could not merge into them.
pub fn check_saved(run_dir: &Path) -> Result<()> {
    load(run_dir, &state_name()?).map(drop)
}

/// Merges newly replaced values into the saved state; values saved by an earlier apply win,
/// since they are what the system had before multiwan.
pub fn save(run_dir: &Path, changed: &[(String, String)]) -> Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let name = state_name()?;
    let mut saved = load(run_dir, &name)?;
    for (k, v) in changed {
        saved.entry(k.clone()).or_insert_with(|| v.clone());
    }
    crate::rundir::prepare(run_dir)?;
    crate::rundir::write_file_atomic(
        run_dir,
        &name,
        serde_json::to_string_pretty(&saved)?.as_bytes(),
    )
    .with_context(|| format!("saving the replaced sysctls in {}", run_dir.display()))
}

/// Puts back the saved value of every key `planned` no longer sets — the interface of an
/// uplink a reload removed keeps its `rp_filter` no longer — and forgets it; returns how many
/// were written (a key whose interface is gone went with it).
pub fn restore_unplanned(run_dir: &Path, planned: &[Sysctl]) -> Result<usize> {
    let name = state_name()?;
    let mut saved = load(run_dir, &name)?;
    let gone: Vec<String> = saved
        .keys()
        .filter(|k| !planned.iter().any(|s| &s.key == *k))
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(0);
    }
    let mut n = 0;
    for key in &gone {
        let Some(value) = saved.remove(key) else {
            continue;
        };
        path_of(key)?;
        if exists(key) {
            write(key, &value)?;
            n += 1;
        }
    }
    if saved.is_empty() {
        let path = run_dir.join(&name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    } else {
        crate::rundir::write_file_atomic(
            run_dir,
            &name,
            serde_json::to_string_pretty(&saved)?.as_bytes(),
        )
        .with_context(|| format!("saving the replaced sysctls in {}", run_dir.display()))?;
    }
    Ok(n)
}

/// Restores every saved value whose key still exists and forgets them; returns how many.
pub fn restore_saved(run_dir: &Path) -> Result<usize> {
    let name = state_name()?;
    let path = run_dir.join(&name);
    let saved = load(run_dir, &name)?;
    let mut n = 0;
    for (key, value) in &saved {
        // An interface may be gone by now; its sysctl went with it. Unknown keys are refused.
        path_of(key)?;
        if exists(key) {
            write(key, value)?;
            n += 1;
        }
    }
    if path.exists() {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(n)
}
