//! The only module that changes the kernel: reads interfaces, multiwan's rules, routes and
//! nftables table back, and applies a [`Plan`] as a verified, reversible sequence whose
//! nftables part is one atomic transaction.
//!
//! **Architecture invariant:** everything multiwan installs is recognisable as its own — the
//! `inet multiwan` table, rules and routes with protocol [`RTPROT_MULTIWAN`] — and nothing
//! else is ever deleted or modified. `down` removes exactly that set.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use multiwan_core::plan::{
    IpRule, Link, Nexthop, Plan, PolicyRule, Route, RuleAction, Sysctl, NFT_FAMILY, NFT_TABLE,
    RTPROT_MULTIWAN,
};
use multiwan_core::Facts;
use serde_json::Value;

/// What multiwan currently has installed in this network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    pub rules: BTreeSet<IpRule>,
    pub routes: BTreeSet<Route>,
    /// Digest stored in the nft table's comment; `None` when the table is absent.
    pub nft_digest: Option<String>,
    /// Uplink name → id, as encoded in the installed table.
    pub ids: BTreeMap<String, u32>,
    /// Policy chain → digest in its rule's comment.
    pub policies: BTreeMap<String, String>,
}

fn ip_json(args: &[&str]) -> Result<Value> {
    let out = run(Command::new("ip").arg("-j").args(args))?;
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).with_context(|| format!("parsing `ip -j {}`", args.join(" ")))
}

/// Interfaces and their IPv4 addresses.
pub fn read_facts() -> Result<Facts> {
    let v = ip_json(&["addr", "show"])?;
    let mut links = BTreeMap::new();
    for l in v.as_array().into_iter().flatten() {
        let Some(name) = l["ifname"].as_str() else {
            continue;
        };
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        let up = flags.contains(&"UP") && flags.contains(&"LOWER_UP");
        let addrs = l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["family"] == "inet")
            .filter_map(|a| a["local"].as_str()?.parse::<Ipv4Addr>().ok())
            .collect();
        links.insert(
            name.to_string(),
            Link {
                up,
                addrs,
                gateway: None,
            },
        );
    }
    // Default routes that are not ours (a DHCP client's, typically) give `gateway = "auto"`
    // uplinks their next hop: the lowest metric per interface, the main table first.
    let proto = RTPROT_MULTIWAN.to_string();
    let mut best: BTreeMap<String, (bool, u64, Ipv4Addr)> = BTreeMap::new();
    for r in ip_json(&["route", "show", "table", "all", "default"])?
        .as_array()
        .into_iter()
        .flatten()
    {
        if r["protocol"].as_str() == Some(proto.as_str()) {
            continue;
        }
        let (Some(dev), Some(gw)) = (
            r["dev"].as_str(),
            r["gateway"]
                .as_str()
                .and_then(|g| g.parse::<Ipv4Addr>().ok()),
        ) else {
            continue;
        };
        let not_main = r["table"].as_str().is_some_and(|t| t != "main");
        let metric = r["metric"].as_u64().unwrap_or(0);
        let key = (not_main, metric, gw);
        if best.get(dev).is_none_or(|b| (key.0, key.1) < (b.0, b.1)) {
            best.insert(dev.to_string(), key);
        }
    }
    for (dev, (_, _, gw)) in best {
        if let Some(l) = links.get_mut(&dev) {
            l.gateway = Some(gw);
        }
    }
    Ok(Facts { links: Some(links) })
}

fn parse_hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

fn table_num(v: &Value) -> Option<u32> {
    match v.as_str()? {
        "main" => Some(254),
        "local" => Some(255),
        "default" => Some(253),
        s => s.parse().ok(),
    }
}

