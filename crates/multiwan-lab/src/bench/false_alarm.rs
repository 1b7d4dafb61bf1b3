//! Section 9 of the benchmarks: how often the default check would fail over by mistake with
//! one probe target behind 10 % random loss. The loss is nft `numgen random` in the ISP (its
//! counters give the measured per-probe loss); the server captures the probes that got
//! through on a raw ICMP socket, and the gaps in their sequence numbers give the streaks of
//! lost probes exactly as the daemon saw them. A whole day cannot be run here, so the rate per
//! day is an extrapolation from the measured loss, labelled as one.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use super::Section;
use crate::daemon::LabDaemon;
use crate::scratch::private_dir;
use crate::topology::{router_addr, IspSpec, Topology, TopologySpec, SERVER_ADDR};

/// The loss, in percent of probes, applied beyond uplink 1.
const LOSS_PERCENT: u32 = 10;

/// The ISP-side rules: count every probe from uplink 1, drop `LOSS_PERCENT` of them at random.
fn loss_rules() -> String {
    let m = format!(
        "ip saddr {} ip daddr {SERVER_ADDR} icmp type echo-request",
        router_addr(1)
    );
    format!(
        "table ip loss {{\n chain forward_loss {{\n  type filter hook forward priority 0; policy accept;\n  {m} counter\n  {m} numgen random mod 100 < {LOSS_PERCENT} counter drop\n }}\n}}\n"
    )
}

/// (probes, dropped) from the two counters of [`loss_rules`].
fn loss_counters(topo: &Topology) -> Result<(u64, u64)> {
    let text = topo.isps[0]
        .ns
        .exec("nft", &["list", "table", "ip", "loss"])?;
    let packets: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    match packets[..] {
        [all, dropped] => Ok((all, dropped)),
        _ => anyhow::bail!("unexpected loss counters: {text}"),
    }
}

/// Sequence numbers of the echo requests from `src` that reach the server, in arrival order,
/// until `stop` is set.
fn capture(
    topo: &Topology,
    src: Ipv4Addr,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<Vec<u16>>>> {
    topo.server.spawn(move || -> Result<Vec<u16>> {
        use std::io::Read;
        let mut s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("raw ICMP socket")?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut seqs = Vec::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok(n) = s.read(&mut buf) else { continue };
            let pkt = &buf[..n];
            let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
            let (Some(from), Some(icmp)) = (pkt.get(12..16), pkt.get(ihl..ihl + 8)) else {
                continue;
            };
            if icmp[0] == 8 && from == src.octets() {
                seqs.push(u16::from_be_bytes([icmp[6], icmp[7]]));
            }
        }
        Ok(seqs)
    })
}

/// Streaks of consecutive lost probes from the received sequence numbers: the usual step
/// between two probes is the stride, a larger step is a streak of lost ones.
fn streaks(seqs: &[u16]) -> (u16, Vec<u64>) {
    let deltas: Vec<u16> = seqs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let mut freq = std::collections::BTreeMap::<u16, usize>::new();
    for d in &deltas {
        *freq.entry(*d).or_default() += 1;
    }
    let stride = freq
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| *d)
        .unwrap_or(1)
        .max(1);
    let lost = deltas
        .iter()
        .filter(|d| **d > stride && **d % stride == 0)
        .map(|d| u64::from(*d / stride - 1))
        .collect();
    (stride, lost)
}

