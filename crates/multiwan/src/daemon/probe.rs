//! Health probes, one thread per uplink. Every probe carries the uplink's mark (so it is
//! routed by the uplink's table and never re-marked by the balancing) and is bound to the
//! uplink's interface, so it can only leave — and only be answered — over that uplink.
//! Replies are matched by identifier, sequence number and source address, never confused
//! with another uplink's. Round bookkeeping is the pure [`Rounds`]; this module only does I/O.
//!
//! Methods: `icmp` (echo request on a raw socket), `tcp` (a connect; a refusal also proves
//! the path), `dns` (a query for the root's NS records; any answer proves the resolver).

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multiwan_core::model::CheckMethod;
use multiwan_core::rounds::Rounds;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Event;

/// What one prober needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    pub uplink: String,
    pub ifname: String,
    pub mark: u32,
    pub method: CheckMethod,
    pub targets: Vec<SocketAddrV4>,
    pub interval: Duration,
    pub timeout: Duration,
    /// ICMP identifier / DNS id space of this prober.
    pub ident: u16,
}

/// Starts the prober thread. It stops when `stop` is set.
pub fn spawn(
    spec: ProbeSpec,
    generation: u64,
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("probe-{}", spec.uplink))
        .spawn(move || run(spec, generation, tx, stop))
}

fn base_socket(spec: &ProbeSpec, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, ty, Some(proto))?;
    s.set_mark(spec.mark)?;
    s.bind_device(Some(spec.ifname.as_bytes()))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The per-method sockets.
enum Method {
    Icmp(Socket),
    Dns(UdpSocket),
    /// Connections in progress: (probe key, socket, started).
    Tcp(Vec<(u16, Socket, Instant)>),
}

impl Method {
    fn open(spec: &ProbeSpec) -> std::io::Result<Self> {
        Ok(match spec.method {
            CheckMethod::Icmp => Method::Icmp(base_socket(spec, Type::RAW, Protocol::ICMPV4)?),
            CheckMethod::Dns => {
                let s = base_socket(spec, Type::DGRAM, Protocol::UDP)?;
                s.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
                Method::Dns(s.into())
            }
            CheckMethod::Tcp => Method::Tcp(Vec::new()),
        })
    }

    fn send(&mut self, spec: &ProbeSpec, key: u16, target: SocketAddrV4) -> std::io::Result<()> {
        match self {
            Method::Icmp(s) => {
                let pkt = echo_request(spec.ident, key);
                s.send_to(&pkt, &SockAddr::from(SocketAddrV4::new(*target.ip(), 0)))?;
            }
            Method::Dns(s) => {
                s.send_to(&dns_query(key), target)?;
            }
            Method::Tcp(pending) => {
                let s = base_socket(spec, Type::STREAM, Protocol::TCP)?;
                match s.connect(&SockAddr::from(target)) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS) => {}
                    // Refused at once still proves the path.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e),
                }
                pending.push((key, s, Instant::now()));
            }
        }
        Ok(())
    }

    /// Waits until `deadline` for answers; returns (probe key, source, when) for each.
    fn wait(&mut self, spec: &ProbeSpec, deadline: Instant) -> Vec<(u16, Ipv4Addr, Instant)> {
        let now = Instant::now();
        let ms = deadline
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 1000) as u16;
        let mut out = Vec::new();
        match self {
            Method::Icmp(s) => {
                if readable(s, ms) {
                    let mut buf = [0u8; 1500];
                    while let Ok(n) = (&*s).read(&mut buf) {
                        if let Some((src, key)) = parse_echo_reply(&buf[..n], spec.ident) {
                            out.push((key, src, Instant::now()));
                        }
                    }
                }
            }
            Method::Dns(s) => {
                if readable(s, ms) {
                    let mut buf = [0u8; 1500];
                    while let Ok((n, SocketAddr::V4(from))) = s.recv_from(&mut buf) {
                        if n >= 12 && buf[2] & 0x80 != 0 {
                            out.push((
                                u16::from_be_bytes([buf[0], buf[1]]),
                                *from.ip(),
                                Instant::now(),
                            ));
                        }
                    }
                }
            }
            Method::Tcp(pending) => {
                if pending.is_empty() {
                    std::thread::sleep(Duration::from_millis(u64::from(ms)));
                    return out;
                }
                let ready: Vec<bool> = {
                    let mut fds: Vec<PollFd> = pending
                        .iter()
                        .map(|(_, s, _)| PollFd::new(s.as_fd(), PollFlags::POLLOUT))
                        .collect();
                    let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
                    fds.iter()
                        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                        .collect()
                };
                let at = Instant::now();
                let mut keep = Vec::new();
                for ((key, s, started), ready) in std::mem::take(pending).into_iter().zip(ready) {
                    if ready {
                        let refused_or_ok = match s.take_error() {
                            Ok(None) => true,
                            Ok(Some(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                            Err(_) => false,
                        };
                        if refused_or_ok {
                            let dst = s
                                .peer_addr()
                                .ok()
                                .and_then(|a| a.as_socket_ipv4())
                                .map(|a| *a.ip())
                                .unwrap_or(Ipv4Addr::UNSPECIFIED);
                            out.push((key, dst, at));
                        }
                    } else if at.duration_since(started) < spec.timeout {
                        keep.push((key, s, started));
                    }
                }
                *pending = keep;
            }
        }
        out
    }
}

