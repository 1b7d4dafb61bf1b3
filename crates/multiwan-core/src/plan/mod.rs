//! The planner: a validated [`Config`], the uplink ids in use, which uplinks are usable and
//! what the kernel reports about interfaces go in; the exact nftables ruleset, `ip rule`s,
//! routes and sysctls come out. Pure and deterministic: the same inputs give byte-identical
//! output, which is what makes `apply` idempotent and the golden tests meaningful.
//!
//! Each piece is built by its own module, with its own golden test:
//! - `marks`: uplink ids, the per-uplink mark chains and the `restore` map;
//! - `policies`: the balancing policies (one named map and one rule per policy) and the
//!   `balance` chain that evaluates the `[[rule]]`s;
//! - `hooks`: the `prerouting` and `output` chains that restore marks and start balancing;
//! - `nat`: per-uplink SNAT in `postrouting`;
//! - `routing`: `ip rule`s, routes and sysctls.
//!
//! Health changes alter only the policies' map elements and numgen moduli ([`PolicyMap`]):
//! the table's digest covers everything else, so they are applied as element updates that
//! keep counters, sets and every other chain.

mod hooks;
mod marks;
mod nat;
mod policies;
mod routing;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Config, KernelOpts};
pub use crate::net::Family;
pub use crate::net::GLOBAL_UNICAST6;
use crate::net::{IpNet, Ipv4Net, Ipv6Net};

pub use marks::{assign_ids, PlanError};
pub use policies::{hash_buckets, smooth_rotation, Decision, PolicyPlan};
pub use routing::{next_hop, next_hop6, off_link_gateway6, sysctl_path};

/// Routing protocol number stamped on every route and rule multiwan installs, so it can
/// recognise (and only ever remove) its own.
pub const RTPROT_MULTIWAN: u8 = 77;
/// The single nftables table multiwan owns.
pub const NFT_FAMILY: &str = "inet";
/// Name of the nftables table.
pub const NFT_TABLE: &str = "multiwan";
/// Name of the map from connection mark to restore chain (the installed uplink ids).
pub const RESTORE_MAP: &str = "restore";
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
    /// The `fwmark value/mask` selectors of other users' `ip rule`s (both families).
    pub foreign_marks: Vec<(u32, u32)>,
    /// Uplink families (uplink name, family) whose route the kernel refused although these
    /// facts said it could be installed: the daemon's record of what the kernel answered,
    /// cleared when the facts change. Not installable until then (empty outside the daemon).
    pub refused: BTreeSet<(String, Family)>,
}

/// One interface as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Administratively up and carrier present.
    pub up: bool,
    /// IPv4 addresses on the interface.
    pub addrs: Vec<Ipv4Addr>,
    /// The IPv4 networks on the interface's link: the prefix of each address as the kernel
    /// holds it (the peer's on a point-to-point address) — the connected subnets main routes
    /// out of the interface by a route of their own. `explain` reads them, and the restore
    /// chains for the replies of port forwards to hosts on the uplink's own link.
    pub onlink4: Vec<Ipv4Net>,
    /// The gateway of a default route through this interface that multiwan did not install
    /// (typically the DHCP client's), for `gateway = "auto"`.
    pub gateway: Option<Ipv4Addr>,
    /// Global IPv6 addresses on the interface (not link-local, not tentative).
    pub addrs6: Vec<Ipv6Addr>,
    /// The IPv6 networks on the interface's link: the prefix of each global address (its
    /// prefix length as the kernel holds it) and of each route without a gateway through the
    /// interface in the main table (an advertised on-link prefix beside /128 addresses). A
    /// fixed global `gateway6` outside all of them cannot be routed: the kernel refuses the
    /// route (`EHOSTUNREACH`).
    pub onlink6: Vec<Ipv6Net>,
    /// The gateway of a foreign IPv6 default route through this interface (what router
    /// advertisements install), for `gateway6 = "auto"`.
    pub gateway6: Option<Ipv6Addr>,
}

impl Link {
    /// Whether the kernel can send to `gateway` directly on this link: a link-local address
    /// always is, a global one when one of [`Link::onlink6`] holds it.
    pub fn on_link6(&self, gateway: Ipv6Addr) -> bool {
        gateway.is_unicast_link_local() || self.onlink6.iter().any(|n| n.contains(gateway))
    }
}

