//! The lab's IPv6 network on its own, without multiwan: the control for every IPv6 namespace
//! test. Like the IPv4 ISPs, the IPv6 ISPs drop what a wrong (or missing) NAT66 or a reply on
//! the wrong uplink sends them — proved by their drop counter, not just by a failed connection,
//! so a test of multiwan's IPv6 support that passes cannot pass because the path was open
//! anyway. The router's own uplink addresses reach the server over their own ISP once routed
//! there; each family's upstream can be cut alone; router advertisements reach the router
//! only with `accept_ra = 2` once it forwards. Every namespace is removed when its test ends.

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{count, Lab};
use multiwan_lab::topology::{
    bcp38_dropped, gateway6, host_addr6, router_addr, router_addr6, IspSpec, TopologySpec,
    ROUTER_IPV6, ROUTER_LAN_ADDR6, SERVER_ADDR6,
};
use multiwan_lab::traffic;

const T: Duration = Duration::from_millis(700);

/// A TCP exchange from one of the router's own addresses to the server's address of the
/// same family: the source the server saw.
fn from_router(lab: &Lab, src: IpAddr) -> Option<IpAddr> {
    let ep: SocketAddr = match src {
        IpAddr::V4(_) => lab.topo.server_endpoint().into(),
        IpAddr::V6(_) => lab.topo.server_endpoint6().into(),
    };
    lab.topo
        .router
        .spawn(move || traffic::tcp_hello_from_ip(src, ep, T).ok())
        .expect("spawn")
        .join()
        .expect("join")
}

/// Masquerade to wan1's address for IPv6, as the simplest correct NAT66 would: the control
/// that shows the path itself works.
fn masquerade6_over_wan1(lab: &Lab) {
    lab.topo
        .router
        .nft(
            "table ip6 labnat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"wan1\" masquerade\n }\n}\n",
        )
        .expect("nat66");
}

#[test]
fn ipv6_isps_drop_foreign_sources_without_multiwan() {
    let lab = Lab::new(2, 1);
    let isp1 = &lab.topo.isps[0];
    // The LAN's ULA leaves unNATed over the main default (wan1): ISP 1's filter drops it.
    let before = bcp38_dropped(isp1).expect("counter");
    assert_eq!(lab.tcp6_from_host(0, 2), vec![None, None], "TCP from a ULA");
    assert_eq!(lab.udp6_from_host(0, 2), vec![None, None], "UDP from a ULA");
    assert!(
        !lab.ping_from_host(0, SERVER_ADDR6.into(), T),
        "ICMPv6 echo from a ULA"
    );
    let dropped = bcp38_dropped(isp1).expect("counter") - before;
    assert!(
        dropped >= 5,
        "ISP 1's BCP 38 rule, not the router, must be what drops the ULA ({dropped} drops)"
    );
    assert!(lab.server.stats6().is_empty(), "{:?}", lab.server.stats6());

    // An inbound connection to wan2's address is answered over the main default (wan1), with
    // wan2's address as source: ISP 1 drops it. To wan1's address it works (the control).
    let listener = lab
        .topo
        .router
        .spawn(|| std::net::TcpListener::bind("[::]:7100"))
        .expect("spawn")
        .join()
        .expect("join")
        .expect("bind");
    let inbound = |addr: Ipv6Addr| {
        let target = SocketAddr::new(addr.into(), 7100);
        lab.topo
            .server
            .spawn(move || std::net::TcpStream::connect_timeout(&target, T).is_ok())
            .expect("spawn")
            .join()
            .expect("join")
    };
    let before = bcp38_dropped(isp1).expect("counter");
    assert!(!inbound(router_addr6(2)), "ISP 1 must drop wan2's replies");
    assert!(
        bcp38_dropped(isp1).expect("counter") > before,
        "dropped by ISP 1's filter"
    );
    assert!(
        inbound(router_addr6(1)),
        "inbound on wan1 is answered on wan1"
    );
    drop(listener);

    // With a NAT66 to wan1 the same LAN traffic gets through, seen as wan1's address: the
    // drops above were the missing NAT's, not a broken path.
    masquerade6_over_wan1(&lab);
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!(count(&v, 0), 4, "{v:?}");
    let u = lab.udp6_from_host(0, 2);
    assert_eq!(count(&u, 0), 2, "{u:?}");
    assert!(lab.ping_from_host(0, SERVER_ADDR6.into(), Duration::from_secs(2)));
    let wan1 = IpAddr::from(router_addr6(1));
    let all = lab.server.stats_when(Duration::from_secs(5), |s| {
        s.get(&wan1).is_some_and(|p| p.echoes >= 1)
    });
    let seen: Vec<Ipv6Addr> = lab.server.stats6().keys().copied().collect();
    assert_eq!(seen, vec![router_addr6(1)]);
    let s = all[&wan1];
    assert_eq!((s.tcp_conns, s.udp_msgs, s.echoes), (4, 2, 1), "{s:?}");
}

