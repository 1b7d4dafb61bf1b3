//! Policy routing and sysctls, in two blocks. Marked traffic, at *P* = `rule_priority`:
//! `fwmark → uplink table` (and `main` for the main mark), then at *P*+1 `unreachable` per
//! mark so marked traffic never leaks into another table. These only match packets multiwan
//! marked, and multiwan marks only connections whose own route would leave by an uplink, so
//! they shadow nobody. Unmarked traffic, after everyone else's rules and just before `main`:
//! 32763 `lookup main suppress_prefixlength 0` (specific routes win), 32764 the router's own
//! uplink addresses, 32765 the multipath default table — so Tailscale's table 52,
//! wg-quick's `not fwmark` table and the like see unmarked traffic first, as they would
//! without multiwan. One default route per uplink table, the multipath route, forwarding
//! on, loose `rp_filter` on uplink interfaces only.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::policies::reduce;
use super::{
    has_ipv6, Ctx, Facts, Family, IpRule, Nexthop, Route, RouteKind, RuleAction, Sysctl,
    GLOBAL_UNICAST6,
};
use crate::model::{Config, Uplink, WhenAllDown, LATE_RULE_PRIORITY};
use crate::net::IpNet;
use crate::order::Collect;

/// The next hop of an uplink's route if it can be installed now: `Some(None)` for a device
/// route (point-to-point), `Some(Some(g))` for a route via `g`, `None` when not installable
/// (interface missing, down or without an address, an `auto` gateway not learned yet —
/// always the case offline — or a route the kernel refused, [`Facts::refused`]). A fixed
/// IPv4 gateway is not tested against the interface's prefixes: a /32 or point-to-point
/// address routinely comes with an explicit on-link route to its gateway (DHCP classless
/// routes, PPP), which the facts do not hold; the daemon learns a refusal from the kernel.
pub fn next_hop(u: &Uplink, facts: &Facts) -> Option<Option<Ipv4Addr>> {
    if facts.is_refused(&u.name, Family::V4) {
        return None;
    }
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

/// The IPv6 next hop of an uplink's route if it can be installed now: the interface is up
/// with a global IPv6 address, and the gateway is fixed or has been learned (`auto`). A
/// fixed global gateway must be on the interface's link ([`Link::on_link6`](super::Link::on_link6)): the kernel
/// refuses a route via one that is not, and such a route must not hold up the rest of the
/// plan. A link-local gateway always is.
pub fn next_hop6(u: &Uplink, facts: &Facts) -> Option<Ipv6Addr> {
    let v6 = u.ipv6.as_ref()?;
    if facts.is_refused(&u.name, Family::V6) {
        return None;
    }
    let link = facts.links.as_ref().and_then(|l| l.get(&u.interface));
    match (v6.gateway, link) {
        // Offline: a fixed gateway is assumed routable, an auto one unknown.
        (Some(g), None) if facts.links.is_none() => Some(g),
        (_, None) => None,
        (_, Some(l)) if !l.up || l.addrs6.is_empty() => None,
        (Some(g), Some(l)) => l.on_link6(g).then_some(g),
        (None, Some(l)) => l.gateway6,
    }
}

/// The fixed IPv6 gateway of `u` when it is not on its interface's link (the interface is
/// up with a global address, so nothing else keeps the route out): what `status` names.
pub fn off_link_gateway6(u: &Uplink, facts: &Facts) -> Option<Ipv6Addr> {
    let g = u.ipv6.as_ref()?.gateway?;
    let l = facts.links.as_ref()?.get(&u.interface)?;
    (l.up && !l.addrs6.is_empty() && !l.on_link6(g)).then_some(g)
}

/// The next hop of `family` as the route wants it.
fn hop(u: &Uplink, facts: &Facts, family: Family) -> Option<Option<IpAddr>> {
    match family {
        Family::V4 => next_hop(u, facts).map(|g| g.map(IpAddr::V4)),
        Family::V6 => next_hop6(u, facts).map(|g| Some(IpAddr::V6(g))),
    }
}

/// Rules, routes and the tables they use.
pub(super) struct Routing {
    pub rules: Vec<IpRule>,
    pub routes: Vec<Route>,
    pub tables: BTreeSet<u32>,
}

pub(super) fn build(
    ctx: &Ctx,
    facts: &Facts,
    default_usable: &Option<Vec<usize>>,
    family: Family,
) -> Routing {
    let (cfg, k) = (ctx.cfg, ctx.k);
    let p = k.rule_priority;
    let late = LATE_RULE_PRIORITY;
    // Unmarked traffic: what main routes specifically stays there; only what would take a
    // default route comes to the uplinks — and only after every other user's rules.
    let mut rules = vec![IpRule {
        family,
        priority: late,
        fwmark: None,
        from: None,
        oif: None,
        to: None,
        action: RuleAction::MainNoDefault,
    }];
    let mut routes = Vec::new();
    let mut tables = BTreeSet::from([k.table_base]);
    for (i, u) in cfg.uplinks.iter().enumerate() {
        let table = k.table_of(ctx.id(i));
        tables.insert(table);
        let fw = Some((ctx.mark(i), k.mark_mask));
        rules.push(IpRule {
            family,
            priority: p,
            fwmark: fw,
            from: None,
            oif: None,
            to: None,
            action: RuleAction::Lookup(table),
        });
        rules.push(IpRule {
            family,
            priority: p + 1,
            fwmark: fw,
            from: None,
            oif: None,
            to: None,
            action: RuleAction::Unreachable,
        });
        if !u.has(family) {
            continue;
        }
        if let Some(via) = hop(u, facts, family) {
            routes.push(Route {
                family,
                table,
                nexthops: vec![Nexthop {
                    via,
                    dev: u.interface.clone(),
                    weight: 1,
                }],
                kind: RouteKind::Unicast,
                realm: (family == Family::V4).then_some(super::DEFAULT_ROUTE_REALM),
            });
        }
        // The interface's first uplink owns its rules: one table per bound socket and
        // router address.
        if cfg.uplinks.iter().position(|o| o.interface == u.interface) == Some(i) {
            rules.extend(interface_rules(u, table, p, facts, family));
        }
    }
    rules.push(IpRule {
        family,
        priority: p,
        fwmark: Some((k.mark_main(), k.mark_mask)),
        from: None,
        oif: None,
        to: None,
        action: RuleAction::Lookup(254),
    });
    // The `egress` chain asks with the none mark whether main routes a LAN connection out of
    // an uplink by a route of its own (not its default): this finds those routes and, at
    // P+1, nothing else.
    rules.push(IpRule {
        family,
        priority: p,
        fwmark: Some((k.mark_none(), k.mark_mask)),
        from: None,
        oif: None,
        to: None,
        action: RuleAction::MainNoDefault,
    });
    rules.push(IpRule {
        family,
        priority: p + 1,
        fwmark: Some((k.mark_none(), k.mark_mask)),
        from: None,
        oif: None,
        to: None,
        action: if cfg.balance.when_all_down == WhenAllDown::Blackhole {
            RuleAction::Blackhole
        } else {
            RuleAction::Unreachable
        },
    });
    if let Some(usable) = default_usable {
        let (rule, route) = catch_all(cfg, facts, usable, family);
        rules.push(rule);
        routes.extend(route);
    }
    crate::order::sort(&mut rules);
    rules.dedup();
    crate::order::sort(&mut routes);
    Routing {
        rules,
        routes,
        tables,
    }
}

/// The rules of an uplink's interface, for the uplink that owns it: the router's own
/// addresses on it answer over it (seed 004 §4.2.2), and a socket bound to it is routed by
/// its table.
fn interface_rules(
    u: &Uplink,
    table: u32,
    priority: u32,
    facts: &Facts,
    family: Family,
) -> Vec<IpRule> {
    // A socket bound to the interface (`ping -I wan1`, SO_BINDTODEVICE) is routed by the
    // uplink's table whatever mark the balancing gives it: the marked table's route leaves by
    // another interface, the lookup misses (IPv6: a bound socket's lookup is strict about the
    // device) and the packet is lost (IPv4: taken as on-link there; IPv6: the mark's
    // `unreachable` rule, ENETUNREACH to a UDP sender, a lost SYN for TCP). For IPv6 this
    // rule needs the uplinks' routes installed `onlink` ([`Nexthop::onlink`]), and it is only
    // for global destinations: a link-local one (always bound to its interface, by its scope)
    // is on the link, and the uplink's table would send it to the gateway; unique local and
    // other non-global destinations are left to main and the marks as before.
    let mut rules = vec![IpRule {
        family,
        priority,
        fwmark: None,
        from: None,
        oif: Some(u.interface.clone()),
        to: (family == Family::V6).then_some(IpNet::V6(GLOBAL_UNICAST6)),
        action: RuleAction::Lookup(table),
    }];
    for a in facts.addrs_of(&u.interface, family) {
        rules.push(IpRule {
            family,
            priority: LATE_RULE_PRIORITY + 1,
            fwmark: None,
            from: Some(a),
            oif: None,
            to: None,
            action: RuleAction::Lookup(table),
        });
    }
    rules
}

/// The default for everyone's unmarked lookups: the router's own traffic, and the `egress`
/// chain's question whether a LAN connection would leave by an uplink. When the default
/// policy has usable uplinks but none can be routed now, it answers as `when_all_down` says
/// (main: no route here, fall through). When it has none at all there is no such rule: new
/// connections are marked `to_none`/`to_main` by the policy instead.
fn catch_all(
    cfg: &Config,
    facts: &Facts,
    usable: &[usize],
    family: Family,
) -> (IpRule, Option<Route>) {
    let table = cfg.kernel.table_base;
    let all_down = match cfg.balance.when_all_down {
        WhenAllDown::Unreachable => Some(RouteKind::Unreachable),
        WhenAllDown::Blackhole => Some(RouteKind::Blackhole),
        WhenAllDown::Main => None,
    };
    let route = multipath(cfg, facts, usable, table, family).or(all_down.map(|kind| Route {
        family,
        table,
        nexthops: Vec::new(),
        kind,
        realm: None,
    }));
    let rule = IpRule {
        family,
        priority: LATE_RULE_PRIORITY + 2,
        fwmark: None,
        from: None,
        oif: None,
        to: None,
        action: RuleAction::Lookup(table),
    };
    (rule, route)
}

/// The largest weight the kernel keeps for a nexthop (`rtnh_hops` is 8 bits: weight − 1).
pub const MAX_NEXTHOP_WEIGHT: u32 = 256;

/// The weighted multipath default route over the default policy's routable usable uplinks,
/// for the router's own unmarked traffic. Weights (up to 1000 each) are reduced by their
/// common divisor and, where the largest is still above [`MAX_NEXTHOP_WEIGHT`], scaled down
/// to it (rounded, never below 1): the kernel would otherwise keep other weights than the
/// plan's, and the verification would refuse every update. The connections' own split is the
/// policy maps', which stay exact.
fn multipath(
    cfg: &Config,
    facts: &Facts,
    usable: &[usize],
    table: u32,
    family: Family,
) -> Option<Route> {
    let routable: Vec<(usize, Option<IpAddr>)> = usable
        .iter()
        .filter_map(|i| hop(&cfg.uplinks[*i], facts, family).map(|via| (*i, via)))
        .collect();
    if routable.is_empty() {
        return None;
    }
    let weights = nexthop_weights(&reduce(
        &routable
            .iter()
            .map(|(i, _)| cfg.uplinks[*i].weight)
            .collect::<Vec<_>>(),
    ));
    Some(Route {
        family,
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
        kind: RouteKind::Unicast,
        realm: (family == Family::V4).then_some(super::DEFAULT_ROUTE_REALM),
    })
}

/// Weights scaled into the kernel's 1..=[`MAX_NEXTHOP_WEIGHT`] when the largest is above it.
fn nexthop_weights(weights: &[u32]) -> Vec<u32> {
    let top = weights.iter().copied().max().unwrap_or(1);
    if top <= MAX_NEXTHOP_WEIGHT {
        return weights.to_vec();
    }
    weights
        .iter()
        .map(|w| ((w * MAX_NEXTHOP_WEIGHT + top / 2) / top).max(1))
        .collect()
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
    let exists = |i: &str| facts.links.as_ref().is_none_or(|l| l.contains_key(i));
    let ifaces: BTreeSet<&str> = cfg
        .uplinks
        .iter()
        .map(|u| u.interface.as_str())
        .collect_set();
    for i in ifaces {
        if exists(i) {
            sysctls.push(Sysctl {
                key: format!("net.ipv4.conf.{i}.rp_filter"),
                value: "2".into(),
            });
        }
    }
    if has_ipv6(cfg) {
        // With forwarding on, the kernel ignores router advertisements unless accept_ra is 2:
        // a `gateway6 = "auto"` uplink would never learn (or renew) its default route. Set
        // before forwarding: turning forwarding on deletes the default routes learned on
        // every interface whose accept_ra is not 2 at that moment, and a quiet router may
        // not advertise again for minutes.
        let auto: BTreeSet<&str> = cfg
            .uplinks
            .iter()
            .filter(|u| u.ipv6.as_ref().is_some_and(|v| v.gateway.is_none()))
            .map(|u| u.interface.as_str())
            .collect_set();
        for i in auto {
            if exists(i) {
                sysctls.push(Sysctl {
                    key: format!("net.ipv6.conf.{i}.accept_ra"),
                    value: "2".into(),
                });
            }
        }
        sysctls.push(Sysctl {
            key: "net.ipv6.conf.all.forwarding".into(),
            value: "1".into(),
        });
    }
    sysctls
}

/// The `/proc/sys` path of a sysctl key multiwan may set, or `None` for any other key. Paths
/// are derived from keys, never stored, so a saved state file cannot make `down` write
/// anywhere else; interface names must be ones the kernel allows (no `/`, not `.`/`..`).
pub fn sysctl_path(key: &str) -> Option<String> {
    const FIXED: [&str; 4] = [
        "net.ipv4.ip_forward",
        "net.netfilter.nf_conntrack_acct",
        "net.netfilter.nf_conntrack_timestamp",
        "net.ipv6.conf.all.forwarding",
    ];
    if FIXED.contains(&key) {
        return Some(format!("/proc/sys/{}", key.replace('.', "/")));
    }
    let (dir, ifname, leaf) = if let Some(rest) = key.strip_prefix("net.ipv4.conf.") {
        ("ipv4", rest.strip_suffix(".rp_filter")?, "rp_filter")
    } else {
        let rest = key.strip_prefix("net.ipv6.conf.")?;
        ("ipv6", rest.strip_suffix(".accept_ra")?, "accept_ra")
    };
    let valid = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    valid.then(|| format!("/proc/sys/net/{dir}/conf/{ifname}/{leaf}"))
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
            sysctl_path("net.ipv6.conf.wan1.accept_ra").as_deref(),
            Some("/proc/sys/net/ipv6/conf/wan1/accept_ra")
        );
        assert_eq!(
            sysctl_path("net.ipv6.conf.all.forwarding").as_deref(),
            Some("/proc/sys/net/ipv6/conf/all/forwarding")
        );
        assert_eq!(sysctl_path("net.ipv6.conf.wan1.forwarding"), None);
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
