//! Shared helpers for the namespace tests: a lab topology (the same dual-stack one
//! `multiwan-lab` builds) with a running server on both families, plus `multiwan` invoked
//! inside the router namespace. Each
//! lab keeps its configs, run directory and logs in a private directory (0700, random name),
//! and checks when it is dropped that no process naming that directory outlived the test.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub mod debroot;

use multiwan_lab::topology::{IspSpec, Topology, TopologySpec};
use multiwan_lab::traffic::{self, Server};

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_multiwan"))
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "namespace tests need root (run the README's test command as root)"
    );
}

pub struct Lab {
    pub topo: Topology,
    pub server: Server,
    /// The private directory (`_private`'s path): configs, run directory, daemon log.
    pub dir: PathBuf,
    _private: multiwan_lab::scratch::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Daemons are dropped (stopped) before their lab; anything still naming the lab's
        // directory escaped that. The namespaces' removal right after this stops it anyway,
        // but the test fails: every way a test ends must stop what it started.
        let left = multiwan_lab::netns::processes_mentioning(&self.dir.display().to_string());
        if !left.is_empty() && !std::thread::panicking() {
            panic!("processes outlived their test: {left:?}");
        }
    }
}

impl Lab {
    pub fn new(isps: usize, hosts: usize) -> Self {
        Self::with_spec(TopologySpec {
            isps: vec![IspSpec::default(); isps],
            lan_hosts: hosts,
        })
    }

    pub fn with_spec(spec: TopologySpec) -> Self {
        require_root();
        let topo = Topology::build(&spec).expect("build topology");
        let server = Server::start_all(&topo.server, &topo.server_endpoints()).expect("server");
        let private = multiwan_lab::scratch::private_dir("test").expect("private dir");
        Self {
            topo,
            server,
            dir: private.path().to_path_buf(),
            _private: private,
        }
    }

    pub fn run_dir(&self) -> String {
        self.dir.join("run").display().to_string()
    }

    pub fn write_config(&self, text: &str) -> String {
        let p = self.dir.join("multiwan.toml");
        std::fs::write(&p, text).expect("write config");
        p.display().to_string()
    }

    /// `multiwan ARGS` in the router namespace, whatever the outcome.
    pub fn multiwan(&self, args: &[&str]) -> Output {
        let mut c = self.topo.router.command(bin());
        c.args(args);
        c.output().expect("run multiwan")
    }

