//! Every `examples/*.toml` parses, plans to exactly the reviewed ruleset (insta snapshots), and
//! is rejected at the right line and key once an unknown key is injected into any of its
//! tables — so the examples can never rot.

use std::collections::BTreeMap;
use std::path::PathBuf;

use multiwan_core::plan::{assign_ids, plan};
use multiwan_core::{load, Facts};

fn examples() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("readable"))
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 7,
        "expected the seed examples, found {}",
        out.len()
    );
    out
}

#[test]
fn every_example_plans_to_its_golden_ruleset() {
    for (name, text) in examples() {
        let cfg = load(&format!("{name}.toml"), &text)
            .unwrap_or_else(|e| panic!("{name} does not load:\n{e}"));
        let ids = assign_ids(&cfg, &BTreeMap::new()).expect("ids");
        let usable = cfg.uplinks.iter().map(|u| u.name.clone()).collect();
        let p = plan(&cfg, &ids, &usable, &Facts::default());
        insta::assert_snapshot!(name.clone(), p.to_string());
    }
}

/// Every table header of a file: (line index, key path of the table), e.g.
/// `(12, "uplink[1].check")`. The top level is `(None, "")`.
fn tables(text: &str) -> Vec<(Option<usize>, String)> {
    let mut out = vec![(None, String::new())];
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let path = if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let n = counts.entry(name.to_string()).or_default();
            *n += 1;
            format!("{name}[{}]", *n - 1)
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // `[uplink.check]` belongs to the latest `[[uplink]]`.
            match name.split_once('.') {
                Some((parent, child)) => format!("{parent}[{}].{child}", counts[parent] - 1),
                None => name.to_string(),
            }
        } else {
            continue;
        };
        out.push((Some(i), path));
    }
    out
}

/// The text with `surprise = 1` after each of the given header lines (`None`: at the top).
fn inject(text: &str, at: &[Option<usize>]) -> String {
    let mut out = String::new();
    if at.contains(&None) {
        out.push_str("surprise = 1\n");
    }
    for (i, line) in text.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        if at.contains(&Some(i)) {
            out.push_str("surprise = 1\n");
        }
    }
    out
}

#[test]
fn every_example_rejects_an_unknown_key_in_every_table() {
    for (name, text) in examples() {
        let tables = tables(&text);
        assert!(tables.len() >= 4, "{name}: {tables:?}");
        // The injected line's number: one past the header, and one more per injection
        // above it.
        let expect = |at: &[Option<usize>]| -> Vec<(usize, String)> {
            let mut lines: Vec<(usize, String)> = Vec::new();
            for (n, (header, path)) in tables.iter().filter(|t| at.contains(&t.0)).enumerate() {
                let line = header.map_or(1, |h| h + 2 + n);
                let key = if path.is_empty() {
                    "surprise".to_string()
                } else {
                    format!("{path}.surprise")
                };
                lines.push((line, key));
            }
            lines
        };
        for (header, path) in &tables {
            let err = load("x.toml", &inject(&text, &[*header])).expect_err(&name);
            let got: Vec<(usize, String)> = err
                .diagnostics
                .iter()
                .map(|d| (d.line, d.key.clone()))
                .collect();
            assert_eq!(got, expect(&[*header]), "{name}, table {path:?}: {err}");
            assert!(err.to_string().contains("unknown key"), "{name}: {err}");
        }
        // All at once: every one is reported, in file order.
        let all: Vec<Option<usize>> = tables.iter().map(|t| t.0).collect();
        let err = load("x.toml", &inject(&text, &all)).expect_err(&name);
        let got: Vec<(usize, String)> = err
            .diagnostics
            .iter()
            .map(|d| (d.line, d.key.clone()))
            .collect();
        assert_eq!(got, expect(&all), "{name}: {err}");
    }
}

#[test]
fn the_readme_configuration_reference_is_a_valid_config() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("a configuration reference");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let cfg = load("README.md", block).unwrap_or_else(|e| panic!("README reference:\n{e}"));
    // It shows every section.
    assert!(cfg.daemon.control_group.is_some() && cfg.daemon.metrics.is_some());
    assert!(!cfg.rules.is_empty() && cfg.uplinks[0].check.quality.is_some());
}
