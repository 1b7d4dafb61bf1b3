//! The control socket (status, flows, explain, watch, uplink enable/disable) behind the
//! bounded acceptor of [`super::listen`]; the Prometheus endpoint is [`super::metrics`]. The
//! event loop only hands out a [`Snapshot`] of its state; the slow reads (conntrack dump, nft
//! counters, interface counters) happen in the request's thread, one at a time.
//!
//! Who may ask: the peer's credentials come from `SO_PEERCRED`. Root may do everything; the
//! members of `[daemon] control_group` (primary or supplementary group) may use the read-only
//! requests; everyone else is refused. The socket's mode says the same to the kernel (0600, or
//! 0660 with the group), so the daemon's check is the second of two.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use multiwan_core::health::State;
use multiwan_core::plan::{Decision, Family};

use super::event::Event;
use super::listen::{self, Limits, Protocol, Refusal};
// The loop's snapshot types, named here by the engine as the control socket's input.
use super::snapshot::WATCH_QUEUE;
pub use super::snapshot::{Counters, FamSnap, Snapshot, Subscriber, UplinkSnap, RTT_BUCKETS};
use crate::control::{
    self, Envelope, FamilyStatus, FlowInfo, Request, RequestError, Response, RuleStatus, Status,
    TargetStatus, UplinkStatus, WatchEvent,
};
use crate::kernel::conntrack::{self, Flow};
use crate::kernel::netlink::Rtnl;
use crate::kernel::nft::Nft;
use crate::rundir;

/// Bounds of the control socket.
pub const CONTROL_LIMITS: Limits = Limits {
    max_active: 16,
    max_pending: 64,
    max_request: control::MAX_REQUEST_BYTES,
    request_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(5),
};

/// Send buffer of a `watch` connection: a stream of small lines needs little in flight, and a
/// small buffer finds a client that stopped reading within seconds (then the write timeout
/// drops it) instead of after the kernel's default ~200 KiB.
const WATCH_SNDBUF: usize = 4096;

/// Takes a snapshot of the event loop's state.
pub fn snapshot(tx: &Sender<Event>) -> Result<Snapshot> {
    let (reply, rx) = channel();
    tx.send(Event::Query(reply))
        .map_err(|_| anyhow::anyhow!("the daemon is stopping"))?;
    rx.recv_timeout(Duration::from_secs(5))
        .context("the daemon did not answer")
}

/// Starts the control socket listener (mode 0600, or 0660 for `control_group`).
pub fn start_control(
    run_dir: &Path,
    tx: Sender<Event>,
    control_group: Option<&str>,
) -> Result<std::thread::JoinHandle<()>> {
    let path = control::socket_path(run_dir);
    // Removes a stale socket, or a symlink planted at its name (not what it points to).
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing the old {}", path.display()))
        }
        _ => {}
    }
    // bind(2) creates the socket itself and never follows a symlink; with the umask the new
    // socket is at most 0755, which nobody else can connect to, until it is restricted below.
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    socket_access(run_dir, control_group)?;
    listen::spawn(
        listener,
        CONTROL_LIMITS,
        Arc::new(Control {
            tx,
            watches: Arc::default(),
        }),
    )
}

/// Sets who can reach the control socket: root only (0600), or also `group` (0660, and the
/// run directory 0710 with that group so members can reach the socket). Also called on reload.
pub fn socket_access(run_dir: &Path, group: Option<&str>) -> Result<()> {
    let path = control::socket_path(run_dir);
    let gid = match group {
        None => None,
        Some(g) => Some(crate::settings::group_id(g)?),
    };
    // The run directory is ours alone (checked at start), so nothing can swap the socket for
    // a symlink between this check and the chmod below.
    let md = std::fs::symlink_metadata(&path)
        .with_context(|| format!("inspecting {}", path.display()))?;
    if !std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()) {
        anyhow::bail!("{} is not the daemon's socket", path.display());
    }
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(&path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))?;
    rundir::allow_group(run_dir, gid)
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Full,
    ReadOnly,
    Denied,
}

/// The permission model (pure): root may do everything, members of the control group (by
/// primary or supplementary gid) may read, everyone else nothing.
pub fn access(uid: u32, gids: &[u32], control_gid: Option<u32>) -> Access {
    if uid == 0 {
        Access::Full
    } else if control_gid.is_some_and(|g| gids.contains(&g)) {
        Access::ReadOnly
    } else {
        Access::Denied
    }
}

