//! The new connections multiwan deliberately leaves to main's routing, as the hook chains
//! decide it (`plan/hooks.rs`): to the router itself, broadcast, multicast or IPv6
//! link-local (`NEW4`/`NEW6`); a LAN connection main routes out of an uplink by a route of
//! its own (the none-mark lookup of `egress`: the uplink's connected subnet) or out of no
//! uplink at all (another LAN, a VPN); and with `[balance] local = false` the router's own.
//! Pure: judged from the config, the kernel's [`Facts`] (the interfaces' addresses and
//! their networks) and, from the daemon, the kernel's answers to the very lookups the hook
//! chains make ([`Lookups`]: what sees static routes, VPN routes and other tables' rules);
//! without those, from the connected subnets alone; offline (no facts) only what the
//! addresses alone tell.

use std::fmt;
use std::net::IpAddr;

use super::Query;
use crate::model::Config;
use crate::net::IpNet;
use crate::plan::{Facts, Link};

/// A route the kernel matched for a lookup (what `ip route get … fibmatch` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The table it is in (254: main).
    pub table: u32,
    /// Its destination network.
    pub net: IpNet,
    /// Its gateway; none when the destination is on the link.
    pub via: Option<IpAddr>,
    /// The interface it leaves by.
    pub interface: String,
}

impl fmt::Display for Routed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)?;
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        write!(f, " dev {}", self.interface)?;
        match self.table {
            MAIN_TABLE => write!(f, " (table main)"),
            t => write!(f, " (table {t})"),
        }
    }
}

/// The main table's number.
const MAIN_TABLE: u32 = 254;

/// The kernel's answers to the route lookups the hook chains make for a new connection
/// (`plan/hooks.rs`), asked by the daemon for `explain` with the query's addresses; `None`
/// where the kernel has no route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    /// Asked with multiwan's none mark (`egress`'s first lookup, for a LAN connection): a
    /// route of main's own, never its default; one out of an uplink keeps the connection
    /// main's.
    pub none_mark: Option<Routed>,
    /// Asked unmarked: the route the connection takes if multiwan leaves it alone; one out
    /// of an interface no uplink uses is never balanced.
    pub unmarked: Option<Routed>,
}

/// Why a new connection is not balanced: it leaves (or is delivered) by main's routing,
/// unmarked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotBalanced {
    /// The destination is the router itself: one of its addresses, or loopback.
    Local,
    /// The destination is a broadcast address: the limited one or a subnet's.
    Broadcast,
    /// The destination is multicast.
    Multicast,
    /// The destination is IPv6 link-local (`fe80::/10`): it never leaves its link.
    LinkLocal,
    /// The source is the router's own address and `[balance] local = false`.
    RouterOwn,
    /// The destination is on the connected subnet of an uplink's interface: main's own
    /// route sends it out of that interface, not a balanced uplink's.
    UplinkSubnet {
        /// The uplinks on the interface (one unless they share it).
        uplinks: Vec<String>,
        /// The interface.
        interface: String,
        /// The subnet.
        net: IpNet,
    },
    /// The destination is on the connected subnet of an interface no uplink uses (another
    /// LAN, a tunnel): its route leaves by no uplink.
    OtherSubnet {
        /// The interface.
        interface: String,
        /// The subnet.
        net: IpNet,
    },
    /// Main routes the destination out of an uplink's interface by a route of its own (a
    /// static route, not its default): multiwan leaves such routes to main.
    UplinkRoute {
        /// The uplinks on the route's interface.
        uplinks: Vec<String>,
        /// The route.
        route: Routed,
    },
    /// The connection's route (main's or another table's, by someone else's rule) leaves by
    /// an interface no uplink uses: a VPN, another LAN, a static route.
    OtherRoute {
        /// The route.
        route: Routed,
    },
}

