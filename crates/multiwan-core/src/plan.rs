//! The planner: a validated [`Config`], the uplink ids in use, which uplinks are usable and
//! what the kernel reports about interfaces go in; the exact nftables ruleset, `ip rule`s,
//! routes and sysctls come out. Pure and deterministic: the same inputs give byte-identical
//! output, which is what makes `apply` idempotent and the golden tests meaningful.
//!
//! Data plane (IPv4):
//! - `prerouting` (mangle): packets from the LAN of connections that already carry an uplink
//!   mark get it restored; new LAN connections go through `balance`, which evaluates the rules
//!   in order and then the default policy; new connections arriving *on* an uplink get that
//!   uplink's connection mark so replies leave where the request came in.
//! - `output` (route hook, re-routes after marking): the same for the router's own traffic,
//!   skipping packets that already carry a mark under the mask (health probes, SO_MARK users).
//! - `postrouting` (srcnat): per-uplink SNAT/masquerade.
//! - ip rules: main table without default routes first (local and LAN routes win), then
//!   `fwmark → uplink table`, then `unreachable` per mark so marked traffic never leaks, then
//!   the router's own addresses, then the multipath default table for unmarked local traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use crate::model::{Config, KernelOpts, Method, Mode, Snat, WhenAllDown};

/// Routing protocol number stamped on every route and rule multiwan installs, so it can
/// recognise (and only ever remove) its own.
pub const RTPROT_MULTIWAN: u8 = 77;
/// The single nftables table multiwan owns.
pub const NFT_FAMILY: &str = "inet";
/// Name of the nftables table.
pub const NFT_TABLE: &str = "multiwan";
/// Buckets used by the hash methods, so a failed uplink's hosts move and nobody else's.
pub const HASH_BUCKETS: u32 = 256;
/// Seed of the jhash methods; fixed so restarts keep every host on its uplink.
pub const HASH_SEED: u32 = 0x6d77_616e;

/// What the kernel reports about interfaces, as far as the planner cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Interface name → link facts. `None` means unknown (offline `plan`): every interface is
    /// assumed present, addresses are not known.
    pub links: Option<BTreeMap<String, Link>>,
}

/// One interface as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Administratively up and carrier present.
    pub up: bool,
    /// IPv4 addresses on the interface.
    pub addrs: Vec<Ipv4Addr>,
    /// The gateway of a default route through this interface that multiwan did not install
    /// (typically the DHCP client's), for `gateway = "auto"`.
    pub gateway: Option<Ipv4Addr>,
}

impl Facts {
    /// Whether routes through `ifname` can be installed.
    pub fn routable(&self, ifname: &str, needs_addr: bool) -> bool {
        match &self.links {
            None => true,
            Some(l) => l
                .get(ifname)
                .is_some_and(|l| l.up && (!needs_addr || !l.addrs.is_empty())),
        }
    }

    fn addrs(&self, ifname: &str) -> &[Ipv4Addr] {
        self.links
            .as_ref()
            .and_then(|l| l.get(ifname))
            .map(|l| l.addrs.as_slice())
            .unwrap_or(&[])
    }
}

/// The next hop of an uplink's route if it can be installed now: `Some(None)` for a device
/// route (point-to-point), `Some(Some(g))` for a route via `g`, `None` when not installable
/// (interface missing, down or without an address, or an `auto` gateway not learned yet —
/// always the case offline).
pub fn next_hop(u: &crate::model::Uplink, facts: &Facts) -> Option<Option<Ipv4Addr>> {
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

/// Errors that can only be found with runtime inputs (the config itself is valid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no free uplink id: mark mask {mask:#010x} has room for {capacity} uplinks")]
    NoFreeId { mask: u32, capacity: u32 },
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

/// What a policy (the default or one rule) does with new connections right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Spread over these uplinks with these shares (weights, reduced).
    Spread {
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
    pub decision: Decision,
}

/// The action of an `ip rule`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleAction {
    /// `lookup main suppress_prefixlength 0`
    MainNoDefault,
    /// `lookup TABLE`
    Lookup(u32),
    /// `unreachable`
    Unreachable,
    /// `blackhole`
    Blackhole,
}

