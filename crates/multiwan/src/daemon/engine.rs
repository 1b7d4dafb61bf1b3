//! The daemon's decisions, as plain synchronous handlers over a [`Kernel`]: probe rounds,
//! kernel changes, reloads, operator requests and the periodic tick go in (with the time as an
//! argument), kernel updates, conntrack flushes, hook calls and watch events come out. No
//! thread, socket or clock lives here, so the logic runs against `kernel::fake` in tests with
//! scripted time; `daemon::run` wires it to the real kernel, the probers and the listeners.
//!
//! Health is per family: an uplink with `gateway6` has an IPv4 and an IPv6 monitor, each fed
//! by its own targets, so when only one family's path breaks only that family moves.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multiwan_core::correlate::{target_label, Correlator};
use multiwan_core::health::{self, LinkStatus, Monitor, Reason, State, Transition};
use multiwan_core::model::{CheckMethod, OnUplinkDown, Uplink};
use multiwan_core::plan::{assign_ids, off_link_gateway6, plan_dual, Family};
use multiwan_core::{Config, Facts, Plan};

use super::hooks::HookCall;
use super::probe::ProbeSpec;
use super::snapshot;
use super::RoundReport;
use crate::control::WatchEvent;
use crate::kernel::events::Change;
use crate::kernel::{Kernel, RouteRefused};
use multiwan_core::order::Collect;

mod state;

/// How often the kernel is verified against the plan even without a notification (nft
/// changes are not reported over rtnetlink).
pub const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// How often RTT and loss are published (state.json, watch).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often a learned gateway is read again while its uplink family is down by its probes:
/// the kernel may have found that router unreachable (neighbour unreachability detection)
/// while another router's default route stands beside it, and nothing is announced over
/// netlink when a neighbour fails (see `System::learned_gateway`).
pub const GATEWAY_RECHECK: Duration = Duration::from_secs(5);

/// The first wait before the same plan is tried again after an update failed; doubled
/// per failure up to [`RETRY_MAX`], back to this on success or when the plan changes.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of the same failed plan.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// A kernel update that failed: what is retried when, and how often its error repeated.
struct Failing {
    /// The plan that failed; a different one is tried at once (something changed).
    plan: Plan,
    /// The error, as logged.
    error: String,
    /// Failures in a row with this error (logged at 1, 2, 4, 8, …).
    repeats: u64,
    /// The wait before the next try of `plan`.
    delay: Duration,
    retry_at: Instant,
    /// When the first failure with this error happened (for `status`).
    since: SystemTime,
}

