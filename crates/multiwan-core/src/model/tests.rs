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
    let bogus: Vec<_> = e.iter().filter(|l| l.contains("bogus")).collect();
    assert_eq!(bogus.len(), 1, "{e:?}");
    assert!(
        bogus[0].starts_with("t.toml:3:1: lan.bogus: unknown key in [lan]"),
        "{e:?}"
    );
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
    // isp1 and isp2 are equally close: no guess.
    assert!(
        e[0].contains("rule[1].uplinks[0]: no uplink named \"isp9\" (known: isp1, isp2)"),
        "{e:?}"
    );
    let text = format!("{FULL}\n[[rule]]\nname = \"x\"\nuplinks = [\"ips2\"]\n");
    assert!(errs(&text)[0]
        .contains("no uplink named \"ips2\" (did you mean \"isp2\"? known: isp1, isp2)"));
}

/// One pass finds every error: an invalid uplink does not hide a rule's misspelt reference
/// (nor does it make a reference to that uplink, which is declared, an error of its own).
#[test]
fn rule_references_checked_while_an_uplink_is_invalid() {
    let text = FULL.replace("gateway = \"10.37.2.1\"", "gateway = \"10.37.2.300\"")
        + "\n[[rule]]\nname = \"x\"\nuplinks = [\"isp2\", \"ips1\", \"isp2\"]\n";
    let e = errs(&text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].contains("uplink[1].gateway: invalid IPv4 address"),
        "{e:#?}"
    );
    assert!(
        e[1].contains(
            "rule[1].uplinks[1]: no uplink named \"ips1\" (did you mean \"isp1\"? known: isp1, isp2)"
        ),
        "{e:#?}"
    );
    assert!(
        e[2].contains("rule[1].uplinks[2]: \"isp2\" is listed twice"),
        "{e:#?}"
    );
    // An invalid gateway6 is one error, not also "this uplink carries no IPv6" for its
    // IPv6 target.
    let text = FULL
        .replace(
            "targets = [\"10.37.1.1\"]",
            "targets = [\"10.37.1.1\", \"2001:db8::53\"]",
        )
        .replace("tier = 1", "tier = 1\ngateway6 = \"2001:db8::zz\"");
    let e = errs(&text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("uplink[0].gateway6: "), "{e:#?}");
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

/// A minimal valid config to build on: one LAN interface, one uplink with a gateway.
const BASE: &str = "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.0.1\"\n";

/// The config with `[uplink.check]` holding `check`.
fn with_check(check: &str) -> String {
    format!("{BASE}[uplink.check]\n{check}\n")
}

#[test]
fn every_unknown_key_with_its_path_position_and_suggestion() {
    let text = r#"[lan]
interfaces = ["eth0"]
[[uplink]]
name = "a"
interface = "eth1"
gateway = "10.0.0.1"
[[uplink]]
name = "b"
interface = "eth2"
gatway = "10.0.1.1"
[uplink.check]
intervall = "1s"
[balance]
methd = "random"
[frobnicate]
"#;
    let e = errs(text);
    let expect = [
        "t.toml:10:1: uplink[1].gatway: unknown key; did you mean `gateway`?",
        // What the file says without the misspelt key: true, and fixed with it.
        "t.toml:11:1: uplink[1].check.targets: missing key: an uplink without a gateway needs explicit check targets",
        "t.toml:12:1: uplink[1].check.intervall: unknown key; did you mean `interval`?",
        "t.toml:14:1: balance.methd: unknown key; did you mean `method`?",
        "t.toml:15:2: frobnicate: unknown key in the top level (known keys: daemon, lan, uplink, balance, rule, kernel)",
    ];
    assert_eq!(e, expect);
}

#[test]
fn a_key_in_the_wrong_section_says_where_it_belongs() {
    let e = errs(&format!("{BASE}targets = [\"192.0.2.1\"]\n"));
    assert_eq!(
        e,
        ["t.toml:7:1: uplink[0].targets: unknown key in [[uplink]]; `targets` belongs in [uplink.check]"]
    );
}

