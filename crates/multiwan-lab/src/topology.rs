//! The virtual network shared by `multiwan-lab` and the namespace tests:
//!
//! ```text
//!  host1 ─┐                        ┌─ isp1 ─┐
//!  host2 ─┼─ lan0 [ router ] wan1 ─┘        ├─ server 172.16.0.100, 2001:db8:ff::100
//!  host3 ─┘  192.168.157.253  wan2 ── isp2 ─┘
//!            fd37:157::253
//! ```
//! Dual stack throughout. LAN 192.168.157.0/24 (hosts .11, .12, …) and the ULA fd37:157::/64
//! (hosts fd37:157::11, ::12, … — the same digits) on a bridge `lan0` in the router. Uplink N
//! is `wanN` with 10.37.N.253/24 and 2001:db8:N::253/64; ISP N's side (`cpe`) is 10.37.N.1 and
//! 2001:db8:N::1 (its link-local address is the router-advertised gateway when the ISP sends
//! advertisements). ISP N reaches the server over 172.16.N.0/30 and 2001:db8:ff:N::/64.
//!
//! **Invariant (BCP 38, both families):** each ISP drops packets from its customer whose source
//! is not the customer's (IPv4: strict reverse-path filtering; IPv6, which has no rp_filter: an
//! nft rule on `cpe` that drops sources outside 2001:db8:N::/64), and routes back to nothing
//! but its own customer prefix — so, like a real ISP, it loses a wrong SNAT, an unNATed LAN
//! (ULA) source or a reply on the wrong uplink.
//! Optional `tbf` shaping on the ISP side emulates each uplink's capacity in both directions;
//! an optional `radvd` in the ISP advertises its prefix and a default route (SLAAC).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{unique_stem, veth, Netns};
use crate::scratch::{private_dir, TempDir};

/// **The one switch for IPv6 in the router under test (issue 12).** On (the router has
/// IPv6 since issue 12): the generated config ([`Topology::config`]) is dual stack
/// (`gateway6` and an IPv6 probe target per uplink), the demo drives and reports both
/// families by default (`--ipv6`) and drills both, and the benchmarks add multiwan's IPv6
/// rows. Off: the config is IPv4 only and the report and benchmarks leave out what needs the
/// router's IPv6 (the network itself is always dual stack, and the IPv6 baselines are still
/// measured) — for a router build without IPv6.
pub const ROUTER_IPV6: bool = true;

/// The server's address "on the internet".
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 100);
/// The server's IPv6 address "on the internet" (on its `lo`, routed by every ISP).
pub const SERVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x100);
/// TCP and UDP port of the test server (both families).
pub const SERVER_PORT: u16 = 7000;
/// Router address on the LAN.
pub const ROUTER_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 157, 253);
/// Router IPv6 address on the LAN (a ULA: no ISP routes it, multiwan must NAT it).
pub const ROUTER_LAN_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd37, 0x157, 0, 0, 0, 0, 0, 0x253);
/// The LAN's IPv6 prefix (the router's and every host's address are in it).
pub const LAN_PREFIX6: &str = "fd37:157::/64";
/// LAN interface name in the router.
pub const LAN_IF: &str = "lan0";
/// Prefix of every namespace name created by the lab and the tests.
pub const NS_PREFIX: &str = "mwlab";