/// One `ip rule` owned by multiwan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRule {
    pub priority: u32,
    /// (mark, mask)
    pub fwmark: Option<(u32, u32)>,
    pub from: Option<Ipv4Addr>,
    pub action: RuleAction,
}

impl IpRule {
    /// Arguments after `ip rule add` / `ip rule del`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["priority".to_string(), self.priority.to_string()];
        if let Some(from) = self.from {
            a.push("from".into());
            a.push(from.to_string());
        }
        if let Some((mark, mask)) = self.fwmark {
            a.push("fwmark".into());
            a.push(format!("{mark:#x}/{mask:#x}"));
        }
        match self.action {
            RuleAction::MainNoDefault => {
                a.extend(["lookup", "main", "suppress_prefixlength", "0"].map(String::from))
            }
            RuleAction::Lookup(t) => {
                a.push("lookup".into());
                a.push(t.to_string());
            }
            RuleAction::Unreachable => a.push("unreachable".into()),
            RuleAction::Blackhole => a.push("blackhole".into()),
        }
        a.push("protocol".into());
        a.push(RTPROT_MULTIWAN.to_string());
        a
    }
}

/// A next hop of a route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nexthop {
    pub via: Option<Ipv4Addr>,
    pub dev: String,
    pub weight: u32,
}

/// A default route in a table owned by multiwan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub table: u32,
    /// One entry: a plain route (weight ignored); several: a multipath route.
    pub nexthops: Vec<Nexthop>,
}

impl Route {
    /// Arguments after `ip route replace`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["default".to_string()];
        if let [nh] = self.nexthops.as_slice() {
            if let Some(via) = nh.via {
                a.push("via".into());
                a.push(via.to_string());
            }
            a.push("dev".into());
            a.push(nh.dev.clone());
        }
        a.extend([
            "table".to_string(),
            self.table.to_string(),
            "proto".into(),
            RTPROT_MULTIWAN.to_string(),
        ]);
        if self.nexthops.len() > 1 {
            for nh in &self.nexthops {
                a.push("nexthop".into());
                if let Some(via) = nh.via {
                    a.push("via".into());
                    a.push(via.to_string());
                }
                a.push("dev".into());
                a.push(nh.dev.clone());
                a.push("weight".into());
                a.push(nh.weight.to_string());
            }
        }
        a
    }
}

/// A sysctl multiwan sets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sysctl {
    /// Dotted key, e.g. `net.ipv4.conf.eth1.rp_filter`.
    pub key: String,
    pub value: String,
}

impl Sysctl {
    /// Path under `/proc/sys`.
    pub fn proc_path(&self) -> String {
        // Interface names may contain dots; only the fixed prefix parts are split.
        let parts: Vec<&str> = self.key.splitn(4, '.').collect();
        match parts.as_slice() {
            ["net", "ipv4", "conf", rest] => {
                let (ifname, leaf) = rest.rsplit_once('.').unwrap_or((rest, ""));
                format!("/proc/sys/net/ipv4/conf/{ifname}/{leaf}")
            }
            _ => format!("/proc/sys/{}", self.key.replace('.', "/")),
        }
    }
}

/// The single rule of a policy chain, with a digest stored in the rule's comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// Chain name (`policy_default`, `rule_NAME`).
    pub chain: String,
    /// The rule without its comment.
    pub stmt: String,
    /// Digest of `stmt`.
    pub digest: String,
}

impl PolicyRule {
    fn new(chain: String, stmt: String) -> Self {
        let digest = digest(&stmt);
        Self {
            chain,
            stmt,
            digest,
        }
    }

