//! IPv6 dual stack against the real kernel (issue 12): every balance method splits new IPv6
//! connections like IPv4, each answered from the uplink's IPv6 address (the ISPs drop foreign
//! IPv6 sources, see `ipv6_network.rs`); rules with IPv6 prefixes pin; inbound IPv6 is answered
//! over its uplink; the router's own IPv6 is balanced (but not to an uplink's own subnet); each family has its own health, and a
//! failure flushes only that family's connections; `down` restores everything IPv6.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{count, tcp_hellos, Daemon, Lab, WaitFor};
use multiwan_lab::topology::{router_addr, router_addr6, SERVER_ADDR, SERVER_ADDR6};
use multiwan_lab::traffic;

/// Two dual-stack uplinks, `method`, probing the server beyond each ISP in both families.
fn dual(method: &str) -> String {
    format!(
        r#"[lan]
interfaces = ["lan0"]

[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
gateway6 = "2001:db8:1::1"
[uplink.check]
targets = ["{SERVER_ADDR}", "{SERVER_ADDR6}"]

[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
gateway6 = "2001:db8:2::1"
[uplink.check]
targets = ["{SERVER_ADDR}", "{SERVER_ADDR6}"]

[balance]
method = "{method}"
"#
    )
}

/// A TCP listener on `port` in `listen_in` (the router, or a LAN host behind a port forward),
/// and one connection from the server to each uplink's IPv6 address of the router: whether
/// each was answered (the ISPs drop a reply that leaves by the other uplink).
fn inbound_from_the_server(
    lab: &Lab,
    listen_in: &multiwan_lab::netns::Netns,
    port: u16,
) -> Vec<bool> {
    let listener = listen_in
        .spawn(move || std::net::TcpListener::bind(("::", port)))
        .expect("spawn")
        .join()
        .expect("join")
        .expect("bind");
    let accept = std::thread::spawn(move || {
        for c in listener.incoming().take(2) {
            drop(c);
        }
    });
    let answered = (0..2)
        .map(|n| {
            let target = SocketAddr::new(router_addr6(n + 1).into(), port);
            lab.topo
                .server
                .spawn(move || {
                    std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok()
                })
                .expect("spawn")
                .join()
                .expect("join")
        })
        .collect::<Vec<bool>>();
    // A connection that failed never reaches the listener: then the acceptor is left
    // waiting (it ends with the test) and the caller's assertion says which one.
    if answered.iter().all(|a| *a) {
        accept.join().expect("accept");
    }
    answered
}

fn icmp6_from_host(lab: &Lab, h: usize, n: usize) -> usize {
    (0..n)
        .filter(|_| lab.ping_from_host(h, SERVER_ADDR6.into(), Duration::from_secs(2)))
        .count()
}

/// ISP 2's namespace, with a host `2001:db8:2::77` on wan2's link (beside the gateway).
fn neighbour_on_wan2(lab: &Lab) -> &multiwan_lab::netns::Netns {
    let isp2 = &lab.topo.isps[1].ns;
    isp2.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:2::77/64",
        "dev",
        "cpe",
        "nodad",
    ])
    .expect("a host on wan2's link");
    isp2
}

#[test]
fn round_robin_splits_ipv6_exactly_and_natted_per_uplink() {
    let lab = Lab::new(2, 1);
    lab.apply(&dual("round-robin"));
    let v = lab.tcp6_from_host(0, 10);
    assert_eq!((count(&v, 0), count(&v, 1)), (5, 5), "TCP over IPv6: {v:?}");
    let v = lab.udp6_from_host(0, 6);
    assert_eq!((count(&v, 0), count(&v, 1)), (3, 3), "UDP over IPv6: {v:?}");
    assert_eq!(icmp6_from_host(&lab, 0, 4), 4, "ICMPv6 echo is answered");
    // The server saw only the uplinks' own IPv6 addresses (the ISPs drop anything else).
    for a in lab.server.stats6().keys() {
        assert!(
            [router_addr6(1), router_addr6(2)].contains(a),
            "the server saw {a}"
        );
    }
    // IPv4 is unchanged.
    let v = lab.tcp_from_host(0, 10);
    assert_eq!((count(&v, 0), count(&v, 1)), (5, 5), "TCP over IPv4: {v:?}");
}

#[test]
fn hash_methods_balance_ipv6_hosts_statistically_and_keep_each_on_one_uplink() {
    let lab = Lab::new(2, 4);
    lab.apply(&dual("src-hash"));
    let mut used = [0usize; 2];
    for h in 0..4 {
        let v = lab.tcp6_from_host(h, 4);
        let one = v[0].expect("connected");
        assert!(v.iter().all(|x| *x == Some(one)), "host {h} moved: {v:?}");
        used[one] += 1;
    }
    assert!(
        used.iter().all(|n| *n < 4),
        "both uplinks take hosts: {used:?}"
    );
    let lab = Lab::new(2, 1);
    lab.apply(&dual("random"));
    let v = lab.tcp6_from_host(0, 60);
    assert!(
        count(&v, 0) >= 15 && count(&v, 1) >= 15 && count(&v, 0) + count(&v, 1) == 60,
        "random over IPv6: {} / {}",
        count(&v, 0),
        count(&v, 1)
    );
}

