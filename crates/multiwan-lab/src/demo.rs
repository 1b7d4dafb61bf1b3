//! The lab's demo (`multiwan-lab` with no `--bench`): builds the virtual network of
//! [`crate::topology`], runs `multiwan run` with a config in the router namespace,
//! drives real connections and bulk transfers through it, prints what each uplink carried
//! against what the weights promise, and runs a failover drill (an ISP's upstream is cut while
//! its link stays up). With `--ipv6` (on by default with [`ROUTER_IPV6`]) every phase runs
//! for IPv6 too: both families' split and throughput, inbound on both, and a drill that
//! measures both families and then cuts IPv6 alone. However it ends — normally, with an
//! error, a panic, Ctrl-C or SIGTERM at any moment — every process it started is stopped,
//! every namespace removed and its private directory deleted; the root namespace is never
//! touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use crate::daemon::LabDaemon;
use crate::topology::{self, Family, IspSpec, Topology, TopologySpec, ROUTER_IPV6};
use crate::traffic::{self, Server};
use crate::{bench, netns, router, scratch};

/// Build a virtual network in fresh network namespaces, run multiwan on it with real
/// traffic and report; or run the benchmarks (--bench). Needs root; changes nothing outside
/// the namespaces it creates, and removes them (and everything running in them) on exit.
#[derive(Debug, Clone, Parser)]
#[command(name = "multiwan-lab", version, about, long_about = None)]
pub struct LabArgs {
    /// The multiwan router binary to drive (default: $MULTIWAN_BIN, else `multiwan` next to
    /// this executable).
    #[arg(long, value_name = "PATH")]
    pub multiwan: Option<PathBuf>,
    /// Run this config instead of the generated one. It must use the lab's names: LAN
    /// interface `lan0`; uplink N on interface `wanN` with gateway `10.37.N.1` (and
    /// `gateway6 = "2001:db8:N::1"` for IPv6).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Number of ISPs (2 by default, or as many `wanN` as the --config uses).
    #[arg(long)]
    pub isps: Option<usize>,
    /// Uplink capacities in Mbit/s, shaped with tbf (comma separated; 0 = unshaped).
    #[arg(long, value_delimiter = ',', default_value = "30,10")]
    pub rates: Vec<u32>,
    /// Weights of the generated config's uplinks (default: the rates).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<u32>,
    /// Balance method of the generated config.
    #[arg(long, default_value = "round-robin")]
    pub method: String,
    /// Number of LAN hosts.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Short connections to open (TCP; a quarter as many UDP exchanges).
    #[arg(long, default_value_t = 400)]
    pub connections: usize,
    /// Parallel bulk download flows.
    #[arg(long, default_value_t = 8)]
    pub flows: usize,
    /// Duration of the bulk phase in seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Skip the failover drill.
    #[arg(long)]
    pub no_drill: bool,
    /// Drive and report IPv6 as well (the network is always dual stack; the generated config
    /// is dual stack when this is on and the router supports IPv6). `--ipv6 false` for IPv4
    /// only.
    #[arg(long, value_name = "BOOL", default_value_t = ROUTER_IPV6, action = clap::ArgAction::Set)]
    pub ipv6: bool,
    /// Run the benchmarks instead of the demo and write them to --bench-out.
    #[arg(long)]
    pub bench: bool,
    /// With --bench: the quick subset (about a minute).
    #[arg(long, requires = "bench")]
    pub quick: bool,
    /// With --bench: where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md", requires = "bench")]
    pub bench_out: PathBuf,
    /// With --bench: run only this section (e.g. `footprint`), to measure one thing quickly.
    #[arg(long, requires = "bench", value_parser = bench::SECTIONS)]
    pub bench_only: Option<String>,
    /// Profile which of the router's functions a running daemon calls (uprobes, about 8
    /// minutes) and write their order to PATH: the router's `crates/multiwan/link.order`,
    /// which its release build (linked with lld) lays its code out by. Needs the release
    /// binary's link map (`multiwan.map`, beside it).
    #[arg(long, value_name = "PATH", conflicts_with = "bench")]
    pub layout: Option<PathBuf>,
}