#[test]
fn wrong_types_are_all_reported_once() {
    let text = "[lan]\ninterfaces = \"eth0\"\n[[uplink]]\nname = 1\ninterface = \"eth1\"\nweight = \"3\"\n[uplink.check]\ntargets = [\"192.0.2.1\", 7]\n";
    let e = errs(text);
    assert_eq!(
        e,
        [
            "t.toml:2:14: lan.interfaces: expected a list of strings such as [\"a\", \"b\"], found a string",
            "t.toml:4:8: uplink[0].name: expected a string, found an integer",
            "t.toml:6:10: uplink[0].weight: expected an integer, found a string",
            "t.toml:8:25: uplink[0].check.targets[1]: expected a string, found an integer",
        ],
        "no second \"missing key\" message for a rejected value"
    );
}

#[test]
fn not_utf8_points_at_the_first_bad_byte() {
    let mut bytes = b"[lan]\ninterfaces = [\"eth0\"]\n# caf\xc3\xa9 ok\nx = \"".to_vec();
    bytes.extend_from_slice(b"\xff\xfe\"\n");
    let e = load("t.toml", &bytes).expect_err("not UTF-8");
    assert_eq!(
        e.to_string(),
        "t.toml:4:6: the file is not valid UTF-8 (byte 0xff here); save it as UTF-8"
    );
    load("t.toml", BASE.as_bytes()).expect("bytes load like text");
}

#[test]
fn interface_names_must_be_literal_for_the_kernel_and_nft() {
    for bad in [
        "eth*",
        "*",
        "eth0:1",
        "all",
        "a b",
        "eth%d",
        "abcdefghijklmnop",
    ] {
        let text = BASE.replace("\"eth1\"", &format!("{bad:?}"));
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with(&format!(
                "t.toml:5:13: uplink[0].interface: invalid interface name {bad:?}"
            )),
            "{e:?}"
        );
        assert!(
            e[0].contains("(allowed: 1..=15 printable ASCII characters"),
            "{e:?}"
        );
        let text = BASE.replace("\"eth0\"", &format!("{bad:?}"));
        let e = errs(&text);
        assert!(
            e[0].contains("lan.interfaces[0]: invalid interface name"),
            "{e:?}"
        );
    }
    assert!(errs(&BASE.replace("\"eth1\"", "\"eth*\""))[0].contains("wildcard"));
}

#[test]
fn an_interface_is_lan_or_uplink_not_both() {
    let e = errs(&BASE.replace("\"eth1\"", "\"eth0\""));
    assert_eq!(
        e,
        ["t.toml:5:13: uplink[0].interface: \"eth0\" is also in lan.interfaces; an interface is either LAN or uplink"]
    );
}

#[test]
fn uplink_names_main_and_none_are_reserved() {
    for n in ["main", "none"] {
        let e = errs(&BASE.replace("\"a\"", &format!("{n:?}")));
        assert!(e[0].contains("is reserved"), "{e:?}");
    }
}

fn uplinks(n: usize) -> String {
    let mut text = String::from("[lan]\ninterfaces = [\"lan0\"]\n");
    for i in 0..n {
        text += &format!("[[uplink]]\nname = \"u{i}\"\ninterface = \"w{i}\"\n[uplink.check]\ntargets = [\"192.0.2.1\"]\n");
    }
    text
}

#[test]
fn uplink_count_is_checked_against_the_default_mask() {
    let cfg = load("t.toml", &uplinks(253)).expect("253 ids fit under 0xff000000");
    assert!(crate::plan::assign_ids(&cfg, &Default::default()).is_ok());
    let e = errs(&uplinks(258));
    assert_eq!(e.len(), 1, "{e:?}");
    // The 254th uplink is the first without an id; its header is on line 3 + 253 * 5.
    assert_eq!(
        e[0],
        "t.toml:1268:1: uplink[253]: too many uplinks: 258 are configured, but the default mark_mask 0xff000000 has room for 253; set a wider [kernel] mark_mask (e.g. \"0xfff00000\")"
    );
    let wide = format!("{}[kernel]\nmark_mask = \"0xfff00000\"\n", uplinks(258));
    load("t.toml", &wide).expect("a wider mask has room");
}

#[test]
fn table_range_must_fit_and_avoid_reserved_tables() {
    let e = errs(&format!("{BASE}[kernel]\nmark_mask = \"0xffffffff\"\n"));
    assert!(
        e[0].contains("kernel.mark_mask: tables 1000..=4294968293 go past the largest table id"),
        "{e:?}"
    );
    let e = errs(&format!(
        "{BASE}[kernel]\nmark_mask = \"0xffff0000\"\ntable_base = 100\n"
    ));
    assert!(
        e[0].contains(
            "kernel.table_base: tables 100..=65633 would include the kernel's reserved tables"
        ),
        "{e:?}"
    );
    let e = errs(&format!("{BASE}[kernel]\nrule_priority = 32762\n"));
    assert!(
        e[0].contains("kernel.rule_priority: 32762 is out of range (expected 1..=32761)"),
        "{e:?}"
    );
    load(
        "t.toml",
        &format!("{BASE}[kernel]\nrule_priority = 32761\n"),
    )
    .expect("32761..=32765");
}

