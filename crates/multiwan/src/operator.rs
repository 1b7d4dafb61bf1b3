//! The operator commands: `status`, `flows`, `explain`, `watch`, `uplink`. Each talks to the
//! daemon over the control socket (`explain --config` works offline) and prints either a
//! table for people or the versioned JSON of [`crate::control`] for scripts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod doctor;

use anyhow::{Context, Result};

pub use crate::args::{Conn, ExplainArgs};
use crate::control::{self, Ack, ExplainInfo, ExplainQuery, FlowInfo, Request, Status, WatchEvent};
use crate::settings::{load_config, Failure};

/// A usage error (the asker's mistake): exit 2, worded like the command line's.
fn usage(e: impl std::fmt::Display) -> Failure {
    Failure::Config(format!("error: {e}"))
}

/// One control request; an answer of kind usage (an unknown uplink, a query that describes
/// no connection) exits 2 like a bad command line, every other failure 1.
fn ask<T: serde::de::DeserializeOwned>(run_dir: &Path, request: Request) -> Result<T, Failure> {
    control::call(run_dir, request).map_err(|e| match e.downcast::<control::UsageError>() {
        Ok(u) => usage(u),
        Err(e) => Failure::Runtime(e),
    })
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    emit(text.as_bytes())
}

fn ago(unix: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(unix);
    human_secs(now.saturating_sub(unix) as f64)
}

