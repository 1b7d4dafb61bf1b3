//! The kernel's change notifications (rtnetlink multicast groups), read as structures and
//! reduced to what the daemon acts on: interfaces, addresses or another user's rules changed
//! (re-read the facts), a foreign default route changed (a DHCP gateway to follow), or one of
//! multiwan's own rules or routes changed (verify, repair drift). Every other route change — a full BGP table churning
//! in `main` — is ignored without a read.

use std::io;
use std::thread::JoinHandle;

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::route::RouteMessage;
use netlink_sys::{protocols, Socket, SocketAddr};

use super::netlink::{is_ours, rule_is_ours};
use super::rtmsg::RtMsg;
use super::socket::parse_all;

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// `1 << (RTNLGRP_IPV4_RULE - 1)`: rule changes have no RTMGRP_ constant of their own.
const RTMGRP_IPV4_RULE: u32 = 1 << (8 - 1);
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// `1 << (RTNLGRP_IPV6_RULE - 1)`.
const RTMGRP_IPV6_RULE: u32 = 1 << (19 - 1);

/// What changed, as far as the daemon cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// Interfaces, addresses, or another user's rules: re-read the facts.
    pub links: bool,
    /// A default route multiwan did not install.
    pub gateways: bool,
    /// A rule or route of multiwan's.
    pub ours: bool,
}

impl Change {
    /// Everything (after lost notifications).
    pub const ALL: Change = Change {
        links: true,
        gateways: true,
        ours: true,
    };

    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.links || self.gateways || self.ours
    }

    /// Both together.
    pub fn merge(self, o: Change) -> Change {
        Change {
            links: self.links || o.links,
            gateways: self.gateways || o.gateways,
            ours: self.ours || o.ours,
        }
    }
}

fn route_change(r: &RouteMessage) -> Change {
    if is_ours(r) {
        Change {
            ours: true,
            ..Change::default()
        }
    } else if r.header.destination_prefix_length == 0 {
        Change {
            gateways: true,
            ..Change::default()
        }
    } else {
        Change::default()
    }
}

/// Classifies one datagram of notifications; one that cannot be decoded counts as
/// everything, so nothing is missed.
pub fn classify(data: &[u8]) -> Change {
    let Ok(msgs) = parse_all::<RtMsg>(data) else {
        return Change::ALL;
    };
    let mut c = Change::default();
    for m in msgs {
        let NetlinkPayload::InnerMessage(m) = m.payload else {
            continue;
        };
        let this = match &m {
            RtMsg::NewLink(_) | RtMsg::DelLink(_) | RtMsg::NewAddress(_) | RtMsg::DelAddress(_) => {
                Change {
                    links: true,
                    ..Change::default()
                }
            }
            RtMsg::NewRoute(r) | RtMsg::DelRoute(r) => route_change(r),
            // Ours: verify. Another user's: its marks are facts the plan works around.
            RtMsg::NewRule(r) | RtMsg::DelRule(r) => Change {
                ours: rule_is_ours(r),
                links: !rule_is_ours(r),
                ..Change::default()
            },
            _ => Change::default(),
        };
        c = c.merge(this);
    }
    c
}

/// Starts a thread that calls `on_change` for every relevant change in this network namespace
/// until it returns `false`.
pub fn watch(
    mut on_change: impl FnMut(Change) -> bool + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let mut s = Socket::new(protocols::NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(
        0,
        RTMGRP_LINK
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV4_RULE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE
            | RTMGRP_IPV6_RULE,
    ))?;
    // A route storm must not starve the rest: a big buffer, and ENOBUFS means "re-read".
    let _ = s.set_rx_buf_sz(1 << 20);
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || loop {
            let change = match s.recv_from_full() {
                Ok((data, _)) => classify(&data),
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    Change::ALL
                }
            };
            if change.any() && !on_change(change) {
                return;
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::route::RouteProtocol;
    use netlink_packet_route::RouteNetlinkMessage;

    fn bytes(m: RouteNetlinkMessage) -> Vec<u8> {
        crate::kernel::rtmsg::frame(m, 0)
    }

    #[test]
    fn only_relevant_route_changes_count() {
        let mut r = RouteMessage::default();
        r.header.destination_prefix_length = 24;
        r.header.protocol = RouteProtocol::Bgp;
        assert_eq!(
            classify(&bytes(RouteNetlinkMessage::NewRoute(r.clone()))),
            Change::default()
        );
        r.header.destination_prefix_length = 0;
        r.header.protocol = RouteProtocol::Dhcp;
        assert!(classify(&bytes(RouteNetlinkMessage::NewRoute(r.clone()))).gateways);
        r.header.protocol = RouteProtocol::from(multiwan_core::plan::RTPROT_MULTIWAN);
        assert!(classify(&bytes(RouteNetlinkMessage::DelRoute(r))).ours);
        assert_eq!(
            classify(b"\x01\x02"),
            Change::default(),
            "too short to hold a message"
        );
        assert_eq!(
            classify(&[0xff; 20]),
            Change::ALL,
            "undecodable counts as everything"
        );
    }
}
