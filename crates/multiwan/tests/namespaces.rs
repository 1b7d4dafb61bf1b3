//! Real kernel, real packets: LAN hosts → router (multiwan) → one namespace per ISP → server.
//! The ISPs drop packets whose source is not their customer's, so a wrong SNAT or a reply on
//! the wrong uplink fails these tests. Every namespace is removed when its test ends.

mod common;

use std::time::Duration;

use common::{count, tcp_hellos, two_uplinks, Lab};
use multiwan_lab::topology::{IspSpec, TopologySpec};
use multiwan_lab::traffic;

/// Item 9 and the control for everything else: without multiwan the ISPs drop the LAN's
/// unNATed packets and the router's replies that leave on the wrong uplink.
#[test]
fn isps_drop_foreign_sources_without_multiwan() {
    let lab = Lab::new(2, 1);
    let v = lab.tcp_from_host(0, 2);
    assert_eq!(
        v,
        vec![None, None],
        "LAN traffic must not get through unNATed"
    );
    // An inbound connection to wan2's address is answered via the main default (wan1): lost.
    let target = std::net::SocketAddrV4::new(lab.topo.isps[1].router_addr, 7100);
    let listener = lab
        .topo
        .router
        .spawn(|| std::net::TcpListener::bind("0.0.0.0:7100"))
        .expect("spawn")
        .join()
        .expect("join")
        .expect("bind");
    let ok = lab
        .topo
        .server
        .spawn(move || {
            std::net::TcpStream::connect_timeout(&target.into(), Duration::from_millis(700)).is_ok()
        })
        .expect("spawn")
        .join()
        .expect("join");
    drop(listener);
    assert!(!ok, "ISP 2 must drop replies that left over ISP 1");
}

/// Item 1, seed 003: 1:1 round-robin alternates exactly, TCP and UDP, each connection keeps
/// its uplink for its whole life, and the server sees each uplink's SNAT address.
#[test]
fn seed_003_round_robin_alternates_and_connections_stick() {
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let v = lab.tcp_from_host(0, 20);
    assert!(
        v.iter().all(|x| x.is_some()),
        "every connection works: {v:?}"
    );
    for pair in v.chunks(2) {
        assert_ne!(pair[0], pair[1], "consecutive connections alternate: {v:?}");
    }
    assert_eq!((count(&v, 0), count(&v, 1)), (10, 10));
    let u = lab.udp_from_host(0, 10);
    assert_eq!((count(&u, 0), count(&u, 1)), (5, 5), "{u:?}");
    // Multi-megabyte transfers complete on both uplinks.
    let ep = lab.topo.server_endpoint();
    let transfers = lab.topo.hosts[0]
        .ns
        .spawn(move || {
            (0..2)
                .map(|_| traffic::tcp_get(ep, 8 << 20))
                .collect::<Vec<_>>()
        })
        .expect("spawn")
        .join()
        .expect("join");
    let mut used = Vec::new();
    for t in transfers {
        let t = t.expect("8 MiB transfer completes");
        used.push(lab.topo.isp_of(t.seen_as).expect("an uplink address"));
    }
    used.sort();
    assert_eq!(used, vec![0, 1]);
    // The server saw nothing but the two uplink addresses.
    for addr in lab.server.stats().keys() {
        assert!(lab.topo.isp_of(*addr).is_some(), "unexpected source {addr}");
    }
}

/// Item 2, seed 001: weights 3:1 give exactly 75/25 with round-robin.
#[test]
fn seed_001_weights_exact_with_round_robin() {
    let lab = Lab::new(2, 2);
    lab.apply(&two_uplinks("round-robin", 3, 1));
    let mut v = lab.tcp_from_host(0, 200);
    v.extend(lab.tcp_from_host(1, 200));
    assert_eq!((count(&v, 0), count(&v, 1)), (300, 100));
}

