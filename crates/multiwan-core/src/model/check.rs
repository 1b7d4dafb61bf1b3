//! Validation of `[uplink.check]`: method, targets, and the timing settings bounded against
//! each other (see [`super::check_limits`] for the limits and their reasons), then the
//! optional quality limits.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use super::{check_defaults, check_limits, Check, CheckMethod, Quality, Validator};
use crate::config::{RawNumber, Spanned, SpannedList, Table};
use crate::duration::{self, Human};

/// The timing keys of one check, with whether (and where) each was written.
struct Timing<'t> {
    raw: &'t Table,
    /// The `[uplink.check]` table, or the uplink when there is none.
    span: Range<usize>,
    prefix: String,
    interval: Duration,
    timeout: Duration,
    down_after: u32,
    up_after: u32,
}

impl Timing<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.prefix)
    }

    /// The span of the first of `keys` that was written (the check table otherwise).
    fn span_of(&self, keys: &[&str]) -> (Range<usize>, String) {
        for k in keys {
            let span = self
                .raw
                .str(k)
                .map(|v| v.span())
                .or_else(|| self.raw.int(k).map(|v| v.span()));
            if let Some(span) = span {
                return (span, self.key(k));
            }
        }
        (self.span.clone(), self.key(keys[0]))
    }
}

