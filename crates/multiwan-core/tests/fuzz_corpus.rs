//! Replays the `config_plan` fuzz target's committed inputs on stable: every example, seed
//! and regression goes through the same invariants as the fuzzer
//! (`multiwan_core::testkit::config_plan`), and every regression that names its expected
//! outcome (`expect: rejected` / `expect: accepted` in its first lines) still has it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn examples_and_seeds_pass_every_invariant() {
    let mut n = 0;
    for dir in ["examples", "fuzz/seeds/config_plan"] {
        for p in files(&root().join(dir)) {
            let bytes = std::fs::read(&p).expect("readable");
            let plans = multiwan_core::testkit::config_plan(&bytes);
            assert!(plans.is_some(), "{} should be accepted", p.display());
            n += 1;
        }
    }
    assert!(n >= 10, "expected the examples and seeds, found {n}");
}

#[test]
fn regressions_pass_every_invariant_and_keep_their_outcome() {
    let files = files(&root().join("fuzz/regressions/config_plan"));
    assert!(files.len() >= 7, "found {} regressions", files.len());
    for p in files {
        let bytes = std::fs::read(&p).expect("readable");
        let accepted = multiwan_core::testkit::config_plan(&bytes).is_some();
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
        if head.contains("expect: rejected") {
            assert!(!accepted, "{} must be rejected", p.display());
        } else if head.contains("expect: accepted") {
            assert!(accepted, "{} must be accepted", p.display());
        }
    }
}
