//! `multiwan run` against the real kernel: failover, failback, link and address changes,
//! reload and crash behaviour, with ISPs whose upstream can be cut while the link stays up.

mod common;

use std::time::Duration;

use common::{count, two_uplinks_checked, Lab};

#[test]
fn upstream_blackhole_fails_over_and_back() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    assert_eq!(d.uplink_state("isp1").as_deref(), Some("up"));
    assert_eq!(d.uplink_state("isp2").as_deref(), Some("up"));
    let v = lab.tcp_from_host(0, 10);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (5, 5),
        "both uplinks carry traffic from the start: {v:?}"
    );

    lab.cut_upstream(0);
    let cut = std::time::Instant::now();
    // New connections succeed again once 10 in a row work (all via isp2).
    let mut streak = 0;
    while streak < 10 {
        assert!(
            cut.elapsed() < Duration::from_secs(2),
            "no failover within 2 s\n{}",
            lab.daemon_log()
        );
        match lab.try_connect(0, Duration::from_millis(150)) {
            Some(1) => streak += 1,
            _ => streak = 0,
        }
    }
    let failover = cut.elapsed();
    eprintln!("failover took {failover:?}");
    assert_eq!(d.uplink_state("isp1").as_deref(), Some("down"));

    lab.restore_upstream(0);
    d.wait_for("isp1 back up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
    });
    let v = lab.tcp_from_host(0, 10);
    assert_eq!((count(&v, 0), count(&v, 1)), (5, 5), "failback: {v:?}");
}
