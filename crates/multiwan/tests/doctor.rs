//! `multiwan doctor` in namespaces where each condition it reports is created for real:
//! Tailscale-style fwmark rules and table 52, another nftables table and an iptables-nft rule
//! that set mark bits, iptables-legacy rules, strict rp_filter, IPv6 forwarding without
//! accept_ra = 2, missing and down interfaces; and a working lab router (with multiwan's own
//! state applied) that has no blocker.

mod common;

use common::{two_uplinks_checked, Lab};
use multiwan_lab::netns::{unique_stem, Netns};
use serde_json::Value;

fn doctor(ns: &Netns, config: &str) -> (i32, Value) {
    let out = ns
        .command(common::bin())
        .args(["doctor", "--json", "-c", config])
        .output()
        .expect("run doctor");
    let code = out.status.code().unwrap_or(-1);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

fn codes(report: &Value, severity: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["severity"] == severity)
        .map(|f| f["code"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn doctor_reports_each_conflict_it_is_made_to_see() {
    common::require_root();
    let ns = Netns::create(&unique_stem("mwdoc")).expect("netns");
    let batch = "link add wan1 type veth peer name lan0
link set lan0 up
addr add 10.37.1.2/24 dev wan1
rule add fwmark 0x80000/0xff0000 table main priority 5210
rule add table 52 priority 5270
rule add iif lan0 table 200 priority 5300
";
    ns.ip_batch(batch).expect("ip");
    ns.nft("table ip vpnmark {\n chain out {\n  type route hook output priority mangle;\n  meta mark set meta mark | 0x40000\n }\n}\n")
        .expect("nft");
    ns.exec(
        "iptables-legacy",
        &["-t", "mangle", "-A", "OUTPUT", "-j", "ACCEPT"],
    )
    .expect("iptables-legacy");
    ns.exec(
        "iptables-nft",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-j",
            "MARK",
            "--set-xmark",
            "0x1000000/0x1000000",
        ],
    )
    .expect("iptables-nft");
    for (k, v) in [
        ("net.ipv4.conf.all.rp_filter", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.wan1.accept_ra", "1"),
    ] {
        ns.sysctl(k, v).expect("sysctl");
    }
    let dir = multiwan_lab::scratch::private_dir("doctor").expect("dir");
    let cfg = dir.path().join("multiwan.toml");
    // mark_mask 0xff000000 covers the iptables-nft mark only; the default covers Tailscale's.
    let text = r#"[lan]
interfaces = ["lan0"]
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
[uplink.check]
targets = ["192.0.2.1"]
[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
[uplink.check]
targets = ["198.51.100.1"]
"#;
    std::fs::write(&cfg, format!("[kernel]\nmark_mask = 0xff000000\n{text}")).expect("write");
    let (code, r) = doctor(&ns, &cfg.display().to_string());
    assert_eq!(r["version"], 1);
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(r["exit_code"], 2);
    let blockers = codes(&r, "blocker");
    let warnings = codes(&r, "warning");
    let infos = codes(&r, "info");
    assert!(blockers.contains(&"interface-missing".into()), "{r:#}");
    assert!(blockers.contains(&"mark-overlap".into()), "{r:#}");
    let overlap = r["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["code"] == "mark-overlap")
        .expect("overlap");
    assert!(
        overlap["what"]
            .as_str()
            .unwrap_or_default()
            .contains("iptables table mangle"),
        "{overlap}"
    );
    for w in ["interface-down", "iptables-legacy", "rule-iif-unseen"] {
        assert!(warnings.contains(&w.to_string()), "no {w}: {r:#}");
    }
    // Tailscale's table 52 sees unmarked traffic before multiwan's rules: nothing to warn.
    let iif: Vec<&Value> = r["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["code"] == "rule-iif-unseen")
        .collect();
    assert_eq!(iif.len(), 1, "only the iif rule: {iif:#?}");
    assert!(iif[0]["what"]
        .as_str()
        .unwrap_or_default()
        .contains("ip rule 5300"));
    assert!(infos.contains(&"rp-filter-strict".into()), "{r:#}");
    // No advertised route on wan1 now (it is down): worth knowing, not a warning.
    assert!(infos.contains(&"ipv6-accept-ra".into()), "{r:#}");
    // Every finding carries its fix.
    for f in r["findings"].as_array().expect("findings") {
        assert!(!f["fix"].as_str().unwrap_or_default().is_empty(), "{f}");
    }
    // With the default mask, Tailscale's rule mark and the nft table's bits overlap it.
    std::fs::write(&cfg, text).expect("write");
    let (_, r) = doctor(&ns, &cfg.display().to_string());
    let overlaps: Vec<&str> = r["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["code"] == "mark-overlap")
        .filter_map(|f| f["what"].as_str())
        .collect();
    let mask = multiwan_core::model::DEFAULT_MARK_MASK;
    assert_eq!(
        overlaps.iter().any(|w| w.contains("ip rule 5210")),
        0x00ff_0000 & mask != 0,
        "{overlaps:?}"
    );
    assert_eq!(
        overlaps
            .iter()
            .any(|w| w.contains("nftables table ip vpnmark")),
        0x0004_0000 & mask != 0,
        "{overlaps:?}"
    );
    // Read-only: the namespace is exactly as the test made it.
    assert!(ns
        .exec("nft", &["list", "tables"])
        .expect("nft")
        .contains("vpnmark"));
    assert!(!ns
        .exec("nft", &["list", "tables"])
        .expect("nft")
        .contains("multiwan"));
    assert_eq!(ns.read_sysctl("net.ipv4.ip_forward").expect("sysctl"), "0");
}

#[test]
fn doctor_on_a_working_router_finds_no_blocker_even_with_multiwan_applied() {
    let lab = Lab::new(2, 1);
    let cfg = lab.write_config(&two_uplinks_checked("round-robin"));
    let (code, before) = doctor(&lab.topo.router, &cfg);
    assert!(codes(&before, "blocker").is_empty(), "{before:#}");
    // The only warning: the one probe target every uplink shares.
    assert_eq!(codes(&before, "warning"), ["probe-targets"], "{before:#}");
    assert_eq!(code, 1);
    lab.apply(&two_uplinks_checked("round-robin"));
    let (code, after) = doctor(&lab.topo.router, &cfg);
    assert_eq!(
        code, 1,
        "multiwan's own rules, tables and marks are not conflicts: {after:#}"
    );
    assert_eq!(codes(&after, "warning"), ["probe-targets"], "{after:#}");
    // The config edited since (other weights: other map elements than the installed ones)
    // loads as well: `nft -c` of the plan must not clash with the installed table.
    let edited = lab.write_config(&two_uplinks_checked("round-robin").replacen(
        "name = \"isp1\"",
        "name = \"isp1\"\nweight = 3",
        1,
    ));
    let (code, edited) = doctor(&lab.topo.router, &edited);
    assert!(codes(&edited, "blocker").is_empty(), "{edited:#}");
    assert_eq!(code, 1, "{edited:#}");
    lab.down();
}

#[test]
fn doctor_without_a_config_still_checks_the_system_against_the_defaults() {
    common::require_root();
    let ns = Netns::create(&unique_stem("mwdoc0")).expect("netns");
    // A foreign rule whose mark overlaps the default mask, and strict rp_filter.
    let mask = multiwan_core::model::DEFAULT_MARK_MASK;
    let bit = mask & mask.wrapping_neg();
    ns.ip_batch(&format!(
        "rule add fwmark {bit:#x}/{bit:#x} table main priority 5000\n"
    ))
    .expect("ip");
    ns.sysctl("net.ipv4.conf.all.rp_filter", "1")
        .expect("sysctl");
    let dir = multiwan_lab::scratch::private_dir("doctor0").expect("dir");
    let missing = dir.path().join("multiwan.toml");
    let (code, r) = doctor(&ns, &missing.display().to_string());
    assert_eq!(code, 2, "{r:#}");
    let blockers = codes(&r, "blocker");
    assert_eq!(blockers[0], "no-config", "first: {r:#}");
    assert!(blockers.contains(&"mark-overlap".into()), "{r:#}");
    assert!(
        codes(&r, "info").contains(&"rp-filter-strict".into()),
        "{r:#}"
    );
    assert!(!missing.exists(), "doctor creates nothing");
}

fn findings<'a>(report: &'a Value, code: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["code"] == code)
        .collect()
}

const ONE: &str = r#"[lan]
interfaces = ["lan0"]
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
[uplink.check]
targets = ["192.0.2.1"]
"#;

#[test]
fn doctor_sees_foreign_rules_that_overwrite_the_mark() {
    common::require_root();
    let ns = Netns::create(&unique_stem("mwdocw")).expect("netns");
    ns.ip_batch("link add wan1 type veth peer name lan0\nlink set wan1 up\nlink set lan0 up\naddr add 10.37.1.2/24 dev wan1\n")
        .expect("ip");
    ns.nft("table inet fw {\n chain pre {\n  type filter hook prerouting priority mangle - 5; policy accept;\n  iifname \"lan0\" ct mark set 0x20\n }\n chain late {\n  type filter hook prerouting priority mangle + 5; policy accept;\n  meta mark set 0x10\n }\n}\n")
        .expect("nft");
    // The standard wg-quick rule: handled by skipping its mark, not a blocker.
    ns.ip_batch("rule add not fwmark 0xca6c table 51820 priority 32760\n")
        .expect("ip");
    let dir = multiwan_lab::scratch::private_dir("doctorw").expect("dir");
    let cfg = dir.path().join("multiwan.toml");
    std::fs::write(&cfg, ONE).expect("write");
    let (code, r) = doctor(&ns, &cfg.display().to_string());
    assert_eq!(code, 2, "{r:#}");
    let overlaps = findings(&r, "mark-overlap");
    let what: Vec<&str> = overlaps.iter().filter_map(|f| f["what"].as_str()).collect();
    assert_eq!(overlaps.len(), 2, "{what:#?}");
    assert!(
        what.iter()
            .any(|w| w.contains("chain pre") && w.contains("connection mark to 0x20")),
        "{what:#?}"
    );
    assert!(
        what.iter()
            .any(|w| w.contains("chain late") && w.contains("packet mark to 0x10")),
        "{what:#?}"
    );
    assert!(!what.iter().any(|w| w.contains("ip rule")), "{what:#?}");
    let handled = findings(&r, "mark-rule-handled");
    assert_eq!(handled.len(), 1, "{r:#}");
    assert_eq!(handled[0]["severity"], "info");
    // Without the nft table only the note is left: nothing blocks.
    ns.nft("delete table inet fw\n").expect("nft");
    let (code, r) = doctor(&ns, &cfg.display().to_string());
    assert!(codes(&r, "blocker").is_empty(), "{r:#}");
    assert!(code < 2);
}

#[test]
fn doctor_checks_ipv6_uplinks_and_bypassed_iif_rules() {
    common::require_root();
    let ns = Netns::create(&unique_stem("mwdoc6")).expect("netns");
    ns.ip_batch("link add wan1 type veth peer name wan1p\nlink add wan2 type veth peer name wan2p\nlink add lan0 type veth peer name lan0p\n")
        .expect("ip");
    for i in ["wan1", "wan1p", "wan2", "wan2p", "lan0", "lan0p"] {
        ns.ip(&["link", "set", i, "up"]).expect("up");
    }
    ns.ip_batch("addr add 10.37.1.2/24 dev wan1\naddr add 10.37.2.2/24 dev wan2\naddr add 2001:db8:2::2/64 dev wan2 nodad\naddr add 192.168.157.1/24 dev lan0\nrule add priority 1500 iif lan0 lookup 300\n")
        .expect("ip");
    let dir = multiwan_lab::scratch::private_dir("doctor6").expect("dir");
    let cfg = dir.path().join("multiwan.toml");
    let text = r#"[lan]
interfaces = ["lan0"]
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
gateway6 = "auto"
[uplink.check]
targets = ["192.0.2.1", "2001:db8:ffff::1"]
[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
gateway6 = "2001:db8:9::1"
[uplink.check]
targets = ["198.51.100.1", "2001:db8:fffe::1"]
"#;
    std::fs::write(&cfg, text).expect("write");
    let (code, r) = doctor(&ns, &cfg.display().to_string());
    assert_eq!(code, 1, "{r:#}");
    let warnings = codes(&r, "warning");
    for w in [
        "auto-gateway6-missing",
        "interface-no-address6",
        "gateway6-off-link",
        "rule-iif-unseen",
    ] {
        assert!(warnings.contains(&w.to_string()), "no {w}: {r:#}");
    }
    assert_eq!(
        findings(&r, "interface-no-address6").len(),
        1,
        "wan2 has one: {r:#}"
    );
    assert!(
        codes(&r, "info").contains(&"ipv6-forward-off".into()),
        "{r:#}"
    );
    // Following the iif finding's own fix clears it.
    let fix = findings(&r, "rule-iif-unseen")[0]["fix"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let suggested = r#"[[rule]] name = "bypass_lan0" src = ["192.168.157.0/24"] mode = "bypass""#;
    assert!(fix.contains(suggested), "{fix}");
    let rule =
        "[[rule]]\nname = \"bypass_lan0\"\nsrc = [\"192.168.157.0/24\"]\nmode = \"bypass\"\n";
    std::fs::write(&cfg, format!("{text}{rule}")).expect("write");
    let (_, r) = doctor(&ns, &cfg.display().to_string());
    assert!(findings(&r, "rule-iif-unseen").is_empty(), "{r:#}");
}

#[test]
fn doctor_json_reports_an_invalid_config_as_a_blocker() {
    common::require_root();
    let ns = Netns::create(&unique_stem("mwdocx")).expect("netns");
    let dir = multiwan_lab::scratch::private_dir("doctorx").expect("dir");
    let cfg = dir.path().join("multiwan.toml");
    std::fs::write(&cfg, ONE.replace("gateway = ", "weight = 0\ngateway = ")).expect("write");
    let (code, r) = doctor(&ns, &cfg.display().to_string());
    assert_eq!(code, 2, "{r:#}");
    assert_eq!(r["exit_code"], 2);
    let f = findings(&r, "config-invalid");
    assert_eq!(f.len(), 1, "{r:#}");
    assert_eq!(f[0]["severity"], "blocker");
    let what = f[0]["what"].as_str().unwrap_or_default();
    assert!(
        what.contains(&format!("{}:6:", cfg.display())),
        "file:line:col: {what}"
    );
    assert!(what.contains("weight"), "{what}");
}