/// An address family, for code that drives or reports both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// `IPv4` or `IPv6`.
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The family of an address.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One ISP.
#[derive(Debug, Clone, Copy, Default)]
pub struct IspSpec {
    /// Shape both directions to this many Mbit/s.
    pub rate_mbit: Option<u32>,
    /// Run `radvd` in the ISP: router advertisements on `cpe` with its prefix
    /// 2001:db8:N::/64 (SLAAC) and a default route from its link-local address, every 3–4 s
    /// (the router takes them only with `accept_ra = 2` once it forwards; multiwan sets that
    /// for `gateway6 = "auto"`). Needs the `radvd` binary (`scripts/deps.sh` installs it for
    /// the tests).
    pub router_adverts: bool,
    /// The default route lifetime those advertisements give, in seconds (30 when unset):
    /// how long a router that falls silent keeps its route.
    pub router_lifetime_s: Option<u16>,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct TopologySpec {
    pub isps: Vec<IspSpec>,
    pub lan_hosts: usize,
}

impl Default for TopologySpec {
    fn default() -> Self {
        Self {
            isps: vec![IspSpec::default(); 2],
            lan_hosts: 3,
        }
    }
}

/// A LAN host.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// Its ULA, [`host_addr6`].
    pub addr6: Ipv6Addr,
}

/// An ISP namespace and the router's side of it.
#[derive(Debug)]
pub struct Isp {
    pub ns: Netns,
    /// Interface name in the router (`wanN`).
    pub router_if: String,
    /// The router's address on this uplink (what SNAT produces).
    pub router_addr: Ipv4Addr,
    /// The ISP's gateway address.
    pub gateway: Ipv4Addr,
    /// The router's static IPv6 address on this uplink, [`router_addr6`].
    pub router_addr6: Ipv6Addr,
    /// The ISP's static IPv6 gateway, [`gateway6`].
    pub gateway6: Ipv6Addr,
    pub rate_mbit: Option<u32>,
    /// The ISP's `radvd`, if it sends router advertisements. Declared after `ns`, so the
    /// namespace's removal stops it first and this only reaps it.
    pub radvd: Option<Radvd>,
}

/// The whole virtual network. Dropping it removes every namespace.
#[derive(Debug)]
pub struct Topology {
    pub router: Netns,
    pub hosts: Vec<Host>,
    pub isps: Vec<Isp>,
    pub server: Netns,
}

/// Uplink number (1-based) → router address on it.
pub fn router_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 37, n as u8, 253)
}

/// Uplink number (1-based) → ISP gateway.
pub fn gateway(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 37, n as u8, 1)
}

/// Uplink number (1-based) → router IPv6 address on it, `2001:db8:N::253`.
pub fn router_addr6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, n as u16, 0, 0, 0, 0, 0x253)
}

/// Uplink number (1-based) → ISP IPv6 gateway, `2001:db8:N::1` (static; with router
/// advertisements the ISP's link-local address on `cpe` is the advertised one).
pub fn gateway6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, n as u16, 0, 0, 0, 0, 1)
}

/// Uplink number (1-based) → the ISP's customer prefix `2001:db8:N::/64` (what its BCP 38
/// filter lets in, and all it routes back).
pub fn prefix6(n: usize) -> String {
    format!("2001:db8:{n:x}::/64")
}

/// LAN host index (0-based, as in [`Topology::hosts`]) → its IPv4 address 192.168.157.(11+i).
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 157, 11 + i as u8)
}

/// LAN host index (0-based) → its ULA: the IPv4 address's last number written as the last
/// group, so host .11 is `fd37:157::11` and host .23 is `fd37:157::23`.
pub fn host_addr6(i: usize) -> Ipv6Addr {
    // The decimal digits read as hex digits: 11 → 0x11. Hosts are at most 50, so 11..=60.
    let n = 11 + i as u16;
    let group = (n / 10) * 16 + n % 10;
    Ipv6Addr::new(0xfd37, 0x157, 0, 0, 0, 0, 0, group)
}

/// Sysctls that make IPv6 usable at once in a fresh namespace: no duplicate address
/// detection (an address in DAD is "tentative" and cannot be bound for a second or more), for
/// interfaces that exist and those still to be created.
fn no_dad(ns: &Netns) -> Result<()> {
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{scope}.accept_dad"), "0")?;
    }
    Ok(())
}

/// The kernel threads whose name starts with `prefix` (NAPI threads are named
/// `napi/DEVICE-ID`).
fn napi_threads(prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .collect()
}

