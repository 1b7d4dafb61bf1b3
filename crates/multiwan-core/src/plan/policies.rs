//! The balancing policies: which uplinks a policy (a `[[rule]]` or the default) may use now,
//! after tiers, modes and health, and how it spreads new connections over them — an exact
//! smooth weighted rotation for round-robin and random, weight-proportional hash buckets for
//! the hash methods. Each policy is one chain with one rule, `SELECTOR vmap @MAP`, whose map
//! holds the health-dependent part; the `balance` chain evaluates the rules in order.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{set_expr, Ctx, Family, PolicyMap, Selector, HASH_BUCKETS};
use crate::model::{Config, Method, Mode, Rule, WhenAllDown};

/// What a policy (the default or one rule) does with new connections right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Spread over these uplinks with these shares (weights, reduced).
    Spread {
        /// The `[balance]` method (a failover rule has a single share).
        method: Method,
        /// (uplink name, share numerator); the denominator is the sum.
        shares: Vec<(String, u32)>,
    },
    /// Use the main routing table.
    Main,
    /// No usable uplink: refuse.
    NoUplink,
}

/// A policy and its decision, for reports and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPlan {
    /// `default` or the rule name.
    pub name: String,
    /// The family whose new connections it decides.
    pub family: Family,
    /// What it does with new connections now.
    pub decision: Decision,
}

/// The names of a family's chains: IPv4 keeps the historical names, IPv6 adds a `6`.
pub(super) fn chain_name(family: Family, base: &str) -> String {
    match family {
        Family::V4 => base.to_string(),
        Family::V6 => match base.split_once('_') {
            Some((a, b)) => format!("{a}6_{b}"),
            None => format!("{base}6"),
        },
    }
}

/// Which uplinks a policy chooses from, after tiers and usability.
enum Selection {
    /// `tier`: all members of the chosen tier (usable or not), in config order;
    /// `usable`: the usable ones among them.
    Uplinks {
        tier: Vec<usize>,
        usable: Vec<usize>,
    },
    Main,
    None,
}

