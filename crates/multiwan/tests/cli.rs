//! The command line as a user meets it, without root: `check` and `plan` on good and bad
//! configs, exit codes and diagnostics.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_multiwan"))
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn tmp_config(text: &str) -> (tempdir::Dir, PathBuf) {
    let d = tempdir::Dir::new();
    let p = d.path().join("multiwan.toml");
    std::fs::write(&p, text).expect("write");
    (d, p)
}

mod tempdir {
    use std::path::{Path, PathBuf};
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "multiwan-cli-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("mkdir");
            Self(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn check_accepts_every_example() {
    for e in std::fs::read_dir(example("")).expect("examples") {
        let p = e.expect("entry").path();
        let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn check_reports_every_error_with_position_and_exits_2() {
    let (_d, p) = tmp_config(
        "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"isp1\"\ninterface = \"eth1\"\ngateway = \"10.0.0.300\"\nweight = 0\n",
    );
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let f = p.display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:6:11: uplink[0].gateway: invalid IPv4 address \"10.0.0.300\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:7:10: uplink[0].weight: 0 is out of range (expected 1..=1000)"
        )),
        "{err}"
    );
}

#[test]
fn missing_config_file_exits_2() {
    let out = bin()
        .args(["check", "-c", "/nonexistent/multiwan.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

#[test]
fn usage_error_exits_2() {
    let out = bin().args(["frobnicate"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_needs_no_root_and_no_interfaces() {
    let out = bin()
        .arg("plan")
        .arg("-c")
        .arg(example("seed-003-connmark-round-robin.toml"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("table inet multiwan {"));
    assert!(text.contains("numgen inc mod 2 vmap @m_policy_default"));
    assert!(text.contains("elements = { 0 : goto up_adsl1, 1 : goto up_adsl2 }"));
    assert!(text
        .contains("ip rule add priority 1000 fwmark 0x1000000/0xff000000 lookup 1001 protocol 77"));
    assert!(text
        .contains("ip route replace default via 10.37.1.1 dev eth1 realm 77 table 1001 proto 77"));
    assert!(text.contains("net.ipv4.conf.eth1.rp_filter = 2"));
}

#[test]
fn plan_rejects_a_bad_config_like_check() {
    let (_d, p) = tmp_config("[lan]\ninterfaces = []\n");
    let out = bin().arg("plan").arg("-c").arg(&p).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("lan.interfaces: must name at least one interface"));
    assert!(out.stdout.is_empty());
}

#[test]
fn reload_validates_before_signalling() {
    let (_d, p) = tmp_config("[lan]\ninterfaces = [\"eth0\"]\nbogus = 1\n");
    let out = bin()
        .arg("reload")
        .arg("-c")
        .arg(&p)
        .args(["--run-dir", "/nonexistent"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    let out = bin()
        .args(["reload", "--run-dir", "/nonexistent"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon runs"));
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let out = bin().args(["completions", "bash"]).output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "status", "flows", "explain", "watch", "uplink", "apply", "run",
    ] {
        assert!(text.contains(cmd), "bash completion lacks {cmd}");
    }
    // Every shell the generators know, generated at build time and embedded.
    for shell in ["bash", "elvish", "fish", "powershell", "zsh"] {
        let out = bin().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "completions {shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("multiwan") && text.contains("explain"),
            "completions {shell}: {}",
            &text[..text.len().min(200)]
        );
    }
    let out = bin().arg("manpage").output().expect("run");
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH multiwan"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("explain"));
    // One page holds every command with its options, and names no page that is not shipped.
    for section in [
        ".SS \"multiwan check",
        ".SS \"multiwan explain",
        ".SS \"multiwan doctor",
    ] {
        assert!(man.contains(section), "no {section} in the man page");
    }
    assert!(
        man.contains("\\fB\\-\\-src\\fR \\fISRC\\fR"),
        "explain's --src"
    );
    assert!(
        !man.contains("multiwan\\-check(8)"),
        "a reference to an unshipped page"
    );
}

#[test]
fn explain_works_offline_without_root_or_daemon() {
    let out = bin()
        .arg("explain")
        .arg("-c")
        .arg(example("dsl-lte-backup.toml"))
        .args([
            "--src",
            "192.168.1.20",
            "--proto",
            "udp",
            "--dport",
            "5060",
            "--json",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["rule"], "voip");
    assert_eq!(v["verdict"], "uplink");
    assert_eq!(v["uplink"], "dsl");
    let out = bin()
        .arg("explain")
        .arg("-c")
        .arg(example("dsl-lte-backup.toml"))
        .args(["--src", "192.168.1.20", "--dst", "10.8.3.4"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("matches rule vpn") && text.contains("main routing table"),
        "{text}"
    );
    // Without the daemon's facts it cannot tell a connected subnet from the internet, and
    // says so; what the address alone tells (multicast) it still tells.
    assert!(
        text.contains("note:       offline: not known whether 10.8.3.4 is on a connected subnet"),
        "{text}"
    );
    assert_eq!(v["facts_unknown"], true, "{v}");
    let out = bin()
        .arg("explain")
        .arg("-c")
        .arg(example("dsl-lte-backup.toml"))
        .args(["--src", "192.168.1.20", "--dst", "224.0.0.251", "--json"])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (&v["verdict"], &v["not_balanced"]["kind"]),
        (&"not_balanced".into(), &"multicast".into()),
        "{v}"
    );
}

/// The tester's config: isp1 carries IPv4 only, isp2 IPv6 too; a port rule and a net rule.
const MIXED: &str = "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"isp1\"\ninterface = \"eth1\"\ngateway = \"10.0.1.1\"\n[[uplink]]\nname = \"isp2\"\ninterface = \"eth2\"\ngateway = \"10.0.2.1\"\ngateway6 = \"fe80::1\"\n[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = [\"80\"]\nuplinks = [\"isp1\"]\n[[rule]]\nname = \"v4net\"\ndst = [\"203.0.113.0/24\"]\n";

/// `explain` with `args`, offline against `cfg` or (None) asking a daemon that is not there:
/// (exit code, stdout, stderr).
fn explain(cfg: Option<&std::path::Path>, args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = bin();
    c.arg("explain").args(args);
    match cfg {
        Some(p) => c.arg("-c").arg(p),
        None => c.args(["--run-dir", "/nonexistent"]),
    };
    let out = c.output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_refuses_a_connection_of_two_families() {
    let (_d, cfg) = tmp_config(MIXED);
    for (src, dst, want) in [
        (
            "192.168.1.5",
            "2001:db8::5",
            "error: --src 192.168.1.5 is IPv4 but --dst 2001:db8::5 is IPv6: a connection has one address family",
        ),
        (
            "fd00::5",
            "203.0.113.5",
            "error: --src fd00::5 is IPv6 but --dst 203.0.113.5 is IPv4: a connection has one address family",
        ),
    ] {
        let args = ["--src", src, "--dst", dst, "--proto", "tcp", "--dport", "80"];
        // Offline, and before asking a daemon (there is none here): the same usage error.
        for c in [Some(cfg.as_path()), None] {
            let (code, out, err) = explain(c, &args);
            assert_eq!(code, Some(2), "{src} -> {dst}: {out}{err}");
            assert_eq!(err.trim_end(), want);
            assert!(out.is_empty(), "no answer: {out}");
        }
    }
    // One family each is fine.
    let (code, out, err) = explain(
        Some(&cfg),
        &[
            "--src",
            "fd00::5",
            "--dst",
            "2001:db8::5",
            "--proto",
            "tcp",
            "--dport",
            "80",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("goes to:    isp2"), "{out}");
}

#[test]
fn explain_refuses_ports_without_tcp_or_udp_and_port_zero() {
    let (_d, cfg) = tmp_config(MIXED);
    for (args, want) in [
        (
            &["--dport", "80"][..],
            "error: --dport needs --proto tcp or --proto udp (ports are TCP's and UDP's)",
        ),
        (
            &["--proto", "icmp", "--dport", "80"][..],
            "error: --dport needs --proto tcp or --proto udp: icmp has no ports",
        ),
        (
            &["--proto", "icmp", "--sport", "1024"][..],
            "error: --sport needs --proto tcp or --proto udp: icmp has no ports",
        ),
        (
            &["--proto", "tcp", "--dport", "0"][..],
            "error: --dport 0: expected a port in 1..=65535",
        ),
        (
            &["--proto", "udp", "--sport", "0"][..],
            "error: --sport 0: expected a port in 1..=65535",
        ),
        (
            &["--proto", "sctp"][..],
            "error: unknown protocol \"sctp\" for --proto: expected one of tcp, udp, icmp",
        ),
    ] {
        let args: Vec<&str> = ["--src", "192.168.1.5"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        for c in [Some(cfg.as_path()), None] {
            let (code, out, err) = explain(c, &args);
            assert_eq!(code, Some(2), "{args:?}: {out}{err}");
            assert_eq!(err.trim_end(), want, "{args:?}");
        }
    }
    let (code, out, err) = explain(
        Some(&cfg),
        &[
            "--src",
            "192.168.1.5",
            "--proto",
            "udp",
            "--sport",
            "1",
            "--dport",
            "65535",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("new udp connection 192.168.1.5:1 -> *:65535"),
        "{out}"
    );
}

#[test]
fn an_unknown_uplink_is_a_usage_error_listing_the_known_ones() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    // A stand-in daemon giving the answer the daemon's engine gives an unknown name, with
    // the daemon's own type (the engine's admin test checks the engine gives it).
    let d = tempdir::Dir::new();
    let listener =
        UnixListener::bind(multiwan::control::socket_path(d.path())).expect("bind the socket");
    let server = std::thread::spawn(move || {
        let mut asked = Vec::new();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("request");
            let env = multiwan::control::parse_request(line.as_bytes()).expect("a request");
            let multiwan::control::Request::Uplink { name, .. } = env.request else {
                panic!("not an uplink request: {line}")
            };
            let why = format!("no uplink named {name:?} (known: isp1, isp2)");
            let answer = multiwan::control::RequestError::usage(why).response();
            let mut text = serde_json::to_string(&answer).expect("json");
            text.push('\n');
            s.write_all(text.as_bytes()).expect("answer");
            asked.push(name);
        }
        asked
    });
    let rd = d.path().display().to_string();
    for name in ["", "nosuch"] {
        let out = bin()
            .args(["uplink", name, "disable", "--run-dir", &rd])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name:?}: {err}");
        assert_eq!(
            err.trim_end(),
            format!("error: no uplink named {name:?} (known: isp1, isp2)")
        );
    }
    assert_eq!(server.join().expect("server"), ["", "nosuch"]);
}

#[test]
fn status_without_a_daemon_says_so() {
    let out = bin()
        .args(["status", "--run-dir", "/nonexistent"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no multiwan daemon listens"));
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    use std::io::Read;
    // Far more output than a pipe buffers, so the writer meets the hang-up.
    let mut text = String::from("[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.0.1\"\n");
    for r in 0..1000 {
        text += &format!(
            "[[rule]]\nname = \"r{r}\"\nsrc = [\"192.168.{}.{}\"]\n",
            r / 250,
            r % 250 + 1
        );
    }
    let (_d, cfg) = tmp_config(&text);
    let mut child = bin()
        .arg("plan")
        .arg("-c")
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read one byte and hang up, like `multiwan plan | head -c1`.
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 1];
    out.read_exact(&mut b).expect("first byte");
    drop(out);
    let status = child.wait().expect("wait");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_notes_gateway_only_probing() {
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(example("seed-003-connmark-round-robin.toml"))
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("note: uplink adsl1 probes only its gateway")
    );
    let out = bin()
        .arg("check")
        .arg("-c")
        .arg(example("seed-004-pppoe-multihomed.toml"))
        .output()
        .expect("run");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("probes only its gateway"));
    // IPv6: a fixed gateway6 and only IPv4 targets means the IPv6 gateway is all it probes.
    let v6 = "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.1.1\"\ngateway6 = \"fe80::1\"\n[uplink.check]\ntargets = [\"192.0.2.1\"]\n";
    let (_d, p) = tmp_config(v6);
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("note: uplink a probes only its IPv6 gateway"),
        "{err}"
    );
    assert!(!err.contains("uplink a probes only its gateway:"), "{err}");
}

#[test]
fn check_notes_a_target_shared_by_every_uplink() {
    let shared = "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.1.1\"\n[uplink.check]\ntargets = [\"1.1.1.1\"]\n[[uplink]]\nname = \"b\"\ninterface = \"eth2\"\ngateway = \"10.0.2.1\"\n[uplink.check]\ntargets = [\"1.1.1.1\"]\n";
    let (_d, p) = tmp_config(shared);
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("note: target 1.1.1.1 is probed by every uplink"),
        "{err}"
    );
    let (_d2, p2) = tmp_config(&shared.replacen("\"1.1.1.1\"", "\"9.9.9.9\"", 1));
    let out = bin().arg("check").arg("-c").arg(&p2).output().expect("run");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("probed by every uplink"));
    // Each uplink with a target of its own beside the shared one: judged without it.
    let own = shared
        .replacen("[\"1.1.1.1\"]", "[\"1.1.1.1\", \"9.9.9.9\"]", 1)
        .replacen("[\"1.1.1.1\"]", "[\"1.1.1.1\", \"8.8.8.8\"]", 1);
    let (_d3, p3) = tmp_config(&own);
    let out = bin().arg("check").arg("-c").arg(&p3).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("probed by every uplink"), "{err}");
}

#[test]
fn check_reports_all_errors_at_once_with_suggestions() {
    let (_d, p) = tmp_config(
        "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"isp1\"\ninterface = \"eth*\"\ngatway = \"10.0.0.1\"\n[uplink.check]\ntargets = [\"10.0.0.1\"]\nintervall = \"1s\"\ninterval = \"1ms\"\n",
    );
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    let f = p.display().to_string();
    let expect = [
        format!("{f}:5:13: uplink[0].interface: invalid interface name \"eth*\": '*' is a wildcard in nft"),
        format!("{f}:6:1: uplink[0].gatway: unknown key; did you mean `gateway`?"),
        format!("{f}:9:1: uplink[0].check.intervall: unknown key; did you mean `interval`?"),
        format!("{f}:10:12: uplink[0].check.interval: 1ms is out of range (expected 10ms..=1m)"),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), expect.len(), "{err}");
    for (line, want) in lines.iter().zip(&expect) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} should start with {want:?}"
        );
    }
}

#[test]
fn check_reports_a_file_that_is_not_utf8_with_its_position() {
    let d = tempdir::Dir::new();
    let p = d.path().join("latin1.toml");
    std::fs::write(&p, b"[lan]\ninterfaces = [\"eth0\"]\n# Stra\xdfe\n").expect("write");
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        format!(
            "{}:3:7: the file is not valid UTF-8 (byte 0xdf here); save it as UTF-8",
            p.display()
        )
    );
}

#[test]
fn check_rejects_more_uplinks_than_the_mark_mask_has_ids() {
    let mut text = String::from("[lan]\ninterfaces = [\"lan0\"]\n");
    for i in 0..258 {
        text +=
            &format!("[[uplink]]\nname = \"u{i}\"\ninterface = \"w{i}\"\ngateway = \"10.0.0.1\"\n");
    }
    let (_d, p) = tmp_config(&text);
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("uplink[253]: too many uplinks: 258 are configured, but the default mark_mask 0xff000000 has room for 253"),
        "{err}"
    );
    // And what check accepts, plan plans.
    let (_d2, p) = tmp_config(&format!("{text}[kernel]\nmark_mask = \"0x0fff0000\"\n"));
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin().arg("plan").arg("-c").arg(&p).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `control_group` this machine does not have: `check` says the daemon will refuse it, and
/// `run` and `reload -c` refuse it as a config error (exit 2, so systemd does not restart a
/// daemon that can never start), before creating anything.
#[test]
fn a_missing_control_group_is_a_config_error_for_the_daemon() {
    let text = "[lan]\ninterfaces = [\"eth0\"]\n[[uplink]]\nname = \"a\"\ninterface = \"eth1\"\ngateway = \"10.0.1.1\"\n[uplink.check]\ntargets = [\"192.0.2.1\"]\n[daemon]\ncontrol_group = \"multiwan-no-such-group-x\"\n";
    let (d, p) = tmp_config(text);
    let out = bin().arg("check").arg("-c").arg(&p).output().expect("run");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no group named \"multiwan-no-such-group-x\"") && err.contains("refuses"),
        "{err}"
    );
    let run_dir = d.path().join("run");
    for cmd in ["run", "reload"] {
        let out = bin()
            .args([cmd, "-c"])
            .arg(&p)
            .arg("--run-dir")
            .arg(&run_dir)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("daemon.control_group: no group named"),
            "{cmd}: {err}"
        );
    }
    assert!(!run_dir.exists(), "nothing created");
}
