//! Coexistence with other policy-routing users on the router, in namespaces: a Tailscale-style
//! setup (its marks under `0xff0000`, rules at 5210–5270, table 52 over a tun device) and a
//! wg-quick-style full tunnel (`not fwmark 0xca6c` to table 51820 over a tun device, the
//! tunnel program's own packets marked `0xca6c`), each with multiwan's daemon running. The tun
//! devices belong to a real tunnel program (socat), as they would to tailscaled or wireguard.
//! What is proven: traffic those users route stays theirs, the tunnel programs' own packets
//! leave by an uplink (and follow failover), and everything else is balanced.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{count, two_uplinks_checked, Lab, WaitFor};
use multiwan_lab::netns::Netns;

/// A tun device held by socat (`-u`: what the kernel routes into it is read and discarded).
struct Tun {
    child: Child,
    name: String,
}

impl Tun {
    fn start(ns: &Netns, name: &str, addr: &str) -> Tun {
        let child = ns
            .command("socat")
            .args([
                "-u",
                &format!("TUN:{addr}/32,tun-name={name},iff-up,iff-no-pi"),
                "OPEN:/dev/null",
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("socat (apt install socat)");
        let start = Instant::now();
        while ns.exec("ip", &["link", "show", "dev", name]).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "socat made no {name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Tun {
            child,
            name: name.to_string(),
        }
    }

    /// Packets the kernel has sent into the tunnel.
    fn tx_packets(&self, ns: &Netns) -> u64 {
        let out = ns
            .exec("ip", &["-j", "-s", "link", "show", "dev", &self.name])
            .expect("ip link");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .expect("tx packets")
    }
}

impl Drop for Tun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ip(ns: &Netns, args: &str) {
    let a: Vec<&str> = args.split_whitespace().collect();
    ns.exec("ip", &a)
        .unwrap_or_else(|e| panic!("ip {args}: {e:#}"));
}

/// A TCP hello from the router itself with `SO_MARK = mark` (what tailscaled and wireguard do
/// for their own packets): the source address the server saw.
fn marked_tcp_hello(lab: &Lab, mark: u32) -> Option<IpAddr> {
    let ep: SocketAddr = lab.topo.server_endpoint().into();
    lab.topo
        .router
        .spawn(move || -> Option<IpAddr> {
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
            s.set_mark(mark).ok()?;
            s.connect_timeout(&ep.into(), Duration::from_secs(1)).ok()?;
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"HELLO\n").ok()?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).ok()?;
            line.trim().parse().ok()
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// A UDP hello from the router itself with `SO_MARK = mark`: the source address the server
/// saw.
fn marked_udp_hello(lab: &Lab, mark: u32) -> Option<IpAddr> {
    let ep: SocketAddr = lab.topo.server_endpoint().into();
    lab.topo
        .router
        .spawn(move || -> Option<IpAddr> {
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::DGRAM, None).ok()?;
            s.set_mark(mark).ok()?;
            let s: std::net::UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.send_to(b"hello", ep).ok()?;
            let mut buf = [0u8; 64];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// A TCP connection attempt from LAN host 0 or (`None`) the router that nobody answers.
fn attempt(lab: &Lab, host: Option<usize>, dst: &str) {
    let to: SocketAddr = format!("{dst}:9").parse().expect("addr");
    let ns = match host {
        Some(h) => &lab.topo.hosts[h].ns,
        None => &lab.topo.router,
    };
    ns.spawn(move || TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok())
        .expect("spawn")
        .join()
        .expect("join");
}

/// Connections the router tracks towards `dst` with any of multiwan's mark bits set.
fn marked_conns_to(lab: &Lab, dst: &str) -> usize {
    let table = lab
        .topo
        .router
        .exec("cat", &["/proc/net/nf_conntrack"])
        .expect("conntrack");
    table
        .lines()
        .filter(|l| l.contains(&format!("dst={dst} ")))
        .filter(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("mark="))
                .and_then(|m| m.parse::<u32>().ok())
                .is_some_and(|m| m & 0xff00_0000 != 0)
        })
        .count()
}

/// Tailscale-style: tailnet traffic from the LAN and from the router goes to `tailscale0`
/// (table 52 at priority 5270 is consulted before multiwan's unmarked rules), tailscaled's own
/// packets (mark `0x80000`, which Tailscale's rules send to `main`, where this router has no
/// default route) leave by a healthy uplink and follow failover, and the rest is balanced.
#[test]
fn tailscale_style_rules_keep_the_tailnet_and_tailscaleds_traffic_follows_failover() {
    let lab = Lab::new(2, 1);
    let r = &lab.topo.router;
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    d.wait_for("both up", Duration::from_secs(10), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
            && d.uplink_state("isp2").as_deref() == Some("up")
    });
    let tun = Tun::start(r, "tailscale0", "100.101.1.1");
    ip(r, "route add 100.64.0.0/10 dev tailscale0 table 52");
    ip(r, "rule add pref 5210 fwmark 0x80000/0xff0000 table main");
    ip(
        r,
        "rule add pref 5230 fwmark 0x80000/0xff0000 table default",
    );
    ip(r, "rule add pref 5250 fwmark 0x80000/0xff0000 unreachable");
    ip(r, "rule add pref 5270 table 52");

    let before = tun.tx_packets(r);
    attempt(&lab, Some(0), "100.100.1.2");
    attempt(&lab, None, "100.100.1.3");
    assert!(
        tun.tx_packets(r) >= before + 2,
        "tailnet traffic from the LAN and the router reaches tailscale0"
    );
    assert_eq!(
        marked_conns_to(&lab, "100.100.1.2"),
        0,
        "a LAN connection to the tailnet is not balanced"
    );
    assert_eq!(marked_conns_to(&lab, "100.100.1.3"), 0);

    let v = lab.tcp_from_host(0, 10);
    // Round-robin over both (other new connections, the router's own, may take turns too).
    assert!(
        count(&v, 0) >= 3 && count(&v, 1) >= 3 && count(&v, 0) + count(&v, 1) == 10,
        "balanced: {v:?}"
    );

    // tailscaled's own packets: balanced over the uplinks like the router's other traffic.
    let seen: Vec<Option<usize>> = (0..4)
        .map(|_| marked_tcp_hello(&lab, 0x80000).and_then(|a| lab.topo.isp_of(a)))
        .collect();
    assert!(
        seen.iter().all(Option::is_some),
        "tailscaled's packets leave by an uplink: {seen:?}"
    );
    lab.cut_upstream(0);
    d.wait_for("isp1 down", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    let seen: Vec<Option<usize>> = (0..4)
        .map(|_| marked_tcp_hello(&lab, 0x80000).and_then(|a| lab.topo.isp_of(a)))
        .collect();
    assert_eq!(
        seen,
        vec![Some(1); 4],
        "tailscaled's packets follow failover"
    );
    let before = tun.tx_packets(r);
    attempt(&lab, Some(0), "100.100.1.4");
    assert!(tun.tx_packets(r) > before, "the tailnet is unaffected");
    drop(d);
    drop(tun);
}

/// wg-quick-style full tunnel, in both orders: set up before multiwan starts (its rules get
/// 32765/32764, after multiwan's marked rules) and again while multiwan runs (its rules get
/// 999/998, before everything of multiwan's). Either way LAN and router traffic goes into the
/// tunnel, and the tunnel program's own packets (mark `0xca6c`, matched by wg-quick with all 32
/// bits) leave by an uplink instead of looping into the tunnel.
#[test]
fn wg_quick_style_full_tunnel_keeps_the_tunnel_and_its_underlay_in_either_order() {
    let lab = Lab::new(2, 1);
    let r = &lab.topo.router;
    let tun = Tun::start(r, "wg0", "10.200.0.2");
    ip(r, "route add default dev wg0 table 51820");
    let wg_up = || {
        ip(r, "-4 rule add not fwmark 0xca6c table 51820");
        ip(r, "-4 rule add table main suppress_prefixlength 0");
    };
    let wg_down = || {
        ip(r, "-4 rule del not fwmark 0xca6c table 51820");
        ip(r, "-4 rule del table main suppress_prefixlength 0");
    };
    // wg-quick's own nft table: UDP marks saved to and restored from the connection mark.
    let wg_nft = "table ip wg-quick-wg0 {\n\
        chain premangle { type filter hook prerouting priority mangle; policy accept; meta l4proto udp meta mark set ct mark; }\n\
        chain postmangle { type filter hook postrouting priority mangle; policy accept; meta l4proto udp meta mark 0xca6c ct mark set meta mark; }\n\
        }\n";
    let f = lab.dir.join("wg.nft");
    std::fs::write(&f, wg_nft).expect("write");
    r.exec("nft", &["-f", &f.display().to_string()])
        .expect("wg-quick's table");
    wg_up();

    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let checks = |order: &str| {
        d.wait_for("isp1 up", Duration::from_secs(10), |d| {
            d.uplink_state("isp1").as_deref() == Some("up")
        });
        let rules = r.exec("ip", &["-4", "rule"]).expect("ip rule");
        let before = tun.tx_packets(r);
        let server = lab.topo.server_endpoint().ip().to_string();
        attempt(&lab, Some(0), &server);
        attempt(&lab, None, &server);
        assert!(
            tun.tx_packets(r) >= before + 2,
            "{order}: LAN and router traffic goes into the tunnel\n{rules}"
        );
        assert_eq!(
            lab.try_connect(0, Duration::from_millis(500)),
            None,
            "{order}: nothing from the LAN bypasses the tunnel"
        );
        // The tunnel program's own packets reach the far end by an uplink.
        for _ in 0..3 {
            let seen = marked_udp_hello(&lab, 0xca6c).and_then(|a| lab.topo.isp_of(a));
            assert!(
                seen.is_some(),
                "{order}: the underlay leaves by an uplink\n{rules}"
            );
        }
    };
    checks("wg-quick first");

    // Again with wg-quick's rules added while multiwan runs (they land before multiwan's).
    wg_down();
    wg_up();
    let rules = r.exec("ip", &["-4", "rule"]).expect("ip rule");
    assert!(
        rules.contains("999:")
            || rules
                .lines()
                .any(|l| l.starts_with("0:") && l.contains("51820")),
        "wg-quick's rule now precedes multiwan's: {rules}"
    );
    // The daemon re-reads others' rules when they change; give it a moment (the checks
    // below are what must hold).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5)
        && !r
            .exec("nft", &["list", "chain", "inet", "multiwan", "output"])
            .is_ok_and(|s| s.contains("0x0000ca6c"))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    checks("wg-quick second");

    // Without the tunnel, everything is balanced again.
    wg_down();
    let v = lab.tcp_from_host(0, 10);
    // Round-robin over both (other new connections, the router's own, may take turns too).
    assert!(
        count(&v, 0) >= 3 && count(&v, 1) >= 3 && count(&v, 0) + count(&v, 1) == 10,
        "balanced: {v:?}"
    );
    drop(d);
    drop(tun);
}
