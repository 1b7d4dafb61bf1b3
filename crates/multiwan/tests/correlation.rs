//! A probe target shared by every uplink dies on the internet side while the uplinks work
//! (issue 10, point 1): the uplinks stay up, the LAN keeps working over both, `status` names
//! the target as suspect; when the target answers again it counts again.

mod common;

use std::time::{Duration, Instant};

use common::{count, two_uplinks_checked, Lab, WaitFor};

const TARGET: &str = "172.16.0.200";

/// Gives the internet server a second address, reachable over both ISPs, to probe.
fn add_target(lab: &Lab) {
    lab.topo
        .server
        .ip(&["addr", "add", &format!("{TARGET}/32"), "dev", "lo"])
        .expect("target address");
    for (i, isp) in lab.topo.isps.iter().enumerate() {
        isp.ns
            .ip(&[
                "route",
                "add",
                &format!("{TARGET}/32"),
                "via",
                &format!("172.16.{}.2", i + 1),
            ])
            .expect("route to the target");
    }
}

#[test]
fn a_dead_shared_target_leaves_the_lan_online_and_is_reported() {
    let lab = Lab::new(2, 1);
    add_target(&lab);
    let text = two_uplinks_checked("round-robin").replace(
        &format!("\"{}\"", multiwan_lab::topology::SERVER_ADDR),
        &format!("\"{TARGET}\""),
    );
    let d = lab.start_daemon(&text);
    d.wait_for("both up", Duration::from_secs(5), |d| {
        d.uplink_state("isp1").as_deref() == Some("up")
            && d.uplink_state("isp2").as_deref() == Some("up")
    });
    // The target stops answering; everything else on the internet works.
    lab.topo
        .server
        .ip(&["addr", "del", &format!("{TARGET}/32"), "dev", "lo"])
        .expect("kill the target");
    let t = Instant::now();
    let mut suspect = false;
    while t.elapsed() < Duration::from_secs(4) {
        let s = d.state().expect("state");
        for u in s["uplinks"].as_array().expect("uplinks") {
            assert_eq!(
                u["state"],
                "up",
                "an uplink went down because the shared target died:\n{}",
                lab.daemon_log()
            );
        }
        suspect |= s["uplinks"][0]["targets"][0]["suspect"] == true;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        suspect,
        "the target is reported suspect:\n{}",
        lab.daemon_log()
    );
    let v = lab.tcp_from_host(0, 10);
    assert_eq!(
        (count(&v, 0), count(&v, 1)),
        (5, 5),
        "the LAN keeps both uplinks: {v:?}"
    );
    let out = lab.multiwan(&["status", "--run-dir", &lab.run_dir()]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("SUSPECT"), "{status}");
    assert!(lab.daemon_log().contains("suspect"), "{}", lab.daemon_log());
    // The target comes back: no longer suspect.
    lab.topo
        .server
        .ip(&["addr", "add", &format!("{TARGET}/32"), "dev", "lo"])
        .expect("revive the target");
    d.wait_for("target cleared", Duration::from_secs(3), |d| {
        d.state()
            .is_some_and(|s| s["uplinks"][0]["targets"][0]["suspect"] == false)
    });
    // And a real outage of one uplink is still detected as usual.
    lab.topo.isps[0]
        .ns
        .ip(&["route", "replace", "blackhole", &format!("{TARGET}/32")])
        .expect("cut isp1's upstream");
    d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    assert_eq!(d.uplink_state("isp2").as_deref(), Some("up"));
}
