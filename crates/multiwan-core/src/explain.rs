//! `explain`: for a hypothetical new connection, which rule matches, which uplinks are
//! candidates, which are excluded and why, and where it would go — computed from the same
//! config and health the planner uses, so it agrees with the kernel by construction.
//! For the hash methods the exact uplink is computed with the kernel's `jhash` (as nftables
//! evaluates `jhash … mod N seed S`); for round-robin and random the shares are given.
//!
//! A query must describe a connection the kernel could see ([`Query::check`]): one address
//! family, and ports only with TCP or UDP, as in a `[[rule]]`. The uplinks' health comes as a
//! [`Health`]: their states and the usable set the plan is built from — the daemon's own,
//! fail-open included — so `explain` never calls refused what the kernel sends out.
//!
//! Before any of that, the connections the hook chains never balance are told apart
//! ([`NotBalanced`], module `unbalanced`): to the router, broadcast, multicast, link-local,
//! on a connected subnet (an uplink's, where main's own route wins, or another
//! interface's), and the router's own with `[balance] local = false`. That needs the
//! kernel's [`Facts`]; without them (`explain -c`) the answer says it could not tell.

mod unbalanced;

pub use unbalanced::{Lookups, NotBalanced, Routed};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::health::{self, State};
use crate::model::{Config, Method, Mode, Proto};
use crate::net::Family;
use crate::plan::{hash_buckets, Facts, HASH_BUCKETS, HASH_SEED};

/// The connection to explain (its family is its source address's; see [`Query::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Source address (a LAN host, or the router itself); it gives the family.
    pub src: IpAddr,
    /// Destination address; unknown matches only rules without `dst`.
    pub dst: Option<IpAddr>,
    /// Protocol; unknown matches only rules without `proto`.
    pub proto: Option<Proto>,
    /// Source port (hash methods that include ports need it for an exact answer).
    pub sport: Option<u16>,
    /// Destination port; unknown matches only rules without `dport`.
    pub dport: Option<u16>,
}

/// Why a [`Query`] describes no connection: the messages name the `explain` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// `--proto` names no protocol a rule can match.
    UnknownProto(String),
    /// The source and destination are of different families.
    MixedFamilies {
        /// The source address.
        src: IpAddr,
        /// The destination address.
        dst: IpAddr,
    },
    /// A port without TCP or UDP (no protocol, or ICMP).
    PortWithoutTcpOrUdp {
        /// `sport` or `dport`.
        port: &'static str,
        /// The protocol given, if any.
        proto: Option<Proto>,
    },
    /// Port 0, which no connection uses.
    PortZero(&'static str),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::UnknownProto(p) => {
                let names: Vec<&str> = Proto::ALL.iter().map(|p| p.as_str()).collect();
                write!(
                    f,
                    "unknown protocol {p:?} for --proto: expected one of {}",
                    names.join(", ")
                )
            }
            QueryError::MixedFamilies { src, dst } => write!(
                f,
                "--src {src} is {} but --dst {dst} is {}: a connection has one address family",
                family_label(Family::of(src)),
                family_label(Family::of(dst))
            ),
            QueryError::PortWithoutTcpOrUdp { port, proto: None } => {
                write!(
                    f,
                    "--{port} needs --proto tcp or --proto udp (ports are TCP's and UDP's)"
                )
            }
            QueryError::PortWithoutTcpOrUdp {
                port,
                proto: Some(p),
            } => write!(
                f,
                "--{port} needs --proto tcp or --proto udp: {} has no ports",
                p.as_str()
            ),
            QueryError::PortZero(port) => write!(f, "--{port} 0: expected a port in 1..=65535"),
        }
    }
}

impl std::error::Error for QueryError {}

