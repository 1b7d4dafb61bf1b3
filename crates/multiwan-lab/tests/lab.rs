//! `multiwan-lab` end to end: it reports, and however it ends — normally, or interrupted by
//! Ctrl-C or SIGTERM at any moment, including while its daemon runs — no namespace of its and
//! no process it started survives it.
//!
//! The lab finds the router binary next to itself (cargo builds both into the same target
//! directory when the workspace is tested) or through `$MULTIWAN_BIN`. Each run gets its own
//! `TMPDIR`, so every file and process of that run names a directory only this test knows.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use multiwan_lab::netns::processes_mentioning;

/// The lab binary. A test suite started in the background by a shell has SIGINT *ignored*,
/// and a program inherits an ignored signal across exec: the lab would then lose a Ctrl-C
/// that lands before it installs its handler and run to the end (a user at a terminal never
/// has SIGINT ignored). So when SIGINT is ignored here, this process catches it instead
/// (with a flag nothing reads: in the background no keyboard reaches it), and a caught signal
/// is reset to its default action in every program it starts.
fn lab() -> Command {
    assert!(nix::unistd::geteuid().is_root(), "the lab tests need root");
    static DEFAULT_SIGINT: std::sync::Once = std::sync::Once::new();
    DEFAULT_SIGINT.call_once(|| {
        if sigint_ignored() {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGINT, flag)
                .expect("catching SIGINT");
        }
    });
    Command::new(env!("CARGO_BIN_EXE_multiwan-lab"))
}

/// Whether this process ignores SIGINT (`SigIgn` in /proc/self/status, bit 1 for signal 2).
fn sigint_ignored() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("SigIgn:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|m| m & (1 << (nix::libc::SIGINT - 1)) != 0)
}

fn lab_namespaces(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("mwlab{pid}-")))
        .map(String::from)
        .collect()
}

/// Asserts that nothing of the lab run `pid` with `TMPDIR=tmp` is left: no namespace with its
/// pid in the name, no process whose command line names its directory, no file in it.
fn assert_nothing_left(pid: u32, tmp: &Path) {
    let ns = lab_namespaces(pid);
    assert!(ns.is_empty(), "namespaces left behind: {ns:?}");
    let procs = processes_mentioning(&tmp.display().to_string());
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
    let files: Vec<_> = std::fs::read_dir(tmp).expect("tmp").flatten().collect();
    assert!(files.is_empty(), "files left behind: {files:?}");
}

