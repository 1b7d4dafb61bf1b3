//! Real traffic for the lab and the tests: a TCP/UDP server that tells each client which
//! address it saw (so SNAT and the chosen uplink are visible) and keeps per-peer counts, and
//! the matching clients. Servers and clients run on threads inside namespaces.
//!
//! TCP protocol, one request line per connection:
//! - `HELLO` → `<peer-ip>\n`
//! - `GET <bytes>` → `<peer-ip>\n` then that many bytes
//! - `TIME <ms>` → `<peer-ip>\n` then bytes as fast as possible for that long
//! - `PUT <bytes>` → the client sends that many bytes, then `<peer-ip> <received>\n`
//!
//! UDP: any datagram is answered with `<peer-ip>`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
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
}

/// Per-source-address counts.
pub type Stats = BTreeMap<Ipv4Addr, PeerStats>;

/// A running server; stops when dropped.
pub struct Server {
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts TCP and UDP listeners on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddrV4) -> Result<Self> {
        let stats = Arc::new(Mutex::new(Stats::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let (s1, st1, tx1) = (stats.clone(), stop.clone(), tx.clone());
        let tcp = ns.spawn(move || {
            let l = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(l) => {
                    let _ = tx1.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx1.send(Err(anyhow!("binding tcp {addr}: {e}")));
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
        })?;
        let (s1, st1) = (stats.clone(), stop.clone());
        let udp = ns.spawn(move || {
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
                if let Ok((n, SocketAddr::V4(peer))) = sock.recv_from(&mut buf) {
                    let reply = peer.ip().to_string();
                    let _ = sock.send_to(reply.as_bytes(), peer);
                    if let Ok(mut g) = s1.lock() {
                        let e = g.entry(*peer.ip()).or_default();
                        e.udp_msgs += 1;
                        e.bytes_in += n as u64;
                        e.bytes_out += reply.len() as u64;
                    }
                }
            }
        })?;
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(5))
                .context("server did not start")??;
        }
        Ok(Self {
            stats,
            stop,
            handles: vec![tcp, udp],
        })
    }

    /// A snapshot of the per-peer counts.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Clears the counts.
    pub fn reset(&self) {
        if let Ok(mut g) = self.stats.lock() {
            g.clear();
        }
    }
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
    pub fn start(ns: &Netns, addr: SocketAddrV4) -> Result<Self> {
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
    stats: &Mutex<Stats>,
    stop: &AtomicBool,
) -> Result<()> {
    let SocketAddr::V4(peer) = peer else {
        bail!("ipv6 peer")
    };
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
            f(g.entry(*peer.ip()).or_default());
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

fn connect(server: SocketAddrV4, timeout: Duration) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(server), timeout)
        .with_context(|| format!("connecting to {server}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

fn read_who(r: &mut BufReader<TcpStream>) -> Result<Ipv4Addr> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    line.trim()
        .parse()
        .with_context(|| format!("unexpected server greeting {line:?}"))
}

/// Opens a connection and returns the source address the server saw.
pub fn tcp_hello(server: SocketAddrV4, timeout: Duration) -> Result<Ipv4Addr> {
    let mut s = connect(server, timeout)?;
    s.write_all(b"HELLO\n")?;
    read_who(&mut BufReader::new(s))
}

/// Result of a download.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub seen_as: Ipv4Addr,
    pub bytes: u64,
    pub elapsed: Duration,
}

fn download(
    server: SocketAddrV4,
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

/// Downloads exactly `bytes` bytes; fails if the connection breaks.
pub fn tcp_get(server: SocketAddrV4, bytes: u64) -> Result<Transfer> {
    download(server, format!("GET {bytes}\n"), Some(bytes), None)
}

/// Downloads for `ms` milliseconds as fast as the path allows, adding every received byte
/// to `progress` as it arrives (so a caller can measure a steady-state window).
pub fn tcp_time(
    server: SocketAddrV4,
    ms: u64,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<Transfer> {
    download(server, format!("TIME {ms}\n"), None, Some(progress))
}

/// Uploads `bytes` bytes; returns the address the server saw and what it received.
pub fn tcp_put(server: SocketAddrV4, bytes: u64) -> Result<(Ipv4Addr, u64)> {
    let mut s = connect(server, Duration::from_secs(5))?;
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

/// Sends one datagram and returns the source address the server saw.
pub fn udp_hello(server: SocketAddrV4, timeout: Duration) -> Result<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"hello", server)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).context("no udp reply")?;
    std::str::from_utf8(&buf[..n])?
        .trim()
        .parse()
        .context("bad udp reply")
}

/// A UDP sink that counts datagrams (for packets-per-second measurements). Stops on drop.
pub struct UdpSink {
    count: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddrV4) -> Result<Self> {
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
pub fn udp_flood(to: SocketAddrV4, payload: usize, dur: Duration) -> Result<u64> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
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
pub fn connection_rate(server: SocketAddrV4, threads: usize, dur: Duration) -> u64 {
    let end = Instant::now() + dur;
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < end {
                    if tcp_hello(server, Duration::from_secs(1)).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
}

/// One UDP exchange from a given local source address; the address the server saw.
pub fn udp_hello_from(src: Ipv4Addr, server: SocketAddrV4, timeout: Duration) -> Result<Ipv4Addr> {
    let s = UdpSocket::bind(SocketAddrV4::new(src, 0))?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"hello", server)?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).context("no udp reply")?;
    std::str::from_utf8(&buf[..n])?
        .trim()
        .parse()
        .context("bad udp reply")
}
