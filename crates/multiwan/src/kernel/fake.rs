//! An in-memory [`Kernel`] for the daemon's logic tests: it holds the last applied plan as
//! "installed", reports scripted facts, records every call, and fails on request.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use multiwan_core::plan::{Family, Route};
use multiwan_core::{Facts, Plan};

use super::{ApplyReport, DownReport, Kernel, RouteRefused};

/// The fake kernel's state; tests read and change it between events.
#[derive(Debug, Default)]
pub struct FakeKernel {
    pub facts: Facts,
    pub installed: Option<Plan>,
    /// Ids a previous run left in the "kernel" (adoption).
    pub preinstalled_ids: BTreeMap<String, u32>,
    /// Every successful apply, in order.
    pub applies: Vec<ApplyReport>,
    /// The next this many applies fail (and change nothing).
    pub fail_applies: usize,
    /// (family, interface) whose routes the kernel refuses, as it refuses a gateway it
    /// cannot reach: the apply fails (changing nothing) with [`RouteRefused`] on the first
    /// such route, an uplink's own before a multipath one as `System` orders them.
    pub refuse_routes: BTreeSet<(Family, String)>,
    /// Every failed apply, in order (its error).
    pub failures: Vec<String>,
    /// (mark, mask, family) of every flush.
    pub flushed: Vec<(u32, u32, Family)>,
    pub downs: usize,
}

impl Kernel for FakeKernel {
    fn facts(&mut self, auto: &BTreeSet<String>, auto6: &BTreeSet<String>) -> Result<Facts> {
        let mut f = self.facts.clone();
        if let Some(links) = f.links.as_mut() {
            for (name, l) in links.iter_mut() {
                if !auto.contains(name) {
                    l.gateway = None;
                }
                if !auto6.contains(name) {
                    l.gateway6 = None;
                }
            }
        }
        Ok(f)
    }

    fn ids(&mut self, _mark_mask: u32) -> Result<BTreeMap<String, u32>> {
        Ok(self
            .installed
            .as_ref()
            .map(|p| p.ids.clone())
            .unwrap_or_else(|| self.preinstalled_ids.clone()))
    }

    fn apply(&mut self, plan: &Plan) -> Result<ApplyReport> {
        if self.fail_applies > 0 {
            self.fail_applies -= 1;
            self.failures.push("injected apply failure".into());
            bail!("injected apply failure");
        }
        let refused = |r: &&Route| {
            r.nexthops
                .iter()
                .any(|n| self.refuse_routes.contains(&(r.family, n.dev.clone())))
        };
        let mut routes: Vec<&Route> = plan.routes.iter().collect();
        multiwan_core::order::sort_by_key(&mut routes, |r| r.nexthops.len() > 1);
        if let Some(r) = routes.into_iter().find(refused) {
            let e = anyhow::Error::new(std::io::Error::from_raw_os_error(113))
                .context(RouteRefused(r.clone()));
            self.failures.push(format!("{e:#}"));
            return Err(e.context("apply failed; every change was rolled back"));
        }
        let mut r = ApplyReport::default();
        match &self.installed {
            Some(old) if old.digest == plan.digest => {
                r.policies_updated = plan
                    .policy_maps
                    .iter()
                    .filter(|p| !old.policy_maps.contains(p))
                    .count();
                r.routes_changed = plan
                    .routes
                    .iter()
                    .filter(|x| !old.routes.contains(x))
                    .count();
                r.rules_added = plan.rules.iter().filter(|x| !old.rules.contains(x)).count();
                r.rules_removed = old.rules.iter().filter(|x| !plan.rules.contains(x)).count();
            }
            _ => {
                r.nft_replaced = true;
                r.routes_changed = plan.routes.len();
                r.rules_added = plan.rules.len();
            }
        }
        self.installed = Some(plan.clone());
        self.applies.push(r.clone());
        Ok(r)
    }

    fn verify(&mut self, plan: &Plan) -> Result<()> {
        if self.installed.as_ref() != Some(plan) {
            bail!("the fake kernel holds another plan");
        }
        Ok(())
    }

    fn flush(&mut self, mark: u32, mask: u32, family: Family) -> Result<()> {
        self.flushed.push((mark, mask, family));
        Ok(())
    }

    fn down(&mut self) -> Result<DownReport> {
        self.downs += 1;
        let nft_removed = self.installed.take().is_some();
        Ok(DownReport {
            nft_removed,
            ..DownReport::default()
        })
    }
}