    /// The rule as installed: the statement and its digest comment.
    pub fn text(&self) -> String {
        format!("{} comment \"{}\"", self.stmt, self.comment())
    }

    /// The comment that identifies this exact rule.
    pub fn comment(&self) -> String {
        format!("p:{}", self.digest)
    }

    /// An nft transaction that replaces this chain's rule in place.
    pub fn replace_script(&self) -> String {
        format!(
            "flush chain {NFT_FAMILY} {NFT_TABLE} {chain}\nadd rule {NFT_FAMILY} {NFT_TABLE} {chain} {text}\n",
            chain = self.chain,
            text = self.text()
        )
    }
}

/// Everything `apply` installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The complete `table inet multiwan { ... }` text, including its digest comment.
    pub nft: String,
    /// Digest of the ruleset without the policy chains' contents; stored as the table's
    /// comment, so an unchanged structure is never reloaded.
    pub digest: String,
    /// The policy chains (one rule each), which change with uplink health.
    pub policy_chains: Vec<PolicyRule>,
    pub rules: Vec<IpRule>,
    pub routes: Vec<Route>,
    pub sysctls: Vec<Sysctl>,
    pub policies: Vec<PolicyPlan>,
    /// Uplink name → id.
    pub ids: BTreeMap<String, u32>,
    /// Tables multiwan owns under this config (routes in them that are not planned go).
    pub tables: BTreeSet<u32>,
}

impl Plan {
    /// The nft script that replaces the table atomically in one transaction.
    pub fn nft_transaction(&self) -> String {
        format!(
            "add table {NFT_FAMILY} {NFT_TABLE}\ndelete table {NFT_FAMILY} {NFT_TABLE}\n{}",
            self.nft
        )
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# nftables: replaced in one transaction (nft -f)")?;
        write!(f, "{}", self.nft)?;
        writeln!(f)?;
        writeln!(f, "# policy routing rules")?;
        for r in &self.rules {
            writeln!(f, "ip rule add {}", r.args().join(" "))?;
        }
        writeln!(f)?;
        writeln!(f, "# routes")?;
        for r in &self.routes {
            writeln!(f, "ip route replace {}", r.args().join(" "))?;
        }
        writeln!(f)?;
        writeln!(f, "# sysctls")?;
        for s in &self.sysctls {
            writeln!(f, "{} = {}", s.key, s.value)?;
        }
        Ok(())
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
fn reduce(weights: &[u32]) -> Vec<u32> {
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
    rema.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
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

/// Compresses a slot → target list into `lo-hi : target` ranges.
fn ranges<T: PartialEq + Clone>(slots: &[T]) -> Vec<(usize, usize, T)> {
    let mut out: Vec<(usize, usize, T)> = Vec::new();
    for (i, t) in slots.iter().enumerate() {
        match out.last_mut() {
            Some((_, hi, last)) if last == t && *hi + 1 == i => *hi = i,
            _ => out.push((i, i, t.clone())),
        }
    }
    out
}

/// Whether uplink `i` shares its interface with another uplink (two routers on one segment).
fn shares_interface(cfg: &Config, i: usize) -> bool {
    let ifname = &cfg.uplinks[i].interface;
    cfg.uplinks
        .iter()
        .filter(|o| &o.interface == ifname)
        .count()
        > 1
}

fn hex(v: u32) -> String {
    format!("{v:#010x}")
}

struct Ctx<'a> {
    cfg: &'a Config,
    k: KernelOpts,
    ids: &'a BTreeMap<String, u32>,
}

impl Ctx<'_> {
    fn id(&self, i: usize) -> u32 {
        self.ids
            .get(&self.cfg.uplinks[i].name)
            .copied()
            .unwrap_or(0)
    }
    fn set_mark_stmts(&self, value: u32, ct: bool) -> String {
        let keep = hex(!self.k.mark_mask);
        let v = hex(value);
        if ct {
            format!("ct mark set ct mark and {keep} or {v}")
        } else {
            format!("meta mark set meta mark and {keep} or {v}")
        }
    }
}

/// nft rendering of a policy's verdict: a goto, or a numgen/jhash vmap.
fn policy_stmt(ctx: &Ctx, sel: &Selection, method: Method) -> (String, Decision) {
    let cfg = ctx.cfg;
    match sel {
        Selection::Main => ("goto to_main".into(), Decision::Main),
        Selection::None => ("goto to_none".into(), Decision::NoUplink),
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
            if usable.len() == 1 {
                let name = &cfg.uplinks[usable[0]].name;
                return (format!("goto up_{name}"), decision);
            }
            let (expr, slots): (String, Vec<usize>) = match method {
                Method::RoundRobin | Method::Random => {
                    let order = smooth_rotation(&weights);
                    let kind = if method == Method::RoundRobin {
                        "inc"
                    } else {
                        "random"
                    };
                    (
                        format!("numgen {kind} mod {}", order.len()),
                        order.into_iter().map(|j| usable[j]).collect(),
                    )
                }
                Method::SrcHash | Method::SrcDstHash => {
                    let tier_w = shares_of(tier);
                    let alive: Vec<bool> = tier.iter().map(|i| usable.contains(i)).collect();
                    let buckets = hash_buckets(&tier_w, &alive);
                    let key = if method == Method::SrcHash {
                        "ip saddr"
                    } else {
                        "ip saddr . ip daddr"
                    };
                    (
                        format!("jhash {key} mod {HASH_BUCKETS} seed {}", hex(HASH_SEED)),
                        buckets.into_iter().map(|j| tier[j]).collect(),
                    )
                }
            };
            let elems: Vec<String> = ranges(&slots)
                .into_iter()
                .map(|(lo, hi, u)| {
                    let name = &cfg.uplinks[u].name;
                    if lo == hi {
                        format!("{lo} : goto up_{name}")
                    } else {
                        format!("{lo}-{hi} : goto up_{name}")
                    }
                })
                .collect();
            (format!("{expr} vmap {{ {} }}", elems.join(", ")), decision)
        }
    }
}

