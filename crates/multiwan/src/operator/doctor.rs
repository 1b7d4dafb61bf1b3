//! `multiwan doctor`: a read-only pre-flight check of the live system against a config. It
//! says what on this machine would break multiwan, or what multiwan would break, each finding
//! with its fix; exit 0 clean, 1 warnings, 2 blockers; `--json` prints [`Report`].
//!
//! Without a config file it checks the system against multiwan's defaults and reports the
//! missing config as a blocker.
//!
//! Two halves: [`observe`] reads the network namespace it runs in (rtnetlink through
//! `crate::kernel`, `nft -j list ruleset`, `nft -c` of the plan, `iptables-save`, sysctls and
//! `/proc`) and never writes anything; [`analyze`] is pure, turning those observations into
//! findings, so every rule is unit-tested without a kernel.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use multiwan_core::order::Collect;
use multiwan_core::Config;
use serde::{Deserialize, Serialize};

/// Version of the [`Report`] JSON; bumped on any incompatible change.
pub const DOCTOR_VERSION: u32 = 1;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; changes nothing in the exit code.
    Info,
    /// multiwan works, but something will surprise the admin: exit 1.
    Warning,
    /// multiwan would not work, or would break something else: exit 2.
    Blocker,
}

/// One thing doctor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier for scripts (`mark-overlap`, `rp-filter-strict`, …).
    pub code: String,
    /// What is wrong, with the names and numbers seen.
    pub what: String,
    /// How to fix it.
    pub fix: String,
}

/// `multiwan doctor --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// [`DOCTOR_VERSION`].
    pub version: u32,
    /// The config checked.
    pub config: String,
    pub findings: Vec<Finding>,
    /// 0 clean (or only info), 1 warnings, 2 blockers.
    pub exit_code: u8,
}

impl Report {
    pub fn new(config: String, findings: Vec<Finding>) -> Self {
        let exit_code = match findings.iter().map(|f| f.severity).max() {
            Some(Severity::Blocker) => 2,
            Some(Severity::Warning) => 1,
            _ => 0,
        };
        Self {
            version: DOCTOR_VERSION,
            config,
            findings,
            exit_code,
        }
    }
}

/// An `ip rule` as doctor needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSeen {
    pub priority: u32,
    /// (value, mask) of `fwmark`, when the rule matches one.
    pub fwmark: Option<(u32, u32)>,
    /// The table looked up (0 for unreachable/blackhole).
    pub table: u32,
    /// Installed by multiwan (its rtnetlink protocol number).
    pub ours: bool,
    /// Selects by input interface (`iif`).
    pub iif: bool,
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkSeen {
    pub up: bool,
    pub has_addr: bool,
    /// A default route through it that multiwan did not install (a DHCP client's).
    pub default_gateway: bool,
    /// An IPv6 default route through it that router advertisements installed.
    pub default_gateway6: bool,
}

/// Everything [`observe`] read.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// `nft --version`, or `None` when nft is missing.
    pub nft_version: Option<String>,
    /// `nft -c` of the planned ruleset: `Err(nft's message)` when this kernel or nft cannot
    /// take it (old nft, no conntrack marks or numgen).
    pub nft_check: Option<Result<(), String>>,
    pub rules: Vec<RuleSeen>,
    /// Mark bits that other nftables tables set or match, by table (`ip mangle`, …).
    pub nft_marks: BTreeMap<String, u32>,
    /// Mark bits in iptables(-nft) rules (`MARK`/`CONNMARK`/`-m mark`), by table.
    pub iptables_marks: BTreeMap<String, u32>,
    /// iptables-legacy tables present in this namespace (`/proc/net/ip_tables_names`).
    pub legacy_tables: Vec<String>,
    /// sysctl key → value (missing keys are absent).
    pub sysctls: BTreeMap<String, String>,
    /// Interface name → facts; an interface that does not exist is absent.
    pub links: BTreeMap<String, LinkSeen>,
    /// Names (`comm`) of processes in this network namespace.
    pub processes: Vec<String>,
}

fn finding(severity: Severity, code: &str, what: String, fix: &str) -> Finding {
    Finding {
        severity,
        code: code.into(),
        what,
        fix: fix.into(),
    }
}

/// Well-known fwmark users and the bits they own.
pub const KNOWN_MARK_USERS: &[(&str, u32)] = &[
    ("Tailscale", 0x00ff_0000),
    ("kube-proxy", 0x0000_c000),
    ("wg-quick", 0x0000_ca6c),
    ("Cilium", 0x0000_0f00),
    ("mwan3", 0x0000_3f00),
];

