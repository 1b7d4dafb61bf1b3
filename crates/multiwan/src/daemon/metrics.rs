//! The Prometheus endpoint: `GET /metrics` only, with a bounded request head, one scrape at a
//! time (concurrent scrapes wait for the one in flight and share its result, which is reused
//! for a second), and the text written by `prometheus-client`'s 0.0.4 encoder.
//!
//! Why single flight and a cache: a scrape reads the kernel (nft counters, interface
//! statistics, the conntrack table). Ten Prometheus servers, or a scraper stuck in a retry
//! loop, must not multiply that work.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, NoLabelSet,
};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;

use anyhow::{Context, Result};

use super::event::Event;
use super::listen::{self, Limits, Protocol, Refusal};
use super::server;
use super::snapshot::{Counters, Snapshot, RTT_BUCKETS};
use crate::control::Status;
use multiwan_core::order::Collect;

/// Longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a scrape's result is served to later scrapes.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

/// Bounds of the metrics listener.
pub const LIMITS: Limits = Limits {
    max_active: 16,
    max_pending: 64,
    max_request: MAX_HEAD,
    request_timeout: Duration::from_secs(5),
    write_timeout: Duration::from_secs(5),
};

/// Starts the Prometheus endpoint on `addr` (`GET /metrics`).
pub fn start(addr: std::net::SocketAddr, tx: Sender<Event>) -> Result<std::thread::JoinHandle<()>> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("binding metrics on {addr}"))?;
    let proto = MetricsHttp {
        tx,
        cache: SingleFlight::new(CACHE_FOR),
    };
    listen::spawn(listener, LIMITS, Arc::new(proto))
}

/// Where the request head ends (after the blank line), once it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a request head (pure).
pub fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        Route::NotFound
    } else if method != "GET" {
        Route::MethodNotAllowed
    } else {
        Route::Metrics
    }
}

fn response(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out += "Allow: GET\r\n";
    }
    out += "\r\n";
    out += body;
    out.into_bytes()
}

/// Computes a value at most once at a time and shares it for `max_age`.
#[derive(Debug)]
pub struct SingleFlight<T> {
    state: Mutex<Flight<T>>,
    done: Condvar,
    max_age: Duration,
}

#[derive(Debug)]
struct Flight<T> {
    last: Option<(Instant, T)>,
    busy: bool,
}

/// Clears `busy` however the computation ends (a panic included), so waiters never hang.
struct Landing<'a, T>(&'a SingleFlight<T>);

impl<T> Drop for Landing<'_, T> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        st.busy = false;
        self.0.done.notify_all();
    }
}

impl<T: Clone> SingleFlight<T> {
    pub fn new(max_age: Duration) -> Self {
        Self {
            state: Mutex::new(Flight {
                last: None,
                busy: false,
            }),
            done: Condvar::new(),
            max_age,
        }
    }

    /// The value computed less than `max_age` before `now`, the one in flight (waiting for
    /// it), or a fresh one from `compute`. Errors are not kept: the next caller tries again.
    pub fn get<E>(&self, now: Instant, compute: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((at, v)) = &st.last {
                if now.saturating_duration_since(*at) < self.max_age {
                    return Ok(v.clone());
                }
            }
            if !st.busy {
                break;
            }
            st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.busy = true;
        drop(st);
        let landing = Landing(self);
        let v = compute()?;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Stamped with the time it was asked for: its age is never underestimated.
        st.last = Some((now, v.clone()));
        drop(st);
        drop(landing);
        Ok(v)
    }
}

/// The metrics listener's protocol.
pub struct MetricsHttp {
    pub tx: Sender<Event>,
    pub cache: SingleFlight<Arc<String>>,
}

impl Protocol<TcpStream> for MetricsHttp {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn complete(&self, buf: &[u8]) -> Option<usize> {
        head_end(buf)
    }

    fn refusal(&self, why: Refusal, limits: &Limits) -> Vec<u8> {
        match why {
            Refusal::TooLarge => response(
                "431 Request Header Fields Too Large",
                "text/plain",
                &format!("request head larger than {} bytes\n", limits.max_request),
            ),
            Refusal::Timeout => response("408 Request Timeout", "text/plain", "request timeout\n"),
            Refusal::Busy | Refusal::Evicted => response(
                "503 Service Unavailable",
                "text/plain",
                &format!(
                    "too many connections (at most {} scrapes at once)\n",
                    limits.max_active
                ),
            ),
        }
    }

