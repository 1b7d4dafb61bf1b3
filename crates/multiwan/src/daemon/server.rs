//! The daemon's two listeners: the control socket (status, flows, explain, watch, uplink
//! enable/disable) and the optional Prometheus endpoint. Each connection gets a thread; the
//! event loop only hands out a [`Snapshot`] of its state, and the slow reads (conntrack dump,
//! nft counters, interface counters) happen here, off the loop.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use anyhow::{Context, Result};
use multiwan_core::explain::{explain, Query, Verdict};
use multiwan_core::health::{State, WindowStats};
use multiwan_core::model::{Config, Mode, Proto};
use multiwan_core::plan::{Decision, PolicyPlan};
use multiwan_core::Facts;

use super::Event;
use crate::control::{
    self, Candidate, Envelope, Excluded, ExplainInfo, FlowInfo, Request, Response, RuleStatus,
    Status, TargetStatus, UplinkStatus, WatchEvent,
};
use crate::kernel::conntrack::{self, Flow};
use crate::kernel::netlink::Rtnl;
use crate::kernel::nft::Nft;

/// Upper bounds (seconds) of the probe RTT histogram buckets.
pub const RTT_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Per-uplink counters the loop keeps for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub probes_ok: u64,
    pub probes_lost: u64,
    /// Cumulative counts per bucket of [`RTT_BUCKETS`] (plus +Inf = `probes_ok`).
    pub rtt_buckets: [u64; RTT_BUCKETS.len()],
    pub rtt_sum: f64,
    /// Transitions by target state.
    pub transitions: BTreeMap<String, u64>,
    /// Seconds from the first failed probe round to the kernel no longer using the uplink,
    /// for the last failover.
    pub last_failover_s: Option<f64>,
}

/// One uplink as the loop sees it.
#[derive(Debug, Clone)]
pub struct UplinkSnap {
    pub state: State,
    pub since: u64,
    pub disabled: bool,
    pub stats: WindowStats,
    pub targets: Vec<WindowStats>,
    pub counters: Counters,
}

/// What the event loop hands to a request.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cfg: Config,
    pub config_path: String,
    pub pid: u32,
    pub started: u64,
    pub reconciles: u64,
    pub ids: BTreeMap<String, u32>,
    pub facts: Facts,
    pub uplinks: BTreeMap<String, UplinkSnap>,
    pub usable: BTreeSet<String>,
    pub policies: Vec<PolicyPlan>,
}

impl Snapshot {
    fn states(&self) -> BTreeMap<String, State> {
        self.uplinks
            .iter()
            .map(|(n, u)| (n.clone(), u.state.clone()))
            .collect()
    }

    fn uplink_of_mark(&self, mark: u32) -> Option<String> {
        let k = self.cfg.kernel;
        let id = (mark & k.mark_mask) >> k.mark_shift();
        self.ids
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(n, _)| n.clone())
    }
}

fn snapshot(tx: &Sender<Event>) -> Result<Snapshot> {
    let (reply, rx) = channel();
    tx.send(Event::Query(reply))
        .map_err(|_| anyhow::anyhow!("the daemon is stopping"))?;
    rx.recv_timeout(Duration::from_secs(5))
        .context("the daemon did not answer")
}

/// Starts the control socket listener (root only: mode 0600).
pub fn start_control(run_dir: &Path, tx: Sender<Event>) -> Result<()> {
    let path = control::socket_path(run_dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let tx = tx.clone();
                let _ = std::thread::Builder::new()
                    .name("control-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(conn, &tx) {
                            tracing::debug!(error = %format!("{e:#}"), "control connection ended");
                        }
                    });
            }
        })
        .context("starting the control thread")?;
    Ok(())
}

fn write_line<T: serde::Serialize>(s: &mut UnixStream, r: &Response<T>) -> Result<()> {
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    Ok(())
}