fn wan_count(text: &str) -> usize {
    (1..=8)
        .rev()
        .find(|n| text.contains(&format!("\"wan{n}\"")))
        .unwrap_or(2)
}

/// Runs the lab. Ctrl-C and SIGTERM stop every process it started, remove every namespace
/// and its private directory, and exit with 130.
pub fn run(args: LabArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handler")?;
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let bin = router::find(args.multiwan.as_deref(), &exe)?;
    let reaped = netns::reap_stale(topology::NS_PREFIX);
    if reaped > 0 {
        println!("removed {reaped} namespaces left behind by an earlier lab run");
    }
    // Owned here, not by the worker: the interrupt path below exits without unwinding the
    // worker, and must still delete it.
    let dir = scratch::private_dir("lab")?;
    let path = dir.path().to_path_buf();
    scratch::set_base(path.clone());
    let worker = std::thread::spawn(move || run_lab(&args, &bin, &path));
    while !worker.is_finished() {
        if stop.load(Ordering::Relaxed) {
            eprintln!("\ninterrupted: stopping the lab's processes and removing its namespaces");
            netns::cleanup_all();
            scratch::remove_outside_base();
            drop(dir);
            std::process::exit(130);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = match worker.join() {
        Ok(r) => r,
        Err(_) => {
            netns::cleanup_all();
            Err(anyhow::anyhow!(
                "the lab crashed; its processes were stopped and its namespaces removed"
            ))
        }
    };
    drop(dir);
    result
}

fn run_lab(args: &LabArgs, bin: &Path, dir: &Path) -> Result<()> {
    if let Some(out) = &args.layout {
        return crate::layout::run(bin, out);
    }
    if args.bench {
        return bench::run(bin, args.quick, args.bench_only.as_deref(), &args.bench_out);
    }
    let custom = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            // Check it before building anything: a typo should cost no namespace.
            multiwan_core::load(&p.display().to_string(), &text)
                .map_err(|e| anyhow::anyhow!("the lab config is invalid:\n{e}"))?;
            Some(text)
        }
        None => None,
    };
    let n = args
        .isps
        .unwrap_or_else(|| custom.as_deref().map(wan_count).unwrap_or(2));
    let isps: Vec<IspSpec> = (0..n)
        .map(|i| IspSpec {
            rate_mbit: args.rates.get(i).copied().filter(|r| *r > 0),
            ..Default::default()
        })
        .collect();
    println!(
        "== building the virtual network: {} LAN hosts, router, {n} ISPs, server",
        args.hosts
    );
    let topo = Topology::build(&TopologySpec {
        isps,
        lan_hosts: args.hosts,
    })?;
    for (i, isp) in topo.isps.iter().enumerate() {
        println!(
            "   uplink {}: router {} {} -> gateway {} ({})",
            i + 1,
            isp.router_if,
            isp.router_addr,
            isp.gateway,
            isp.rate_mbit
                .map(|r| format!("{r} Mbit/s"))
                .unwrap_or_else(|| "unshaped".into())
        );
        if args.ipv6 {
            println!(
                "             {} -> gateway {}",
                isp.router_addr6, isp.gateway6
            );
        }
    }
    let cfg_path = dir.join("multiwan.toml");
    let text = match custom {
        Some(t) => t,
        None => {
            let weights: Vec<u32> = (0..n)
                .map(|i| {
                    args.weights
                        .get(i)
                        .copied()
                        .unwrap_or_else(|| topo.isps[i].rate_mbit.unwrap_or(1))
                })
                .collect();
            topo.config_with(&args.method, &weights, args.ipv6 && ROUTER_IPV6)
        }
    };
    std::fs::write(&cfg_path, &text)?;
    let result = drive(args, &topo, bin, &cfg_path, &text);
    println!("== removing the virtual network");
    drop(topo);
    result
}

