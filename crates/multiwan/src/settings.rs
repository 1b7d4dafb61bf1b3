//! What every command shares, and depends on nothing else of the binary but the command
//! line's definition: the default paths,
//! loading a config file into a validated model, and the failure type that maps to exit codes.

use std::path::Path;

use multiwan_core::Config;

// The default paths are part of the command line's definition (shown in `--help` and the
// man page, which build.rs generates from that file alone); everything else takes them here.
pub use crate::args::{DEFAULT_CONFIG, DEFAULT_RUN_DIR};
/// Where the Debian package puts the example configs.
pub const EXAMPLES_DIR: &str = "/usr/share/doc/multiwan/examples";

/// A failure with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad config or usage: exit 2.
    Config(String),
    /// Runtime failure: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

/// Reads and validates a config file; errors are formatted diagnostics.
pub fn load_config(path: &Path) -> Result<Config, Failure> {
    // Bytes, not text: a file that is not UTF-8 is reported with the position of the first
    // bad byte, like every other config error.
    let bytes = std::fs::read(path).map_err(|e| {
        // A fresh install ships no live config on purpose (it must name this router's
        // interfaces): say where to start from.
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            format!("; no config yet? start from an example in {EXAMPLES_DIR}/ and check it with `multiwan check -c FILE`")
        } else {
            String::new()
        };
        Failure::Config(format!("{}: cannot read config: {e}{hint}", path.display()))
    })?;
    multiwan_core::load(&path.display().to_string(), &bytes)
        .map_err(|e| Failure::Config(e.to_string()))
}

/// [`load_config`] for the daemon (start and reload): also what only this machine can tell,
/// a `control_group` that does not exist here, so the daemon refuses the config (exit 2, or
/// a rejected reload) before it changes anything.
pub fn load_config_for_run(path: &Path) -> Result<Config, Failure> {
    let cfg = load_config(path)?;
    if let Some(g) = &cfg.daemon.control_group {
        group_id(g).map_err(|e| Failure::Config(format!("{}: {e:#}", path.display())))?;
    }
    Ok(cfg)
}

/// The id of group `name` on this system: the error names `daemon.control_group`.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => anyhow::bail!(
            "daemon.control_group: no group named {name:?} on this system (create it, or remove the key)"
        ),
        Err(e) => anyhow::bail!("daemon.control_group: looking up group {name:?}: {e}"),
    }
}

// `check` prints these and `doctor` reports them; both sit above this module.
/// What `check` points out about a valid config: weaknesses, not errors.
pub fn check_notes(cfg: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    for u in &cfg.uplinks {
        let only_gateway = u
            .gateway
            .is_some_and(|g| u.check.targets.iter().all(|t| t.ip() == g));
        if only_gateway {
            notes.push(format!(
                "uplink {} probes only its gateway: a failure beyond the gateway (the ISP's upstream) goes unnoticed; add a target on the internet to [uplink.check] targets",
                u.name
            ));
        }
        let only_gateway6 = u.ipv6.as_ref().is_some_and(|v6| {
            v6.gateway
                .is_some_and(|g| v6.check.targets.iter().all(|t| t.ip() == g))
        });
        if only_gateway6 {
            notes.push(format!(
                "uplink {} probes only its IPv6 gateway: an IPv6 failure beyond it goes unnoticed; add an IPv6 target on the internet to [uplink.check] targets",
                u.name
            ));
        }
    }
    if let Some(g) = &cfg.daemon.control_group {
        if let Err(e) = group_id(g) {
            notes.push(format!(
                "{e:#}: `multiwan run` refuses this config on this machine"
            ));
        }
    }
    let shared = multiwan_core::correlate::Correlator::shared_by_all(cfg);
    // An uplink with a target of its own beside the shared ones is still judged when they
    // are dead: the note is for the uplinks that have none.
    let alone = |family| {
        cfg.uplinks.iter().any(|u| {
            u.check_of(family)
                .is_some_and(|c| c.targets.iter().all(|t| shared.contains(&(c.method, *t))))
        })
    };
    for k in shared
        .iter()
        .filter(|(_, a)| alone(multiwan_core::plan::Family::of(&a.ip())))
    {
        notes.push(format!(
            "target {} is probed by every uplink: if it stops answering, multiwan reports it suspect and keeps the uplinks (judged by their gateways), but while it is dead an outage of one uplink beyond its gateway goes unnoticed; give each uplink a second target",
            multiwan_core::correlate::target_label(k)
        ));
    }
    notes
}