fn human_secs(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// `multiwan status`
#[cold]
#[inline(never)]
pub fn status(c: &Conn) -> Result<()> {
    let s: Status = control::call(&c.run_dir, Request::Status)?;
    if c.json {
        return print_json(&s);
    }
    emit(render_status(&s).as_bytes())
}

/// The human form of `status`.
pub fn render_status(s: &Status) -> String {
    let mut o = String::new();
    o += &format!(
        "multiwan: pid {}, up {}, balance {}, {} kernel update{}, config {}\n\n",
        s.pid,
        ago(s.started),
        s.method,
        s.reconciles,
        if s.reconciles == 1 { "" } else { "s" },
        s.config
    );
    if let Some(k) = &s.kernel_error {
        o += &format!(
            "KERNEL UPDATE FAILING for {} ({} {} in a row, retrying {} after the last): {}\nThe kernel keeps the last update it took; health changes since then are not in it (see the daemon's log, `multiwan doctor`)\n\n",
            ago(k.since),
            k.failures,
            if k.failures == 1 { "failure" } else { "failures" },
            human_ms(k.retry_in_ms),
            k.error
        );
    }
    if s.fail_open {
        o += "FAIL-OPEN: every uplink fails its probes (a dead target, or every ISP down at once); the uplinks in use stay in use ([balance] fail_open)\n\n";
    }
    o += &format!(
        "{:<12} {:<9} {:>7} {:>4} {:>6} {:>6} {:>15} {:>6} {:>6} {:>10} {:>10}  {}\n",
        "UPLINK",
        "STATE",
        "SINCE",
        "TIER",
        "WEIGHT",
        "SHARE",
        "RTT last/avg ms",
        "LOSS",
        "CONNS",
        "IN",
        "OUT",
        "ADDRESS"
    );
    for u in &s.uplinks {
        o +=
            &format!(
            "{:<12} {:<9} {:>7} {:>4} {:>6} {:>5.0}% {:>15} {:>5.1}% {:>6} {:>10} {:>10}  {}{}\n",
            u.name,
            if u.disabled { "disabled" } else { u.state.as_str() },
            ago(u.since),
            u.tier,
            u.weight,
            100.0 * u.share,
            format!("{}/{}", opt_ms(u.rtt_last_ms), opt_ms(u.rtt_avg_ms)),
            u.loss_percent,
            u.connections,
            bytes(u.bytes_in),
            bytes(u.bytes_out),
            u.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            u.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        );
        if let Some(d) = &u.detail {
            o += &format!("{:<12} why: {d}\n", "");
        }
        o += &render_targets(&u.targets);
        if let Some(v6) = &u.ipv6 {
            o += &render_ipv6(v6);
        }
    }
    o + &render_rules(s)
}

/// The IPv6 side of an uplink in `status`: its own state line and probes.
fn render_ipv6(v6: &crate::control::FamilyStatus) -> String {
    let mut o = format!(
        "{:<12} ipv6: {} since {}, share {:.0}%, rtt {}/{} ms, loss {:.1}%, {}{}\n",
        "",
        v6.state,
        ago(v6.since),
        100.0 * v6.share,
        opt_ms(v6.rtt_last_ms),
        opt_ms(v6.rtt_avg_ms),
        v6.loss_percent,
        if v6.addresses.is_empty() {
            "no global address".to_string()
        } else {
            v6.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        v6.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
    );
    if let Some(d) = &v6.detail {
        o += &format!("{:<12} why (ipv6): {d}\n", "");
    }
    o + &render_targets(&v6.targets)
}

fn render_targets(targets: &[crate::control::TargetStatus]) -> String {
    let mut o = String::new();
    for t in targets {
        o += &format!(
            "{:<12} probe {}: loss {:.1}%, rtt last {} avg {} ms{}\n",
            "",
            t.target,
            t.loss_percent,
            opt_ms(t.rtt_last_ms),
            opt_ms(t.rtt_avg_ms),
            if t.suspect {
                " — SUSPECT: fails on every uplink while they work; not counted"
            } else {
                ""
            }
        );
    }
    o
}

fn render_rules(s: &Status) -> String {
    let mut o = String::new();
    if !s.rules.is_empty() {
        o += &format!(
            "\n{:<16} {:<9} {:>8}  {}\n",
            "RULE", "MODE", "HITS", "NEW CONNECTIONS GO TO"
        );
        for r in &s.rules {
            o += &format!("{:<16} {:<9} {:>8}  {}\n", r.name, r.mode, r.hits, r.now);
        }
    }
    o
}

/// `multiwan flows`
#[cold]
#[inline(never)]
pub fn flows(c: &Conn, uplink: Option<String>) -> Result<()> {
    let f: Vec<FlowInfo> = control::call(&c.run_dir, Request::Flows { uplink })?;
    if c.json {
        return print_json(&f);
    }
    let mut o = format!(
        "{:<10} {:<5} {:<21} {:<21} {:<15} {:>10} {:>10} {:>8}\n",
        "UPLINK", "PROTO", "SOURCE", "DESTINATION", "NAT SOURCE", "OUT", "IN", "AGE"
    );
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for x in &f {
        let up = x.uplink.clone().unwrap_or_else(|| "-".into());
        *per.entry(up.clone()).or_default() += 1;
        o += &format!(
            "{:<10} {:<5} {:<21} {:<21} {:<15} {:>10} {:>10} {:>8}\n",
            up,
            x.proto,
            endpoint(&x.src.to_string(), &x.sport.to_string()),
            endpoint(&x.dst.to_string(), &x.dport.to_string()),
            x.nat_src,
            bytes(x.bytes_out),
            bytes(x.bytes_in),
            x.age_s.map(human_secs).unwrap_or_else(|| "-".into())
        );
    }
    let summary: Vec<String> = per.iter().map(|(u, n)| format!("{u}: {n}")).collect();
    o += &format!("{} connections ({})\n", f.len(), summary.join(", "));
    emit(o.as_bytes())
}

/// `address:port`, with an IPv6 address in brackets (`[2001:db8::1]:443`) so the port
/// cannot be read as part of it.
fn endpoint(addr: &str, port: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// `multiwan explain`
#[cold]
#[inline(never)]
pub fn explain(a: &ExplainArgs) -> Result<(), Failure> {
    let q = ExplainQuery {
        src: a.src,
        dst: a.dst,
        proto: a.proto.clone(),
        sport: a.sport,
        dport: a.dport,
    };
    // A query that describes no connection is refused here, with or without a daemon.
    control::query_of(&q).map_err(usage)?;
    let info: ExplainInfo = match &a.config {
        Some(path) => {
            let cfg = load_config(path)?;
            let health = control::offline_health(&cfg, &q);
            control::explain_query(&cfg, &health, &multiwan_core::Facts::default(), None, &q)
                .map_err(usage)?
        }
        None => ask(&a.conn.run_dir, Request::Explain(q.clone()))?,
    };
    if a.conn.json {
        print_json(&info)?;
    } else {
        emit(render_explain(&q, &info, a.config.is_some()).as_bytes())?;
    }
    Ok(())
}

/// The human form of `explain`.
pub fn render_explain(q: &ExplainQuery, e: &ExplainInfo, offline: bool) -> String {
    let port = |p: Option<u16>| p.map(|p| p.to_string()).unwrap_or_else(|| "*".into());
    let mut o = format!(
        "new {} connection {} -> {}{}\n",
        q.proto.as_deref().unwrap_or("ip"),
        endpoint(&q.src.to_string(), &port(q.sport)),
        endpoint(
            &q.dst.map(|d| d.to_string()).unwrap_or_else(|| "*".into()),
            &port(q.dport)
        ),
        if offline {
            " (offline: every uplink assumed up)"
        } else {
            ""
        }
    );
    if let Some(nb) = &e.not_balanced {
        o += &format!("not balanced: {}\n", nb.reason);
        o += if nb.kind == "local" {
            "goes to:    the router itself (multiwan does not balance it)\n"
        } else {
            "goes to:    main's route, unmarked (multiwan does not balance it)\n"
        };
        return o;
    }
    o += &match &e.rule {
        Some(r) => format!("matches rule {r} (mode {})\n", e.mode),
        None => format!("matches no rule: the default policy ({})\n", e.method),
    };
    let kept = if e.fail_open {
        ", kept by fail-open: every uplink fails its probes"
    } else {
        ""
    };
    let cands: Vec<String> = e
        .candidates
        .iter()
        .map(|c| format!("{} (weight {}{kept})", c.uplink, c.weight))
        .collect();
    o += &format!(
        "candidates: {}\n",
        if cands.is_empty() {
            "none".into()
        } else {
            cands.join(", ")
        }
    );
    for x in &e.excluded {
        o += &format!("excluded:   {}: {}\n", x.uplink, x.reason);
    }
    o += &match e.verdict.as_str() {
        "uplink" => format!("goes to:    {}\n", e.uplink.as_deref().unwrap_or("?")),
        "shares" => format!(
            "goes to:    one of {} ({} decides per connection)\n",
            e.shares
                .iter()
                .map(|s| format!("{} {:.0}%", s.uplink, 100.0 * s.weight))
                .collect::<Vec<_>>()
                .join(", "),
            e.method
        ),
        "main" => "goes to:    the main routing table (not balanced)\n".into(),
        _ => "goes to:    nowhere: no usable uplink, the connection is refused\n".into(),
    };
    if e.facts_unknown {
        let dst = q.dst.map(|d| d.to_string());
        o += &format!(
            "note:       offline: not known whether {} is on a connected subnet or the router's, or {} the router's own (those are not balanced)\n",
            dst.as_deref().unwrap_or("the destination"),
            q.src
        );
    }
    o
}

/// `multiwan watch`
#[cold]
#[inline(never)]
pub fn watch(c: &Conn) -> Result<()> {
    let mut s = control::connect(&c.run_dir)?;
    control::send_request(&mut s, Request::Watch)?;
    for line in BufReader::new(s).lines() {
        let line = line.context("reading from the daemon")?;
        let ev: WatchEvent = control::parse_response(&line)?;
        let mut text = if c.json {
            serde_json::to_string(&ev)?
        } else {
            render_watch(&ev)
        };
        text.push('\n');
        emit(text.as_bytes())?;
    }
    Ok(())
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

/// The human form of one `watch` event.
pub fn render_watch(ev: &WatchEvent) -> String {
    match ev {
        WatchEvent::Transition {
            time_ms,
            uplink,
            family,
            from,
            to,
            detail,
            ..
        } => format!(
            "{} UTC  {uplink} {family}: {from} -> {to}{}",
            clock(*time_ms),
            detail
                .as_ref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        ),
        WatchEvent::Probes {
            time_ms,
            uplink,
            family,
            state,
            rtt_last_ms,
            rtt_avg_ms,
            loss_percent,
        } => format!(
            "{} UTC  {uplink} {family}: {state}, rtt {}/{} ms, loss {loss_percent:.1}%",
            clock(*time_ms),
            opt_ms(*rtt_last_ms),
            opt_ms(*rtt_avg_ms)
        ),
    }
}

/// `multiwan uplink NAME enable|disable`; an unknown name exits 2 with the known ones.
#[cold]
#[inline(never)]
pub fn uplink(c: &Conn, name: &str, enable: bool) -> Result<(), Failure> {
    let ack: Ack = ask(
        &c.run_dir,
        Request::Uplink {
            name: name.to_string(),
            enable,
        },
    )?;
    if c.json {
        return Ok(print_json(&ack)?);
    }
    Ok(emit(format!("{}: {}\n", ack.uplink, ack.state).as_bytes())?)
}

/// Writes to stdout; a reader that went away (`multiwan plan | head`) ends the program
/// quietly instead of with a broken-pipe error.
pub fn emit(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

/// Where `completions` and `manpage` write.
#[cold]
#[inline(never)]
pub fn write_out(path: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match path {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display())),
        None => emit(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::{endpoint, render_status};
    use crate::control::{KernelError, Status};

    #[test]
    fn status_says_when_the_kernel_refuses_updates() {
        let mut s = Status {
            pid: 7,
            started: 0,
            config: "/etc/multiwan/multiwan.toml".into(),
            method: "round-robin".into(),
            reconciles: 3,
            fail_open: false,
            kernel_failures: 0,
            kernel_error: None,
            uplinks: vec![],
            rules: vec![],
        };
        assert!(!render_status(&s).contains("KERNEL"));
        s.kernel_failures = 4;
        s.kernel_error = Some(KernelError {
            error: "nft: Operation not permitted".into(),
            since: 0,
            failures: 4,
            retry_in_ms: 1600,
        });
        let text = render_status(&s);
        assert!(
            text.contains("KERNEL UPDATE FAILING for ")
                && text.contains(
                    "(4 failures in a row, retrying 1.6 s after the last): nft: Operation not permitted\n"
                ),
            "{text}"
        );
        // The JSON form carries it too, and an older daemon's reply (without it) still reads.
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["kernel_error"]["failures"], 4);
        let mut old = json.clone();
        let o = old.as_object_mut().expect("object");
        o.remove("kernel_error");
        o.remove("kernel_failures");
        let back: Status = serde_json::from_value(old).expect("older reply");
        assert_eq!((back.kernel_error, back.kernel_failures), (None, 0));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        assert_eq!(endpoint("192.0.2.1", "80"), "192.0.2.1:80");
        assert_eq!(endpoint("2001:db8::1", "443"), "[2001:db8::1]:443");
        assert_eq!(endpoint("2001:db8::1", "*"), "[2001:db8::1]:*");
        assert_eq!(endpoint("*", "*"), "*:*");
    }
}