#[test]
fn ipv6_rules_pin_and_bypass_only_ipv6() {
    let lab = Lab::new(2, 1);
    let text = format!(
        "{}\n[[rule]]\nname = \"pin6\"\ndst = [\"{SERVER_ADDR6}\"]\nuplinks = [\"isp2\"]\n",
        dual("round-robin")
    );
    lab.apply(&text);
    let v = lab.tcp6_from_host(0, 6);
    assert_eq!(count(&v, 1), 6, "the IPv6 rule pins to isp2: {v:?}");
    let v = lab.tcp_from_host(0, 6);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (3, 3),
        "IPv4 does not match an IPv6 rule: {v:?}"
    );
    let rules = lab
        .topo
        .router
        .exec("nft", &["list", "chain", "inet", "multiwan", "balance6"])
        .expect("nft");
    assert!(rules.contains("goto rule6_pin6"), "{rules}");
}

#[test]
fn inbound_ipv6_is_answered_over_its_uplink_and_the_router_balances_its_own() {
    let lab = Lab::new(2, 1);
    lab.apply(&dual("round-robin"));
    let answered = inbound_from_the_server(&lab, &lab.topo.router, 7100);
    for (n, ok) in answered.iter().enumerate() {
        assert!(
            ok,
            "a connection to wan{}'s IPv6 address is answered",
            n + 1
        );
    }
    // The router's own IPv6 connections alternate over both uplinks, each from its address.
    let ep: SocketAddr = lab.topo.server_endpoint6().into();
    let seen = tcp_hellos(&lab.topo.router, ep);
    let by: Vec<Option<usize>> = seen
        .iter()
        .map(|s| s.and_then(|a| lab.topo.isp_of(a)))
        .collect();
    assert_eq!((count(&by, 0), count(&by, 1)), (3, 3), "{seen:?}");
}

/// The router's own IPv6 to an uplink's connected subnet — the ISP's gateway, or another
/// host on that link (a modem, the ISP's DHCPv6 server) — leaves by that uplink, by main's
/// route: balanced, every other connection left by the other uplink and was lost. IPv6
/// routes have no realm, so the `output` chain tells multiwan's routes by their next hop (the
/// uplinks' gateways). Its internet connections are still balanced (the test above).
#[test]
fn the_routers_own_ipv6_to_an_uplinks_subnet_is_not_balanced() {
    let lab = Lab::new(2, 1);
    lab.apply(&dual("round-robin"));
    let isp2 = neighbour_on_wan2(&lab);
    let gateway: SocketAddr = "[2001:db8:2::1]:7200".parse().expect("addr");
    let neighbour: SocketAddr = "[2001:db8:2::77]:7201".parse().expect("addr");
    let _servers = [gateway, neighbour].map(|ep| traffic::Server::start(isp2, ep).expect("server"));
    let wan2 = Some(IpAddr::from(router_addr6(2)));
    for ep in [gateway, neighbour] {
        let seen = tcp_hellos(&lab.topo.router, ep);
        assert!(seen.iter().all(|s| *s == wan2), "to {ep}: {seen:?}");
    }
}

/// Sockets of the router's own bound to an uplink's interface (`ping -6 -I wan1`,
/// SO_BINDTODEVICE) leave by that interface from its address, whatever uplink the balancing
/// picks for them: a bound IPv6 lookup is strict about the device, so without the uplink's
/// `oif` rule a connection balanced to the other uplink found no route and hit its mark's
/// `unreachable` rule (a UDP send failed with ENETUNREACH, a TCP SYN was lost for a second,
/// a ping's first echo was lost); each is counted under its interface's uplink (`flows`,
/// the flush when an uplink fails). Round-robin alternates, so each series of six gives half
/// of its connections the other uplink. A link-local destination on the interface is still
/// main's, not sent to the gateway.
#[test]
fn an_ipv6_socket_bound_to_an_uplinks_interface_stays_on_it() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&dual("round-robin"));
    d.wait_for("both families up", Duration::from_secs(10), |d| {
        d.state().is_some_and(|s| {
            (0..2).all(|i| {
                s["uplinks"][i]["state"] == "up" && s["uplinks"][i]["ipv6"]["state"] == "up"
            })
        })
    });
    let server: SocketAddr = lab.topo.server_endpoint6().into();
    let server4: SocketAddr = lab.topo.server_endpoint().into();
    for (dev, n) in [("wan1", 1), ("wan2", 2)] {
        let addr = router_addr6(n).to_string();
        let tcp = common::hellos_bound_to(&lab, dev, server);
        assert!(
            tcp.iter().all(|a| a.as_deref() == Some(addr.as_str())),
            "TCP bound to {dev} leaves by it: {tcp:?}"
        );
        let udp = common::udp_hellos_bound_to(&lab, dev, server);
        assert!(
            udp.iter().all(|a| a.as_deref() == Ok(addr.as_str())),
            "UDP bound to {dev} leaves by it: {udp:?}"
        );
        for _ in 0..2 {
            let out = lab
                .topo
                .router
                .exec(
                    "ping",
                    &[
                        "-6",
                        "-c",
                        "3",
                        "-i",
                        "0.2",
                        "-W",
                        "2",
                        "-I",
                        dev,
                        &SERVER_ADDR6.to_string(),
                    ],
                )
                .unwrap_or_else(|e| format!("{e:#}"));
            assert!(
                out.contains("3 received") && out.contains(&format!("from {addr} {dev}")),
                "ping -6 -I {dev}: every echo is answered: {out}"
            );
        }
    }
    // IPv4 alike (its rules have no destination prefix).
    for (dev, n) in [("wan1", 1), ("wan2", 2)] {
        let addr = router_addr(n).to_string();
        let tcp = common::hellos_bound_to(&lab, dev, server4);
        let udp = common::udp_hellos_bound_to(&lab, dev, server4);
        assert!(
            tcp.iter().all(|a| a.as_deref() == Some(addr.as_str()))
                && udp.iter().all(|a| a.as_deref() == Ok(addr.as_str())),
            "IPv4 bound to {dev} leaves by it: {tcp:?} {udp:?}"
        );
    }
    let v6: [IpAddr; 2] = [router_addr6(1).into(), router_addr6(2).into()];
    let v4: [IpAddr; 2] = [router_addr(1).into(), router_addr(2).into()];
    for (server, [a1, a2]) in [(server, v6), (server4, v4)] {
        common::assert_flows_follow_their_source(&lab, server, &[(a1, "isp1"), (a2, "isp2")]);
    }
    let netstat = lab
        .topo
        .router
        .exec("cat", &["/proc/net/netstat"])
        .expect("netstat");
    let tcp_ext: Vec<&str> = netstat
        .lines()
        .filter(|l| l.starts_with("TcpExt:"))
        .collect();
    let [names, values] = tcp_ext.as_slice() else {
        panic!("no TcpExt counters: {netstat}");
    };
    let at = names.split_whitespace().position(|n| n == "TCPSynRetrans");
    let lost = at.and_then(|i| values.split_whitespace().nth(i));
    assert_eq!(
        lost,
        Some("0"),
        "no SYN of a bound socket was lost: {tcp_ext:?}"
    );
    let route = lab
        .topo
        .router
        .exec("ip", &["-6", "route", "get", "fe80::1234", "oif", "wan2"])
        .unwrap_or_else(|e| format!("{e:#}"));
    assert!(
        route.contains("dev wan2") && !route.contains("via") && !route.contains("table"),
        "a link-local destination on wan2 is main's, not sent to the gateway: {route}"
    );
}

