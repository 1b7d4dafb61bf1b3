//! The control interface: a unix socket in the run directory (mode 0600, root only; 0660 for
//! `[daemon] control_group`), one JSON request per connection and JSON Lines back. These types are the documented,
//! versioned wire format shared by the daemon and the CLI — not dumps of internal structs —
//! and the same types are what `--json` prints.
//!
//! Request:  `{"version":1,"request":"status"}` (also `flows`, `explain`, `watch`, `uplink`).
//! Response: `{"version":1,"ok":true,"data":{…}}` or `{"version":1,"ok":false,"error":"…"}`
//! (with `"kind":"usage"` when the request names what does not exist or describes nothing: the
//! CLI exits 2 as for a bad command line); `watch` keeps sending one
//! `{"version":1,"ok":true,"data":{…event…}}` line per event.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use multiwan_core::explain::{
    explain_routed, parse_proto, Health, Lookups, Query, QueryError, Verdict,
};
use multiwan_core::model::{Config, Mode};
use multiwan_core::Facts;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Version of the wire format. Bumped on incompatible changes only; fields may be added.
pub const VERSION: u32 = 1;
/// File name of the socket inside the run directory.
pub const SOCKET: &str = "multiwan.sock";
/// Longest request line the daemon reads (the newline included). Real requests are under
/// 300 bytes; the bound keeps a client from making the daemon buffer without limit.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Path of the control socket for a run directory.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET)
}

/// A request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    Flows {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uplink: Option<String>,
    },
    Explain(ExplainQuery),
    Watch,
    Uplink {
        name: String,
        enable: bool,
    },
}

/// The envelope around every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

impl Request {
    /// Whether the request only reads (what `[daemon] control_group` members may ask).
    pub fn read_only(&self) -> bool {
        !matches!(self, Request::Uplink { .. })
    }
}

/// Parses one request line (with or without its newline). Pure: it checks the size, UTF-8,
/// the JSON, and the protocol version before the request itself, so a newer client gets a
/// version error rather than a parse error. The error is the text sent back to the client.
pub fn parse_request(bytes: &[u8]) -> std::result::Result<Envelope, String> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "request too large: more than {MAX_REQUEST_BYTES} bytes"
        ));
    }
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|e| format!("bad request: not UTF-8 ({e})"))?;
    let v: Version = serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))?;
    if v.version != VERSION {
        return Err(format!(
            "this daemon speaks control protocol {VERSION}, the request {}",
            v.version
        ));
    }
    serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))
}

/// Only the protocol version of a request or response line, read before the rest.
#[derive(Deserialize)]
struct Version {
    version: u32,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response<T> {
    pub version: u32,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure `error` is; absent: a runtime failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
}

/// The kind of an error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request names what does not exist (an uplink) or describes nothing (a connection
    /// of two families): the asker's mistake, exit 2 like a bad command line.
    Usage,
}

/// An error answer of kind [`ErrorKind::Usage`], as [`parse_response`] returns it (inside
/// the `anyhow::Error`, for the CLI to map to exit 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A failed request: its message, and whether it is the asker's mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub message: String,
    pub usage: bool,
}

impl RequestError {
    /// The asker's mistake (an unknown name, a query that describes nothing).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            usage: true,
        }
    }

    /// The answer line's envelope.
    pub fn response(&self) -> Response<()> {
        let mut r = Response::err(self.message.clone());
        if self.usage {
            r.kind = Some(ErrorKind::Usage);
        }
        r
    }
}

impl<T> Response<T> {
    pub fn ok(data: T) -> Self {
        Self {
            version: VERSION,
            ok: true,
            data: Some(data),
            error: None,
            kind: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            version: VERSION,
            ok: false,
            data: None,
            error: Some(msg.into()),
            kind: None,
        }
    }
}

/// `status`: the daemon, every uplink, every rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// Unix time the daemon started.
    pub started: u64,
    pub config: String,
    /// Balance method (`round-robin`, …).
    pub method: String,
    /// Kernel updates since start.
    pub reconciles: u64,
    /// Every uplink is down by probes alone, and the ones in use stay in use (fail-open).
    #[serde(default)]
    pub fail_open: bool,
    /// Kernel updates that failed since start (each retried; see `kernel_error`).
    #[serde(default)]
    pub kernel_failures: u64,
    /// The kernel refuses the daemon's updates now: the last plan it took stays installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_error: Option<KernelError>,
    pub uplinks: Vec<UplinkStatus>,
    pub rules: Vec<RuleStatus>,
}