fn parse_rule(r: &Value) -> Option<IpRule> {
    let priority = u32::try_from(r["priority"].as_u64()?).ok()?;
    let fwmark = match r["fwmark"].as_str() {
        Some(m) => Some((
            parse_hex(m)?,
            r["fwmask"].as_str().and_then(parse_hex).unwrap_or(u32::MAX),
        )),
        None => None,
    };
    let from = match r["src"].as_str() {
        None | Some("all") => None,
        Some(a) => Some(a.parse().ok()?),
    };
    let action = match r["action"].as_str() {
        Some("unreachable") => RuleAction::Unreachable,
        Some("blackhole") => RuleAction::Blackhole,
        _ => {
            let t = table_num(&r["table"])?;
            if t == 254 && r.get("suppress_prefixlen").is_some() {
                RuleAction::MainNoDefault
            } else {
                RuleAction::Lookup(t)
            }
        }
    };
    Some(IpRule {
        priority,
        fwmark,
        from,
        action,
    })
}

fn parse_route(r: &Value) -> Option<Route> {
    if r["dst"].as_str()? != "default" {
        return None;
    }
    let table = table_num(&r["table"]).unwrap_or(254);
    let nh = |v: &Value, weight: u32| -> Option<Nexthop> {
        Some(Nexthop {
            via: match v["gateway"].as_str() {
                Some(g) => Some(g.parse().ok()?),
                None => None,
            },
            dev: v["dev"].as_str()?.to_string(),
            weight,
        })
    };
    let nexthops = match r["nexthops"].as_array() {
        Some(list) => list
            .iter()
            .map(|n| nh(n, n["weight"].as_u64().unwrap_or(1) as u32))
            .collect::<Option<Vec<_>>>()?,
        None => vec![nh(r, 1)?],
    };
    Some(Route { table, nexthops })
}

/// Reads the uplink ids out of the installed output chain's restore map
/// (`0x00010000 : goto restore_isp1`).
fn parse_ids(listing: &str) -> BTreeMap<String, u32> {
    let mut ids = BTreeMap::new();
    for line in listing.lines() {
        let Some((head, map)) = line.split_once("vmap {") else {
            continue;
        };
        let mask = head
            .split_whitespace()
            .skip_while(|w| *w != "&")
            .nth(1)
            .and_then(parse_hex);
        let Some(mask) = mask.filter(|m| *m != 0) else {
            continue;
        };
        for elem in map.trim_end_matches('}').split(',') {
            let mut parts = elem.split_whitespace();
            let (Some(mark), Some(":"), Some("goto"), Some(chain)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Some(mark), Some(name)) = (parse_hex(mark), chain.strip_prefix("restore_")) else {
                continue;
            };
            let id = (mark & mask) >> mask.trailing_zeros();
            if name != "main" && name != "none" {
                ids.insert(name.to_string(), id);
            }
        }
        break;
    }
    ids
}

/// Reads each policy chain's rule digest (`comment "p:DIGEST"`) out of a table listing.
fn parse_policies(listing: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chain: Option<&str> = None;
    for line in listing.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("chain ").and_then(|r| r.strip_suffix(" {")) {
            chain = Some(name);
        } else if let (Some(c), Some((_, rest))) = (chain, l.split_once("comment \"p:")) {
            out.insert(c.to_string(), rest.trim_end_matches('"').to_string());
        } else if l == "}" {
            chain = None;
        }
    }
    out
}