impl NotBalanced {
    /// A short machine name: `local`, `broadcast`, `multicast`, `link_local`, `router_own`,
    /// `uplink_subnet`, `other_subnet`, `uplink_route`, `other_route`.
    pub fn kind(&self) -> &'static str {
        match self {
            NotBalanced::Local => "local",
            NotBalanced::Broadcast => "broadcast",
            NotBalanced::Multicast => "multicast",
            NotBalanced::LinkLocal => "link_local",
            NotBalanced::RouterOwn => "router_own",
            NotBalanced::UplinkSubnet { .. } => "uplink_subnet",
            NotBalanced::OtherSubnet { .. } => "other_subnet",
            NotBalanced::UplinkRoute { .. } => "uplink_route",
            NotBalanced::OtherRoute { .. } => "other_route",
        }
    }

    /// The interface main's route leaves by, when it is known.
    pub fn interface(&self) -> Option<&str> {
        match self {
            NotBalanced::UplinkSubnet { interface, .. }
            | NotBalanced::OtherSubnet { interface, .. } => Some(interface),
            NotBalanced::UplinkRoute { route, .. } | NotBalanced::OtherRoute { route } => {
                Some(&route.interface)
            }
            _ => None,
        }
    }

    /// The sentence for `q`, e.g. "10.37.1.1 is on isp1's connected subnet 10.37.1.0/24;
    /// it leaves by main's route via eth1".
    pub fn describe(&self, q: &Query) -> String {
        Describe(self, q).to_string()
    }
}

struct Describe<'a>(&'a NotBalanced, &'a Query);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dst = match self.1.dst {
            Some(d) => d.to_string(),
            None => "the destination".into(),
        };
        match self.0 {
            NotBalanced::Local => write!(
                f,
                "{dst} is the router's own address: the connection is delivered locally"
            ),
            NotBalanced::Broadcast => write!(f, "{dst} is a broadcast address"),
            NotBalanced::Multicast => write!(f, "{dst} is multicast"),
            NotBalanced::LinkLocal => {
                write!(f, "{dst} is link-local (fe80::/10) and never leaves its link")
            }
            NotBalanced::RouterOwn => write!(
                f,
                "{} is the router's own address and [balance] local = false: the router's connections keep main's routing",
                self.1.src
            ),
            NotBalanced::UplinkSubnet {
                uplinks,
                interface,
                net,
            } => write!(
                f,
                "{dst} is on {}'s connected subnet {net}; it leaves by main's route via {interface}",
                uplinks.join("/")
            ),
            NotBalanced::OtherSubnet { interface, net } => write!(
                f,
                "{dst} is on {interface}'s connected subnet {net}, which is no uplink's; it leaves by main's route via {interface}"
            ),
            NotBalanced::UplinkRoute { uplinks, route } => write!(
                f,
                "main routes {dst} by a route of its own, {route}, out of {}'s interface (not by a default route): multiwan leaves it to main",
                uplinks.join("/")
            ),
            NotBalanced::OtherRoute { route } => write!(
                f,
                "{dst} is routed by {route}, and {} is no uplink's interface: the connection leaves by it, unbalanced",
                route.interface
            ),
        }
    }
}

/// The most specific connected subnet holding `dst` (as the kernel's longest-prefix match
/// picks), with its interface.
fn connected(facts: &Facts, dst: IpAddr) -> Option<(&str, IpNet)> {
    let holding = |l: &Link| -> Option<(IpNet, u8)> {
        match dst {
            IpAddr::V4(d) => l
                .onlink4
                .iter()
                .filter(|n| n.contains(d))
                .max_by_key(|n| n.prefix())
                .map(|n| (IpNet::V4(*n), n.prefix())),
            IpAddr::V6(d) => l
                .onlink6
                .iter()
                .filter(|n| n.contains(d))
                .max_by_key(|n| n.prefix())
                .map(|n| (IpNet::V6(*n), n.prefix())),
        }
    };
    let mut best: Option<(&str, IpNet, u8)> = None;
    for (name, l) in facts.links.as_ref()? {
        if let Some((net, len)) = holding(l) {
            if best.is_none_or(|b| len > b.2) {
                best = Some((name.as_str(), net, len));
            }
        }
    }
    best.map(|(n, net, _)| (n, net))
}

/// What a connection that takes `route` is: on a connected subnet (the route is the one
/// the facts hold for the interface's network) or routed by a route of someone's.
fn by_route(cfg: &Config, facts: &Facts, route: &Routed, dst: IpAddr) -> NotBalanced {
    let uplinks = uplinks_on(cfg, &route.interface);
    let subnet = route.via.is_none()
        && route.table == MAIN_TABLE
        && connected(facts, dst) == Some((route.interface.as_str(), route.net));
    match (uplinks.is_empty(), subnet) {
        (false, true) => NotBalanced::UplinkSubnet {
            uplinks,
            interface: route.interface.clone(),
            net: route.net,
        },
        (false, false) => NotBalanced::UplinkRoute {
            uplinks,
            route: route.clone(),
        },
        (true, true) => NotBalanced::OtherSubnet {
            interface: route.interface.clone(),
            net: route.net,
        },
        (true, false) => NotBalanced::OtherRoute {
            route: route.clone(),
        },
    }
}

