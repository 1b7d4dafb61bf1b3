//! Messages to the service manager (`sd_notify(3)`: READY, RELOADING, STOPPING, WATCHDOG) over
//! `$NOTIFY_SOCKET`, through the `sd-notify` crate; every call is a no-op outside systemd.
//!
//! The environment is not unset for children (the crate can, but only through `unsafe`
//! `remove_var`, forbidden here): hooks run with a clean environment instead (see
//! [`super::hooks`]), and `ip`/`nft` ignore `NOTIFY_SOCKET`.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Start-up finished (and after a reload, done reloading).
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// Re-reading the config. systemd 253+ wants the monotonic time with it (for
/// `Type=notify-reload`); older versions ignore the extra field.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The watchdog keep-alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to send [`watchdog`]: half of systemd's `WATCHDOG_USEC` (as sd_watchdog_enabled(3)
/// advises), or `None` when the watchdog is off or meant for another process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