/// A new namespace with DAD off (see [`no_dad`]).
fn namespace(name: &str) -> Result<Netns> {
    let ns = Netns::create(name)?;
    no_dad(&ns)?;
    Ok(ns)
}

impl Topology {
    /// Builds the network. Nothing outside the new namespaces is touched.
    pub fn build(spec: &TopologySpec) -> Result<Self> {
        anyhow::ensure!(
            (1..=8).contains(&spec.isps.len()),
            "the lab supports 1 to 8 ISPs"
        );
        anyhow::ensure!(
            (1..=50).contains(&spec.lan_hosts),
            "the lab supports 1 to 50 LAN hosts"
        );
        let stem = unique_stem(NS_PREFIX);
        let router = namespace(&format!("{stem}-r"))?;
        let server = namespace(&format!("{stem}-s"))?;
        let mut topo = Topology {
            router,
            hosts: Vec::new(),
            isps: Vec::new(),
            server,
        };
        // Build into the partially-filled topology so a failure half-way still cleans up.
        topo.fill(&stem, spec)?;
        Ok(topo)
    }

    fn fill(&mut self, stem: &str, spec: &TopologySpec) -> Result<()> {
        let (router, server) = (&self.router, &self.server);
        router.ip(&["link", "add", LAN_IF, "type", "bridge"])?;
        router.ip(&["link", "set", LAN_IF, "up"])?;
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_LAN_ADDR}/24"),
            "dev",
            LAN_IF,
        ])?;
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_LAN_ADDR6}/64"),
            "dev",
            LAN_IF,
            "nodad",
        ])?;
        server.ip(&["addr", "add", &format!("{SERVER_ADDR}/32"), "dev", "lo"])?;
        server.ip(&[
            "addr",
            "add",
            &format!("{SERVER_ADDR6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        for h in 0..spec.lan_hosts {
            let host = add_host(stem, router, h)?;
            self.hosts.push(host);
        }
        for (i, s) in spec.isps.iter().enumerate() {
            let isp = add_isp(stem, router, server, i + 1, s)?;
            self.isps.push(isp);
        }
        // Like a DHCP client would: the first uplink's default route in the main table; for
        // IPv6 the same (what a router advertisement would install), unless ISP 1 advertises
        // and the route is left to the advertisements.
        router.ip(&[
            "route",
            "add",
            "default",
            "via",
            &gateway(1).to_string(),
            "dev",
            "wan1",
        ])?;
        if !spec.isps[0].router_adverts {
            router.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gateway6(1).to_string(),
                "dev",
                "wan1",
            ])?;
        }
        // A router forwards IPv6 (multiwan needs it, and the tests without multiwan need the
        // ISPs, not the router, to be what drops a ULA). Set after the interfaces exist, so
        // none is left out; with it on, the kernel ignores advertisements unless accept_ra=2.
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for (n, (isp, s)) in self.isps.iter_mut().zip(&spec.isps).enumerate() {
            if s.router_adverts {
                isp.radvd = Some(Radvd::start(&isp.ns, n + 1, s.router_lifetime_s)?);
            }
        }
        Ok(())
    }

    /// Makes every ISP take the router's packets in a kernel thread of its own, as a real
    /// network does. On a plain veth pair the receiving side runs inside the sender's system
    /// call (the kernel processes the frame in the softirq raised by the send, on the
    /// sender's time): every probe the router sends is charged with the ISP forwarding it,
    /// the server answering and the answer's way back. With GRO on `cpe` (so veth queues the
    /// frame to NAPI; `rx-udp-gro-forwarding` makes a socket's frames eligible, see
    /// `veth_skb_is_eligible_for_gro` in the kernel) and threaded NAPI, the ISP's side runs in
    /// a `napi/cpe-N` kernel thread instead, like a NIC handing frames to the wire and taking
    /// answers in an interrupt. The router's own side is untouched. Returns the new kernel
    /// threads' process ids, so their work can be measured too. Needs `ethtool`.
    pub fn isp_async_delivery(&self) -> Result<Vec<u32>> {
        let before = napi_threads("napi/cpe-");
        for isp in &self.isps {
            isp.ns
                .exec(
                    "ethtool",
                    &["-K", "cpe", "gro", "on", "rx-udp-gro-forwarding", "on"],
                )
                .context("ethtool on the ISP's side of the link")?;
            // `ip netns exec` mounts the namespace's own sysfs, where `cpe` is.
            isp.ns
                .exec("sh", &["-c", "echo 1 > /sys/class/net/cpe/threaded"])
                .context("threaded NAPI on the ISP's side of the link")?;
        }
        let new: Vec<u32> = napi_threads("napi/cpe-")
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if new.len() != self.isps.len() {
            bail!(
                "expected one new NAPI thread per ISP ({}), found {}",
                self.isps.len(),
                new.len()
            );
        }
        Ok(new)
    }

    /// The server's TCP/UDP endpoint.
    pub fn server_endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(SERVER_ADDR, SERVER_PORT)
    }

    /// The server's IPv6 TCP/UDP endpoint.
    pub fn server_endpoint6(&self) -> SocketAddrV6 {
        SocketAddrV6::new(SERVER_ADDR6, SERVER_PORT, 0, 0)
    }

    /// Both of the server's endpoints, IPv4 first: what the lab's server listens on.
    pub fn server_endpoints(&self) -> [SocketAddr; 2] {
        [
            self.server_endpoint().into(),
            self.server_endpoint6().into(),
        ]
    }

    /// The server's endpoint of one family.
    pub fn endpoint(&self, family: Family) -> SocketAddr {
        match family {
            Family::V4 => self.server_endpoint().into(),
            Family::V6 => self.server_endpoint6().into(),
        }
    }

    /// The router's (static) address of one family on uplink `i` (0-based).
    pub fn router_addr_of(&self, i: usize, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.isps[i].router_addr.into(),
            Family::V6 => self.isps[i].router_addr6.into(),
        }
    }

    /// Which uplink (0-based) an address seen by the server belongs to: for IPv4 the router's
    /// address on it; for IPv6 any address in the uplink's prefix 2001:db8:N::/64 (the static
    /// `2001:db8:N::253`, or an address the router took by SLAAC from ISP N's advertisements):
    /// ISP N forwards no other source and is the only way back to that prefix, so the prefix
    /// alone proves the uplink.
    pub fn isp_of(&self, seen: impl Into<IpAddr>) -> Option<usize> {
        match seen.into() {
            IpAddr::V4(a) => self.isps.iter().position(|i| i.router_addr == a),
            IpAddr::V6(a) => self
                .isps
                .iter()
                .position(|i| a.segments()[..4] == i.router_addr6.segments()[..4]),
        }
    }

    /// A config for this network: one uplink per ISP with the given weights, each checked
    /// by probing the server beyond the ISP (so an upstream cut is seen). Dual stack when
    /// [`ROUTER_IPV6`] is set, else IPv4 only.
    pub fn config(&self, method: &str, weights: &[u32]) -> String {
        self.config_with(method, weights, ROUTER_IPV6)
    }

    /// [`Self::config`] with the family switch explicit: with `dual_stack` every uplink also
    /// gets `gateway6` (`"auto"` where its ISP sends router advertisements, else the ISP's
    /// static `2001:db8:N::1`; `snat6` is left at its default, masquerade) and the server's
    /// IPv6 address as a second probe target, so each family's health is watched.
    pub fn config_with(&self, method: &str, weights: &[u32], dual_stack: bool) -> String {
        let mut t = format!("[lan]\ninterfaces = [\"{LAN_IF}\"]\n\n");
        for (i, isp) in self.isps.iter().enumerate() {
            let (gw6, targets) = if dual_stack {
                let gw = match isp.radvd {
                    Some(_) => "auto".to_string(),
                    None => isp.gateway6.to_string(),
                };
                (
                    format!("gateway6 = \"{gw}\"\n"),
                    format!("\"{SERVER_ADDR}\", \"{SERVER_ADDR6}\""),
                )
            } else {
                (String::new(), format!("\"{SERVER_ADDR}\""))
            };
            t += &format!(
                "[[uplink]]\nname = \"isp{}\"\ninterface = \"{}\"\ngateway = \"{}\"\n{gw6}weight = {}\n[uplink.check]\ntargets = [{targets}]\n\n",
                i + 1,
                isp.router_if,
                isp.gateway,
                weights.get(i).copied().unwrap_or(1)
            );
        }
        t += &format!("[balance]\nmethod = \"{method}\"\nlocal = true\n");
        t
    }

    /// Makes ISP `n` (0-based) lose everything beyond it, both families: its link and gateway
    /// stay up, packets to the internet vanish (blackhole routes in the ISP).
    pub fn cut_upstream(&self, n: usize) -> Result<()> {
        self.cut_upstream4(n)?;
        self.cut_upstream6(n)
    }

    /// Undoes [`Self::cut_upstream`] (both families).
    pub fn restore_upstream(&self, n: usize) -> Result<()> {
        self.restore_upstream4(n)?;
        self.restore_upstream6(n)
    }

    /// Cuts only ISP `n`'s (0-based) IPv4 path beyond it; IPv6 keeps working.
    pub fn cut_upstream4(&self, n: usize) -> Result<()> {
        self.isps[n]
            .ns
            .ip(&[
                "route",
                "replace",
                "blackhole",
                &format!("{SERVER_ADDR}/32"),
            ])
            .map(|_| ())
    }

    /// Undoes [`Self::cut_upstream4`].
    pub fn restore_upstream4(&self, n: usize) -> Result<()> {
        self.isps[n]
            .ns
            .ip(&[
                "route",
                "replace",
                &format!("{SERVER_ADDR}/32"),
                "via",
                &format!("172.16.{}.2", n + 1),
            ])
            .map(|_| ())
    }

    /// Cuts only ISP `n`'s (0-based) IPv6 path beyond it; IPv4 keeps working (a real ISP's
    /// IPv6 breaking on its own).
    pub fn cut_upstream6(&self, n: usize) -> Result<()> {
        self.isps[n]
            .ns
            .ip(&[
                "-6",
                "route",
                "replace",
                "blackhole",
                &format!("{SERVER_ADDR6}/128"),
            ])
            .map(|_| ())
    }

    /// Undoes [`Self::cut_upstream6`].
    pub fn restore_upstream6(&self, n: usize) -> Result<()> {
        self.isps[n]
            .ns
            .ip(&[
                "-6",
                "route",
                "replace",
                &format!("{SERVER_ADDR6}/128"),
                "via",
                &isp_server_side6(n + 1).to_string(),
            ])
            .map(|_| ())
    }

    /// Runs `multiwan ARGS` inside the router namespace with the given binary.
    pub fn multiwan(&self, bin: &Path, args: &[&str]) -> Result<String> {
        let mut c = self.router.command(bin);
        c.args(args);
        crate::netns::run(&mut c)
    }
}

