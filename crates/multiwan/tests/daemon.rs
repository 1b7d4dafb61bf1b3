//! `multiwan run` against the real kernel: failover, failback, link and address changes,
//! reload and crash behaviour, with ISPs whose upstream can be cut while the link stays up.

mod common;

use std::time::Duration;

use common::{count, two_uplinks_checked, Lab, WaitFor};

#[test]
fn upstream_blackhole_fails_over_and_back() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    assert_eq!(d.uplink_state("isp1").as_deref(), Some("up"));
    assert_eq!(d.uplink_state("isp2").as_deref(), Some("up"));
    let v = lab.tcp_from_host(0, 10);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (5, 5),
        "both uplinks carry traffic from the start: {v:?}"
    );

    lab.cut_upstream(0);
    let cut = std::time::Instant::now();
    // New connections succeed again once 10 in a row work (all via isp2).
    let mut streak = 0;
    while streak < 10 {
        assert!(
            cut.elapsed() < Duration::from_secs(2),
            "no failover within 2 s\n{}",
            lab.daemon_log()
        );
        match lab.try_connect(0, Duration::from_millis(150)) {
            Some(1) => streak += 1,
            _ => streak = 0,
        }
    }
    let failover = cut.elapsed();
    eprintln!("failover took {failover:?}");
    assert_eq!(d.uplink_state("isp1").as_deref(), Some("down"));

    lab.restore_upstream(0);
    d.wait_for("isp1 back up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    let v = lab.tcp_from_host(0, 10);
    assert_eq!((count(&v, 0), count(&v, 1)), (5, 5), "failback: {v:?}");
}

/// Connections tracked in the router with `mark` (decimal, as /proc shows it).
fn conntrack_with_mark(lab: &Lab, mark: u32) -> usize {
    let table = lab
        .topo
        .router
        .exec("cat", &["/proc/net/nf_conntrack"])
        .expect("conntrack");
    table
        .lines()
        .filter(|l| l.contains("dport=7000") && l.contains(&format!(" mark={mark} ")))
        .count()
}