/// A host on an uplink's own IPv6 link using the admin's port forward (to a LAN host) or
/// connecting to the router itself is answered directly, by main's on-link route, not by the
/// uplink's table through the gateway, though the connection came in on the uplink and
/// carries its mark.
#[test]
fn an_ipv6_neighbour_connecting_in_is_answered_directly() {
    let lab = Lab::new(2, 1);
    lab.apply(&dual("round-robin"));
    let isp2 = neighbour_on_wan2(&lab);
    let ep: SocketAddr = SocketAddr::new(router_addr6(2).into(), 7300);
    let _server = traffic::Server::start(&lab.topo.router, ep).expect("server");
    let host6 = lab.topo.hosts[0].addr6;
    let admin = format!(
        "table ip6 admin_fwd {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  iifname \"wan2\" tcp dport 7200 dnat to [{host6}]:7200\n }}\n}}\n"
    );
    common::load_nft(&lab, "admin", &admin);
    let _lan_server =
        traffic::Server::start(&lab.topo.hosts[0].ns, SocketAddr::new(host6.into(), 7200))
            .expect("lan server");
    let fwd: SocketAddr = SocketAddr::new(router_addr6(2).into(), 7200);
    common::watch_next_hops(
        &lab,
        "2001:db8:2::77".parse().expect("ip"),
        "2001:db8:2::1".parse().expect("ip"),
    );
    let neighbour: IpAddr = "2001:db8:2::77".parse().expect("ip");
    let seen = isp2
        .spawn(move || {
            [ep, fwd]
                .map(|to| traffic::tcp_hello_from_ip(neighbour, to, Duration::from_secs(2)).ok())
        })
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(
        seen,
        [Some(neighbour); 2],
        "the router and the port forward answer the neighbour"
    );
    let (via_gateway, direct, chain) = common::next_hop_counts(&lab, "ip6");
    assert!(
        via_gateway == 0 && direct > 0,
        "answers to the neighbour go to it, not by the gateway: {chain}"
    );
}

/// `explain` sees a static IPv6 route of main's out of an uplink (it asks the kernel the
/// hook chains' own lookups), and the kernel agrees: every IPv6 connection to the server
/// leaves by that route's uplink, while elsewhere IPv6 is still balanced.
#[test]
fn explain_sees_a_static_ipv6_route_and_the_kernel_agrees() {
    let lab = Lab::new(2, 1);
    let _d = lab.start_daemon(&dual("round-robin"));
    let server = SERVER_ADDR6.to_string();
    lab.topo
        .router
        .ip(&[
            "-6",
            "route",
            "add",
            &format!("{server}/128"),
            "via",
            "2001:db8:2::1",
            "dev",
            "wan2",
        ])
        .expect("a static route");
    let host6 = lab.topo.hosts[0].addr6.to_string();
    let ask = |dst: &str| -> serde_json::Value {
        let out = lab.multiwan(&[
            "explain",
            "--src",
            &host6,
            "--dst",
            dst,
            "--json",
            "--run-dir",
            &lab.run_dir(),
        ]);
        serde_json::from_slice(&out.stdout).expect("explain json")
    };
    let e = ask(&server);
    assert_eq!(e["not_balanced"]["kind"], "uplink_route", "{e}");
    assert_eq!(e["not_balanced"]["interface"], "wan2", "{e}");
    let e = ask("2001:db8:ff::99");
    assert_eq!(e["verdict"], "shares", "{e}");
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "{v:?}");
}