/// Turns observations into findings (pure).
pub fn analyze(cfg: &Config, o: &Observed) -> Vec<Finding> {
    let mut out = Vec::new();
    tools(o, &mut out);
    marks(cfg, o, &mut out);
    rules(cfg, o, &mut out);
    legacy(o, &mut out);
    sysctls(cfg, o, &mut out);
    managers(cfg, o, &mut out);
    interfaces(cfg, o, &mut out);
    for n in crate::settings::check_notes(cfg) {
        out.push(finding(
            Severity::Warning,
            "probe-targets",
            n,
            "list at least one host beyond the ISP per uplink in [uplink.check] targets",
        ));
    }
    multiwan_core::order::sort_by_key(&mut out, |f| std::cmp::Reverse(f.severity));
    out
}

fn tools(o: &Observed, out: &mut Vec<Finding>) {
    match &o.nft_version {
        None => out.push(finding(
            Severity::Blocker,
            "nft-missing",
            "the nft program is not installed: multiwan loads its ruleset with it".into(),
            "apt install nftables",
        )),
        Some(v) => {
            if let Some(Err(e)) = &o.nft_check {
                out.push(finding(
                    Severity::Blocker,
                    "nft-rejects-plan",
                    format!("{v} (or this kernel) rejects the ruleset this config needs: {e}"),
                    "use nft ≥ 1.0 and a kernel with nf_tables, nft_ct (conntrack marks) and nft_numgen; `multiwan plan -c CONFIG` shows the ruleset",
                ));
            }
        }
    }
    if !o.sysctls.contains_key("net.ipv4.fib_multipath_hash_policy") {
        out.push(finding(
            Severity::Warning,
            "no-multipath",
            "this kernel has no multipath routing (CONFIG_IP_ROUTE_MULTIPATH): the router's own unmarked traffic cannot be spread over uplinks".into(),
            "use a kernel built with CONFIG_IP_ROUTE_MULTIPATH=y (every Debian kernel is)",
        ));
    }
}

fn marks(cfg: &Config, o: &Observed, out: &mut Vec<Finding>) {
    let mask = cfg.kernel.mark_mask;
    let seen = o
        .nft_marks
        .iter()
        .map(|(t, b)| (format!("nftables table {t}"), *b))
        .chain(
            o.iptables_marks
                .iter()
                .map(|(t, b)| (format!("iptables table {t}"), *b)),
        )
        .chain(o.rules.iter().filter(|r| !r.ours).filter_map(|r| {
            r.fwmark
                .map(|(v, m)| (format!("ip rule {}", r.priority), v & m | m))
        }));
    for (who, bits) in seen {
        if bits & mask != 0 {
            out.push(finding(
                Severity::Blocker,
                "mark-overlap",
                format!(
                    "{who} uses mark bits {bits:#010x}, which overlap multiwan's mark_mask {mask:#010x}: each would rewrite or misread the other's marks"
                ),
                "set [kernel] mark_mask to bits nobody else uses (doctor lists the ones in use)",
            ));
        }
    }
    for (who, bits) in KNOWN_MARK_USERS {
        if bits & mask != 0 {
            out.push(finding(
                Severity::Info,
                "mark-known-user",
                format!(
                    "mark_mask {mask:#010x} overlaps the bits {who} uses ({bits:#010x}); fine unless {who} runs here"
                ),
                "choose [kernel] mark_mask clear of it if you run it",
            ));
        }
    }
}

