//! Sections 1b and 2b of the benchmarks: what multiwan costs in forwarding IPv6, against
//! plain IPv6 forwarding and a one-uplink NAT66 gateway — the same ratios as sections 1 and 2
//! for IPv4. The seed's iptables script has no IPv6, so there is no (b) row. The multiwan row
//! needs the router's IPv6 support and is measured only with
//! [`ROUTER_IPV6`](crate::topology::ROUTER_IPV6); the baselines are measured in every run.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV6};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{apply, median, Section, SEED_003_CONFIG, SINK_PORT};
use crate::demo::bulk_to;
use crate::topology::{
    gateway6, router_addr6, IspSpec, Topology, TopologySpec, LAN_PREFIX6, ROUTER_IPV6, SERVER_ADDR6,
};
use crate::traffic::{self, Server, UdpSink};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Setup6 {
    Plain,
    Nat,
    Multiwan,
}

impl Setup6 {
    fn label(self) -> &'static str {
        match self {
            Setup6::Plain => "a: plain IPv6 forwarding, one default route",
            Setup6::Nat => "a': one uplink with NAT66 masquerade",
            Setup6::Multiwan => "c: multiwan (same policy, dual stack)",
        }
    }
}

/// The seed-003 policy, dual stack: each uplink's IPv6 gateway and its own address as the
/// NAT66 source.
fn seed_003_dual() -> String {
    let mut t = SEED_003_CONFIG.to_string();
    for n in 1..=2 {
        let snat = format!("snat = \"10.37.{n}.253\"\n");
        t = t.replace(
            &snat,
            &format!(
                "{snat}gateway6 = \"{}\"\nsnat6 = \"{}\"\n",
                gateway6(n),
                router_addr6(n)
            ),
        );
    }
    t
}

/// The lab's network with the ISPs' IPv6 source filters removed and routes to the LAN's ULA
/// prefix added (ISP 1 carries the way back from the server), so plain IPv6 forwarding works
/// unNATed. Every setup runs on this same network.
fn forwarding_topology6() -> Result<Topology> {
    let topo = Topology::build(&TopologySpec {
        isps: vec![IspSpec::default(); 2],
        lan_hosts: 1,
    })?;
    for (i, isp) in topo.isps.iter().enumerate() {
        isp.ns.nft("delete table ip6 bcp38\n")?;
        isp.ns.ip(&[
            "-6",
            "route",
            "add",
            LAN_PREFIX6,
            "via",
            &router_addr6(i + 1).to_string(),
        ])?;
    }
    topo.server
        .ip(&["-6", "route", "add", LAN_PREFIX6, "via", "2001:db8:ff:1::1"])?;
    let h = &topo.hosts[0].ns;
    // Shared by both families: many short connections need ports and reuse.
    h.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    h.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    Ok(topo)
}

/// Sets `topo`'s router up as `setup` does (the lab's router already forwards IPv6).
fn prepare6(setup: Setup6, topo: &Topology, bin: &Path) -> Result<()> {
    match setup {
        Setup6::Plain => {}
        Setup6::Nat => {
            topo.router.nft(
                "table ip6 nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"wan1\" masquerade\n }\n}\n",
            )?;
        }
        Setup6::Multiwan => apply(topo, bin, &seed_003_dual())?,
    }
    Ok(())
}

/// Bulk TCP Mbit/s, 64-byte UDP packets per second, connections per second: one round of
/// `secs` each, over IPv6.
fn measure6(topo: &Topology, secs: u64) -> Result<(f64, f64, f64)> {
    let ep: SocketAddr = topo.server_endpoint6().into();
    let server = Server::start(&topo.server, ep)?;
    let to: SocketAddr = SocketAddrV6::new(SERVER_ADDR6, SINK_PORT, 0, 0).into();
    let sink = UdpSink::start(&topo.server, to)?;
    let b = bulk_to(topo, ep, 2, secs * 1000 + 500)?;
    let before = sink.count();
    let d = Duration::from_secs(secs);
    let t0 = Instant::now();
    topo.hosts[0]
        .ns
        .spawn(move || traffic::udp_flood(to, 64, d))?
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    std::thread::sleep(Duration::from_millis(100));
    let pps = (sink.count() - before) as f64 / t0.elapsed().as_secs_f64();
    let n = topo.hosts[0]
        .ns
        .spawn(move || traffic::connection_rate(ep, 4, d))?
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    drop(server);
    drop(sink);
    Ok((b.aggregate_mbit(), pps, n as f64 / d.as_secs_f64()))
}

