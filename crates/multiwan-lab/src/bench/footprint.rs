//! Section 7 of the benchmarks: the idle daemon's memory and CPU share, per thread, against
//! what merely waking up costs on this machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{median, percentile, Section};
use crate::daemon::LabDaemon;
use crate::scratch::{private_dir, private_tmpfs_dir};
use crate::topology::{IspSpec, Topology, TopologySpec};

fn cpu_by_thread(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(name).or_default() += ns;
    }
    out
}

fn cpu_ns(pid: u32) -> u64 {
    cpu_by_thread(pid).values().sum()
}

/// (RSS, PSS, private anonymous) in KiB, from smaps_rollup.
fn memory_kib(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"), field("Pss_Anon:"))
}

/// One mapping of `/proc/PID/smaps`: its header fields and its resident KiB.
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    path: String,
    rss_kib: u64,
}

fn mappings(pid: u32) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = f.next().unwrap_or_default().to_string();
                // offset, device, inode, then the path (which may hold spaces).
                let path = f.skip(3).collect::<Vec<_>>().join(" ");
                out.push(Mapping {
                    start,
                    end,
                    perms,
                    path,
                    rss_kib: 0,
                });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(m), Some(kib)) = (out.last_mut(), f.next().and_then(|v| v.parse().ok())) {
                m.rss_kib = kib;
            }
        }
    }
    out
}

/// Where the resident memory is, by kind of mapping: the binary's own file, the other files
/// (libc, the loader, locale data), the main heap, the stacks and glibc's per-thread malloc
/// arenas (anonymous, told apart by their layout: a thread stack sits just above its guard
/// page, an arena heap starts 64 MiB-aligned with its reserve after it), and the rest (signal
/// stacks, thread-local data).
fn rss_by_mapping(pid: u32, bin: &Path) -> String {
    const ARENA_ALIGN: u64 = 64 << 20;
    let maps = mappings(pid);
    let bin = bin.canonicalize().unwrap_or_else(|_| bin.to_path_buf());
    let (mut own, mut files, mut heap, mut stacks, mut arenas, mut anon) = (0, 0, 0, 0, 0, 0);
    let (mut n_stacks, mut n_arenas) = (0, 0);
    for (i, m) in maps.iter().enumerate() {
        let after_guard =
            i > 0 && maps[i - 1].perms.starts_with("---") && maps[i - 1].end == m.start;
        match m.path.as_str() {
            p if Path::new(p) == bin => own += m.rss_kib,
            "[heap]" => heap += m.rss_kib,
            "[stack]" => {
                stacks += m.rss_kib;
                n_stacks += 1;
            }
            p if p.starts_with('/') => files += m.rss_kib,
            "" if m.perms.starts_with("rw") && m.start % ARENA_ALIGN == 0 => {
                arenas += m.rss_kib;
                n_arenas += 1;
            }
            // Small guarded regions are the per-thread signal stacks; they count as "other".
            "" if m.perms.starts_with("rw") && after_guard && m.end - m.start >= 256 << 10 => {
                stacks += m.rss_kib;
                n_stacks += 1;
            }
            _ => anon += m.rss_kib,
        }
    }
    format!(
        "binary {own} KiB, other files (libc, loader) {files} KiB, heap {heap} KiB, {n_stacks} stacks {stacks} KiB, {n_arenas} malloc arenas {arenas} KiB, other anonymous {anon} KiB"
    )
}

/// The calling thread's CPU time so far in nanoseconds (the scheduler's accounting), 0 when
/// it cannot be read.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// CPU share of one core that a thread costs which does nothing but wake `per_sec` times a
/// second: the floor of any prober on this machine.
fn wake_floor(per_sec: u32, secs: u64) -> f64 {
    let h = std::thread::spawn(move || {
        let (c0, t0) = (thread_cpu_ns(), Instant::now());
        let end = t0 + Duration::from_secs(secs);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_secs(1) / per_sec);
        }
        (thread_cpu_ns() - c0) as f64 / t0.elapsed().as_nanos() as f64
    });
    h.join().unwrap_or(f64::NAN)
}

