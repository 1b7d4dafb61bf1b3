//! Config contract tests: defaults, every error path, positions and key paths.

use super::*;

const FULL: &str = r#"
[lan]
interfaces = ["eth0"]

[[uplink]]
name = "isp1"
interface = "eth1"
gateway = "10.37.1.1"
weight = 3
tier = 1
snat = "auto"
[uplink.check]
targets = ["10.37.1.1"]
method = "icmp"
interval = "500ms"
timeout = "1s"
down_after = 3
up_after = 5
min_targets = 1

[[uplink]]
name = "isp2"
interface = "eth2"
gateway = "10.37.2.1"

[balance]
method = "round-robin"
local = true

[[rule]]
name = "web-228"
src = ["192.168.0.228"]
proto = "tcp"
dport = ["80"]
uplinks = ["isp2"]
mode = "balance"
"#;

fn errs(text: &str) -> Vec<String> {
    load("t.toml", text)
        .expect_err("config should be rejected")
        .diagnostics
        .iter()
        .map(|d| d.to_string())
        .collect()
}

#[test]
fn issue_example_loads_with_defaults() {
    let c = load("t.toml", FULL).expect("valid");
    assert_eq!(c.lan.interfaces, vec!["eth0"]);
    assert_eq!(c.uplinks.len(), 2);
    assert_eq!(c.uplinks[0].weight, 3);
    assert_eq!(c.uplinks[1].weight, 1);
    assert_eq!(c.uplinks[1].tier, 1);
    assert_eq!(c.uplinks[1].snat, Snat::Auto);
    assert_eq!(c.uplinks[0].check.interval, Duration::from_millis(500));
    assert_eq!(c.uplinks[1].check.interval, check_defaults::INTERVAL);
    assert_eq!(
        c.uplinks[1].check.targets,
        vec!["10.37.2.1:0".parse().unwrap()]
    );
    assert_eq!(c.balance.method, Method::RoundRobin);
    assert!(c.balance.local);
    assert_eq!(c.rules[0].uplinks, vec![1]);
    assert_eq!(c.rules[0].dport, vec![PortRange { lo: 80, hi: 80 }]);
    assert_eq!(c.kernel, KernelOpts::default());
}

#[test]
fn unknown_key_points_at_it() {
    let e = errs("[lan]\ninterfaces = [\"eth0\"]\nbogus = 1\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.toml:3:1:"), "{e:?}");
    assert!(e[0].contains("bogus"), "{e:?}");
}

#[test]
fn syntax_error_has_position() {
    let e = errs("[lan\n");
    assert!(e[0].starts_with("t.toml:1:"), "{e:?}");
}

#[test]
fn collects_all_errors_with_keys_and_positions() {
    let text = r#"[lan]
interfaces = ["eth0"]

[[uplink]]
name = "ISP 1"
interface = "eth1"
gateway = "10.37.1"
weight = 0

[[uplink]]
name = "isp2"
interface = "eth2"
gateway = "10.37.2.1"
snat = "yes"
[uplink.check]
interval = "fast"
method = "tcp"

[balance]
method = "fastest"

[[rule]]
name = "r"
proto = "icmp"
dport = ["80"]
uplinks = ["isp9"]
"#;
    let e = errs(text);
    let expect = [
        "t.toml:5:8: uplink[0].name: invalid name \"ISP 1\"",
        "t.toml:7:11: uplink[0].gateway: invalid IPv4 address \"10.37.1\"",
        "t.toml:8:10: uplink[0].weight: 0 is out of range (expected 1..=1000)",
        "t.toml:14:8: uplink[1].snat: invalid value \"yes\"",
        "t.toml:16:12: uplink[1].check.interval: invalid duration \"fast\"",
        "uplink[1].check.targets: missing key: method \"tcp\" needs targets",
        "t.toml:20:10: balance.method: unknown method \"fastest\"",
        "t.toml:25:9: rule[0].dport: ports need proto",
    ];
    for x in expect {
        assert!(e.iter().any(|l| l.contains(x)), "missing {x:?} in {e:#?}");
    }
}

#[test]
fn rule_references_unknown_uplink() {
    let text = format!("{FULL}\n[[rule]]\nname = \"x\"\nuplinks = [\"isp9\"]\n");
    let e = errs(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("rule[1].uplinks[0]: no uplink named \"isp9\" (known: isp1, isp2)"));
}

