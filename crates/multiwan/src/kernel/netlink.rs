//! rtnetlink: links, addresses, routes and rules, read as structures and written as messages
//! (no `ip` process). Route dumps are filtered by the kernel per table, so reading multiwan's
//! tables costs the same with 100 000 routes in the main table as with none.
//!
//! Everything multiwan reads back is either understood or reported: a rule or route with
//! multiwan's protocol that does not fit the planner's types is returned as [`Unknown`], so
//! `apply` removes it and `down` deletes it, instead of dropping it silently.

use std::collections::BTreeMap;
use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use multiwan_core::explain::Routed;
use multiwan_core::net::IpNet;
use multiwan_core::plan::{Family, IpRule, Nexthop, Route, RouteKind, RuleAction, RTPROT_MULTIWAN};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkFlags, LinkHeader};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteRealm, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction as NlRuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use netlink_sys::protocols::NETLINK_ROUTE;

use super::rtmsg::{Link, RtMsg, RtRequest};
use super::socket::NlSocket;

const MAIN_TABLE: u32 = 254;
/// `RT_TABLE_COMPAT`: the header's one-byte table field for tables above 255.
const COMPAT_TABLE: u8 = 252;

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// Administratively up with carrier.
    pub up: bool,
}

/// One address of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    /// The interface's index.
    pub index: u32,
    /// The address (the local one on a point-to-point address).
    pub ip: IpAddr,
    /// With `prefix_len`, the network the address makes on the link (the peer's on a
    /// point-to-point address).
    pub net: IpAddr,
    pub prefix_len: u8,
}

/// A rule or route with multiwan's protocol that the planner cannot express: kept as the
/// kernel sent it, so it can be deleted exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unknown {
    Rule(RuleMessage),
    Route(RouteMessage),
}

/// The kernel refused to install this route (the context of its answer, so the daemon can
/// tell which uplink family the plan could not install). Shown as `installing route …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRefused(pub Route);

impl std::fmt::Display for RouteRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "installing route {}", self.0.args().join(" "))
    }
}

/// An rtnetlink socket.
pub struct Rtnl(NlSocket);

fn proto() -> RouteProtocol {
    RouteProtocol::from(RTPROT_MULTIWAN)
}