/// ISP N's address on its link to the server, `2001:db8:ff:N::1`.
fn isp_inet6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xff, n as u16, 0, 0, 0, 1)
}

/// The server's address on its link to ISP N, `2001:db8:ff:N::2`.
fn isp_server_side6(n: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xff, n as u16, 0, 0, 0, 2)
}

/// LAN host `h` (0-based): its namespace on a port of the router's bridge, both addresses,
/// default routes via the router.
fn add_host(stem: &str, router: &Netns, h: usize) -> Result<Host> {
    let ns = namespace(&format!("{stem}-h{}", h + 1))?;
    let port = format!("lanp{}", h + 1);
    veth(router, &port, &ns, "eth0")?;
    router.ip(&["link", "set", &port, "master", LAN_IF])?;
    let addr = host_addr(h);
    let addr6 = host_addr6(h);
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{addr6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &ROUTER_LAN_ADDR.to_string(),
    ])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &ROUTER_LAN_ADDR6.to_string(),
        "dev",
        "eth0",
    ])?;
    Ok(Host { ns, addr, addr6 })
}

/// ISP number `n` (1-based): its namespace, the router's `wanN` link to it with addresses, its
/// link to the server, anti-spoofing for both families and optional shaping.
fn add_isp(stem: &str, router: &Netns, server: &Netns, n: usize, s: &IspSpec) -> Result<Isp> {
    let ns = namespace(&format!("{stem}-i{n}"))?;
    // An ISP keeps its static IPv6 addresses when its side of the link is set down and up
    // (the benchmarks' and tests' carrier loss): by default the kernel deletes every IPv6
    // address of an interface set down, which IPv4 keeps, and the ISP's gateway would never
    // come back. The router keeps the kernel's default.
    for scope in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{scope}.keep_addr_on_down"), "1")?;
    }
    let wan = format!("wan{n}");
    veth(router, &wan, &ns, "cpe")?;
    router.ip(&[
        "addr",
        "add",
        &format!("{}/24", router_addr(n)),
        "dev",
        &wan,
    ])?;
    ns.ip(&["addr", "add", &format!("{}/24", gateway(n)), "dev", "cpe"])?;
    let srv_if = format!("isp{n}");
    veth(&ns, "inet", server, &srv_if)?;
    ns.ip(&["addr", "add", &format!("172.16.{n}.1/30"), "dev", "inet"])?;
    server.ip(&["addr", "add", &format!("172.16.{n}.2/30"), "dev", &srv_if])?;
    ns.ip(&[
        "route",
        "add",
        &format!("{SERVER_ADDR}/32"),
        "via",
        &format!("172.16.{n}.2"),
    ])?;
    server.ip(&[
        "route",
        "add",
        &format!("10.37.{n}.0/24"),
        "via",
        &format!("172.16.{n}.1"),
    ])?;
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    // Anti-spoofing like a real ISP: strict reverse-path filter on the customer side.
    ns.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
    ns.sysctl("net.ipv4.conf.cpe.rp_filter", "1")?;
    add_isp6(&ns, router, server, n)?;
    if let Some(rate) = s.rate_mbit {
        shape(&ns, rate)?;
    }
    Ok(Isp {
        ns,
        router_if: wan,
        router_addr: router_addr(n),
        gateway: gateway(n),
        router_addr6: router_addr6(n),
        gateway6: gateway6(n),
        rate_mbit: s.rate_mbit,
        radvd: None,
    })
}

