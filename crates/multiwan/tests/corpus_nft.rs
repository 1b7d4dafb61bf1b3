//! Every accepted config's ruleset loads: each example, fuzz seed, regression and (when a
//! fuzzing run left one) fuzz corpus input that `load` accepts is planned as the fuzz target
//! plans it (offline and with every interface present, all/some/no uplinks usable), and each
//! transaction is checked by the kernel with `nft -c -f -` (stdin) inside a fresh namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use multiwan_lab::netns::{unique_stem, Netns};
use multiwan_lab::topology::NS_PREFIX;

/// At most this many inputs from a fuzzing run's corpus (each costs a few nft runs).
const MAX_FUZZ_CORPUS: usize = 300;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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

/// `nft -c -f -` inside `ns`: the kernel validates the transaction and changes nothing.
fn nft_check(ns: &Netns, script: &str) -> Result<(), String> {
    let mut child = ns
        .command("nft")
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn every_accepted_corpus_config_loads_with_nft_check() {
    let ns = Netns::create(&unique_stem(NS_PREFIX)).expect("namespace");
    let mut inputs = Vec::new();
    for dir in [
        "examples",
        "fuzz/seeds/config_plan",
        "fuzz/regressions/config_plan",
    ] {
        inputs.extend(files(&root().join(dir)));
    }
    let fuzzed = files(&root().join("fuzz/corpus/config_plan"));
    inputs.extend(fuzzed.into_iter().take(MAX_FUZZ_CORPUS));
    let (mut accepted, mut checked) = (0, 0);
    for p in &inputs {
        let bytes = std::fs::read(p).expect("readable");
        let Some(plans) = multiwan_core::testkit::config_plan(&bytes) else {
            continue;
        };
        accepted += 1;
        // Identical transactions (a plan that does not depend on the facts) are checked once.
        let mut seen = std::collections::BTreeSet::new();
        for plan in plans {
            let script = plan.nft_transaction();
            if seen.insert(script.clone()) {
                if let Err(e) = nft_check(&ns, &script) {
                    panic!("{}: nft -c refused the plan:\n{e}\n{script}", p.display());
                }
                checked += 1;
            }
        }
    }
    eprintln!(
        "{} inputs, {accepted} accepted, {checked} transactions checked",
        inputs.len()
    );
    assert!(accepted >= 10, "only {accepted} accepted configs");
    assert!(
        checked >= accepted,
        "{checked} transactions for {accepted} configs"
    );
    // The namespace really is the kernel's judge: a broken transaction is refused.
    assert!(nft_check(&ns, "table inet multiwan { chain c { goto nowhere } }").is_err());
}
