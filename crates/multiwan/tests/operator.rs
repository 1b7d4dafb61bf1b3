//! The operator interface against a daemon in namespaces: `status`, `flows`, `explain`,
//! `watch`, metrics and `uplink disable|enable`, checked against what the kernel and the
//! server really saw.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use common::{count, two_uplinks_checked, Lab, WaitFor};
use serde_json::Value;

fn cli_json(lab: &Lab, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    let rd = lab.run_dir();
    all.extend(["--run-dir", &rd, "--json"]);
    let out = lab.multiwan(&all);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Opens idle connections (held open) from host `h` to the server.
fn hold(lab: &Lab, h: usize, n: usize) -> Vec<std::net::TcpStream> {
    hold_to(lab, h, lab.topo.server_endpoint(), n)
}

/// Opens idle connections (held open) from host `h` to `ep`.
fn hold_to(lab: &Lab, h: usize, ep: std::net::SocketAddrV4, n: usize) -> Vec<std::net::TcpStream> {
    lab.topo.hosts[h]
        .ns
        .spawn(move || {
            (0..n)
                .map(|_| {
                    let mut s =
                        std::net::TcpStream::connect_timeout(&ep.into(), Duration::from_secs(2))
                            .expect("connect");
                    s.write_all(b"PUT 1000000\n").expect("write");
                    s.write_all(&[0u8; 3000]).expect("some bytes");
                    s
                })
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("join")
}

#[test]
fn status_and_flows_match_the_kernel_and_the_server() {
    let lab = Lab::new(2, 2);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin").replace(
        "gateway = \"10.37.1.1\"\n",
        "gateway = \"10.37.1.1\"\nweight = 2\n",
    ));
    let _held = (hold(&lab, 0, 4), hold(&lab, 1, 2));
    std::thread::sleep(Duration::from_millis(300));
    // What the server saw, by uplink.
    let mut seen: BTreeMap<usize, u64> = BTreeMap::new();
    for (addr, s) in lab.server.stats() {
        *seen
            .entry(lab.topo.isp_of(addr).expect("uplink address"))
            .or_default() += s.tcp_conns;
    }
    assert_eq!(
        seen.get(&0).copied().unwrap_or(0) + seen.get(&1).copied().unwrap_or(0),
        6
    );
    let s = cli_json(&lab, &["status"]);
    let up = |i: usize| &s["uplinks"][i];
    assert_eq!(up(0)["name"], "isp1");
    assert_eq!(up(0)["state"], "up");
    assert_eq!(up(0)["connections"].as_u64(), seen.get(&0).copied(), "{s}");
    assert_eq!(up(1)["connections"].as_u64(), seen.get(&1).copied(), "{s}");
    assert_eq!(up(0)["new_connections"].as_u64(), seen.get(&0).copied());
    assert!((up(0)["share"].as_f64().expect("share") - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(up(1)["addresses"][0], "10.37.2.253");
    assert_eq!(up(1)["gateway"], "10.37.2.1");
    assert!(up(0)["rtt_avg_ms"].as_f64().is_some());
    assert_eq!(up(0)["targets"][0]["target"], "172.16.0.100");
    assert!(up(0)["bytes_out"].as_u64().expect("bytes") > 0);
    let flows = cli_json(&lab, &["flows"]);
    let to_server: Vec<&Value> = flows
        .as_array()
        .expect("array")
        .iter()
        .filter(|f| f["dport"] == 7000)
        .collect();
    assert_eq!(to_server.len(), 6, "{flows}");
    for f in &to_server {
        let isp = if f["uplink"] == "isp1" { 1 } else { 2 };
        assert_eq!(f["nat_src"], format!("10.37.{isp}.253"), "{f}");
        assert!(
            f["bytes_out"].as_u64().expect("bytes") >= 3000,
            "accounting on: {f}"
        );
        assert!(f["age_s"].as_f64().is_some(), "timestamps on: {f}");
    }
    let only2 = cli_json(&lab, &["flows", "--uplink", "isp2"]);
    assert_eq!(
        only2
            .as_array()
            .expect("array")
            .iter()
            .filter(|f| f["dport"] == 7000)
            .count() as u64,
        seen[&1]
    );
    // The table for people names every uplink.
    let out = lab.multiwan(&["status", "--run-dir", &lab.run_dir()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("isp1") && text.contains("probe 172.16.0.100"),
        "{text}"
    );
    drop(d);
}

#[test]
fn explain_agrees_with_where_connections_go() {
    let lab = Lab::new(2, 6);
    let h0 = lab.topo.hosts[0].addr;
    let text = format!(
        "{}\n[[rule]]\nname = \"pin\"\nsrc = [\"{h0}\"]\nproto = \"tcp\"\ndport = [\"7000\"]\nuplinks = [\"isp2\"]\n\n[[rule]]\nname = \"fo\"\nproto = \"udp\"\nuplinks = [\"isp1\", \"isp2\"]\nmode = \"failover\"\n",
        two_uplinks_checked("src-hash")
    );
    let d = lab.start_daemon(&text);
    let server = multiwan_lab::topology::SERVER_ADDR.to_string();
    for (h, host) in lab.topo.hosts.iter().enumerate() {
        let src = host.addr.to_string();
        let e = cli_json(
            &lab,
            &[
                "explain", "--src", &src, "--dst", &server, "--proto", "tcp", "--dport", "7000",
            ],
        );
        assert_eq!(e["verdict"], "uplink", "{e}");
        let want = e["uplink"].as_str().expect("uplink");
        let got = lab
            .try_connect(h, Duration::from_secs(1))
            .expect("connects");
        assert_eq!(
            format!("isp{}", got + 1),
            want,
            "host {src}: explain said {want} ({e})"
        );
        if h == 0 {
            assert_eq!(e["rule"], "pin");
        } else {
            assert!(e["rule"].is_null(), "{e}");
        }
        let u = cli_json(
            &lab,
            &[
                "explain", "--src", &src, "--dst", &server, "--proto", "udp", "--dport", "7000",
            ],
        );
        assert_eq!(u["rule"], "fo");
        assert_eq!(u["uplink"], "isp1");
        let v = lab.udp_from_host(h, 1);
        assert_eq!(v, vec![Some(0)]);
    }
    // After isp1 fails, explain and reality move together.
    lab.cut_upstream(0);
    d.wait_for("isp1 down", Duration::from_secs(3), |d| {
        d.uplink_state("isp1").as_deref() == Some("down")
    });
    let u = cli_json(
        &lab,
        &[
            "explain",
            "--src",
            &lab.topo.hosts[1].addr.to_string(),
            "--proto",
            "udp",
        ],
    );
    assert_eq!(u["uplink"], "isp2");
    assert!(
        u["excluded"]
            .as_array()
            .expect("excluded")
            .iter()
            .any(|x| x["uplink"] == "isp1"
                && x["reason"].as_str().expect("reason").starts_with("down")),
        "{u}"
    );
    assert_eq!(lab.udp_from_host(1, 1), vec![Some(1)]);
    // When isp2's probes fail too, fail-open keeps isp2 in the kernel: explain says so.
    lab.cut_upstream(1);
    d.wait_for("fail-open", Duration::from_secs(3), |_| {
        cli_json(&lab, &["status"])["fail_open"] == true
    });
    let s = cli_json(&lab, &["status"]);
    assert_eq!(
        (&s["uplinks"][0]["usable"], &s["uplinks"][1]["usable"]),
        (&Value::Bool(false), &Value::Bool(true)),
        "{s}"
    );
    let h1 = lab.topo.hosts[1].addr.to_string();
    let u = cli_json(&lab, &["explain", "--src", &h1, "--proto", "udp"]);
    assert_eq!(
        (&u["uplink"], &u["fail_open"]),
        (&"isp2".into(), &true.into()),
        "{u}"
    );
    let out = lab.multiwan(&["explain", "--src", &h1, "--run-dir", &lab.run_dir()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "candidates: isp2 (weight 1, kept by fail-open: every uplink fails its probes)"
        ) && text.contains("goes to:    isp2"),
        "{text}"
    );
    lab.restore_upstream(1);
    // Offline, against the config file alone.
    let cfg = lab.dir.join("multiwan.toml").display().to_string();
    let out = lab.multiwan(&[
        "explain",
        "-c",
        &cfg,
        "--src",
        &h0.to_string(),
        "--proto",
        "tcp",
        "--dport",
        "7000",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("matches rule pin") && text.contains("goes to:    isp2"),
        "{text}"
    );
}

/// A destination on an uplink's connected subnet (ISP 2's gateway: its modem, DHCP server)
/// is main's, not balanced: `explain` says so, naming the subnet and the interface, for a
/// LAN host and for the router itself — and the kernel agrees: every connection to it is
/// unmarked in conntrack and leaves by wan2, while the internet is balanced over both.
#[test]
fn explain_says_an_uplinks_connected_subnet_is_not_balanced() {
    let lab = Lab::new(2, 1);
    let _d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let ep = std::net::SocketAddrV4::new([10, 37, 2, 1].into(), 7200);
    let _modem = multiwan_lab::traffic::Server::start(&lab.topo.isps[1].ns, ep).expect("a server");
    let h0 = lab.topo.hosts[0].addr.to_string();
    let ask = |src: &str, dst: &str| {
        cli_json(
            &lab,
            &[
                "explain", "--src", src, "--dst", dst, "--proto", "tcp", "--dport", "7200",
            ],
        )
    };
    let e = ask(&h0, "10.37.2.1");
    assert_eq!(e["verdict"], "not_balanced", "{e}");
    assert_eq!(e["not_balanced"]["kind"], "uplink_subnet", "{e}");
    assert_eq!(e["not_balanced"]["interface"], "wan2", "{e}");
    assert_eq!(
        e["not_balanced"]["reason"],
        "10.37.2.1 is on isp2's connected subnet 10.37.2.0/24; it leaves by main's route via wan2",
        "{e}"
    );
    assert!(
        e["uplink"].is_null() && e["candidates"] == Value::Array(vec![]),
        "{e}"
    );
    assert_eq!(e["facts_unknown"], false, "{e}");
    let r = ask("10.37.1.253", "10.37.2.1");
    assert_eq!(r["not_balanced"]["kind"], "uplink_subnet", "{r}");
    // The internet is balanced.
    let server = multiwan_lab::topology::SERVER_ADDR.to_string();
    assert_eq!(ask(&h0, &server)["verdict"], "shares");
    let text = lab.multiwan(&[
        "explain",
        "--src",
        &h0,
        "--dst",
        "10.37.2.1",
        "--run-dir",
        &lab.run_dir(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("not balanced: 10.37.2.1 is on isp2's connected subnet 10.37.2.0/24")
            && !text.contains("candidates"),
        "{text}"
    );
    // The kernel: the connections to the modem carry no uplink's mark, and all of them
    // arrive (by wan2, masqueraded there); those to the server are spread over both.
    let _held = (hold_to(&lab, 0, ep, 4), hold(&lab, 0, 4));
    let flows = cli_json(&lab, &["flows"]);
    let flows = flows.as_array().expect("array");
    let to_modem: Vec<&Value> = flows.iter().filter(|f| f["dport"] == 7200).collect();
    assert_eq!(to_modem.len(), 4, "{flows:?}");
    for f in &to_modem {
        assert!(f["uplink"].is_null(), "unmarked: {f}");
        assert_eq!(f["nat_src"], "10.37.2.253", "{f}");
    }
    let to_server: Vec<&Value> = flows.iter().filter(|f| f["dport"] == 7000).collect();
    let on = |u: &str| to_server.iter().filter(|f| f["uplink"] == u).count();
    assert_eq!((on("isp1"), on("isp2")), (2, 2), "{flows:?}");
}

/// A static route of main's (to the server, via ISP 2's gateway) and a route out of a
/// non-uplink interface (a network behind a LAN router) are seen by `explain`, which asks
/// the kernel the hook chains' own lookups: not balanced, naming the route — and the kernel
/// agrees: every connection to the server is unmarked and leaves by wan2.
#[test]
fn explain_sees_static_routes_and_routes_out_of_other_interfaces() {
    let lab = Lab::new(2, 1);
    let _d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let server = multiwan_lab::topology::SERVER_ADDR.to_string();
    let h0 = lab.topo.hosts[0].addr.to_string();
    let r = &lab.topo.router;
    r.ip(&[
        "route",
        "add",
        &format!("{server}/32"),
        "via",
        "10.37.2.1",
        "dev",
        "wan2",
    ])
    .expect("a static route");
    r.ip(&["route", "add", "10.99.0.0/24", "via", &h0, "dev", "lan0"])
        .expect("a network behind a LAN router");
    let ask = |src: &str, dst: &str| {
        cli_json(
            &lab,
            &[
                "explain", "--src", src, "--dst", dst, "--proto", "tcp", "--dport", "7000",
            ],
        )
    };
    let e = ask(&h0, &server);
    assert_eq!(e["verdict"], "not_balanced", "{e}");
    assert_eq!(e["not_balanced"]["kind"], "uplink_route", "{e}");
    assert_eq!(e["not_balanced"]["interface"], "wan2", "{e}");
    assert_eq!(
        e["not_balanced"]["reason"],
        format!("main routes {server} by a route of its own, {server} via 10.37.2.1 dev wan2 (table main), out of isp2's interface (not by a default route): multiwan leaves it to main"),
        "{e}"
    );
    let own = multiwan_lab::topology::ROUTER_LAN_ADDR.to_string();
    assert_eq!(ask(&own, &server)["not_balanced"]["kind"], "uplink_route");
    let e = ask(&h0, "10.99.0.5");
    assert_eq!(e["not_balanced"]["kind"], "other_route", "{e}");
    assert_eq!(e["not_balanced"]["interface"], "lan0", "{e}");
    // Elsewhere the internet is still balanced.
    assert_eq!(ask(&h0, "172.16.0.99")["verdict"], "shares");
    // The kernel: the connections to the server carry no uplink's mark and leave by wan2.
    let _held = hold(&lab, 0, 4);
    let flows = cli_json(&lab, &["flows"]);
    let flows = flows.as_array().expect("array");
    let to_server: Vec<&Value> = flows.iter().filter(|f| f["dport"] == 7000).collect();
    assert_eq!(to_server.len(), 4, "{flows:?}");
    for f in &to_server {
        assert!(f["uplink"].is_null(), "unmarked: {f}");
        assert_eq!(f["nat_src"], "10.37.2.253", "{f}");
    }
}

/// With `[balance] local = false` the router's own connections keep main's routing:
/// `explain` from the router's address says so, and the kernel agrees (the router's
/// connection to the server carries no uplink's mark), while a LAN host's is balanced.
#[test]
fn explain_says_the_routers_own_connections_are_not_balanced_without_local() {
    let lab = Lab::new(2, 1);
    let _d = lab.start_daemon(&format!(
        "{}local = false\n",
        two_uplinks_checked("round-robin")
    ));
    let server = multiwan_lab::topology::SERVER_ADDR.to_string();
    let ask = |src: &str| {
        cli_json(
            &lab,
            &[
                "explain", "--src", src, "--dst", &server, "--proto", "tcp", "--dport", "7000",
            ],
        )
    };
    let r = ask("10.37.1.253");
    assert_eq!(r["verdict"], "not_balanced", "{r}");
    assert_eq!(r["not_balanced"]["kind"], "router_own", "{r}");
    assert_eq!(
        ask(&lab.topo.hosts[0].addr.to_string())["verdict"],
        "shares"
    );
    let ep = lab.topo.server_endpoint();
    let _held = lab
        .topo
        .router
        .spawn(move || {
            let mut s = std::net::TcpStream::connect_timeout(&ep.into(), Duration::from_secs(2))
                .expect("the router connects by main's route");
            s.write_all(b"PUT 1000000\n").expect("write");
            s
        })
        .expect("spawn")
        .join()
        .expect("join");
    let flows = cli_json(&lab, &["flows"]);
    let mine: Vec<&Value> = flows
        .as_array()
        .expect("array")
        .iter()
        .filter(|f| f["dport"] == 7000)
        .collect();
    assert_eq!(mine.len(), 1, "{flows}");
    assert!(mine[0]["uplink"].is_null(), "not an uplink's: {flows}");
}

#[test]
fn metrics_parse_and_report_the_uplinks() {
    let lab = Lab::new(2, 1);
    let text = format!(
        "[daemon]\nmetrics = 9797\n\n{}",
        two_uplinks_checked("round-robin")
    );
    let _d = lab.start_daemon(&text);
    lab.tcp_from_host(0, 4);
    std::thread::sleep(Duration::from_millis(500));
    let body = lab
        .topo
        .router
        .spawn(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9797").expect("metrics port");
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
                .expect("request");
            let mut r = String::new();
            s.read_to_string(&mut r).expect("response");
            r
        })
        .expect("spawn")
        .join()
        .expect("join");
    let (head, body) = body.split_once("\r\n\r\n").expect("http");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    let find = |name: &str, uplink: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("uplink") == Some(uplink))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(find("multiwan_uplink_up", "isp1"), Some(1.0));
    assert_eq!(
        find("multiwan_uplink_new_connections_total", "isp2"),
        Some(2.0)
    );
    assert!(find("multiwan_probes_total", "isp1").expect("probes") > 0.0);
    assert!(find("multiwan_uplink_rtt_seconds", "isp1").expect("rtt") < 0.1);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "multiwan_probe_rtt_seconds"),
        "histogram present"
    );
    // Metrics are off unless configured, and a bare port means localhost only.
    assert!(body.contains("# TYPE multiwan_probe_rtt_seconds histogram"));
}

#[test]
fn non_root_cannot_use_the_socket() {
    let lab = Lab::new(2, 1);
    let _d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let sock = std::path::Path::new(&lab.run_dir()).join("multiwan.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let bin = lab.dir.join("multiwan-copy");
    std::fs::copy(common::bin(), &bin).expect("copy");
    std::fs::set_permissions(
        &lab.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .args(["status", "--run-dir", &lab.run_dir()])
        .output()
        .expect("setpriv");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn disabling_an_uplink_drains_it() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let held = hold(&lab, 0, 2);
    let a = cli_json(&lab, &["uplink", "isp1", "disable"]);
    assert_eq!(a["uplink"], "isp1");
    assert!(
        a["state"].as_str().expect("state").starts_with("down"),
        "{a}"
    );
    let v = lab.tcp_from_host(0, 6);
    assert_eq!(
        count(&v, 1),
        6,
        "no new connections on a drained uplink: {v:?}"
    );
    let s = cli_json(&lab, &["status"]);
    assert_eq!(s["uplinks"][0]["disabled"], true);
    assert_eq!(s["uplinks"][0]["reason"], "admin_disabled");
    assert_eq!(
        s["uplinks"][0]["connections"], 1,
        "its established connection is left alone: {s}"
    );
    assert_eq!(d.uplink_state("isp1").as_deref(), Some("down"));
    cli_json(&lab, &["uplink", "isp1", "enable"]);
    let v = lab.tcp_from_host(0, 4);
    assert_eq!((count(&v, 0), count(&v, 1)), (2, 2), "{v:?}");
    for name in ["nope", ""] {
        let out = lab.multiwan(&["uplink", name, "disable", "--run-dir", &lab.run_dir()]);
        assert_eq!(out.status.code(), Some(2), "a usage error");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!("error: no uplink named {name:?} (known: isp1, isp2)")
        );
    }
    drop(held);
}

#[test]
fn watch_streams_transitions_and_probe_summaries() {
    let lab = Lab::new(2, 1);
    let _d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let mut child = lab
        .topo
        .router
        .command(common::bin())
        .args(["watch", "--json", "--run-dir", &lab.run_dir()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first: Value = serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(5))
            .expect("a probe summary"),
    )
    .expect("json");
    assert_eq!(first["event"], "probes", "{first}");
    lab.cut_upstream(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut transition = None;
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&l).expect("json line");
            if v["event"] == "transition" {
                transition = Some(v);
                break;
            }
        }
    }
    let t = transition.expect("a transition event");
    assert_eq!(t["uplink"], "isp1");
    assert_eq!(t["to"], "down");
    assert_eq!(t["reason"], "probes_failing");
    let _ = child.kill();
    let _ = child.wait();
}

/// One raw request line on the control socket (from the test process: the socket is a file,
/// reachable from any namespace); the first answer line.
fn raw_request(lab: &Lab, bytes: &[u8]) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(
        std::path::Path::new(&lab.run_dir()).join("multiwan.sock"),
    )
    .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The daemon may stop reading (and close) before a large request is all written.
    let _ = s.write_all(bytes);
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

fn status_works(lab: &Lab) {
    let s = cli_json(lab, &["status"]);
    assert_eq!(s["uplinks"][0]["name"], "isp1", "{s}");
}

/// Issue 10 "Bounds": a request without end, idle connections and busy workers neither grow
/// the daemon nor keep `status` out.
#[test]
fn control_socket_bounds_size_idle_connections_and_concurrency() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    // 1 MiB without a newline: refused as a normal error response after 16 KiB.
    let answer = raw_request(&lab, &vec![b'x'; 1 << 20]);
    let r: Value = serde_json::from_str(&answer).expect("a JSON error line");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]
            .as_str()
            .expect("error")
            .starts_with("request too large"),
        "{r}"
    );
    let bad: Value = serde_json::from_str(&raw_request(
        &lab,
        b"{\"version\":1,\"request\":\"reboot\"}\n",
    ))
    .expect("json");
    assert!(
        bad["error"]
            .as_str()
            .expect("error")
            .starts_with("bad request: "),
        "{bad}"
    );
    status_works(&lab);
    // 100 idle connections (more than the 64 held while they send nothing) cost no thread and
    // do not keep a prompt client out.
    let sock = std::path::Path::new(&lab.run_dir()).join("multiwan.sock");
    let idle: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).expect("connect"))
        .collect();
    let start = std::time::Instant::now();
    status_works(&lab);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    drop(idle);
    // Watch streams never end on their own: they take at most half the workers, so with 16
    // asked for, 8 stream, 8 are refused at once, and `status` is still served meanwhile.
    // A worker frees its slot a moment after its client has the answer, so a request right
    // after another may still find every worker taken on a busy machine ("requests in
    // progress"): such a watcher asks again.
    let ask = || {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        s.write_all(b"{\"version\":1,\"request\":\"watch\"}\n")
            .expect("watch");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    };
    let first_line = |s: &std::os::unix::net::UnixStream| {
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line
    };
    let mut watchers: Vec<_> = (0..16).map(|_| ask()).collect();
    let mut firsts: Vec<String> = watchers.iter().map(first_line).collect();
    for (s, line) in watchers.iter_mut().zip(&mut firsts) {
        for _ in 0..50 {
            if !line.contains("requests in progress") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            *s = ask();
            *line = first_line(s);
        }
    }
    let refused = firsts
        .iter()
        .filter(|l| l.contains("\"ok\":false") && l.contains("8 watch streams open"))
        .count();
    let streaming = firsts.iter().filter(|l| l.contains("\"ok\":true")).count();
    assert_eq!((refused, streaming), (8, 8), "{firsts:?}");
    let start = std::time::Instant::now();
    status_works(&lab);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    drop(watchers);
    drop(d);
}