/// Opens `n` idle connections from host 0 (a PUT that never sends its body); they stay open
/// until dropped.
fn idle_connections(lab: &Lab, n: usize) -> Vec<std::net::TcpStream> {
    let ep = lab.topo.server_endpoint();
    lab.topo.hosts[0]
        .ns
        .spawn(move || {
            (0..n)
                .map(|_| {
                    use std::io::Write;
                    let mut s =
                        std::net::TcpStream::connect_timeout(&ep.into(), Duration::from_secs(2))
                            .expect("connect");
                    s.write_all(b"PUT 1000000\n").expect("write");
                    s
                })
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// Only the failed uplink's connections are flushed; the survivor's keep flowing throughout.
#[test]
fn failover_flushes_only_the_failed_uplinks_flows_and_spares_the_rest() {
    let lab = Lab::with_spec(multiwan_lab::topology::TopologySpec {
        isps: vec![
            multiwan_lab::topology::IspSpec {
                rate_mbit: Some(20),
                ..Default::default()
            };
            2
        ],
        lan_hosts: 1,
    });
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let idle = idle_connections(&lab, 4);
    assert_eq!(conntrack_with_mark(&lab, 0x0100_0000), 2);
    assert_eq!(conntrack_with_mark(&lab, 0x0200_0000), 2);
    // A download on isp2 that spans the whole failover (the next connection is isp1's turn,
    // so open a throwaway one first).
    assert_eq!(lab.try_connect(0, Duration::from_secs(1)), Some(0));
    let ep = lab.topo.server_endpoint();
    let download = lab.topo.hosts[0]
        .ns
        .spawn(move || multiwan_lab::traffic::tcp_get(ep, 6 << 20))
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(200));
    lab.cut_upstream(0);
    d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    d.wait_for("isp1's flows flushed", Duration::from_secs(2), |_| {
        conntrack_with_mark(&lab, 0x0100_0000) == 0
    });
    assert_eq!(
        conntrack_with_mark(&lab, 0x0200_0000),
        3,
        "isp2's connections are untouched"
    );
    let t = download
        .join()
        .expect("join")
        .expect("the download on the healthy uplink completes");
    assert_eq!(lab.topo.isp_of(t.seen_as), Some(1));
    drop(idle);
}

/// DHCP renew / PPPoE reconnect with a new address: SNAT and source rules follow.
#[test]
fn address_change_is_followed() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let r = &lab.topo.router;
    // Like a DHCP client: the old address goes, the new one comes. (Adding first would not
    // work: deleting a primary address also deletes the secondaries of its subnet unless
    // promote_secondaries is set.)
    r.ip(&["addr", "del", "10.37.2.253/24", "dev", "wan2"])
        .expect("old address gone");
    r.ip(&["addr", "add", "10.37.2.254/24", "dev", "wan2"])
        .expect("new address");
    d.wait_for(
        "source rule for the new address",
        Duration::from_secs(3),
        |_| {
            r.ip(&["rule", "show"])
                .expect("rules")
                .contains("from 10.37.2.254 lookup 1002")
        },
    );
    assert!(!r
        .ip(&["rule", "show"])
        .expect("rules")
        .contains("10.37.2.253"));
    // Without an address the uplink was down for a moment; it proves itself again first.
    d.wait_for("isp2 up again", Duration::from_secs(3), |d| {
        d.uplink_state("isp2").as_deref() == Some("up")
    });
    let ep = lab.topo.server_endpoint();
    let seen: Vec<std::net::Ipv4Addr> = lab.topo.hosts[0]
        .ns
        .spawn(move || {
            (0..6)
                .filter_map(|_| multiwan_lab::traffic::tcp_hello(ep, Duration::from_secs(2)).ok())
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join");
    assert_eq!(seen.len(), 6, "every connection works: {seen:?}");
    assert!(
        seen.contains(&"10.37.2.254".parse().expect("ip")),
        "{seen:?}"
    );
    assert!(
        !seen.contains(&"10.37.2.253".parse().expect("ip")),
        "{seen:?}"
    );
}

/// ppp0 going away and coming back with a new index: down at once, up after proof.
#[test]
fn interface_deleted_and_recreated_is_followed() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let r = &lab.topo.router;
    r.ip(&["link", "del", "wan2"]).expect("delete");
    let t = d.wait_for("isp2 down", Duration::from_secs(2), |d| {
        d.uplink_state("isp2").as_deref() == Some("down")
    });
    assert!(
        t < Duration::from_millis(1500),
        "link loss is noticed without waiting for probes ({t:?})"
    );
    let s = d.state().expect("state");
    assert_eq!(s["uplinks"][1]["reason"], "no_interface");
    let v = lab.tcp_from_host(0, 6);
    assert_eq!(count(&v, 0), 6, "all traffic on isp1 meanwhile: {v:?}");
    multiwan_lab::netns::veth(r, "wan2", &lab.topo.isps[1].ns, "cpe").expect("re-create");
    r.ip(&["addr", "add", "10.37.2.253/24", "dev", "wan2"])
        .expect("address");
    lab.topo.isps[1]
        .ns
        .ip(&["addr", "add", "10.37.2.1/24", "dev", "cpe"])
        .expect("isp address");
    lab.topo.isps[1]
        .ns
        .sysctl("net.ipv4.conf.cpe.rp_filter", "1")
        .expect("rp_filter");
    d.wait_for("isp2 back up", Duration::from_secs(5), |d| {
        d.uplink_state("isp2").as_deref() == Some("up")
    });
    let v = lab.tcp_from_host(0, 10);
    assert_eq!((count(&v, 0), count(&v, 1)), (5, 5), "{v:?}");
}

/// Tiers fall through when tier 1 fails and come back when it returns; with every uplink
/// down new connections are refused at once, and one uplink back is enough.
#[test]
fn tiers_fall_through_and_all_down_then_one_back() {
    let lab = Lab::new(2, 1);
    // With fail-open off: every uplink down means new connections are refused.
    let text = two_uplinks_checked("round-robin")
        .replace(
            "gateway = \"10.37.2.1\"\n",
            "gateway = \"10.37.2.1\"\ntier = 2\n",
        )
        .replace("[balance]\n", "[balance]\nfail_open = false\n");
    let d = lab.start_daemon(&text);
    let v = lab.tcp_from_host(0, 6);
    assert_eq!(count(&v, 0), 6, "tier 2 idle: {v:?}");
    lab.cut_upstream(0);
    d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    let v = lab.tcp_from_host(0, 6);
    assert_eq!(count(&v, 1), 6, "tier 2 takes over: {v:?}");
    lab.cut_upstream(1);
    d.wait_for("isp2 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp2").as_deref() == Some("down")
    });
    // Refused at once (ICMP unreachable), not a timeout.
    let ep = lab.topo.server_endpoint();
    let (err, took) = lab.topo.hosts[0]
        .ns
        .spawn(move || {
            let start = std::time::Instant::now();
            let r = std::net::TcpStream::connect_timeout(&ep.into(), Duration::from_secs(3));
            (r.err().map(|e| e.kind()), start.elapsed())
        })
        .expect("spawn")
        .join()
        .expect("join");
    assert!(err.is_some(), "no uplink: the connection must fail");
    assert!(
        took < Duration::from_secs(1),
        "refused at once, took {took:?} ({err:?})"
    );
    lab.restore_upstream(1);
    d.wait_for("isp2 back", Duration::from_secs(5), |d| {
        d.uplink_state("isp2").as_deref() == Some("up")
    });
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "{v:?}");
    lab.restore_upstream(0);
    d.wait_for("isp1 back", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 0), 4, "back to tier 1: {v:?}");
}