/// Reads what multiwan has installed.
pub fn read_installed() -> Result<Installed> {
    let rules = ip_json(&["rule", "show"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["protocol"].as_str() == Some(&RTPROT_MULTIWAN.to_string()))
        .filter_map(parse_rule)
        .collect();
    let routes = ip_json(&[
        "route",
        "show",
        "table",
        "all",
        "proto",
        &RTPROT_MULTIWAN.to_string(),
    ])?
    .as_array()
    .into_iter()
    .flatten()
    .filter_map(parse_route)
    .collect();
    let (nft_digest, ids, policies) = if table_exists()? {
        let listing = nft(&["list", "table", NFT_FAMILY, NFT_TABLE])?;
        // nft 1.0.6 omits table comments from its JSON output, so read the text form.
        let digest = listing
            .lines()
            .find_map(|l| l.trim().strip_prefix("comment \"multiwan "))
            .map(|d| d.trim_end_matches('"').to_string());
        (
            Some(digest.unwrap_or_default()),
            parse_ids(&listing),
            parse_policies(&listing),
        )
    } else {
        (None, BTreeMap::new(), BTreeMap::new())
    };
    Ok(Installed {
        rules,
        routes,
        nft_digest,
        ids,
        policies,
    })
}

fn table_exists() -> Result<bool> {
    // Without the nft tool nothing can have installed our table (`multiwan down` on a
    // machine where nftables was never installed has nothing to do there).
    if Command::new("nft").arg("--version").output().is_err() {
        return Ok(false);
    }
    let out = nft(&["list", "tables", NFT_FAMILY])?;
    Ok(out
        .lines()
        .any(|l| l.trim() == format!("table {NFT_FAMILY} {NFT_TABLE}")))
}

/// Runs `nft ARGS`.
pub fn nft(args: &[&str]) -> Result<String> {
    run(Command::new("nft").args(args))
}

fn nft_script(script: &str, check_only: bool) -> Result<()> {
    let mut c = Command::new("nft");
    if check_only {
        c.arg("-c");
    }
    c.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .context("running nft (is the nftables package installed?)")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("nft stdin unavailable"))?
        .write_all(script.as_bytes())
        .context("writing the ruleset to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft rejected the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[String]) -> Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// One reversible change.
#[derive(Debug, Clone)]
enum Step {
    RouteReplaced {
        new: Route,
        old: Option<Route>,
    },
    RouteDeleted(Route),
    RuleAdded(IpRule),
    RuleDeleted(IpRule),
    Nft {
        previous: Option<String>,
    },
    Sysctl {
        key: String,
        path: String,
        old: String,
    },
}

fn route_del_args(r: &Route) -> Vec<String> {
    vec![
        "route".into(),
        "del".into(),
        "default".into(),
        "table".into(),
        r.table.to_string(),
        "proto".into(),
        RTPROT_MULTIWAN.to_string(),
    ]
}

fn with(prefix: &[&str], rest: Vec<String>) -> Vec<String> {
    prefix.iter().map(|s| s.to_string()).chain(rest).collect()
}

fn undo(steps: &[Step]) {
    for s in steps.iter().rev() {
        let r = match s {
            Step::RouteReplaced { new, old: None } => ip(&route_del_args(new)),
            Step::RouteReplaced { old: Some(o), .. } => ip(&with(&["route", "replace"], o.args())),
            Step::RouteDeleted(o) => ip(&with(&["route", "replace"], o.args())),
            Step::RuleAdded(r) => ip(&with(&["rule", "del"], r.args())),
            Step::RuleDeleted(r) => ip(&with(&["rule", "add"], r.args())),
            Step::Nft { previous: Some(text) } => nft_script(
                &format!("add table {NFT_FAMILY} {NFT_TABLE}\ndelete table {NFT_FAMILY} {NFT_TABLE}\n{text}"),
                false,
            ),
            Step::Nft { previous: None } => nft(&["delete", "table", NFT_FAMILY, NFT_TABLE]).map(|_| ()),
            Step::Sysctl { key, path, old } => write_sysctl(key, path, old),
        };
        if let Err(e) = r {
            tracing::error!(error = %format!("{e:#}"), "rollback step failed");
        }
    }
}

/// What `apply` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub routes_changed: usize,
    pub routes_removed: usize,
    pub rules_added: usize,
    pub rules_removed: usize,
    pub nft_replaced: bool,
    /// Policy chains rewritten in place (the structure was unchanged).
    pub policies_updated: usize,
    pub sysctls_changed: usize,
}

impl ApplyReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        *self != Self::default()
    }
}

/// Saved original sysctl values, so `down` can restore them. Keyed by network namespace so
/// several namespaces sharing `/run` never mix their state.
fn sysctl_state_path(run_dir: &Path) -> Result<PathBuf> {
    let ns = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let id: String = ns
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    Ok(run_dir.join(format!("sysctl-saved-netns{id}.json")))
}

fn read_sysctl(s: &Sysctl) -> Result<String> {
    Ok(std::fs::read_to_string(s.proc_path())
        .with_context(|| format!("reading {}", s.key))?
        .trim()
        .to_string())
}

fn write_sysctl(key: &str, path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("setting {key} = {value}"))
}