fn select(cfg: &Config, members: &[usize], mode: Mode, usable: &BTreeSet<String>) -> Selection {
    let is_usable = |i: &usize| usable.contains(&cfg.uplinks[*i].name);
    let sel = match mode {
        Mode::Bypass => return Selection::Main,
        Mode::Failover => members
            .iter()
            .copied()
            .find(is_usable)
            .map(|i| Selection::Uplinks {
                tier: vec![i],
                usable: vec![i],
            }),
        Mode::Balance => members
            .iter()
            .filter(|i| is_usable(i))
            .map(|i| cfg.uplinks[*i].tier)
            .min()
            .map(|t| {
                let tier: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|i| cfg.uplinks[*i].tier == t)
                    .collect();
                let usable = tier.iter().copied().filter(is_usable).collect();
                Selection::Uplinks { tier, usable }
            }),
    };
    match sel {
        Some(s) => s,
        None if cfg.balance.when_all_down == WhenAllDown::Main => Selection::Main,
        None => Selection::None,
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights divided by their greatest common divisor.
pub(super) fn reduce(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    weights.iter().map(|w| w / g).collect()
}

/// Smooth weighted round-robin order (each uplink appears `weight` times, spread evenly),
/// so a rotation of 3:1 is a a b a rather than a a a b.
pub fn smooth_rotation(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(weights) {
            *c += i64::from(*w);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .unwrap_or((0, &0));
        current[best] -= total;
        out.push(best);
    }
    out
}

/// Hash buckets: `HASH_BUCKETS` slots split over all uplinks of the tier by weight (largest
/// remainder); slots of unusable uplinks are then dealt round-robin to the usable ones, so a
/// failure moves only the failed uplink's hosts.
pub fn hash_buckets(weights: &[u32], usable: &[bool]) -> Vec<usize> {
    let n = weights.len();
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
    let b = u64::from(HASH_BUCKETS);
    let mut counts: Vec<u64> = weights.iter().map(|w| u64::from(*w) * b / total).collect();
    let mut rema: Vec<(u64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (u64::from(*w) * b % total, i))
        .collect();
    crate::order::sort_by(&mut rema, |a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = b - counts.iter().sum::<u64>();
    for (_, i) in rema {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    // Interleave owners so each uplink's buckets are spread over the hash space.
    let owners: Vec<usize> = {
        let w: Vec<u32> = counts.iter().map(|c| *c as u32).collect();
        let mut order = smooth_rotation(&w);
        order.truncate(HASH_BUCKETS as usize);
        order
    };
    let alive: Vec<usize> = (0..n).filter(|i| usable[*i]).collect();
    let mut next = 0;
    owners
        .into_iter()
        .map(|o| {
            if usable[o] || alive.is_empty() {
                o
            } else {
                let r = alive[next % alive.len()];
                next += 1;
                r
            }
        })
        .collect()
}

/// The selector a policy uses: fixed by its mode and the balance method (structure), never by
/// health. Failover policies always hold one slot.
fn selector(method: Method, mode: Mode, slots: u32, family: Family) -> Selector {
    let v6 = family == Family::V6;
    match (mode, method) {
        (Mode::Failover, _) => Selector::Numgen {
            random: false,
            modulus: 1,
        },
        (_, Method::RoundRobin) => Selector::Numgen {
            random: false,
            modulus: slots,
        },
        (_, Method::Random) => Selector::Numgen {
            random: true,
            modulus: slots,
        },
        (_, Method::SrcHash) => Selector::Jhash {
            with_dst: false,
            v6,
        },
        (_, Method::SrcDstHash) => Selector::Jhash { with_dst: true, v6 },
    }
}

/// The map elements and decision of one policy.
fn policy_map(
    ctx: &Ctx,
    chain: String,
    mode: Mode,
    sel: &Selection,
    family: Family,
) -> (PolicyMap, Decision) {
    let cfg = ctx.cfg;
    let method = cfg.balance.method;
    let hashed = mode == Mode::Balance && matches!(method, Method::SrcHash | Method::SrcDstHash);
    let (targets, decision): (Vec<String>, Decision) = match sel {
        Selection::Main => (vec!["to_main".into()], Decision::Main),
        Selection::None => (vec!["to_none".into()], Decision::NoUplink),
        Selection::Uplinks { tier, usable } => {
            let shares_of = |list: &[usize]| {
                let w: Vec<u32> = list.iter().map(|i| cfg.uplinks[*i].weight).collect();
                reduce(&w)
            };
            let weights = shares_of(usable);
            let decision = Decision::Spread {
                method,
                shares: usable
                    .iter()
                    .zip(&weights)
                    .map(|(i, w)| (cfg.uplinks[*i].name.clone(), *w))
                    .collect(),
            };
            let slots: Vec<usize> = if hashed {
                let alive: Vec<bool> = tier.iter().map(|i| usable.contains(i)).collect();
                hash_buckets(&shares_of(tier), &alive)
                    .into_iter()
                    .map(|j| tier[j])
                    .collect()
            } else if usable.len() == 1 {
                vec![usable[0]]
            } else {
                smooth_rotation(&weights)
                    .into_iter()
                    .map(|j| usable[j])
                    .collect()
            };
            let names = slots
                .into_iter()
                .map(|u| format!("up_{}", cfg.uplinks[u].name))
                .collect();
            (names, decision)
        }
    };
    // Hash policies always fill every bucket, so their modulus never changes.
    let targets = if hashed && targets.len() == 1 {
        vec![targets[0].clone(); HASH_BUCKETS as usize]
    } else {
        targets
    };
    let selector = selector(method, mode, targets.len() as u32, family);
    let map = PolicyMap {
        map: format!("m_{chain}"),
        chain,
        selector,
        elements: (0u32..).zip(targets).collect(),
    };
    (map, decision)
}

/// Everything one family's policies contribute to the plan.
pub(super) struct Policies {
    pub family: Family,
    /// Health-dependent policies, rules first, then the default.
    pub maps: Vec<PolicyMap>,
    /// Chains of bypass rules (`goto to_main`), which no health change alters.
    pub static_chains: String,
    /// The `balance` chain (`balance6` for IPv6).
    pub balance: String,
    /// Every policy's decision, in rule order, the default last.
    pub decisions: Vec<PolicyPlan>,
    /// The default policy's usable uplinks (for the router's own multipath route), `None`
    /// when it sends to the main table or refuses.
    pub default_usable: Option<Vec<usize>>,
}

/// Whether uplink `i` carries `family`.
fn carries(cfg: &Config, i: usize, family: Family) -> bool {
    cfg.uplinks[i].has(family)
}

/// Whether a rule matches `family`'s traffic.
fn rule_matches(r: &Rule, family: Family) -> bool {
    match family {
        Family::V4 => r.v4,
        Family::V6 => r.v6,
    }
}

pub(super) fn build(ctx: &Ctx, usable: &BTreeSet<String>, family: Family) -> Policies {
    let cfg = ctx.cfg;
    let mut maps = Vec::new();
    let mut decisions = Vec::new();
    let mut static_chains = String::new();
    for r in cfg.rules.iter().filter(|r| rule_matches(r, family)) {
        let chain = chain_name(family, &format!("rule_{}", r.name));
        if r.mode == Mode::Bypass {
            let _ = writeln!(
                static_chains,
                "\tchain {chain} {{\n\t\tgoto to_main\n\t}}\n"
            );
            decisions.push(PolicyPlan {
                name: r.name.clone(),
                family,
                decision: Decision::Main,
            });
            continue;
        }
        let members: Vec<usize> = r
            .uplinks
            .iter()
            .copied()
            .filter(|i| carries(cfg, *i, family))
            .collect();
        let sel = select(cfg, &members, r.mode, usable);
        let (m, d) = policy_map(ctx, chain, r.mode, &sel, family);
        maps.push(m);
        decisions.push(PolicyPlan {
            name: r.name.clone(),
            family,
            decision: d,
        });
    }
    let all: Vec<usize> = (0..cfg.uplinks.len())
        .filter(|i| carries(cfg, *i, family))
        .collect();
    let default_sel = select(cfg, &all, Mode::Balance, usable);
    let chain = chain_name(family, "policy_default");
    let (m, d) = policy_map(ctx, chain, Mode::Balance, &default_sel, family);
    maps.push(m);
    decisions.push(PolicyPlan {
        name: "default".into(),
        family,
        decision: d,
    });
    let default_usable = match default_sel {
        Selection::Uplinks { usable, .. } => Some(usable),
        _ => None,
    };
    Policies {
        family,
        maps,
        static_chains,
        balance: balance_chain(cfg, family),
        decisions,
        default_usable,
    }
}

/// The `[[rule]]` list of a family: first match wins, then the default policy.
fn balance_chain(cfg: &Config, family: Family) -> String {
    let mut w = String::new();
    let (ip, goto) = match family {
        Family::V4 => ("ip", "rule_"),
        Family::V6 => ("ip6", "rule6_"),
    };
    let _ = writeln!(w, "\tchain {} {{", chain_name(family, "balance"));
    for r in cfg.rules.iter().filter(|r| rule_matches(r, family)) {
        let mut m = Vec::new();
        let (src, dst) = match family {
            Family::V4 => (
                r.src.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                r.dst.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ),
            Family::V6 => (
                r.src6.iter().map(|n| n.to_string()).collect(),
                r.dst6.iter().map(|n| n.to_string()).collect(),
            ),
        };
        if !src.is_empty() {
            m.push(format!("{ip} saddr {}", set_expr(&src)));
        }
        if !dst.is_empty() {
            m.push(format!("{ip} daddr {}", set_expr(&dst)));
        }
        if let Some(p) = r.proto {
            m.push(format!("meta l4proto {}", p.nft(family)));
        }
        if !r.sport.is_empty() {
            m.push(format!("th sport {}", set_expr(&r.sport)));
        }
        if !r.dport.is_empty() {
            m.push(format!("th dport {}", set_expr(&r.dport)));
        }
        m.push(format!("counter goto {goto}{}", r.name));
        let _ = writeln!(w, "\t\t{}", m.join(" "));
    }
    let _ = writeln!(
        w,
        "\t\tgoto {}\n\t}}\n",
        chain_name(family, "policy_default")
    );
    w
}

#[cfg(test)]
mod tests {
    use super::super::tests::{all_usable, cfg, ids, TWO};
    use super::*;
    use crate::model::KernelOpts;

    #[test]
    fn golden_policies_with_rules() {
        let c = cfg(&format!(
            "{TWO}[[rule]]\nname = \"voip\"\nproto = \"udp\"\nmode = \"failover\"\nuplinks = [\"lte\", \"isp1\"]\n[[rule]]\nname = \"vpn\"\ndst = [\"10.8.0.0/16\"]\nmode = \"bypass\"\n"
        ));
        let ids = ids(&c);
        let ctx = Ctx {
            cfg: &c,
            k: KernelOpts::default(),
            ids: &ids,
        };
        let p = build(&ctx, &all_usable(&c), Family::V4);
        let maps: String = p.maps.iter().map(|m| m.text(true)).collect();
        insta::assert_snapshot!(format!("{maps}{}{}", p.static_chains, p.balance));
    }
}