/// The fwmark of each uplink's table (`lookup TABLE` of multiwan's marked rules), in
/// uplink order: what a reference prober must set to be routed like multiwan's probes.
fn uplink_marks(topo: &Topology, n: usize) -> Result<Vec<String>> {
    let rules: serde_json::Value = serde_json::from_str(&topo.router.ip(&["-j", "rule", "show"])?)?;
    (1..=n)
        .map(|i| {
            let table =
                (multiwan_core::model::KernelOpts::default().table_base + i as u32).to_string();
            rules
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["table"] == table.as_str() && r["fwmark"].is_string())
                .and_then(|r| r["fwmark"].as_str())
                .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok())
                // ping takes the mark in decimal.
                .map(|m| m.to_string())
                .ok_or_else(|| anyhow::anyhow!("no fwmark rule for table {table}"))
        })
        .collect()
}

/// CPU share of one core that iputils `ping` takes to send the same probes as multiwan (one
/// `ping -i INTERVAL` per uplink and family, with the uplink's mark and interface) over
/// `secs` seconds: the cost of the probes themselves on this network, as a reference.
fn ping_reference(topo: &Topology, n: usize, dual: bool, interval: &str, secs: u64) -> Result<f64> {
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let marks = uplink_marks(topo, n)?;
    let mut pings = Kill(Vec::new());
    for (i, mark) in marks.iter().enumerate() {
        let ifname = &topo.isps[i].router_if;
        let mut targets = vec![("-4", crate::topology::SERVER_ADDR.to_string())];
        if dual {
            targets.push(("-6", crate::topology::SERVER_ADDR6.to_string()));
        }
        for (family, target) in targets {
            let child = topo
                .router
                .command("ping")
                .args([
                    family, "-q", "-n", "-i", interval, "-m", mark, "-I", ifname, &target,
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            pings.0.push(child);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let pids: Vec<u32> = pings.0.iter().map(std::process::Child::id).collect();
    let total = || pids.iter().map(|p| cpu_ns(*p)).sum::<u64>();
    let (c0, t0) = (total(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = (total() - c0) as f64 / t0.elapsed().as_nanos() as f64;
    // Each ping prints its summary on SIGINT: every probe must have been answered (about:
    // the last one may be in flight), or the reference did less work than multiwan's probes.
    for c in std::mem::take(&mut pings.0) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let out = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |word: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.contains("transmitted"))?;
            let before = line.split(word).next()?;
            before.split(',').next_back()?.trim().parse().ok()
        };
        match (count(" packets transmitted"), count(" received")) {
            (Some(sent), Some(got)) if sent > 0 && got + 2 >= sent => {}
            _ => anyhow::bail!("the reference ping's probes were not all answered: {text}"),
        }
    }
    Ok(cpu)
}

/// An ICMP echo request of multiwan's probe size (16 bytes); the kernel fills in an ICMPv6
/// checksum, an ICMPv4 one is computed here.
fn echo(v4: bool, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = if v4 { 8 } else { 128 };
    p[4..6].copy_from_slice(&0x4c42u16.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    if v4 {
        let sum: u32 = p
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        let folded = (folded & 0xffff) + (folded >> 16);
        p[2..4].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    }
    p
}

/// CPU share of one core that a thread takes which does nothing but send the same probes as
/// multiwan: every `interval` one echo request per uplink and family, on a raw socket with the
/// uplink's mark and bound to its interface, to the same target; the answers are dropped
/// unread by a socket filter. Measured in the router namespace while multiwan runs, over
/// `secs` seconds: the floor under any prober of these packets on this network (its wake-ups
/// and the kernel's work of sending), so the last column says what the daemon adds to it.
fn sent_alone(topo: &Topology, n: usize, dual: bool, interval: Duration, secs: u64) -> Result<f64> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::net::{IpAddr, SocketAddr};
    let mut probes: Vec<(String, u32, IpAddr)> = Vec::new();
    for (i, mark) in uplink_marks(topo, n)?.iter().enumerate() {
        let ifname = topo.isps[i].router_if.clone();
        probes.push((
            ifname.clone(),
            mark.parse()?,
            crate::topology::SERVER_ADDR.into(),
        ));
        if dual {
            probes.push((ifname, mark.parse()?, crate::topology::SERVER_ADDR6.into()));
        }
    }
    let run = move || -> Result<f64> {
        let mut socks = Vec::new();
        for (ifname, mark, target) in &probes {
            let (domain, proto) = match target {
                IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
                IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
            };
            let s = Socket::new(domain, Type::RAW, Some(proto))?;
            s.bind_device(Some(ifname.as_bytes()))?;
            s.set_mark(*mark)?;
            // BPF `ret #0`: every answer is dropped before it is queued.
            s.attach_filter(&[nix::libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0,
            }])?;
            socks.push((
                s,
                SockAddr::from(SocketAddr::new(*target, 0)),
                target.is_ipv4(),
            ));
        }
        let (c0, t0) = (thread_cpu_ns(), Instant::now());
        let (mut next, end) = (t0, t0 + Duration::from_secs(secs));
        let mut seq = 0u16;
        while next < end {
            for (s, to, v4) in &socks {
                s.send_to(&echo(*v4, seq), to)?;
            }
            seq = seq.wrapping_add(1);
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok((thread_cpu_ns() - c0) as f64 / t0.elapsed().as_nanos() as f64)
    };
    topo.router
        .spawn(run)?
        .join()
        .map_err(|_| anyhow::anyhow!("the probe-sending loop panicked"))?
}

/// How the ISP's side of each uplink's link takes the router's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// In a kernel thread of its own ([`Topology::isp_async_delivery`]), as on a real link.
    Thread,
    /// Inside the router's send (a plain veth pair): the ISP's work is charged to the sender.
    InSend,
}

impl Delivery {
    fn label(self) -> &'static str {
        match self {
            Delivery::Thread => "own thread (NAPI)",
            Delivery::InSend => "inside the router's send (plain veth)",
        }
    }
}

/// One row of the section.
struct Variant {
    uplinks: usize,
    dual: bool,
    /// `[uplink.check]` settings added to the generated config.
    check: &'static str,
    interval: &'static str,
    /// The same interval for ping's `-i`.
    ping_interval: &'static str,
    delivery: Delivery,
}

fn variants(quick: bool) -> Vec<Variant> {
    let v = |uplinks, dual, delivery| Variant {
        uplinks,
        dual,
        check: "",
        interval: "default (100 ms)",
        ping_interval: "0.1",
        delivery,
    };
    if quick {
        return vec![v(2, false, Delivery::Thread)];
    }
    vec![
        v(2, false, Delivery::Thread),
        v(2, false, Delivery::InSend),
        v(2, true, Delivery::Thread),
        v(8, false, Delivery::Thread),
        v(8, true, Delivery::Thread),
        Variant {
            check: "interval = \"1s\"\ntimeout = \"500ms\"\n",
            interval: "1 s (mwan4-like)",
            ping_interval: "1",
            ..v(2, false, Delivery::Thread)
        },
    ]
}

/// How many windows a row's measuring time is cut into: one slow window (another process on
/// the machine, a timer that fired late) moves the median little, and the range shows it.
/// The full run measures 30 s, the daemon's kernel verification interval, so every row's
/// share includes exactly one verification (one window of the three holds it).
const WINDOWS: u32 = 3;

/// The daemon's CPU share in each of [`WINDOWS`] consecutive windows filling `secs`.
fn windows(pid: u32, secs: u64) -> Vec<f64> {
    let each = Duration::from_secs(secs) / WINDOWS;
    (0..WINDOWS)
        .map(|_| {
            let (c, t) = (cpu_ns(pid), Instant::now());
            std::thread::sleep(each);
            (cpu_ns(pid) - c) as f64 / t.elapsed().as_nanos() as f64
        })
        .collect()
}

/// "median (min–max)" of CPU shares, in %.
fn spread(shares: &[f64]) -> String {
    if shares.is_empty() {
        return "-".into();
    }
    format!(
        "{:.3} % ({:.3}–{:.3})",
        100.0 * median(shares),
        100.0 * percentile(shares, 0.0),
        100.0 * percentile(shares, 100.0)
    )
}

/// The daemon re-reads and verifies the kernel every 30 s (`VERIFY_EVERY` in the router's
/// engine; the lab drives the binary and does not link the router's code).
const VERIFY_EVERY_SECS: u64 = 30;

/// Section 7: daemon RSS and CPU share.
pub(super) fn footprint(bin: &Path, quick: bool) -> Result<Section> {
    let secs = if quick { 3 } else { VERIFY_EVERY_SECS };
    let mut s = Section::new(
        "7. Footprint",
        &format!(
            "`multiwan run` idle (no traffic) with every uplink probing one target per family \
             (a dual-stack uplink sends an IPv4 and an IPv6 probe each round): resident memory, and CPU time over {secs} s from the scheduler's per-thread accounting, as a \
             share of one core (over 30 s: one of the daemon's kernel verifications, every 30 s, falls in it), also cut into {WINDOWS} windows whose median and range show how steady it is. The run directory is on a tmpfs, as `/run/multiwan` is under systemd, and the daemon runs without backtrace capture (`RUST_BACKTRACE=0`), as a service does."
        ),
        &[
            "uplinks",
            "families probed",
            "probe interval",
            "ISP side of each link",
            "RSS",
            "PSS",
            "private (anon)",
            "CPU share of one core",
            "median (range) of its windows",
            "iputils ping, same probes",
            "multiwan / ping",
            "the same probes, sent alone",
            "multiwan / sent alone",
        ],
    );
    for v in variants(quick) {
        measure(&mut s, bin, &v, secs)?;
    }
    s.note("ISP side of each link: on a plain veth pair the receiving namespace processes a frame inside the sender's system call, so each probe would be charged with the ISP forwarding it, the server answering and the answer's way back into the router. \"own thread\" gives each ISP's side of the link threaded NAPI (GRO on, `rx-udp-gro-forwarding` so that a socket's frames qualify): that work runs in a `napi/cpe-N` kernel thread, as a real NIC hands frames to the wire and takes answers in an interrupt; the router's namespace is not changed. The plain row is kept to show the difference");
    s.note("iputils ping, same probes: one `ping -i INTERVAL -m MARK -I wanN` per uplink and family, in the router namespace while multiwan runs, with the uplink's mark and interface, each checked afterwards to have had its probes answered — what sending the same probes with the standard tool costs on this network; below 1 in the last column, the whole daemon costs less than its probes would cost sent by ping");
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    s.note("the same probes, sent alone: one thread in the router namespace, while multiwan runs, that only sends the same echo requests (same size, interval, marks, interfaces and targets; one raw socket per uplink and family) and lets a socket filter drop their answers: the wake-ups plus the kernel's work of sending these packets on this network, the floor under any prober of them; the last column is what the whole daemon costs against that floor");
    s.note(format!(
        "the router binary measured here: {:.2} MB ({size} bytes, {}); quoted from issue 11, before the reshaping (IPv4 only then, run directory on disk, plain veth): 3.1 MB, idle RSS 4.3–4.5 MiB and 0.21 % of a core with 2 uplinks; quoted from the previous BENCHMARKS.md (commit aa7ac13; ping for the same probes cost 0.198 %, and the same probes sent alone 0.169 %, at 2 uplinks in that run): 2.44 MB, RSS 1.4 MiB (2 uplinks) to 1.9 MiB (8 dual-stack), private 0.29–0.54 MiB, CPU 0.237 % (2 uplinks), 0.275 % (2, plain veth), 0.299 % (2 dual-stack), 0.313 % (8), 0.463 % (8 dual-stack), 0.081 % (2 at 1 s); before it (commit 2963f70, built with a stale code order: 36 of its 1886 names, idle ones among them, no longer in the build; ping for the same probes cost 0.194 % at 2 uplinks in that run): 2.43 MB, RSS 2.0 MiB (2 uplinks) to 2.3 MiB (8 dual-stack), private 0.27–0.54 MiB, CPU 0.199 % (2 uplinks), 0.231 % (2, plain veth), 0.204 % (2 dual-stack), 0.284 % (8), 0.413 % (8 dual-stack), 0.042 % (2 at 1 s); before it (commit cfee635, measured on 70ecfae: the same code with lld and the profiled code order, before set-element dumps were read by our own parser; ping for the same probes cost 0.285 % at 2 uplinks in that run, a busy one): 2.28 MB, RSS 1.3 MiB (2 uplinks) to 1.8 MiB (8 dual-stack), private 0.26–0.54 MiB, CPU 0.253 % (2 uplinks), 0.412 % (2, plain veth), 0.394 % (2 dual-stack), 0.406 % (8), 0.705 % (8 dual-stack), 0.056 % (2 at 1 s); before it (commit 859cdec: linked by GNU ld in its default code order; ping for the same probes cost 0.261 % at 2 uplinks then): 2.29 MB, RSS 2.0–2.3 MiB (binary pages 1868 KiB), private 0.25–0.53 MiB, CPU 0.153 % (2 uplinks), 0.256 % (2, plain veth), 0.253 % (2 dual-stack), 0.288 % (8), 0.496 % (8 dual-stack), 0.043 % (2 at 1 s); CPU rows differ between runs of the same code by up to a half (the machine's noise: compare the ping column); before that (commit 36e91bd, before the one-sort change and packed relocations): 2.53 MB, RSS 2.2–2.5 MiB (binary pages 2060 KiB); before it (commit d3380ef, clap's parser linked, the daemon inheriting RUST_BACKTRACE=1): 2.74 MB, RSS 2.7–3.0 MiB; earlier still (glibc, linked dynamically): 3.04 MB, RSS 4.8–5.5 MiB",
        size as f64 / 1e6,
        bin.display()
    ));
    s.note(match crate::layout::resolved(bin) {
        Some(((found, named), (idle_found, idle_named))) => format!(
            "code order (`crates/multiwan/link.order`, written by `multiwan-lab --layout`): {found} of its {named} functions are in this build's link map, {idle_found} of the {idle_named} the idle daemon calls{}",
            if idle_found < idle_named || found * 10 < named * 9 {
                " — stale (a code change, the toolchain or a dependency changed the names; the idle daemon's missing ones are scattered over more pages): write it again"
            } else {
                ""
            }
        ),
        None => "code order: the default one (no lld link map beside the binary, or no link.order)".into(),
    });
    let floor = wake_floor(10, secs.min(5));
    s.note(format!(
        "on this machine a thread that does nothing but wake 10 times a second costs {:.3} % of a core: \
         the floor under any prober at a 100 ms interval (multiwan's prober thread wakes 10 times a second \
         for all uplinks together; the event loop wakes once a second while every uplink is healthy)",
        100.0 * floor
    ));
    s.note("goals (issue 11): binary ≤ 1.5 MB, RSS ≤ 2.0 MiB and ≤ 0.1 % of a core with 2 uplinks, ≤ 0.25 % with 8, at the default interval; quoted, not measured in this run: mwan4 2.5 MiB RSS, probing 5× less often (source: the project's product brief). RSS counts file-backed pages shared with every other process (libc, and the binary's text shared with any other multiwan process); PSS divides those among their users; the private anonymous memory is what the daemon itself allocates");
    Ok(s)
}

/// Measures one variant: starts the network and the daemon, reads CPU and memory, runs the
/// ping reference, and adds the row and its notes.
fn measure(s: &mut Section, bin: &Path, v: &Variant, secs: u64) -> Result<()> {
    let n = v.uplinks;
    let topo = Topology::build(&TopologySpec {
        isps: vec![IspSpec::default(); n],
        lan_hosts: 1,
    })?;
    let napi = match v.delivery {
        Delivery::Thread => topo.isp_async_delivery()?,
        Delivery::InSend => Vec::new(),
    };
    let dir = private_dir("bench")?;
    let tmpfs = private_tmpfs_dir("bench-run")?;
    let run_dir = match &tmpfs {
        Some(t) => t.path().join("run"),
        None => dir.path().join("run"),
    };
    let cfg = dir.path().join("multiwan.toml");
    let text = topo
        .config_with("round-robin", &vec![1; n], v.dual)
        .replace("[uplink.check]\n", &format!("[uplink.check]\n{}", v.check));
    if !v.check.is_empty() && !text.contains(v.check) {
        anyhow::bail!("the footprint config lost its check settings:\n{text}");
    }
    let families = if v.dual { "IPv4 + IPv6" } else { "IPv4" };
    let what = format!(
        "{n} uplinks ({families}) at {}, ISP side {}",
        v.interval,
        v.delivery.label()
    );
    std::fs::write(&cfg, text)?;
    let daemon = LabDaemon::start(
        &topo,
        bin,
        &cfg.display().to_string(),
        &run_dir,
        &dir.path().join("daemon.log"),
        true,
        // As a service runs (systemd starts it with a clean environment): a developer's
        // RUST_BACKTRACE=1 makes every error the daemon builds unwind its stack, which
        // costs time and pages in the unwind tables (~0.3 MiB of RSS in the build of d7a504b,
        // whose every verification built an error per missing route table).
        &[("RUST_BACKTRACE", "0"), ("RUST_LIB_BACKTRACE", "0")],
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = daemon.pid();
    let napi_cpu = || napi.iter().map(|p| cpu_ns(*p)).sum::<u64>();
    let (c0, t0, k0) = (cpu_ns(pid), Instant::now(), napi_cpu());
    let by0 = cpu_by_thread(pid);
    let shares = windows(pid, secs);
    let elapsed = t0.elapsed().as_nanos() as f64;
    let cpu = (cpu_ns(pid) - c0) as f64 / elapsed;
    let kernel = (napi_cpu() - k0) as f64 / elapsed;
    let by1 = cpu_by_thread(pid);
    let mut parts: Vec<String> = by1
        .iter()
        .map(|(k, t)| {
            let d = t.saturating_sub(by0.get(k).copied().unwrap_or(0));
            format!("{k} {:.3} %", 100.0 * d as f64 / elapsed)
        })
        .collect();
    parts.sort();
    let mut line = format!("{what}, CPU by thread: {}", parts.join(", "));
    if v.delivery == Delivery::Thread {
        if kernel <= 0.0 {
            anyhow::bail!("the ISPs' NAPI threads did no work: the probes did not go through them");
        }
        line.push_str(&format!(
            "; the ISPs' NAPI kernel threads meanwhile: {:.3} % (not the router's work)",
            100.0 * kernel
        ));
    }
    s.note(line);
    let (rss, pss, anon) = memory_kib(pid);
    // ping has no periodic extra work: 20 s tell its share as well as 30.
    let ping = ping_reference(&topo, n, v.dual, v.ping_interval, secs.min(20))?;
    let interval = Duration::from_secs_f64(v.ping_interval.parse()?);
    let alone = sent_alone(&topo, n, v.dual, interval, secs.min(20))?;
    s.note(format!(
        "{what}, RSS by mapping: {}",
        rss_by_mapping(pid, bin)
    ));
    daemon.stop()?;
    s.row(vec![
        n.to_string(),
        families.into(),
        v.interval.into(),
        v.delivery.label().into(),
        format!("{:.1} MiB", rss as f64 / 1024.0),
        format!("{:.1} MiB", pss as f64 / 1024.0),
        format!("{:.2} MiB", anon as f64 / 1024.0),
        format!("{:.3} %", 100.0 * cpu),
        spread(&shares),
        format!("{:.3} %", 100.0 * ping),
        format!("{:.2}", cpu / ping),
        format!("{:.3} %", 100.0 * alone),
        format!("{:.2}", cpu / alone),
    ]);
    Ok(())
}
