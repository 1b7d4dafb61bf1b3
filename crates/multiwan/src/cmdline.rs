//! The command-line parser of the router binary: reads `argv` into [`crate::args::Cli`] with
//! `lexopt`, from the table build.rs derives from the clap definition in `args.rs`
//! (`cmdline_spec.rs` in `OUT_DIR`: every option, default and possible value, and the help,
//! usage and version texts exactly as clap renders them). Linking clap's runtime parser cost
//! the binary ~250 KiB; this is a few KiB. Errors read as clap's (same first line, tips and
//! exit code 2; help and version on stdout, exit 0), which the tests check against what
//! clap itself makes of a few hundred command lines (`cmdline_samples.rs`), so the two cannot
//! drift apart.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::args::{Cli, Cmd, Conn, DoctorArgs, ExplainArgs, RunArgs, Shell};

/// The command line as build.rs read it from clap.
pub struct Spec {
    /// `-h` and `--help` at the top.
    pub help: &'static str,
    pub long_help: &'static str,
    /// What is printed (to stderr, exit 2) when no command is given.
    pub no_command: &'static str,
    /// `--version` output.
    pub version: &'static str,
    /// `Usage: BIN <COMMAND>`.
    pub usage: &'static str,
    /// `help help`, and the usage of `help`.
    pub help_help: &'static str,
    pub help_usage: &'static str,
    pub subs: &'static [Sub],
}

/// One command.
pub struct Sub {
    pub name: &'static str,
    pub help: &'static str,
    pub long_help: &'static str,
    pub usage: &'static str,
    /// The usage shown when required arguments are missing.
    pub required_usage: &'static str,
    pub opts: &'static [Opt],
}

/// One option or positional argument.
pub struct Opt {
    pub id: &'static str,
    pub long: Option<&'static str>,
    pub short: Option<char>,
    /// The value's name (`CONFIG`), `None` for a flag.
    pub value: Option<&'static str>,
    pub default: Option<&'static str>,
    pub possible: &'static [&'static str],
    pub positional: bool,
    pub required: bool,
}

impl Opt {
    /// How clap names it in errors: `--config <CONFIG>`, `--json`, `<ACTION>`.
    fn display(&self) -> String {
        match (self.positional, self.long, self.value) {
            (true, _, v) => format!("<{}>", v.unwrap_or(self.id)),
            (false, Some(l), Some(v)) => format!("--{l} <{v}>"),
            (false, Some(l), None) => format!("--{l}"),
            (false, None, v) => {
                format!("-{} <{}>", self.short.unwrap_or('?'), v.unwrap_or(self.id))
            }
        }
    }