impl Facts {
    /// Marks multiwan must not add its bits to: for every foreign rule whose mask takes in
    /// some of multiwan's bits (wg-quick's `not fwmark 0xca6c` matches all 32), the packets
    /// that rule tells apart by the other bits — `(value, mask)` with multiwan's bits cleared.
    /// A Tailscale-style rule (`0x80000/0xff0000`) is unaffected by multiwan's bits and needs
    /// nothing. A rule on the value 0 (unmarked packets) cannot be protected and is left to
    /// `multiwan doctor`.
    pub fn fragile_marks(&self, ours: u32) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = self
            .foreign_marks
            .iter()
            .filter(|(_, m)| m & ours != 0 && m & !ours != 0)
            .map(|(v, m)| (v & m & !ours, m & !ours))
            .filter(|(v, _)| *v != 0)
            .collect();
        crate::order::sort(&mut out);
        out.dedup();
        out
    }

    /// Whether `ip` is one of the router's addresses (loopback included); never offline.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
            || self.links.as_ref().is_some_and(|l| {
                l.values().any(|k| match ip {
                    IpAddr::V4(a) => k.addrs.contains(&a),
                    IpAddr::V6(a) => k.addrs6.contains(&a),
                })
            })
    }

    /// Whether routes through `ifname` can be installed.
    pub fn routable(&self, ifname: &str, needs_addr: bool) -> bool {
        match &self.links {
            None => true,
            Some(l) => l
                .get(ifname)
                .is_some_and(|l| l.up && (!needs_addr || !l.addrs.is_empty())),
        }
    }

    /// Whether the kernel refused the route of `uplink`'s `family`.
    pub fn is_refused(&self, uplink: &str, family: Family) -> bool {
        self.refused
            .iter()
            .any(|(u, f)| u.as_str() == uplink && *f == family)
    }

    fn link(&self, ifname: &str) -> Option<&Link> {
        self.links.as_ref().and_then(|l| l.get(ifname))
    }

    /// The addresses of `family` on `ifname` (none offline).
    fn addrs_of(&self, ifname: &str, family: Family) -> Vec<IpAddr> {
        match (self.link(ifname), family) {
            (None, _) => Vec::new(),
            (Some(l), Family::V4) => l.addrs.iter().map(|a| IpAddr::V4(*a)).collect(),
            (Some(l), Family::V6) => l.addrs6.iter().map(|a| IpAddr::V6(*a)).collect(),
        }
    }
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
    /// The family it is installed in (`ip rule` or `ip -6 rule`).
    pub family: Family,
    /// `rule_priority` or `rule_priority + 1` for multiwan's marks, 32763..=32765 for
    /// unmarked traffic.
    pub priority: u32,
    /// (mark, mask)
    pub fwmark: Option<(u32, u32)>,
    /// A source address of `family`.
    pub from: Option<IpAddr>,
    /// The interface a socket is bound to (`oif`: the router's own traffic only).
    pub oif: Option<String>,
    /// The destinations it is for (`to`): only IPv6 bound sockets' rules have one, the
    /// global unicast space ([`GLOBAL_UNICAST6`]).
    pub to: Option<IpNet>,
    /// What a matching packet gets.
    pub action: RuleAction,
}

/// `ip` or `ip -6`, as `plan` prints commands.
fn ip_cmd(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip -6",
    }
}

impl IpRule {
    /// Arguments after `ip rule add` / `ip rule del` (what `plan` prints).
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
        if let Some(to) = self.to {
            a.push("to".into());
            a.push(to.to_string());
        }
        if let Some(oif) = &self.oif {
            a.push("oif".into());
            a.push(oif.clone());
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
    /// A gateway of the route's family (IPv6 gateways are often link-local).
    pub via: Option<IpAddr>,
    /// The uplink's interface.
    pub dev: String,
    /// The multipath weight: the uplink's weight, reduced (1 in an uplink's own table).
    pub weight: u32,
}

impl Nexthop {
    /// Whether the next hop is installed `onlink` (RTNH_F_ONLINK): an IPv6 gateway that is
    /// not link-local. The kernel checks a new IPv6 route's global gateway with a lookup
    /// whose oif is the route's interface, which the uplink's `oif` rule would answer with
    /// the uplink's own default route (a gateway behind a gateway, EHOSTUNREACH); with
    /// `onlink` it checks the gateway against main's routes on that interface alone. The
    /// plan only ever has a global IPv6 gateway that is on the interface's link
    /// (`Link::on_link6`), so the flag asserts nothing that is not already known.
    /// Link-local gateways are never looked up, and IPv4 has no such check.
    pub fn onlink(&self) -> bool {
        matches!(self.via, Some(IpAddr::V6(a)) if !a.is_unicast_link_local())
    }
}

/// The realm (`RTA_FLOW`, "to" realm) of every next hop of multiwan's IPv4 routes (the
/// multipath default and the uplinks' tables): the `output` hook balances only the router's
/// connections whose route is one of them, and leaves alone those the main table routes
/// itself (an uplink's connected subnet: its DHCP server, its modem, the gateway). A TCP
/// connection's final route is often an uplink table's: once the source address is chosen,
/// the lookup is redone and the router-address rule (32764) answers. IPv6 routes have no
/// realm.
pub const DEFAULT_ROUTE_REALM: u32 = 77;

/// A default route in a table owned by multiwan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// The family of the route (`ip route` or `ip -6 route`).
    pub family: Family,
    /// An uplink's table (`table_base + id`), or `table_base` for the multipath default.
    pub table: u32,
    /// One entry: a plain route (weight ignored); several: a multipath route; none for an
    /// `unreachable` or `blackhole` route.
    pub nexthops: Vec<Nexthop>,
    /// Unicast, or the `when_all_down` route of the multipath table.
    pub kind: RouteKind,
    /// The realm every next hop carries: [`DEFAULT_ROUTE_REALM`] on IPv4 unicast routes,
    /// none on IPv6 and on `unreachable`/`blackhole` routes.
    pub realm: Option<u32>,
}

