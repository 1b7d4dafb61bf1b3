//! `multiwan lab` end to end: it reports, and it removes every namespace it made — after a
//! normal run and after Ctrl-C.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

#[test]
fn lab_reports_and_cleans_up() {
    assert!(nix::unistd::geteuid().is_root(), "the lab test needs root");
    let child = Command::new(env!("CARGO_BIN_EXE_multiwan"))
        .args([
            "lab",
            "--connections",
            "80",
            "--seconds",
            "1",
            "--rates",
            "0,0",
            "--weights",
            "3,1",
        ])
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
    assert!(
        lab_namespaces(pid).is_empty(),
        "left behind: {:?}",
        lab_namespaces(pid)
    );
}

#[test]
fn lab_removes_its_namespaces_on_ctrl_c() {
    assert!(nix::unistd::geteuid().is_root(), "the lab test needs root");
    let mut child = Command::new(env!("CARGO_BIN_EXE_multiwan"))
        .args(["lab", "--seconds", "30", "--rates", "0,0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lab");
    let pid = child.id();
    // Wait until the lab has built its network.
    let start = Instant::now();
    while lab_namespaces(pid).len() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lab never built its network"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(
        lab_namespaces(pid).is_empty(),
        "left behind: {:?}",
        lab_namespaces(pid)
    );
}

#[test]
fn lab_with_a_custom_config() {
    assert!(nix::unistd::geteuid().is_root(), "the lab test needs root");
    let dir = std::env::temp_dir().join(format!("multiwan-lab-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[lan]\ninterfaces = [\"lan0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"wan1\"\ngateway = \"10.37.1\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_multiwan"))
        .arg("lab")
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("lab");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the lab config is invalid") && err.contains("uplink[0].gateway"),
        "{err}"
    );
    // A valid one with three uplinks and src-hash: the lab builds three ISPs for it.
    let good = dir.join("good.toml");
    let mut text =
        String::from("[lan]\ninterfaces = [\"lan0\"]\n[balance]\nmethod = \"src-dst-hash\"\n");
    for n in 1..=3 {
        text += &format!("[[uplink]]\nname = \"up{n}\"\ninterface = \"wan{n}\"\ngateway = \"10.37.{n}.1\"\n[uplink.check]\ntargets = [\"172.16.0.100\"]\n");
    }
    std::fs::write(&good, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_multiwan"))
        .arg("lab")
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
    let _ = std::fs::remove_dir_all(&dir);
}
