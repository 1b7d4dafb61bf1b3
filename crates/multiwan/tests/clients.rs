//! Real programs around the daemon (issue 13, "Real clients in the project's own suite"):
//! dnsmasq as the ISP's DHCP server with isc-dhcp-client's dhclient and with dhcpcd on the
//! router, each getting a lease that then changes address and gateway, followed by
//! `gateway = "auto"`; a point-to-point tun device with no gateway made by a real tunnel
//! program (socat over UDP between namespaces) that goes away and comes back; and an admin's
//! own `inet filter` table with `policy drop` plus Docker-style iptables-nft chains, left
//! byte-identical by `apply` and `down`. Every program runs inside the test's namespaces
//! with its files in the test's private directory (dhcpcd, whose state paths are compiled
//! in, gets private /run and /var/lib/dhcpcd in a mount namespace of its own).

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, WaitFor};
use multiwan_lab::netns::Netns;
use multiwan_lab::topology::SERVER_ADDR;

/// A program the test started; stopped (SIGTERM, then SIGKILL) when dropped.
struct Bg {
    name: &'static str,
    child: Child,
}

impl Bg {
    fn spawn(name: &'static str, mut c: Command, log: &Path) -> Bg {
        let log = std::fs::File::create(log).expect("log file");
        c.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = c.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Bg { name, child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, s: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), s);
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        use nix::sys::signal::Signal;
        self.signal(Signal::SIGTERM);
        let t = Instant::now();
        while self.alive() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            eprintln!("{} ignored SIGTERM; killing it", self.name);
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Addresses the server saw for `n` TCP connections from LAN host 0.
fn seen_from_host(lab: &Lab, n: usize) -> Vec<Option<Ipv4Addr>> {
    let ep = lab.topo.server_endpoint();
    lab.topo.hosts[0]
        .ns
        .spawn(move || {
            (0..n)
                .map(|_| multiwan_lab::traffic::tcp_hello(ep, Duration::from_secs(2)).ok())
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join")
}

fn mac(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(&["-j", "link", "show", dev]).expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v[0]["address"].as_str().expect("address").to_string()
}

/// The ISP's DHCP server: dnsmasq on ISP 1's customer side, with a reservation for the
/// router's wan1 that [`Dhcp::change_lease`] moves to another address and gateway.
struct Dhcp {
    dir: PathBuf,
    ns: String,
    router_mac: String,
    server: Option<Bg>,
    runs: usize,
}

const LEASE_1: Ipv4Addr = Ipv4Addr::new(10, 37, 1, 50);
const LEASE_2: Ipv4Addr = Ipv4Addr::new(10, 37, 1, 51);
const GATEWAY_2: Ipv4Addr = Ipv4Addr::new(10, 37, 1, 254);

impl Dhcp {
    fn start(lab: &Lab) -> Dhcp {
        let dir = lab.dir.join("dhcp");
        std::fs::create_dir_all(&dir).expect("dir");
        let router_mac = mac(&lab.topo.router, "wan1");
        std::fs::write(
            dir.join("hosts"),
            format!("{router_mac},set:first,{LEASE_1}\n"),
        )
        .expect("hosts");
        // The second gateway the changed lease names.
        lab.topo.isps[0]
            .ns
            .ip(&["addr", "add", &format!("{GATEWAY_2}/24"), "dev", "cpe"])
            .expect("addr");
        let mut d = Dhcp {
            dir,
            ns: lab.topo.isps[0].ns.name().to_string(),
            router_mac,
            server: None,
            runs: 0,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let dir = &self.dir;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "dnsmasq"])
            .arg("--keep-in-foreground")
            // Nothing from /etc: every setting is here.
            .arg("--conf-file=/dev/null")
            .arg("--port=0")
            .arg("--user=root")
            .arg("--interface=cpe")
            .arg("--bind-interfaces")
            .arg("--dhcp-authoritative")
            .arg("--dhcp-range=10.37.1.100,10.37.1.150,255.255.255.0,1h")
            .arg("--dhcp-option=tag:first,option:router,10.37.1.1")
            .arg(format!(
                "--dhcp-option=tag:second,option:router,{GATEWAY_2}"
            ))
            // No DNS option: nothing in the router may want to rewrite resolv.conf.
            .arg("--dhcp-option=option:dns-server")
            .arg(format!("--dhcp-hostsfile={}", dir.join("hosts").display()))
            .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg("--log-dhcp")
            .arg("--log-facility=-");
        let log = dir.join(format!("dnsmasq-{}.log", self.runs));
        self.server = Some(Bg::spawn("dnsmasq", c, &log));
    }

    /// The router's reservation moves to [`LEASE_2`] with [`GATEWAY_2`] and the server
    /// restarts with it (keeping its lease database); authoritative, it then refuses (NAKs)
    /// the old address. (A SIGHUP would re-read the file, but dnsmasq 2.90 aborts on it when
    /// a lease's reservation changed.)
    fn change_lease(&mut self) {
        std::fs::write(
            self.dir.join("hosts"),
            format!("{},set:second,{LEASE_2}\n", self.router_mac),
        )
        .expect("hosts");
        self.server = None;
        self.spawn();
    }

    fn log(&self) -> String {
        dnsmasq_log(&self.dir)
    }
}

fn dnsmasq_log(dir: &Path) -> String {
    (1..=2)
        .map(|n| std::fs::read_to_string(dir.join(format!("dnsmasq-{n}.log"))).unwrap_or_default())
        .collect()
}

/// A config whose isp1 follows the DHCP client's default route on wan1.
fn auto_config() -> String {
    format!(
        r#"[lan]
interfaces = ["lan0"]

[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "auto"
[uplink.check]
targets = ["{SERVER_ADDR}"]

[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
[uplink.check]
targets = ["{SERVER_ADDR}"]

[balance]
method = "round-robin"
"#
    )
}

/// Until the server sees isp1's traffic from `addr`, and isp1's route uses `gateway`.
fn wait_for_lease(
    lab: &Lab,
    d: &common::Daemon,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
    log: &dyn Fn() -> String,
) {
    let t = Instant::now();
    loop {
        let up = d.uplink_state("isp1").as_deref() == Some("up");
        let routes = lab
            .topo
            .router
            .ip(&["route", "show", "table", "all"])
            .unwrap_or_default();
        // multiwan's own route for isp1 (in its table, not main) through the new gateway.
        let routed = routes.lines().any(|l| {
            l.contains(&format!("via {gateway} dev wan1"))
                && l.contains("table")
                && !l.contains("table main")
        });
        if up && routed && seen_from_host(lab, 4).contains(&Some(addr)) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "isp1 never carried traffic from {addr} via {gateway} (up: {up}, routed: {routed}):\nroutes:\n{routes}\nclient and server:\n{}\ndaemon:\n{}",
            log(),
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn router_without_wan1_address() -> Lab {
    let lab = Lab::new(2, 1);
    // A DHCP router starts with nothing on its uplink: no address, no default route.
    lab.topo
        .router
        .ip(&["addr", "flush", "dev", "wan1"])
        .expect("flush");
    lab
}

/// dhclient's actions for an IPv4 lease (address, default route), as Debian's
/// dhclient-script does them, without its hooks: those write /etc/resolv.conf and files
/// under /run of the machine, which a test must not touch.
fn dhclient_script(dir: &Path) -> PathBuf {
    let path = dir.join("dhclient-script");
    let events = dir.join("dhclient.events");
    std::fs::write(
        &path,
        format!(
            r#"#!/bin/sh
echo "$reason $new_ip_address $new_routers" >>"{}"
case "$reason" in
PREINIT) ip link set dev "$interface" up ;;
BOUND|RENEW|REBIND|REBOOT)
  if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
    ip -4 addr flush dev "$interface"
  fi
  ip -4 addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
  for r in $new_routers; do ip -4 route replace default via "$r" dev "$interface"; break; done ;;
EXPIRE|FAIL|RELEASE|STOP) ip -4 addr flush dev "$interface" ;;
esac
exit 0
"#,
            events.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    path
}

fn start_dhclient(lab: &Lab, dir: &Path, script: &Path, n: usize) -> Bg {
    std::fs::write(dir.join("dhclient.conf"), "request subnet-mask, routers;\n").expect("conf");
    let mut c = lab.topo.router.command("dhclient");
    c.args(["-d", "-4", "-v", "-cf"])
        .arg(dir.join("dhclient.conf"))
        .arg("-sf")
        .arg(script)
        .arg("-lf")
        .arg(dir.join("dhclient.leases"))
        .arg("-pf")
        .arg(dir.join("dhclient.pid"))
        .arg("wan1");
    Bg::spawn("dhclient", c, &dir.join(format!("dhclient-{n}.log")))
}

#[test]
fn dhclient_lease_changes_are_followed_by_gateway_auto() {
    let lab = router_without_wan1_address();
    let mut dhcp = Dhcp::start(&lab);
    let d = lab.start_daemon(&auto_config());
    d.wait_for("isp2 up", Duration::from_secs(10), |d| {
        d.uplink_state("isp2").as_deref() == Some("up")
    });
    let dir = lab.dir.join("dhcp");
    let script = dhclient_script(&dir);
    let log = || {
        format!(
            "{}\n{}\n{}\n{}",
            std::fs::read_to_string(dir.join("dhclient.events")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("dhclient-1.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("dhclient-2.log")).unwrap_or_default(),
            dnsmasq_log(&dir)
        )
    };
    let first = start_dhclient(&lab, &dir, &script, 1);
    wait_for_lease(&lab, &d, LEASE_1, Ipv4Addr::new(10, 37, 1, 1), &log);
    // `status` shows the learned gateway of an `auto` uplink.
    let out = lab.multiwan(&["status", "--json", "--run-dir", &lab.run_dir()]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(st["uplinks"][0]["gateway"], "10.37.1.1", "{st}");
    // doctor sees the DHCP client in this namespace: a fixed gateway on its interface is
    // flagged, `gateway = "auto"` is not.
    let fixed = lab.dir.join("fixed.toml");
    std::fs::write(
        &fixed,
        auto_config().replacen("\"auto\"", "\"10.37.1.1\"", 1),
    )
    .expect("write");
    let doctor_codes = |cfg: &Path| {
        let out = lab
            .topo
            .router
            .command(common::bin())
            .args(["doctor", "--json", "-c"])
            .arg(cfg)
            .output()
            .expect("doctor");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        r["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| f["code"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert!(doctor_codes(&fixed).contains(&"fixed-gateway-under-dhcp".to_string()));
    let auto = lab.dir.join("multiwan.toml");
    assert!(!doctor_codes(&auto).contains(&"fixed-gateway-under-dhcp".to_string()));
    // The lease changes: the client restarts (as after a reboot), asks for its old address,
    // is refused, and gets the new one with another gateway.
    dhcp.change_lease();
    drop(first);
    let _second = start_dhclient(&lab, &dir, &script, 2);
    wait_for_lease(&lab, &d, LEASE_2, GATEWAY_2, &log);
    assert!(
        dhcp.log().contains("DHCPNAK"),
        "the old lease was refused:\n{}",
        dhcp.log()
    );
}

fn start_dhcpcd(lab: &Lab, dir: &Path) -> Bg {
    let hook = dir.join("dhcpcd-hook");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$reason $new_ip_address $new_routers\" >>\"{}\"\n",
            dir.join("dhcpcd.events").display()
        ),
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    // IPv4 DHCP only: no IPv4LL, no IPv6, no ARP probe (it only delays the test).
    std::fs::write(
        dir.join("dhcpcd.conf"),
        "ipv4only\nnoipv4ll\nnoarp\nnohook resolv.conf\noption routers, subnet_mask\n",
    )
    .expect("conf");
    // dhcpcd's pid file, control socket and leases live in compiled-in /run/dhcpcd and
    // /var/lib/dhcpcd: a private mount namespace puts fresh tmpfs there. Its resolv.conf
    // handling is off (`nohook resolv.conf`, and our own hook script), and /etc/resolv.conf
    // is a private copy in that namespace besides: this machine's own must never change.
    let resolv = dir.join("resolv.conf");
    std::fs::copy("/etc/resolv.conf", &resolv).expect("a private resolv.conf");
    let mut c = lab.topo.router.command("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o mode=0755 mwtest /run && mount -t tmpfs -o mode=0755 mwtest /var/lib/dhcpcd && mount --bind \"$3\" /etc/resolv.conf && exec dhcpcd -B -4 -f \"$1\" -c \"$2\" wan1",
        )
        .arg("sh")
        .arg(dir.join("dhcpcd.conf"))
        .arg(&hook)
        .arg(&resolv);
    Bg::spawn("dhcpcd", c, &dir.join("dhcpcd.log"))
}

#[test]
fn dhcpcd_lease_changes_are_followed_by_gateway_auto() {
    let resolv_before = std::fs::read("/etc/resolv.conf").ok();
    let lab = router_without_wan1_address();
    let mut dhcp = Dhcp::start(&lab);
    let d = lab.start_daemon(&auto_config());
    let dir = lab.dir.join("dhcp");
    let log = || {
        format!(
            "{}\n{}\n{}",
            std::fs::read_to_string(dir.join("dhcpcd.events")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("dhcpcd.log")).unwrap_or_default(),
            dnsmasq_log(&dir)
        )
    };
    let client = start_dhcpcd(&lab, &dir);
    wait_for_lease(&lab, &d, LEASE_1, Ipv4Addr::new(10, 37, 1, 1), &log);
    dhcp.change_lease();
    // `dhcpcd -n` (rebind) through the running dhcpcd's control socket, in its namespaces.
    let out = Command::new("nsenter")
        .args([
            "-t",
            &client.pid().to_string(),
            "-m",
            "-n",
            "dhcpcd",
            "-n",
            "wan1",
        ])
        .output()
        .expect("dhcpcd -n");
    assert!(
        out.status.success(),
        "dhcpcd -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_lease(&lab, &d, LEASE_2, GATEWAY_2, &log);
    assert!(dhcp.log().contains("DHCPNAK"), "{}", dhcp.log());
    drop(client);
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        resolv_before,
        "dhcpcd must not touch this machine's /etc/resolv.conf"
    );
}

/// One end of a point-to-point tunnel: socat moving a tun device's packets over UDP.
fn socat_tunnel(ns: &Netns, local: &str, peer: &str, tun_addr: &str, log: &Path) -> Bg {
    let mut c = ns.command("socat");
    c.arg("-d")
        .arg(format!("UDP-DATAGRAM:{peer}:7000,bind={local}:7000"))
        .arg(format!(
            "TUN:{tun_addr}/30,tun-name=tun0,tun-type=tun,iff-no-pi,iff-up"
        ));
    Bg::spawn("socat", c, log)
}

#[test]
fn a_tunnel_without_gateway_from_a_real_program_goes_away_and_comes_back() {
    let lab = Lab::new(2, 1);
    let cfg = format!(
        r#"[lan]
interfaces = ["lan0"]

[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
[uplink.check]
targets = ["{SERVER_ADDR}"]

[[uplink]]
name = "vpn"
interface = "tun0"
[uplink.check]
targets = ["10.99.0.1"]
"#
    );
    let d = lab.start_daemon(&cfg);
    d.wait_for(
        "vpn down: tun0 does not exist yet",
        Duration::from_secs(10),
        |d| d.uplink_state("vpn").as_deref() == Some("down"),
    );
    // The far end lives in ISP 2's namespace, reached over the router's wan2.
    let _far = socat_tunnel(
        &lab.topo.isps[1].ns,
        "10.37.2.1",
        "10.37.2.253",
        "10.99.0.1",
        &lab.dir.join("socat-far.log"),
    );
    let tunnel_route = || {
        lab.topo
            .router
            .ip(&["route", "show", "table", "all"])
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("default dev tun0") && l.contains("table"))
    };
    for round in 1..=2 {
        let near = socat_tunnel(
            &lab.topo.router,
            "10.37.2.253",
            "10.37.2.1",
            "10.99.0.2",
            &lab.dir.join(format!("socat-{round}.log")),
        );
        d.wait_for("vpn up over the tunnel", Duration::from_secs(20), |d| {
            d.uplink_state("vpn").as_deref() == Some("up")
        });
        assert!(
            tunnel_route(),
            "no route over tun0 in multiwan's table:\n{}",
            lab.daemon_log()
        );
        // The tunnel program stops: its device goes away with it.
        drop(near);
        d.wait_for("vpn down once tun0 is gone", Duration::from_secs(20), |d| {
            d.uplink_state("vpn").as_deref() == Some("down")
        });
        assert!(!tunnel_route());
        assert_eq!(d.uplink_state("isp1").as_deref(), Some("up"));
    }
}

/// What an admin compares: their own tables and Docker's chains, byte for byte.
fn foreign_state(ns: &Netns) -> String {
    let mut s = String::new();
    for t in [["inet", "filter"], ["ip", "filter"], ["ip", "nat"]] {
        s += &ns
            .exec("nft", &["-s", "list", "table", t[0], t[1]])
            .expect("nft list");
    }
    let save = ns
        .exec("iptables-nft-save", &[])
        .expect("iptables-nft-save");
    // Its comment lines carry a timestamp.
    s += &save
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    s
}

#[test]
fn an_admins_drop_policy_filter_and_dockers_chains_stay_byte_identical() {
    let lab = Lab::new(2, 1);
    let r = &lab.topo.router;
    r.nft(
        r#"table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		iif "lo" accept
		meta l4proto icmp accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "lan0" oifname { "wan1", "wan2" } accept
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
"#,
    )
    .expect("admin's table");
    for args in [
        "-t nat -N DOCKER",
        "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        "-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "-t filter -N DOCKER",
        "-t filter -N DOCKER-USER",
        "-t filter -A DOCKER-USER -j RETURN",
        "-t filter -N DOCKER-ISOLATION-STAGE-1",
        "-t filter -A DOCKER-ISOLATION-STAGE-1 -j RETURN",
        "-t filter -A FORWARD -j DOCKER-USER",
        "-t filter -A FORWARD -j DOCKER-ISOLATION-STAGE-1",
        "-t filter -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ] {
        let a: Vec<&str> = args.split(' ').collect();
        r.exec("iptables-nft", &a).expect("iptables-nft");
    }
    let before = foreign_state(r);
    lab.apply(&common::two_uplinks("round-robin", 1, 1));
    assert_eq!(
        foreign_state(r),
        before,
        "apply changed the admin's or Docker's rules"
    );
    // And both work together: the admin's forward policy lets the LAN out, multiwan balances.
    let used = lab.tcp_from_host(0, 8);
    assert_eq!(common::count(&used, 0), 4, "{used:?}");
    assert_eq!(common::count(&used, 1), 4, "{used:?}");
    lab.down();
    assert_eq!(
        foreign_state(r),
        before,
        "down changed the admin's or Docker's rules"
    );
}
