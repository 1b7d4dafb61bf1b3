//! What every command shares, and depends on nothing else of the binary: the default paths,
//! loading a config file into a validated model, and the failure type that maps to exit codes.

use std::path::Path;

use multiwan_core::Config;

/// Default config path.
pub const DEFAULT_CONFIG: &str = "/etc/multiwan/multiwan.toml";
/// Where the Debian package puts the example configs.
pub const EXAMPLES_DIR: &str = "/usr/share/doc/multiwan/examples";
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