/// A kernel update failing now, in `status` and `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelError {
    /// The error, as logged.
    pub error: String,
    /// Unix time of the first failure with this error.
    pub since: u64,
    /// Failures in a row with this error.
    pub failures: u64,
    /// Milliseconds from the last failure to the next try (it doubles, up to 5 s).
    pub retry_in_ms: u64,
}

/// One uplink in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    pub interface: String,
    /// `up`, `degraded` or `down`.
    pub state: String,
    /// Machine-readable reason when not up (`probes_failing`, `link_down`, …).
    pub reason: Option<String>,
    /// Human-readable reason.
    pub detail: Option<String>,
    /// Unix time of the last state change.
    pub since: u64,
    pub tier: u32,
    pub weight: u32,
    /// Share of new connections the default policy gives it now (0..=1).
    pub share: f64,
    /// Takes new connections now.
    pub usable: bool,
    /// Disabled by `multiwan uplink NAME disable`.
    pub disabled: bool,
    pub rtt_last_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    /// Probe loss over the window, percent.
    pub loss_percent: f64,
    pub targets: Vec<TargetStatus>,
    /// Live connections (conntrack entries with this uplink's mark).
    pub connections: u64,
    /// New connections assigned since the ruleset was loaded (nft counter).
    pub new_connections: u64,
    /// Interface byte counters.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub addresses: Vec<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    /// Its IPv6 side, when it carries IPv6 (`gateway6`): health of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyStatus>,
}

/// An uplink's IPv6 side in `status`: its own state, reason, RTT, loss and targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyStatus {
    /// `up`, `degraded` or `down`.
    pub state: String,
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// Unix time of the last state change.
    pub since: u64,
    /// Share of new IPv6 connections the default policy gives it now (0..=1).
    pub share: f64,
    /// Takes new IPv6 connections now.
    pub usable: bool,
    pub rtt_last_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub loss_percent: f64,
    pub targets: Vec<TargetStatus>,
    /// Global IPv6 addresses of the interface.
    pub addresses: Vec<std::net::Ipv6Addr>,
    /// The IPv6 gateway: fixed, or learned from router advertisements.
    pub gateway: Option<std::net::Ipv6Addr>,
}

/// One probe target in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub target: String,
    /// The target fails on every uplink at once while they work: it is not counted.
    #[serde(default)]
    pub suspect: bool,
    pub loss_percent: f64,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_last_ms: Option<f64>,
}

/// One rule in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub mode: String,
    pub uplinks: Vec<String>,
    /// New connections that matched it (nft counter).
    pub hits: u64,
    /// Where its new connections go now, e.g. `isp2` or `isp1 75%, isp2 25%`.
    pub now: String,
}

/// One connection in `flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// The uplink it uses; `None` for connections multiwan did not mark.
    pub uplink: Option<String>,
    pub proto: String,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The source address after NAT, as the internet sees it.
    pub nat_src: IpAddr,
    /// Bytes sent by the originator / received from the responder.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Seconds since the connection started (when the kernel keeps timestamps).
    pub age_s: Option<f64>,
}

/// What to explain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainQuery {
    /// IPv4 or IPv6: the family of the connection.
    pub src: IpAddr,
    #[serde(default)]
    pub dst: Option<IpAddr>,
    #[serde(default)]
    pub proto: Option<String>,
    #[serde(default)]
    pub sport: Option<u16>,
    #[serde(default)]
    pub dport: Option<u16>,
}

