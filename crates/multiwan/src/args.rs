//! The command line's definition: every command, option and default, and nothing else. It
//! depends on `clap` and `std` only, because `build.rs` compiles this same file to generate
//! the shell completions and the man page at build time: the router binary embeds their text
//! instead of linking the generators (`clap_complete`, `clap_mangen`), and they can never
//! drift from the options it parses. Help text comes from these doc comments.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/multiwan/multiwan.toml";
/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/multiwan";

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
    Run(RunArgs),
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
    Status(Conn),
    /// List live connections with the uplink each uses.
    Flows {
        /// Only this uplink's connections.
        #[arg(long)]
        uplink: Option<String>,
        #[command(flatten)]
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
        #[arg(value_parser = ["disable", "enable"])]
        action: String,
        #[command(flatten)]
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
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Config file.
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Directory for the daemon's state (pid file, state.json, saved sysctls).
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Remove everything multiwan installed when stopping (default: leave it, fail-static).
    #[arg(long)]
    pub cleanup: bool,
}

/// Options shared by the commands that talk to the daemon.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The daemon's run directory.
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Print JSON (the documented control-protocol types) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `multiwan explain` options.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Source address of the new connection (a LAN host, or the router itself).
    #[arg(long)]
    pub src: IpAddr,
    /// Destination address.
    #[arg(long)]
    pub dst: Option<IpAddr>,
    /// Protocol: tcp, udp or icmp.
    #[arg(long)]
    pub proto: Option<String>,
    /// Source port.
    #[arg(long)]
    pub sport: Option<u16>,
    /// Destination port.
    #[arg(long)]
    pub dport: Option<u16>,
    /// Explain against this config with every uplink up, without a daemon.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

/// `multiwan doctor` options.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Config file.
    #[arg(short, long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print the versioned JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The shells `multiwan completions` writes for: the generators' own list, in their order
/// and spelling, so `--help` reads as before (no help per value, like theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Elvish,
    Fish,
    #[value(name = "powershell")]
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
