//! `multiwan-lab`: a virtual network in throwaway network namespaces (LAN hosts, a router,
//! ISPs that drop spoofed sources, an internet server), the `multiwan` router binary run in it
//! exactly as an operator would run it, real traffic, a report — and the benchmarks behind
//! BENCHMARKS.md. The router's namespace tests build on the same pieces.
//!
//! **Invariant:** this crate depends on the router only through what a user sees: its command
//! line, `status --json` / `flows --json`, its log lines and `state.json`. It uses the pure
//! `multiwan-core` for config checks and the shares a config promises, never the router crate.
//!
//! **Invariant:** nothing is left behind. Removing a namespace first stops every process in
//! it ([`netns`]); every file a root command reads lives in a private directory
//! ([`scratch`]) or goes through stdin.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod layout;
pub mod netns;
pub mod router;
pub mod scratch;
pub mod topology;
pub mod traffic;

pub use demo::{run, LabArgs};
