//! Sans-IO uplink health: probe round results, link reports and the current time go in,
//! state transitions come out. Nothing here sleeps, sends or reads a clock, so failover
//! logic is tested in microseconds with scripted results (see `health/tests.rs`).
//!
//! An uplink is **up** (takes new connections), **degraded** (quality limits exceeded: takes
//! new connections only when no healthy uplink of its tier exists) or **down**, and every
//! non-up state carries a typed [`Reason`].
//!
//! Rules:
//! - A round is good when at least `min_targets` targets answered within `timeout`.
//! - Up/degraded → down after `down_after` bad rounds in a row.
//! - Down (probes failing, or link back after a loss) → up after `up_after` good rounds in a row.
//! - A missing interface, carrier loss or missing address → down at once, without waiting
//!   for probes; when the link is back the uplink needs `up_after` good rounds.
//! - An administratively disabled uplink is down until enabled.
//! - Quality limits over a sliding window of rounds: loss above `max_loss` or average RTT
//!   above `max_rtt` degrade; both at or below the recovery limits restore.
//! - At start an uplink with a working link is up at once (optimistic), so every uplink
//!   carries traffic from the first second; probes take it down if it is not.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::model::{Check, Config, Quality};
use crate::net::Family;
use crate::order::Collect;
use std::collections::{BTreeMap, BTreeSet};

/// Why an uplink is not (fully) up.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The interface does not exist.
    NoInterface,
    /// The interface is administratively down or has no carrier.
    LinkDown,
    /// The interface has no address of the monitored family (a global one for IPv6).
    NoAddress,
    /// `gateway = "auto"` (or `gateway6`) and no default route through the interface yet.
    NoGateway,
    /// The fixed gateway is not on the interface's link (no prefix of it holds the address):
    /// the kernel cannot route via it.
    GatewayOffLink {
        /// The configured gateway.
        gateway: IpAddr,
    },
    /// The kernel refused the uplink's route for a reason the facts did not show (the
    /// daemon's log has its answer); tried again when the interfaces change.
    RouteRefused,
    /// `rounds` probe rounds in a row failed.
    ProbesFailing {
        /// Bad rounds in a row so far.
        rounds: u32,
    },
    /// Waiting for `need` good rounds in a row (has `good`).
    Recovering {
        /// Good rounds in a row so far.
        good: u32,
        /// Good rounds in a row required (`up_after`).
        need: u32,
    },
    /// Loss over the window is above the limit.
    HighLoss {
        /// Loss over the window, in percent.
        percent: f64,
        /// The `max_loss` limit, in percent.
        limit: f64,
    },
    /// Average RTT over the window is above the limit.
    HighRtt {
        /// Average RTT over the window.
        rtt: Duration,
        /// The `max_rtt` limit.
        limit: Duration,
    },
    /// Disabled by the operator.
    AdminDisabled,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoInterface => write!(f, "interface missing"),
            Reason::LinkDown => write!(f, "link down"),
            Reason::NoAddress => write!(f, "no address"),
            Reason::NoGateway => write!(f, "no gateway learned yet"),
            Reason::GatewayOffLink { gateway } => {
                write!(f, "gateway {gateway} is not on the interface's link")
            }
            Reason::RouteRefused => write!(f, "the kernel refused its route"),
            Reason::ProbesFailing { rounds } => write!(f, "probes failing ({rounds} rounds)"),
            Reason::Recovering { good, need } => {
                write!(f, "recovering ({good}/{need} good rounds)")
            }
            Reason::HighLoss { percent, limit } => {
                write!(f, "loss {percent:.0}% above {limit:.0}%")
            }
            Reason::HighRtt { rtt, limit } => {
                write!(f, "rtt {}ms above {}ms", rtt.as_millis(), limit.as_millis())
            }
            Reason::AdminDisabled => write!(f, "disabled by operator"),
        }
    }
}