fn drive(args: &LabArgs, topo: &Topology, bin: &Path, cfg_path: &Path, text: &str) -> Result<()> {
    let cfg = multiwan_core::load(&cfg_path.display().to_string(), text)
        .map_err(|e| anyhow::anyhow!("the lab config is invalid:\n{e}"))?;
    println!("== config\n{}", indent(text));
    let run_dir = cfg_path.with_file_name("run");
    let run_dir_s = run_dir.display().to_string();
    let cfg_s = cfg_path.display().to_string();
    let log_path = cfg_path.with_file_name("daemon.log");
    let daemon = LabDaemon::start(topo, bin, &cfg_s, &run_dir, &log_path, true, &[])?;
    println!("== multiwan run (in the router namespace): every uplink up from the start");
    for (name, state) in daemon.states() {
        println!("   {name}: {state}");
    }

    let server = Server::start_all(&topo.server, &topo.server_endpoints())?;
    short_connections(args, topo, &cfg, &server, Family::V4)?;
    // IPv6 only where it gets through: a config without `gateway6` leaves it to the main
    // table, whose unNATed ULA the ISPs drop.
    let ipv6 = args.ipv6 && short_connections(args, topo, &cfg, &server, Family::V6)?;
    server.reset();
    bulk_downloads(args, topo, &cfg, Family::V4)?;
    if ipv6 {
        bulk_downloads(args, topo, &cfg, Family::V6)?;
    }
    inbound(topo, Family::V4)?;
    if args.ipv6 {
        inbound(topo, Family::V6)?;
    }

    // What an operator sees right now.
    match topo.multiwan(bin, &["status", "--run-dir", &run_dir_s]) {
        Ok(out) => print!("== multiwan status\n{}", indent(&out)),
        Err(e) => println!("== multiwan status failed: {e:#}"),
    }

    if topo.isps.len() >= 2 && !args.no_drill {
        let log_before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
        let families: &[Family] = if ipv6 { &Family::BOTH } else { &[Family::V4] };
        failover_drill(topo, &cfg, &daemon, families)?;
        if ipv6 {
            ipv6_only_drill(topo, &cfg)?;
        }
        println!("   the daemon's log during the drill:");
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        for l in log.get(log_before..).unwrap_or("").lines() {
            println!("   | {l}");
        }
    }
    drop(server);

    daemon.stop()?;
    println!("== multiwan stopped with --cleanup");
    for l in std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("stopped"))
    {
        println!("   {l}");
    }
    Ok(())
}

/// A family's name in a heading: nothing for IPv4 (the lab's headings as they always were),
/// ` IPv6` for IPv6.
fn tag(family: Family) -> &'static str {
    match family {
        Family::V4 => "",
        Family::V6 => " IPv6",
    }
}

