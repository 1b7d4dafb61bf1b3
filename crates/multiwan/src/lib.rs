//! `multiwan`: the binary's library half. Every effect lives here — the kernel interpreter,
//! the CLI, network namespaces and the virtual lab — while all decisions come from the pure
//! `multiwan-core` crate.

pub mod cli;
pub mod control;
pub mod daemon;
pub mod kernel;
pub mod lab;
pub mod netns;
pub mod operator;
pub mod rundir;
pub mod settings;
