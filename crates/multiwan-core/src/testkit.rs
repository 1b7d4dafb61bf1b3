//! Invariants from config bytes to ruleset, shared by the `config_plan` fuzz target and the
//! stable tests that replay its corpora (so a fuzz finding stays a test). Not an API: it
//! panics, with a message naming the broken invariant, instead of returning errors.
//!
//! For bytes that `load` accepts: `assign_ids` succeeds (from scratch and from adversarial
//! previous ids); planning is deterministic; no interface name reaches the ruleset outside
//! `"…"` (checked by renaming every interface and comparing the unquoted text); chains and
//! counters are declared once, named from `[a-z0-9_-]` only, and every reference resolves;
//! rules, tables, marks and sysctls stay inside the space multiwan owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::model::{
    is_valid_ifname, is_valid_name, Config, LATE_RULE_PRIORITY, RULE_PRIORITY_SPAN,
};
use crate::plan::{assign_ids, plan, Facts, Link, Plan, RuleAction};

/// Runs every invariant on `data`. Returns the plans checked for an accepted config (offline
/// and with every interface present), `None` for a rejected one.
pub fn config_plan(data: &[u8]) -> Option<Vec<Plan>> {
    let cfg = match crate::load("fuzz.toml", data) {
        Ok(cfg) => cfg,
        Err(e) => {
            assert!(
                !e.diagnostics.is_empty(),
                "a rejection without a diagnostic"
            );
            for d in &e.diagnostics {
                assert!(
                    d.line >= 1 && d.col >= 1,
                    "diagnostic without a position: {d}"
                );
            }
            return None;
        }
    };
    check_names(&cfg);
    let ids = ids_always_fit(&cfg);
    let all: BTreeSet<String> = cfg.uplinks.iter().map(|u| u.name.clone()).collect();
    let some: BTreeSet<String> = all.iter().step_by(2).cloned().collect();
    let mut plans = Vec::new();
    for facts in [Facts::default(), present(&cfg)] {
        for usable in [&all, &some, &BTreeSet::new()] {
            let p = plan(&cfg, &ids, usable, &facts);
            let again = plan(&cfg, &ids, usable, &facts);
            assert!(p == again, "planning twice gave different plans");
            check_plan(&cfg, &p);
            check_names_quoted(&cfg, &ids, usable, &facts, &p);
            plans.push(p);
        }
    }
    Some(plans)
}

fn check_names(cfg: &Config) {
    for u in &cfg.uplinks {
        assert!(is_valid_name(&u.name), "accepted uplink name {:?}", u.name);
        assert!(
            is_valid_ifname(&u.interface),
            "accepted interface {:?}",
            u.interface
        );
    }
    for r in &cfg.rules {
        assert!(is_valid_name(&r.name), "accepted rule name {:?}", r.name);
    }
    for i in &cfg.lan.interfaces {
        assert!(is_valid_ifname(i), "accepted LAN interface {i:?}");
    }
}

/// Ids from scratch, and from previous ids at the top of the range or all the same.
fn ids_always_fit(cfg: &Config) -> BTreeMap<String, u32> {
    let fresh = assign_ids(cfg, &BTreeMap::new())
        .unwrap_or_else(|e| panic!("assign_ids failed for an accepted config: {e}"));
    assert_eq!(fresh.len(), cfg.uplinks.len(), "an uplink without an id");
    let cap = cfg.kernel.id_capacity();
    let top: BTreeMap<String, u32> = cfg
        .uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.clone(), cap.saturating_sub(i as u32)))
        .collect();
    let same: BTreeMap<String, u32> = cfg.uplinks.iter().map(|u| (u.name.clone(), 1)).collect();
    for previous in [top, same] {
        let ids = assign_ids(cfg, &previous)
            .unwrap_or_else(|e| panic!("assign_ids failed with previous ids: {e}"));
        let distinct: BTreeSet<u32> = ids.values().copied().collect();
        assert_eq!(distinct.len(), cfg.uplinks.len(), "two uplinks share an id");
        assert!(
            ids.values().all(|id| (1..=cap).contains(id)),
            "id out of range"
        );
    }
    fresh
}

