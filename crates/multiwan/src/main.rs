//! Entry point: parse the command line, run the command, map errors to exit codes
//! (0 ok, 1 runtime failure, 2 bad config or usage).

use std::process::ExitCode;

fn main() -> ExitCode {
    multiwan::cli::main()
}
