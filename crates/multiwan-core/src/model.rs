//! The validated domain model. [`load`] turns config text into a [`Config`] or into *all*
//! the problems found, each with `file:line:col`, the key path and what would be valid.
//!
//! **Invariant:** a `Config` value is always valid: names are unique, references resolve,
//! marks/tables/priorities fit in the space multiwan owns. The planner relies on it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::config::{self, NumOrStr, RawCheck, SpannedList};
use crate::duration;
use crate::net::{Ipv4Net, PortRange};

/// Longest uplink and rule name (nft chain names and env vars stay short and readable).
pub const MAX_NAME_LEN: usize = 15;
/// Largest uplink weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Largest tier number.
pub const MAX_TIER: u32 = 255;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub lan: Lan,
    pub uplinks: Vec<Uplink>,
    pub balance: Balance,
    pub rules: Vec<Rule>,
    pub kernel: KernelOpts,
}

/// `[daemon]`: settings of `multiwan run`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Daemon {
    /// Executable run on every uplink transition.
    pub hook: Option<String>,
    /// Where to serve Prometheus metrics (off when `None`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Group whose members may use the read-only control requests (status, flows, explain,
    /// watch); `None`: root only.
    pub control_group: Option<String>,
}

/// The LAN side: new connections entering on these interfaces are balanced.
#[derive(Debug, Clone, PartialEq)]
pub struct Lan {
    pub interfaces: Vec<String>,
}

/// One internet uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    pub name: String,
    pub interface: String,
    /// A fixed gateway; `None` for point-to-point links or `gateway = "auto"`.
    pub gateway: Option<Ipv4Addr>,
    /// `gateway = "auto"`: use the gateway of the default route that the interface's DHCP
    /// client (or anything else) installed, and follow it when it changes.
    pub gateway_auto: bool,
    pub weight: u32,
    pub tier: u32,
    pub snat: Snat,
    pub check: Check,
}

/// Source NAT for connections leaving over an uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snat {
    /// The interface's current address (`masquerade`), following address changes.
    Auto,
    /// No address translation (routed public addresses on the LAN).
    None,
    /// A fixed address.
    To(Ipv4Addr),
}

/// How an uplink's health is checked (used by the daemon).
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub method: CheckMethod,
    pub targets: Vec<SocketAddrV4>,
    pub interval: Duration,
    pub timeout: Duration,
    pub down_after: u32,
    pub up_after: u32,
    pub min_targets: u32,
    /// Optional quality limits that mark the uplink degraded.
    pub quality: Option<Quality>,
}

/// Quality limits over a sliding window of probe rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Degrade above this loss, in percent.
    pub max_loss: Option<f64>,
    /// Degrade above this average RTT.
    pub max_rtt: Option<Duration>,
    /// Recover at or below this loss (default: half of `max_loss`).
    pub recover_loss: f64,
    /// Recover at or below this average RTT (default: `max_rtt`).
    pub recover_rtt: Option<Duration>,
    /// Rounds in the window.
    pub window: usize,
}

/// Probe method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckMethod {
    Icmp,
    Tcp,
    Dns,
}

/// `[balance]`
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    pub method: Method,
    pub local: bool,
    pub when_all_down: WhenAllDown,
    pub on_uplink_down: OnUplinkDown,
}

/// What happens to the connections of an uplink that goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUplinkDown {
    /// Delete only that uplink's conntrack entries, so its clients reconnect at once.
    Flush,
    /// Leave them (they resume if the uplink comes back before they time out).
    Keep,
}

/// How new connections are spread over the candidate uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Exact weighted rotation.
    RoundRobin,
    /// Weighted random choice.
    Random,
    /// Every connection of one source address on the same uplink.
    SrcHash,
    /// Every connection of one source/destination pair on the same uplink.
    SrcDstHash,
}

impl Method {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::RoundRobin => "round-robin",
            Method::Random => "random",
            Method::SrcHash => "src-hash",
            Method::SrcDstHash => "src-dst-hash",
        }
    }
}

/// What new connections get when no candidate uplink is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAllDown {
    /// Refuse with ICMP network unreachable (fast failure for clients).
    Unreachable,
    /// Drop silently.
    Blackhole,
    /// Use the main routing table.
    Main,
}

/// A traffic rule; the first matching rule decides a new connection's candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub src: Vec<Ipv4Net>,
    pub dst: Vec<Ipv4Net>,
    pub proto: Option<Proto>,
    pub sport: Vec<PortRange>,
    pub dport: Vec<PortRange>,
    /// Indexes into [`Config::uplinks`], in the order written.
    pub uplinks: Vec<usize>,
    pub mode: Mode,
}

/// Transport protocol selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    /// The nft / config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// What a rule does with its uplinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spread by weight among the rule's usable uplinks (lowest tier first).
    Balance,
    /// The first usable uplink in list order.
    Failover,
    /// No balancing: the main routing table decides.
    Bypass,
}

