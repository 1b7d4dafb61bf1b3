//! `multiwan run`: keeps the plan true while uplinks fail, recover, reconnect and change
//! addresses.
//!
//! ```text
//!   prober thread ─────────Rounds───┐
//!   netlink thread ──KernelChanged──┼──► event loop (this module) ──► plan ──► kernel::apply
//!   signal thread ──Reload/Stop─────┘        │ transitions: log, hook, conntrack flush
//!                                            └─► state.json in the run directory
//! ```
//! One loop over a closed [`Event`] enum; every handler is a plain synchronous function of
//! the event and the current time. Health decisions come from the pure
//! [`multiwan_core::health::Monitor`]; the data plane from the pure planner; only
//! `kernel` (through `apply`) and `netlink` touch the kernel.
//!
//! Exit leaves the data plane in place (fail-static) unless `--cleanup` is given, so a
//! restart — or a `kill -9` — costs no connection; a new daemon adopts the installed state.

pub mod netlink;
pub mod probe;
pub mod server;
pub mod systemd;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use multiwan_core::health::{self, LinkStatus, Monitor, State, Transition};
use multiwan_core::model::OnUplinkDown;
use multiwan_core::plan::{assign_ids, plan};
use multiwan_core::{Config, Facts, Plan};
use serde::Serialize;

use crate::cli::{load_config, Failure};
use crate::kernel;

/// Everything the event loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// Probe rounds finished: (uplink, per-target results), from prober generation
    /// `generation`.
    Rounds {
        generation: u64,
        rounds: Vec<(String, Vec<Option<Duration>>)>,
    },
    /// Links or addresses changed: re-read them.
    KernelChanged,
    /// SIGHUP: re-read the config.
    Reload,
    /// SIGTERM / SIGINT.
    Stop,
    /// A control or metrics request wants the current state.
    Query(Sender<server::Snapshot>),
    /// `watch`: send events to this channel until it closes.
    Subscribe(Sender<crate::control::WatchEvent>),
    /// `multiwan uplink NAME enable|disable`.
    Admin {
        name: String,
        enable: bool,
        reply: Sender<std::result::Result<crate::control::Ack, String>>,
    },
}

/// Options of `multiwan run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Config file.
    #[arg(short, long, default_value = crate::cli::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Directory for the daemon's state (pid file, state.json, saved sysctls).
    #[arg(long, default_value = crate::cli::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Remove everything multiwan installed when stopping (default: leave it, fail-static).
    #[arg(long)]
    pub cleanup: bool,
}

