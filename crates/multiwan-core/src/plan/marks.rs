//! Uplink ids and the chains that write marks: each uplink's `up_NAME` (count the new
//! connection, set connection and packet mark) and `restore_NAME` (packet mark from the
//! connection mark), the reserved `to_main` / `to_none`, and the `restore` map from connection
//! mark to restore chain — which is also where the installed ids are read back from.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{hex, Ctx, RESTORE_MAP};
use crate::model::Config;

/// Errors that can only be found with runtime inputs (the config itself is valid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Every uplink id the mark mask allows is taken.
    #[error("no free uplink id: mark mask {mask:#010x} has room for {capacity} uplinks")]
    NoFreeId {
        /// The `[kernel] mark_mask`.
        mask: u32,
        /// How many uplink ids the mask holds (`KernelOpts::id_capacity`).
        capacity: u32,
    },
}

/// Assigns each uplink a stable id (its mark is `id << shift`, its table `table_base + id`).
/// Ids already in use (read back from the kernel) are kept for uplinks that still exist, so a
/// reload or restart never re-marks a live connection; new uplinks take the lowest free id.
pub fn assign_ids(
    cfg: &Config,
    previous: &BTreeMap<String, u32>,
) -> Result<BTreeMap<String, u32>, PlanError> {
    let capacity = cfg.kernel.id_capacity();
    let mut ids = BTreeMap::new();
    let mut used = BTreeSet::new();
    for u in &cfg.uplinks {
        if let Some(&id) = previous.get(&u.name) {
            if (1..=capacity).contains(&id) && used.insert(id) {
                ids.insert(u.name.clone(), id);
            }
        }
    }
    for u in &cfg.uplinks {
        if ids.contains_key(&u.name) {
            continue;
        }
        let id = (1..=capacity)
            .find(|i| !used.contains(i))
            .ok_or(PlanError::NoFreeId {
                mask: cfg.kernel.mark_mask,
                capacity,
            })?;
        used.insert(id);
        ids.insert(u.name.clone(), id);
    }
    Ok(ids)
}

/// The per-uplink counters and chains, and the reserved `to_main` / `to_none` chains.
pub(super) fn chains(ctx: &Ctx) -> String {
    let mut w = String::new();
    for (i, u) in ctx.cfg.uplinks.iter().enumerate() {
        let mark = ctx.mark(i);
        let _ = writeln!(w, "\tcounter conns_{} {{\n\t}}\n", u.name);
        let _ = writeln!(
            w,
            "\tchain up_{} {{\n\t\tcounter name \"conns_{}\"\n\t\t{}\n\t\t{}\n\t}}\n",
            u.name,
            u.name,
            ctx.set_mark_stmts(mark, true),
            ctx.set_mark_stmts(mark, false)
        );
        let _ = writeln!(
            w,
            "\tchain restore_{} {{\n\t\t{}\n\t}}\n",
            u.name,
            ctx.set_mark_stmts(mark, false)
        );
    }
    for (name, mark) in [("main", ctx.k.mark_main()), ("none", ctx.k.mark_none())] {
        let _ = writeln!(
            w,
            "\tchain to_{name} {{\n\t\t{}\n\t\t{}\n\t}}\n",
            ctx.set_mark_stmts(mark, true),
            ctx.set_mark_stmts(mark, false)
        );
        let _ = writeln!(
            w,
            "\tchain restore_{name} {{\n\t\t{}\n\t}}\n",
            ctx.set_mark_stmts(mark, false)
        );
    }
    w
}

/// Connection mark → restore chain, shared by `prerouting` (LAN side) and `output`. The kernel
/// reads the installed uplink ids back from its elements.
pub(super) fn restore_map(ctx: &Ctx) -> String {
    let mut restore: Vec<(u32, String)> = ctx
        .cfg
        .uplinks
        .iter()
        .enumerate()
        .map(|(i, u)| (ctx.mark(i), format!("restore_{}", u.name)))
        .collect();
    restore.push((ctx.k.mark_main(), "restore_main".into()));
    restore.push((ctx.k.mark_none(), "restore_none".into()));
    crate::order::sort(&mut restore);
    let elements = restore
        .iter()
        .map(|(m, c)| format!("{} : goto {c}", hex(*m)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("\tmap {RESTORE_MAP} {{\n\t\ttype mark : verdict\n\t\telements = {{ {elements} }}\n\t}}\n\n")
}

#[cfg(test)]
mod tests {
    use super::super::tests::{cfg, ids, TWO};
    use super::*;
    use crate::model::KernelOpts;

    #[test]
    fn golden_mark_chains_and_restore_map() {
        let c = cfg(TWO);
        let ids = ids(&c);
        let ctx = Ctx {
            cfg: &c,
            k: KernelOpts::default(),
            ids: &ids,
        };
        insta::assert_snapshot!(format!("{}{}", chains(&ctx), restore_map(&ctx)));
    }
}
