//! The command line's definition: every command, option and default, and nothing else. The
//! crate compiles it with `std` only; `build.rs` compiles this same file with clap's derives
//! (the `cfg_attr`s below; the crate has `cfg(without_clap)`) to generate the shell
//! completions, the man page and the table [`crate::cmdline`] parses with, so the router
//! binary links neither clap nor the generators, and none of them can drift from this
//! definition. Help text comes from these doc comments.

use std::net::IpAddr;
use std::path::PathBuf;

#[cfg(not(without_clap))]
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/multiwan/multiwan.toml";
/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/multiwan";

/// Balance a Linux gateway's connections over several internet uplinks.
#[derive(Debug)]
#[cfg_attr(not(without_clap), derive(Parser))]
#[cfg_attr(not(without_clap), command(name = "multiwan", version, about, long_about = None))]
pub struct Cli {
    #[cfg_attr(not(without_clap), command(subcommand))]
    pub command: Cmd,
}

/// Commands.
#[derive(Debug)]
#[cfg_attr(not(without_clap), derive(Subcommand))]
pub enum Cmd {
    /// Validate the config without touching anything (exit 2 on any error).
    Check {
        /// Config file.
        #[cfg_attr(not(without_clap), arg(short, long, default_value = DEFAULT_CONFIG))]
        config: PathBuf,
    },
    /// Print the nftables ruleset, ip rules, routes and sysctls that `apply` would install.
    Plan {
        /// Config file.
        #[cfg_attr(not(without_clap), arg(short, long, default_value = DEFAULT_CONFIG))]
        config: PathBuf,
        /// Use this machine's interfaces, addresses and installed uplink ids, showing exactly
        /// what `apply` would install here (needs no root). Without it the plan assumes every
        /// uplink interface exists and is usable.
        #[cfg_attr(not(without_clap), arg(long))]
        live: bool,
    },
    /// Install the plan in the current network namespace, atomically and idempotently.
    Apply {
        /// Config file.
        #[cfg_attr(not(without_clap), arg(short, long, default_value = DEFAULT_CONFIG))]
        config: PathBuf,
        /// Directory for multiwan's state (saved sysctl values).
        #[cfg_attr(not(without_clap), arg(long, default_value = DEFAULT_RUN_DIR))]
        run_dir: PathBuf,
    },
    /// Remove everything multiwan installed in this network namespace, and nothing else.
    Down {
        /// Directory for multiwan's state (saved sysctl values).
        #[cfg_attr(not(without_clap), arg(long, default_value = DEFAULT_RUN_DIR))]
        run_dir: PathBuf,
    },
    /// Run the daemon: health checks, failover, address changes, reload on SIGHUP.
    Run(RunArgs),
    /// Make the running daemon re-read its config (SIGHUP). With -c the file is validated
    /// first, so mistakes are reported here (exit 2) rather than only in the daemon's log.
    Reload {
        /// Validate this config before signalling.
        #[cfg_attr(not(without_clap), arg(short, long))]
        config: Option<PathBuf>,
        /// The daemon's run directory.
        #[cfg_attr(not(without_clap), arg(long, default_value = DEFAULT_RUN_DIR))]
        run_dir: PathBuf,
    },
    /// Show every uplink's state, reason, RTT, loss, connections and traffic, and the rules.
    Status(Conn),
    /// List live connections with the uplink each uses.
    Flows {
        /// Only this uplink's connections.
        #[cfg_attr(not(without_clap), arg(long))]
        uplink: Option<String>,
        #[cfg_attr(not(without_clap), command(flatten))]
        conn: Conn,
    },
    /// Explain where a new connection would go, and why.
    Explain(ExplainArgs),
    /// Stream transitions and once-a-second probe summaries (JSON Lines with --json).
    Watch(Conn),
    /// Drain (disable) or undrain (enable) an uplink without editing the config.
    Uplink {
        /// The uplink's name.
        name: String,
        /// `disable` or `enable`.
        #[cfg_attr(not(without_clap), arg(value_parser = ["disable", "enable"]))]
        action: String,
        #[cfg_attr(not(without_clap), command(flatten))]
        conn: Conn,
    },
    /// Read-only pre-flight check of this machine against the config: what would break
    /// multiwan or what it would break, each with its fix (exit 0 clean, 1 warnings, 2
    /// blockers).
    Doctor(DoctorArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the man page (roff).
    Manpage,
}

/// Options of `multiwan run`.
#[derive(Debug, Clone)]
#[cfg_attr(not(without_clap), derive(Args))]
pub struct RunArgs {
    /// Config file.
    #[cfg_attr(not(without_clap), arg(short, long, default_value = DEFAULT_CONFIG))]
    pub config: PathBuf,
    /// Directory for the daemon's state (pid file, state.json, saved sysctls).
    #[cfg_attr(not(without_clap), arg(long, default_value = DEFAULT_RUN_DIR))]
    pub run_dir: PathBuf,
    /// Remove everything multiwan installed when stopping (default: leave it, fail-static).
    #[cfg_attr(not(without_clap), arg(long))]
    pub cleanup: bool,
}

/// Options shared by the commands that talk to the daemon.
#[derive(Debug, Clone)]
#[cfg_attr(not(without_clap), derive(Args))]
pub struct Conn {
    /// The daemon's run directory.
    #[cfg_attr(not(without_clap), arg(long, default_value = DEFAULT_RUN_DIR))]
    pub run_dir: PathBuf,
    /// Print JSON (the documented control-protocol types) instead of a table.
    #[cfg_attr(not(without_clap), arg(long))]
    pub json: bool,
}

/// `multiwan explain` options.
#[derive(Debug, Clone)]
#[cfg_attr(not(without_clap), derive(Args))]
pub struct ExplainArgs {
    /// Source address of the new connection (a LAN host, or the router itself: with
    /// `[balance] local = false` the router's own connections are not balanced).
    #[cfg_attr(not(without_clap), arg(long))]
    pub src: IpAddr,
    /// Destination address. One multiwan never balances is answered "not balanced", with
    /// why: the router's own address, broadcast, multicast, IPv6 link-local, or on a
    /// connected subnet (an uplink's: its gateway, modem or DHCP server; another LAN's).
    #[cfg_attr(not(without_clap), arg(long))]
    pub dst: Option<IpAddr>,
    /// Protocol: tcp, udp or icmp.
    #[cfg_attr(not(without_clap), arg(long))]
    pub proto: Option<String>,
    /// Source port.
    #[cfg_attr(not(without_clap), arg(long))]
    pub sport: Option<u16>,
    /// Destination port.
    #[cfg_attr(not(without_clap), arg(long))]
    pub dport: Option<u16>,
    /// Explain against this config with every uplink up, without a daemon (and without the
    /// interfaces' addresses: whether the destination is on a connected subnet, or the
    /// source the router's own, is not told).
    #[cfg_attr(not(without_clap), arg(short, long))]
    pub config: Option<PathBuf>,
    #[cfg_attr(not(without_clap), command(flatten))]
    pub conn: Conn,
}

/// `multiwan doctor` options.
#[derive(Debug, Clone)]
#[cfg_attr(not(without_clap), derive(Args))]
pub struct DoctorArgs {
    /// Config file.
    #[cfg_attr(not(without_clap), arg(short, long, default_value = DEFAULT_CONFIG))]
    pub config: PathBuf,
    /// Print the versioned JSON report instead of text.
    #[cfg_attr(not(without_clap), arg(long))]
    pub json: bool,
}

/// The shells `multiwan completions` writes for: the generators' own list, in their order
/// and spelling, so `--help` reads as before (no help per value, like theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(without_clap), derive(ValueEnum))]
pub enum Shell {
    Bash,
    Elvish,
    Fish,
    #[cfg_attr(not(without_clap), value(name = "powershell"))]
    Powershell,
    Zsh,
}

impl Shell {
    /// Every shell, for the generator.
    pub const ALL: [Shell; 5] = [
        Shell::Bash,
        Shell::Elvish,
        Shell::Fish,
        Shell::Powershell,
        Shell::Zsh,
    ];

    /// The name on the command line (clap's spelling of the variant).
    pub fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Elvish => "elvish",
            Shell::Fish => "fish",
            Shell::Powershell => "powershell",
            Shell::Zsh => "zsh",
        }
    }

    /// The generated file's name in `OUT_DIR` (also the name packagers install).
    pub fn file_name(self) -> &'static str {
        match self {
            Shell::Bash => "multiwan.bash",
            Shell::Elvish => "multiwan.elv",
            Shell::Fish => "multiwan.fish",
            Shell::Powershell => "_multiwan.ps1",
            Shell::Zsh => "_multiwan",
        }
    }
}