/// The type of a route multiwan installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// Through its next hops.
    Unicast,
    /// Refused with ICMP network unreachable (`when_all_down = "unreachable"`).
    Unreachable,
    /// Dropped silently (`when_all_down = "blackhole"`).
    Blackhole,
}

impl Route {
    /// Arguments after `ip route replace` (what `plan` prints).
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        match self.kind {
            RouteKind::Unicast => {}
            RouteKind::Unreachable => a.push("unreachable".to_string()),
            RouteKind::Blackhole => a.push("blackhole".to_string()),
        }
        a.push("default".to_string());
        if let [nh] = self.nexthops.as_slice() {
            if let Some(via) = nh.via {
                a.push("via".into());
                a.push(via.to_string());
            }
            a.push("dev".into());
            a.push(nh.dev.clone());
            if nh.onlink() {
                a.push("onlink".into());
            }
            if let Some(r) = self.realm {
                a.push("realm".into());
                a.push(r.to_string());
            }
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
                if nh.onlink() {
                    a.push("onlink".into());
                }
                if let Some(r) = self.realm {
                    a.push("realms".into());
                    a.push(r.to_string());
                }
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
    /// The value written (`1`; `2` for loose `rp_filter` and for `accept_ra`).
    pub value: String,
}

/// How a policy picks a slot of its map for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// `numgen inc|random mod MODULUS`: the slot count changes with the usable uplinks.
    Numgen {
        /// `numgen random` (method random) instead of `numgen inc` (round-robin, failover).
        random: bool,
        /// The number of slots: the weighted rotation's length (1 for failover, or a single
        /// target chain).
        modulus: u32,
    },
    /// `jhash ip saddr [. ip daddr] mod HASH_BUCKETS seed HASH_SEED` (`ip6` for IPv6): a
    /// fixed slot count.
    Jhash {
        /// Hash source and destination (src-dst-hash), not only the source (src-hash).
        with_dst: bool,
        /// Hash IPv6 addresses (`ip6`) instead of IPv4 ones.
        v6: bool,
    },
}

impl Selector {
    /// The nft expression.
    pub fn expr(&self) -> String {
        match self {
            Selector::Numgen { random, modulus } => {
                let kind = if *random { "random" } else { "inc" };
                format!("numgen {kind} mod {modulus}")
            }
            Selector::Jhash { with_dst, v6 } => {
                let key = match (*with_dst, *v6) {
                    (true, false) => "ip saddr . ip daddr",
                    (false, false) => "ip saddr",
                    (true, true) => "ip6 saddr . ip6 daddr",
                    (false, true) => "ip6 saddr",
                };
                format!("jhash {key} mod {HASH_BUCKETS} seed {:#010x}", HASH_SEED)
            }
        }
    }

    /// The `typeof` of its map's key (independent of health): a 32-bit integer for both.
    /// Not `jhash …` for a hash policy's map: nft 1.0.6 (Debian 12) segfaults listing a map
    /// declared `typeof jhash` (`nft list ruleset` crashed on a router with src-hash), and
    /// the kernel sees the same 32-bit key either way.
    fn key_typeof(&self) -> &'static str {
        "numgen inc mod 1"
    }
}

