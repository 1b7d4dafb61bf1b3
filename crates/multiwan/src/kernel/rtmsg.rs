//! The rtnetlink messages multiwan sends and reads: links, addresses, routes, rules and (to
//! choose between two routers advertising on one uplink) neighbour states, and nothing else. Each kind is parsed and emitted by netlink-packet-route's own message types;
//! only the dispatch on the message type is ours. Going through the crate's
//! `RouteNetlinkMessage` instead would link the parsers and emitters of every rtnetlink family
//! (traffic control with its filters and actions, neighbour tables, namespace ids, prefixes,
//! address labels, statistics) into the router, which reads none of them.
//!
//! Requests ([`RtRequest`]) and what comes back ([`RtMsg`]) are separate types: links are
//! only ever read, so the link emitter is not linked either. Of a link only the header, the
//! name and the byte counters are read ([`Link`]), each by the crate's own parser; its other
//! attributes (every link kind's details: bond, vxlan, bridge, CAN …) are skipped unparsed.
//! Of a neighbour only the header (interface, state) and its address are read. A message of any other type (the
//! kernel sends none on the groups multiwan joins or in answer to its dumps) is kept as
//! [`RtMsg::Other`] with its type, never an error.

use std::net::IpAddr;

use netlink_packet_core::{
    parse_ip, parse_string, DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader,
    NetlinkSerializable, NlasIterator, Parseable,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkHeader, Stats64};
use netlink_packet_route::neighbour::{NeighbourHeader, NeighbourMessage};
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::rule::RuleMessage;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NDA_DST: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_STATS64: u16 = 23;

/// A request multiwan sends: a dump of one kind, or a change of a route or a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtRequest {
    /// A dump of every link: only the header goes out (no attributes), so the link emitter,
    /// which knows every link kind's attributes, is never needed.
    GetLink(LinkHeader),
    GetAddress(AddressMessage),
    GetRoute(RouteMessage),
    NewRoute(RouteMessage),
    DelRoute(RouteMessage),
    GetRule(RuleMessage),
    NewRule(RuleMessage),
    DelRule(RuleMessage),
    /// A dump of the neighbour cache (with strict checking the interface goes in an
    /// `NDA_IFINDEX` attribute, the header's must stay 0).
    GetNeighbour(NeighbourMessage),
}

impl NetlinkSerializable for RtRequest {
    fn message_type(&self) -> u16 {
        match self {
            RtRequest::GetLink(_) => RTM_GETLINK,
            RtRequest::GetAddress(_) => RTM_GETADDR,
            RtRequest::GetRoute(_) => RTM_GETROUTE,
            RtRequest::NewRoute(_) => RTM_NEWROUTE,
            RtRequest::DelRoute(_) => RTM_DELROUTE,
            RtRequest::GetRule(_) => RTM_GETRULE,
            RtRequest::NewRule(_) => RTM_NEWRULE,
            RtRequest::DelRule(_) => RTM_DELRULE,
            RtRequest::GetNeighbour(_) => RTM_GETNEIGH,
        }
    }

    fn buffer_len(&self) -> usize {
        self.body().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        self.body().emit(buffer)
    }
}

impl RtRequest {
    /// The message after the netlink header, as the crate's own type emits it.
    fn body(&self) -> &dyn Emitable {
        match self {
            RtRequest::GetLink(h) => h,
            RtRequest::GetAddress(m) => m,
            RtRequest::GetRoute(m) | RtRequest::NewRoute(m) | RtRequest::DelRoute(m) => m,
            RtRequest::GetRule(m) | RtRequest::NewRule(m) | RtRequest::DelRule(m) => m,
            RtRequest::GetNeighbour(m) => m,
        }
    }
}

/// What multiwan reads of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Index and flags (up, lower up).
    pub header: LinkHeader,
    /// `IFLA_IFNAME`.
    pub name: Option<String>,
    /// `IFLA_STATS64`: the byte and packet counters.
    pub stats64: Option<Stats64>,
}

impl Link {
    fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let header = LinkHeader::parse(buf)?;
        let rest = buf.get(header.buffer_len()..).unwrap_or_default();
        let mut link = Link {
            header,
            name: None,
            stats64: None,
        };
        for nla in NlasIterator::new(rest) {
            let nla = nla?;
            match nla.kind() {
                IFLA_IFNAME => link.name = Some(parse_string(nla.value())?),
                IFLA_STATS64 => link.stats64 = Some(Stats64::parse(nla.value())?),
                _ => {}
            }
        }
        Ok(link)
    }
}