/// The kernel resources multiwan owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOpts {
    /// Bits of the packet/connection mark that belong to multiwan (contiguous).
    pub mark_mask: u32,
    /// Routing table of the multipath default route; uplink N uses `table_base + N`.
    pub table_base: u32,
    /// First `ip rule` priority; multiwan uses `rule_priority ..= rule_priority + 4`.
    pub rule_priority: u32,
}

/// Default mark mask: bits 16..24, clear of the bits kube-proxy, Docker and wg-quick use.
pub const DEFAULT_MARK_MASK: u32 = 0x00ff_0000;
/// Default routing table base.
pub const DEFAULT_TABLE_BASE: u32 = 1000;
/// Default first rule priority.
pub const DEFAULT_RULE_PRIORITY: u32 = 1000;
/// Number of consecutive rule priorities multiwan uses.
pub const RULE_PRIORITY_SPAN: u32 = 5;

impl Default for KernelOpts {
    fn default() -> Self {
        Self {
            mark_mask: DEFAULT_MARK_MASK,
            table_base: DEFAULT_TABLE_BASE,
            rule_priority: DEFAULT_RULE_PRIORITY,
        }
    }
}

impl KernelOpts {
    /// Shift of the lowest bit of the mask.
    pub fn mark_shift(&self) -> u32 {
        self.mark_mask.trailing_zeros()
    }

    /// Largest value representable under the mask (all ones).
    pub fn mark_max(&self) -> u32 {
        self.mark_mask >> self.mark_shift()
    }

    /// The number of uplink ids available: all-ones and all-ones-minus-one are reserved
    /// for "no uplink" and "main table".
    pub fn id_capacity(&self) -> u32 {
        self.mark_max().saturating_sub(2)
    }

    /// The mark of uplink id `id`.
    pub fn mark_of(&self, id: u32) -> u32 {
        id << self.mark_shift()
    }

    /// The mark meaning "use the main table" (rule mode bypass, when_all_down = main).
    pub fn mark_main(&self) -> u32 {
        (self.mark_max() - 1) << self.mark_shift()
    }

    /// The mark meaning "no usable uplink".
    pub fn mark_none(&self) -> u32 {
        self.mark_max() << self.mark_shift()
    }

    /// The routing table of uplink id `id`.
    pub fn table_of(&self, id: u32) -> u32 {
        self.table_base + id
    }
}

/// Default check settings, chosen to detect a dead upstream in under a second.
pub mod check_defaults {
    use std::time::Duration;
    // A dead upstream is detected within down_after × interval + timeout (≈ 0.8 s), and with
    // one target at 10 % random loss six lost rounds in a row happen about once a day. A
    // timeout that is a multiple of the interval lets the prober close rounds on the same
    // wake-ups that send them.
    pub const INTERVAL: Duration = Duration::from_millis(100);
    pub const TIMEOUT: Duration = Duration::from_millis(200);
    pub const DOWN_AFTER: u32 = 6;
    pub const UP_AFTER: u32 = 10;
    pub const WINDOW: Duration = Duration::from_secs(10);
    pub const MIN_TARGETS: u32 = 1;
    pub const DNS_PORT: u16 = 53;
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    /// Key path such as `uplink[1].gateway`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.col, self.key, self.message
            )
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Parses and validates config text. `file` is only used in diagnostics.
pub fn load(file: &str, text: &str) -> Result<Config, ConfigError> {
    let mut v = Validator {
        file,
        text,
        diags: Vec::new(),
    };
    let raw = match config::parse(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            // toml names the offending key in its message and the span points at it.
            v.push(span, "", e.message().trim().to_string());
            return Err(v.finish());
        }
    };
    let cfg = v.config(raw);
    if v.diags.is_empty() {
        match cfg {
            Some(cfg) => Ok(cfg),
            None => {
                // Unreachable by construction: every `None` path pushes a diagnostic. Kept as a
                // guard so a bug shows up as an error rather than a panic.
                v.push(0..0, "", "invalid configuration".to_string());
                Err(v.finish())
            }
        }
    } else {
        Err(v.finish())
    }
}

struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    diags: Vec<Diagnostic>,
}

fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'"' && b != b'\\')
}

impl<'a> Validator<'a> {
    fn finish(self) -> ConfigError {
        ConfigError {
            diagnostics: self.diags,
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    fn push(&mut self, span: Range<usize>, key: &str, message: String) {
        let (line, col) = self.line_col(span.start);
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            key: key.to_string(),
            message,
        });
    }

