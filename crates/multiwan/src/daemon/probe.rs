//! Health probes: one thread for all uplinks. Every probe carries the uplink's mark (so it is
//! routed by the uplink's table and never re-marked by the balancing) and is bound to the
//! uplink's interface, so it can only leave — and only be answered — over that uplink.
//! Replies are matched by identifier, sequence number and source address, never confused
//! with another uplink's. Round bookkeeping is the pure [`Rounds`]; this module only does I/O.
//!
//! The thread wakes only on its schedule (the next round to send or to close): icmp and dns
//! replies are not waited for one by one but collected at the next wake-up, and their RTT comes
//! from the kernel's receive timestamp (`SO_TIMESTAMPNS`), so it is exact without waking per
//! packet. With the default 100 ms interval and a 200 ms timeout that is 10 wake-ups a second
//! however many uplinks there are. Only tcp connects wake the thread when they complete. A
//! socket is read until every probe still awaited on it is answered (not on to the empty
//! queue, which would cost a system call per socket and round to learn nothing).
//!
//! Rounds are reported to the event loop at once while they matter — a failed one, and the
//! `down_after + up_after` rounds after it — and otherwise held for up to [`HOLD`], so a
//! healthy router wakes the event loop once a second rather than every round. A round's
//! deadline is its scheduled time plus the timeout (unless the thread woke late), so the
//! deadline of one round and the start of a later one share a wake-up.
//!
//! Methods: `icmp` (echo request on a raw socket), `tcp` (a connect; a refusal also proves
//! the path), `dns` (a query for the root's NS records; any answer proves the resolver).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multiwan_core::model::CheckMethod;
use multiwan_core::plan::Family;
use multiwan_core::rounds::Rounds;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::supervise::Heartbeat;
use super::Event;

/// Longest time healthy rounds wait before they are reported.
pub const HOLD: Duration = Duration::from_secs(1);

/// A wake-up later than this after a round's scheduled time starts the round at the wake-up
/// instead, so a late thread never shortens the round's timeout by more.
const ON_TIME: Duration = Duration::from_millis(5);

/// What one prober needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    pub uplink: Arc<str>,
    /// The family this prober checks (its targets are all of it).
    pub family: Family,
    pub ifname: String,
    pub mark: u32,
    pub method: CheckMethod,
    pub targets: Vec<SocketAddr>,
    pub interval: Duration,
    pub timeout: Duration,
    /// ICMP identifier / DNS id space of this prober.
    pub ident: u16,
    /// The uplink's gateway, pinged as a witness in the rounds after a round with a failed
    /// target: evidence for target correlation (is the target dead, or the uplink?).
    pub witness: Option<IpAddr>,
    /// After a failed round, this many rounds are reported at once rather than held
    /// (`down_after + up_after`: every round that can change the uplink's state).
    pub urgent_rounds: u32,
}

impl ProbeSpec {
    fn domain(&self) -> Domain {
        match self.family {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        }
    }

    fn icmp(&self) -> Protocol {
        match self.family {
            Family::V4 => Protocol::ICMPV4,
            Family::V6 => Protocol::ICMPV6,
        }
    }

    /// The address probe slot `i` is sent to (the witness comes after the targets).
    fn addr_of(&self, i: usize) -> Option<IpAddr> {
        match self.targets.get(i) {
            Some(t) => Some(t.ip()),
            None => self.witness,
        }
    }

    /// Where to send to `ip`: a link-local IPv6 destination (an RA gateway) needs the
    /// interface as its scope.
    fn sockaddr(&self, ip: IpAddr, port: u16) -> SockAddr {
        match ip {
            IpAddr::V6(a) if a.is_unicast_link_local() => {
                let scope = nix::net::if_::if_nametoindex(self.ifname.as_str()).unwrap_or(0);
                SockAddr::from(SocketAddrV6::new(a, port, 0, scope))
            }
            _ => SockAddr::from(SocketAddr::new(ip, port)),
        }
    }
}

/// Starts the prober thread for all `specs`. It beats `heartbeat` on every wake-up and stops
/// when `stop` is set.
pub fn spawn(
    specs: Vec<ProbeSpec>,
    generation: u64,
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
    heartbeat: Heartbeat,
) -> std::io::Result<JoinHandle<()>> {
    let fault = Fault::from_env(generation);
    std::thread::Builder::new()
        .name("probes".into())
        .spawn(move || run(specs, generation, tx, stop, heartbeat, fault))
}

