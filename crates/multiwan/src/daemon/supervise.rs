//! Supervision of the daemon's threads. The prober and the netlink watcher are watched: one
//! that exits or panics is restarted with its reason logged, at most [`MAX_RESTARTS`] times a
//! minute; beyond that — or when the prober stops making progress without exiting — the
//! daemon exits non-zero so the service manager restarts it (fail-static: the kernel state
//! stays). The systemd watchdog is fed only while the prober makes progress, so a frozen
//! failover can never look healthy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::event::Event;
use crate::kernel::events;

/// Restarts of one thread allowed within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: usize = 3;
/// The window of [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The least time without a prober heartbeat that counts as a stall (a loaded machine may
/// delay a wake-up by a lot more than a round).
pub const MIN_STALL: Duration = Duration::from_secs(3);

/// Added to two rounds before a late prober stops feeding the watchdog.
pub const WATCHDOG_SLACK: Duration = Duration::from_millis(500);

/// A beat shared between a thread and its supervisor: milliseconds since `base`.
#[derive(Clone)]
pub struct Heartbeat {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    fn new(base: Instant) -> Self {
        Self {
            base,
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The thread made progress now.
    pub fn beat(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn age(&self, now: Instant) -> Duration {
        let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }
}

struct Prober {
    stop: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    handle: JoinHandle<()>,
}

/// Why a thread ended, from its join result.
fn why(r: std::thread::Result<()>) -> String {
    match r {
        Ok(()) => "it returned".into(),
        Err(p) => match p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
        {
            Some(m) => format!("it panicked: {m}"),
            None => "it panicked".into(),
        },
    }
}

/// Starts the prober thread: (what to probe, generation, the loop's queue, stop flag,
/// heartbeat). The daemon passes `probe::spawn`; the supervisor only watches the thread, so
/// it does not depend on what the thread probes or how.
pub type SpawnProber<S> =
    fn(S, u64, Sender<Event>, Arc<AtomicBool>, Heartbeat) -> std::io::Result<JoinHandle<()>>;

/// The daemon's watched threads; `S` is what the prober is started with.
pub struct Supervisor<S> {
    tx: Sender<Event>,
    spawn: SpawnProber<S>,
    base: Instant,
    prober: Option<Prober>,
    watcher: Option<JoinHandle<()>>,
    /// The prober generation whose rounds count.
    pub generation: u64,
    restarts: VecDeque<Instant>,
    /// Threads the daemon cannot run without and cannot restart in place (listeners, the
    /// signal thread): if one ends, the daemon exits so it is restarted whole.
    essential: Vec<(&'static str, JoinHandle<()>)>,
}

impl<S> Supervisor<S> {
    /// A supervisor that starts the prober with `spawn`.
    pub fn new(tx: Sender<Event>, spawn: SpawnProber<S>) -> Self {
        Self {
            tx,
            spawn,
            base: Instant::now(),
            prober: None,
            watcher: None,
            generation: 0,
            restarts: VecDeque::new(),
            essential: Vec::new(),
        }
    }

    /// (Re)starts the prober with `specs` (a new generation: rounds of the old one are
    /// ignored).
    pub fn start_prober(&mut self, specs: S) -> Result<()> {
        if let Some(p) = self.prober.take() {
            p.stop.store(true, Ordering::Relaxed);
            let _ = p.handle.join();
        }
        self.generation += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = Heartbeat::new(self.base);
        heartbeat.beat();
        let handle = (self.spawn)(
            specs,
            self.generation,
            self.tx.clone(),
            stop.clone(),
            heartbeat.clone(),
        )
        .context("starting the prober thread")?;
        self.prober = Some(Prober {
            stop,
            heartbeat,
            handle,
        });
        Ok(())
    }

    /// Watches a thread whose end is fatal.
    pub fn essential(&mut self, name: &'static str, handle: JoinHandle<()>) {
        self.essential.push((name, handle));
    }

    /// (Re)starts the netlink watcher.
    pub fn start_watcher(&mut self) -> Result<()> {
        let tx = self.tx.clone();
        let h = events::watch(move |c| tx.send(Event::KernelChanged(c)).is_ok())
            .context("watching the kernel over netlink")?;
        self.watcher = Some(h);
        Ok(())
    }

    fn allow_restart(&mut self, now: Instant) -> bool {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= MAX_RESTARTS {
            return false;
        }
        self.restarts.push_back(now);
        true
    }

    /// Checks every watched thread: restarts one that ended (with `specs` for the prober),
    /// or returns why the daemon must exit.
    pub fn check(
        &mut self,
        now: Instant,
        max_gap: Duration,
        specs: impl FnOnce() -> S,
    ) -> Result<(), String> {
        if let Some(i) = self.essential.iter().position(|(_, h)| h.is_finished()) {
            let (name, h) = self.essential.swap_remove(i);
            return Err(format!("the {name} thread ended ({})", why(h.join())));
        }
        if self.watcher.as_ref().is_some_and(JoinHandle::is_finished) {
            let reason = self
                .watcher
                .take()
                .map(|h| why(h.join()))
                .unwrap_or_default();
            if !self.allow_restart(now) {
                return Err(format!("the netlink watcher ended ({reason}) too often"));
            }
            tracing::error!(%reason, "the netlink watcher ended; restarting it");
            self.start_watcher().map_err(|e| format!("{e:#}"))?;
            // Changes may have been missed meanwhile.
            let _ = self.tx.send(Event::KernelChanged(events::Change::ALL));
        }
        if self.prober.as_ref().is_some_and(|p| p.handle.is_finished()) {
            let reason = self
                .prober
                .take()
                .map(|p| why(p.handle.join()))
                .unwrap_or_default();
            if !self.allow_restart(now) {
                return Err(format!("the prober ended ({reason}) too often"));
            }
            tracing::error!(%reason, "the prober ended; restarting it");
            self.start_prober(specs()).map_err(|e| format!("{e:#}"))?;
        } else if !self.prober_progressing(now, max_gap) {
            // A thread cannot be killed: a stuck prober means a restart of the process.
            return Err(format!(
                "the prober made no progress for {:?}",
                self.prober
                    .as_ref()
                    .map(|p| p.heartbeat.age(now))
                    .unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Whether the prober beat within `max(3 × max_gap, MIN_STALL)`: beyond that it is stuck.
    fn prober_progressing(&self, now: Instant, max_gap: Duration) -> bool {
        let limit = (max_gap * 3).max(MIN_STALL);
        self.prober
            .as_ref()
            .is_some_and(|p| p.heartbeat.age(now) <= limit)
    }

    /// Whether the watchdog may be fed: the prober beat within two rounds (plus slack for a
    /// busy machine). Stricter than the stall limit, so the watchdog starves first.
    pub fn watchdog_ok(&self, now: Instant, max_gap: Duration) -> bool {
        let limit = max_gap * 2 + WATCHDOG_SLACK;
        self.prober
            .as_ref()
            .is_some_and(|p| p.heartbeat.age(now) <= limit)
    }

    /// Stops the prober (on exit).
    pub fn stop(&mut self) {
        if let Some(p) = self.prober.take() {
            p.stop.store(true, Ordering::Relaxed);
            let _ = p.handle.join();
        }
    }
}
