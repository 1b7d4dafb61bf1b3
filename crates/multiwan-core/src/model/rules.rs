//! Validation of `[[rule]]`: names, address and port matches, protocol, mode and the uplinks
//! a rule refers to.

use std::collections::BTreeSet;

use super::names::is_valid_name;
use super::{Mode, Proto, Rule, Uplink, Validator};
use crate::config::{NumOrStr, Spanned, SpannedList, Table};
use crate::net::{Ipv4Net, PortRange};

impl Validator<'_> {
    pub(super) fn rules(
        &mut self,
        raw: &[Spanned<Table>],
        uplinks: Option<&[Uplink]>,
    ) -> Option<Vec<Rule>> {
        let mut ok = true;
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for (i, r) in raw.iter().enumerate() {
            match self.rule(i, r, uplinks, &mut names) {
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
        uplinks: Option<&[Uplink]>,
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
        let refs = self.rule_uplinks(r.str_list("uplinks"), mode, uplinks, &p("uplinks"));
        let rule = Rule {
            name: name?,
            src: src?,
            dst: dst?,
            proto: proto?,
            sport: sport?,
            dport: dport?,
            uplinks: refs?,
            mode: mode?,
        };
        ports_ok.then_some(rule)
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
        match s.get_ref().as_str() {
            "tcp" => Some(Some(Proto::Tcp)),
            "udp" => Some(Some(Proto::Udp)),
            "icmp" => Some(Some(Proto::Icmp)),
            other => {
                self.push(
                    s.span(),
                    key,
                    format!("unknown protocol {other:?}: expected \"tcp\", \"udp\" or \"icmp\""),
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
            Some(Proto::Tcp | Proto::Udp) => return true,
            Some(Proto::Icmp) => "ports need proto = \"tcp\" or \"udp\"",
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
    /// when the uplinks themselves are invalid; names are then still checked for duplicates.
    fn rule_uplinks(
        &mut self,
        raw: Option<&SpannedList>,
        mode: Option<Mode>,
        all: Option<&[Uplink]>,
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
        let mut good = true;
        for (j, n) in list.get_ref().iter().enumerate() {
            let k = format!("{key}[{j}]");
            match all.and_then(|all| all.iter().position(|u| &u.name == n.get_ref())) {
                Some(x) if idx.contains(&x) => {
                    self.push(n.span(), &k, format!("{:?} is listed twice", n.get_ref()));
                    good = false;
                }
                Some(x) => idx.push(x),
                None => {
                    if let Some(all) = all {
                        let known: Vec<_> = all.iter().map(|u| u.name.as_str()).collect();
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
                    }
                    good = false;
                }
            }
        }
        good.then_some(idx)
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
}
