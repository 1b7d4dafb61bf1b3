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

/// Starts a thread that sends [`Event::KernelChanged`] on every link or IPv4 address change
/// in this network namespace. Route changes are not watched: multiwan makes most of them.
pub fn watch_links(tx: Sender<Event>) -> io::Result<JoinHandle<()>> {
    let mut s = Socket::new(protocols::NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR))?;
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
