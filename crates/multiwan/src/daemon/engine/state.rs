//! What the engine shows: the [`snapshot::Snapshot`] handed to control and metrics requests,
//! and `state.json` in the run directory (version 1; IPv6 in an `ipv6` object per uplink).

use std::collections::BTreeSet;

use multiwan_core::correlate::TargetKey;
use multiwan_core::model::{Check, Uplink};
use multiwan_core::plan::Family;
use serde::Serialize;

use super::{idx, unix_s, Engine, FamRt};
use crate::daemon::snapshot;
use crate::kernel::Kernel;
use multiwan_core::order::Collect;

impl<K: Kernel> Engine<K> {
    fn suspects(&self) -> BTreeSet<TargetKey> {
        self.families
            .iter()
            .flat_map(|f| f.correlator.suspects().iter().copied())
            .collect_set()
    }

    /// What a control or metrics request sees.
    pub fn snapshot(&self) -> snapshot::Snapshot {
        let fam_snap = |f: &FamRt| snapshot::FamSnap {
            state: f.monitor.state().clone(),
            since: unix_s(f.since_wall),
            stats: f.monitor.stats(),
            targets: f.monitor.target_stats(),
            counters: f.counters.clone(),
        };
        snapshot::Snapshot {
            cfg: self.cfg.clone(),
            config_path: self.config_path.clone(),
            pid: std::process::id(),
            started: unix_s(self.started),
            reconciles: self.reconciles,
            kernel_failures: self.kernel_failures,
            kernel_error: self.failing.as_ref().map(super::Failing::shown),
            ids: self.ids.clone(),
            facts: self.facts.clone(),
            uplinks: self
                .uplinks
                .iter()
                .map(|(n, rt)| {
                    let v4 = fam_snap(&rt.v4);
                    (
                        n.clone(),
                        snapshot::UplinkSnap {
                            state: v4.state,
                            since: v4.since,
                            disabled: self.disabled.contains(n),
                            stats: v4.stats,
                            targets: v4.targets,
                            counters: v4.counters,
                            ipv6: rt.v6.as_ref().map(fam_snap),
                        },
                    )
                })
                .collect_map(),
            usable: self.families[idx(Family::V4)].usable_now.clone(),
            usable6: self.families[idx(Family::V6)].usable_now.clone(),
            fail_open: self.families[idx(Family::V4)].failing_open,
            fail_open6: self.families[idx(Family::V6)].failing_open,
            suspect: self.suspects(),
            policies: self
                .last_plan
                .as_ref()
                .map(|p| p.policies.clone())
                .unwrap_or_default(),
        }
    }

    /// Writes `state.json` (atomically).
    pub fn write_state(&self) {
        let suspect = self.suspects();
        let state = StateFile {
            version: 1,
            pid: std::process::id(),
            config: self.config_path.clone(),
            started: unix_s(self.started),
            reconciles: self.reconciles,
            kernel_error: self.failing.as_ref().map(super::Failing::shown),
            fail_open: self.failing_open(),
            uplinks: self
                .cfg
                .uplinks
                .iter()
                .filter_map(|u| {
                    let rt = self.uplinks.get(&u.name)?;
                    let fam = |family: Family, f: &FamRt, check: &Check| {
                        let usable = &self.families[idx(family)].usable_now;
                        family_state(u, f, check, usable.contains(&u.name), &suspect)
                    };
                    let v4 = fam(Family::V4, &rt.v4, &u.check);
                    let ipv6 = match (&rt.v6, &u.ipv6) {
                        (Some(f), Some(c)) => Some(fam(Family::V6, f, &c.check)),
                        _ => None,
                    };
                    Some(UplinkState {
                        name: u.name.clone(),
                        interface: u.interface.clone(),
                        v4,
                        ipv6,
                    })
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

fn family_state(
    _u: &Uplink,
    f: &FamRt,
    check: &Check,
    usable: bool,
    suspect: &BTreeSet<TargetKey>,
) -> FamilyState {
    let s = f.monitor.state();
    let stats = f.monitor.stats();
    FamilyState {
        state: s.name().to_string(),
        reason: s.reason().map(|r| r.code().to_string()),
        detail: s.reason().map(|r| r.to_string()),
        since: unix_s(f.since_wall),
        usable,
        loss_percent: stats.loss_percent(),
        rtt_ms: stats.avg_rtt.map(|d| d.as_secs_f64() * 1000.0),
        targets: check
            .targets
            .iter()
            .zip(f.monitor.target_stats())
            .map(|(t, s)| TargetState {
                target: multiwan_core::correlate::target_label(&(check.method, *t)),
                suspect: suspect.contains(&(check.method, *t)),
                loss_percent: s.loss_percent(),
                rtt_ms: s.avg_rtt.map(|d| d.as_secs_f64() * 1000.0),
                last_rtt_ms: s.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect(),
    }
}

/// `state.json`: the daemon's view, for scripts and the tests (version 1).
#[derive(Debug, Serialize)]
struct StateFile {
    version: u32,
    pid: u32,
    /// The config file the daemon reads (absolute): `reload -c` refuses another one.
    config: String,
    started: u64,
    reconciles: u64,
    /// The kernel refuses the daemon's updates now (absent while it takes them).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_error: Option<crate::control::KernelError>,
    /// Every uplink of a family is down by probes alone and the ones in use stay in use.
    fail_open: bool,
    uplinks: Vec<UplinkState>,
}

/// One uplink: its IPv4 health at the top level (as before IPv6 existed), IPv6 inside.
#[derive(Debug, Serialize)]
struct UplinkState {
    name: String,
    interface: String,
    #[serde(flatten)]
    v4: FamilyState,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<FamilyState>,
}

#[derive(Debug, Serialize)]
struct FamilyState {
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
