//! Probe targets correlated across uplinks: a target that several uplinks probe and that
//! fails on every one of them at once, while other evidence says the uplinks work (another of
//! their targets answered, or their gateway answered a witness probe), is **suspect**: the
//! target died, not the uplinks. Suspect targets do not count in those uplinks' rounds, so a
//! dead `1.1.1.1` shared by every uplink no longer takes the LAN offline; a real outage of one
//! uplink still fails its rounds, because the same target keeps answering over the others.
//!
//! A target is shared when at least two uplinks probe it, not necessarily all of them, and a
//! suspect target explains its failures: an uplink whose every other target is suspect is
//! shown working by its gateway alone, as one with a single target is (see
//! [`Correlator::update`]).
//!
//! Sans-IO like [`crate::health`]: rounds go in, the exclusion masks come out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::model::{CheckMethod, Config};
use crate::net::Family;

/// A target's identity: the same address probed the same way.
pub type TargetKey = (CheckMethod, SocketAddr);

/// An uplink's latest round, as far as correlation cares.
#[derive(Debug, Clone, Default)]
struct Latest {
    answered: Vec<bool>,
    /// Per target: when its current run of failures began.
    failing_since: Vec<Option<Instant>>,
    witness: Option<bool>,
    /// Its link works and it is not disabled: its rounds mean something.
    eligible: bool,
}

/// The correlation state of one config.
#[derive(Debug, Clone, Default)]
pub struct Correlator {
    /// Each uplink's targets, in config order.
    targets: BTreeMap<String, Vec<TargetKey>>,
    /// Targets probed by at least two uplinks → those uplinks.
    shared: BTreeMap<TargetKey, Vec<String>>,
    latest: BTreeMap<String, Latest>,
    suspect: BTreeSet<TargetKey>,
    /// How close together the failures must have begun to count as "at once".
    at_once: Duration,
}

/// What changed in an update, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuspectChange {
    /// Targets that became suspect in this update.
    pub became_suspect: Vec<TargetKey>,
    /// Targets that are no longer suspect (they answer again, or the evidence is gone).
    pub cleared: Vec<TargetKey>,
}

impl Correlator {
    /// The correlation of one family's targets (each family has its own health).
    pub fn new(cfg: &Config, family: Family) -> Self {
        let mut targets = BTreeMap::new();
        let mut probers: BTreeMap<TargetKey, Vec<String>> = BTreeMap::new();
        for u in &cfg.uplinks {
            let Some(check) = u.check_of(family) else {
                continue;
            };
            let keys: Vec<TargetKey> = check.targets.iter().map(|t| (check.method, *t)).collect();
            for k in &keys {
                probers.entry(*k).or_default().push(u.name.clone());
            }
            targets.insert(u.name.clone(), keys);
        }
        probers.retain(|_, v| v.len() >= 2);
        // Two rounds of the slowest prober: rounds of different uplinks close on shared
        // wake-ups, so a target that dies is seen failing everywhere within one round.
        let at_once = cfg
            .uplinks
            .iter()
            .filter_map(|u| u.check_of(family))
            .map(|c| c.interval * 2 + c.timeout)
            .max()
            .unwrap_or(Duration::from_secs(1));
        Self {
            targets,
            shared: probers,
            latest: BTreeMap::new(),
            suspect: BTreeSet::new(),
            at_once,
        }
    }

    /// Targets probed by every uplink (when there are at least two): a single point of
    /// failure worth a note in `check`.
    pub fn shared_by_all(cfg: &Config) -> Vec<TargetKey> {
        let mut out = Vec::new();
        for family in Family::ALL {
            let carriers = cfg.uplinks.iter().filter(|u| u.has(family)).count();
            let c = Self::new(cfg, family);
            out.extend(
                c.shared
                    .iter()
                    .filter(|(_, v)| v.len() == carriers)
                    .map(|(k, _)| *k),
            );
        }
        out
    }

    /// Records the latest round of `uplink`, finished at `now`.
    pub fn record(
        &mut self,
        uplink: &str,
        results: &[Option<Duration>],
        witness: Option<bool>,
        eligible: bool,
        now: Instant,
    ) {
        // Updated in place: after the first round of each uplink this allocates nothing.
        if !self.latest.contains_key(uplink) {
            self.latest.insert(uplink.to_string(), Latest::default());
        }
        let Some(l) = self.latest.get_mut(uplink) else {
            return;
        };
        l.failing_since.resize(results.len(), None);
        for (since, r) in l.failing_since.iter_mut().zip(results) {
            *since = match r {
                Some(_) => None,
                None => since.or(Some(now)),
            };
        }
        l.answered.clear();
        l.answered.extend(results.iter().map(Option::is_some));
        l.witness = witness;
        l.eligible = eligible;
    }