/// An upstream toggling every 300 ms for 10 s neither crashes the daemon nor makes it
/// rewrite the kernel in a storm; afterwards it settles.
#[test]
fn flapping_upstream_neither_crashes_nor_storms() {
    let lab = Lab::new(2, 1);
    let mut d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let start = std::time::Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(10) {
        if cut {
            lab.restore_upstream(0);
        } else {
            lab.cut_upstream(0);
        }
        cut = !cut;
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.restore_upstream(0);
    assert!(
        d.child.try_wait().expect("wait").is_none(),
        "daemon died:\n{}",
        lab.daemon_log()
    );
    d.wait_for("isp1 settles up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    let reconciles = d.state().expect("state")["reconciles"]
        .as_u64()
        .expect("count");
    // 300 ms on/off with 600 ms to go down and 1 s to come up: few transitions, each one
    // kernel update. A storm would be hundreds.
    assert!(
        reconciles <= 20,
        "{reconciles} kernel updates in 10 s of flapping"
    );
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
}

/// SIGHUP with an invalid config keeps the running state; a valid one is applied as a diff
/// that a connection on an unchanged uplink survives.
#[test]
fn reload_rejects_invalid_and_applies_valid_config() {
    let lab = Lab::with_spec(multiwan_lab::topology::TopologySpec {
        isps: vec![
            multiwan_lab::topology::IspSpec {
                rate_mbit: Some(20),
                ..Default::default()
            };
            2
        ],
        lan_hosts: 1,
    });
    let text = two_uplinks_checked("round-robin");
    let d = lab.start_daemon(&text);
    let before = lab.kernel_snapshot();
    lab.write_config(&text.replace("gateway = \"10.37.2.1\"", "gateway = \"10.37.2\""));
    d.signal(nix::sys::signal::Signal::SIGHUP).expect("signal");
    d.wait_for("the rejection in the log", Duration::from_secs(3), |_| {
        lab.daemon_log().contains("reload rejected")
    });
    assert!(
        lab.daemon_log()
            .contains("uplink[1].gateway: invalid IPv4 address"),
        "{}",
        lab.daemon_log()
    );
    assert_eq!(
        before,
        lab.kernel_snapshot(),
        "an invalid reload changes nothing"
    );

    let ep = lab.topo.server_endpoint();
    assert_eq!(lab.try_connect(0, Duration::from_secs(1)), Some(0));
    // A download that runs for 8 s at the shaped 20 Mbit/s, reporting every byte as it
    // arrives: the reload happens in its middle, and bytes must keep arriving after it.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p = progress.clone();
    let download = lab.topo.hosts[0]
        .ns
        .spawn(move || multiwan_lab::traffic::tcp_time(ep, 8000, &p))
        .expect("spawn");
    let bytes = || progress.load(std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    while bytes() < 256 << 10 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the download never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab.write_config(&text.replace(
        "gateway = \"10.37.1.1\"\n",
        "gateway = \"10.37.1.1\"\nweight = 3\n",
    ));
    d.signal(nix::sys::signal::Signal::SIGHUP).expect("signal");
    d.wait_for("the reload in the log", Duration::from_secs(3), |_| {
        lab.daemon_log().contains("configuration reloaded")
    });
    let at_reload = bytes();
    std::thread::sleep(Duration::from_millis(500));
    let after = bytes();
    assert!(
        started.elapsed() < Duration::from_millis(7500),
        "the reload took so long that the transfer may have ended before it; nothing proven"
    );
    // 20 Mbit/s is 1.2 MiB in half a second; a quarter of that proves the flow kept moving.
    assert!(
        after - at_reload >= 300 << 10,
        "the transfer stalled across the reload: {at_reload} -> {after} bytes in 500 ms"
    );
    let t = download
        .join()
        .expect("join")
        .expect("the transfer survives the reload and completes");
    assert!(
        t.bytes > after,
        "{} bytes at the end, {after} before",
        t.bytes
    );
    assert_eq!(lab.topo.isp_of(t.seen_as), Some(1));
    let v = lab.tcp_from_host(0, 8);
    assert_eq!((count(&v, 0), count(&v, 1)), (6, 2), "new weights: {v:?}");
}

/// `kill -9` leaves forwarding working, and a new daemon adopts the state without breaking
/// the connections in flight.
#[test]
fn kill_9_loses_nothing_and_restart_adopts() {
    let lab = Lab::with_spec(multiwan_lab::topology::TopologySpec {
        isps: vec![
            multiwan_lab::topology::IspSpec {
                rate_mbit: Some(20),
                ..Default::default()
            };
            2
        ],
        lan_hosts: 1,
    });
    let text = two_uplinks_checked("round-robin");
    let mut d = lab.start_daemon(&text);
    d.signal(nix::sys::signal::Signal::SIGKILL).expect("signal");
    let _ = d.child.wait();
    let v = lab.tcp_from_host(0, 6);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (3, 3),
        "forwarding works without the daemon: {v:?}"
    );
    let ep = lab.topo.server_endpoint();
    let downloads = lab.topo.hosts[0]
        .ns
        .spawn(move || {
            let hs: Vec<_> = (0..2)
                .map(|_| std::thread::spawn(move || multiwan_lab::traffic::tcp_get(ep, 3 << 20)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("join"))
                .collect::<Vec<_>>()
        })
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(&d.state_path).ok();
    let d2 = lab.start_daemon(&text);
    assert_eq!(d2.uplink_state("isp1").as_deref(), Some("up"));
    for t in downloads.join().expect("join") {
        t.expect("a transfer in flight survives the restart");
    }
    drop(d);
}

/// The tcp and dns probe methods detect an upstream cut like icmp does.
#[test]
fn tcp_and_dns_probes_work() {
    let lab = Lab::new(2, 1);
    let server = multiwan_lab::topology::SERVER_ADDR;
    let _dns = multiwan_lab::traffic::DnsResponder::start(
        &lab.topo.server,
        std::net::SocketAddrV4::new(server, 53),
    )
    .expect("dns");
    let text = two_uplinks_checked("round-robin")
        .replacen(
            &format!("targets = [\"{server}\"]"),
            &format!("targets = [\"{server}:7000\"]\nmethod = \"tcp\""),
            1,
        )
        .replacen(
            &format!("targets = [\"{server}\"]\n\n[balance]"),
            &format!("targets = [\"{server}\"]\nmethod = \"dns\"\n\n[balance]"),
            1,
        );
    assert!(
        text.contains("method = \"tcp\"") && text.contains("method = \"dns\""),
        "{text}"
    );
    let d = lab.start_daemon(&text);
    // Both stay up on their own probes for a couple of seconds.
    std::thread::sleep(Duration::from_millis(1500));
    let s = d.state().expect("state");
    for u in s["uplinks"].as_array().expect("uplinks") {
        assert_eq!(u["state"], "up", "{s}");
        assert!(u["rtt_ms"].as_f64().is_some(), "probes answered: {s}");
        assert_eq!(u["targets"][0]["loss_percent"].as_f64(), Some(0.0), "{s}");
    }
    for n in [0, 1] {
        lab.cut_upstream(n);
        let name = format!("isp{}", n + 1);
        d.wait_for("down", Duration::from_secs(3), |d| {
            d.uplink_state(&name).as_deref() == Some("down")
        });
        lab.restore_upstream(n);
        d.wait_for("up", Duration::from_secs(5), |d| {
            d.uplink_state(&name).as_deref() == Some("up")
        });
    }
}

/// Quality limits: an uplink losing 40 % of its packets is degraded and takes no new
/// connections while a healthy uplink exists; it recovers when the loss stops.
#[test]
fn lossy_uplink_is_degraded_and_recovers() {
    let lab = Lab::new(2, 1);
    let text = two_uplinks_checked("round-robin").replacen(
        "[uplink.check]\n",
        "[uplink.check]\nmax_loss = 15\nrecover_loss = 5\nwindow = \"2s\"\ndown_after = 20\n",
        1,
    );
    let d = lab.start_daemon(&text);
    // Random 40 % loss beyond ISP 1, emulated with nft numgen (no netem on this kernel).
    let isp = &lab.topo.isps[0].ns;
    isp.nft("table ip loss {\n chain forward_loss {\n  type filter hook forward priority 0; policy accept;\n  numgen random mod 100 < 40 drop\n }\n}\n")
        .expect("loss");
    d.wait_for("isp1 degraded", Duration::from_secs(6), |d| {
        d.uplink_state("isp1").as_deref() == Some("degraded")
    });
    let s = d.state().expect("state");
    assert_eq!(s["uplinks"][0]["reason"], "high_loss", "{s}");
    let mut v = Vec::new();
    for _ in 0..6 {
        v.push(lab.try_connect(0, Duration::from_secs(2)));
    }
    assert_eq!(
        count(&v, 1),
        6,
        "a degraded uplink takes no new connections: {v:?}"
    );
    isp.exec("nft", &["delete", "table", "ip", "loss"])
        .expect("stop loss");
    d.wait_for("isp1 recovered", Duration::from_secs(8), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
}

/// One connection from host `h`: its uplink; a failure panics with the daemon's log and the
/// router's connection table, to tell a routing problem from a slow machine.
fn connect_or_explain(lab: &Lab, h: usize) -> usize {
    lab.try_connect(h, Duration::from_secs(1))
        .unwrap_or_else(|| {
            panic!(
                "host {h}'s connection failed; daemon log:\n{}\nconntrack:\n{}",
                lab.daemon_log(),
                lab.topo
                    .router
                    .exec("cat", &["/proc/net/nf_conntrack"])
                    .unwrap_or_default()
            )
        })
}

/// src-hash: when an uplink fails only its hosts move; the others keep their uplink.
#[test]
fn src_hash_failover_moves_only_the_failed_uplinks_hosts() {
    let lab = Lab::new(2, 6);
    let d = lab.start_daemon(&two_uplinks_checked("src-hash"));
    let before: Vec<usize> = (0..6).map(|h| connect_or_explain(&lab, h)).collect();
    assert!(
        before.contains(&0) && before.contains(&1),
        "hosts spread: {before:?}"
    );
    lab.cut_upstream(0);
    d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    let during: Vec<usize> = (0..6).map(|h| connect_or_explain(&lab, h)).collect();
    assert!(during.iter().all(|u| *u == 1), "{during:?}");
    lab.restore_upstream(0);
    d.wait_for("isp1 up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    let after: Vec<usize> = (0..6).map(|h| connect_or_explain(&lab, h)).collect();
    assert_eq!(
        before,
        after,
        "every host is back on its own uplink; daemon log:\n{}",
        lab.daemon_log()
    );
}

/// Weights as large as `check` accepts (1..=1000), co-prime so that the rotation has 1 999
/// slots: the map is written in several messages (one list attribute holds at most 64 KiB),
/// and the multipath route's weights are scaled into the kernel's 1..=256. Before, the
/// verification refused every update (the kernel kept other nexthop weights than the plan's)
/// and the daemon never installed its plan.
#[test]
fn weights_up_to_the_maximum_install_and_fail_over() {
    let lab = Lab::new(2, 1);
    let text = two_uplinks_checked("round-robin")
        .replace(
            "gateway = \"10.37.1.1\"",
            "gateway = \"10.37.1.1\"\nweight = 1000",
        )
        .replace(
            "gateway = \"10.37.2.1\"",
            "gateway = \"10.37.2.1\"\nweight = 999",
        );
    let d = lab.start_daemon(&text);
    let used: std::collections::BTreeSet<usize> =
        (0..8).map(|_| connect_or_explain(&lab, 0)).collect();
    assert_eq!(used.len(), 2, "both uplinks carry connections: {used:?}");
    let updates = || {
        lab.daemon_log()
            .lines()
            .filter(|l| l.contains("kernel updated"))
            .count()
    };
    let before = updates();
    lab.cut_upstream(0);
    d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    d.wait_for(
        "the update after isp1 went down",
        Duration::from_secs(3),
        |_| updates() > before,
    );
    for _ in 0..4 {
        assert_eq!(connect_or_explain(&lab, 0), 1, "{}", lab.daemon_log());
    }
    let log = lab.daemon_log();
    assert!(!log.contains("cannot update the kernel"), "{log}");
}

/// The hook runs on every transition with the documented environment, and systemd hears
/// READY=1 and STOPPING=1.
#[test]
fn hook_and_sd_notify() {
    let lab = Lab::new(2, 1);
    let record = lab.dir.join("hook.log");
    let hook = lab.dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$MULTIWAN_UPLINK $MULTIWAN_INTERFACE $MULTIWAN_OLD_STATE $MULTIWAN_NEW_STATE $MULTIWAN_REASON\" >> {}\n",
            record.display()
        ),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let sock_path = lab.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let text = format!(
        "[daemon]\nhook = \"{}\"\n\n{}",
        hook.display(),
        two_uplinks_checked("round-robin")
    );
    let d = lab.start_daemon_with_env(
        &text,
        &[("NOTIFY_SOCKET", &sock_path.display().to_string())],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("a notification");
    // sd-notify ends each assignment with a newline, as sd_notify(3) allows.
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim_end(), "READY=1");
    lab.cut_upstream(0);
    d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    let wait_record = |want: &str| {
        let start = std::time::Instant::now();
        loop {
            let got = std::fs::read_to_string(&record).unwrap_or_default();
            if got.contains(want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "hook output {got:?} lacks {want:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_record("isp1 wan1 up down probes_failing");
    lab.restore_upstream(0);
    d.wait_for("isp1 up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    wait_record("isp1 wan1 down up healthy\n");
    drop(d);
    let mut seen = Vec::new();
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
        if seen.last().map(String::as_str) == Some("STOPPING=1") {
            break;
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("STOPPING=1"),
        "{seen:?}"
    );
}

/// Carrier loss (the modem's link goes away) takes the uplink down without waiting for
/// probes; when the carrier returns the uplink proves itself and comes back.
#[test]
fn carrier_loss_is_immediate_and_the_uplink_returns() {
    let lab = Lab::new(2, 1);
    // Probes so slow (6 × 1 s) that only the link event can take isp1 down within 3 s.
    let text = two_uplinks_checked("round-robin").replacen(
        "[uplink.check]\n",
        "[uplink.check]\ninterval = \"1s\"\ntimeout = \"500ms\"\nup_after = 2\n",
        1,
    );
    let d = lab.start_daemon(&text);
    lab.topo.isps[0]
        .ns
        .ip(&["link", "set", "cpe", "down"])
        .expect("carrier off");
    let t = d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    eprintln!("carrier loss noticed after {t:?}");
    assert_eq!(
        d.state().expect("state")["uplinks"][0]["reason"],
        "link_down"
    );
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 1), 4, "{v:?}");
    lab.topo.isps[0]
        .ns
        .ip(&["link", "set", "cpe", "up"])
        .expect("carrier on");
    let t = d.wait_for("isp1 up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    eprintln!("carrier back: up after {t:?}\n{}", lab.daemon_log());
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
}

/// `gateway = "auto"`: the uplink follows the default route its DHCP client installs, waits
/// while there is none, and moves when a new lease brings a new gateway.
#[test]
fn dhcp_gateway_is_learned_and_followed() {
    let lab = Lab::new(2, 1);
    let text =
        two_uplinks_checked("round-robin").replace("gateway = \"10.37.2.1\"", "gateway = \"auto\"");
    let r = &lab.topo.router;
    let d = lab.start_daemon(&text);
    // No default route through wan2 yet: isp2 waits for one.
    d.wait_for("isp2 waiting for a gateway", Duration::from_secs(3), |d| {
        d.state()
            .is_some_and(|s| s["uplinks"][1]["reason"] == "no_gateway")
    });
    // The DHCP client installs its default route (with a worse metric than wan1's).
    r.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.37.2.1",
        "dev",
        "wan2",
        "metric",
        "200",
    ])
    .expect("dhcp route");
    d.wait_for("isp2 up", Duration::from_secs(5), |d| {
        d.uplink_state("isp2").as_deref() == Some("up")
    });
    assert!(r
        .ip(&["route", "show", "table", "1002"])
        .expect("table")
        .contains("default via 10.37.2.1 dev wan2"));
    // A new lease: the ISP's gateway moves to .2.
    let isp = &lab.topo.isps[1].ns;
    // Keep .2 when .1 (the primary) goes.
    isp.sysctl("net.ipv4.conf.cpe.promote_secondaries", "1")
        .expect("sysctl");
    isp.ip(&["addr", "add", "10.37.2.2/24", "dev", "cpe"])
        .expect("new gateway address");
    r.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "10.37.2.2",
        "dev",
        "wan2",
        "metric",
        "200",
    ])
    .expect("new dhcp route");
    r.ip(&[
        "route",
        "del",
        "default",
        "via",
        "10.37.2.1",
        "dev",
        "wan2",
        "metric",
        "200",
    ])
    .ok();
    d.wait_for(
        "table 1002 via the new gateway",
        Duration::from_secs(3),
        |_| {
            r.ip(&["route", "show", "table", "1002"])
                .expect("table")
                .contains("default via 10.37.2.2 dev wan2")
        },
    );
    isp.ip(&["addr", "del", "10.37.2.1/24", "dev", "cpe"])
        .expect("old gateway gone");
    std::thread::sleep(Duration::from_millis(300));
    let v = lab.tcp_from_host(0, 6);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (3, 3),
        "{v:?}\n{}",
        lab.daemon_log()
    );
}

/// Someone deletes multiwan's route or rule by hand: the daemon notices (netlink) and puts
/// the plan back.
#[test]
fn manual_damage_is_repaired() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let r = &lab.topo.router;
    r.ip(&["route", "del", "default", "table", "1001"])
        .expect("damage a route");
    d.wait_for("route restored", Duration::from_secs(3), |_| {
        r.ip(&["route", "show", "table", "1001"])
            .expect("table")
            .contains("default via 10.37.1.1")
    });
    r.ip(&["rule", "del", "priority", "32763"])
        .expect("damage a rule");
    d.wait_for("rule restored", Duration::from_secs(3), |_| {
        r.ip(&["rule", "show"])
            .expect("rules")
            .contains("32763:\tfrom all lookup main suppress_prefixlength 0")
    });
    assert!(lab.daemon_log().contains("drifted"), "{}", lab.daemon_log());
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
}

/// An uplink whose interface does not exist yet when the daemon starts waits for it; the
/// others work from the first second.
#[test]
fn uplink_without_interface_at_start_waits_for_it() {
    let lab = Lab::new(2, 1);
    let r = &lab.topo.router;
    r.ip(&["link", "del", "wan2"]).expect("no wan2 yet");
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    assert_eq!(d.uplink_state("isp1").as_deref(), Some("up"));
    let s = d.state().expect("state");
    assert_eq!(s["uplinks"][1]["reason"], "no_interface", "{s}");
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 0), 4, "{v:?}");
    multiwan_lab::netns::veth(r, "wan2", &lab.topo.isps[1].ns, "cpe").expect("wan2 appears");
    r.ip(&["addr", "add", "10.37.2.253/24", "dev", "wan2"])
        .expect("address");
    lab.topo.isps[1]
        .ns
        .ip(&["addr", "add", "10.37.2.1/24", "dev", "cpe"])
        .expect("isp address");
    lab.topo.isps[1]
        .ns
        .sysctl("net.ipv4.conf.cpe.rp_filter", "1")
        .expect("rp_filter");
    d.wait_for("isp2 up", Duration::from_secs(5), |d| {
        d.uplink_state("isp2").as_deref() == Some("up")
    });
    // Its loose rp_filter came with it.
    assert_eq!(
        r.read_sysctl("net.ipv4.conf.wan2.rp_filter")
            .expect("sysctl"),
        "2"
    );
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
}