    /// Applies `text`; panics with multiwan's stderr on failure.
    pub fn apply(&self, text: &str) -> String {
        let cfg = self.write_config(text);
        let out = self.multiwan(&["apply", "-c", &cfg, "--run-dir", &self.run_dir()]);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn down(&self) -> String {
        let out = self.multiwan(&["down", "--run-dir", &self.run_dir()]);
        assert!(
            out.status.success(),
            "down failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `n` TCP connections from LAN host `h`; the uplink index each used (None = failed or
    /// seen from an address that is no uplink's).
    pub fn tcp_from_host(&self, h: usize, n: usize) -> Vec<Option<usize>> {
        let ep = self.topo.server_endpoint();
        let seen: Vec<Option<Ipv4Addr>> = self.topo.hosts[h]
            .ns
            .spawn(move || {
                (0..n)
                    .map(|_| traffic::tcp_hello(ep, Duration::from_secs(2)).ok())
                    .collect()
            })
            .expect("spawn")
            .join()
            .expect("join");
        seen.into_iter()
            .map(|s| s.and_then(|a| self.topo.isp_of(a)))
            .collect()
    }

    pub fn udp_from_host(&self, h: usize, n: usize) -> Vec<Option<usize>> {
        let ep = self.topo.server_endpoint();
        let seen: Vec<Option<Ipv4Addr>> = self.topo.hosts[h]
            .ns
            .spawn(move || {
                (0..n)
                    .map(|_| traffic::udp_hello(ep, Duration::from_secs(2)).ok())
                    .collect()
            })
            .expect("spawn")
            .join()
            .expect("join");
        seen.into_iter()
            .map(|s| s.and_then(|a| self.topo.isp_of(a)))
            .collect()
    }

    /// Everything an admin would compare before and after: ruleset, rules, routes, sysctls.
    pub fn kernel_snapshot(&self) -> String {
        let r = &self.topo.router;
        let mut s = String::new();
        // Stateless: counters change with traffic, the ruleset must not.
        s += &r.exec("nft", &["-s", "list", "ruleset"]).expect("nft");
        s += &r.ip(&["rule", "show"]).expect("rules");
        s += &r.ip(&["route", "show", "table", "all"]).expect("routes");
        s += &r.ip(&["-6", "rule", "show"]).expect("ipv6 rules");
        // Routes learnt from router advertisements count their lifetime down: drop that.
        let routes6 = r
            .ip(&["-6", "route", "show", "table", "all"])
            .expect("ipv6 routes");
        for line in routes6.lines() {
            let mut words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "expires") {
                words.drain(i..(i + 2).min(words.len()));
            }
            s += &words.join(" ");
            s.push('\n');
        }
        let mut keys = vec![
            "net.ipv4.ip_forward".to_string(),
            "net.ipv6.conf.all.forwarding".to_string(),
        ];
        for isp in &self.topo.isps {
            let i = &isp.router_if;
            keys.push(format!("net.ipv4.conf.{i}.rp_filter"));
            keys.push(format!("net.ipv6.conf.{i}.accept_ra"));
            keys.push(format!("net.ipv6.conf.{i}.forwarding"));
        }
        for key in keys {
            s += &format!("{key} = {}\n", r.read_sysctl(&key).expect("sysctl"));
        }
        s
    }

    /// `n` exchanges of `f` (a client of either family) from LAN host `h` to `ep`: the uplink
    /// index each used (None = failed or seen from an address that is no uplink's).
    pub fn exchanges_from_host(
        &self,
        h: usize,
        n: usize,
        ep: SocketAddr,
        f: fn(SocketAddr, Duration) -> anyhow::Result<IpAddr>,
    ) -> Vec<Option<usize>> {
        let seen: Vec<Option<IpAddr>> = self.topo.hosts[h]
            .ns
            .spawn(move || (0..n).map(|_| f(ep, Duration::from_secs(2)).ok()).collect())
            .expect("spawn")
            .join()
            .expect("join");
        seen.into_iter()
            .map(|s| s.and_then(|a| self.topo.isp_of(a)))
            .collect()
    }

    /// `n` IPv6 TCP connections from LAN host `h` to the server: the uplink each used.
    pub fn tcp6_from_host(&self, h: usize, n: usize) -> Vec<Option<usize>> {
        let ep = self.topo.server_endpoint6().into();
        self.exchanges_from_host(h, n, ep, traffic::tcp_hello_ip)
    }

    /// `n` IPv6 UDP exchanges from LAN host `h` to the server: the uplink each used.
    pub fn udp6_from_host(&self, h: usize, n: usize) -> Vec<Option<usize>> {
        let ep = self.topo.server_endpoint6().into();
        self.exchanges_from_host(h, n, ep, traffic::udp_hello_ip)
    }

    /// One ICMP(v6) echo from LAN host `h` to `dst`: whether it was answered.
    pub fn ping_from_host(&self, h: usize, dst: IpAddr, timeout: Duration) -> bool {
        self.topo.hosts[h]
            .ns
            .spawn(move || traffic::ping(dst, timeout).is_ok())
            .expect("spawn")
            .join()
            .expect("join")
    }
}

/// Six TCP connections from `ns` to `ep`, one after another: the source address each was
/// answered from (`None` for one that failed).
pub fn tcp_hellos(ns: &multiwan_lab::netns::Netns, ep: SocketAddr) -> Vec<Option<IpAddr>> {
    ns.spawn(move || {
        (0..6)
            .map(|_| traffic::tcp_hello_ip(ep, Duration::from_secs(2)).ok())
            .collect()
    })
    .expect("spawn")
    .join()
    .expect("join")
}

/// Loads `text`, an nft table of the test's own (the admin's port forward, say), in the
/// router's namespace.
pub fn load_nft(lab: &Lab, name: &str, text: &str) {
    let path = lab.dir.join(format!("{name}.nft"));
    std::fs::write(&path, text).expect("write");
    lab.topo
        .router
        .exec("nft", &["-f", &path.display().to_string()])
        .unwrap_or_else(|e| panic!("loading {name}: {e:#}"));
}

/// Six TCP connections from the router's own sockets bound to interface `ifname`
/// (SO_BINDTODEVICE, as `ping -I`) to `server`: the source address the server saw for each.
pub fn hellos_bound_to(lab: &Lab, ifname: &'static str, server: SocketAddr) -> Vec<Option<String>> {
    use std::io::{BufRead, BufReader, Write};
    lab.topo
        .router
        .spawn(move || {
            (0..6)
                .map(|_| {
                    let s = socket2::Socket::new(
                        socket2::Domain::for_address(server),
                        socket2::Type::STREAM,
                        None,
                    )
                    .ok()?;
                    s.bind_device(Some(ifname.as_bytes())).ok()?;
                    s.connect_timeout(&server.into(), Duration::from_secs(2))
                        .ok()?;
                    let mut s = std::net::TcpStream::from(s);
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    s.write_all(b"HELLO\n").ok()?;
                    let mut line = String::new();
                    BufReader::new(s).read_line(&mut line).ok()?;
                    Some(line.trim().to_string())
                })
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// Six UDP exchanges with `server` from the router, each from a new socket bound to `ifname`
/// (SO_BINDTODEVICE): the source address the server saw, or the error (a send the routing
/// refused, no reply).
pub fn udp_hellos_bound_to(
    lab: &Lab,
    ifname: &'static str,
    server: SocketAddr,
) -> Vec<Result<String, String>> {
    lab.topo
        .router
        .spawn(move || {
            (0..6)
                .map(|_| -> Result<String, String> {
                    let s = socket2::Socket::new(
                        socket2::Domain::for_address(server),
                        socket2::Type::DGRAM,
                        None,
                    )
                    .map_err(|e| e.to_string())?;
                    s.bind_device(Some(ifname.as_bytes()))
                        .map_err(|e| e.to_string())?;
                    let s = std::net::UdpSocket::from(s);
                    s.set_read_timeout(Some(Duration::from_secs(2)))
                        .map_err(|e| e.to_string())?;
                    s.send_to(b"hello", server)
                        .map_err(|e| format!("send: {e}"))?;
                    let mut buf = [0u8; 64];
                    let (n, _) = s.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
                    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
                })
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// Asserts that every connection `multiwan flows` lists from one of `sources` (the router's
/// address on an uplink, with that uplink's name) to `server` is counted under that uplink:
/// a socket bound to an uplink's interface is that uplink's, whatever the balancing picked.
pub fn assert_flows_follow_their_source(lab: &Lab, server: SocketAddr, sources: &[(IpAddr, &str)]) {
    let out = lab.multiwan(&["flows", "--json", "--run-dir", &lab.run_dir()]);
    let flows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("flows json");
    let mut seen = 0;
    for f in flows.as_array().expect("array") {
        if f["dst"] != server.ip().to_string() || f["dport"] != server.port() {
            continue;
        }
        for (src, uplink) in sources {
            if f["src"] == src.to_string() {
                assert_eq!(f["uplink"], *uplink, "a connection from {src}: {f}");
                seen += 1;
            }
        }
    }
    assert!(
        seen > 0,
        "no connection from {sources:?} to {server}: {flows}"
    );
}

/// Counts, after routing, the router's packets to `dst` by their next hop: `gateway`, or
/// `dst` itself (on the link). Installs the test's own nft table in the router's namespace.
pub fn watch_next_hops(lab: &Lab, dst: IpAddr, gateway: IpAddr) {
    let (fam, ip) = match dst {
        IpAddr::V4(_) => ("ip", "ip"),
        IpAddr::V6(_) => ("ip6", "ip6"),
    };
    let path = lab.dir.join(format!("nexthop-{fam}.nft"));
    std::fs::write(
        &path,
        format!(
            "table {fam} nexthop_probe {{\n chain post {{\n  type filter hook postrouting priority 0; policy accept;\n  {ip} daddr {dst} rt {ip} nexthop {gateway} counter\n  {ip} daddr {dst} rt {ip} nexthop {dst} counter\n }}\n}}\n"
        ),
    )
    .expect("write");
    lab.topo
        .router
        .exec("nft", &["-f", &path.display().to_string()])
        .expect("next-hop counters");
}

/// What [`watch_next_hops`] counted for `family` (`ip` or `ip6`): packets by the gateway,
/// packets straight to the destination, and the chain's listing (for messages).
pub fn next_hop_counts(lab: &Lab, family: &str) -> (u64, u64, String) {
    let chain = lab
        .topo
        .router
        .exec("nft", &["list", "chain", family, "nexthop_probe", "post"])
        .expect("nft");
    let counts: Vec<u64> = chain
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let i = w.iter().position(|x| *x == "packets")?;
            w.get(i + 1)?.parse().ok()
        })
        .collect();
    assert_eq!(counts.len(), 2, "{chain}");
    (counts[0], counts[1], chain)
}

pub fn count(v: &[Option<usize>], isp: usize) -> usize {
    v.iter().filter(|x| **x == Some(isp)).count()
}

pub fn two_uplinks(method: &str, w1: u32, w2: u32) -> String {
    format!(
        r#"[lan]
interfaces = ["lan0"]

[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
weight = {w1}

[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
weight = {w2}

[balance]
method = "{method}"
"#
    )
}

/// A `multiwan run` daemon inside the router namespace; stopped (SIGTERM) on drop.
pub use multiwan_lab::daemon::LabDaemon as Daemon;

/// Test-side waiting on a daemon.
pub trait WaitFor {
    /// Waits until `f` holds, polling every 20 ms; fails the test after `limit`. Returns how
    /// long it took.
    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&Self) -> bool) -> Duration;
}

impl WaitFor for Daemon {
    fn wait_for(&self, what: &str, limit: Duration, f: impl Fn(&Self) -> bool) -> Duration {
        let start = std::time::Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; state: {:?}",
                self.state()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }
}

impl Lab {
    /// Starts `multiwan run` with `text` as its config.
    pub fn start_daemon(&self, text: &str) -> Daemon {
        self.start_daemon_with_env(text, &[])
    }

    /// Starts `multiwan run` with extra environment variables.
    pub fn start_daemon_with_env(&self, text: &str, env: &[(&str, &str)]) -> Daemon {
        self.start_daemon_from(bin(), text, env)
    }

    /// Starts `multiwan run` of another build of the router (e.g. the packaged one).
    pub fn start_daemon_from(&self, binary: &Path, text: &str, env: &[(&str, &str)]) -> Daemon {
        let cfg = self.write_config(text);
        Daemon::start(
            &self.topo,
            binary,
            &cfg,
            &self.dir.join("run"),
            &self.dir.join("daemon.log"),
            false,
            env,
        )
        .expect("start daemon")
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn cut_upstream(&self, n: usize) {
        self.topo.cut_upstream(n).expect("cut");
    }

    pub fn restore_upstream(&self, n: usize) {
        self.topo.restore_upstream(n).expect("restore");
    }

    /// Cuts only ISP `n`'s IPv6 path beyond it (0-based).
    pub fn cut_upstream6(&self, n: usize) {
        self.topo.cut_upstream6(n).expect("cut ipv6");
    }

    /// Undoes [`Self::cut_upstream6`].
    pub fn restore_upstream6(&self, n: usize) {
        self.topo.restore_upstream6(n).expect("restore ipv6");
    }

    /// Cuts only ISP `n`'s IPv4 path beyond it (0-based).
    pub fn cut_upstream4(&self, n: usize) {
        self.topo.cut_upstream4(n).expect("cut ipv4");
    }

    /// Undoes [`Self::cut_upstream4`].
    pub fn restore_upstream4(&self, n: usize) {
        self.topo.restore_upstream4(n).expect("restore ipv4");
    }

    /// One TCP connection from host `h` with a short timeout: the uplink it used.
    pub fn try_connect(&self, h: usize, timeout: Duration) -> Option<usize> {
        let ep = self.topo.server_endpoint();
        let seen = self.topo.hosts[h]
            .ns
            .spawn(move || traffic::tcp_hello(ep, timeout).ok())
            .expect("spawn")
            .join()
            .expect("join");
        seen.and_then(|a| self.topo.isp_of(a))
    }

    /// One IPv6 TCP connection from host `h` with a short timeout: the uplink it used.
    pub fn try_connect6(&self, h: usize, timeout: Duration) -> Option<usize> {
        let ep = self.topo.server_endpoint6().into();
        let seen = self.topo.hosts[h]
            .ns
            .spawn(move || traffic::tcp_hello_ip(ep, timeout).ok())
            .expect("spawn")
            .join()
            .expect("join");
        seen.and_then(|a| self.topo.isp_of(a))
    }
}

/// A two-uplink config whose health checks probe the server beyond the ISPs.
pub fn two_uplinks_checked(method: &str) -> String {
    let server = multiwan_lab::topology::SERVER_ADDR;
    format!(
        r#"[lan]
interfaces = ["lan0"]

[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
[uplink.check]
targets = ["{server}"]

[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
[uplink.check]
targets = ["{server}"]

[balance]
method = "{method}"
"#
    )
}
