//! `multiwan-lab --layout PATH`: writes the router's function order (`link.order`, read by
//! its `build.rs` as lld's `--symbol-ordering-file`) from what a running daemon calls.
//!
//! The release router's link map (`multiwan.map`, written beside the binary) names every
//! function section with its address. One uprobe per function (tracefs, group
//! `mwlayout<PID>`, removed when done, panic or not) counts its calls while the daemon runs
//! dual-stack on 2 uplinks in the lab's network: first start-up, then 65 s idle (more than
//! two of its 30 s kernel verifications), then a reload, a failover and a recovery. The file
//! lists the functions called while idle (tier 1), then those called only at start-up or on
//! events (tier 2); everything else (one-shot commands, error paths, panics) follows in the
//! default order. A daemon's touched pages stay resident for its whole life, so packing its
//! code this way is what lowers its idle RSS.
//!
//! The names are the build's mangled symbols, whose hashes follow the toolchain and the
//! dependencies' versions and features: after such a change the file has to be written again
//! (names it holds that the build lacks are skipped by the linker, so a stale file costs
//! memory, never correctness; the footprint benchmark reports how many still resolve).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::daemon::LabDaemon;
use crate::scratch::private_dir;
use crate::topology::{Family, IspSpec, Topology, TopologySpec};

/// One function section of the link map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its link-time address.
    pub addr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The symbol the ordering file names it by.
    pub symbol: String,
}

/// Where the text of a map line starts: after the VMA, LMA, size and alignment columns.
const TEXT_COLUMN: usize = 16 + 1 + 16 + 1 + 8 + 1 + 5 + 1;