    fn config(&mut self, raw: config::RawConfig) -> Option<Config> {
        let daemon = self.daemon(raw.daemon.as_ref());
        let lan = self.lan(raw.lan);
        let kernel = self.kernel(raw.kernel.as_ref(), raw.uplink.len());
        let uplinks = self.uplinks(&raw.uplink);
        let balance = self.balance(raw.balance.as_ref());
        let rules = self.rules(&raw.rule, uplinks.as_deref());
        Some(Config {
            daemon: daemon?,
            lan: lan?,
            uplinks: uplinks?,
            balance: balance?,
            rules: rules?,
            kernel: kernel?,
        })
    }

    fn daemon(&mut self, raw: Option<&Spanned<config::RawDaemon>>) -> Option<Daemon> {
        let Some(raw) = raw else {
            return Some(Daemon::default());
        };
        let hook = match &raw.get_ref().hook {
            None => None,
            Some(h) if !h.get_ref().starts_with('/') => {
                self.push(
                    h.span(),
                    "daemon.hook",
                    format!(
                        "{:?} must be an absolute path to an executable",
                        h.get_ref()
                    ),
                );
                return None;
            }
            Some(h) => Some(h.get_ref().clone()),
        };
        let metrics = match &raw.get_ref().metrics {
            None => None,
            Some(m) => {
                let text = m.get_ref().to_text();
                // A bare port means localhost: metrics are not exposed to the network unless
                // an address says so.
                let parsed = text.parse::<std::net::SocketAddr>().ok().or_else(|| {
                    text.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
                });
                match parsed {
                    Some(a) => Some(a),
                    None => {
                        self.push(
                            m.span(),
                            "daemon.metrics",
                            format!("invalid listen address {text:?}: expected \"127.0.0.1:9797\" or a port"),
                        );
                        return None;
                    }
                }
            }
        };
        let control_group = match &raw.get_ref().control_group {
            None => None,
            Some(g) if g.get_ref().is_empty() => {
                self.push(
                    g.span(),
                    "daemon.control_group",
                    "must name a group (or be left out: root only)".to_string(),
                );
                return None;
            }
            Some(g) => Some(g.get_ref().clone()),
        };
        Some(Daemon {
            hook,
            metrics,
            control_group,
        })
    }