/// Sections 1b and 2b: IPv6 throughput, packets per second, connection rate.
pub(super) fn forwarding6(bin: &Path, quick: bool) -> Result<(Section, Section)> {
    let rounds = if quick { 1 } else { 5 };
    let secs = if quick { 1 } else { 3 };
    let mut setups = vec![Setup6::Plain, Setup6::Nat];
    if ROUTER_IPV6 {
        setups.push(Setup6::Multiwan);
    }
    let mut got: BTreeMap<Setup6, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for round in 0..rounds {
        for s in &setups {
            print!(
                "\r   IPv6 forwarding: round {}/{rounds}, {:<45}",
                round + 1,
                s.label()
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let topo = forwarding_topology6()?;
            prepare6(*s, &topo, bin)?;
            got.entry(*s).or_default().push(measure6(&topo, secs)?);
        }
    }
    println!();
    let med = |s: Setup6, pick: fn(&(f64, f64, f64)) -> f64| {
        let v: Vec<f64> = got.get(&s).into_iter().flatten().map(pick).collect();
        median(&v)
    };
    let mut f = Section::new(
        "1b. IPv6 forwarding cost",
        &format!(
            "As section 1, over IPv6: bulk TCP (2 streams) and 64-byte UDP packets per second from a \
             LAN host (a ULA) through the router to the server's IPv6 address; median of {rounds} rounds \
             of {secs} s. Ratios against (a) plain IPv6 forwarding (the ISPs route the LAN's ULA prefix \
             for this section only) and (a') a one-uplink NAT66 gateway."
        ),
        &["setup", "TCP Mbit/s", "ratio to a", "ratio to a'", "UDP kpps", "ratio to a", "ratio to a'"],
    );
    let mut c = Section::new(
        "2b. IPv6 new-connection rate",
        &format!(
            "As section 2, over IPv6: TCP connections opened and closed per second by 4 client \
             threads, median of {rounds} rounds of {secs} s."
        ),
        &["setup", "connections/s", "ratio to a", "ratio to a'"],
    );
    let (a, n) = (Setup6::Plain, Setup6::Nat);
    for s in &setups {
        let (t, p, k) = (med(*s, |m| m.0), med(*s, |m| m.1), med(*s, |m| m.2));
        f.row(vec![
            s.label().into(),
            format!("{t:.0}"),
            format!("{:.3}", t / med(a, |m| m.0)),
            format!("{:.3}", t / med(n, |m| m.0)),
            format!("{:.0}", p / 1000.0),
            format!("{:.3}", p / med(a, |m| m.1)),
            format!("{:.3}", p / med(n, |m| m.1)),
        ]);
        c.row(vec![
            s.label().into(),
            format!("{k:.0}"),
            format!("{:.3}", k / med(a, |m| m.2)),
            format!("{:.3}", k / med(n, |m| m.2)),
        ]);
    }
    if ROUTER_IPV6 {
        let m = Setup6::Multiwan;
        let (t, p) = (
            med(m, |v| v.0) / med(n, |v| v.0),
            med(m, |v| v.1) / med(n, |v| v.1),
        );
        f.note(format!(
            "goal c/a' ≥ 0.99 for bulk TCP and ≥ 0.95 for UDP packets per second, as for IPv4: {} (TCP {t:.3}, UDP {p:.3})",
            if t >= 0.99 && p >= 0.95 { "met" } else { "missed" }
        ));
    } else {
        let why = "c: not measured — the router under test has no IPv6 support yet (the lab's topology::ROUTER_IPV6 is off)";
        f.note(why);
        c.note(why);
    }
    f.note("the seed's iptables script (b) is IPv4 only; it has no IPv6 row");
    Ok((f, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dual_stack_seed_config_names_both_gateways_and_sources() {
        let t = seed_003_dual();
        for n in 1..=2 {
            assert!(
                t.contains(&format!("gateway6 = \"2001:db8:{n}::1\"")),
                "{t}"
            );
            assert!(t.contains(&format!("snat6 = \"2001:db8:{n}::253\"")), "{t}");
        }
        if ROUTER_IPV6 {
            multiwan_core::load("seed.toml", &t).expect("loads");
        }
    }
}