/// Section 9: the default check against one target at 10 % random loss.
pub(super) fn false_alarms(bin: &Path, quick: bool) -> Result<Section> {
    let secs = if quick { 20 } else { 180 };
    let topo = Topology::build(&TopologySpec {
        isps: vec![IspSpec::default(); 2],
        lan_hosts: 1,
    })?;
    let text = topo.config("round-robin", &[1, 1]);
    let cfg = multiwan_core::load("false-alarm.toml", &text)
        .map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
    let check = &cfg.uplinks[0].check;
    let (interval, down_after) = (check.interval.as_secs_f64(), check.down_after);
    let dir = private_dir("bench")?;
    let path = dir.path().join("multiwan.toml");
    std::fs::write(&path, &text)?;
    let daemon = LabDaemon::start(
        &topo,
        bin,
        &path.display().to_string(),
        &dir.path().join("run"),
        &dir.path().join("daemon.log"),
        true,
        &[],
    )?;
    println!("   false alarms: one target at {LOSS_PERCENT} % loss for {secs} s");
    let stop = Arc::new(AtomicBool::new(false));
    let cap = capture(&topo, router_addr(1), stop.clone())?;
    let log_from = daemon.log_len();
    topo.isps[0].ns.nft(&loss_rules())?;
    std::thread::sleep(Duration::from_secs(secs));
    let (probes, dropped) = loss_counters(&topo)?;
    // The probes in flight when the counters were read reach the server within a few ms.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seqs = cap
        .join()
        .map_err(|_| anyhow::anyhow!("capture panicked"))??;
    let downs = daemon
        .log_since(log_from)
        .iter()
        .filter(|l| l.has("uplink down") && l.field("uplink") == Some("isp1"))
        .count();
    daemon.stop()?;
    let (_, lost) = streaks(&seqs);
    let p = dropped as f64 / probes.max(1) as f64;
    let rounds_per_day = 86_400.0 / interval;
    let per_day = p.powi(down_after as i32) * rounds_per_day;
    let longest = lost.iter().copied().max().unwrap_or(0);
    let mut hist = std::collections::BTreeMap::<u64, usize>::new();
    for l in &lost {
        *hist.entry(*l).or_default() += 1;
    }
    let gap_total: u64 = lost.iter().sum();
    let mut s = Section::new(
        "9. False alarms at 10 % loss",
        &format!(
            "The default check (one target, interval {:.0} ms, down after {down_after} bad rounds) \
             for {secs} s while the ISP drops {LOSS_PERCENT} % of uplink 1's probes at random (nft \
             `numgen random`). *Measured:* the per-probe loss (the ISP's nft counters), the streaks \
             of consecutive lost probes (gaps in the sequence numbers of the probes that reached the \
             server) and the daemon's \"uplink down\" lines. *Extrapolated:* false failovers per day \
             = p^down_after × rounds per day, from the measured p; a day is not run here.",
            interval * 1000.0
        ),
        &[
            "probes",
            "lost (measured)",
            "streaks of lost probes, by length (measured)",
            "longest streak (measured)",
            "false failovers in the run (measured)",
            "false failovers per day (extrapolated)",
        ],
    );
    s.row(vec![
        probes.to_string(),
        format!("{dropped} ({:.2} %)", 100.0 * p),
        hist.iter()
            .map(|(len, n)| format!("length {len}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        format!("{longest} (down after {down_after})"),
        downs.to_string(),
        format!("{per_day:.2}"),
    ]);
    s.note(format!(
        "cross-check: the sequence gaps account for {gap_total} lost probes, the ISP's counter for {dropped} (the capture starts and stops a few probes apart from the counters)"
    ));
    s.note(format!(
        "extrapolation: {:.4}^{down_after} × {:.0} rounds/day = {per_day:.2} false failovers per day with one target; with two independent targets a round is bad only when both are lost, p² per round",
        p, rounds_per_day
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaks_from_sequence_gaps() {
        // Stride 1: 3 is lost alone, 6 and 7 together.
        let (stride, lost) = streaks(&[1, 2, 4, 5, 8, 9]);
        assert_eq!((stride, lost), (1, vec![1, 2]));
        // Stride 2 (two uplinks sharing a counter), wrapping at 65536.
        let (stride, lost) = streaks(&[65530, 65532, 65534, 2, 4, 6]);
        assert_eq!((stride, lost), (2, vec![1]));
    }
}
