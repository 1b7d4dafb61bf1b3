//! `multiwan run`: keeps the plan true while uplinks fail, recover, reconnect and change
//! addresses.
//!
//! ```text
//!   prober thread ──────Rounds─────────┐            (supervised: heartbeat, restart)
//!   netlink watcher ──KernelChanged────┤            (supervised: restart)
//!   signal thread ──Reload/Stop────────┼──► event loop ──► Engine (decisions) ──► Kernel
//!   control / metrics ──Query/Admin────┘       │ hooks (in order), watch events,
//!                                              │ conntrack flush by mark, state.json
//!                                              └─► watchdog: fed only while probing progresses
//! ```
//! One loop over a closed [`Event`] enum; the decisions are the plain synchronous handlers of
//! [`engine::Engine`], written against the [`crate::kernel::Kernel`] trait and tested with
//! an in-memory kernel and scripted time. This module only wires threads and the real kernel.
//!
//! Exit leaves the data plane in place (fail-static) unless `--cleanup` is given, so a
//! restart — or a `kill -9` — costs no connection; a new daemon adopts the installed state.

pub mod engine;
pub mod event;
pub mod hooks;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod server;
pub mod snapshot;
pub mod supervise;

use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use anyhow::{Context, Result};

pub use crate::args::RunArgs;
use crate::kernel::events::Change;
use crate::kernel::System;
use crate::rundir;
use crate::settings::{load_config_for_run, Failure};
use engine::Engine;
// Named by the threads that feed the loop as `super::Event`.
pub use event::{Event, RoundReport};
use supervise::Supervisor;

