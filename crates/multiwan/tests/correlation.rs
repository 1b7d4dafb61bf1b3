//! A probe target shared by every uplink dies on the internet side while the uplinks work
//! (issue 10, point 1): the uplinks stay up, the LAN keeps working over both, `status` names
//! the target as suspect; when the target answers again it counts again. Targets shared by
//! some uplinks only, all dying at once (the ISPs drop ICMP to them), take no uplink down.

mod common;

use std::time::{Duration, Instant};

use common::{count, two_uplinks_checked, Lab, WaitFor};
use multiwan_lab::topology::{Family, SERVER_ADDR, SERVER_ADDR6};

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

/// The second target of each family, added to the server beside its own address.
const SECOND: &str = "172.16.0.211";
const SECOND6: &str = "2001:db8:ff::211";

/// Three uplinks, dual stack: isp1 and isp2 probe the server's address and [`SECOND`] of
/// each family, isp3 only the server's.
fn three_uplinks_sharing_targets(lab: &Lab) -> String {
    let mut t = String::from("[lan]\ninterfaces = [\"lan0\"]\n\n");
    for (i, isp) in lab.topo.isps.iter().enumerate() {
        let targets = if i < 2 {
            format!("\"{SERVER_ADDR}\", \"{SECOND}\", \"{SERVER_ADDR6}\", \"{SECOND6}\"")
        } else {
            format!("\"{SERVER_ADDR}\", \"{SERVER_ADDR6}\"")
        };
        t += &format!(
            "[[uplink]]\nname = \"isp{}\"\ninterface = \"{}\"\ngateway = \"{}\"\ngateway6 = \"{}\"\n[uplink.check]\ntargets = [{targets}]\n\n",
            i + 1,
            isp.router_if,
            isp.gateway,
            isp.gateway6,
        );
    }
    t + "[balance]\nmethod = \"round-robin\"\n"
}

#[test]
fn targets_shared_by_some_uplinks_dropping_icmp_take_no_uplink_down() {
    let lab = Lab::new(3, 1);
    lab.topo
        .server
        .ip(&["addr", "add", &format!("{SECOND}/32"), "dev", "lo"])
        .expect("second target");
    lab.topo
        .server
        .ip(&[
            "addr",
            "add",
            &format!("{SECOND6}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .expect("second IPv6 target");
    for (i, isp) in lab.topo.isps.iter().enumerate() {
        let n = i + 1;
        isp.ns
            .ip(&[
                "route",
                "add",
                &format!("{SECOND}/32"),
                "via",
                &format!("172.16.{n}.2"),
            ])
            .expect("route to the second target");
        isp.ns
            .ip(&[
                "-6",
                "route",
                "add",
                &format!("{SECOND6}/128"),
                "via",
                &format!("2001:db8:ff:{n}::2"),
            ])
            .expect("route to the second IPv6 target");
    }
    let d = lab.start_daemon(&three_uplinks_sharing_targets(&lab));
    let names = ["isp1", "isp2", "isp3"];
    let all_up = |d: &common::Daemon| {
        names.iter().all(|n| {
            Family::BOTH
                .iter()
                .all(|f| d.uplink_state_of(n, *f).as_deref() == Some("up"))
        })
    };
    d.wait_for("every uplink up", Duration::from_secs(5), all_up);
    // Every ISP starts dropping pings to both targets of both families beyond it; their
    // gateways still answer, and TCP to the server still works.
    for isp in &lab.topo.isps {
        isp.ns
            .nft(&format!(
                "table inet noping {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  ip daddr {{ {SERVER_ADDR}, {SECOND} }} icmp type echo-request drop\n  ip6 daddr {{ {SERVER_ADDR6}, {SECOND6} }} icmpv6 type echo-request drop\n }}\n}}\n"
            ))
            .expect("drop pings to the targets");
    }
    let t = Instant::now();
    let mut every_target_suspect = false;
    while t.elapsed() < Duration::from_secs(5) {
        assert!(
            all_up(&d),
            "an uplink went down because targets shared by some uplinks died: {:?}\n{}",
            d.states(),
            lab.daemon_log()
        );
        every_target_suspect = d.state().is_some_and(|s| {
            s["uplinks"].as_array().is_some_and(|us| {
                us.iter().all(|u| {
                    [&u["targets"], &u["ipv6"]["targets"]].iter().all(|ts| {
                        ts.as_array()
                            .is_some_and(|ts| ts.iter().all(|t| t["suspect"] == true))
                    })
                })
            })
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        every_target_suspect,
        "every target is reported suspect: {:?}\n{}",
        d.state(),
        lab.daemon_log()
    );
    let out = lab.multiwan(&["status", "--run-dir", &lab.run_dir()]);
    let status = String::from_utf8_lossy(&out.stdout);
    for target in [
        SERVER_ADDR.to_string(),
        SECOND.to_string(),
        SERVER_ADDR6.to_string(),
        SECOND6.to_string(),
    ] {
        assert!(
            status
                .lines()
                .any(|l| l.contains(&target) && l.contains("SUSPECT")),
            "{target} suspect in:\n{status}"
        );
    }
    let v = lab.tcp_from_host(0, 9);
    assert_eq!(
        (count(&v, 0), count(&v, 1), count(&v, 2)),
        (3, 3, 3),
        "the LAN keeps every uplink: {v:?}"
    );
}