/// The supplementary groups in a `/proc/PID/status` text (`Groups:\t4 27 1000`).
pub fn groups_from_status(text: &str) -> Vec<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The peer's uid and all its gids. The groups come from the process itself (what `setpriv`
/// or `newgrp` gave it), falling back to the group database for its user.
fn peer_ids(s: &UnixStream) -> Option<(u32, Vec<u32>)> {
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let mut gids = vec![gid];
    match std::fs::read_to_string(format!("/proc/{}/status", cred.pid())) {
        Ok(text) => gids.extend(groups_from_status(&text)),
        Err(_) => {
            let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
            let name = std::ffi::CString::new(user.name).ok()?;
            let all = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid)).ok()?;
            gids.extend(all.into_iter().map(|g| g.as_raw()));
        }
    }
    Some((uid, gids))
}

/// Why a peer is refused, or `None` when it may make `request`.
fn refused(s: &UnixStream, tx: &Sender<Event>, request: &Request) -> Result<Option<String>> {
    let Some((uid, gids)) = peer_ids(s) else {
        return Ok(Some("permission denied: cannot tell who is asking".into()));
    };
    if uid == 0 {
        return Ok(None);
    }
    let group = snapshot(tx)?.cfg.daemon.control_group;
    let gid = group
        .as_deref()
        .and_then(|g| crate::settings::group_id(g).ok());
    Ok(match access(uid, &gids, gid) {
        Access::Full => None,
        Access::ReadOnly if request.read_only() => None,
        Access::ReadOnly => Some(format!(
            "permission denied: uid {uid} may read (control_group {}) but changing an uplink needs root",
            group.unwrap_or_default()
        )),
        Access::Denied => Some(format!(
            "permission denied: uid {uid} is neither root nor in [daemon] control_group"
        )),
    })
}

/// The control socket's protocol: one JSON request line, JSON Lines back.
struct Control {
    tx: Sender<Event>,
    /// `watch` streams open now: at most [`MAX_WATCHES`], so streams that never end cannot
    /// take every worker and lock `status` and `uplink … disable` out.
    watches: Arc<std::sync::atomic::AtomicUsize>,
}

/// Concurrent `watch` streams: half the workers, the other half stay for requests.
const MAX_WATCHES: usize = CONTROL_LIMITS.max_active / 2;

/// One open `watch` stream, counted while it lives.
struct WatchSlot(Arc<std::sync::atomic::AtomicUsize>);

