//! `multiwan`: the binary's library half. Every effect lives here — the kernel interpreter,
//! the daemon and the CLI — while all decisions come from the pure `multiwan-core` crate (the
//! virtual lab is its own crate, `multiwan-lab`, which drives this binary as a user would).

pub mod args;
pub mod cli;
pub mod cmdline;
pub mod control;
pub mod daemon;
pub mod kernel;
pub mod live;
pub mod logging;
pub mod operator;
pub mod rundir;
pub mod settings;