    /// Whether `uplink`'s latest round shows it working, apart from `key`: another of its
    /// targets answered, or — when every other target of it is in `suspect` (or it has no
    /// other) — its gateway answered the witness ping. An uplink whose other targets fail
    /// too, unexplained, is not shown working by its gateway: every target silent at once is
    /// what a dead upstream looks like.
    fn evidence(&self, uplink: &str, key: &TargetKey, suspect: &BTreeSet<TargetKey>) -> bool {
        let Some(l) = self.latest.get(uplink) else {
            return false;
        };
        let targets = self.targets.get(uplink).map(Vec::as_slice).unwrap_or(&[]);
        // Another target failed with no suspect status to explain it.
        let mut unexplained = false;
        for (i, k) in targets.iter().enumerate() {
            if k == key || suspect.contains(k) {
                continue;
            }
            if l.answered.get(i).copied().unwrap_or(false) {
                return true;
            }
            unexplained = true;
        }
        !unexplained && l.witness == Some(true)
    }

    /// Whether `key`, probed by `uplinks`, fails on every eligible one of them at once with
    /// evidence that one of them works, given the targets already found `suspect`.
    fn is_suspect_now(
        &self,
        key: &TargetKey,
        uplinks: &[String],
        suspect: &BTreeSet<TargetKey>,
    ) -> bool {
        let eligible: Vec<&String> = uplinks
            .iter()
            .filter(|u| self.latest.get(*u).is_some_and(|l| l.eligible))
            .collect();
        if eligible.len() < 2 {
            return false;
        }
        // When the target's failure began on each uplink; `None` where it answers.
        let since: Option<Vec<Instant>> = eligible
            .iter()
            .map(|u| {
                let l = self.latest.get(*u)?;
                let i = self.targets.get(*u)?.iter().position(|k| k == key)?;
                l.failing_since.get(i).copied().flatten()
            })
            .collect();
        let Some(since) = since else {
            return false;
        };
        // At once: an uplink that lost the target long before the others did is down for its
        // own reasons, and the others' failure is theirs too.
        let (Some(first), Some(last)) = (since.iter().min(), since.iter().max()) else {
            return false;
        };
        last.saturating_duration_since(*first) <= self.at_once
            && eligible.iter().any(|u| self.evidence(u, key, suspect))
    }

    /// Re-evaluates every shared target from the latest rounds.
    ///
    /// One suspect target can be what makes another one suspect: an uplink probing both,
    /// with both failing, has no evidence for either until one is explained (say by a third
    /// uplink that probes only it and whose gateway answers); then the other is all it has
    /// left, and its gateway's answer counts. So the suspects are found in passes from none,
    /// each adding the targets the previous ones explain, until a pass adds nothing. Starting
    /// from none, never from the previous update's suspects, keeps two targets from
    /// explaining each other: when every target of the uplinks is silent and nothing outside
    /// them shows one dead, none is suspect.
    pub fn update(&mut self) -> SuspectChange {
        let mut now = BTreeSet::new();
        loop {
            let found: Vec<TargetKey> = self
                .shared
                .iter()
                .filter(|(k, u)| !now.contains(*k) && self.is_suspect_now(k, u, &now))
                .map(|(k, _)| *k)
                .collect();
            if found.is_empty() {
                break;
            }
            now.extend(found);
        }
        let change = SuspectChange {
            became_suspect: now.difference(&self.suspect).copied().collect(),
            cleared: self.suspect.difference(&now).copied().collect(),
        };
        self.suspect = now;
        change
    }

    /// Which of `uplink`'s targets are suspect, in config order.
    pub fn excluded(&self, uplink: &str) -> Vec<bool> {
        self.targets
            .get(uplink)
            .map(|t| t.iter().map(|k| self.suspect.contains(k)).collect())
            .unwrap_or_default()
    }

    /// The suspect targets.
    pub fn suspects(&self) -> &BTreeSet<TargetKey> {
        &self.suspect
    }
}