impl Reason {
    /// Short machine-readable name (hooks, JSON, metrics labels).
    pub fn code(&self) -> &'static str {
        match self {
            Reason::NoInterface => "no_interface",
            Reason::LinkDown => "link_down",
            Reason::NoAddress => "no_address",
            Reason::NoGateway => "no_gateway",
            Reason::GatewayOffLink { .. } => "gateway_off_link",
            Reason::RouteRefused => "route_refused",
            Reason::ProbesFailing { .. } => "probes_failing",
            Reason::Recovering { .. } => "recovering",
            Reason::HighLoss { .. } => "high_loss",
            Reason::HighRtt { .. } => "high_rtt",
            Reason::AdminDisabled => "admin_disabled",
        }
    }
}

/// Health state of an uplink.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Takes new connections.
    Up,
    /// Quality limits exceeded: takes new connections only while its tier has no up uplink.
    Degraded(Reason),
    /// Takes no new connections.
    Down(Reason),
}

impl State {
    /// `up`, `degraded` or `down`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Up => "up",
            State::Degraded(_) => "degraded",
            State::Down(_) => "down",
        }
    }

    /// The reason, if not up.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            State::Up => None,
            State::Degraded(r) | State::Down(r) => Some(r),
        }
    }

    /// Whether the uplink may take new connections at all.
    pub fn is_usable(&self) -> bool {
        !matches!(self, State::Down(_))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            None => write!(f, "{}", self.name()),
            Some(r) => write!(f, "{} ({r})", self.name()),
        }
    }
}

/// What the kernel says about the uplink's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    /// The interface does not exist.
    Missing,
    /// The interface is administratively down or has no carrier.
    Down,
    /// The interface has no address of the monitored family (a global one for IPv6).
    NoAddress,
    /// The family's gateway is `auto` and no default route through the interface is known.
    NoGateway,
    /// The family's fixed gateway is not on the interface's link.
    GatewayOffLink(IpAddr),
    /// The kernel refused the family's route.
    RouteRefused,
    /// The interface can carry the family's traffic; the probes decide.
    Ok,
}

/// A change of state, to log, hook and act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered; its name (up, degraded, down) differs from `from`'s.
    pub to: State,
    /// When it happened (the `now` of the call that caused it).
    pub at: Instant,
}

/// Summary of the sliding window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    /// Probe rounds in the window.
    pub rounds: usize,
    /// Probes in the window: one per target per round (per target: one per round).
    pub sent: u64,
    /// Probes among `sent` without an answer within the timeout.
    pub lost: u64,
    /// Mean RTT over the window: of each answered round's fastest answer (per target: of its
    /// answers); `None` when nothing answered.
    pub avg_rtt: Option<Duration>,
    /// The fastest answer of the latest round that got one (per target: its latest answer in
    /// the window).
    pub last_rtt: Option<Duration>,
}

impl WindowStats {
    /// Loss in percent (0 when nothing was sent).
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / self.sent as f64
        }
    }
}

/// One round's per-target outcome: the RTT, or `None` for no answer within the timeout.
pub type RoundResult = [Option<Duration>];

/// The health state machine of one uplink.
#[derive(Debug, Clone)]
pub struct Monitor {
    down_after: u32,
    up_after: u32,
    min_targets: u32,
    quality: Option<Quality>,
    state: State,
    since: Instant,
    link: LinkStatus,
    disabled: bool,
    bad: u32,
    good: u32,
    /// When the first round of the current streak of bad rounds finished.
    bad_since: Option<Instant>,
    /// The last rounds' per-target results.
    window: VecDeque<Vec<Option<Duration>>>,
    /// The same rounds without the targets correlation found suspect: what loss and RTT
    /// limits judge, so a dead shared target does not make its uplinks look lossy.
    counted: VecDeque<Vec<Option<Duration>>>,
    window_len: usize,
    last_rtt: Option<Duration>,
}

/// Default number of rounds in the statistics window (when no quality window is set).
pub const DEFAULT_WINDOW_ROUNDS: usize = 50;