/// Item 2: weights 3:1 with random land within 2 % of 75/25 over 5 000 connections.
#[test]
fn seed_001_weights_within_two_percent_with_random() {
    let lab = Lab::new(2, 2);
    lab.apply(&two_uplinks("random", 3, 1));
    let ep = lab.topo.server_endpoint();
    let handles: Vec<_> = lab
        .topo
        .hosts
        .iter()
        .map(|h| {
            h.ns.spawn(move || {
                (0..2500)
                    .map(|_| traffic::udp_hello(ep, Duration::from_secs(2)).ok())
                    .collect::<Vec<_>>()
            })
            .expect("spawn")
        })
        .collect();
    let mut v = Vec::new();
    for h in handles {
        v.extend(
            h.join()
                .expect("join")
                .into_iter()
                .map(|s| s.and_then(|a| lab.topo.isp_of(a))),
        );
    }
    let ok = v.iter().filter(|x| x.is_some()).count();
    assert!(ok >= 4990, "{ok} of 5000 exchanges worked");
    let share = count(&v, 0) as f64 / ok as f64;
    assert!(
        (share - 0.75).abs() <= 0.02,
        "isp1 share {share:.4} is not within 2 % of 75 %"
    );
}

/// Item 3: src-hash keeps every connection of a host on one uplink; hosts spread.
#[test]
fn src_hash_keeps_hosts_on_one_uplink() {
    let lab = Lab::new(2, 6);
    lab.apply(&two_uplinks("src-hash", 1, 1));
    let mut per_host = Vec::new();
    for h in 0..6 {
        let v = lab.tcp_from_host(h, 12);
        let first = v[0].expect("works");
        assert!(
            v.iter().all(|x| *x == Some(first)),
            "host {h} moved between uplinks: {v:?}"
        );
        per_host.push(first);
    }
    per_host.sort();
    per_host.dedup();
    assert_eq!(per_host, vec![0, 1], "six hosts should use both uplinks");
    // The operator's view of the ruleset works with hash maps too: Debian 12's nft 1.0.6
    // segfaulted listing a map declared `typeof jhash …`.
    for method in ["src-hash", "src-dst-hash"] {
        lab.apply(&two_uplinks(method, 1, 1));
        let listing = lab.topo.router.exec("nft", &["list", "ruleset"]);
        assert!(
            listing.as_ref().is_ok_and(|l| l.contains("jhash")),
            "{method}: nft list ruleset: {listing:?}"
        );
    }
}

/// Once in many runs an alternation of the round-robin split skipped a step (not
/// root-caused): the router's conntrack statistics (insert_failed, drop, clashres …) and the
/// per-uplink connection counters then say whether a first packet was dropped before its
/// entry was confirmed (its retransmission takes the next step: one connection too many) or a
/// flow found an older entry and kept its uplink (one too few).
fn balance_diagnosis(lab: &Lab) -> String {
    let r = &lab.topo.router;
    let stats = r
        .exec("cat", &["/proc/net/stat/nf_conntrack"])
        .unwrap_or_default();
    let counters = r
        .exec("nft", &["list", "counters", "table", "inet", "multiwan"])
        .unwrap_or_default();
    // Every connection with its ports and mark: a reused source port (a flow that found an
    // older entry and kept its uplink) or a stranger's connection (a numgen step nobody
    // expected) shows here.
    let table = r
        .exec("cat", &["/proc/net/nf_conntrack"])
        .unwrap_or_default();
    format!("conntrack statistics:\n{stats}\n{counters}\nconnections:\n{table}")
}

/// Item 4, seed 002: one host's TCP port 7000 (the server's) goes over isp2; its UDP and the
/// other host's TCP are balanced.
#[test]
fn seed_002_rule_pins_one_hosts_port() {
    let lab = Lab::new(2, 2);
    let addr = lab.topo.hosts[0].addr;
    let text = format!(
        "{}\n[[rule]]\nname = \"web\"\nsrc = [\"{addr}\"]\nproto = \"tcp\"\ndport = [\"7000\"]\nuplinks = [\"isp2\"]\n",
        two_uplinks("round-robin", 1, 1)
    );
    lab.apply(&text);
    let pinned = lab.tcp_from_host(0, 10);
    assert_eq!(count(&pinned, 1), 10, "{pinned:?}");
    let other = lab.tcp_from_host(1, 10);
    assert_eq!(
        (count(&other, 0), count(&other, 1)),
        (5, 5),
        "{other:?}\n{}",
        balance_diagnosis(&lab)
    );
    let udp = lab.udp_from_host(0, 10);
    assert_eq!(
        (count(&udp, 0), count(&udp, 1)),
        (5, 5),
        "{udp:?}\n{}",
        balance_diagnosis(&lab)
    );
    let hits = lab
        .topo
        .router
        .exec("nft", &["list", "chain", "inet", "multiwan", "balance"])
        .expect("nft");
    assert!(
        hits.contains("counter packets 10 "),
        "rule hit counter: {hits}"
    );
}