fn af(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// The family of a message's address family (`None` for any other).
pub fn family_of(a: AddressFamily) -> Option<Family> {
    match a {
        AddressFamily::Inet => Some(Family::V4),
        AddressFamily::Inet6 => Some(Family::V6),
        _ => None,
    }
}

fn full_len(family: Family) -> u8 {
    match family {
        Family::V4 => 32,
        Family::V6 => 128,
    }
}

impl Rtnl {
    /// Opens a socket in the current network namespace.
    pub fn open() -> Result<Self> {
        Ok(Self(NlSocket::open(NETLINK_ROUTE, true)?))
    }

    fn dump(&mut self, msg: RtRequest) -> Result<Vec<RtMsg>> {
        self.0.ask(msg, NLM_F_DUMP)
    }

    fn change(&mut self, msg: RtRequest, flags: u16) -> Result<()> {
        self.0.ask::<_, RtMsg>(msg, flags).map(|_| ())
    }

    /// Every interface.
    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        let mut out = Vec::new();
        for m in self.dump(RtRequest::GetLink(LinkHeader::default()))? {
            if let RtMsg::NewLink(l) = m {
                out.push(link_info(&l));
            }
        }
        Ok(out)
    }

    /// Byte counters of every interface: name → (received, sent).
    pub fn link_bytes(&mut self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut out = BTreeMap::new();
        for m in self.dump(RtRequest::GetLink(LinkHeader::default()))? {
            if let RtMsg::NewLink(l) = m {
                let stats = l.stats64.map(|s| (s.rx_bytes, s.tx_bytes));
                out.insert(link_info(&l).name, stats.unwrap_or((0, 0)));
            }
        }
        Ok(out)
    }

    /// Every usable address of `family`: interface index, address and the network on the
    /// link it makes (its prefix: the peer's on a point-to-point address). For IPv6 only
    /// global ones that finished duplicate address detection (link-local addresses cannot
    /// reach the internet; a tentative one cannot be used yet).
    pub fn addrs(&mut self, family: Family) -> Result<Vec<AddrInfo>> {
        let mut req = AddressMessage::default();
        req.header.family = af(family);
        let mut out = Vec::new();
        for m in self.dump(RtRequest::GetAddress(req))? {
            if let RtMsg::NewAddress(a) = m {
                if let Some(ip) = addr_of(&a, family) {
                    out.push(AddrInfo {
                        index: a.header.index,
                        ip,
                        net: prefix_address(&a, family).unwrap_or(ip),
                        prefix_len: a.header.prefix_len,
                    });
                }
            }
        }
        Ok(out)
    }

    /// [`Rtnl::addrs`] as (interface index, address, prefix length), for `multiwan doctor`'s
    /// on-link and subnet checks.
    pub fn addrs_with_prefix(&mut self, family: Family) -> Result<Vec<(u32, IpAddr, u8)>> {
        Ok(self
            .addrs(family)?
            .into_iter()
            .map(|a| (a.index, a.ip, a.prefix_len))
            .collect())
    }

    /// Routes of `family` in `table`, or in every table when `None`, with routing protocol
    /// `protocol` if given (both filtered by the kernel).
    pub fn routes(
        &mut self,
        family: Family,
        table: Option<u32>,
        protocol: Option<u8>,
    ) -> Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = af(family);
        if let Some(p) = protocol {
            req.header.protocol = RouteProtocol::from(p);
        }
        if let Some(t) = table {
            req.header.table = compat_table(t);
            req.attributes.push(RouteAttribute::Table(t));
        }
        let mut out = Vec::new();
        match self.0.try_ask(RtRequest::GetRoute(req), NLM_F_DUMP)? {
            Ok(list) => {
                for m in list {
                    if let RtMsg::NewRoute(r) = m {
                        out.push(r);
                    }
                }
            }
            // A table that does not exist yet holds nothing (every verification asks for the
            // tables of families no uplink has routes in yet).
            Err(r) if table.is_some() && r.errno == nix::libc::ENOENT => {}
            Err(r) => return Err(r.into_error()),
        }
        Ok(out)
    }

    /// The route the kernel matches for a packet to `dst` from `src` with firewall mark
    /// `mark` (`ip route get … fibmatch`, rules included). A forwarded packet's source is not
    /// the router's: it is asked as arriving from loopback, which is how the nftables `fib`
    /// expression asks; the router's own as an output lookup. `None` when the kernel has no
    /// route (unreachable, prohibited, or a rule that ends the lookup).
    pub fn route_get(
        &mut self,
        dst: IpAddr,
        src: IpAddr,
        own: bool,
        mark: u32,
    ) -> Result<Option<RouteMessage>> {
        let family = match dst {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        };
        let addr = |a: IpAddr| match a {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        };
        let mut req = RouteMessage::default();
        req.header.address_family = af(family);
        req.header.destination_prefix_length = full_len(family);
        req.header.flags = RouteFlags::FibMatch;
        req.attributes.push(RouteAttribute::Destination(addr(dst)));
        req.header.source_prefix_length = full_len(family);
        req.attributes.push(RouteAttribute::Source(addr(src)));
        if !own {
            let lo = nix::net::if_::if_nametoindex("lo").context("the loopback interface")?;
            req.attributes.push(RouteAttribute::Iif(lo));
        }
        req.attributes.push(RouteAttribute::Mark(mark));
        match self.0.try_ask::<_, RtMsg>(RtRequest::GetRoute(req), 0)? {
            Ok(list) => Ok(list.into_iter().find_map(|m| match m {
                RtMsg::NewRoute(r) => Some(r),
                _ => None,
            })),
            Err(r)
                if [
                    nix::libc::ENETUNREACH,
                    nix::libc::EHOSTUNREACH,
                    nix::libc::EACCES,
                    nix::libc::EINVAL,
                ]
                .contains(&r.errno) =>
            {
                Ok(None)
            }
            Err(r) => Err(r.into_error()),
        }
    }

    /// Routes of `family` through interface `index` in every table (kernel-filtered by
    /// device).
    pub fn routes_via(&mut self, family: Family, index: u32) -> Result<Vec<RouteMessage>> {
        let mut req = RouteMessage::default();
        req.header.address_family = af(family);
        req.attributes.push(RouteAttribute::Oif(index));
        let mut out = Vec::new();
        for m in self.dump(RtRequest::GetRoute(req))? {
            if let RtMsg::NewRoute(r) = m {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The neighbour cache entries of `family` on interface `index`: (address, state).
    pub fn neighbours(
        &mut self,
        family: Family,
        index: u32,
    ) -> Result<Vec<(IpAddr, NeighbourState)>> {
        // Strict checking takes the interface as an attribute (the header's must be 0);
        // the answers are filtered here too, whatever the kernel did.
        let mut req = NeighbourMessage::default();
        req.header.family = af(family);
        req.attributes.push(NeighbourAttribute::IfIndex(index));
        let mut out = Vec::new();
        for m in self.dump(RtRequest::GetNeighbour(req))? {
            if let RtMsg::NewNeighbour(n) = m {
                if n.header.ifindex == index {
                    out.extend(n.destination.map(|d| (d, n.header.state)));
                }
            }
        }
        Ok(out)
    }

    /// Every rule of `family`.
    pub fn rules(&mut self, family: Family) -> Result<Vec<RuleMessage>> {
        let mut req = RuleMessage::default();
        req.header.family = af(family);
        let mut out = Vec::new();
        for m in self.dump(RtRequest::GetRule(req))? {
            if let RtMsg::NewRule(r) = m {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// `ip route replace` of one of multiwan's routes.
    /// The kernel's refusal carries [`RouteRefused`] as its context.
    pub fn replace_route(&mut self, r: &Route, index: &BTreeMap<String, u32>) -> Result<()> {
        let msg = route_message(r, index)?;
        let answer = self
            .0
            .try_ask::<_, RtMsg>(RtRequest::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE)
            .with_context(|| RouteRefused(r.clone()).to_string())?;
        answer
            .map(|_| ())
            .map_err(|refusal| refusal.into_error().context(RouteRefused(r.clone())))
    }

    /// Deletes multiwan's default route of `family` in `table`.
    pub fn delete_route(&mut self, family: Family, table: u32) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header = route_header(family, table, RouteScope::NoWhere);
        // Whatever its type (a multipath route or an unreachable one).
        m.header.kind = RouteType::Unspec;
        m.attributes.push(RouteAttribute::Table(table));
        self.change(RtRequest::DelRoute(m), 0)
            .with_context(|| format!("removing multiwan's {family} route in table {table}"))
    }

    pub fn add_rule(&mut self, r: &IpRule) -> Result<()> {
        self.change(RtRequest::NewRule(rule_message(r)), NLM_F_CREATE)
            .with_context(|| format!("adding ip rule {}", r.args().join(" ")))
    }

    pub fn delete_rule(&mut self, r: &IpRule) -> Result<()> {
        self.change(RtRequest::DelRule(rule_message(r)), 0)
            .with_context(|| format!("removing ip rule {}", r.args().join(" ")))
    }

    /// Deletes a rule or route of multiwan's that the planner could not express.
    pub fn delete_unknown(&mut self, u: &Unknown) -> Result<()> {
        match u {
            Unknown::Rule(m) => self.change(RtRequest::DelRule(m.clone()), 0),
            Unknown::Route(m) => self.change(RtRequest::DelRoute(m.clone()), 0),
        }
        .context("removing an unrecognised rule or route of multiwan's")
    }
}

fn link_info(l: &Link) -> LinkInfo {
    let f = l.header.flags;
    LinkInfo {
        index: l.header.index,
        name: l.name.clone().unwrap_or_default(),
        up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::LowerUp),
    }
}

fn addr_of(a: &AddressMessage, family: Family) -> Option<IpAddr> {
    if family == Family::V6 {
        let unusable = AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed;
        if a.header.scope != AddressScope::Universe || a.header.flags.intersects(unusable) {
            return None;
        }
    }
    let pick = |local: bool| {
        a.attributes.iter().find_map(|x| match (x, local) {
            (AddressAttribute::Local(ip), true) | (AddressAttribute::Address(ip), false)
                if Family::of(ip) == family =>
            {
                Some(*ip)
            }
            _ => None,
        })
    };
    pick(true).or_else(|| pick(false))
}

/// The address the prefix length belongs to (`IFA_ADDRESS`: the peer's on a point-to-point
/// address, else the address itself).
fn prefix_address(a: &AddressMessage, family: Family) -> Option<IpAddr> {
    a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(ip) if Family::of(ip) == family => Some(*ip),
        _ => None,
    })
}

fn compat_table(t: u32) -> u8 {
    u8::try_from(t).unwrap_or(COMPAT_TABLE)
}

fn route_header(family: Family, table: u32, scope: RouteScope) -> RouteHeader {
    RouteHeader {
        address_family: af(family),
        table: compat_table(table),
        protocol: proto(),
        scope,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    }
}

fn ifindex(index: &BTreeMap<String, u32>, dev: &str) -> Result<u32> {
    index
        .get(dev)
        .copied()
        .ok_or_else(|| anyhow!("interface {dev:?} does not exist"))
}

fn route_message(r: &Route, index: &BTreeMap<String, u32>) -> Result<RouteMessage> {
    let mut m = RouteMessage::default();
    // Like `ip`: a single device route (no gateway) is link-scoped, anything else universe.
    let scope = match r.nexthops.as_slice() {
        [nh] if nh.via.is_none() => RouteScope::Link,
        _ => RouteScope::Universe,
    };
    m.header = route_header(r.family, r.table, scope);
    m.attributes.push(RouteAttribute::Table(r.table));
    match r.kind {
        RouteKind::Unicast => {}
        RouteKind::Unreachable => {
            m.header.kind = RouteType::Unreachable;
            return Ok(m);
        }
        RouteKind::Blackhole => {
            m.header.kind = RouteType::BlackHole;
            return Ok(m);
        }
    }
    match r.nexthops.as_slice() {
        [nh] => {
            if let Some(via) = nh.via {
                m.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::from(via)));
            }
            m.attributes
                .push(RouteAttribute::Oif(ifindex(index, &nh.dev)?));
            m.attributes.extend(r.realm.map(realm_attribute));
            if nh.onlink() {
                m.header.flags |= RouteFlags::Onlink;
            }
        }
        hops => {
            let mut list = Vec::new();
            for nh in hops {
                let mut h = RouteNextHop::default();
                h.interface_index = ifindex(index, &nh.dev)?;
                h.hops = u8::try_from(nh.weight.clamp(1, 256) - 1).unwrap_or(u8::MAX);
                if nh.onlink() {
                    h.flags |= RouteNextHopFlags::Onlink;
                }
                if let Some(via) = nh.via {
                    h.attributes
                        .push(RouteAttribute::Gateway(RouteAddress::from(via)));
                }
                h.attributes.extend(r.realm.map(realm_attribute));
                list.push(h);
            }
            m.attributes.push(RouteAttribute::MultiPath(list));
        }
    }
    Ok(m)
}

