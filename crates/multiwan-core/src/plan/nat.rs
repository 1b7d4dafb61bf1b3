//! Source NAT per uplink in `postrouting` (srcnat priority): `masquerade` for
//! `snat = "auto"` (it follows DHCP/PPPoE address changes without a rebuild), `snat ip to A`
//! for a fixed address. Interfaces shared by two uplinks (two routers on one segment) are told
//! apart by connection mark, with a per-interface fallback for unmarked traffic.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{hex, shares_interface, Ctx};
use crate::model::{Snat, Snat6};

/// A new connection carries the mark of the uplink it actually leaves by. The router's own
/// socket bound to an uplink's interface (`ping -I wan1`, SO_BINDTODEVICE) keeps that
/// interface whatever uplink the `output` hook picked for it (the bound-interface rules),
/// and so does a connection another user's earlier rule sends out of another uplink: its
/// connection mark is set to that interface's uplink, so its answers, `flows`, and the flush
/// when an uplink fails all follow where it went. Only marks of uplinks on other interfaces
/// are changed (not the main or none marks, not an interface two uplinks share); the nat
/// hook sees the first packet of each connection only.
fn egress_marks(ctx: &Ctx) -> String {
    let cfg = ctx.cfg;
    let mut w = String::new();
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if shares_interface(cfg, i) {
            continue;
        }
        let mut others: Vec<u32> = (0..cfg.uplinks.len())
            .filter(|&j| cfg.uplinks[j].interface != u.interface)
            .map(|j| ctx.mark(j))
            .collect();
        crate::order::sort(&mut others);
        others.dedup();
        if others.is_empty() {
            continue;
        }
        let others: Vec<String> = others.into_iter().map(hex).collect();
        let _ = writeln!(
            w,
            "\t\toifname \"{}\" ct mark and {} {{ {} }} {}",
            u.interface,
            hex(ctx.k.mark_mask),
            others.join(", "),
            ctx.set_mark_stmts(ctx.mark(i), true)
        );
    }
    w
}

pub(super) fn postrouting(ctx: &Ctx) -> String {
    let cfg = ctx.cfg;
    let mask = hex(ctx.k.mark_mask);
    let mut w = String::new();
    let _ = writeln!(w, "\tchain postrouting {{");
    let _ = writeln!(
        w,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    w.push_str(&egress_marks(ctx));
    let mut fallback_done = BTreeSet::new();
    let mut fallbacks = Vec::new();
    let mut fallbacks6 = Vec::new();
    for (i, u) in cfg.uplinks.iter().enumerate() {
        let nat = match u.snat {
            Snat::None => continue,
            Snat::Auto => "masquerade".to_string(),
            Snat::To(a) => format!("snat ip to {a}"),
        };
        if shares_interface(cfg, i) {
            let _ = writeln!(
                w,
                "\t\toifname \"{}\" ct mark and {mask} == {} {nat}",
                u.interface,
                hex(ctx.mark(i))
            );
            if fallback_done.insert(u.interface.clone()) {
                fallbacks.push(format!(
                    "\t\toifname \"{}\" meta nfproto ipv4 {nat}",
                    u.interface
                ));
            }
        } else {
            let _ = writeln!(w, "\t\toifname \"{}\" meta nfproto ipv4 {nat}", u.interface);
        }
    }
    for f in fallbacks {
        let _ = writeln!(w, "{f}");
    }
    // IPv6: NAT66 to the uplink's address unless this ISP routes the LAN's prefix.
    let mut fallback_done = BTreeSet::new();
    for (i, u) in cfg.uplinks.iter().enumerate() {
        let Some(v6) = &u.ipv6 else { continue };
        let nat = match v6.snat {
            Snat6::None => continue,
            Snat6::Auto => "masquerade".to_string(),
            Snat6::To(a) => format!("snat ip6 to {a}"),
        };
        if shares_interface(cfg, i) {
            let _ = writeln!(
                w,
                "\t\toifname \"{}\" meta nfproto ipv6 ct mark and {mask} == {} {nat}",
                u.interface,
                hex(ctx.mark(i))
            );
            if fallback_done.insert(u.interface.clone()) {
                fallbacks6.push(format!(
                    "\t\toifname \"{}\" meta nfproto ipv6 {nat}",
                    u.interface
                ));
            }
        } else {
            let _ = writeln!(w, "\t\toifname \"{}\" meta nfproto ipv6 {nat}", u.interface);
        }
    }
    for f in fallbacks6 {
        let _ = writeln!(w, "{f}");
    }
    let _ = writeln!(w, "\t}}");
    w
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, ids};
    use super::*;
    use crate::model::KernelOpts;

    #[test]
    fn golden_nat_with_a_shared_segment() {
        let c = cfg("[lan]\ninterfaces=[\"eth0\"]\n[[uplink]]\nname=\"a\"\ninterface=\"eth1\"\ngateway=\"10.0.0.1\"\n[[uplink]]\nname=\"b\"\ninterface=\"eth1\"\ngateway=\"10.0.0.2\"\nsnat=\"10.0.0.9\"\n[[uplink]]\nname=\"c\"\ninterface=\"ppp0\"\n[uplink.check]\ntargets=[\"192.0.2.1\"]\n");
        let ids = ids(&c);
        let ctx = Ctx {
            cfg: &c,
            k: KernelOpts::default(),
            ids: &ids,
        };
        insta::assert_snapshot!(postrouting(&ctx));
    }
}
