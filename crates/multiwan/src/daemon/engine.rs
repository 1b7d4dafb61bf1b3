//! The daemon's decisions, as plain synchronous handlers over a [`Kernel`]: probe rounds,
//! kernel changes, reloads, operator requests and the periodic tick go in (with the time as an
//! argument), kernel updates, conntrack flushes, hook calls and watch events come out. No
//! thread, socket or clock lives here, so the logic runs against `kernel::fake` in tests with
//! scripted time; `daemon::run` wires it to the real kernel, the probers and the listeners.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multiwan_core::correlate::{target_label, Correlator};
use multiwan_core::health::{self, LinkStatus, Monitor, State, Transition};
use multiwan_core::model::OnUplinkDown;
use multiwan_core::plan::{assign_ids, plan};
use multiwan_core::{Config, Facts, Plan};
use serde::Serialize;

use super::hooks::HookCall;
use super::probe::ProbeSpec;
use super::server;
use crate::control::WatchEvent;
use crate::kernel::events::Change;
use crate::kernel::Kernel;

/// How often the kernel is verified against the plan even without a notification (nft
/// changes are not reported over rtnetlink).
pub const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// How often RTT and loss are published (state.json, watch).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// One uplink's runtime state next to its config.
pub struct UplinkRt {
    pub monitor: Monitor,
    pub since_wall: SystemTime,
    pub counters: server::Counters,
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

/// What the kernel says about an uplink's interface (and its learned gateway).
pub fn link_status(facts: &Facts, u: &multiwan_core::model::Uplink) -> LinkStatus {
    match facts.links.as_ref().and_then(|l| l.get(&u.interface)) {
        None => LinkStatus::Missing,
        Some(l) if !l.up => LinkStatus::Down,
        Some(l) if l.addrs.is_empty() => LinkStatus::NoAddress,
        Some(l) if u.gateway_auto && l.gateway.is_none() => LinkStatus::NoGateway,
        Some(_) => LinkStatus::Ok,
    }
}

fn auto_gateways(cfg: &Config) -> BTreeSet<String> {
    cfg.uplinks
        .iter()
        .filter(|u| u.gateway_auto)
        .map(|u| u.interface.clone())
        .collect()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds with two decimals, for log fields the benchmarks read.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn unix_s(t: SystemTime) -> u64 {
    unix_ms(t) / 1000
}

/// The daemon's state.
pub struct Engine<K: Kernel> {
    pub kernel: K,
    pub cfg: Config,
    config_path: String,
    run_dir: PathBuf,
    pub ids: BTreeMap<String, u32>,
    pub uplinks: BTreeMap<String, UplinkRt>,
    pub facts: Facts,
    /// Something changed that the kernel must reflect.
    dirty: bool,
    /// Uplinks that went down since the last reconcile and whose connections go.
    to_flush: BTreeSet<String>,
    pub last_plan: Option<Plan>,
    pub reconciles: u64,
    started: SystemTime,
    subscribers: Vec<server::Subscriber>,
    /// Uplinks disabled by the operator (persisted in the run directory).
    disabled: BTreeSet<String>,
    /// Hook calls to run, in order (drained by the runtime).
    pub hook_calls: Vec<HookCall>,
    last_verify: Instant,
    last_publish: Instant,
    /// The probers' configuration changed: restart them.
    pub probers_stale: bool,
    correlator: Correlator,
    /// The uplinks taking new connections as last planned.
    usable_now: BTreeSet<String>,
    /// The last usable set while not failing open (what fail-open keeps).
    last_usable: BTreeSet<String>,
    /// Every uplink is down by probes alone and the last ones are kept.
    pub failing_open: bool,
}

impl<K: Kernel> Engine<K> {
    /// Reads the interfaces and the installed ids (adopting a running data plane), and starts
    /// every uplink from its link state (optimistic: a working link is up at once).
    pub fn new(
        mut kernel: K,
        cfg: Config,
        config_path: String,
        run_dir: PathBuf,
        now: Instant,
    ) -> anyhow::Result<Self> {
        let facts = kernel.facts(&auto_gateways(&cfg))?;
        let installed = kernel.ids(cfg.kernel.mark_mask)?;
        let ids = assign_ids(&cfg, &installed)?;
        let cfg_for_correlator = cfg.clone();
        let disabled: BTreeSet<String> = crate::rundir::read_file(&run_dir, "disabled.json")
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default();
        let uplinks = cfg
            .uplinks
            .iter()
            .map(|u| {
                let mut m = Monitor::new(&u.check, link_status(&facts, u), now);
                if disabled.contains(&u.name) {
                    m.set_disabled(true, now);
                }
                tracing::info!(uplink = %u.name, state = %m.state(), "initial state");
                (u.name.clone(), UplinkRt::new(m))
            })
            .collect();
        Ok(Self {
            kernel,
            cfg,
            config_path,
            run_dir,
            ids,
            uplinks,
            facts,
            dirty: true,
            to_flush: BTreeSet::new(),
            last_plan: None,
            reconciles: 0,
            started: SystemTime::now(),
            subscribers: Vec::new(),
            disabled,
            hook_calls: Vec::new(),
            last_verify: now,
            last_publish: now,
            probers_stale: true,
            correlator: Correlator::new(&cfg_for_correlator),
            usable_now: BTreeSet::new(),
            last_usable: BTreeSet::new(),
            failing_open: false,
        })
    }

    /// What the prober needs for every uplink.
    pub fn probe_specs(&self) -> Vec<ProbeSpec> {
        self.cfg
            .uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| ProbeSpec {
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
                witness: self.witness(u),
            })
            .collect()
    }

    /// The gateway to ping as a correlation witness, unless it is a target already.
    fn witness(&self, u: &multiwan_core::model::Uplink) -> Option<std::net::Ipv4Addr> {
        let gw = u.gateway.or_else(|| {
            self.facts
                .links
                .as_ref()
                .and_then(|l| l.get(&u.interface))
                .and_then(|l| l.gateway)
        })?;
        let probed = u.check.method == multiwan_core::model::CheckMethod::Icmp
            && u.check.targets.iter().any(|t| *t.ip() == gw);
        (!probed).then_some(gw)
    }

    /// The longest time between two rounds of any uplink: what "the prober makes progress"
    /// is measured against.
    pub fn slowest_round(&self) -> Duration {
        self.cfg
            .uplinks
            .iter()
            .map(|u| u.check.interval + u.check.timeout)
            .max()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Probe rounds finished (one prober wake-up's worth): (uplink, per-target results,
    /// gateway witness). Targets are correlated across uplinks first, so a target failing on
    /// every uplink at once while they demonstrably work is suspect and does not count.
    pub fn on_rounds(&mut self, batch: &[super::RoundReport], now: Instant) {
        for (uplink, results, witness) in batch {
            let eligible = self
                .uplinks
                .get(uplink)
                .is_some_and(|u| !self.disabled.contains(uplink) && u.monitor.link_ok());
            self.correlator
                .record(uplink, results, *witness, eligible, now);
        }
        let change = self.correlator.update();
        for k in &change.became_suspect {
            tracing::warn!(
                target = %target_label(k),
                "probe target fails on every uplink while they work: suspect, not counted until it answers again"
            );
        }
        for k in &change.cleared {
            tracing::info!(target = %target_label(k), "probe target answers again");
        }
        for (uplink, results, witness) in batch {
            let excluded = self.correlator.excluded(uplink);
            self.on_round(uplink, results, &excluded, *witness, now);
        }
    }

    fn on_round(
        &mut self,
        uplink: &str,
        results: &[Option<Duration>],
        excluded: &[bool],
        witness: Option<bool>,
        now: Instant,
    ) {
        let Some(u) = self.uplinks.get_mut(uplink) else {
            return;
        };
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
        if let Some(t) = u.monitor.round_judged(results, excluded, witness, now) {
            self.on_transition(uplink, t);
        }
    }

    /// The kernel reported `change`.
    pub fn on_kernel_changed(&mut self, change: Change, now: Instant) {
        if change.links || change.gateways {
            let facts = match self.kernel.facts(&auto_gateways(&self.cfg)) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot read interfaces");
                    return;
                }
            };
            if facts != self.facts {
                let before = self.probe_specs();
                self.facts = facts;
                // A learned gateway changed: the witness probes follow it.
                if self.probe_specs() != before {
                    self.probers_stale = true;
                }
                // Addresses feed source rules and routes even when no state changes.
                self.dirty = true;
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
                return;
            }
        }
        // Nothing we plan from changed, but something did: if it was our state (a route or
        // rule of ours removed by hand), put it back.
        if !self.dirty {
            self.repair_drift(now);
        }
    }

    /// Re-applies the last plan if the kernel no longer matches it.
    fn repair_drift(&mut self, now: Instant) {
        self.last_verify = now;
        if let Some(p) = &self.last_plan {
            if let Err(e) = self.kernel.verify(p) {
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
        let timeout = self
            .cfg
            .uplinks
            .iter()
            .find(|u| u.name == uplink)
            .map(|u| u.check.timeout)
            .unwrap_or_default();
        if let Some(rt) = self.uplinks.get_mut(uplink) {
            rt.since_wall = SystemTime::now();
            *rt.counters
                .transitions
                .entry(t.to.name().to_string())
                .or_default() += 1;
            if matches!(t.to, State::Down(health::Reason::ProbesFailing { .. })) {
                // The streak's first round was sent about `timeout` before it finished.
                rt.failover_from = rt
                    .monitor
                    .failing_since()
                    .map(|t| t.checked_sub(timeout).unwrap_or(t));
            }
        }
        let ev = WatchEvent::Transition {
            time_ms: unix_ms(SystemTime::now()),
            uplink: uplink.to_string(),
            from: t.from.name().to_string(),
            to: t.to.name().to_string(),
            reason: t.to.reason().map(|r| r.code().to_string()),
            detail: t.to.reason().map(|r| r.to_string()),
        };
        self.broadcast(ev);
        // An operator's drain lets established connections finish; a failure flushes them.
        if matches!(t.to, State::Down(ref r) if *r != health::Reason::AdminDisabled)
            && !matches!(t.from, State::Down(_))
            && self.cfg.balance.on_uplink_down == OnUplinkDown::Flush
        {
            self.to_flush.insert(uplink.to_string());
        }
        if self.cfg.daemon.hook.is_some() {
            let interface = self
                .cfg
                .uplinks
                .iter()
                .find(|u| u.name == uplink)
                .map(|u| u.interface.clone())
                .unwrap_or_default();
            self.hook_calls.push(HookCall {
                uplink: uplink.to_string(),
                interface,
                old_state: t.from.name().to_string(),
                new_state: t.to.name().to_string(),
                reason: t.to.reason().map(|r| r.code()).unwrap_or("").to_string(),
            });
        }
        self.dirty = true;
    }

    fn broadcast(&mut self, ev: WatchEvent) {
        // A subscriber whose queue is full is too slow: it is dropped, never waited for.
        self.subscribers.retain(|s| s.try_send(ev.clone()).is_ok());
    }

    /// Every uplink's state.
    pub fn states(&self) -> BTreeMap<String, State> {
        self.uplinks
            .iter()
            .map(|(n, u)| (n.clone(), u.monitor.state().clone()))
            .collect()
    }

    /// The uplinks to plan with, failing open when probes alone took every one down.
    fn compute_usable(&mut self) -> BTreeSet<String> {
        let (u, open) = health::usable_fail_open(&self.cfg, &self.states(), &self.last_usable);
        if open && !self.failing_open {
            tracing::warn!(
                kept = ?u,
                "every uplink fails its probes: failing open, the uplinks in use stay in use (a dead probe target, or every ISP down at once)"
            );
        } else if !open && self.failing_open {
            tracing::info!(usable = ?u, "an uplink passes its probes again: fail-open ends");
        }
        self.failing_open = open;
        if !open && !u.is_empty() {
            self.last_usable = u.clone();
        }
        self.usable_now = u.clone();
        u
    }

    /// Whether the kernel still has to be updated.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Makes the kernel match the current health and facts: plan, apply the difference, then
    /// delete the conntrack entries of uplinks that just went down. A failure keeps `dirty`,
    /// so the next event or tick retries.
    pub fn reconcile(&mut self, now: Instant) {
        let usable = self.compute_usable();
        let p = plan(&self.cfg, &self.ids, &usable, &self.facts);
        if self.last_plan.as_ref() != Some(&p) {
            let started = Instant::now();
            match self.kernel.apply(&p) {
                Ok(r) => {
                    self.reconciles += 1;
                    tracing::info!(
                        took_ms = ms(started.elapsed()),
                        usable = ?usable,
                        nft_replaced = r.nft_replaced,
                        policies = r.policies_updated,
                        rules = r.rules_added + r.rules_removed,
                        routes = r.routes_changed + r.routes_removed,
                        "kernel updated"
                    );
                    self.last_plan = Some(p);
                    for rt in self.uplinks.values_mut() {
                        if let Some(from) = rt.failover_from.take() {
                            rt.counters.last_failover_s =
                                Some(now.saturating_duration_since(from).as_secs_f64());
                        }
                    }
                }
                Err(e) => {
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
            let started = Instant::now();
            match self.kernel.flush(mark, self.cfg.kernel.mark_mask) {
                Ok(()) => tracing::info!(
                    uplink = %name,
                    took_ms = ms(started.elapsed()),
                    "flushed the uplink's connections"
                ),
                Err(e) => {
                    tracing::warn!(uplink = %name, error = %format!("{e:#}"), "cannot flush connections")
                }
            }
        }
        self.dirty = false;
        self.last_publish = now;
        self.write_state();
    }

    /// The periodic work: verify the kernel every [`VERIFY_EVERY`], publish RTT and loss
    /// every [`PUBLISH_EVERY`], and retry a failed update.
    pub fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_verify) >= VERIFY_EVERY {
            self.on_kernel_changed(Change::ALL, now);
            self.repair_drift(now);
        }
        if self.dirty {
            self.reconcile(now);
        } else if now.saturating_duration_since(self.last_publish) >= PUBLISH_EVERY {
            self.write_state();
            self.broadcast_probes();
            self.last_publish = now;
        }
    }

    /// Applies a newly read config (`None` when it was invalid: the running state stays).
    pub fn reload(&mut self, cfg: Option<Config>, now: Instant) {
        let Some(cfg) = cfg else {
            tracing::error!("reload rejected: the running configuration stays");
            return;
        };
        let ids = match assign_ids(&cfg, &self.ids) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "reload rejected: the running configuration stays");
                return;
            }
        };
        let mut uplinks = BTreeMap::new();
        for u in &cfg.uplinks {
            let old = self.cfg.uplinks.iter().find(|o| o.name == u.name);
            let keep = old.is_some_and(|o| o.interface == u.interface && o.check == u.check);
            let rt = match self.uplinks.remove(&u.name) {
                Some(rt) if keep => rt,
                _ => {
                    let mut m = Monitor::new(&u.check, link_status(&self.facts, u), now);
                    if self.disabled.contains(&u.name) {
                        m.set_disabled(true, now);
                    }
                    UplinkRt::new(m)
                }
            };
            uplinks.insert(u.name.clone(), rt);
        }
        let gateways_changed = auto_gateways(&cfg) != auto_gateways(&self.cfg);
        self.correlator = Correlator::new(&cfg);
        self.cfg = cfg;
        self.ids = ids;
        self.uplinks = uplinks;
        self.probers_stale = true;
        self.dirty = true;
        if gateways_changed {
            self.on_kernel_changed(Change::ALL, now);
        }
        tracing::info!(uplinks = self.cfg.uplinks.len(), "configuration reloaded");
    }

