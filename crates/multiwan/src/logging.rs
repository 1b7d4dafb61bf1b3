//! Logging setup: plain text on stderr, or native journald entries (with `UPLINK=`, `STATE=`,
//! `REASON=` … fields) when stderr *is* the journal; levels from `MULTIWAN_LOG`.
//!
//! `MULTIWAN_LOG` takes `LEVEL` or `LEVEL,target=LEVEL,…` (e.g. `info,multiwan::daemon=debug`),
//! parsed by `tracing_subscriber::filter::Targets`: the same syntax as `RUST_LOG` without the
//! regex span filters, which multiwan never used and which cost a regex engine in the binary.

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The environment variable that sets log levels.
pub const ENV: &str = "MULTIWAN_LOG";

/// The filter for `spec` (a `MULTIWAN_LOG` value), or an error naming what is wrong.
pub fn parse_filter(spec: &str) -> Result<Targets, String> {
    let spec = spec.trim();
    // A bare level is the default for every target: `Targets` reads it that way too, but
    // an explicit parse gives "off"/"debug" the same meaning whatever the case.
    if let Ok(level) = LevelFilter::from_str(spec) {
        return Ok(Targets::new().with_default(level));
    }
    Targets::from_str(spec).map_err(|e| format!("{ENV}={spec:?}: {e}"))
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` for a
/// service whose output goes there, and only a matching stderr counts (a child whose stderr
/// was redirected inherits the variable but not the stream).
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // The magic link resolves to the stream itself, so its metadata is stderr's.
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            m.dev() == dev && m.ino() == ino
        }
        Err(_) => false,
    }
}

/// Installs the global subscriber: `default_level` unless `MULTIWAN_LOG` says otherwise.
pub fn init(default_level: LevelFilter) {
    let (filter, bad) = match std::env::var(ENV) {
        Ok(spec) => match parse_filter(&spec) {
            Ok(f) => (f, None),
            Err(e) => (Targets::new().with_default(default_level), Some(e)),
        },
        Err(_) => (Targets::new().with_default(default_level), None),
    };
    let journal = stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref())
        .then(|| match tracing_journald::layer() {
            // Field names as written in the code (`uplink` → `UPLINK=`), so `journalctl
            // UPLINK=isp1` works; the crate's default prefix would make it `F_UPLINK`.
            Ok(l) => Some(l.with_field_prefix(None)),
            // No journald socket (a container without one): plain text still reaches it.
            Err(_) => None,
        })
        .flatten();
    let registry = tracing_subscriber::registry();
    if let Some(j) = journal {
        registry.with(j.with_filter(filter)).init();
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour only for a person at a terminal; log files get plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        registry.with(fmt.with_filter(filter)).init();
    }
    if let Some(e) = bad {
        tracing::warn!("ignoring an invalid log filter ({e}); using {default_level}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn a_bare_level_applies_to_every_target() {
        let f = parse_filter("debug").expect("parse");
        assert!(f.would_enable("multiwan::daemon", &Level::DEBUG));
        assert!(!f.would_enable("multiwan::daemon", &Level::TRACE));
        let f = parse_filter("OFF").expect("parse");
        assert!(!f.would_enable("multiwan", &Level::ERROR));
    }

    #[test]
    fn per_target_levels_keep_working() {
        let f = parse_filter("info,multiwan::daemon::server=debug").expect("parse");
        assert!(f.would_enable("multiwan::daemon::server", &Level::DEBUG));
        assert!(!f.would_enable("multiwan::daemon::engine", &Level::DEBUG));
        assert!(f.would_enable("multiwan::daemon::engine", &Level::INFO));
    }

    #[test]
    fn a_bad_filter_is_an_error_that_names_the_variable() {
        let e = parse_filter("multiwan=loud").expect_err("bad level");
        assert!(e.contains("MULTIWAN_LOG"), "{e}");
    }

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:2")));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self/fd/2").expect("stderr");
        assert!(stderr_is_journal(Some(&format!("{}:{}", m.dev(), m.ino()))));
    }
}