/// A balancing policy as the kernel holds it: chain `chain` has the single rule
/// `SELECTOR vmap @map`, and map `map` sends each slot to an uplink's chain (`up_NAME`) or to
/// `to_main` / `to_none`. This is the only state a health change alters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMap {
    /// `policy_default` or `rule_NAME` (IPv6: `policy6_default`, `rule6_NAME`).
    pub chain: String,
    /// `m_` and the chain's name.
    pub map: String,
    /// How the rule picks a slot of the map for a new connection.
    pub selector: Selector,
    /// Slot → target chain, slots `0..n` in order.
    pub elements: Vec<(u32, String)>,
}

impl PolicyMap {
    /// The chain's rule.
    pub fn rule_text(&self) -> String {
        format!("{} vmap @{}", self.selector.expr(), self.map)
    }

    /// The map declaration; with state its current elements, without (for the structure
    /// digest) a placeholder.
    fn map_text(&self, with_state: bool) -> String {
        let elements = if with_state {
            let e: Vec<String> = self
                .elements
                .iter()
                .map(|(k, c)| format!("{k} : goto {c}"))
                .collect();
            format!("{{ {} }}", e.join(", "))
        } else {
            "policy".into()
        };
        format!(
            "\tmap {} {{\n\t\ttypeof {} : verdict\n\t\telements = {elements}\n\t}}\n",
            self.map,
            self.selector.key_typeof(),
        )
    }

    /// Chain and map as installed; without state (for the structure digest) the elements and
    /// the numgen modulus are left out.
    fn text(&self, with_state: bool) -> String {
        let rule = match (with_state, self.selector) {
            (false, Selector::Numgen { random, .. }) => format!(
                "numgen {} mod policy vmap @{}",
                if random { "random" } else { "inc" },
                self.map
            ),
            _ => self.rule_text(),
        };
        format!(
            "{}\n\tchain {} {{\n\t\t{rule}\n\t}}\n\n",
            self.map_text(with_state),
            self.chain
        )
    }
}

/// Everything `apply` installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The complete `table inet multiwan { ... }` text, including its digest comment.
    pub nft: String,
    /// Digest of the ruleset without the policies' state; stored as the table's comment, so
    /// an unchanged structure is never reloaded.
    pub digest: String,
    /// The health-dependent state of every balancing policy.
    pub policy_maps: Vec<PolicyMap>,
    /// Every `ip rule` multiwan owns, both families.
    pub rules: Vec<IpRule>,
    /// The routes in multiwan's tables: each installable uplink's default route, and the
    /// default policy's multipath (or `when_all_down`) route in `table_base`.
    pub routes: Vec<Route>,
    /// Forwarding, conntrack accounting, loose `rp_filter` on the uplinks' interfaces and
    /// `accept_ra = 2` for `gateway6 = "auto"`.
    pub sysctls: Vec<Sysctl>,
    /// What each policy decides now (reports, `explain`, `status`).
    pub policies: Vec<PolicyPlan>,
    /// Uplink name → id.
    pub ids: BTreeMap<String, u32>,
    /// Tables multiwan owns under this config (routes in them that are not planned go).
    pub tables: BTreeSet<u32>,
}

/// A named counter's declaration in the table: empty, or starting from `packets` (carried
/// on from the table it replaces). The one place both forms are written, so
/// [`Plan::nft_transaction_carrying`] always finds what the plan declared.
pub(crate) fn counter_decl(name: &str, packets: Option<u64>) -> String {
    match packets {
        None => format!("\tcounter {name} {{\n\t}}\n"),
        Some(p) => format!("\tcounter {name} {{\n\t\tpackets {p} bytes 0\n\t}}\n"),
    }
}

impl Plan {
    /// The nft script that replaces the table atomically in one transaction.
    pub fn nft_transaction(&self) -> String {
        self.nft_transaction_carrying(&BTreeMap::new())
    }

    /// [`Plan::nft_transaction`] with each named counter the plan declares starting from
    /// its packet count in `counts` (read from the table being replaced), so a reload that
    /// adds an uplink never resets the others' counts (Prometheus would see a counter go
    /// backwards). A name the plan does not declare is ignored.
    pub fn nft_transaction_carrying(&self, counts: &BTreeMap<String, u64>) -> String {
        let mut nft = self.nft.clone();
        for (name, packets) in counts {
            nft = nft.replacen(
                &counter_decl(name, None),
                &counter_decl(name, Some(*packets)),
                1,
            );
        }
        format!("add table {NFT_FAMILY} {NFT_TABLE}\ndelete table {NFT_FAMILY} {NFT_TABLE}\n{nft}")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# nftables: replaced in one transaction (nft -f)")?;
        write!(f, "{}", self.nft)?;
        writeln!(f)?;
        writeln!(f, "# policy routing rules")?;
        for r in &self.rules {
            writeln!(f, "{} rule add {}", ip_cmd(r.family), r.args().join(" "))?;
        }
        writeln!(f)?;
        writeln!(f, "# routes")?;
        for r in &self.routes {
            writeln!(
                f,
                "{} route replace {}",
                ip_cmd(r.family),
                r.args().join(" ")
            )?;
        }
        writeln!(f)?;
        writeln!(f, "# sysctls")?;
        for s in &self.sysctls {
            writeln!(f, "{} = {}", s.sysctl_name(), s.value)?;
        }
        Ok(())
    }
}