/// What multiwan reads of a neighbour cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Interface, family and state (reachable, stale, failed …).
    pub header: NeighbourHeader,
    /// `NDA_DST`: the neighbour's address.
    pub destination: Option<IpAddr>,
}

impl Neighbour {
    fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        let header = NeighbourHeader::parse(buf)?;
        let rest = buf.get(header.buffer_len()..).unwrap_or_default();
        let mut destination = None;
        for nla in NlasIterator::new(rest) {
            let nla = nla?;
            if nla.kind() == NDA_DST {
                destination = Some(parse_ip(nla.value())?);
            }
        }
        Ok(Neighbour {
            header,
            destination,
        })
    }
}

/// A message multiwan reads: an object of a dump or an event of a group it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtMsg {
    NewLink(Link),
    DelLink(Link),
    NewAddress(AddressMessage),
    DelAddress(AddressMessage),
    NewRoute(RouteMessage),
    DelRoute(RouteMessage),
    NewRule(RuleMessage),
    DelRule(RuleMessage),
    NewNeighbour(Neighbour),
    DelNeighbour(Neighbour),
    /// Any other message type, not parsed.
    Other(u16),
}

impl NetlinkDeserializable for RtMsg {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(match header.message_type {
            RTM_NEWLINK => RtMsg::NewLink(Link::parse(payload)?),
            RTM_DELLINK => RtMsg::DelLink(Link::parse(payload)?),
            RTM_NEWADDR => RtMsg::NewAddress(AddressMessage::parse(payload)?),
            RTM_DELADDR => RtMsg::DelAddress(AddressMessage::parse(payload)?),
            RTM_NEWROUTE => RtMsg::NewRoute(RouteMessage::parse(payload)?),
            RTM_DELROUTE => RtMsg::DelRoute(RouteMessage::parse(payload)?),
            RTM_NEWRULE => RtMsg::NewRule(RuleMessage::parse(payload)?),
            RTM_DELRULE => RtMsg::DelRule(RuleMessage::parse(payload)?),
            RTM_NEWNEIGH => RtMsg::NewNeighbour(Neighbour::parse(payload)?),
            RTM_DELNEIGH => RtMsg::DelNeighbour(Neighbour::parse(payload)?),
            other => RtMsg::Other(other),
        })
    }
}