fn uplinks_on(cfg: &Config, interface: &str) -> Vec<String> {
    cfg.uplinks
        .iter()
        .filter(|u| u.interface == interface)
        .map(|u| u.name.clone())
        .collect()
}

/// Judged by the kernel's answers to the hook chains' lookups. A LAN connection: `egress`
/// keeps it main's when the none-mark lookup finds main's own route out of an uplink, and
/// balances it only when its unmarked route leaves by an uplink. The router's own: `output`
/// balances only its routes by multiwan's uplinks (IPv4: only multiwan's tables carry its
/// realm; IPv6: the next hop must be an uplink's gateway, which the connected-subnet check
/// after this tells).
fn by_lookups(
    cfg: &Config,
    facts: &Facts,
    l: &Lookups,
    dst: IpAddr,
    router: bool,
) -> Option<NotBalanced> {
    let on_uplink = |r: &Routed| !uplinks_on(cfg, &r.interface).is_empty();
    if !router {
        if let Some(n) = l.none_mark.as_ref().filter(|n| on_uplink(n)) {
            return Some(by_route(cfg, facts, n, dst));
        }
    }
    let u = l.unmarked.as_ref()?;
    let ours = u.table == cfg.kernel.table_base;
    let own_main4 = router && dst.is_ipv4() && u.table == MAIN_TABLE;
    (!ours && (!on_uplink(u) || own_main4)).then(|| by_route(cfg, facts, u, dst))
}