#[test]
fn down_restores_every_ipv6_rule_route_and_sysctl_and_spares_foreign_ones() {
    let lab = Lab::new(2, 1);
    let r = &lab.topo.router;
    r.ip(&[
        "-6",
        "rule",
        "add",
        "priority",
        "1001",
        "from",
        "2001:db8:77::/48",
        "lookup",
        "77",
    ])
    .expect("foreign IPv6 rule");
    r.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:77::/48",
        "via",
        "2001:db8:2::1",
        "table",
        "77",
    ])
    .expect("foreign IPv6 route");
    r.sysctl("net.ipv6.conf.all.forwarding", "0")
        .expect("sysctl");
    let before = lab.kernel_snapshot();
    lab.apply(&dual("round-robin"));
    assert_eq!(
        r.read_sysctl("net.ipv6.conf.all.forwarding")
            .expect("sysctl"),
        "1"
    );
    let rules6 = r.ip(&["-6", "rule", "show"]).expect("rules");
    assert!(
        rules6.contains("lookup main suppress_prefixlength 0"),
        "{rules6}"
    );
    assert!(
        rules6.contains("from 2001:db8:77::/48 lookup 77"),
        "{rules6}"
    );
    let v = lab.tcp6_from_host(0, 2);
    assert_eq!((count(&v, 0), count(&v, 1)), (1, 1), "{v:?}");
    lab.down();
    assert_eq!(before, lab.kernel_snapshot(), "down restores IPv6 exactly");
}

/// The source ports of the connections on isp1, as `multiwan flows` reports them.
fn isp1_ports(lab: &Lab) -> Vec<u16> {
    let out = lab.multiwan(&[
        "flows",
        "--uplink",
        "isp1",
        "--json",
        "--run-dir",
        &lab.run_dir(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["sport"].as_u64().map(|p| p as u16))
        .collect()
}

#[test]
fn only_the_broken_family_fails_over_and_only_its_connections_are_flushed() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&dual("round-robin"));
    d.wait_for("both families up", Duration::from_secs(5), |d| {
        let s = d.state().unwrap_or_default();
        s["uplinks"][0]["state"] == "up" && s["uplinks"][0]["ipv6"]["state"] == "up"
    });
    // One idle connection of each family on isp1, found by trying.
    let hold = |ep: SocketAddr| -> std::net::TcpStream {
        for _ in 0..8 {
            // A PUT that never sends its body: the server keeps the connection open.
            let s = lab.topo.hosts[0]
                .ns
                .spawn(move || {
                    use std::io::Write;
                    let mut s = std::net::TcpStream::connect_timeout(&ep, Duration::from_secs(2))?;
                    s.write_all(b"PUT 1000000\n")?;
                    Ok::<_, std::io::Error>(s)
                })
                .expect("spawn")
                .join()
                .expect("join")
                .expect("connect");
            std::thread::sleep(Duration::from_millis(50));
            let local = s.local_addr().expect("local");
            // Which uplink it took, as the router's conntrack says.
            if isp1_ports(&lab).contains(&local.port()) {
                return s;
            }
        }
        panic!("no connection to {ep} landed on isp1");
    };
    let v4 = hold(lab.topo.server_endpoint().into());
    let v6 = hold(lab.topo.server_endpoint6().into());
    lab.cut_upstream6(0);
    d.wait_for("isp1 IPv6 down", Duration::from_secs(3), |d| {
        d.state()
            .is_some_and(|s| s["uplinks"][0]["ipv6"]["state"] == "down")
    });
    assert_eq!(
        d.uplink_state("isp1").as_deref(),
        Some("up"),
        "IPv4 stays up"
    );
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "new IPv6 leaves over isp2: {v:?}");
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (2, 2),
        "IPv4 keeps both: {v:?}"
    );
    let flows = isp1_ports(&lab);
    let port = |s: &std::net::TcpStream| s.local_addr().expect("local").port();
    assert!(
        flows.contains(&port(&v4)),
        "isp1's IPv4 connection survives: {flows:?}"
    );
    assert!(
        !flows.contains(&port(&v6)),
        "isp1's IPv6 connection was flushed: {flows:?}"
    );
    drop((v4, v6));
    // And the reverse: only isp2's IPv4 path breaks.
    lab.restore_upstream6(0);
    d.wait_for("isp1 IPv6 back", Duration::from_secs(5), |d| {
        d.state()
            .is_some_and(|s| s["uplinks"][0]["ipv6"]["state"] == "up")
    });
    lab.cut_upstream4(1);
    d.wait_for("isp2 IPv4 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp2").as_deref() == Some("down")
    });
    let s = d.state().expect("state");
    assert_eq!(s["uplinks"][1]["ipv6"]["state"], "up", "its IPv6 stays up");
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (2, 2),
        "IPv6 keeps both: {v:?}"
    );
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 0), 4, "IPv4 leaves over isp1: {v:?}");
}