fn rules(cfg: &Config, o: &Observed, out: &mut Vec<Finding>) {
    let k = &cfg.kernel;
    let prio = k.rule_priority..k.rule_priority + multiwan_core::model::RULE_PRIORITY_SPAN;
    let late = multiwan_core::model::LATE_RULE_PRIORITY..32766;
    let n = cfg.uplinks.len() as u32;
    let tables = k.table_base..=k.table_base + n.max(1) + 1;
    for r in o.rules.iter().filter(|r| !r.ours) {
        if prio.contains(&r.priority) || late.contains(&r.priority) {
            out.push(finding(
                Severity::Info,
                "rule-priority-shared",
                format!(
                    "an ip rule that multiwan did not install sits at priority {}, one of multiwan's ({}..={} for its marks, {}..={} for unmarked traffic); harmless (rules at one priority keep the order they were added in) but easy to misread in `ip rule`",
                    r.priority,
                    prio.start,
                    prio.end - 1,
                    late.start,
                    late.end - 1
                ),
                "nothing needed; to keep listings clear, move that rule or set [kernel] rule_priority elsewhere",
            ));
        }
        if tables.contains(&r.table) {
            out.push(finding(
                Severity::Blocker,
                "table-taken",
                format!(
                    "ip rule {} looks up table {}, one of multiwan's ({}..={})",
                    r.priority,
                    r.table,
                    tables.start(),
                    tables.end()
                ),
                "set [kernel] table_base to a range of tables nobody uses",
            ));
        }
        // Rules that select by mark or destination see unmarked traffic before multiwan
        // does. One that selects by input interface is invisible to the lookup multiwan
        // asks (the kernel's fib lookup from nftables has no input interface), so a LAN
        // connection it routes may still be balanced if its route otherwise leaves by an
        // uplink.
        let special = [0, 253, 254, 255].contains(&r.table);
        if r.iif && r.priority > k.rule_priority && !special && !tables.contains(&r.table) {
            out.push(finding(
                Severity::Warning,
                "rule-iif-unseen",
                format!(
                    "ip rule {} (table {}) selects by input interface after multiwan's marked rules: multiwan cannot see it when it decides which LAN connections leave by an uplink, and the ones it balances are routed by multiwan's rules at {} first",
                    r.priority,
                    r.table,
                    k.rule_priority
                ),
                "give that traffic a [[rule]] with mode = \"bypass\" (src = the interface's subnet), or move the rule before [kernel] rule_priority",
            ));
        }
    }
}

fn legacy(o: &Observed, out: &mut Vec<Finding>) {
    if !o.legacy_tables.is_empty() {
        out.push(finding(
            Severity::Warning,
            "iptables-legacy",
            format!(
                "iptables-legacy tables are loaded ({}): their rules are invisible to nft and to multiwan's reasoning, and run in the same hooks",
                o.legacy_tables.join(", ")
            ),
            "move them to iptables-nft (iptables-legacy-save | iptables-nft-restore), then rmmod the legacy tables",
        ));
    }
}

fn sysctls(cfg: &Config, o: &Observed, out: &mut Vec<Finding>) {
    let get = |k: &str| o.sysctls.get(k).map(String::as_str);
    if get("net.ipv4.ip_forward") != Some("1") {
        out.push(finding(
            Severity::Info,
            "ip-forward-off",
            "net.ipv4.ip_forward is 0: the router forwards nothing until multiwan sets it (it does, and restores it on `down`)".into(),
            "nothing to do; set it in /etc/sysctl.d/ if other services need forwarding without multiwan",
        ));
    }
    for scope in ["all", "default"] {
        let key = format!("net.ipv4.conf.{scope}.rp_filter");
        if get(&key) == Some("1") {
            out.push(finding(
                Severity::Info,
                "rp-filter-strict",
                format!("{key} = 1 (strict): multiwan sets its uplinks to loose (2), which the kernel combines as max(all, interface)"),
                "nothing to do; never set it to 0 globally",
            ));
        }
    }
    // IPv6 forwarding (on already, or turned on by multiwan for an IPv6 config) makes the
    // kernel ignore router advertisements where accept_ra < 2. Uplinks with gateway6 = "auto"
    // get accept_ra = 2 from multiwan itself, and a fixed gateway6 needs no RA; an uplink
    // without IPv6 in the config loses whatever default route RA gave it.
    let forwarding =
        get("net.ipv6.conf.all.forwarding") == Some("1") || multiwan_core::plan::has_ipv6(cfg);
    if forwarding {
        for u in cfg.uplinks.iter().filter(|u| u.ipv6.is_none()) {
            let key = format!("net.ipv6.conf.{}.accept_ra", u.interface);
            // A warning when such a route is there now; otherwise only worth knowing.
            let learned = o
                .links
                .get(&u.interface)
                .is_some_and(|l| l.default_gateway6);
            if matches!(get(&key), Some("0") | Some("1")) {
                out.push(finding(
                    if learned {
                        Severity::Warning
                    } else {
                        Severity::Info
                    },
                    "ipv6-accept-ra",
                    format!(
                        "IPv6 forwarding is on and {key} = {}: the kernel ignores router advertisements on {}, so an IPv6 default route learned there disappears",
                        get(&key).unwrap_or("?"),
                        u.interface
                    ),
                    "give the uplink gateway6 = \"auto\" (multiwan then sets accept_ra = 2 and follows the advertised router), or set accept_ra = 2 yourself",
                ));
            }
        }
    }
}