fn serve(mut s: UnixStream, tx: &Sender<Event>) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    let env: Envelope = match serde_json::from_str(&line) {
        Ok(e) => e,
        Err(e) => return write_line::<()>(&mut s, &Response::err(format!("bad request: {e}"))),
    };
    if env.version != control::VERSION {
        return write_line::<()>(
            &mut s,
            &Response::err(format!(
                "this daemon speaks control protocol {}, the request {}",
                control::VERSION,
                env.version
            )),
        );
    }
    match env.request {
        Request::Status => {
            let snap = snapshot(tx)?;
            write_line(&mut s, &Response::ok(status(&snap)))
        }
        Request::Flows { uplink } => {
            let snap = snapshot(tx)?;
            match flows(&snap, uplink.as_deref()) {
                Ok(f) => write_line(&mut s, &Response::ok(f)),
                Err(e) => write_line::<()>(&mut s, &Response::err(format!("{e:#}"))),
            }
        }
        Request::Explain(q) => {
            let snap = snapshot(tx)?;
            match explain_query(&snap.cfg, &snap.states(), &q) {
                Ok(e) => write_line(&mut s, &Response::ok(e)),
                Err(e) => write_line::<()>(&mut s, &Response::err(e)),
            }
        }
        Request::Uplink { name, enable } => {
            let (reply, rx) = channel();
            tx.send(Event::Admin {
                name,
                enable,
                reply,
            })
            .map_err(|_| anyhow::anyhow!("the daemon is stopping"))?;
            match rx.recv_timeout(Duration::from_secs(10))? {
                Ok(ack) => write_line(&mut s, &Response::ok(ack)),
                Err(e) => write_line::<()>(&mut s, &Response::err(e)),
            }
        }
        Request::Watch => {
            // Bounded: a client that stops reading is dropped by the daemon, never waited for.
            let (events, rx) = std::sync::mpsc::sync_channel(256);
            tx.send(Event::Subscribe(events))
                .map_err(|_| anyhow::anyhow!("the daemon is stopping"))?;
            for ev in rx {
                write_line::<WatchEvent>(&mut s, &Response::ok(ev))?;
            }
            Ok(())
        }
    }
}

/// Reads an nft named counter / rule counters and interface statistics.
struct KernelCounters {
    /// conns_<uplink> → packets (new connections).
    new_conns: BTreeMap<String, u64>,
    /// rule name → hits.
    rule_hits: BTreeMap<String, u64>,
    /// interface → (rx bytes, tx bytes).
    ifaces: BTreeMap<String, (u64, u64)>,
    /// uplink → live connections.
    live: BTreeMap<String, u64>,
}

