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

mod nftmarks;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use multiwan_core::order::Collect;
use multiwan_core::Config;
use serde::{Deserialize, Serialize};

pub use nftmarks::{marks_in_ruleset, MarkOp, MarkUse, Write};

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
    /// The input interface it selects by (`iif`), if any.
    pub iif: Option<String>,
    /// An `ip -6 rule`.
    pub v6: bool,
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
    /// A foreign IPv6 default route through it, of any origin: what `gateway6 = "auto"`
    /// follows.
    pub gateway6: bool,
    /// IPv4 and global IPv6 addresses, each with its prefix length.
    pub addrs: Vec<(IpAddr, u8)>,
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
    /// What other nftables tables do with the marks, statement by statement.
    pub nft_marks: Vec<MarkUse>,
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
    uplinks6(cfg, o, &mut out);
    for n in crate::settings::check_notes(cfg) {
        out.push(check_note(cfg, n));
    }
    multiwan_core::order::sort_by_key(&mut out, |f| std::cmp::Reverse(f.severity));
    out
}

/// A note of `multiwan check` as a finding, with the fix for its kind.
fn check_note(cfg: &Config, note: String) -> Finding {
    let shared = multiwan_core::correlate::Correlator::shared_by_all(cfg)
        .iter()
        .any(|k| {
            note.starts_with(&format!(
                "target {} ",
                multiwan_core::correlate::target_label(k)
            ))
        });
    let (code, fix) = if shared {
        ("probe-targets", "give each uplink a second target of its own, one the other uplinks do not probe (a different public resolver or host per uplink), in [uplink.check] targets")
    } else if note.contains("probes only its") {
        (
            "probe-targets",
            "add a host beyond the ISP (on the internet) to that uplink's [uplink.check] targets",
        )
    } else {
        (
            "config-note",
            "see `multiwan check -c FILE`; the note says what to change",
        )
    };
    finding(Severity::Warning, code, note, fix)
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

/// The fix for a `mark-overlap` of `who` using `bits`. Another mark_mask helps only where
/// `who` leaves some bits alone; a rule on all 32 bits has to keep to its own instead.
fn overlap_fix(who: &str, bits: u32, mask: u32) -> String {
    let keep = !mask;
    if bits != u32::MAX {
        return "set [kernel] mark_mask to bits nobody else uses (doctor lists the ones in use)"
            .into();
    }
    if who.starts_with("ip rule") {
        return format!(
            "no mark_mask is clear of a rule on all 32 bits: give the rule a mask that leaves multiwan's bits out (`fwmark VALUE/{keep:#010x}`), or, for a rule on one value (wg-quick's `not fwmark 0xca6c`), choose a mark_mask clear of that value's bits, as the default 0xff000000 is, and multiwan skips the packets it tells apart"
        );
    }
    format!(
        "no mark_mask is clear of a rule that sets or compares the whole mark: make it keep multiwan's bits {mask:#010x} — iptables `-j MARK --set-xmark VALUE/{keep:#010x}` (not `--set-mark VALUE`), `-j CONNMARK --set-xmark VALUE/{keep:#010x}`, `-m mark --mark VALUE/{keep:#010x}`; nft `meta mark set meta mark and {mask:#010x} or VALUE`"
    )
}

fn marks(cfg: &Config, o: &Observed, out: &mut Vec<Finding>) {
    let mask = cfg.kernel.mark_mask;
    let fragile = fragile_marks(o, mask);
    let mut reads: BTreeMap<String, u32> = BTreeMap::new();
    for u in &o.nft_marks {
        if let Some(v) = u.only_mark.filter(|v| skipped(&fragile, *v, mask)) {
            let touches = match u.op {
                MarkOp::Read { bits } => bits,
                MarkOp::Write(w) => w.touched(),
            };
            if touches & mask != 0 {
                handled_note(
                    &format!("nftables table {}, chain {}", u.table, u.chain),
                    v,
                    "acts only on packets whose whole mark is",
                    out,
                );
            }
            continue;
        }
        match u.op {
            MarkOp::Read { bits } => *reads.entry(u.table.clone()).or_default() |= bits,
            MarkOp::Write(w) => mark_write(u, &w, mask, out),
        }
    }
    let mut seen: Vec<(String, u32)> = reads
        .iter()
        .map(|(t, b)| (format!("nftables table {t}"), *b))
        .chain(
            o.iptables_marks
                .iter()
                .map(|(t, b)| (format!("iptables table {t}"), *b)),
        )
        .collect();
    for r in o.rules.iter().filter(|r| !r.ours) {
        let Some((v, m)) = r.fwmark.filter(|(_, m)| m & mask != 0) else {
            continue;
        };
        let who = format!("ip rule {}", r.priority);
        if skipped(&fragile, v & m, mask) {
            handled_note(
                &who,
                v & m,
                "compares the mark bits under mark_mask with",
                out,
            );
        } else {
            seen.push((who, v & m | m));
        }
    }
    for (who, bits) in seen.into_iter().filter(|(_, b)| b & mask != 0) {
        out.push(finding(
            Severity::Blocker,
            "mark-overlap",
            format!(
                "{who} uses mark bits {bits:#010x}, which overlap multiwan's mark_mask {mask:#010x}: each would rewrite or misread the other's marks"
            ),
            &overlap_fix(&who, bits, mask),
        ));
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

/// The marks the plan leaves alone (`Facts::fragile_marks`), from the foreign ip rules seen.
fn fragile_marks(o: &Observed, mask: u32) -> Vec<(u32, u32)> {
    let facts = multiwan_core::plan::Facts {
        foreign_marks: o
            .rules
            .iter()
            .filter(|r| !r.ours)
            .filter_map(|r| r.fwmark)
            .collect(),
        ..multiwan_core::plan::Facts::default()
    };
    facts.fragile_marks(mask)
}

/// Whether multiwan leaves packets carrying `value` alone: it has none of multiwan's bits
/// and one of the fragile marks matches it.
fn skipped(fragile: &[(u32, u32)], value: u32, mask: u32) -> bool {
    value & mask == 0 && fragile.iter().any(|(v, m)| value & m == *v)
}

/// The note for a foreign rule whose full-width mark comparison multiwan works around.
fn handled_note(who: &str, value: u32, does: &str, out: &mut Vec<Finding>) {
    out.push(finding(
        Severity::Info,
        "mark-rule-handled",
        format!(
            "{who} {does} {value:#x} (wg-quick's `not fwmark` rule does this): multiwan leaves packets carrying that mark alone instead of adding its bits, so that rule still sees them; they take the multipath route and still fail over"
        ),
        "nothing to do",
    ));
}

/// multiwan's hook chains run at this priority (`mangle`).
const MANGLE: i64 = -150;

/// What a foreign mark write does to multiwan, by where it runs.
enum Verdict {
    Breaks(&'static str),
    Harmless(&'static str),
}

fn write_verdict(u: &MarkUse, w: &Write, mask: u32) -> Verdict {
    use Verdict::{Breaks, Harmless};
    const BEFORE_SETS: &str = "the chain runs before multiwan's prerouting chain and sets bits under mark_mask; multiwan rewrites them only on connections it balances, so other packets are routed by multiwan's per-uplink rules";
    const BEFORE_CLEARS: &str = "the chain runs before multiwan's prerouting chain, which sets its own bits again afterwards (restore or balance): harmless where it is, but it would break multiwan in prerouting at priority mangle (-150) or later, or in output";
    const AFTER_ROUTING: &str = "the hook runs after the routing decision, and multiwan's SNAT reads only the connection mark: harmless";
    if w.ct {
        return Breaks("multiwan keeps each connection's uplink in the connection mark and reads it back on every later packet (and in its SNAT), so a write there at any hook or priority moves connections off their uplink: their packets leave by another uplink or the multipath route, with the wrong source address");
    }
    let Some((hook, prio)) = &u.hook else {
        return Breaks("no base chain reaches that chain now, so it is judged as if it ran in prerouting after multiwan: packets would be routed with the rewritten mark");
    };
    let family = u.table.split(' ').next().unwrap_or_default();
    let early = hook == "ingress" || (family == "bridge" && hook == "prerouting");
    let sets = w.set & mask != 0;
    match hook.as_str() {
        _ if early && sets => Breaks(BEFORE_SETS),
        _ if early => Harmless(BEFORE_CLEARS),
        _ if family == "bridge" || family == "netdev" => Harmless(AFTER_ROUTING),
        "prerouting" if (w.clear | w.set) & mask == 0 => Harmless("it copies the connection mark into the packet mark: the same bits multiwan's prerouting restores"),
        "prerouting" if *prio < MANGLE && sets => Breaks(BEFORE_SETS),
        "prerouting" if *prio < MANGLE => Harmless(BEFORE_CLEARS),
        "prerouting" => Breaks("the chain runs at or after multiwan's prerouting chain (priority mangle, -150; at the same priority the order is not fixed) and before the routing decision, so LAN packets are routed with the rewritten mark and leave by another uplink (or the multipath route) than their connection's"),
        "output" if *prio < MANGLE => Breaks("the chain runs before multiwan's output chain (priority mangle, -150): it rewrites the marks multiwan's health probes carry, so probes leave by the wrong uplink, and bits it sets under mark_mask make multiwan take the router's own packets as already routed"),
        "output" => Breaks("the chain runs at or after multiwan's output chain (priority mangle, -150): the router's own packets are re-routed with the rewritten mark"),
        _ => Harmless(AFTER_ROUTING),
    }
}

/// The finding for one foreign mark write that takes in bits of `mask`.
fn mark_write(u: &MarkUse, w: &Write, mask: u32, out: &mut Vec<Finding>) {
    if w.touched() & mask == 0 {
        return;
    }
    let (which, k) = if w.ct {
        ("connection mark", "ct")
    } else {
        ("packet mark", "meta")
    };
    let at = match &u.hook {
        Some((h, p)) => format!("{h} hook, priority {p}"),
        None => "no base chain reaches it".into(),
    };
    let does = match w.absolute {
        Some(v) => {
            format!("sets the {which} to {v:#x} (`{k} mark set {v:#x}`), clearing every other bit")
        }
        None => format!("changes {which} bits {:#010x}", w.touched()),
    };
    let (severity, code, why) = match write_verdict(u, w, mask) {
        Verdict::Breaks(why) => (Severity::Blocker, "mark-overlap", why),
        Verdict::Harmless(why) => (Severity::Info, "mark-write-harmless", why),
    };
    // Keep multiwan's bits, write the rest.
    let value = w
        .absolute
        .map_or("VALUE".to_string(), |v| format!("{:#x}", v & !mask));
    let rewrite = format!("`{k} mark set {k} mark and {mask:#010x} or {value}`");
    let fix = match severity {
        Severity::Info => {
            format!("nothing now; if you move that rule, make it write only its own bits: {rewrite}")
        }
        _ if w.touched() == u32::MAX => format!("no mark_mask is clear of a write to all 32 bits: change that rule to write only its own bits and keep multiwan's {mask:#010x}, {rewrite} (in general `{k} mark set {k} mark and ~MASK or VALUE`, MASK its own bits)"),
        _ => format!("set [kernel] mark_mask to contiguous bits that rule leaves alone (it changes {:#010x}), or change the rule to `{k} mark set {k} mark and ~MASK or VALUE` with MASK its own bits, clear of mark_mask {mask:#010x}", w.touched()),
    };
    let f = Finding {
        severity,
        code: code.into(),
        what: format!(
            "nftables table {}, chain {} ({at}) {does}, which takes in multiwan's mark_mask {mask:#010x}: {why}",
            u.table, u.chain
        ),
        fix,
    };
    if !out.contains(&f) {
        out.push(f);
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
        let Some(iif) = r.iif.as_deref() else {
            continue;
        };
        if r.priority > k.rule_priority && !special && !tables.contains(&r.table) {
            iif_unseen(cfg, o, r, iif, out);
        }
    }
}

/// The subnets of the addresses on `ifname` (IPv6 ones for `v6`), as written in a config.
fn subnets(o: &Observed, ifname: &str, v6: bool) -> Vec<multiwan_core::net::IpNet> {
    let addrs = o.links.get(ifname).map(|l| l.addrs.as_slice());
    addrs
        .unwrap_or_default()
        .iter()
        .filter(|(a, p)| a.is_ipv6() == v6 && *p <= if v6 { 128 } else { 32 })
        .filter_map(|(a, p)| multiwan_core::net::IpNet::holding(*a, *p))
        .collect()
}

/// Whether every one of `nets` is taken in first by a `mode = "bypass"` [[rule]] that
/// matches by source only: the first rule that can match traffic from it (any rule whose
/// sources take it in, whatever else it matches) must be that bypass.
fn bypassed(cfg: &Config, nets: &[multiwan_core::net::IpNet]) -> bool {
    use multiwan_core::net::IpNet;
    let by_source_only = |r: &multiwan_core::model::Rule| {
        r.dst.is_empty()
            && r.dst6.is_empty()
            && r.proto.is_none()
            && r.sport.is_empty()
            && r.dport.is_empty()
    };
    let covered = |n: &IpNet| {
        cfg.rules
            .iter()
            .find(|r| match n {
                IpNet::V4(n) => {
                    r.v4 && (r.src.is_empty()
                        || r.src
                            .iter()
                            .any(|s| s.prefix() <= n.prefix() && s.contains(n.addr())))
                }
                IpNet::V6(n) => {
                    r.v6 && (r.src6.is_empty()
                        || r.src6
                            .iter()
                            .any(|s| s.prefix() <= n.prefix() && s.contains(n.addr())))
                }
            })
            .is_some_and(|r| by_source_only(r) && r.mode == multiwan_core::model::Mode::Bypass)
    };
    !nets.is_empty() && nets.iter().all(covered)
}

/// `rule-iif-unseen` for one foreign rule selecting by input interface, unless a bypass
/// [[rule]] already takes that interface's subnets.
fn iif_unseen(cfg: &Config, o: &Observed, r: &RuleSeen, iif: &str, out: &mut Vec<Finding>) {
    // multiwan balances only what arrives on a LAN interface, and IPv6 only with an IPv6
    // uplink: another interface's (or family's) traffic never carries its marks.
    let v6_balanced = cfg.uplinks.iter().any(|u| u.ipv6.is_some());
    if !cfg.lan.interfaces.iter().any(|i| i == iif) || (r.v6 && !v6_balanced) {
        return;
    }
    if bypassed(cfg, &subnets(o, iif, r.v6)) {
        return;
    }
    // One rule for both families (`src` takes IPv4 and IPv6 prefixes), so the fix for the
    // `ip -6` rule is the same rule as the one for `ip -4`.
    let mut nets = subnets(o, iif, false);
    if v6_balanced {
        nets.extend(subnets(o, iif, true));
    }
    let name: String = format!("bypass_{iif}")
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .take(15)
        .collect();
    let list = if nets.is_empty() {
        format!("\"{iif}'s subnet\"")
    } else {
        nets.iter()
            .map(|n| match n {
                multiwan_core::net::IpNet::V4(n) => format!("\"{n}\""),
                multiwan_core::net::IpNet::V6(n) => format!("\"{n}\""),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push(finding(
        Severity::Warning,
        "rule-iif-unseen",
        format!(
            "ip rule {} (iif {iif}, table {}) selects by input interface after multiwan's marked rules: multiwan cannot see it when it decides which LAN connections leave by an uplink, and the ones it balances are routed by multiwan's rules at {} first",
            r.priority,
            r.table,
            cfg.kernel.rule_priority
        ),
        &format!("give that traffic a rule before any other that matches its sources: [[rule]] name = \"{name}\" src = [{list}] mode = \"bypass\"; or move the ip rule before [kernel] rule_priority"),
    ));
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
    if multiwan_core::plan::has_ipv6(cfg) && get("net.ipv6.conf.all.forwarding") != Some("1") {
        out.push(finding(
            Severity::Info,
            "ipv6-forward-off",
            "net.ipv6.conf.all.forwarding is 0: the router forwards no IPv6 until multiwan sets it (it does for a config with gateway6, and restores it on `down`)".into(),
            "nothing to do; set it in /etc/sysctl.d/ if other services need IPv6 forwarding without multiwan",
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

/// IPv6 on uplinks with `gateway6`: a learned default route for `"auto"`, a global address,
/// a fixed gateway on-link, and the RA settings multiwan does not change itself (it sets
/// `accept_ra = 2` on `"auto"` uplinks and turns forwarding on; `accept_ra_defrtr` and
/// `disable_ipv6` stay as they are).
fn uplinks6(cfg: &Config, o: &Observed, out: &mut Vec<Finding>) {
    let get = |k: String| o.sysctls.get(&k).map(String::as_str);
    for u in &cfg.uplinks {
        let (Some(v6), Some(l)) = (&u.ipv6, o.links.get(&u.interface)) else {
            continue;
        };
        let i = &u.interface;
        if get(format!("net.ipv6.conf.{i}.disable_ipv6")) == Some("1") {
            out.push(finding(
                Severity::Warning,
                "ipv6-disabled",
                format!("uplink {}: net.ipv6.conf.{i}.disable_ipv6 = 1, but it has gateway6: it carries no IPv6 at all", u.name),
                &format!("sysctl -w net.ipv6.conf.{i}.disable_ipv6=0 (and in /etc/sysctl.d/), or remove gateway6"),
            ));
            continue;
        }
        if !l.up {
            continue;
        }
        let own: Vec<(std::net::Ipv6Addr, u8)> = l
            .addrs
            .iter()
            .filter_map(|(a, p)| match a {
                IpAddr::V6(a) => Some((*a, *p)),
                IpAddr::V4(_) => None,
            })
            .collect();
        if own.is_empty() {
            out.push(finding(
                Severity::Warning,
                "interface-no-address6",
                format!("uplink {}: gateway6 is set, but {i} has no global IPv6 address: IPv6 connections cannot leave by it (no source address to NAT to or to use)", u.name),
                "give it one: SLAAC from the ISP's router advertisements, a DHCPv6 client (prefix delegation) or a static address; multiwan follows it",
            ));
        }
        match v6.gateway {
            None if !l.gateway6 => auto6_missing(u, get(format!("net.ipv6.conf.{i}.accept_ra_defrtr")), out),
            Some(g) if !own.is_empty() && !on_link6(g, &own) => out.push(finding(
                Severity::Warning,
                "gateway6-off-link",
                format!("uplink {}: gateway6 {g} is not on-link on {i}: no address there has a prefix containing it, so the kernel refuses a route via it", u.name),
                "use the ISP router's link-local address (fe80::…, `ip -6 neigh show dev IF` or the source of its router advertisements), an address inside the interface's prefix, or gateway6 = \"auto\"",
            )),
            _ => {}
        }
    }
}

/// Whether `g` is link-local or inside the prefix of one of `own` (the core's prefix
/// arithmetic, as the daemon's on-link test uses it).
fn on_link6(g: std::net::Ipv6Addr, own: &[(std::net::Ipv6Addr, u8)]) -> bool {
    g.is_unicast_link_local()
        || own.iter().any(|(a, p)| {
            multiwan_core::net::Ipv6Net::holding(*a, *p).is_some_and(|n| n.contains(g))
        })
}

/// `auto-gateway6-missing`, with what multiwan fixes itself (`accept_ra`) and what not.
fn auto6_missing(u: &multiwan_core::model::Uplink, defrtr: Option<&str>, out: &mut Vec<Finding>) {
    let i = &u.interface;
    if defrtr == Some("0") {
        out.push(finding(
            Severity::Warning,
            "auto-gateway6-missing",
            format!("uplink {}: gateway6 = \"auto\", but net.ipv6.conf.{i}.accept_ra_defrtr = 0: the kernel never installs the advertised default route, which multiwan follows (multiwan sets accept_ra = 2, not this)", u.name),
            &format!("sysctl -w net.ipv6.conf.{i}.accept_ra_defrtr=1 (and in /etc/sysctl.d/), or give the uplink a fixed gateway6"),
        ));
        return;
    }
    out.push(finding(
        Severity::Warning,
        "auto-gateway6-missing",
        format!("uplink {}: gateway6 = \"auto\", but no IPv6 default route via {i} exists yet (no router advertisement learned)", u.name),
        "check that the ISP's router sends advertisements on that link (`rdisc6 IF`); multiwan sets accept_ra = 2 on it when it starts (with forwarding on the kernel ignores them otherwise) and takes the uplink into use for IPv6 once the route appears",
    ));
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
    // The whole transaction, as apply loads it: the table alone clashes with an installed
    // one whose map elements differ ("File exists"), a false blocker on a running router.
    crate::kernel::nft::load(&p.nft_transaction(), true).map_err(|e| format!("{e:#}"))
}

fn nft_marks() -> Vec<MarkUse> {
    let Ok(out) = crate::kernel::exec::run("nft", &["-j", "list", "ruleset"], b"", TOOL_DEADLINE)
    else {
        return Vec::new();
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
                // `--set-xmark V/M` clears M and sets V, `--mark V/M` compares M: with
                // M = 0xffffffff (`--set-mark V`, `--mark V`) that is every bit.
                let bits = w[1]
                    .split('/')
                    .filter_map(|n| u32::from_str_radix(n.trim_start_matches("0x"), 16).ok())
                    .fold(0, |a, b| a | b);
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
    for u in &cfg.uplinks {
        for k in ["accept_ra", "accept_ra_defrtr", "disable_ipv6"] {
            keys.push(format!("net.ipv6.conf.{}.{k}", u.interface));
        }
    }
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
                v6: crate::kernel::netlink::family_of(m.header.family)
                    == Some(multiwan_core::net::Family::V6),
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
                    RuleAttribute::Iifname(n) => r.iif = Some(n.clone()),
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
/// (routing protocol `ra`, 9), and gives every interface its addresses with their prefixes.
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
    for family in multiwan_core::net::Family::ALL {
        for (index, ip, prefix) in rtnl.addrs_with_prefix(family).unwrap_or_default() {
            if let Some(l) = names.get(&index).and_then(|n| links.get_mut(n)) {
                l.addrs.push((ip, prefix));
            }
        }
    }
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
                gateway6: l.gateway6.is_some(),
                addrs: Vec::new(),
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
        Err(e) => {
            let msg = match e {
                crate::settings::Failure::Config(msg) => msg,
                crate::settings::Failure::Runtime(e) => format!("error: {e:#}"),
            };
            if !a.json {
                eprintln!("{msg}");
                return std::process::ExitCode::from(2);
            }
            let report = Report::new(a.config.display().to_string(), vec![config_invalid(msg)]);
            return finish(&report, true);
        }
    };
    let observed = observe(&cfg, Path::new("/proc/sys"));
    let report = Report::new(a.config.display().to_string(), analyze(&cfg, &observed));
    finish(&report, a.json)
}

/// The blocker for a config file that does not load: `msg` is every error, one per line
/// (`file:line:col: key: problem`).
fn config_invalid(msg: String) -> Finding {
    finding(
        Severity::Blocker,
        "config-invalid",
        msg,
        "fix each error at its file:line:col (`multiwan check -c FILE` lists the same), then run `multiwan doctor -c FILE` again; nothing else was checked",
    )
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
            gateway6: false,
            addrs: Vec::new(),
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
        o.nft_marks.push(MarkUse {
            table: "ip mangle".into(),
            chain: "c".into(),
            hook: None,
            only_mark: None,
            op: MarkOp::Read { bits: 0x0100_0000 },
        });
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
                iif: Some("lan0".into()),
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
        assert_eq!(m.len(), 2, "multiwan's own table is not foreign: {m:?}");
        assert!(m.iter().all(|u| u.table == "ip ts"));
        assert_eq!(m[0].op, MarkOp::Read { bits: 0x00ff_0000 });
        assert!(matches!(m[1].op, MarkOp::Write(w) if w.touched() == 0x80000));
        let save = "*mangle\n-A OUTPUT -j MARK --set-xmark 0x40000/0xff0000\n-A X -m mark --mark 0x8000/0xc000 -j ACCEPT\n*nat\n-A P -j MARK --set-xmark 0x2/0xffffffff\n";
        let m = marks_in_iptables_save(save);
        assert_eq!(m.get("mangle"), Some(&(0x00ff_0000 | 0xc000)));
        // `--set-mark 0x2` (as iptables-save prints it) clears every other bit.
        assert_eq!(m.get("nat"), Some(&u32::MAX));
    }

    fn write_at(table: &str, hook: Option<(&str, i64)>, ct: bool, value: &str) -> MarkUse {
        let json: serde_json::Value = serde_json::from_str(&format!(
            r#"{{"nftables":[{{"rule":{{"family":"inet","table":"t","chain":"c","expr":[
              {{"mangle":{{"key":{{"{}":{{"key":"mark"}}}},"value":{value}}}}}]}}}}]}}"#,
            if ct { "ct" } else { "meta" }
        ))
        .expect("json");
        let mut u = marks_in_ruleset(&json).remove(0);
        u.table = table.into();
        u.hook = hook.map(|(h, p)| (h.to_string(), p));
        u
    }

    fn verdicts(mask: &str, uses: Vec<MarkUse>) -> Vec<(Severity, String)> {
        let mut o = healthy();
        o.nft_marks = uses;
        analyze(&with_mask(mask), &o)
            .into_iter()
            .filter(|f| f.code.starts_with("mark-") && f.code != "mark-known-user")
            .map(|f| (f.severity, f.code))
            .collect()
    }

    #[test]
    fn absolute_mark_writes_are_judged_by_where_they_run() {
        let pre = |p| Some(("prerouting", p));
        let blocker = vec![(Severity::Blocker, "mark-overlap".to_string())];
        let harmless = vec![(Severity::Info, "mark-write-harmless".to_string())];
        // ct mark set 0x20 at any hook and priority: the connection's uplink is lost.
        for hook in [pre(-155), pre(0), Some(("postrouting", 100)), None] {
            let u = write_at("inet fw", hook, true, "32");
            assert_eq!(verdicts("0xff000000", vec![u]), blocker, "{hook:?}");
        }
        // meta mark set 0x10 after multiwan's prerouting (or at its priority), or in output.
        for hook in [
            pre(-150),
            pre(-145),
            Some(("output", -200)),
            Some(("output", 0)),
        ] {
            let u = write_at("inet fw", hook, false, "16");
            assert_eq!(verdicts("0xff000000", vec![u]), blocker, "{hook:?}");
        }
        // Before multiwan's prerouting it only clears bits multiwan sets again; after the
        // routing decision it changes nothing multiwan reads.
        for hook in [pre(-155), Some(("forward", 0)), Some(("postrouting", 0))] {
            let u = write_at("inet fw", hook, false, "16");
            assert_eq!(verdicts("0xff000000", vec![u]), harmless, "{hook:?}");
        }
        // Setting bits under the mask before multiwan is not harmless.
        let u = write_at("inet fw", pre(-155), false, "16777216");
        assert_eq!(verdicts("0xff000000", vec![u]), blocker);
        // Writes that keep multiwan's bits are no finding at all.
        let keep = r#"{"|":[{"&":[{"ct":{"key":"mark"}},4278255615]},32]}"#;
        let u = write_at("inet fw", pre(-145), true, keep);
        assert!(verdicts("0xff000000", vec![u]).is_empty());
        // The finding says what breaks and how to rewrite the rule.
        let mut o = healthy();
        o.nft_marks = vec![write_at("inet fw", pre(-155), true, "32")];
        let f = analyze(&with_mask("0xff000000"), &o);
        let f = f
            .iter()
            .find(|f| f.code == "mark-overlap")
            .expect("finding");
        assert!(
            f.what.contains("inet fw") && f.what.contains("connection mark to 0x20"),
            "{f:?}"
        );
        assert!(
            f.fix.contains("ct mark set ct mark and 0xff000000 or 0x20"),
            "{f:?}"
        );
    }

    fn wg_rule() -> RuleSeen {
        RuleSeen {
            priority: 32760,
            fwmark: Some((0xca6c, u32::MAX)),
            table: 51820,
            ..RuleSeen::default()
        }
    }

    #[test]
    fn wg_quicks_full_mask_rule_is_handled_not_a_blocker() {
        let mut o = healthy();
        o.rules = vec![wg_rule()];
        for mask in ["0xff000000", "0x0f000000"] {
            let f = analyze(&with_mask(mask), &o);
            assert!(
                !f.iter().any(|f| f.severity == Severity::Blocker),
                "{mask}: {f:#?}"
            );
            let note = f
                .iter()
                .find(|f| f.code == "mark-rule-handled")
                .expect("note");
            assert_eq!(note.severity, Severity::Info);
            assert!(note.what.contains("ip rule 32760") && note.what.contains("0xca6c"));
        }
        // wg-quick's nft table acts only on packets with that whole mark: handled as well.
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"chain":{"family":"ip","table":"wgq","name":"post","hook":"postrouting","prio":-150}},
              {"rule":{"family":"ip","table":"wgq","chain":"post","expr":[
              {"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":51820}},
              {"mangle":{"key":{"ct":{"key":"mark"}},"value":{"meta":{"key":"mark"}}}}]}}]}"#,
        )
        .expect("json");
        o.nft_marks = marks_in_ruleset(&json);
        let f = analyze(&with_mask("0xff000000"), &o);
        assert!(!f.iter().any(|f| f.severity == Severity::Blocker), "{f:#?}");
        // A mask that takes in one of 0xca6c's bits does collide (wg's packets carry it).
        let f = analyze(&with_mask("0x00000700"), &o);
        assert!(
            f.iter()
                .any(|f| f.code == "mark-overlap" && f.what.contains("ip rule 32760")),
            "{f:#?}"
        );
    }

    #[test]
    fn a_whole_mark_overlap_is_fixed_in_the_other_rule_not_by_a_mask() {
        let mask = 0xff00_0000;
        let ipt = overlap_fix("iptables table mangle", u32::MAX, mask);
        assert!(ipt.contains("--set-xmark VALUE/0x00ffffff"), "{ipt}");
        let rule = overlap_fix("ip rule 32760", u32::MAX, mask);
        assert!(
            rule.contains("fwmark VALUE/0x00ffffff") && rule.contains("clear of that value"),
            "{rule}"
        );
        let part = overlap_fix("iptables table mangle", 0x0f00_0000, mask);
        assert!(part.starts_with("set [kernel] mark_mask"), "{part}");
    }

    #[test]
    fn an_iif_rule_is_quiet_once_its_subnet_is_bypassed() {
        let mut o = healthy();
        o.rules = vec![RuleSeen {
            priority: 1500,
            table: 300,
            iif: Some("lan0".into()),
            ..RuleSeen::default()
        }];
        if let Some(l) = o.links.get_mut("lan0") {
            l.addrs = vec![("192.168.157.1".parse().expect("ip"), 24)];
        }
        let f = analyze(&with_mask("0x0f000000"), &o);
        let w = f
            .iter()
            .find(|f| f.code == "rule-iif-unseen")
            .expect("warning");
        let want = r#"name = "bypass_lan0" src = ["192.168.157.0/24"] mode = "bypass""#;
        assert!(w.fix.contains(want), "{w:?}");
        let rule =
            "[[rule]]\nname = \"bypass_lan0\"\nsrc = [\"192.168.157.0/24\"]\nmode = \"bypass\"\n";
        let c = cfg(&format!("[kernel]\nmark_mask = 0x0f000000\n{TWO}{rule}"));
        assert!(codes(&analyze(&c, &o)).is_empty(), "{:#?}", analyze(&c, &o));
        // A bypass rule for another subnet, or one that only bypasses some ports, is not it.
        let other = rule.replace("192.168.157.0/24", "192.168.158.0/24");
        let c = cfg(&format!("[kernel]\nmark_mask = 0x0f000000\n{TWO}{other}"));
        assert!(codes(&analyze(&c, &o)).contains(&"rule-iif-unseen"));
        // A rule before it that catches some of that traffic (tcp/80) balances it first.
        let web =
            "[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndport = [\"80\"]\nuplinks = [\"isp1\"]\n";
        let c = cfg(&format!(
            "[kernel]\nmark_mask = 0x0f000000\n{TWO}{web}{rule}"
        ));
        assert!(codes(&analyze(&c, &o)).contains(&"rule-iif-unseen"));
        // An interface that is not the LAN's carries nothing multiwan marks.
        o.rules[0].iif = Some("guest0".into());
        assert!(!codes(&analyze(&with_mask("0x0f000000"), &o)).contains(&"rule-iif-unseen"));
    }

    const SIX: &str = r#"
