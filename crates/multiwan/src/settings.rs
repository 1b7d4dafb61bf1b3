//! What every command shares, and depends on nothing else of the binary: the default paths,
//! loading a config file into a validated model, and the failure type that maps to exit codes.

use std::path::Path;

use multiwan_core::Config;

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/multiwan/multiwan.toml";
/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/multiwan";

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
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Config(format!("{}: cannot read config: {e}", path.display())))?;
    multiwan_core::load(&path.display().to_string(), &text)
        .map_err(|e| Failure::Config(e.to_string()))
}
