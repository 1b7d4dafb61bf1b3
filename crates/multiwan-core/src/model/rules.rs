//! Validation of `[[rule]]`: names, address and port matches, protocol, mode and the uplinks
//! a rule refers to.

use std::collections::{BTreeMap, BTreeSet};

use super::names::is_valid_name;
use super::{Mode, Proto, Rule, Uplink, Validator};
use crate::config::{NumOrStr, Spanned, SpannedList, Table};
use crate::net::{Family, IpNet, Ipv4Net, Ipv6Net, PortRange};

/// The names of the `[[uplink]]` tables as written, looked up once per reference.
struct Declared<'t> {
    /// Each name with the position of its first uplink.
    index: BTreeMap<&'t str, usize>,
    /// The names in file order, each once (for messages).
    known: Vec<&'t str>,
}

impl<'t> Declared<'t> {
    fn new(uplinks: &'t [Spanned<Table>]) -> Self {
        let mut index = BTreeMap::new();
        let mut known = Vec::new();
        for (i, u) in uplinks.iter().enumerate() {
            if let Some(n) = u.get_ref().str("name") {
                let n = n.get_ref().as_str();
                if !index.contains_key(n) {
                    index.insert(n, i);
                    known.push(n);
                }
            }
        }
        Self { index, known }
    }
}