/// Facts with every interface up with an address, a learned gateway for `auto`, and every
/// fixed gateway on the link (as with a default route through it).
fn present(cfg: &Config) -> Facts {
    let mut links = BTreeMap::new();
    let names = cfg
        .uplinks
        .iter()
        .map(|u| &u.interface)
        .chain(&cfg.lan.interfaces);
    for (i, name) in names.enumerate() {
        let i = i as u32;
        links.insert(
            name.clone(),
            Link {
                up: true,
                addrs: vec![Ipv4Addr::from(0x0a00_0002 + (i << 8))],
                onlink4: Vec::new(),
                gateway: Some(Ipv4Addr::from(0x0a00_0001 + (i << 8))),
                addrs6: vec![std::net::Ipv6Addr::from(
                    0x2001_0db8_0000_0000_0000_0000_0000_0002u128 + (u128::from(i) << 80),
                )],
                gateway6: Some("fe80::1".parse().expect("ip")),
                onlink6: Vec::from_iter(crate::net::Ipv6Net::new(
                    std::net::Ipv6Addr::UNSPECIFIED,
                    0,
                )),
            },
        );
    }
    Facts {
        links: Some(links),
        ..Facts::default()
    }
}

/// The text outside `"…"`; panics when quotes do not pair up.
fn unquoted(nft: &str) -> String {
    let parts: Vec<&str> = nft.split('"').collect();
    assert!(parts.len() % 2 == 1, "unbalanced quotes in the ruleset");
    parts
        .iter()
        .step_by(2)
        .copied()
        .collect::<Vec<_>>()
        .join("\"\"")
}

/// Renames every interface (an injective mapping) and plans again: the text outside quotes
/// must not change, or a name reached the ruleset unquoted.
fn check_names_quoted(
    cfg: &Config,
    ids: &BTreeMap<String, u32>,
    usable: &BTreeSet<String>,
    facts: &Facts,
    p: &Plan,
) {
    let mut rename: BTreeMap<String, String> = BTreeMap::new();
    let names = cfg
        .uplinks
        .iter()
        .map(|u| &u.interface)
        .chain(&cfg.lan.interfaces);
    for name in names {
        let n = rename.len();
        rename
            .entry(name.clone())
            .or_insert_with(|| format!("renamed{n}"));
    }
    let mut other = cfg.clone();
    for u in &mut other.uplinks {
        u.interface = rename[&u.interface].clone();
    }
    for i in &mut other.lan.interfaces {
        *i = rename[i.as_str()].clone();
    }
    let facts = Facts {
        links: facts.links.as_ref().map(|l| {
            l.iter()
                .map(|(k, v)| (rename.get(k).unwrap_or(k).clone(), v.clone()))
                .collect()
        }),
        ..facts.clone()
    };
    let q = plan(&other, ids, usable, &facts);
    assert_eq!(
        unquoted(&p.nft),
        unquoted(&q.nft),
        "an interface name reached the ruleset outside quotes"
    );
    for s in p.nft.split('"').skip(1).step_by(2) {
        assert!(
            s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !s.contains('\\'),
            "quoted string {s:?} holds what nft would not take literally"
        );
    }
}

fn is_chain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 31
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Chains, counters, rules, tables, marks and sysctls.
fn check_plan(cfg: &Config, p: &Plan) {
    let tokens: Vec<&str> = p.nft.split_whitespace().collect();
    let mut chains = BTreeSet::new();
    let mut counters = BTreeSet::new();
    for w in tokens.windows(3) {
        match w {
            ["chain", name, "{"] => {
                assert!(is_chain_name(name), "chain name {name:?}");
                assert!(chains.insert(*name), "chain {name} declared twice");
            }
            ["counter", name, "{"] => {
                assert!(is_chain_name(name), "counter name {name:?}");
                assert!(counters.insert(*name), "counter {name} declared twice");
            }
            _ => {}
        }
    }
    for w in tokens.windows(2) {
        match w {
            ["goto" | "jump", target] => {
                let target = target.trim_end_matches(',');
                assert!(
                    chains.contains(target),
                    "goto to undeclared chain {target:?}"
                );
            }
            ["name", counter] => {
                let counter = counter.trim_matches('"');
                assert!(counters.contains(counter), "undeclared counter {counter:?}");
            }
            _ => {}
        }
    }
    // Every declared counter's count is carried into a replacing table, each its own.
    let counts: BTreeMap<String, u64> = counters
        .iter()
        .zip(41..)
        .map(|(c, n)| (c.to_string(), n))
        .collect();
    let carried = p.nft_transaction_carrying(&counts);
    for (c, n) in &counts {
        let decl = format!("counter {c} {{\n\t\tpackets {n} bytes 0\n\t}}");
        assert_eq!(carried.matches(&decl).count(), 1, "counter {c} not carried");
    }
    check_routing(cfg, p);
}