impl Monitor {
    /// A monitor whose link is in `link` at `now`.
    pub fn new(check: &Check, link: LinkStatus, now: Instant) -> Self {
        let quality = check.quality;
        let mut m = Self {
            down_after: check.down_after,
            up_after: check.up_after,
            min_targets: check.min_targets,
            quality,
            state: State::Up,
            since: now,
            link,
            disabled: false,
            bad: 0,
            good: 0,
            bad_since: None,
            window: VecDeque::new(),
            counted: VecDeque::new(),
            window_len: quality
                .map(|q| q.window.max(1))
                .unwrap_or(DEFAULT_WINDOW_ROUNDS),
            last_rtt: None,
        };
        if let Some(r) = link_reason(link) {
            m.state = State::Down(r);
        }
        m
    }

    /// A monitor for a changed `check` (a reload) that keeps this one's verdict on the
    /// probes: an uplink down on its probes (or degraded) stays so, since `since`, until the
    /// new check's `up_after` good rounds; the link's own state is judged afresh from `link`.
    /// Counts and the statistics window start anew (they were of the old check's rounds).
    pub fn rechecked(&self, check: &Check, link: LinkStatus, now: Instant) -> Self {
        let mut m = Self::new(check, link, now);
        let probes_verdict = matches!(
            self.state,
            State::Down(Reason::ProbesFailing { .. }) | State::Degraded(_)
        );
        if link_reason(link).is_none() && probes_verdict {
            m.state = self.state.clone();
            m.since = self.since;
        }
        m
    }

    /// Whether the kernel reports the link as working.
    pub fn link_ok(&self) -> bool {
        self.link == LinkStatus::Ok
    }

    /// Current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// When the first round of the current streak of bad rounds finished (`None` after a
    /// good round): the start of a failure as the probes saw it.
    pub fn failing_since(&self) -> Option<Instant> {
        self.bad_since
    }

    /// Since when the current state holds.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Statistics over the sliding window, all targets together (a round's RTT is its
    /// fastest answer).
    pub fn stats(&self) -> WindowStats {
        let mut s = WindowStats {
            rounds: self.window.len(),
            last_rtt: self.last_rtt,
            ..Default::default()
        };
        let (mut total, mut n) = (Duration::ZERO, 0u32);
        for round in &self.counted {
            s.sent += round.len() as u64;
            s.lost += round.iter().filter(|r| r.is_none()).count() as u64;
            if let Some(best) = round.iter().flatten().min() {
                total += *best;
                n += 1;
            }
        }
        if n > 0 {
            s.avg_rtt = Some(total / n);
        }
        s
    }

    /// Statistics over the sliding window for each target, in config order.
    pub fn target_stats(&self) -> Vec<WindowStats> {
        let targets = self.window.iter().map(Vec::len).max().unwrap_or(0);
        (0..targets)
            .map(|t| {
                let mut s = WindowStats {
                    rounds: self.window.len(),
                    ..Default::default()
                };
                let (mut total, mut n) = (Duration::ZERO, 0u32);
                for round in &self.window {
                    if let Some(r) = round.get(t) {
                        s.sent += 1;
                        match r {
                            Some(rtt) => {
                                total += *rtt;
                                n += 1;
                                s.last_rtt = Some(*rtt);
                            }
                            None => s.lost += 1,
                        }
                    }
                }
                if n > 0 {
                    s.avg_rtt = Some(total / n);
                }
                s
            })
            .collect()
    }