fn managers(cfg: &Config, o: &Observed, out: &mut Vec<Finding>) {
    let running = |name: &str| o.processes.iter().any(|p| p == name);
    for (proc_name, what, fix) in [
        ("mwan3track", "mwan3 (another multi-WAN manager) runs here: both would fight over marks, rules and routes", "stop and disable mwan3 before starting multiwan"),
        ("NetworkManager", "NetworkManager runs here: it may add its own routing rules, re-add default routes with its metrics and reset uplinks", "mark the uplinks unmanaged, or keep them managed with gateway = \"auto\" and ipv4.never-default=no; multiwan follows its default routes"),
        ("tailscaled", "Tailscale runs here: it marks packets (0x40000/0x80000 under 0xff0000) and adds ip rules 5210-5270 with table 52", "keep [kernel] mark_mask clear of 0xff0000 and check the rule findings above"),
        ("dockerd", "Docker runs here: it adds iptables-nft NAT and filter chains and may mark packets", "nothing if no mark overlap is reported; multiwan leaves Docker's chains alone"),
        ("mullvad-daemon", "Mullvad runs here: it adds its own nft tables, fwmark rules and a policy routing table", "check the mark and rule findings; Mullvad's kill switch may block uplink probes"),
    ] {
        if running(proc_name) {
            out.push(finding(Severity::Warning, "competing-manager", what.into(), fix));
        }
    }
    if running("systemd-networkd")
        && o.rules
            .iter()
            .any(|r| !r.ours && ![0, 253, 254, 255].contains(&r.table))
    {
        out.push(finding(
            Severity::Info,
            "networkd-rules",
            "systemd-networkd runs here and foreign routing policy rules exist: networkd's [RoutingPolicyRule] sections may re-add or remove them".into(),
            "keep networkd's rules outside multiwan's priorities and tables",
        ));
    }
    let dhcp = [
        "dhclient",
        "dhcpcd",
        "udhcpc",
        "NetworkManager",
        "systemd-networkd",
    ]
    .into_iter()
    .filter(|p| running(p))
    .collect::<Vec<_>>();
    for u in cfg
        .uplinks
        .iter()
        .filter(|u| !u.gateway_auto && u.gateway.is_some())
    {
        let dhcp_route = o.links.get(&u.interface).is_some_and(|l| l.default_gateway);
        if dhcp_route && !dhcp.is_empty() {
            out.push(finding(
                Severity::Warning,
                "fixed-gateway-under-dhcp",
                format!(
                    "uplink {} has a fixed gateway, but {} installs a default route on {}: a new lease with another gateway leaves multiwan's stale",
                    u.name,
                    dhcp.join(", "),
                    u.interface
                ),
                "set gateway = \"auto\" on that uplink: multiwan then follows the DHCP client's default route, whatever its metric",
            ));
        }
    }
}

fn interfaces(cfg: &Config, o: &Observed, out: &mut Vec<Finding>) {
    for u in &cfg.uplinks {
        let i = &u.interface;
        let (sev, code, what) = match o.links.get(i) {
            None => (
                Severity::Blocker,
                "interface-missing",
                format!("uplink {}: interface {i} does not exist", u.name),
            ),
            Some(l) if !l.up => (
                Severity::Warning,
                "interface-down",
                format!(
                    "uplink {}: interface {i} is down (no carrier or not up)",
                    u.name
                ),
            ),
            Some(l) if !l.has_addr && u.gateway.is_some() => (
                Severity::Warning,
                "interface-no-address",
                format!("uplink {}: interface {i} has no IPv4 address", u.name),
            ),
            Some(l) if u.gateway_auto && !l.default_gateway => (
                Severity::Warning,
                "auto-gateway-missing",
                format!(
                    "uplink {}: gateway = \"auto\", but no default route via {i} exists yet",
                    u.name
                ),
            ),
            Some(_) => continue,
        };
        let fix = match code {
            "interface-missing" => "fix [[uplink]] interface, or create the interface (ip link)",
            "auto-gateway-missing" => "start the interface's DHCP client; multiwan takes the uplink into use once its default route appears",
            _ => "bring it up (ip link set IF up) and give it its address; multiwan follows it when it changes",
        };
        out.push(finding(sev, code, what, fix));
    }
    for i in &cfg.lan.interfaces {
        if !o.links.contains_key(i) {
            out.push(finding(
                Severity::Warning,
                "lan-interface-missing",
                format!("LAN interface {i} does not exist: nothing from it is balanced"),
                "fix [lan] interfaces, or create the interface",
            ));
        }
    }
}

