//! Conntrack over ctnetlink: delete one uplink's connections by mark — never the whole table —
//! and list connections (optionally of one mark) for `flows` and `status`.

use std::net::{IpAddr, Ipv4Addr};

use multiwan_core::plan::Family;

use anyhow::{Context, Result};
use netlink_packet_core::{DefaultNla, Nla, NLM_F_DUMP};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::socket::NlSocket;

const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_TIMESTAMP: u16 = 20;
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_MARK_MASK: u16 = 21;

/// One tracked connection, as ctnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The reply direction's destination: the address the connection was NATed to.
    pub reply_dst: IpAddr,
    pub mark: u32,
    /// Bytes original/reply direction (0 unless nf_conntrack_acct is on).
    pub bytes_orig: u64,
    pub bytes_reply: u64,
    /// Start time in ns since the epoch (0 unless nf_conntrack_timestamp is on).
    pub start_ns: u64,
}

/// A ctnetlink message for `family`. Version 1 in the header: for a flush (a delete without a
/// tuple) the kernel honours the family only then — with version 0 it deletes matching
/// entries of every family, which would take an uplink's IPv4 connections along with its
/// IPv6 ones.
fn message(m: ConntrackMessage, family: Family) -> NetfilterMessage {
    let f = match family {
        Family::V4 => NetfilterProtoFamily::IPv4,
        Family::V6 => NetfilterProtoFamily::IPv6,
    };
    NetfilterMessage::new(NetfilterHeader::new(f, 1, 0), m)
}

fn mark_filter(mark: u32, mask: u32) -> Vec<ConntrackAttribute> {
    vec![
        ConntrackAttribute::CtaMark(mark),
        ConntrackAttribute::Other(DefaultNla::new(CTA_MARK_MASK, mask.to_be_bytes().to_vec())),
    ]
}

/// Deletes the connections of `family` whose `ct mark & mask == mark` (one request; the
/// kernel walks the table).
pub fn flush(mark: u32, mask: u32, family: Family) -> Result<()> {
    let mut s = NlSocket::open(NETLINK_NETFILTER, false)?;
    match s
        .try_request(
            message(ConntrackMessage::Delete(mark_filter(mark, mask)), family),
            0,
        )
        .context("deleting connections by mark")?
    {
        Ok(_) => Ok(()),
        // Nothing matched.
        Err(r) if r.errno == nix::libc::ENOENT => Ok(()),
        Err(r) => Err(r.into_error()).context("deleting connections by mark"),
    }
}

/// Lists the connections of both families whose `ct mark & mask == mark` (all with `None`).
pub fn dump(filter: Option<(u32, u32)>) -> Result<Vec<Flow>> {
    let mut s = NlSocket::open(NETLINK_NETFILTER, false)?;
    let mut answers = Vec::new();
    for family in Family::ALL {
        let attrs = filter.map(|(m, k)| mark_filter(m, k)).unwrap_or_default();
        answers.extend(
            s.request(message(ConntrackMessage::Get(attrs), family), NLM_F_DUMP)
                .context("listing connections")?,
        );
    }
    Ok(answers
        .into_iter()
        .filter_map(|m| match m.inner {
            NetfilterMessageInner::Conntrack(ConntrackMessage::New(a)) => Some(flow(&a)),
            _ => None,
        })
        // The kernel filters by mark; checked again for kernels that ignore the filter.
        .filter(|f| filter.is_none_or(|(mark, mask)| f.mark & mask == mark))
        .collect())
}

fn value(n: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0u8; n.value_len()];
    n.emit_value(&mut v);
    v
}

/// The big-endian u64 of nested attribute `kind` inside `nested`.
fn nested_u64(nested: &[u8], kind: u16) -> Option<u64> {
    let mut b = nested;
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        if ty == kind {
            return Some(u64::from_be_bytes(b.get(4..12)?.try_into().ok()?));
        }
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

fn tuple(t: &[Tuple]) -> (IpAddr, IpAddr, u8, u16, u16) {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut r = (any, any, 0, 0, 0);
    for x in t {
        match x {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => r.0 = *a,
                        IPTuple::DestinationAddress(a) => r.1 = *a,
                        _ => {}
                    }
                }
            }
            Tuple::Proto(p) => {
                for x in p {
                    match x {
                        ProtoTuple::Protocol(n) => r.2 = u8::from(*n),
                        ProtoTuple::SourcePort(s) => r.3 = *s,
                        ProtoTuple::DestinationPort(d) => r.4 = *d,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    r
}

fn flow(attrs: &[ConntrackAttribute]) -> Flow {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut f = Flow {
        proto: 0,
        src: any,
        dst: any,
        sport: 0,
        dport: 0,
        reply_dst: any,
        mark: 0,
        bytes_orig: 0,
        bytes_reply: 0,
        start_ns: 0,
    };
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => {
                (f.src, f.dst, f.proto, f.sport, f.dport) = tuple(t);
            }
            ConntrackAttribute::CtaTupleReply(t) => f.reply_dst = tuple(t).1,
            ConntrackAttribute::CtaMark(m) => f.mark = *m,
            ConntrackAttribute::Other(n) => {
                let v = value(n);
                match n.kind() & 0x3fff {
                    CTA_COUNTERS_ORIG => {
                        f.bytes_orig = nested_u64(&v, CTA_COUNTERS_BYTES).unwrap_or(0)
                    }
                    CTA_COUNTERS_REPLY => {
                        f.bytes_reply = nested_u64(&v, CTA_COUNTERS_BYTES).unwrap_or(0)
                    }
                    CTA_TIMESTAMP => f.start_ns = nested_u64(&v, CTA_TIMESTAMP_START).unwrap_or(0),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_counters() {
        // CTA_COUNTERS_PACKETS (1) then CTA_COUNTERS_BYTES (2), big endian u64 each.
        let mut v = Vec::new();
        for (ty, val) in [(1u16, 7u64), (2, 1500)] {
            v.extend_from_slice(&12u16.to_ne_bytes());
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(&val.to_be_bytes());
        }
        assert_eq!(nested_u64(&v, CTA_COUNTERS_BYTES), Some(1500));
        assert_eq!(nested_u64(&v, 3), None);
    }
}
