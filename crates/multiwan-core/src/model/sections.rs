//! Validation of the small sections: `[daemon]`, `[lan]`, `[balance]` and `[kernel]` (the
//! mark, table and rule-priority space, checked against the uplink count so that whatever
//! `check` accepts also plans and loads).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::names::{ifname_problem, is_valid_group};
use super::{
    Balance, Daemon, KernelOpts, Lan, Method, OnUplinkDown, Validator, WhenAllDown,
    RULE_PRIORITY_SPAN,
};
use crate::config::{NumOrStr, Spanned, Table};
use crate::order::Collect;

/// Highest `ip rule` priority multiwan may use: 32766 and 32767 are the kernel's `main` and
/// `default` rules, which must stay after multiwan's.
const MAX_RULE_PRIORITY: u32 = super::LATE_RULE_PRIORITY - 1;

/// The kernel's reserved routing tables (default, main, local).
const RESERVED_TABLES: std::ops::RangeInclusive<u64> = 253..=255;

impl Validator<'_> {
    pub(super) fn daemon(&mut self, raw: Option<&Spanned<Table>>) -> Option<Daemon> {
        let Some(raw) = raw else {
            return Some(Daemon::default());
        };
        let raw = raw.get_ref();
        let mut ok = true;
        let hook = match raw.str("hook") {
            Some(h) if !h.get_ref().starts_with('/') => {
                self.push(
                    h.span(),
                    "daemon.hook",
                    format!(
                        "{:?} must be an absolute path to an executable",
                        h.get_ref()
                    ),
                );
                ok = false;
                None
            }
            h => h.map(|h| h.get_ref().clone()),
        };
        let metrics = match raw.int_or_str("metrics") {
            None => None,
            Some(m) => {
                let parsed = listen_address(&m.get_ref().to_text());
                if parsed.is_none() {
                    self.push(
                        m.span(),
                        "daemon.metrics",
                        format!(
                            "invalid listen address {:?}: expected a local address and port such as \"127.0.0.1:9797\" (not multicast or broadcast), or a port 1..=65535",
                            m.get_ref().to_text()
                        ),
                    );
                    ok = false;
                }
                parsed
            }
        };
        let control_group = match raw.str("control_group") {
            Some(g) if !is_valid_group(g.get_ref()) => {
                self.push(
                    g.span(),
                    "daemon.control_group",
                    format!(
                        "invalid group name {:?}: expected a Unix group such as \"netadm\" ([a-z_][a-z0-9_-]{{0,31}})",
                        g.get_ref()
                    ),
                );
                ok = false;
                None
            }
            g => g.map(|g| g.get_ref().clone()),
        };
        ok.then_some(Daemon {
            hook,
            metrics,
            control_group,
        })
    }

    pub(super) fn lan(&mut self, raw: Option<&Spanned<Table>>) -> Option<Lan> {
        let Some(raw) = raw else {
            self.push(
                0..0,
                "lan",
                "missing [lan] section: add `[lan]` with `interfaces = [\"eth0\"]`".into(),
            );
            return None;
        };
        let Some(list) = raw.get_ref().str_list("interfaces") else {
            self.push(
                raw.span(),
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
            if let Some(problem) = ifname_problem(s.get_ref()) {
                self.push(s.span(), &key, problem);
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

    /// An interface is either LAN or uplink: on both, the uplink's masquerade would rewrite
    /// the LAN's traffic and the LAN's new connections would be balanced back out.
    pub(super) fn lan_apart_from_uplinks(
        &mut self,
        lan: Option<&Spanned<Table>>,
        uplinks: &[Spanned<Table>],
    ) -> Option<()> {
        let lan: BTreeSet<&str> = lan
            .and_then(|l| l.get_ref().str_list("interfaces"))
            .map(|l| {
                l.get_ref()
                    .iter()
                    .map(|s| s.get_ref().as_str())
                    .collect_set()
            })
            .unwrap_or_default();
        let mut ok = true;
        for (i, u) in uplinks.iter().enumerate() {
            if let Some(ifname) = u.get_ref().str("interface") {
                if lan.contains(ifname.get_ref().as_str()) {
                    self.push(
                        ifname.span(),
                        &format!("uplink[{i}].interface"),
                        format!(
                            "{:?} is also in lan.interfaces; an interface is either LAN or uplink",
                            ifname.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(())
    }

    pub(super) fn balance(&mut self, raw: Option<&Spanned<Table>>) -> Option<Balance> {
        let mut b = Balance::default();
        let Some(raw) = raw else { return Some(b) };
        let raw = raw.get_ref();
        let mut ok = true;
        if let Some(m) = raw.str("method") {
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
        if let Some(l) = raw.bool("local") {
            b.local = *l.get_ref();
        }
        if let Some(f) = raw.bool("fail_open") {
            b.fail_open = *f.get_ref();
        }
        if let Some(w) = raw.str("when_all_down") {
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
        if let Some(w) = raw.str("on_uplink_down") {
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

    /// `[kernel]`, defaults included, checked against the uplinks: the effective mask must
    /// have an id for every uplink, and every table an id can select must be a valid table
    /// outside the kernel's reserved ones.
    pub(super) fn kernel(
        &mut self,
        raw: Option<&Spanned<Table>>,
        uplinks: &[Spanned<Table>],
    ) -> Option<KernelOpts> {
        let empty = Table::default();
        let raw = raw.map(|r| r.get_ref()).unwrap_or(&empty);
        let mut k = KernelOpts::default();
        let mask = self.mark_mask(raw.int_or_str("mark_mask"));
        let base = self.int_in(
            raw.int("table_base"),
            "kernel.table_base",
            k.table_base,
            1..=0x7fff_0000,
        );
        let prio = self.int_in(
            raw.int("rule_priority"),
            "kernel.rule_priority",
            k.rule_priority,
            1..=MAX_RULE_PRIORITY + 1 - RULE_PRIORITY_SPAN,
        );
        let (Some(mask), Some(base), Some(prio)) = (mask, base, prio) else {
            return None;
        };
        k = KernelOpts {
            mark_mask: mask,
            table_base: base,
            rule_priority: prio,
        };
        let capacity_ok = self.id_capacity(&k, raw, uplinks);
        let tables_ok = self.table_range(&k, raw);
        (capacity_ok && tables_ok).then_some(k)
    }

    fn mark_mask(&mut self, m: Option<&Spanned<NumOrStr>>) -> Option<u32> {
        let Some(m) = m else {
            return Some(super::DEFAULT_MARK_MASK);
        };
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
        let Some(mask) = parsed else {
            self.push(
                m.span(),
                "kernel.mark_mask",
                format!(
                    "invalid mask {:?}: expected a 32-bit number such as \"0xff000000\"",
                    m.get_ref().to_text()
                ),
            );
            return None;
        };
        let shifted = mask.checked_shr(mask.trailing_zeros()).unwrap_or(0);
        if mask == 0 || shifted & shifted.wrapping_add(1) != 0 {
            self.push(
                m.span(),
                "kernel.mark_mask",
                format!(
                    "mask {mask:#010x} must be one run of contiguous set bits, e.g. 0xff000000"
                ),
            );
            return None;
        }
        Some(mask)
    }

    /// Every uplink needs an id under the mask (two values are reserved).
    fn id_capacity(&mut self, k: &KernelOpts, raw: &Table, uplinks: &[Spanned<Table>]) -> bool {
        let capacity = k.id_capacity() as usize;
        let count = uplinks.len().max(1);
        if count <= capacity {
            return true;
        }
        let mask = k.mark_mask;
        match raw.int_or_str("mark_mask") {
            Some(m) => self.push(
                m.span(),
                "kernel.mark_mask",
                format!(
                    "mask {mask:#010x} leaves room for {} but {} configured; use more bits",
                    count_of(capacity, "uplink", "uplinks"),
                    count_of(count, "is", "are"),
                ),
            ),
            None => {
                let extra = uplinks.get(capacity).map(|u| u.span()).unwrap_or(0..0);
                self.push(
                    extra,
                    &format!("uplink[{capacity}]"),
                    format!(
                        "too many uplinks: {count} are configured, but the default mark_mask {mask:#010x} has room for {capacity}; set a wider [kernel] mark_mask (e.g. \"0xfff00000\")"
                    ),
                );
            }
        }
        false
    }

    /// Uplink ids select tables `table_base + 1 ..= table_base + capacity` (ids read back
    /// from the kernel may be anywhere in that range).
    fn table_range(&mut self, k: &KernelOpts, raw: &Table) -> bool {
        let base = u64::from(k.table_base);
        let top = base + u64::from(k.id_capacity());
        let problem = if top > u64::from(u32::MAX) {
            format!("tables {base}..={top} go past the largest table id {}; choose a smaller table_base or mark_mask", u32::MAX)
        } else if base <= *RESERVED_TABLES.end() && top >= *RESERVED_TABLES.start() {
            format!("tables {base}..={top} would include the kernel's reserved tables 253..=255 (default, main, local); choose a base above 255 or a smaller mark_mask")
        } else {
            return true;
        };
        let (span, key) = match (raw.int("table_base"), raw.int_or_str("mark_mask")) {
            (Some(t), _) => (t.span(), "kernel.table_base"),
            (None, Some(m)) => (m.span(), "kernel.mark_mask"),
            (None, None) => (0..0, "kernel"),
        };
        self.push(span, key, problem);
        false
    }
}

/// `n` with the word for one or for many: "1 uplink", "2 uplinks", "0 uplinks".
fn count_of(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `"127.0.0.1:9797"`, or a bare port meaning localhost: metrics are not exposed to the
/// network unless an address says so. Port 0 is refused in either form: the kernel would
/// pick a random port that no scraper knows.
fn listen_address(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            text.parse::<u16>()
                .ok()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        })
        .filter(|a| a.port() > 0)
        // Nothing can connect to a multicast or broadcast address (0.0.0.0 and :: mean every
        // local address, and are fine).
        .filter(|a| match a.ip() {
            std::net::IpAddr::V4(v4) => !v4.is_multicast() && !v4.is_broadcast(),
            std::net::IpAddr::V6(v6) => !v6.is_multicast() && v6.to_ipv4_mapped().is_none(),
        })
}