/// Reads this network namespace (read-only). `sysctl_root` is `/proc/sys` except in tests.
pub fn observe(cfg: &Config, sysctl_root: &Path) -> Observed {
    let mut o = Observed {
        nft_version: nft_version(),
        ..Observed::default()
    };
    if o.nft_version.is_some() {
        // Without uplinks there is no ruleset to try.
        o.nft_check = (!cfg.uplinks.is_empty()).then(|| check_plan(cfg));
        o.nft_marks = nft_marks();
    }
    o.iptables_marks = iptables_marks();
    o.legacy_tables = std::fs::read_to_string("/proc/net/ip_tables_names")
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    o.sysctls = read_sysctls(cfg, sysctl_root);
    o.processes = processes_in_this_netns();
    o.links = read_links(cfg);
    if let Ok(mut rtnl) = crate::kernel::netlink::Rtnl::open() {
        o.rules = read_rules(&mut rtnl);
        mark_ra_defaults(&mut rtnl, &mut o.links);
    }
    o
}

const TOOL_DEADLINE: Duration = Duration::from_secs(10);

fn nft_version() -> Option<String> {
    let out = crate::kernel::exec::run("nft", &["--version"], b"", TOOL_DEADLINE).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn check_plan(cfg: &Config) -> Result<(), String> {
    let (p, _) = crate::live::live_plan(cfg).map_err(|e| format!("{e:#}"))?;
    crate::kernel::nft::load(&p.nft, true).map_err(|e| format!("{e:#}"))
}

/// Mark bits that constants in `v` (an nft JSON expression) name.
fn constant_bits(v: &serde_json::Value) -> u32 {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32).unwrap_or(0),
        serde_json::Value::Array(a) => a.iter().map(constant_bits).fold(0, |x, y| x | y),
        serde_json::Value::Object(m) => m.values().map(constant_bits).fold(0, |x, y| x | y),
        _ => 0,
    }
}

fn mentions_mark(v: &serde_json::Value) -> bool {
    v.to_string().contains(r#""key":"mark""#)
}

/// Bits of `meta mark`/`ct mark` set or matched by each table other than multiwan's.
pub fn marks_in_ruleset(json: &serde_json::Value) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    let items = json["nftables"].as_array().cloned().unwrap_or_default();
    for item in items {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let table = format!(
            "{} {}",
            rule["family"].as_str().unwrap_or("?"),
            rule["table"].as_str().unwrap_or("?")
        );
        if table == "inet multiwan" {
            continue;
        }
        for stmt in rule["expr"].as_array().into_iter().flatten() {
            let bits = if let Some(m) = stmt.get("mangle").filter(|m| mentions_mark(&m["key"])) {
                constant_bits(&m["value"])
            } else if let Some(m) = stmt.get("match").filter(|m| mentions_mark(&m["left"])) {
                constant_bits(&m["left"]) | constant_bits(&m["right"])
            } else {
                0
            };
            if bits != 0 {
                *out.entry(table.clone()).or_default() |= bits;
            }
        }
    }
    out
}

fn nft_marks() -> BTreeMap<String, u32> {
    let Ok(out) = crate::kernel::exec::run("nft", &["-j", "list", "ruleset"], b"", TOOL_DEADLINE)
    else {
        return BTreeMap::new();
    };
    // Parsed as text, like every other JSON the router reads: one parser in the binary.
    std::str::from_utf8(&out.stdout)
        .ok()
        .and_then(|t| serde_json::from_str(t).ok())
        .map(|j| marks_in_ruleset(&j))
        .unwrap_or_default()
}

/// Mark bits in `iptables-save` output, by table.
pub fn marks_in_iptables_save(text: &str) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            if matches!(
                w[0],
                "--set-xmark" | "--set-mark" | "--mark" | "--or-mark" | "--and-mark" | "--xor-mark"
            ) {
                let bits = w[1]
                    .split('/')
                    .filter_map(|n| u32::from_str_radix(n.trim_start_matches("0x"), 16).ok())
                    .fold(0, |a, b| a | b);
                // `--set-xmark V/0xffffffff` clears every bit but V: only V's bits are used.
                let bits = match w[1].split_once('/') {
                    Some((v, "0xffffffff")) => {
                        u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap_or(0)
                    }
                    _ => bits,
                };
                if bits != 0 {
                    *out.entry(table.clone()).or_default() |= bits;
                }
            }
        }
    }
    out
}