/// The answer of `explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainInfo {
    /// The matching rule; `None` means the default policy.
    pub rule: Option<String>,
    pub mode: String,
    pub method: String,
    pub candidates: Vec<Candidate>,
    pub excluded: Vec<Excluded>,
    /// `uplink` (exactly `uplink`), `shares` (one of `shares`), `main`, `none`, or
    /// `not_balanced` (never balanced: `not_balanced` says why).
    pub verdict: String,
    pub uplink: Option<String>,
    pub shares: Vec<Candidate>,
    /// The candidates are fail-open's: every uplink fails its probes, and the ones in use
    /// stay in use (as the kernel does).
    #[serde(default)]
    pub fail_open: bool,
    /// Why the connection is never balanced (verdict `not_balanced`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_balanced: Option<NotBalancedInfo>,
    /// No interface facts (`explain -c`): whether the destination is the router's or on a
    /// connected subnet (never balanced), or the source the router's own, was not told.
    #[serde(default)]
    pub facts_unknown: bool,
}

/// Why a connection is not balanced: it leaves (or is delivered) by main's routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotBalancedInfo {
    /// `local`, `broadcast`, `multicast`, `link_local`, `router_own`, `uplink_subnet` or
    /// `other_subnet`.
    pub kind: String,
    /// The sentence, e.g. "10.37.1.1 is on isp1's connected subnet 10.37.1.0/24; it
    /// leaves by main's route via eth1".
    pub reason: String,
    /// The interface main's route leaves by (the subnet kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

/// An uplink with its weight (candidates) or share (0..=1, shares).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub uplink: String,
    pub weight: f64,
}

/// An uplink that is not a candidate, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Excluded {
    pub uplink: String,
    pub reason: String,
}

/// One `watch` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// An uplink changed state.
    Transition {
        time_ms: u64,
        uplink: String,
        /// `ipv4` or `ipv6`.
        family: String,
        from: String,
        to: String,
        reason: Option<String>,
        detail: Option<String>,
    },
    /// Once a second per uplink: the probe picture.
    Probes {
        time_ms: u64,
        uplink: String,
        /// `ipv4` or `ipv6`.
        family: String,
        state: String,
        rtt_last_ms: Option<f64>,
        rtt_avg_ms: Option<f64>,
        loss_percent: f64,
    },
}

/// Acknowledgement of `uplink enable|disable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub uplink: String,
    pub state: String,
}

/// Opens the daemon's socket; explains the usual failures.
pub fn connect(run_dir: &Path) -> Result<UnixStream> {
    let path = socket_path(run_dir);
    UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow!(
            "permission denied on {}: the control socket is for root (and the members of `[daemon] control_group`)",
            path.display()
        ),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow!(
            "no multiwan daemon listens on {} (is `multiwan run` running with this --run-dir?)",
            path.display()
        ),
        _ => anyhow!("connecting to {}: {e}", path.display()),
    })
}

/// Sends one request and reads the single response.
pub fn call<T: DeserializeOwned>(run_dir: &Path, request: Request) -> Result<T> {
    let mut s = connect(run_dir)?;
    send_request(&mut s, request)?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .context("reading the daemon's answer")?;
    parse_response(&line)
}

/// Writes a request line.
pub fn send_request(s: &mut UnixStream, request: Request) -> Result<()> {
    let mut line = serde_json::to_string(&Envelope {
        version: VERSION,
        request,
    })?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .context("sending the request to the daemon")
}

/// Parses a response line into its data or its error.
pub fn parse_response<T: DeserializeOwned>(line: &str) -> Result<T> {
    if line.trim().is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    // The version first, so a newer daemon gets a clear message rather than a parse error.
    let v: Version = serde_json::from_str(line).with_context(|| format!("bad answer {line:?}"))?;
    if v.version != VERSION {
        bail!(
            "the daemon speaks control protocol {}, this CLI {}; use the same multiwan binary",
            v.version,
            VERSION
        );
    }
    // Straight into `T` (no `serde_json::Value` in between: its deserializer, instantiated
    // for every answer type, was ~30 KiB of the binary).
    let r: Response<T> =
        serde_json::from_str(line).with_context(|| format!("unexpected answer {line:?}"))?;
    match (r.ok, r.data, r.error, r.kind) {
        (true, Some(d), _, _) => Ok(d),
        (_, _, Some(e), Some(ErrorKind::Usage)) => Err(UsageError(e).into()),
        (_, _, Some(e), None) => bail!("{e}"),
        _ => bail!("malformed answer {line:?}"),
    }
}

