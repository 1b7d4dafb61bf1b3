//! What the event loop hands out: a [`Snapshot`] of its state for a request (the loop keeps
//! answering while the request reads the kernel), the counters it keeps for metrics, and the
//! bounded queue of a `watch` client. Plain data with no thread or socket of its own, so the
//! event, the loop, the control socket and the metrics endpoint can all name it without
//! depending on each other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use multiwan_core::explain::Health;
use multiwan_core::health::{State, WindowStats};
use multiwan_core::model::Config;
use multiwan_core::plan::{Family, PolicyPlan};
use multiwan_core::Facts;

use crate::control::WatchEvent;
use multiwan_core::order::Collect;

/// Events queued for one `watch` client before it is dropped as too slow.
pub const WATCH_QUEUE: usize = 256;
/// Upper bounds (seconds) of the probe RTT histogram buckets.
pub const RTT_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Per-uplink counters the loop keeps for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub probes_ok: u64,
    pub probes_lost: u64,
    /// Cumulative counts per bucket of [`RTT_BUCKETS`] (plus +Inf = `probes_ok`).
    pub rtt_buckets: [u64; RTT_BUCKETS.len()],
    pub rtt_sum: f64,
    /// Transitions by target state.
    pub transitions: BTreeMap<String, u64>,
    /// Seconds from the first failed probe round to the kernel no longer using the uplink,
    /// for the last failover.
    pub last_failover_s: Option<f64>,
}

/// One uplink as the loop sees it: its IPv4 health, and its IPv6 health when it carries it.
#[derive(Debug, Clone)]
pub struct UplinkSnap {
    pub state: State,
    pub since: u64,
    pub disabled: bool,
    pub stats: WindowStats,
    pub targets: Vec<WindowStats>,
    pub counters: Counters,
    pub ipv6: Option<FamSnap>,
}

/// One family's health of an uplink.
#[derive(Debug, Clone)]
pub struct FamSnap {
    pub state: State,
    pub since: u64,
    pub stats: WindowStats,
    pub targets: Vec<WindowStats>,
    pub counters: Counters,
}

/// What the event loop hands to a request.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub cfg: Config,
    pub config_path: String,
    pub pid: u32,
    pub started: u64,
    pub reconciles: u64,
    /// Kernel updates that failed since start.
    pub kernel_failures: u64,
    /// The kernel update failing now, if one is.
    pub kernel_error: Option<crate::control::KernelError>,
    pub ids: BTreeMap<String, u32>,
    pub facts: Facts,
    pub uplinks: BTreeMap<String, UplinkSnap>,
    pub usable: BTreeSet<String>,
    /// The uplinks taking new IPv6 connections.
    pub usable6: BTreeSet<String>,
    /// Every uplink is down by IPv4 probes alone; the last ones stay in use for IPv4.
    pub fail_open: bool,
    /// The same for IPv6.
    pub fail_open6: bool,
    /// Probe targets suspect (failing on every uplink while they work).
    pub suspect: BTreeSet<multiwan_core::correlate::TargetKey>,
    pub policies: Vec<PolicyPlan>,
}

impl Snapshot {
    /// Every uplink's state in `family` (those that carry it).
    pub fn states_of(&self, family: Family) -> BTreeMap<String, State> {
        self.uplinks
            .iter()
            .filter_map(|(n, u)| {
                let s = match family {
                    Family::V4 => u.state.clone(),
                    Family::V6 => u.ipv6.as_ref()?.state.clone(),
                };
                Some((n.clone(), s))
            })
            .collect_map()
    }

    /// The uplinks' health in `family` as the loop planned with it: their states and the
    /// usable set after fail-open (what `explain` must use to agree with the kernel).
    pub fn health_of(&self, family: Family) -> Health {
        let (usable, fail_open) = match family {
            Family::V4 => (&self.usable, self.fail_open),
            Family::V6 => (&self.usable6, self.fail_open6),
        };
        Health {
            states: self.states_of(family),
            usable: usable.clone(),
            fail_open,
        }
    }

    /// The uplink whose id a connection mark carries (under the mask), if any.
    pub fn uplink_of_mark(&self, mark: u32) -> Option<String> {
        let k = self.cfg.kernel;
        let id = (mark & k.mark_mask) >> k.mark_shift();
        self.ids
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(n, _)| n.clone())
    }
}

/// One `watch` client as the event loop holds it: a bounded queue. The loop only ever calls
/// [`Subscriber::try_send`], so a slow client can never block it; a full queue drops the client.
#[derive(Debug)]
pub struct Subscriber {
    tx: SyncSender<WatchEvent>,
    overflowed: Arc<AtomicBool>,
}

impl Subscriber {
    /// A subscriber and the receiving end its connection thread reads.
    pub fn new() -> (Self, std::sync::mpsc::Receiver<WatchEvent>, Arc<AtomicBool>) {
        let (tx, rx) = sync_channel(WATCH_QUEUE);
        let overflowed = Arc::new(AtomicBool::new(false));
        (
            Self {
                tx,
                overflowed: overflowed.clone(),
            },
            rx,
            overflowed,
        )
    }

    /// Queues an event without blocking; an error means: drop this subscriber.
    pub fn try_send(&self, ev: WatchEvent) -> std::result::Result<(), Dropped> {
        match self.tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::Release);
                tracing::warn!(
                    queued = WATCH_QUEUE,
                    "watch client does not keep up: dropped"
                );
                Err(Dropped::TooSlow)
            }
            Err(TrySendError::Disconnected(_)) => Err(Dropped::Gone),
        }
    }
}

/// Why a subscriber is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Its queue was full.
    TooSlow,
    /// Its connection ended.
    Gone,
}