#[test]
fn duplicate_names_and_shared_interface() {
    let text = r#"[lan]
interfaces = ["eth0"]
[[uplink]]
name = "a"
interface = "eth1"
gateway = "10.0.0.1"
[[uplink]]
name = "a"
interface = "eth2"
gateway = "10.0.1.1"
[[uplink]]
name = "c"
interface = "eth1"
gateway = "10.0.0.1"
"#;
    let e = errs(text);
    assert!(
        e.iter().any(|l| l.contains("duplicate uplink name \"a\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("can share an interface only with different gateways")),
        "{e:?}"
    );
}

#[test]
fn shared_interface_with_distinct_gateways_is_fine() {
    let text = r#"[lan]
interfaces = ["eth0"]
[[uplink]]
name = "a"
interface = "eth1"
gateway = "10.0.0.1"
[[uplink]]
name = "b"
interface = "eth1"
gateway = "10.0.0.2"
"#;
    load("t.toml", text).expect("valid");
}

#[test]
fn point_to_point_needs_targets() {
    let text = "[lan]\ninterfaces=[\"eth0\"]\n[[uplink]]\nname=\"ppp\"\ninterface=\"ppp0\"\n";
    let e = errs(text);
    assert!(
        e[0].contains("uplink[0].check.targets: missing key"),
        "{e:?}"
    );
    let ok = format!("{text}[uplink.check]\ntargets=[\"192.0.2.1\"]\n");
    let c = load("t.toml", &ok).expect("valid");
    assert_eq!(c.uplinks[0].gateway, None);
}

#[test]
fn kernel_options_are_checked() {
    let base = "[lan]\ninterfaces=[\"eth0\"]\n[[uplink]]\nname=\"a\"\ninterface=\"eth1\"\ngateway=\"10.0.0.1\"\n";
    let e = errs(&format!("{base}[kernel]\nmark_mask = \"0xf0f0\"\n"));
    assert!(e[0].contains("contiguous"), "{e:?}");
    let e = errs(&format!("{base}[kernel]\ntable_base = 200\n"));
    assert!(e[0].contains("reserved tables 253..=255"), "{e:?}");
    let c = load(
        "t.toml",
        &format!("{base}[kernel]\nmark_mask = \"0x0f00\"\ntable_base = 100\nrule_priority = 500\n"),
    )
    .expect("valid");
    assert_eq!(c.kernel.mark_mask, 0x0f00);
    assert_eq!(c.kernel.id_capacity(), 13);
    assert_eq!(c.kernel.mark_of(1), 0x100);
    assert_eq!(c.kernel.mark_none(), 0xf00);
    assert_eq!(c.kernel.mark_main(), 0xe00);
    let e = errs(&format!("{base}[kernel]\nmark_mask = 1\n"));
    assert!(e[0].contains("leaves room for 0 uplinks"), "{e:?}");
}

#[test]
fn missing_sections() {
    let e = errs("");
    assert!(e.iter().any(|l| l.contains("missing [lan] section")));
    assert!(e.iter().any(|l| l.contains("no [[uplink]] configured")));
}

#[test]
fn ports_as_numbers_and_ranges() {
    let text = format!("{FULL}\n[[rule]]\nname = \"x\"\nproto = \"udp\"\ndport = [53, \"8000-8080\"]\nmode = \"failover\"\nuplinks = [\"isp2\", \"isp1\"]\n");
    let c = load("t.toml", &text).expect("valid");
    assert_eq!(
        c.rules[1].dport,
        vec![
            PortRange { lo: 53, hi: 53 },
            PortRange { lo: 8000, hi: 8080 }
        ]
    );
    assert_eq!(c.rules[1].uplinks, vec![1, 0]);
    assert_eq!(c.rules[1].mode, Mode::Failover);
}

#[test]
fn control_group_is_a_non_empty_name() {
    let ok = load(
        "t.toml",
        &format!("[daemon]\ncontrol_group = \"netadmin\"\n{FULL}"),
    )
    .expect("loads");
    assert_eq!(ok.daemon.control_group.as_deref(), Some("netadmin"));
    assert_eq!(
        load("t.toml", FULL).expect("loads").daemon.control_group,
        None
    );
    let e = errs(&format!("[daemon]\ncontrol_group = \"\"\n{FULL}"));
    assert!(
        e.iter()
            .any(|d| d.contains("t.toml:2:") && d.contains("daemon.control_group")),
        "{e:?}"
    );
}