/// The connection an `explain` request describes, checked ([`Query::check`]): the CLI
/// refuses a bad one before it asks the daemon, and the daemon refuses it too.
pub fn query_of(q: &ExplainQuery) -> std::result::Result<Query, QueryError> {
    let query = Query {
        src: q.src,
        dst: q.dst,
        proto: q.proto.as_deref().map(parse_proto).transpose()?,
        sport: q.sport,
        dport: q.dport,
    };
    query.check()?;
    Ok(query)
}

/// The health `multiwan explain -c` assumes: every uplink up, in the query's family (and no
/// interface facts: `Facts::default()`).
pub fn offline_health(cfg: &Config, q: &ExplainQuery) -> Health {
    Health::from_states(cfg, BTreeMap::new(), multiwan_core::net::Family::of(&q.src))
}

/// Answers an `explain` query against the uplinks' health in the query's family and the
/// kernel's facts: the daemon's (its states and the usable set it planned with, fail-open
/// included; the facts it planned with; the kernel's answers to the hook chains' route
/// lookups, which see static and VPN routes), or [`offline_health`] and no facts or lookups
/// for `multiwan explain -c`. Pure, so both give the same answer for the same inputs.
pub fn explain_query(
    cfg: &Config,
    health: &Health,
    facts: &Facts,
    lookups: Option<&Lookups>,
    q: &ExplainQuery,
) -> std::result::Result<ExplainInfo, QueryError> {
    let query = query_of(q)?;
    let e = explain_routed(cfg, health, facts, lookups, &query)?;
    let (verdict, uplink, shares) = match &e.verdict {
        Verdict::Uplink(u) => ("uplink", Some(u.clone()), Vec::new()),
        Verdict::Shares(s) => (
            "shares",
            None,
            s.iter()
                .map(|(u, w)| Candidate {
                    uplink: u.clone(),
                    weight: *w,
                })
                .collect(),
        ),
        Verdict::Main => ("main", None, Vec::new()),
        Verdict::NoUplink => ("none", None, Vec::new()),
        Verdict::NotBalanced(_) => ("not_balanced", None, Vec::new()),
    };
    let not_balanced = match &e.verdict {
        Verdict::NotBalanced(why) => Some(NotBalancedInfo {
            kind: why.kind().into(),
            reason: why.describe(&query),
            interface: why.interface().map(str::to_string),
        }),
        _ => None,
    };
    Ok(ExplainInfo {
        rule: e.rule,
        mode: mode_name(e.mode).into(),
        method: e.method.as_str().into(),
        candidates: e
            .candidates
            .iter()
            .map(|(u, w)| Candidate {
                uplink: u.clone(),
                weight: f64::from(*w),
            })
            .collect(),
        excluded: e
            .excluded
            .iter()
            .map(|(u, r)| Excluded {
                uplink: u.clone(),
                reason: r.to_string(),
            })
            .collect(),
        verdict: verdict.into(),
        uplink,
        shares,
        fail_open: e.fail_open,
        not_balanced,
        facts_unknown: e.facts_unknown,
    })
}