impl Validator<'_> {
    /// A duration key (`"200ms"`), 1ms..=1h, or `default` when absent.
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

    pub(super) fn check(
        &mut self,
        i: usize,
        uplink_span: Range<usize>,
        raw: Option<&Spanned<Table>>,
        gateways: Gateways,
    ) -> Option<(Check, Option<Check>)> {
        let prefix = format!("uplink[{i}].check");
        let p = |k: &str| format!("{prefix}.{k}");
        let empty = Table::default();
        let (c, span) = match raw {
            Some(r) => (r.get_ref(), r.span()),
            None => (&empty, uplink_span),
        };
        let method = self.method(c.str("method"), &p("method"));
        let interval = self.duration(c.str("interval"), &p("interval"), check_defaults::INTERVAL);
        // The default timeout never breaks the rounds-in-flight bound of a short interval.
        let default_timeout = interval.map_or(check_defaults::TIMEOUT, |i| {
            check_defaults::TIMEOUT.min(i * check_limits::MAX_ROUNDS_IN_FLIGHT)
        });
        let timeout = self.duration(c.str("timeout"), &p("timeout"), default_timeout);
        let rounds = 1..=check_limits::MAX_ROUNDS;
        let down_after = self.int_in(
            c.int("down_after"),
            &p("down_after"),
            check_defaults::DOWN_AFTER,
            rounds.clone(),
        );
        let up_after = self.int_in(
            c.int("up_after"),
            &p("up_after"),
            check_defaults::UP_AFTER,
            rounds,
        );
        // The targets, the timing and the quality are checked independently, so one run of
        // `check` reports all of their errors.
        let target_key = p("targets");
        let targets = method.and_then(|method| {
            self.targets(
                c.str_list("targets"),
                method,
                gateways,
                span.clone(),
                &target_key,
            )
        });
        // min_targets applies to each family, capped at that family's number of targets
        // (unknown while the targets are invalid: then it is checked once they are fixed).
        let min_targets = match (c.int("min_targets"), &targets) {
            (None, _) => Some(check_defaults::MIN_TARGETS),
            (Some(v), Some((t4, t6))) => {
                let most = t4.len().max(t6.as_ref().map_or(0, Vec::len)).max(1);
                self.int_in(Some(v), &p("min_targets"), 1, 1..=(most as u32))
            }
            (Some(_), None) => None,
        };
        let timing = Timing {
            raw: c,
            span,
            prefix,
            interval: interval?,
            timeout: timeout?,
            down_after: down_after?,
            up_after: up_after?,
        };
        let timing_ok = self.timing(&timing);
        // A window measured in rounds of a rejected interval would only add noise.
        let quality = self.quality(&timing, timing_ok)?;
        let (method, (targets, targets6)) = (method?, targets?);
        let min_targets = min_targets?;
        let of = |targets: Vec<SocketAddr>| Check {
            method,
            min_targets: min_targets.min(targets.len() as u32).max(1),
            targets,
            quality,
            interval: timing.interval,
            timeout: timing.timeout,
            down_after: timing.down_after,
            up_after: timing.up_after,
        };
        timing_ok.then(|| (of(targets), targets6.map(of)))
    }

    fn method(&mut self, raw: Option<&Spanned<String>>, key: &str) -> Option<CheckMethod> {
        let Some(m) = raw else {
            return Some(CheckMethod::Icmp);
        };
        match m.get_ref().as_str() {
            "icmp" => Some(CheckMethod::Icmp),
            "tcp" => Some(CheckMethod::Tcp),
            "dns" => Some(CheckMethod::Dns),
            other => {
                self.push(
                    m.span(),
                    key,
                    format!("unknown method {other:?}: expected \"icmp\", \"tcp\" or \"dns\""),
                );
                None
            }
        }
    }

    /// Interval, timeout, down_after and up_after against each other; every violation is
    /// reported at the key most likely to be wrong that was written.
    fn timing(&mut self, t: &Timing) -> bool {
        use check_limits::*;
        let mut ok = true;
        let (interval, timeout) = (t.interval, t.timeout);
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            let (span, key) = t.span_of(&["interval"]);
            self.push(span, &key, format!(
                "{} is out of range (expected {}..={}): probing more often floods the target, less often notices nothing",
                Human(interval), Human(MIN_INTERVAL), Human(MAX_INTERVAL)
            ));
            return false;
        }
        if timeout > interval * MAX_ROUNDS_IN_FLIGHT {
            let (span, key) = t.span_of(&["timeout", "interval"]);
            self.push(span, &key, format!(
                "timeout {} is longer than {MAX_ROUNDS_IN_FLIGHT} × interval ({}): at most {MAX_ROUNDS_IN_FLIGHT} probe rounds may be in flight; lower timeout or raise interval",
                Human(timeout), Human(interval * MAX_ROUNDS_IN_FLIGHT)
            ));
            ok = false;
        }
        let detection = interval * t.down_after + timeout;
        // With a timeout already rejected, the detection time would repeat that message.
        if ok && detection > MAX_DETECTION {
            let (span, key) = t.span_of(&["down_after", "interval", "timeout"]);
            self.push(span, &key, format!(
                "a dead uplink would be noticed only after down_after × interval + timeout = {} × {} + {} = {}, more than {}; lower down_after or interval",
                t.down_after, Human(interval), Human(timeout), Human(detection), Human(MAX_DETECTION)
            ));
            ok = false;
        }
        let recovery = interval * t.up_after;
        if recovery > MAX_DETECTION {
            let (span, key) = t.span_of(&["up_after", "interval"]);
            self.push(span, &key, format!(
                "a recovered uplink would come back only after up_after × interval = {} × {} = {}, more than {}; lower up_after or interval",
                t.up_after, Human(interval), Human(recovery), Human(MAX_DETECTION)
            ));
            ok = false;
        }
        ok
    }

    fn percent(&mut self, v: Option<&Spanned<RawNumber>>, key: &str) -> Option<Option<f64>> {
        let Some(v) = v else { return Some(None) };
        let x = v.get_ref().as_f64();
        if !(0.0..=100.0).contains(&x) {
            let shown = self.shown(&v.span(), x);
            self.push(
                v.span(),
                key,
                format!("{shown} is out of range (expected a percentage 0..=100)"),
            );
            return None;
        }
        Some(Some(x))
    }

    fn optional_duration(
        &mut self,
        v: Option<&Spanned<String>>,
        key: &str,
    ) -> Option<Option<Duration>> {
        match v {
            None => Some(None),
            Some(v) => self.duration(Some(v), key, Duration::ZERO).map(Some),
        }
    }

    fn quality(&mut self, t: &Timing, check_window: bool) -> Option<Option<Quality>> {
        let c = t.raw;
        let max_loss = self.percent(c.number("max_loss"), &t.key("max_loss"));
        let recover_loss = self.percent(c.number("recover_loss"), &t.key("recover_loss"));
        let max_rtt = self.optional_duration(c.str("max_rtt"), &t.key("max_rtt"));
        let recover_rtt = self.optional_duration(c.str("recover_rtt"), &t.key("recover_rtt"));
        let window = self.duration(c.str("window"), &t.key("window"), check_defaults::WINDOW);
        let (max_loss, recover_loss, max_rtt, recover_rtt, window) =
            (max_loss?, recover_loss?, max_rtt?, recover_rtt?, window?);
        if max_loss.is_none() && max_rtt.is_none() {
            for k in ["recover_loss", "recover_rtt"] {
                let span = c
                    .number(k)
                    .map(|v| v.span())
                    .or_else(|| c.str(k).map(|v| v.span()));
                if let Some(span) = span {
                    self.push(
                        span,
                        &t.key(k),
                        format!("has no effect without max_{}", &k[8..]),
                    );
                    return None;
                }
            }
            return Some(None);
        }
        if let (Some(m), Some(r), Some(v)) = (max_loss, recover_loss, c.number("recover_loss")) {
            if r > m {
                self.push(
                    v.span(),
                    &t.key("recover_loss"),
                    format!("{r} must not be above max_loss ({m})"),
                );
                return None;
            }
        }
        if let (Some(m), Some(v)) = (max_rtt, c.str("max_rtt")) {
            // The average RTT is over answered probes, and an answer after the timeout is a
            // loss: a limit at or above the timeout would never trigger.
            if m >= t.timeout {
                self.push(
                    v.span(),
                    &t.key("max_rtt"),
                    format!(
                        "max_rtt {} can never be exceeded: answers later than timeout ({}) count as lost, not slow; lower max_rtt or raise timeout",
                        Human(m),
                        Human(t.timeout)
                    ),
                );
                return None;
            }
        }
        if let (Some(m), Some(r), Some(v)) = (max_rtt, recover_rtt, c.str("recover_rtt")) {
            if r > m {
                self.push(
                    v.span(),
                    &t.key("recover_rtt"),
                    "must not be above max_rtt".into(),
                );
                return None;
            }
        }
        let rounds = if check_window {
            self.window_rounds(t, window)?
        } else {
            1
        };
        Some(Some(Quality {
            max_loss,
            max_rtt,
            recover_loss: recover_loss.unwrap_or(max_loss.unwrap_or(0.0) / 2.0),
            recover_rtt,
            window: rounds,
        }))
    }

    /// The window in rounds: at least one, at most [`check_limits::MAX_WINDOW_ROUNDS`].
    fn window_rounds(&mut self, t: &Timing, window: Duration) -> Option<usize> {
        let rounds = window.as_millis() / t.interval.as_millis().max(1);
        let (span, key) = t.span_of(&["window", "interval"]);
        let written = if t.raw.str("window").is_some() {
            ""
        } else {
            " (the default)"
        };
        if rounds < 1 {
            self.push(span, &key, format!(
                "window {}{written} is shorter than interval {}: it must hold at least one probe round",
                Human(window), Human(t.interval)
            ));
            return None;
        }
        if rounds > check_limits::MAX_WINDOW_ROUNDS {
            self.push(span, &key, format!(
                "window {}{written} holds {rounds} rounds of {}; at most {} are kept: shorten window or raise interval",
                Human(window), Human(t.interval), check_limits::MAX_WINDOW_ROUNDS
            ));
            return None;
        }
        usize::try_from(rounds).ok()
    }

    /// The targets, split by family: the IPv4 ones, and the IPv6 ones when the uplink carries
    /// IPv6. A family without targets probes its gateway; one without a known gateway needs
    /// targets.
    fn targets(
        &mut self,
        raw: Option<&SpannedList>,
        method: CheckMethod,
        gw: Gateways,
        span: Range<usize>,
        key: &str,
    ) -> Option<(Vec<SocketAddr>, Option<Vec<SocketAddr>>)> {
        let mut ok = true;
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        if let Some(list) = raw {
            if list.get_ref().is_empty() {
                self.push(list.span(), key, "must list at least one target".into());
                return None;
            }
            // Each address and port with the index it was first listed at: probing one twice
            // would count one answer as two targets' (min_targets).
            let mut seen: BTreeMap<SocketAddr, (usize, &str)> = BTreeMap::new();
            for (j, t) in list.get_ref().iter().enumerate() {
                let parsed = target(t.get_ref(), method).and_then(|a| match seen.get(&a) {
                    Some(&(first, written)) => {
                        Err(listed_twice(t.get_ref(), a, key, first, written))
                    }
                    None => Ok(a),
                });
                match parsed {
                    Ok(a) if a.is_ipv6() && gw.v6.is_none() && gw.known => {
                        self.push(t.span(), &format!("{key}[{j}]"), format!(
                            "{:?} is an IPv6 target but this uplink carries no IPv6: add gateway6 (an address or \"auto\"), or remove the target",
                            t.get_ref()
                        ));
                        ok = false;
                    }
                    Ok(a) => {
                        seen.insert(a, (j, t.get_ref()));
                        if a.is_ipv6() {
                            v6.push(a);
                        } else {
                            v4.push(a);
                        }
                    }
                    Err(m) => {
                        self.push(t.span(), &format!("{key}[{j}]"), m);
                        ok = false;
                    }
                }
            }
        }
        // With an invalid gateway key what a family would default to is unknown: only the
        // targets' own syntax is checked (the gateway's error is already reported).
        if !ok || !gw.known {
            return None;
        }
        let v4 = self.default_target(
            v4,
            gw.v4.map(IpAddr::V4),
            method,
            gw.v4_auto,
            &span,
            key,
            "",
        )?;
        let v6 = match gw.v6 {
            None => None,
            Some(g) => Some(self.default_target(
                v6,
                g.map(IpAddr::V6),
                method,
                g.is_none(),
                &span,
                key,
                "6",
            )?),
        };
        Some((v4, v6))
    }

    /// `targets` as given, or the gateway as the only target when none of this family is.
    #[allow(clippy::too_many_arguments)]
    fn default_target(
        &mut self,
        targets: Vec<SocketAddr>,
        gateway: Option<IpAddr>,
        method: CheckMethod,
        gateway_auto: bool,
        span: &Range<usize>,
        key: &str,
        six: &str,
    ) -> Option<Vec<SocketAddr>> {
        if !targets.is_empty() {
            return Some(targets);
        }
        let default_port = match method {
            CheckMethod::Icmp => Some(0),
            CheckMethod::Dns => Some(check_defaults::DNS_PORT),
            CheckMethod::Tcp => None,
        };
        let missing = if six.is_empty() {
            "missing key".to_string()
        } else {
            "missing IPv6 targets".to_string()
        };
        let problem = match (gateway, default_port) {
            (Some(g), Some(port)) => return Some(vec![SocketAddr::new(g, port)]),
            (None, _) if gateway_auto => format!("{missing}: with gateway{six} = \"auto\" the gateway is only known at run time; list targets to probe"),
            (None, _) => format!("{missing}: an uplink without a gateway needs explicit check targets"),
            (Some(_), None) => format!("{missing}: method \"tcp\" needs targets written as \"ip:port\""),
        };
        self.push(span.clone(), key, problem);
        None
    }
}

