//! Validation of `[[uplink]]`: names, interfaces, gateways, weights, tiers, SNAT, and which
//! uplinks may share an interface. Health checks are in [`super::check`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::check::Gateways;
use super::names::{ifname_problem, uplink_name_problem};
use super::{Snat, Snat6, Uplink, Uplink6, Validator, MAX_TIER, MAX_WEIGHT};
use crate::config::{Spanned, Table};

impl Validator<'_> {
    pub(super) fn uplinks(&mut self, raw: &[Spanned<Table>]) -> Option<Vec<Uplink>> {
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
                Some(up) => out.push((i, up)),
                None => ok = false,
            }
        }
        // Two uplinks may share an interface only when they are told apart by gateway
        // (seed 004 §4.2.5: two routers on one Ethernet segment).
        // Per interface, the uplinks on it so far: the first, the first without a gateway
        // and the first with each gateway (a clash is with the earliest that matches).
        #[derive(Default)]
        struct OnInterface {
            first: usize,
            without_gateway: Option<usize>,
            by_gateway: BTreeMap<Ipv4Addr, usize>,
        }
        let mut on: BTreeMap<&str, OnInterface> = BTreeMap::new();
        for (j, (i, b)) in out.iter().enumerate() {
            let seen = on.entry(b.interface.as_str()).or_insert(OnInterface {
                first: j,
                ..OnInterface::default()
            });
            let earlier = match b.gateway {
                _ if seen.first == j => None,
                None => Some(seen.first),
                Some(g) => match (seen.without_gateway, seen.by_gateway.get(&g)) {
                    (Some(x), Some(&y)) => Some(x.min(y)),
                    (x, y) => x.or(y.copied()),
                },
            };
            match b.gateway {
                None => {
                    seen.without_gateway.get_or_insert(j);
                }
                Some(g) => {
                    seen.by_gateway.entry(g).or_insert(j);
                }
            }
            if let Some(a) = earlier.map(|x| &out[x].1) {
                let span = raw[*i]
                    .get_ref()
                    .str("interface")
                    .map(|s| s.span())
                    .unwrap_or(raw[*i].span());
                self.push(
                    span,
                    &format!("uplink[{i}].interface"),
                    format!(
                        "uplinks {:?} and {:?} both use {:?}; two uplinks can share an interface only with different gateways",
                        a.name, b.name, a.interface
                    ),
                );
                ok = false;
            }
        }
        ok.then(|| out.into_iter().map(|(_, u)| u).collect())
    }

    fn uplink(
        &mut self,
        i: usize,
        raw: &Spanned<Table>,
        names: &mut BTreeSet<String>,
    ) -> Option<Uplink> {
        let span = raw.span();
        let u = raw.get_ref();
        let p = |k: &str| format!("uplink[{i}].{k}");
        let name = self.uplink_name(u.str("name"), &p("name"), span.clone(), names);
        let interface = match u.str("interface") {
            None => {
                self.push(
                    span.clone(),
                    &p("interface"),
                    "missing key: the uplink's network interface, e.g. \"eth1\" or \"ppp0\"".into(),
                );
                None
            }
            Some(s) => match ifname_problem(s.get_ref()) {
                Some(problem) => {
                    self.push(s.span(), &p("interface"), problem);
                    None
                }
                None => Some(s.get_ref().clone()),
            },
        };
        let gateway_auto = u.str("gateway").is_some_and(|g| g.get_ref() == "auto");
        let gateway = match u.str("gateway") {
            None => Some(None),
            Some(_) if gateway_auto => Some(None),
            Some(g) => match g.get_ref().parse::<Ipv4Addr>() {
                Ok(a) if unusable_v4(a) => {
                    self.push(
                        g.span(),
                        &p("gateway"),
                        format!("{a} cannot be a gateway (it is {WHY_V4})"),
                    );
                    None
                }
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
        let weight = self.int_in(u.int("weight"), &p("weight"), 1, 1..=MAX_WEIGHT);
        let tier = self.int_in(u.int("tier"), &p("tier"), 1, 1..=MAX_TIER);
        let snat = self.snat(u.str("snat"), &p("snat"));
        let gateway6 = self.gateway6(u.str("gateway6"), &p("gateway6"));
        let snat6 = self.snat6(u.str("snat6"), &p("snat6"), u.str("gateway6").is_some());
        let checks = self.check(
            i,
            span,
            u.table("check"),
            Gateways {
                v4: gateway.flatten(),
                v4_auto: gateway_auto,
                v6: gateway6.flatten(),
                known: gateway.is_some() && gateway6.is_some(),
            },
        );
        let (check, check6) = checks?;
        let ipv6 = match (gateway6?, check6) {
            (Some(gateway), Some(check)) => Some(Uplink6 {
                gateway,
                snat: snat6?,
                check,
            }),
            _ => None,
        };
        Some(Uplink {
            name: name?,
            interface: interface?,
            gateway: gateway?,
            gateway_auto,
            weight: weight?,
            tier: tier?,
            snat: snat?,
            check,
            ipv6,
        })
    }

    /// `gateway6`: `Some(None)` for "auto", `Some(Some(a))` for an address, `None` inside
    /// `Some(..)`'s absence meaning no IPv6: the outer `Option` is the validity.
    #[allow(clippy::option_option)]
    fn gateway6(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
    ) -> Option<Option<Option<Ipv6Addr>>> {
        let Some(g) = raw else { return Some(None) };
        if g.get_ref() == "auto" {
            return Some(Some(None));
        }
        match g.get_ref().parse::<Ipv6Addr>() {
            Ok(a) if unusable_v6(a) => {
                self.push(
                    g.span(),
                    key,
                    format!("{a} cannot be a gateway (it is {WHY_V6})"),
                );
                None
            }
            Ok(a) => Some(Some(Some(a))),
            Err(_) => {
                self.push(
                    g.span(),
                    key,
                    format!("invalid IPv6 address {:?} (e.g. \"2001:db8:1::1\" or a link-local \"fe80::1\", or \"auto\" to follow the router advertisements; omit the key for an uplink without IPv6)", g.get_ref()),
                );
                None
            }
        }
    }

    fn snat6(
        &mut self,
        raw: Option<&Spanned<String>>,
        key: &str,
        has_gateway6: bool,
    ) -> Option<Snat6> {
        let Some(s) = raw else {
            return Some(Snat6::Auto);
        };
        if !has_gateway6 {
            self.push(
                s.span(),
                key,
                "has no effect without gateway6: this uplink carries no IPv6 (add gateway6, or remove snat6)".into(),
            );
            return None;
        }
        match s.get_ref().as_str() {
            "auto" => Some(Snat6::Auto),
            "none" => Some(Snat6::None),
            other => match other.parse::<Ipv6Addr>() {
                Ok(a) if unusable_v6(a) => {
                    self.push(
                        s.span(),
                        key,
                        format!("{a} cannot be a source address (it is {WHY_V6})"),
                    );
                    None
                }
                Ok(a) => Some(Snat6::To(a)),
                Err(_) => {
                    self.push(
                        s.span(),
                        key,
                        format!("invalid value {other:?}: expected \"auto\", \"none\" or an IPv6 address"),
                    );
                    None
                }
            },
        }
    }

    fn uplink_name(
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
                "missing key: every uplink needs a name such as \"isp1\"".into(),
            );
            return None;
        };
        if let Some(problem) = uplink_name_problem(n.get_ref()) {
            self.push(n.span(), key, problem);
            return None;
        }
        if !names.insert(n.get_ref().clone()) {
            self.push(
                n.span(),
                key,
                format!("duplicate uplink name {:?}", n.get_ref()),
            );
            return None;
        }
        Some(n.get_ref().clone())
    }

    fn snat(&mut self, raw: Option<&Spanned<String>>, key: &str) -> Option<Snat> {
        let Some(s) = raw else {
            return Some(Snat::Auto);
        };
        match s.get_ref().as_str() {
            "auto" => Some(Snat::Auto),
            "none" => Some(Snat::None),
            other => match other.parse::<Ipv4Addr>() {
                Ok(a) if unusable_v4(a) => {
                    self.push(
                        s.span(),
                        key,
                        format!("{a} cannot be a source address (it is {WHY_V4})"),
                    );
                    None
                }
                Ok(a) => Some(Snat::To(a)),
                Err(_) => {
                    self.push(
                        s.span(),
                        key,
                        format!(
                            "invalid value {other:?}: expected \"auto\", \"none\" or an IPv4 address"
                        ),
                    );
                    None
                }
            },
        }
    }
}