#[test]
fn check_timing_is_bounded_with_reasons() {
    let cases = [
        ("interval = \"1ms\"", "8:12: uplink[0].check.interval: 1ms is out of range (expected 10ms..=1m)"),
        ("interval = \"2m\"", "uplink[0].check.interval: 2m is out of range"),
        ("interval = \"100ms\"\ntimeout = \"1h\"", "9:11: uplink[0].check.timeout: timeout 1h is longer than 10 × interval (1s): at most 10 probe rounds"),
        ("timeout = \"1s500ms\"", "invalid duration"),
        ("interval = \"1m\"\ntimeout = \"1m\"\ndown_after = 10", "10:14: uplink[0].check.down_after: a dead uplink would be noticed only after down_after × interval + timeout = 10 × 1m + 1m = 11m, more than 10m"),
        ("interval = \"1m\"\nup_after = 11", "uplink[0].check.up_after: a recovered uplink would come back only after up_after × interval = 11 × 1m = 11m, more than 10m"),
        ("interval = \"1s\"\nmax_loss = 10\nwindow = \"500ms\"", "uplink[0].check.window: window 500ms is shorter than interval 1s"),
        ("interval = \"20s\"\nmax_loss = 10", "uplink[0].check.interval: window 10s (the default) is shorter than interval 20s"),
        ("max_rtt = \"200ms\"", "uplink[0].check.max_rtt: max_rtt 200ms can never be exceeded: answers later than timeout (200ms) count as lost"),
        ("interval = \"10ms\"\nmax_rtt = \"50ms\"\nwindow = \"2m\"", "uplink[0].check.window: window 2m holds 12000 rounds of 10ms; at most 10000 are kept"),
    ];
    for (check, want) in cases {
        let e = errs(&with_check(check));
        assert_eq!(e.len(), 1, "{check}: {e:?}");
        assert!(e[0].contains(want), "{check}: {e:?}");
    }
    let c = load(
        "t.toml",
        &with_check("interval = \"10ms\"\ntimeout = \"100ms\"\nmax_loss = 5\nwindow = \"100s\""),
    )
    .expect("at the limits");
    assert_eq!(c.uplinks[0].check.quality.map(|q| q.window), Some(10_000));
    let c = load("t.toml", &with_check("interval = \"15ms\"")).expect("valid");
    assert_eq!(
        c.uplinks[0].check.timeout,
        Duration::from_millis(150),
        "default timeout fits"
    );
}

#[test]
fn dns_and_tcp_targets_need_a_port() {
    let e = errs(&with_check("method = \"dns\"\ntargets = [\"192.0.2.1:0\"]"));
    assert!(e[0].contains("port 0 cannot be probed"), "{e:?}");
    let c = load(
        "t.toml",
        &with_check("method = \"dns\"\ntargets = [\"192.0.2.1\"]"),
    )
    .expect("valid");
    assert_eq!(c.uplinks[0].check.targets[0].port(), 53);
}

#[test]
fn control_group_is_a_unix_group_name() {
    let c = load(
        "t.toml",
        &format!("[daemon]\ncontrol_group = \"netadm\"\n{BASE}"),
    )
    .expect("valid");
    assert_eq!(c.daemon.control_group.as_deref(), Some("netadm"));
    assert_eq!(
        load("t.toml", BASE).expect("valid").daemon.control_group,
        None
    );
    let e = errs(&format!("[daemon]\ncontrol_group = \"Net Adm\"\n{BASE}"));
    assert_eq!(
        e,
        ["t.toml:2:17: daemon.control_group: invalid group name \"Net Adm\": expected a Unix group such as \"netadm\" ([a-z_][a-z0-9_-]{0,31})"]
    );
}

mod accepted_configs_plan {
    use super::*;
    use proptest::prelude::*;

