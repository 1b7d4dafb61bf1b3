//! The hook chains. `prerouting` (mangle priority): packets from the LAN of connections that
//! already carry an uplink mark get it restored; a new LAN connection goes to `egress`, which
//! balances it only if its own route — the kernel's lookup with every rule, multiwan's
//! unmarked block last — leaves by an uplink: a LAN, a tailnet, a tunnel or a VPN route keeps
//! its connection. New connections arriving *on* an uplink get that uplink's connection mark
//! so replies leave where the request came in. `output` (a route hook, so the kernel
//! re-routes after marking): the same for the router's own traffic, judged by the interface
//! its route chose, skipping packets that already carry a mark under the mask (health
//! probes) and packets whose foreign mark another user's rule matches with bits multiwan
//! would change (`Facts::fragile_marks`).

use std::fmt::Write as _;

use super::{has_ipv6, hex, quoted_set, shares_interface, Ctx, Facts, RESTORE_MAP};

/// New IPv4 connections that may be balanced: not to the router itself, not broadcast or
/// multicast.
const NEW4: &str =
    "ct state new meta nfproto ipv4 fib daddr type != { local, broadcast, multicast }";
/// New IPv6 connections that may be balanced: not to the router itself, not multicast, not
/// link-local (which never leaves the link and has no business in an uplink's table).
const NEW6: &str =
    "ct state new meta nfproto ipv6 fib daddr type != { local, multicast } ip6 daddr != fe80::/10";

/// The uplinks' interfaces (those carrying IPv6 for `v6`), as an nft set.
fn uplink_ifs(ctx: &Ctx, v6: bool) -> String {
    let mut ifs: Vec<String> = ctx
        .cfg
        .uplinks
        .iter()
        .filter(|u| !v6 || u.ipv6.is_some())
        .map(|u| u.interface.clone())
        .collect();
    crate::order::sort(&mut ifs);
    ifs.dedup();
    quoted_set(&ifs)
}

/// Lines that leave alone packets carrying a foreign mark another user's rule matches with
/// bits under multiwan's mask.
fn fragile(ctx: &Ctx, facts: &Facts) -> String {
    let mut w = String::new();
    for (value, mask) in facts.fragile_marks(ctx.k.mark_mask) {
        let _ = writeln!(
            w,
            "\t\tmeta mark and {} == {} return",
            hex(mask),
            hex(value)
        );
    }
    w
}

pub(super) fn prerouting(ctx: &Ctx, facts: &Facts) -> String {
    let cfg = ctx.cfg;
    let mask = hex(ctx.k.mark_mask);
    let lan = quoted_set(&cfg.lan.interfaces);
    let mut w = String::new();
    let _ = writeln!(w, "\tchain egress {{");
    w.push_str(&fragile(ctx, facts));
    // Main's own routes out of an uplink (its connected subnet: the ISP's gateway, DHCP
    // server or modem; a static route) are not multiwan's: asked with the none mark, the
    // lookup finds only those (routing.rs), and the packet leaves unmarked, by main.
    let none = ctx.k.mark_none();
    let _ = writeln!(w, "\t\t{}", ctx.set_mark_stmts(none, false));
    let _ = writeln!(
        w,
        "\t\tfib daddr . mark oifname {} meta mark set meta mark and {} accept",
        uplink_ifs(ctx, false),
        hex(!ctx.k.mark_mask)
    );
    let _ = writeln!(
        w,
        "\t\tmeta mark set meta mark and {}",
        hex(!ctx.k.mark_mask)
    );
    let _ = writeln!(
        w,
        "\t\tmeta nfproto ipv4 fib daddr . mark oifname {} goto balance",
        uplink_ifs(ctx, false)
    );
    let dual = has_ipv6(cfg);
    if dual {
        let _ = writeln!(
            w,
            "\t\tmeta nfproto ipv6 fib daddr . mark oifname {} goto balance6",
            uplink_ifs(ctx, true)
        );
    }
    let _ = writeln!(w, "\t}}\n");
    let _ = writeln!(w, "\tchain prerouting {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook prerouting priority mangle; policy accept;"
    );
    let _ = writeln!(
        w,
        "\t\tiifname {lan} ct mark and {mask} vmap @{RESTORE_MAP}"
    );
    let _ = writeln!(w, "\t\tiifname {lan} {NEW4} goto egress");
    if dual {
        let _ = writeln!(w, "\t\tiifname {lan} {NEW6} goto egress");
    }
    // Inbound: connections arriving on an uplink are answered over it. Only for interfaces
    // that belong to exactly one uplink; shared segments are told apart by gateway only. An
    // uplink without IPv6 marks only IPv4 (its IPv6 table would be empty; in an IPv4-only
    // config IPv6 is not multiwan's at all).
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if shares_interface(cfg, i) {
            continue;
        }
        let only4 = if u.ipv6.is_none() {
            "meta nfproto ipv4 "
        } else {
            ""
        };
        let _ = writeln!(
            w,
            "\t\tiifname \"{}\" {only4}ct state new ct mark and {mask} == 0 {}",
            u.interface,
            ctx.set_mark_stmts(ctx.mark(i), true)
        );
    }
    let _ = writeln!(w, "\t}}\n");
    w
}

