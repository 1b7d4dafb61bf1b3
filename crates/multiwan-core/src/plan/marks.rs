//! Uplink ids and the chains that write marks: each uplink's `up_NAME` (count the new
//! connection, set connection and packet mark) and `restore_NAME` (packet mark from the
//! connection mark), the reserved `to_main` / `to_none`, and the `restore` map from connection
//! mark to restore chain — which is also where the installed ids are read back from.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use super::{has_ipv6, hex, shares_interface, Ctx, Facts, RESTORE_MAP};
use crate::model::Config;
use crate::net::{Ipv4Net, Ipv6Net};

/// Errors that can only be found with runtime inputs (the config itself is valid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Every uplink id the mark mask allows is taken.
    #[error("no free uplink id: mark mask {mask:#010x} has room for {capacity} uplinks")]
    NoFreeId {
        /// The `[kernel] mark_mask`.
        mask: u32,
        /// How many uplink ids the mask holds (`KernelOpts::id_capacity`).
        capacity: u32,
    },
}

/// Assigns each uplink a stable id (its mark is `id << shift`, its table `table_base + id`).
/// Ids already in use (read back from the kernel) are kept for uplinks that still exist, so a
/// reload or restart never re-marks a live connection; new uplinks take the lowest free id.
pub fn assign_ids(
    cfg: &Config,
    previous: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, u32>, PlanError> {
    let capacity = cfg.kernel.id_capacity();
    let mut ids = BTreeMap::new();
    let mut used = BTreeSet::new();
    for u in &cfg.uplinks {
        if let Some(&id) = previous.get(&u.name) {
            if (1..=capacity).contains(&id) && used.insert(id) {
                ids.insert(u.name.clone(), id);
            }
        }
    }
    for u in &cfg.uplinks {
        if ids.contains_key(&u.name) {
            continue;
        }
        let id = (1..=capacity)
            .find(|i| !used.contains(i))
            .ok_or(PlanError::NoFreeId {
                mask: cfg.kernel.mark_mask,
                capacity,
            })?;
        used.insert(id);
        ids.insert(u.name.clone(), id);
    }
    Ok(ids)
}

/// The first rules of uplink `i`'s restore chain: the packets of a connection that came in
/// on the uplink (a port forward, or to the router itself) going back to a host on that
/// uplink's own connected subnet (a device on the modem's or upstream router's LAN) keep no
/// mark: main's connected route takes them to that host directly, as its packets came,
/// rather than the uplink's table to the gateway — which would see one direction of the
/// connection (a stateful gateway drops it). Only reply-direction packets are looked at, so
/// the packets of balanced connections pay one comparison. From the facts: nothing offline,
/// nothing for an interface two uplinks share (their inbound connections carry no mark).
fn on_link_replies(ctx: &Ctx, facts: &Facts, i: usize) -> String {
    let mut w = String::new();
    let u = &ctx.cfg.uplinks[i];
    let Some(link) = facts.links.as_ref().and_then(|l| l.get(&u.interface)) else {
        return w;
    };
    if shares_interface(ctx.cfg, i) {
        return w;
    }
    // Not a default route's "network" (a point-to-point link's device route: all of the
    // family) nor IPv6 link-local, which is never forwarded.
    let v4: Vec<_> = link.onlink4.iter().filter(|n| n.prefix() > 0).collect();
    let v6: Vec<_> = link
        .onlink6
        .iter()
        .filter(|n| n.prefix() > 0 && !n.addr().is_unicast_link_local())
        .collect();
    let mut sets = vec![("ip", outermost(v4, Ipv4Net::prefix, Ipv4Net::covers))];
    if has_ipv6(ctx.cfg) && u.ipv6.is_some() {
        sets.push(("ip6", outermost(v6, Ipv6Net::prefix, Ipv6Net::covers)));
    }
    for (proto, nets) in sets {
        if !nets.is_empty() {
            let _ = writeln!(
                w,
                "\t\tct direction reply {proto} daddr {{ {} }} return",
                nets.join(", ")
            );
        }
    }
    w
}

/// The texts of the networks that no other one covers, sorted: an nft interval set refuses
/// overlapping elements. Shortest prefixes first, so a covering network is kept before the
/// ones it covers (an equal one included).
fn outermost<N: fmt::Display>(
    mut nets: Vec<&N>,
    prefix: fn(&N) -> u8,
    covers: fn(&N, &N) -> bool,
) -> Vec<String> {
    crate::order::sort_by_key(&mut nets, |n| prefix(n));
    let mut kept: Vec<&N> = Vec::new();
    for n in nets {
        if !kept.iter().any(|k| covers(k, n)) {
            kept.push(n);
        }
    }
    let mut out: Vec<String> = kept.iter().map(|n| n.to_string()).collect();
    crate::order::sort(&mut out);
    out
}

/// The per-uplink counters and chains, and the reserved `to_main` / `to_none` chains.
pub(super) fn chains(ctx: &Ctx, facts: &Facts) -> String {
    let mut w = String::new();
    for (i, u) in ctx.cfg.uplinks.iter().enumerate() {
        let mark = ctx.mark(i);
        let _ = writeln!(
            w,
            "{}",
            super::counter_decl(&format!("conns_{}", u.name), None)
        );
        let _ = writeln!(
            w,
            "\tchain up_{} {{\n\t\tcounter name \"conns_{}\"\n\t\t{}\n\t\t{}\n\t}}\n",
            u.name,
            u.name,
            ctx.set_mark_stmts(mark, true),
            ctx.set_mark_stmts(mark, false)
        );
        let _ = writeln!(
            w,
            "\tchain restore_{} {{\n{}\t\t{}\n\t}}\n",
            u.name,
            on_link_replies(ctx, facts, i),
            ctx.set_mark_stmts(mark, false)
        );
    }
    for (name, mark) in [("main", ctx.k.mark_main()), ("none", ctx.k.mark_none())] {
        let _ = writeln!(
            w,
            "\tchain to_{name} {{\n\t\t{}\n\t\t{}\n\t}}\n",
            ctx.set_mark_stmts(mark, true),
            ctx.set_mark_stmts(mark, false)
        );
        let _ = writeln!(
            w,
            "\tchain restore_{name} {{\n\t\t{}\n\t}}\n",
            ctx.set_mark_stmts(mark, false)
        );
    }
    w
}

/// Connection mark → restore chain, shared by `prerouting` (LAN side) and `output`. The kernel
/// reads the installed uplink ids back from its elements.
pub(super) fn restore_map(ctx: &Ctx) -> String {
    let mut restore: Vec<(u32, String)> = ctx
        .cfg
        .uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| (ctx.mark(i), format!("restore_{}", u.name)))
        .collect();
    restore.push((ctx.k.mark_main(), "restore_main".into()));
    restore.push((ctx.k.mark_none(), "restore_none".into()));
    crate::order::sort(&mut restore);
    let elements = restore
        .iter()
        .map(|(m, c)| format!("{} : goto {c}", hex(*m)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("\tmap {RESTORE_MAP} {{\n\t\ttype mark : verdict\n\t\telements = {{ {elements} }}\n\t}}\n\n")
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, ids, TWO};
    use super::*;
    use crate::model::KernelOpts;

    #[test]
    fn golden_mark_chains_and_restore_map() {
        let c = cfg(TWO);
        let ids = ids(&c);
        let ctx = Ctx {
            cfg: &c,
            k: KernelOpts::default(),
            ids: &ids,
        };
        insta::assert_snapshot!(format!(
            "{}{}",
            chains(&ctx, &Facts::default()),
            restore_map(&ctx)
        ));
    }

    /// A port forward's replies to a host on the uplink's own subnet are left to main's
    /// connected route: one rule per uplink and family, with the networks no other holds;
    /// none for an interface two uplinks share, none offline, none for a family the uplink
    /// does not carry.
    #[test]
    fn port_forward_replies_to_an_uplinks_own_subnet_keep_mains_route() {
        use crate::model::Config;
        use crate::plan::Link;
        use std::collections::BTreeMap;
        let c = cfg(&format!(
            "{TWO}[[uplink]]\nname = \"isp4\"\ninterface = \"eth1\"\ngateway = \"10.37.1.2\"\n"
        ));
        let c1 = cfg(&TWO.replace(
            "gateway = \"10.37.1.1\"\n",
            "gateway = \"10.37.1.1\"\ngateway6 = \"fe80::1\"\n",
        ));
        let v4 = |a: [u8; 4], p: u8| Ipv4Net::holding(a.into(), p).expect("net");
        let link = |nets: Vec<Ipv4Net>, nets6: Vec<Ipv6Net>| Link {
            up: true,
            onlink4: nets,
            onlink6: nets6,
            ..Link::default()
        };
        let six = Ipv6Net::holding("2001:db8:1::5".parse().expect("ip"), 64).expect("net");
        let f = Facts {
            links: Some(BTreeMap::from([
                (
                    "eth1".to_string(),
                    link(
                        vec![
                            v4([10, 37, 1, 253], 24),
                            v4([10, 37, 1, 9], 32),
                            v4([10, 37, 1, 7], 24),
                        ],
                        vec![
                            six,
                            Ipv6Net::holding("fe80::".parse().expect("ip"), 64).expect("net"),
                            Ipv6Net::holding("::".parse().expect("ip"), 0).expect("net"),
                        ],
                    ),
                ),
                (
                    "eth2".to_string(),
                    link(
                        vec![v4([10, 37, 2, 253], 24), v4([100, 64, 0, 1], 32)],
                        vec![six],
                    ),
                ),
            ])),
            ..Facts::default()
        };
        let text = |c: &Config, f: &Facts| {
            let ids = ids(c);
            let ctx = Ctx {
                cfg: c,
                k: KernelOpts::default(),
                ids: &ids,
            };
            chains(&ctx, f)
                .lines()
                .filter(|l| l.contains(" return"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            text(&c1, &f),
            "ct direction reply ip daddr { 10.37.1.0/24 } return\n\
             ct direction reply ip6 daddr { 2001:db8:1::/64 } return\n\
             ct direction reply ip daddr { 10.37.2.0/24, 100.64.0.1 } return"
        );
        // eth1 is shared by two uplinks: their inbound connections carry no mark.
        assert_eq!(
            text(&c, &f),
            "ct direction reply ip daddr { 10.37.2.0/24, 100.64.0.1 } return"
        );
        assert_eq!(text(&c1, &Facts::default()), "");
    }
}