fn family_label(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// The protocol `--proto` names.
pub fn parse_proto(name: &str) -> Result<Proto, QueryError> {
    Proto::from_name(name).ok_or_else(|| QueryError::UnknownProto(name.to_string()))
}

impl Query {
    /// Whether the query describes a connection: `dst` of `src`'s family, and ports (1..=65535)
    /// only with TCP or UDP — what a `[[rule]]` accepts, so no answer is given for a
    /// connection no rule and no kernel could see.
    pub fn check(&self) -> Result<(), QueryError> {
        if let Some(dst) = self.dst {
            if Family::of(&dst) != Family::of(&self.src) {
                return Err(QueryError::MixedFamilies { src: self.src, dst });
            }
        }
        for (port, value) in [("sport", self.sport), ("dport", self.dport)] {
            let Some(value) = value else { continue };
            if !self.proto.is_some_and(Proto::has_ports) {
                return Err(QueryError::PortWithoutTcpOrUdp {
                    port,
                    proto: self.proto,
                });
            }
            if value == 0 {
                return Err(QueryError::PortZero(port));
            }
        }
        Ok(())
    }
}

/// The uplinks' health in one family, as the plan is built from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Each uplink's state (missing entries count as up): the reasons exclusions give.
    pub states: BTreeMap<String, State>,
    /// The uplinks taking new connections: the set the plan (so the kernel) uses, fail-open
    /// included.
    pub usable: BTreeSet<String>,
    /// `usable` is fail-open's: every uplink fails its probes, and these stay in use.
    pub fail_open: bool,
}

impl Health {
    /// The health the planner derives from `states` in `family` with no uplink in use
    /// before (fail-open then keeps every uplink down by probes alone): for `explain -c`
    /// (no states: every uplink up) and for tests. The daemon hands its own usable set.
    pub fn from_states(cfg: &Config, states: BTreeMap<String, State>, family: Family) -> Self {
        let (usable, fail_open) = health::usable_fail_open(cfg, &states, &BTreeSet::new(), family);
        Self {
            states,
            usable,
            fail_open,
        }
    }
}

/// Why an uplink is not a candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Exclusion {
    /// The uplink does not carry the connection's family (no `gateway6`).
    NoFamily(Family),
    /// Not in the matching rule's `uplinks`.
    NotInRule,
    /// Down (with the monitor's reason).
    Down(String),
    /// Degraded while its tier has a healthy uplink.
    Degraded(String),
    /// A lower tier has a usable uplink.
    Tier {
        /// The excluded uplink's tier.
        tier: u32,
        /// The tier in use.
        active: u32,
    },
    /// Failover mode: an earlier uplink in the rule's list is usable.
    Standby {
        /// The uplink in use.
        active: String,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NoFamily(fam) => write!(f, "carries no {fam}"),
            Exclusion::NotInRule => write!(f, "not listed in the rule"),
            Exclusion::Down(r) => write!(f, "down: {r}"),
            Exclusion::Degraded(r) => write!(f, "degraded ({r}) and its tier has a healthy uplink"),
            Exclusion::Tier { tier, active } => {
                write!(f, "tier {tier} waits while tier {active} is usable")
            }
            Exclusion::Standby { active } => write!(f, "standby: failover uses {active} first"),
        }
    }
}

/// Where the connection goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Exactly this uplink (single candidate, failover or hash).
    Uplink(String),
    /// One of these, with shares (round-robin / random).
    Shares(Vec<(String, f64)>),
    /// The main routing table (bypass or when_all_down = main).
    Main,
    /// No usable uplink: refused with ICMP unreachable, or dropped silently with
    /// `when_all_down = "blackhole"`.
    NoUplink,
    /// Never balanced: it leaves (or is delivered) by main's routing, unmarked, whatever
    /// the rules and the uplinks' health.
    NotBalanced(NotBalanced),
}

/// The full answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The matching rule, `None` for the default policy.
    pub rule: Option<String>,
    /// The matching rule's mode (balance for the default policy).
    pub mode: Mode,
    /// The balance method that picks among the candidates.
    pub method: Method,
    /// (uplink, weight) of the candidates.
    pub candidates: Vec<(String, u32)>,
    /// (uplink, why) of every uplink that is not a candidate.
    pub excluded: Vec<(String, Exclusion)>,
    /// Where the connection goes.
    pub verdict: Verdict,
    /// The candidates are fail-open's: every uplink fails its probes, and those in use stay
    /// in use.
    pub fail_open: bool,
    /// No interface facts (offline): whether the destination is the router's or on a
    /// connected subnet, or the source the router's own — connections the kernel does not
    /// balance — could not be told.
    pub facts_unknown: bool,
}

