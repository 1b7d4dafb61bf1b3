//! Planner tests: layout, tiers, modes, ids, hashing, and proptest invariants.

use super::*;
use crate::model::load;
use crate::model::Method;
use proptest::prelude::*;

pub(super) fn cfg(text: &str) -> Config {
    load("t.toml", text).expect("valid config")
}

pub(super) const TWO: &str = r#"
[lan]
interfaces = ["eth0"]
[[uplink]]
name = "isp1"
interface = "eth1"
gateway = "10.37.1.1"
weight = 3
[[uplink]]
name = "isp2"
interface = "eth2"
gateway = "10.37.2.1"
[[uplink]]
name = "lte"
interface = "wwan0"
gateway = "10.37.3.1"
tier = 2
"#;

pub(super) fn all_usable(c: &Config) -> BTreeSet<String> {
    c.uplinks.iter().map(|u| u.name.clone()).collect()
}

pub(super) fn ids(c: &Config) -> BTreeMap<String, u32> {
    assign_ids(c, &BTreeMap::new()).expect("ids")
}

/// The targets of a policy's map, slot by slot.
fn slots(p: &Plan, chain: &str) -> Vec<String> {
    p.policy_maps
        .iter()
        .find(|m| m.chain == chain)
        .unwrap_or_else(|| panic!("no policy {chain}"))
        .elements
        .iter()
        .map(|(_, c)| c.clone())
        .collect()
}

#[test]
fn ids_are_stable_across_reorder_and_removal() {
    let c = cfg(TWO);
    let first = ids(&c);
    assert_eq!(first["isp1"], 1);
    assert_eq!(first["isp2"], 2);
    assert_eq!(first["lte"], 3);
    // isp1 removed, a new uplink added in front: survivors keep their ids, new one reuses 1.
    let c2 = cfg(&TWO.replace("name = \"isp1\"", "name = \"fibre\""));
    let second = assign_ids(&c2, &first).expect("ids");
    assert_eq!(second["isp2"], 2);
    assert_eq!(second["lte"], 3);
    assert_eq!(second["fibre"], 1);
}

#[test]
fn smooth_rotation_is_exact_and_spread() {
    assert_eq!(smooth_rotation(&[3, 1]), vec![0, 0, 1, 0]);
    assert_eq!(smooth_rotation(&[1, 1]), vec![0, 1]);
    let r = smooth_rotation(&[5, 3, 2]);
    assert_eq!(r.len(), 10);
    assert_eq!(r.iter().filter(|x| **x == 0).count(), 5);
    assert_eq!(r.iter().filter(|x| **x == 2).count(), 2);
}

#[test]
fn tier_two_is_unused_while_tier_one_is_usable() {
    let c = cfg(TWO);
    let p = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
    assert!(
        p.nft.contains("numgen inc mod 4 vmap @m_policy_default"),
        "{}",
        p.nft
    );
    assert!(
        p.nft.contains(
            "elements = { 0 : goto up_isp1, 1 : goto up_isp1, 2 : goto up_isp2, 3 : goto up_isp1 }"
        ),
        "{}",
        p.nft
    );
    assert_eq!(
        slots(&p, "policy_default"),
        ["up_isp1", "up_isp1", "up_isp2", "up_isp1"]
    );
    let d = &p.policies.last().expect("default").decision;
    assert_eq!(
        d,
        &Decision::Spread {
            method: Method::RoundRobin,
            shares: vec![("isp1".into(), 3), ("isp2".into(), 1)]
        }
    );
}

#[test]
fn tiers_fall_through_and_all_down_is_unreachable() {
    let c = cfg(TWO);
    let only_lte: BTreeSet<String> = ["lte".to_string()].into();
    let p = plan(&c, &ids(&c), &only_lte, &Facts::default());
    assert_eq!(slots(&p, "policy_default"), ["up_lte"]);
    assert!(p.nft.contains("numgen inc mod 1 vmap @m_policy_default"));
    let none = BTreeSet::new();
    let p = plan(&c, &ids(&c), &none, &Facts::default());
    assert_eq!(slots(&p, "policy_default"), ["to_none"]);
    assert!(
        p.rules
            .iter()
            .any(|r| r.fwmark == Some((0xff000000, 0xff000000))
                && r.action == RuleAction::Unreachable)
    );
    // No multipath route when nothing is usable.
    assert!(!p.routes.iter().any(|r| r.table == 1000));
}