/// Item 5, seed 004 §4.2.2: connections that come in on an uplink — to the router, and to a
/// LAN host through the admin's own port forward — are answered over that uplink.
#[test]
fn seed_004_inbound_answered_on_the_same_uplink() {
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let host = lab.topo.hosts[0].addr;
    // The admin's own port forward, in their own table.
    let fwd = format!(
        "table ip admin {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  iifname {{ \"wan1\", \"wan2\" }} tcp dport 8080 dnat to {host}:7000\n }}\n}}\n"
    );
    let path = lab.dir.join("admin.nft");
    std::fs::write(&path, fwd).expect("write");
    lab.topo
        .router
        .exec("nft", &["-f", &path.display().to_string()])
        .expect("admin table");
    let lan_server = traffic::Server::start(
        &lab.topo.hosts[0].ns,
        std::net::SocketAddrV4::new(host, 7000),
    )
    .expect("lan server");
    let listener = lab
        .topo
        .router
        .spawn(|| std::net::TcpListener::bind("0.0.0.0:7100"))
        .expect("spawn")
        .join()
        .expect("join")
        .expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let acceptor = std::thread::spawn(move || {
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((mut s, _)) = listener.accept() {
                use std::io::Write;
                let _ = s.write_all(b"ok\n");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    for (i, isp) in lab.topo.isps.iter().enumerate() {
        let router_ep = std::net::SocketAddrV4::new(isp.router_addr, 7100);
        let fwd_ep = std::net::SocketAddrV4::new(isp.router_addr, 8080);
        let (to_router, to_lan) = lab
            .topo
            .server
            .spawn(move || {
                let r =
                    std::net::TcpStream::connect_timeout(&router_ep.into(), Duration::from_secs(2))
                        .and_then(|mut s| {
                            use std::io::Read;
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            let mut b = [0u8; 3];
                            s.read_exact(&mut b)
                        });
                let l = traffic::tcp_hello(fwd_ep, Duration::from_secs(2));
                (r.is_ok(), l)
            })
            .expect("spawn")
            .join()
            .expect("join");
        assert!(
            to_router,
            "connection to the router via {} answered",
            isp.router_if
        );
        let seen = to_lan.unwrap_or_else(|e| panic!("port forward via {}: {e:#}", isp.router_if));
        // The LAN host sees the internet client's real address (DNAT only, no SNAT).
        assert_eq!(seen, std::net::Ipv4Addr::new(172, 16, i as u8 + 1, 2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    acceptor.join().expect("acceptor");
    drop(lan_server);
}

/// Item 6: the router's own connections are balanced and leave with the right source.
#[test]
fn router_own_connections_are_balanced() {
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let ep = lab.topo.server_endpoint();
    let seen = lab
        .topo
        .router
        .spawn(move || {
            (0..10)
                .map(|_| traffic::tcp_hello(ep, Duration::from_secs(2)).ok())
                .collect::<Vec<_>>()
        })
        .expect("spawn")
        .join()
        .expect("join");
    let v: Vec<Option<usize>> = seen
        .into_iter()
        .map(|s| s.and_then(|a| lab.topo.isp_of(a)))
        .collect();
    assert_eq!((count(&v, 0), count(&v, 1)), (5, 5), "{v:?}");
}

/// Item 7: a tier-2 uplink carries nothing while tier 1 is usable; when the tier-1
/// interface goes down, a re-apply falls through to tier 2.
#[test]
fn tier_two_idle_until_tier_one_is_gone() {
    let lab = Lab::new(2, 1);
    let text = two_uplinks("round-robin", 1, 1).replace(
        "weight = 1\n\n[balance]",
        "weight = 1\ntier = 2\n\n[balance]",
    );
    assert!(text.contains("tier = 2"));
    lab.apply(&text);
    let v = lab.tcp_from_host(0, 20);
    assert_eq!(count(&v, 0), 20, "{v:?}");
    lab.topo
        .router
        .ip(&["link", "set", "wan1", "down"])
        .expect("down");
    lab.topo
        .router
        .ip(&[
            "route",
            "replace",
            "default",
            "via",
            "10.37.2.1",
            "dev",
            "wan2",
        ])
        .expect("route");
    let out = lab.apply(&text);
    assert!(out.contains("applied"), "{out}");
    let v = lab.tcp_from_host(0, 10);
    assert_eq!(count(&v, 1), 10, "{v:?}");
}

/// Item 8: a foreign nft table and ip rule survive apply and down, and after down the
/// ruleset, rules, routes and sysctls are exactly what they were.
#[test]
fn coexists_and_down_restores_everything() {
    let lab = Lab::new(2, 1);
    let r = &lab.topo.router;
    let foreign = lab.dir.join("foreign.nft");
    std::fs::write(&foreign, "table inet foreign {\n chain forward_filter {\n  type filter hook forward priority 0; policy accept;\n  counter\n }\n}\n").expect("write");
    r.exec("nft", &["-f", &foreign.display().to_string()])
        .expect("foreign table");
    r.ip(&[
        "rule",
        "add",
        "priority",
        "1001",
        "from",
        "203.0.113.7",
        "lookup",
        "77",
    ])
    .expect("foreign rule");
    r.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.37.2.1",
        "table",
        "1001",
    ])
    .expect("foreign route in a table we would use");
    let before = lab.kernel_snapshot();
    // Table 1001 holds someone else's route: multiwan refuses to take it over, changing nothing.
    let text = two_uplinks("round-robin", 1, 1);
    let out = lab.multiwan(&[
        "apply",
        "-c",
        &lab.write_config(&text),
        "--run-dir",
        &lab.run_dir(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("table 1001: default via 10.37.2.1 dev wan2") && err.contains("table_base"),
        "{err}"
    );
    assert_eq!(
        before,
        lab.kernel_snapshot(),
        "a refused apply changes nothing"
    );
    // With a free table range it applies next to the foreign objects and works.
    lab.apply(&format!("{text}\n[kernel]\ntable_base = 2000\n"));
    let during = r.exec("nft", &["list", "ruleset"]).expect("nft");
    assert!(
        during.contains("table inet foreign"),
        "foreign table survives apply"
    );
    assert!(r
        .ip(&["rule", "show"])
        .expect("rules")
        .contains("from 203.0.113.7 lookup 77"));
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
    lab.down();
    assert_eq!(
        before,
        lab.kernel_snapshot(),
        "down restores the exact previous state"
    );
}

/// Re-applying is a no-op that breaks nothing; a reordered config keeps every uplink's mark,
/// so a long transfer in flight survives the reload.
#[test]
fn apply_is_idempotent_and_reload_keeps_connections() {
    let lab = Lab::with_spec(TopologySpec {
        isps: vec![
            IspSpec {
                rate_mbit: Some(20),
                ..Default::default()
            };
            2
        ],
        lan_hosts: 1,
    });
    let text = two_uplinks("round-robin", 1, 1);
    lab.apply(&text);
    let ep = lab.topo.server_endpoint();
    let transfers = lab.topo.hosts[0]
        .ns
        .spawn(move || {
            let hs: Vec<_> = (0..2)
                .map(|_| std::thread::spawn(move || traffic::tcp_get(ep, 3 << 20)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("join"))
                .collect::<Vec<_>>()
        })
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(300));
    let again = lab.apply(&text);
    assert!(again.contains("already up to date"), "{again}");
    // Swap the order of the uplinks and change the weights: ids, and so marks, must stay.
    let reordered = "[lan]\ninterfaces = [\"lan0\"]\n[[uplink]]\nname = \"isp2\"\ninterface = \"wan2\"\ngateway = \"10.37.2.1\"\nweight = 2\n[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\ngateway = \"10.37.1.1\"\n".to_string();
    let out = lab.apply(&reordered);
    assert!(out.contains("nft table replaced"), "{out}");
    let listing = lab
        .topo
        .router
        .exec(
            "nft",
            &["list", "chain", "inet", "multiwan", "restore_isp1"],
        )
        .expect("nft");
    assert!(
        listing.contains("0x01000000"),
        "isp1 keeps mark 1: {listing}"
    );
    for t in transfers.join().expect("join") {
        let t = t.expect("transfer survives re-apply and reload");
        assert_eq!(t.bytes, 3 << 20);
    }
}

/// An invalid config exits 2 and leaves the kernel exactly as it was.
#[test]
fn invalid_config_changes_nothing() {
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let before = lab.kernel_snapshot();
    let bad = two_uplinks("round-robin", 1, 1)
        .replace("gateway = \"10.37.2.1\"", "gateway = \"10.37.2\"");
    let out = lab.multiwan(&[
        "apply",
        "-c",
        &lab.write_config(&bad),
        "--run-dir",
        &lab.run_dir(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uplink[1].gateway: invalid IPv4 address")
    );
    assert_eq!(before, lab.kernel_snapshot());
}

/// An apply that fails half-way (the kernel refuses a route: the gateway is not on the link)
/// undoes every change it made, sysctls included.
#[test]
fn failed_apply_rolls_back_everything() {
    let lab = Lab::new(2, 1);
    let before = lab.kernel_snapshot();
    let bad = two_uplinks("round-robin", 1, 1)
        .replace("gateway = \"10.37.2.1\"", "gateway = \"10.99.0.1\"");
    let out = lab.multiwan(&[
        "apply",
        "-c",
        &lab.write_config(&bad),
        "--run-dir",
        &lab.run_dir(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back") && err.contains("via 10.99.0.1"),
        "{err}"
    );
    assert_eq!(before, lab.kernel_snapshot(), "nothing half-applied");
    assert!(
        !std::path::Path::new(&lab.run_dir()).exists()
            || std::fs::read_dir(lab.run_dir())
                .expect("dir")
                .next()
                .is_none(),
        "no saved state after a failed apply"
    );
}

/// A run directory that cannot keep the replaced sysctls (here a regular file) refuses the
/// apply before anything changes: otherwise `down` could never put them back.
#[test]
fn apply_without_a_usable_run_dir_changes_nothing() {
    let lab = Lab::new(2, 1);
    let before = lab.kernel_snapshot();
    let file = lab.dir.join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let out = lab.multiwan(&[
        "apply",
        "-c",
        &lab.write_config(&two_uplinks("round-robin", 1, 1)),
        "--run-dir",
        &file.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing was changed") && err.contains("not a directory"),
        "{err}"
    );
    assert_eq!(before, lab.kernel_snapshot(), "nothing applied");
}

/// What main routes by a route of its own out of an uplink — its connected subnet, where the
/// ISP's gateway, DHCP server or modem lives — is main's, not balanced: every connection to
/// ISP 2's address on the router's link leaves by wan2, from the LAN and from the router
/// itself. Balanced, half of them left by wan1 and were lost (a DHCP client's unicast
/// renewals never arrived). The internet is still balanced.
#[test]
fn an_uplinks_own_subnet_is_not_balanced() {
    use std::net::{IpAddr, SocketAddr};
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let ep: SocketAddr = ([10, 37, 2, 1], 7200).into();
    let _server = traffic::Server::start(&lab.topo.isps[1].ns, ep).expect("server");
    let wan2 = Some(IpAddr::from([10, 37, 2, 253]));
    let from_lan = tcp_hellos(&lab.topo.hosts[0].ns, ep);
    assert!(from_lan.iter().all(|s| *s == wan2), "{from_lan:?}");
    let from_router = tcp_hellos(&lab.topo.router, ep);
    assert!(from_router.iter().all(|s| *s == wan2), "{from_router:?}");
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
}

/// A config change that replaces the nft table (here a new balance method) keeps every
/// uplink's count of new connections: `status` and the Prometheus counters never go back.
#[test]
fn a_replaced_table_keeps_the_connection_counts() {
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
    let packets = |name: &str| -> u64 {
        let text = lab
            .topo
            .router
            .exec("nft", &["list", "counter", "inet", "multiwan", name])
            .expect("nft");
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packets in {text}"))
    };
    let before = (packets("conns_isp1"), packets("conns_isp2"));
    assert!(before.0 >= 2 && before.1 >= 2, "{before:?}");
    let out = lab.apply(&two_uplinks("random", 1, 1));
    assert!(out.contains("nft table replaced"), "{out}");
    let after = (packets("conns_isp1"), packets("conns_isp2"));
    assert!(
        after.0 >= before.0 && after.1 >= before.1,
        "{before:?} -> {after:?}"
    );
}

/// An uplink removed from the config gives its interface back as it was: a re-apply without
/// it restores the `rp_filter` multiwan had set there, and `down` still restores the rest.
#[test]
fn a_removed_uplinks_interface_gets_its_sysctls_back() {
    let lab = Lab::new(2, 1);
    let r = &lab.topo.router;
    let before = lab.kernel_snapshot();
    let original = r
        .read_sysctl("net.ipv4.conf.wan2.rp_filter")
        .expect("sysctl");
    lab.apply(&two_uplinks("round-robin", 1, 1));
    assert_eq!(
        r.read_sysctl("net.ipv4.conf.wan2.rp_filter")
            .expect("sysctl"),
        "2"
    );
    let one = "[lan]\ninterfaces = [\"lan0\"]\n[[uplink]]\nname = \"isp1\"\ninterface = \"wan1\"\ngateway = \"10.37.1.1\"\n";
    lab.apply(one);
    assert_eq!(
        r.read_sysctl("net.ipv4.conf.wan2.rp_filter")
            .expect("sysctl"),
        original,
        "wan2 is no uplink any more"
    );
    lab.down();
    assert_eq!(before, lab.kernel_snapshot(), "down restores the rest");
}

/// A port forward used from a host on the uplink's own subnet (a device on the modem's or
/// the upstream router's LAN): the LAN host's answers go to that host directly, by main's
/// connected route, as the host's own packets came — not by the uplink's table to the
/// gateway, which would see only one direction of the connection.
#[test]
fn port_forward_answers_to_a_host_on_the_uplinks_subnet_go_to_it_directly() {
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let host = lab.topo.hosts[0].addr;
    common::load_nft(
        &lab,
        "admin",
        &format!("table ip admin {{\n chain pre {{\n  type nat hook prerouting priority dstnat; policy accept;\n  iifname \"wan2\" tcp dport 8080 dnat to {host}:7000\n }}\n}}\n"),
    );
    let _lan_server = traffic::Server::start(
        &lab.topo.hosts[0].ns,
        std::net::SocketAddrV4::new(host, 7000),
    )
    .expect("lan server");
    let isp2 = &lab.topo.isps[1].ns;
    isp2.ip(&["addr", "add", "10.37.2.77/24", "dev", "cpe"])
        .expect("a host on wan2's link");
    common::watch_next_hops(
        &lab,
        "10.37.2.77".parse().expect("ip"),
        "10.37.2.1".parse().expect("ip"),
    );
    let neighbour: std::net::IpAddr = [10, 37, 2, 77].into();
    let fwd_ep: std::net::SocketAddr = ([10, 37, 2, 253], 8080).into();
    let seen = isp2
        .spawn(move || traffic::tcp_hello_from_ip(neighbour, fwd_ep, Duration::from_secs(2)).ok())
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(seen, Some(neighbour), "the LAN host answers the neighbour");
    let (via_gateway, direct, chain) = common::next_hop_counts(&lab, "ip");
    assert!(
        via_gateway == 0 && direct > 0,
        "answers to the neighbour go to it, not by the gateway: {chain}"
    );
}

/// The router's packets to an on-link host of an uplink's subnet leave directly: a reply to
/// a neighbour or modem connecting in (it is resolved with ARP, not sent to the gateway),
/// and a socket bound to an uplink's interface (`ping -I wan2`, SO_BINDTODEVICE) works
/// whatever uplink the balancing picks for it (routed by its interface's table).
#[test]
fn on_link_replies_and_interface_bound_sockets_stay_on_their_uplink() {
    use std::net::{IpAddr, SocketAddr};
    let lab = Lab::new(2, 1);
    lab.apply(&two_uplinks("round-robin", 1, 1));
    let isp2 = &lab.topo.isps[1].ns;
    isp2.ip(&["addr", "add", "10.37.2.77/24", "dev", "cpe"])
        .expect("a neighbour on wan2's link");
    let ep: SocketAddr = ([10, 37, 2, 253], 7300).into();
    let _server = traffic::Server::start(&lab.topo.router, ep).expect("server");
    // Which next hop the router's packets to the neighbour take, counted after routing.
    common::watch_next_hops(
        &lab,
        "10.37.2.77".parse().expect("ip"),
        "10.37.2.1".parse().expect("ip"),
    );
    let neighbour: IpAddr = [10, 37, 2, 77].into();
    let seen = isp2
        .spawn(move || traffic::tcp_hello_from_ip(neighbour, ep, Duration::from_secs(2)).ok())
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(
        seen,
        Some(neighbour),
        "the neighbour's connection is answered"
    );
    let (via_gateway, direct, chain) = common::next_hop_counts(&lab, "ip");
    assert!(
        via_gateway == 0 && direct > 0,
        "replies to the neighbour go to it, not by the gateway: {chain}"
    );
    let server = lab.topo.server_endpoint();
    let bound = common::hellos_bound_to(&lab, "wan2", SocketAddr::from(server));
    assert!(
        bound.iter().all(|a| a.as_deref() == Some("10.37.2.253")),
        "bound to wan2, every connection leaves by it: {bound:?}"
    );
}
