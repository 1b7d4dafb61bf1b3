//! Supervision of the daemon's threads (issue 10, "Supervision"), with faults injected into
//! the prober through `MULTIWAN_FAULT`: a prober that panics is restarted and failover keeps
//! working; one that panics again and again, or stops making progress, makes the daemon stop
//! feeding the watchdog and exit non-zero, leaving the data plane in place (fail-static).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{two_uplinks_checked, Lab, WaitFor};

fn wait_log(lab: &Lab, want: &str, limit: Duration) {
    let t = Instant::now();
    while !lab.daemon_log().contains(want) {
        assert!(
            t.elapsed() < limit,
            "the daemon did not log {want:?}:\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_panicking_prober_is_restarted_and_failover_still_works() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon_with_env(
        &two_uplinks_checked("round-robin"),
        &[("MULTIWAN_FAULT", "prober-panic-once")],
    );
    wait_log(
        &lab,
        "the prober ended; restarting it",
        Duration::from_secs(10),
    );
    assert!(
        lab.daemon_log().contains("injected prober fault"),
        "the reason is logged:\n{}",
        lab.daemon_log()
    );
    lab.cut_upstream(0);
    d.wait_for("isp1 down after the restart", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
}

/// Waits for the daemon to exit; returns its exit code.
fn exit_code(d: &mut common::Daemon, limit: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(status)) = d.child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_stuck_prober_starves_the_watchdog_and_the_daemon_exits_fail_static() {
    let lab = Lab::new(2, 1);
    let sock_path = lab.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut d = lab.start_daemon_with_env(
        &two_uplinks_checked("round-robin"),
        &[
            ("MULTIWAN_FAULT", "prober-hang"),
            ("NOTIFY_SOCKET", &sock_path.display().to_string()),
            // Pings every 500 ms while healthy.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    // Collect notifications with their arrival times until the daemon exits.
    let start = Instant::now();
    let mut pings = Vec::new();
    let mut code = None;
    let mut buf = [0u8; 64];
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = sock.recv(&mut buf) {
            if buf[..n].trim_ascii_end() == b"WATCHDOG=1" {
                pings.push(start.elapsed());
            }
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            code = status.code();
            break;
        }
    }
    assert_eq!(
        code,
        Some(1),
        "the daemon must exit non-zero:\n{}",
        lab.daemon_log()
    );
    assert!(
        !pings.is_empty(),
        "the watchdog was fed while probing worked"
    );
    let exited = start.elapsed();
    let last = *pings.last().expect("pings");
    assert!(
        exited.saturating_sub(last) >= Duration::from_secs(1),
        "pings stopped well before the exit (last {last:?}, exit {exited:?}): {pings:?}"
    );
    assert!(lab.daemon_log().contains("the prober made no progress"));
    // Fail-static: the data plane is still there for the next daemon.
    let out = lab
        .topo
        .router
        .exec("nft", &["list", "table", "inet", "multiwan"]);
    assert!(out.is_ok(), "the table stays after the exit");
}

#[test]
fn a_prober_that_keeps_dying_makes_the_daemon_exit() {
    let lab = Lab::new(2, 1);
    let mut d = lab.start_daemon_with_env(
        &two_uplinks_checked("round-robin"),
        &[("MULTIWAN_FAULT", "prober-panic")],
    );
    let code = exit_code(&mut d, Duration::from_secs(30));
    assert_eq!(code, Some(1), "{}", lab.daemon_log());
    assert!(
        lab.daemon_log()
            .contains("the prober ended (it panicked: injected prober fault"),
        "{}",
        lab.daemon_log()
    );
}