/// Faults injected for the supervision tests (`MULTIWAN_FAULT`), read once per prober:
/// `prober-panic` panics every prober after its first rounds, `prober-panic-once` only the
/// first one, `prober-hang` stops beating and never sends again. Unset in normal use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Panic,
    Hang,
}

impl Fault {
    fn from_env(generation: u64) -> Option<Self> {
        match std::env::var("MULTIWAN_FAULT").ok()?.as_str() {
            "prober-panic" => Some(Fault::Panic),
            "prober-panic-once" if generation == 1 => Some(Fault::Panic),
            "prober-hang" => Some(Fault::Hang),
            _ => None,
        }
    }
}

fn base_socket(spec: &ProbeSpec, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(spec.domain(), ty, Some(proto))?;
    s.set_mark(spec.mark)?;
    s.bind_device(Some(spec.ifname.as_bytes()))?;
    s.set_nonblocking(true)?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .map_err(std::io::Error::from)?;
    Ok(s)
}

/// A raw ICMP (IPv4) or ICMPv6 socket for `spec` that only ever queues echo replies carrying
/// the prober's identifier. A raw socket otherwise gets a copy of every ICMP message the
/// interface receives: another program's ping replies, and a flood of echo requests to the
/// router's address, which would fill its queue, drop the probes' own replies and fail a
/// healthy uplink. The kernel runs the filter before queueing, so nothing else is ever read.
fn icmp_socket(spec: &ProbeSpec) -> std::io::Result<Socket> {
    let s = base_socket(spec, Type::RAW, spec.icmp())?;
    s.attach_filter(&echo_reply_filter(spec.family, spec.ident))?;
    Ok(s)
}

/// The classic BPF program of [`icmp_socket`]: accept an echo reply (type 0, ICMPv6 129)
/// whose identifier is `ident`, drop anything else.
fn echo_reply_filter(family: Family, ident: u16) -> Vec<nix::libc::sock_filter> {
    use nix::libc::{
        sock_filter, BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX,
        BPF_MSH, BPF_RET,
    };
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        // Every BPF opcode fits 16 bits.
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (accept, drop) = (
        op(BPF_RET | BPF_K, 0, 0, u32::MAX),
        op(BPF_RET | BPF_K, 0, 0, 0),
    );
    // An IPv4 raw socket sees the IP header first: X = its length (low nibble of byte 0,
    // times 4) and the loads are relative to X; an ICMPv6 one starts at the ICMPv6 header.
    let (lead, mode, reply) = match family {
        Family::V4 => (Some(op(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0)), BPF_IND, 0),
        Family::V6 => (None, BPF_ABS, 129),
    };
    lead.into_iter()
        .chain([
            // The type, then the identifier at offset 4.
            op(BPF_LD | BPF_B | mode, 0, 0, 0),
            op(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, reply),
            op(BPF_LD | BPF_H | mode, 0, 0, 4),
            op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, u32::from(ident)),
            accept,
            drop,
        ])
        .collect()
}

