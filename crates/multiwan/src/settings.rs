//! What every command shares, and depends on nothing else of the binary but the command
//! line's definition: the default paths,
//! loading a config file into a validated model, and the failure type that maps to exit codes.

use std::path::Path;

use multiwan_core::Config;

// The default paths are part of the command line's definition (shown in `--help` and the
// man page, which build.rs generates from that file alone); everything else takes them here.
pub use crate::args::{DEFAULT_CONFIG, DEFAULT_RUN_DIR};

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
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Config(format!("{}: cannot read config: {e}", path.display())))?;
    multiwan_core::load(&path.display().to_string(), &bytes)
        .map_err(|e| Failure::Config(e.to_string()))
}