pub(super) fn output(ctx: &Ctx, facts: &Facts) -> String {
    let mask = hex(ctx.k.mark_mask);
    let mut w = String::new();
    let _ = writeln!(w, "\tchain output {{");
    let _ = writeln!(
        w,
        "\t\ttype route hook output priority mangle; policy accept;"
    );
    let _ = writeln!(w, "\t\tmeta mark and {mask} != 0 return");
    w.push_str(&fragile(ctx, facts));
    // Only what its own route sends out an uplink is multiwan's: a reply or ICMP error to
    // the LAN, a tunnel's or a tailnet's packet keeps its route even on a marked connection.
    let _ = writeln!(w, "\t\toifname != {} return", uplink_ifs(ctx, false));
    // An unmarked IPv4 packet is multiwan's only if its route is one of multiwan's (their
    // realm), not one main has for it (an uplink's connected subnet): a new connection there
    // is not balanced, and a reply to an on-link host (a modem connecting in) leaves
    // directly instead of by the uplink's gateway. A packet another program marked may have
    // been sent to main by that program's rule (tailscaled's 0x80000), whose default route
    // is no better than multiwan's: it is balanced and restored as before.
    let _ = writeln!(
        w,
        "\t\tmeta nfproto ipv4 meta mark 0 meta rtclassid != {} return",
        super::DEFAULT_ROUTE_REALM
    );
    if has_ipv6(ctx.cfg) {
        w.push_str(&own_routes6(ctx, facts));
    }
    let _ = writeln!(w, "\t\tct mark and {mask} vmap @{RESTORE_MAP}");
    // Without local balancing the router's own connections keep the main table, as they
    // would without multiwan (the multipath table is there for everyone's lookups).
    let (to4, to6) = if ctx.cfg.balance.local {
        ("balance", "balance6")
    } else {
        ("to_main", "to_main")
    };
    let _ = writeln!(w, "\t\t{NEW4} goto {to4}");
    if has_ipv6(ctx.cfg) {
        let _ = writeln!(w, "\t\t{NEW6} oifname {} goto {to6}", uplink_ifs(ctx, true));
    }
    let _ = writeln!(w, "\t}}\n");
    w
}

/// The IPv6 counterpart of the realm test (IPv6 routes carry no realm): an unmarked packet
/// is multiwan's only if its next hop is one of the uplinks' IPv6 gateways, the next hops of
/// every IPv6 route multiwan installs. Main's own route out of an uplink — its connected
/// subnet, whose next hop is the destination itself, or a static route via another router —
/// keeps it: the ISP's on-link servers and modem are reached directly, not by a balanced
/// uplink. A connection to a gateway itself is on its link and not balanced either. The
/// gateways are the configured ones and the learned ones, whatever the uplinks' health, so a
/// failover does not change this chain.
fn own_routes6(ctx: &Ctx, facts: &Facts) -> String {
    let mut gateways: Vec<String> = ctx
        .cfg
        .uplinks
        .iter()
        .filter_map(|u| {
            let v6 = u.ipv6.as_ref()?;
            v6.gateway
                .or_else(|| facts.links.as_ref()?.get(&u.interface)?.gateway6)
        })
        .map(|g| g.to_string())
        .collect();
    crate::order::sort(&mut gateways);
    gateways.dedup();
    if gateways.is_empty() {
        return "\t\tmeta nfproto ipv6 meta mark 0 return\n".into();
    }
    let set = format!("{{ {} }}", gateways.join(", "));
    format!(
        "\t\tmeta nfproto ipv6 meta mark 0 ip6 daddr {set} return\n\t\tmeta nfproto ipv6 meta mark 0 rt ip6 nexthop != {set} return\n"
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, ids, TWO};
    use super::*;
    use crate::model::KernelOpts;

    #[test]
    fn golden_hooks() {
        let c = cfg(TWO);
        let ids = ids(&c);
        let ctx = Ctx {
            cfg: &c,
            k: KernelOpts::default(),
            ids: &ids,
        };
        let f = Facts::default();
        insta::assert_snapshot!(format!("{}{}", prerouting(&ctx, &f), output(&ctx, &f)));
    }
}