    fn lan(&mut self, raw: Option<Spanned<config::RawLan>>) -> Option<Lan> {
        let Some(raw) = raw else {
            self.push(
                0..0,
                "lan",
                "missing [lan] section: add `[lan]` with `interfaces = [\"eth0\"]`".into(),
            );
            return None;
        };
        let span = raw.span();
        let Some(list) = raw.into_inner().interfaces else {
            self.push(
                span,
                "lan.interfaces",
                "missing key: the LAN interfaces whose new connections are balanced, e.g. [\"eth0\"]".into(),
            );
            return None;
        };
        if list.get_ref().is_empty() {
            self.push(
                list.span(),
                "lan.interfaces",
                "must name at least one interface".into(),
            );
            return None;
        }
        let mut ok = true;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, s) in list.get_ref().iter().enumerate() {
            let key = format!("lan.interfaces[{i}]");
            if !is_valid_ifname(s.get_ref()) {
                self.push(
                    s.span(),
                    &key,
                    format!(
                        "invalid interface name {:?} (1..=15 printable characters, no '/')",
                        s.get_ref()
                    ),
                );
                ok = false;
            } else if !seen.insert(s.get_ref().clone()) {
                self.push(s.span(), &key, format!("{:?} is listed twice", s.get_ref()));
                ok = false;
            } else {
                out.push(s.get_ref().clone());
            }
        }
        ok.then_some(Lan { interfaces: out })
    }

    fn int_in(
        &mut self,
        v: Option<&Spanned<i64>>,
        key: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<u32> {
        let Some(v) = v else { return Some(default) };
        let n = *v.get_ref();
        if n < i64::from(*range.start()) || n > i64::from(*range.end()) {
            self.push(
                v.span(),
                key,
                format!(
                    "{n} is out of range (expected {}..={})",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        u32::try_from(n).ok()
    }

    fn kernel(
        &mut self,
        raw: Option<&Spanned<config::RawKernel>>,
        uplink_count: usize,
    ) -> Option<KernelOpts> {
        let mut k = KernelOpts::default();
        let Some(raw) = raw else { return Some(k) };
        let raw = raw.get_ref();
        let mut ok = true;
        if let Some(m) = &raw.mark_mask {
            let parsed = match m.get_ref() {
                NumOrStr::Num(n) => u32::try_from(*n).ok(),
                NumOrStr::Str(s) => {
                    let s = s.trim();
                    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => s.parse().ok(),
                    }
                }
            };
            match parsed {
                None => {
                    self.push(
                        m.span(),
                        "kernel.mark_mask",
                        format!(
                            "invalid mask {:?}: expected a 32-bit number such as \"0x00ff0000\"",
                            m.get_ref().to_text()
                        ),
                    );
                    ok = false;
                }
                Some(mask) => {
                    let contiguous = mask != 0 && {
                        let shifted = mask >> mask.trailing_zeros();
                        shifted & (shifted.wrapping_add(1)) == 0
                    };
                    let probe = KernelOpts {
                        mark_mask: mask,
                        ..k
                    };
                    if !contiguous {
                        self.push(
                            m.span(),
                            "kernel.mark_mask",
                            format!("mask {mask:#010x} must be one run of contiguous set bits, e.g. 0x00ff0000"),
                        );
                        ok = false;
                    } else if (probe.id_capacity() as usize) < uplink_count.max(1) {
                        self.push(
                            m.span(),
                            "kernel.mark_mask",
                            format!(
                                "mask {mask:#010x} leaves room for {} uplinks but {uplink_count} are configured; use more bits",
                                probe.id_capacity()
                            ),
                        );
                        ok = false;
                    } else {
                        k.mark_mask = mask;
                    }
                }
            }
        }
        if let Some(t) = &raw.table_base {
            match self.int_in(Some(t), "kernel.table_base", 0, 1..=0x7fff_0000) {
                Some(base) => {
                    let top = base + k.id_capacity();
                    if (base..=top).any(|t| (253..=255).contains(&t)) {
                        self.push(
                            t.span(),
                            "kernel.table_base",
                            format!(
                                "tables {base}..={top} would include the kernel's reserved tables 253..=255 (default, main, local); choose a base above 255 or a smaller mark_mask"
                            ),
                        );
                        ok = false;
                    } else {
                        k.table_base = base;
                    }
                }
                None => ok = false,
            }
        }
        if let Some(p) = &raw.rule_priority {
            match self.int_in(
                Some(p),
                "kernel.rule_priority",
                0,
                1..=32765 - RULE_PRIORITY_SPAN,
            ) {
                Some(p) => k.rule_priority = p,
                None => ok = false,
            }
        }
        ok.then_some(k)
    }

    fn uplinks(&mut self, raw: &[Spanned<config::RawUplink>]) -> Option<Vec<Uplink>> {
        if raw.is_empty() {
            self.push(
                0..0,
                "uplink",
                "no [[uplink]] configured: add at least one".into(),
            );
            return None;
        }
        let mut ok = true;
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for (i, u) in raw.iter().enumerate() {
            match self.uplink(i, u, &mut names) {
                Some(up) => out.push(up),
                None => ok = false,
            }
        }
        // Two uplinks may share an interface only when they are told apart by gateway
        // (seed 004 §4.2.5: two routers on one Ethernet segment).
        for (j, b) in out.iter().enumerate() {
            let clash = out[..j].iter().find(|a| {
                a.interface == b.interface
                    && (a.gateway.is_none() || b.gateway.is_none() || a.gateway == b.gateway)
            });
            if let Some(a) = clash {
                let span = raw
                    .iter()
                    .position(|r| r.get_ref().name.as_ref().map(|n| n.get_ref()) == Some(&b.name))
                    .map(|k| (k, &raw[k]))
                    .and_then(|(k, r)| Some((k, r.get_ref().interface.as_ref()?.span())));
                let (k, span) = span.unwrap_or((j, 0..0));
                self.push(
                    span,
                    &format!("uplink[{k}].interface"),
                    format!(
                        "uplinks {:?} and {:?} both use {:?}; two uplinks can share an interface only with different gateways",
                        a.name, b.name, a.interface
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(out)
    }

    fn uplink(
        &mut self,
        i: usize,
        u: &Spanned<config::RawUplink>,
        names: &mut BTreeSet<String>,
    ) -> Option<Uplink> {
        let span = u.span();
        let u = u.get_ref();
        let p = |k: &str| format!("uplink[{i}].{k}");
        let name = match &u.name {
            None => {
                self.push(
                    span.clone(),
                    &p("name"),
                    "missing key: every uplink needs a name such as \"isp1\"".into(),
                );
                None
            }
            Some(n) if !is_valid_name(n.get_ref()) => {
                self.push(
                    n.span(),
                    &p("name"),
                    format!(
                        "invalid name {:?}: use 1..=15 characters from a-z, 0-9, '_' and '-'",
                        n.get_ref()
                    ),
                );
                None
            }
            Some(n) if !names.insert(n.get_ref().clone()) => {
                self.push(
                    n.span(),
                    &p("name"),
                    format!("duplicate uplink name {:?}", n.get_ref()),
                );
                None
            }
            Some(n) => Some(n.get_ref().clone()),
        };
        let interface = match &u.interface {
            None => {
                self.push(
                    span.clone(),
                    &p("interface"),
                    "missing key: the uplink's network interface, e.g. \"eth1\" or \"ppp0\"".into(),
                );
                None
            }
            Some(s) if !is_valid_ifname(s.get_ref()) => {
                self.push(
                    s.span(),
                    &p("interface"),
                    format!(
                        "invalid interface name {:?} (1..=15 printable characters, no '/')",
                        s.get_ref()
                    ),
                );
                None
            }
            Some(s) => Some(s.get_ref().clone()),
        };
        let gateway_auto = u.gateway.as_ref().is_some_and(|g| g.get_ref() == "auto");
        let gateway = match &u.gateway {
            None => Some(None),
            Some(_) if gateway_auto => Some(None),
            Some(g) => match g.get_ref().parse::<Ipv4Addr>() {
                Ok(a) => Some(Some(a)),
                Err(_) => {
                    self.push(
                        g.span(),
                        &p("gateway"),
                        format!("invalid IPv4 address {:?} (e.g. \"10.37.1.1\", or \"auto\" to follow the DHCP gateway; omit the key for point-to-point links)", g.get_ref()),
                    );
                    None
                }
            },
        };
        let weight = self.int_in(u.weight.as_ref(), &p("weight"), 1, 1..=MAX_WEIGHT);
        let tier = self.int_in(u.tier.as_ref(), &p("tier"), 1, 1..=MAX_TIER);
        let snat = match &u.snat {
            None => Some(Snat::Auto),
            Some(s) => match s.get_ref().as_str() {
                "auto" => Some(Snat::Auto),
                "none" => Some(Snat::None),
                other => match other.parse::<Ipv4Addr>() {
                    Ok(a) => Some(Snat::To(a)),
                    Err(_) => {
                        self.push(
                            s.span(),
                            &p("snat"),
                            format!("invalid value {other:?}: expected \"auto\", \"none\" or an IPv4 address"),
                        );
                        None
                    }
                },
            },
        };
        let check = self.check(i, span, u.check.as_ref(), gateway.flatten(), gateway_auto);
        Some(Uplink {
            name: name?,
            interface: interface?,
            gateway: gateway?,
            gateway_auto,
            weight: weight?,
            tier: tier?,
            snat: snat?,
            check: check?,
        })
    }

    fn duration(
        &mut self,
        v: Option<&Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(v) = v else { return Some(default) };
        match duration::parse(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.push(v.span(), key, "must be greater than zero".into());
                None
            }
            Ok(d) if d > Duration::from_secs(3600) => {
                self.push(
                    v.span(),
                    key,
                    format!("{:?} is too long (at most 1h)", v.get_ref()),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(v.span(), key, e.to_string());
                None
            }
        }
    }

    fn check(
        &mut self,
        i: usize,
        uplink_span: Range<usize>,
        raw: Option<&Spanned<RawCheck>>,
        gateway: Option<Ipv4Addr>,
        gateway_auto: bool,
    ) -> Option<Check> {
        let p = |k: &str| format!("uplink[{i}].check.{k}");
        let empty = RawCheck {
            targets: None,
            method: None,
            interval: None,
            timeout: None,
            down_after: None,
            up_after: None,
            min_targets: None,
            max_loss: None,
            max_rtt: None,
            recover_loss: None,
            recover_rtt: None,
            window: None,
        };
        let (c, span) = match raw {
            Some(r) => (r.get_ref(), r.span()),
            None => (&empty, uplink_span),
        };
        let method = match &c.method {
            None => Some(CheckMethod::Icmp),
            Some(m) => match m.get_ref().as_str() {
                "icmp" => Some(CheckMethod::Icmp),
                "tcp" => Some(CheckMethod::Tcp),
                "dns" => Some(CheckMethod::Dns),
                other => {
                    self.push(
                        m.span(),
                        &p("method"),
                        format!("unknown method {other:?}: expected \"icmp\", \"tcp\" or \"dns\""),
                    );
                    None
                }
            },
        };
        let interval = self.duration(
            c.interval.as_ref(),
            &p("interval"),
            check_defaults::INTERVAL,
        );
        let timeout = self.duration(c.timeout.as_ref(), &p("timeout"), check_defaults::TIMEOUT);
        let down_after = self.int_in(
            c.down_after.as_ref(),
            &p("down_after"),
            check_defaults::DOWN_AFTER,
            1..=1000,
        );
        let up_after = self.int_in(
            c.up_after.as_ref(),
            &p("up_after"),
            check_defaults::UP_AFTER,
            1..=1000,
        );
        let method = method?;
        let targets = self.targets(
            c.targets.as_ref(),
            method,
            gateway,
            gateway_auto,
            span,
            &p("targets"),
        );
        let targets = targets?;
        let min_targets = match &c.min_targets {
            None => Some(check_defaults::MIN_TARGETS.min(targets.len() as u32)),
            Some(v) => self.int_in(
                Some(v),
                &p("min_targets"),
                1,
                1..=(targets.len().max(1) as u32),
            ),
        };
        let interval = interval?;
        let quality = self.quality(c, interval, &p)?;
        Some(Check {
            method,
            targets,
            quality,
            interval,
            timeout: timeout?,
            down_after: down_after?,
            up_after: up_after?,
            min_targets: min_targets?,
        })
    }

    fn percent(
        &mut self,
        v: Option<&Spanned<config::RawNumber>>,
        key: &str,
    ) -> Option<Option<f64>> {
        let Some(v) = v else { return Some(None) };
        let x = v.get_ref().as_f64();
        if !(0.0..=100.0).contains(&x) {
            self.push(
                v.span(),
                key,
                format!("{x} is out of range (expected a percentage 0..=100)"),
            );
            return None;
        }
        Some(Some(x))
    }

    fn quality(
        &mut self,
        c: &RawCheck,
        interval: Duration,
        p: &dyn Fn(&str) -> String,
    ) -> Option<Option<Quality>> {
        let max_loss = self.percent(c.max_loss.as_ref(), &p("max_loss"));
        let recover_loss = self.percent(c.recover_loss.as_ref(), &p("recover_loss"));
        let max_rtt = match &c.max_rtt {
            None => Some(None),
            Some(v) => self
                .duration(Some(v), &p("max_rtt"), Duration::ZERO)
                .map(Some),
        };
        let recover_rtt = match &c.recover_rtt {
            None => Some(None),
            Some(v) => self
                .duration(Some(v), &p("recover_rtt"), Duration::ZERO)
                .map(Some),
        };
        let window = self.duration(c.window.as_ref(), &p("window"), check_defaults::WINDOW);
        let (max_loss, recover_loss, max_rtt, recover_rtt, window) =
            (max_loss?, recover_loss?, max_rtt?, recover_rtt?, window?);
        if max_loss.is_none() && max_rtt.is_none() {
            for (k, v) in [
                ("recover_loss", c.recover_loss.as_ref().map(|v| v.span())),
                ("recover_rtt", c.recover_rtt.as_ref().map(|v| v.span())),
            ] {
                if let Some(span) = v {
                    self.push(
                        span,
                        &p(k),
                        format!("has no effect without max_{}", &k[8..]),
                    );
                    return None;
                }
            }
            return Some(None);
        }
        if let (Some(m), Some(r), Some(v)) = (max_loss, recover_loss, &c.recover_loss) {
            if r > m {
                self.push(
                    v.span(),
                    &p("recover_loss"),
                    format!("{r} must not be above max_loss ({m})"),
                );
                return None;
            }
        }
        if let (Some(m), Some(r), Some(v)) = (max_rtt, recover_rtt, &c.recover_rtt) {
            if r > m {
                self.push(
                    v.span(),
                    &p("recover_rtt"),
                    "must not be above max_rtt".into(),
                );
                return None;
            }
        }
        let rounds = (window.as_millis() / interval.as_millis().max(1)).max(1) as usize;
        Some(Some(Quality {
            max_loss,
            max_rtt,
            recover_loss: recover_loss.unwrap_or(max_loss.unwrap_or(0.0) / 2.0),
            recover_rtt,
            window: rounds.min(10_000),
        }))
    }

    fn targets(
        &mut self,
        raw: Option<&SpannedList>,
        method: CheckMethod,
        gateway: Option<Ipv4Addr>,
        gateway_auto: bool,
        span: Range<usize>,
        key: &str,
    ) -> Option<Vec<SocketAddrV4>> {
        let default_port = match method {
            CheckMethod::Icmp => Some(0),
            CheckMethod::Dns => Some(check_defaults::DNS_PORT),
            CheckMethod::Tcp => None,
        };
        let Some(list) = raw else {
            return match (gateway, default_port) {
                (Some(g), Some(port)) => Some(vec![SocketAddrV4::new(g, port)]),
                (None, _) if gateway_auto => {
                    self.push(
                        span,
                        key,
                        "missing key: with gateway = \"auto\" the gateway is only known at run time; list targets to probe"
                            .into(),
                    );
                    None
                }
                (None, _) => {
                    self.push(
                        span,
                        key,
                        "missing key: an uplink without a gateway needs explicit check targets"
                            .into(),
                    );
                    None
                }
                (Some(_), None) => {
                    self.push(
                        span,
                        key,
                        "missing key: method \"tcp\" needs targets written as \"ip:port\"".into(),
                    );
                    None
                }
            };
        };
        if list.get_ref().is_empty() {
            self.push(list.span(), key, "must list at least one target".into());
            return None;
        }
        let mut ok = true;
        let mut out = Vec::new();
        for (j, t) in list.get_ref().iter().enumerate() {
            let k = format!("{key}[{j}]");
            let s = t.get_ref();
            let parsed = match method {
                CheckMethod::Icmp => s.parse::<Ipv4Addr>().map(|a| SocketAddrV4::new(a, 0)).map_err(|_| {
                    format!("invalid target {s:?}: icmp targets are IPv4 addresses such as \"10.37.1.1\"")
                }),
                CheckMethod::Tcp => s.parse::<SocketAddrV4>().map_err(|_| {
                    format!("invalid target {s:?}: tcp targets are written \"ip:port\", e.g. \"10.37.1.1:443\"")
                }),
                CheckMethod::Dns => s
                    .parse::<SocketAddrV4>()
                    .or_else(|_| s.parse::<Ipv4Addr>().map(|a| SocketAddrV4::new(a, check_defaults::DNS_PORT)))
                    .map_err(|_| format!("invalid target {s:?}: dns targets are resolver addresses, \"ip\" or \"ip:port\"")),
            };
            match parsed {
                Ok(a) if method == CheckMethod::Tcp && a.port() == 0 => {
                    self.push(
                        t.span(),
                        &k,
                        format!("invalid target {s:?}: port 0 cannot be probed"),
                    );
                    ok = false;
                }
                Ok(a) => out.push(a),
                Err(m) => {
                    self.push(t.span(), &k, m);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn balance(&mut self, raw: Option<&Spanned<config::RawBalance>>) -> Option<Balance> {
        let mut b = Balance {
            method: Method::RoundRobin,
            local: true,
            when_all_down: WhenAllDown::Unreachable,
            on_uplink_down: OnUplinkDown::Flush,
        };
        let Some(raw) = raw else { return Some(b) };
        let raw = raw.get_ref();
        let mut ok = true;
        if let Some(m) = &raw.method {
            match m.get_ref().as_str() {
                "round-robin" => b.method = Method::RoundRobin,
                "random" => b.method = Method::Random,
                "src-hash" => b.method = Method::SrcHash,
                "src-dst-hash" => b.method = Method::SrcDstHash,
                other => {
                    self.push(m.span(), "balance.method", format!("unknown method {other:?}: expected \"round-robin\", \"random\", \"src-hash\" or \"src-dst-hash\""));
                    ok = false;
                }
            }
        }
        if let Some(l) = &raw.local {
            b.local = *l.get_ref();
        }
        if let Some(w) = &raw.when_all_down {
            match w.get_ref().as_str() {
                "unreachable" => b.when_all_down = WhenAllDown::Unreachable,
                "blackhole" => b.when_all_down = WhenAllDown::Blackhole,
                "main" => b.when_all_down = WhenAllDown::Main,
                other => {
                    self.push(w.span(), "balance.when_all_down", format!("unknown value {other:?}: expected \"unreachable\", \"blackhole\" or \"main\""));
                    ok = false;
                }
            }
        }
        if let Some(w) = &raw.on_uplink_down {
            match w.get_ref().as_str() {
                "flush" => b.on_uplink_down = OnUplinkDown::Flush,
                "keep" => b.on_uplink_down = OnUplinkDown::Keep,
                other => {
                    self.push(
                        w.span(),
                        "balance.on_uplink_down",
                        format!("unknown value {other:?}: expected \"flush\" or \"keep\""),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(b)
    }

    fn nets(&mut self, raw: Option<&SpannedList>, key: &str) -> Option<Vec<Ipv4Net>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        if list.get_ref().is_empty() {
            self.push(
                list.span(),
                key,
                "empty list matches nothing; remove the key to match any address".into(),
            );
            return None;
        }
        let mut ok = true;
        let mut out = Vec::new();
        for (j, s) in list.get_ref().iter().enumerate() {
            match s.get_ref().parse::<Ipv4Net>() {
                Ok(n) => out.push(n),
                Err(e) => {
                    self.push(
                        s.span(),
                        &format!("{key}[{j}]"),
                        format!(
                            "{e} (expected an IPv4 address or CIDR such as \"192.168.0.0/24\")"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn ports(
        &mut self,
        raw: Option<&Spanned<Vec<Spanned<NumOrStr>>>>,
        key: &str,
    ) -> Option<Vec<PortRange>> {
        let Some(list) = raw else {
            return Some(Vec::new());
        };
        if list.get_ref().is_empty() {
            self.push(
                list.span(),
                key,
                "empty list matches nothing; remove the key to match any port".into(),
            );
            return None;
        }
        let mut ok = true;
        let mut out = Vec::new();
        for (j, s) in list.get_ref().iter().enumerate() {
            match s.get_ref().to_text().parse::<PortRange>() {
                Ok(r) => out.push(r),
                Err(e) => {
                    self.push(s.span(), &format!("{key}[{j}]"), e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn rules(
        &mut self,
        raw: &[Spanned<config::RawRule>],
        uplinks: Option<&[Uplink]>,
    ) -> Option<Vec<Rule>> {
        let mut ok = true;
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for (i, r) in raw.iter().enumerate() {
            let span = r.span();
            let r = r.get_ref();
            let p = |k: &str| format!("rule[{i}].{k}");
            let name = match &r.name {
                None => {
                    self.push(
                        span.clone(),
                        &p("name"),
                        "missing key: every rule needs a name such as \"web\"".into(),
                    );
                    None
                }
                Some(n) if !is_valid_name(n.get_ref()) => {
                    self.push(
                        n.span(),
                        &p("name"),
                        format!(
                            "invalid name {:?}: use 1..=15 characters from a-z, 0-9, '_' and '-'",
                            n.get_ref()
                        ),
                    );
                    None
                }
                Some(n) if !names.insert(n.get_ref().clone()) => {
                    self.push(
                        n.span(),
                        &p("name"),
                        format!("duplicate rule name {:?}", n.get_ref()),
                    );
                    None
                }
                Some(n) => Some(n.get_ref().clone()),
            };
            let src = self.nets(r.src.as_ref(), &p("src"));
            let dst = self.nets(r.dst.as_ref(), &p("dst"));
            let proto = match &r.proto {
                None => Some(None),
                Some(s) => {
                    match s.get_ref().as_str() {
                        "tcp" => Some(Some(Proto::Tcp)),
                        "udp" => Some(Some(Proto::Udp)),
                        "icmp" => Some(Some(Proto::Icmp)),
                        other => {
                            self.push(s.span(), &p("proto"), format!("unknown protocol {other:?}: expected \"tcp\", \"udp\" or \"icmp\""));
                            None
                        }
                    }
                }
            };
            let sport = self.ports(r.sport.as_ref(), &p("sport"));
            let dport = self.ports(r.dport.as_ref(), &p("dport"));
            if let Some(Some(pr)) = proto {
                if pr == Proto::Icmp {
                    for (k, v) in [("sport", &r.sport), ("dport", &r.dport)] {
                        if let Some(v) = v {
                            self.push(
                                v.span(),
                                &p(k),
                                "ports need proto = \"tcp\" or \"udp\"".into(),
                            );
                            ok = false;
                        }
                    }
                }
            } else if proto == Some(None) {
                for (k, v) in [("sport", &r.sport), ("dport", &r.dport)] {
                    if let Some(v) = v {
                        self.push(
                            v.span(),
                            &p(k),
                            "ports need proto = \"tcp\" or \"udp\" in the same rule".into(),
                        );
                        ok = false;
                    }
                }
            }
            let mode = match &r.mode {
                None => Some(Mode::Balance),
                Some(m) => match m.get_ref().as_str() {
                    "balance" => Some(Mode::Balance),
                    "failover" => Some(Mode::Failover),
                    "bypass" => Some(Mode::Bypass),
                    other => {
                        self.push(m.span(), &p("mode"), format!("unknown mode {other:?}: expected \"balance\", \"failover\" or \"bypass\""));
                        None
                    }
                },
            };
            let refs = match (&r.uplinks, uplinks) {
                (None, Some(all)) => Some((0..all.len()).collect::<Vec<_>>()),
                (None, None) => None,
                (Some(list), _) if mode == Some(Mode::Bypass) => {
                    self.push(
                        list.span(),
                        &p("uplinks"),
                        "mode \"bypass\" uses the main routing table; remove `uplinks`".into(),
                    );
                    None
                }
                (Some(list), _) if list.get_ref().is_empty() => {
                    self.push(
                        list.span(),
                        &p("uplinks"),
                        "must name at least one uplink (or remove the key to use all)".into(),
                    );
                    None
                }
                (Some(list), all) => {
                    let mut idx = Vec::new();
                    let mut good = true;
                    for (j, n) in list.get_ref().iter().enumerate() {
                        let k = format!("rule[{i}].uplinks[{j}]");
                        match all.and_then(|all| all.iter().position(|u| &u.name == n.get_ref())) {
                            Some(x) if idx.contains(&x) => {
                                self.push(
                                    n.span(),
                                    &k,
                                    format!("{:?} is listed twice", n.get_ref()),
                                );
                                good = false;
                            }
                            Some(x) => idx.push(x),
                            None => {
                                if let Some(all) = all {
                                    let known: Vec<_> =
                                        all.iter().map(|u| u.name.as_str()).collect();
                                    self.push(
                                        n.span(),
                                        &k,
                                        format!(
                                            "no uplink named {:?} (known: {})",
                                            n.get_ref(),
                                            known.join(", ")
                                        ),
                                    );
                                }
                                good = false;
                            }
                        }
                    }
                    good.then_some(idx)
                }
            };
            match (name, src, dst, proto, sport, dport, refs, mode) {
                (
                    Some(name),
                    Some(src),
                    Some(dst),
                    Some(proto),
                    Some(sport),
                    Some(dport),
                    Some(uplinks),
                    Some(mode),
                ) => out.push(Rule {
                    name,
                    src,
                    dst,
                    proto,
                    sport,
                    dport,
                    uplinks,
                    mode,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod tests;