#[test]
fn router_addresses_reach_the_server_over_their_own_isp() {
    let lab = Lab::new(2, 1);
    // The main table's default is ISP 1's: wan1's address gets through, wan2's leaves over
    // wan1 and is dropped there.
    assert_eq!(
        from_router(&lab, router_addr6(1).into()),
        Some(router_addr6(1).into())
    );
    let before = bcp38_dropped(&lab.topo.isps[0]).expect("counter");
    assert_eq!(from_router(&lab, router_addr6(2).into()), None);
    assert!(bcp38_dropped(&lab.topo.isps[0]).expect("counter") > before);
    // Routed by source, as multiwan does for the router's own addresses, each address gets
    // through over its own ISP, and the server tells them apart.
    let r = &lab.topo.router;
    r.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gateway6(2).to_string(),
        "dev",
        "wan2",
        "table",
        "102",
    ])
    .expect("route");
    r.ip(&[
        "-6",
        "rule",
        "add",
        "from",
        &router_addr6(2).to_string(),
        "table",
        "102",
    ])
    .expect("rule");
    for n in 1..=2 {
        let seen = from_router(&lab, router_addr6(n).into()).expect("reaches the server");
        assert_eq!(seen, IpAddr::from(router_addr6(n)));
        assert_eq!(lab.topo.isp_of(seen), Some(n - 1));
    }
    // isp_of knows each uplink's prefix, and nothing else.
    assert_eq!(
        lab.topo
            .isp_of("2001:db8:2::1234".parse::<Ipv6Addr>().expect("addr")),
        Some(1)
    );
    assert_eq!(lab.topo.isp_of(ROUTER_LAN_ADDR6), None);
    assert_eq!(lab.topo.isp_of(host_addr6(0)), None);
}

#[test]
fn each_familys_upstream_can_be_cut_alone() {
    let lab = Lab::new(1, 1);
    let (v4, v6): (IpAddr, IpAddr) = (router_addr(1).into(), router_addr6(1).into());
    let works = |a: IpAddr| from_router(&lab, a) == Some(a);
    assert!(works(v4) && works(v6), "both families work before the cuts");
    lab.cut_upstream6(0);
    assert!(works(v4) && !works(v6), "only IPv6 is cut");
    lab.restore_upstream6(0);
    assert!(works(v4) && works(v6), "IPv6 restored");
    lab.cut_upstream4(0);
    assert!(!works(v4) && works(v6), "only IPv4 is cut");
    lab.restore_upstream4(0);
    lab.cut_upstream(0);
    assert!(!works(v4) && !works(v6), "both cut");
    lab.restore_upstream(0);
    assert!(works(v4) && works(v6), "both restored");
}

