//! Source NAT per uplink in `postrouting` (srcnat priority): `masquerade` for
//! `snat = "auto"` (it follows DHCP/PPPoE address changes without a rebuild), `snat ip to A`
//! for a fixed address. Interfaces shared by two uplinks (two routers on one segment) are told
//! apart by connection mark, with a per-interface fallback for unmarked traffic.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{hex, shares_interface, Ctx};
use crate::model::{Snat, Snat6};

pub(super) fn postrouting(ctx: &Ctx) -> String {
    let cfg = ctx.cfg;
    let mask = hex(ctx.k.mark_mask);
    let mut w = String::new();
    let _ = writeln!(w, "\tchain postrouting {{");
    let _ = writeln!(
        w,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
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