/// Sets the planned sysctls, recording each change as an undoable step. Returns the values
/// they had, to be saved for `down` once the whole apply has succeeded.
fn apply_sysctls(
    sysctls: &[Sysctl],
    steps: &mut Vec<Step>,
) -> Result<BTreeMap<String, (String, String)>> {
    let mut previous = BTreeMap::new();
    for s in sysctls {
        let current = read_sysctl(s)?;
        if current != s.value {
            write_sysctl(&s.key, &s.proc_path(), &s.value)?;
            steps.push(Step::Sysctl {
                key: s.key.clone(),
                path: s.proc_path(),
                old: current.clone(),
            });
            previous.insert(s.key.clone(), (s.proc_path(), current));
        }
    }
    Ok(previous)
}

/// Merges newly replaced sysctl values into the saved state; values saved by an earlier
/// apply win, since they are what the system had before multiwan.
fn save_sysctls(run_dir: &Path, changed: BTreeMap<String, (String, String)>) -> Result<()> {
    if changed.is_empty() {
        return Ok(());
    }
    let state = sysctl_state_path(run_dir)?;
    let mut saved: BTreeMap<String, (String, String)> = match std::fs::read_to_string(&state) {
        Ok(t) => {
            serde_json::from_str(&t).with_context(|| format!("parsing {}", state.display()))?
        }
        Err(_) => BTreeMap::new(),
    };
    for (k, v) in changed {
        saved.entry(k).or_insert(v);
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    std::fs::write(&state, serde_json::to_string_pretty(&saved)?)
        .with_context(|| format!("writing {}", state.display()))
}

/// Routes that someone else put into a table this plan would use. multiwan owns its tables
/// whole (it replaces their default route), so it refuses to start in a table that is taken.
fn foreign_routes(tables: &BTreeSet<u32>) -> Result<Vec<String>> {
    let proto = RTPROT_MULTIWAN.to_string();
    Ok(ip_json(&["route", "show", "table", "all"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| table_num(&r["table"]).is_some_and(|t| tables.contains(&t)))
        .filter(|r| r["protocol"].as_str() != Some(proto.as_str()))
        .map(|r| {
            format!(
                "table {}: {} {}{}",
                r["table"].as_str().unwrap_or("?"),
                r["dst"].as_str().unwrap_or("?"),
                r["gateway"]
                    .as_str()
                    .map(|g| format!("via {g} "))
                    .unwrap_or_default(),
                r["dev"]
                    .as_str()
                    .map(|d| format!("dev {d}"))
                    .unwrap_or_default()
            )
        })
        .collect())
}

/// Installs `plan`: routes, then rules, then the nft table in one transaction, then removes
/// what is no longer planned; verifies by reading everything back. On any failure every
/// change already made is undone, so a failed apply leaves the previous state.
pub fn apply(plan: &Plan, run_dir: &Path) -> Result<ApplyReport> {
    let before = read_installed()?;
    let mut tables = plan.tables.clone();
    tables.extend(plan.routes.iter().map(|r| r.table));
    let taken = foreign_routes(&tables)?;
    if !taken.is_empty() {
        bail!(
            "routing tables multiwan would use already hold routes it did not install ({}); nothing was changed. Choose a free range with [kernel] table_base",
            taken.join("; ")
        );
    }
    let replace_table = before.nft_digest.as_deref() != Some(plan.digest.as_str());
    let stale_policies: Vec<&PolicyRule> = plan
        .policy_chains
        .iter()
        .filter(|p| before.policies.get(&p.chain) != Some(&p.digest))
        .collect();
    // Validate a new ruleset before touching anything.
    if replace_table {
        nft_script(&plan.nft_transaction(), true).context("checking the nftables ruleset")?;
    }
    let previous_nft = if before.nft_digest.is_some() {
        Some(nft(&["list", "table", NFT_FAMILY, NFT_TABLE])?)
    } else {
        None
    };
    let mut steps = Vec::new();
    let mut report = ApplyReport::default();
    let mut sysctls_before = BTreeMap::new();
    let result = (|| -> Result<()> {
        // Forwarding and loose rp_filter first: routes are useless without them. Conntrack's
        // sysctls come after the ruleset, which is what makes the kernel load conntrack.
        let (late, early): (Vec<Sysctl>, Vec<Sysctl>) = plan
            .sysctls
            .iter()
            .cloned()
            .partition(|s| s.key.starts_with("net.netfilter."));
        sysctls_before = apply_sysctls(&early, &mut steps)?;
        let old_by_table: BTreeMap<u32, &Route> =
            before.routes.iter().map(|r| (r.table, r)).collect();
        for r in &plan.routes {
            if !before.routes.contains(r) {
                ip(&with(&["route", "replace"], r.args()))
                    .with_context(|| format!("installing route in table {}", r.table))?;
                steps.push(Step::RouteReplaced {
                    new: r.clone(),
                    old: old_by_table.get(&r.table).map(|r| (*r).clone()),
                });
                report.routes_changed += 1;
            }
        }
        for r in &plan.rules {
            if !before.rules.contains(r) {
                ip(&with(&["rule", "add"], r.args())).context("adding ip rule")?;
                steps.push(Step::RuleAdded(r.clone()));
                report.rules_added += 1;
            }
        }
        if replace_table {
            nft_script(&plan.nft_transaction(), false)?;
            steps.push(Step::Nft {
                previous: previous_nft.clone(),
            });
            report.nft_replaced = true;
        } else if !stale_policies.is_empty() {
            // Same structure: rewrite only the policies, in one transaction, so counters,
            // sets and every other chain stay as they are.
            let script: String = stale_policies.iter().map(|p| p.replace_script()).collect();
            nft_script(&script, false).context("updating the balancing policies")?;
            steps.push(Step::Nft {
                previous: previous_nft.clone(),
            });
            report.policies_updated = stale_policies.len();
        }
        sysctls_before.extend(apply_sysctls(&late, &mut steps)?);
        report.sysctls_changed = sysctls_before.len();
        let planned_rules: BTreeSet<&IpRule> = plan.rules.iter().collect();
        for r in &before.rules {
            if !planned_rules.contains(r) {
                ip(&with(&["rule", "del"], r.args())).context("removing stale ip rule")?;
                steps.push(Step::RuleDeleted(r.clone()));
                report.rules_removed += 1;
            }
        }
        let planned_tables: BTreeSet<u32> = plan.routes.iter().map(|r| r.table).collect();
        for r in &before.routes {
            if !planned_tables.contains(&r.table) {
                ip(&route_del_args(r)).context("removing stale route")?;
                steps.push(Step::RouteDeleted(r.clone()));
                report.routes_removed += 1;
            }
        }
        verify(plan)?;
        save_sysctls(run_dir, std::mem::take(&mut sysctls_before))
    })();
    if let Err(e) = result {
        undo(&steps);
        return Err(e.context("apply failed; every change was rolled back"));
    }
    Ok(report)
}

/// Reads the kernel state back and checks it equals the plan.
pub fn verify(plan: &Plan) -> Result<()> {
    let now = read_installed()?;
    let want_rules: BTreeSet<IpRule> = plan.rules.iter().cloned().collect();
    let want_routes: BTreeSet<Route> = plan.routes.iter().cloned().collect();
    let mut problems = Vec::new();
    if now.rules != want_rules {
        problems.push(format!(
            "ip rules differ: missing {:?}, unexpected {:?}",
            want_rules.difference(&now.rules).collect::<Vec<_>>(),
            now.rules.difference(&want_rules).collect::<Vec<_>>()
        ));
    }
    if now.routes != want_routes {
        problems.push(format!(
            "routes differ: missing {:?}, unexpected {:?}",
            want_routes.difference(&now.routes).collect::<Vec<_>>(),
            now.routes.difference(&want_routes).collect::<Vec<_>>()
        ));
    }
    if now.nft_digest.as_deref() != Some(plan.digest.as_str()) {
        problems.push(format!(
            "nft table digest is {:?}, expected {}",
            now.nft_digest, plan.digest
        ));
    }
    for p in &plan.policy_chains {
        if now.policies.get(&p.chain) != Some(&p.digest) {
            problems.push(format!("policy chain {} is not the planned one", p.chain));
        }
    }
    if !problems.is_empty() {
        bail!(
            "kernel state does not match the plan: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    pub nft_removed: bool,
    pub rules_removed: usize,
    pub routes_removed: usize,
    pub sysctls_restored: usize,
}

/// Removes everything multiwan installed in this namespace, and nothing else.
pub fn down(run_dir: &Path) -> Result<DownReport> {
    let now = read_installed()?;
    let mut report = DownReport::default();
    if now.nft_digest.is_some() {
        nft(&["delete", "table", NFT_FAMILY, NFT_TABLE])?;
        report.nft_removed = true;
    }
    for r in &now.rules {
        ip(&with(&["rule", "del"], r.args()))?;
        report.rules_removed += 1;
    }
    for r in &now.routes {
        ip(&route_del_args(r))?;
        report.routes_removed += 1;
    }
    let state = sysctl_state_path(run_dir)?;
    if let Ok(text) = std::fs::read_to_string(&state) {
        let saved: BTreeMap<String, (String, String)> =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", state.display()))?;
        for (key, (path, value)) in saved {
            // An interface may be gone by now; its sysctl went with it.
            if Path::new(&path).exists() {
                write_sysctl(&key, &path, &value)?;
                report.sysctls_restored += 1;
            }
        }
        std::fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    Ok(report)
}

/// Runs a command, returning stdout or an error that includes the command and its stderr.
fn run(c: &mut Command) -> Result<String> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            c,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_as_ip_prints_them() {
        let v: Value = serde_json::from_str(r#"[{"priority":0,"src":"all","table":"local"},{"priority":1000,"src":"all","table":"main","suppress_prefixlen":0,"protocol":"77"},{"priority":1001,"src":"all","fwmark":"0x10000","fwmask":"0xff0000","table":"101","protocol":"77"},{"priority":1002,"src":"all","fwmark":"0x10000","fwmask":"0xff0000","action":"unreachable","protocol":"77"},{"priority":1003,"src":"10.0.0.1","table":"101","protocol":"77"}]"#).expect("json");
        let rules: Vec<IpRule> = v.as_array().expect("array")[1..]
            .iter()
            .filter_map(parse_rule)
            .collect();
        assert_eq!(rules[0].action, RuleAction::MainNoDefault);
        assert_eq!(rules[1].fwmark, Some((0x10000, 0xff0000)));
        assert_eq!(rules[1].action, RuleAction::Lookup(101));
        assert_eq!(rules[2].action, RuleAction::Unreachable);
        assert_eq!(rules[3].from, Some("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn parses_routes_as_ip_prints_them() {
        let v: Value = serde_json::from_str(r#"[{"dst":"default","table":"100","flags":[],"nexthops":[{"gateway":"10.1.0.1","dev":"d1","weight":3,"flags":[]},{"gateway":"10.2.0.1","dev":"d2","weight":1,"flags":[]}]},{"dst":"default","gateway":"10.1.0.1","dev":"d1","table":"101","flags":[]},{"dst":"default","dev":"d2","table":"102","scope":"link","flags":[]}]"#).expect("json");
        let routes: Vec<Route> = v
            .as_array()
            .expect("array")
            .iter()
            .filter_map(parse_route)
            .collect();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].nexthops.len(), 2);
        assert_eq!(routes[0].nexthops[0].weight, 3);
        assert_eq!(routes[2].nexthops[0].via, None);
    }

    #[test]
    fn parses_ids_from_restore_map() {
        let listing = "table inet multiwan {\n\tchain output {\n\t\ttype route hook output priority mangle; policy accept;\n\t\tmeta mark & 0x00ff0000 != 0x00000000 return\n\t\tct mark & 0x00ff0000 vmap { 0x00010000 : goto restore_isp1, 0x00020000 : goto restore_isp2, 0x00fe0000 : goto restore_main, 0x00ff0000 : goto restore_none }\n\t}\n}\n";
        let ids = parse_ids(listing);
        assert_eq!(ids.len(), 2);
        assert_eq!(ids["isp1"], 1);
        assert_eq!(ids["isp2"], 2);
    }
}
