//! The two touch points with the service manager: `sd_notify` messages (READY, RELOADING,
//! STOPPING, WATCHDOG) over `$NOTIFY_SOCKET`, and the transition hook (like mwan3.user).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Sends a notification to systemd if it asked for them; a no-op otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// How often to send WATCHDOG=1, if systemd's watchdog is on.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec / 2))
}

/// What a hook is told about a transition (as environment variables).
#[derive(Debug, Clone)]
pub struct HookCall {
    pub uplink: String,
    pub interface: String,
    pub old_state: String,
    pub new_state: String,
    pub reason: String,
}

/// Runs the hook without blocking the daemon; it is killed after 30 s and always reaped.
pub fn run_hook(path: &str, call: HookCall) {
    let child = Command::new(path)
        .env("MULTIWAN_UPLINK", &call.uplink)
        .env("MULTIWAN_INTERFACE", &call.interface)
        .env("MULTIWAN_OLD_STATE", &call.old_state)
        .env("MULTIWAN_NEW_STATE", &call.new_state)
        .env("MULTIWAN_REASON", &call.reason)
        .stdin(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(hook = path, error = %e, "cannot run hook");
            return;
        }
    };
    let path = path.to_string();
    let _ = std::thread::Builder::new().name("hook".into()).spawn(move || {
        let start = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    tracing::warn!(hook = %path, %status, uplink = %call.uplink, "hook failed");
                    return;
                }
                Ok(Some(_)) => return,
                Ok(None) if start.elapsed() > Duration::from_secs(30) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(hook = %path, uplink = %call.uplink, "hook killed after 30 s");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return,
            }
        }
    });
}