/// Why the kernel would not balance `q`, if it would not; `None` also when the facts are
/// unknown and the addresses alone do not tell.
pub(super) fn classify(
    cfg: &Config,
    facts: &Facts,
    lookups: Option<&Lookups>,
    q: &Query,
) -> Option<NotBalanced> {
    let links = facts.links.as_ref();
    if let Some(dst) = q.dst {
        if facts.is_local(dst) {
            return Some(NotBalanced::Local);
        }
        let broadcast = match dst {
            IpAddr::V4(d) => {
                d.is_broadcast()
                    || links.is_some_and(|l| {
                        l.values()
                            .flat_map(|k| &k.onlink4)
                            .any(|n| n.broadcast() == Some(d))
                    })
            }
            IpAddr::V6(_) => false,
        };
        if broadcast {
            return Some(NotBalanced::Broadcast);
        }
        if dst.is_multicast() {
            return Some(NotBalanced::Multicast);
        }
        if matches!(dst, IpAddr::V6(d) if d.is_unicast_link_local()) {
            return Some(NotBalanced::LinkLocal);
        }
    }
    let router = facts.is_local(q.src);
    if router && !cfg.balance.local {
        return Some(NotBalanced::RouterOwn);
    }
    let dst = q.dst?;
    if let Some(l) = lookups {
        if let Some(why) = by_lookups(cfg, facts, l, dst, router) {
            return Some(why);
        }
        // A LAN connection the lookups found balanced is; the router's own IPv6 still
        // depends on its next hop (below).
        if !(router && dst.is_ipv6()) {
            return None;
        }
    }
    let (interface, net) = connected(facts, dst)?;
    let uplinks = uplinks_on(cfg, interface);
    if uplinks.is_empty() {
        return Some(NotBalanced::OtherSubnet {
            interface: interface.to_string(),
            net,
        });
    }
    // The router's own connections too: `output` keeps main's route when it is not one of
    // multiwan's (IPv4: not its realm; IPv6: its next hop, the destination itself, is no
    // uplink's gateway — `hooks::own_routes6`).
    Some(NotBalanced::UplinkSubnet {
        uplinks,
        interface: interface.to_string(),
        net,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::explain::{explain_routed, Explanation, Health, Verdict};
    use crate::model::{load, Proto};
    use crate::net::Family;

    const CFG: &str = r#"
[lan]
interfaces = ["lan0", "lan1"]
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
gateway6 = "fe80::1"
[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
"#;

    fn link(addrs: &[&str], v6: &[&str]) -> Link {
        let mut l = Link {
            up: true,
            ..Link::default()
        };
        for a in addrs {
            let (ip, len) = a.split_once('/').expect("addr/len");
            let ip = ip.parse().expect("ip");
            l.addrs.push(ip);
            l.onlink4
                .extend(crate::net::Ipv4Net::holding(ip, len.parse().expect("len")));
        }
        for a in v6 {
            let (ip, len) = a.split_once('/').expect("addr/len");
            let ip = ip.parse().expect("ip");
            l.addrs6.push(ip);
            l.onlink6
                .extend(crate::net::Ipv6Net::holding(ip, len.parse().expect("len")));
        }
        l
    }

    /// The router of the lab: two uplinks on their /24s, two LANs, one of them on a /16
    /// that holds a more specific LAN /24.
    fn facts() -> Facts {
        let links = BTreeMap::from([
            (
                "wan1".to_string(),
                link(&["10.37.1.253/24"], &["2001:db8:1::253/64"]),
            ),
            ("wan2".to_string(), link(&["10.37.2.253/24"], &[])),
            (
                "lan0".to_string(),
                link(&["192.168.0.1/24"], &["fd37:157::1/64"]),
            ),
            ("lan1".to_string(), link(&["10.37.9.1/24"], &[])),
        ]);
        Facts {
            links: Some(links),
            ..Facts::default()
        }
    }

    fn ask(text: &str, facts: &Facts, src: &str, dst: &str) -> Explanation {
        ask_with(text, facts, None, src, dst)
    }

    /// A TCP connection to port 80 from `src` to `dst`, explained with `lookups`.
    fn ask_with(
        text: &str,
        facts: &Facts,
        lookups: Option<&Lookups>,
        src: &str,
        dst: &str,
    ) -> Explanation {
        let cfg = load("t", text).expect("cfg");
        let q = Query {
            proto: Some(Proto::Tcp),
            dport: Some(80),
            ..bare(src, dst)
        };
        let health = Health::from_states(&cfg, BTreeMap::new(), Family::of(&q.src));
        explain_routed(&cfg, &health, facts, lookups, &q).expect("valid")
    }

    /// A query of only addresses.
    fn bare(src: &str, dst: &str) -> Query {
        Query {
            src: src.parse().expect("ip"),
            dst: Some(dst.parse().expect("ip")),
            proto: None,
            sport: None,
            dport: None,
        }
    }

    fn why(e: &Explanation) -> Option<&NotBalanced> {
        match &e.verdict {
            Verdict::NotBalanced(w) => Some(w),
            _ => None,
        }
    }

    #[test]
    fn an_uplinks_connected_subnet_leaves_by_mains_route() {
        let e = ask(CFG, &facts(), "192.168.0.20", "10.37.1.1");
        let w = why(&e).expect("not balanced");
        assert_eq!(w.kind(), "uplink_subnet");
        assert_eq!(w.interface(), Some("wan1"));
        assert_eq!(
            w.describe(&bare("192.168.0.20", "10.37.1.1")),
            "10.37.1.1 is on isp1's connected subnet 10.37.1.0/24; it leaves by main's route via wan1"
        );
        assert!(e.candidates.is_empty() && e.rule.is_none() && !e.facts_unknown);
        // The second uplink's subnet too, and IPv6: the uplink's on-link /64.
        let e = ask(CFG, &facts(), "192.168.0.20", "10.37.2.7");
        assert!(
            matches!(why(&e), Some(NotBalanced::UplinkSubnet { uplinks, .. }) if uplinks == &["isp2"])
        );
        let e = ask(CFG, &facts(), "fd37:157::20", "2001:db8:1::1");
        assert_eq!(why(&e).map(NotBalanced::kind), Some("uplink_subnet"));
    }

    fn routed(table: u32, net: &str, via: Option<&str>, dev: &str) -> Routed {
        Routed {
            table,
            net: net.parse().expect("net"),
            via: via.map(|v| v.parse().expect("ip")),
            interface: dev.into(),
        }
    }

    fn ask_routed(src: &str, dst: &str, l: &Lookups) -> Explanation {
        ask_with(CFG, &facts(), Some(l), src, dst)
    }

    /// The multipath default of multiwan's own table (1000): what an unmarked lookup of a
    /// balanced connection finds.
    fn balanced() -> Option<Routed> {
        Some(routed(1000, "0.0.0.0/0", Some("10.37.1.1"), "wan1"))
    }

    #[test]
    fn the_kernels_lookups_tell_static_and_vpn_routes_from_balanced_ones() {
        // A static route of main's out of an uplink: egress's none-mark lookup finds it.
        let stat = routed(254, "203.0.113.0/24", Some("10.37.1.1"), "wan1");
        let l = Lookups {
            none_mark: Some(stat.clone()),
            unmarked: Some(stat.clone()),
        };
        let e = ask_routed("192.168.0.20", "203.0.113.9", &l);
        let w = why(&e).expect("not balanced");
        assert_eq!(w.kind(), "uplink_route");
        assert_eq!(w.interface(), Some("wan1"));
        assert_eq!(
            w.describe(&bare("192.168.0.20", "203.0.113.9")),
            "main routes 203.0.113.9 by a route of its own, 203.0.113.0/24 via 10.37.1.1 dev wan1 (table main), out of isp1's interface (not by a default route): multiwan leaves it to main"
        );
        // A VPN's route (main's, or a table of someone else's rule): no uplink's interface.
        for table in [254, 52] {
            let vpn = routed(table, "10.8.0.0/24", None, "wg0");
            let l = Lookups {
                none_mark: (table == 254).then(|| vpn.clone()),
                unmarked: Some(vpn.clone()),
            };
            let e = ask_routed("192.168.0.20", "10.8.0.7", &l);
            assert!(
                matches!(why(&e), Some(NotBalanced::OtherRoute { route }) if route == &vpn),
                "{e:?}"
            );
        }
        // The connected subnet, as the lookup finds it, is told as such.
        let sub = routed(254, "10.37.1.0/24", None, "wan1");
        let l = Lookups {
            none_mark: Some(sub.clone()),
            unmarked: Some(sub),
        };
        let e = ask_routed("192.168.0.20", "10.37.1.1", &l);
        assert_eq!(why(&e).map(NotBalanced::kind), Some("uplink_subnet"));
        // Balanced: the unmarked lookup ends in multiwan's table, or in someone else's table
        // out of an uplink (egress balances that too); or no lookup answered at all.
        for unmarked in [
            balanced(),
            Some(routed(77, "0.0.0.0/0", Some("10.37.2.1"), "wan2")),
            None,
        ] {
            let l = Lookups {
                none_mark: None,
                unmarked,
            };
            let e = ask_routed("192.168.0.20", "1.2.3.4", &l);
            assert!(why(&e).is_none(), "{l:?}: {e:?}");
        }
        // The lookups see past the connected subnets: a LAN /24 main routes by a more
        // specific static route out of an uplink is not that LAN's.
        let l = Lookups {
            none_mark: Some(routed(254, "10.37.9.128/25", Some("10.37.2.1"), "wan2")),
            unmarked: None,
        };
        let e = ask_routed("192.168.0.20", "10.37.9.200", &l);
        assert_eq!(why(&e).map(NotBalanced::kind), Some("uplink_route"));
    }

    #[test]
    fn the_routers_own_is_judged_by_its_unmarked_route() {
        // Main's static route out of an uplink: IPv4 `output` balances only multiwan's
        // routes (its realm), so the router's own keeps main's.
        let stat = routed(254, "203.0.113.0/24", Some("10.37.1.1"), "wan1");
        let l = Lookups {
            none_mark: None,
            unmarked: Some(stat),
        };
        let e = ask_routed("192.168.0.1", "203.0.113.9", &l);
        assert_eq!(why(&e).map(NotBalanced::kind), Some("uplink_route"));
        // Out of a VPN: never balanced.
        let l = Lookups {
            none_mark: None,
            unmarked: Some(routed(254, "10.8.0.0/24", None, "wg0")),
        };
        let e = ask_routed("192.168.0.1", "10.8.0.7", &l);
        assert_eq!(why(&e).map(NotBalanced::kind), Some("other_route"));
        // By multiwan's table: balanced.
        let l = Lookups {
            none_mark: None,
            unmarked: balanced(),
        };
        let e = ask_routed("192.168.0.1", "1.2.3.4", &l);
        assert!(why(&e).is_none(), "{e:?}");
        // The router's own IPv6 to an uplink's subnet: still not balanced (its next hop is
        // no gateway), though the lookup found an uplink's interface.
        let l = Lookups {
            none_mark: None,
            unmarked: Some(routed(254, "2001:db8:1::/64", None, "wan1")),
        };
        let e = ask_routed("fd37:157::1", "2001:db8:1::9", &l);
        assert_eq!(why(&e).map(NotBalanced::kind), Some("uplink_subnet"));
    }

    #[test]
    fn the_internet_is_balanced_and_offline_says_it_could_not_tell() {
        let e = ask(CFG, &facts(), "192.168.0.20", "1.2.3.4");
        assert!(matches!(e.verdict, Verdict::Shares(_)), "{e:?}");
        assert!(!e.facts_unknown);
        // Offline the gateway looks like any destination, and the answer says so.
        let e = ask(CFG, &Facts::default(), "192.168.0.20", "10.37.1.1");
        assert!(matches!(e.verdict, Verdict::Shares(_)), "{e:?}");
        assert!(e.facts_unknown);
    }

    #[test]
    fn the_routers_own_broadcast_multicast_and_link_local_are_never_balanced() {
        let f = facts();
        for (dst, kind) in [
            ("10.37.1.253", "local"),
            ("192.168.0.1", "local"),
            ("127.0.0.1", "local"),
            ("255.255.255.255", "broadcast"),
            ("192.168.0.255", "broadcast"),
            ("10.37.1.255", "broadcast"),
            ("224.0.0.251", "multicast"),
            ("239.1.2.3", "multicast"),
        ] {
            let e = ask(CFG, &f, "192.168.0.20", dst);
            assert_eq!(why(&e).map(NotBalanced::kind), Some(kind), "{dst}");
        }
        for (dst, kind) in [
            ("fd37:157::1", "local"),
            ("::1", "local"),
            ("ff02::fb", "multicast"),
            ("fe80::1", "link_local"),
        ] {
            let e = ask(CFG, &f, "fd37:157::20", dst);
            assert_eq!(why(&e).map(NotBalanced::kind), Some(kind), "{dst}");
        }
        // What the addresses alone tell holds offline too.
        let e = ask(CFG, &Facts::default(), "192.168.0.20", "224.0.0.251");
        assert_eq!(why(&e).map(NotBalanced::kind), Some("multicast"));
    }

    #[test]
    fn another_interfaces_subnet_is_not_balanced_longest_prefix_first() {
        let mut f = facts();
        // wan1 on a /16 that holds lan1's /24: the /24 wins, as in the kernel's lookup.
        let links = f.links.as_mut().expect("links");
        links.insert("wan1".into(), link(&["10.37.1.253/16"], &[]));
        let e = ask(CFG, &f, "192.168.0.20", "10.37.9.5");
        assert_eq!(
            why(&e),
            Some(&NotBalanced::OtherSubnet {
                interface: "lan1".into(),
                net: "10.37.9.0/24".parse().expect("net"),
            })
        );
        let e = ask(CFG, &f, "192.168.0.20", "10.37.200.5");
        assert_eq!(why(&e).and_then(NotBalanced::interface), Some("wan1"));
    }

    #[test]
    fn the_routers_own_connections_follow_balance_local() {
        let f = facts();
        // local = true (the default): balanced, except main's own routes out of an uplink.
        let e = ask(CFG, &f, "10.37.1.253", "1.2.3.4");
        assert!(matches!(e.verdict, Verdict::Shares(_)), "{e:?}");
        let e = ask(CFG, &f, "10.37.1.253", "10.37.2.1");
        assert_eq!(why(&e).map(NotBalanced::kind), Some("uplink_subnet"));
        let e = ask(CFG, &f, "10.37.1.253", "192.168.0.20");
        assert_eq!(why(&e).map(NotBalanced::kind), Some("other_subnet"));
        // IPv6 the same: its next hop on the connected /64 is no uplink's gateway
        // (`hooks::own_routes6`); beyond it, the router's IPv6 is balanced.
        let e = ask(CFG, &f, "2001:db8:1::253", "2001:db8:1::7");
        assert_eq!(why(&e).map(NotBalanced::kind), Some("uplink_subnet"));
        let e = ask(CFG, &f, "2001:db8:1::253", "2001:db8:9::1");
        assert!(matches!(e.verdict, Verdict::Uplink(_)), "{e:?}");
        // local = false: the router's connections keep main's routing.
        let off = format!("{CFG}[balance]\nlocal = false\n");
        for (src, dst) in [
            ("10.37.1.253", "1.2.3.4"),
            ("2001:db8:1::253", "2001:db8:9::1"),
        ] {
            let e = ask(&off, &f, src, dst);
            assert_eq!(why(&e), Some(&NotBalanced::RouterOwn), "{src}");
        }
        // A LAN host is balanced as before.
        let e = ask(&off, &f, "192.168.0.20", "1.2.3.4");
        assert!(matches!(e.verdict, Verdict::Shares(_)), "{e:?}");
    }
}
