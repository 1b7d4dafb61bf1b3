//! THE ONLY MODULE THAT CHANGES THE KERNEL. It reads interfaces and multiwan's own state back
//! as structures (rtnetlink, nfnetlink), and applies a [`Plan`] as a verified, reversible
//! sequence whose nftables part is one atomic transaction.
//!
//! **Architecture invariant:** everything multiwan installs is recognisable as its own — the
//! `inet multiwan` table, rules and routes with protocol [`RTPROT_MULTIWAN`], the sysctls of
//! [`multiwan_core::plan::sysctl_path`] — and nothing else is ever deleted or modified. `down`
//! removes exactly that set.
//!
//! The [`Kernel`] trait is the seam the daemon is written against: [`System`] is the real
//! kernel, `fake::FakeKernel` an in-memory one for the daemon's logic tests.

pub mod conntrack;
pub mod events;
pub mod exec;
pub mod netlink;
pub mod nft;
pub mod nftread;
pub mod rtmsg;
pub mod socket;
pub mod sysctl;

#[cfg(test)]
pub mod fake;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use multiwan_core::net::{Ipv4Net, Ipv6Net};
use multiwan_core::plan::{Family, IpRule, Link, Plan, PolicyMap, Route, RTPROT_MULTIWAN};
use multiwan_core::Facts;

use multiwan_core::order::Collect;
pub use netlink::RouteRefused;
use netlink::{Rtnl, Unknown};
use nft::{Nft, PolicyState};

/// What the daemon (and the commands) need from the kernel.
pub trait Kernel {
    /// Interfaces, their addresses, and for the interfaces in `auto` (IPv4) and `auto6`
    /// (IPv6) the gateway of the default route someone else (a DHCP client, router
    /// advertisements) installed through them.
    fn facts(&mut self, auto: &BTreeSet<String>, auto6: &BTreeSet<String>) -> Result<Facts>;
    /// The uplink ids of the installed table (empty when there is none). Anything that cannot
    /// be understood is an error, never a silent reassignment.
    fn ids(&mut self, mark_mask: u32) -> Result<BTreeMap<String, u32>>;
    /// Makes the kernel equal `plan`, all or nothing, verified.
    fn apply(&mut self, plan: &Plan) -> Result<ApplyReport>;
    /// Checks that the kernel equals `plan`.
    fn verify(&mut self, plan: &Plan) -> Result<()>;
    /// Deletes the connections of `family` whose mark under `mask` is `mark`.
    fn flush(&mut self, mark: u32, mask: u32, family: Family) -> Result<()>;
    /// Removes everything multiwan installed, and nothing else.
    fn down(&mut self) -> Result<DownReport>;
}

/// What `apply` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub routes_changed: usize,
    pub routes_removed: usize,
    pub rules_added: usize,
    pub rules_removed: usize,
    pub nft_replaced: bool,
    /// Policies rewritten in place (the structure was unchanged).
    pub policies_updated: usize,
    pub sysctls_changed: usize,
}

impl ApplyReport {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        *self != Self::default()
    }
}

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    pub nft_removed: bool,
    pub rules_removed: usize,
    pub routes_removed: usize,
    pub sysctls_restored: usize,
}

/// multiwan's state as installed.
#[derive(Debug, Clone, Default)]
struct Installed {
    rules: BTreeSet<IpRule>,
    routes: BTreeSet<Route>,
    /// Rules and routes with multiwan's protocol that the planner cannot express.
    unknown: Vec<Unknown>,
    /// Routes someone else put into one of the tables looked at.
    foreign: Vec<String>,
    /// The table's digest; `None` when there is no table.
    digest: Option<String>,
}

/// The real kernel of the current network namespace.
pub struct System {
    run_dir: PathBuf,
    rt: Rtnl,
    nft: Nft,
    /// The last ruleset this process (or an earlier `apply`, from the run directory) loaded
    /// successfully: what a failed structural change is rolled back to.
    known_good: Option<String>,
    /// Tables known to hold multiwan's routes; `None` until a full scan found them.
    tables: Option<BTreeSet<u32>>,
}