    /// Stops: removes everything with `cleanup`, else leaves the data plane (fail-static).
    pub fn stop(&mut self, cleanup: bool) {
        if cleanup {
            match self.kernel.down() {
                Ok(_) => tracing::info!("stopped; everything multiwan installed was removed"),
                Err(e) => tracing::error!(error = %format!("{e:#}"), "cleanup failed"),
            }
        } else {
            tracing::info!("stopped; the data plane stays in place (fail-static)");
        }
        let _ = std::fs::remove_file(self.run_dir.join("state.json"));
    }

    /// A new `watch` client.
    pub fn subscribe(&mut self, tx: server::Subscriber) {
        self.subscribers.push(tx);
    }

    /// What a control or metrics request sees.
    pub fn snapshot(&self) -> server::Snapshot {
        server::Snapshot {
            cfg: self.cfg.clone(),
            config_path: self.config_path.clone(),
            pid: std::process::id(),
            started: unix_s(self.started),
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
                            since: unix_s(rt.since_wall),
                            disabled: self.disabled.contains(n),
                            stats: rt.monitor.stats(),
                            targets: rt.monitor.target_stats(),
                            counters: rt.counters.clone(),
                        },
                    )
                })
                .collect(),
            usable: self.usable_now.clone(),
            fail_open: self.failing_open,
            suspect: self.correlator.suspects().clone(),
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
        let time_ms = unix_ms(SystemTime::now());
        let mut events = Vec::new();
        for u in &self.cfg.uplinks {
            let Some(rt) = self.uplinks.get(&u.name) else {
                continue;
            };
            let s = rt.monitor.stats();
            events.push(WatchEvent::Probes {
                time_ms,
                uplink: u.name.clone(),
                state: rt.monitor.state().name().to_string(),
                rtt_last_ms: s.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                rtt_avg_ms: s.avg_rtt.map(|d| d.as_secs_f64() * 1000.0),
                loss_percent: s.loss_percent(),
            });
        }
        for ev in events {
            self.broadcast(ev);
        }
    }

    /// Administrative drain (`enable = false`) or undrain of an uplink.
    pub fn admin(
        &mut self,
        name: &str,
        enable: bool,
        now: Instant,
    ) -> Result<crate::control::Ack, String> {
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
        let written = serde_json::to_vec(&self.disabled)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::rundir::write_file_atomic(&self.run_dir, "disabled.json", &b));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot persist disabled.json");
        }
        tracing::info!(uplink = name, enabled = enable, "administrative change");
        if let Some(t) = t {
            self.on_transition(name, t);
        }
        self.reconcile(now);
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

    /// Writes `state.json` (atomically).
    pub fn write_state(&self) {
        let usable = &self.usable_now;
        let state = StateFile {
            version: 1,
            pid: std::process::id(),
            started: unix_s(self.started),
            reconciles: self.reconciles,
            fail_open: self.failing_open,
            uplinks: self
                .cfg
                .uplinks
                .iter()
                .filter_map(|u| {
                    let rt = self.uplinks.get(&u.name)?;
                    Some(uplink_state(
                        u,
                        rt,
                        usable.contains(&u.name),
                        self.correlator.suspects(),
                    ))
                })
                .collect(),
        };
        let written = serde_json::to_vec_pretty(&state)
            .map_err(std::io::Error::other)
            .and_then(|b| crate::rundir::write_file_atomic(&self.run_dir, "state.json", &b));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write state.json");
        }
    }
}

fn uplink_state(
    u: &multiwan_core::model::Uplink,
    rt: &UplinkRt,
    usable: bool,
    suspect: &BTreeSet<multiwan_core::correlate::TargetKey>,
) -> UplinkState {
    let s = rt.monitor.state();
    let stats = rt.monitor.stats();
    UplinkState {
        name: u.name.clone(),
        interface: u.interface.clone(),
        state: s.name().to_string(),
        reason: s.reason().map(|r| r.code().to_string()),
        detail: s.reason().map(|r| r.to_string()),
        since: unix_s(rt.since_wall),
        usable,
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
                suspect: suspect.contains(&(u.check.method, *t)),
            })
            .collect(),
    }
}

/// `state.json`: the daemon's view, for scripts and the tests (version 1).
#[derive(Debug, Serialize)]
struct StateFile {
    version: u32,
    pid: u32,
    started: u64,
    reconciles: u64,
    /// Every uplink is down by probes alone and the ones in use stay in use.
    fail_open: bool,
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
    /// Fails on every uplink at once while they work: not counted.
    suspect: bool,
    loss_percent: f64,
    rtt_ms: Option<f64>,
    last_rtt_ms: Option<f64>,
}

#[cfg(test)]
mod tests;