fn read_counters(snap: &Snapshot) -> KernelCounters {
    let mut k = KernelCounters {
        new_conns: BTreeMap::new(),
        rule_hits: BTreeMap::new(),
        ifaces: BTreeMap::new(),
        live: BTreeMap::new(),
    };
    // Structures over netlink, no process: named counters, the balance chain's rule
    // counters, interface statistics and conntrack.
    match Nft::open() {
        Ok(mut nft) => {
            match nft.named_counters() {
                Ok(c) => {
                    for (name, p) in c {
                        if let Some(u) = name.strip_prefix("conns_") {
                            k.new_conns.insert(u.to_string(), p);
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot read counters"),
            }
            match nft.goto_counters("balance") {
                Ok(c) => {
                    for (target, p) in c {
                        if let Some(r) = target.strip_prefix("rule_") {
                            k.rule_hits.insert(r.to_string(), p);
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot read rule counters"),
            }
        }
        Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot open nfnetlink"),
    }
    match Rtnl::open().and_then(|mut r| r.link_bytes()) {
        Ok(b) => k.ifaces = b,
        Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot read interface counters"),
    }
    match conntrack::dump(None) {
        Ok(all) => {
            for f in all {
                if let Some(u) = snap.uplink_of_mark(f.mark) {
                    *k.live.entry(u).or_default() += 1;
                }
            }
        }
        Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot read conntrack"),
    }
    k
}

fn share_of(snap: &Snapshot, name: &str) -> f64 {
    match snap
        .policies
        .iter()
        .find(|p| p.name == "default")
        .map(|p| &p.decision)
    {
        Some(Decision::Spread { shares, .. }) => {
            let total: u32 = shares.iter().map(|s| s.1).sum();
            shares
                .iter()
                .find(|s| s.0 == name)
                .map(|s| f64::from(s.1) / f64::from(total.max(1)))
                .unwrap_or(0.0)
        }
        _ => 0.0,
    }
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::Main => "main routing table".into(),
        Decision::NoUplink => "refused: no usable uplink".into(),
        Decision::Spread { shares, .. } if shares.len() == 1 => shares[0].0.clone(),
        Decision::Spread { shares, .. } => {
            let total: u32 = shares.iter().map(|s| s.1).sum();
            shares
                .iter()
                .map(|(n, w)| {
                    format!(
                        "{n} {:.0}%",
                        100.0 * f64::from(*w) / f64::from(total.max(1))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

/// Builds `status` from a snapshot plus the kernel's counters.
pub fn status(snap: &Snapshot) -> Status {
    let k = read_counters(snap);
    let uplinks = snap
        .cfg
        .uplinks
        .iter()
        .map(|u| {
            let rt = snap.uplinks.get(&u.name);
            let (rx, tx) = k.ifaces.get(&u.interface).copied().unwrap_or((0, 0));
            let state = rt.map(|r| r.state.clone()).unwrap_or(State::Up);
            UplinkStatus {
                name: u.name.clone(),
                interface: u.interface.clone(),
                state: state.name().to_string(),
                reason: state.reason().map(|r| r.code().to_string()),
                detail: state.reason().map(|r| r.to_string()),
                since: rt.map(|r| r.since).unwrap_or(0),
                tier: u.tier,
                weight: u.weight,
                share: share_of(snap, &u.name),
                usable: snap.usable.contains(&u.name),
                disabled: rt.is_some_and(|r| r.disabled),
                rtt_last_ms: rt.and_then(|r| ms(r.stats.last_rtt)),
                rtt_avg_ms: rt.and_then(|r| ms(r.stats.avg_rtt)),
                loss_percent: rt.map(|r| r.stats.loss_percent()).unwrap_or(0.0),
                targets: u
                    .check
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let s = rt.and_then(|r| r.targets.get(i));
                        TargetStatus {
                            target: if t.port() == 0 {
                                t.ip().to_string()
                            } else {
                                t.to_string()
                            },
                            loss_percent: s.map(|s| s.loss_percent()).unwrap_or(0.0),
                            rtt_avg_ms: s.and_then(|s| ms(s.avg_rtt)),
                            rtt_last_ms: s.and_then(|s| ms(s.last_rtt)),
                        }
                    })
                    .collect(),
                connections: k.live.get(&u.name).copied().unwrap_or(0),
                new_connections: k.new_conns.get(&u.name).copied().unwrap_or(0),
                bytes_in: rx,
                bytes_out: tx,
                addresses: snap
                    .facts
                    .links
                    .as_ref()
                    .and_then(|l| l.get(&u.interface))
                    .map(|l| l.addrs.clone())
                    .unwrap_or_default(),
                gateway: u.gateway,
            }
        })
        .collect();
    let rules = snap
        .cfg
        .rules
        .iter()
        .map(|r| RuleStatus {
            name: r.name.clone(),
            mode: mode_name(r.mode).into(),
            uplinks: r
                .uplinks
                .iter()
                .map(|i| snap.cfg.uplinks[*i].name.clone())
                .collect(),
            hits: k.rule_hits.get(&r.name).copied().unwrap_or(0),
            now: snap
                .policies
                .iter()
                .find(|p| p.name == r.name)
                .map(|p| describe(&p.decision))
                .unwrap_or_default(),
        })
        .collect();
    Status {
        pid: snap.pid,
        started: snap.started,
        config: snap.config_path.clone(),
        method: snap.cfg.balance.method.as_str().into(),
        reconciles: snap.reconciles,
        uplinks,
        rules,
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Balance => "balance",
        Mode::Failover => "failover",
        Mode::Bypass => "bypass",
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

/// The live connections, optionally of one uplink.
pub fn flows(snap: &Snapshot, uplink: Option<&str>) -> Result<Vec<FlowInfo>> {
    let filter = match uplink {
        None => None,
        Some(name) => {
            let id = snap
                .ids
                .get(name)
                .with_context(|| format!("no uplink named {name:?}"))?;
            Some((snap.cfg.kernel.mark_of(*id), snap.cfg.kernel.mark_mask))
        }
    };
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let list: Vec<Flow> = conntrack::dump(filter).context("reading conntrack")?;
    Ok(list
        .into_iter()
        .map(|f| FlowInfo {
            uplink: snap.uplink_of_mark(f.mark),
            proto: proto_name(f.proto),
            src: f.src,
            sport: f.sport,
            dst: f.dst,
            dport: f.dport,
            nat_src: f.reply_dst,
            bytes_out: f.bytes_orig,
            bytes_in: f.bytes_reply,
            age_s: (f.start_ns > 0 && now_ns >= f.start_ns)
                .then(|| (now_ns - f.start_ns) as f64 / 1e9),
        })
        .collect())
}

/// `explain` for a query, against the given states (all up for an offline config).
pub fn explain_query(
    cfg: &Config,
    states: &BTreeMap<String, State>,
    q: &control::ExplainQuery,
) -> std::result::Result<ExplainInfo, String> {
    let proto = match q.proto.as_deref() {
        None => None,
        Some("tcp") => Some(Proto::Tcp),
        Some("udp") => Some(Proto::Udp),
        Some("icmp") => Some(Proto::Icmp),
        Some(other) => {
            return Err(format!(
                "unknown protocol {other:?}: expected tcp, udp or icmp"
            ))
        }
    };
    let e = explain(
        cfg,
        states,
        &Query {
            src: q.src,
            dst: q.dst,
            proto,
            sport: q.sport,
            dport: q.dport,
        },
    );
    let (verdict, uplink, shares) = match &e.verdict {
        Verdict::Uplink(u) => ("uplink", Some(u.clone()), Vec::new()),
        Verdict::Shares(s) => (
            "shares",
            None,
            s.iter()
                .map(|(u, w)| Candidate {
                    uplink: u.clone(),
                    weight: *w,
                })
                .collect(),
        ),
        Verdict::Main => ("main", None, Vec::new()),
        Verdict::NoUplink => ("none", None, Vec::new()),
    };
    Ok(ExplainInfo {
        rule: e.rule,
        mode: mode_name(e.mode).into(),
        method: e.method.as_str().into(),
        candidates: e
            .candidates
            .iter()
            .map(|(u, w)| Candidate {
                uplink: u.clone(),
                weight: f64::from(*w),
            })
            .collect(),
        excluded: e
            .excluded
            .iter()
            .map(|(u, r)| Excluded {
                uplink: u.clone(),
                reason: r.to_string(),
            })
            .collect(),
        verdict: verdict.into(),
        uplink,
        shares,
    })
}

/// Starts the Prometheus endpoint on `addr` (`GET /metrics`).
pub fn start_metrics(addr: std::net::SocketAddr, tx: Sender<Event>) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding metrics on {addr}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let tx = tx.clone();
                let _ = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        let _ = serve_metrics(conn, &tx);
                    });
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}

fn serve_metrics(mut s: TcpStream, tx: &Sender<Event>) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf)?;
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (code, body, ctype) = if path == "/metrics" {
        match snapshot(tx) {
            Ok(snap) => (
                "200 OK",
                metrics(&snap),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Err(e) => ("503 Service Unavailable", format!("{e:#}\n"), "text/plain"),
        }
    } else {
        ("404 Not Found", "see /metrics\n".to_string(), "text/plain")
    };
    write!(
        s,
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text format writer.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.0
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            self.0.push_str(&format!("{name} {value}\n"));
        } else {
            self.0.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
    }
    /// A gauge or counter family with one sample per (labels, value).
    fn simple(&mut self, name: &str, kind: &str, help: &str, samples: Vec<(String, String)>) {
        self.family(name, kind, help);
        for (l, v) in samples {
            self.sample(name, &l, v);
        }
    }
}

/// The Prometheus text exposition of a snapshot.
pub fn metrics(snap: &Snapshot) -> String {
    let st = status(snap);
    let mut m = Exposition::default();
    let u = |n: &str| format!("uplink=\"{}\"", esc(n));
    m.simple(
        "multiwan_uplink_up",
        "gauge",
        "Whether the uplink takes new connections (1) or not (0).",
        st.uplinks
            .iter()
            .map(|x| (u(&x.name), u8::from(x.usable).to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_uplink_state",
        "gauge",
        "The uplink's health state: 1 for the current one.",
        st.uplinks
            .iter()
            .flat_map(|x| {
                ["up", "degraded", "down"].map(|s| {
                    (
                        format!("{},state=\"{s}\"", u(&x.name)),
                        u8::from(x.state == s).to_string(),
                    )
                })
            })
            .collect(),
    );
    m.simple(
        "multiwan_uplink_share_ratio",
        "gauge",
        "Share of new connections the default policy gives the uplink.",
        st.uplinks
            .iter()
            .map(|x| (u(&x.name), x.share.to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_uplink_rtt_seconds",
        "gauge",
        "Average probe round-trip time over the window.",
        st.uplinks
            .iter()
            .filter_map(|x| x.rtt_avg_ms.map(|r| (u(&x.name), (r / 1000.0).to_string())))
            .collect(),
    );
    m.simple(
        "multiwan_uplink_loss_ratio",
        "gauge",
        "Probe loss over the window (0..1).",
        st.uplinks
            .iter()
            .map(|x| (u(&x.name), (x.loss_percent / 100.0).to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_probes_total",
        "counter",
        "Probes sent, by result.",
        snap.uplinks
            .iter()
            .flat_map(|(n, s)| {
                [
                    (
                        format!("{},result=\"ok\"", u(n)),
                        s.counters.probes_ok.to_string(),
                    ),
                    (
                        format!("{},result=\"lost\"", u(n)),
                        s.counters.probes_lost.to_string(),
                    ),
                ]
            })
            .collect(),
    );
    let h = "multiwan_probe_rtt_seconds";
    m.family(h, "histogram", "Probe round-trip times.");
    for (n, s) in &snap.uplinks {
        for (i, le) in RTT_BUCKETS.iter().enumerate() {
            m.sample(
                &format!("{h}_bucket"),
                &format!("{},le=\"{le}\"", u(n)),
                s.counters.rtt_buckets[i],
            );
        }
        m.sample(
            &format!("{h}_bucket"),
            &format!("{},le=\"+Inf\"", u(n)),
            s.counters.probes_ok,
        );
        m.sample(&format!("{h}_sum"), &u(n), s.counters.rtt_sum);
        m.sample(&format!("{h}_count"), &u(n), s.counters.probes_ok);
    }
    m.simple(
        "multiwan_uplink_transitions_total",
        "counter",
        "State transitions, by the state entered.",
        snap.uplinks
            .iter()
            .flat_map(|(n, s)| {
                ["up", "degraded", "down"].map(|to| {
                    (
                        format!("{},to=\"{to}\"", u(n)),
                        s.counters
                            .transitions
                            .get(to)
                            .copied()
                            .unwrap_or(0)
                            .to_string(),
                    )
                })
            })
            .collect(),
    );
    m.simple(
        "multiwan_uplink_last_failover_seconds",
        "gauge",
        "For the last failover: seconds from the first failed probe round to the kernel update.",
        snap.uplinks
            .iter()
            .filter_map(|(n, s)| s.counters.last_failover_s.map(|f| (u(n), f.to_string())))
            .collect(),
    );
    m.simple(
        "multiwan_uplink_connections",
        "gauge",
        "Live connections (conntrack entries) on the uplink.",
        st.uplinks
            .iter()
            .map(|x| (u(&x.name), x.connections.to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_uplink_new_connections_total",
        "counter",
        "New connections assigned to the uplink since the ruleset was loaded.",
        st.uplinks
            .iter()
            .map(|x| (u(&x.name), x.new_connections.to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_uplink_receive_bytes_total",
        "counter",
        "Bytes received on the uplink's interface.",
        st.uplinks
            .iter()
            .map(|x| (u(&x.name), x.bytes_in.to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_uplink_transmit_bytes_total",
        "counter",
        "Bytes sent on the uplink's interface.",
        st.uplinks
            .iter()
            .map(|x| (u(&x.name), x.bytes_out.to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_rule_hits_total",
        "counter",
        "New connections that matched the rule.",
        st.rules
            .iter()
            .map(|r| (format!("rule=\"{}\"", esc(&r.name)), r.hits.to_string()))
            .collect(),
    );
    m.simple(
        "multiwan_reconciles_total",
        "counter",
        "Kernel updates made by the daemon.",
        vec![(String::new(), st.reconciles.to_string())],
    );
    m.0
}