/// The kernel's trap, shown on the lab's network: with forwarding on, an interface ignores
/// router advertisements unless `accept_ra = 2`; then it learns the ISP's link-local address
/// as its default gateway and an address by SLAAC, and the route carries traffic.
#[test]
fn router_advertisements_reach_a_forwarding_router_only_with_accept_ra_2() {
    let lab = Lab::with_spec(TopologySpec {
        isps: vec![
            IspSpec {
                router_adverts: true,
                ..Default::default()
            },
            IspSpec::default(),
        ],
        lan_hosts: 1,
    });
    let r = &lab.topo.router;
    let ra_default = || {
        r.ip(&["-6", "route", "show", "default", "dev", "wan1"])
            .expect("routes")
    };
    let isp_ll = lab.topo.isps[0]
        .ns
        .ip(&["-6", "addr", "show", "dev", "cpe", "scope", "link"])
        .expect("addr");
    let isp_ll = isp_ll
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("the ISP's link-local address")
        .to_string();
    assert_eq!(
        r.read_sysctl("net.ipv6.conf.wan1.forwarding")
            .expect("sysctl"),
        "1"
    );
    // Longer than radvd's longest interval (4 s): at least one advertisement arrived.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(ra_default().trim(), "", "ignored while accept_ra = 1");
    r.sysctl("net.ipv6.conf.wan1.accept_ra", "2")
        .expect("accept_ra");
    let start = Instant::now();
    while !ra_default().contains(&isp_ll) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no default route via {isp_ll} learnt: {}\nradvd: {}",
            ra_default(),
            lab.topo.isps[0]
                .radvd
                .as_ref()
                .map(|d| d.log())
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ra_default().contains("proto ra"), "{}", ra_default());
    // SLAAC gave wan1 an address in ISP 1's prefix beside its static one.
    let start = Instant::now();
    loop {
        let addrs = r
            .ip(&["-6", "addr", "show", "dev", "wan1", "scope", "global"])
            .expect("addrs");
        let slaac = addrs.split_whitespace().any(|w| {
            w.starts_with("2001:db8:1:") && !w.starts_with(&format!("{}/", router_addr6(1)))
        });
        if slaac {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no SLAAC address: {addrs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        from_router(&lab, router_addr6(1).into()),
        Some(router_addr6(1).into()),
        "the advertised route carries traffic"
    );
}

/// The generated config: IPv4 only unless dual stack is asked for; dual stack names each
/// ISP's gateway (`auto` where it advertises) and probes the server's IPv6 address too.
#[test]
fn the_generated_config_has_a_family_switch() {
    let lab = Lab::with_spec(TopologySpec {
        isps: vec![
            IspSpec::default(),
            IspSpec {
                router_adverts: true,
                ..Default::default()
            },
        ],
        lan_hosts: 1,
    });
    let v4 = lab.topo.config_with("round-robin", &[1, 1], false);
    assert!(!v4.contains("gateway6") && !v4.contains("2001:db8"), "{v4}");
    multiwan_core::load("lab.toml", &v4).expect("the IPv4 config loads");
    let dual = lab.topo.config_with("round-robin", &[1, 1], true);
    assert!(dual.contains("gateway6 = \"2001:db8:1::1\""), "{dual}");
    assert!(dual.contains("gateway6 = \"auto\""), "{dual}");
    assert!(
        dual.contains(&format!("targets = [\"172.16.0.100\", \"{SERVER_ADDR6}\"]")),
        "{dual}"
    );
    assert_eq!(lab.topo.config("round-robin", &[1, 1]) == dual, ROUTER_IPV6);
    if ROUTER_IPV6 {
        multiwan_core::load("lab.toml", &dual).expect("the dual-stack config loads");
    }
}

/// Carrier loss as the benchmarks and tests make it (the ISP sets its side of the link down
/// and up): the ISP keeps its static IPv6 gateway address, as it keeps its IPv4 one, so IPv6
/// comes back (the kernel's default would delete every IPv6 address of a downed interface).
#[test]
fn ipv6_survives_the_isp_setting_its_link_down_and_up() {
    let lab = Lab::new(1, 1);
    let v6: IpAddr = router_addr6(1).into();
    assert_eq!(from_router(&lab, v6), Some(v6));
    let isp = &lab.topo.isps[0].ns;
    isp.ip(&["link", "set", "cpe", "down"]).expect("down");
    assert_eq!(from_router(&lab, v6), None, "the link is down");
    isp.ip(&["link", "set", "cpe", "up"]).expect("up");
    let start = Instant::now();
    while from_router(&lab, v6) != Some(v6) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "IPv6 did not come back; the ISP's addresses: {}",
            isp.ip(&["-6", "addr", "show", "dev", "cpe"])
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let addrs = isp.ip(&["-6", "addr", "show", "dev", "cpe"]).expect("addr");
    assert!(addrs.contains(&format!("{}/64", gateway6(1))), "{addrs}");
}
