//! Sections 5 and 6 of the benchmarks: failover, failback and the kernel update behind them,
//! over repeated trials against one running daemon.
//!
//! Every time is measured from the same moment (the cut) on one clock: *detected* and
//! *kernel updated* are the timestamps of the daemon's own log lines ("uplink down", "kernel
//! updated"), *recovered* is when the client saw the first of ten consecutive new connections
//! succeed. A trial that never recovers (or is never detected) is counted and shown, not
//! dropped.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::procs::ForkCounter;
use super::{max, median, ms, percentile, Section};
use crate::daemon::{unix_now, LabDaemon};
use crate::scratch::private_dir;
use crate::topology::{Family, IspSpec, Topology, TopologySpec, ROUTER_IPV6};
use crate::traffic::{self, Server};

/// How long a trial waits for recovery or failback before it counts as failed.
const LIMIT: Duration = Duration::from_secs(15);

/// One row: check settings, how the uplink fails, and how many routes the main table holds.
struct Variant {
    label: &'static str,
    check: &'static str,
    trials: usize,
    carrier: bool,
    main_routes: usize,
    /// The family whose new connections (and survivor flow) are measured.
    family: Family,
    /// Cut only the IPv6 upstream (IPv4 keeps working): per-family health.
    cut_only6: bool,
    /// The balance method. With a hash method every connection of the one LAN host hashes
    /// to the same uplink, so such a row measures only the daemon's side (detection, the
    /// kernel update, the state back up): section 6's row, not section 5's.
    method: &'static str,
}

impl Variant {
    fn hashed(&self) -> bool {
        self.method != "round-robin"
    }
}

#[derive(Default)]
struct Trial {
    /// Seconds from the cut until the daemon logged the uplink down.
    detected: Option<f64>,
    /// ... until it logged the first kernel update after that.
    updated: Option<f64>,
    /// ... until the first of ten consecutive new connections succeeded.
    recovered: Option<f64>,
    /// Seconds from the repair until the uplink is up and carries a new connection.
    failback: Option<f64>,
    /// `took_ms` of every kernel update in the trial (down and up).
    kernel_ms: Vec<f64>,
    /// Processes the daemon (and its children) spawned during the trial, and the health
    /// changes in it.
    forks: Option<u64>,
    changes: usize,
    survivor_sent: u64,
    survivor_lost: u64,
    /// Seconds the wall clock moved against the monotonic one between the cut and the reading
    /// of the daemon's log, when more than [`CLOCK_STEP`]: the log's timestamps (wall clock)
    /// then say nothing about the interval, so *detected* and *kernel updated* are left out.
    clock_step: Option<f64>,
}

/// A difference between the wall clock's and the monotonic clock's progress over one trial
/// beyond this means the wall clock was stepped (or the machine paused and its wall clock
/// then corrected): the last run of a 10-trial row read a detection 20 s late while its
/// connections had recovered within 0.8 s by the monotonic clock.
const CLOCK_STEP: f64 = 0.1;

/// The IPv6 rows (measured only with [`ROUTER_IPV6`]): the whole upstream cut, seen from IPv6
/// connections, and the IPv6 upstream cut alone.
fn variants6(quick: bool) -> Vec<Variant> {
    if !ROUTER_IPV6 {
        return Vec::new();
    }
    let trials = if quick { 2 } else { 20 };
    [
        ("IPv6: defaults, upstream cut (both families)", false),
        ("IPv6: defaults, only the IPv6 upstream cut", true),
    ]
    .into_iter()
    .map(|(label, cut_only6)| Variant {
        label,
        check: "",
        trials,
        carrier: false,
        main_routes: 0,
        family: Family::V6,
        cut_only6,
        method: "round-robin",
    })
    .collect()
}

fn variants(quick: bool) -> Vec<Variant> {
    let mut v = variants4(quick);
    v.extend(variants6(quick));
    // The hash methods rewrite a 256-bucket map per family on every health change.
    v.push(Variant {
        label: "src-hash (256-bucket maps), defaults, upstream cut",
        check: "",
        trials: if quick { 2 } else { 10 },
        carrier: false,
        main_routes: 0,
        family: Family::V4,
        cut_only6: false,
        method: "src-hash",
    });
    v
}