    fn serve(&self, mut s: TcpStream, head: &[u8]) {
        let out = match route(head) {
            Route::Metrics => {
                let text = self.cache.get(Instant::now(), || {
                    server::snapshot(&self.tx).map(|snap| Arc::new(render(&snap)))
                });
                match text {
                    Ok(t) => response(
                        "200 OK",
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        &t,
                    ),
                    Err(e) => {
                        response("503 Service Unavailable", "text/plain", &format!("{e:#}\n"))
                    }
                }
            }
            Route::NotFound => response("404 Not Found", "text/plain", "see /metrics\n"),
            Route::MethodNotAllowed => response(
                "405 Method Not Allowed",
                "text/plain",
                "only GET /metrics\n",
            ),
            Route::BadRequest => response("400 Bad Request", "text/plain", "bad request\n"),
        };
        let _ = s.write_all(&out);
    }
}

/// The Prometheus text exposition of a snapshot (reads the kernel's counters).
pub fn render(snap: &Snapshot) -> String {
    let exp = Exposition {
        st: server::status(snap),
        counters: snap
            .uplinks
            .iter()
            .map(|(n, u)| (n.clone(), u.counters.clone()))
            .collect_map(),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(exp));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// Everything one scrape reports, owned (the collector outlives no request).
#[derive(Debug)]
struct Exposition {
    st: Status,
    counters: BTreeMap<String, Counters>,
}

type Labels = Vec<(&'static str, String)>;

fn uplink(n: &str) -> Labels {
    vec![("uplink", n.to_string())]
}

fn gauges<V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, V)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in &samples {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

/// A counter family; `name` is without `_total`, which the encoder appends.
fn counters<V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, V)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in &samples {
        m.encode_family(labels)?
            .encode_counter(v, None::<&Exemplar<NoLabelSet, f64>>)?;
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        self.health(&mut enc)?;
        self.health6(&mut enc)?;
        self.histogram(&mut enc)?;
        self.traffic(&mut enc)
    }
}

impl Exposition {
    /// The IPv6 side of the uplinks that carry IPv6: their own state, share, RTT and loss
    /// (the `multiwan_uplink_*` families describe IPv4, as before IPv6 existed).
    fn health6(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let v6: Vec<(&str, &crate::control::FamilyStatus)> = self
            .st
            .uplinks
            .iter()
            .filter_map(|x| Some((x.name.as_str(), x.ipv6.as_ref()?)))
            .collect();
        if v6.is_empty() {
            return Ok(());
        }
        let each = |f: &dyn Fn(&crate::control::FamilyStatus) -> f64| -> Vec<(Labels, f64)> {
            v6.iter().map(|(n, x)| (uplink(n), f(x))).collect()
        };
        gauges(
            enc,
            "multiwan_uplink_ipv6_up",
            "Whether the uplink takes new IPv6 connections (1) or not (0).",
            each(&|x| f64::from(u8::from(x.usable))),
        )?;
        gauges(
            enc,
            "multiwan_uplink_ipv6_state",
            "The uplink's IPv6 health state: 1 for the current one.",
            v6.iter()
                .flat_map(|(n, x)| {
                    ["up", "degraded", "down"].map(|s| {
                        (
                            vec![("uplink", n.to_string()), ("state", s.to_string())],
                            u8::from(x.state == s) as u32,
                        )
                    })
                })
                .collect(),
        )?;
        gauges(
            enc,
            "multiwan_uplink_ipv6_share_ratio",
            "Share of new IPv6 connections the default policy gives the uplink.",
            each(&|x| x.share),
        )?;
        gauges(
            enc,
            "multiwan_uplink_ipv6_rtt_seconds",
            "Average IPv6 probe round-trip time over the window.",
            v6.iter()
                .filter_map(|(n, x)| x.rtt_avg_ms.map(|r| (uplink(n), r / 1000.0)))
                .collect(),
        )?;
        gauges(
            enc,
            "multiwan_uplink_ipv6_loss_ratio",
            "IPv6 probe loss over the window (0..1).",
            each(&|x| x.loss_percent / 100.0),
        )
    }