    fn set(&mut self, to: State, now: Instant) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let from = std::mem::replace(&mut self.state, to.clone());
        // A new reason within the same state (link down → recovering 1/5 → 2/5) updates what
        // `status` shows but is no transition: nothing to act on, `since` keeps its start.
        if from.name() == to.name() {
            return None;
        }
        self.since = now;
        Some(Transition { from, to, at: now })
    }

    /// The kernel reported the link.
    pub fn link(&mut self, status: LinkStatus, now: Instant) -> Option<Transition> {
        let was = self.link;
        self.link = status;
        if self.disabled {
            return None;
        }
        match link_reason(status) {
            Some(r) => {
                self.good = 0;
                self.set(State::Down(r), now)
            }
            None if was != LinkStatus::Ok => {
                // Link back: prove the path before taking traffic again.
                self.good = 0;
                self.bad = 0;
                self.set(
                    State::Down(Reason::Recovering {
                        good: 0,
                        need: self.up_after,
                    }),
                    now,
                )
            }
            None => None,
        }
    }

    /// The operator disabled or enabled the uplink.
    pub fn set_disabled(&mut self, disabled: bool, now: Instant) -> Option<Transition> {
        self.disabled = disabled;
        if disabled {
            return self.set(State::Down(Reason::AdminDisabled), now);
        }
        match link_reason(self.link) {
            Some(r) => self.set(State::Down(r), now),
            // Enabled by a person who knows the uplink: trust it, probes will correct.
            None => {
                self.bad = 0;
                self.set(State::Up, now)
            }
        }
    }

    /// A probe round finished.
    pub fn round(&mut self, results: &RoundResult, now: Instant) -> Option<Transition> {
        self.round_judged(results, &[], None, now)
    }

    /// A probe round finished, judged with correlation: targets marked in `excluded`
    /// (suspect: failing on every uplink at once) do not count; when no target is left the
    /// gateway witness decides (`None`: no witness this round, so the round says nothing and
    /// changes no streak).
    pub fn round_judged(
        &mut self,
        results: &RoundResult,
        excluded: &[bool],
        witness: Option<bool>,
        now: Instant,
    ) -> Option<Transition> {
        let best = results.iter().flatten().min().copied();
        if best.is_some() {
            self.last_rtt = best;
        }
        let counts = |i: usize| !excluded.get(i).copied().unwrap_or(false);
        // Once the window is full each round reuses the storage of the round it pushes out:
        // a monitor judges ten rounds a second and allocates nothing for them.
        let mut kept = recycle(&mut self.window, self.window_len);
        kept.extend_from_slice(results);
        self.window.push_back(kept);
        let mut counted = recycle(&mut self.counted, self.window_len);
        counted.extend(
            results
                .iter()
                .enumerate()
                .filter(|(i, _)| counts(*i))
                .map(|(_, r)| *r),
        );
        self.counted.push_back(counted);
        if self.disabled || self.link != LinkStatus::Ok {
            return None;
        }
        let (considered, ok) = results
            .iter()
            .enumerate()
            .filter(|(i, _)| counts(*i))
            .fold((0u32, 0u32), |(n, ok), (_, r)| {
                (n + 1, ok + u32::from(r.is_some()))
            });
        let good = if considered == 0 {
            witness?
        } else {
            ok >= self.min_targets.min(considered).max(1)
        };
        if good {
            self.bad = 0;
            self.bad_since = None;
            self.good = self.good.saturating_add(1);
        } else {
            self.good = 0;
            self.bad = self.bad.saturating_add(1);
            self.bad_since.get_or_insert(now);
        }
        match self.state.clone() {
            State::Up | State::Degraded(_) => {
                if self.bad >= self.down_after {
                    return self.set(State::Down(Reason::ProbesFailing { rounds: self.bad }), now);
                }
                self.quality_verdict(now)
            }
            State::Down(_) => {
                if self.good >= self.up_after {
                    let t = self.set(State::Up, now);
                    return self.quality_verdict(now).or(t);
                }
                let reason = if good || self.good > 0 {
                    Reason::Recovering {
                        good: self.good,
                        need: self.up_after,
                    }
                } else {
                    Reason::ProbesFailing { rounds: self.bad }
                };
                self.set(State::Down(reason), now)
            }
        }
    }

    fn quality_verdict(&mut self, now: Instant) -> Option<Transition> {
        let q = self.quality?;
        let s = self.stats();
        if s.rounds < q.window.min(5) {
            return None;
        }
        let loss = s.loss_percent();
        let rtt = s.avg_rtt;
        let over = if q.max_loss.is_some_and(|m| loss > m) {
            Some(Reason::HighLoss {
                percent: loss,
                limit: q.max_loss.unwrap_or_default(),
            })
        } else {
            match (q.max_rtt, rtt) {
                (Some(limit), Some(r)) if r > limit => Some(Reason::HighRtt { rtt: r, limit }),
                _ => None,
            }
        };
        match (&self.state, over) {
            (State::Up, Some(r)) => self.set(State::Degraded(r), now),
            (State::Degraded(_), None) => {
                let loss_ok = q.max_loss.is_none() || loss <= q.recover_loss;
                let rtt_ok = match (q.recover_rtt.or(q.max_rtt), rtt) {
                    (Some(limit), Some(r)) => r <= limit,
                    _ => true,
                };
                if loss_ok && rtt_ok {
                    self.set(State::Up, now)
                } else {
                    None
                }
            }
            (State::Degraded(_), Some(r)) => {
                // Update the reason's figures without a transition.
                self.state = State::Degraded(r);
                None
            }
            _ => None,
        }
    }
}