/// The table of a route message (the attribute wins over the one-byte header field).
pub fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// Whether a route is multiwan's.
pub fn is_ours(m: &RouteMessage) -> bool {
    m.header.protocol == proto()
}

fn gateway(attrs: &[RouteAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
        _ => None,
    })
}

fn oif(attrs: &[RouteAttribute]) -> Option<u32> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// The route a lookup matched ([`Rtnl::route_get`]) as `explain` reads it: `None` when it
/// leaves by no interface (a route without one, or of an interface not in `names`). Of a
/// multipath route the first next hop.
pub fn routed(m: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<Routed> {
    let family = family_of(m.header.address_family)?;
    let len = m.header.destination_prefix_length;
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
        RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
        _ => None,
    });
    let net = match (family, dst) {
        (_, Some(d)) if Family::of(&d) == family => IpNet::holding(d, len)?,
        (Family::V4, None) => IpNet::holding(std::net::Ipv4Addr::UNSPECIFIED.into(), 0)?,
        (Family::V6, None) => IpNet::holding(std::net::Ipv6Addr::UNSPECIFIED.into(), 0)?,
        _ => return None,
    };
    let first = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::MultiPath(hops) => hops.first(),
        _ => None,
    });
    let (index, via) = match first {
        Some(h) => (h.interface_index, gateway(&h.attributes)),
        None => (oif(&m.attributes)?, gateway(&m.attributes)),
    };
    Some(Routed {
        table: table_of(m),
        net,
        via,
        interface: names.get(&index)?.clone(),
    })
}

