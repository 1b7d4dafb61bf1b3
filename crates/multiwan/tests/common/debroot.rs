//! A fresh Debian 12 root for the package and systemd tests: `scripts/debroot` caches a
//! debootstrap under the target directory, `scripts/deb` builds the package, and the tests'
//! shell scripts (tests/root/) mount an overlay on the cache inside private namespaces.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn stdout_last_line(c: &mut Command, what: &str) -> PathBuf {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().unwrap_or_default().trim())
}

/// The cached base root (made on first use: about 2 minutes).
pub fn base_root() -> PathBuf {
    stdout_last_line(
        Command::new(workspace().join("scripts/debroot")).env("CARGO_TARGET_DIR", target_dir()),
        "scripts/debroot",
    )
}

/// The package under test: `$MULTIWAN_DEB` (scripts/test builds it before `cargo test`), or
/// one built now in a target directory of its own (this `cargo test` holds the lock of the
/// usual one).
pub fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("MULTIWAN_DEB") {
        return PathBuf::from(p);
    }
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    stdout_last_line(
        Command::new(workspace().join("scripts/deb"))
            .env("CARGO_TARGET_DIR", target_dir().join("deb-target")),
        "scripts/deb",
    )
}

static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs tests/root/`script` with `args`; returns its output, failing the test (with that
/// output) when it exits non-zero.
pub fn run_script(script: &str, args: &[&Path]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/root")
        .join(script);
    let out = Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}