/// The uplinks that may take new IPv4 connections: every up uplink, and a degraded one only
/// when its tier has no up uplink.
pub fn usable(cfg: &Config, states: &BTreeMap<String, State>) -> BTreeSet<String> {
    usable_of(cfg, states, Family::V4)
}

/// [`usable`] for `family`, among the uplinks that carry it (`states` holds that family's).
pub fn usable_of(
    cfg: &Config,
    states: &BTreeMap<String, State>,
    family: Family,
) -> BTreeSet<String> {
    let state = |n: &str| states.get(n).cloned().unwrap_or(State::Up);
    let carriers = || cfg.uplinks.iter().filter(|u| u.has(family));
    carriers()
        .filter(|u| match state(&u.name) {
            State::Up => true,
            State::Down(_) => false,
            State::Degraded(_) => {
                !carriers().any(|o| o.tier == u.tier && state(&o.name) == State::Up)
            }
        })
        .map(|u| u.name.clone())
        .collect_set()
}

/// Whether the probes alone hold the uplink down (its link works and the operator did not
/// disable it).
fn down_by_probes(s: &State) -> bool {
    matches!(
        s,
        State::Down(Reason::ProbesFailing { .. } | Reason::Recovering { .. })
    )
}

/// [`usable`] with fail-open (`[balance] fail_open`): when nothing is usable but some uplinks
/// are down by probes alone, every target silent at once is far more often a probe or target
/// problem than every ISP failing together, so the uplinks in use before (`last`, those of
/// them still down by probes only; all such uplinks when none of them is) keep taking
/// connections. If every ISP really is down the LAN fails either way; if the probes are wrong
/// it stays online. Returns the set and whether it fails open.
pub fn usable_fail_open(
    cfg: &Config,
    states: &BTreeMap<String, State>,
    last: &BTreeSet<String>,
    family: Family,
) -> (BTreeSet<String>, bool) {
    let u = usable_of(cfg, states, family);
    if !u.is_empty() || !cfg.balance.fail_open {
        return (u, false);
    }
    let by_probes: BTreeSet<String> = cfg
        .uplinks
        .iter()
        .filter(|u| u.has(family) && states.get(&u.name).is_some_and(down_by_probes))
        .map(|u| u.name.clone())
        .collect_set();
    if by_probes.is_empty() {
        return (u, false);
    }
    let kept: BTreeSet<String> = last.intersection(&by_probes).cloned().collect_set();
    (if kept.is_empty() { by_probes } else { kept }, true)
}

fn link_reason(l: LinkStatus) -> Option<Reason> {
    match l {
        LinkStatus::Missing => Some(Reason::NoInterface),
        LinkStatus::Down => Some(Reason::LinkDown),
        LinkStatus::NoAddress => Some(Reason::NoAddress),
        LinkStatus::NoGateway => Some(Reason::NoGateway),
        LinkStatus::GatewayOffLink(gateway) => Some(Reason::GatewayOffLink { gateway }),
        LinkStatus::RouteRefused => Some(Reason::RouteRefused),
        LinkStatus::Ok => None,
    }
}

/// Makes room for one more round in a window of at most `len` rounds: drops the oldest
/// rounds beyond it and hands back the storage of the last one dropped, emptied, for the new
/// round (a fresh vector while the window is still filling).
fn recycle(window: &mut VecDeque<Vec<Option<Duration>>>, len: usize) -> Vec<Option<Duration>> {
    let mut spare = Vec::new();
    while window.len() >= len.max(1) {
        if let Some(old) = window.pop_front() {
            spare = old;
        }
    }
    spare.clear();
    spare
}

#[cfg(test)]
mod tests;