/// The bytes of one netlink message carrying `m`, with `flags` in its header (for tests).
#[cfg(test)]
pub(crate) fn frame<T: NetlinkSerializable>(m: T, flags: u16) -> Vec<u8> {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(m));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
    use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
    use netlink_packet_route::route::{RouteAttribute, RouteProtocol};
    use netlink_packet_route::rule::RuleAttribute;
    use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

    /// The bytes of `m` as the crate's full message type writes them.
    fn crate_bytes(m: RouteNetlinkMessage) -> Vec<u8> {
        frame(m, 0)
    }

    fn ours(bytes: &[u8]) -> RtMsg {
        match NetlinkMessage::<RtMsg>::deserialize(bytes)
            .expect("parses")
            .payload
        {
            NetlinkPayload::InnerMessage(m) => m,
            other => panic!("not an inner message: {other:?}"),
        }
    }

    #[test]
    fn reads_what_the_crate_writes_for_each_kind() {
        let mut link = LinkMessage::default();
        link.header.index = 7;
        link.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        let mut stats = Stats64::default();
        stats.rx_bytes = 1234;
        stats.tx_bytes = 5678;
        // Attributes multiwan skips, before and after the ones it reads.
        link.attributes.push(LinkAttribute::Mtu(1500));
        link.attributes.push(LinkAttribute::IfName("wan1".into()));
        link.attributes.push(LinkAttribute::Stats64(stats));
        link.attributes.push(LinkAttribute::TxQueueLen(1000));
        let want = Link {
            header: link.header.clone(),
            name: Some("wan1".into()),
            stats64: Some(stats),
        };
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::NewLink(link.clone()))),
            RtMsg::NewLink(want.clone())
        );
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::DelLink(link))),
            RtMsg::DelLink(want)
        );
        let bare = LinkMessage::default();
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::NewLink(bare.clone()))),
            RtMsg::NewLink(Link {
                header: bare.header,
                name: None,
                stats64: None,
            })
        );
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet6;
        route.header.protocol = RouteProtocol::from(77);
        route.attributes.push(RouteAttribute::Table(1001));
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::NewRoute(route.clone()))),
            RtMsg::NewRoute(route.clone())
        );
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::DelRoute(route.clone()))),
            RtMsg::DelRoute(route)
        );
        let mut rule = RuleMessage::default();
        rule.header.family = AddressFamily::Inet;
        rule.attributes.push(RuleAttribute::Priority(1000));
        rule.attributes.push(RuleAttribute::FwMark(0x0100_0000));
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::NewRule(rule.clone()))),
            RtMsg::NewRule(rule.clone())
        );
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::DelRule(rule.clone()))),
            RtMsg::DelRule(rule)
        );
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet;
        addr.header.index = 3;
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::NewAddress(addr.clone()))),
            RtMsg::NewAddress(addr.clone())
        );
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::DelAddress(addr.clone()))),
            RtMsg::DelAddress(addr)
        );
    }

    #[test]
    fn another_family_is_kept_by_type_not_refused() {
        // RTM_NEWQDISC: traffic control, which multiwan never reads.
        let mut bytes = crate_bytes(RouteNetlinkMessage::NewRoute(RouteMessage::default()));
        bytes[4..6].copy_from_slice(&36u16.to_ne_bytes());
        assert_eq!(ours(&bytes), RtMsg::Other(36));
    }

    #[test]
    fn reads_a_neighbours_state_and_address() {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
        };
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet6;
        n.header.ifindex = 4;
        n.header.state = NeighbourState::Failed;
        let gw: std::net::Ipv6Addr = "fe80::1".parse().expect("address");
        // Attributes multiwan skips, before and after the one it reads.
        n.attributes.push(NeighbourAttribute::Probes(3));
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(gw)));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        let want = Neighbour {
            header: n.header.clone(),
            destination: Some(IpAddr::V6(gw)),
        };
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::NewNeighbour(n.clone()))),
            RtMsg::NewNeighbour(want.clone())
        );
        assert_eq!(
            ours(&crate_bytes(RouteNetlinkMessage::DelNeighbour(n))),
            RtMsg::DelNeighbour(want)
        );
    }

    #[test]
    fn writes_what_the_crate_writes() {
        // Requests and changes: byte for byte what the crate's full type would send.
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.attributes.push(RouteAttribute::Table(1002));
        let mut rule = RuleMessage::default();
        rule.header.family = AddressFamily::Inet6;
        rule.attributes.push(RuleAttribute::Priority(1001));
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet6;
        let mut neigh = NeighbourMessage::default();
        neigh.header.family = AddressFamily::Inet6;
        neigh
            .attributes
            .push(netlink_packet_route::neighbour::NeighbourAttribute::IfIndex(5));
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        let pairs = [
            (
                RtRequest::GetRoute(route.clone()),
                RouteNetlinkMessage::GetRoute(route.clone()),
            ),
            (
                RtRequest::NewRoute(route.clone()),
                RouteNetlinkMessage::NewRoute(route.clone()),
            ),
            (
                RtRequest::DelRoute(route.clone()),
                RouteNetlinkMessage::DelRoute(route),
            ),
            (
                RtRequest::GetRule(rule.clone()),
                RouteNetlinkMessage::GetRule(rule.clone()),
            ),
            (
                RtRequest::NewRule(rule.clone()),
                RouteNetlinkMessage::NewRule(rule.clone()),
            ),
            (
                RtRequest::DelRule(rule.clone()),
                RouteNetlinkMessage::DelRule(rule),
            ),
            (
                RtRequest::GetAddress(addr.clone()),
                RouteNetlinkMessage::GetAddress(addr),
            ),
            (
                RtRequest::GetLink(LinkHeader::default()),
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            ),
            (
                RtRequest::GetNeighbour(neigh.clone()),
                RouteNetlinkMessage::GetNeighbour(neigh),
            ),
        ];
        for (mine, theirs) in pairs {
            let what = format!("{mine:?}");
            assert_eq!(frame(mine, flags), frame(theirs, flags), "{what}");
        }
    }
}