/// The IPv6 half of ISP `n`: addresses on both of its links, the route to the server's
/// internet address, the server's route back to the customer prefix (and to nothing else
/// through this ISP), forwarding, and BCP 38.
fn add_isp6(ns: &Netns, router: &Netns, server: &Netns, n: usize) -> Result<()> {
    let wan = format!("wan{n}");
    let srv_if = format!("isp{n}");
    router.ip(&[
        "addr",
        "add",
        &format!("{}/64", router_addr6(n)),
        "dev",
        &wan,
        "nodad",
    ])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", gateway6(n)),
        "dev",
        "cpe",
        "nodad",
    ])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", isp_inet6(n)),
        "dev",
        "inet",
        "nodad",
    ])?;
    server.ip(&[
        "addr",
        "add",
        &format!("{}/64", isp_server_side6(n)),
        "dev",
        &srv_if,
        "nodad",
    ])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        &format!("{SERVER_ADDR6}/128"),
        "via",
        &isp_server_side6(n).to_string(),
    ])?;
    // `src`: what the server opens (the inbound phase) comes from its internet address, which
    // every ISP routes, rather than from its side of one ISP link.
    server.ip(&[
        "-6",
        "route",
        "add",
        &prefix6(n),
        "via",
        &isp_inet6(n).to_string(),
        "src",
        &SERVER_ADDR6.to_string(),
    ])?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    // There is no rp_filter for IPv6: drop in prerouting (so both forwarded packets and those
    // to the ISP itself) any source from the customer that is not the customer's prefix.
    // Link-local sources and `::` stay allowed: neighbour discovery, router solicitations and
    // probes of a link-local gateway use them, and none of them can be forwarded.
    ns.nft(&bcp38_ruleset(n))
        .context("loading the ISP's IPv6 source filter")?;
    Ok(())
}