#[test]
fn a_whole_uplink_outage_moves_both_families_within_a_second_or_two() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&dual("round-robin"));
    lab.cut_upstream(0);
    let t = d.wait_for("isp1 down in both families", Duration::from_secs(3), |d| {
        d.state().is_some_and(|s| {
            s["uplinks"][0]["state"] == "down" && s["uplinks"][0]["ipv6"]["state"] == "down"
        })
    });
    eprintln!("both families down after {t:?}");
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "{v:?}");
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "{v:?}");
    // status, metrics and explain speak both families.
    let out = lab.multiwan(&["status", "--json", "--run-dir", &lab.run_dir()]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(st["uplinks"][0]["ipv6"]["state"], "down", "{st}");
    assert_eq!(st["uplinks"][1]["ipv6"]["usable"], true, "{st}");
    let text = String::from_utf8_lossy(
        &lab.multiwan(&["status", "--run-dir", &lab.run_dir()])
            .stdout,
    )
    .into_owned();
    assert!(text.contains("ipv6: down"), "{text}");
    let out = lab.multiwan(&[
        "explain",
        "--src",
        "fd37:157::11",
        "--dst",
        &SERVER_ADDR6.to_string(),
        "--json",
        "--run-dir",
        &lab.run_dir(),
    ]);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain json");
    assert_eq!(e["verdict"], "uplink", "{e}");
    assert_eq!(e["uplink"], "isp2", "{e}");
}

/// A lab whose first ISP sends router advertisements (default route lifetime `lifetime` s,
/// the lab's default when `None`), and the dual-stack config with `gateway6 = "auto"` there.
fn advertising_isp1(lifetime: Option<u16>) -> (Lab, String) {
    use multiwan_lab::topology::{IspSpec, TopologySpec};
    let lab = Lab::with_spec(TopologySpec {
        isps: vec![
            IspSpec {
                router_adverts: true,
                router_lifetime_s: lifetime,
                ..IspSpec::default()
            },
            IspSpec::default(),
        ],
        lan_hosts: 1,
    });
    let text =
        dual("round-robin").replacen("gateway6 = \"2001:db8:1::1\"", "gateway6 = \"auto\"", 1);
    (lab, text)
}

/// A router that was a host until now (forwarding off) has learned its IPv6 default route
/// from the ISP's advertisements. Turning forwarding on deletes such routes on every
/// interface whose accept_ra is not 2 at that moment, and a quiet ISP router may not
/// advertise again for minutes: apply sets accept_ra first, so the route is never lost.
#[test]
fn apply_keeps_the_default_route_a_host_learned() {
    let (lab, text) = advertising_isp1(None);
    let r = &lab.topo.router;
    r.sysctl("net.ipv6.conf.all.forwarding", "0")
        .expect("forwarding off");
    let ra_default = || {
        r.ip(&["-6", "route", "show", "default", "dev", "wan1"])
            .expect("routes")
    };
    let start = std::time::Instant::now();
    while !ra_default().contains("proto ra") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no default route learnt as a host: {}",
            ra_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.apply(&text);
    // At once: the next advertisement (radvd here sends every few seconds) would hide the bug.
    assert!(
        ra_default().contains("proto ra"),
        "the learned route survives apply: {}",
        ra_default()
    );
}

#[test]
fn gateway6_auto_learns_the_router_advertised_route() {
    let (lab, text) = advertising_isp1(None);
    let d = lab.start_daemon(&text);
    // forwarding = 1 would make the kernel ignore the advertisements: multiwan sets
    // accept_ra = 2 on the auto uplink, and the learned route appears in its table.
    assert_eq!(
        lab.topo
            .router
            .read_sysctl("net.ipv6.conf.wan1.accept_ra")
            .expect("sysctl"),
        "2"
    );
    d.wait_for(
        "isp1 IPv6 up via the advertised gateway",
        Duration::from_secs(15),
        |d| {
            d.state()
                .is_some_and(|s| s["uplinks"][0]["ipv6"]["state"] == "up")
                && lab
                    .topo
                    .router
                    .ip(&["-6", "route", "show", "table", "1001"])
                    .is_ok_and(|r| r.contains("via fe80::"))
        },
    );
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
}

/// The ISP replaces its advertising router (default route lifetime `lifetime` s) with one at
/// a new link-local address: with `goodbye` the old one withdraws its route (a zero-lifetime
/// advertisement, as radvd sends when stopped), else it falls silent and its route stays
/// beside the new one until its lifetime ends. multiwan follows: the uplink's table routes
/// via the new address and no longer via the old one, and the LAN's IPv6 connections use the
/// uplink again, within `limit` of the swap.
fn follows_a_replaced_advertising_router(goodbye: bool, lifetime: u16, limit: Duration) {
    let (mut lab, text) = advertising_isp1(Some(lifetime));
    let d = lab.start_daemon(&text);
    let old = lab.topo.isps[0].link_locals().expect("link-locals");
    assert_eq!(old.len(), 1, "{old:?}");
    let table = |lab: &Lab| {
        lab.topo
            .router
            .ip(&["-6", "route", "show", "table", "1001"])
            .unwrap_or_default()
    };
    let up6 = |d: &Daemon| {
        d.state()
            .is_some_and(|s| s["uplinks"][0]["ipv6"]["state"] == "up")
    };
    d.wait_for(
        "isp1 IPv6 up via the first router",
        Duration::from_secs(15),
        |d| up6(d) && table(&lab).contains(&format!("via {}", old[0])),
    );
    let new: std::net::Ipv6Addr = "fe80::beef:1".parse().expect("address");
    lab.topo.isps[0]
        .replace_advertising_router(new, goodbye)
        .expect("replace the router");
    d.wait_for("isp1's table via the new router", limit, |_| {
        let t = table(&lab);
        t.contains(&format!("via {new}")) && !t.contains(&old[0].to_string())
    });
    // The switch itself may cost a few probe rounds (isp1 down, then up again after
    // up_after good rounds), and state.json lags by up to a second: what counts is that the
    // LAN's new connections use isp1 again.
    d.wait_for(
        "IPv6 connections over isp1 again",
        Duration::from_secs(20),
        |d| {
            up6(d) && {
                let v = lab.tcp6_from_host(0, 4);
                (count(&v, 0), count(&v, 1)) == (2, 2)
            }
        },
    );
}

