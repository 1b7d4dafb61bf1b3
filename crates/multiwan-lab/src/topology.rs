//! The virtual network shared by `multiwan-lab` and the namespace tests:
//!
//! ```text
//!  host1 ─┐                        ┌─ isp1 ─┐
//!  host2 ─┼─ lan0 [ router ] wan1 ─┘        ├─ server 172.16.0.100
//!  host3 ─┘  192.168.157.253  wan2 ── isp2 ─┘
//! ```
//! LAN 192.168.157.0/24 (hosts .11, .12, …) on a bridge `lan0` in the router. Uplink N is
//! `wanN` with 10.37.N.253/24, gateway 10.37.N.1 in namespace ispN, which reaches the server
//! over 172.16.N.0/30. Each ISP runs strict reverse-path filtering and has no route back to
//! anything but its own customer subnet, so — like a real ISP — it drops packets whose source
//! is not its customer's address: a wrong SNAT or a reply on the wrong uplink is lost.
//! Optional `tbf` shaping on the ISP side emulates each uplink's capacity in both directions.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use anyhow::{Context, Result};

use crate::netns::{unique_stem, veth, Netns};

/// The server's address "on the internet".
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 100);
/// TCP and UDP port of the test server.
pub const SERVER_PORT: u16 = 7000;
/// Router address on the LAN.
pub const ROUTER_LAN_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 157, 253);
/// LAN interface name in the router.
pub const LAN_IF: &str = "lan0";
/// Prefix of every namespace name created by the lab and the tests.
pub const NS_PREFIX: &str = "mwlab";

/// One ISP.
#[derive(Debug, Clone, Copy, Default)]
pub struct IspSpec {
    /// Shape both directions to this many Mbit/s.
    pub rate_mbit: Option<u32>,
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
    pub rate_mbit: Option<u32>,
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
        let router = Netns::create(&format!("{stem}-r"))?;
        let server = Netns::create(&format!("{stem}-s"))?;
        let mut isps = Vec::new();
        let mut hosts = Vec::new();
        // Build into a partially-filled topology so a failure half-way still cleans up.
        let result = (|| -> Result<()> {
            router.ip(&["link", "add", LAN_IF, "type", "bridge"])?;
            router.ip(&["link", "set", LAN_IF, "up"])?;
            router.ip(&[
                "addr",
                "add",
                &format!("{ROUTER_LAN_ADDR}/24"),
                "dev",
                LAN_IF,
            ])?;
            server.ip(&["addr", "add", &format!("{SERVER_ADDR}/32"), "dev", "lo"])?;
            for h in 0..spec.lan_hosts {
                let ns = Netns::create(&format!("{stem}-h{}", h + 1))?;
                let port = format!("lanp{}", h + 1);
                veth(&router, &port, &ns, "eth0")?;
                router.ip(&["link", "set", &port, "master", LAN_IF])?;
                let addr = Ipv4Addr::new(192, 168, 157, 11 + h as u8);
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
                ns.ip(&[
                    "route",
                    "add",
                    "default",
                    "via",
                    &ROUTER_LAN_ADDR.to_string(),
                ])?;
                hosts.push(Host { ns, addr });
            }
            for (i, s) in spec.isps.iter().enumerate() {
                isps.push(add_isp(&stem, &router, &server, i + 1, s)?);
            }
            // Like a DHCP client would: the first uplink's default route in the main table.
            router.ip(&[
                "route",
                "add",
                "default",
                "via",
                &gateway(1).to_string(),
                "dev",
                "wan1",
            ])?;
            Ok(())
        })();
        let topo = Topology {
            router,
            hosts,
            isps,
            server,
        };
        result.map(|()| topo)
    }

    /// The server's TCP/UDP endpoint.
    pub fn server_endpoint(&self) -> SocketAddrV4 {
        SocketAddrV4::new(SERVER_ADDR, SERVER_PORT)
    }

    /// Which uplink (0-based) an address seen by the server belongs to.
    pub fn isp_of(&self, seen: Ipv4Addr) -> Option<usize> {
        self.isps.iter().position(|i| i.router_addr == seen)
    }

    /// A config for this network: one uplink per ISP with the given weights, each checked
    /// by probing the server beyond the ISP (so an upstream cut is seen).
    pub fn config(&self, method: &str, weights: &[u32]) -> String {
        let mut t = format!("[lan]\ninterfaces = [\"{LAN_IF}\"]\n\n");
        for (i, isp) in self.isps.iter().enumerate() {
            t += &format!(
                "[[uplink]]\nname = \"isp{}\"\ninterface = \"{}\"\ngateway = \"{}\"\nweight = {}\n[uplink.check]\ntargets = [\"{SERVER_ADDR}\"]\n\n",
                i + 1,
                isp.router_if,
                isp.gateway,
                weights.get(i).copied().unwrap_or(1)
            );
        }
        t += &format!("[balance]\nmethod = \"{method}\"\nlocal = true\n");
        t
    }

    /// Makes ISP `n` (0-based) lose everything beyond it: its link and gateway stay up,
    /// packets to the internet vanish (a blackhole route in the ISP).
    pub fn cut_upstream(&self, n: usize) -> Result<()> {
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

    /// Undoes [`Self::cut_upstream`].
    pub fn restore_upstream(&self, n: usize) -> Result<()> {
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

    /// Runs `multiwan ARGS` inside the router namespace with the given binary.
    pub fn multiwan(&self, bin: &Path, args: &[&str]) -> Result<String> {
        let mut c = self.router.command(bin);
        c.args(args);
        crate::netns::run(&mut c)
    }
}

/// ISP number `n` (1-based): its namespace, the router's `wanN` link to it with addresses, its
/// link to the server, anti-spoofing and optional shaping.
fn add_isp(stem: &str, router: &Netns, server: &Netns, n: usize, s: &IspSpec) -> Result<Isp> {
    let ns = Netns::create(&format!("{stem}-i{n}"))?;
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
    if let Some(rate) = s.rate_mbit {
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
    }
    Ok(Isp {
        ns,
        router_if: wan,
        router_addr: router_addr(n),
        gateway: gateway(n),
        rate_mbit: s.rate_mbit,
    })
}