struct Prober {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// One uplink's runtime state next to its config.
struct UplinkRt {
    monitor: Monitor,
    since_wall: SystemTime,
    counters: server::Counters,
    /// A failover in progress: the streak's start, until the kernel is updated.
    failover_from: Option<Instant>,
}

impl UplinkRt {
    fn new(monitor: Monitor) -> Self {
        Self {
            monitor,
            since_wall: SystemTime::now(),
            counters: server::Counters::default(),
            failover_from: None,
        }
    }
}

struct Daemon {
    args: RunArgs,
    cfg: Config,
    ids: BTreeMap<String, u32>,
    uplinks: BTreeMap<String, UplinkRt>,
    facts: Facts,
    tx: Sender<Event>,
    generation: u64,
    probers: Vec<Prober>,
    /// Something changed that the kernel must reflect.
    dirty: bool,
    /// Uplinks that went down since the last reconcile and whose connections go.
    to_flush: BTreeSet<String>,
    last_plan: Option<Plan>,
    reconciles: u64,
    started: SystemTime,
    subscribers: Vec<Sender<crate::control::WatchEvent>>,
    /// Uplinks disabled by the operator (persisted in the run directory).
    disabled: BTreeSet<String>,
}

/// What the kernel says about an uplink's interface (and its learned gateway).
fn link_status(facts: &Facts, u: &multiwan_core::model::Uplink) -> LinkStatus {
    match facts.links.as_ref().and_then(|l| l.get(&u.interface)) {
        None => LinkStatus::Missing,
        Some(l) if !l.up => LinkStatus::Down,
        Some(l) if l.addrs.is_empty() => LinkStatus::NoAddress,
        Some(l) if u.gateway_auto && l.gateway.is_none() => LinkStatus::NoGateway,
        Some(_) => LinkStatus::Ok,
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: RunArgs) -> Result<(), Failure> {
    let cfg = load_config(&args.config)?;
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("creating run directory {}", args.run_dir.display()))?;
    let _pid = PidFile::create(&args.run_dir)?;
    let (tx, rx) = channel();
    spawn_signal_thread(tx.clone())?;
    netlink::watch_links(tx.clone()).context("watching links over netlink")?;
    let metrics = cfg.daemon.metrics;
    let mut d = Daemon::new(args, cfg, tx.clone())?;
    server::start_control(&d.args.run_dir, tx.clone())?;
    if let Some(addr) = metrics {
        server::start_metrics(addr, tx)?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    d.reconcile();
    // Probes need the uplinks' rules and routes: start them once those are in place.
    d.start_probers();
    systemd::notify("READY=1");
    tracing::info!(uplinks = d.cfg.uplinks.len(), "multiwan running");
    d.event_loop(&rx);
    Ok(())
}

fn spawn_signal_thread(tx: Sender<Event>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let ev = if s == SIGHUP {
                    Event::Reload
                } else {
                    Event::Stop
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// `multiwan.pid` in the run directory; refuses to start next to a live daemon.
struct PidFile(PathBuf);

impl PidFile {
    fn create(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("multiwan.pid");
        if let Ok(old) = std::fs::read_to_string(&path) {
            let pid = old.trim();
            let alive = !pid.is_empty()
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "multiwan");
            if alive && pid != std::process::id().to_string() {
                anyhow::bail!(
                    "another multiwan daemon (pid {pid}) uses {}; give each daemon its own --run-dir",
                    run_dir.display()
                );
            }
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Daemon {
    fn new(args: RunArgs, cfg: Config, tx: Sender<Event>) -> Result<Self> {
        let facts = kernel::read_facts()?;
        let installed = kernel::read_installed()?;
        let ids = assign_ids(&cfg, &installed.ids)?;
        let now = Instant::now();
        let disabled: BTreeSet<String> =
            std::fs::read_to_string(args.run_dir.join("disabled.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let uplinks = cfg
            .uplinks
            .iter()
            .map(|u| {
                let status = link_status(&facts, u);
                let mut m = Monitor::new(&u.check, status, now);
                if disabled.contains(&u.name) {
                    m.set_disabled(true, now);
                }
                (u.name.clone(), UplinkRt::new(m))
            })
            .collect();
        let d = Self {
            args,
            cfg,
            ids,
            uplinks,
            facts,
            tx,
            generation: 0,
            probers: Vec::new(),
            dirty: true,
            to_flush: BTreeSet::new(),
            last_plan: None,
            reconciles: 0,
            started: SystemTime::now(),
            subscribers: Vec::new(),
            disabled,
        };
        for (name, u) in &d.uplinks {
            tracing::info!(uplink = %name, state = %u.monitor.state(), "initial state");
        }
        Ok(d)
    }

    fn start_probers(&mut self) {
        for p in self.probers.drain(..) {
            p.stop.store(true, Ordering::Relaxed);
            let _ = p.handle.join();
        }
        self.generation += 1;
        let specs: Vec<probe::ProbeSpec> = self
            .cfg
            .uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| probe::ProbeSpec {
                uplink: u.name.clone(),
                ifname: u.interface.clone(),
                mark: self
                    .cfg
                    .kernel
                    .mark_of(self.ids.get(&u.name).copied().unwrap_or(0)),
                method: u.check.method,
                targets: u.check.targets.clone(),
                interval: u.check.interval,
                timeout: u.check.timeout,
                ident: (std::process::id() as u16)
                    .wrapping_mul(31)
                    .wrapping_add(i as u16),
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        match probe::spawn(specs, self.generation, self.tx.clone(), stop.clone()) {
            Ok(handle) => self.probers.push(Prober { stop, handle }),
            Err(e) => tracing::error!(error = %e, "cannot start the prober thread"),
        }
    }

    fn event_loop(&mut self, rx: &Receiver<Event>) {
        let watchdog = systemd::watchdog_interval();
        let tick = watchdog
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut last_facts = Instant::now();
        let mut last_state = Instant::now();
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Handle everything that is queued before touching the kernel once.
            let mut kernel_changed = false;
            let mut events: Vec<Event> = first.into_iter().collect();
            events.extend(rx.try_iter());
            for ev in events {
                match ev {
                    Event::Rounds { generation, rounds } => {
                        for (uplink, results) in rounds {
                            self.on_round(&uplink, generation, &results);
                        }
                    }
                    Event::KernelChanged => kernel_changed = true,
                    Event::Reload => self.reload(),
                    Event::Query(reply) => {
                        let _ = reply.send(self.snapshot());
                    }
                    Event::Subscribe(tx) => self.subscribers.push(tx),
                    Event::Admin {
                        name,
                        enable,
                        reply,
                    } => {
                        let r = self.admin(&name, enable);
                        let _ = reply.send(r);
                    }
                    Event::Stop => {
                        self.stop();
                        return;
                    }
                }
            }
            // Safety net for missed netlink events and for changes netlink does not report
            // (someone deleting our nft table): re-read and verify every 30 s.
            if kernel_changed || last_facts.elapsed() > Duration::from_secs(30) {
                last_facts = Instant::now();
                self.on_kernel_changed();
            }
            if self.dirty {
                self.reconcile();
                last_state = Instant::now();
            } else if last_state.elapsed() >= Duration::from_secs(1) {
                // RTT and loss move with every round; publish them once a second.
                self.write_state();
                self.broadcast_probes();
                last_state = Instant::now();
            }
            if watchdog.is_some() {
                systemd::notify("WATCHDOG=1");
            }
        }
    }

    fn on_round(&mut self, uplink: &str, generation: u64, results: &[Option<Duration>]) {
        if generation != self.generation {
            return;
        }
        let now = Instant::now();
        let t = match self.uplinks.get_mut(uplink) {
            Some(u) => {
                let c = &mut u.counters;
                let answered = results.iter().flatten().count();
                c.probes_ok += answered as u64;
                c.probes_lost += (results.len() - answered) as u64;
                for rtt in results.iter().flatten() {
                    let secs = rtt.as_secs_f64();
                    c.rtt_sum += secs;
                    for (i, le) in server::RTT_BUCKETS.iter().enumerate() {
                        if secs <= *le {
                            c.rtt_buckets[i] += 1;
                        }
                    }
                }
                u.monitor.round(results, now)
            }
            None => return,
        };
        if let Some(t) = t {
            self.on_transition(uplink, t);
        }
    }

    fn on_kernel_changed(&mut self) {
        let facts = match kernel::read_facts() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read interfaces");
                return;
            }
        };
        if facts == self.facts {
            // Nothing we plan from changed, but something did: if it was our state (a route
            // or rule of ours removed by hand), put it back.
            self.repair_drift();
            return;
        }
        self.facts = facts;
        // Addresses feed source rules and routes even when no state changes.
        self.dirty = true;
        let now = Instant::now();
        let mut transitions = Vec::new();
        for u in &self.cfg.uplinks {
            let status = link_status(&self.facts, u);
            if let Some(rt) = self.uplinks.get_mut(&u.name) {
                if let Some(t) = rt.monitor.link(status, now) {
                    transitions.push((u.name.clone(), t));
                }
            }
        }
        for (name, t) in transitions {
            self.on_transition(&name, t);
        }
    }

    /// Re-applies the last plan if the kernel no longer matches it.
    fn repair_drift(&mut self) {
        if let Some(p) = &self.last_plan {
            if let Err(e) = kernel::verify(p) {
                tracing::warn!(error = %format!("{e:#}"), "the kernel drifted from the plan; restoring it");
                self.last_plan = None;
                self.dirty = true;
            }
        }
    }

    fn on_transition(&mut self, uplink: &str, t: Transition) {
        let reason =
            t.to.reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "healthy".into());
        tracing::info!(
            uplink,
            from = t.from.name(),
            to = t.to.name(),
            reason = %reason,
            "uplink {}",
            t.to.name()
        );
        if let Some(rt) = self.uplinks.get_mut(uplink) {
            rt.since_wall = SystemTime::now();
            *rt.counters
                .transitions
                .entry(t.to.name().to_string())
                .or_default() += 1;
            if matches!(t.to, State::Down(health::Reason::ProbesFailing { .. })) {
                // The streak's first round was sent about `timeout` before it finished.
                let timeout = self
                    .cfg
                    .uplinks
                    .iter()
                    .find(|u| u.name == uplink)
                    .map(|u| u.check.timeout)
                    .unwrap_or_default();
                rt.failover_from = rt
                    .monitor
                    .failing_since()
                    .map(|t| t.checked_sub(timeout).unwrap_or(t));
            }
        }
        let unix_ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        };
        let ev = crate::control::WatchEvent::Transition {
            time_ms: unix_ms(SystemTime::now()),
            uplink: uplink.to_string(),
            from: t.from.name().to_string(),
            to: t.to.name().to_string(),
            reason: t.to.reason().map(|r| r.code().to_string()),
            detail: t.to.reason().map(|r| r.to_string()),
        };
        self.subscribers.retain(|s| s.send(ev.clone()).is_ok());
        // An operator's drain lets established connections finish; a failure flushes them.
        if matches!(t.to, State::Down(ref r) if *r != health::Reason::AdminDisabled)
            && !matches!(t.from, State::Down(_))
            && self.cfg.balance.on_uplink_down == OnUplinkDown::Flush
        {
            self.to_flush.insert(uplink.to_string());
        }
        if let Some(hook) = &self.cfg.daemon.hook {
            let interface = self
                .cfg
                .uplinks
                .iter()
                .find(|u| u.name == uplink)
                .map(|u| u.interface.clone())
                .unwrap_or_default();
            systemd::run_hook(
                hook,
                systemd::HookCall {
                    uplink: uplink.to_string(),
                    interface,
                    old_state: t.from.name().to_string(),
                    new_state: t.to.name().to_string(),
                    reason: t.to.reason().map(|r| r.code()).unwrap_or("").to_string(),
                },
            );
        }
        self.dirty = true;
    }

    fn states(&self) -> BTreeMap<String, State> {
        self.uplinks
            .iter()
            .map(|(n, u)| (n.clone(), u.monitor.state().clone()))
            .collect()
    }

    /// Makes the kernel match the current health and facts: plan, apply the difference,
    /// then delete the conntrack entries of uplinks that just went down.
    fn reconcile(&mut self) {
        let usable = health::usable(&self.cfg, &self.states());
        let p = plan(&self.cfg, &self.ids, &usable, &self.facts);
        if self.last_plan.as_ref() != Some(&p) {
            let started = Instant::now();
            match kernel::apply(&p, &self.args.run_dir) {
                Ok(r) => {
                    self.reconciles += 1;
                    tracing::info!(
                        took_ms = started.elapsed().as_millis() as u64,
                        usable = ?usable,
                        nft_replaced = r.nft_replaced,
                        policies = r.policies_updated,
                        rules = r.rules_added + r.rules_removed,
                        routes = r.routes_changed + r.routes_removed,
                        "kernel updated"
                    );
                    self.last_plan = Some(p);
                    let done = Instant::now();
                    for rt in self.uplinks.values_mut() {
                        if let Some(from) = rt.failover_from.take() {
                            rt.counters.last_failover_s =
                                Some(done.duration_since(from).as_secs_f64());
                        }
                    }
                }
                Err(e) => {
                    // Keep `dirty`: the next event or tick retries.
                    tracing::error!(error = %format!("{e:#}"), "cannot update the kernel; will retry");
                    self.write_state();
                    return;
                }
            }
        }
        for name in std::mem::take(&mut self.to_flush) {
            let Some(id) = self.ids.get(&name) else {
                continue;
            };
            let mark = self.cfg.kernel.mark_of(*id);
            let flush_started = Instant::now();
            match netlink::flush_conntrack(mark, self.cfg.kernel.mark_mask) {
                Ok(()) => {
                    tracing::info!(uplink = %name, took_ms = flush_started.elapsed().as_millis() as u64, "flushed the uplink's connections")
                }
                Err(e) => tracing::warn!(uplink = %name, error = %e, "cannot flush connections"),
            }
        }
        self.dirty = false;
        self.write_state();
    }

    fn reload(&mut self) {
        systemd::notify("RELOADING=1");
        match load_config(&self.args.config) {
            Err(Failure::Config(msg)) => {
                for line in msg.lines() {
                    tracing::error!("{line}");
                }
                tracing::error!("reload rejected: the running configuration stays");
            }
            Err(Failure::Runtime(e)) => {
                tracing::error!(error = %format!("{e:#}"), "reload failed: the running configuration stays")
            }
            Ok(cfg) => match assign_ids(&cfg, &self.ids) {
                Err(e) => tracing::error!(error = %e, "reload rejected"),
                Ok(ids) => {
                    let now = Instant::now();
                    let mut uplinks = BTreeMap::new();
                    for u in &cfg.uplinks {
                        let old = self.cfg.uplinks.iter().find(|o| o.name == u.name);
                        let keep =
                            old.is_some_and(|o| o.interface == u.interface && o.check == u.check);
                        let rt = match self.uplinks.remove(&u.name) {
                            Some(rt) if keep => rt,
                            _ => {
                                let mut m =
                                    Monitor::new(&u.check, link_status(&self.facts, u), now);
                                if self.disabled.contains(&u.name) {
                                    m.set_disabled(true, now);
                                }
                                UplinkRt::new(m)
                            }
                        };
                        uplinks.insert(u.name.clone(), rt);
                    }
                    self.cfg = cfg;
                    self.ids = ids;
                    self.uplinks = uplinks;
                    self.start_probers();
                    self.dirty = true;
                    tracing::info!(uplinks = self.cfg.uplinks.len(), "configuration reloaded");
                }
            },
        }
        systemd::notify("READY=1");
    }

    fn stop(&mut self) {
        systemd::notify("STOPPING=1");
        for p in self.probers.drain(..) {
            p.stop.store(true, Ordering::Relaxed);
            let _ = p.handle.join();
        }
        if self.args.cleanup {
            match kernel::down(&self.args.run_dir) {
                Ok(_) => tracing::info!("stopped; everything multiwan installed was removed"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "cleanup failed"),
            }
        } else {
            tracing::info!("stopped; the data plane stays in place (fail-static)");
        }
        let _ = std::fs::remove_file(self.args.run_dir.join("state.json"));
        let _ = std::fs::remove_file(crate::control::socket_path(&self.args.run_dir));
    }

    fn snapshot(&self) -> server::Snapshot {
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        server::Snapshot {
            cfg: self.cfg.clone(),
            config_path: self.args.config.display().to_string(),
            pid: std::process::id(),
            started: unix(self.started),
            reconciles: self.reconciles,
            ids: self.ids.clone(),
            facts: self.facts.clone(),
            uplinks: self
                .uplinks
                .iter()
                .map(|(n, rt)| {
                    (
                        n.clone(),
                        server::UplinkSnap {
                            state: rt.monitor.state().clone(),
                            since: unix(rt.since_wall),
                            disabled: self.disabled.contains(n),
                            stats: rt.monitor.stats(),
                            targets: rt.monitor.target_stats(),
                            counters: rt.counters.clone(),
                        },
                    )
                })
                .collect(),
            usable: health::usable(&self.cfg, &self.states()),
            policies: self
                .last_plan
                .as_ref()
                .map(|p| p.policies.clone())
                .unwrap_or_default(),
        }
    }

    fn broadcast_probes(&mut self) {
        if self.subscribers.is_empty() {
            return;
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for u in &self.cfg.uplinks {
            let Some(rt) = self.uplinks.get(&u.name) else {
                continue;
            };
            let s = rt.monitor.stats();
            let ev = crate::control::WatchEvent::Probes {
                time_ms,
                uplink: u.name.clone(),
                state: rt.monitor.state().name().to_string(),
                rtt_last_ms: s.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                rtt_avg_ms: s.avg_rtt.map(|d| d.as_secs_f64() * 1000.0),
                loss_percent: s.loss_percent(),
            };
            self.subscribers.retain(|tx| tx.send(ev.clone()).is_ok());
        }
    }

    /// Administrative drain (`enable = false`) or undrain of an uplink.
    fn admin(
        &mut self,
        name: &str,
        enable: bool,
    ) -> std::result::Result<crate::control::Ack, String> {
        let now = Instant::now();
        let t = match self.uplinks.get_mut(name) {
            Some(rt) => rt.monitor.set_disabled(!enable, now),
            None => {
                let known: Vec<&str> = self.cfg.uplinks.iter().map(|u| u.name.as_str()).collect();
                return Err(format!(
                    "no uplink named {name:?} (known: {})",
                    known.join(", ")
                ));
            }
        };
        if enable {
            self.disabled.remove(name);
        } else {
            self.disabled.insert(name.to_string());
        }
        let path = self.args.run_dir.join("disabled.json");
        if let Err(e) = serde_json::to_vec(&self.disabled)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b))
        {
            tracing::warn!(error = %e, "cannot persist {}", path.display());
        }
        tracing::info!(uplink = name, enabled = enable, "administrative change");
        if let Some(t) = t {
            self.on_transition(name, t);
        }
        self.reconcile();
        let state = self
            .uplinks
            .get(name)
            .map(|rt| rt.monitor.state().to_string())
            .unwrap_or_default();
        Ok(crate::control::Ack {
            uplink: name.to_string(),
            state,
        })
    }

    fn write_state(&self) {
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let usable = health::usable(&self.cfg, &self.states());
        let state = StateFile {
            version: 1,
            pid: std::process::id(),
            started: unix(self.started),
            reconciles: self.reconciles,
            uplinks: self
                .cfg
                .uplinks
                .iter()
                .filter_map(|u| {
                    let rt = self.uplinks.get(&u.name)?;
                    let s = rt.monitor.state();
                    let stats = rt.monitor.stats();
                    Some(UplinkState {
                        name: u.name.clone(),
                        interface: u.interface.clone(),
                        state: s.name().to_string(),
                        reason: s.reason().map(|r| r.code().to_string()),
                        detail: s.reason().map(|r| r.to_string()),
                        since: unix(rt.since_wall),
                        usable: usable.contains(&u.name),
                        loss_percent: stats.loss_percent(),
                        rtt_ms: stats.avg_rtt.map(|d| d.as_secs_f64() * 1000.0),
                        targets: u
                            .check
                            .targets
                            .iter()
                            .zip(rt.monitor.target_stats())
                            .map(|(t, s)| TargetState {
                                target: if t.port() == 0 {
                                    t.ip().to_string()
                                } else {
                                    t.to_string()
                                },
                                loss_percent: s.loss_percent(),
                                rtt_ms: s.avg_rtt.map(|d| d.as_secs_f64() * 1000.0),
                                last_rtt_ms: s.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                            })
                            .collect(),
                    })
                })
                .collect(),
        };
        let path = self.args.run_dir.join("state.json");
        let tmp = self.args.run_dir.join("state.json.tmp");
        let written = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write {}", path.display());
        }
    }
}

/// `state.json`: the daemon's view, for scripts and the tests (version 1).
#[derive(Debug, Serialize)]
struct StateFile {
    version: u32,
    pid: u32,
    started: u64,
    reconciles: u64,
    uplinks: Vec<UplinkState>,
}

#[derive(Debug, Serialize)]
struct UplinkState {
    name: String,
    interface: String,
    state: String,
    reason: Option<String>,
    detail: Option<String>,
    since: u64,
    usable: bool,
    loss_percent: f64,
    rtt_ms: Option<f64>,
    targets: Vec<TargetState>,
}

#[derive(Debug, Serialize)]
struct TargetState {
    target: String,
    loss_percent: f64,
    rtt_ms: Option<f64>,
    last_rtt_ms: Option<f64>,
}