/// A default route as the planner writes it, or `None` when it is anything else.
pub fn parse_route(m: &RouteMessage, names: &BTreeMap<u32, String>) -> Option<Route> {
    if m.header.destination_prefix_length != 0 {
        return None;
    }
    let family = family_of(m.header.address_family)?;
    let reject = match m.header.kind {
        RouteType::Unicast => None,
        RouteType::Unreachable => Some(RouteKind::Unreachable),
        RouteType::BlackHole => Some(RouteKind::Blackhole),
        _ => return None,
    };
    if let Some(kind) = reject {
        return Some(Route {
            family,
            table: table_of(m),
            nexthops: Vec::new(),
            kind,
            realm: None,
        });
    }
    let name = |i: u32| names.get(&i).cloned();
    let multipath = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::MultiPath(h) => Some(h),
        _ => None,
    });
    let realm = match multipath {
        Some(hops) => {
            let mut realms = hops.iter().map(|h| realm(&h.attributes));
            let first = realms.next().flatten();
            // Mixed realms are not the planner's: None makes the diff replace the route.
            realms.all(|r| r == first).then_some(first).flatten()
        }
        None => realm(&m.attributes),
    };
    let nexthops = match multipath {
        Some(hops) => hops
            .iter()
            .map(|h| {
                Some(Nexthop {
                    via: gateway(&h.attributes),
                    dev: name(h.interface_index)?,
                    weight: u32::from(h.hops) + 1,
                })
            })
            .collect::<Option<Vec<_>>>()?,
        None => vec![Nexthop {
            via: gateway(&m.attributes),
            dev: name(oif(&m.attributes)?)?,
            weight: 1,
        }],
    };
    Some(Route {
        family,
        table: table_of(m),
        nexthops,
        kind: RouteKind::Unicast,
        realm,
    })
}

