//! The plan for this network namespace as it is now: the kernel's interfaces, addresses and
//! installed uplink ids read through [`crate::kernel`], and — without health checks, which
//! are the daemon's — link state deciding which uplinks are usable. Shared by `plan --live`,
//! `apply` and `doctor`, so it sits below both the command line and the operator commands.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use multiwan_core::plan::assign_ids;
use multiwan_core::{Config, Facts};

use crate::kernel::{Kernel, System};
use crate::settings::DEFAULT_RUN_DIR;
use multiwan_core::order::Collect;

/// Computes the plan for this namespace from the live kernel state; also returns the uplinks
/// that cannot take connections right now.
pub fn live_plan(cfg: &Config) -> Result<(multiwan_core::Plan, Vec<String>)> {
    let auto = cfg
        .uplinks
        .iter()
        .filter(|u| u.gateway_auto)
        .map(|u| u.interface.clone())
        .collect_set();
    let auto6 = cfg
        .uplinks
        .iter()
        .filter(|u| u.ipv6.as_ref().is_some_and(|v| v.gateway.is_none()))
        .map(|u| u.interface.clone())
        .collect_set();
    let mut k = System::open(Path::new(DEFAULT_RUN_DIR))?;
    let facts = k.facts(&auto, &auto6)?;
    let installed = match k.ids(cfg.kernel.mark_mask) {
        Ok(i) => i,
        // Reading nftables needs root; `plan --live` must not. Without it the installed
        // uplink ids are unknown and fresh ones are shown.
        Err(e) if !nix::unistd::geteuid().is_root() => {
            eprintln!("note: not root, so the installed state is unknown ({e:#}); showing fresh uplink ids");
            BTreeMap::new()
        }
        Err(e) => return Err(e),
    };
    let ids = assign_ids(cfg, &installed)?;
    let usable = usable_now(cfg, &facts);
    let usable6: BTreeSet<String> = cfg
        .uplinks
        .iter()
        .filter(|u| multiwan_core::plan::next_hop6(u, &facts).is_some())
        .map(|u| u.name.clone())
        .collect_set();
    let unusable = cfg
        .uplinks
        .iter()
        .filter(|u| !usable.contains(&u.name))
        .map(|u| u.name.clone())
        .collect();
    Ok((
        multiwan_core::plan::plan_dual(cfg, &ids, &usable, &usable6, &facts),
        unusable,
    ))
}

/// Without health checks (the daemon's job), an uplink is usable when its interface is up and,
/// if it has a gateway, holds an address (and an `auto` gateway has been learned).
pub fn usable_now(cfg: &Config, facts: &Facts) -> BTreeSet<String> {
    cfg.uplinks
        .iter()
        .filter(|u| multiwan_core::plan::next_hop(u, facts).is_some())
        .map(|u| u.name.clone())
        .collect_set()
}