fn matches(r: &crate::model::Rule, q: &Query) -> bool {
    let family = Family::of(&q.src);
    let net = |src: bool, a: Option<IpAddr>| match (a, family) {
        (_, Family::V4) => {
            let list = if src { &r.src } else { &r.dst };
            list.is_empty()
                || matches!(a, Some(IpAddr::V4(a)) if list.iter().any(|n| n.contains(a)))
        }
        (_, Family::V6) => {
            let list = if src { &r.src6 } else { &r.dst6 };
            list.is_empty()
                || matches!(a, Some(IpAddr::V6(a)) if list.iter().any(|n| n.contains(a)))
        }
    };
    let ports = |list: &[crate::net::PortRange], p: Option<u16>| {
        list.is_empty() || p.is_some_and(|p| list.iter().any(|r| r.lo <= p && p <= r.hi))
    };
    let family_ok = match family {
        Family::V4 => r.v4,
        Family::V6 => r.v6,
    };
    family_ok
        && net(true, Some(q.src))
        && net(false, q.dst)
        && (r.proto.is_none() || r.proto == q.proto)
        && ports(&r.sport, q.sport)
        && ports(&r.dport, q.dport)
}

/// Explains where a new connection matching `q` goes, given the uplinks' health in the
/// query's family and what the kernel reports about the interfaces (`Facts::default()`
/// offline); a query that describes no connection is refused ([`Query::check`]).
pub fn explain(
    cfg: &Config,
    health: &Health,
    facts: &Facts,
    q: &Query,
) -> Result<Explanation, QueryError> {
    explain_routed(cfg, health, facts, None, q)
}

/// [`explain`], with the kernel's answers to the hook chains' route lookups for `q` (the
/// daemon asks them): then static routes, VPN routes and other tables' rules are seen too,
/// not only the connected subnets.
pub fn explain_routed(
    cfg: &Config,
    health: &Health,
    facts: &Facts,
    lookups: Option<&Lookups>,
    q: &Query,
) -> Result<Explanation, QueryError> {
    q.check()?;
    let family = Family::of(&q.src);
    // A config where no uplink carries IPv6 balances none of it (below): nothing to tell.
    let balanced_family = family == Family::V4 || cfg.uplinks.iter().any(|u| u.has(family));
    if let Some(why) = unbalanced::classify(cfg, facts, lookups, q).filter(|_| balanced_family) {
        return Ok(Explanation {
            rule: None,
            mode: Mode::Balance,
            method: cfg.balance.method,
            candidates: Vec::new(),
            excluded: Vec::new(),
            verdict: Verdict::NotBalanced(why),
            fail_open: false,
            facts_unknown: false,
        });
    }
    let rule = cfg.rules.iter().find(|r| matches(r, q));
    let (members, mode) = match rule {
        Some(r) => (r.uplinks.clone(), r.mode),
        None => ((0..cfg.uplinks.len()).collect(), Mode::Balance),
    };
    // Only uplinks that carry the family can take the connection.
    let members: Vec<usize> = members
        .into_iter()
        .filter(|i| cfg.uplinks[*i].has(family))
        .collect();
    let usable = &health.usable;
    let mut excluded = Vec::new();
    let state = |n: &str| health.states.get(n).cloned().unwrap_or(State::Up);
    for (i, u) in cfg.uplinks.iter().enumerate() {
        if !u.has(family) {
            excluded.push((u.name.clone(), Exclusion::NoFamily(family)));
        } else if !members.contains(&i) {
            excluded.push((u.name.clone(), Exclusion::NotInRule));
        }
    }
    let mut candidates = Vec::new();
    let mut verdict = Verdict::NoUplink;
    match mode {
        Mode::Bypass => verdict = Verdict::Main,
        Mode::Failover => {
            let active = members
                .iter()
                .find(|i| usable.contains(&cfg.uplinks[**i].name));
            for i in &members {
                let u = &cfg.uplinks[*i];
                if Some(i) == active {
                    candidates.push((u.name.clone(), u.weight));
                    verdict = Verdict::Uplink(u.name.clone());
                } else if !usable.contains(&u.name) {
                    excluded.push((u.name.clone(), unusable_reason(&state(&u.name))));
                } else if let Some(a) = active {
                    excluded.push((
                        u.name.clone(),
                        Exclusion::Standby {
                            active: cfg.uplinks[*a].name.clone(),
                        },
                    ));
                }
            }
        }
        Mode::Balance => {
            let tier = members
                .iter()
                .filter(|i| usable.contains(&cfg.uplinks[**i].name))
                .map(|i| cfg.uplinks[*i].tier)
                .min();
            let mut in_tier = Vec::new();
            for i in &members {
                let u = &cfg.uplinks[*i];
                if !usable.contains(&u.name) {
                    excluded.push((u.name.clone(), unusable_reason(&state(&u.name))));
                } else if Some(u.tier) != tier {
                    excluded.push((
                        u.name.clone(),
                        Exclusion::Tier {
                            tier: u.tier,
                            active: tier.unwrap_or(0),
                        },
                    ));
                } else {
                    candidates.push((u.name.clone(), u.weight));
                }
                if Some(u.tier) == tier {
                    in_tier.push(*i);
                }
            }
            verdict = spread(cfg, q, &in_tier, usable, &candidates);
        }
    }
    if verdict == Verdict::NoUplink && cfg.balance.when_all_down == crate::model::WhenAllDown::Main
    {
        verdict = Verdict::Main;
    }
    // A config where no uplink carries IPv6 leaves IPv6 alone: the plan has no IPv6
    // balancing, and the main table routes it as it would without multiwan.
    if family == Family::V6 && !cfg.uplinks.iter().any(|u| u.has(Family::V6)) {
        verdict = Verdict::Main;
    }
    Ok(Explanation {
        rule: rule.map(|r| r.name.clone()),
        mode,
        method: cfg.balance.method,
        fail_open: health.fail_open && !candidates.is_empty(),
        candidates,
        excluded,
        verdict,
        facts_unknown: facts.links.is_none(),
    })
}