/// The realm (`RTA_FLOW`) among a route's or a next hop's attributes, as one number.
fn realm(attrs: &[RouteAttribute]) -> Option<u32> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Realm(r) => Some(u32::from(r.source) << 16 | u32::from(r.destination)),
        _ => None,
    })
}

/// `realm` as the attribute that carries it.
fn realm_attribute(realm: u32) -> RouteAttribute {
    RouteAttribute::Realm(RouteRealm {
        // Both halves of a u32 (the "from" and the "to" realm).
        source: (realm >> 16) as u16,
        destination: (realm & 0xffff) as u16,
    })
}

/// The destination of a route without a gateway in the main table (an interface's prefix
/// route, an advertised on-link prefix, a host route to a gateway): a network the kernel
/// reaches directly on the route's interface.
pub fn onlink_destination(m: &RouteMessage) -> Option<(IpAddr, u8)> {
    let direct = m.header.kind == RouteType::Unicast
        && table_of(m) == MAIN_TABLE
        && !is_ours(m)
        && gateway(&m.attributes).is_none()
        && !m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::MultiPath(_)));
    if !direct {
        return None;
    }
    let family = family_of(m.header.address_family)?;
    let len = m.header.destination_prefix_length;
    // A default route without a gateway (a point-to-point link) has no destination: all of
    // its family is on the link.
    let everything = || {
        (len == 0).then_some(match family {
            Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        })
    };
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(IpAddr::V4(*d)),
        RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
        _ => None,
    });
    Some((dst.or_else(everything)?, len))
}

/// The gateway, metric and table of a foreign default route (for `gateway = "auto"`).
pub fn default_gateway(m: &RouteMessage) -> Option<(IpAddr, u32, u32)> {
    if m.header.destination_prefix_length != 0 || is_ours(m) {
        return None;
    }
    let metric = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    Some((gateway(&m.attributes)?, metric, table_of(m)))
}

