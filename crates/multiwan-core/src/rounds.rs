//! Sans-IO bookkeeping of probe rounds: which probe belongs to which round and target, and
//! when a round is complete (every target answered, or its timeout passed). Rounds complete
//! in the order they started, so the health monitor sees them in sequence even when the
//! timeout is longer than the interval.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Round {
    id: u64,
    started: Instant,
    sent: Vec<Option<Instant>>,
    rtt: Vec<Option<Duration>>,
}

/// Outstanding rounds of one uplink.
#[derive(Debug, Clone)]
pub struct Rounds {
    targets: usize,
    timeout: Duration,
    next_id: u64,
    open: VecDeque<Round>,
    /// Send-time vectors of finished rounds, reused by the next ones: a round then allocates
    /// only the results it hands out (the prober opens one per uplink and interval).
    spare: Vec<Vec<Option<Instant>>>,
}

/// A finished round: per-target RTT, `None` for no answer in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The round's number, as [`Rounds`] handed it out.
    pub id: u64,
    /// Per target (in config order): the RTT, or `None` for no answer within the timeout.
    pub results: Vec<Option<Duration>>,
    /// Which targets a probe was sent to (a target may be probed only in some rounds).
    pub sent: Vec<bool>,
}

impl Rounds {
    /// Tracks rounds over `targets` targets with the given timeout.
    pub fn new(targets: usize, timeout: Duration) -> Self {
        Self {
            targets,
            timeout,
            next_id: 0,
            open: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    /// Opens a new round at `now` and returns its id.
    pub fn start(&mut self, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let sent = match self.spare.pop() {
            Some(mut v) => {
                v.clear();
                v.resize(self.targets, None);
                v
            }
            None => vec![None; self.targets],
        };
        self.open.push_back(Round {
            id,
            started: now,
            sent,
            rtt: vec![None; self.targets],
        });
        id
    }

    /// The probe to `target` of round `id` left at `at` (sending can fail: then it never
    /// answers and counts as lost).
    pub fn sent(&mut self, id: u64, target: usize, at: Instant) {
        if let Some(r) = self.open.iter_mut().find(|r| r.id == id) {
            if let Some(s) = r.sent.get_mut(target) {
                *s = Some(at);
            }
        }
    }

    /// An answer for `target` of round `id` arrived at `at`. Late or unknown answers are
    /// ignored.
    pub fn answered(&mut self, id: u64, target: usize, at: Instant) {
        let timeout = self.timeout;
        if let Some(r) = self.open.iter_mut().find(|r| r.id == id) {
            if let (Some(Some(sent)), Some(slot)) = (r.sent.get(target), r.rtt.get_mut(target)) {
                let rtt = at.saturating_duration_since(*sent);
                if slot.is_none() && rtt <= timeout {
                    *slot = Some(rtt);
                }
            }
        }
    }

    /// An answer for `target` of round `id` with a round-trip time measured elsewhere (e.g.
    /// from the kernel's receive timestamp). Ignored unless the probe was sent and the RTT
    /// is within the timeout.
    pub fn answered_rtt(&mut self, id: u64, target: usize, rtt: Duration) {
        let timeout = self.timeout;
        if let Some(r) = self.open.iter_mut().find(|r| r.id == id) {
            if let (Some(Some(_)), Some(slot)) = (r.sent.get(target), r.rtt.get_mut(target)) {
                if slot.is_none() && rtt <= timeout {
                    *slot = Some(rtt);
                }
            }
        }
    }

    /// Rounds that are complete at `now`, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<Finished> {
        std::iter::from_fn(|| self.pop_due(now)).collect()
    }

    /// The oldest round if it is complete at `now`: call until `None` to take every due one,
    /// in order, without collecting them.
    pub fn pop_due(&mut self, now: Instant) -> Option<Finished> {
        let r = self.open.front()?;
        // Complete once every probe sent was answered (unsent ones never will be).
        let all = r
            .sent
            .iter()
            .zip(&r.rtt)
            .all(|(s, a)| s.is_none() || a.is_some());
        if !all && now < r.started + self.timeout {
            return None;
        }
        let r = self.open.pop_front()?;
        let done = Finished {
            id: r.id,
            sent: r.sent.iter().map(Option::is_some).collect(),
            results: r.rtt,
        };
        // Bounded: no more spares than rounds can be open at once.
        if self.spare.len() <= self.open.len() {
            self.spare.push(r.sent);
        }
        Some(done)
    }

    /// When the oldest open round times out, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.front().map(|r| r.started + self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_complete_in_order_on_answers_or_timeout() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Rounds::new(2, ms(250));
        let a = r.start(t0);
        r.sent(a, 0, t0);
        r.sent(a, 1, t0);
        let b = r.start(t0 + ms(100));
        r.sent(b, 0, t0 + ms(100));
        r.sent(b, 1, t0 + ms(100));
        // Round b fully answered first, but a is still open: nothing is due yet.
        r.answered(b, 0, t0 + ms(110));
        r.answered(b, 1, t0 + ms(120));
        r.answered(a, 0, t0 + ms(130));
        assert!(r.due(t0 + ms(140)).is_empty());
        assert_eq!(r.next_deadline(), Some(t0 + ms(250)));
        // At a's timeout both are released, in order.
        let done = r.due(t0 + ms(250));
        assert_eq!(done.len(), 2);
        assert_eq!(
            done[0],
            Finished {
                id: a,
                results: vec![Some(ms(130)), None],
                sent: vec![true, true],
            }
        );
        assert_eq!(
            done[1],
            Finished {
                id: b,
                results: vec![Some(ms(10)), Some(ms(20))],
                sent: vec![true, true],
            }
        );
    }