fn variants4(quick: bool) -> Vec<Variant> {
    let defaults = "defaults (100 ms, 200 ms timeout, down 6, up 10), upstream cut";
    let routes = "defaults, upstream cut, 100 000 routes in the main table";
    if quick {
        return vec![
            Variant {
                label: defaults,
                check: "",
                trials: 3,
                carrier: false,
                main_routes: 0,
                family: Family::V4,
                cut_only6: false,
                method: "round-robin",
            },
            Variant {
                label: routes,
                check: "",
                trials: 1,
                carrier: false,
                main_routes: 100_000,
                family: Family::V4,
                cut_only6: false,
                method: "round-robin",
            },
        ];
    }
    vec![
        Variant {
            label: defaults,
            check: "",
            trials: 20,
            carrier: false,
            main_routes: 0,
            family: Family::V4,
            cut_only6: false,
            method: "round-robin",
        },
        Variant {
            label: "200 ms, 300 ms timeout, down 3, up 5 (the issue's example), upstream cut",
            check: "interval = \"200ms\"\ntimeout = \"300ms\"\ndown_after = 3\nup_after = 5\n",
            trials: 20,
            carrier: false,
            main_routes: 0,
            family: Family::V4,
            cut_only6: false,
            method: "round-robin",
        },
        Variant {
            label: "50 ms, 150 ms timeout, down 6, up 10, upstream cut",
            check: "interval = \"50ms\"\ntimeout = \"150ms\"\ndown_after = 6\nup_after = 10\n",
            trials: 20,
            carrier: false,
            main_routes: 0,
            family: Family::V4,
            cut_only6: false,
            method: "round-robin",
        },
        Variant {
            label: "defaults, carrier loss",
            check: "",
            trials: 20,
            carrier: true,
            main_routes: 0,
            family: Family::V4,
            cut_only6: false,
            method: "round-robin",
        },
        Variant {
            label: routes,
            check: "",
            trials: 10,
            carrier: false,
            main_routes: 100_000,
            family: Family::V4,
            cut_only6: false,
            method: "round-robin",
        },
    ]
}

/// `n` routes to addresses in 198.18.0.0/15 (the benchmarking range) via uplink 1's gateway,
/// as one `ip -batch` on stdin.
fn install_main_routes(topo: &Topology, n: usize) -> Result<()> {
    anyhow::ensure!(n <= 1 << 17, "198.18.0.0/15 holds 131072 addresses");
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let batch: String = (0..n as u32)
        .map(|i| {
            format!(
                "route add {}/32 via 10.37.1.1 dev wan1\n",
                Ipv4Addr::from(base + i)
            )
        })
        .collect();
    topo.router
        .ip_batch(&batch)
        .context("installing the main table's routes")?;
    Ok(())
}