fn readable(s: &impl AsFd, ms: u16) -> bool {
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with identifier `ident` and sequence `seq`.
pub fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"multiwan");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Parses an IPv4 packet holding an ICMP echo reply for `ident`: (source, sequence).
pub fn parse_echo_reply(pkt: &[u8], ident: u16) -> Option<(Ipv4Addr, u16)> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    if pkt.len() < ihl + 8 || pkt[9] != 1 {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let icmp = &pkt[ihl..];
    if icmp[0] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
        return None;
    }
    Some((src, u16::from_be_bytes([icmp[6], icmp[7]])))
}

/// A DNS query for `. IN NS` with id `id`.
pub fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    q.extend_from_slice(&[0, 0, 2, 0, 1]); // root name, type NS, class IN
    q
}

fn run(spec: ProbeSpec, generation: u64, tx: Sender<Event>, stop: Arc<AtomicBool>) {
    let mut rounds = Rounds::new(spec.targets.len(), spec.timeout);
    let mut method: Option<Method> = None;
    // Probe key → (round, target index). Keys wrap at 65536, far more than can be in flight.
    let mut keys: HashMap<u16, (u64, usize)> = HashMap::new();
    let mut next_key: u16 = 0;
    let mut next_round = Instant::now();
    let mut open_error_logged = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_round {
            if method.is_none() {
                match Method::open(&spec) {
                    Ok(m) => {
                        method = Some(m);
                        open_error_logged = false;
                    }
                    // The interface may not exist yet; the link state already says why the
                    // uplink is down, so the rounds simply fail until it appears.
                    Err(e) if !open_error_logged => {
                        tracing::debug!(uplink = %spec.uplink, error = %e, "cannot open probe socket yet");
                        open_error_logged = true;
                    }
                    Err(_) => {}
                }
            }
            let id = rounds.start(now);
            for (i, t) in spec.targets.iter().enumerate() {
                let key = next_key;
                next_key = next_key.wrapping_add(1);
                keys.insert(key, (id, i));
                if let Some(m) = method.as_mut() {
                    match m.send(&spec, key, *t) {
                        Ok(()) => rounds.sent(id, i, Instant::now()),
                        Err(e) => {
                            tracing::trace!(uplink = %spec.uplink, target = %t, error = %e, "probe not sent");
                            // A socket bound to a vanished interface stays broken: reopen.
                            if e.raw_os_error() == Some(nix::libc::ENODEV) {
                                method = None;
                                break;
                            }
                        }
                    }
                }
            }
            next_round += spec.interval;
            if next_round < now {
                next_round = now + spec.interval;
            }
        }
        for f in rounds.due(Instant::now()) {
            keys.retain(|_, (r, _)| *r != f.id);
            if tx
                .send(Event::Round {
                    uplink: spec.uplink.clone(),
                    generation,
                    results: f.results,
                })
                .is_err()
            {
                return;
            }
        }
        let deadline = rounds
            .next_deadline()
            .map_or(next_round, |d| d.min(next_round));
        match method.as_mut() {
            Some(m) => {
                for (key, src, at) in m.wait(&spec, deadline) {
                    if let Some((id, i)) = keys.get(&key).copied() {
                        let expected = spec.targets[i];
                        if src == *expected.ip() || matches!(m, Method::Tcp(_)) {
                            rounds.answered(id, i, at);
                        }
                    }
                }
            }
            None => std::thread::sleep(deadline.saturating_duration_since(Instant::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_has_a_valid_checksum() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn parses_only_our_echo_replies() {
        let mut ip = vec![
            0x45u8, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut icmp = echo_request(0x1234, 9);
        icmp[0] = 0;
        ip.extend_from_slice(&icmp);
        assert_eq!(
            parse_echo_reply(&ip, 0x1234),
            Some(("10.0.0.1".parse().expect("ip"), 9))
        );
        assert_eq!(
            parse_echo_reply(&ip, 0x4321),
            None,
            "another prober's reply"
        );
        ip[20] = 8;
        assert_eq!(
            parse_echo_reply(&ip, 0x1234),
            None,
            "a request, not a reply"
        );
    }

    #[test]
    fn dns_query_shape() {
        let q = dns_query(0xabcd);
        assert_eq!(q.len(), 17);
        assert_eq!(&q[..2], &[0xab, 0xcd]);
    }
}