/// The nft table with which ISP `n` drops IPv6 sources outside its customer prefix, with a
/// counter the tests read to prove it was this filter that dropped a packet.
fn bcp38_ruleset(n: usize) -> String {
    format!(
        "table ip6 bcp38 {{\n chain prerouting {{\n  type filter hook prerouting priority filter; policy accept;\n  iifname \"cpe\" ip6 saddr != {{ ::, fe80::/10, {} }} counter drop\n }}\n}}\n",
        prefix6(n)
    )
}

/// How many packets an ISP's BCP 38 rule has dropped so far (IPv6 sources from its customer
/// outside the customer prefix).
pub fn bcp38_dropped(isp: &Isp) -> Result<u64> {
    let out = isp.ns.exec("nft", &["list", "table", "ip6", "bcp38"])?;
    let n = out
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no counter in the ISP's bcp38 table:\n{out}"))?;
    Ok(n)
}

/// `tbf` shaping of both of an ISP's links to `rate` Mbit/s.
fn shape(ns: &Netns, rate: u32) -> Result<()> {
    for dev in ["cpe", "inet"] {
        ns.exec(
            "tc",
            &[
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &format!("{rate}mbit"),
                "burst",
                "64kb",
                "latency",
                "100ms",
            ],
        )
        .context("shaping with tbf")?;
    }
    Ok(())
}