impl Sysctl {
    /// The key as `sysctl(8)` names it: a dot inside an interface name is written `/`
    /// (`net.ipv4.conf.eth0/100.rp_filter`), since dots separate the path's parts.
    pub fn sysctl_name(&self) -> String {
        for family in ["net.ipv4.conf.", "net.ipv6.conf."] {
            if let Some(rest) = self.key.strip_prefix(family) {
                if let Some((iface, leaf)) = rest.rsplit_once('.') {
                    return format!("{family}{}.{leaf}", iface.replace('.', "/"));
                }
            }
        }
        self.key.clone()
    }
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

fn hex(v: u32) -> String {
    format!("{v:#010x}")
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

/// Whether uplink `i` shares its interface with another uplink (two routers on one segment).
fn shares_interface(cfg: &Config, i: usize) -> bool {
    let ifname = &cfg.uplinks[i].interface;
    cfg.uplinks
        .iter()
        .filter(|o| &o.interface == ifname)
        .count()
        > 1
}

/// What every piece of the planner needs.
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

    fn mark(&self, i: usize) -> u32 {
        self.k.mark_of(self.id(i))
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

/// Builds the plan. `usable` names the uplinks that may take new connections, for both
/// families (IPv6 uses those of them that carry it).
pub fn plan(
    cfg: &Config,
    ids: &BTreeMap<String, u32>,
    usable: &BTreeSet<String>,
    facts: &Facts,
) -> Plan {
    plan_dual(cfg, ids, usable, usable, facts)
}

/// Whether any uplink carries IPv6: without, IPv6 is left to the main table entirely.
pub fn has_ipv6(cfg: &Config) -> bool {
    cfg.uplinks.iter().any(|u| u.ipv6.is_some())
}

/// Builds the plan with each family's usable uplinks (health is per family).
pub fn plan_dual(
    cfg: &Config,
    ids: &BTreeMap<String, u32>,
    usable4: &BTreeSet<String>,
    usable6: &BTreeSet<String>,
    facts: &Facts,
) -> Plan {
    let ctx = Ctx {
        cfg,
        k: cfg.kernel,
        ids,
    };
    let mut pols = vec![policies::build(&ctx, usable4, Family::V4)];
    if has_ipv6(cfg) {
        pols.push(policies::build(&ctx, usable6, Family::V6));
    }
    // The table body, twice: as installed, and without the policies' state for the digest.
    let body = |with_state: bool| {
        let mut w = String::new();
        w.push_str(&marks::chains(&ctx, facts));
        w.push_str(&marks::restore_map(&ctx));
        for pol in &pols {
            for m in &pol.maps {
                w.push_str(&m.text(with_state));
            }
            w.push_str(&pol.static_chains);
            w.push_str(&pol.balance);
        }
        w.push_str(&hooks::prerouting(&ctx, facts));
        w.push_str(&hooks::output(&ctx, facts));
        w.push_str(&nat::postrouting(&ctx));
        w
    };
    let dg = digest(&body(false));
    let mut nft = String::new();
    let _ = write!(
        nft,
        "table {NFT_FAMILY} {NFT_TABLE} {{\n\tcomment \"multiwan {dg}\"\n\n{}}}\n",
        body(true)
    );
    let mut rules = Vec::new();
    let mut routes = Vec::new();
    let mut tables = BTreeSet::new();
    for pol in &pols {
        let r = routing::build(&ctx, facts, &pol.default_usable, pol.family);
        rules.extend(r.rules);
        routes.extend(r.routes);
        tables.extend(r.tables);
    }
    Plan {
        nft,
        digest: dg,
        policy_maps: pols.iter().flat_map(|p| p.maps.clone()).collect(),
        rules,
        routes,
        sysctls: routing::sysctls(cfg, facts),
        policies: pols.into_iter().flat_map(|p| p.decisions).collect(),
        ids: ids.clone(),
        tables,
    }
}

#[cfg(test)]
mod tests;