fn iptables_marks() -> BTreeMap<String, u32> {
    // iptables-nft's rules are in nftables too, but nft 1.0.6 prints their xt matches
    // without values: iptables-save shows them.
    match crate::kernel::exec::run("iptables-nft-save", &[], b"", TOOL_DEADLINE) {
        Ok(out) if out.status.success() => {
            marks_in_iptables_save(&String::from_utf8_lossy(&out.stdout))
        }
        _ => BTreeMap::new(),
    }
}

fn read_sysctls(cfg: &Config, root: &Path) -> BTreeMap<String, String> {
    let mut keys = vec![
        "net.ipv4.ip_forward".to_string(),
        "net.ipv4.conf.all.rp_filter".into(),
        "net.ipv4.conf.default.rp_filter".into(),
        "net.ipv4.fib_multipath_hash_policy".into(),
        "net.ipv6.conf.all.forwarding".into(),
    ];
    keys.extend(
        cfg.uplinks
            .iter()
            .map(|u| format!("net.ipv6.conf.{}.accept_ra", u.interface)),
    );
    keys.into_iter()
        .filter_map(|k| {
            let v = std::fs::read_to_string(root.join(k.replace('.', "/"))).ok()?;
            Some((k, v.trim().to_string()))
        })
        .collect_map()
}

/// Process names whose network namespace is this one (a DHCP client elsewhere is not ours).
fn processes_in_this_netns() -> Vec<String> {
    let Ok(ours) = std::fs::read_link("/proc/self/ns/net") else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("ns/net")).is_ok_and(|n| n == ours))
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    multiwan_core::order::sort(&mut names);
    names.dedup();
    names
}

fn read_rules(rtnl: &mut crate::kernel::netlink::Rtnl) -> Vec<RuleSeen> {
    use netlink_packet_route::rule::RuleAttribute;
    let mut msgs = Vec::new();
    for family in multiwan_core::net::Family::ALL {
        msgs.extend(rtnl.rules(family).unwrap_or_default());
    }
    msgs.iter()
        .map(|m| {
            let mut r = RuleSeen {
                table: u32::from(m.header.table),
                ours: crate::kernel::netlink::rule_is_ours(m),
                ..RuleSeen::default()
            };
            let mut mask = u32::MAX;
            for a in &m.attributes {
                match a {
                    RuleAttribute::Priority(p) => r.priority = *p,
                    RuleAttribute::FwMark(v) => r.fwmark = Some((*v, u32::MAX)),
                    RuleAttribute::FwMask(v) => mask = *v,
                    RuleAttribute::Table(t) => r.table = *t,
                    RuleAttribute::Iifname(_) => r.iif = true,
                    _ => {}
                }
            }
            if let Some((v, _)) = r.fwmark {
                r.fwmark = Some((v, mask));
            }
            r
        })
        .collect()
}