/// One reversible change.
enum Step {
    RouteReplaced { new: Route, old: Option<Route> },
    RouteDeleted(Route),
    RuleAdded(IpRule),
    RuleDeleted(IpRule),
    TableLoaded { existed: bool },
    Policies(Vec<PolicyMap>),
    Sysctls(Vec<(String, String)>),
}

impl System {
    /// Opens netlink sockets in the current namespace; `run_dir` keeps the saved sysctls and
    /// the last loaded ruleset.
    pub fn open(run_dir: &Path) -> Result<Self> {
        let known_good = crate::rundir::read_file(run_dir, &ruleset_name()?)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok());
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            rt: Rtnl::open()?,
            nft: Nft::open()?,
            known_good,
            tables: None,
        })
    }

    /// The gateway of the best foreign default route of `family` through interface `index`:
    /// the lowest metric, the main table first — what a DHCP client or router advertisements
    /// install. Routes that tie (two routers advertising on the link, or a replaced router
    /// whose route has not expired) are told apart as the kernel tells routers apart: by
    /// neighbour unreachability detection. The first in the kernel's order wins unless its
    /// neighbour entry has failed (or is being resolved again after failing) while another's
    /// has not: a router that fell silent is left as soon as the kernel knows it is gone,
    /// not when its route's lifetime ends.
    fn learned_gateway(&mut self, family: Family, index: u32) -> Result<Option<IpAddr>> {
        let mut tied: Vec<IpAddr> = Vec::new();
        let mut best: Option<(bool, u32)> = None;
        for m in self.rt.routes_via(family, index)? {
            if let Some((gw, metric, table)) = netlink::default_gateway(&m) {
                let key = (table != 254, metric);
                if best.is_none_or(|b| key < b) {
                    best = Some(key);
                    tied.clear();
                }
                if best == Some(key) && !tied.contains(&gw) {
                    tied.push(gw);
                }
            }
        }
        if tied.len() < 2 {
            return Ok(tied.first().copied());
        }
        let states = self.rt.neighbours(family, index)?;
        Ok(pick_reachable(&tied, &states))
    }

    /// Adds to each interface that is up with a global IPv6 address the networks of the
    /// routes without a gateway through it in the main table (an advertised on-link prefix
    /// beside /128 addresses, a host route to the gateway): the kernel routes a gateway in
    /// them too. One dump per such interface, filtered by the kernel.
    fn onlink_routes6(
        &mut self,
        links: &[netlink::LinkInfo],
        out: &mut BTreeMap<String, Link>,
    ) -> Result<()> {
        for l in links {
            let Some(link) = out
                .get_mut(&l.name)
                .filter(|k| k.up && !k.addrs6.is_empty())
            else {
                continue;
            };
            for m in self.rt.routes_via(Family::V6, l.index)? {
                if let Some((IpAddr::V6(d), len)) = netlink::onlink_destination(&m) {
                    link.onlink6.extend(Ipv6Net::holding(d, len));
                }
            }
            multiwan_core::order::sort(&mut link.onlink6);
            link.onlink6.dedup();
        }
        Ok(())
    }

    fn links(&mut self) -> Result<(BTreeMap<String, u32>, BTreeMap<u32, String>)> {
        let links = self.rt.links()?;
        Ok((
            links
                .iter()
                .map(|l| (l.name.clone(), l.index))
                .collect_map(),
            links.into_iter().map(|l| (l.index, l.name)).collect_map(),
        ))
    }

    /// Reads multiwan's rules, its routes in `tables` (every table, by protocol, when
    /// `None`), foreign routes in those tables and the table digest.
    fn installed(
        &mut self,
        tables: Option<&BTreeSet<u32>>,
        names: &BTreeMap<u32, String>,
    ) -> Result<Installed> {
        let mut s = Installed::default();
        let mut routes = Vec::new();
        for family in Family::ALL {
            for m in self.rt.rules(family)? {
                if netlink::rule_is_ours(&m) {
                    match netlink::parse_rule(&m) {
                        Some(r) => {
                            s.rules.insert(r);
                        }
                        None => s.unknown.push(Unknown::Rule(m)),
                    }
                }
            }
            match tables {
                Some(t) => {
                    for table in t {
                        routes.extend(self.rt.routes(family, Some(*table), None)?);
                    }
                }
                None => routes.extend(self.rt.routes(family, None, Some(RTPROT_MULTIWAN))?),
            }
        }
        for m in routes {
            if !netlink::is_ours(&m) {
                s.foreign.push(describe_route(&m, names));
                continue;
            }
            match netlink::parse_route(&m, names) {
                Some(r) => {
                    s.routes.insert(r);
                }
                None => s.unknown.push(Unknown::Route(m)),
            }
        }
        s.digest = self
            .nft
            .table_comment()?
            .map(|c| c.strip_prefix("multiwan ").unwrap_or("").to_string());
        Ok(s)
    }

    /// The tables to look at for a plan: its own, and every table known to hold ours. The
    /// first call scans every table (once per process).
    fn tables_for(&mut self, plan: &Plan, names: &BTreeMap<u32, String>) -> Result<BTreeSet<u32>> {
        let known = match &self.tables {
            Some(t) => t.clone(),
            None => {
                let all = self.installed(None, names)?;
                all.routes.iter().map(|r| r.table).collect_set()
            }
        };
        let mut t = plan.tables.clone();
        t.extend(plan.routes.iter().map(|r| r.table));
        t.extend(known);
        Ok(t)
    }

    fn policy_states(&mut self, plan: &Plan) -> Result<Vec<(PolicyMap, PolicyState)>> {
        let moduli = self.nft.numgen_moduli()?;
        let mut out = Vec::new();
        for p in &plan.policy_maps {
            out.push((p.clone(), self.nft.policy(p, &moduli)?));
        }
        Ok(out)
    }

    fn undo(&mut self, steps: Vec<Step>, index: &BTreeMap<String, u32>) {
        for s in steps.into_iter().rev() {
            let r = match s {
                Step::RouteReplaced { new, old: None } => {
                    self.rt.delete_route(new.family, new.table)
                }
                Step::RouteReplaced { old: Some(o), .. } | Step::RouteDeleted(o) => {
                    self.rt.replace_route(&o, index)
                }
                Step::RuleAdded(r) => self.rt.delete_rule(&r),
                Step::RuleDeleted(r) => self.rt.add_rule(&r),
                Step::TableLoaded { existed: false } => self.nft.delete_table(),
                Step::TableLoaded { existed: true } => match &self.known_good {
                    Some(text) => nft::load(text, false),
                    None => Err(anyhow!(
                        "the previous table was not loaded by this multiwan and cannot be restored"
                    )),
                },
                Step::Policies(previous) => {
                    let refs: Vec<&PolicyMap> = previous.iter().collect();
                    self.nft.update_policies(&refs)
                }
                Step::Sysctls(previous) => {
                    sysctl::restore(&previous);
                    Ok(())
                }
            };
            if let Err(e) = r {
                tracing::error!(error = %format!("{e:#}"), "rollback step failed");
            }
        }
    }

    /// Saves in the run directory what a successful apply needs later: the sysctl values it
    /// replaced (for `down`) and a newly loaded ruleset (the known-good one for a restart).
    fn save_applied(&mut self, plan: &Plan, steps: &[Step]) -> Result<()> {
        let changed: Vec<(String, String)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Sysctls(v) => Some(v.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        sysctl::save(&self.run_dir, &changed)?;
        if steps.iter().any(|s| matches!(s, Step::TableLoaded { .. })) {
            let text = plan.nft_transaction();
            crate::rundir::write_file_atomic(&self.run_dir, &ruleset_name()?, text.as_bytes())
                .context("saving the loaded ruleset")?;
            self.known_good = Some(text);
        }
        Ok(())
    }

    fn apply_steps(
        &mut self,
        plan: &Plan,
        before: &Installed,
        index: &BTreeMap<String, u32>,
        steps: &mut Vec<Step>,
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let replace_table = before.digest.as_deref() != Some(plan.digest.as_str());
        // Forwarding and loose rp_filter first: routes are useless without them. Conntrack's
        // sysctls come after the ruleset, which is what makes the kernel load conntrack.
        let (late, early): (Vec<_>, Vec<_>) = plan
            .sysctls
            .iter()
            .cloned()
            .partition(|s| s.key.starts_with("net.netfilter."));
        let changed = sysctl::apply(&early)?;
        report.sysctls_changed += changed.len();
        steps.push(Step::Sysctls(changed));
        let old_by_table: BTreeMap<(Family, u32), &Route> = before
            .routes
            .iter()
            .map(|r| ((r.family, r.table), r))
            .collect_map();
        // An uplink's own route before the multipath route holding the same next hop: a next
        // hop the kernel refuses is then refused in a route of one uplink, which names it.
        let mut routes: Vec<&Route> = plan.routes.iter().collect();
        multiwan_core::order::sort_by_key(&mut routes, |r| r.nexthops.len() > 1);
        for r in routes {
            if !before.routes.contains(r) {
                self.rt.replace_route(r, index)?;
                steps.push(Step::RouteReplaced {
                    new: r.clone(),
                    old: old_by_table.get(&(r.family, r.table)).map(|r| (*r).clone()),
                });
                report.routes_changed += 1;
            }
        }
        for r in &plan.rules {
            if !before.rules.contains(r) {
                self.rt.add_rule(r)?;
                steps.push(Step::RuleAdded(r.clone()));
                report.rules_added += 1;
            }
        }
        if replace_table {
            // The uplinks' connection counts go on in the new table: a reload that adds an
            // uplink must not reset the others' (Prometheus would see counters go backwards).
            let counts = match before.digest {
                Some(_) => self.nft.named_counters().unwrap_or_default(),
                None => BTreeMap::new(),
            };
            nft::load(&plan.nft_transaction_carrying(&counts), false)?;
            steps.push(Step::TableLoaded {
                existed: before.digest.is_some(),
            });
            report.nft_replaced = true;
        } else {
            // Same structure: rewrite only the policies that differ, in one batch, so counters,
            // sets and every other chain stay as they are.
            let states = self.policy_states(plan)?;
            let stale: Vec<&PolicyMap> = states
                .iter()
                .filter(|(p, s)| !s.matches(p))
                .map(|(p, _)| p)
                .collect();
            if !stale.is_empty() {
                self.nft.update_policies(&stale)?;
                report.policies_updated = stale.len();
                let previous = states
                    .iter()
                    .filter(|(p, s)| !s.matches(p))
                    .map(|(p, s)| previous_policy(p, s))
                    .collect();
                steps.push(Step::Policies(previous));
            }
        }
        let changed = sysctl::apply(&late)?;
        report.sysctls_changed += changed.len();
        steps.push(Step::Sysctls(changed));
        let planned_rules: BTreeSet<&IpRule> = plan.rules.iter().collect_set();
        for r in &before.rules {
            if !planned_rules.contains(r) {
                self.rt.delete_rule(r)?;
                steps.push(Step::RuleDeleted(r.clone()));
                report.rules_removed += 1;
            }
        }
        for u in &before.unknown {
            // Not undoable on purpose: it was never multiwan's intent.
            self.rt.delete_unknown(u)?;
            report.rules_removed += 1;
        }
        let planned_tables: BTreeSet<(Family, u32)> = plan
            .routes
            .iter()
            .map(|r| (r.family, r.table))
            .collect_set();
        for r in &before.routes {
            if !planned_tables.contains(&(r.family, r.table)) {
                self.rt.delete_route(r.family, r.table)?;
                steps.push(Step::RouteDeleted(r.clone()));
                report.routes_removed += 1;
            }
        }
        Ok(report)
    }

    fn compare(&mut self, plan: &Plan, tables: &BTreeSet<u32>) -> Result<()> {
        let (_, names) = self.links()?;
        let now = self.installed(Some(tables), &names)?;
        let want_rules: BTreeSet<IpRule> = plan.rules.iter().cloned().collect_set();
        let want_routes: BTreeSet<Route> = plan.routes.iter().cloned().collect_set();
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
        if !now.unknown.is_empty() {
            problems.push(format!(
                "{} unrecognised rules or routes of multiwan's",
                now.unknown.len()
            ));
        }
        if now.digest.as_deref() != Some(plan.digest.as_str()) {
            problems.push(format!(
                "nft table digest is {:?}, expected {}",
                now.digest, plan.digest
            ));
        } else {
            for (p, s) in self.policy_states(plan)? {
                if !s.matches(&p) {
                    let missing: Vec<_> = p
                        .elements
                        .iter()
                        .filter(|e| !s.elements.contains(e))
                        .collect();
                    let extra: Vec<_> = s
                        .elements
                        .iter()
                        .filter(|e| !p.elements.contains(e))
                        .collect();
                    problems.push(format!(
                        "policy {} is not the planned one ({} of {} elements read back, missing {missing:?}, unexpected {extra:?}, modulus {:?})",
                        p.chain,
                        s.elements.len(),
                        p.elements.len(),
                        s.modulus
                    ));
                }
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
}

/// The kernel's answers to the route lookups the hook chains make for a new connection from
/// `src` to `dst` (for `explain`): with multiwan's none mark and unmarked, as `egress` asks
/// for a LAN connection; the router's own (`own`: `src` is one of its addresses) unmarked,
/// as an output lookup. Read-only.
pub fn explain_lookups(
    mark_none: u32,
    src: IpAddr,
    dst: IpAddr,
    own: bool,
) -> Result<multiwan_core::explain::Lookups> {
    let mut rt = Rtnl::open()?;
    let names: BTreeMap<u32, String> = rt.links()?.into_iter().map(|l| (l.index, l.name)).collect();
    let mut ask = |mark: u32| -> Result<Option<multiwan_core::explain::Routed>> {
        Ok(rt
            .route_get(dst, src, own, mark)?
            .and_then(|m| netlink::routed(&m, &names)))
    };
    let none_mark = if own { None } else { ask(mark_none)? };
    Ok(multiwan_core::explain::Lookups {
        none_mark,
        unmarked: ask(0)?,
    })
}

/// A policy with the state the kernel held before (for rollback).
fn previous_policy(p: &PolicyMap, s: &PolicyState) -> PolicyMap {
    let mut prev = p.clone();
    prev.elements = s.elements.clone();
    if let (multiwan_core::plan::Selector::Numgen { random, .. }, Some(m)) = (p.selector, s.modulus)
    {
        prev.selector = multiwan_core::plan::Selector::Numgen { random, modulus: m };
    }
    prev
}

fn ruleset_name() -> Result<String> {
    Ok(format!("ruleset-netns{}.nft", crate::rundir::netns_id()?))
}

fn describe_route(
    m: &netlink_packet_route::route::RouteMessage,
    names: &BTreeMap<u32, String>,
) -> String {
    let r = netlink::parse_route(m, names);
    format!(
        "table {}: {}",
        netlink::table_of(m),
        match r {
            Some(r) => r.args().join(" "),
            None => format!("a /{} route", m.header.destination_prefix_length),
        }
    )
}

/// Of gateways that tie for the default route (in the kernel's order), the first whose
/// neighbour entry has not failed: `FAILED`, or `INCOMPLETE` (resolving again after failing),
/// means the kernel found it unreachable. No entry, or any other state, is not evidence
/// against it. When every one has failed, the first.
fn pick_reachable(
    tied: &[IpAddr],
    states: &[(IpAddr, netlink_packet_route::neighbour::NeighbourState)],
) -> Option<IpAddr> {
    use netlink_packet_route::neighbour::NeighbourState;
    let failed = |gw: &IpAddr| {
        states.iter().any(|(a, s)| {
            a == gw && matches!(s, NeighbourState::Failed | NeighbourState::Incomplete)
        })
    };
    tied.iter()
        .find(|gw| !failed(gw))
        .or_else(|| tied.first())
        .copied()
}

impl Kernel for System {
    fn facts(&mut self, auto: &BTreeSet<String>, auto6: &BTreeSet<String>) -> Result<Facts> {
        let links = self.rt.links()?;
        let mut by_index: BTreeMap<u32, &str> = BTreeMap::new();
        let mut out: BTreeMap<String, Link> = BTreeMap::new();
        for l in &links {
            by_index.insert(l.index, &l.name);
            out.insert(
                l.name.clone(),
                Link {
                    up: l.up,
                    ..Link::default()
                },
            );
        }
        for family in Family::ALL {
            for a in self.rt.addrs(family)? {
                if let Some(l) = by_index.get(&a.index).and_then(|n| out.get_mut(*n)) {
                    match (a.ip, a.net) {
                        (IpAddr::V4(ip), net) => {
                            l.addrs.push(ip);
                            if let IpAddr::V4(n) = net {
                                l.onlink4.extend(Ipv4Net::holding(n, a.prefix_len));
                            }
                        }
                        (IpAddr::V6(ip), net) => {
                            l.addrs6.push(ip);
                            if let IpAddr::V6(n) = net {
                                l.onlink6.extend(Ipv6Net::holding(n, a.prefix_len));
                            }
                        }
                    }
                }
            }
        }
        self.onlink_routes6(&links, &mut out)?;
        for (family, wanted) in [(Family::V4, auto), (Family::V6, auto6)] {
            for l in links.iter().filter(|l| wanted.contains(&l.name)) {
                let gw = self.learned_gateway(family, l.index)?;
                if let Some(link) = out.get_mut(&l.name) {
                    match gw {
                        Some(IpAddr::V4(g)) => link.gateway = Some(g),
                        Some(IpAddr::V6(g)) => link.gateway6 = Some(g),
                        None => {}
                    }
                }
            }
        }
        let mut foreign_marks = Vec::new();
        for family in Family::ALL {
            for m in self.rt.rules(family)? {
                if !netlink::rule_is_ours(&m) {
                    foreign_marks.extend(netlink::rule_fwmark(&m));
                }
            }
        }
        multiwan_core::order::sort(&mut foreign_marks);
        foreign_marks.dedup();
        Ok(Facts {
            links: Some(out),
            foreign_marks,
            ..Facts::default()
        })
    }

    fn ids(&mut self, mark_mask: u32) -> Result<BTreeMap<String, u32>> {
        if self.nft.table_comment()?.is_none() {
            return Ok(BTreeMap::new());
        }
        self.nft
            .ids(mark_mask)
            .context("reading the installed uplink ids (nothing was changed)")
    }

    fn apply(&mut self, plan: &Plan) -> Result<ApplyReport> {
        let (index, names) = self.links()?;
        let tables = self.tables_for(plan, &names)?;
        let before = self.installed(Some(&tables), &names)?;
        if !before.foreign.is_empty() {
            bail!(
                "routing tables multiwan would use already hold routes it did not install ({}); nothing was changed. Choose a free range with [kernel] table_base",
                before.foreign.join("; ")
            );
        }
        // Validate a new ruleset before touching anything.
        if before.digest.as_deref() != Some(plan.digest.as_str()) {
            nft::load(&plan.nft_transaction(), true).context("checking the nftables ruleset")?;
        }
        // `down` restores the sysctls from the run directory: it must be usable, and what an
        // earlier apply saved there readable, before anything changes.
        crate::rundir::prepare(&self.run_dir)
            .and_then(|()| sysctl::check_saved(&self.run_dir))
            .context("the run directory cannot keep what apply replaces (nothing was changed)")?;
        let mut steps = Vec::new();
        let result = self
            .apply_steps(plan, &before, &index, &mut steps)
            .and_then(|r| self.compare(plan, &tables).map(|()| r))
            .and_then(|r| self.save_applied(plan, &steps).map(|()| r));
        match result {
            Ok(report) => {
                self.tables = Some(plan.routes.iter().map(|r| r.table).collect_set());
                // What the plan no longer sets goes back to what it was before multiwan.
                match sysctl::restore_unplanned(&self.run_dir, &plan.sysctls) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(restored = n, "sysctls no longer planned restored"),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot restore the sysctls no longer planned")
                    }
                }
                Ok(report)
            }
            Err(e) => {
                self.undo(steps, &index);
                Err(e.context("apply failed; every change was rolled back"))
            }
        }
    }

    fn verify(&mut self, plan: &Plan) -> Result<()> {
        let (_, names) = self.links()?;
        let tables = self.tables_for(plan, &names)?;
        self.compare(plan, &tables)
    }

    fn flush(&mut self, mark: u32, mask: u32, family: Family) -> Result<()> {
        conntrack::flush(mark, mask, family)
    }

    fn down(&mut self) -> Result<DownReport> {
        let (_, names) = self.links()?;
        let now = self.installed(None, &names)?;
        let mut report = DownReport::default();
        if now.digest.is_some() {
            self.nft.delete_table()?;
            report.nft_removed = true;
        }
        for r in &now.rules {
            self.rt.delete_rule(r)?;
            report.rules_removed += 1;
        }
        for u in &now.unknown {
            self.rt.delete_unknown(u)?;
            match u {
                Unknown::Rule(_) => report.rules_removed += 1,
                Unknown::Route(_) => report.routes_removed += 1,
            }
        }
        for r in &now.routes {
            self.rt.delete_route(r.family, r.table)?;
            report.routes_removed += 1;
        }
        report.sysctls_restored = sysctl::restore_saved(&self.run_dir)?;
        let saved = self.run_dir.join(ruleset_name()?);
        if saved.exists() {
            std::fs::remove_file(&saved)
                .with_context(|| format!("removing {}", saved.display()))?;
        }
        self.known_good = None;
        self.tables = None;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::pick_reachable;
    use netlink_packet_route::neighbour::NeighbourState as S;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_failed_router_is_passed_over_for_one_that_is_not() {
        let (old, new) = (ip("fe80::1"), ip("fe80::beef:1"));
        let tied = [old, new];
        // Both working (or never resolved): the kernel's first stays, so nothing flaps.
        assert_eq!(pick_reachable(&tied, &[]), Some(old));
        assert_eq!(
            pick_reachable(&tied, &[(old, S::Reachable), (new, S::Stale)]),
            Some(old)
        );
        assert_eq!(
            pick_reachable(&tied, &[(old, S::Stale), (new, S::Failed)]),
            Some(old)
        );
        // The first failed, or is resolving again after failing: the other one.
        assert_eq!(
            pick_reachable(&tied, &[(old, S::Failed), (new, S::Stale)]),
            Some(new)
        );
        assert_eq!(pick_reachable(&tied, &[(old, S::Incomplete)]), Some(new));
        // Every one failed: no better choice than the kernel's first.
        assert_eq!(
            pick_reachable(&tied, &[(old, S::Failed), (new, S::Failed)]),
            Some(old)
        );
        assert_eq!(pick_reachable(&[], &[]), None);
    }
}
