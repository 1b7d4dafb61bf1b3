//! Real traffic for the lab and the tests: a TCP/UDP server, IPv4 and IPv6, that tells each
//! client which address it saw (so SNAT and the chosen uplink are visible) and keeps per-peer
//! counts, and the matching clients. Servers and clients run on threads inside namespaces.
//! The clients taking a `SocketAddr` (`*_ip`, [`tcp_get`], [`tcp_time`], [`ping`]) work for
//! either family; the older IPv4 ones (`tcp_hello`, `udp_hello`, …) are kept as they were.
//!
//! TCP protocol, one request line per connection:
//! - `HELLO` → `<peer-ip>\n`
//! - `GET <bytes>` → `<peer-ip>\n` then that many bytes
//! - `TIME <ms>` → `<peer-ip>\n` then bytes as fast as possible for that long
//! - `PUT <bytes>` → the client sends that many bytes, then `<peer-ip> <received>\n`
//!
//! UDP: any datagram is answered with `<peer-ip>`. ICMP and ICMPv6 echo requests are answered
//! by the kernel; the server also counts them per source (a raw socket sees a copy of each).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::Netns;

/// What the server saw from one source address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub tcp_conns: u64,
    pub udp_msgs: u64,
    /// Bytes the server sent to this peer.
    pub bytes_out: u64,
    /// Bytes the server received from this peer.
    pub bytes_in: u64,
    /// ICMP / ICMPv6 echo requests that reached the server from this peer.
    pub echoes: u64,
}

/// Per-source-address counts, IPv4 peers ([`Server::stats`]).
pub type Stats = BTreeMap<Ipv4Addr, PeerStats>;

/// Per-source-address counts, both families ([`Server::stats_all`]).
pub type StatsAll = BTreeMap<IpAddr, PeerStats>;