    /// State, share, RTT, loss and probe counts per uplink.
    fn health(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let st = &self.st;
        let each = |f: &dyn Fn(&crate::control::UplinkStatus) -> f64| -> Vec<(Labels, f64)> {
            st.uplinks.iter().map(|x| (uplink(&x.name), f(x))).collect()
        };
        gauges(
            enc,
            "multiwan_uplink_up",
            "Whether the uplink takes new connections (1) or not (0).",
            each(&|x| f64::from(u8::from(x.usable))),
        )?;
        gauges(
            enc,
            "multiwan_uplink_state",
            "The uplink's health state: 1 for the current one.",
            st.uplinks
                .iter()
                .flat_map(|x| {
                    ["up", "degraded", "down"].map(|s| {
                        (
                            vec![("uplink", x.name.clone()), ("state", s.to_string())],
                            u8::from(x.state == s) as u32,
                        )
                    })
                })
                .collect(),
        )?;
        gauges(
            enc,
            "multiwan_uplink_share_ratio",
            "Share of new connections the default policy gives the uplink.",
            each(&|x| x.share),
        )?;
        gauges(
            enc,
            "multiwan_uplink_rtt_seconds",
            "Average probe round-trip time over the window.",
            st.uplinks
                .iter()
                .filter_map(|x| x.rtt_avg_ms.map(|r| (uplink(&x.name), r / 1000.0)))
                .collect(),
        )?;
        gauges(
            enc,
            "multiwan_uplink_loss_ratio",
            "Probe loss over the window (0..1).",
            each(&|x| x.loss_percent / 100.0),
        )?;
        counters(
            enc,
            "multiwan_probes",
            "Probes sent, by result.",
            self.counters
                .iter()
                .flat_map(|(n, c)| {
                    [("ok", c.probes_ok), ("lost", c.probes_lost)]
                        .map(|(r, v)| (vec![("uplink", n.clone()), ("result", r.to_string())], v))
                })
                .collect(),
        )?;
        Ok(())
    }

