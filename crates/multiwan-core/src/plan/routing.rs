//! Policy routing and sysctls. With priority *P* = `rule_priority`: `lookup main
//! suppress_prefixlength 0` first (local and LAN routes win), then `fwmark → uplink table`,
//! then `unreachable` per mark so marked traffic never leaks into the main table, then the
//! router's own addresses, then the multipath default table for unmarked local traffic. One
//! default route per uplink table, the multipath route, forwarding on, loose `rp_filter` on
//! uplink interfaces only.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::policies::reduce;
use super::{Ctx, Facts, IpRule, Nexthop, Route, RuleAction, Sysctl};
use crate::model::{Config, Uplink, WhenAllDown};

/// The next hop of an uplink's route if it can be installed now: `Some(None)` for a device
/// route (point-to-point), `Some(Some(g))` for a route via `g`, `None` when not installable
/// (interface missing, down or without an address, or an `auto` gateway not learned yet —
/// always the case offline).
pub fn next_hop(u: &Uplink, facts: &Facts) -> Option<Option<Ipv4Addr>> {
    if u.gateway_auto {
        let link = facts.links.as_ref()?.get(&u.interface)?;
        if !link.up || link.addrs.is_empty() {
            return None;
        }
        return link.gateway.map(Some);
    }
    facts
        .routable(&u.interface, u.gateway.is_some())
        .then_some(u.gateway)
}

/// Rules, routes and the tables they use.
pub(super) struct Routing {
    pub rules: Vec<IpRule>,
    pub routes: Vec<Route>,
    pub tables: BTreeSet<u32>,
}

pub(super) fn build(ctx: &Ctx, facts: &Facts, default_usable: &Option<Vec<usize>>) -> Routing {
    let (cfg, k) = (ctx.cfg, ctx.k);
    let p = k.rule_priority;
    let mut rules = vec![IpRule {
        priority: p,
        fwmark: None,
        from: None,
        action: RuleAction::MainNoDefault,
    }];
    let mut routes = Vec::new();
    let mut tables = BTreeSet::from([k.table_base]);
    for (i, u) in cfg.uplinks.iter().enumerate() {
        let table = k.table_of(ctx.id(i));
        tables.insert(table);
        let fw = Some((ctx.mark(i), k.mark_mask));
        rules.push(IpRule {
            priority: p + 1,
            fwmark: fw,
            from: None,
            action: RuleAction::Lookup(table),
        });
        rules.push(IpRule {
            priority: p + 2,
            fwmark: fw,
            from: None,
            action: RuleAction::Unreachable,
        });
        if let Some(via) = next_hop(u, facts) {
            routes.push(Route {
                table,
                nexthops: vec![Nexthop {
                    via,
                    dev: u.interface.clone(),
                    weight: 1,
                }],
            });
        }
        // The router's own addresses on this uplink answer over it (seed 004 §4.2.2).
        let owner = cfg.uplinks.iter().position(|o| o.interface == u.interface) == Some(i);
        if owner {
            for a in facts.addrs(&u.interface) {
                rules.push(IpRule {
                    priority: p + 3,
                    fwmark: None,
                    from: Some(*a),
                    action: RuleAction::Lookup(table),
                });
            }
        }
    }
    rules.push(IpRule {
        priority: p + 1,
        fwmark: Some((k.mark_main(), k.mark_mask)),
        from: None,
        action: RuleAction::Lookup(254),
    });
    rules.push(IpRule {
        priority: p + 2,
        fwmark: Some((k.mark_none(), k.mark_mask)),
        from: None,
        action: if cfg.balance.when_all_down == WhenAllDown::Blackhole {
            RuleAction::Blackhole
        } else {
            RuleAction::Unreachable
        },
    });
    if let (true, Some(usable)) = (cfg.balance.local, default_usable) {
        if let Some(r) = multipath(cfg, facts, usable, k.table_base) {
            routes.push(r);
            rules.push(IpRule {
                priority: p + 4,
                fwmark: None,
                from: None,
                action: RuleAction::Lookup(k.table_base),
            });
        }
    }
    rules.sort();
    rules.dedup();
    routes.sort();
    Routing {
        rules,
        routes,
        tables,
    }
}