impl WatchSlot {
    /// A slot, or `None` when [`MAX_WATCHES`] streams are open.
    fn take(n: &Arc<std::sync::atomic::AtomicUsize>) -> Option<Self> {
        use std::sync::atomic::Ordering::AcqRel;
        n.fetch_update(AcqRel, std::sync::atomic::Ordering::Acquire, |v| {
            (v < MAX_WATCHES).then_some(v + 1)
        })
        .ok()
        .map(|_| Self(n.clone()))
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Protocol<UnixStream> for Control {
    fn name(&self) -> &'static str {
        "control"
    }

    fn complete(&self, buf: &[u8]) -> Option<usize> {
        buf.iter().position(|b| *b == b'\n').map(|i| i + 1)
    }

    fn refusal(&self, why: Refusal, limits: &Limits) -> Vec<u8> {
        let msg = match why {
            Refusal::TooLarge => {
                format!("request too large: more than {} bytes", limits.max_request)
            }
            Refusal::Timeout => format!(
                "bad request: no complete request line within {:?}",
                limits.request_timeout
            ),
            Refusal::Busy => format!(
                "busy: {} requests in progress (the limit); try again",
                limits.max_active
            ),
            Refusal::Evicted => "busy: too many connections that send no request".to_string(),
        };
        let mut line = serde_json::to_string(&Response::<()>::err(msg)).unwrap_or_default();
        line.push('\n');
        line.into_bytes()
    }

    fn serve(&self, mut s: UnixStream, request: &[u8]) {
        let r = match control::parse_request(request) {
            Ok(env) => serve(&mut s, env, &self.tx, &self.watches),
            Err(msg) => write_line::<()>(&mut s, &Response::err(msg)),
        };
        if let Err(e) = r {
            tracing::debug!(error = %format!("{e:#}"), "control connection ended");
        }
    }
}

/// The kernel's answers to the hook chains' lookups for an `explain` query with a
/// destination; without them (none, or the kernel refused to answer: logged) `explain`
/// judges by the connected subnets alone.
fn lookups(snap: &Snapshot, q: &control::ExplainQuery) -> Option<multiwan_core::explain::Lookups> {
    let dst = q.dst.filter(|d| Family::of(d) == Family::of(&q.src))?;
    let own = snap.facts.is_local(q.src);
    crate::kernel::explain_lookups(snap.cfg.kernel.mark_none(), q.src, dst, own)
        .map_err(|e| tracing::debug!(error = %format!("{e:#}"), "explain: route lookups"))
        .ok()
}

fn write_line<T: serde::Serialize>(s: &mut UnixStream, r: &Response<T>) -> Result<()> {
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    Ok(())
}

fn serve(
    s: &mut UnixStream,
    env: Envelope,
    tx: &Sender<Event>,
    watches: &Arc<std::sync::atomic::AtomicUsize>,
) -> Result<()> {
    if let Some(why) = refused(s, tx, &env.request)? {
        return write_line::<()>(s, &Response::err(why));
    }
    match env.request {
        Request::Status => {
            let snap = snapshot(tx)?;
            write_line(s, &Response::ok(status(&snap)))
        }
        Request::Flows { uplink } => {
            let snap = snapshot(tx)?;
            match flows(&snap, uplink.as_deref()) {
                Ok(f) => write_line(s, &Response::ok(f)),
                Err(e) => write_line::<()>(s, &Response::err(format!("{e:#}"))),
            }
        }
        Request::Explain(q) => {
            let snap = snapshot(tx)?;
            let health = snap.health_of(Family::of(&q.src));
            let lookups = lookups(&snap, &q);
            match control::explain_query(&snap.cfg, &health, &snap.facts, lookups.as_ref(), &q) {
                Ok(e) => write_line(s, &Response::ok(e)),
                Err(e) => write_line(s, &RequestError::usage(e.to_string()).response()),
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
                Ok(ack) => write_line(s, &Response::ok(ack)),
                Err(refusal) => write_line(s, &refusal.response()),
            }
        }
        Request::Watch => match WatchSlot::take(watches) {
            Some(_slot) => watch(s, tx),
            None => write_line::<()>(
                s,
                &Response::err(format!(
                    "busy: {MAX_WATCHES} watch streams open (the limit); try again"
                )),
            ),
        },
    }
}

/// Streams events until the client goes away, stops reading (the write timeout), falls
/// `WATCH_QUEUE` events behind, or the daemon stops.
fn watch(s: &mut UnixStream, tx: &Sender<Event>) -> Result<()> {
    let _ = socket2::SockRef::from(&*s).set_send_buffer_size(WATCH_SNDBUF);
    let (sub, rx, overflowed) = Subscriber::new();
    tx.send(Event::Subscribe(sub))
        .map_err(|_| anyhow::anyhow!("the daemon is stopping"))?;
    for ev in rx {
        if let Err(e) = write_line::<WatchEvent>(s, &Response::ok(ev)) {
            if matches!(
                e.downcast_ref::<std::io::Error>().map(|e| e.kind()),
                Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
            ) {
                tracing::warn!(
                    timeout = ?CONTROL_LIMITS.write_timeout,
                    "watch client stopped reading: dropped"
                );
            }
            return Err(e);
        }
    }
    if overflowed.load(Ordering::Acquire) {
        // Best effort: the client was too slow, so this may not fit either.
        let why = format!("dropped: this client fell {WATCH_QUEUE} events behind");
        return write_line::<()>(s, &Response::err(why));
    }
    Ok(())
}

/// Serialises the kernel reads of `status` and `/metrics`: at most one runs at a time, however
/// many clients ask at once (each still gets its own fresh answer).
static KERNEL_READS: Mutex<()> = Mutex::new(());

fn kernel_counters(snap: &Snapshot) -> KernelCounters {
    let _one = KERNEL_READS.lock().unwrap_or_else(|p| p.into_inner());
    let start = Instant::now();
    let k = read_counters(snap);
    tracing::debug!(
        took_ms = start.elapsed().as_millis() as u64,
        "kernel counters read"
    );
    k
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
    share_in(snap, name, Family::V4)
}

/// The share of new `family` connections the default policy gives `name`.
fn share_in(snap: &Snapshot, name: &str, family: Family) -> f64 {
    match snap
        .policies
        .iter()
        .find(|p| p.name == "default" && p.family == family)
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

/// An uplink's IPv6 side in `status`, when it carries IPv6.
fn ipv6_status(snap: &Snapshot, u: &multiwan_core::model::Uplink) -> Option<FamilyStatus> {
    let v6 = u.ipv6.as_ref()?;
    let rt = snap.uplinks.get(&u.name).and_then(|r| r.ipv6.as_ref());
    let state = rt.map(|r| r.state.clone()).unwrap_or(State::Up);
    let link = snap.facts.links.as_ref().and_then(|l| l.get(&u.interface));
    Some(FamilyStatus {
        state: state.name().to_string(),
        reason: state.reason().map(|r| r.code().to_string()),
        detail: state.reason().map(|r| r.to_string()),
        since: rt.map(|r| r.since).unwrap_or(0),
        share: share_in(snap, &u.name, Family::V6),
        usable: snap.usable6.contains(&u.name),
        rtt_last_ms: rt.and_then(|r| ms(r.stats.last_rtt)),
        rtt_avg_ms: rt.and_then(|r| ms(r.stats.avg_rtt)),
        loss_percent: rt.map(|r| r.stats.loss_percent()).unwrap_or(0.0),
        targets: v6
            .check
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let s = rt.and_then(|r| r.targets.get(i));
                TargetStatus {
                    target: multiwan_core::correlate::target_label(&(v6.check.method, *t)),
                    suspect: snap.suspect.contains(&(v6.check.method, *t)),
                    loss_percent: s.map(|s| s.loss_percent()).unwrap_or(0.0),
                    rtt_avg_ms: s.and_then(|s| ms(s.avg_rtt)),
                    rtt_last_ms: s.and_then(|s| ms(s.last_rtt)),
                }
            })
            .collect(),
        addresses: link.map(|l| l.addrs6.clone()).unwrap_or_default(),
        gateway: v6.gateway.or_else(|| link.and_then(|l| l.gateway6)),
    })
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
    let k = kernel_counters(snap);
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
                            suspect: snap.suspect.contains(&(u.check.method, *t)),
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
                // `auto`: the gateway learned from the DHCP client's route.
                gateway: u.gateway.or_else(|| {
                    let link = snap.facts.links.as_ref()?.get(&u.interface)?;
                    link.gateway.filter(|_| u.gateway_auto)
                }),
                ipv6: ipv6_status(snap, u),
            }
        })
        .collect();
    let rules = snap
        .cfg
        .rules
        .iter()
        .map(|r| RuleStatus {
            name: r.name.clone(),
            mode: control::mode_name(r.mode).into(),
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
        fail_open: snap.fail_open || snap.fail_open6,
        kernel_failures: snap.kernel_failures,
        kernel_error: snap.kernel_error.clone(),
        uplinks,
        rules,
    }
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        58 => "icmpv6".into(),
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
    let list: Vec<Flow> = {
        // A conntrack dump is a kernel read like the counters: one at a time.
        let _one = KERNEL_READS.lock().unwrap_or_else(|p| p.into_inner());
        conntrack::dump(filter).context("reading conntrack")?
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::snapshot::Dropped;

    #[test]
    fn permissions_root_all_group_reads_others_nothing() {
        assert_eq!(access(0, &[0], None), Access::Full);
        assert_eq!(access(1000, &[1000, 27], Some(27)), Access::ReadOnly);
        assert_eq!(access(1000, &[27], Some(27)), Access::ReadOnly);
        assert_eq!(access(1000, &[1000, 4], Some(27)), Access::Denied);
        assert_eq!(access(1000, &[1000], None), Access::Denied);
    }

    #[test]
    fn supplementary_groups_are_read_from_proc_status() {
        let text = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \nNgid:\t0\n";
        assert_eq!(groups_from_status(text), vec![4, 27, 1000]);
        assert_eq!(groups_from_status("Groups:\t\n"), Vec::<u32>::new());
        let own = std::fs::read_to_string("/proc/self/status").expect("status");
        assert_eq!(
            groups_from_status(&own),
            nix::unistd::getgroups()
                .expect("groups")
                .into_iter()
                .map(|g| g.as_raw())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_full_watch_queue_drops_the_subscriber_and_says_so() {
        let (sub, rx, overflowed) = Subscriber::new();
        let ev = WatchEvent::Probes {
            time_ms: 0,
            uplink: "isp1".into(),
            family: "ipv4".into(),
            state: "up".into(),
            rtt_last_ms: None,
            rtt_avg_ms: None,
            loss_percent: 0.0,
        };
        for _ in 0..WATCH_QUEUE {
            sub.try_send(ev.clone()).expect("room");
        }
        assert!(!overflowed.load(Ordering::Acquire));
        assert_eq!(sub.try_send(ev.clone()), Err(Dropped::TooSlow));
        assert!(overflowed.load(Ordering::Acquire));
        drop(rx);
        assert_eq!(sub.try_send(ev), Err(Dropped::Gone));
    }
}