[lan]
interfaces = ["lan0"]
[[uplink]]
name = "isp1"
interface = "wan1"
gateway = "10.0.1.1"
gateway6 = "auto"
[uplink.check]
targets = ["192.0.2.1", "2001:db8:ffff::1"]
[[uplink]]
name = "isp2"
interface = "wan2"
gateway = "10.0.2.1"
gateway6 = "2001:db8:9::1"
[uplink.check]
targets = ["198.51.100.1", "2001:db8:fffe::1"]
"#;

    #[test]
    fn ipv6_uplinks_are_checked_like_ipv4_ones() {
        let c = cfg(&format!("[kernel]\nmark_mask = 0x0f000000\n{SIX}"));
        let mut o = healthy();
        let f = analyze(&c, &o);
        let c6 = codes(&f);
        assert!(c6.contains(&"auto-gateway6-missing"), "{f:#?}");
        assert_eq!(
            c6.iter().filter(|c| **c == "interface-no-address6").count(),
            2,
            "{f:#?}"
        );
        assert!(f.iter().any(|f| f.code == "ipv6-forward-off"), "{f:#?}");
        // With a learned route and addresses, only the off-link fixed gateway is left.
        o.sysctls
            .insert("net.ipv6.conf.all.forwarding".into(), "1".into());
        for (i, a) in [("wan1", "2001:db8:1::2"), ("wan2", "2001:db8:2::2")] {
            if let Some(l) = o.links.get_mut(i) {
                l.gateway6 = true;
                l.addrs = vec![(a.parse().expect("ip"), 64)];
            }
        }
        let f = analyze(&c, &o);
        assert_eq!(codes(&f), ["gateway6-off-link"], "{f:#?}");
        assert!(!f.iter().any(|f| f.code == "ipv6-forward-off"));
        // On-link (inside the prefix, or link-local) is fine.
        for gw in ["2001:db8:2::1", "fe80::1"] {
            let c = cfg(&format!(
                "[kernel]\nmark_mask = 0x0f000000\n{}",
                SIX.replace("2001:db8:9::1", gw)
            ));
            assert!(codes(&analyze(&c, &o)).is_empty(), "{gw}");
        }
        // accept_ra_defrtr = 0 is what multiwan does not change for an "auto" uplink.
        o.sysctls
            .insert("net.ipv6.conf.wan1.accept_ra_defrtr".into(), "0".into());
        if let Some(l) = o.links.get_mut("wan1") {
            l.gateway6 = false;
        }
        let f = analyze(&c, &o);
        let w = f
            .iter()
            .find(|f| f.code == "auto-gateway6-missing")
            .expect("warning");
        assert!(w.what.contains("accept_ra_defrtr = 0"), "{w:?}");
    }

    #[test]
    fn a_target_every_uplink_shares_asks_for_a_second_target() {
        let shared = TWO.replace("198.51.100.1", "192.0.2.1");
        let f = analyze(
            &cfg(&format!("[kernel]\nmark_mask = 0x0f000000\n{shared}")),
            &healthy(),
        );
        let p = f.iter().find(|f| f.code == "probe-targets").expect("note");
        assert!(p.fix.contains("second target"), "{p:?}");
        assert!(!p.fix.contains("beyond the ISP"), "{p:?}");
    }
}