/// The weighted multipath default route over the default policy's routable usable uplinks,
/// for the router's own unmarked traffic.
fn multipath(cfg: &Config, facts: &Facts, usable: &[usize], table: u32) -> Option<Route> {
    let routable: Vec<(usize, Option<Ipv4Addr>)> = usable
        .iter()
        .filter_map(|i| next_hop(&cfg.uplinks[*i], facts).map(|via| (*i, via)))
        .collect();
    if routable.is_empty() {
        return None;
    }
    let weights = reduce(
        &routable
            .iter()
            .map(|(i, _)| cfg.uplinks[*i].weight)
            .collect::<Vec<_>>(),
    );
    Some(Route {
        table,
        nexthops: routable
            .iter()
            .zip(weights)
            .map(|((i, via), w)| Nexthop {
                via: *via,
                dev: cfg.uplinks[*i].interface.clone(),
                weight: w,
            })
            .collect(),
    })
}

/// Forwarding, conntrack accounting (bytes and start time per connection, for `flows` and
/// `status`) and loose `rp_filter` on every uplink interface that exists.
pub(super) fn sysctls(cfg: &Config, facts: &Facts) -> Vec<Sysctl> {
    let mut sysctls: Vec<Sysctl> = [
        "net.ipv4.ip_forward",
        "net.netfilter.nf_conntrack_acct",
        "net.netfilter.nf_conntrack_timestamp",
    ]
    .into_iter()
    .map(|k| Sysctl {
        key: k.into(),
        value: "1".into(),
    })
    .collect();
    let ifaces: BTreeSet<&str> = cfg.uplinks.iter().map(|u| u.interface.as_str()).collect();
    for i in ifaces {
        if facts.links.as_ref().is_none_or(|l| l.contains_key(i)) {
            sysctls.push(Sysctl {
                key: format!("net.ipv4.conf.{i}.rp_filter"),
                value: "2".into(),
            });
        }
    }
    sysctls
}

/// The `/proc/sys` path of a sysctl key multiwan may set, or `None` for any other key. Paths
/// are derived from keys, never stored, so a saved state file cannot make `down` write
/// anywhere else; interface names must be ones the kernel allows (no `/`, not `.`/`..`).
pub fn sysctl_path(key: &str) -> Option<String> {
    const FIXED: [&str; 3] = [
        "net.ipv4.ip_forward",
        "net.netfilter.nf_conntrack_acct",
        "net.netfilter.nf_conntrack_timestamp",
    ];
    if FIXED.contains(&key) {
        return Some(format!("/proc/sys/{}", key.replace('.', "/")));
    }
    let rest = key.strip_prefix("net.ipv4.conf.")?;
    let ifname = rest.strip_suffix(".rp_filter")?;
    let valid = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    valid.then(|| format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths_come_from_known_keys_only() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth1.rp_filter").as_deref(),
            Some("/proc/sys/net/ipv4/conf/eth1/rp_filter")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0.100.rp_filter").as_deref(),
            Some("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"),
            "dots in interface names stay in the name"
        );
        assert_eq!(
            sysctl_path("net.netfilter.nf_conntrack_acct").as_deref(),
            Some("/proc/sys/net/netfilter/nf_conntrack_acct")
        );
        for bad in [
            "kernel.core_pattern",
            "net.ipv4.conf.../../../kernel/core_pattern.rp_filter",
            "net.ipv4.conf..rp_filter",
            "net.ipv4.conf.a/b.rp_filter",
            "net.ipv4.conf.eth1.forwarding",
        ] {
            assert_eq!(sysctl_path(bad), None, "{bad}");
        }
    }
}
