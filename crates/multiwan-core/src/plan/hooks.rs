//! The hook chains. `prerouting` (mangle priority): packets from the LAN of connections that
//! already carry an uplink mark get it restored; new LAN connections go through `balance`;
//! new connections arriving *on* an uplink get that uplink's connection mark so replies leave
//! where the request came in. `output` (a route hook, so the kernel re-routes after marking):
//! the same for the router's own traffic, skipping packets that already carry a mark under the
//! mask (health probes, `SO_MARK` users).

use std::fmt::Write as _;

use super::{has_ipv6, hex, quoted_set, shares_interface, Ctx, RESTORE_MAP};

/// New IPv6 connections that are balanced: not to the router itself, not multicast, not
/// link-local (which never leaves the link and has no business in an uplink's table).
const BALANCED6: &str =
    "ct state new meta nfproto ipv6 fib daddr type != { local, multicast } ip6 daddr != fe80::/10 goto balance6";

pub(super) fn prerouting(ctx: &Ctx) -> String {
    let cfg = ctx.cfg;
    let mask = hex(ctx.k.mark_mask);
    let lan = quoted_set(&cfg.lan.interfaces);
    let mut w = String::new();
    let _ = writeln!(w, "\tchain prerouting {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook prerouting priority mangle; policy accept;"
    );
    let _ = writeln!(
        w,
        "\t\tiifname {lan} ct mark and {mask} vmap @{RESTORE_MAP}"
    );
    let _ = writeln!(
        w,
        "\t\tiifname {lan} ct state new meta nfproto ipv4 fib daddr type != {{ local, broadcast, multicast }} goto balance"
    );
    let dual = has_ipv6(cfg);
    if dual {
        let _ = writeln!(w, "\t\tiifname {lan} {BALANCED6}");
    }
    // Inbound: connections arriving on an uplink are answered over it. Only for interfaces
    // that belong to exactly one uplink; shared segments are told apart by gateway only. An
    // uplink without IPv6 marks only IPv4 (its IPv6 table would be empty).
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if shares_interface(cfg, i) {
            continue;
        }
        let only4 = if dual && u.ipv6.is_none() {
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

pub(super) fn output(ctx: &Ctx) -> String {
    let mask = hex(ctx.k.mark_mask);
    let mut w = String::new();
    let _ = writeln!(w, "\tchain output {{");
    let _ = writeln!(
        w,
        "\t\ttype route hook output priority mangle; policy accept;"
    );
    let _ = writeln!(w, "\t\tmeta mark and {mask} != 0 return");
    let _ = writeln!(w, "\t\tct mark and {mask} vmap @{RESTORE_MAP}");
    if ctx.cfg.balance.local {
        let _ = writeln!(
            w,
            "\t\tct state new meta nfproto ipv4 fib daddr type != {{ local, broadcast, multicast }} goto balance"
        );
        if has_ipv6(ctx.cfg) {
            let _ = writeln!(w, "\t\t{BALANCED6}");
        }
    }
    let _ = writeln!(w, "\t}}\n");
    w
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
        insta::assert_snapshot!(format!("{}{}", prerouting(&ctx), output(&ctx)));
    }
}