/// The function sections of an lld link map's `.text` output section. An input section
/// `obj:(.text.NAME)` is the function `NAME`; a plain `obj:(.text)` (assembly: musl's memcpy,
/// memset, clone) is named by its first symbol.
pub fn parse_map(text: &str) -> Vec<Function> {
    let mut out = Vec::new();
    let mut in_text = false;
    // A plain `.text` input section waiting for its first symbol.
    let mut pending: Option<(u64, u64)> = None;
    for line in text.lines().skip(1) {
        let (Some(cols), Some(rest)) = (line.get(..TEXT_COLUMN), line.get(TEXT_COLUMN..)) else {
            continue;
        };
        let mut f = cols.split_whitespace();
        let (Some(addr), _, Some(size)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(addr), Ok(size)) = (u64::from_str_radix(addr, 16), u64::from_str_radix(size, 16))
        else {
            continue;
        };
        let indent = rest.len() - rest.trim_start().len();
        let name = rest.trim();
        match indent {
            0 => {
                in_text = name == ".text";
                pending = None;
            }
            8 if in_text => {
                pending = None;
                let Some(section) = name.strip_suffix(')').and_then(|n| n.rsplit_once(":(")) else {
                    continue;
                };
                match section.1 {
                    ".text" if size > 0 => pending = Some((addr, size)),
                    s => {
                        let Some(sym) = s.strip_prefix(".text.") else {
                            continue;
                        };
                        let sym = sym.strip_prefix("unlikely.").unwrap_or(sym);
                        if size > 0 && !sym.is_empty() {
                            out.push(Function {
                                addr,
                                size,
                                symbol: sym.to_string(),
                            });
                        }
                    }
                }
            }
            16 if in_text => {
                if let Some((addr, size)) = pending.take() {
                    out.push(Function {
                        addr,
                        size,
                        symbol: name.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Link-time address minus file offset of the executable `PT_LOAD` segment of a 64-bit
/// little-endian ELF file: what turns a map address into the file offset a uprobe takes.
pub fn text_delta(elf: &[u8]) -> Result<u64> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("truncated ELF header");
    };
    for i in 0..usize::from(phnum) {
        let ph = usize::try_from(phoff)? + i * usize::from(phentsize);
        let (Some(kind), Some(flags), Some(offset), Some(vaddr)) =
            (u32_at(ph), u32_at(ph + 4), u64_at(ph + 8), u64_at(ph + 16))
        else {
            bail!("truncated program header {i}");
        };
        // PT_LOAD with PF_X.
        if kind == 1 && flags & 1 != 0 {
            return Ok(vaddr - offset);
        }
    }
    bail!("no executable PT_LOAD segment")
}

/// The order file: a header, tier 1's symbols, then tier 2's, each tier in address order.
pub fn order_file(header: &str, tiers: &[(&str, &[&Function])]) -> String {
    let mut s = String::new();
    for l in header.lines() {
        s += &format!("# {l}\n");
    }
    for (what, fns) in tiers {
        let bytes: u64 = fns.iter().map(|f| f.size).sum();
        s += &format!("# {what}: {} functions, {bytes} bytes\n", fns.len());
        let mut fns = fns.to_vec();
        fns.sort_by_key(|f| f.addr);
        for f in fns {
            s += &f.symbol;
            s.push('\n');
        }
    }
    s
}

/// The order file in the source tree, read by the router's `build.rs`.
pub fn source_order_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../multiwan/link.order")
}

/// The comment that opens the order file's second block (after the functions the idle
/// daemon calls).
const STARTUP_HEADER: &str = "# called at start-up or on events only";

/// How many of the order file's names the binary's map (beside it) has, in all and among
/// those the idle daemon calls (the file's first block, which decides its resident memory):
/// `((found, named), (idle found, idle named))`, or None without a map or an order file.
pub fn resolved(bin: &Path) -> Option<((usize, usize), (usize, usize))> {
    let map = std::fs::read_to_string(bin.with_file_name("multiwan.map")).ok()?;
    let order = std::fs::read_to_string(source_order_file()).ok()?;
    let have: BTreeSet<String> = parse_map(&map).into_iter().map(|f| f.symbol).collect();
    let count = |text: &str| {
        let names = order_symbols(text);
        (
            names.iter().filter(|n| have.contains(**n)).count(),
            names.len(),
        )
    };
    let idle = order.split(STARTUP_HEADER).next().unwrap_or_default();
    Some((count(&order), count(idle)))
}

/// The symbols an order file names (comments and blank lines left out).
pub fn order_symbols(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The uprobes on every function, removed on drop.
struct Probes {
    tracefs: PathBuf,
    group: String,
    count: usize,
}

impl Probes {
    fn place(bin: &Path, fns: &[Function], delta: u64) -> Result<Self> {
        let tracefs = tracefs()?;
        let group = format!("mwlayout{}", std::process::id());
        let mut events = std::fs::OpenOptions::new()
            .append(true)
            .open(tracefs.join("uprobe_events"))
            .context("opening uprobe_events (a kernel with CONFIG_UPROBE_EVENTS)")?;
        let mut probes = Self {
            tracefs,
            group,
            count: 0,
        };
        let started = Instant::now();
        for (i, f) in fns.iter().enumerate() {
            let def = format!(
                "p:{}/mwl{i} {}:{:#x}\n",
                probes.group,
                bin.display(),
                f.addr - delta
            );
            events
                .write_all(def.as_bytes())
                .with_context(|| format!("placing a uprobe on {} ({def:?})", f.symbol))?;
            probes.count += 1;
            if i % 1000 == 999 {
                println!(
                    "  {} of {} uprobes placed ({:.0?})",
                    i + 1,
                    fns.len(),
                    started.elapsed()
                );
            }
        }
        println!("enabling them (minutes: the kernel registers each one on the file)");
        std::fs::write(
            probes
                .tracefs
                .join("events")
                .join(&probes.group)
                .join("enable"),
            "1",
        )
        .context("enabling the uprobes")?;
        Ok(probes)
    }

    /// Calls so far of each probed function, by index.
    fn hits(&self) -> Result<Vec<u64>> {
        let text = std::fs::read_to_string(self.tracefs.join("uprobe_profile"))?;
        let mut hits = vec![0; self.count];
        let prefix = format!("{}/mwl", self.group);
        for line in text.lines() {
            // "  FILE  EVENT  HITS", the event with or without its group.
            let f: Vec<&str> = line.split_whitespace().collect();
            let [.., event, n] = f.as_slice() else {
                continue;
            };
            let index = event
                .strip_prefix(&prefix)
                .or_else(|| event.strip_prefix("mwl"));
            if let (Some(Ok(i)), Ok(n)) = (index.map(str::parse::<usize>), n.parse::<u64>()) {
                if let Some(h) = hits.get_mut(i) {
                    *h = n;
                }
            }
        }
        Ok(hits)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.tracefs.join("events").join(&self.group).join("enable"),
            "0",
        );
        if let Ok(mut events) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.tracefs.join("uprobe_events"))
        {
            for i in 0..self.count {
                let _ = events.write_all(format!("-:{}/mwl{i}\n", self.group).as_bytes());
            }
        }
    }
}

/// The tracefs mount, mounting it at its usual place if it is not there yet.
fn tracefs() -> Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("uprobe_events").exists() {
            return Ok(PathBuf::from(p));
        }
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()
        .context("running mount")?;
    if !status.success() || !Path::new("/sys/kernel/tracing/uprobe_events").exists() {
        bail!("no tracefs with uprobe_events (mount -t tracefs nodev /sys/kernel/tracing)");
    }
    Ok(PathBuf::from("/sys/kernel/tracing"))
}

/// Waits until every uplink is up in both families.
fn wait_all(daemon: &LabDaemon, want: &str, names: &[&str], within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let ok = names.iter().all(|n| {
            [Family::V4, Family::V6]
                .iter()
                .all(|f| daemon.uplink_state_of(n, *f).as_deref() == Some(want))
        });
        if ok {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!(
                "uplinks {names:?} not all {want} within {within:?}: {:?}",
                daemon.states()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rustc that built the binary, from its `.comment` section's text.
fn rustc_of(elf: &[u8]) -> String {
    let needle = b"rustc version ";
    elf.windows(needle.len())
        .position(|w| w == needle)
        .map(|i| {
            let end = elf[i..].iter().position(|b| *b == 0).unwrap_or(0);
            String::from_utf8_lossy(&elf[i..i + end]).into_owned()
        })
        .unwrap_or_else(|| "rustc version unknown".into())
}

/// Profiles `bin` (its map beside it) and writes the order to `out`.
pub fn run(bin: &Path, out: &Path) -> Result<()> {
    let bin = bin.canonicalize().context("locating the router binary")?;
    let map_path = bin.with_file_name("multiwan.map");
    let map = std::fs::read_to_string(&map_path).with_context(|| {
        format!(
            "reading {} (written by a release build linked with lld)",
            map_path.display()
        )
    })?;
    let fns = parse_map(&map);
    if fns.is_empty() {
        bail!("{} names no function sections", map_path.display());
    }
    let elf = std::fs::read(&bin)?;
    let delta = text_delta(&elf)?;
    println!("placing {} uprobes on {}", fns.len(), bin.display());
    let probes = Probes::place(&bin, &fns, delta)?;
    let topo = Topology::build(&TopologySpec {
        isps: vec![IspSpec::default(); 2],
        lan_hosts: 1,
    })?;
    let dir = private_dir("layout")?;
    let cfg = dir.path().join("multiwan.toml");
    std::fs::write(&cfg, topo.config_with("round-robin", &[1, 1], true))?;
    let daemon = LabDaemon::start(
        &topo,
        &bin,
        &cfg.display().to_string(),
        &dir.path().join("run"),
        &dir.path().join("daemon.log"),
        true,
        &[("RUST_BACKTRACE", "0"), ("RUST_LIB_BACKTRACE", "0")],
    )?;
    let names = ["isp1", "isp2"];
    wait_all(&daemon, "up", &names, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(3));
    let started = probes.hits()?;
    println!("started; idle for 65 s");
    std::thread::sleep(Duration::from_secs(65));
    let idle = probes.hits()?;
    println!("reload, failover, recovery");
    daemon.signal(nix::sys::signal::Signal::SIGHUP)?;
    std::thread::sleep(Duration::from_secs(3));
    topo.cut_upstream(0)?;
    wait_all(&daemon, "down", &names[..1], Duration::from_secs(30))?;
    topo.restore_upstream(0)?;
    wait_all(&daemon, "up", &names, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(2));
    let events = probes.hits()?;
    daemon.stop()?;
    drop(probes);
    let mut tier1 = Vec::new();
    let mut tier2 = Vec::new();
    for (i, f) in fns.iter().enumerate() {
        if idle[i] > started[i] {
            tier1.push(f);
        } else if events[i] > 0 {
            tier2.push(f);
        }
    }
    let header = format!(
        "The router's function order (lld --symbol-ordering-file), written by `multiwan-lab --layout`\n\
         from uprobes on a running daemon (2 uplinks, dual stack: start-up, 65 s idle, reload,\n\
         failover, recovery). Built by {}; write it again after a toolchain or dependency change.",
        rustc_of(&elf)
    );
    let text = order_file(
        &header,
        &[
            ("called while idle", &tier1[..]),
            (STARTUP_HEADER.trim_start_matches("# "), &tier2[..]),
        ],
    );
    let named: BTreeSet<&str> = fns.iter().map(|f| f.symbol.as_str()).collect();
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    let bytes = |v: &[&Function]| v.iter().map(|f| f.size).sum::<u64>();
    println!(
        "wrote {}: {} functions called while idle ({} bytes), {} more at start-up or on events ({} bytes), of {} ({} distinct names); rebuild the router to use it",
        out.display(),
        tier1.len(),
        bytes(&tier1),
        tier2.len(),
        bytes(&tier2),
        fns.len(),
        named.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(addr: u64, size: u64, indent: usize, text: &str) -> String {
        format!(
            "{addr:>16x} {addr:>16x} {size:>8x} {:>5} {}{text}",
            16,
            " ".repeat(indent)
        )
    }

    #[test]
    fn map_sections_become_functions() {
        let map = [
            "             VMA              LMA     Size Align Out     In      Symbol".to_string(),
            line(0x100, 0x10, 0, ".rodata"),
            line(0x100, 0x10, 8, "a.o:(.text.not_text)"),
            line(0x200, 0x300, 0, ".text"),
            line(0x200, 0x16, 8, "crt.o:(.text)"),
            line(0x200, 0, 16, "_start"),
            line(
                0x216,
                0x20,
                8,
                "x.o:(.text._ZN3foo3bar17h0123456789abcdefE)",
            ),
            line(0x216, 0x20, 16, "foo::bar::h0123456789abcdef"),
            line(0x236, 0x0, 8, "x.o:(.text.empty)"),
            line(0x236, 0x8, 8, "libc.a(x.lo):(.text.unlikely.cold_fn)"),
            line(0x300, 0x10, 0, ".data"),
            line(0x300, 0x10, 8, "d.o:(.text.after)"),
        ]
        .join("\n");
        let f = parse_map(&map);
        let names: Vec<_> = f
            .iter()
            .map(|f| (f.addr, f.size, f.symbol.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (0x200, 0x16, "_start"),
                (0x216, 0x20, "_ZN3foo3bar17h0123456789abcdefE"),
                (0x236, 0x8, "cold_fn"),
            ]
        );
    }

    #[test]
    fn delta_of_the_executable_segment() {
        let mut elf = vec![0u8; 0x40 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        // A read-only PT_LOAD, then the executable one at offset 0x1000, vaddr 0x2000.
        let ph = |elf: &mut Vec<u8>, at: usize, flags: u32, off: u64, vaddr: u64| {
            elf[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            elf[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            elf[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            elf[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
        };
        ph(&mut elf, 0x40, 4, 0, 0);
        ph(&mut elf, 0x40 + 56, 5, 0x1000, 0x2000);
        assert_eq!(text_delta(&elf).unwrap(), 0x1000);
        ph(&mut elf, 0x40 + 56, 4, 0x1000, 0x2000);
        assert!(text_delta(&elf).is_err());
        assert!(text_delta(b"not elf").is_err());
        assert!(text_delta(&elf[..0x50]).is_err());
    }

    #[test]
    fn order_file_round_trips() {
        let f = |addr, symbol: &str| Function {
            addr,
            size: 4,
            symbol: symbol.into(),
        };
        let (a, b, c) = (f(0x30, "a"), f(0x10, "b"), f(0x20, "c"));
        let text = order_file(
            "two\nlines",
            &[("idle", &[&a, &b][..]), ("events", &[&c][..])],
        );
        assert!(text.starts_with("# two\n# lines\n# idle: 2 functions, 8 bytes\n"));
        assert_eq!(order_symbols(&text), ["b", "a", "c"]);
    }
}