/// A running server; stops when dropped.
pub struct Server {
    stats: Arc<Mutex<StatsAll>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts TCP and UDP listeners on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>) -> Result<Self> {
        Self::start_all(ns, &[addr.into()])
    }

    /// Starts TCP and UDP listeners on every address in `addrs` inside `ns` (the lab's server
    /// listens on [`Topology::server_endpoints`](crate::topology::Topology::server_endpoints),
    /// both families), and counts the echo requests of every family among them.
    pub fn start_all(ns: &Netns, addrs: &[SocketAddr]) -> Result<Self> {
        let stats = Arc::new(Mutex::new(StatsAll::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut server = Self {
            stats,
            stop,
            handles: Vec::new(),
        };
        // Pushed as they start, so a failure stops those already running (on drop).
        for addr in addrs {
            let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
            handles.push(server.spawn_tcp(ns, *addr, tx.clone())?);
            handles.push(server.spawn_udp(ns, *addr, tx)?);
            server.handles.append(&mut handles);
            for _ in 0..2 {
                rx.recv_timeout(Duration::from_secs(5))
                    .context("server did not start")??;
            }
        }
        let mut families: Vec<bool> = addrs.iter().map(SocketAddr::is_ipv6).collect();
        families.dedup();
        for v6 in families {
            let h = server.spawn_echo_counter(ns, v6)?;
            server.handles.push(h);
        }
        Ok(server)
    }

    fn spawn_tcp(
        &self,
        ns: &Netns,
        addr: SocketAddr,
        tx: std::sync::mpsc::Sender<Result<()>>,
    ) -> Result<JoinHandle<()>> {
        let (s1, st1) = (self.stats.clone(), self.stop.clone());
        ns.spawn(move || {
            let l = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("binding tcp {addr}: {e}")));
                    return;
                }
            };
            while !st1.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let (s2, st2) = (s1.clone(), st1.clone());
                        std::thread::spawn(move || {
                            let _ = serve_tcp(s, peer, &s2, &st2);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    }

    fn spawn_udp(
        &self,
        ns: &Netns,
        addr: SocketAddr,
        tx: std::sync::mpsc::Sender<Result<()>>,
    ) -> Result<JoinHandle<()>> {
        let (s1, st1) = (self.stats.clone(), self.stop.clone());
        ns.spawn(move || {
            let sock = match UdpSocket::bind(addr).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(50)))
                    .map(|()| s)
            }) {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("binding udp {addr}: {e}")));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !st1.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let reply = peer.ip().to_string();
                    // Counted before the reply leaves, so a client that has its answer
                    // finds the message in the counts (as TCP's are).
                    if let Ok(mut g) = s1.lock() {
                        let e = g.entry(peer.ip()).or_default();
                        e.udp_msgs += 1;
                        e.bytes_in += n as u64;
                        e.bytes_out += reply.len() as u64;
                    }
                    let _ = sock.send_to(reply.as_bytes(), peer);
                }
            }
        })
    }

    /// A raw ICMP (or ICMPv6) socket in the server's namespace that sees a copy of every echo
    /// request delivered there and counts it per source; the kernel still answers them.
    fn spawn_echo_counter(&self, ns: &Netns, v6: bool) -> Result<JoinHandle<()>> {
        let (s1, st1) = (self.stats.clone(), self.stop.clone());
        let sock = ns
            .spawn(move || icmp_socket(v6))?
            .join()
            .map_err(|_| anyhow!("echo counter thread panicked"))??;
        Ok(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st1.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if echo_type(&buf[..n], v6) == Some(if v6 { 128 } else { 8 }) {
                    if let Ok(mut g) = s1.lock() {
                        g.entry(from.ip()).or_default().echoes += 1;
                    }
                }
            }
        }))
    }

    /// A snapshot of the per-peer counts of IPv4 peers.
    pub fn stats(&self) -> Stats {
        self.stats_all()
            .into_iter()
            .filter_map(|(a, s)| match a {
                IpAddr::V4(a) => Some((a, s)),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// A snapshot of the per-peer counts of IPv6 peers.
    pub fn stats6(&self) -> BTreeMap<std::net::Ipv6Addr, PeerStats> {
        self.stats_all()
            .into_iter()
            .filter_map(|(a, s)| match a {
                IpAddr::V6(a) => Some((a, s)),
                IpAddr::V4(_) => None,
            })
            .collect()
    }

    /// The per-peer counts once `settled` holds for them, or as they are after `timeout`.
    /// Echo requests are counted from a raw socket's copy while the kernel answers them on
    /// its own, so a ping can have its reply before the counter thread has read the copy:
    /// a test that counts echoes waits for them here instead of reading at once.
    pub fn stats_when(&self, timeout: Duration, settled: impl Fn(&StatsAll) -> bool) -> StatsAll {
        let end = Instant::now() + timeout;
        loop {
            let s = self.stats_all();
            if settled(&s) || Instant::now() >= end {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A snapshot of the per-peer counts, both families.
    pub fn stats_all(&self) -> StatsAll {
        self.stats.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Clears the counts.
    pub fn reset(&self) {
        if let Ok(mut g) = self.stats.lock() {
            g.clear();
        }
    }
}

/// A raw ICMP socket of the family (`v6`: ICMPv6) with a 50 ms read timeout. Handed out as
/// a std `UdpSocket`, whose `send_to` / `recv_from` are plain `sendto` / `recvfrom` and work on
/// any datagram-like socket (the port in the addresses is 0), so reading needs no unsafe code.
fn icmp_socket(v6: bool) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (d, p) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let s = Socket::new(d, Type::RAW, Some(p)).context("opening a raw icmp socket")?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(s.into())
}

/// The ICMP type of a received raw packet: IPv4 raw sockets deliver the IP header first (its
/// length in the low nibble of the first byte), ICMPv6 raw sockets only the ICMPv6 message.
fn echo_type(data: &[u8], v6: bool) -> Option<u8> {
    let off = if v6 {
        0
    } else {
        usize::from(data.first()? & 0x0f) * 4
    };
    data.get(off).copied()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A minimal DNS responder for health-check tests: answers every query with REFUSED, which
/// is all a `dns` probe needs to see (a resolver that answers). Stops when dropped.
pub struct DnsResponder {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DnsResponder {
    /// Listens on `addr` (UDP) inside `ns`.
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>) -> Result<Self> {
        let addr = addr.into();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let sock = ns
            .spawn(move || {
                UdpSocket::bind(addr).and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))
                        .map(|()| s)
                })
            })?
            .join()
            .map_err(|_| anyhow!("dns responder thread panicked"))?
            .with_context(|| format!("binding dns {addr}"))?;
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    if n >= 12 {
                        let mut r = buf[..n].to_vec();
                        r[2] |= 0x80; // QR: a response
                        r[3] = (r[3] & 0xf0) | 5; // RCODE: REFUSED
                        let _ = sock.send_to(&r, peer);
                    }
                }
            }
        });
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve_tcp(
    s: TcpStream,
    peer: SocketAddr,
    stats: &Mutex<StatsAll>,
    stop: &AtomicBool,
) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let cmd = parts.next().unwrap_or("");
    let arg: u64 = parts.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let who = format!("{}\n", peer.ip());
    let add = |f: &dyn Fn(&mut PeerStats)| {
        if let Ok(mut g) = stats.lock() {
            f(g.entry(peer.ip()).or_default());
        }
    };
    add(&|e| e.tcp_conns += 1);
    let chunk = vec![0x5au8; 64 * 1024];
    match cmd {
        "HELLO" => w.write_all(who.as_bytes())?,
        "GET" => {
            w.write_all(who.as_bytes())?;
            let mut left = arg;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                w.write_all(&chunk[..n])?;
                add(&|e| e.bytes_out += n as u64);
                left -= n as u64;
            }
        }
        "TIME" => {
            w.write_all(who.as_bytes())?;
            let end = Instant::now() + Duration::from_millis(arg);
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                w.write_all(&chunk)?;
                add(&|e| e.bytes_out += chunk.len() as u64);
            }
        }
        "PUT" => {
            let mut left = arg;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = r.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                add(&|e| e.bytes_in += n as u64);
                left -= n as u64;
            }
            w.write_all(format!("{} {}\n", peer.ip(), arg - left).as_bytes())?;
        }
        _ => bail!("unknown request {cmd:?}"),
    }
    w.flush()?;
    Ok(())
}