    /// Transitions, failover time, connections, bytes, rule hits and kernel updates.
    fn traffic(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let st = &self.st;
        counters(
            enc,
            "multiwan_uplink_transitions",
            "State transitions, by the state entered.",
            self.counters
                .iter()
                .flat_map(|(n, c)| {
                    ["up", "degraded", "down"].map(|to| {
                        (
                            vec![("uplink", n.clone()), ("to", to.to_string())],
                            c.transitions.get(to).copied().unwrap_or(0),
                        )
                    })
                })
                .collect(),
        )?;
        gauges(enc, "multiwan_uplink_last_failover_seconds",
            "For the last failover: seconds from the first failed probe round to the kernel update.",
            self.counters.iter().filter_map(|(n, c)| c.last_failover_s.map(|f| (uplink(n), f))).collect())?;
        gauges(
            enc,
            "multiwan_uplink_connections",
            "Live connections (conntrack entries) on the uplink.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.connections))
                .collect(),
        )?;
        counters(
            enc,
            "multiwan_uplink_new_connections",
            "New connections assigned to the uplink since the ruleset was loaded.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.new_connections))
                .collect(),
        )?;
        counters(
            enc,
            "multiwan_uplink_receive_bytes",
            "Bytes received on the uplink's interface.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.bytes_in))
                .collect(),
        )?;
        counters(
            enc,
            "multiwan_uplink_transmit_bytes",
            "Bytes sent on the uplink's interface.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.bytes_out))
                .collect(),
        )?;
        counters(
            enc,
            "multiwan_rule_hits",
            "New connections that matched the rule.",
            st.rules
                .iter()
                .map(|r| (vec![("rule", r.name.clone())], r.hits))
                .collect(),
        )?;
        for (name, help, v) in [
            (
                "multiwan_reconciles",
                "Kernel updates made by the daemon.",
                st.reconciles,
            ),
            (
                "multiwan_kernel_update_failures",
                "Kernel updates that failed (each is retried).",
                st.kernel_failures,
            ),
        ] {
            enc.encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter(&v, None::<&Exemplar<NoLabelSet, f64>>)?;
        }
        let mut m = enc.encode_descriptor(
            "multiwan_kernel_update_failing",
            "1 while the kernel refuses the daemon's updates (it keeps the last one it took).",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&i64::from(st.kernel_error.is_some()))
    }
    fn histogram(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut m = enc.encode_descriptor(
            "multiwan_probe_rtt_seconds",
            "Probe round-trip times.",
            None,
            MetricType::Histogram,
        )?;
        for (n, c) in &self.counters {
            // The loop keeps cumulative counts; the encoder wants them per bucket.
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = RTT_BUCKETS
                .iter()
                .zip(c.rtt_buckets)
                .map(|(le, cum)| {
                    let b = (*le, cum.saturating_sub(below));
                    below = cum;
                    b
                })
                .collect();
            let labels = uplink(n);
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                c.rtt_sum,
                c.probes_ok,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn request_heads_are_routed() {
        assert_eq!(head_end(b"GET /metrics HTTP/1.0\r\n\r\nextra"), Some(25));
        assert_eq!(head_end(b"GET /metrics HTTP/1.0\n\n"), Some(23));
        assert_eq!(head_end(b"GET /metrics HTTP/1.0\r\nHost: x\r\n"), None);
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/9\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xff"), Route::BadRequest);
    }

    #[test]
    fn single_flight_computes_once_for_concurrent_callers_and_caches_for_max_age() {
        let sf = Arc::new(SingleFlight::new(Duration::from_secs(1)));
        let runs = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (sf, runs) = (sf.clone(), runs.clone());
                std::thread::spawn(move || {
                    sf.get(t0, || {
                        let n = runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(200));
                        Ok::<_, ()>(n)
                    })
                })
            })
            .collect();
        let got: Vec<usize> = threads
            .into_iter()
            .map(|t| t.join().expect("join").expect("ok"))
            .collect();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(got.iter().all(|g| *g == 0), "{got:?}");
        // Fresh: cached. Old: computed again. Errors are not kept.
        let again = |at| sf.get(at, || Ok::<_, ()>(runs.fetch_add(1, Ordering::SeqCst)));
        assert_eq!(again(t0 + Duration::from_millis(900)), Ok(0));
        assert_eq!(again(t0 + Duration::from_millis(1000)), Ok(1));
        let failed: Result<usize, &str> = sf.get(t0 + Duration::from_secs(5), || Err("no"));
        assert_eq!(failed, Err("no"));
        assert_eq!(again(t0 + Duration::from_secs(5)), Ok(2));
    }

    fn exposition() -> String {
        let up = crate::control::UplinkStatus {
            name: "isp1".into(),
            interface: "wan1".into(),
            state: "degraded".into(),
            reason: Some("high_loss".into()),
            detail: None,
            since: 0,
            tier: 1,
            weight: 1,
            share: 0.75,
            usable: true,
            disabled: false,
            rtt_last_ms: Some(12.0),
            rtt_avg_ms: Some(20.0),
            loss_percent: 5.0,
            targets: vec![],
            connections: 3,
            new_connections: 9,
            bytes_in: 1000,
            bytes_out: 2000,
            addresses: vec![],
            gateway: None,
            ipv6: None,
        };
        let st = Status {
            pid: 1,
            started: 0,
            config: "x".into(),
            method: "round-robin".into(),
            reconciles: 4,
            fail_open: false,
            kernel_failures: 7,
            kernel_error: Some(crate::control::KernelError {
                error: "injected".into(),
                since: 0,
                failures: 2,
                retry_in_ms: 200,
            }),
            uplinks: vec![up],
            rules: vec![crate::control::RuleStatus {
                name: "web \"80\"".into(),
                mode: "balance".into(),
                uplinks: vec![],
                hits: 2,
                now: String::new(),
            }],
        };
        let mut c = Counters {
            probes_ok: 3,
            probes_lost: 1,
            rtt_sum: 0.03,
            last_failover_s: Some(0.8),
            ..Counters::default()
        };
        // Cumulative, as the loop keeps them: 1 at <= 5 ms, 3 at <= 25 ms.
        for (i, n) in [0, 0, 1, 1, 3, 3, 3, 3, 3, 3].into_iter().enumerate() {
            c.rtt_buckets[i] = n;
        }
        c.transitions.insert("degraded".into(), 1);
        let exp = Exposition {
            st,
            counters: [("isp1".to_string(), c)].into_iter().collect(),
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(exp));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("encode");
        out
    }

    #[test]
    fn the_exposition_keeps_every_name_label_and_help_text() {
        let text = exposition();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("valid Prometheus text");
        let value = |name: &str, label: (&str, &str)| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
                .map(|s| match s.value {
                    prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        let u = ("uplink", "isp1");
        assert_eq!(value("multiwan_uplink_up", u), Some(1.0));
        assert_eq!(value("multiwan_uplink_share_ratio", u), Some(0.75));
        assert_eq!(value("multiwan_uplink_rtt_seconds", u), Some(0.02));
        assert_eq!(value("multiwan_uplink_loss_ratio", u), Some(0.05));
        assert_eq!(value("multiwan_uplink_connections", u), Some(3.0));
        assert_eq!(value("multiwan_uplink_new_connections_total", u), Some(9.0));
        assert_eq!(
            value("multiwan_uplink_receive_bytes_total", u),
            Some(1000.0)
        );
        assert_eq!(
            value("multiwan_uplink_transmit_bytes_total", u),
            Some(2000.0)
        );
        assert_eq!(value("multiwan_uplink_last_failover_seconds", u), Some(0.8));
        // Label values are escaped (prometheus-parse cannot read this one back; Prometheus can).
        assert!(
            text.contains("\nmultiwan_rule_hits_total{rule=\"web \\\"80\\\"\"} 2\n"),
            "{text}"
        );
        assert_eq!(value("multiwan_reconciles_total", ("", "")), None);
        assert!(text.contains("\nmultiwan_reconciles_total 4\n"), "{text}");
        assert!(
            text.contains("\nmultiwan_kernel_update_failures_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("\nmultiwan_kernel_update_failing 1\n"),
            "{text}"
        );
        assert!(text.contains("multiwan_uplink_state{uplink=\"isp1\",state=\"degraded\"} 1\n"));
        assert!(text.contains("multiwan_uplink_state{uplink=\"isp1\",state=\"up\"} 0\n"));
        assert!(text.contains("multiwan_probes_total{uplink=\"isp1\",result=\"lost\"} 1\n"));
        assert!(
            text.contains("multiwan_uplink_transitions_total{uplink=\"isp1\",to=\"degraded\"} 1\n")
        );
        // The histogram is cumulative again on the wire, with +Inf = every answered probe.
        assert!(
            text.contains("multiwan_probe_rtt_seconds_bucket{uplink=\"isp1\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("multiwan_probe_rtt_seconds_bucket{uplink=\"isp1\",le=\"0.025\"} 3\n")
        );
        assert!(text.contains("multiwan_probe_rtt_seconds_bucket{uplink=\"isp1\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("multiwan_probe_rtt_seconds_count{uplink=\"isp1\"} 3\n"));
        // The help texts, word for word, as before the move to prometheus-client.
        for (name, kind, help) in [
            ("multiwan_uplink_up", "gauge", "Whether the uplink takes new connections (1) or not (0)."),
            ("multiwan_uplink_state", "gauge", "The uplink's health state: 1 for the current one."),
            ("multiwan_uplink_share_ratio", "gauge", "Share of new connections the default policy gives the uplink."),
            ("multiwan_uplink_rtt_seconds", "gauge", "Average probe round-trip time over the window."),
            ("multiwan_uplink_loss_ratio", "gauge", "Probe loss over the window (0..1)."),
            ("multiwan_probes_total", "counter", "Probes sent, by result."),
            ("multiwan_probe_rtt_seconds", "histogram", "Probe round-trip times."),
            ("multiwan_uplink_transitions_total", "counter", "State transitions, by the state entered."),
            ("multiwan_uplink_last_failover_seconds", "gauge", "For the last failover: seconds from the first failed probe round to the kernel update."),
            ("multiwan_uplink_connections", "gauge", "Live connections (conntrack entries) on the uplink."),
            ("multiwan_uplink_new_connections_total", "counter", "New connections assigned to the uplink since the ruleset was loaded."),
            ("multiwan_uplink_receive_bytes_total", "counter", "Bytes received on the uplink's interface."),
            ("multiwan_uplink_transmit_bytes_total", "counter", "Bytes sent on the uplink's interface."),
            ("multiwan_rule_hits_total", "counter", "New connections that matched the rule."),
            ("multiwan_reconciles_total", "counter", "Kernel updates made by the daemon."),
            ("multiwan_kernel_update_failures_total", "counter", "Kernel updates that failed (each is retried)."),
            ("multiwan_kernel_update_failing", "gauge", "1 while the kernel refuses the daemon's updates (it keeps the last one it took)."),
        ] {
            assert!(
                text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
    }

    #[test]
    fn a_panicking_computation_does_not_hang_the_next_caller() {
        let sf = Arc::new(SingleFlight::new(Duration::from_secs(1)));
        let s2 = sf.clone();
        let t0 = Instant::now();
        let r =
            std::thread::spawn(move || s2.get(t0, || -> Result<u8, ()> { panic!("boom") })).join();
        assert!(r.is_err());
        assert_eq!(sf.get(t0, || Ok::<_, ()>(7)), Ok(7));
    }
}
