//! Pure core of multiwan: TOML config → validated model → plan of kernel state.
//!
//! Nothing in this crate performs I/O, spawns processes, reads the clock or talks to the
//! kernel. Everything is a function of its arguments, so every decision multiwan makes can be
//! tested in microseconds without root. The `multiwan` crate interprets plans against the
//! kernel.

// Every public item of the core says what it is.
#![warn(missing_docs)]

pub mod config;
pub mod correlate;
pub mod duration;
pub mod explain;
pub mod health;
pub mod model;
pub mod net;
pub mod order;
pub mod plan;
pub mod rounds;
#[doc(hidden)]
pub mod testkit;

pub use model::{load, Config, ConfigError, Diagnostic, Source};
pub use plan::{plan, Facts, Plan};