/// The gateways a check may default to.
pub(super) struct Gateways {
    pub(super) v4: Option<Ipv4Addr>,
    pub(super) v4_auto: bool,
    /// `None`: no IPv6; `Some(None)`: `gateway6 = "auto"`.
    pub(super) v6: Option<Option<Ipv6Addr>>,
    /// False when `gateway` or `gateway6` is invalid (the fields above then say nothing).
    pub(super) known: bool,
}

/// Why target `written` (socket address `a`) is refused: `key[first]` (`first_written`)
/// already probes that address and port.
fn listed_twice(
    written: &str,
    a: SocketAddr,
    key: &str,
    first: usize,
    first_written: &str,
) -> String {
    if written == first_written {
        format!("{written:?} is listed twice")
    } else {
        format!("{written:?} is listed twice: {key}[{first}] {first_written:?} is also {a}")
    }
}

/// One probe target as written for `method`: an address for icmp, `ip:port` for tcp
/// (`[v6]:port` for IPv6), an address or `ip:port` for dns.
fn target(s: &str, method: CheckMethod) -> Result<SocketAddr, String> {
    let a = target_syntax(s, method)?;
    match super::uplink::unprobeable(a.ip()) {
        Some(why) => Err(format!(
            "{s:?} cannot be probed over an uplink (it is {why})"
        )),
        None => Ok(a),
    }
}