fn set_expr<T: fmt::Display>(items: &[T]) -> String {
    if items.len() == 1 {
        items[0].to_string()
    } else {
        let v: Vec<String> = items.iter().map(|i| i.to_string()).collect();
        format!("{{ {} }}", v.join(", "))
    }
}

fn quoted_set(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    set_expr(&q)
}

/// FNV-1a, 64 bit: a stable digest of the ruleset text (not a security measure).
fn digest(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Builds the plan. `usable` names the uplinks that may take new connections.
pub fn plan(
    cfg: &Config,
    ids: &BTreeMap<String, u32>,
    usable: &BTreeSet<String>,
    facts: &Facts,
) -> Plan {
    let k = cfg.kernel;
    let ctx = Ctx { cfg, k, ids };
    let mask = hex(k.mark_mask);
    let mut body = String::new();
    let w = &mut body;
    let all: Vec<usize> = (0..cfg.uplinks.len()).collect();

    // Per-uplink chains: choose (new connection) and restore (later packets).
    let _ = writeln!(w, "table {NFT_FAMILY} {NFT_TABLE} {{");
    for (i, u) in cfg.uplinks.iter().enumerate() {
        let _ = writeln!(w, "\tcounter conns_{} {{\n\t}}\n", u.name);
        let mark = k.mark_of(ctx.id(i));
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
            "\tchain restore_{} {{\n\t\t{}\n\t}}\n",
            u.name,
            ctx.set_mark_stmts(mark, false)
        );
    }
    for (name, mark) in [("main", k.mark_main()), ("none", k.mark_none())] {
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

    // Policies: one chain per rule plus the default.
    let mut policies = Vec::new();
    let method = cfg.balance.method;
    let mut policy_chains = Vec::new();
    // Byte ranges of the policy rules in `body`, left out of the structure digest.
    let mut policy_spans = Vec::new();
    let mut add_policy = |w: &mut String, chain: String, name: String, sel: &Selection| {
        let (stmt, decision) = policy_stmt(&ctx, sel, method);
        let rule = PolicyRule::new(chain, stmt);
        let _ = write!(w, "\tchain {} {{\n\t\t", rule.chain);
        let start = w.len();
        w.push_str(&rule.text());
        policy_spans.push(start..w.len());
        let _ = writeln!(w, "\n\t}}\n");
        policies.push(PolicyPlan { name, decision });
        policy_chains.push(rule);
    };
    for r in &cfg.rules {
        let sel = select(cfg, &r.uplinks, r.mode, usable);
        add_policy(w, format!("rule_{}", r.name), r.name.clone(), &sel);
    }
    let default_sel = select(cfg, &all, Mode::Balance, usable);
    add_policy(w, "policy_default".into(), "default".into(), &default_sel);

    // The rule list.
    let _ = writeln!(w, "\tchain balance {{");
    for r in &cfg.rules {
        let mut m = Vec::new();
        if !r.src.is_empty() {
            m.push(format!("ip saddr {}", set_expr(&r.src)));
        }
        if !r.dst.is_empty() {
            m.push(format!("ip daddr {}", set_expr(&r.dst)));
        }
        if let Some(p) = r.proto {
            m.push(format!("meta l4proto {}", p.as_str()));
        }
        if !r.sport.is_empty() {
            m.push(format!("th sport {}", set_expr(&r.sport)));
        }
        if !r.dport.is_empty() {
            m.push(format!("th dport {}", set_expr(&r.dport)));
        }
        m.push(format!("counter goto rule_{}", r.name));
        let _ = writeln!(w, "\t\t{}", m.join(" "));
    }
    let _ = writeln!(w, "\t\tgoto policy_default\n\t}}\n");

    // Restore map shared by prerouting (LAN side) and output.
    let mut restore: Vec<(u32, String)> = cfg
        .uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| (k.mark_of(ctx.id(i)), format!("restore_{}", u.name)))
        .collect();
    restore.push((k.mark_main(), "restore_main".into()));
    restore.push((k.mark_none(), "restore_none".into()));
    restore.sort();
    let restore_vmap = restore
        .iter()
        .map(|(m, c)| format!("{} : goto {c}", hex(*m)))
        .collect::<Vec<_>>()
        .join(", ");

    let lan = quoted_set(&cfg.lan.interfaces);
    let _ = writeln!(w, "\tchain prerouting {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook prerouting priority mangle; policy accept;"
    );
    let _ = writeln!(
        w,
        "\t\tiifname {lan} ct mark and {mask} vmap {{ {restore_vmap} }}"
    );
    let _ = writeln!(
        w,
        "\t\tiifname {lan} ct state new meta nfproto ipv4 fib daddr type != {{ local, broadcast, multicast }} goto balance"
    );
    // Inbound: connections arriving on an uplink are answered over it. Only for interfaces
    // that belong to exactly one uplink; shared segments are told apart by gateway only.
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if shares_interface(cfg, i) {
            continue;
        }
        let _ = writeln!(
            w,
            "\t\tiifname \"{}\" ct state new ct mark and {mask} == 0 {}",
            u.interface,
            ctx.set_mark_stmts(k.mark_of(ctx.id(i)), true)
        );
    }
    let _ = writeln!(w, "\t}}\n");

    let _ = writeln!(w, "\tchain output {{");
    let _ = writeln!(
        w,
        "\t\ttype route hook output priority mangle; policy accept;"
    );
    let _ = writeln!(w, "\t\tmeta mark and {mask} != 0 return");
    let _ = writeln!(w, "\t\tct mark and {mask} vmap {{ {restore_vmap} }}");
    if cfg.balance.local {
        let _ = writeln!(
            w,
            "\t\tct state new meta nfproto ipv4 fib daddr type != {{ local, broadcast, multicast }} goto balance"
        );
    }
    let _ = writeln!(w, "\t}}\n");

    let _ = writeln!(w, "\tchain postrouting {{");
    let _ = writeln!(
        w,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    let mut fallback_done = BTreeSet::new();
    let mut fallbacks = Vec::new();
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
                hex(k.mark_of(ctx.id(i)))
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
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "}}");

    // The table comment covers everything but the policy chains' contents: health changes
    // rewrite those alone (each rule carries its own digest), keeping counters and sets.
    let mut skeleton = String::with_capacity(body.len());
    let mut at = 0;
    for span in &policy_spans {
        skeleton.push_str(&body[at..span.start]);
        skeleton.push_str("policy");
        at = span.end;
    }
    skeleton.push_str(&body[at..]);
    let dg = digest(&skeleton);
    let nft = body.replacen(
        &format!("table {NFT_FAMILY} {NFT_TABLE} {{\n"),
        &format!("table {NFT_FAMILY} {NFT_TABLE} {{\n\tcomment \"multiwan {dg}\"\n\n"),
        1,
    );

    // Policy routing.
    let p = k.rule_priority;
    let mut rules = vec![IpRule {
        priority: p,
        fwmark: None,
        from: None,
        action: RuleAction::MainNoDefault,
    }];
    let mut routes = Vec::new();
    let mut tables = BTreeSet::new();
    tables.insert(k.table_base);
    for (i, u) in cfg.uplinks.iter().enumerate() {
        let id = ctx.id(i);
        let table = k.table_of(id);
        tables.insert(table);
        let fw = Some((k.mark_of(id), k.mark_mask));
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
    if cfg.balance.local {
        if let Selection::Uplinks { usable, .. } = &default_sel {
            let routable: Vec<(usize, Option<Ipv4Addr>)> = usable
                .iter()
                .filter_map(|i| next_hop(&cfg.uplinks[*i], facts).map(|via| (*i, via)))
                .collect();
            let weights = reduce(
                &routable
                    .iter()
                    .map(|(i, _)| cfg.uplinks[*i].weight)
                    .collect::<Vec<_>>(),
            );
            if !routable.is_empty() {
                routes.push(Route {
                    table: k.table_base,
                    nexthops: routable
                        .iter()
                        .zip(weights)
                        .map(|((i, via), w)| Nexthop {
                            via: *via,
                            dev: cfg.uplinks[*i].interface.clone(),
                            weight: w,
                        })
                        .collect(),
                });
                rules.push(IpRule {
                    priority: p + 4,
                    fwmark: None,
                    from: None,
                    action: RuleAction::Lookup(k.table_base),
                });
            }
        }
    }
    rules.sort();
    rules.dedup();
    routes.sort();

    let mut sysctls = vec![
        Sysctl {
            key: "net.ipv4.ip_forward".into(),
            value: "1".into(),
        },
        // Bytes and start time per connection, for `multiwan flows` and `status`.
        Sysctl {
            key: "net.netfilter.nf_conntrack_acct".into(),
            value: "1".into(),
        },
        Sysctl {
            key: "net.netfilter.nf_conntrack_timestamp".into(),
            value: "1".into(),
        },
    ];
    let ifaces: BTreeSet<&str> = cfg.uplinks.iter().map(|u| u.interface.as_str()).collect();
    for i in ifaces {
        if facts.links.as_ref().is_none_or(|l| l.contains_key(i)) {
            sysctls.push(Sysctl {
                key: format!("net.ipv4.conf.{i}.rp_filter"),
                value: "2".into(),
            });
        }
    }

    Plan {
        nft,
        digest: dg,
        policy_chains,
        rules,
        routes,
        sysctls,
        policies,
        ids: ids.clone(),
        tables,
    }
}

#[cfg(test)]
mod tests;
