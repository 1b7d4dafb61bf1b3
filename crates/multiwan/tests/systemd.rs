//! The unit under a real systemd (issue 13): systemd boots as PID 1 of a container whose
//! network namespace is the lab's router, with the Debian package installed; the unit is
//! started, reloaded (and refuses a broken config), killed with SIGKILL and restarted, starved
//! of watchdog pings by a stuck prober and restarted, and stopped fail-static. Journald gets
//! the transitions with their UPLINK=, STATE=, REASON= fields. The steps are
//! tests/root/systemd.sh.

mod common;

use common::{two_uplinks_checked, Lab};

#[test]
fn the_unit_runs_reloads_restarts_and_stops_under_systemd() {
    common::require_root();
    let deb = common::debroot::deb();
    let base = common::debroot::base_root();
    let lab = Lab::new(2, 1);
    let config = lab.write_config(&two_uplinks_checked("round-robin"));
    let work = multiwan_lab::scratch::private_dir("systemd").expect("private dir");
    let netns = std::path::PathBuf::from(lab.topo.router.name());
    let out = common::debroot::run_script(
        "systemd.sh",
        &[
            &base,
            &deb,
            work.path(),
            &netns,
            std::path::Path::new(&config),
        ],
    );
    println!("{out}");
    assert!(out.contains("systemd lifecycle ok"), "{out}");
    // Fail-static, seen from outside the container: the table outlives the stopped unit.
    assert!(lab
        .topo
        .router
        .exec("nft", &["list", "table", "inet", "multiwan"])
        .is_ok());
}
