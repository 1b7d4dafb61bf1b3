//! The command line: `check`, `plan`, `apply`, `down`, `run` and the operator commands. Help
//! text comes from these doc comments. Errors are printed with their whole chain; config
//! errors exit 2, runtime failures 1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use multiwan_core::plan::{assign_ids, plan};
use multiwan_core::{Config, Facts};

use crate::kernel::{Kernel, System};
pub use crate::settings::{load_config, Failure, DEFAULT_CONFIG, DEFAULT_RUN_DIR};

/// Balance a Linux gateway's connections over several internet uplinks.
#[derive(Debug, Parser)]
#[command(name = "multiwan", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Validate the config without touching anything (exit 2 on any error).
    Check {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the nftables ruleset, ip rules, routes and sysctls that `apply` would install.
    Plan {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Use this machine's interfaces, addresses and installed uplink ids, showing exactly
        /// what `apply` would install here (needs no root). Without it the plan assumes every
        /// uplink interface exists and is usable.
        #[arg(long)]
        live: bool,
    },
    /// Install the plan in the current network namespace, atomically and idempotently.
    Apply {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Directory for multiwan's state (saved sysctl values).
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Remove everything multiwan installed in this network namespace, and nothing else.
    Down {
        /// Directory for multiwan's state (saved sysctl values).
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Run the daemon: health checks, failover, address changes, reload on SIGHUP.
    Run(crate::daemon::RunArgs),
    /// Make the running daemon re-read its config (SIGHUP). With -c the file is validated
    /// first, so mistakes are reported here (exit 2) rather than only in the daemon's log.
    Reload {
        /// Validate this config before signalling.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The daemon's run directory.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Show every uplink's state, reason, RTT, loss, connections and traffic, and the rules.
    Status(crate::operator::Conn),
    /// List live connections with the uplink each uses.
    Flows {
        /// Only this uplink's connections.
        #[arg(long)]
        uplink: Option<String>,
        #[command(flatten)]
        conn: crate::operator::Conn,
    },
    /// Explain where a new connection would go, and why.
    Explain(crate::operator::ExplainArgs),
    /// Stream transitions and once-a-second probe summaries (JSON Lines with --json).
    Watch(crate::operator::Conn),
    /// Drain (disable) or undrain (enable) an uplink without editing the config.
    Uplink {
        /// The uplink's name.
        name: String,
        /// `disable` or `enable`.
        #[arg(value_parser = ["disable", "enable"])]
        action: String,
        #[command(flatten)]
        conn: crate::operator::Conn,
    },
    /// Read-only pre-flight check of this machine against the config: what would break
    /// multiwan or what it would break, each with its fix (exit 0 clean, 1 warnings, 2
    /// blockers).
    Doctor(crate::operator::doctor::DoctorArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Manpage,
}

/// Computes the plan for this namespace from the live kernel state; also returns the uplinks
/// that cannot take connections right now.
pub fn live_plan(cfg: &Config) -> Result<(multiwan_core::Plan, Vec<String>)> {
    let auto = cfg
        .uplinks
        .iter()
        .filter(|u| u.gateway_auto)
        .map(|u| u.interface.clone())
        .collect();
    let auto6 = cfg
        .uplinks
        .iter()
        .filter(|u| u.ipv6.as_ref().is_some_and(|v| v.gateway.is_none()))
        .map(|u| u.interface.clone())
        .collect();
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
        .collect();
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
        .collect()
}

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
    for k in multiwan_core::correlate::Correlator::shared_by_all(cfg) {
        notes.push(format!(
            "target {} is probed by every uplink: if it stops answering, multiwan reports it suspect and keeps the uplinks (judged by their gateways), but while it is dead an outage of one uplink beyond its gateway goes unnoticed; give each uplink a second target",
            multiwan_core::correlate::target_label(&k)
        ));
    }
    notes
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Cmd::Check { config } => {
            let cfg = load_config(&config)?;
            for n in check_notes(&cfg) {
                eprintln!("note: {n}");
            }
            println!(
                "{}: ok ({} uplinks, {} rules, balance {})",
                config.display(),
                cfg.uplinks.len(),
                cfg.rules.len(),
                cfg.balance.method.as_str()
            );
        }
        Cmd::Plan { config, live } => {
            let cfg = load_config(&config)?;
            let mut out = String::new();
            let p = if live {
                let (p, unusable) = live_plan(&cfg)?;
                for u in unusable {
                    out += &format!("# uplink {u}: interface missing, down or without an address (or gateway): not usable\n");
                }
                p
            } else {
                for u in cfg.uplinks.iter().filter(|u| u.gateway_auto) {
                    out += &format!(
                        "# uplink {}: gateway = \"auto\": its route appears once a default route via {} exists (see --live)\n",
                        u.name, u.interface
                    );
                }
                let ids = assign_ids(&cfg, &BTreeMap::new()).map_err(anyhow::Error::from)?;
                let all = cfg.uplinks.iter().map(|u| u.name.clone()).collect();
                plan(&cfg, &ids, &all, &Facts::default())
            };
            out += &p.to_string();
            crate::operator::emit(out.as_bytes())?;
        }
        Cmd::Apply { config, run_dir } => {
            let cfg = load_config(&config)?;
            require_root("apply")?;
            if let Some(pid) = daemon_in_this_namespace(&run_dir) {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "a multiwan daemon (pid {pid}) manages this network namespace; edit its config and run `multiwan reload` instead (a one-shot apply would undo its failover decisions)"
                )));
            }
            let (p, unusable) = live_plan(&cfg)?;
            for u in &unusable {
                eprintln!("warning: uplink {u}: interface missing, down or without an address; it takes no connections");
            }
            let r = System::open(&run_dir)?.apply(&p)?;
            if r.changed() {
                let nft = if r.nft_replaced {
                    "replaced".to_string()
                } else if r.policies_updated > 0 {
                    format!("kept, {} policies updated", r.policies_updated)
                } else {
                    "unchanged".to_string()
                };
                println!(
                    "applied: nft table {nft}, {} rules added, {} removed, {} routes set, {} removed, {} sysctls set",
                    r.rules_added,
                    r.rules_removed,
                    r.routes_changed,
                    r.routes_removed,
                    r.sysctls_changed
                );
            } else {
                println!("applied: already up to date, nothing changed");
            }
        }
        Cmd::Down { run_dir } => {
            require_root("down")?;
            let r = System::open(&run_dir)?.down()?;
            println!(
                "down: nft table {}, {} rules and {} routes removed, {} sysctls restored",
                if r.nft_removed { "removed" } else { "absent" },
                r.rules_removed,
                r.routes_removed,
                r.sysctls_restored
            );
        }
        Cmd::Run(args) => {
            require_root("run")?;
            crate::daemon::run(args)?;
        }
        Cmd::Reload { config, run_dir } => {
            if let Some(c) = &config {
                load_config(c)?;
            }
            // The pid file's lock tells a live daemon from a stale file.
            let pid = crate::rundir::locked_pid(&run_dir).ok_or_else(|| {
                anyhow::anyhow!("no daemon runs with run directory {}", run_dir.display())
            })?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .map_err(|e| anyhow::anyhow!("signalling multiwan (pid {pid}): {e}"))?;
            println!("reload requested (pid {pid}); the daemon logs the outcome");
        }
        Cmd::Status(c) => crate::operator::status(&c)?,
        Cmd::Flows { uplink, conn } => crate::operator::flows(&conn, uplink)?,
        Cmd::Explain(a) => crate::operator::explain(&a)?,
        Cmd::Watch(c) => crate::operator::watch(&c)?,
        Cmd::Uplink { name, action, conn } => {
            crate::operator::uplink(&conn, &name, action == "enable")?
        }
        Cmd::Doctor(_) => unreachable!("handled in main"),
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "multiwan",
                &mut buf,
            );
            crate::operator::write_out(None, &buf)?;
        }
        Cmd::Manpage => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .section("8")
                .render(&mut buf)
                .map_err(anyhow::Error::from)?;
            crate::operator::write_out(None, &buf)?;
        }
    }
    Ok(())
}

/// The pid of a live `multiwan run` using `run_dir` in this network namespace, if any.
fn daemon_in_this_namespace(run_dir: &Path) -> Option<u32> {
    // Only a daemon holding the pid file's lock counts: a stale file is no daemon.
    let pid = crate::rundir::locked_pid(run_dir)?;
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    (theirs == ours).then_some(pid)
}

fn require_root(what: &str) -> Result<(), Failure> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "`multiwan {what}` changes network configuration and must run as root (try: sudo multiwan {what})"
        )))
    }
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs its transitions by default; one-shot commands only warnings.
    crate::logging::init(if matches!(cli.command, Cmd::Run(_)) {
        tracing_subscriber::filter::LevelFilter::INFO
    } else {
        tracing_subscriber::filter::LevelFilter::WARN
    });
    // Doctor has exit codes of its own (0 clean, 1 warnings, 2 blockers).
    if let Cmd::Doctor(a) = &cli.command {
        return crate::operator::doctor::main(a);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