#[test]
fn gateway6_auto_follows_a_replaced_advertising_router_at_once() {
    // radvd advertises every 3-4 s (its first ones sooner): seconds, not the lifetime.
    follows_a_replaced_advertising_router(true, 600, Duration::from_secs(20));
}

#[test]
fn gateway6_auto_leaves_a_router_that_fell_silent_before_its_route_expires() {
    // The old route would stand for 600 s. The kernel finds the silent router unreachable
    // (neighbour unreachability detection: at most 15-45 s of reachable time without
    // confirmation, then 5 s delay and 3 probes of 1 s; here its address is gone from a
    // known link-layer address, which fails sooner) and multiwan, reading the gateway again
    // every 5 s while the uplink's IPv6 probes fail, takes the other advertised route.
    follows_a_replaced_advertising_router(false, 600, Duration::from_secs(120));
}

/// Inbound IPv6 through the admin's own port forward (their table, DNAT to a LAN host) is
/// answered over the uplink it arrived on; the ISPs drop a reply that leaves by the other.
#[test]
fn inbound_ipv6_through_the_admins_port_forward_is_answered_over_its_uplink() {
    let lab = Lab::new(2, 1);
    lab.apply(&dual("round-robin"));
    let host6 = lab.topo.hosts[0].addr6;
    let admin = format!(
        "table ip6 admin_fwd {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  tcp dport 7200 dnat to [{host6}]:7200\n }}\n}}\n"
    );
    common::load_nft(&lab, "admin", &admin);
    let answered = inbound_from_the_server(&lab, &lab.topo.hosts[0].ns, 7200);
    for (n, ok) in answered.iter().enumerate() {
        assert!(ok, "the port forward on wan{} answers over it", n + 1);
    }
    lab.down();
    assert!(
        lab.topo
            .router
            .exec("nft", &["list", "tables"])
            .expect("nft")
            .contains("admin_fwd"),
        "the admin's table is left alone"
    );
}