#[test]
fn when_all_down_main_and_blackhole() {
    let c = cfg(&format!("{TWO}[balance]\nwhen_all_down = \"main\"\n"));
    let p = plan(&c, &ids(&c), &BTreeSet::new(), &Facts::default());
    assert_eq!(slots(&p, "policy_default"), ["to_main"]);
    let c = cfg(&format!("{TWO}[balance]\nwhen_all_down = \"blackhole\"\n"));
    let p = plan(&c, &ids(&c), &BTreeSet::new(), &Facts::default());
    assert!(p
        .rules
        .iter()
        .any(|r| r.fwmark == Some((0xff000000, 0xff000000)) && r.action == RuleAction::Blackhole));
}

#[test]
fn rules_and_modes() {
    let text = format!(
        "{TWO}
[[rule]]
name = \"web\"
src = [\"192.168.0.228\"]
proto = \"tcp\"
dport = [\"80\", \"8000-8080\"]
uplinks = [\"isp2\"]
[[rule]]
name = \"voip\"
proto = \"udp\"
mode = \"failover\"
uplinks = [\"lte\", \"isp1\"]
[[rule]]
name = \"lan2lan\"
dst = [\"10.0.0.0/8\"]
mode = \"bypass\"
"
    );
    let c = cfg(&text);
    let p = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
    assert!(p.nft.contains("ip saddr 192.168.0.228 meta l4proto tcp th dport { 80, 8000-8080 } counter goto rule_web"), "{}", p.nft);
    assert_eq!(slots(&p, "rule_web"), ["up_isp2"]);
    assert_eq!(
        slots(&p, "rule_voip"),
        ["up_lte"],
        "failover takes list order, not tiers"
    );
    assert!(p
        .nft
        .contains("ip daddr 10.0.0.0/8 counter goto rule_lan2lan"));
    assert!(p
        .nft
        .contains("chain rule_lan2lan {\n\t\tgoto to_main\n\t}"));
    assert!(
        !p.policy_maps.iter().any(|m| m.chain == "rule_lan2lan"),
        "bypass does not depend on health"
    );
    // Failover moves on when the first is down.
    let without_lte: BTreeSet<String> = ["isp1".to_string(), "isp2".to_string()].into();
    let p = plan(&c, &ids(&c), &without_lte, &Facts::default());
    assert_eq!(slots(&p, "rule_voip"), ["up_isp1"]);
}

#[test]
fn policy_routing_layout() {
    let c = cfg(TWO);
    let mut facts = Facts {
        links: Some(BTreeMap::new()),
        ..Facts::default()
    };
    let links = facts.links.as_mut().expect("links");
    links.insert(
        "eth1".into(),
        Link {
            up: true,
            addrs: vec!["10.37.1.253".parse().expect("ip")],
            gateway: None,
            ..Link::default()
        },
    );
    links.insert(
        "eth2".into(),
        Link {
            up: true,
            addrs: vec!["10.37.2.253".parse().expect("ip")],
            gateway: None,
            ..Link::default()
        },
    );
    // wwan0 does not exist: no route, no sysctl, but its mark still resolves to unreachable.
    let p = plan(&c, &ids(&c), &all_usable(&c), &facts);
    let lines: Vec<String> = p.rules.iter().map(|r| r.args().join(" ")).collect();
    assert_eq!(
        lines,
        vec![
            "priority 1000 oif eth1 lookup 1001 protocol 77",
            "priority 1000 oif eth2 lookup 1002 protocol 77",
            "priority 1000 oif wwan0 lookup 1003 protocol 77",
            "priority 1000 fwmark 0x1000000/0xff000000 lookup 1001 protocol 77",
            "priority 1000 fwmark 0x2000000/0xff000000 lookup 1002 protocol 77",
            "priority 1000 fwmark 0x3000000/0xff000000 lookup 1003 protocol 77",
            "priority 1000 fwmark 0xfe000000/0xff000000 lookup 254 protocol 77",
            "priority 1000 fwmark 0xff000000/0xff000000 lookup main suppress_prefixlength 0 protocol 77",
            "priority 1001 fwmark 0x1000000/0xff000000 unreachable protocol 77",
            "priority 1001 fwmark 0x2000000/0xff000000 unreachable protocol 77",
            "priority 1001 fwmark 0x3000000/0xff000000 unreachable protocol 77",
            "priority 1001 fwmark 0xff000000/0xff000000 unreachable protocol 77",
            "priority 32763 lookup main suppress_prefixlength 0 protocol 77",
            "priority 32764 from 10.37.1.253 lookup 1001 protocol 77",
            "priority 32764 from 10.37.2.253 lookup 1002 protocol 77",
            "priority 32765 lookup 1000 protocol 77",
        ]
    );
    let routes: Vec<String> = p.routes.iter().map(|r| r.args().join(" ")).collect();
    assert_eq!(
        routes,
        vec![
            "default table 1000 proto 77 nexthop via 10.37.1.1 dev eth1 weight 3 realms 77 nexthop via 10.37.2.1 dev eth2 weight 1 realms 77",
            "default via 10.37.1.1 dev eth1 realm 77 table 1001 proto 77",
            "default via 10.37.2.1 dev eth2 realm 77 table 1002 proto 77",
        ]
    );
    let keys: Vec<&str> = p.sysctls.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "net.ipv4.ip_forward",
            "net.netfilter.nf_conntrack_acct",
            "net.netfilter.nf_conntrack_timestamp",
            "net.ipv4.conf.eth1.rp_filter",
            "net.ipv4.conf.eth2.rp_filter"
        ]
    );
    for s in &p.sysctls {
        assert!(sysctl_path(&s.key).is_some(), "{} has no path", s.key);
    }
}

#[test]
fn hash_failure_moves_only_the_failed_uplinks_buckets() {
    let alive = hash_buckets(&[1, 1, 1], &[true, true, true]);
    let one_dead = hash_buckets(&[1, 1, 1], &[true, false, true]);
    assert_eq!(alive.len(), HASH_BUCKETS as usize);
    for (a, b) in alive.iter().zip(&one_dead) {
        if *a != 1 {
            assert_eq!(a, b, "a bucket of a healthy uplink moved");
        } else {
            assert_ne!(*b, 1);
        }
    }
    let counts = |v: &[usize], x| v.iter().filter(|y| **y == x).count();
    assert_eq!(counts(&hash_buckets(&[3, 1], &[true, true]), 0), 192);
}

#[test]
fn same_inputs_same_bytes() {
    let c = cfg(TWO);
    let a = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
    let b = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
    assert_eq!(a, b);
    assert!(a
        .nft
        .contains(&format!("comment \"multiwan {}\"", a.digest)));
    // A health change keeps the structure and changes only the policies' maps.
    let d = plan(
        &c,
        &ids(&c),
        &["isp2".to_string()].into(),
        &Facts::default(),
    );
    assert_eq!(a.digest, d.digest);
    assert_ne!(a.policy_maps, d.policy_maps);
    assert_eq!(
        d.policy_maps[0].rule_text(),
        "numgen inc mod 1 vmap @m_policy_default"
    );
    assert!(d.nft.contains(&d.policy_maps[0].rule_text()));
    // Weights live in the policies only; interfaces are structure.
    let c2 = cfg(&TWO.replace("weight = 3", "weight = 2"));
    let e = plan(&c2, &ids(&c2), &all_usable(&c2), &Facts::default());
    assert_eq!(a.digest, e.digest);
    let c3 = cfg(&TWO.replace("interface = \"eth2\"", "interface = \"eth9\""));
    let f = plan(&c3, &ids(&c3), &all_usable(&c3), &Facts::default());
    assert_ne!(a.digest, f.digest);
}

/// Weights above the kernel's nexthop limit (256) are scaled into it in the multipath route
/// (a weight of 1000 used to be stored as another number, and every update failed its
/// verification), while the rotation keeps the exact weights.
#[test]
fn multipath_weights_fit_the_kernel_and_the_rotation_stays_exact() {
    let c = config_with(&[1000, 999, 1], &[1, 1, 1]);
    let p = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
    let weights: Vec<u32> = p.routes[0].nexthops.iter().map(|n| n.weight).collect();
    assert_eq!(weights, vec![256, 256, 1]);
    assert_eq!(
        p.policy_maps[0].elements.len(),
        2000,
        "the rotation is exact"
    );
    // Already small enough (after the common divisor): unchanged.
    let c = config_with(&[600, 200], &[1, 1]);
    let p = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
    let weights: Vec<u32> = p.routes[0].nexthops.iter().map(|n| n.weight).collect();
    assert_eq!(weights, vec![3, 1]);
}

proptest! {
    #[test]
    fn nexthop_weights_are_in_the_kernels_range(weights in proptest::collection::vec(1u32..=1000, 1..8)) {
        let c = config_with(&weights, &vec![1; weights.len()]);
        let p = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
        for n in &p.routes[0].nexthops {
            prop_assert!((1..=256).contains(&n.weight), "{:?}", p.routes[0]);
        }
    }
}

fn config_with(weights: &[u32], tiers: &[u32]) -> Config {
    let mut t = String::from("[lan]\ninterfaces=[\"lan0\"]\n");
    for (i, (w, tier)) in weights.iter().zip(tiers).enumerate() {
        t += &format!(
            "[[uplink]]\nname=\"u{i}\"\ninterface=\"wan{i}\"\ngateway=\"10.{}.{}.1\"\nweight={w}\ntier={tier}\n",
            i / 200,
            i % 200
        );
    }
    cfg(&t)
}

proptest! {
    #[test]
    fn rotation_gives_exact_weights(weights in proptest::collection::vec(1u32..50, 1..8)) {
        let r = smooth_rotation(&weights);
        prop_assert_eq!(r.len() as u32, weights.iter().sum::<u32>());
        for (i, w) in weights.iter().enumerate() {
            prop_assert_eq!(r.iter().filter(|x| **x == i).count() as u32, *w);
        }
    }

    #[test]
    fn marks_tables_never_collide_and_never_route_via_unusable(
        weights in proptest::collection::vec(1u32..20, 1..10),
        tiers_seed in proptest::collection::vec(1u32..4, 10),
        usable_bits in proptest::collection::vec(any::<bool>(), 10),
    ) {
        let tiers: Vec<u32> = tiers_seed[..weights.len()].to_vec();
        let c = config_with(&weights, &tiers);
        let ids = assign_ids(&c, &BTreeMap::new()).expect("ids");
        let marks: BTreeSet<u32> = ids.values().map(|i| c.kernel.mark_of(*i)).collect();
        prop_assert_eq!(marks.len(), c.uplinks.len());
        prop_assert!(!marks.contains(&c.kernel.mark_main()));
        prop_assert!(!marks.contains(&c.kernel.mark_none()));
        for m in &marks { prop_assert_eq!(m & !c.kernel.mark_mask, 0); }
        let tables: BTreeSet<u32> = ids.values().map(|i| c.kernel.table_of(*i)).collect();
        prop_assert_eq!(tables.len(), c.uplinks.len());
        prop_assert!(!tables.contains(&c.kernel.table_base));

        let usable: BTreeSet<String> = c.uplinks.iter().zip(&usable_bits)
            .filter(|(_, b)| **b).map(|(u, _)| u.name.clone()).collect();
        let p = plan(&c, &ids, &usable, &Facts::default());
        match &p.policies.last().expect("default").decision {
            Decision::Spread { shares, .. } => {
                let min_tier = c.uplinks.iter().filter(|u| usable.contains(&u.name)).map(|u| u.tier).min();
                for (name, _) in shares {
                    prop_assert!(usable.contains(name), "{} is not usable", name);
                    let u = c.uplinks.iter().find(|u| &u.name == name).expect("known");
                    prop_assert_eq!(Some(u.tier), min_tier);
                }
            }
            Decision::NoUplink => prop_assert!(usable.is_empty()),
            Decision::Main => prop_assert!(false, "main only with when_all_down = main"),
        }
        // The balancing chain never jumps to an unusable uplink.
        let targets = slots(&p, "policy_default");
        for u in &c.uplinks {
            if !usable.contains(&u.name) {
                prop_assert!(!targets.contains(&format!("up_{}", u.name)), "{} is unusable", &u.name);
            }
        }
    }
}

#[test]
fn auto_gateway_follows_the_learned_default_route() {
    let text = "[lan]\ninterfaces=[\"lan0\"]\n[[uplink]]\nname=\"cable\"\ninterface=\"eth1\"\ngateway=\"auto\"\n[uplink.check]\ntargets=[\"192.0.2.1\"]\n[[uplink]]\nname=\"dsl\"\ninterface=\"eth2\"\ngateway=\"10.0.2.1\"\n";
    let c = cfg(text);
    assert!(c.uplinks[0].gateway_auto);
    let link = |gw: Option<&str>| Link {
        up: true,
        addrs: vec!["100.64.7.9".parse().expect("ip")],
        gateway: gw.map(|g| g.parse().expect("ip")),
        ..Link::default()
    };
    let mut facts = Facts {
        links: Some(BTreeMap::new()),
        ..Facts::default()
    };
    facts
        .links
        .as_mut()
        .expect("links")
        .insert("eth1".into(), link(None));
    facts
        .links
        .as_mut()
        .expect("links")
        .insert("eth2".into(), link(None));
    // Not learned yet: no route for it.
    let p = plan(&c, &ids(&c), &all_usable(&c), &facts);
    assert!(!p.routes.iter().any(|r| r.table == 1001));
    assert_eq!(next_hop(&c.uplinks[0], &facts), None);
    // Learned: routed via the DHCP gateway; a new lease moves the route.
    for gw in ["100.64.0.1", "100.64.0.254"] {
        facts
            .links
            .as_mut()
            .expect("links")
            .insert("eth1".into(), link(Some(gw)));
        let p = plan(&c, &ids(&c), &all_usable(&c), &facts);
        let r = p.routes.iter().find(|r| r.table == 1001).expect("route");
        assert_eq!(
            r.args().join(" "),
            format!("default via {gw} dev eth1 realm 77 table 1001 proto 77")
        );
    }
    // Offline there is nothing to learn from.
    assert_eq!(next_hop(&c.uplinks[0], &Facts::default()), None);
    let e = load(
        "t.toml",
        &text.replace("[uplink.check]\ntargets=[\"192.0.2.1\"]\n", ""),
    )
    .expect_err("targets needed");
    assert!(
        e.to_string()
            .contains("with gateway = \"auto\" the gateway is only known at run time"),
        "{e}"
    );
}

/// Two dual-stack uplinks; isp2's fixed `gateway6` is `GW6`.
fn dual(gw6: &str) -> Config {
    cfg(&format!(
        "[lan]\ninterfaces=[\"lan0\"]\n[[uplink]]\nname=\"isp1\"\ninterface=\"wan1\"\ngateway=\"10.37.1.1\"\ngateway6=\"fe80::c0c\"\n[[uplink]]\nname=\"isp2\"\ninterface=\"wan2\"\ngateway=\"10.37.2.1\"\ngateway6=\"{gw6}\"\n"
    ))
}

/// Both wan links up; wan2 holds `addr6` with prefix length `len`.
fn dual_facts(addr6: &str, len: u8) -> Facts {
    let link = |n: u8, a6: &str, len: u8| {
        let a6: Ipv6Addr = a6.parse().expect("ip");
        Link {
            up: true,
            addrs: vec![format!("10.37.{n}.253").parse().expect("ip")],
            addrs6: vec![a6],
            onlink6: Vec::from_iter(Ipv6Net::holding(a6, len)),
            ..Link::default()
        }
    };
    Facts {
        links: Some(BTreeMap::from([
            ("wan1".to_string(), link(1, "2001:db8:1::253", 64)),
            ("wan2".to_string(), link(2, addr6, len)),
        ])),
        ..Facts::default()
    }
}

fn v6_routes(p: &Plan) -> Vec<String> {
    p.routes
        .iter()
        .filter(|r| r.family == Family::V6)
        .map(|r| r.args().join(" "))
        .collect()
}

#[test]
fn an_off_link_gateway6_gets_no_route_and_holds_up_nothing_else() {
    let c = dual("2001:db8:99::1");
    let (isp1, isp2) = (&c.uplinks[0], &c.uplinks[1]);
    let facts = dual_facts("2001:db8:2::253", 64);
    // Link-local is on-link by definition; the global one is in no prefix of wan2.
    assert_eq!(
        next_hop6(isp1, &facts),
        Some("fe80::c0c".parse().expect("ip"))
    );
    assert_eq!(next_hop6(isp2, &facts), None);
    assert_eq!(
        off_link_gateway6(isp2, &facts),
        Some("2001:db8:99::1".parse().expect("ip"))
    );
    assert_eq!(off_link_gateway6(isp1, &facts), None);
    // IPv4 is untouched: a fixed IPv4 gateway is not tested against prefixes.
    assert_eq!(
        next_hop(isp2, &facts),
        Some(Some("10.37.2.1".parse().expect("ip")))
    );
    let p = plan(&c, &ids(&c), &all_usable(&c), &facts);
    assert_eq!(
        v6_routes(&p),
        [
            "default via fe80::c0c dev wan1 table 1000 proto 77",
            "default via fe80::c0c dev wan1 table 1001 proto 77",
        ],
        "the multipath route has only isp1's next hop, isp2's table none"
    );
    assert_eq!(
        p.routes.iter().filter(|r| r.family == Family::V4).count(),
        3,
        "IPv4: both tables and the multipath route"
    );
    // Offline (`plan` without --live) a fixed gateway is still assumed routable.
    assert!(next_hop6(isp2, &Facts::default()).is_some());
    assert_eq!(off_link_gateway6(isp2, &Facts::default()), None);
}

#[test]
fn a_gateway6_is_on_link_only_while_a_prefix_of_the_interface_holds_it() {
    let c = dual("2001:db8:2::1");
    let isp2 = &c.uplinks[1];
    let gw: Ipv6Addr = "2001:db8:2::1".parse().expect("ip");
    assert_eq!(
        next_hop6(isp2, &dual_facts("2001:db8:2::253", 64)),
        Some(gw)
    );
    // Renumbered to a /128 (a lost lease): the gateway is off the link now.
    let mut facts = dual_facts("2001:db8:2::253", 128);
    assert_eq!(next_hop6(isp2, &facts), None);
    let p = plan(&c, &ids(&c), &all_usable(&c), &facts);
    assert!(v6_routes(&p).iter().all(|r| !r.contains("wan2")), "{p}");
    // A /128 address with an advertised on-link /64 route: routable again.
    let wan2 = facts
        .links
        .as_mut()
        .and_then(|l| l.get_mut("wan2"))
        .expect("wan2");
    wan2.onlink6
        .extend(Ipv6Net::new("2001:db8:2::".parse().expect("ip"), 64));
    assert_eq!(next_hop6(isp2, &facts), Some(gw));
    // A /48 holds it too.
    assert_eq!(
        next_hop6(isp2, &dual_facts("2001:db8:2:ff::253", 48)),
        Some(gw)
    );
}

#[test]
fn a_refused_uplink_family_is_not_installable() {
    let c = dual("fe80::1");
    let isp2 = &c.uplinks[1];
    let mut facts = dual_facts("2001:db8:2::253", 64);
    facts.refused.insert(("isp2".into(), Family::V4));
    assert_eq!(next_hop(isp2, &facts), None);
    assert!(next_hop6(isp2, &facts).is_some(), "the other family stays");
    facts.refused.insert(("isp2".into(), Family::V6));
    assert_eq!(next_hop6(isp2, &facts), None);
    let p = plan(&c, &ids(&c), &all_usable(&c), &facts);
    assert!(
        p.routes
            .iter()
            .all(|r| r.nexthops.iter().all(|n| n.dev != "wan2")),
        "{p}"
    );
}

/// `plan` prints sysctls as sysctl(8) names them: an interface's dots become slashes.
#[test]
fn sysctl_names_write_an_interfaces_dots_as_slashes() {
    let s = |key: &str| Sysctl {
        key: key.into(),
        value: "2".into(),
    };
    assert_eq!(
        s("net.ipv4.conf.eth0.100.rp_filter").sysctl_name(),
        "net.ipv4.conf.eth0/100.rp_filter"
    );
    assert_eq!(
        s("net.ipv6.conf.wan1.accept_ra").sysctl_name(),
        "net.ipv6.conf.wan1.accept_ra"
    );
    assert_eq!(
        s("net.ipv4.ip_forward").sysctl_name(),
        "net.ipv4.ip_forward"
    );
}

/// The router's own unmarked IPv6 is multiwan's only by a next hop of its routes: the fixed
/// gateways and the learned ones (`auto`), whatever the uplinks' health, and never to a
/// gateway itself. Without any gateway known, none of it is.
#[test]
fn the_routers_own_ipv6_is_balanced_only_by_the_uplinks_gateways() {
    let own6 = |p: &Plan| -> Vec<String> {
        p.nft
            .lines()
            .filter(|l| l.contains("meta nfproto ipv6 meta mark 0"))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let c = dual("2001:db8:2::1");
    let p = plan(
        &c,
        &ids(&c),
        &all_usable(&c),
        &dual_facts("2001:db8:2::253", 64),
    );
    assert_eq!(
        own6(&p),
        [
            "meta nfproto ipv6 meta mark 0 ip6 daddr { 2001:db8:2::1, fe80::c0c } return",
            "meta nfproto ipv6 meta mark 0 rt ip6 nexthop != { 2001:db8:2::1, fe80::c0c } return",
        ]
    );
    // Health does not change the chain: a failover replaces no table.
    let p_down = plan(
        &c,
        &ids(&c),
        &BTreeSet::new(),
        &dual_facts("2001:db8:2::253", 64),
    );
    assert_eq!(own6(&p_down), own6(&p));
    let auto = cfg(
        "[lan]\ninterfaces=[\"lan0\"]\n[[uplink]]\nname=\"isp1\"\ninterface=\"wan1\"\ngateway=\"10.37.1.1\"\ngateway6=\"auto\"\n[uplink.check]\ntargets=[\"2001:db8:ff::100\"]\n",
    );
    let mut facts = dual_facts("2001:db8:2::253", 64);
    assert_eq!(
        own6(&plan(&auto, &ids(&auto), &all_usable(&auto), &facts)),
        ["meta nfproto ipv6 meta mark 0 return"],
        "nothing learned yet"
    );
    if let Some(l) = facts.links.as_mut().and_then(|l| l.get_mut("wan1")) {
        l.gateway6 = Some("fe80::1".parse().expect("ip"));
    }
    assert_eq!(
        own6(&plan(&auto, &ids(&auto), &all_usable(&auto), &facts)),
        [
            "meta nfproto ipv6 meta mark 0 ip6 daddr { fe80::1 } return",
            "meta nfproto ipv6 meta mark 0 rt ip6 nexthop != { fe80::1 } return",
        ]
    );
}

/// A replacing table carries each uplink's connection count into its own counter
/// (`conns_isp` is a prefix of `conns_isp2`), leaves the others empty, and ignores a name
/// it does not declare.
#[test]
fn counters_carry_into_a_replacing_table_each_into_its_own() {
    let c = cfg(&TWO.replace("name = \"isp1\"", "name = \"isp\""));
    let p = plan(&c, &ids(&c), &all_usable(&c), &Facts::default());
    let counts = BTreeMap::from([
        ("conns_isp2".to_string(), 47),
        ("conns_gone".to_string(), 9),
    ]);
    let carried = p.nft_transaction_carrying(&counts);
    assert!(
        carried.contains("\tcounter conns_isp {\n\t}\n"),
        "{carried}"
    );
    assert!(
        carried.contains("\tcounter conns_isp2 {\n\t\tpackets 47 bytes 0\n\t}\n"),
        "{carried}"
    );
    assert!(
        carried.contains("\tcounter conns_lte {\n\t}\n"),
        "{carried}"
    );
    assert!(!carried.contains("conns_gone"));
    assert_eq!(
        p.nft_transaction_carrying(&BTreeMap::new()),
        p.nft_transaction()
    );
}
