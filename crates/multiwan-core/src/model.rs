//! The validated domain model. [`load`] turns config text into a [`Config`] or into *all*
//! the problems found, each with `file:line:col`, the key path and what would be valid.
//!
//! **Invariant:** a `Config` value is always valid: names are unique, references resolve,
//! marks/tables/priorities fit in the space multiwan owns. The planner relies on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use crate::config;
use crate::net::{Family, Ipv4Net, Ipv6Net, PortRange};

mod check;
mod names;
mod rules;
mod sections;
mod uplink;

pub use names::{is_valid_group, is_valid_ifname, is_valid_name};

/// Longest uplink and rule name (nft chain names and env vars stay short and readable).
pub const MAX_NAME_LEN: usize = 15;
/// Largest uplink weight.
pub const MAX_WEIGHT: u32 = 1000;
/// Largest tier number.
pub const MAX_TIER: u32 = 255;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[daemon]`: the hook, metrics and control-socket settings of `multiwan run`.
    pub daemon: Daemon,
    /// `[lan]`: the interfaces whose new connections are balanced.
    pub lan: Lan,
    /// `[[uplink]]`s in file order; [`Rule::uplinks`] indexes into this list.
    pub uplinks: Vec<Uplink>,
    /// `[balance]`: how policies spread connections and what happens when uplinks fail.
    pub balance: Balance,
    /// `[[rule]]`s in file order; the first that matches a new connection decides it.
    pub rules: Vec<Rule>,
    /// `[kernel]`: the marks, routing tables and rule priorities multiwan owns.
    pub kernel: KernelOpts,
}

/// `[daemon]`: settings of `multiwan run`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Daemon {
    /// Executable run on every uplink transition.
    pub hook: Option<String>,
    /// Where to serve Prometheus metrics (off when `None`).
    pub metrics: Option<std::net::SocketAddr>,
    /// A Unix group whose members may use the read-only control requests (status, flows,
    /// explain, watch); without it only root may use the control socket.
    pub control_group: Option<String>,
}

/// The LAN side: new connections entering on these interfaces are balanced.
#[derive(Debug, Clone, PartialEq)]
pub struct Lan {
    /// LAN interface names (never also an uplink's interface).
    pub interfaces: Vec<String>,
}

/// One internet uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    /// Unique name (`[a-z0-9_-]`, 1..=15, not `main` or `none`): part of its nft chain and
    /// counter names, and how hooks, status and metrics refer to it.
    pub name: String,
    /// The network interface its traffic leaves by; two uplinks share one only when told apart
    /// by different fixed gateways.
    pub interface: String,
    /// A fixed gateway; `None` for point-to-point links or `gateway = "auto"`.
    pub gateway: Option<Ipv4Addr>,
    /// `gateway = "auto"`: use the gateway of the default route that the interface's DHCP
    /// client (or anything else) installed, and follow it when it changes.
    pub gateway_auto: bool,
    /// Its share of new connections among the usable uplinks of its tier, and its multipath
    /// route weight (1..=1000, default 1).
    pub weight: u32,
    /// Priority group (1..=255, default 1): only the lowest tier with a usable uplink takes new
    /// connections.
    pub tier: u32,
    /// Source NAT for IPv4 connections leaving over this uplink.
    pub snat: Snat,
    /// The IPv4 health check.
    pub check: Check,
    /// IPv6 over this uplink (`gateway6`); `None`: IPv6 does not use it.
    pub ipv6: Option<Uplink6>,
}

impl Uplink {
    /// The health check of `family`, if the uplink carries it.
    pub fn check_of(&self, family: Family) -> Option<&Check> {
        match family {
            Family::V4 => Some(&self.check),
            Family::V6 => self.ipv6.as_ref().map(|v| &v.check),
        }
    }

    /// Whether the uplink carries `family`.
    pub fn has(&self, family: Family) -> bool {
        self.check_of(family).is_some()
    }
}

/// The IPv6 side of an uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink6 {
    /// A fixed gateway (often link-local); `None` with `gateway6 = "auto"`: the default route
    /// that router advertisements install on the interface, followed when it changes.
    pub gateway: Option<Ipv6Addr>,
    /// Source NAT for IPv6 connections leaving over this uplink (`snat6`).
    pub snat: Snat6,
    /// The IPv6 health check: the IPv6 targets, with the timing of `[uplink.check]`.
    pub check: Check,
}

/// Source NAT for IPv6 connections leaving over an uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snat6 {
    /// Masquerade to the interface's global address.
    Auto,
    /// No translation: this ISP routes the LAN's addresses.
    None,
    /// A fixed address.
    To(Ipv6Addr),
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
    /// How each target is probed.
    pub method: CheckMethod,
    /// All of one family (the check of that family); port 0 for icmp.
    pub targets: Vec<SocketAddr>,
    /// Time between the starts of two probe rounds.
    pub interval: Duration,
    /// How long a round waits for answers; a later answer counts as lost.
    pub timeout: Duration,
    /// Bad rounds in a row that take an up or degraded uplink down.
    pub down_after: u32,
    /// Good rounds in a row that bring a down uplink back up.
    pub up_after: u32,
    /// Targets that must answer for a round to be good (1..=the number of targets).
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
    /// An ICMP (ICMPv6) echo request to each target address.
    Icmp,
    /// A TCP connect to each `ip:port`; a refusal also proves the path.
    Tcp,
    /// A DNS query for the root's NS records to each resolver; any answer proves the path.
    Dns,
}

/// `[balance]`
#[derive(Debug, Clone, PartialEq)]
pub struct Balance {
    /// How new connections are spread over a policy's uplinks (default round-robin).
    pub method: Method,
    /// Whether the router's own new connections are balanced too; otherwise they keep the main
    /// table (default true).
    pub local: bool,
    /// What new connections get when a policy has no usable uplink.
    pub when_all_down: WhenAllDown,
    /// What happens to the connections of an uplink that goes down.
    pub on_uplink_down: OnUplinkDown,
    /// When every uplink whose link works is down by probes alone (every target silent at
    /// once — far more often a probe or target problem than every ISP failing together), keep
    /// using the uplinks that were in use instead of refusing new connections.
    pub fail_open: bool,
}

impl Default for Balance {
    /// What an absent `[balance]` means.
    fn default() -> Self {
        Self {
            method: Method::RoundRobin,
            local: true,
            when_all_down: WhenAllDown::Unreachable,
            on_uplink_down: OnUplinkDown::Flush,
            fail_open: true,
        }
    }
}

impl Config {
    /// A config with no LAN, no uplinks and every default: what `multiwan doctor` checks the
    /// system against before a config exists (multiwan's marks, tables and priorities).
    pub fn defaults_only() -> Self {
        Self {
            daemon: Daemon::default(),
            lan: Lan {
                interfaces: Vec::new(),
            },
            uplinks: Vec::new(),
            balance: Balance::default(),
            rules: Vec::new(),
            kernel: KernelOpts::default(),
        }
    }
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
    /// Unique rule name (`[a-z0-9_-]`, 1..=15): names its chains `rule_NAME` / `rule6_NAME`.
    pub name: String,
    /// IPv4 sources/destinations (empty: any).
    pub src: Vec<Ipv4Net>,
    /// IPv4 destination prefixes (empty: any).
    pub dst: Vec<Ipv4Net>,
    /// IPv6 sources/destinations (empty: any).
    pub src6: Vec<Ipv6Net>,
    /// IPv6 destination prefixes (empty: any).
    pub dst6: Vec<Ipv6Net>,
    /// Whether the rule matches IPv4 traffic: no `family = "ipv6"`, and every address list
    /// that is written names at least one IPv4 prefix.
    pub v4: bool,
    /// Whether the rule matches IPv6 traffic (likewise); a rule without addresses or family
    /// matches IPv6 only if one of its uplinks carries IPv6.
    pub v6: bool,
    /// Transport protocol to match (`None`: any).
    pub proto: Option<Proto>,
    /// Source ports to match (empty: any); only with `proto` tcp or udp.
    pub sport: Vec<PortRange>,
    /// Destination ports to match (empty: any); only with `proto` tcp or udp.
    pub dport: Vec<PortRange>,
    /// Indexes into [`Config::uplinks`], in the order written.
    pub uplinks: Vec<usize>,
    /// What the rule does with its uplinks (default balance).
    pub mode: Mode,
}

/// Transport protocol selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP (`proto = "tcp"`).
    Tcp,
    /// UDP (`proto = "udp"`).
    Udp,
    /// `icmp`: ICMP for IPv4 traffic, ICMPv6 for IPv6 traffic.
    Icmp,
}

impl Proto {
    /// Every protocol, in the order messages list them.
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Icmp];

    /// The protocol the config (and `explain --proto`) spells `name`.
    pub fn from_name(name: &str) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the protocol has ports (what `sport` and `dport` need).
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }

    /// The nft spelling of the protocol for `family` (icmp means ICMPv6 for IPv6).
    pub fn nft(self, family: Family) -> &'static str {
        match (self, family) {
            (Proto::Icmp, Family::V6) => "ipv6-icmp",
            (p, _) => p.as_str(),
        }
    }

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
    /// Priority of the rules for multiwan's marks (`rule_priority` and `rule_priority + 1`);
    /// the rules for unmarked traffic sit at [`LATE_RULE_PRIORITY`]`..=32765`, after
    /// everyone else's.
    pub rule_priority: u32,
}

/// Default mark mask: the top byte, clear of every common fwmark user — Tailscale
/// (`0xff0000`), kube-proxy (`0x4000`, `0x8000`), wg-quick (`0xca6c`), Cilium (`0xf00`),
/// mwan3 (`0x3f00`), Docker and Istio (low bits).
pub const DEFAULT_MARK_MASK: u32 = 0xff00_0000;
/// Default routing table base.
pub const DEFAULT_TABLE_BASE: u32 = 1000;
/// Default first rule priority.
pub const DEFAULT_RULE_PRIORITY: u32 = 1000;
/// Number of consecutive rule priorities multiwan uses for its marks, from `rule_priority`.
pub const RULE_PRIORITY_SPAN: u32 = 2;
/// First of the three priorities for unmarked traffic, just before `main` (32766) so every
/// other policy-routing user's rules come first: 32763 the main table without its default
/// route, 32764 the router's own uplink addresses, 32765 the multipath default.
pub const LATE_RULE_PRIORITY: u32 = 32763;

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

    /// The number of uplink ids available, 2^bits − 3: ids run from 1 (0 is an unmarked
    /// packet) and all-ones and all-ones-minus-one are reserved for "no uplink" and "main
    /// table".
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
    /// Default time between probe rounds.
    pub const INTERVAL: Duration = Duration::from_millis(100);
    /// Default round timeout (capped at 10 × interval for intervals under 20 ms).
    pub const TIMEOUT: Duration = Duration::from_millis(200);
    /// Default bad rounds in a row before an uplink is down.
    pub const DOWN_AFTER: u32 = 6;
    /// Default good rounds in a row before a down uplink is up again.
    pub const UP_AFTER: u32 = 10;
    /// Default length of the quality window (counted in rounds of the interval).
    pub const WINDOW: Duration = Duration::from_secs(10);
    /// Default number of targets that must answer for a round to be good.
    pub const MIN_TARGETS: u32 = 1;
    /// Port of a dns target written without one, and of the gateway as default dns target.
    pub const DNS_PORT: u16 = 53;
}

/// Bounds of the check settings, and why. Validation enforces them with these reasons.
pub mod check_limits {
    use std::time::Duration;
    /// Probing more often floods the target and costs CPU for no faster detection.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
    /// Probing less often would notice a dead uplink only after minutes.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
    /// At most this many rounds are in flight at once (timeout ≤ this × interval): the
    /// prober's round bookkeeping is sized for it.
    pub const MAX_ROUNDS_IN_FLIGHT: u32 = 10;
    /// Longest time to declare a dead uplink down (down_after × interval + timeout), or to
    /// bring a healthy one back (up_after × interval).
    pub const MAX_DETECTION: Duration = Duration::from_secs(600);
    /// Most rounds in a quality window (the monitor keeps each one).
    pub const MAX_WINDOW_ROUNDS: u128 = 10_000;
    /// Largest down_after and up_after.
    pub const MAX_ROUNDS: u32 = 1000;
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name given to [`load`].
    pub file: String,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column of the problem, in characters.
    pub col: usize,
    /// Key path such as `uplink[1].gateway`.
    pub key: String,
    /// What is wrong and, where it can say, what would be valid.
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
    /// The problems, in file order.
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

/// The contents of a config file: its bytes as read (`&[u8]`, `&Vec<u8>`), or text
/// (`&str`, `&String`). Bytes that are not UTF-8 are reported with their position.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a>(&'a [u8]);

impl<'a> From<&'a [u8]> for Source<'a> {
    fn from(b: &'a [u8]) -> Self {
        Self(b)
    }
}
impl<'a, const N: usize> From<&'a [u8; N]> for Source<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Self(b)
    }
}
impl<'a> From<&'a Vec<u8>> for Source<'a> {
    fn from(b: &'a Vec<u8>) -> Self {
        Self(b)
    }
}
impl<'a> From<&'a str> for Source<'a> {
    fn from(s: &'a str) -> Self {
        Self(s.as_bytes())
    }
}
impl<'a> From<&'a String> for Source<'a> {
    fn from(s: &'a String) -> Self {
        Self(s.as_bytes())
    }
}

/// Parses and validates a config file. `file` is only used in diagnostics. Every problem is
/// reported, each with `file:line:col`, in file order.
pub fn load<'a>(file: &str, source: impl Into<Source<'a>>) -> Result<Config, ConfigError> {
    let bytes = source.into().0;
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return Err(not_utf8(file, bytes, &e)),
    };
    let mut v = Validator::new(file, text);
    let parsed = match config::parse(text) {
        Ok(parsed) => parsed,
        Err(e) => {
            // toml names the offending key in its message and the span points at it.
            v.push(e.span, "", e.message);
            return Err(v.finish());
        }
    };
    for p in parsed.problems {
        v.push(p.span, &p.key, p.message);
    }
    v.rejected = parsed.rejected;
    v.too_large = parsed.too_large;
    let cfg = v.config(&parsed.root);
    match cfg {
        Some(cfg) if v.diags.is_empty() => Ok(cfg),
        Some(_) => Err(v.finish()),
        None => {
            if v.diags.is_empty() {
                // Unreachable by construction: every `None` path pushes a diagnostic. Kept as
                // a guard so a bug shows up as an error rather than an invalid `Config`.
                v.push(0..0, "", "invalid configuration".to_string());
            }
            Err(v.finish())
        }
    }
}

/// The position of the first byte that is not UTF-8.
fn not_utf8(file: &str, bytes: &[u8], e: &std::str::Utf8Error) -> ConfigError {
    let valid = &bytes[..e.valid_up_to()];
    // The prefix is valid UTF-8 by definition; lossy conversion cannot change it.
    let before = String::from_utf8_lossy(valid);
    let (line, col) = Cursor::new(&before).to(before.len());
    let byte = bytes.get(e.valid_up_to()).copied().unwrap_or(0);
    ConfigError {
        diagnostics: vec![Diagnostic {
            file: file.to_string(),
            line,
            col,
            key: String::new(),
            message: format!(
                "the file is not valid UTF-8 (byte {byte:#04x} here); save it as UTF-8"
            ),
        }],
    }
}

/// 1-based line and column (in characters) of byte offsets visited in increasing order: each
/// step scans only the text since the previous offset, so positioning every diagnostic of a
/// file costs one pass over it (scanning from the start for each one was quadratic).
struct Cursor<'a> {
    text: &'a str,
    /// Byte offset reached, on a character boundary.
    at: usize,
    line: usize,
    col: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            at: 0,
            line: 1,
            col: 1,
        }
    }

    /// The position of byte `offset` (clamped to the text, back to a character boundary);
    /// an offset before the one reached answers the position reached.
    fn to(&mut self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        if offset > self.at {
            let between = &self.text[self.at..offset];
            match between.rfind('\n') {
                Some(last) => {
                    self.line += between.matches('\n').count();
                    self.col = between[last + 1..].chars().count() + 1;
                }
                None => self.col += between.chars().count(),
            }
            self.at = offset;
        }
        (self.line, self.col)
    }
}

/// A diagnostic before its position is known: positions are computed once, for all of them in
/// file order, by [`Validator::finish`].
struct Pending {
    offset: usize,
    key: String,
    message: String,
}

/// Collects diagnostics while the sections are validated.
struct Validator<'a> {
    file: &'a str,
    text: &'a str,
    diags: Vec<Pending>,
    /// Key paths already reported with a wrong type: a second message about them ("missing
    /// key") would only repeat the first.
    rejected: BTreeSet<String>,
    /// [`config::Parsed::too_large`]: integers beyond 64 bits as written, shown as written.
    too_large: BTreeMap<usize, String>,
}

impl<'a> Validator<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        Self {
            file,
            text,
            diags: Vec::new(),
            rejected: BTreeSet::new(),
            too_large: BTreeMap::new(),
        }
    }

    /// `value` as the file shows it: itself, or the integer beyond 64 bits written at `span`.
    fn shown(&self, span: &Range<usize>, value: impl fmt::Display) -> String {
        match self.too_large.get(&span.start) {
            Some(written) => written.clone(),
            None => value.to_string(),
        }
    }

    fn finish(mut self) -> ConfigError {
        // File order, which is how people fix them; the sort is stable for equal positions.
        crate::order::sort_by_key(&mut self.diags, |d| d.offset);
        let mut cursor = Cursor::new(self.text);
        let diagnostics = self
            .diags
            .into_iter()
            .map(|d| {
                let (line, col) = cursor.to(d.offset);
                Diagnostic {
                    file: self.file.to_string(),
                    line,
                    col,
                    key: d.key,
                    message: d.message,
                }
            })
            .collect();
        ConfigError { diagnostics }
    }

    fn push(&mut self, span: Range<usize>, key: &str, message: String) {
        if self.rejected.contains(key) {
            return;
        }
        self.diags.push(Pending {
            offset: span.start,
            key: key.to_string(),
            message,
        });
    }

    fn config(&mut self, root: &config::Table) -> Option<Config> {
        let daemon = self.daemon(root.table("daemon"));
        let lan = self.lan(root.table("lan"));
        let raw_uplinks = root.tables("uplink");
        let kernel = self.kernel(root.table("kernel"), raw_uplinks);
        let uplinks = self.uplinks(raw_uplinks);
        let separate = self.lan_apart_from_uplinks(root.table("lan"), raw_uplinks);
        let balance = self.balance(root.table("balance"));
        let rules = self.rules(root.tables("rule"), raw_uplinks, uplinks.as_deref());
        separate?;
        Some(Config {
            daemon: daemon?,
            lan: lan?,
            uplinks: uplinks?,
            balance: balance?,
            rules: rules?,
            kernel: kernel?,
        })
    }

    /// An integer key within `range`, or `default` when absent.
    fn int_in(
        &mut self,
        v: Option<&config::Spanned<i64>>,
        key: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<u32> {
        let Some(v) = v else { return Some(default) };
        let n = *v.get_ref();
        if n < i64::from(*range.start()) || n > i64::from(*range.end()) {
            let shown = self.shown(&v.span(), n);
            self.push(
                v.span(),
                key,
                format!(
                    "{shown} is out of range (expected {}..={})",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        u32::try_from(n).ok()
    }
}

#[cfg(test)]
mod tests;