    /// The type its value is read as (`args.rs`' field types).
    fn kind(&self) -> Kind {
        match self.id {
            "src" | "dst" => Kind::Ip,
            "sport" | "dport" => Kind::Port,
            "config" | "run_dir" => Kind::Path,
            _ => Kind::Text,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Path,
    Ip,
    Port,
    Text,
}

include!(concat!(env!("OUT_DIR"), "/cmdline_spec.rs"));

/// The placeholder for the program's name in the generated texts.
const BIN: &str = "\u{1}";

/// What a command line comes to.
#[derive(Debug)]
pub enum Parsed {
    /// A command to run.
    Run(Cli),
    /// Text to print before exiting with `code`: help and version on stdout (0), errors on
    /// stderr (2).
    Print {
        text: String,
        stderr: bool,
        code: u8,
    },
}

/// Parses a whole command line (`argv[0]` first).
pub fn parse(argv: impl IntoIterator<Item = OsString>) -> Parsed {
    let mut argv = argv.into_iter();
    let bin = argv
        .next()
        .map(|a| {
            let p = PathBuf::from(a);
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "multiwan".to_string());
    let mut p = lexopt::Parser::from_args(argv);
    let out = |s: &str| s.replace(BIN, &bin);
    match top(&mut p) {
        Ok(cli) => Parsed::Run(cli),
        Err(Stop::Help(text)) => Parsed::Print {
            text: out(text),
            stderr: false,
            code: 0,
        },
        Err(Stop::Text(text, code)) => Parsed::Print {
            text: out(&text),
            stderr: code != 0,
            code,
        },
    }
}

/// Why parsing stopped without a command.
enum Stop {
    /// Help or version (stdout, exit 0).
    Help(&'static str),
    /// An error's whole text (exit code).
    Text(String, u8),
}

/// An error as clap prints it: message, extra lines, optional tip and usage.
fn error(msg: String, extra: &str, tip: Option<String>, usage: Option<&str>) -> Stop {
    let mut t = format!("error: {msg}\n{extra}");
    if let Some(tip) = tip {
        t.push_str(&format!("\n  tip: {tip}\n"));
    }
    if let Some(u) = usage {
        t.push_str(&format!("\n{u}\n"));
    }
    t.push_str("\nFor more information, try '--help'.\n");
    Stop::Text(t, 2)
}

/// The candidates close enough to `word` (Jaro similarity above 0.7), closest last.
fn similar<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut close: Vec<(f64, &str)> = candidates
        .map(|c| (strsim::jaro(word, c), c))
        .filter(|(score, _)| *score > 0.7)
        .collect();
    multiwan_core::order::sort_by(&mut close, |a, b| a.0.total_cmp(&b.0));
    close.into_iter().map(|(_, c)| c).collect()
}

/// The tip naming the similar `what`s (`argument`, `subcommand`, `value`); as clap, only
/// subcommands list every close one, arguments and values only the closest.
fn tip(what: &str, close: &[String]) -> Option<String> {
    match close {
        [] => None,
        [one] => Some(format!("a similar {what} exists: '{one}'")),
        many => Some(format!(
            "some similar {what}s exist: {}",
            many.iter()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The closest of `close` alone.
fn closest(close: Vec<&str>) -> Vec<String> {
    close.last().map(|c| c.to_string()).into_iter().collect()
}

/// clap's error for an argument that is not UTF-8 where text is needed.
fn not_utf8(usage: &str) -> Stop {
    error(
        "invalid UTF-8 was detected in one or more arguments".into(),
        "",
        None,
        Some(usage),
    )
}

/// A command's name as text (clap's message when it is not UTF-8).
fn text(v: OsString, usage: &str) -> Result<String, Stop> {
    v.into_string().map_err(|_| not_utf8(usage))
}

/// Every command's name, clap's own `help` included (for suggestions).
fn sub_names() -> impl Iterator<Item = &'static str> {
    SPEC.subs.iter().map(|s| s.name).chain(["help"])
}

fn unknown_sub(name: &str) -> Stop {
    error(
        format!("unrecognized subcommand '{name}'"),
        "",
        tip(
            "subcommand",
            &similar(name, sub_names())
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
        ),
        Some(SPEC.usage),
    )
}

/// The top level: `-h`, `-V`, `help [COMMAND]`, or a command.
fn top(p: &mut lexopt::Parser) -> Result<Cli, Stop> {
    use lexopt::Arg;
    if let Ok(mut raw) = p.raw_args() {
        if raw.peek().is_some_and(|a| a == "--") {
            raw.next();
            let Some(next) = raw.next() else {
                return Err(Stop::Text(SPEC.no_command.to_string(), 2));
            };
            let next = next.to_string_lossy().into_owned();
            let tip = sub_names().any(|n| n == next).then(|| {
                format!("subcommand '{next}' exists; to use it, remove the '--' before it")
            });
            return Err(error(
                format!("unexpected argument '{next}' found"),
                "",
                tip,
                Some(SPEC.usage),
            ));
        }
    }
    let arg = match p.next() {
        Ok(a) => a,
        Err(e) => return Err(lexopt_error(e, SPEC.usage)),
    };
    let name = match arg {
        None => return Err(Stop::Text(SPEC.no_command.to_string(), 2)),
        Some(Arg::Short('h')) => return Err(Stop::Help(SPEC.help)),
        Some(Arg::Long("help")) => return Err(Stop::Help(SPEC.long_help)),
        Some(Arg::Short('V')) | Some(Arg::Long("version")) => return Err(Stop::Help(SPEC.version)),
        Some(Arg::Value(v)) => text(v, SPEC.usage)?,
        Some(other) => {
            return Err(error(
                format!("unexpected argument '{}' found", shown(&other)),
                "",
                None,
                Some(SPEC.usage),
            ))
        }
    };
    if name == "help" {
        return Err(help_command(p));
    }
    let Some(sub) = SPEC.subs.iter().find(|s| s.name == name) else {
        return Err(unknown_sub(&name));
    };
    let found = command(sub, p)?;
    Ok(Cli {
        command: build(&found),
    })
}

/// `multiwan help [COMMAND]`: the long help of the command (or of the program).
fn help_command(p: &mut lexopt::Parser) -> Stop {
    let mut names = Vec::new();
    loop {
        match p.next() {
            Ok(Some(lexopt::Arg::Value(v))) => names.push(v.to_string_lossy().into_owned()),
            // `help -h` names no command.
            Ok(Some(other)) => {
                return error(
                    format!("unrecognized subcommand '{}'", shown(&other)),
                    "",
                    None,
                    Some(SPEC.usage),
                )
            }
            Ok(None) => break,
            Err(e) => return lexopt_error(e, SPEC.usage),
        }
    }
    let Some(first) = names.first() else {
        return Stop::Help(SPEC.long_help);
    };
    let (usage, help) = match SPEC.subs.iter().find(|s| s.name == first) {
        Some(sub) => (sub.usage, sub.long_help),
        None if first == "help" => (SPEC.help_usage, SPEC.help_help),
        None => return unknown_sub(first),
    };
    match names.get(1) {
        // Our commands have no subcommands of their own.
        Some(next) => error(
            format!("unrecognized subcommand '{next}'"),
            "",
            None,
            Some(usage),
        ),
        None => Stop::Help(help),
    }
}

/// An option as the user wrote it.
fn shown(a: &lexopt::Arg) -> String {
    match a {
        lexopt::Arg::Short(c) => format!("-{c}"),
        lexopt::Arg::Long(l) => format!("--{l}"),
        lexopt::Arg::Value(v) => v.to_string_lossy().into_owned(),
    }
}

fn lexopt_error(e: lexopt::Error, usage: &str) -> Stop {
    match e {
        lexopt::Error::UnexpectedValue { option, value } => error(
            format!(
                "unexpected value '{}' for '{option}' found; no more were expected",
                value.to_string_lossy()
            ),
            "",
            None,
            Some(usage),
        ),
        lexopt::Error::NonUnicodeValue(_) => not_utf8(usage),
        other => error(other.to_string(), "", None, Some(usage)),
    }
}

/// The values given for a command, by option (in the order of `sub.opts`). Each was checked
/// against its type when it was read ([`check_value`]); only paths may be other than UTF-8.
struct Found {
    sub: &'static Sub,
    values: Vec<Option<OsString>>,
}

impl Found {
    /// Where `id` is in the command's options. An id `build` asks for that args.rs does not
    /// define is a programming error, which the samples' test finds at once (every command is
    /// built there), hence a panic rather than an error for the user.
    fn index(&self, id: &str) -> usize {
        self.sub
            .opts
            .iter()
            .position(|o| o.id == id)
            .unwrap_or_else(|| panic!("`{}` has no argument `{id}`", self.sub.name))
    }

    /// The value given, or the default.
    fn os(&self, id: &str) -> Option<OsString> {
        let i = self.index(id);
        self.values[i]
            .clone()
            .or(self.sub.opts[i].default.map(OsString::from))
    }

    fn flag(&self, id: &str) -> bool {
        self.values[self.index(id)].is_some()
    }

    fn path(&self, id: &str) -> PathBuf {
        self.opt_path(id).unwrap_or_default()
    }

    fn opt_path(&self, id: &str) -> Option<PathBuf> {
        self.os(id).map(PathBuf::from)
    }

    fn get(&self, id: &str) -> Option<String> {
        self.os(id).map(|v| v.to_string_lossy().into_owned())
    }

    fn string(&self, id: &str) -> String {
        self.get(id).unwrap_or_default()
    }

    fn parsed<T: std::str::FromStr>(&self, id: &str) -> Option<T> {
        self.get(id).and_then(|v| v.parse().ok())
    }

    fn conn(&self) -> Conn {
        Conn {
            run_dir: self.path("run_dir"),
            json: self.flag("json"),
        }
    }
}

/// Checks one value of `opt` as clap's value parser for its type would.
fn check_value(sub: &Sub, opt: &Opt, raw: &OsString) -> Result<(), Stop> {
    if matches!(opt.kind(), Kind::Path) && opt.possible.is_empty() {
        return if raw.is_empty() {
            Err(missing_value(opt))
        } else {
            Ok(())
        };
    }
    let Some(v) = raw.to_str() else {
        return Err(not_utf8(sub.usage));
    };
    let invalid = |why: String| {
        error(
            format!("invalid value '{v}' for '{}'{why}", opt.display()),
            "",
            None,
            None,
        )
    };
    if !opt.possible.is_empty() {
        if opt.possible.contains(&v) {
            return Ok(());
        }
        let close = closest(similar(v, opt.possible.iter().copied()));
        let extra = format!("  [possible values: {}]\n", opt.possible.join(", "));
        return Err(error(
            format!("invalid value '{v}' for '{}'", opt.display()),
            &extra,
            tip("value", &close),
            None,
        ));
    }
    match opt.kind() {
        Kind::Path | Kind::Text => Ok(()),
        Kind::Ip => v
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|e| invalid(format!(": {e}"))),
        Kind::Port => match v.parse::<i64>() {
            Ok(n) if (0..=i64::from(u16::MAX)).contains(&n) => Ok(()),
            Ok(n) => Err(invalid(format!(": {n} is not in 0..=65535"))),
            Err(e) => Err(invalid(format!(": {e}"))),
        },
    }
}

fn missing_value(opt: &Opt) -> Stop {
    error(
        format!(
            "a value is required for '{}' but none was supplied",
            opt.display()
        ),
        "",
        None,
        None,
    )
}

/// An unknown option of `sub`, with the similar one (or, where the command takes positionals,
/// how to pass it as one).
fn unexpected(sub: &Sub, arg: &lexopt::Arg) -> Stop {
    let shown = shown(arg);
    let close = match arg {
        lexopt::Arg::Long(l) => closest(similar(
            l,
            sub.opts.iter().filter_map(|o| o.long).chain(["help"]),
        ))
        .into_iter()
        .map(|c| format!("--{c}"))
        .collect(),
        _ => Vec::new(),
    };
    let tip = match tip("argument", &close) {
        None if sub.opts.iter().any(|o| o.positional) => {
            Some(format!("to pass '{shown}' as a value, use '-- {shown}'"))
        }
        t => t,
    };
    error(
        format!("unexpected argument '{shown}' found"),
        "",
        tip,
        Some(sub.usage),
    )
}

/// Reads the options and positionals of `sub`.
fn command(sub: &'static Sub, p: &mut lexopt::Parser) -> Result<Found, Stop> {
    use lexopt::Arg;
    let mut found = Found {
        sub,
        values: vec![None; sub.opts.len()],
    };
    let positionals: Vec<usize> = (0..sub.opts.len())
        .filter(|i| sub.opts[*i].positional)
        .collect();
    let mut next_positional = 0;
    loop {
        let arg = match p.next() {
            Ok(Some(a)) => a,
            Ok(None) => break,
            Err(e) => return Err(lexopt_error(e, sub.usage)),
        };
        let index = match &arg {
            Arg::Short('h') => return Err(Stop::Help(sub.help)),
            Arg::Long("help") => return Err(Stop::Help(sub.long_help)),
            Arg::Short(c) => sub
                .opts
                .iter()
                .position(|o| !o.positional && o.short == Some(*c)),
            Arg::Long(l) => sub
                .opts
                .iter()
                .position(|o| !o.positional && o.long == Some(*l)),
            Arg::Value(v) => {
                let Some(&i) = positionals.get(next_positional) else {
                    let shown = v.to_string_lossy();
                    return Err(error(
                        format!("unexpected argument '{shown}' found"),
                        "",
                        None,
                        Some(sub.usage),
                    ));
                };
                next_positional += 1;
                check_value(sub, &sub.opts[i], v)?;
                found.values[i] = Some(v.clone());
                continue;
            }
        };
        let Some(i) = index else {
            return Err(unexpected(sub, &arg));
        };
        let opt = &sub.opts[i];
        let duplicate = || {
            error(
                format!(
                    "the argument '{}' cannot be used multiple times",
                    opt.display()
                ),
                "",
                None,
                Some(sub.usage),
            )
        };
        if opt.value.is_none() {
            if found.values[i].is_some() {
                return Err(duplicate());
            }
            // A flag: `--json=x` is refused by lexopt's next call.
            found.values[i] = Some(OsString::new());
            continue;
        }
        // As clap: a missing value is reported before a repetition, which is before a bad value.
        let v = match p.optional_value() {
            Some(v) => v,
            None => value_after(sub, opt, p)?,
        };
        if found.values[i].is_some() {
            return Err(duplicate());
        }
        check_value(sub, opt, &v)?;
        found.values[i] = Some(v);
    }
    let missing: Vec<String> = sub
        .opts
        .iter()
        .zip(&found.values)
        .filter(|(o, v)| o.required && v.is_none())
        .map(|(o, _)| format!("  {}\n", o.display()))
        .collect();
    if !missing.is_empty() {
        return Err(error(
            "the following required arguments were not provided:".into(),
            &missing.concat(),
            None,
            Some(sub.required_usage),
        ));
    }
    Ok(found)
}

/// The value of `opt` in the next argument, which must not look like an option (as clap:
/// `--config --json` is not a config named `--json`).
fn value_after(sub: &Sub, opt: &Opt, p: &mut lexopt::Parser) -> Result<OsString, Stop> {
    let looks_like_option = match p.raw_args() {
        Ok(raw) => match raw.peek() {
            None => true,
            Some(next) => {
                let s = next.to_string_lossy();
                s.starts_with('-') && s.len() > 1
            }
        },
        Err(_) => false,
    };
    if !looks_like_option {
        return p.value().map_err(|e| lexopt_error(e, sub.usage));
    }
    // What follows is an option: report it if it is unknown, else the missing value.
    match p.next() {
        Ok(Some(next @ (lexopt::Arg::Long(_) | lexopt::Arg::Short(_)))) => {
            let known = match next {
                lexopt::Arg::Long(l) => l == "help" || sub.opts.iter().any(|o| o.long == Some(l)),
                lexopt::Arg::Short(c) => c == 'h' || sub.opts.iter().any(|o| o.short == Some(c)),
                lexopt::Arg::Value(_) => true,
            };
            if known {
                Err(missing_value(opt))
            } else {
                Err(unexpected(sub, &next))
            }
        }
        _ => Err(missing_value(opt)),
    }
}

/// The [`Cmd`] for the values `cmdline` read (each checked against its type already).
fn build(f: &Found) -> Cmd {
    match f.sub.name {
        "check" => Cmd::Check {
            config: f.path("config"),
        },
        "plan" => Cmd::Plan {
            config: f.path("config"),
            live: f.flag("live"),
        },
        "apply" => Cmd::Apply {
            config: f.path("config"),
            run_dir: f.path("run_dir"),
        },
        "down" => Cmd::Down {
            run_dir: f.path("run_dir"),
        },
        "run" => Cmd::Run(RunArgs {
            config: f.path("config"),
            run_dir: f.path("run_dir"),
            cleanup: f.flag("cleanup"),
        }),
        "reload" => Cmd::Reload {
            config: f.opt_path("config"),
            run_dir: f.path("run_dir"),
        },
        "status" => Cmd::Status(f.conn()),
        "flows" => Cmd::Flows {
            uplink: f.get("uplink"),
            conn: f.conn(),
        },
        "explain" => Cmd::Explain(ExplainArgs {
            src: f
                .parsed("src")
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            dst: f.parsed("dst"),
            proto: f.get("proto"),
            sport: f.parsed("sport"),
            dport: f.parsed("dport"),
            config: f.opt_path("config"),
            conn: f.conn(),
        }),
        "watch" => Cmd::Watch(f.conn()),
        "uplink" => Cmd::Uplink {
            name: f.string("name"),
            action: f.string("action"),
            conn: f.conn(),
        },
        "doctor" => Cmd::Doctor(DoctorArgs {
            config: f.path("config"),
            json: f.flag("json"),
        }),
        "completions" => Cmd::Completions {
            shell: Shell::ALL
                .into_iter()
                .find(|s| s.name() == f.string("shell"))
                .unwrap_or(Shell::Bash),
        },
        "manpage" => Cmd::Manpage,
        other => unreachable!("args.rs defines no command `{other}` that cmdline knows"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command line and what clap makes of it.
    struct Sample {
        argv: &'static [&'static str],
        outcome: Outcome,
    }

    enum Outcome {
        /// `format!("{:?}", cli)` of clap's result.
        Parsed(&'static str),
        /// What clap prints, where and with which exit code.
        Printed {
            stderr: bool,
            code: i32,
            text: &'static str,
        },
    }

    include!(concat!(env!("OUT_DIR"), "/cmdline_samples.rs"));

    fn run(argv: &[&str]) -> Parsed {
        parse(std::iter::once(OsString::from(BIN)).chain(argv.iter().map(OsString::from)))
    }

    /// The lines of an error that do not depend on clap's choice of usage line.
    fn gist(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with("Usage: ")).collect()
    }

    #[test]
    fn every_sample_parses_as_clap_parses_it() {
        assert!(SAMPLES.len() > 200, "{} samples", SAMPLES.len());
        let mut wrong = Vec::new();
        for s in SAMPLES {
            let got = run(s.argv);
            let ok = match (&s.outcome, &got) {
                (Outcome::Parsed(want), Parsed::Run(cli)) => *want == format!("{cli:?}"),
                (
                    Outcome::Printed { stderr, code, text },
                    Parsed::Print {
                        text: t,
                        stderr: e,
                        code: c,
                    },
                ) => {
                    stderr == e
                        && i32::from(*c) == *code
                        && if *code == 0 {
                            text == t
                        } else {
                            gist(text) == gist(t)
                                && text.contains("\nUsage: ") == t.contains("\nUsage: ")
                        }
                }
                _ => false,
            };
            if !ok {
                let want = match &s.outcome {
                    Outcome::Parsed(w) => w.to_string(),
                    Outcome::Printed { text, code, .. } => format!("exit {code}:\n{text}"),
                };
                wrong.push(format!("{:?}\n  clap: {want}\n  ours: {got:?}", s.argv));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {}:\n{}",
            wrong.len(),
            SAMPLES.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn the_program_name_is_the_one_it_was_run_as() {
        let got = parse(["/usr/sbin/multiwan", "check", "extra"].map(OsString::from));
        let Parsed::Print { text, code, .. } = got else {
            panic!("an error")
        };
        assert_eq!(code, 2);
        assert!(text.contains("Usage: multiwan check [OPTIONS]"), "{text}");
        assert!(!text.contains(BIN));
    }

    #[test]
    fn a_path_may_be_any_bytes_and_a_name_must_be_utf8() {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let bad = || OsString::from_vec(vec![b'c', 0xff]);
        let argv =
            |rest: Vec<OsString>| parse(std::iter::once(OsString::from("multiwan")).chain(rest));
        match argv(vec!["check".into(), "-c".into(), bad()]) {
            Parsed::Run(Cli {
                command: Cmd::Check { config },
            }) => assert_eq!(config.as_os_str().as_bytes(), b"c\xff"),
            other => panic!("{other:?}"),
        }
        match argv(vec!["uplink".into(), bad(), "enable".into()]) {
            Parsed::Print { text, code, stderr } => {
                assert_eq!((code, stderr), (2, true));
                assert!(text.starts_with("error: invalid UTF-8"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }
}
