//! Finding the `multiwan` router binary the lab drives: `--multiwan PATH`, else
//! `$MULTIWAN_BIN`, else a `multiwan` next to the running executable (where cargo puts both).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The environment variable naming the router binary.
pub const ENV: &str = "MULTIWAN_BIN";

/// Resolves the router binary from an explicit path, the environment, or the directory of
/// `exe` (the lab's own executable, or a test binary's `CARGO_BIN_EXE_multiwan-lab`).
pub fn find(explicit: Option<&Path>, exe: &Path) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return check(p, "--multiwan");
    }
    if let Some(p) = std::env::var_os(ENV).filter(|v| !v.is_empty()) {
        return check(Path::new(&p), &format!("${ENV}"));
    }
    let dir = exe
        .parent()
        .with_context(|| format!("{} has no directory", exe.display()))?;
    let beside = dir.join("multiwan");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "cannot find the multiwan router binary: not given with --multiwan PATH or ${ENV}, and \
         there is no {} (build it with `cargo build -p multiwan`, or use ./scripts/lab)",
        beside.display()
    )
}

fn check(p: &Path, source: &str) -> Result<PathBuf> {
    if !p.is_file() {
        bail!("{source} names {}, which is not a file", p.display());
    }
    // Absolute, so a command started in a namespace or another directory finds the same file.
    std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_must_exist() {
        let err = find(
            Some(Path::new("/nonexistent/multiwan")),
            Path::new("/bin/sh"),
        )
        .expect_err("no such file");
        assert!(
            err.to_string()
                .contains("--multiwan names /nonexistent/multiwan"),
            "{err}"
        );
    }

    #[test]
    fn an_explicit_path_wins_and_is_made_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("mw");
        std::fs::write(&bin, "").expect("write");
        let found = find(Some(&bin), Path::new("/nonexistent/lab")).expect("found");
        assert_eq!(found, std::fs::canonicalize(&bin).expect("canonical"));
    }
}
