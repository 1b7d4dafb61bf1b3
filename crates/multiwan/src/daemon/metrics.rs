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

use super::listen::{Limits, Protocol, Refusal};
use super::server::{self, Counters, Snapshot, RTT_BUCKETS};
use super::Event;
use crate::control::Status;

/// Longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a scrape's result is served to later scrapes.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

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
            .collect(),
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
        let st = &self.st;
        let each = |f: &dyn Fn(&crate::control::UplinkStatus) -> f64| -> Vec<(Labels, f64)> {
            st.uplinks.iter().map(|x| (uplink(&x.name), f(x))).collect()
        };
        gauges(
            &mut enc,
            "multiwan_uplink_up",
            "Whether the uplink takes new connections (1) or not (0).",
            each(&|x| f64::from(u8::from(x.usable))),
        )?;
        gauges(
            &mut enc,
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
            &mut enc,
            "multiwan_uplink_share_ratio",
            "Share of new connections the default policy gives the uplink.",
            each(&|x| x.share),
        )?;
        gauges(
            &mut enc,
            "multiwan_uplink_rtt_seconds",
            "Average probe round-trip time over the window.",
            st.uplinks
                .iter()
                .filter_map(|x| x.rtt_avg_ms.map(|r| (uplink(&x.name), r / 1000.0)))
                .collect(),
        )?;
        gauges(
            &mut enc,
            "multiwan_uplink_loss_ratio",
            "Probe loss over the window (0..1).",
            each(&|x| x.loss_percent / 100.0),
        )?;
        counters(
            &mut enc,
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
        self.histogram(&mut enc)?;
        counters(
            &mut enc,
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
        gauges(&mut enc, "multiwan_uplink_last_failover_seconds",
            "For the last failover: seconds from the first failed probe round to the kernel update.",
            self.counters.iter().filter_map(|(n, c)| c.last_failover_s.map(|f| (uplink(n), f))).collect())?;
        gauges(
            &mut enc,
            "multiwan_uplink_connections",
            "Live connections (conntrack entries) on the uplink.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.connections))
                .collect(),
        )?;
        counters(
            &mut enc,
            "multiwan_uplink_new_connections",
            "New connections assigned to the uplink since the ruleset was loaded.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.new_connections))
                .collect(),
        )?;
        counters(
            &mut enc,
            "multiwan_uplink_receive_bytes",
            "Bytes received on the uplink's interface.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.bytes_in))
                .collect(),
        )?;
        counters(
            &mut enc,
            "multiwan_uplink_transmit_bytes",
            "Bytes sent on the uplink's interface.",
            st.uplinks
                .iter()
                .map(|x| (uplink(&x.name), x.bytes_out))
                .collect(),
        )?;
        counters(
            &mut enc,
            "multiwan_rule_hits",
            "New connections that matched the rule.",
            st.rules
                .iter()
                .map(|r| (vec![("rule", r.name.clone())], r.hits))
                .collect(),
        )?;
        let mut m = enc.encode_descriptor(
            "multiwan_reconciles",
            "Kernel updates made by the daemon.",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter(&st.reconciles, None::<&Exemplar<NoLabelSet, f64>>)
    }
}

impl Exposition {
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