    /// A config from a few knobs that matter for ids and tables; it may well be invalid.
    fn config(uplinks: usize, mask: u32, base: Option<u32>, prio: Option<u32>) -> String {
        let mut text = String::from("[lan]\ninterfaces = [\"lan0\"]\n");
        for i in 0..uplinks {
            text += &format!(
                "[[uplink]]\nname = \"u{i}\"\ninterface = \"w{i}\"\ngateway = \"10.0.0.1\"\n"
            );
        }
        text += &format!("[kernel]\nmark_mask = {mask}\n");
        if let Some(b) = base {
            text += &format!("table_base = {b}\n");
        }
        if let Some(p) = prio {
            text += &format!("rule_priority = {p}\n");
        }
        text
    }

    /// Contiguous masks of every width and position, and some that are not.
    fn mask() -> impl Strategy<Value = u32> {
        prop_oneof![
            (1u32..=32, 0u32..32).prop_map(|(w, s)| {
                let ones = if w == 32 { u32::MAX } else { (1u32 << w) - 1 };
                ones.checked_shl(s).unwrap_or(0)
            }),
            any::<u32>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever `load` accepts gets an id for every uplink, whatever ids the kernel
        /// reported before, and every table and priority it plans is in range.
        #[test]
        fn assign_ids_never_fails_for_an_accepted_config(
            uplinks in 1usize..20,
            mask in mask(),
            base in proptest::option::of(prop_oneof![0u32..300, any::<u32>()]),
            prio in proptest::option::of(prop_oneof![32755u32..32770, any::<u32>()]),
            previous in proptest::collection::btree_map("u[0-9]{1,2}", any::<u32>(), 0..10),
        ) {
            let Ok(cfg) = load("p.toml", &config(uplinks, mask, base, prio)) else {
                return Ok(());
            };
            let ids = crate::plan::assign_ids(&cfg, &previous).expect("ids for an accepted config");
            prop_assert_eq!(ids.len(), uplinks);
            let k = cfg.kernel;
            for id in ids.values() {
                let table = u64::from(k.table_base) + u64::from(*id);
                prop_assert!(table <= u64::from(u32::MAX) && !(253..=255).contains(&table));
                prop_assert_eq!(k.mark_of(*id) & !k.mark_mask, 0);
                prop_assert!(k.mark_of(*id) != k.mark_main() && k.mark_of(*id) != k.mark_none());
            }
            prop_assert!(k.rule_priority >= 1 && k.rule_priority + RULE_PRIORITY_SPAN - 1 <= 32765);
        }
    }
}

#[test]
fn bad_targets_do_not_hide_bad_timing_or_a_bad_method() {
    let e = errs(&with_check(
        "targets = [\"2001:db8::1\", \"nonsense\"]\ninterval = \"1ms\"\nmin_targets = 9",
    ));
    assert!(e.iter().any(|m| m.contains("check.targets[0]")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("check.targets[1]")), "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.contains("check.interval: 1ms is out of range")),
        "{e:?}"
    );
    let e = errs(&with_check("method = \"ping\"\ninterval = \"2m\""));
    assert!(e.iter().any(|m| m.contains("check.method")), "{e:?}");
    assert!(e.iter().any(|m| m.contains("check.interval: 2m")), "{e:?}");
}

#[test]
fn ipv4_gateway_must_be_installable() {
    for bad in [
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "127.0.0.1",
        "127.8.9.10",
    ] {
        let e = errs(&BASE.replace("10.0.0.1", bad));
        assert_eq!(
            e,
            [format!("t.toml:6:11: uplink[0].gateway: {bad} cannot be a gateway (it is unspecified, loopback, multicast or broadcast)")],
            "{bad}"
        );
    }
    for ok in ["169.254.0.1", "10.0.0.255", "192.0.2.1"] {
        load("t.toml", &BASE.replace("10.0.0.1", ok)).expect(ok);
    }
}

#[test]
fn snat_addresses_must_be_usable_sources() {
    for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1"] {
        let e = errs(&format!("{BASE}snat = {bad:?}\n"));
        assert_eq!(
            e,
            [format!("t.toml:7:8: uplink[0].snat: {bad} cannot be a source address (it is unspecified, loopback, multicast or broadcast)")],
            "{bad}"
        );
    }
    let six = format!("{BASE}gateway6 = \"fe80::1\"\n");
    for bad in ["::", "ff02::1", "::1"] {
        let e = errs(&format!("{six}snat6 = {bad:?}\n"));
        assert_eq!(
            e,
            [format!("t.toml:8:9: uplink[0].snat6: {bad} cannot be a source address (it is unspecified, loopback, multicast or IPv4-mapped)")],
            "{bad}"
        );
    }
    let c = load(
        "t.toml",
        &format!("{six}snat = \"192.0.2.7\"\nsnat6 = \"2001:db8::7\"\n"),
    )
    .expect("valid");
    assert_eq!(c.uplinks[0].snat, Snat::To(Ipv4Addr::new(192, 0, 2, 7)));
}