    #[test]
    fn answers_with_measured_rtt() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Rounds::new(1, ms(200));
        let a = r.start(t0);
        r.sent(a, 0, t0);
        r.answered_rtt(a, 0, ms(250)); // beyond the timeout
        r.answered_rtt(a, 0, ms(12));
        r.answered_rtt(a, 0, ms(5)); // duplicate
        assert_eq!(r.due(t0 + ms(1))[0].results, vec![Some(ms(12))]);
    }

    #[test]
    fn late_duplicate_and_unsent_answers_are_ignored() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Rounds::new(2, ms(100));
        let a = r.start(t0);
        r.sent(a, 0, t0);
        r.answered(a, 1, t0 + ms(5)); // never sent
        r.answered(a, 0, t0 + ms(150)); // too late
        r.answered(99, 0, t0 + ms(5)); // unknown round
        let done = r.due(t0 + ms(100));
        assert_eq!(done[0].results, vec![None, None]);
        assert_eq!(done[0].sent, vec![true, false]);
    }

    #[test]
    fn a_round_whose_sent_probes_all_answered_completes_early() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Target 1 (a witness) is not probed this round.
        let mut r = Rounds::new(2, ms(200));
        let a = r.start(t0);
        r.sent(a, 0, t0);
        r.answered(a, 0, t0 + ms(5));
        let done = r.due(t0 + ms(10));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].results, vec![Some(ms(5)), None]);
        assert_eq!(done[0].sent, vec![true, false]);
    }

    #[test]
    fn a_reused_round_starts_clean_and_pop_due_takes_them_in_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut r = Rounds::new(2, ms(100));
        let a = r.start(t0);
        r.sent(a, 0, t0);
        r.sent(a, 1, t0);
        r.answered(a, 0, t0 + ms(3));
        r.answered(a, 1, t0 + ms(4));
        assert_eq!(r.pop_due(t0 + ms(5)).map(|f| f.id), Some(a));
        assert_eq!(r.pop_due(t0 + ms(5)), None);
        // b takes a's send-time vector: nothing of a's probes may show through.
        let b = r.start(t0 + ms(10));
        r.sent(b, 1, t0 + ms(10));
        let c = r.start(t0 + ms(20));
        assert_eq!(r.pop_due(t0 + ms(50)), None, "b's probe is still awaited");
        let done = r.due(t0 + ms(120));
        assert_eq!(
            done,
            vec![
                Finished {
                    id: b,
                    results: vec![None, None],
                    sent: vec![false, true],
                },
                Finished {
                    id: c,
                    results: vec![None, None],
                    sent: vec![false, false],
                },
            ]
        );
    }
}