/// Runs the daemon until SIGTERM/SIGINT, or until a thread it cannot do without fails
/// (then it exits non-zero and leaves the kernel state for the next daemon).
pub fn run(args: RunArgs) -> Result<(), Failure> {
    let cfg = load_config_for_run(&args.config)?;
    rundir::prepare(&args.run_dir)?;
    let _pid = rundir::PidLock::acquire(&args.run_dir)?;
    let (tx, rx) = channel();
    let signals = spawn_signal_thread(tx.clone())?;
    let metrics = cfg.daemon.metrics;
    let kernel = System::open(&args.run_dir)?;
    let mut engine = Engine::new(
        kernel,
        cfg,
        // Absolute, so `reload -c FILE` from any directory can tell whether FILE is it; not
        // resolved, since a symlinked config is read anew (its new target) on each reload.
        std::path::absolute(&args.config)
            .unwrap_or_else(|_| args.config.clone())
            .display()
            .to_string(),
        args.run_dir.clone(),
        Instant::now(),
    )?;
    let mut sup = Supervisor::new(tx.clone(), probe::spawn);
    sup.essential("signal", signals);
    sup.start_watcher()?;
    let control = server::start_control(
        &args.run_dir,
        tx.clone(),
        engine.cfg.daemon.control_group.as_deref(),
    )?;
    sup.essential("control socket", control);
    if let Some(addr) = metrics {
        let listener = metrics::start(addr, tx).map_err(|e| {
            // An address this machine does not have is the config's mistake (exit 2: a
            // restart would fail the same way), unlike a port in use for now.
            let kind = e.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
            if kind == Some(std::io::ErrorKind::AddrNotAvailable) {
                Failure::Config(format!(
                    "{}: daemon.metrics: cannot listen on {addr}: no such address on this machine",
                    args.config.display()
                ))
            } else {
                Failure::Runtime(e)
            }
        })?;
        sup.essential("metrics", listener);
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    engine.reconcile(Instant::now());
    // Probes need the uplinks' rules and routes: start them once those are in place.
    sup.start_prober(engine.probe_specs())?;
    engine.probers_stale = false;
    notify::ready();
    tracing::info!(uplinks = engine.cfg.uplinks.len(), "multiwan running");
    let result = event_loop(&mut engine, &mut sup, &rx, &args);
    sup.stop();
    result
}

fn event_loop(
    engine: &mut Engine<System>,
    sup: &mut Supervisor<Vec<probe::ProbeSpec>>,
    rx: &Receiver<Event>,
    args: &RunArgs,
) -> Result<(), Failure> {
    let watchdog = notify::watchdog_interval();
    // Healthy probers report at least every HOLD, and the periodic work rides on those
    // wake-ups; the timeout only fires when they fall silent (a prober that died or hangs is
    // then noticed within it). Longer than HOLD, so a healthy router wakes the loop once per
    // report instead of once per report and once per timeout.
    let quiet = probe::HOLD + probe::HOLD / 2;
    let tick = watchdog.unwrap_or(quiet).min(quiet);
    let mut last_ping: Option<Instant> = None;
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // Handle everything that is queued before touching the kernel once.
        let mut change = Change::default();
        let mut events: Vec<Event> = first.into_iter().collect();
        events.extend(rx.try_iter());
        for ev in events {
            let now = Instant::now();
            match ev {
                Event::Rounds { generation, rounds } if generation == sup.generation => {
                    // A batch may hold several wake-ups' rounds (the prober holds healthy
                    // rounds for up to a second): each wake-up's, at its own time.
                    for group in rounds.chunk_by(|a, b| a.at == b.at) {
                        engine.on_rounds(group, group[0].at);
                    }
                }
                Event::Rounds { .. } => {}
                Event::KernelChanged(c) => change = change.merge(c),
                Event::Reload => reload(engine, &args.config, &args.run_dir, now),
                Event::Query(reply) => {
                    let _ = reply.send(engine.snapshot());
                }
                Event::Subscribe(tx) => engine.subscribe(tx),
                Event::Admin {
                    name,
                    enable,
                    reply,
                } => {
                    let _ = reply.send(engine.admin(&name, enable, now));
                }
                Event::Stop => {
                    notify::stopping();
                    sup.stop();
                    engine.stop(args.cleanup);
                    let _ = std::fs::remove_file(crate::control::socket_path(&args.run_dir));
                    return Ok(());
                }
            }
        }
        let now = Instant::now();
        if change.any() {
            engine.on_kernel_changed(change, now);
        }
        engine.tick(now);
        run_hooks(engine);
        if engine.probers_stale {
            sup.start_prober(engine.probe_specs())?;
            engine.probers_stale = false;
        }
        let gap = engine.slowest_round();
        if let Err(reason) = sup.check(now, gap, || engine.probe_specs()) {
            tracing::error!(%reason, "exiting so the service manager restarts multiwan; the data plane stays in place");
            return Err(Failure::Runtime(anyhow::anyhow!(
                "{reason}; the data plane stays in place"
            )));
        }
        // Fed only while the probes make progress: a frozen failover must not look healthy.
        if let Some(every) = watchdog {
            let due = last_ping.is_none_or(|t| now.saturating_duration_since(t) >= every);
            if due && sup.watchdog_ok(now, gap) {
                notify::watchdog();
                last_ping = Some(now);
            }
        }
    }
}

fn reload(engine: &mut Engine<System>, path: &Path, run_dir: &Path, now: Instant) {
    notify::reloading();
    let cfg = match load_config_for_run(path) {
        Ok(c) => Some(c),
        Err(Failure::Config(msg)) => {
            for line in msg.lines() {
                tracing::error!("{line}");
            }
            None
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!(error = %format!("{e:#}"), "reload failed");
            None
        }
    };
    engine.reload(cfg, now);
    if let Err(e) = server::socket_access(run_dir, engine.cfg.daemon.control_group.as_deref()) {
        tracing::error!(error = %format!("{e:#}"), "cannot set the control socket's access");
    }
    notify::ready();
}

fn run_hooks(engine: &mut Engine<System>) {
    let Some(hook) = engine.cfg.daemon.hook.clone() else {
        engine.hook_calls.clear();
        return;
    };
    for call in std::mem::take(&mut engine.hook_calls) {
        hooks::run_hook(&hook, call);
    }
}

fn spawn_signal_thread(tx: Sender<Event>) -> Result<std::thread::JoinHandle<()>> {
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
        .context("starting the signal thread")
}
