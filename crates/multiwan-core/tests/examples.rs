//! Every `examples/*.toml` parses, plans to exactly the reviewed ruleset (insta snapshots), and
//! is rejected once an unknown key is injected — so the examples can never rot.

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

#[test]
fn every_example_rejects_an_injected_unknown_key() {
    for (name, text) in examples() {
        // Into the first table of the file, right after its header.
        let header_end = text.find("]\n").expect("a table header") + 2;
        let injected = format!(
            "{}surprise = 1\n{}",
            &text[..header_end],
            &text[header_end..]
        );
        let line = text[..header_end].matches('\n').count() + 1;
        let err = load("x.toml", &injected).expect_err(&name);
        let d = &err.diagnostics[0];
        assert_eq!(d.line, line, "{name}: {err}");
        assert!(err.to_string().contains("surprise"), "{name}: {err}");
    }
}
