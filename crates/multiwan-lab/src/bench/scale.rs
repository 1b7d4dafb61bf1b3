//! Sections 8 and 8b of the benchmarks: how the plan scales with uplinks and rules (the pure
//! core, in-process, then loaded with `nft -f -`), and how long the daemon takes to delete a
//! failed uplink's connections from a large conntrack table.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{median, Section};
use crate::daemon::LabDaemon;
use crate::scratch::private_dir;
use crate::topology::{IspSpec, Topology, TopologySpec};

fn scale_config(uplinks: usize, rules: usize) -> String {
    let mut t = String::from("[lan]\ninterfaces = [\"lan0\"]\n");
    for i in 0..uplinks {
        t += &format!(
            "[[uplink]]\nname = \"u{i}\"\ninterface = \"wan{i}\"\ngateway = \"10.{}.{}.1\"\nweight = {}\n",
            i / 200,
            i % 200,
            1 + i % 3
        );
    }
    for r in 0..rules {
        t += &format!(
            "[[rule]]\nname = \"r{r}\"\nsrc = [\"192.168.{}.{}\"]\nproto = \"tcp\"\ndport = [\"{}\"]\nuplinks = [\"u{}\"]\n",
            r / 250,
            r % 250 + 1,
            1000 + r,
            r % uplinks
        );
    }
    t
}

/// Section 8a: plan time and ruleset size.
pub(super) fn plan_scale(quick: bool) -> Result<Section> {
    let reps = if quick { 5 } else { 30 };
    let mut s = Section::new(
        "8. Scale of the plan",
        &format!(
            "Config → validated model → full plan (nft ruleset, rules, routes), in-process, median \
             of {reps} runs; the size of the ruleset; and the time `nft -f -` (the ruleset on stdin) \
             takes to load it into a fresh namespace (one transaction)."
        ),
        &["uplinks", "rules", "check + plan", "ruleset", "nft load"],
    );
    for (u, r) in [(2, 0), (16, 0), (64, 0), (2, 1000), (64, 1000)] {
        let text = scale_config(u, r);
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..reps {
            let t = Instant::now();
            let cfg = multiwan_core::load("scale.toml", &text)
                .map_err(|e| anyhow::anyhow!("scale config: {e}"))?;
            let ids = multiwan_core::plan::assign_ids(&cfg, &BTreeMap::new())?;
            let all = cfg.uplinks.iter().map(|u| u.name.clone()).collect();
            let p = multiwan_core::plan(&cfg, &ids, &all, &multiwan_core::Facts::default());
            times.push(t.elapsed().as_secs_f64());
            last = Some(p);
        }
        let p = last.context("no plan")?;
        let ns =
            crate::netns::Netns::create(&crate::netns::unique_stem(crate::topology::NS_PREFIX))?;
        let t = Instant::now();
        ns.nft(&p.nft_transaction())?;
        let load = t.elapsed().as_secs_f64();
        drop(ns);
        s.row(vec![
            u.to_string(),
            r.to_string(),
            format!("{:.2} ms", 1000.0 * median(&times)),
            format!(
                "{} lines, {:.0} KiB",
                p.nft.lines().count(),
                p.nft.len() as f64 / 1024.0
            ),
            format!("{:.0} ms", 1000.0 * load),
        ]);
    }
    Ok(s)
}

/// Section 8b: `n` UDP flows balanced over two uplinks by the daemon, then uplink 1's upstream
/// is cut; the daemon (with `on_uplink_down = "flush"`) deletes that uplink's entries. The time
/// is the daemon's own `took_ms` around its delete; the counts come from `multiwan flows --json
/// --uplink NAME` before the cut and after the flush.
pub(super) fn flush_scale(bin: &Path, quick: bool) -> Result<Section> {
    let n: u32 = if quick { 10_000 } else { 100_000 };
    let topo = Topology::build(&TopologySpec {
        isps: vec![IspSpec::default(); 2],
        lan_hosts: 1,
    })?;
    let dir = private_dir("bench")?;
    let cfg = dir.path().join("multiwan.toml");
    let run = dir.path().join("run");
    // The default, said explicitly because it is what is measured.
    let text = topo.config("round-robin", &[1, 1]) + "on_uplink_down = \"flush\"\n";
    std::fs::write(&cfg, text)?;
    let daemon = LabDaemon::start(
        &topo,
        bin,
        &cfg.display().to_string(),
        &run,
        &dir.path().join("daemon.log"),
        true,
        &[],
    )?;
    fill_conntrack(&topo, n)?;
    let run_s = run.display().to_string();
    let count = |uplink: &str| -> Result<usize> {
        let out = topo.multiwan(
            bin,
            &["flows", "--json", "--uplink", uplink, "--run-dir", &run_s],
        )?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing flows --json")?;
        v.as_array()
            .map(|a| a.len())
            .context("flows --json is not an array")
    };
    let (before1, before2) = (count("isp1")?, count("isp2")?);
    let log_from = daemon.log_len();
    topo.cut_upstream(0)?;
    let start = Instant::now();
    let took = loop {
        let line = daemon.log_since(log_from).into_iter().find(|l| {
            l.has("flushed the uplink's connections") && l.field("uplink") == Some("isp1")
        });
        if let Some(l) = line {
            break l.number("took_ms");
        }
        if start.elapsed() > Duration::from_secs(20) {
            anyhow::bail!(
                "the daemon did not flush isp1 within 20 s:\n{}",
                daemon.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (after1, after2) = (count("isp1")?, count("isp2")?);
    daemon.stop()?;
    let mut s = Section::new(
        "8b. Flushing one uplink's connections",
        &format!(
            "{n} UDP flows balanced over two uplinks by the daemon; then uplink 1's upstream is cut \
             and the daemon, with `on_uplink_down = \"flush\"`, deletes the entries with uplink 1's \
             mark and nothing else. *Took* is the daemon's own `took_ms` around its delete; the \
             counts are `multiwan flows --json --uplink NAME` before the cut and after the flush."
        ),
        &[
            "entries (uplink 1 / uplink 2)",
            "delete by mark took",
            "left (uplink 1 / uplink 2)",
        ],
    );
    s.row(vec![
        format!("{before1} / {before2}"),
        took.map(|t| format!("{t:.1} ms"))
            .unwrap_or_else(|| "not logged".into()),
        format!("{after1} / {after2}"),
    ]);
    s.note("quoted, not measured here: mwan3, VyOS and pfSense flush the whole conntrack table on a failover (source: the project's product brief)");
    Ok(s)
}

/// `n` UDP flows from the LAN host (one datagram each, to distinct ports), paced so that no
/// packet — and so no conntrack entry — is lost in the veth queues.
fn fill_conntrack(topo: &Topology, n: u32) -> Result<()> {
    topo.hosts[0]
        .ns
        .spawn(move || -> Result<()> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for i in 0..n {
                let port = 10_000 + (i % 50_000) as u16;
                let dst = Ipv4Addr::new(172, 16, 0, 100 + (i / 50_000) as u8);
                let _ = s.send_to(b"x", SocketAddrV4::new(dst, port));
                if i % 2000 == 1999 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(())
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}