/// A one-shot `apply` next to a running daemon is refused: it would undo the daemon's
/// failover decisions.
#[test]
fn apply_refuses_to_fight_a_running_daemon() {
    let lab = Lab::new(2, 1);
    let text = two_uplinks_checked("round-robin");
    let _d = lab.start_daemon(&text);
    let before = lab.kernel_snapshot();
    let out = lab.multiwan(&[
        "apply",
        "-c",
        &lab.write_config(&text),
        "--run-dir",
        &lab.run_dir(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("multiwan reload"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(before, lab.kernel_snapshot());
}

/// Issue 10 "Files and privileges": hooks run one at a time, in the order of the transitions,
/// with a clean environment (no NOTIFY_SOCKET), and a hook anyone but root could change is
/// refused.
#[test]
fn hooks_run_in_order_alone_with_a_clean_environment() {
    let lab = Lab::new(2, 1);
    let record = lab.dir.join("hook.log");
    let hook = lab.dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"start $MULTIWAN_SEQUENCE $MULTIWAN_OLD_STATE $MULTIWAN_NEW_STATE\" >> {rec}\nenv > {dir}/env.$MULTIWAN_SEQUENCE\nsleep 0.1\necho \"end $MULTIWAN_SEQUENCE\" >> {rec}\n",
            rec = record.display(),
            dir = lab.dir.display()
        ),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let sock_path = lab.dir.join("notify.sock");
    let _sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("notify socket");
    let text = format!(
        "[daemon]\nhook = \"{}\"\n\n{}",
        hook.display(),
        two_uplinks_checked("round-robin")
    );
    let _d = lab.start_daemon_with_env(
        &text,
        &[("NOTIFY_SOCKET", &sock_path.display().to_string())],
    );
    let rd = lab.run_dir();
    // Fast flaps: each drain and undrain is a transition at once; the hooks (0.1 s each)
    // cannot keep up, so they queue.
    for _ in 0..4 {
        for action in ["disable", "enable"] {
            let out = lab.multiwan(&["uplink", "isp1", action, "--run-dir", &rd]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let lines = |want: usize| {
        let start = std::time::Instant::now();
        loop {
            let got = std::fs::read_to_string(&record).unwrap_or_default();
            let n = got.lines().filter(|l| l.starts_with("end ")).count();
            if n >= want {
                return got;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{n} of {want} hooks done: {got}\n{}",
                lab.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let got = lines(8);
    let rows: Vec<Vec<&str>> = got.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(rows.len(), 16, "{got}");
    let mut prev_new = "up".to_string();
    for (i, pair) in rows.chunks(2).enumerate() {
        let seq = (i + 1).to_string();
        // start N, end N, start N+1, ...: in order and never two at once.
        assert_eq!((pair[0][0], pair[0][1]), ("start", seq.as_str()), "{got}");
        assert_eq!(pair[1], ["end", seq.as_str()], "{got}");
        assert_eq!(
            pair[0][2], prev_new,
            "each call starts where the last ended: {got}"
        );
        prev_new = pair[0][3].to_string();
        let env = std::fs::read_to_string(lab.dir.join(format!("env.{seq}"))).expect("env");
        assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
        assert!(
            env.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
            "{env}"
        );
        assert!(
            env.contains("MULTIWAN_UPLINK=isp1\n") && env.contains("MULTIWAN_INTERFACE=wan1\n")
        );
        assert!(
            !env.contains("MULTIWAN_LOG"),
            "the daemon's own environment leaks: {env}"
        );
    }
    assert_eq!(prev_new, "up");
    // A world-writable hook is refused, with the reason in the log.
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let out = lab.multiwan(&["uplink", "isp1", "disable", "--run-dir", &rd]);
    assert!(out.status.success());
    let start = std::time::Instant::now();
    while !lab.daemon_log().contains("refusing to run the hook") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lab
        .daemon_log()
        .contains("group or world writable (mode 0777)"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read_to_string(&record).expect("record"), got);
}

#[test]
fn a_route_the_kernel_refuses_leaves_out_only_its_uplink() {
    // isp2's IPv4 gateway is on no link of wan2 (IPv4 gateways are not tested against
    // prefixes): the kernel refuses its route. The daemon takes isp2 down with the reason,
    // installs everything else in the same update, and does not retry in a loop.
    let lab = Lab::new(2, 1);
    let text = two_uplinks_checked("round-robin").replace("10.37.2.1", "10.99.0.1");
    let d = lab.start_daemon(&text);
    d.wait_for("isp1 up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    let s = d.state().expect("state");
    assert_eq!(s["uplinks"][1]["state"], "down", "{s}");
    assert_eq!(s["uplinks"][1]["reason"], "route_refused", "{s}");
    assert!(lab.topo.router.nft("list table inet multiwan").is_ok());
    let v = lab.tcp_from_host(0, 4);
    assert_eq!(count(&v, 0), 4, "isp1 carries every connection: {v:?}");
    std::thread::sleep(Duration::from_secs(2));
    let log = lab.daemon_log();
    assert_eq!(
        log.matches("the kernel refused the uplink's route").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("cannot update the kernel"), "{log}");
}