/// Marks the interfaces with an IPv6 default route that router advertisements installed
/// (routing protocol `ra`, 9).
fn mark_ra_defaults(
    rtnl: &mut crate::kernel::netlink::Rtnl,
    links: &mut BTreeMap<String, LinkSeen>,
) {
    const RTPROT_RA: u8 = 9;
    let names: BTreeMap<u32, String> = rtnl
        .links()
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect_map();
    let routes = rtnl
        .routes(multiwan_core::net::Family::V6, None, Some(RTPROT_RA))
        .unwrap_or_default();
    for r in routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
    {
        let oif = r.attributes.iter().find_map(|a| match a {
            netlink_packet_route::route::RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if let Some(l) = oif
            .and_then(|i| names.get(&i))
            .and_then(|n| links.get_mut(n))
        {
            l.default_gateway6 = true;
        }
    }
}

fn read_links(cfg: &Config) -> BTreeMap<String, LinkSeen> {
    let auto = cfg
        .uplinks
        .iter()
        .map(|u| u.interface.clone())
        .collect_set();
    let Ok(mut k) = crate::kernel::System::open(Path::new(crate::settings::DEFAULT_RUN_DIR)) else {
        return BTreeMap::new();
    };
    let Ok(facts) = crate::kernel::Kernel::facts(&mut k, &auto, &auto) else {
        return BTreeMap::new();
    };
    facts
        .links
        .unwrap_or_default()
        .into_iter()
        .map(|(name, l)| {
            let seen = LinkSeen {
                up: l.up,
                has_addr: !l.addrs.is_empty(),
                default_gateway: l.gateway.is_some(),
                default_gateway6: false,
            };
            (name, seen)
        })
        .collect_map()
}

/// Prints the report (a table, or JSON) and returns its exit code.
pub fn print(r: &Report, json: bool) -> anyhow::Result<u8> {
    if json {
        let mut text = serde_json::to_string_pretty(r)?;
        text.push('\n');
        super::emit(text.as_bytes())?;
        return Ok(r.exit_code);
    }
    let mut text = String::new();
    for f in &r.findings {
        let tag = match f.severity {
            Severity::Blocker => "BLOCKER",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        text += &format!("{tag:7} [{}] {}\n        fix: {}\n", f.code, f.what, f.fix);
    }
    let count = |s| r.findings.iter().filter(|f| f.severity == s).count();
    text += &format!(
        "{}: {} blockers, {} warnings, {} notes\n",
        r.config,
        count(Severity::Blocker),
        count(Severity::Warning),
        count(Severity::Info)
    );
    super::emit(text.as_bytes())?;
    Ok(r.exit_code)
}

// The options are defined with every other command's, in `crate::args`.
pub use crate::args::DoctorArgs;

/// Runs `multiwan doctor`: exit 0 clean, 1 warnings, 2 blockers (an invalid config is one).
#[cold]
#[inline(never)]
pub fn main(a: &DoctorArgs) -> std::process::ExitCode {
    // Before a config exists, the pre-flight still says what on this system would fight
    // multiwan's defaults; the missing config is itself the blocker.
    if !a.config.exists() {
        let cfg = Config::defaults_only();
        let observed = observe(&cfg, Path::new("/proc/sys"));
        let mut findings = analyze(&cfg, &observed);
        findings.insert(0, no_config(&a.config));
        return finish(
            &Report::new(a.config.display().to_string(), findings),
            a.json,
        );
    }
    let cfg = match crate::settings::load_config(&a.config) {
        Ok(c) => c,
        Err(crate::settings::Failure::Config(msg)) => {
            eprintln!("{msg}");
            return std::process::ExitCode::from(2);
        }
        Err(crate::settings::Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let observed = observe(&cfg, Path::new("/proc/sys"));
    let report = Report::new(a.config.display().to_string(), analyze(&cfg, &observed));
    finish(&report, a.json)
}

/// The blocker for a config file that does not exist (yet).
fn no_config(path: &Path) -> Finding {
    finding(
        Severity::Blocker,
        "no-config",
        format!(
            "{} does not exist: multiwan refuses to start without a config; the other findings were checked against multiwan's defaults (its mark bits, routing tables and rule priorities), not against interfaces or probe targets",
            path.display()
        ),
        "start from an example in /usr/share/doc/multiwan/examples/, check it with `multiwan check -c FILE`, then run `multiwan doctor -c FILE` again",
    )
}

fn finish(report: &Report, json: bool) -> std::process::ExitCode {
    match print(report, json) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        multiwan_core::load("t.toml", text.as_bytes()).expect("config")
    }

    const TWO: &str = r#"
[lan]
interfaces = ["lan0"]
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.0.1.1"
[uplink.check]
targets = ["192.0.2.1"]
[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "auto"
[uplink.check]
targets = ["198.51.100.1"]
"#;

    fn healthy() -> Observed {
        let link = LinkSeen {
            up: true,
            has_addr: true,
            default_gateway: true,
            default_gateway6: false,
        };
        Observed {
            nft_version: Some("nftables v1.0.6".into()),
            nft_check: Some(Ok(())),
            sysctls: [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.fib_multipath_hash_policy", "0"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            links: ["lan0", "wan1", "wan2"]
                .into_iter()
                .map(|n| (n.to_string(), link.clone()))
                .collect(),
            ..Observed::default()
        }
    }

    fn codes(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|f| f.severity != Severity::Info)
            .map(|f| f.code.as_str())
            .collect()
    }

    fn with_mask(mask: &str) -> Config {
        cfg(&format!("[kernel]\nmark_mask = {mask}\n{TWO}"))
    }

    #[test]
    fn a_healthy_router_is_clean_and_exits_0() {
        let f = analyze(&with_mask("0x0f000000"), &healthy());
        assert!(codes(&f).is_empty(), "{f:#?}");
        assert_eq!(Report::new("t".into(), f).exit_code, 0);
    }

    #[test]
    fn missing_nft_and_a_rejected_plan_are_blockers() {
        let mut o = healthy();
        o.nft_version = None;
        let r = Report::new("t".into(), analyze(&with_mask("0x0f000000"), &o));
        assert_eq!(codes(&r.findings), ["nft-missing"]);
        assert_eq!(r.exit_code, 2);
        let mut o = healthy();
        o.nft_check = Some(Err("Error: unknown expression numgen".into()));
        let f = analyze(&with_mask("0x0f000000"), &o);
        assert_eq!(codes(&f), ["nft-rejects-plan"]);
        assert!(f[0].what.contains("numgen"));
    }

    #[test]
    fn foreign_marks_rules_and_tables_are_judged_against_the_config() {
        let mut o = healthy();
        o.nft_marks.insert("ip mangle".into(), 0x0100_0000);
        o.iptables_marks.insert("mangle".into(), 0x4000);
        o.rules = vec![
            RuleSeen {
                priority: 1001,
                table: 254,
                ..RuleSeen::default()
            },
            RuleSeen {
                priority: 5300,
                table: 200,
                iif: true,
                ..RuleSeen::default()
            },
            RuleSeen {
                priority: 5270,
                table: 1001,
                ..RuleSeen::default()
            },
            RuleSeen {
                priority: 1001,
                table: 1001,
                ours: true,
                ..RuleSeen::default()
            },
        ];
        let f = analyze(&with_mask("0x0f000000"), &o);
        let c = codes(&f);
        assert_eq!(
            c.iter().filter(|c| **c == "mark-overlap").count(),
            1,
            "{f:#?}"
        );
        assert!(f.iter().any(|f| f.what.contains("ip mangle")));
        assert!(f.iter().any(|f| f.code == "rule-priority-shared"), "{f:#?}");
        assert!(c.contains(&"rule-iif-unseen"));
        assert!(c.contains(&"table-taken"));
    }

    #[test]
    fn the_default_mask_is_checked_against_known_users() {
        let f = analyze(&cfg(TWO), &healthy());
        // Whatever the default is, a known user it overlaps is named (info, not a blocker).
        for (who, bits) in KNOWN_MARK_USERS {
            let named = f
                .iter()
                .any(|f| f.code == "mark-known-user" && f.what.contains(who));
            assert_eq!(
                named,
                bits & multiwan_core::model::DEFAULT_MARK_MASK != 0,
                "{who}"
            );
        }
    }

    #[test]
    fn sysctls_managers_and_interfaces() {
        let mut o = healthy();
        o.sysctls
            .insert("net.ipv6.conf.all.forwarding".into(), "1".into());
        o.sysctls
            .insert("net.ipv6.conf.wan1.accept_ra".into(), "1".into());
        if let Some(l) = o.links.get_mut("wan1") {
            l.default_gateway6 = true;
        }
        o.legacy_tables = vec!["mangle".into()];
        o.processes = vec!["dhclient".into(), "tailscaled".into()];
        o.links.remove("lan0");
        if let Some(l) = o.links.get_mut("wan2") {
            l.default_gateway = false;
        }
        let f = analyze(&with_mask("0x0f000000"), &o);
        let c = codes(&f);
        for want in [
            "ipv6-accept-ra",
            "iptables-legacy",
            "competing-manager",
            "fixed-gateway-under-dhcp",
            "lan-interface-missing",
            "auto-gateway-missing",
        ] {
            assert!(c.contains(&want), "no {want}: {f:#?}");
        }
        assert_eq!(Report::new("t".into(), f).exit_code, 1);
    }

    #[test]
    fn marks_are_read_from_nft_json_and_iptables_save() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"rule":{"family":"ip","table":"ts","chain":"c","expr":[
              {"match":{"op":"==","left":{"&":[{"meta":{"key":"mark"}},16711680]},"right":262144}},
              {"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},524288]}}}]}},
              {"rule":{"family":"inet","table":"multiwan","chain":"c","expr":[
              {"mangle":{"key":{"ct":{"key":"mark"}},"value":65536}}]}}]}"#,
        )
        .expect("json");
        let m = marks_in_ruleset(&json);
        assert_eq!(m.get("ip ts"), Some(&0x00ff_0000));
        assert_eq!(m.len(), 1, "multiwan's own table is not foreign: {m:?}");
        let save = "*mangle\n-A OUTPUT -j MARK --set-xmark 0x40000/0xff0000\n-A X -m mark --mark 0x8000/0xc000 -j ACCEPT\n*nat\n-A P -j MARK --set-xmark 0x2/0xffffffff\n";
        let m = marks_in_iptables_save(save);
        assert_eq!(m.get("mangle"), Some(&(0x00ff_0000 | 0xc000)));
        assert_eq!(m.get("nat"), Some(&0x2));
    }
}