impl Validator<'_> {
    /// `declared` are the `[[uplink]]` tables as written: a rule's reference to an uplink is
    /// checked against their names even when one of them is invalid (and `uplinks` is `None`),
    /// so a misspelt reference is reported in the same pass as the uplink's own error.
    pub(super) fn rules(
        &mut self,
        raw: &[Spanned<Table>],
        declared: &[Spanned<Table>],
        uplinks: Option<&[Uplink]>,
    ) -> Option<Vec<Rule>> {
        let mut ok = true;
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        let declared = Declared::new(declared);
        for (i, r) in raw.iter().enumerate() {
            match self.rule(i, r, (&declared, uplinks), &mut names) {
                Some(rule) => out.push(rule),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn rule(
        &mut self,
        i: usize,
        raw: &Spanned<Table>,
        (declared, uplinks): (&Declared, Option<&[Uplink]>),
        names: &mut BTreeSet<String>,
    ) -> Option<Rule> {
        let r = raw.get_ref();
        let p = |k: &str| format!("rule[{i}].{k}");
        let name = self.rule_name(r.str("name"), &p("name"), raw.span(), names);
        let src = self.nets(r.str_list("src"), &p("src"));
        let dst = self.nets(r.str_list("dst"), &p("dst"));
        let proto = self.proto(r.str("proto"), &p("proto"));
        let sport = self.ports(r.int_or_str_list("sport"), &p("sport"));
        let dport = self.ports(r.int_or_str_list("dport"), &p("dport"));
        let ports_ok = match proto {
            Some(proto) => self.ports_need_tcp_or_udp(r, proto, &p),
            None => true,
        };
        let mode = self.mode(r.str("mode"), &p("mode"));
        let refs = self.rule_uplinks(
            r.str_list("uplinks"),
            mode,
            (declared, uplinks),
            &p("uplinks"),
        );
        let family = self.family(r.str("family"), &p("family"));
        let ((src, src6), (dst, dst6)) = (src?, dst?);
        let (refs, mode, family) = (refs?, mode?, family?);
        let (v4, v6) = self.rule_families(
            raw,
            family,
            [(&src, &src6), (&dst, &dst6)],
            (&refs, mode, uplinks?),
            &p,
        )?;
        let rule = Rule {
            name: name?,
            src,
            dst,
            src6,
            dst6,
            v4,
            v6,
            proto: proto?,
            sport: sport?,
            dport: dport?,
            uplinks: refs,
            mode,
        };
        ports_ok.then_some(rule)
    }

    /// `family`: `Some(None)` when absent.
    fn family(&mut self, raw: Option<&Spanned<String>>, key: &str) -> Option<Option<Family>> {
        let Some(f) = raw else { return Some(None) };
        match f.get_ref().as_str() {
            "ipv4" => Some(Some(Family::V4)),
            "ipv6" => Some(Some(Family::V6)),
            other => {
                self.push(
                    f.span(),
                    key,
                    format!("unknown family {other:?}: expected \"ipv4\" or \"ipv6\""),
                );
                None
            }
        }
    }

    /// Which families a rule matches. A family is matched unless `family` names the other one
    /// or an address list that is written has no prefix of it. A rule that matches no family,
    /// or whose IPv6 traffic could only go to uplinks without IPv6, is an error; a rule with no
    /// addresses and no family simply does not match IPv6 when none of its uplinks carries it.
    fn rule_families(
        &mut self,
        raw: &Spanned<Table>,
        family: Option<Family>,
        lists: [(&Vec<Ipv4Net>, &Vec<Ipv6Net>); 2],
        (refs, mode, all): (&[usize], Mode, &[Uplink]),
        p: &dyn Fn(&str) -> String,
    ) -> Option<(bool, bool)> {
        let written = |i: usize| !lists[i].0.is_empty() || !lists[i].1.is_empty();
        let allows = |f: Family| {
            family.is_none_or(|x| x == f)
                && (0..2).all(|i| {
                    !written(i)
                        || match f {
                            Family::V4 => !lists[i].0.is_empty(),
                            Family::V6 => !lists[i].1.is_empty(),
                        }
                })
        };
        let (v4, mut v6) = (allows(Family::V4), allows(Family::V6));
        let r = raw.get_ref();
        let list_of = |k: &'static str| r.str_list(k).map(|l| (l.span(), k));
        if !v4 && !v6 {
            // Blamed on what is written: the family, else the first address list.
            let (span, k) = r
                .str("family")
                .map(|f| (f.span(), "family"))
                .or_else(|| list_of("src"))
                .or_else(|| list_of("dst"))
                .unwrap_or((raw.span(), "family"));
            self.push(span, &p(k), "matches no traffic: its addresses (and family) leave no address family in which every list has a prefix; split it into one rule per family".into());
            return None;
        }
        let explicit6 = family == Some(Family::V6) || lists.iter().any(|l| !l.1.is_empty());
        let carries6 = refs
            .iter()
            .any(|i| all.get(*i).is_some_and(|u| u.ipv6.is_some()));
        if v6 && mode != Mode::Bypass && !carries6 {
            if explicit6 {
                // At the uplinks the rule names, else at what makes it match IPv6: the family
                // or the first list with an IPv6 prefix.
                let (span, k) = list_of("uplinks")
                    .or_else(|| {
                        r.str("family")
                            .filter(|_| family == Some(Family::V6))
                            .map(|f| (f.span(), "family"))
                    })
                    .or_else(|| list_of("src").filter(|_| !lists[0].1.is_empty()))
                    .or_else(|| list_of("dst").filter(|_| !lists[1].1.is_empty()))
                    .unwrap_or((raw.span(), "uplinks"));
                self.push(span, &p(k), "matches IPv6 traffic but none of its uplinks carries IPv6 (gateway6): name an uplink with IPv6, or use family = \"ipv4\"".into());
                return None;
            }
            v6 = false;
        }
        Some((v4, v6))
    }

    fn rule_name(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
        table: std::ops::Range<usize>,
        names: &mut BTreeSet<String>,
    ) -> Option<String> {
        let Some(n) = raw else {
            self.push(
                table,
                key,
                "missing key: every rule needs a name such as \"web\"".into(),
            );
            return None;
        };
        if !is_valid_name(n.get_ref()) {
            self.push(
                n.span(),
                key,
                format!(
                    "invalid name {:?}: use 1..=15 characters from a-z, 0-9, '_' and '-'",
                    n.get_ref()
                ),
            );
            return None;
        }
        if !names.insert(n.get_ref().clone()) {
            self.push(
                n.span(),
                key,
                format!("duplicate rule name {:?}", n.get_ref()),
            );
            return None;
        }
        Some(n.get_ref().clone())
    }

    /// `Some(None)` when no protocol is given.
    fn proto(&mut self, raw: Option<&Spanned<String>>, key: &str) -> Option<Option<Proto>> {
        let Some(s) = raw else { return Some(None) };
        match Proto::from_name(s.get_ref()) {
            Some(proto) => Some(Some(proto)),
            None => {
                self.push(
                    s.span(),
                    key,
                    format!(
                        "unknown protocol {:?}: expected \"tcp\", \"udp\" or \"icmp\"",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// Port matches only mean something for TCP and UDP.
    fn ports_need_tcp_or_udp(
        &mut self,
        r: &Table,
        proto: Option<Proto>,
        p: &dyn Fn(&str) -> String,
    ) -> bool {
        let message = match proto {
            Some(p) if p.has_ports() => return true,
            Some(_) => "ports need proto = \"tcp\" or \"udp\"",
            None => "ports need proto = \"tcp\" or \"udp\" in the same rule",
        };
        let mut ok = true;
        for k in ["sport", "dport"] {
            if let Some(v) = r.int_or_str_list(k) {
                self.push(v.span(), &p(k), message.into());
                ok = false;
            }
        }
        ok
    }

    fn mode(&mut self, raw: Option<&Spanned<String>>, key: &str) -> Option<Mode> {
        let Some(m) = raw else {
            return Some(Mode::Balance);
        };
        match m.get_ref().as_str() {
            "balance" => Some(Mode::Balance),
            "failover" => Some(Mode::Failover),
            "bypass" => Some(Mode::Bypass),
            other => {
                self.push(
                    m.span(),
                    key,
                    format!(
                        "unknown mode {other:?}: expected \"balance\", \"failover\" or \"bypass\""
                    ),
                );
                None
            }
        }
    }

    /// Indexes of the uplinks a rule names (all of them when it names none). `all` is `None`
    /// when the uplinks themselves are invalid; the names are then still checked against
    /// `declared` (the uplinks' names as written) for unknown ones and repeats.
    fn rule_uplinks(
        &mut self,
        raw: Option<&SpannedList>,
        mode: Option<Mode>,
        (declared, all): (&Declared, Option<&[Uplink]>),
        key: &str,
    ) -> Option<Vec<usize>> {
        let Some(list) = raw else {
            return all.map(|all| (0..all.len()).collect());
        };
        if mode == Some(Mode::Bypass) {
            self.push(
                list.span(),
                key,
                "mode \"bypass\" uses the main routing table; remove `uplinks`".into(),
            );
            return None;
        }
        if list.get_ref().is_empty() {
            self.push(
                list.span(),
                key,
                "must name at least one uplink (or remove the key to use all)".into(),
            );
            return None;
        }
        let mut idx = Vec::new();
        let mut listed = BTreeSet::new();
        let mut good = true;
        for (j, n) in list.get_ref().iter().enumerate() {
            let k = format!("{key}[{j}]");
            // The position among the uplinks as written is the index into the validated
            // ones (those exist only when every uplink is valid, in the same order).
            match declared.index.get(n.get_ref().as_str()) {
                Some(&x) if !listed.insert(x) => {
                    self.push(n.span(), &k, format!("{:?} is listed twice", n.get_ref()));
                    good = false;
                }
                Some(&x) => idx.push(x),
                None => {
                    let known = &declared.known;
                    let hint = crate::config::closest(n.get_ref(), known.iter().copied())
                        .map(|c| format!("did you mean {c:?}? "))
                        .unwrap_or_default();
                    self.push(
                        n.span(),
                        &k,
                        format!(
                            "no uplink named {:?} ({hint}known: {})",
                            n.get_ref(),
                            known.join(", ")
                        ),
                    );
                    good = false;
                }
            }
        }
        good.then_some(idx)
    }

    /// The IPv4 and the IPv6 prefixes of an address list.
    fn nets(
        &mut self,
        raw: Option<&SpannedList>,
        key: &str,
    ) -> Option<(Vec<Ipv4Net>, Vec<Ipv6Net>)> {
        let Some(list) = raw else {
            return Some((Vec::new(), Vec::new()));
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
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (j, s) in list.get_ref().iter().enumerate() {
            match s.get_ref().parse::<IpNet>() {
                Ok(IpNet::V4(n)) => v4.push(n),
                Ok(IpNet::V6(n)) => v6.push(n),
                Err(e) => {
                    self.push(
                        s.span(),
                        &format!("{key}[{j}]"),
                        format!(
                            "{e} (expected an address or CIDR such as \"192.168.0.0/24\" or \"2001:db8::/32\")"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some((v4, v6))
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
}
