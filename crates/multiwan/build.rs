//! Generates, from the command-line definition (`src/args.rs`, compiled here with clap as it
//! is nowhere else), into `OUT_DIR`:
//! - the shell completions and the man page, which the binary embeds for
//!   `multiwan completions SHELL` and `multiwan manpage`;
//! - `cmdline_spec.rs`: every command's options (names, values, defaults, possible values)
//!   and its help, usage and version texts as clap renders them, read by `src/cmdline.rs`,
//!   the small parser the router binary uses instead of linking clap (~250 KiB);
//! - `cmdline_samples.rs`: command lines with what clap makes of each (the parsed `Cli`, or
//!   the text and exit code it prints), which `cmdline`'s tests hold the parser to.
//!
//! So the generators and clap itself stay out of the router binary, and neither the files nor
//! the parser can drift from the definition.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{Arg, Command, CommandFactory, Parser};

// Only the definition is needed here; the crate uses the rest.
#[allow(dead_code)]
#[path = "src/args.rs"]
mod args;

/// The program name in the rendered texts; `cmdline` puts the name it was run as in its place
/// (as clap does, from `argv[0]`).
const BIN: &str = "\u{1}";

fn main() {
    println!("cargo:rerun-if-changed=src/args.rs");
    println!("cargo:rerun-if-changed=build.rs");
    // The crate compiles `args.rs` without clap's derives (see `cmdline`).
    println!("cargo:rustc-cfg=without_clap");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut cmd = args::Cli::command();
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
        write(&out.join(shell.file_name()), text.as_slice());
    }
    write(&out.join("multiwan.8"), man_page().as_bytes());
    write(&out.join("cmdline_spec.rs"), spec().as_bytes());
    write(&out.join("cmdline_samples.rs"), samples().as_bytes());
    pack_relative_relocs();
    link_order();
}

/// The man page: clap_mangen's sections for the program, then one COMMANDS section with every
/// command's usage, description and options (clap_mangen's SUBCOMMANDS section only names
/// per-command pages, `multiwan-check(8)` and so on, which nobody ships).
fn man_page() -> String {
    let cmd = args::Cli::command();
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    let mut w = Vec::new();
    let rendered = man
        .render_title(&mut w)
        .and_then(|()| man.render_name_section(&mut w))
        .and_then(|()| man.render_synopsis_section(&mut w))
        .and_then(|()| man.render_description_section(&mut w))
        .and_then(|()| man.render_options_section(&mut w));
    rendered.expect("rendering the man page into memory");
    let mut page = String::from_utf8(w).expect("clap_mangen writes UTF-8");
    page.push_str(".SH COMMANDS\n");
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let usage = sub
            .clone()
            .bin_name(format!("multiwan {}", sub.get_name()))
            .render_usage()
            .to_string();
        let usage = usage.trim_start_matches("Usage:").trim();
        let _ = writeln!(page, ".SS \"{}\"", roff(usage));
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            let _ = writeln!(page, "{}", roff(&about.to_string()));
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let mut names = Vec::new();
            if let Some(c) = arg.get_short() {
                names.push(format!("\\fB\\-{c}\\fR"));
            }
            if let Some(l) = arg.get_long() {
                names.push(format!("\\fB\\-\\-{}\\fR", roff(l)));
            }
            let value = match arg.get_value_names() {
                Some(v) if arg.get_action().takes_values() => v
                    .iter()
                    .map(|n| format!(" \\fI{}\\fR", roff(n)))
                    .collect::<String>(),
                _ => String::new(),
            };
            let item = if names.is_empty() {
                value.trim_start().to_string()
            } else {
                format!("{}{value}", names.join(", "))
            };
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| roff(&h.to_string()))
                .unwrap_or_default();
            let _ = writeln!(page, ".TP\n{item}\n{help}");
        }
    }
    let mut w = Vec::new();
    man.render_version_section(&mut w)
        .expect("rendering the man page into memory");
    page.push_str(&String::from_utf8(w).expect("clap_mangen writes UTF-8"));
    page
}