fn wall_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Reads queued datagrams without blocking: (bytes, source, kernel receive time) to `each`,
/// which says whether the datagram answered one of the `expect` probes still unanswered on
/// this socket. Stops once all of them are answered (an empty queue would only cost another
/// system call to find out), or when the queue is empty. Anything else queued before the last
/// answer (another prober's reply, an echo request) is read and dropped on the way, so
/// nothing piles up; what came after waits for the next round.
fn drain(
    fd: std::os::fd::RawFd,
    mut expect: usize,
    mut each: impl FnMut(&[u8], Option<IpAddr>, Duration) -> bool,
) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage};
    let mut buf = [0u8; 1500];
    while expect > 0 {
        let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let (n, from, at) =
            match recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
            {
                Ok(m) => {
                    let at = m
                        .cmsgs()
                        .ok()
                        .and_then(|mut c| {
                            c.find_map(|c| match c {
                                ControlMessageOwned::ScmTimestampns(ts) => Some(Duration::from(ts)),
                                _ => None,
                            })
                        })
                        .unwrap_or_else(wall_now);
                    let from = m.address.and_then(|a| match a.family() {
                        Some(nix::sys::socket::AddressFamily::Inet) => {
                            a.as_sockaddr_in().map(|v| IpAddr::V4(v.ip()))
                        }
                        Some(nix::sys::socket::AddressFamily::Inet6) => {
                            a.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip()))
                        }
                        _ => None,
                    });
                    (m.bytes, from, at)
                }
                Err(_) => return,
            };
        if each(&buf[..n], from, at) {
            expect -= 1;
        }
    }
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
            CheckMethod::Icmp => Method::Icmp(icmp_socket(spec)?),
            CheckMethod::Dns => {
                let s = base_socket(spec, Type::DGRAM, Protocol::UDP)?;
                let any: IpAddr = match spec.family {
                    Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
                    Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
                };
                s.bind(&SockAddr::from(SocketAddr::new(any, 0)))?;
                Method::Dns(s.into())
            }
            CheckMethod::Tcp => Method::Tcp(Vec::new()),
        })
    }

    fn send(&mut self, spec: &ProbeSpec, key: u16, target: SocketAddr) -> std::io::Result<()> {
        match self {
            Method::Icmp(s) => {
                let pkt = echo_request_for(spec.family, spec.ident, key);
                s.send_to(&pkt, &spec.sockaddr(target.ip(), 0))?;
            }
            Method::Dns(s) => {
                let to = spec.sockaddr(target.ip(), target.port());
                let to = to.as_socket().unwrap_or(target);
                s.send_to(&dns_query(key), to)?;
            }
            Method::Tcp(pending) => {
                let s = base_socket(spec, Type::STREAM, Protocol::TCP)?;
                match s.connect(&spec.sockaddr(target.ip(), target.port())) {
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

    /// Collects the answers that arrived since the last call, without blocking, into `out`:
    /// (probe key, source, receive time on the wall clock). `waiting` says whether a key is
    /// a probe of this socket still unanswered; `expect` is how many there are.
    fn collect(
        &mut self,
        spec: &ProbeSpec,
        expect: usize,
        waiting: impl Fn(u16, IpAddr) -> bool,
        out: &mut Vec<(u16, IpAddr, Duration)>,
    ) {
        match self {
            Method::Icmp(s) => drain(s.as_raw_fd(), expect, |pkt, from, at| {
                match parse_reply(spec.family, pkt, from, spec.ident) {
                    Some((src, key)) => {
                        out.push((key, src, at));
                        waiting(key, src)
                    }
                    None => false,
                }
            }),
            Method::Dns(s) => drain(s.as_raw_fd(), expect, |pkt, from, at| match from {
                Some(from) if pkt.len() >= 12 && pkt[2] & 0x80 != 0 => {
                    let key = u16::from_be_bytes([pkt[0], pkt[1]]);
                    out.push((key, from, at));
                    waiting(key, from)
                }
                _ => false,
            }),
            Method::Tcp(pending) => {
                let ready: Vec<bool> = {
                    let mut fds: Vec<PollFd> = pending
                        .iter()
                        .map(|(_, s, _)| PollFd::new(s.as_fd(), PollFlags::POLLOUT))
                        .collect();
                    let _ = nix::poll::poll(&mut fds, PollTimeout::ZERO);
                    fds.iter()
                        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                        .collect()
                };
                let at = wall_now();
                let now = Instant::now();
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
                                .and_then(|a| a.as_socket())
                                .map(|a| a.ip())
                                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                            out.push((key, dst, at));
                        }
                    } else if now.duration_since(started) < spec.timeout {
                        keep.push((key, s, started));
                    }
                }
                *pending = keep;
            }
        }
    }
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

/// Length of a probe's echo request: the 8-byte ICMP header and the payload `multiwan`.
const ECHO_LEN: usize = 16;

/// An echo message of ICMP type `kind` with identifier `ident` and sequence `seq`, checksum
/// left zero: built on the stack, as every probe sends one.
fn echo_message(kind: u8, ident: u16, seq: u16) -> [u8; ECHO_LEN] {
    let mut p = [0u8; ECHO_LEN];
    p[0] = kind;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"multiwan");
    p
}