/// How a target is written in status and logs: `ip` for icmp, `ip:port` otherwise.
pub fn target_label(k: &TargetKey) -> String {
    match k.0 {
        CheckMethod::Icmp => k.1.ip().to_string(),
        _ => k.1.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(targets1: &str, targets2: &str) -> Config {
        crate::load(
            "t.toml",
            &format!(
                "[lan]\ninterfaces=[\"lan0\"]\n[[uplink]]\nname=\"a\"\ninterface=\"wan1\"\ngateway=\"10.0.1.1\"\n[uplink.check]\ntargets=[{targets1}]\n[[uplink]]\nname=\"b\"\ninterface=\"wan2\"\ngateway=\"10.0.2.1\"\n[uplink.check]\ntargets=[{targets2}]\n"
            ),
        )
        .expect("valid")
    }

    const OK: Option<Duration> = Some(Duration::from_millis(10));

    /// Uplinks `a`, `b`, `c`… on `wanN` with gateways `10.0.N.1` and `2001:db8:N::1`, each
    /// probing the targets given (either family).
    fn cfg_of(targets: &[&str]) -> Config {
        let mut t = String::from("[lan]\ninterfaces=[\"lan0\"]\n");
        for (i, targets) in targets.iter().enumerate() {
            let (name, n) = (char::from(b'a' + i as u8), i + 1);
            t += &format!(
                "[[uplink]]\nname=\"{name}\"\ninterface=\"wan{n}\"\ngateway=\"10.0.{n}.1\"\ngateway6=\"2001:db8:{n}::1\"\n[uplink.check]\ntargets=[{targets}]\n"
            );
        }
        crate::load("t.toml", &t).expect("valid")
    }

    /// One round of every uplink at `at`: `results[i]` is uplink i's, every gateway answering
    /// the witness ping when `witness` (the prober sends it from the second failed round on).
    fn rounds(k: &mut Correlator, results: &[&[Option<Duration>]], witness: bool, at: Instant) {
        for (i, r) in results.iter().enumerate() {
            let name = char::from(b'a' + i as u8).to_string();
            k.record(&name, r, witness.then_some(true), true, at);
        }
        k.update();
    }

    /// The tester's scenario, per family: a and b probe two targets, c the first of them;
    /// both targets stop answering everywhere while the gateways answer.
    fn two_targets_shared_by_some_uplinks_die_at_once(t1: &str, t2: &str, family: Family) {
        let c = cfg_of(&[
            &format!("\"{t1}\", \"{t2}\""),
            &format!("\"{t1}\", \"{t2}\""),
            &format!("\"{t1}\""),
        ]);
        let mut k = Correlator::new(&c, family);
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        rounds(&mut k, &[&[OK, OK], &[OK, OK], &[OK]], false, t0);
        // The first failed round: no witness yet, no evidence, nothing suspect.
        rounds(
            &mut k,
            &[&[None, None], &[None, None], &[None]],
            false,
            t0 + step,
        );
        assert!(k.suspects().is_empty());
        // From the next round on the gateways answer: c shows the first target dead, and with
        // it suspect the second is all a and b have left, dead on both while their gateways
        // answer.
        for i in 2..10 {
            rounds(
                &mut k,
                &[&[None, None], &[None, None], &[None]],
                true,
                t0 + step * i,
            );
            let labels: Vec<String> = k.suspects().iter().map(target_label).collect();
            assert_eq!(labels, [t1, t2], "round {i}");
            assert_eq!(k.excluded("a"), [true, true]);
            assert_eq!(k.excluded("b"), [true, true]);
            assert_eq!(k.excluded("c"), [true]);
        }
        // The first target answers again over c: the second has no evidence left, both clear.
        rounds(
            &mut k,
            &[&[None, None], &[None, None], &[OK]],
            true,
            t0 + step * 10,
        );
        assert!(k.suspects().is_empty());
        assert_eq!(k.excluded("a"), [false, false]);
    }

    #[test]
    fn targets_shared_by_some_uplinks_die_at_once_and_are_all_suspect_v4() {
        two_targets_shared_by_some_uplinks_die_at_once("203.0.113.10", "203.0.113.11", Family::V4);
    }

    #[test]
    fn targets_shared_by_some_uplinks_die_at_once_and_are_all_suspect_v6() {
        two_targets_shared_by_some_uplinks_die_at_once(
            "2001:db8:113::10",
            "2001:db8:113::11",
            Family::V6,
        );
    }

    #[test]
    fn a_target_shared_by_two_of_three_uplinks_is_suspect_on_its_own() {
        let c = cfg_of(&[
            "\"203.0.113.10\", \"203.0.113.11\"",
            "\"203.0.113.10\", \"203.0.113.11\"",
            "\"203.0.113.12\"",
        ]);
        let mut k = Correlator::new(&c, Family::V4);
        let t0 = Instant::now();
        // Only .11 dies (on a and b, the two that probe it); .10 answers on both.
        rounds(&mut k, &[&[OK, None], &[OK, None], &[OK]], false, t0);
        assert_eq!(k.excluded("a"), [false, true]);
        assert_eq!(k.excluded("b"), [false, true]);
        assert_eq!(k.excluded("c"), [false]);
    }

    #[test]
    fn one_uplink_losing_everything_while_a_target_is_suspect_is_an_outage() {
        let c = cfg_of(&[
            "\"203.0.113.10\", \"203.0.113.11\"",
            "\"203.0.113.10\", \"203.0.113.11\"",
            "\"203.0.113.10\"",
        ]);
        let mut k = Correlator::new(&c, Family::V4);
        let t0 = Instant::now();
        // .10 is dead everywhere (c's gateway shows it); .11 answers on a and b.
        rounds(&mut k, &[&[None, OK], &[None, OK], &[None]], true, t0);
        assert_eq!(k.excluded("a"), [true, false]);
        // a's upstream dies: .11 still answers over b, so a's rounds keep failing on it.
        let later = t0 + Duration::from_millis(100);
        rounds(&mut k, &[&[None, None], &[None, OK], &[None]], true, later);
        assert_eq!(k.excluded("a"), [true, false]);
        assert_eq!(k.excluded("b"), [true, false]);
    }

    #[test]
    fn a_shared_target_dead_everywhere_is_suspect_only_with_evidence() {
        let c = cfg("\"1.1.1.1\"", "\"1.1.1.1\"");
        let mut k = Correlator::new(&c, Family::V4);
        let t0 = Instant::now();
        // Fails on both, no other evidence: could be both uplinks dying; not suspect.
        k.record("a", &[None], None, true, t0);
        k.record("b", &[None], None, true, t0);
        assert!(k.update().became_suspect.is_empty());
        // The gateways answer the witness probes: the target is the problem.
        k.record("a", &[None], Some(true), true, t0);
        k.record("b", &[None], Some(true), true, t0);
        let ch = k.update();
        assert_eq!(ch.became_suspect.len(), 1);
        assert_eq!(target_label(&ch.became_suspect[0]), "1.1.1.1");
        assert_eq!(k.excluded("a"), vec![true]);
        // It answers again over one uplink: no longer suspect.
        k.record("a", &[OK], None, true, t0);
        assert_eq!(k.update().cleared.len(), 1);
        assert_eq!(k.excluded("a"), vec![false]);
    }

    #[test]
    fn a_real_outage_of_one_uplink_is_never_blamed_on_the_target() {
        let c = cfg("\"1.1.1.1\"", "\"1.1.1.1\"");
        let mut k = Correlator::new(&c, Family::V4);
        let t0 = Instant::now();
        k.record("a", &[None], Some(true), true, t0);
        k.record("b", &[OK], None, true, t0);
        assert!(k.update().became_suspect.is_empty());
        assert_eq!(k.excluded("a"), vec![false]);
    }

    #[test]
    fn failures_that_began_apart_are_outages_not_a_dead_target() {
        let c = cfg("\"1.1.1.1\"", "\"1.1.1.1\"");
        let mut k = Correlator::new(&c, Family::V4);
        let t0 = Instant::now();
        // a lost the target (its upstream died) long before b did.
        k.record("a", &[None], Some(true), true, t0);
        k.record("b", &[OK], None, true, t0);
        k.update();
        let later = t0 + Duration::from_secs(5);
        k.record("a", &[None], Some(true), true, later);
        k.record("b", &[None], Some(true), true, later);
        assert!(k.update().became_suspect.is_empty());
        assert_eq!(k.excluded("a"), vec![false]);
    }

    #[test]
    fn every_target_silent_everywhere_is_an_outage_not_suspects() {
        let c = cfg("\"1.1.1.1\", \"9.9.9.9\"", "\"1.1.1.1\", \"9.9.9.9\"");
        let mut k = Correlator::new(&c, Family::V4);
        let t0 = Instant::now();
        k.record("a", &[None, None], Some(true), true, t0);
        k.record("b", &[None, None], Some(true), true, t0);
        assert!(k.update().became_suspect.is_empty());
    }

    #[test]
    fn other_targets_are_evidence_and_ineligible_uplinks_do_not_count() {
        let c = cfg("\"1.1.1.1\", \"9.9.9.9\"", "\"1.1.1.1\"");
        let mut k = Correlator::new(&c, Family::V4);
        let t0 = Instant::now();
        k.record("a", &[None, OK], None, true, t0);
        k.record("b", &[None], None, true, t0);
        k.update();
        assert_eq!(k.excluded("a"), vec![true, false]);
        assert_eq!(k.excluded("b"), vec![true]);
        // b's link is down: nothing to correlate with.
        k.record("b", &[None], None, false, t0);
        k.update();
        assert_eq!(k.excluded("a"), vec![false, false]);
        assert_eq!(Correlator::shared_by_all(&c).len(), 1);
        assert!(Correlator::shared_by_all(&cfg("\"1.1.1.1\"", "\"8.8.8.8\"")).is_empty());
    }
}
