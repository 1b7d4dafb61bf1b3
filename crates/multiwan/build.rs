//! Generates the shell completions and the man page from the command-line definition
//! (`src/args.rs`, compiled here as it is in the crate) into `OUT_DIR`; the binary embeds
//! them for `multiwan completions SHELL` and `multiwan manpage`. Doing it here keeps the
//! generators (`clap_complete`, `clap_mangen`, ~107 KiB) out of the router binary, and the
//! files cannot drift from the options the binary parses.

use std::path::{Path, PathBuf};

// Only the definition is needed here; the crate uses the rest.
#[allow(dead_code)]
#[path = "src/args.rs"]
mod args;

fn main() {
    println!("cargo:rerun-if-changed=src/args.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut cmd = <args::Cli as clap::CommandFactory>::command();
    for shell in args::Shell::ALL {
        let generator = match shell {
            args::Shell::Bash => clap_complete::Shell::Bash,
            args::Shell::Elvish => clap_complete::Shell::Elvish,
            args::Shell::Fish => clap_complete::Shell::Fish,
            args::Shell::Powershell => clap_complete::Shell::PowerShell,
            args::Shell::Zsh => clap_complete::Shell::Zsh,
        };
        let mut text = Vec::new();
        clap_complete::generate(generator, &mut cmd, "multiwan", &mut text);
        write(&out.join(shell.file_name()), &text);
    }
    let mut man = Vec::new();
    clap_mangen::Man::new(<args::Cli as clap::CommandFactory>::command())
        .section("8")
        .render(&mut man)
        .expect("rendering the man page into memory");
    write(&out.join("multiwan.8"), &man);
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