impl Failing {
    /// What `status` and `state.json` show of it.
    fn shown(&self) -> crate::control::KernelError {
        crate::control::KernelError {
            error: self.error.clone(),
            since: unix_s(self.since),
            failures: self.repeats,
            retry_in_ms: u64::try_from(self.delay.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// One family of one uplink: its monitor and what the daemon keeps about it.
pub struct FamRt {
    pub monitor: Monitor,
    pub since_wall: SystemTime,
    pub counters: snapshot::Counters,
    /// A failover in progress: the streak's start, until the kernel is updated.
    failover_from: Option<Instant>,
}

impl FamRt {
    fn new(monitor: Monitor) -> Self {
        Self {
            monitor,
            since_wall: SystemTime::now(),
            counters: snapshot::Counters::default(),
            failover_from: None,
        }
    }
}

/// One uplink's runtime state: IPv4, and IPv6 when it carries it.
pub struct UplinkRt {
    pub v4: FamRt,
    pub v6: Option<FamRt>,
}

impl UplinkRt {
    /// The family's state, if the uplink carries it.
    pub fn fam(&self, family: Family) -> Option<&FamRt> {
        match family {
            Family::V4 => Some(&self.v4),
            Family::V6 => self.v6.as_ref(),
        }
    }

    fn fam_mut(&mut self, family: Family) -> Option<&mut FamRt> {
        match family {
            Family::V4 => Some(&mut self.v4),
            Family::V6 => self.v6.as_mut(),
        }
    }

    /// Its IPv4 monitor (every uplink has one).
    pub fn monitor(&self) -> &Monitor {
        &self.v4.monitor
    }
}

/// What the kernel says about an uplink's interface for `family` (and its learned gateway),
/// and whether the family's route can be installed: a fixed gateway off the link, or a route
/// the kernel refused, keeps the family down while the rest of the plan is installed.
pub fn link_status(facts: &Facts, u: &Uplink, family: Family) -> LinkStatus {
    let Some(l) = facts.links.as_ref().and_then(|l| l.get(&u.interface)) else {
        return LinkStatus::Missing;
    };
    if !l.up {
        return LinkStatus::Down;
    }
    let status = match family {
        Family::V4 if l.addrs.is_empty() => LinkStatus::NoAddress,
        Family::V4 if u.gateway_auto && l.gateway.is_none() => LinkStatus::NoGateway,
        Family::V6 if l.addrs6.is_empty() => LinkStatus::NoAddress,
        Family::V6
            if u.ipv6.as_ref().is_some_and(|v| v.gateway.is_none()) && l.gateway6.is_none() =>
        {
            LinkStatus::NoGateway
        }
        _ => LinkStatus::Ok,
    };
    let off_link = match family {
        Family::V4 => None,
        Family::V6 => off_link_gateway6(u, facts),
    };
    match off_link {
        _ if status != LinkStatus::Ok => status,
        Some(g) => LinkStatus::GatewayOffLink(IpAddr::V6(g)),
        None if facts.is_refused(&u.name, family) => LinkStatus::RouteRefused,
        None => LinkStatus::Ok,
    }
}

/// The interfaces whose gateway of `family` is learned (`auto`).
/// Whether `u`'s `family` follows a learned gateway (`gateway = "auto"`, `gateway6 = "auto"`).
fn follows_learned(u: &Uplink, family: Family) -> bool {
    match family {
        Family::V4 => u.gateway_auto,
        Family::V6 => u.ipv6.as_ref().is_some_and(|v| v.gateway.is_none()),
    }
}

fn auto_gateways(cfg: &Config, family: Family) -> BTreeSet<String> {
    cfg.uplinks
        .iter()
        .filter(|u| follows_learned(u, family))
        .map(|u| u.interface.clone())
        .collect_set()
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

fn idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

/// The per-family health of the daemon.
#[derive(Default)]
struct FamilyState {
    correlator: Correlator,
    /// The uplinks taking new connections as last planned.
    usable_now: BTreeSet<String>,
    /// The last usable set while not failing open (what fail-open keeps).
    last_usable: BTreeSet<String>,
    /// Every uplink of this family is down by probes alone and the last ones are kept.
    failing_open: bool,
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
    /// (uplink, family) that went down since the last reconcile and whose connections go.
    to_flush: BTreeSet<(String, Family)>,
    pub last_plan: Option<Plan>,
    pub reconciles: u64,
    /// Kernel updates that failed since start (refused routes not counted: those leave
    /// their uplink family out and the rest goes in).
    kernel_failures: u64,
    started: SystemTime,
    subscribers: Vec<snapshot::Subscriber>,
    /// Uplinks disabled by the operator (persisted in the run directory).
    disabled: BTreeSet<String>,
    /// Hook calls to run, in order (drained by the runtime).
    pub hook_calls: Vec<HookCall>,
    last_verify: Instant,
    last_publish: Instant,
    /// When the learned gateways were last read again for a failing uplink family.
    last_gateway_check: Instant,
    /// The probers' configuration changed: restart them.
    pub probers_stale: bool,
    families: [FamilyState; 2],
    /// The last kernel update failed: backing off.
    failing: Option<Failing>,
}

fn family_states(cfg: &Config) -> [FamilyState; 2] {
    Family::ALL.map(|f| FamilyState {
        correlator: Correlator::new(cfg, f),
        ..FamilyState::default()
    })
}

/// A fresh runtime for `u`, each family starting from its link state.
fn new_rt(u: &Uplink, facts: &Facts, disabled: bool, now: Instant) -> UplinkRt {
    UplinkRt {
        v4: new_fam(u, Family::V4, &u.check, facts, disabled, now),
        v6: u
            .ipv6
            .as_ref()
            .map(|v| new_fam(u, Family::V6, &v.check, facts, disabled, now)),
    }
}

/// A fresh monitor of one family of `u`, starting from its link state.
fn new_fam(
    u: &Uplink,
    family: Family,
    check: &multiwan_core::model::Check,
    facts: &Facts,
    disabled: bool,
    now: Instant,
) -> FamRt {
    let mut m = Monitor::new(check, link_status(facts, u, family), now);
    if disabled {
        m.set_disabled(true, now);
    }
    tracing::info!(uplink = %u.name, %family, state = %m.state(), "initial state");
    FamRt::new(m)
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
        let facts = kernel.facts(
            &auto_gateways(&cfg, Family::V4),
            &auto_gateways(&cfg, Family::V6),
        )?;
        let installed = kernel.ids(cfg.kernel.mark_mask)?;
        let ids = assign_ids(&cfg, &installed)?;
        let disabled: BTreeSet<String> = crate::rundir::read_file(&run_dir, "disabled.json")
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str(std::str::from_utf8(&t).ok()?).ok())
            .unwrap_or_default();
        let uplinks = cfg
            .uplinks
            .iter()
            .map(|u| {
                let rt = new_rt(u, &facts, disabled.contains(&u.name), now);
                (u.name.clone(), rt)
            })
            .collect_map();
        let families = family_states(&cfg);
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
            kernel_failures: 0,
            started: SystemTime::now(),
            subscribers: Vec::new(),
            disabled,
            hook_calls: Vec::new(),
            last_verify: now,
            last_publish: now,
            last_gateway_check: now,
            probers_stale: true,
            families,
            failing: None,
        })
    }

    /// What the prober needs: one spec per uplink and family.
    pub fn probe_specs(&self) -> Vec<ProbeSpec> {
        let mut out = Vec::new();
        for u in &self.cfg.uplinks {
            for family in Family::ALL {
                let Some(check) = u.check_of(family) else {
                    continue;
                };
                out.push(ProbeSpec {
                    uplink: u.name.as_str().into(),
                    family,
                    ifname: u.interface.clone(),
                    mark: self
                        .cfg
                        .kernel
                        .mark_of(self.ids.get(&u.name).copied().unwrap_or(0)),
                    method: check.method,
                    targets: check.targets.clone(),
                    interval: check.interval,
                    timeout: check.timeout,
                    ident: (std::process::id() as u16)
                        .wrapping_mul(31)
                        .wrapping_add(out.len() as u16),
                    witness: self.witness(u, family),
                    urgent_rounds: check.down_after + check.up_after,
                });
            }
        }
        out
    }

    /// The gateway to ping as a correlation witness, unless it is a target already.
    fn witness(&self, u: &Uplink, family: Family) -> Option<IpAddr> {
        let link = self.facts.links.as_ref().and_then(|l| l.get(&u.interface));
        let gw: IpAddr = match family {
            Family::V4 => u.gateway.or_else(|| link.and_then(|l| l.gateway))?.into(),
            Family::V6 => {
                let v6 = u.ipv6.as_ref()?;
                v6.gateway.or_else(|| link.and_then(|l| l.gateway6))?.into()
            }
        };
        let check = u.check_of(family)?;
        let probed =
            check.method == CheckMethod::Icmp && check.targets.iter().any(|t| t.ip() == gw);
        (!probed).then_some(gw)
    }

    /// The longest time between two rounds of any uplink: what "the prober makes progress"
    /// is measured against.
    pub fn slowest_round(&self) -> Duration {
        self.cfg
            .uplinks
            .iter()
            .flat_map(|u| Family::ALL.map(|f| u.check_of(f)))
            .flatten()
            .map(|c| c.interval + c.timeout)
            .max()
            .unwrap_or(Duration::from_secs(1))
    }

    /// Probe rounds finished (one prober wake-up's worth). Each family's targets are
    /// correlated across uplinks first, so a target failing on every uplink at once while
    /// they demonstrably work is suspect and does not count.
    pub fn on_rounds(&mut self, batch: &[RoundReport], now: Instant) {
        for family in Family::ALL {
            let of_family = || batch.iter().filter(move |r| r.family == family);
            for r in of_family() {
                let eligible = self.uplinks.get(&*r.uplink).is_some_and(|u| {
                    !self.disabled.contains(&*r.uplink)
                        && u.fam(family).is_some_and(|f| f.monitor.link_ok())
                });
                self.families[idx(family)]
                    .correlator
                    .record(&r.uplink, &r.results, r.witness, eligible, now);
            }
            let change = self.families[idx(family)].correlator.update();
            for k in &change.became_suspect {
                tracing::warn!(
                    target = %target_label(k),
                    "probe target fails on every uplink while they work: suspect, not counted until it answers again"
                );
            }
            for k in &change.cleared {
                tracing::info!(target = %target_label(k), "probe target answers again");
            }
            for r in of_family() {
                let correlator = &self.families[idx(family)].correlator;
                // Nothing suspect (the usual case): an empty list excludes nothing and
                // costs no allocation per round.
                let excluded = if correlator.suspects().is_empty() {
                    Vec::new()
                } else {
                    correlator.excluded(&r.uplink)
                };
                self.on_round(r, &excluded, now);
            }
        }
    }

    fn on_round(&mut self, r: &RoundReport, excluded: &[bool], now: Instant) {
        let Some(f) = self
            .uplinks
            .get_mut(&*r.uplink)
            .and_then(|u| u.fam_mut(r.family))
        else {
            return;
        };
        let c = &mut f.counters;
        let answered = r.results.iter().flatten().count();
        c.probes_ok += answered as u64;
        c.probes_lost += (r.results.len() - answered) as u64;
        for rtt in r.results.iter().flatten() {
            let secs = rtt.as_secs_f64();
            c.rtt_sum += secs;
            for (i, le) in snapshot::RTT_BUCKETS.iter().enumerate() {
                if secs <= *le {
                    c.rtt_buckets[i] += 1;
                }
            }
        }
        if let Some(t) = f.monitor.round_judged(&r.results, excluded, r.witness, now) {
            self.on_transition(&r.uplink, r.family, t);
        }
    }

    /// Reads the interfaces, addresses and learned gateways; applies them if they changed.
    /// Returns whether they could be read and were unchanged.
    fn reread_facts(&mut self, now: Instant) -> bool {
        let facts = match self.kernel.facts(
            &auto_gateways(&self.cfg, Family::V4),
            &auto_gateways(&self.cfg, Family::V6),
        ) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read interfaces");
                return false;
            }
        };
        // What the kernel refused is tried again once anything here changes.
        let refused = std::mem::take(&mut self.facts.refused);
        if facts == self.facts {
            self.facts.refused = refused;
            return true;
        }
        self.on_new_facts(facts, now);
        false
    }

    /// Whether an uplink family that follows a learned gateway is down by its probes.
    fn learned_gateway_failing(&self) -> bool {
        self.cfg.uplinks.iter().any(|u| {
            Family::ALL.into_iter().any(|family| {
                follows_learned(u, family)
                    && self
                        .uplinks
                        .get(&u.name)
                        .and_then(|rt| rt.fam(family))
                        .is_some_and(|f| {
                            matches!(f.monitor.state(), State::Down(Reason::ProbesFailing { .. }))
                        })
            })
        })
    }

    /// The kernel reported `change`.
    pub fn on_kernel_changed(&mut self, change: Change, now: Instant) {
        if (change.links || change.gateways) && !self.reread_facts(now) {
            return;
        }
        // Nothing we plan from changed, but something did: if it was our state (a route or
        // rule of ours removed by hand), put it back.
        if !self.dirty {
            self.repair_drift(now);
        }
    }

    fn on_new_facts(&mut self, facts: Facts, now: Instant) {
        let before = self.probe_specs();
        self.facts = facts;
        // A learned gateway changed: the witness probes follow it.
        if self.probe_specs() != before {
            self.probers_stale = true;
        }
        // Addresses feed source rules and routes even when no state changes.
        self.dirty = true;
        self.judge_links(now);
    }

    /// Tells every monitor what the facts say about its link, and acts on the transitions.
    fn judge_links(&mut self, now: Instant) {
        let mut transitions = Vec::new();
        for u in &self.cfg.uplinks {
            let Some(rt) = self.uplinks.get_mut(&u.name) else {
                continue;
            };
            for family in Family::ALL {
                let status = link_status(&self.facts, u, family);
                if let Some(f) = rt.fam_mut(family) {
                    if let Some(t) = f.monitor.link(status, now) {
                        transitions.push((u.name.clone(), family, t));
                    }
                }
            }
        }
        for (name, family, t) in transitions {
            self.on_transition(&name, family, t);
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

    fn on_transition(&mut self, uplink: &str, family: Family, t: Transition) {
        let reason =
            t.to.reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "healthy".into());
        tracing::info!(
            uplink,
            %family,
            from = t.from.name(),
            to = t.to.name(),
            state = t.to.name(),
            reason = %reason,
            "uplink {} ({family})",
            t.to.name()
        );
        let u = self.cfg.uplinks.iter().find(|u| u.name == uplink);
        let timeout = u
            .and_then(|u| u.check_of(family))
            .map(|c| c.timeout)
            .unwrap_or_default();
        let interface = u.map(|u| u.interface.clone()).unwrap_or_default();
        if let Some(f) = self.uplinks.get_mut(uplink).and_then(|u| u.fam_mut(family)) {
            f.since_wall = SystemTime::now();
            *f.counters
                .transitions
                .entry(t.to.name().to_string())
                .or_default() += 1;
            if matches!(t.to, State::Down(health::Reason::ProbesFailing { .. })) {
                // The streak's first round was sent about `timeout` before it finished.
                f.failover_from = f
                    .monitor
                    .failing_since()
                    .map(|t| t.checked_sub(timeout).unwrap_or(t));
            }
        }
        self.broadcast(WatchEvent::Transition {
            time_ms: unix_ms(SystemTime::now()),
            uplink: uplink.to_string(),
            family: family.name().to_string(),
            from: t.from.name().to_string(),
            to: t.to.name().to_string(),
            reason: t.to.reason().map(|r| r.code().to_string()),
            detail: t.to.reason().map(|r| r.to_string()),
        });
        // An operator's drain lets established connections finish; a failure flushes them.
        if matches!(t.to, State::Down(ref r) if *r != health::Reason::AdminDisabled)
            && !matches!(t.from, State::Down(_))
            && self.cfg.balance.on_uplink_down == OnUplinkDown::Flush
        {
            self.to_flush.insert((uplink.to_string(), family));
        }
        if self.cfg.daemon.hook.is_some() {
            self.hook_calls.push(HookCall {
                uplink: uplink.to_string(),
                family: family.name().to_string(),
                interface,
                old_state: t.from.name().to_string(),
                new_state: t.to.name().to_string(),
                // Up has no reason of its own: "healthy", as the log line says.
                reason: t
                    .to
                    .reason()
                    .map(|r| r.code())
                    .unwrap_or("healthy")
                    .to_string(),
            });
        }
        self.dirty = true;
    }

    fn broadcast(&mut self, ev: WatchEvent) {
        // A subscriber whose queue is full is too slow: it is dropped, never waited for.
        self.subscribers.retain(|s| s.try_send(ev.clone()).is_ok());
    }

    /// Every uplink's state in `family` (uplinks that carry it).
    pub fn states_of(&self, family: Family) -> BTreeMap<String, State> {
        self.uplinks
            .iter()
            .filter_map(|(n, u)| Some((n.clone(), u.fam(family)?.monitor.state().clone())))
            .collect_map()
    }

    /// Every uplink's IPv4 state.
    pub fn states(&self) -> BTreeMap<String, State> {
        self.states_of(Family::V4)
    }

    /// Whether some family fails open (every uplink of it down by probes alone).
    pub fn failing_open(&self) -> bool {
        self.families.iter().any(|f| f.failing_open)
    }

    /// The uplinks to plan with in `family`, failing open when probes alone took every one
    /// down.
    fn compute_usable(&mut self, family: Family) -> BTreeSet<String> {
        let states = self.states_of(family);
        let fs = &mut self.families[idx(family)];
        let (u, open) = health::usable_fail_open(&self.cfg, &states, &fs.last_usable, family);
        if open && !fs.failing_open {
            tracing::warn!(
                %family,
                kept = ?u,
                "every uplink fails its probes: failing open, the uplinks in use stay in use (a dead probe target, or every ISP down at once)"
            );
        } else if !open && fs.failing_open {
            tracing::info!(%family, usable = ?u, "an uplink passes its probes again: fail-open ends");
        }
        fs.failing_open = open;
        if !open && !u.is_empty() {
            fs.last_usable = u.clone();
        }
        fs.usable_now = u.clone();
        u
    }

    /// Whether the kernel still has to be updated.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Makes the kernel match the current health and facts: plan, apply the difference, then
    /// delete the conntrack entries of uplinks that just went down. A route the kernel refuses
    /// takes its uplink family out of the plan (down, `route_refused`) and the rest is applied
    /// at once. Any other failure keeps `dirty`: the same plan is tried again after
    /// [`RETRY_FIRST`], doubling to [`RETRY_MAX`]; a changed plan at once.
    pub fn reconcile(&mut self, now: Instant) {
        // Each pass ends, or leaves out one more uplink family (of finitely many).
        loop {
            let usable4 = self.compute_usable(Family::V4);
            let usable6 = self.compute_usable(Family::V6);
            let p = plan_dual(&self.cfg, &self.ids, &usable4, &usable6, &self.facts);
            if self.last_plan.as_ref() == Some(&p) {
                // What failed to go in is no longer wanted: the kernel holds what is.
                if let Some(f) = self.failing.take() {
                    tracing::info!(failures = f.repeats, error = %f.error, "the failing kernel update is no longer needed: the kernel holds the plan");
                }
                break;
            }
            if self
                .failing
                .as_ref()
                .is_some_and(|f| f.plan == p && now < f.retry_at)
            {
                return;
            }
            let started = Instant::now();
            match self.kernel.apply(&p) {
                Ok(r) => {
                    tracing::info!(
                        took_ms = ms(started.elapsed()),
                        usable = ?usable4,
                        usable6 = ?usable6,
                        nft_replaced = r.nft_replaced,
                        policies = r.policies_updated,
                        rules = r.rules_added + r.rules_removed,
                        routes = r.routes_changed + r.routes_removed,
                        "kernel updated"
                    );
                    self.applied(p, now);
                    break;
                }
                Err(e) if self.refused(&e, now) => {}
                Err(e) => {
                    self.failed(p, &e, now);
                    return;
                }
            }
        }
        self.flush_failed();
        self.dirty = false;
        self.last_publish = now;
        self.write_state();
    }

    /// `p` is in the kernel.
    fn applied(&mut self, p: Plan, now: Instant) {
        self.reconciles += 1;
        if let Some(f) = self.failing.take() {
            tracing::info!(failures = f.repeats, error = %f.error, "the kernel took the update after failing");
        }
        self.last_plan = Some(p);
        for f in self
            .uplinks
            .values_mut()
            .flat_map(|u| std::iter::once(&mut u.v4).chain(u.v6.as_mut()))
        {
            if let Some(from) = f.failover_from.take() {
                f.counters.last_failover_s =
                    Some(now.saturating_duration_since(from).as_secs_f64());
            }
        }
    }

    /// Whether `e` is the kernel refusing the route of one uplink family not refused before:
    /// it is then recorded in the facts (until they change), and its monitor told.
    fn refused(&mut self, e: &anyhow::Error, now: Instant) -> bool {
        let Some(RouteRefused(route)) = e.downcast_ref::<RouteRefused>() else {
            return false;
        };
        let [hop] = route.nexthops.as_slice() else {
            return false;
        };
        let k = self.cfg.kernel;
        let by_table =
            |u: &&Uplink| self.ids.get(&u.name).map(|id| k.table_of(*id)) == Some(route.table);
        let uplinks = || {
            self.cfg
                .uplinks
                .iter()
                .filter(|u| u.interface == hop.dev && u.has(route.family))
        };
        let Some(name) = uplinks()
            .find(by_table)
            .or_else(|| uplinks().find(|u| !self.facts.is_refused(&u.name, route.family)))
            .map(|u| u.name.clone())
        else {
            return false;
        };
        if !self.facts.refused.insert((name.clone(), route.family)) {
            return false;
        }
        tracing::warn!(
            uplink = %name,
            family = %route.family,
            error = %format!("{e:#}"),
            "the kernel refused the uplink's route: it is left out (down) until its interfaces change; the rest is installed"
        );
        self.judge_links(now);
        true
    }

    /// An update failed for a reason no uplink family explains: wait before trying `p` again,
    /// and log an error once, then again at 2, 4, 8, … repeats.
    fn failed(&mut self, p: Plan, e: &anyhow::Error, now: Instant) {
        self.kernel_failures += 1;
        let error = format!("{e:#}");
        let f = match self.failing.take() {
            Some(mut f) if f.error == error => {
                f.repeats += 1;
                f.delay = if f.plan == p {
                    (f.delay * 2).min(RETRY_MAX)
                } else {
                    RETRY_FIRST
                };
                f.plan = p;
                f
            }
            previous => {
                if let Some(old) = previous {
                    tracing::info!(failures = old.repeats, error = %old.error, "the previous kernel update error ended");
                }
                Failing {
                    plan: p,
                    error,
                    repeats: 1,
                    delay: RETRY_FIRST,
                    retry_at: now,
                    since: SystemTime::now(),
                }
            }
        };
        if f.repeats.is_power_of_two() {
            tracing::error!(
                error = %f.error,
                failures = f.repeats,
                retry_in_ms = f.delay.as_millis() as u64,
                "cannot update the kernel; will retry"
            );
        }
        let first = f.repeats == 1;
        self.failing = Some(Failing {
            retry_at: now + f.delay,
            ..f
        });
        // After `failing` is set: state.json shows the error.
        if first {
            self.write_state();
        }
    }

    /// Deletes the connections of the uplinks (and families) that just went down, except
    /// those fail-open keeps in use: their connections have nowhere better to go, and most
    /// likely work (only the probes fail).
    fn flush_failed(&mut self) {
        for (name, family) in std::mem::take(&mut self.to_flush) {
            if self.families[idx(family)].usable_now.contains(&name) {
                tracing::info!(uplink = %name, %family, "fail-open keeps the uplink in use: its connections are kept");
                continue;
            }
            let Some(id) = self.ids.get(&name) else {
                continue;
            };
            let mark = self.cfg.kernel.mark_of(*id);
            let started = Instant::now();
            match self.kernel.flush(mark, self.cfg.kernel.mark_mask, family) {
                Ok(()) => tracing::info!(
                    uplink = %name,
                    %family,
                    took_ms = ms(started.elapsed()),
                    "flushed the uplink's connections"
                ),
                Err(e) => {
                    tracing::warn!(uplink = %name, %family, error = %format!("{e:#}"), "cannot flush connections")
                }
            }
        }
    }

    /// The periodic work: verify the kernel every [`VERIFY_EVERY`], publish RTT and loss
    /// every [`PUBLISH_EVERY`], and retry a failed update.
    pub fn tick(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_verify) >= VERIFY_EVERY {
            self.on_kernel_changed(Change::ALL, now);
            self.repair_drift(now);
        } else if now.saturating_duration_since(self.last_gateway_check) >= GATEWAY_RECHECK
            && self.learned_gateway_failing()
        {
            self.last_gateway_check = now;
            self.reread_facts(now);
        }
        if self.dirty {
            self.reconcile(now);
        }
        // Published while an update keeps failing too.
        if now.saturating_duration_since(self.last_publish) >= PUBLISH_EVERY {
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
        // Interfaces that now follow a learned gateway: read it before judging their
        // uplinks, which would otherwise start down for want of a gateway until the next read.
        let gateways_changed = Family::ALL
            .iter()
            .any(|f| auto_gateways(&cfg, *f) != auto_gateways(&self.cfg, *f));
        let mut reread = false;
        if gateways_changed {
            match self.kernel.facts(
                &auto_gateways(&cfg, Family::V4),
                &auto_gateways(&cfg, Family::V6),
            ) {
                Ok(facts) => {
                    let refused = std::mem::take(&mut self.facts.refused);
                    self.facts = Facts { refused, ..facts };
                }
                // Read again under the new config below, as any change of the kernel is.
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot read interfaces");
                    reread = true;
                }
            }
        }
        let mut uplinks = BTreeMap::new();
        let mut changed = Vec::new();
        for u in &cfg.uplinks {
            let old = self
                .cfg
                .uplinks
                .iter()
                .find(|o| o.name == u.name && o.interface == u.interface);
            let disabled = self.disabled.contains(&u.name);
            let (prev4, prev6) = match (old, self.uplinks.remove(&u.name)) {
                (Some(_), Some(rt)) => (Some(rt.v4), rt.v6),
                _ => (None, None),
            };
            // Each family's monitor is kept when nothing it judges by changed (adding IPv6
            // to an uplink that is down keeps its IPv4 down), and otherwise continues the old
            // one's verdict under the new check; a state that changes with it (a gateway6
            // now off the link) is a transition like any other: logged, hooked, watched.
            let mut refam =
                |prev: Option<FamRt>, same: bool, family, check: &multiwan_core::model::Check| {
                    match prev {
                        Some(f) if same => f,
                        Some(mut f) => {
                            let link = link_status(&self.facts, u, family);
                            let from = f.monitor.state().clone();
                            f.monitor = f.monitor.rechecked(check, link, now);
                            if disabled {
                                f.monitor.set_disabled(true, now);
                            }
                            let to = f.monitor.state().clone();
                            if to.name() != from.name() {
                                changed.push((
                                    u.name.clone(),
                                    family,
                                    Transition { from, to, at: now },
                                ));
                            }
                            f
                        }
                        None => new_fam(u, family, check, &self.facts, disabled, now),
                    }
                };
            let v4 = refam(
                prev4,
                old.is_some_and(|o| o.check == u.check),
                Family::V4,
                &u.check,
            );
            let v6 = u.ipv6.as_ref().map(|c| {
                let same = old.and_then(|o| o.ipv6.as_ref()) == Some(c);
                refam(prev6, same, Family::V6, &c.check)
            });
            uplinks.insert(u.name.clone(), UplinkRt { v4, v6 });
        }
        self.families = family_states(&cfg);
        self.cfg = cfg;
        self.ids = ids;
        self.uplinks = uplinks;
        for (name, family, t) in changed {
            self.on_transition(&name, family, t);
        }
        self.probers_stale = true;
        self.dirty = true;
        // A new config may route differently (a corrected gateway): try what was refused.
        // The uplinks kept are judged again by the facts read above.
        if !self.facts.refused.is_empty() || gateways_changed {
            self.facts.refused.clear();
            self.judge_links(now);
        }
        if reread {
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
    pub fn subscribe(&mut self, tx: snapshot::Subscriber) {
        self.subscribers.push(tx);
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
            for family in Family::ALL {
                let Some(f) = rt.fam(family) else { continue };
                let s = f.monitor.stats();
                events.push(WatchEvent::Probes {
                    time_ms,
                    uplink: u.name.clone(),
                    family: family.name().to_string(),
                    state: f.monitor.state().name().to_string(),
                    rtt_last_ms: s.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    rtt_avg_ms: s.avg_rtt.map(|d| d.as_secs_f64() * 1000.0),
                    loss_percent: s.loss_percent(),
                });
            }
        }
        for ev in events {
            self.broadcast(ev);
        }
    }

    /// Administrative drain (`enable = false`) or undrain of an uplink (both families); an
    /// unknown name is the asker's mistake (a usage error listing the known names).
    pub fn admin(
        &mut self,
        name: &str,
        enable: bool,
        now: Instant,
    ) -> Result<crate::control::Ack, crate::control::RequestError> {
        let Some(rt) = self.uplinks.get_mut(name) else {
            let known: Vec<&str> = self.cfg.uplinks.iter().map(|u| u.name.as_str()).collect();
            return Err(crate::control::RequestError::usage(format!(
                "no uplink named {name:?} (known: {})",
                known.join(", ")
            )));
        };
        let mut transitions = Vec::new();
        for family in Family::ALL {
            if let Some(f) = rt.fam_mut(family) {
                if let Some(t) = f.monitor.set_disabled(!enable, now) {
                    transitions.push((family, t));
                }
            }
        }
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
        for (family, t) in transitions {
            self.on_transition(name, family, t);
        }
        self.reconcile(now);
        let state = self
            .uplinks
            .get(name)
            .map(|rt| rt.monitor().state().to_string())
            .unwrap_or_default();
        Ok(crate::control::Ack {
            uplink: name.to_string(),
            state,
        })
    }
}

#[cfg(test)]
mod tests;