/// An ISP's `radvd`, with its config, pid file and log in a private directory. The namespace's
/// removal stops it (it sends a last advertisement with lifetime 0 on SIGTERM); dropping this
/// kills it if it still runs and reaps it.
#[derive(Debug)]
pub struct Radvd {
    child: Child,
    dir: TempDir,
    /// The default route lifetime it advertises (s).
    lifetime: u16,
}

impl Radvd {
    /// Starts radvd in ISP `n`'s namespace advertising 2001:db8:N::/64 on `cpe` and a default
    /// route for `lifetime` seconds (30 when `None`); returns once it wrote its pid file (it
    /// is then sending), or fails with its log.
    fn start(ns: &Netns, n: usize, lifetime: Option<u16>) -> Result<Self> {
        let lifetime = lifetime.unwrap_or(30);
        let dir = private_dir("radvd")?;
        let conf = dir.path().join("radvd.conf");
        let pid = dir.path().join("radvd.pid");
        let log = dir.path().join("radvd.log");
        // Every 3-4 s (radvd's fastest without Mobile IPv6), so a router that starts taking
        // advertisements learns its gateway within seconds.
        std::fs::write(
            &conf,
            format!(
                "interface cpe {{\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 4;\n  AdvDefaultLifetime {lifetime};\n  prefix {} {{\n    AdvOnLink on;\n    AdvAutonomous on;\n  }};\n}};\n",
                prefix6(n)
            ),
        )?;
        let mut c = ns.command("radvd");
        c.arg("--nodaemon")
            .arg("--config")
            .arg(&conf)
            .arg("--pidfile")
            .arg(&pid)
            .args(["--logmethod", "stderr"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = c
            .spawn()
            .context("starting radvd (install it: scripts/deps.sh does for the tests)")?;
        let mut r = Self {
            child,
            dir,
            lifetime,
        };
        let start = Instant::now();
        while !pid.exists() {
            let exited = r.child.try_wait()?;
            if exited.is_some() || start.elapsed() > Duration::from_secs(10) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("radvd did not start in ISP {n} ({exited:?}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(r)
    }

    /// What radvd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("radvd.log")).unwrap_or_default()
    }

    /// Stops radvd as its service manager would (SIGTERM): it sends its last advertisement,
    /// router lifetime 0, which withdraws the default route through it.
    fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let start = Instant::now();
        while self.child.try_wait()?.is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("radvd did not stop within 10 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Isp {
    /// The ISP's number N (its router interface is `wanN`).
    fn number(&self) -> Result<usize> {
        self.router_if
            .strip_prefix("wan")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("ISP interface {} is not wanN", self.router_if))
    }

    /// The ISP's link-local addresses on `cpe`, the router's side of the link.
    pub fn link_locals(&self) -> Result<Vec<Ipv6Addr>> {
        let out = self
            .ns
            .ip(&["-6", "-o", "addr", "show", "dev", "cpe", "scope", "link"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == "inet6")?;
                words.next()?.split('/').next()?.parse().ok()
            })
            .collect())
    }

    /// The ISP swaps its advertising router for one at `link_local`, as a replaced box does:
    /// radvd stops — with `goodbye`, as its service manager stops it (its last advertisement
    /// withdraws the default route through the old address), else killed like a box that
    /// loses power (the route stays until its lifetime ends) — `cpe` takes `link_local` in
    /// place of its link-local addresses, and radvd starts again, advertising from the new
    /// one. Only for an ISP that sends advertisements ([`IspSpec::router_adverts`]).
    pub fn replace_advertising_router(
        &mut self,
        link_local: Ipv6Addr,
        goodbye: bool,
    ) -> Result<()> {
        let n = self.number()?;
        let radvd = self
            .radvd
            .take()
            .with_context(|| format!("ISP {n} sends no router advertisements"))?;
        let lifetime = Some(radvd.lifetime);
        if goodbye {
            radvd.stop()?;
        } else {
            drop(radvd);
        }
        let old = self.link_locals()?;
        let new = format!("{link_local}/64");
        self.ns
            .ip(&["-6", "addr", "add", &new, "dev", "cpe", "nodad"])?;
        for a in old.iter().filter(|a| **a != link_local) {
            self.ns
                .ip(&["-6", "addr", "del", &format!("{a}/64"), "dev", "cpe"])?;
        }
        self.radvd = Some(Radvd::start(&self.ns, n, lifetime)?);
        Ok(())
    }
}

impl Drop for Radvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_addressing_plan() {
        assert_eq!(SERVER_ADDR6.to_string(), "2001:db8:ff::100");
        assert_eq!(ROUTER_LAN_ADDR6.to_string(), "fd37:157::253");
        assert_eq!(router_addr6(2).to_string(), "2001:db8:2::253");
        assert_eq!(gateway6(3).to_string(), "2001:db8:3::1");
        assert_eq!(prefix6(1), "2001:db8:1::/64");
        assert_eq!(isp_inet6(2).to_string(), "2001:db8:ff:2::1");
        assert_eq!(isp_server_side6(2).to_string(), "2001:db8:ff:2::2");
        // The same digits as the IPv4 host addresses.
        for (i, want) in [(0, "11"), (1, "12"), (9, "20"), (49, "60")] {
            assert_eq!(host_addr(i).to_string(), format!("192.168.157.{want}"));
            assert_eq!(host_addr6(i).to_string(), format!("fd37:157::{want}"));
        }
    }

    #[test]
    fn the_isp_filter_names_only_its_customer_prefix() {
        let r = bcp38_ruleset(2);
        assert!(
            r.contains(
                "iifname \"cpe\" ip6 saddr != { ::, fe80::/10, 2001:db8:2::/64 } counter drop"
            ),
            "{r}"
        );
        assert!(r.contains("hook prerouting"), "{r}");
    }
}