/// `flows`, `watch` and `/metrics` speak IPv6: IPv6 connections are listed with their
/// uplink and NAT66 source, an IPv6-only failure is a `family: ipv6` transition, and the
/// metrics carry the per-family state.
#[test]
fn flows_watch_and_metrics_speak_ipv6() {
    use std::io::{BufRead, BufReader, Read, Write};
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&format!(
        "[daemon]\nmetrics = 9797\n\n{}",
        dual("round-robin")
    ));
    let ep: SocketAddr = lab.topo.server_endpoint6().into();
    let held: Vec<std::net::TcpStream> = lab.topo.hosts[0]
        .ns
        .spawn(move || {
            (0..4)
                .map(|_| {
                    let mut s = std::net::TcpStream::connect_timeout(&ep, Duration::from_secs(2))
                        .expect("connect");
                    s.write_all(b"PUT 1000000\n").expect("write");
                    s
                })
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join");
    let out = lab.multiwan(&["flows", "--json", "--run-dir", &lab.run_dir()]);
    let flows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("flows json");
    let v6: Vec<&serde_json::Value> = flows
        .as_array()
        .expect("array")
        .iter()
        .filter(|f| f["dst"] == SERVER_ADDR6.to_string() && f["dport"] == 7000)
        .collect();
    assert_eq!(v6.len(), 4, "{flows}");
    for f in &v6 {
        let n = if f["uplink"] == "isp1" { 1 } else { 2 };
        assert_eq!(f["nat_src"], router_addr6(n).to_string(), "{f}");
    }
    assert_eq!(v6.iter().filter(|f| f["uplink"] == "isp1").count(), 2);

    let scrape = || {
        lab.topo
            .router
            .spawn(|| {
                let mut s = std::net::TcpStream::connect("127.0.0.1:9797").expect("metrics");
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
                    .expect("request");
                let mut r = String::new();
                s.read_to_string(&mut r).expect("response");
                r
            })
            .expect("spawn")
            .join()
            .expect("join")
    };
    let body = scrape();
    assert!(
        body.contains("multiwan_uplink_ipv6_up{uplink=\"isp1\"} 1"),
        "{body}"
    );

    let mut child = lab
        .topo
        .router
        .command(common::bin())
        .args(["watch", "--json", "--run-dir", &lab.run_dir()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("watch runs");
    lab.cut_upstream6(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut transition = None;
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&l).expect("json line");
            if v["event"] == "transition" {
                transition = Some(v);
                break;
            }
        }
    }
    let t = transition.expect("a transition event");
    assert_eq!(t["uplink"], "isp1", "{t}");
    assert_eq!(t["family"], "ipv6", "{t}");
    assert_eq!(t["to"], "down", "{t}");
    let _ = child.kill();
    let _ = child.wait();
    d.wait_for("isp1's IPv6 down", Duration::from_secs(3), |d| {
        d.state()
            .is_some_and(|s| s["uplinks"][0]["ipv6"]["state"] == "down")
    });
    assert_eq!(
        d.uplink_state("isp1").as_deref(),
        Some("up"),
        "IPv4 stays up"
    );
    let body = scrape();
    assert!(
        body.contains("multiwan_uplink_ipv6_up{uplink=\"isp1\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("multiwan_uplink_up{uplink=\"isp1\"} 1"),
        "{body}"
    );
    drop(held);
}

/// The ISP renumbers the router's IPv6 address on an uplink (a new SLAAC or DHCPv6 address):
/// the source rule and the masquerade follow, and new IPv6 connections leave from the new
/// address; the old one is gone from multiwan's rules.
#[test]
fn an_ipv6_address_change_is_followed() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&dual("round-robin"));
    let r = &lab.topo.router;
    let (old, new) = (router_addr6(2), "2001:db8:2::254");
    d.wait_for("both uplinks' IPv6 up", Duration::from_secs(5), |d| {
        d.state()
            .is_some_and(|s| (0..2).all(|i| s["uplinks"][i]["ipv6"]["state"] == "up"))
    });
    assert!(r
        .ip(&["-6", "rule", "show"])
        .expect("rules")
        .contains(&format!("from {old} lookup 1002")));
    // Like a DHCPv6 client or SLAAC: the old address goes, the new one comes (with DAD).
    r.ip(&["-6", "addr", "del", &format!("{old}/64"), "dev", "wan2"])
        .expect("old address gone");
    r.ip(&["-6", "addr", "add", &format!("{new}/64"), "dev", "wan2"])
        .expect("new address");
    d.wait_for(
        "the IPv6 source rule for the new address",
        Duration::from_secs(10),
        |_| {
            r.ip(&["-6", "rule", "show"])
                .expect("rules")
                .contains(&format!("from {new} lookup 1002"))
        },
    );
    let rules = r.ip(&["-6", "rule", "show"]).expect("rules");
    assert!(!rules.contains(&old.to_string()), "{rules}");
    d.wait_for("isp2's IPv6 up again", Duration::from_secs(10), |d| {
        d.state()
            .is_some_and(|s| s["uplinks"][1]["ipv6"]["state"] == "up")
    });
    let ep: SocketAddr = lab.topo.server_endpoint6().into();
    let seen: Vec<IpAddr> = lab.topo.hosts[0]
        .ns
        .spawn(move || {
            (0..6)
                .filter_map(|_| traffic::tcp_hello_ip(ep, Duration::from_secs(2)).ok())
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(seen.len(), 6, "every IPv6 connection works: {seen:?}");
    let new: IpAddr = new.parse().expect("ip");
    assert!(
        seen.contains(&new),
        "isp2's share comes from {new}: {seen:?}"
    );
    assert!(!seen.contains(&IpAddr::V6(old)), "{seen:?}");
}

/// The raw sockets of the router's namespace (`/proc/net/raw` and `raw6`, read inside it):
/// (protocol, queued bytes, drops) of each.
fn raw_sockets(lab: &Lab) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for file in ["/proc/net/raw", "/proc/net/raw6"] {
        let text = lab.topo.router.exec("cat", &[file]).expect(file);
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx_queue:rx_queue tr:tm retrnsmt uid timeout inode ref ptr drops
            let (Some(local), Some(queues), Some(drops)) = (f.get(1), f.get(4), f.last()) else {
                continue;
            };
            let proto = local.rsplit(':').next().unwrap_or_default().to_string();
            let rx = queues
                .split(':')
                .nth(1)
                .and_then(|q| u64::from_str_radix(q, 16).ok())
                .unwrap_or(0);
            out.push((proto, rx, drops.parse().unwrap_or(u64::MAX)));
        }
    }
    out
}