#[test]
fn metrics_port_zero_is_refused_in_both_forms() {
    for bad in [
        "0",
        "\"0\"",
        "\"0.0.0.0:0\"",
        "\"[::1]:0\"",
        "\"224.0.0.1:9797\"",
        "\"255.255.255.255:80\"",
        "\"[ff02::1]:80\"",
    ] {
        let e = errs(&format!("[daemon]\nmetrics = {bad}\n{BASE}"));
        let text = bad.trim_matches('"');
        assert_eq!(
            e,
            [format!("t.toml:2:11: daemon.metrics: invalid listen address {text:?}: expected a local address and port such as \"127.0.0.1:9797\" (not multicast or broadcast), or a port 1..=65535")],
            "{bad}"
        );
    }
    let c = load("t.toml", &format!("[daemon]\nmetrics = 9797\n{BASE}")).expect("valid");
    assert_eq!(c.daemon.metrics, Some("127.0.0.1:9797".parse().unwrap()));
    let c = load(
        "t.toml",
        &format!("[daemon]\nmetrics = \"0.0.0.0:9797\"\n{BASE}"),
    )
    .expect("valid");
    assert_eq!(c.daemon.metrics, Some("0.0.0.0:9797".parse().unwrap()));
}

#[test]
fn a_probe_target_is_listed_once() {
    let e = errs(&with_check(
        "targets = [\"1.1.1.1\", \"1.1.1.1\"]\nmin_targets = 2",
    ));
    assert_eq!(
        e,
        ["t.toml:8:23: uplink[0].check.targets[1]: \"1.1.1.1\" is listed twice"]
    );
    // The same socket address once dns's default port is added.
    let e = errs(&with_check(
        "method = \"dns\"\ntargets = [\"1.1.1.1\", \"1.1.1.1:53\"]",
    ));
    assert_eq!(
        e,
        ["t.toml:9:23: uplink[0].check.targets[1]: \"1.1.1.1:53\" is listed twice: uplink[0].check.targets[0] \"1.1.1.1\" is also 1.1.1.1:53"]
    );
    let six = BASE.replace(
        "gateway = \"10.0.0.1\"",
        "gateway = \"10.0.0.1\"\ngateway6 = \"fe80::1\"",
    );
    let e = errs(&format!(
        "{six}[uplink.check]\ntargets = [\"2001:db8::1\", \"10.0.0.9\", \"2001:db8:0::1\"]\n"
    ));
    assert_eq!(
        e,
        ["t.toml:9:39: uplink[0].check.targets[2]: \"2001:db8:0::1\" is listed twice: uplink[0].check.targets[0] \"2001:db8::1\" is also [2001:db8::1]:0"]
    );
    // Another port of one address is another target.
    let c = load(
        "t.toml",
        &with_check(
            "method = \"tcp\"\ntargets = [\"1.1.1.1:80\", \"1.1.1.1:443\"]\nmin_targets = 2",
        ),
    )
    .expect("valid");
    assert_eq!(c.uplinks[0].check.targets.len(), 2);
}

/// A rule's IPv6 traffic without an IPv6 uplink is reported at the key the message names:
/// the uplinks when the rule names them, else what makes it match IPv6.
#[test]
fn ipv6_rule_without_ipv6_uplink_points_at_its_key() {
    let e = errs(&format!(
        "{BASE}[[rule]]\nname = \"r\"\nsrc = [\"2001:db8::/32\"]\nuplinks = [\"a\"]\n"
    ));
    assert_eq!(
        e,
        ["t.toml:10:11: rule[0].uplinks: matches IPv6 traffic but none of its uplinks carries IPv6 (gateway6): name an uplink with IPv6, or use family = \"ipv4\""]
    );
    let e = errs(&format!(
        "{BASE}[[rule]]\nname = \"r\"\ndst = [\"2001:db8::/32\", \"10.1.0.0/16\"]\n"
    ));
    assert_eq!(
        e,
        ["t.toml:9:7: rule[0].dst: matches IPv6 traffic but none of its uplinks carries IPv6 (gateway6): name an uplink with IPv6, or use family = \"ipv4\""]
    );
    let e = errs(&format!(
        "{BASE}[[rule]]\nname = \"r\"\nsrc = [\"10.1.0.0/16\"]\nfamily = \"ipv6\"\n"
    ));
    assert!(
        e[0].starts_with("t.toml:10:10: rule[0].family: matches no traffic"),
        "{e:?}"
    );
    let e = errs(&format!(
        "{BASE}[[rule]]\nname = \"r\"\nfamily = \"ipv6\"\n"
    ));
    assert!(
        e[0].starts_with("t.toml:9:10: rule[0].family: matches IPv6 traffic"),
        "{e:?}"
    );
}

