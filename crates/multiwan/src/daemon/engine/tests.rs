//! The daemon's decisions against the in-memory kernel, with scripted time: failover and
//! failback, flushing only the failed uplink, link events, failed updates and retries,
//! drift repair, reloads, drains and hook order. No root, no namespace, no sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use multiwan_core::plan::{Family, Link};
use multiwan_core::Facts;

use super::*;
use crate::kernel::fake::FakeKernel;

const CFG: &str = r#"
[lan]
interfaces = ["lan0"]
[daemon]
hook = "/bin/true"
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
[uplink.check]
targets = ["172.16.0.100"]
[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
[uplink.check]
targets = ["172.16.0.100"]
"#;

fn cfg(text: &str) -> Config {
    multiwan_core::load("t.toml", text).expect("valid config")
}

fn facts(up: &[(&str, bool)]) -> Facts {
    let links: BTreeMap<String, Link> = up
        .iter()
        .enumerate()
        .map(|(i, (name, up))| {
            (
                name.to_string(),
                Link {
                    up: *up,
                    addrs: vec![format!("10.37.{}.253", i + 1).parse().expect("ip")],
                    onlink4: vec![format!("10.37.{}.0/24", i + 1).parse().expect("net")],
                    gateway: None,
                    addrs6: vec![format!("2001:db8:{}::253", i + 1).parse().expect("ip")],
                    gateway6: None,
                    onlink6: vec![format!("2001:db8:{}::/64", i + 1).parse().expect("net")],
                },
            )
        })
        .collect();
    Facts {
        links: Some(links),
        ..Facts::default()
    }
}

struct World {
    e: Engine<FakeKernel>,
    t: Instant,
    _dir: tempfile_dir::Dir,
}

/// A private directory removed on drop (state.json is written there).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "mw-engine-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("dir");
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn report(
    uplink: &str,
    family: Family,
    results: Vec<Option<Duration>>,
    witness: Option<bool>,
) -> crate::daemon::RoundReport {
    crate::daemon::RoundReport {
        uplink: uplink.into(),
        family,
        results,
        witness,
        // Unused here: the tests pass the scripted time to `on_rounds` themselves.
        at: std::time::Instant::now(),
    }
}

impl World {
    fn new(text: &str) -> Self {
        Self::with_links(text, &["wan1", "wan2", "lan0"])
    }

    /// [`World::new`] with the interfaces `links`, all up.
    fn with_links(text: &str, links: &[&str]) -> Self {
        let dir = tempfile_dir::Dir::new();
        let up: Vec<(&str, bool)> = links.iter().map(|l| (*l, true)).collect();
        let kernel = FakeKernel {
            facts: facts(&up),
            ..FakeKernel::default()
        };
        let t = Instant::now();
        let mut e =
            Engine::new(kernel, cfg(text), "t.toml".into(), dir.0.clone(), t).expect("engine");
        e.reconcile(t);
        Self { e, t, _dir: dir }
    }

    /// One round for every uplink, `ok` naming the uplinks whose probe answered.
    fn round(&mut self, ok: &[&str]) {
        self.t += Duration::from_millis(100);
        let names: Vec<String> = self.e.cfg.uplinks.iter().map(|u| u.name.clone()).collect();
        let batch: Vec<_> = names
            .into_iter()
            .map(|n| {
                let r = ok
                    .contains(&n.as_str())
                    .then_some(Duration::from_millis(20));
                report(&n, Family::V4, vec![r], None)
            })
            .collect();
        self.e.on_rounds(&batch, self.t);
        self.e.tick(self.t);
    }

    fn default_targets(&self) -> Vec<String> {
        let p = self.e.last_plan.as_ref().expect("planned");
        let m = p
            .policy_maps
            .iter()
            .find(|m| m.chain == "policy_default")
            .expect("default policy");
        let mut t: Vec<String> = m.elements.iter().map(|(_, c)| c.clone()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// The fake kernel's interface `name`, to change what the next facts read returns.
    fn fake_link(&mut self, name: &str) -> &mut Link {
        self.e
            .kernel
            .facts
            .links
            .as_mut()
            .and_then(|l| l.get_mut(name))
            .expect("a fake interface")
    }

    fn state(&self, name: &str) -> &'static str {
        self.e.uplinks[name].monitor().state().name()
    }
}

#[test]
fn start_applies_once_with_every_working_uplink() {
    let w = World::new(CFG);
    assert_eq!(w.e.kernel.applies.len(), 1);
    assert!(w.e.kernel.applies[0].nft_replaced);
    assert_eq!(w.default_targets(), ["up_isp1", "up_isp2"]);
}

#[test]
fn failover_after_down_after_rounds_flushes_only_the_failed_uplink() {
    let mut w = World::new(CFG);
    for _ in 0..5 {
        w.round(&["isp2"]);
    }
    assert_eq!(w.state("isp1"), "up", "five bad rounds are not enough");
    assert_eq!(w.e.kernel.applies.len(), 1);
    w.round(&["isp2"]);
    assert_eq!(w.state("isp1"), "down");
    assert_eq!(w.default_targets(), ["up_isp2"]);
    let last = w.e.kernel.applies.last().expect("apply");
    assert!(!last.nft_replaced, "a health change keeps the table");
    assert_eq!(last.policies_updated, 1);
    let mark1 = w.e.cfg.kernel.mark_of(w.e.ids["isp1"]);
    assert_eq!(
        w.e.kernel.flushed,
        vec![(mark1, w.e.cfg.kernel.mark_mask, Family::V4)]
    );
    // Failback after ten good rounds, without a flush.
    for _ in 0..9 {
        w.round(&["isp1", "isp2"]);
    }
    assert_eq!(w.state("isp1"), "down");
    w.round(&["isp1", "isp2"]);
    assert_eq!(w.state("isp1"), "up");
    assert_eq!(w.default_targets(), ["up_isp1", "up_isp2"]);
    assert_eq!(w.e.kernel.flushed.len(), 1);
    let calls: Vec<(String, String)> =
        w.e.hook_calls
            .iter()
            .map(|c| (c.uplink.clone(), c.new_state.clone()))
            .collect();
    assert_eq!(
        calls,
        [
            ("isp1".to_string(), "down".to_string()),
            ("isp1".to_string(), "up".to_string())
        ],
        "hook calls in order"
    );
}

#[test]
fn a_failed_update_is_retried_and_nothing_is_lost() {
    let mut w = World::new(CFG);
    w.e.kernel.fail_applies = 2;
    for _ in 0..6 {
        w.round(&["isp2"]);
    }
    assert_eq!(w.state("isp1"), "down");
    // The update failed: still dirty, the kernel holds the old plan, nothing flushed yet.
    assert!(w.e.is_dirty());
    assert!(w.e.kernel.flushed.is_empty());
    // Tried again after RETRY_FIRST (one round), then after twice that.
    w.round(&["isp2"]);
    assert!(w.e.is_dirty(), "second injected failure");
    assert_eq!(w.e.kernel.failures.len(), 2);
    w.round(&["isp2"]);
    assert_eq!(w.e.kernel.failures.len(), 2, "backing off: 200 ms now");
    assert!(w.e.is_dirty());
    w.round(&["isp2"]);
    assert!(!w.e.is_dirty());
    assert_eq!(w.default_targets(), ["up_isp2"]);
    assert_eq!(
        w.e.kernel.flushed.len(),
        1,
        "flushed once the update went through"
    );
}

/// `state.json` as the daemon last wrote it.
fn state_file(w: &World) -> serde_json::Value {
    let b = std::fs::read(w._dir.0.join("state.json")).expect("state.json");
    serde_json::from_slice(&b).expect("json")
}

#[test]
fn a_failing_update_is_shown_until_the_kernel_takes_one() {
    let mut w = World::new(CFG);
    assert!(w.e.snapshot().kernel_error.is_none());
    assert!(state_file(&w).get("kernel_error").is_none());
    w.e.kernel.fail_applies = 3;
    for _ in 0..6 {
        w.round(&["isp2"]);
    }
    assert_eq!(w.state("isp1"), "down");
    let shown = w.e.snapshot().kernel_error.expect("failing now");
    assert_eq!(shown.error, "injected apply failure");
    assert_eq!((shown.failures, shown.retry_in_ms), (1, 100));
    assert_eq!(w.e.snapshot().kernel_failures, 1);
    // Written at the first failure, for scripts that read state.json.
    assert_eq!(
        state_file(&w)["kernel_error"]["error"],
        "injected apply failure"
    );
    // Each retry counts; the wait doubles.
    w.round(&["isp2"]);
    w.round(&["isp2"]);
    w.round(&["isp2"]);
    let shown = w.e.snapshot().kernel_error.expect("still failing");
    assert_eq!((shown.failures, shown.retry_in_ms), (3, 400));
    // The kernel takes the update: nothing failing any more, the total kept.
    for _ in 0..5 {
        w.round(&["isp2"]);
    }
    assert!(!w.e.is_dirty());
    assert!(w.e.snapshot().kernel_error.is_none());
    assert_eq!(w.e.snapshot().kernel_failures, 3);
    assert!(state_file(&w).get("kernel_error").is_none());
}

#[test]
fn a_failing_update_no_longer_needed_is_no_longer_shown() {
    // isp1 goes down, the update fails; isp1 comes back before a retry went through: the
    // kernel holds the wanted plan again, so nothing is failing.
    let mut w = World::new(CFG);
    w.e.kernel.fail_applies = usize::MAX;
    for _ in 0..6 {
        w.round(&["isp2"]);
    }
    assert_eq!(w.state("isp1"), "down");
    assert!(w.e.snapshot().kernel_error.is_some());
    for _ in 0..30 {
        w.round(&["isp1", "isp2"]);
        if w.state("isp1") == "up" {
            break;
        }
    }
    assert_eq!(w.state("isp1"), "up");
    assert!(!w.e.is_dirty());
    assert!(
        w.e.snapshot().kernel_error.is_none(),
        "{:?}",
        w.e.snapshot().kernel_error
    );
    assert!(state_file(&w).get("kernel_error").is_none());
}

#[test]
fn a_lost_link_is_down_at_once_without_probes() {
    let mut w = World::new(CFG);
    w.e.kernel.facts = facts(&[("wan1", false), ("wan2", true), ("lan0", true)]);
    w.e.on_kernel_changed(
        Change {
            links: true,
            ..Change::default()
        },
        w.t,
    );
    w.e.tick(w.t);
    assert_eq!(w.state("isp1"), "down");
    assert_eq!(w.default_targets(), ["up_isp2"]);
}

#[test]
fn drift_is_repaired_on_the_periodic_verify() {
    let mut w = World::new(CFG);
    let applies = w.e.kernel.applies.len();
    // Someone removes our state by hand; no notification arrives.
    w.e.kernel.installed = None;
    w.t += VERIFY_EVERY - Duration::from_millis(1);
    w.e.tick(w.t);
    assert_eq!(w.e.kernel.applies.len(), applies, "not yet due");
    w.t += Duration::from_millis(2);
    w.e.tick(w.t);
    assert_eq!(w.e.kernel.applies.len(), applies + 1);
    assert!(w.e.kernel.installed.is_some());
}

#[test]
fn invalid_reload_keeps_the_running_state_and_a_valid_one_keeps_ids() {
    let mut w = World::new(CFG);
    let ids = w.e.ids.clone();
    w.e.reload(None, w.t);
    assert_eq!(w.e.ids, ids);
    let bigger = format!(
        "{}[[uplink]]\nname = \"lte\"\ninterface = \"wwan0\"\ngateway = \"10.64.64.64\"\ntier = 2\n",
        CFG.replace("name = \"isp1\"", "name = \"isp1\"\nweight = 3")
    );
    w.e.reload(Some(cfg(&bigger)), w.t);
    w.e.tick(w.t);
    assert_eq!(w.e.ids["isp1"], ids["isp1"]);
    assert_eq!(w.e.ids["isp2"], ids["isp2"]);
    assert_eq!(w.e.ids["lte"], 3);
    assert!(w.e.probers_stale);
    assert_eq!(w.state("lte"), "down", "its interface does not exist");
}

#[test]
fn a_drain_takes_no_new_connections_and_flushes_nothing() {
    let mut w = World::new(CFG);
    let ack = w.e.admin("isp2", false, w.t).expect("known uplink");
    assert_eq!(ack.uplink, "isp2");
    assert_eq!(w.default_targets(), ["up_isp1"]);
    assert!(w.e.kernel.flushed.is_empty());
    let unknown = w.e.admin("nope", false, w.t).expect_err("unknown uplink");
    assert!(unknown.usage, "the asker's mistake: exit 2");
    assert_eq!(
        unknown.message,
        "no uplink named \"nope\" (known: isp1, isp2)"
    );
    assert!(w.e.admin("", true, w.t).expect_err("empty name").usage);
    w.e.admin("isp2", true, w.t).expect("enable");
    assert_eq!(w.default_targets(), ["up_isp1", "up_isp2"]);
}

#[test]
fn adoption_keeps_the_ids_a_previous_daemon_installed() {
    let dir = tempfile_dir::Dir::new();
    let kernel = FakeKernel {
        facts: facts(&[("wan1", true), ("wan2", true)]),
        preinstalled_ids: [("isp1".to_string(), 7), ("isp2".to_string(), 3)].into(),
        ..FakeKernel::default()
    };
    let e = Engine::new(
        kernel,
        cfg(CFG),
        "t.toml".into(),
        dir.0.clone(),
        Instant::now(),
    )
    .expect("engine");
    assert_eq!(e.ids["isp1"], 7);
    assert_eq!(e.ids["isp2"], 3);
}

#[test]
fn a_dead_shared_target_is_suspect_and_every_uplink_stays_up() {
    let mut w = World::new(CFG);
    // The one target both uplinks probe stops answering. The first round carries no witness
    // (the prober pings the gateway only after a failed round); from then on the gateways
    // answer.
    let round = |w: &mut World, witness: Option<bool>| {
        w.t += Duration::from_millis(100);
        let batch = vec![
            report("isp1", Family::V4, vec![None], witness),
            report("isp2", Family::V4, vec![None], witness),
        ];
        w.e.on_rounds(&batch, w.t);
        w.e.tick(w.t);
    };
    round(&mut w, None);
    for _ in 0..50 {
        round(&mut w, Some(true));
    }
    assert_eq!(w.state("isp1"), "up");
    assert_eq!(w.state("isp2"), "up");
    assert_eq!(w.e.snapshot().suspect.len(), 1);
    assert_eq!(w.default_targets(), ["up_isp1", "up_isp2"]);
    // Now isp1's upstream really dies while the target is still dead: its gateway still
    // answers, so only the target answering again elsewhere can tell. The target returns
    // over isp2 only: isp1 fails from then on, within the usual six rounds.
    for i in 0..6 {
        w.t += Duration::from_millis(100);
        let batch = vec![
            report("isp1", Family::V4, vec![None], Some(true)),
            report(
                "isp2",
                Family::V4,
                vec![Some(Duration::from_millis(20))],
                None,
            ),
        ];
        w.e.on_rounds(&batch, w.t);
        w.e.tick(w.t);
        assert_eq!(w.state("isp1"), if i < 5 { "up" } else { "down" });
    }
    assert!(w.e.snapshot().suspect.is_empty());
}

/// The tester's three uplinks: ispa and ispb probe .10 and .11, ispc only .10.
const THREE: &str = r#"
[lan]
interfaces = ["lan0"]
[[uplink]]
name = "ispa"
interface = "wan1"
gateway = "10.37.1.1"
[uplink.check]
targets = ["203.0.113.10", "203.0.113.11"]
[[uplink]]
name = "ispb"
interface = "wan2"
gateway = "10.37.2.1"
[uplink.check]
targets = ["203.0.113.10", "203.0.113.11"]
[[uplink]]
name = "ispc"
interface = "wan3"
gateway = "10.37.3.1"
[uplink.check]
targets = ["203.0.113.10"]
"#;

#[test]
fn targets_shared_by_some_uplinks_dying_at_once_take_no_uplink_down() {
    let mut w = World::with_links(THREE, &["wan1", "wan2", "wan3", "lan0"]);
    // The ISPs start dropping ICMP to both targets; the gateways keep answering the witness
    // pings (sent from the round after the first failed one).
    let round = |w: &mut World, witness: Option<bool>| {
        w.t += Duration::from_millis(100);
        let batch = vec![
            report("ispa", Family::V4, vec![None, None], witness),
            report("ispb", Family::V4, vec![None, None], witness),
            report("ispc", Family::V4, vec![None], witness),
        ];
        w.e.on_rounds(&batch, w.t);
        w.e.tick(w.t);
    };
    round(&mut w, None);
    for _ in 0..50 {
        round(&mut w, Some(true));
    }
    for u in ["ispa", "ispb", "ispc"] {
        assert_eq!(w.state(u), "up", "{u}");
    }
    assert_eq!(w.e.snapshot().suspect.len(), 2);
    assert!(w.e.kernel.flushed.is_empty(), "no connection flushed");
    // ispa's upstream really dies while both targets are still dead elsewhere... except .11,
    // which answers over ispb again: ispa fails on it within the usual six rounds.
    let ok = Some(Duration::from_millis(20));
    for i in 0..6 {
        w.t += Duration::from_millis(100);
        let batch = vec![
            report("ispa", Family::V4, vec![None, None], Some(true)),
            report("ispb", Family::V4, vec![None, ok], Some(true)),
            report("ispc", Family::V4, vec![None], Some(true)),
        ];
        w.e.on_rounds(&batch, w.t);
        w.e.tick(w.t);
        assert_eq!(w.state("ispa"), if i < 5 { "up" } else { "down" });
    }
    assert_eq!(w.state("ispb"), "up");
    assert_eq!(w.state("ispc"), "up");
}

#[test]
fn probes_alone_taking_every_uplink_down_fail_open() {
    let mut w = World::new(CFG);
    // isp2 fails first (really: the target still answers over isp1), then isp1's probes fail
    // too with no evidence either way.
    for _ in 0..6 {
        w.round(&["isp1"]);
    }
    assert_eq!(w.state("isp2"), "down");
    assert_eq!(w.default_targets(), ["up_isp1"]);
    let mark2 = w.e.cfg.kernel.mark_of(w.e.ids["isp2"]);
    let isp2_flushed = vec![(mark2, w.e.cfg.kernel.mark_mask, Family::V4)];
    assert_eq!(w.e.kernel.flushed, isp2_flushed);
    for _ in 0..6 {
        w.round(&[]);
    }
    assert_eq!(w.state("isp1"), "down");
    assert!(w.e.failing_open());
    assert_eq!(
        w.default_targets(),
        ["up_isp1"],
        "the uplink in use stays in use; isp2, down before, is not brought back"
    );
    assert_eq!(
        w.e.kernel.flushed, isp2_flushed,
        "the uplink fail-open keeps keeps its connections"
    );
    assert!(w.e.snapshot().fail_open);
    // One passes its probes again: fail-open ends.
    for _ in 0..10 {
        w.round(&["isp2"]);
    }
    assert!(!w.e.failing_open());
    assert_eq!(w.default_targets(), ["up_isp2"]);
    // With fail_open = false, all down means no uplink.
    let mut off = World::new(&format!("{CFG}[balance]\nfail_open = false\n"));
    for _ in 0..6 {
        off.round(&[]);
    }
    assert!(!off.e.failing_open());
    assert_eq!(off.default_targets(), ["to_none"]);
}

const DUAL: &str = r#"
[lan]
interfaces = ["lan0"]
[daemon]
hook = "/bin/true"
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.37.1.1"
gateway6 = "2001:db8:1::1"
[uplink.check]
targets = ["172.16.0.100", "2001:db8:ff::100"]
[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.37.2.1"
gateway6 = "2001:db8:2::1"
[uplink.check]
targets = ["172.16.0.100", "2001:db8:ff::100"]
"#;

/// The default policy's targets of `family`.
fn targets_of(w: &World, family: Family) -> Vec<String> {
    let chain = match family {
        Family::V4 => "policy_default",
        Family::V6 => "policy6_default",
    };
    let p = w.e.last_plan.as_ref().expect("planned");
    let m = p
        .policy_maps
        .iter()
        .find(|m| m.chain == chain)
        .expect("policy");
    let mut t: Vec<String> = m.elements.iter().map(|(_, c)| c.clone()).collect();
    t.sort();
    t.dedup();
    t
}

/// One round of both families for both uplinks; `ok` lists (uplink, family) that answered.
fn dual_round(w: &mut World, ok: &[(&str, Family)]) {
    w.t += Duration::from_millis(100);
    let mut batch = Vec::new();
    for u in ["isp1", "isp2"] {
        for f in Family::ALL {
            let r = ok.contains(&(u, f)).then_some(Duration::from_millis(20));
            batch.push(report(u, f, vec![r], None));
        }
    }
    w.e.on_rounds(&batch, w.t);
    w.e.tick(w.t);
}

#[test]
fn only_the_broken_family_moves() {
    let mut w = World::new(DUAL);
    assert_eq!(targets_of(&w, Family::V6), ["up_isp1", "up_isp2"]);
    let all = [
        ("isp1", Family::V4),
        ("isp2", Family::V4),
        ("isp2", Family::V6),
    ];
    // isp1's IPv6 path breaks; its IPv4 keeps working.
    for _ in 0..6 {
        dual_round(&mut w, &all);
    }
    assert_eq!(targets_of(&w, Family::V6), ["up_isp2"]);
    assert_eq!(targets_of(&w, Family::V4), ["up_isp1", "up_isp2"]);
    let mark1 = w.e.cfg.kernel.mark_of(w.e.ids["isp1"]);
    assert_eq!(
        w.e.kernel.flushed,
        vec![(mark1, w.e.cfg.kernel.mark_mask, Family::V6)],
        "only isp1's IPv6 connections go"
    );
    let calls: Vec<(String, String)> =
        w.e.hook_calls
            .iter()
            .map(|c| (c.family.clone(), c.new_state.clone()))
            .collect();
    assert_eq!(calls, [("ipv6".to_string(), "down".to_string())]);
    // And the reverse: IPv4 of isp2 breaks, its IPv6 stays.
    let mut w = World::new(DUAL);
    let ok = [
        ("isp1", Family::V4),
        ("isp1", Family::V6),
        ("isp2", Family::V6),
    ];
    for _ in 0..6 {
        dual_round(&mut w, &ok);
    }
    assert_eq!(targets_of(&w, Family::V4), ["up_isp1"]);
    assert_eq!(targets_of(&w, Family::V6), ["up_isp1", "up_isp2"]);
}

#[test]
fn a_whole_uplink_outage_moves_both_families_together() {
    let mut w = World::new(DUAL);
    let ok = [("isp2", Family::V4), ("isp2", Family::V6)];
    for i in 0..6 {
        dual_round(&mut w, &ok);
        let expect = if i < 5 {
            vec!["up_isp1", "up_isp2"]
        } else {
            vec!["up_isp2"]
        };
        assert_eq!(targets_of(&w, Family::V4), expect, "round {i}");
        assert_eq!(targets_of(&w, Family::V6), expect, "round {i}");
    }
    assert_eq!(w.e.kernel.flushed.len(), 2, "both families' connections");
}

#[test]
fn an_ipv6_link_without_a_global_address_is_down_for_ipv6_only() {
    let mut w = World::new(DUAL);
    w.fake_link("wan1").addrs6.clear();
    w.e.on_kernel_changed(
        Change {
            links: true,
            ..Change::default()
        },
        w.t,
    );
    w.e.tick(w.t);
    assert_eq!(targets_of(&w, Family::V6), ["up_isp2"]);
    assert_eq!(targets_of(&w, Family::V4), ["up_isp1", "up_isp2"]);
    let st = &w.e.uplinks["isp1"];
    assert_eq!(
        st.fam(Family::V6).expect("v6").monitor.state().name(),
        "down"
    );
    assert_eq!(st.monitor().state().name(), "up");
}

#[test]
fn a_failing_learned_gateway_is_read_again_without_an_event() {
    // isp1 follows its learned gateway. The kernel's choice of router changes without a
    // netlink event (a failed neighbour beside a second advertised route): noticed within
    // GATEWAY_RECHECK while isp1 is down by its probes, and only then.
    let text = CFG.replacen("gateway = \"10.37.1.1\"", "gateway = \"auto\"", 1);
    let mut w = World::new(&text);
    let set_gw = |w: &mut World, gw: &str| {
        w.fake_link("wan1").gateway = Some(gw.parse().expect("ip"));
    };
    let learned = |w: &World| w.e.facts.links.as_ref().and_then(|l| l["wan1"].gateway);
    set_gw(&mut w, "10.37.1.1");
    w.e.on_kernel_changed(Change::ALL, w.t);
    w.e.tick(w.t);
    assert_eq!(learned(&w), Some("10.37.1.1".parse().expect("ip")));
    // Healthy: a silent change waits for the next event or verification.
    set_gw(&mut w, "10.37.1.9");
    for _ in 0..60 {
        w.round(&["isp1", "isp2"]);
    }
    assert_eq!(learned(&w), Some("10.37.1.1".parse().expect("ip")));
    set_gw(&mut w, "10.37.1.1");
    // Down by probes: read again every GATEWAY_RECHECK.
    for _ in 0..6 {
        w.round(&["isp2"]);
    }
    assert_eq!(w.state("isp1"), "down");
    set_gw(&mut w, "10.37.1.2");
    let rounds = (GATEWAY_RECHECK.as_millis() / 100) as usize;
    let mut seen = None;
    for i in 1..=rounds + 1 {
        w.round(&["isp2"]);
        if learned(&w) == Some("10.37.1.2".parse().expect("ip")) {
            seen = Some(i);
            break;
        }
    }
    assert!(seen.is_some(), "not read again within {GATEWAY_RECHECK:?}");
    let plan = w.e.last_plan.as_ref().expect("planned");
    assert!(
        format!("{:?}", plan.routes).contains("10.37.1.2"),
        "the uplink's table follows the new gateway: {:?}",
        plan.routes
    );
}

/// A reload keeps each family's monitor while nothing it judges by changed: a new IPv6
/// gateway for an uplink whose IPv4 is down keeps its IPv4 down (not "up" again, taking new
/// connections until it fails `down_after` more rounds).
#[test]
fn a_reload_that_changes_only_ipv6_keeps_the_ipv4_health() {
    let mut w = World::new(DUAL);
    for _ in 0..6 {
        w.round(&["isp2"]);
    }
    assert_eq!(w.state("isp1"), "down");
    let changed = DUAL.replace("2001:db8:1::1", "2001:db8:1::2");
    w.e.reload(Some(cfg(&changed)), w.t);
    w.e.tick(w.t);
    assert_eq!(w.state("isp1"), "down", "IPv4 health survives the reload");
    assert_eq!(targets_of(&w, Family::V4), ["up_isp2"]);
    // A changed IPv4 check (here an interval) keeps the verdict too, silently: no
    // transition, so no hook; the new check's up_after good rounds bring it back.
    let calls = w.e.hook_calls.len();
    let rechecked = changed.replacen(
        "[uplink.check]\n",
        "[uplink.check]\ninterval = \"150ms\"\n",
        1,
    );
    w.e.reload(Some(cfg(&rechecked)), w.t);
    w.e.tick(w.t);
    assert_eq!(
        w.state("isp1"),
        "down",
        "the probes' verdict survives a new check"
    );
    assert_eq!(w.e.hook_calls.len(), calls, "nothing changed: no hook");
    for _ in 0..9 {
        w.round(&["isp1", "isp2"]);
    }
    assert_eq!(w.state("isp1"), "down");
    w.round(&["isp1", "isp2"]);
    assert_eq!(w.state("isp1"), "up");
}

/// The state and reason of `uplink`'s `family`.
fn fam_state(w: &World, uplink: &str, family: Family) -> String {
    let f = w.e.uplinks[uplink].fam(family).expect("family");
    f.monitor.state().to_string()
}

#[test]
fn an_off_link_gateway6_leaves_out_only_that_uplinks_ipv6() {
    // isp2's fixed gateway6 is in no prefix of wan2: everything else is installed at once,
    // with no failed update at all.
    let text = DUAL.replace("2001:db8:2::1", "2001:db8:99::1");
    let mut w = World::new(&text);
    assert!(w.e.kernel.failures.is_empty());
    assert!(!w.e.is_dirty());
    assert_eq!(targets_of(&w, Family::V4), ["up_isp1", "up_isp2"]);
    assert_eq!(targets_of(&w, Family::V6), ["up_isp1"]);
    assert_eq!(
        fam_state(&w, "isp2", Family::V6),
        "down (gateway 2001:db8:99::1 is not on the interface's link)"
    );
    let plan = w.e.last_plan.as_ref().expect("planned");
    assert!(
        plan.routes
            .iter()
            .all(|r| r.family == Family::V4 || r.nexthops.iter().all(|n| n.dev == "wan1")),
        "{:?}",
        plan.routes
    );
    // IPv4 still fails over: isp1 cut.
    let ok = [("isp2", Family::V4), ("isp1", Family::V6)];
    for _ in 0..6 {
        dual_round(&mut w, &ok);
    }
    assert_eq!(targets_of(&w, Family::V4), ["up_isp2"]);
    assert!(w.e.kernel.failures.is_empty());
}

#[test]
fn a_gateway6_that_falls_off_the_link_takes_only_its_ipv6_down() {
    // Renumbered to a /128 at run time: isp2's IPv6 goes down with the reason, the next
    // update goes through, and IPv4 failover keeps working.
    let mut w = World::new(DUAL);
    assert_eq!(targets_of(&w, Family::V6), ["up_isp1", "up_isp2"]);
    w.fake_link("wan2").onlink6 = vec!["2001:db8:2::253/128".parse().expect("net")];
    w.e.on_kernel_changed(Change::ALL, w.t);
    w.e.tick(w.t);
    assert!(!w.e.is_dirty());
    assert_eq!(targets_of(&w, Family::V6), ["up_isp1"]);
    assert_eq!(fam_state(&w, "isp2", Family::V4), "up");
    assert!(fam_state(&w, "isp2", Family::V6).contains("is not on the interface's link"));
    let ok = [("isp2", Family::V4), ("isp1", Family::V6)];
    for _ in 0..6 {
        dual_round(&mut w, &ok);
    }
    assert_eq!(targets_of(&w, Family::V4), ["up_isp2"]);
    assert!(w.e.kernel.failures.is_empty());
    // The prefix comes back: IPv6 of isp2 recovers through its probes.
    w.fake_link("wan2").onlink6 = vec!["2001:db8:2::/64".parse().expect("net")];
    w.e.on_kernel_changed(Change::ALL, w.t);
    w.e.tick(w.t);
    assert!(fam_state(&w, "isp2", Family::V6).starts_with("down (recovering"));
}

#[test]
fn a_refused_route_takes_only_its_uplink_family_out_and_the_rest_is_installed() {
    // The kernel refuses isp2's IPv4 route for a reason the facts do not show (an off-link
    // IPv4 gateway): the same reconcile leaves it out and installs everything else.
    let dir = tempfile_dir::Dir::new();
    let kernel = FakeKernel {
        facts: facts(&[("wan1", true), ("wan2", true), ("lan0", true)]),
        refuse_routes: [(Family::V4, "wan2".to_string())].into(),
        ..FakeKernel::default()
    };
    let t = Instant::now();
    let e = Engine::new(kernel, cfg(DUAL), "t.toml".into(), dir.0.clone(), t).expect("engine");
    let mut w = World { e, t, _dir: dir };
    w.e.reconcile(t);
    assert_eq!(w.e.kernel.failures.len(), 1, "{:?}", w.e.kernel.failures);
    assert!(
        w.e.kernel.failures[0].contains("dev wan2")
            && w.e.kernel.failures[0].contains("os error 113"),
        "{:?}",
        w.e.kernel.failures
    );
    assert!(!w.e.is_dirty());
    assert_eq!(targets_of(&w, Family::V4), ["up_isp1"]);
    assert_eq!(targets_of(&w, Family::V6), ["up_isp1", "up_isp2"]);
    assert_eq!(
        fam_state(&w, "isp2", Family::V4),
        "down (the kernel refused its route)"
    );
    assert_eq!(
        w.e.uplinks["isp2"]
            .monitor()
            .state()
            .reason()
            .map(|r| r.code()),
        Some("route_refused")
    );
    // Failover of the others still works, without trying the refused route again.
    let ok = [("isp2", Family::V6), ("isp1", Family::V4)];
    for _ in 0..6 {
        dual_round(&mut w, &ok);
    }
    assert_eq!(targets_of(&w, Family::V6), ["up_isp2"]);
    assert_eq!(w.e.kernel.failures.len(), 1);
    // A reload (say a corrected gateway) tries it again: refused again, once.
    w.e.reload(Some(cfg(DUAL)), w.t);
    w.e.tick(w.t);
    assert_eq!(w.e.kernel.failures.len(), 2);
    assert_eq!(
        fam_state(&w, "isp2", Family::V4),
        "down (the kernel refused its route)"
    );
    // The interfaces change (the kernel would take it now): tried again, and installed.
    w.e.kernel.refuse_routes.clear();
    w.fake_link("wan2")
        .addrs
        .push("10.37.2.254".parse().expect("ip"));
    w.e.on_kernel_changed(Change::ALL, w.t);
    w.e.tick(w.t);
    assert!(w.e.facts.refused.is_empty());
    assert!(fam_state(&w, "isp2", Family::V4).starts_with("down (recovering"));
    let plan = w.e.last_plan.as_ref().expect("planned");
    assert!(
        plan.routes
            .iter()
            .any(|r| r.family == Family::V4 && r.nexthops.iter().any(|n| n.dev == "wan2")),
        "{:?}",
        plan.routes
    );
}

#[test]
fn a_failing_update_backs_off_doubling_and_resets_on_success() {
    // Every update fails for a reason no uplink explains: tries at 0, 100, 300, 700 ms, …
    // (the wait doubling to RETRY_MAX), not on every event; a changed plan is tried at once.
    let mut w = World::new(CFG);
    w.e.kernel.fail_applies = usize::MAX;
    w.e.kernel.installed = None;
    w.e.last_plan = None;
    w.e.dirty = true;
    let start = w.t;
    let mut tries = Vec::new();
    for ms in (0..=20_000).step_by(20) {
        let t = start + Duration::from_millis(ms);
        w.e.tick(t);
        if w.e.kernel.failures.len() > tries.len() {
            tries.push(ms);
        }
    }
    assert_eq!(&tries[..7], [0, 100, 300, 700, 1500, 3100, 6300]);
    assert!(
        tries
            .windows(2)
            .all(|p| p[1] - p[0] <= RETRY_MAX.as_millis() as u64 + 20),
        "{tries:?}"
    );
    assert!(tries.len() < 12, "{} tries in 20 s: {tries:?}", tries.len());
    assert!(w.e.is_dirty());
    // A transition changes the plan: tried at once.
    let n = w.e.kernel.failures.len();
    w.t = start + Duration::from_millis(20_010);
    for _ in 0..6 {
        w.round(&["isp2"]);
        if w.state("isp1") == "down" {
            break;
        }
    }
    assert_eq!(w.state("isp1"), "down");
    assert_eq!(w.e.kernel.failures.len(), n + 1, "the new plan, once");
    // The kernel takes it again: applied on the next try, the backoff forgotten.
    w.e.kernel.fail_applies = 0;
    w.t += RETRY_FIRST;
    w.e.tick(w.t);
    assert!(!w.e.is_dirty());
    assert!(w.e.failing.is_none());
    assert_eq!(w.default_targets(), ["up_isp2"]);
}

/// A reload that adds an uplink following a learned gateway (`gateway = "auto"`) reads the
/// gateway before it judges the new uplink: up at once and in the plan, not down for want of
/// a gateway until the next read.
#[test]
fn a_reload_adding_an_auto_uplink_starts_it_with_its_learned_gateway() {
    let mut w = World::with_links(CFG, &["wan1", "wan2", "wan3", "lan0"]);
    w.fake_link("wan3").gateway = Some("10.37.3.1".parse().expect("ip"));
    let added = format!(
        "{CFG}[[uplink]]\nname = \"isp3\"\ninterface = \"wan3\"\ngateway = \"auto\"\n[uplink.check]\ntargets = [\"172.16.0.100\"]\n"
    );
    let calls = w.e.hook_calls.len();
    w.e.reload(Some(cfg(&added)), w.t);
    assert_eq!(w.state("isp3"), "up", "judged with its learned gateway");
    w.e.tick(w.t);
    assert_eq!(
        targets_of(&w, Family::V4),
        ["up_isp1", "up_isp2", "up_isp3"]
    );
    let plan = w.e.last_plan.as_ref().expect("planned");
    assert!(
        format!("{:?}", plan.routes).contains("10.37.3.1"),
        "{:?}",
        plan.routes
    );
    assert_eq!(w.e.hook_calls.len(), calls, "no transition: no hook");
}