/// `text` for roff: backslashes and dashes escaped, and no line starting with a control
/// character (`.` or `'`).
fn roff(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else if l.trim().is_empty() {
                ".PP".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The toolchain's sysroot (`rustc --print sysroot`), if rustc can be asked.
fn sysroot() -> Option<PathBuf> {
    let rustc = std::env::var_os("RUSTC")?;
    let out = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The release router is linked with the toolchain's own lld (rustup ships it as
/// `lib/rustlib/HOST/bin/gcc-ld/ld.lld`) so that its functions can be laid out in the order
/// of `link.order` (`--symbol-ordering-file`): first those the idle daemon calls, then those
/// start-up and events call, then the rest (one-shot commands, error paths, panics). The pages
/// a daemon touches stay resident for its whole life, so packing what it touches together is
/// what lowers idle RSS (ARCHITECTURE.md, "Size"). `multiwan-lab --layout` writes the file
/// from uprobes on a running daemon. A name the file holds that this build does not have (the
/// toolchain or a dependency changed its hash) is skipped silently: such a build is laid out
/// as by default for those functions, never wrong. The link map (`multiwan.map`, next to the
/// binary) is what the profiler reads. Without lld the link is the default one.
fn link_order() {
    println!("cargo:rerun-if-changed=link.order");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    if !release || std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let (Some(sysroot), Ok(host)) = (sysroot(), std::env::var("HOST")) else {
        return;
    };
    let gcc_ld = sysroot.join(format!("lib/rustlib/{host}/bin/gcc-ld"));
    if !gcc_ld.join("ld.lld").is_file() {
        return;
    }
    let arg = |a: &str| println!("cargo:rustc-link-arg-bin=multiwan={a}");
    arg("-fuse-ld=lld");
    arg(&format!("-B{}", gcc_ld.display()));
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let order = manifest.join("link.order");
    if order.is_file() {
        arg(&format!("-Wl,--symbol-ordering-file={}", order.display()));
        arg("-Wl,--no-warn-symbol-ordering");
    }
    // OUT_DIR is TARGET_DIR/[TRIPLE/]release/build/multiwan-HASH/out: the map goes beside the
    // binary.
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    if let Some(bin_dir) = out.ancestors().nth(3) {
        arg(&format!(
            "-Wl,-Map={}",
            bin_dir.join("multiwan.map").display()
        ));
    }
}

/// A static-pie musl router carries ~90 KB of `R_X86_64_RELATIVE` relocations (`.rela.dyn`:
/// every pointer in its tables, vtables and strings' addresses); packed as `DT_RELR`
/// (`-z pack-relative-relocs`, GNU ld 2.38+, lld 15+) they take ~1 KB. musl's start-up code
/// applies `DT_RELR` from 1.2.4 on, so this is asked only when the toolchain's own
/// (self-contained) musl is that new — recognised by `statx`, which came in 1.2.5 — and a
/// binary linked against any other libc gets the classic table.
fn pack_relative_relocs() {
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("musl") {
        return;
    }
    let (Some(sysroot), Ok(target)) = (sysroot(), std::env::var("TARGET")) else {
        return;
    };
    let libc = sysroot.join(format!("lib/rustlib/{target}/lib/self-contained/libc.a"));
    let Ok(archive) = std::fs::read(&libc) else {
        return;
    };
    if archive.windows(b"statx.lo".len()).any(|w| w == b"statx.lo") {
        println!("cargo:rustc-link-arg-bin=multiwan=-Wl,-z,pack-relative-relocs");
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// What clap prints for `argv` (program name [`BIN`]): help, version, or an error.
fn printed(argv: &[&str]) -> String {
    let mut full = vec![BIN];
    full.extend_from_slice(argv);
    match args::Cli::try_parse_from(full) {
        Ok(cli) => panic!("{argv:?} is expected to print, and parses as {cli:?}"),
        Err(e) => e.render().to_string(),
    }
}

/// The arguments of `sub` that `cmdline` parses (clap's own `--help` and `--version` left out).
fn own_args(sub: &Command) -> Vec<&Arg> {
    sub.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect()
}

fn spec() -> String {
    let mut cmd = args::Cli::command().bin_name(BIN);
    cmd.build();
    let mut s = String::from("// @generated by build.rs from src/args.rs\n\n");
    let _ = writeln!(
        s,
        "/// The command line.\npub static SPEC: Spec = Spec {{\n    help: {:?},\n    long_help: {:?},\n    no_command: {:?},\n    version: {:?},\n    usage: {:?},\n    help_help: {:?},\n    help_usage: {:?},\n    subs: &[",
        printed(&["-h"]),
        printed(&["--help"]),
        printed(&[]),
        printed(&["--version"]),
        cmd.render_usage().to_string(),
        printed(&["help", "help"]),
        cmd.find_subcommand_mut("help")
            .map(|h| h.render_usage().to_string())
            .unwrap_or_default(),
    );
    for sub in cmd.get_subcommands_mut() {
        if sub.get_name() == "help" {
            continue;
        }
        let name = sub.get_name().to_string();
        let usage = sub.render_usage().to_string();
        let help = printed(&[&name, "-h"]);
        let long_help = printed(&[&name, "--help"]);
        // The usage clap shows when required arguments are missing (only the required ones).
        let required_usage = match args::Cli::try_parse_from([BIN, &name]) {
            Err(e) if e.kind() == ErrorKind::MissingRequiredArgument => e
                .render()
                .to_string()
                .lines()
                .find(|l| l.starts_with("Usage: "))
                .unwrap_or(&usage)
                .to_string(),
            _ => usage.clone(),
        };
        let _ = writeln!(
            s,
            "        Sub {{\n            name: {name:?},\n            help: {help:?},\n            long_help: {long_help:?},\n            usage: {usage:?},\n            required_usage: {required_usage:?},\n            opts: &["
        );
        for a in own_args(sub) {
            let value = a.get_action().takes_values();
            let _ = writeln!(
                s,
                "                Opt {{ id: {:?}, long: {:?}, short: {:?}, value: {:?}, default: {:?}, possible: &{:?}, positional: {}, required: {} }},",
                a.get_id().as_str(),
                a.get_long(),
                a.get_short(),
                value.then(|| {
                    a.get_value_names()
                        .and_then(|n| n.first())
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| a.get_id().as_str().to_uppercase())
                }),
                a.get_default_values().first().map(|d| d.to_string_lossy().into_owned()),
                a.get_possible_values()
                    .iter()
                    .map(|p| p.get_name().to_string())
                    .collect::<Vec<_>>(),
                a.is_positional(),
                a.is_required_set(),
            );
        }
        s.push_str("            ],\n        },\n");
    }
    s.push_str("    ],\n};\n");
    s
}

/// Values tried, in order, for an option in the samples: the first that clap accepts is used.
const CANDIDATES: [&str; 3] = ["x", "10.0.0.1", "80"];

fn accepted(argv: &[String]) -> bool {
    args::Cli::try_parse_from(std::iter::once(BIN.to_string()).chain(argv.iter().cloned())).is_ok()
}

/// Everything a command needs to parse: its positionals and required options with values.
fn fillers(sub: &str, opts: &[&Arg]) -> Vec<String> {
    let mut f: Vec<String> = vec![sub.to_string()];
    for a in opts.iter().filter(|a| a.is_required_set()) {
        let piece = |v: &str| -> Vec<String> {
            match a.get_long() {
                Some(l) if !a.is_positional() => vec![format!("--{l}"), v.to_string()],
                _ => vec![v.to_string()],
            }
        };
        let possible = a.get_possible_values();
        let cands: Vec<String> = match possible.first() {
            Some(p) => vec![p.get_name().to_string()],
            None => CANDIDATES.iter().map(|c| c.to_string()).collect(),
        };
        let chosen = cands
            .iter()
            .find(|c| {
                let mut t = f.clone();
                t.extend(piece(c));
                match args::Cli::try_parse_from(std::iter::once(BIN.to_string()).chain(t)) {
                    Ok(_) => true,
                    Err(e) => !matches!(
                        e.kind(),
                        ErrorKind::InvalidValue | ErrorKind::ValueValidation
                    ),
                }
            })
            .unwrap_or(&cands[0]);
        f.extend(piece(chosen));
    }
    f
}

/// A near miss of `word` (two letters swapped), for the suggestion samples.
fn typo(word: &str) -> String {
    let mut c: Vec<char> = word.chars().collect();
    if c.len() > 3 {
        c.swap(1, 2);
    } else {
        c.push('x');
    }
    c.into_iter().collect()
}

/// The sample command lines, each once.
#[derive(Default)]
struct Lines(Vec<Vec<String>>);

impl Lines {
    fn add(&mut self, v: Vec<String>) {
        if !self.0.contains(&v) {
            self.0.push(v);
        }
    }

    fn words(&mut self, w: &[&str]) {
        self.add(w.iter().map(|s| s.to_string()).collect());
    }

    /// `base` followed by `extra`.
    fn with(&mut self, base: &[String], extra: &[&str]) {
        let mut v = base.to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        self.add(v);
    }
}

/// The lines that exercise one option of a command (`base` parses on its own). Returns how
/// to give the option with a good value, for the line with every option.
fn option_lines(lines: &mut Lines, base: &[String], a: &Arg) -> Option<[Vec<String>; 3]> {
    let long = a.get_long()?;
    let flag = format!("--{long}");
    lines.with(base, &[&format!("--{}", typo(long))]);
    if !a.get_action().takes_values() {
        lines.with(base, &[&format!("{flag}=yes")]);
        lines.with(base, &[&flag, &flag]);
        return Some([vec![flag.clone()], vec![flag.clone()], vec![flag]]);
    }
    let value = CANDIDATES
        .iter()
        .find(|c| {
            let mut v = base.to_vec();
            v.extend([flag.clone(), c.to_string()]);
            accepted(&v)
        })
        .unwrap_or(&CANDIDATES[0])
        .to_string();
    for bad in ["abc", "99999", "--json", "--nosuch"] {
        lines.with(base, &[&flag, bad]);
    }
    lines.with(base, &[&flag]);
    lines.with(base, &[&format!("{flag}=")]);
    lines.with(base, &[&flag, &value, &flag, &value]);
    if a.is_required_set() {
        return None;
    }
    let short = a.get_short().map(|s| format!("-{s}"));
    if let Some(s) = &short {
        lines.with(base, &[&format!("{s}{value}")]);
        lines.with(base, &[s]);
    }
    Some([
        vec![flag.clone(), value.clone()],
        vec![format!("{flag}={value}")],
        vec![short.unwrap_or(flag), value],
    ])
}

/// The lines that exercise a positional with possible values: each of them, and a typo.
fn positional_lines(lines: &mut Lines, name: &str, base: &[String], opts: &[&Arg], a: &Arg) {
    let possible = a.get_possible_values();
    let is_possible = |w: &String| possible.iter().any(|q| q.get_name() == w);
    if let Some(slot) = base.iter().position(is_possible) {
        for p in &possible {
            let mut v = base.to_vec();
            v[slot] = p.get_name().to_string();
            lines.add(v);
        }
    }
    if let Some(p) = possible.first() {
        let mut v = vec![name.to_string()];
        // The positionals before this one as anything, this one misspelled.
        for b in opts.iter().filter(|b| b.is_positional()) {
            if b.get_id() == a.get_id() {
                v.push(typo(p.get_name()));
                break;
            }
            v.push("x".into());
        }
        lines.add(v);
    }
}

/// The command lines the samples hold: the top level's, and for each command its help, its
/// required arguments alone, every option right and wrong, all options in each form, typos.
fn command_lines() -> Vec<Vec<String>> {
    let mut cmd = args::Cli::command();
    cmd.build();
    let mut lines = Lines::default();
    for top in [
        &[][..],
        &["-h"],
        &["--help"],
        &["-V"],
        &["--version"],
        &["help"],
        &["help", "nosuch"],
        &["nosuch"],
        &["-c", "x", "check"],
        &["--nosuch"],
        &["--", "check"],
    ] {
        lines.words(top);
    }
    for sub in cmd.get_subcommands() {
        let name = sub.get_name();
        lines.words(&["help", name]);
        lines.words(&[name, "-h"]);
        lines.words(&[name, "--help"]);
        lines.add(vec![typo(name)]);
        if name == "help" {
            continue;
        }
        lines.words(&["help", name, "extra"]);
        lines.words(&[name]);
        let opts = own_args(sub);
        let base = fillers(name, &opts);
        lines.add(base.clone());
        let mut every = [base.clone(), base.clone(), base.clone()];
        for a in opts.iter().filter(|a| !a.is_positional()) {
            if let Some(forms) = option_lines(&mut lines, &base, a) {
                for (line, form) in every.iter_mut().zip(forms) {
                    line.extend(form);
                }
            }
        }
        for line in every {
            lines.add(line);
        }
        for extra in [
            &["extra"][..],
            &["--", "-c"],
            &["-x"],
            &["--nosuch"],
            &["--help", "extra"],
            &["extra", "--help"],
        ] {
            lines.with(&base, extra);
        }
        for a in opts.iter().filter(|a| a.is_positional()) {
            positional_lines(&mut lines, name, &base, &opts, a);
        }
    }
    lines.0
}

fn samples() -> String {
    let lines = command_lines();
    let mut s = String::from("// @generated by build.rs from src/args.rs\n\n/// Command lines and what clap makes of them.\nstatic SAMPLES: &[Sample] = &[\n");
    for argv in &lines {
        let full = std::iter::once(BIN.to_string()).chain(argv.iter().cloned());
        let outcome = match args::Cli::try_parse_from(full) {
            Ok(cli) => format!("Outcome::Parsed({:?})", format!("{cli:?}")),
            Err(e) => format!(
                "Outcome::Printed {{ stderr: {}, code: {}, text: {:?} }}",
                e.use_stderr(),
                e.exit_code(),
                e.render().to_string()
            ),
        };
        let _ = writeln!(s, "    Sample {{ argv: &{argv:?}, outcome: {outcome} }},");
    }
    s.push_str("];\n");
    s
}