/// 2^bits − 3 ids: 0 is unmarked, the top two values are "main table" and "no uplink".
#[test]
fn a_mask_has_two_to_the_bits_minus_three_ids() {
    let two =
        format!("{BASE}[[uplink]]\nname = \"b\"\ninterface = \"eth2\"\ngateway = \"10.0.1.1\"\n");
    let e = errs(&format!("{two}[kernel]\nmark_mask = \"0x3\"\n"));
    assert_eq!(
        e,
        ["t.toml:12:13: kernel.mark_mask: mask 0x00000003 leaves room for 1 uplink but 2 are configured; use more bits"]
    );
    let e = errs(&format!("{BASE}[kernel]\nmark_mask = \"0x1\"\n"));
    assert_eq!(
        e,
        ["t.toml:8:13: kernel.mark_mask: mask 0x00000001 leaves room for 0 uplinks but 1 is configured; use more bits"]
    );
    let c = load("t.toml", &format!("{two}[kernel]\nmark_mask = \"0x7\"\n")).expect("5 ids");
    assert_eq!(c.kernel.id_capacity(), 5);
}

/// Positioning is one pass over the file: with line:col found by scanning from the start for
/// each error, these 40 000 errors (20 000 of them on one line) took minutes unoptimized.
#[test]
fn many_errors_are_positioned_in_linear_time() {
    let n = 10_000;
    let mut text = String::from(BASE);
    text += "[uplink.check]\ntargets = [";
    text += &vec!["1"; 2 * n].join(", ");
    text += "]\n";
    for i in 0..n {
        text += &format!("[[rule]]\nname = \"r{i}\"\nproto = \"bogus\"\nbogus = 1\n");
    }
    let start = std::time::Instant::now();
    let e = load("t.toml", &text).expect_err("invalid").diagnostics;
    let took = start.elapsed();
    assert_eq!(e.len(), 4 * n);
    assert_eq!(
        e[2 * n - 1].to_string(),
        format!(
            "t.toml:8:{}: uplink[0].check.targets[{}]: expected a string, found an integer",
            12 + 3 * (2 * n - 1),
            2 * n - 1
        )
    );
    let last = 8 + 4 * n;
    assert_eq!(
        e[4 * n - 1].to_string(),
        format!("t.toml:{last}:1: rule[{}].bogus: unknown key in [[rule]] (known keys: name, src, dst, proto, sport, dport, uplinks, mode, family)", n - 1)
    );
    assert!(
        took < Duration::from_secs(10),
        "{} errors took {took:?}",
        e.len()
    );
}

/// The one-pass positions are those of counting from the start of the text.
#[test]
fn positions_in_one_pass_are_those_counted_from_the_start() {
    let text = "a\nbé\n\nxyz é\n\u{1f600}q\n";
    let mut cursor = Cursor::new(text);
    for offset in 0..=text.len() + 2 {
        let mut at = offset.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
            .chars()
            .count()
            + 1;
        assert_eq!(cursor.to(offset), (line, col), "offset {offset}");
    }
    // An offset before the one reached (never asked: diagnostics are sorted) stays put.
    assert_eq!(cursor.to(0), (6, 1));
}