fn connect(server: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&server, timeout)
        .with_context(|| format!("connecting to {server}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

fn read_who(r: &mut BufReader<TcpStream>) -> Result<IpAddr> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    line.trim()
        .parse()
        .with_context(|| format!("unexpected server greeting {line:?}"))
}

/// An address the server reported, required to be IPv4 (for the IPv4-only clients).
fn v4(a: IpAddr) -> Result<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => bail!("the server saw an IPv6 source {a} on an IPv4 exchange"),
    }
}

/// A local wildcard address of the same family as `peer`, for a client socket.
fn any_like(peer: &SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Opens a connection and returns the source address the server saw (IPv4).
pub fn tcp_hello(server: SocketAddrV4, timeout: Duration) -> Result<Ipv4Addr> {
    v4(tcp_hello_ip(server.into(), timeout)?)
}

/// Opens a connection to a server of either family; the source address the server saw.
pub fn tcp_hello_ip(server: SocketAddr, timeout: Duration) -> Result<IpAddr> {
    let mut s = connect(server, timeout)?;
    s.write_all(b"HELLO\n")?;
    read_who(&mut BufReader::new(s))
}

/// Opens a connection from a given local source address (either family, which must match the
/// server's); the source address the server saw. For the router's own traffic from one
/// uplink's address.
pub fn tcp_hello_from_ip(src: IpAddr, server: SocketAddr, timeout: Duration) -> Result<IpAddr> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(server), Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())
        .with_context(|| format!("binding {src}"))?;
    s.connect_timeout(&server.into(), timeout)
        .with_context(|| format!("connecting to {server} from {src}"))?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"HELLO\n")?;
    read_who(&mut BufReader::new(s))
}