/// [`target`]'s syntax: the address and port as written for `method`.
fn target_syntax(s: &str, method: CheckMethod) -> Result<SocketAddr, String> {
    match method {
        CheckMethod::Icmp => s
            .parse::<IpAddr>()
            .map(|a| SocketAddr::new(a, 0))
            .map_err(|_| {
                format!(
                    "invalid target {s:?}: icmp targets are addresses such as \"10.37.1.1\" or \"2001:db8::1\""
                )
            }),
        CheckMethod::Tcp => match s.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => Err(format!("invalid target {s:?}: port 0 cannot be probed")),
            Ok(a) => Ok(a),
            Err(_) => Err(format!(
                "invalid target {s:?}: tcp targets are written \"ip:port\", e.g. \"10.37.1.1:443\" or \"[2001:db8::1]:443\""
            )),
        },
        CheckMethod::Dns => match s.parse::<SocketAddr>().or_else(|_| {
            s.parse::<IpAddr>()
                .map(|a| SocketAddr::new(a, check_defaults::DNS_PORT))
        }) {
            Ok(a) if a.port() == 0 => Err(format!("invalid target {s:?}: port 0 cannot be probed")),
            Ok(a) => Ok(a),
            Err(_) => Err(format!(
                "invalid target {s:?}: dns targets are resolver addresses, \"ip\" or \"ip:port\""
            )),
        },
    }
}