/// An ICMP echo request with identifier `ident` and sequence `seq`.
pub fn echo_request(ident: u16, seq: u16) -> [u8; ECHO_LEN] {
    let mut p = echo_message(8, ident, seq);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// An echo request of `family` (ICMPv6 echo request type 128: the kernel fills in the
/// checksum of ICMPv6 raw sockets itself).
fn echo_request_for(family: Family, ident: u16, seq: u16) -> [u8; ECHO_LEN] {
    match family {
        Family::V4 => echo_request(ident, seq),
        Family::V6 => echo_message(128, ident, seq),
    }
}

/// An echo reply for `ident` on a raw socket of `family`: (source, sequence). IPv4 raw
/// sockets deliver the IP header, IPv6 ones only the ICMPv6 message (the source comes from
/// the socket address).
fn parse_reply(
    family: Family,
    pkt: &[u8],
    from: Option<IpAddr>,
    ident: u16,
) -> Option<(IpAddr, u16)> {
    match family {
        Family::V4 => parse_echo_reply(pkt, ident).map(|(a, k)| (IpAddr::V4(a), k)),
        Family::V6 => {
            if pkt.len() < 8 || pkt[0] != 129 || u16::from_be_bytes([pkt[4], pkt[5]]) != ident {
                return None;
            }
            Some((from?, u16::from_be_bytes([pkt[6], pkt[7]])))
        }
    }
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

/// A probe sent and not yet closed by its round's deadline.
#[derive(Debug, Clone, Copy)]
struct Pending {
    round: u64,
    /// Target index (the witness comes after the targets).
    slot: usize,
    /// Wall-clock send time (the kernel's receive timestamps are on the wall clock).
    sent: Duration,
    answered: bool,
}

impl Pending {
    fn new(round: u64, slot: usize, sent: Duration) -> Self {
        Self {
            round,
            slot,
            sent,
            answered: false,
        }
    }
}

/// Hashes a probe key (a `u16` counter) with one multiplication (Fibonacci hashing), which
/// spreads consecutive keys over the table's buckets and its control bits alike; the keys
/// are the prober's own, so the flooding resistance of the default SipHash buys nothing and
/// it is the larger part of every lookup.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u16(&mut self, k: u16) {
        self.0 = u64::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Probe key → the probe.
type Keys = HashMap<u16, Pending, BuildHasherDefault<KeyHasher>>;

/// Whether an answer to `key` from `src` is one [`Prober::answered`] takes for a probe still
/// unanswered (a tcp connect has no source to check, and its sockets are never drained).
fn awaited(spec: &ProbeSpec, keys: &Keys, key: u16, src: IpAddr) -> bool {
    keys.get(&key)
        .is_some_and(|p| !p.answered && spec.addr_of(p.slot) == Some(src))
}

/// One uplink's probing state inside the prober thread.
struct Prober {
    spec: ProbeSpec,
    rounds: Rounds,
    method: Option<Method>,
    /// Probe key → the probe. Keys wrap at 65536, far more than can be in flight.
    keys: Keys,
    /// Answers read in one collection (kept to reuse its allocation).
    got: Vec<(u16, IpAddr, Duration)>,
    next_key: u16,
    next_round: Instant,
    open_error_logged: bool,
    /// An ICMP socket for the witness when the method is not icmp.
    witness_sock: Option<Socket>,
    /// The last finished round had a failed target: the next rounds ping the witness.
    need_witness: bool,
    /// Rounds still to report at once (set after a failed round, and at the start).
    urgent_left: u32,
}

impl Prober {
    fn new(spec: ProbeSpec, start: Instant) -> Self {
        let slots = spec.targets.len() + usize::from(spec.witness.is_some());
        // The first rounds decide the uplinks' first states: reported at once.
        let urgent_left = spec.urgent_rounds;
        Self {
            rounds: Rounds::new(slots, spec.timeout),
            spec,
            method: None,
            keys: Keys::default(),
            got: Vec::new(),
            next_key: 0,
            next_round: start,
            open_error_logged: false,
            witness_sock: None,
            need_witness: false,
            urgent_left,
        }
    }

    fn answered(&mut self, key: u16, src: IpAddr, at: Duration, any_source: bool) {
        let Some(p) = self.keys.get_mut(&key) else {
            return;
        };
        if !p.answered && (any_source || Some(src) == self.spec.addr_of(p.slot)) {
            p.answered = true;
            self.rounds
                .answered_rtt(p.round, p.slot, at.saturating_sub(p.sent));
        }
    }

    /// Whether probe slot `slot` is sent on the witness socket rather than the method's.
    fn on_witness_socket(&self, slot: usize) -> bool {
        slot >= self.spec.targets.len() && !matches!(self.method, Some(Method::Icmp(_)))
    }

    fn collect(&mut self) {
        let mut got = std::mem::take(&mut self.got);
        got.clear();
        // Unanswered probes per socket: (method's, witness's).
        let (mut on_method, mut on_witness) = (0, 0);
        for p in self.keys.values().filter(|p| !p.answered) {
            if self.on_witness_socket(p.slot) {
                on_witness += 1;
            } else {
                on_method += 1;
            }
        }
        if let Some(w) = &self.witness_sock {
            let (family, ident) = (self.spec.family, self.spec.ident);
            drain(
                w.as_raw_fd(),
                on_witness,
                |pkt, from, at| match parse_reply(family, pkt, from, ident) {
                    Some((src, key)) => {
                        got.push((key, src, at));
                        awaited(&self.spec, &self.keys, key, src)
                    }
                    None => false,
                },
            );
            for &(key, src, at) in &got {
                self.answered(key, src, at, false);
            }
            got.clear();
        }
        let Some(m) = self.method.as_mut() else {
            self.got = got;
            return;
        };
        let is_tcp = matches!(m, Method::Tcp(_));
        let (spec, keys) = (&self.spec, &self.keys);
        m.collect(
            spec,
            on_method,
            |key, src| awaited(spec, keys, key, src),
            &mut got,
        );
        for &(key, src, at) in &got {
            // A tcp answer is the connect completing: its source is the target.
            let witness_slot = self
                .keys
                .get(&key)
                .is_some_and(|p| p.slot >= self.spec.targets.len());
            self.answered(key, src, at, is_tcp && !witness_slot);
        }
        self.got = got;
    }

    /// Pings the witness in round `id`.
    fn send_witness(&mut self, id: u64, now: Instant) {
        let Some(w) = self.spec.witness else { return };
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        let slot = self.spec.targets.len();
        let pkt = echo_request_for(self.spec.family, self.spec.ident, key);
        let to = self.spec.sockaddr(w, 0);
        let sent = wall_now();
        let r = match self.method.as_mut() {
            Some(Method::Icmp(s)) => s.send_to(&pkt, &to),
            _ => {
                if self.witness_sock.is_none() {
                    self.witness_sock = icmp_socket(&self.spec).ok();
                }
                match &self.witness_sock {
                    Some(s) => s.send_to(&pkt, &to),
                    None => return,
                }
            }
        };
        if r.is_ok() {
            self.keys.insert(key, Pending::new(id, slot, sent));
            self.rounds.sent(id, slot, now);
        }
    }

    fn send_round(&mut self, now: Instant) {
        if self.method.is_none() {
            match Method::open(&self.spec) {
                Ok(m) => {
                    self.method = Some(m);
                    self.open_error_logged = false;
                }
                // The interface may not exist yet; the link state already says why the uplink
                // is down, so the rounds simply fail until it appears.
                Err(e) if !self.open_error_logged => {
                    tracing::debug!(uplink = %self.spec.uplink, error = %e, "cannot open probe socket yet");
                    self.open_error_logged = true;
                }
                Err(_) => {}
            }
        }
        // On schedule, the round starts at its scheduled time, so its deadline falls on the
        // wake-up of a later round's start instead of just after it.
        let start = if now.saturating_duration_since(self.next_round) <= ON_TIME {
            self.next_round
        } else {
            now
        };
        let id = self.rounds.start(start);
        for i in 0..self.spec.targets.len() {
            let t = self.spec.targets[i];
            let key = self.next_key;
            self.next_key = self.next_key.wrapping_add(1);
            let Some(m) = self.method.as_mut() else { break };
            let sent = wall_now();
            match m.send(&self.spec, key, t) {
                Ok(()) => {
                    self.keys.insert(key, Pending::new(id, i, sent));
                    self.rounds.sent(id, i, now);
                }
                Err(e) => {
                    tracing::trace!(uplink = %self.spec.uplink, target = %t, error = %e, "probe not sent");
                    // A socket bound to a vanished interface stays broken: reopen.
                    if e.raw_os_error() == Some(nix::libc::ENODEV) {
                        self.method = None;
                    }
                }
            }
        }
        if self.need_witness {
            self.send_witness(id, now);
        }
        self.next_round += self.spec.interval;
        if self.next_round < now {
            self.next_round = now + self.spec.interval;
        }
    }

    fn next_wake(&self) -> Instant {
        self.rounds
            .next_deadline()
            .map_or(self.next_round, |d| d.min(self.next_round))
    }
}

fn run(
    specs: Vec<ProbeSpec>,
    generation: u64,
    tx: Sender<Event>,
    stop: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    fault: Option<Fault>,
) {
    // Every uplink starts now, so rounds of equal intervals share their wake-ups.
    let start = Instant::now();
    let mut probers: Vec<Prober> = specs.into_iter().map(|s| Prober::new(s, start)).collect();
    // Healthy rounds waiting to be reported, and since when.
    let mut held: Vec<super::RoundReport> = Vec::new();
    let mut held_since = start;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if fault.is_some() && now.duration_since(start) > Duration::from_secs(1) {
            match fault {
                Some(Fault::Panic) => panic!("injected prober fault (MULTIWAN_FAULT)"),
                _ => {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    return;
                }
            }
        }
        heartbeat.beat();
        let mut urgent = false;
        for p in &mut probers {
            // Answers first, so a reply that arrived before a round's deadline counts even
            // when it is read at the deadline.
            p.collect();
            while let Some(f) = p.rounds.pop_due(now) {
                p.keys.retain(|_, k| k.round != f.id);
                let n = p.spec.targets.len();
                let witness = (f.sent.get(n) == Some(&true)).then(|| f.results[n].is_some());
                let mut results = f.results;
                results.truncate(n);
                let failed = results.iter().any(Option::is_none) || witness == Some(false);
                p.need_witness = results.iter().any(Option::is_none);
                if failed {
                    p.urgent_left = p.spec.urgent_rounds;
                }
                urgent |= p.urgent_left > 0;
                if !failed {
                    p.urgent_left = p.urgent_left.saturating_sub(1);
                }
                if held.is_empty() {
                    held_since = now;
                }
                held.push(super::RoundReport {
                    uplink: p.spec.uplink.clone(),
                    family: p.spec.family,
                    results,
                    witness,
                    at: now,
                });
            }
            if now >= p.next_round {
                p.send_round(now);
            }
        }
        // At most one event per wake-up, however many uplinks; healthy rounds wait.
        let due = urgent || now.saturating_duration_since(held_since) >= HOLD;
        // The next batch is about as long: allocated once, not grown.
        let next_batch = held.len();
        if !held.is_empty()
            && due
            && tx
                .send(Event::Rounds {
                    generation,
                    rounds: std::mem::replace(&mut held, Vec::with_capacity(next_batch)),
                })
                .is_err()
        {
            return;
        }
        let wake = probers
            .iter()
            .map(Prober::next_wake)
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        let pending: Vec<std::os::fd::BorrowedFd> = probers
            .iter()
            .filter_map(|p| match &p.method {
                Some(Method::Tcp(list)) => Some(list.iter().map(|(_, s, _)| s.as_fd())),
                _ => None,
            })
            .flatten()
            .collect();
        let left = wake.saturating_duration_since(Instant::now());
        if pending.is_empty() {
            // nanosleep: never early, so a wake-up is never wasted.
            std::thread::sleep(left);
        } else {
            // tcp: wake when a connect completes, for its RTT.
            let ms = u16::try_from(left.as_millis() + 1).unwrap_or(u16::MAX);
            let mut fds: Vec<PollFd> = pending
                .into_iter()
                .map(|fd| PollFd::new(fd, PollFlags::POLLOUT))
                .collect();
            let _ = nix::poll::poll(&mut fds, PollTimeout::from(ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_keys_hash_apart() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<KeyHasher>::default();
        let hashes: Vec<u64> = (0..=u16::MAX).map(|k| b.hash_one(k)).collect();
        let distinct: std::collections::HashSet<u64> = hashes.iter().copied().collect();
        assert_eq!(distinct.len(), hashes.len());
        // hashbrown tells entries of a group apart by the hash's top 7 bits: consecutive
        // keys (how the prober hands them out) must not share them.
        let tops: std::collections::HashSet<u64> = hashes[..128].iter().map(|h| h >> 57).collect();
        assert!(tops.len() > 64, "{} of 128", tops.len());
        let mut keys = Keys::default();
        for k in 0..40u16 {
            keys.insert(
                k.wrapping_mul(7),
                Pending::new(u64::from(k), 0, Duration::ZERO),
            );
        }
        assert!((0..40u16).all(|k| keys[&k.wrapping_mul(7)].round == u64::from(k)));
    }

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
    fn drain_stops_once_every_awaited_answer_is_read() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().expect("pair");
        for m in [&b"stray"[..], b"ours", b"later"] {
            a.send(m).expect("send");
        }
        let mut seen = Vec::new();
        drain(b.as_raw_fd(), 1, |pkt, _, _| {
            seen.push(pkt.to_vec());
            pkt == b"ours"
        });
        assert_eq!(seen, [b"stray".to_vec(), b"ours".to_vec()]);
        drain(b.as_raw_fd(), 0, |_, _, _| {
            panic!("read with nothing awaited")
        });
        let mut rest = Vec::new();
        drain(b.as_raw_fd(), 5, |pkt, _, _| {
            rest.push(pkt.to_vec());
            true
        });
        assert_eq!(rest, [b"later".to_vec()], "and stops at the empty queue");
    }

    /// Runs the classic BPF instructions [`echo_reply_filter`] uses over `pkt`: the bytes
    /// the kernel would queue (0: dropped).
    fn run_filter(prog: &[nix::libc::sock_filter], pkt: &[u8]) -> u32 {
        use nix::libc::{BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_LD, BPF_LDX, BPF_MSH};
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |i: u32| pkt.get(i as usize).copied().map(u32::from);
        let half = |i: u32| Some(byte(i)? << 8 | byte(i + 1)?);
        loop {
            let op = prog[pc];
            let code = u32::from(op.code);
            pc += 1;
            let load = match code {
                c if c == BPF_LDX | BPF_B | BPF_MSH => {
                    x = 4 * (byte(op.k).unwrap_or(0) & 0xf);
                    continue;
                }
                c if c == BPF_LD | BPF_B | BPF_ABS => byte(op.k),
                c if c == BPF_LD | BPF_H | BPF_ABS => half(op.k),
                c if c == BPF_LD | BPF_B | BPF_IND => byte(x + op.k),
                c if c == BPF_LD | BPF_H | BPF_IND => half(x + op.k),
                c if c == nix::libc::BPF_JMP | nix::libc::BPF_JEQ | nix::libc::BPF_K => {
                    pc += usize::from(if a == op.k { op.jt } else { op.jf });
                    continue;
                }
                c if c == nix::libc::BPF_RET | nix::libc::BPF_K => return op.k,
                c => panic!("opcode {c:#x} not in this interpreter"),
            };
            // A load past the end drops the packet, as in the kernel.
            match load {
                Some(v) => a = v,
                None => return 0,
            }
        }
    }

    #[test]
    fn the_socket_filter_takes_only_our_echo_replies() {
        let v4 = echo_reply_filter(Family::V4, 0x1234);
        let mut reply = vec![
            0x45u8, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut icmp = echo_request(0x1234, 9);
        icmp[0] = 0;
        reply.extend_from_slice(&icmp);
        assert_ne!(run_filter(&v4, &reply), 0, "our reply");
        let mut other = reply.clone();
        other[24..26].copy_from_slice(&0x4321u16.to_be_bytes());
        assert_eq!(run_filter(&v4, &other), 0, "another program's reply");
        let mut request = reply.clone();
        request[20] = 8;
        assert_eq!(
            run_filter(&v4, &request),
            0,
            "an echo request to the router"
        );
        // With IP options (a 24-byte header) the ICMP header is found after them.
        let mut opts = reply[..20].to_vec();
        opts[0] = 0x46;
        opts.extend_from_slice(&[1, 1, 1, 0]);
        opts.extend_from_slice(&icmp);
        assert_ne!(run_filter(&v4, &opts), 0, "our reply after IP options");
        assert_eq!(run_filter(&v4, &reply[..22]), 0, "truncated");

        let v6 = echo_reply_filter(Family::V6, 0x1234);
        let mut reply6 = echo_request_for(Family::V6, 0x1234, 9);
        reply6[0] = 129;
        assert_ne!(run_filter(&v6, &reply6), 0, "our ICMPv6 reply");
        let mut other6 = reply6;
        other6[4] = 0x43;
        assert_eq!(run_filter(&v6, &other6), 0, "another identifier");
        assert_eq!(
            run_filter(&v6, &echo_request_for(Family::V6, 0x1234, 9)),
            0,
            "an ICMPv6 echo request"
        );
        let mut na = reply6;
        na[0] = 136;
        assert_eq!(run_filter(&v6, &na), 0, "neighbour discovery");
    }

    #[test]
    fn dns_query_shape() {
        let q = dns_query(0xabcd);
        assert_eq!(q.len(), 17);
        assert_eq!(&q[..2], &[0xab, 0xcd]);
    }
}