fn rule_message(r: &IpRule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = af(r.family);
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::Protocol(proto()));
    if let Some(from) = r.from {
        m.header.src_len = full_len(r.family);
        m.attributes.push(RuleAttribute::Source(from));
    }
    if let Some((mark, mask)) = r.fwmark {
        m.attributes.push(RuleAttribute::FwMark(mark));
        m.attributes.push(RuleAttribute::FwMask(mask));
    }
    if let Some(oif) = &r.oif {
        m.attributes.push(RuleAttribute::Oifname(oif.clone()));
    }
    if let Some(to) = r.to {
        m.header.dst_len = to.prefix();
        m.attributes.push(RuleAttribute::Destination(to.addr()));
    }
    match r.action {
        RuleAction::MainNoDefault => {
            m.header.action = NlRuleAction::ToTable;
            m.header.table = MAIN_TABLE as u8;
            m.attributes.push(RuleAttribute::Table(MAIN_TABLE));
            m.attributes.push(RuleAttribute::SuppressPrefixLen(0));
        }
        RuleAction::Lookup(t) => {
            m.header.action = NlRuleAction::ToTable;
            m.header.table = compat_table(t);
            m.attributes.push(RuleAttribute::Table(t));
        }
        RuleAction::Unreachable => m.header.action = NlRuleAction::Unreachable,
        RuleAction::Blackhole => m.header.action = NlRuleAction::Blackhole,
    }
    m
}

/// Whether a rule is multiwan's.
pub fn rule_is_ours(m: &RuleMessage) -> bool {
    m.attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::Protocol(p) if *p == proto()))
}

/// A rule's `fwmark value/mask` selector, if it has one (the mask defaults to all ones).
pub fn rule_fwmark(m: &RuleMessage) -> Option<(u32, u32)> {
    let mut mark = None;
    let mut mask = u32::MAX;
    for a in &m.attributes {
        match a {
            RuleAttribute::FwMark(v) => mark = Some(*v),
            RuleAttribute::FwMask(v) => mask = *v,
            _ => {}
        }
    }
    mark.map(|v| (v, mask))
}