/// Result of a download.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// The source address the server saw (either family; `Topology::isp_of` takes it).
    pub seen_as: IpAddr,
    pub bytes: u64,
    pub elapsed: Duration,
}

fn download(
    server: SocketAddr,
    request: String,
    expect: Option<u64>,
    progress: Option<&std::sync::atomic::AtomicU64>,
) -> Result<Transfer> {
    let start = Instant::now();
    let mut s = connect(server, Duration::from_secs(5))?;
    s.write_all(request.as_bytes())?;
    let mut r = BufReader::new(s);
    let seen_as = read_who(&mut r)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        if let Some(p) = progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    if let Some(want) = expect {
        if bytes != want {
            bail!("transfer cut short: {bytes} of {want} bytes");
        }
    }
    Ok(Transfer {
        seen_as,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Downloads exactly `bytes` bytes (either family); fails if the connection breaks.
pub fn tcp_get(server: impl Into<SocketAddr>, bytes: u64) -> Result<Transfer> {
    download(server.into(), format!("GET {bytes}\n"), Some(bytes), None)
}

/// Downloads for `ms` milliseconds as fast as the path allows (either family), adding every
/// received byte to `progress` as it arrives (so a caller can measure a steady-state window).
pub fn tcp_time(
    server: impl Into<SocketAddr>,
    ms: u64,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<Transfer> {
    download(server.into(), format!("TIME {ms}\n"), None, Some(progress))
}

/// Uploads `bytes` bytes (either family); returns the address the server saw and what it
/// received.
pub fn tcp_put(server: impl Into<SocketAddr>, bytes: u64) -> Result<(IpAddr, u64)> {
    let mut s = connect(server.into(), Duration::from_secs(5))?;
    s.write_all(format!("PUT {bytes}\n").as_bytes())?;
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let mut p = line.split_whitespace();
    let who = p.next().unwrap_or("").parse().context("bad PUT reply")?;
    let got = p.next().unwrap_or("").parse().context("bad PUT reply")?;
    Ok((who, got))
}

/// Sends one datagram and returns the source address the server saw (IPv4).
pub fn udp_hello(server: SocketAddrV4, timeout: Duration) -> Result<Ipv4Addr> {
    v4(udp_hello_ip(server.into(), timeout)?)
}

/// Sends one datagram to a server of either family; the source address the server saw.
pub fn udp_hello_ip(server: SocketAddr, timeout: Duration) -> Result<IpAddr> {
    udp_exchange(UdpSocket::bind(any_like(&server))?, server, timeout)
}

fn udp_exchange(s: UdpSocket, server: SocketAddr, timeout: Duration) -> Result<IpAddr> {
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"hello", server)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).context("no udp reply")?;
    std::str::from_utf8(&buf[..n])?
        .trim()
        .parse()
        .context("bad udp reply")
}

/// One ICMP echo (ICMPv6 for an IPv6 `dst`) from a raw socket: the round-trip time, or an
/// error after `timeout`. The server counts the requests it saw per source
/// ([`PeerStats::echoes`]), which tells the uplink an echo took.
pub fn ping(dst: IpAddr, timeout: Duration) -> Result<Duration> {
    static SEQ: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let v6 = dst.is_ipv6();
    let sock = icmp_socket(v6)?;
    // The identifier tells our replies from other pingers' on the same host.
    let id = (std::process::id() as u16) ^ 0x6d77;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    pkt.extend(id.to_be_bytes());
    pkt.extend(seq.to_be_bytes());
    pkt.extend(b"multiwan-lab echo");
    if !v6 {
        // ICMPv6 checksums are the kernel's (it must include the pseudo-header); ICMPv4's is
        // ours.
        let c = inet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let start = Instant::now();
    sock.send_to(&pkt, SocketAddr::new(dst, 0))
        .with_context(|| format!("sending an echo request to {dst}"))?;
    let mut buf = [0u8; 2048];
    while start.elapsed() < timeout {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let off = if v6 {
            0
        } else {
            usize::from(buf[0] & 0x0f) * 4
        };
        let m = &buf[off.min(n)..n];
        let reply = if v6 { 129 } else { 0 };
        let ours = m.len() >= 8 && m[4..6] == id.to_be_bytes() && m[6..8] == seq.to_be_bytes();
        if from.ip() == dst && ours && m[0] == reply {
            return Ok(start.elapsed());
        }
    }
    bail!("no echo reply from {dst} within {timeout:?}")
}

/// The Internet checksum (RFC 1071) of `data`.
fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP sink that counts datagrams (for packets-per-second measurements). Stops on drop.
pub struct UdpSink {
    count: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: impl Into<SocketAddr>) -> Result<Self> {
        let addr = addr.into();
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st) = (count.clone(), stop.clone());
        let sock = ns
            .spawn(move || {
                UdpSocket::bind(addr).and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(s)
                })
            })?
            .join()
            .map_err(|_| anyhow!("sink thread panicked"))?
            .with_context(|| format!("binding udp sink {addr}"))?;
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if sock.recv_from(&mut buf).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            count,
            stop,
            handle: Some(handle),
        })
    }

    /// Datagrams received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends `payload`-byte datagrams to `to` as fast as possible for `dur`; returns how many