/// Uplinks on one interface must be told apart by their gateways, in any order.
#[test]
fn uplinks_sharing_an_interface_clash_with_the_first_that_matches() {
    let up = |n: &str, gw: Option<&str>| {
        let gw = gw
            .map(|g| format!("gateway = \"{g}\"\n"))
            .unwrap_or_default();
        format!("[[uplink]]\nname = \"{n}\"\ninterface = \"eth1\"\n{gw}[uplink.check]\ntargets = [\"192.0.2.1\"]\n")
    };
    let text = format!(
        "[lan]\ninterfaces = [\"eth0\"]\n{}{}{}{}",
        up("a", Some("10.0.0.1")),
        up("b", Some("10.0.0.2")),
        up("c", None),
        up("d", Some("10.0.0.2"))
    );
    let e = errs(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("uplinks \"a\" and \"c\" both use"), "{e:#?}");
    assert!(e[1].contains("uplinks \"b\" and \"d\" both use"), "{e:#?}");
}

/// toml_edit stops at an integer beyond 64 bits; it is reported at its key like any value out
/// of range, and the rest of the file is still checked.
#[test]
fn integers_beyond_64_bits_are_out_of_range_at_their_key() {
    let text = format!(
        "{BASE}weight = 99999999999999999999\ntier = -99999999999999999999\nsnat = \"yes\"\n\
         [uplink.check]\nmax_loss = 0x8000000000000000\n\
         [[rule]]\nname = \"r\"\nproto = \"tcp\"\ndport = [80, 99999999999999999999]\n\
         [kernel]\nmark_mask = 99999999999999999999\ntable_base = 9_223_372_036_854_775_808 # big\n[daemon]\nmetrics = 99999999999999999999\n"
    );
    let e = errs(&text);
    assert_eq!(
        e,
        [
            "t.toml:7:10: uplink[0].weight: 99999999999999999999 is out of range (expected 1..=1000)",
            "t.toml:8:8: uplink[0].tier: -99999999999999999999 is out of range (expected 1..=255)",
            "t.toml:9:8: uplink[0].snat: invalid value \"yes\": expected \"auto\", \"none\" or an IPv4 address",
            "t.toml:11:12: uplink[0].check.max_loss: 0x8000000000000000 is out of range (expected a percentage 0..=100)",
            "t.toml:15:14: rule[0].dport[1]: invalid port \"99999999999999999999\": expected 1..=65535 or a range such as \"8000-8080\"",
            "t.toml:17:13: kernel.mark_mask: invalid mask \"99999999999999999999\": expected a 32-bit number such as \"0xff000000\"",
            "t.toml:18:14: kernel.table_base: 9_223_372_036_854_775_808 is out of range (expected 1..=2147418112)",
            "t.toml:20:11: daemon.metrics: invalid listen address \"99999999999999999999\": expected a local address and port such as \"127.0.0.1:9797\" (not multicast or broadcast), or a port 1..=65535",
        ]
    );
    // Where a string is expected it is a wrong type, as any integer would be.
    let e = errs(&BASE.replace("\"a\"", "99999999999999999999"));
    assert_eq!(
        e,
        ["t.toml:4:8: uplink[0].name: expected a string, found an integer"]
    );
}

/// A probe target that can never answer over an uplink is refused like such a gateway, and an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) anywhere IPv6 is meant: the kernel sends it as
/// IPv4, so an "IPv6" probe of it never saw IPv6 fail.
#[test]
fn unprobeable_targets_and_ipv4_mapped_addresses_are_refused() {
    for (t, why) in [
        ("127.0.0.1", "unspecified, loopback, multicast or broadcast"),
        ("0.0.0.0", "unspecified, loopback, multicast or broadcast"),
        ("224.0.0.1", "unspecified, loopback, multicast or broadcast"),
        ("ff02::1", "unspecified, loopback, multicast or IPv4-mapped"),
        (
            "::ffff:10.1.1.1",
            "unspecified, loopback, multicast or IPv4-mapped",
        ),
    ] {
        let text = format!(
            "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.0.1\"\ngateway6 = \"fe80::1\"\n[uplink.check]\ntargets = [\"{t}\"]\n"
        );
        let errs = load("t.toml", text.as_bytes()).expect_err(t).to_string();
        assert!(
            errs.contains(&format!(
                "uplink[0].check.targets[0]: \"{t}\" cannot be probed over an uplink (it is {why})"
            )),
            "{t}: {errs}"
        );
    }
    let mapped = "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.0.1\"\ngateway6 = \"::ffff:10.0.0.1\"\n";
    let errs = load("t.toml", mapped.as_bytes())
        .expect_err("mapped")
        .to_string();
    assert!(
        errs.contains("uplink[0].gateway6: ::ffff:10.0.0.1 cannot be a gateway"),
        "{errs}"
    );
}