/// A rule as the planner writes it, or `None` when it has anything the planner never writes.
pub fn parse_rule(m: &RuleMessage) -> Option<IpRule> {
    let family = family_of(m.header.family)?;
    let mut priority = 0;
    let mut fwmark = None;
    let mut fwmask = u32::MAX;
    let mut from = None;
    let mut table = u32::from(m.header.table);
    let mut suppress = None;
    let mut oif = None;
    let mut to = None;
    for a in &m.attributes {
        match a {
            RuleAttribute::Oifname(name) => oif = Some(name.clone()),
            RuleAttribute::Destination(ip) if Family::of(ip) == family => {
                to = IpNet::new(*ip, m.header.dst_len)
            }
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::FwMark(v) => fwmark = Some(*v),
            RuleAttribute::FwMask(v) => fwmask = *v,
            RuleAttribute::Source(ip)
                if Family::of(ip) == family && m.header.src_len == full_len(family) =>
            {
                from = Some(*ip)
            }
            RuleAttribute::Table(t) => table = *t,
            // The kernel reports "unset" as -1.
            RuleAttribute::SuppressPrefixLen(s) if *s != u32::MAX => suppress = Some(*s),
            RuleAttribute::SuppressPrefixLen(_) => {}
            RuleAttribute::SuppressIfGroup(g) if *g == u32::MAX => {}
            RuleAttribute::Protocol(_) => {}
            _ => return None,
        }
    }
    if (m.header.dst_len != 0 && to.is_none()) || (m.header.src_len != 0 && from.is_none()) {
        return None;
    }
    let action = match (m.header.action, suppress) {
        (NlRuleAction::ToTable, Some(0)) if table == MAIN_TABLE => RuleAction::MainNoDefault,
        (NlRuleAction::ToTable, None) => RuleAction::Lookup(table),
        (NlRuleAction::Unreachable, None) => RuleAction::Unreachable,
        (NlRuleAction::Blackhole, None) => RuleAction::Blackhole,
        _ => return None,
    };
    Some(IpRule {
        family,
        priority,
        fwmark: fwmark.map(|v| (v, fwmask)),
        from,
        oif,
        to,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_through_their_messages() {
        for r in [
            IpRule {
                family: Family::V4,
                priority: 1000,
                fwmark: None,
                from: None,
                oif: Some("wan1".into()),
                to: None,
                action: RuleAction::Lookup(1001),
            },
            IpRule {
                family: Family::V4,
                priority: 1000,
                fwmark: None,
                from: None,
                oif: None,
                to: None,
                action: RuleAction::MainNoDefault,
            },
            IpRule {
                family: Family::V4,
                priority: 1001,
                fwmark: Some((0x10000, 0xff0000)),
                from: None,
                oif: None,
                to: None,
                action: RuleAction::Lookup(1001),
            },
            IpRule {
                family: Family::V6,
                priority: 1002,
                fwmark: Some((0xff0000, 0xff0000)),
                from: None,
                oif: None,
                to: None,
                action: RuleAction::Blackhole,
            },
            IpRule {
                family: Family::V4,
                priority: 1003,
                fwmark: None,
                from: Some("10.0.0.1".parse().expect("ip")),
                oif: None,
                to: None,
                action: RuleAction::Lookup(1001),
            },
            IpRule {
                family: Family::V6,
                priority: 1003,
                fwmark: None,
                from: Some("2001:db8:1::253".parse().expect("ip")),
                oif: None,
                to: None,
                action: RuleAction::Lookup(1001),
            },
            IpRule {
                family: Family::V6,
                priority: 1000,
                fwmark: None,
                from: None,
                oif: Some("wan1".into()),
                to: Some(IpNet::V6(multiwan_core::net::GLOBAL_UNICAST6)),
                action: RuleAction::Lookup(1001),
            },
        ] {
            let m = rule_message(&r);
            assert!(rule_is_ours(&m));
            assert_eq!(parse_rule(&m), Some(r));
        }
        // Something multiwan never writes is not forced into its types.
        let mut m = rule_message(&IpRule {
            family: Family::V4,
            priority: 1001,
            fwmark: None,
            from: None,
            oif: None,
            to: None,
            action: RuleAction::Lookup(5),
        });
        m.attributes.push(RuleAttribute::Iifname("eth0".into()));
        assert_eq!(parse_rule(&m), None);
    }

    #[test]
    fn onlink_destinations_are_gatewayless_main_routes() {
        let route = |dst: Option<&str>, len: u8, gw: Option<&str>, table: u8| {
            let mut m = RouteMessage::default();
            m.header.address_family = AddressFamily::Inet6;
            m.header.kind = RouteType::Unicast;
            m.header.table = table;
            m.header.destination_prefix_length = len;
            m.header.protocol = RouteProtocol::Ra;
            if let Some(d) = dst {
                m.attributes
                    .push(RouteAttribute::Destination(RouteAddress::Inet6(
                        d.parse().expect("ip"),
                    )));
            }
            if let Some(g) = gw {
                m.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                        g.parse().expect("ip"),
                    )));
            }
            m
        };
        let prefix = route(Some("2001:db8:2::"), 64, None, 254);
        assert_eq!(
            onlink_destination(&prefix),
            Some(("2001:db8:2::".parse().expect("ip"), 64))
        );
        assert_eq!(
            onlink_destination(&route(None, 0, None, 254)),
            Some(("::".parse().expect("ip"), 0)),
            "a default route without a gateway: everything is on the link"
        );
        assert_eq!(
            onlink_destination(&route(None, 0, Some("fe80::1"), 254)),
            None
        );
        assert_eq!(
            onlink_destination(&route(Some("2001:db8:2::"), 64, None, 100)),
            None,
            "only the main table"
        );
        let mut ours = prefix.clone();
        ours.header.protocol = proto();
        assert_eq!(onlink_destination(&ours), None);
    }

    #[test]
    fn global_ipv6_gateways_are_onlink_and_link_local_ones_are_not() {
        let index: BTreeMap<String, u32> =
            [("eth1".to_string(), 3), ("eth2".to_string(), 4)].into();
        let hop = |via: &str, dev: &str| Nexthop {
            via: Some(via.parse().expect("ip")),
            dev: dev.into(),
            weight: 1,
        };
        let route = |nexthops| Route {
            family: Family::V6,
            table: 1000,
            nexthops,
            kind: RouteKind::Unicast,
            realm: None,
        };
        let single = |via| route_message(&route(vec![hop(via, "eth1")]), &index).expect("message");
        assert!(single("2001:db8:1::1")
            .header
            .flags
            .contains(RouteFlags::Onlink));
        assert!(!single("fe80::1").header.flags.contains(RouteFlags::Onlink));
        let multi = route_message(
            &route(vec![hop("2001:db8:1::1", "eth1"), hop("fe80::1", "eth2")]),
            &index,
        )
        .expect("message");
        let flags: Vec<bool> = multi
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::MultiPath(hops) => Some(
                    hops.iter()
                        .map(|h| h.flags.contains(RouteNextHopFlags::Onlink))
                        .collect(),
                ),
                _ => None,
            })
            .expect("multipath");
        assert_eq!(flags, [true, false]);
        let v4 = Route {
            family: Family::V4,
            nexthops: vec![hop("10.0.0.1", "eth1")],
            ..route(Vec::new())
        };
        let m = route_message(&v4, &index).expect("message");
        assert!(!m.header.flags.contains(RouteFlags::Onlink));
    }

    #[test]
    fn routes_round_trip_through_their_messages() {
        let index: BTreeMap<String, u32> =
            [("eth1".to_string(), 3), ("ppp0".to_string(), 7)].into();
        let names: BTreeMap<u32, String> = index.iter().map(|(n, i)| (*i, n.clone())).collect();
        for r in [
            Route {
                family: Family::V4,
                table: 1001,
                nexthops: vec![Nexthop {
                    via: Some("10.0.0.1".parse().expect("ip")),
                    dev: "eth1".into(),
                    weight: 1,
                }],
                kind: RouteKind::Unicast,
                realm: Some(7 << 16 | 77),
            },
            Route {
                family: Family::V6,
                table: 1001,
                nexthops: vec![Nexthop {
                    via: Some("fe80::1".parse().expect("ip")),
                    dev: "eth1".into(),
                    weight: 1,
                }],
                kind: RouteKind::Unicast,
                realm: None,
            },
            Route {
                family: Family::V4,
                table: 1002,
                nexthops: vec![Nexthop {
                    via: None,
                    dev: "ppp0".into(),
                    weight: 1,
                }],
                kind: RouteKind::Unicast,
                realm: None,
            },
            Route {
                family: Family::V4,
                table: 1000,
                nexthops: vec![
                    Nexthop {
                        via: Some("10.0.0.1".parse().expect("ip")),
                        dev: "eth1".into(),
                        weight: 3,
                    },
                    Nexthop {
                        via: None,
                        dev: "ppp0".into(),
                        weight: 1,
                    },
                ],
                kind: RouteKind::Unicast,
                realm: Some(multiwan_core::plan::DEFAULT_ROUTE_REALM),
            },
            Route {
                family: Family::V4,
                table: 1000,
                nexthops: Vec::new(),
                kind: RouteKind::Unreachable,
                realm: None,
            },
            Route {
                family: Family::V6,
                table: 1000,
                nexthops: Vec::new(),
                kind: RouteKind::Blackhole,
                realm: None,
            },
        ] {
            let m = route_message(&r, &index).expect("message");
            assert!(is_ours(&m));
            assert_eq!(table_of(&m), r.table);
            assert_eq!(parse_route(&m, &names), Some(r));
        }
        let err = route_message(
            &Route {
                family: Family::V4,
                table: 1001,
                nexthops: vec![Nexthop {
                    via: None,
                    dev: "gone0".into(),
                    weight: 1,
                }],
                kind: RouteKind::Unicast,
                realm: None,
            },
            &index,
        )
        .expect_err("missing interface");
        assert!(err.to_string().contains("gone0"), "{err}");
    }
}