/// were sent.
pub fn udp_flood(to: impl Into<SocketAddr>, payload: usize, dur: Duration) -> Result<u64> {
    let to = to.into();
    let s = UdpSocket::bind(any_like(&to))?;
    s.connect(to)?;
    let buf = vec![0u8; payload];
    let end = Instant::now() + dur;
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..256 {
            if s.send(&buf).is_ok() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Opens and closes connections (`HELLO`) on `threads` threads for `dur`; returns how many
/// completed.
pub fn connection_rate(server: impl Into<SocketAddr>, threads: usize, dur: Duration) -> u64 {
    let server = server.into();
    let end = Instant::now() + dur;
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < end {
                    if tcp_hello_ip(server, Duration::from_secs(1)).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
}

/// One UDP exchange from a given local source address; the address the server saw (IPv4).
pub fn udp_hello_from(src: Ipv4Addr, server: SocketAddrV4, timeout: Duration) -> Result<Ipv4Addr> {
    v4(udp_hello_from_ip(src.into(), server.into(), timeout)?)
}

/// One UDP exchange from a given local source address, either family.
pub fn udp_hello_from_ip(src: IpAddr, server: SocketAddr, timeout: Duration) -> Result<IpAddr> {
    udp_exchange(UdpSocket::bind(SocketAddr::new(src, 0))?, server, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request() {
        // Type 8, code 0, id 0x1234, seq 1: the sum of the words is 0x0800 + 0x1234 + 0x0001.
        let pkt = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(inet_checksum(&pkt), !(0x0800u16 + 0x1234 + 1));
        // A packet carrying its own checksum sums to zero (an odd length is padded).
        let mut p = vec![8, 0, 0, 0, 0xab, 0xcd, 0, 7, 0x61];
        let c = inet_checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(inet_checksum(&p), 0);
    }

    #[test]
    fn echo_type_skips_the_ipv4_header() {
        let mut v4 = vec![0x45u8; 20];
        v4.push(8);
        assert_eq!(echo_type(&v4, false), Some(8));
        assert_eq!(echo_type(&[128, 0], true), Some(128));
        assert_eq!(echo_type(&[], true), None);
    }
}