/// Why [`unusable_v4`] refuses an address.
const WHY_V4: &str = "unspecified, loopback, multicast or broadcast";
/// Why [`unusable_v6`] refuses an address.
const WHY_V6: &str = "unspecified, loopback, multicast or IPv4-mapped";

/// Whether `a` can be neither a next hop nor a source address on an uplink: `0.0.0.0`,
/// `127.0.0.0/8`, `224.0.0.0/4` and `255.255.255.255` (the kernel refuses such a gateway, and
/// replies to such a source never come back). Link-local `169.254.0.0/16` is a real address.
fn unusable_v4(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()
}

/// Whether `a` can be neither a next hop nor a source address: `::`, `::1`, `ff00::/8`, and
/// an IPv4-mapped `::ffff:a.b.c.d`, which the kernel treats as the IPv4 address (an IPv6
/// probe of one is an IPv4 probe, and never sees IPv6 fail).
fn unusable_v6(a: Ipv6Addr) -> bool {
    a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.to_ipv4_mapped().is_some()
}

/// Why `ip` cannot be probed over an uplink, or `None` when it can: the addresses that can be
/// neither a gateway nor a source either.
pub(super) fn unprobeable(ip: std::net::IpAddr) -> Option<&'static str> {
    match ip {
        std::net::IpAddr::V4(a) => unusable_v4(a).then_some(WHY_V4),
        std::net::IpAddr::V6(a) => unusable_v6(a).then_some(WHY_V6),
    }
}