fn check_routing(cfg: &Config, p: &Plan) {
    let k = cfg.kernel;
    let prio = k.rule_priority..=k.rule_priority + RULE_PRIORITY_SPAN - 1;
    assert!(
        *prio.end() < LATE_RULE_PRIORITY,
        "rule priorities reach the late block"
    );
    for t in &p.tables {
        assert!(
            *t != 0 && !(253..=255).contains(t),
            "table {t} is not ours to use"
        );
    }
    for r in &p.rules {
        let late = LATE_RULE_PRIORITY..=32765;
        // Marked rules and the bound-interface ones (only the router's sockets bound to an
        // uplink's interface) sit at rule_priority; the rest only after everyone else's.
        if r.fwmark.is_some() || r.oif.is_some() {
            assert!(
                prio.contains(&r.priority),
                "marked rule priority {}",
                r.priority
            );
        } else {
            assert!(
                late.contains(&r.priority),
                "unmarked rule priority {}",
                r.priority
            );
        }
        if let Some((mark, mask)) = r.fwmark {
            assert_eq!(mask, k.mark_mask, "rule with a foreign mask");
            assert_eq!(mark & !mask, 0, "mark {mark:#x} outside the mask");
        }
        if let RuleAction::Lookup(t) = r.action {
            assert!(t == 254 || p.tables.contains(&t), "lookup of table {t}");
        }
    }
    let uplink_ifs: BTreeSet<&str> = cfg.uplinks.iter().map(|u| u.interface.as_str()).collect();
    for r in &p.routes {
        assert!(p.tables.contains(&r.table), "route in table {}", r.table);
        for nh in &r.nexthops {
            assert!(uplink_ifs.contains(nh.dev.as_str()), "route via {}", nh.dev);
        }
    }
    for s in &p.sysctls {
        let per_if = s
            .key
            .strip_prefix("net.ipv4.conf.")
            .and_then(|r| r.strip_suffix(".rp_filter"))
            .or_else(|| {
                s.key
                    .strip_prefix("net.ipv6.conf.")
                    .and_then(|r| r.strip_suffix(".accept_ra"))
            });
        if let Some(ifname) = per_if {
            assert!(uplink_ifs.contains(ifname), "rp_filter of {ifname:?}");
            assert!(
                crate::plan::sysctl_path(&s.key)
                    .is_some_and(|p| p.contains(&format!("/conf/{ifname}/"))),
                "sysctl path of {}",
                s.key
            );
        } else {
            let fixed = [
                "net.ipv4.ip_forward",
                "net.netfilter.nf_conntrack_acct",
                "net.netfilter.nf_conntrack_timestamp",
                "net.ipv6.conf.all.forwarding",
            ];
            assert!(fixed.contains(&s.key.as_str()), "sysctl {}", s.key);
            assert!(
                crate::plan::sysctl_path(&s.key).is_some(),
                "sysctl {}",
                s.key
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unquoted_name_is_caught() {
        assert_eq!(unquoted("a \"x\" b \"y\""), "a \"\" b \"\"");
        let r = std::panic::catch_unwind(|| unquoted("a \"x b"));
        assert!(r.is_err(), "unbalanced quotes must fail");
    }

    #[test]
    fn duplicate_chains_are_caught() {
        let text = "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.0.1\"\n";
        let plans = config_plan(text.as_bytes()).expect("accepted");
        let mut p = plans[0].clone();
        p.nft = p.nft.replace("chain restore_a {", "chain restore_main {");
        let cfg = crate::load("t.toml", text).expect("valid");
        let r = std::panic::catch_unwind(|| check_plan(&cfg, &p));
        assert!(r.is_err(), "a chain declared twice must fail");
    }
}