/// A flood of echo requests to the router's uplink addresses (both families), and another
/// program's pings from the router over the same uplink: the probes' raw sockets queue none
/// of it (their kernel filter takes only their own echo replies), so none drops a packet and
/// the uplinks stay up without loss. Without the filter the flooded socket drops hundreds of
/// thousands.
#[test]
fn an_icmp_flood_reaches_no_probe_socket() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&dual("round-robin"));
    d.wait_for("both families up", Duration::from_secs(5), |d| {
        let s = d.state().unwrap_or_default();
        (0..2).all(|u| s["uplinks"][u]["state"] == "up" && s["uplinks"][u]["ipv6"]["state"] == "up")
    });
    let before = raw_sockets(&lab);
    for proto in ["0001", "003A"] {
        assert!(
            before.iter().filter(|(p, _, _)| p == proto).count() >= 2,
            "one probe socket per uplink and family: {before:?}"
        );
    }
    // As fast as the router answers, each request a copy for every raw socket bound to wan1
    // that does not filter.
    let isp = &lab.topo.isps[0].ns;
    let floods: Vec<_> = [
        ("-4", multiwan_lab::topology::router_addr(1).to_string()),
        ("-6", router_addr6(1).to_string()),
    ]
    .into_iter()
    .map(|(family, to)| {
        isp.command("ping")
            .args([family, "-f", "-q", "-s", "1000", "-w", "4", &to])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("flood ping")
    })
    .collect();
    let other = lab.topo.router.exec(
        "ping",
        &[
            "-c",
            "20",
            "-i",
            "0.05",
            "-I",
            "wan1",
            &SERVER_ADDR.to_string(),
        ],
    );
    for flood in floods {
        let out = flood.wait_with_output().expect("flood ping");
        let summary = String::from_utf8_lossy(&out.stdout).to_string();
        let sent: u64 = summary
            .split(" packets transmitted")
            .next()
            .and_then(|s| s.split_whitespace().last()?.parse().ok())
            .unwrap_or(0);
        assert!(sent > 2000, "the flood was a flood: {summary}");
    }
    assert!(other.is_ok(), "the other program's pings: {other:?}");
    let after = raw_sockets(&lab);
    for (proto, rx, drops) in &after {
        assert_eq!(
            *drops, 0,
            "a probe socket dropped packets (protocol {proto}, {rx} bytes queued): {after:?}"
        );
    }
    let s = d.state().expect("state");
    for u in 0..2 {
        for fam in [&s["uplinks"][u], &s["uplinks"][u]["ipv6"]] {
            assert_eq!(fam["state"], "up", "{s}");
            assert_eq!(fam["loss_percent"], 0.0, "{s}");
        }
    }
}

/// State and reason of uplink `i`'s IPv4 and IPv6, from state.json.
fn families(d: &Daemon, i: usize) -> Option<(String, String, String)> {
    let s = d.state()?;
    let u = &s["uplinks"][i];
    Some((
        u["state"].as_str()?.to_string(),
        u["ipv6"]["state"].as_str()?.to_string(),
        u["ipv6"]["reason"].as_str().unwrap_or("").to_string(),
    ))
}

#[test]
fn an_off_link_gateway6_leaves_out_only_that_uplinks_ipv6() {
    // isp2's gateway6 is a global address in no prefix of wan2: the kernel would refuse a
    // route via it (EHOSTUNREACH). Everything else is installed and fails over.
    let lab = Lab::new(2, 1);
    let text = dual("round-robin").replace("2001:db8:2::1", "2001:db8:99::1");
    let d = lab.start_daemon(&text);
    d.wait_for("isp1 up in both families", Duration::from_secs(5), |d| {
        families(d, 0).is_some_and(|(v4, v6, _)| v4 == "up" && v6 == "up")
    });
    let (v4, v6, reason) = families(&d, 1).expect("isp2");
    assert_eq!(
        (v4.as_str(), v6.as_str(), reason.as_str()),
        ("up", "down", "gateway_off_link")
    );
    let r = &lab.topo.router;
    assert!(
        r.nft("list table inet multiwan").is_ok(),
        "the table is installed"
    );
    assert_eq!(
        r.read_sysctl("net.ipv4.ip_forward").expect("sysctl").trim(),
        "1"
    );
    let routes6 = r
        .ip(&["-6", "route", "show", "table", "all", "proto", "77"])
        .expect("routes");
    assert!(!routes6.contains("2001:db8:99::1"), "{routes6}");
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (2, 2),
        "IPv4 over both: {v:?}"
    );
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!(count(&v, 0), 4, "IPv6 over isp1: {v:?}");
    let log = lab.daemon_log();
    assert!(!log.contains("cannot update the kernel"), "{log}");
    let text = String::from_utf8_lossy(
        &lab.multiwan(&["status", "--run-dir", &lab.run_dir()])
            .stdout,
    )
    .into_owned();
    assert!(
        text.contains("gateway 2001:db8:99::1 is not on the interface's link"),
        "{text}"
    );
    // IPv4 failover still works: isp1's upstream cut.
    lab.cut_upstream4(0);
    d.wait_for("isp1 IPv4 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "IPv4 leaves over isp2: {v:?}");
}

#[test]
fn a_gateway6_renumbered_off_the_link_takes_only_its_ipv6_down() {
    // wan2's /64 becomes a /128 (a lost lease): isp2's IPv6 goes down with its reason, and
    // a later IPv4 cut of isp1 still fails over.
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&dual("round-robin"));
    d.wait_for("both uplinks' IPv6 up", Duration::from_secs(5), |d| {
        (0..2).all(|i| families(d, i).is_some_and(|(_, v6, _)| v6 == "up"))
    });
    let r = &lab.topo.router;
    let addr = router_addr6(2);
    r.ip(&["-6", "addr", "del", &format!("{addr}/64"), "dev", "wan2"])
        .expect("old address gone");
    r.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{addr}/128"),
        "dev",
        "wan2",
        "nodad",
    ])
    .expect("a /128");
    d.wait_for("isp2's IPv6 off the link", Duration::from_secs(5), |d| {
        families(d, 1)
            .is_some_and(|(v4, v6, why)| v4 == "up" && v6 == "down" && why == "gateway_off_link")
    });
    lab.cut_upstream4(0);
    d.wait_for("isp1 IPv4 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "IPv4 leaves over isp2: {v:?}");
    let v = lab.tcp6_from_host(0, 4);
    assert_eq!(count(&v, 0), 4, "IPv6 over isp1: {v:?}");
    let log = lab.daemon_log();
    assert!(
        log.matches("cannot update the kernel").count() <= 1,
        "{log}"
    );
}