fn unusable_reason(s: &State) -> Exclusion {
    match s {
        State::Degraded(r) => Exclusion::Degraded(r.to_string()),
        State::Down(r) => Exclusion::Down(r.to_string()),
        State::Up => Exclusion::Down("unknown".into()),
    }
}

fn spread(
    cfg: &Config,
    q: &Query,
    tier: &[usize],
    usable: &BTreeSet<String>,
    candidates: &[(String, u32)],
) -> Verdict {
    match candidates {
        [] => return Verdict::NoUplink,
        [(only, _)] => return Verdict::Uplink(only.clone()),
        _ => {}
    }
    let bytes = |a: &IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let key = match (cfg.balance.method, q.dst) {
        (Method::SrcHash, _) => Some(bytes(&q.src)),
        (Method::SrcDstHash, Some(d)) => Some([bytes(&q.src), bytes(&d)].concat()),
        _ => None,
    };
    match key {
        Some(key) => {
            let weights: Vec<u32> = tier.iter().map(|i| cfg.uplinks[*i].weight).collect();
            let g = weights.iter().copied().fold(0, gcd).max(1);
            let weights: Vec<u32> = weights.iter().map(|w| w / g).collect();
            let alive: Vec<bool> = tier
                .iter()
                .map(|i| usable.contains(&cfg.uplinks[*i].name))
                .collect();
            let buckets = hash_buckets(&weights, &alive);
            let bucket = nft_jhash_mod(&key, HASH_SEED, HASH_BUCKETS) as usize;
            Verdict::Uplink(cfg.uplinks[tier[buckets[bucket]]].name.clone())
        }
        None => {
            let total: u32 = candidates.iter().map(|c| c.1).sum();
            Verdict::Shares(
                candidates
                    .iter()
                    .map(|(n, w)| (n.clone(), f64::from(*w) / f64::from(total.max(1))))
                    .collect(),
            )
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Bob Jenkins' lookup3 hash as the Linux kernel's `jhash()` computes it.
pub fn jhash(key: &[u8], initval: u32) -> u32 {
    let len = key.len() as u32;
    let mut a = 0xdead_beef_u32.wrapping_add(len).wrapping_add(initval);
    let mut b = a;
    let mut c = a;
    let word = |k: &[u8], i: usize| -> u32 {
        let mut w = 0u32;
        for (j, byte) in k.iter().skip(i).take(4).enumerate() {
            w |= u32::from(*byte) << (8 * j);
        }
        w
    };
    let mut k = key;
    while k.len() > 12 {
        a = a.wrapping_add(word(k, 0));
        b = b.wrapping_add(word(k, 4));
        c = c.wrapping_add(word(k, 8));
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        k = &k[12..];
    }
    if k.is_empty() {
        return c;
    }
    // The tail: bytes 0..4 into a, 4..8 into b, 8..12 into c, little-endian.
    a = a.wrapping_add(word(k, 0));
    if k.len() > 4 {
        b = b.wrapping_add(word(k, 4));
    }
    if k.len() > 8 {
        c = c.wrapping_add(word(k, 8));
    }
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// nftables' `jhash KEY mod N seed S`: the hash scaled into `0..N`.
pub fn nft_jhash_mod(key: &[u8], seed: u32, modulus: u32) -> u32 {
    ((u64::from(jhash(key, seed)) * u64::from(modulus)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Reason;
    use crate::model::load;

    const CFG: &str = r#"
[lan]
interfaces = ["lan0"]
[[uplink]]
name = "a"
interface = "wan1"
gateway = "10.0.1.1"
weight = 3
[[uplink]]
name = "b"
interface = "wan2"
gateway = "10.0.2.1"
[[uplink]]
name = "lte"
interface = "wwan0"
gateway = "10.0.3.1"
tier = 2
[[rule]]
name = "web"
src = ["192.168.0.0/24"]
proto = "tcp"
dport = ["80", "443"]
uplinks = ["b", "a"]
mode = "failover"
[[rule]]
name = "vpn"
dst = ["10.8.0.0/16"]
mode = "bypass"
"#;

    /// Explains `q` with the health the planner derives from `states` alone.
    fn run(cfg: &Config, states: &BTreeMap<String, State>, q: &Query) -> Explanation {
        let health = Health::from_states(cfg, states.clone(), Family::of(&q.src));
        explain(cfg, &health, &Facts::default(), q).expect("a valid query")
    }

    fn q(src: &str) -> Query {
        Query {
            src: src.parse().expect("ip"),
            dst: None,
            proto: None,
            sport: None,
            dport: None,
        }
    }

    #[test]
    fn ipv6_connections_use_the_ipv6_rules_and_uplinks() {
        let cfg = load(
            "t",
            "[lan]\ninterfaces=[\"lan0\"]\n[[uplink]]\nname=\"a\"\ninterface=\"wan1\"\ngateway=\"10.0.0.1\"\ngateway6=\"fe80::1\"\n[[uplink]]\nname=\"b\"\ninterface=\"wan2\"\ngateway=\"10.0.1.1\"\ngateway6=\"fe80::1\"\n[[uplink]]\nname=\"c\"\ninterface=\"wan3\"\ngateway=\"10.0.2.1\"\n[balance]\nmethod=\"src-hash\"\n[[rule]]\nname=\"v6web\"\ndst=[\"2001:db8:80::/48\"]\nuplinks=[\"b\"]\n",
        )
        .expect("cfg");
        let mut web = q("fd37:157::11");
        web.dst = Some("2001:db8:80::1".parse().expect("ip"));
        let e = run(&cfg, &BTreeMap::new(), &web);
        assert_eq!(e.rule.as_deref(), Some("v6web"));
        assert_eq!(e.verdict, Verdict::Uplink("b".into()));
        // The same destination over IPv4 cannot match an IPv6-only rule.
        let e = run(&cfg, &BTreeMap::new(), &q("192.168.0.9"));
        assert_eq!(e.rule, None);
        // The default IPv6 policy never offers the uplink without IPv6, and hashes the IPv6
        // source like the kernel does (every host gets one of a and b).
        let e = run(&cfg, &BTreeMap::new(), &q("fd37:157::12"));
        assert!(e
            .excluded
            .contains(&("c".into(), Exclusion::NoFamily(Family::V6))));
        assert!(matches!(&e.verdict, Verdict::Uplink(u) if u == "a" || u == "b"));
    }

    /// A config without IPv6 leaves IPv6 to the main table (the plan balances none of it):
    /// not "refused".
    #[test]
    fn ipv6_on_an_ipv4_only_config_stays_on_main() {
        let cfg = load("t", CFG).expect("cfg");
        let mut v6 = q("fd00::20");
        v6.dst = Some("2001:db8::1".parse().expect("ip"));
        let e = run(&cfg, &BTreeMap::new(), &v6);
        assert_eq!(e.verdict, Verdict::Main);
        assert!(e
            .excluded
            .contains(&("a".into(), Exclusion::NoFamily(Family::V6))));
    }

    #[test]
    fn default_policy_shares_and_tier_exclusion() {
        let cfg = load("t", CFG).expect("cfg");
        let e = run(&cfg, &BTreeMap::new(), &q("192.168.1.5"));
        assert_eq!(e.rule, None);
        assert_eq!(
            e.verdict,
            Verdict::Shares(vec![("a".into(), 0.75), ("b".into(), 0.25)])
        );
        assert_eq!(
            e.excluded,
            vec![("lte".into(), Exclusion::Tier { tier: 2, active: 1 })]
        );
    }

    #[test]
    fn rules_failover_and_bypass() {
        let cfg = load("t", CFG).expect("cfg");
        let mut web = q("192.168.0.9");
        web.proto = Some(Proto::Tcp);
        web.dport = Some(443);
        let e = run(&cfg, &BTreeMap::new(), &web);
        assert_eq!(e.rule.as_deref(), Some("web"));
        assert_eq!(e.verdict, Verdict::Uplink("b".into()));
        assert!(e
            .excluded
            .contains(&("a".into(), Exclusion::Standby { active: "b".into() })));
        let mut states = BTreeMap::new();
        states.insert("b".to_string(), State::Down(Reason::LinkDown));
        let e = run(&cfg, &states, &web);
        assert_eq!(e.verdict, Verdict::Uplink("a".into()));
        assert!(e
            .excluded
            .contains(&("b".into(), Exclusion::Down("link down".into()))));
        let mut vpn = q("192.168.0.9");
        vpn.dst = Some("10.8.1.1".parse().expect("ip"));
        assert_eq!(run(&cfg, &states, &vpn).verdict, Verdict::Main);
    }

    #[test]
    fn all_down_is_refused_and_tier_two_takes_over() {
        let cfg = load("t", CFG).expect("cfg");
        let mut states = BTreeMap::new();
        states.insert(
            "a".to_string(),
            State::Down(Reason::ProbesFailing { rounds: 6 }),
        );
        states.insert("b".to_string(), State::Down(Reason::LinkDown));
        assert_eq!(
            run(&cfg, &states, &q("192.168.1.5")).verdict,
            Verdict::Uplink("lte".into())
        );
        states.insert("lte".to_string(), State::Down(Reason::NoAddress));
        // a is down by its probes alone: fail-open keeps it, as the plan does.
        let e = run(&cfg, &states, &q("192.168.1.5"));
        assert_eq!(
            (e.verdict, e.fail_open),
            (Verdict::Uplink("a".into()), true)
        );
        states.insert("a".to_string(), State::Down(Reason::LinkDown));
        let e = run(&cfg, &states, &q("192.168.1.5"));
        assert_eq!((e.verdict, e.fail_open), (Verdict::NoUplink, false));
    }

    #[test]
    fn a_query_mixing_families_is_refused_naming_both() {
        let cfg = load("t", CFG).expect("cfg");
        for (src, dst, want) in [
            (
                "192.168.1.5",
                "2001:db8::5",
                "--src 192.168.1.5 is IPv4 but --dst 2001:db8::5 is IPv6",
            ),
            (
                "fd00::5",
                "203.0.113.5",
                "--src fd00::5 is IPv6 but --dst 203.0.113.5 is IPv4",
            ),
        ] {
            let mut mixed = q(src);
            mixed.dst = Some(dst.parse().expect("ip"));
            mixed.proto = Some(Proto::Tcp);
            mixed.dport = Some(80);
            let health = Health::from_states(&cfg, BTreeMap::new(), Family::of(&mixed.src));
            let e = explain(&cfg, &health, &Facts::default(), &mixed).expect_err("mixed families");
            assert!(matches!(e, QueryError::MixedFamilies { .. }), "{e:?}");
            assert!(e.to_string().starts_with(want), "{e}");
        }
    }

    #[test]
    fn ports_need_tcp_or_udp_and_are_never_zero() {
        let cfg = load("t", CFG).expect("cfg");
        let health = Health::from_states(&cfg, BTreeMap::new(), Family::V4);
        let with = |proto: Option<Proto>, sport: Option<u16>, dport: Option<u16>| {
            let mut c = q("192.168.1.5");
            (c.proto, c.sport, c.dport) = (proto, sport, dport);
            explain(&cfg, &health, &Facts::default(), &c).map(|_| ())
        };
        let no_proto = with(None, None, Some(80)).expect_err("dport without proto");
        assert_eq!(
            no_proto.to_string(),
            "--dport needs --proto tcp or --proto udp (ports are TCP's and UDP's)"
        );
        let icmp = with(Some(Proto::Icmp), Some(80), None).expect_err("icmp has no ports");
        assert_eq!(
            icmp.to_string(),
            "--sport needs --proto tcp or --proto udp: icmp has no ports"
        );
        let zero = with(Some(Proto::Tcp), None, Some(0)).expect_err("port 0");
        assert_eq!(zero.to_string(), "--dport 0: expected a port in 1..=65535");
        let zero = with(Some(Proto::Udp), Some(0), Some(53)).expect_err("port 0");
        assert_eq!(zero, QueryError::PortZero("sport"));
        assert_eq!(with(Some(Proto::Udp), Some(1), Some(65535)), Ok(()));
        assert_eq!(with(Some(Proto::Icmp), None, None), Ok(()));
        assert_eq!(parse_proto("udp"), Ok(Proto::Udp));
        assert_eq!(
            parse_proto("sctp").map_err(|e| e.to_string()),
            Err("unknown protocol \"sctp\" for --proto: expected one of tcp, udp, icmp".into())
        );
    }

    #[test]
    fn fail_open_keeps_the_uplink_in_use_and_says_so() {
        const TWO: &str = "[lan]\ninterfaces=[\"lan0\"]\n[[uplink]]\nname=\"u1\"\ninterface=\"wan1\"\ngateway=\"10.0.1.1\"\n[[uplink]]\nname=\"u2\"\ninterface=\"wan2\"\ngateway=\"10.0.2.1\"\n";
        let cfg = load("t", TWO).expect("cfg");
        let failing = State::Down(Reason::ProbesFailing { rounds: 6 });
        let states: BTreeMap<String, State> = [("u1", &failing), ("u2", &failing)]
            .into_iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect();
        // The daemon's set: u2 was in use when the probes took both down, so it stays.
        let last = BTreeSet::from(["u2".to_string()]);
        let (usable, fail_open) = health::usable_fail_open(&cfg, &states, &last, Family::V4);
        assert_eq!((usable.clone(), fail_open), (last.clone(), true));
        let health = Health {
            states: states.clone(),
            usable,
            fail_open,
        };
        let e = explain(&cfg, &health, &Facts::default(), &q("192.168.1.5")).expect("valid");
        assert_eq!(e.verdict, Verdict::Uplink("u2".into()));
        assert_eq!(e.candidates, vec![("u2".to_string(), 1)]);
        assert!(e.fail_open);
        assert_eq!(
            e.excluded,
            vec![(
                "u1".into(),
                Exclusion::Down("probes failing (6 rounds)".into())
            )]
        );
        // From the states alone (nothing in use before) fail-open keeps both, as the plan.
        let e = run(&cfg, &states, &q("192.168.1.5"));
        assert!(e.fail_open);
        assert_eq!(
            e.verdict,
            Verdict::Shares(vec![("u1".into(), 0.5), ("u2".into(), 0.5)])
        );
        // Without fail-open the connection is refused, and nothing claims fail-open.
        let off = load("t", &format!("{TWO}[balance]\nfail_open = false\n")).expect("cfg");
        let e = run(&off, &states, &q("192.168.1.5"));
        assert_eq!((e.verdict, e.fail_open), (Verdict::NoUplink, false));
    }

    #[test]
    fn jhash_known_values() {
        // Reference values of lookup3's hashlittle (which the kernel's jhash equals for
        // these inputs): the empty key and the classic "Four score and seven years ago".
        assert_eq!(jhash(b"", 0), 0xdeadbeef);
        assert_eq!(jhash(b"", 0xdeadbeef), 0xbd5b7dde);
        assert_eq!(jhash(b"Four score and seven years ago", 0), 0x17770551);
        assert_eq!(jhash(b"Four score and seven years ago", 1), 0xcd628161);
    }
}
