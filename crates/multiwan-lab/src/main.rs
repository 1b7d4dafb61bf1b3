//! The `multiwan-lab` binary: parse the options, check for root, run the demo or the
//! benchmarks; exit 1 with the error chain on failure, 130 after Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = multiwan_lab::LabArgs::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("error: multiwan-lab needs root: it creates network namespaces");
        return ExitCode::from(1);
    }
    match multiwan_lab::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
