//! Netlink: a watcher that reports link and address changes (the daemon then re-reads the
//! interfaces), and deletion of one uplink's conntrack entries by mark — never the whole
//! table.

use std::io;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use netlink_sys::{protocols, Socket, SocketAddr};

use super::Event;

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// `1 << (RTNLGRP_IPV4_RULE - 1)`: rule changes have no RTMGRP_ constant of their own.
const RTMGRP_IPV4_RULE: u32 = 1 << (8 - 1);

/// Starts a thread that sends [`Event::KernelChanged`] on every link, IPv4 address, route or
/// rule change in this network namespace. Routes are watched for DHCP gateways
/// (`gateway = "auto"`); multiwan's own route changes trigger a re-read too, which finds
/// nothing new (its routes are not facts) and changes nothing.
pub fn watch_links(tx: Sender<Event>) -> io::Result<JoinHandle<()>> {
    let mut s = Socket::new(protocols::NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE,
    ))?;
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || loop {
            match s.recv_from_full() {
                Ok(_) => {
                    if tx.send(Event::KernelChanged).is_err() {
                        return;
                    }
                }
                // ENOBUFS: events were lost; a re-read catches up all the same.
                Err(_) => {
                    if tx.send(Event::KernelChanged).is_err() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        })
}

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;
const CTA_MARK: u16 = 8;
const CTA_MARK_MASK: u16 = 21;
const AF_INET: u8 = 2;

/// The ctnetlink request that deletes every IPv4 connection whose `ct mark & mask == mark`.
pub fn flush_request(mark: u32, mask: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(36);
    m.extend_from_slice(&36u32.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id 0 (big endian).
    m.extend_from_slice(&[AF_INET, 0, 0, 0]);
    for (ty, v) in [(CTA_MARK, mark), (CTA_MARK_MASK, mask)] {
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

/// Deletes the conntrack entries of one uplink (by its mark under multiwan's mask).
pub fn flush_conntrack(mark: u32, mask: u32) -> io::Result<()> {
    let mut s = Socket::new(protocols::NETLINK_NETFILTER)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    s.send(&flush_request(mark, mask, 1), 0)?;
    let (buf, _) = s.recv_from_full()?;
    if buf.len() >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        // ENOENT: nothing matched, which is fine.
        if code != 0 && code != -nix::libc::ENOENT {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_request_layout() {
        let m = flush_request(0x0002_0000, 0x00ff_0000, 7);
        assert_eq!(m.len(), 36);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 36);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0102);
        assert_eq!(&m[16..20], &[2, 0, 0, 0]);
        assert_eq!(&m[24..28], &[0, 2, 0, 0], "mark in network order");
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), CTA_MARK_MASK);
    }
}

const IPCTNL_MSG_CT_GET: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One tracked connection, as ctnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// IP protocol number (6 tcp, 17 udp, 1 icmp).
    pub proto: u8,
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// The reply direction's destination: the address the connection was NATed to.
    pub reply_dst: std::net::Ipv4Addr,
    pub mark: u32,
    /// Bytes original/reply direction (0 unless nf_conntrack_acct is on).
    pub bytes_orig: u64,
    pub bytes_reply: u64,
    /// Start time in ns since the epoch (0 unless nf_conntrack_timestamp is on).
    pub start_ns: u64,
}

fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let step = (len + 3) & !3;
        b = b.get(step..).unwrap_or(&[]);
    }
    out
}

fn be_u16(v: &[u8]) -> u16 {
    v.get(..2)
        .map(|x| u16::from_be_bytes([x[0], x[1]]))
        .unwrap_or(0)
}

fn be_u32(v: &[u8]) -> u32 {
    v.get(..4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        .unwrap_or(0)
}

fn be_u64(v: &[u8]) -> u64 {
    v.get(..8)
        .map(|x| u64::from_be_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]))
        .unwrap_or(0)
}

fn ipv4(v: &[u8]) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(be_u32(v))
}

/// (src, dst, proto, sport, dport) of a CTA_TUPLE_* attribute.
fn tuple(t: &[u8]) -> (std::net::Ipv4Addr, std::net::Ipv4Addr, u8, u16, u16) {
    let mut r = (
        std::net::Ipv4Addr::UNSPECIFIED,
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
        0,
        0,
    );
    for (ty, v) in attrs(t) {
        match ty {
            1 => {
                for (ity, iv) in attrs(v) {
                    match ity {
                        1 => r.0 = ipv4(iv),
                        2 => r.1 = ipv4(iv),
                        _ => {}
                    }
                }
            }
            2 => {
                for (pty, pv) in attrs(v) {
                    match pty {
                        1 => r.2 = pv.first().copied().unwrap_or(0),
                        2 => r.3 = be_u16(pv),
                        3 => r.4 = be_u16(pv),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    r
}

/// Parses one IPCTNL_MSG_CT_NEW message body (after the nfgenmsg header).
pub fn parse_flow(body: &[u8]) -> Flow {
    let any = std::net::Ipv4Addr::UNSPECIFIED;
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
    for (ty, v) in attrs(body) {
        match ty {
            1 => {
                let (s, d, p, sp, dp) = tuple(v);
                f.src = s;
                f.dst = d;
                f.proto = p;
                f.sport = sp;
                f.dport = dp;
            }
            2 => f.reply_dst = tuple(v).1,
            8 => f.mark = be_u32(v),
            9 | 10 => {
                let bytes = attrs(v)
                    .into_iter()
                    .find(|(t, _)| *t == 2)
                    .map(|(_, b)| be_u64(b))
                    .unwrap_or(0);
                if ty == 9 {
                    f.bytes_orig = bytes;
                } else {
                    f.bytes_reply = bytes;
                }
            }
            20 => {
                f.start_ns = attrs(v)
                    .into_iter()
                    .find(|(t, _)| *t == 1)
                    .map(|(_, b)| be_u64(b))
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    f
}

/// Lists the IPv4 connections whose `ct mark & mask == mark` (all with `None`).
pub fn dump_conntrack(filter: Option<(u32, u32)>) -> io::Result<Vec<Flow>> {
    let mut s = Socket::new(protocols::NETLINK_NETFILTER)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    let mut m = Vec::with_capacity(36);
    let len: u32 = if filter.is_some() { 36 } else { 20 };
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&2u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[AF_INET, 0, 0, 0]);
    if let Some((mark, mask)) = filter {
        for (ty, v) in [(CTA_MARK, mark), (CTA_MARK_MASK, mask)] {
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(&v.to_be_bytes());
        }
    }
    s.send(&m, 0)?;
    let mut flows = Vec::new();
    loop {
        let (buf, _) = s.recv_from_full()?;
        let mut b = buf.as_slice();
        while b.len() >= 16 {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            if len < 16 || len > b.len() {
                return Ok(flows);
            }
            match ty {
                NLMSG_DONE => return Ok(flows),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                _ => {
                    if let Some(body) = b.get(20..len) {
                        let f = parse_flow(body);
                        // The kernel filters by mark; checked again for old kernels.
                        if filter.is_none_or(|(mark, mask)| f.mark & mask == mark) {
                            flows.push(f);
                        }
                    }
                }
            }
            b = b.get(((len + 3) & !3)..).unwrap_or(&[]);
        }
    }
}