/// The config's name of a rule mode, as the wire format spells it.
pub fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Balance => "balance",
        Mode::Failover => "failover",
        Mode::Bypass => "bypass",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r = Envelope {
            version: 1,
            request: Request::Flows {
                uplink: Some("isp1".into()),
            },
        };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"version":1,"request":"flows","uplink":"isp1"}"#
        );
        let s: Envelope =
            serde_json::from_str(r#"{"version":1,"request":"status"}"#).expect("parse");
        assert_eq!(s.request, Request::Status);
        let e: Envelope = serde_json::from_str(
            r#"{"version":1,"request":"explain","src":"192.168.0.5","dport":443}"#,
        )
        .expect("parse");
        assert!(matches!(
            e.request,
            Request::Explain(ExplainQuery {
                dport: Some(443),
                ..
            })
        ));
        let u: Envelope =
            serde_json::from_str(r#"{"version":1,"request":"uplink","name":"lte","enable":false}"#)
                .expect("parse");
        assert_eq!(
            u.request,
            Request::Uplink {
                name: "lte".into(),
                enable: false
            }
        );
        let err: Result<Ack> =
            parse_response(r#"{"version":1,"ok":false,"error":"no uplink named x"}"#);
        assert_eq!(err.expect_err("error").to_string(), "no uplink named x");
        // A usage answer comes back as a UsageError, for the CLI's exit 2.
        let line = serde_json::to_string(&RequestError::usage("no uplink named x").response())
            .expect("json");
        assert_eq!(
            line,
            r#"{"version":1,"ok":false,"error":"no uplink named x","kind":"usage"}"#
        );
        let usage = parse_response::<Ack>(&line).expect_err("usage");
        assert_eq!(
            usage.downcast_ref::<UsageError>(),
            Some(&UsageError("no uplink named x".into()))
        );
        let old: Result<Ack> = parse_response(r#"{"version":2,"ok":true,"data":{}}"#);
        assert!(old.expect_err("version").to_string().contains("protocol 2"));
        // A newer daemon's answer of another shape still gets the version message.
        let newer: Result<Vec<FlowInfo>> = parse_response(r#"{"version":2,"ok":true,"data":7}"#);
        assert!(newer
            .expect_err("version")
            .to_string()
            .contains("protocol 2"));
        let wrong: Result<Vec<FlowInfo>> = parse_response(r#"{"version":1,"ok":true,"data":7}"#);
        assert!(format!("{:#}", wrong.expect_err("shape")).contains("unexpected answer"));
        let none: Result<Ack> = parse_response(r#"{"version":1,"ok":true}"#);
        assert!(none
            .expect_err("no data")
            .to_string()
            .contains("malformed answer"));
        let junk: Result<Ack> = parse_response("not json");
        assert!(junk.expect_err("junk").to_string().contains("bad answer"));
    }

    #[test]
    fn parse_request_checks_size_utf8_json_and_version() {
        let ok = parse_request(b"{\"version\":1,\"request\":\"status\"}\r\n").expect("parses");
        assert_eq!(ok.request, Request::Status);
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(parse_request(&big)
            .expect_err("too large")
            .starts_with("request too large"));
        // Just under the bound is parsed (as JSON padded with spaces).
        let mut padded = b"{\"version\":1,\"request\":\"watch\"}".to_vec();
        padded.resize(MAX_REQUEST_BYTES, b' ');
        assert_eq!(
            parse_request(&padded).expect("fits").request,
            Request::Watch
        );
        assert!(parse_request(b"\xff\xfe")
            .expect_err("utf8")
            .contains("not UTF-8"));
        assert!(parse_request(b"{\"version\":1,\"request\":\"nope\"}")
            .expect_err("unknown")
            .starts_with("bad request: "));
        let newer = parse_request(b"{\"version\":7,\"request\":\"teleport\"}").expect_err("v7");
        assert!(newer.contains("protocol 1, the request 7"), "{newer}");
        assert!(parse_request(b"")
            .expect_err("empty")
            .starts_with("bad request"));
        assert!(!Request::Uplink {
            name: "a".into(),
            enable: true
        }
        .read_only());
        assert!(Request::Watch.read_only());
    }

    /// The fuzz target's invariants (`fuzz/fuzz_targets/control_request.rs`), run on every
    /// `cargo test`: no panic, and whatever parses re-serialises to a request that parses to
    /// the same value.
    fn round_trips(bytes: &[u8]) {
        if let Ok(env) = parse_request(bytes) {
            let again = serde_json::to_vec(&env).expect("serialises");
            assert_eq!(parse_request(&again).as_ref(), Ok(&env), "{env:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            round_trips(&bytes);
        }

        #[test]
        fn mutated_requests_round_trip(
            base in proptest::sample::select(vec![
                r#"{"version":1,"request":"status"}"#,
                r#"{"version":1,"request":"flows","uplink":"isp1"}"#,
                r#"{"version":1,"request":"explain","src":"192.168.0.5","dst":"1.2.3.4","proto":"tcp","sport":1,"dport":443}"#,
                r#"{"version":1,"request":"uplink","name":"lte","enable":false}"#,
                r#"{"version":1,"request":"watch"}"#,
            ]),
            at in 0usize..150,
            byte in proptest::num::u8::ANY,
            cut in proptest::bool::ANY,
        ) {
            let mut b = base.as_bytes().to_vec();
            let i = at % b.len();
            if cut { b.truncate(i) } else { b[i] = byte }
            round_trips(&b);
        }
    }
}
