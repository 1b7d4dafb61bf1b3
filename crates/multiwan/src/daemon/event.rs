//! The event loop's input: one closed enum for everything its threads and clients send it
//! (probe rounds, kernel changes, signals, requests). Its own module so that the threads
//! that send events and the loop that handles them depend on it, not on each other.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::snapshot::{Snapshot, Subscriber};
use crate::control::{Ack, RequestError};
use crate::kernel::events::Change;

/// One finished probe round of one uplink and family.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// The uplink probed (shared with its prober's spec: a round costs no copy of the name).
    pub uplink: Arc<str>,
    /// The family its targets belong to.
    pub family: multiwan_core::plan::Family,
    /// Per target: the RTT, `None` for no answer in time.
    pub results: Vec<Option<Duration>>,
    /// Whether the gateway answered the witness ping, if one was sent.
    pub witness: Option<bool>,
    /// When the prober judged the round (the rounds of one prober wake-up share it).
    pub at: Instant,
}

/// Everything the event loop reacts to.
#[derive(Debug)]
pub enum Event {
    /// Probe rounds finished: (uplink, per-target results, the gateway witness if it was
    /// pinged), from prober generation `generation`.
    Rounds {
        generation: u64,
        rounds: Vec<RoundReport>,
    },
    /// The kernel reported a change.
    KernelChanged(Change),
    /// SIGHUP: re-read the config.
    Reload,
    /// SIGTERM / SIGINT.
    Stop,
    /// A control or metrics request wants the current state.
    Query(Sender<Snapshot>),
    /// `watch`: send events to this bounded queue until it closes or fills.
    Subscribe(Subscriber),
    /// `multiwan uplink NAME enable|disable`.
    Admin {
        name: String,
        enable: bool,
        reply: Sender<Result<Ack, RequestError>>,
    },
}