/// Starts the lab with its own TMPDIR; its stdout arrives line by line on the receiver.
fn spawn(args: &[&str], tmp: &Path) -> (Child, Receiver<String>) {
    let mut child = lab()
        .args(args)
        .env("TMPDIR", tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lab");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

#[test]
fn lab_reports_and_cleans_up() {
    let tmp = tempfile::tempdir().expect("tmp");
    let child = lab()
        .args([
            "--connections",
            "80",
            "--seconds",
            "1",
            "--rates",
            "0,0",
            "--weights",
            "3,1",
        ])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 failed"), "{text}");
    assert!(
        text.contains("isp1           60     75.0%     75.0%"),
        "{text}"
    );
    assert!(
        text.contains("isp2           20     25.0%     25.0%"),
        "{text}"
    );
    assert!(
        text.contains("wan2 (10.37.2.253): answered over the same uplink"),
        "{text}"
    );
    assert!(text.contains("isp1 marked down after"), "{text}");
    assert!(
        text.contains("after failback new connections use 2 of 2 uplinks"),
        "{text}"
    );
    assert!(
        text.contains("everything multiwan installed was removed"),
        "{text}"
    );
    if multiwan_lab::topology::ROUTER_IPV6 {
        // Dual stack by default: both families split exactly, inbound on both, both drilled.
        assert!(text.contains("== 80 short IPv6 connections"), "{text}");
        assert_eq!(
            text.matches("isp1           60     75.0%     75.0%")
                .count(),
            2,
            "{text}"
        );
        assert!(text.contains("parallel IPv6 downloads"), "{text}");
        assert!(
            text.contains("wan2 (2001:db8:2::253): answered over the same uplink"),
            "{text}"
        );
        assert!(
            text.contains("IPv6: after failback new connections use 2 of 2 uplinks"),
            "{text}"
        );
        assert!(
            text.contains("meanwhile new IPv4 connections use 2 of 2 uplinks, IPv6 1 of 2"),
            "{text}"
        );
    }
    assert_nothing_left(pid, tmp.path());
}

/// When the signal goes: a time after the start, or once the daemon runs.
#[derive(Debug, Clone, Copy)]
enum Moment {
    After(Duration),
    DaemonRunning,
}

fn interrupt(moment: Moment, signal: nix::sys::signal::Signal) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (mut child, lines) = spawn(&["--seconds", "30", "--rates", "0,0"], tmp.path());
    let pid = child.id();
    match moment {
        Moment::After(d) => std::thread::sleep(d),
        Moment::DaemonRunning => {
            let start = Instant::now();
            loop {
                let line = lines
                    .recv_timeout(Duration::from_secs(60).saturating_sub(start.elapsed()))
                    .expect("the lab never started its daemon");
                if line.starts_with("== multiwan run") {
                    break;
                }
            }
            // The check below can fail: right now the daemon is there to be found.
            let running = processes_mentioning(&tmp.path().display().to_string());
            assert!(
                running.iter().any(|(_, c)| c.contains(" run ")),
                "no daemon found while it runs: {running:?}"
            );
        }
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal");
    let status = child.wait().expect("wait");
    // A signal that lands before the handler is installed ends the lab before it made
    // anything; after that the lab cleans up and exits with 130.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.code() == Some(130) || status.signal() == Some(signal as i32),
        "{moment:?}: {status}"
    );
    if matches!(moment, Moment::DaemonRunning) {
        assert_eq!(status.code(), Some(130), "{moment:?}");
    }
    assert_nothing_left(pid, tmp.path());
}

#[test]
fn ctrl_c_at_any_moment_leaves_nothing_behind() {
    use nix::sys::signal::Signal::SIGINT;
    for ms in [0, 200, 500, 1500] {
        interrupt(Moment::After(Duration::from_millis(ms)), SIGINT);
    }
    interrupt(Moment::DaemonRunning, SIGINT);
}

#[test]
fn sigterm_while_the_daemon_runs_leaves_nothing_behind() {
    interrupt(Moment::DaemonRunning, nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn a_missing_router_binary_is_a_clear_error() {
    let out = lab()
        .env("MULTIWAN_BIN", "/nonexistent/multiwan")
        .arg("--no-drill")
        .output()
        .expect("lab");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("$MULTIWAN_BIN names /nonexistent/multiwan, which is not a file"),
        "{err}"
    );
}

#[test]
fn lab_with_a_custom_config() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[lan]\ninterfaces = [\"lan0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\ngateway = \"10.37.1\"\n").expect("write");
    let out = lab().arg("--config").arg(&bad).output().expect("lab");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the lab config is invalid") && err.contains("uplink[0].gateway"),
        "{err}"
    );
    // A valid one with three uplinks and src-dst-hash: the lab builds three ISPs for it.
    let good = dir.path().join("good.toml");
    let mut text =
        String::from("[lan]\ninterfaces = [\"lan0\"]\n[balance]\nmethod = \"src-dst-hash\"\n");
    for n in 1..=3 {
        text += &format!("[[uplink]]\nname = \"up{n}\"\ninterface = \"wan{n}\"\ngateway = \"10.37.{n}.1\"\n[uplink.check]\ntargets = [\"172.16.0.100\"]\n");
    }
    std::fs::write(&good, text).expect("write");
    let out = lab()
        .arg("--config")
        .arg(&good)
        .args([
            "--rates",
            "0,0,0",
            "--seconds",
            "1",
            "--connections",
            "60",
            "--no-drill",
            "--ipv6",
            "true",
        ])
        .output()
        .expect("lab");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("uplink 3: router wan3"), "{text}");
    assert!(text.contains("up3"), "{text}");
    // The network is dual stack, the config IPv4 only: the lab says IPv6 does not get through
    // (the ISPs drop the unNATed ULA) instead of reporting a split, and still tries inbound
    // IPv6, which wan1 answers through the main table's default route.
    assert!(
        text.contains("2001:db8:3::253 -> gateway 2001:db8:3::1"),
        "{text}"
    );
    assert!(
        text.contains("== IPv6: no connection gets through"),
        "{text}"
    );
    assert!(!text.contains("short IPv6 connections"), "{text}");
    assert!(
        text.contains("wan1 (2001:db8:1::253): answered over the same uplink"),
        "{text}"
    );
}