/// A `watch` client that never reads is dropped (its writes time out); the daemon goes on.
#[test]
fn a_watch_client_that_never_reads_is_dropped() {
    let lab = Lab::new(2, 1);
    let d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let sock = std::path::Path::new(&lab.run_dir()).join("multiwan.sock");
    // For a unix stream only the sender's buffer counts; the daemon keeps it small for watch.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
    s.write_all(b"{\"version\":1,\"request\":\"watch\"}\n")
        .expect("watch");
    let start = std::time::Instant::now();
    while !lab
        .daemon_log()
        .contains("watch client stopped reading: dropped")
    {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "not dropped: {}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("dropped after {:?}", start.elapsed());
    status_works(&lab);
    assert!(d.state().is_some());
    drop(s);
}

fn scrape(lab: &Lab, addr: &'static str, request: Vec<u8>) -> std::io::Result<String> {
    lab.topo
        .router
        .spawn(move || {
            let mut s = std::net::TcpStream::connect_timeout(
                &addr.parse().expect("addr"),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let _ = s.write_all(&request);
            let mut r = Vec::new();
            // A refused oversized request may end in a reset after the answer: keep what came.
            match s.read_to_end(&mut r) {
                Err(e) if r.is_empty() => Err(e),
                _ => Ok(String::from_utf8_lossy(&r).into_owned()),
            }
        })
        .expect("spawn")
        .join()
        .expect("join")
}

/// Concurrent scrapes share one kernel read; later ones within a second hit the cache; only
/// `GET /metrics` with a bounded head is served; a bare port listens on 127.0.0.1 only.
#[test]
fn metrics_scrapes_share_one_kernel_read_and_listen_on_localhost_only() {
    let lab = Lab::new(2, 1);
    let text = format!(
        "[daemon]\nmetrics = 9797\n\n{}",
        two_uplinks_checked("round-robin")
    );
    let _d = lab.start_daemon_with_env(
        &text,
        &[("MULTIWAN_LOG", "info,multiwan::daemon::server=debug")],
    );
    let reads = || lab.daemon_log().matches("kernel counters read").count();
    assert_eq!(reads(), 0);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let scrapes: Vec<_> = (0..8)
        .map(|_| {
            let b = barrier.clone();
            lab.topo
                .router
                .spawn(move || {
                    let mut s = std::net::TcpStream::connect("127.0.0.1:9797").expect("connect");
                    b.wait();
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                        .expect("request");
                    let mut r = String::new();
                    s.read_to_string(&mut r).expect("response");
                    r
                })
                .expect("spawn")
        })
        .collect();
    let bodies: Vec<String> = scrapes
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    for b in &bodies {
        assert!(b.starts_with("HTTP/1.1 200"), "{b}");
        assert_eq!(b, &bodies[0], "every scrape shares one result");
    }
    assert_eq!(reads(), 1, "{}", lab.daemon_log());
    // A second later the result is stale: the next scrape reads the kernel again.
    std::thread::sleep(Duration::from_millis(1200));
    let again = scrape(
        &lab,
        "127.0.0.1:9797",
        b"GET /metrics HTTP/1.0\r\n\r\n".to_vec(),
    )
    .expect("scrape");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert_eq!(reads(), 2);
    // Only GET /metrics, with a head of at most 8 KiB.
    let code = |req: Vec<u8>| {
        let r = scrape(&lab, "127.0.0.1:9797", req).expect("answer");
        r.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    assert_eq!(code(b"POST /metrics HTTP/1.1\r\n\r\n".to_vec()), "405");
    assert_eq!(code(b"GET /other HTTP/1.1\r\n\r\n".to_vec()), "404");
    assert_eq!(code(b"nonsense\r\n\r\n".to_vec()), "400");
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    assert_eq!(code(huge), "431");
    // A bare port: 127.0.0.1 only, not the router's uplink address, from inside or outside.
    assert!(scrape(
        &lab,
        "10.37.1.253:9797",
        b"GET /metrics HTTP/1.0\r\n\r\n".to_vec()
    )
    .is_err());
    let from_isp = lab.topo.isps[0]
        .ns
        .spawn(|| {
            std::net::TcpStream::connect_timeout(
                &"10.37.1.253:9797".parse().expect("addr"),
                Duration::from_secs(2),
            )
            .is_ok()
        })
        .expect("spawn")
        .join()
        .expect("join");
    assert!(!from_isp, "metrics reachable from the ISP side");
}

/// `[daemon] control_group`: members (by primary or supplementary group) may read, not change;
/// the daemon checks the peer itself (SO_PEERCRED) even when the socket's mode lets someone in.
#[test]
fn control_group_members_may_read_but_not_change() {
    control_group_check(common::bin());
}

/// The same with the packaged binary (the static musl release build, whose libc reads
/// `/etc/group` itself rather than through NSS) as the daemon and as the client.
#[test]
fn control_group_works_the_same_in_the_packaged_static_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deb = common::debroot::deb();
    let status = std::process::Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.path())
        .status()
        .expect("dpkg-deb");
    assert!(status.success(), "dpkg-deb -x {}", deb.display());
    let bin = dir.path().join("usr/bin/multiwan");
    let file = std::fs::read(&bin).expect("packaged binary");
    // A static executable: no interpreter (PT_INTERP) to load a libc from.
    assert!(
        !file.windows(b"ld-linux".len()).any(|w| w == b"ld-linux"),
        "the packaged binary is expected to be the static musl build"
    );
    control_group_check(&bin);
}

fn control_group_check(binary: &std::path::Path) {
    let lab = Lab::new(2, 1);
    let text = format!(
        "[daemon]\ncontrol_group = \"nogroup\"\n\n{}",
        two_uplinks_checked("round-robin")
    );
    let _d = lab.start_daemon_from(binary, &text, &[]);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let run = std::path::PathBuf::from(lab.run_dir());
    let sock = run.join("multiwan.sock");
    let md = std::fs::metadata(&sock).expect("socket");
    assert_eq!((md.mode() & 0o777, md.gid()), (0o660, 65534));
    let md = std::fs::metadata(&run).expect("run dir");
    assert_eq!((md.mode() & 0o777, md.gid()), (0o710, 65534));
    let bin = lab.dir.join("multiwan-copy");
    std::fs::copy(binary, &bin).expect("copy");
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let as_user = |ids: &[&str], args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args(ids)
            .arg(&bin)
            .args(args)
            .args(["--run-dir", &lab.run_dir()])
            .output()
            .expect("setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let member = ["--reuid", "65534", "--regid", "65534", "--clear-groups"];
    let (code, out, err) = as_user(&member, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"isp1\""), "{out}");
    let (code, _, err) = as_user(&member, &["uplink", "isp1", "disable"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("permission denied") && err.contains("needs root"),
        "{err}"
    );
    assert_eq!(cli_json(&lab, &["status"])["uplinks"][0]["disabled"], false);
    // A supplementary group counts like the primary one.
    let supplementary = ["--reuid", "65534", "--regid", "1", "--groups", "65534"];
    let (code, _, err) = as_user(&supplementary, &["status"]);
    assert_eq!(code, Some(0), "{err}");
    // Outsiders: the kernel refuses them (mode 0660)...
    let outsider = ["--reuid", "65534", "--regid", "1", "--clear-groups"];
    let (code, _, err) = as_user(&outsider, &["status"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("permission denied"), "{err}");
    // ...and so does the daemon when the file modes would let them in.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, _, err) = as_user(&outsider, &["status"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("permission denied: uid 65534 is neither root nor in"),
        "{err}"
    );
}

/// The run directory must be the daemon's own; the pid file's lock keeps a second daemon out
/// and tells a live daemon from a stale file (after `kill -9`).
#[test]
fn run_directory_is_checked_and_locked() {
    let lab = Lab::new(2, 1);
    let cfg = lab.write_config(&two_uplinks_checked("round-robin"));
    // A symlink or a world-writable directory is refused before anything is touched.
    let real = lab.dir.join("real-run");
    std::fs::create_dir(&real).expect("dir");
    let link = lab.dir.join("link-run");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let out = lab.multiwan(&["run", "-c", &cfg, "--run-dir", &link.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a symlink"));
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let out = lab.multiwan(&["run", "-c", &cfg, "--run-dir", &real.display().to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("world writable"));
    assert!(!real.join("multiwan.sock").exists());
    // A second daemon on the same run directory names the first.
    let mut d = lab.start_daemon(&two_uplinks_checked("round-robin"));
    let out = lab.multiwan(&["run", "-c", &cfg, "--run-dir", &lab.run_dir()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("another multiwan daemon (pid {})", d.pid())),
        "{err}"
    );
    // `reload -c FILE` validates FILE, and the daemon re-reads its own: another file is
    // refused (it would validate one file and apply another), the daemon's own is signalled.
    let state = std::path::Path::new(&lab.run_dir()).join("state.json");
    let start = std::time::Instant::now();
    while !state.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let other = lab.dir.join("other.toml");
    std::fs::write(&other, two_uplinks_checked("random")).expect("write");
    let other = other.display().to_string();
    let out = lab.multiwan(&["reload", "-c", &other, "--run-dir", &lab.run_dir()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "reads {}, not {other}",
            std::fs::canonicalize(&cfg).expect("config").display()
        )) && err.contains("nothing was signalled"),
        "{err}"
    );
    let out = lab.multiwan(&["reload", "-c", &cfg, "--run-dir", &lab.run_dir()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without -c the daemon's own file is validated: a broken one is refused, unsignalled.
    let good = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, format!("{good}\nbogus = 1\n")).expect("write");
    let out = lab.multiwan(&["reload", "--run-dir", &lab.run_dir()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bogus"), "{err}");
    std::fs::write(&cfg, good).expect("restore");
    // `down` under a running daemon is refused: the daemon would put everything back.
    let out = lab.multiwan(&["down", "--run-dir", &lab.run_dir()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("daemon (pid {})", d.pid())) && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(lab
        .topo
        .router
        .exec("nft", &["list", "table", "inet", "multiwan"])
        .is_ok());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(lab.run_dir())
            .expect("run dir")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    // After kill -9 the pid file stays but nobody holds it: no daemon, and apply may run.
    d.child.kill().expect("kill -9");
    d.child.wait().expect("reap");
    assert!(std::path::Path::new(&lab.run_dir())
        .join("multiwan.pid")
        .exists());
    let out = lab.multiwan(&["reload", "--run-dir", &lab.run_dir()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon runs"));
    let out = lab.multiwan(&["apply", "-c", &cfg, "--run-dir", &lab.run_dir()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A metrics address this machine does not have is a config error (exit 2: under systemd a
/// restart would fail the same way), found before anything is installed.
#[test]
fn a_metrics_address_not_on_this_machine_is_a_config_error() {
    let lab = Lab::new(2, 1);
    let before = lab.kernel_snapshot();
    let cfg = lab.write_config(&format!(
        "[daemon]\nmetrics = \"192.0.2.77:9797\"\n\n{}",
        two_uplinks_checked("round-robin")
    ));
    let out = lab.multiwan(&["run", "-c", &cfg, "--run-dir", &lab.run_dir()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("daemon.metrics: cannot listen on 192.0.2.77:9797: no such address"),
        "{err}"
    );
    assert_eq!(before, lab.kernel_snapshot(), "nothing installed");
}