/// Whether a few connections of `family` get through from the first LAN host at all: the
/// IPv6 phases are skipped, with the reason, when none does.
fn family_gets_through(topo: &Topology, family: Family) -> Result<bool> {
    let ep = topo.endpoint(family);
    let ok = topo.hosts[0]
        .ns
        .spawn(move || {
            (0..4)
                .filter(|_| traffic::tcp_hello_ip(ep, Duration::from_secs(1)).is_ok())
                .count()
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    Ok(ok > 0)
}

/// Phase 1: many short connections (TCP, every fourth one UDP) of one family from every LAN
/// host; what each uplink carried against what the weights promise. Returns false (and says
/// why) when the family does not get through at all.
fn short_connections(
    args: &LabArgs,
    topo: &Topology,
    cfg: &multiwan_core::Config,
    server: &Server,
    family: Family,
) -> Result<bool> {
    if family == Family::V6 && !family_gets_through(topo, family)? {
        println!(
            "== IPv6: no connection gets through (no uplink has gateway6 in this config, or the \
             router does not handle IPv6): the ISPs drop the LAN's unNATed ULA; IPv6 phases skipped"
        );
        return Ok(false);
    }
    server.reset();
    let ep = topo.endpoint(family);
    let started = Instant::now();
    let hosts = topo.hosts.len().max(1);
    let mut handles = Vec::new();
    for (i, h) in topo.hosts.iter().enumerate() {
        // Exactly `connections` in total: the first hosts take the remainder.
        let per_host = args.connections / hosts + usize::from(i < args.connections % hosts);
        handles.push(h.ns.spawn(move || {
            let mut failures = 0usize;
            for i in 0..per_host {
                let r = if i % 4 == 3 {
                    traffic::udp_hello_ip(ep, Duration::from_secs(2))
                } else {
                    traffic::tcp_hello_ip(ep, Duration::from_secs(2))
                };
                if r.is_err() {
                    failures += 1;
                }
            }
            failures
        })?);
    }
    let failures: usize = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(args.connections))
        .sum();
    let conn_time = started.elapsed();
    let mut conns = vec![0u64; topo.isps.len()];
    let mut foreign = 0u64;
    for (addr, s) in server.stats_all() {
        match topo.isp_of(addr) {
            Some(i) => conns[i] += s.tcp_conns + s.udp_msgs,
            None => foreign += s.tcp_conns + s.udp_msgs,
        }
    }
    let total: u64 = conns.iter().sum();
    let expected = expected_shares(cfg);
    println!(
        "== {} short{} connections (TCP and UDP) from {} hosts in {:.1}s, {failures} failed",
        total + foreign,
        tag(family),
        topo.hosts.len(),
        conn_time.as_secs_f64()
    );
    println!(
        "   {:<8} {:>8} {:>9} {:>9}",
        "uplink", "conns", "share", "promised"
    );
    for (i, c) in conns.iter().enumerate() {
        let name = uplink_name(cfg, i);
        let promised = expected.get(&name).copied().unwrap_or(0.0);
        println!(
            "   {:<8} {:>8} {:>8.1}% {:>8.1}%",
            name,
            c,
            100.0 * *c as f64 / total.max(1) as f64,
            100.0 * promised
        );
    }
    if foreign > 0 {
        println!(
            "   {foreign} connections arrived from an address that is no uplink's (SNAT problem)"
        );
    }
    if matches!(
        cfg.balance.method,
        multiwan_core::model::Method::SrcHash | multiwan_core::model::Method::SrcDstHash
    ) {
        println!(
            "   ({} keeps each host on one uplink: with {} hosts the shares follow the hosts, not the weights)",
            cfg.balance.method.as_str(),
            topo.hosts.len()
        );
    }
    Ok(true)
}

/// Phase 2: parallel bulk downloads of one family over a steady-state window.
fn bulk_downloads(
    args: &LabArgs,
    topo: &Topology,
    cfg: &multiwan_core::Config,
    family: Family,
) -> Result<()> {
    let flows = args.flows.max(1);
    let b = bulk_to(
        topo,
        topo.endpoint(family),
        flows,
        args.seconds.max(1) * 1000,
    )?;
    let (per_isp, window, bulk_failed) = (b.per_isp, b.window_s, b.failed);
    let window_bytes: u64 = per_isp.iter().map(|p| p.2).sum();
    let agg = window_bytes as f64 * 8.0 / window / 1e6;
    println!(
        "== {flows} parallel{} downloads for {}s, {bulk_failed} failed (rates: TCP payload, steady state)",
        tag(family),
        args.seconds
    );
    println!(
        "   {:<8} {:>6} {:>12} {:>12} {:>10}",
        "uplink", "flows", "MiB", "Mbit/s", "capacity"
    );
    for (i, (f, b, w)) in per_isp.iter().enumerate() {
        println!(
            "   {:<8} {:>6} {:>12.1} {:>12.1} {:>10}",
            uplink_name(cfg, i),
            f,
            *b as f64 / (1024.0 * 1024.0),
            *w as f64 * 8.0 / window / 1e6,
            topo.isps[i]
                .rate_mbit
                .map(|r| format!("{r} Mbit/s"))
                .unwrap_or_else(|| "-".into())
        );
    }
    let capacity: Option<u32> = topo.isps.iter().map(|i| i.rate_mbit).sum();
    match capacity {
        Some(c) => println!(
            "   aggregate {agg:.1} Mbit/s of {c} Mbit/s combined capacity ({:.0}%)",
            100.0 * agg / f64::from(c)
        ),
        None => println!("   aggregate {agg:.1} Mbit/s (uplinks unshaped)"),
    }
    Ok(())
}

/// A listener on port 7100 in the router for one family (IPv6 only for IPv6, so the two can
/// coexist).
fn router_listener(topo: &Topology, family: Family) -> Result<std::net::TcpListener> {
    topo.router
        .spawn(move || -> Result<std::net::TcpListener> {
            use socket2::{Domain, Socket, Type};
            let addr: std::net::SocketAddr = match family {
                Family::V4 => "0.0.0.0:7100".parse()?,
                Family::V6 => "[::]:7100".parse()?,
            };
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            if family == Family::V6 {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(16)?;
            Ok(s.into())
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("router listener thread panicked"))?
}

/// Phase 3: connections of one family coming in on each uplink are answered over it (seed 004
/// §4.2.2).
fn inbound(topo: &Topology, family: Family) -> Result<()> {
    println!(
        "== inbound{}: the server connects to the router's address on each uplink",
        tag(family)
    );
    let listener = router_listener(topo, family)?;
    listener.set_nonblocking(true)?;
    let accept = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok((mut s, _)) = listener.accept() {
                use std::io::Write;
                let _ = s.write_all(b"ok\n");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    for (i, isp) in topo.isps.iter().enumerate() {
        let addr = topo.router_addr_of(i, family);
        let target = std::net::SocketAddr::new(addr, 7100);
        let ok = topo
            .server
            .spawn(move || {
                std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    .and_then(|mut s| {
                        use std::io::Read;
                        let mut b = [0u8; 3];
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        s.read_exact(&mut b)
                    })
                    .is_ok()
            })?
            .join()
            .unwrap_or(false);
        println!(
            "   {} ({}): {}",
            isp.router_if,
            addr,
            if ok {
                "answered over the same uplink"
            } else {
                "FAILED"
            }
        );
    }
    drop(accept);
    Ok(())
}

/// One new connection of the endpoint's family from `host`: the address the server saw.
fn attempt(
    host: &crate::netns::Netns,
    ep: std::net::SocketAddr,
    timeout: Duration,
) -> Option<std::net::IpAddr> {
    host.spawn(move || traffic::tcp_hello_ip(ep, timeout).ok())
        .ok()
        .and_then(|h| h.join().ok())
        .flatten()
}

/// From `since` on, tries new connections back to back until ten in a row succeed (half of
/// them would go to a dead uplink without failover); when the first of them succeeded, or None
/// within `limit`.
fn recovery(
    host: &crate::netns::Netns,
    ep: std::net::SocketAddr,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut streak = 0;
    let mut first_ok = None;
    while since.elapsed() < limit {
        if attempt(host, ep, Duration::from_millis(100)).is_some() {
            streak += 1;
            if streak == 1 {
                first_ok = Some(since.elapsed());
            }
            if streak == 10 {
                return first_ok;
            }
        } else {
            streak = 0;
        }
    }
    None
}

/// How many of the uplinks new connections of the endpoint's family use: `2 × uplinks` from
/// each LAN host (a hash method sends all of one host's connections the same way), until
/// every uplink has been seen.
fn uplinks_used(topo: &Topology, ep: std::net::SocketAddr) -> usize {
    let mut used = std::collections::BTreeSet::new();
    for host in &topo.hosts {
        for _ in 0..(2 * topo.isps.len()) {
            if used.len() == topo.isps.len() {
                return used.len();
            }
            if let Some(seen) = attempt(&host.ns, ep, Duration::from_secs(1)) {
                used.extend(topo.isp_of(seen));
            }
        }
    }
    used.len()
}

/// The LAN host a drill that cuts the first ISP measures from: the first one with new
/// connections to `ep` over that ISP (with a hash method only some hosts have any), so the
/// drill sees a failover rather than connections the cut never touched. `None` (and host 0
/// is used) when no host's connections take it.
fn drill_host(topo: &Topology, ep: std::net::SocketAddr) -> Option<&crate::netns::Netns> {
    topo.hosts.iter().map(|h| &h.ns).find(|ns| {
        (0..2 * topo.isps.len()).any(|_| {
            attempt(ns, ep, Duration::from_secs(1)).and_then(|a| topo.isp_of(a)) == Some(0)
        })
    })
}

/// [`drill_host`] for each of `families`, saying so when no host uses the first ISP.
fn drill_hosts<'t>(
    topo: &'t Topology,
    name: &str,
    families: &[Family],
) -> Vec<&'t crate::netns::Netns> {
    families
        .iter()
        .map(|f| {
            drill_host(topo, topo.endpoint(*f)).unwrap_or_else(|| {
                println!(
                    "   {}no LAN host's new connections use {name}: the cut cannot affect them",
                    family_prefix(*f)
                );
                &topo.hosts[0].ns
            })
        })
        .collect()
}

/// "IPv6: " before a line about IPv6 in a dual-stack report, nothing for IPv4.
fn family_prefix(f: Family) -> &'static str {
    match f {
        Family::V4 => "",
        Family::V6 => "IPv6: ",
    }
}

/// Whether a daemon log line says uplink `name` went down for `family`: "uplink down" for the
/// whole uplink (both families), or a line naming the family (`family=ipv6`) with "down" in it
/// for that family only.
pub fn down_line(l: &crate::daemon::LogLine, name: &str, family: Family) -> bool {
    if l.field("uplink") != Some(name) {
        return false;
    }
    match l.field("family").map(str::to_ascii_lowercase) {
        None => l.has("uplink down"),
        // multiwan logs `uplink down (ipv6) uplink="isp1" family=ipv6 from=up to=down`.
        Some(f) => {
            let named = match family {
                Family::V4 => f == "ipv4",
                Family::V6 => f == "ipv6",
            };
            let down = match l.field("to") {
                Some(to) => to == "down",
                None => l.has(" down"),
            };
            named && down
        }
    }
}

fn ms_or(d: Option<Duration>, limit: Duration) -> String {
    d.map(|d| format!("{} ms", d.as_millis()))
        .unwrap_or_else(|| format!("not within {} s", limit.as_secs()))
}

/// Cuts the first ISP's upstream (its link stays up; both families), measures for each of
/// `families` how long until new connections succeed again, restores it and measures the
/// failback.
fn failover_drill(
    topo: &Topology,
    cfg: &multiwan_core::Config,
    d: &LabDaemon,
    families: &[Family],
) -> Result<()> {
    let name = uplink_name(cfg, 0);
    println!(
        "== failover drill: {name}'s upstream is cut (its link stays up, packets vanish beyond it)"
    );
    print_checks(cfg);
    let hosts = drill_hosts(topo, &name, families);
    let log_from = d.log_len();
    topo.cut_upstream(0)?;
    // Both clocks start once the cut is in effect: the client's, and the system clock the
    // daemon's log timestamps use.
    let (cut, cut_wall) = (Instant::now(), crate::daemon::unix_now());
    let limit = Duration::from_secs(15);
    // The families are measured at the same time, each from its own thread.
    let recovered: Vec<Option<Duration>> = std::thread::scope(|s| {
        let hs: Vec<_> = families
            .iter()
            .zip(&hosts)
            .map(|(f, host)| {
                let ep = topo.endpoint(*f);
                s.spawn(move || recovery(host, ep, cut, limit))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(None)).collect()
    });
    for (f, rec) in families.iter().zip(&recovered) {
        let mut detected = None;
        let wait = Instant::now();
        while detected.is_none() && wait.elapsed() < Duration::from_secs(5) {
            detected = d
                .log_since(log_from)
                .iter()
                .find(|l| down_line(l, &name, *f))
                .and_then(|l| l.unix_s)
                .map(|s| Duration::from_secs_f64((s - cut_wall).max(0.0)));
            std::thread::sleep(Duration::from_millis(10));
        }
        let what = family_prefix(*f);
        println!(
            "   {what}{name} marked down after      {} (the daemon's log)",
            ms_or(detected, limit)
        );
        println!(
            "   {what}new connections all succeed after {} (the first of ten in a row)",
            ms_or(*rec, limit)
        );
    }
    topo.restore_upstream(0)?;
    let restored = Instant::now();
    let mut back: Vec<Option<Duration>> = vec![None; families.len()];
    while restored.elapsed() < limit && back.iter().any(Option::is_none) {
        for (f, b) in families.iter().zip(back.iter_mut()) {
            if b.is_none() && d.uplink_state_of(&name, *f).as_deref() == Some("up") {
                *b = Some(restored.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (f, b) in families.iter().zip(&back) {
        let what = if *f == Family::V6 { " IPv6" } else { "" };
        println!(
            "   upstream restored: {name}{what} back up after {}",
            ms_or(*b, limit)
        );
    }
    for f in families {
        println!(
            "   {}after failback new connections use {} of {} uplinks",
            family_prefix(*f),
            uplinks_used(topo, topo.endpoint(*f)),
            topo.isps.len()
        );
    }
    Ok(())
}

/// What the first uplink's checks are (each family's, when it has IPv6).
fn print_checks(cfg: &multiwan_core::Config) {
    let Some(u) = cfg.uplinks.iter().find(|u| u.interface == "wan1") else {
        return;
    };
    let mut checks = vec![("", &u.check)];
    if let Some(v6) = &u.ipv6 {
        checks[0].0 = "IPv4 ";
        checks.push(("IPv6 ", &v6.check));
    }
    for (family, c) in checks {
        println!(
            "   {family}checks: {} every {}, down after {} bad rounds, up after {} good",
            c.targets
                .iter()
                .map(|t| t.ip().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            multiwan_core::duration::Human(c.interval),
            c.down_after,
            c.up_after
        );
    }
}

/// Cuts only the first ISP's IPv6 path: IPv6 must move to the other uplinks while IPv4 keeps
/// using every uplink (per-family health); then restores it.
fn ipv6_only_drill(topo: &Topology, cfg: &multiwan_core::Config) -> Result<()> {
    let name = uplink_name(cfg, 0);
    let limit = Duration::from_secs(15);
    println!("== IPv6-only drill: {name}'s IPv6 upstream is cut, its IPv4 keeps working");
    let host = drill_hosts(topo, &name, &[Family::V6])[0];
    topo.cut_upstream6(0)?;
    let cut = Instant::now();
    let rec = recovery(host, topo.endpoint(Family::V6), cut, limit);
    println!(
        "   IPv6: new connections all succeed after {} (the first of ten in a row)",
        ms_or(rec, limit)
    );
    let n = topo.isps.len();
    println!(
        "   meanwhile new IPv4 connections use {} of {n} uplinks, IPv6 {} of {n}",
        uplinks_used(topo, topo.endpoint(Family::V4)),
        uplinks_used(topo, topo.endpoint(Family::V6))
    );
    topo.restore_upstream6(0)?;
    let restored = Instant::now();
    let mut back = None;
    while restored.elapsed() < limit && back.is_none() {
        let seen = attempt(host, topo.endpoint(Family::V6), Duration::from_millis(200));
        if seen.and_then(|a| topo.isp_of(a)) == Some(0) {
            back = Some(restored.elapsed());
        }
    }
    println!(
        "   IPv6 restored: a new IPv6 connection uses {name} again after {}",
        ms_or(back, limit)
    );
    Ok(())
}

/// Result of [`bulk`]: per uplink (flows, bytes in total, bytes in the window).
pub struct Bulk {
    pub per_isp: Vec<(usize, u64, u64)>,
    /// Length of the steady-state window in seconds.
    pub window_s: f64,
    pub failed: usize,
}

impl Bulk {
    /// Aggregate TCP payload rate over the window, Mbit/s.
    pub fn aggregate_mbit(&self) -> f64 {
        let b: u64 = self.per_isp.iter().map(|p| p.2).sum();
        b as f64 * 8.0 / self.window_s.max(1e-9) / 1e6
    }
}

/// `flows` parallel IPv4 downloads from the LAN hosts for `ms` milliseconds ([`bulk_to`] the
/// server's IPv4 endpoint).
pub fn bulk(topo: &Topology, flows: usize, ms: u64) -> Result<Bulk> {
    bulk_to(topo, topo.server_endpoint().into(), flows, ms)
}

/// `flows` parallel downloads from the LAN hosts to `ep` (either family) for `ms`
/// milliseconds. Throughput is measured over a steady-state window (after slow start, before
/// the first flow ends) from the bytes the clients received; each flow is attributed to the
/// uplink the server saw.
pub fn bulk_to(topo: &Topology, ep: std::net::SocketAddr, flows: usize, ms: u64) -> Result<Bulk> {
    let progress: Vec<Arc<std::sync::atomic::AtomicU64>> =
        (0..flows).map(|_| Arc::default()).collect();
    let mut handles = Vec::new();
    for (f, p) in progress.iter().enumerate() {
        let h = &topo.hosts[f % topo.hosts.len()];
        let p = p.clone();
        handles.push(h.ns.spawn(move || traffic::tcp_time(ep, ms, &p))?);
    }
    let warmup = Duration::from_millis((ms / 5).min(1000));
    let window_end = Duration::from_millis(ms * 9 / 10);
    std::thread::sleep(warmup);
    let t0 = Instant::now();
    let at_start: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    std::thread::sleep(window_end.saturating_sub(warmup));
    let at_end: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    let window_s = t0.elapsed().as_secs_f64();
    let mut per_isp = vec![(0usize, 0u64, 0u64); topo.isps.len()];
    let mut failed = 0;
    for (f, h) in handles.into_iter().enumerate() {
        match h.join() {
            // Not NATed (plain forwarding baseline): count it on the first uplink.
            Ok(Ok(t)) => {
                let i = topo.isp_of(t.seen_as).unwrap_or(0);
                per_isp[i].0 += 1;
                per_isp[i].1 += t.bytes;
                per_isp[i].2 += at_end[f] - at_start[f];
            }
            _ => failed += 1,
        }
    }
    Ok(Bulk {
        per_isp,
        window_s,
        failed,
    })
}

fn uplink_name(cfg: &multiwan_core::Config, i: usize) -> String {
    let wan = format!("wan{}", i + 1);
    cfg.uplinks
        .iter()
        .find(|u| u.interface == wan)
        .map(|u| u.name.clone())
        .unwrap_or(wan)
}

/// What share of new connections each uplink should get from the default policy.
fn expected_shares(cfg: &multiwan_core::Config) -> BTreeMap<String, f64> {
    let all = cfg.uplinks.iter().map(|u| u.name.clone()).collect();
    let ids = multiwan_core::plan::assign_ids(cfg, &BTreeMap::new()).unwrap_or_default();
    let p = multiwan_core::plan(cfg, &ids, &all, &multiwan_core::Facts::default());
    let mut out = BTreeMap::new();
    if let Some(multiwan_core::plan::PolicyPlan {
        decision: multiwan_core::plan::Decision::Spread { shares, .. },
        ..
    }) = p.policies.last()
    {
        let sum: u32 = shares.iter().map(|s| s.1).sum();
        for (n, w) in shares {
            out.insert(n.clone(), f64::from(*w) / f64::from(sum.max(1)));
        }
    }
    out
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> crate::daemon::LogLine {
        crate::daemon::LogLine::parse(text)
    }

    #[test]
    fn down_lines_per_family() {
        let whole =
            line("2024-01-01T00:00:00Z  WARN multiwan::daemon: uplink down uplink=\"isp1\"");
        let six = line(
            "2024-01-01T00:00:00Z  WARN multiwan::daemon: uplink down uplink=\"isp1\" family=ipv6",
        );
        let up6 = line(
            "2024-01-01T00:00:00Z  INFO multiwan::daemon: uplink up uplink=\"isp1\" family=ipv6",
        );
        assert!(down_line(&whole, "isp1", Family::V4) && down_line(&whole, "isp1", Family::V6));
        assert!(!down_line(&whole, "isp2", Family::V4));
        assert!(down_line(&six, "isp1", Family::V6) && !down_line(&six, "isp1", Family::V4));
        assert!(!down_line(&up6, "isp1", Family::V6));
    }
}