/// A UDP flow of the endpoint's family pinned to the surviving uplink (isp2), found by trying
/// new flows.
fn survivor_flow(topo: &Topology, ep: std::net::SocketAddr) -> Result<UdpSocket> {
    let host = &topo.hosts[0].ns;
    let isp2 = topo.router_addr_of(1, Family::of(ep.ip()));
    for _ in 0..8 {
        let s = host
            .spawn(move || -> Result<UdpSocket> {
                let any: std::net::SocketAddr = if ep.is_ipv6() {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(any)?;
                s.connect(ep)?;
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                s.send(b"x")?;
                let mut b = [0u8; 64];
                let n = s.recv(&mut b)?;
                let seen: std::net::IpAddr = std::str::from_utf8(&b[..n])?.trim().parse()?;
                if seen == isp2 {
                    Ok(s)
                } else {
                    bail!("on isp1")
                }
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("panicked"))?;
        if let Ok(s) = s {
            return Ok(s);
        }
    }
    bail!("no UDP flow landed on isp2")
}

/// One packet every 2 ms on `flow` until stopped: (sent, received back).
struct Stream {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u64>,
    receiver: std::thread::JoinHandle<u64>,
}

impl Stream {
    fn start(flow: UdpSocket) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (st, recv_sock) = (stop.clone(), flow.try_clone()?);
        let sender = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !st.load(Ordering::Relaxed) {
                if flow.send(b"x").is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        });
        let st2 = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut got = 0u64;
            let mut b = [0u8; 64];
            let _ = recv_sock.set_read_timeout(Some(Duration::from_millis(100)));
            let mut idle_after_stop = 0;
            loop {
                match recv_sock.recv(&mut b) {
                    Ok(_) => got += 1,
                    Err(_) if st2.load(Ordering::Relaxed) => {
                        idle_after_stop += 1;
                        if idle_after_stop > 3 {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
            got
        });
        Ok(Self {
            stop,
            sender,
            receiver,
        })
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        (
            self.sender.join().unwrap_or(0),
            self.receiver.join().unwrap_or(0),
        )
    }
}

/// Runs the trials of one variant against one daemon.
fn failover_trials(bin: &Path, v: &Variant) -> Result<Vec<Trial>> {
    let topo = Topology::build(&TopologySpec {
        isps: vec![IspSpec::default(); 2],
        lan_hosts: 1,
    })?;
    if v.main_routes > 0 {
        install_main_routes(&topo, v.main_routes)?;
    }
    let text = with_check(&topo.config(v.method, &[1, 1]), v.check);
    let dir = private_dir("bench")?;
    let cfg = dir.path().join("multiwan.toml");
    std::fs::write(&cfg, &text)?;
    let daemon = LabDaemon::start(
        &topo,
        bin,
        &cfg.display().to_string(),
        &dir.path().join("run"),
        &dir.path().join("daemon.log"),
        true,
        &[],
    )?;
    let server = Server::start_all(&topo.server, &topo.server_endpoints())?;
    let mut trials = Vec::new();
    for _ in 0..v.trials {
        let start = Instant::now();
        // Both families back up (an uplink without IPv6 has no IPv6 state).
        let up = |f| {
            matches!(
                daemon.uplink_state_of("isp1", f).as_deref(),
                Some("up") | None
            )
        };
        while !(up(Family::V4) && up(Family::V6)) {
            if start.elapsed() > LIMIT {
                bail!("isp1 did not come up between trials:\n{}", daemon.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        trials.push(trial(&topo, &daemon, v)?);
    }
    drop(server);
    daemon.stop()?;
    Ok(trials)
}

/// The generated config with `check` (settings for `[uplink.check]`, one per line) after every
/// uplink's `targets` line, whatever the targets are.
fn with_check(config: &str, check: &str) -> String {
    config
        .lines()
        .map(|l| {
            if l.starts_with("targets = ") {
                format!("{l}\n{check}")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Cuts (or, with `restore`, repairs) what variant `v` breaks on the first uplink.
fn break_uplink(topo: &Topology, v: &Variant, restore: bool) -> Result<()> {
    match (v.carrier, v.cut_only6, restore) {
        (true, _, false) => topo.isps[0]
            .ns
            .ip(&["link", "set", "cpe", "down"])
            .map(|_| ()),
        (true, _, true) => topo.isps[0]
            .ns
            .ip(&["link", "set", "cpe", "up"])
            .map(|_| ()),
        (false, true, false) => topo.cut_upstream6(0),
        (false, true, true) => topo.restore_upstream6(0),
        (false, false, false) => topo.cut_upstream(0),
        (false, false, true) => topo.restore_upstream(0),
    }
}

/// One connection attempt of `family` from the first LAN host: the uplink (0-based) it used.
fn attempt(topo: &Topology, family: Family, timeout: Duration) -> Option<usize> {
    let ep = topo.endpoint(family);
    topo.hosts[0]
        .ns
        .spawn(move || traffic::tcp_hello_ip(ep, timeout).ok())
        .ok()
        .and_then(|h| h.join().ok())
        .flatten()
        .and_then(|a| topo.isp_of(a))
}

/// Cut, wait for ten good connections in a row, repair, wait for failback; read the daemon's
/// log for what it did and when.
fn trial(topo: &Topology, daemon: &LabDaemon, v: &Variant) -> Result<Trial> {
    let stream = if v.hashed() {
        None
    } else {
        Some(Stream::start(survivor_flow(
            topo,
            topo.endpoint(v.family),
        )?)?)
    };
    let forks = ForkCounter::start(daemon.pid()).ok();
    let log_from = daemon.log_len();
    break_uplink(topo, v, false)?;
    // The cut is in effect once the command has returned: both clocks start here.
    let (cut, cut_wall) = (Instant::now(), unix_now());
    let mut t = Trial::default();
    let mut streak = 0;
    let mut first_ok = None;
    while cut.elapsed() < LIMIT && !v.hashed() {
        if attempt(topo, v.family, Duration::from_millis(50)).is_some() {
            streak += 1;
            if streak == 1 {
                first_ok = Some(cut.elapsed().as_secs_f64());
            }
            if streak == 10 {
                t.recovered = first_ok;
                break;
            }
        } else {
            streak = 0;
        }
    }
    // The daemon's view of the same interval, from its log timestamps.
    let wait = Instant::now();
    // Without the client's attempts (a hash method) the wait starts at the cut: it must also
    // see the kernel update that follows the detection.
    let pending = |t: &Trial| t.detected.is_none() || (v.hashed() && t.updated.is_none());
    while pending(&t) && wait.elapsed() < Duration::from_secs(5) {
        let lines = daemon.log_since(log_from);
        let down = lines
            .iter()
            .find(|l| crate::demo::down_line(l, "isp1", v.family));
        t.detected = down.and_then(|l| l.unix_s).map(|s| s - cut_wall);
        t.updated = down.and_then(|d| {
            lines
                .iter()
                .filter(|l| l.has("kernel updated"))
                .filter_map(|l| l.unix_s)
                .find(|s| *s >= d.unix_s.unwrap_or(f64::MAX))
                .map(|s| s - cut_wall)
        });
        if pending(&t) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let drift = (unix_now() - cut_wall) - cut.elapsed().as_secs_f64();
    if drift.abs() > CLOCK_STEP {
        t.clock_step = Some(drift);
        t.detected = None;
        t.updated = None;
    }
    break_uplink(topo, v, true)?;
    let restored = Instant::now();
    while restored.elapsed() < LIMIT {
        // The measured family's state (with only IPv6 cut, IPv4 never left "up").
        let state_up = daemon.uplink_state_of("isp1", v.family).as_deref() == Some("up");
        let carried =
            || v.hashed() || attempt(topo, v.family, Duration::from_millis(200)) == Some(0);
        if state_up && carried() {
            t.failback = Some(restored.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (sent, got) = stream.map_or((0, 0), Stream::finish);
    t.forks = forks.and_then(|f| f.finish().ok());
    let lines = daemon.log_since(log_from);
    t.kernel_ms = lines
        .iter()
        .filter(|l| l.has("kernel updated"))
        .filter_map(|l| l.number("took_ms"))
        .collect();
    t.changes = lines
        .iter()
        .filter(|l| l.field("uplink") == Some("isp1") && l.field("to").is_some())
        .count();
    t.survivor_sent = sent;
    t.survivor_lost = sent.saturating_sub(got);
    Ok(t)
}

/// "median / p95 / max" of a list of seconds, or "-".
fn dist(v: &[f64]) -> String {
    format!(
        "{} / {} / {}",
        ms(median(v)),
        ms(percentile(v, 95.0)),
        ms(max(v))
    )
}

/// The empty tables of sections 5 and 6, with what they measure.
fn failover_sections() -> (Section, Section) {
    let f = Section::new(
        "5. Failover and failback",
        "One of two uplinks loses its upstream (a blackhole route in the ISP: the link and the \
         gateway stay up) or its carrier. All three times run from the same moment, the cut, on \
         one clock: *detected* is the timestamp of the daemon's own \"uplink down\" log line; \
         *kernel updated* that of its next \"kernel updated\" line; *recovered* is when the first \
         of 10 consecutive new connections (tried back to back, 50 ms timeout each) succeeded. \
         The first of those can go out just before the kernel update if round-robin happens to \
         send it to the surviving uplink, so *recovered* may precede *kernel updated* by up to \
         one attempt. *Failback* runs from the repair until the uplink is up and carries a new \
         connection again. Median / p95 / max over the trials that got there; a trial that did \
         not within 15 s is counted in the *trials* column, not dropped.",
        &[
            "settings",
            "trials (recovered / all)",
            "detected",
            "kernel updated",
            "recovered",
            "failback",
        ],
    );
    let r = Section::new(
        "6. Reconfiguration",
        "The same trials: how long each of the daemon's kernel updates took (its own `took_ms`: \
         policy chains rewritten in one nft transaction plus the multipath route, read back and \
         verified), how many processes the daemon spawned per health change (every fork of the \
         daemon and of its children, counted exactly from the kernel's process-events connector \
         over the whole trial, divided by the trial's health changes: down and up), and how many \
         packets a UDP flow on the *surviving* uplink lost while the other uplink failed and came \
         back (one packet every 2 ms).",
        &[
            "settings",
            "kernel update (median / p95 / max)",
            "processes per health change (median / max)",
            "survivor packets lost",
        ],
    );
    (f, r)
}

/// Sections 5 and 6: failover, failback, reconfiguration.
pub(super) fn failover(bin: &Path, quick: bool) -> Result<(Section, Section)> {
    let (mut f, mut r) = failover_sections();
    let mut v4_defaults = (Vec::new(), Vec::new());
    let mut v6_defaults = (Vec::new(), Vec::new());
    for v in variants(quick) {
        println!("   failover: {}, {} trials", v.label, v.trials);
        let trials = failover_trials(bin, &v)?;
        let col =
            |g: fn(&Trial) -> Option<f64>| -> Vec<f64> { trials.iter().filter_map(g).collect() };
        let (det, upd, rec, back) = (
            col(|t| t.detected),
            col(|t| t.updated),
            col(|t| t.recovered),
            col(|t| t.failback),
        );
        let km: Vec<f64> = trials.iter().flat_map(|t| t.kernel_ms.clone()).collect();
        let per_change: Vec<f64> = trials
            .iter()
            .filter_map(|t| Some(t.forks? as f64 / t.changes.max(1) as f64))
            .collect();
        let sent: u64 = trials.iter().map(|t| t.survivor_sent).sum();
        let lost: u64 = trials.iter().map(|t| t.survivor_lost).sum();
        if v.hashed() {
            r.row(vec![
                v.label.into(),
                kernel_ms(&km),
                changes_forks(&per_change),
                "not measured: the LAN host's connections all hash to one uplink".into(),
            ]);
            continue;
        }
        match goal_slot(&v) {
            Some(Family::V4) => v4_defaults = (rec.clone(), back.clone()),
            Some(Family::V6) => v6_defaults = (rec.clone(), back.clone()),
            None => {}
        }
        let n = trials.len();
        let steps: Vec<String> = trials
            .iter()
            .filter_map(|t| t.clock_step)
            .map(|d| format!("{d:+.1} s"))
            .collect();
        if !steps.is_empty() {
            f.note(format!(
                "{}: in {} of {n} trials the wall clock moved against the monotonic clock during the trial ({}): the machine was paused or its clock stepped, so those trials' log-timed figures (detected, kernel updated) are left out; their recovery and failback, timed on the monotonic clock, are kept",
                v.label,
                steps.len(),
                steps.join(", ")
            ));
        }
        let missing = |what: &str, got: usize| {
            (got < n).then(|| format!("{}: {what} in {} of {n} trials only", v.label, got))
        };
        for m in [
            missing("detected", det.len() + steps.len()),
            missing("recovered", rec.len()),
            missing("failed back", back.len()),
        ]
        .into_iter()
        .flatten()
        {
            f.note(m);
        }
        let early = trials
            .iter()
            .filter(|t| matches!((t.recovered, t.updated), (Some(r), Some(u)) if r < u))
            .count();
        if early > 0 {
            f.note(format!(
                "{}: in {early} of {n} trials the first of the ten connections went out over the survivor before the kernel update",
                v.label
            ));
        }
        f.row(vec![
            v.label.into(),
            format!("{} / {n}", rec.len()),
            dist(&det),
            dist(&upd),
            dist(&rec),
            dist(&back),
        ]);
        r.row(vec![
            v.label.into(),
            kernel_ms(&km),
            changes_forks(&per_change),
            format!("{lost} of {sent}"),
        ]);
    }
    goals(&mut f, &v4_defaults.0, &v4_defaults.1);
    ipv6_goals(&mut f, &v6_defaults.0, &v6_defaults.1);
    r.note("goal: zero packets lost on the surviving uplink; kernel update ≤ 5 ms p95 with no process spawned, flat with 100 000 routes in the main table (goals from the project's product brief)");
    r.note("the 100 000 routes (198.18.0.0/15, /32 each, via uplink 1's gateway) are installed with one `ip -batch -` before the daemon starts");
    r.note("src-hash: every health change rewrites each family's 256-bucket policy map and reads it back (the verification); its row is measured from the daemon's side only (its log, its processes)");
    Ok((f, r))
}

/// Section 6's "median / p95 / max" of the kernel updates' `took_ms`.
fn kernel_ms(km: &[f64]) -> String {
    format!(
        "{:.1} ms / {:.1} ms / {:.1} ms",
        median(km),
        percentile(km, 95.0),
        max(km)
    )
}

/// Section 6's processes per health change.
fn changes_forks(per_change: &[f64]) -> String {
    if per_change.is_empty() {
        "not measured (no process-events connector)".into()
    } else {
        format!("{:.1} / {:.1}", median(per_change), max(per_change))
    }
}

/// Which family's goals a variant's figures are checked against: the defaults with the whole
/// upstream cut (no other settings, no carrier loss, no extra routes), or none.
fn goal_slot(v: &Variant) -> Option<Family> {
    (v.check.is_empty() && !v.carrier && v.main_routes == 0 && !v.cut_only6).then_some(v.family)
}

/// The same goals for IPv6 (the product brief: "IPv6 the same"), or why there are no IPv6 rows.
fn ipv6_goals(f: &mut Section, recovered: &[f64], failback: &[f64]) {
    if !ROUTER_IPV6 {
        f.note("IPv6 rows: not measured — the router under test has no IPv6 support yet (the lab's topology::ROUTER_IPV6 is off)");
        return;
    }
    let p_rec = percentile(recovered, 95.0);
    let p_back = percentile(failback, 95.0);
    f.note(format!(
        "IPv6, whole upstream cut: goal ≤ 1 s until new IPv6 connections work: {} (p95 {}); failback ≤ 1.5 s: {} (p95 {})",
        if p_rec <= 1.0 { "met" } else { "missed" },
        ms(p_rec),
        if p_back <= 1.5 { "met" } else { "missed" },
        ms(p_back)
    ));
    f.note("IPv6 rows measure IPv6 connections and an IPv6 survivor flow; detection is the daemon's first line taking isp1's IPv6 down (`family=ipv6 to=down`) or the whole uplink down, failback is isp1's IPv6 state up again and a new IPv6 connection carried by it");
}

fn goals(f: &mut Section, recovered: &[f64], failback: &[f64]) {
    f.note(format!(
        "goal ≤ 1 s until new connections work with the defaults: {} (p95 {})",
        if percentile(recovered, 95.0) <= 1.0 {
            "met"
        } else {
            "missed"
        },
        ms(percentile(recovered, 95.0))
    ));
    f.note(format!(
        "goal failback ≤ 1.5 s: {} (p95 {})",
        if percentile(failback, 95.0) <= 1.5 {
            "met"
        } else {
            "missed"
        },
        ms(percentile(failback, 95.0))
    ));
    f.note("quoted, not measured in this run — the anchors with their default settings, computed from their documented defaults: mwan3 70–130 s, pfSense ≈ 15 s, VyOS ≈ 10 s, FortiGate ≈ 3 s; and a Rust daemon, mwan4: 1.92 s until new connections work, failback 2.40 s (source: the project's product brief, which measured mwan4 on a machine of this kind)");
}
