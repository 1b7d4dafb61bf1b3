//! The config file as written: [`SCHEMA`], the one list of every section and key with its
//! type, and a walk of the parsed TOML document against it. The walk keeps every value's byte
//! span (so validation can point at `file:line:col`) and reports *every* unknown key and
//! wrongly typed value in one pass, each with a closest-key suggestion.
//!
//! Nothing is interpreted here; [`crate::model`] turns the [`Table`]s into the validated
//! domain model. To add a key, add one line to its section below and read it in the model.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use toml_edit::{Item, TableLike};

/// The type a key's value must have.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// `"text"`
    Str,
    /// `42`
    Int,
    /// `true`
    Bool,
    /// `20` or `2.5`
    Number,
    /// `80` or `"8000-8080"` (ports, masks, listen addresses)
    IntOrStr,
    /// `["a", "b"]`
    StrList,
    /// `[80, "8000-8080"]`
    IntOrStrList,
    /// `[section]` (or an inline table)
    Table(&'static Section),
    /// `[[section]]` (or an array of inline tables)
    Tables(&'static Section),
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::Number => "a number",
            Kind::IntOrStr => "a number or a string",
            Kind::StrList => "a list of strings such as [\"a\", \"b\"]",
            Kind::IntOrStrList => "a list of numbers or strings such as [80, \"8000-8080\"]",
            Kind::Table(_) => "a table",
            Kind::Tables(_) => "an array of tables ([[...]])",
        }
    }
}

/// One key of a section.
#[derive(Debug)]
pub struct Field {
    /// The key as written in the file.
    pub name: &'static str,
    /// What its value must be.
    pub kind: Kind,
}

/// A section of the file: the keys it may hold.
#[derive(Debug)]
pub struct Section {
    /// How messages name it (`[uplink.check]`).
    pub title: &'static str,
    /// Every key the section may hold.
    pub fields: &'static [Field],
}

impl Section {
    fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

/// The whole file: every section and key multiwan knows. Anything else is an error.
pub static SCHEMA: Section = Section {
    title: "the top level",
    fields: &[
        f("daemon", Kind::Table(&DAEMON)),
        f("lan", Kind::Table(&LAN)),
        f("uplink", Kind::Tables(&UPLINK)),
        f("balance", Kind::Table(&BALANCE)),
        f("rule", Kind::Tables(&RULE)),
        f("kernel", Kind::Table(&KERNEL)),
    ],
};

/// `[daemon]`
pub static DAEMON: Section = Section {
    title: "[daemon]",
    fields: &[
        f("hook", Kind::Str),
        f("metrics", Kind::IntOrStr),
        f("control_group", Kind::Str),
    ],
};

/// `[lan]`
pub static LAN: Section = Section {
    title: "[lan]",
    fields: &[f("interfaces", Kind::StrList)],
};

/// `[[uplink]]`
pub static UPLINK: Section = Section {
    title: "[[uplink]]",
    fields: &[
        f("name", Kind::Str),
        f("interface", Kind::Str),
        f("gateway", Kind::Str),
        f("weight", Kind::Int),
        f("tier", Kind::Int),
        f("snat", Kind::Str),
        f("gateway6", Kind::Str),
        f("snat6", Kind::Str),
        f("check", Kind::Table(&CHECK)),
    ],
};

/// `[uplink.check]`
pub static CHECK: Section = Section {
    title: "[uplink.check]",
    fields: &[
        f("targets", Kind::StrList),
        f("method", Kind::Str),
        f("interval", Kind::Str),
        f("timeout", Kind::Str),
        f("down_after", Kind::Int),
        f("up_after", Kind::Int),
        f("min_targets", Kind::Int),
        f("max_loss", Kind::Number),
        f("max_rtt", Kind::Str),
        f("recover_loss", Kind::Number),
        f("recover_rtt", Kind::Str),
        f("window", Kind::Str),
    ],
};

/// `[balance]`
pub static BALANCE: Section = Section {
    title: "[balance]",
    fields: &[
        f("method", Kind::Str),
        f("local", Kind::Bool),
        f("when_all_down", Kind::Str),
        f("fail_open", Kind::Bool),
        f("on_uplink_down", Kind::Str),
    ],
};

/// `[[rule]]`
pub static RULE: Section = Section {
    title: "[[rule]]",
    fields: &[
        f("name", Kind::Str),
        f("src", Kind::StrList),
        f("dst", Kind::StrList),
        f("proto", Kind::Str),
        f("sport", Kind::IntOrStrList),
        f("dport", Kind::IntOrStrList),
        f("uplinks", Kind::StrList),
        f("mode", Kind::Str),
        f("family", Kind::Str),
    ],
};

/// `[kernel]`: the resources multiwan owns, so it can coexist with other fwmark users.
pub static KERNEL: Section = Section {
    title: "[kernel]",
    fields: &[
        f("mark_mask", Kind::IntOrStr),
        f("table_base", Kind::Int),
        f("rule_priority", Kind::Int),
    ],
};

/// A value with the byte range it occupies in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    span: Range<usize>,
    value: T,
}

impl<T> Spanned<T> {
    /// `value`, found at byte range `span`.
    pub fn new(span: Range<usize>, value: T) -> Self {
        Self { span, value }
    }
    /// The byte range of the value in the file.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }
    /// The value.
    pub fn get_ref(&self) -> &T {
        &self.value
    }
    /// The value, without its span.
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// A list of strings, with spans for the list and each element.
pub type SpannedList = Spanned<Vec<Spanned<String>>>;

/// A value that users may write as a number or as a string (`80` or `"8000-8080"`).
#[derive(Debug, Clone, PartialEq)]
pub enum NumOrStr {
    /// Written as a number.
    Num(i64),
    /// Written as a string.
    Str(String),
}

impl NumOrStr {
    /// The value as the text a user would write.
    pub fn to_text(&self) -> String {
        match self {
            NumOrStr::Num(n) => n.to_string(),
            NumOrStr::Str(s) => s.clone(),
        }
    }
}

/// A number written as an integer or a float (`20` or `2.5`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawNumber {
    /// Written without a fraction.
    Int(i64),
    /// Written with a fraction or an exponent.
    Float(f64),
}

impl RawNumber {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            RawNumber::Int(i) => i as f64,
            RawNumber::Float(f) => f,
        }
    }
}

/// A value of the type its [`Kind`] demands.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(Spanned<String>),
    Int(Spanned<i64>),
    Bool(Spanned<bool>),
    Number(Spanned<RawNumber>),
    IntOrStr(Spanned<NumOrStr>),
    StrList(SpannedList),
    IntOrStrList(Spanned<Vec<Spanned<NumOrStr>>>),
    Table(Spanned<Table>),
    Tables(Vec<Spanned<Table>>),
}

/// One section as written: its known, correctly typed keys. Keys that were unknown or had
/// the wrong type are absent (and were reported).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    entries: BTreeMap<&'static str, Value>,
}

// Each getter answers `None` when the key is absent; the schema guarantees the type, so a
// key of another type is absent too (it was reported).
impl Table {
    /// The string at `key`.
    pub fn str(&self, key: &str) -> Option<&Spanned<String>> {
        match self.entries.get(key)? {
            Value::Str(v) => Some(v),
            _ => None,
        }
    }
    /// The integer at `key`.
    pub fn int(&self, key: &str) -> Option<&Spanned<i64>> {
        match self.entries.get(key)? {
            Value::Int(v) => Some(v),
            _ => None,
        }
    }
    /// The boolean at `key`.
    pub fn bool(&self, key: &str) -> Option<&Spanned<bool>> {
        match self.entries.get(key)? {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }
    /// The number (integer or float) at `key`.
    pub fn number(&self, key: &str) -> Option<&Spanned<RawNumber>> {
        match self.entries.get(key)? {
            Value::Number(v) => Some(v),
            _ => None,
        }
    }
    /// The number-or-string at `key`.
    pub fn int_or_str(&self, key: &str) -> Option<&Spanned<NumOrStr>> {
        match self.entries.get(key)? {
            Value::IntOrStr(v) => Some(v),
            _ => None,
        }
    }
    /// The list of strings at `key`.
    pub fn str_list(&self, key: &str) -> Option<&SpannedList> {
        match self.entries.get(key)? {
            Value::StrList(v) => Some(v),
            _ => None,
        }
    }
    /// The list of numbers-or-strings at `key`.
    pub fn int_or_str_list(&self, key: &str) -> Option<&Spanned<Vec<Spanned<NumOrStr>>>> {
        match self.entries.get(key)? {
            Value::IntOrStrList(v) => Some(v),
            _ => None,
        }
    }
    /// The sub-table `[…key]`.
    pub fn table(&self, key: &str) -> Option<&Spanned<Table>> {
        match self.entries.get(key)? {
            Value::Table(v) => Some(v),
            _ => None,
        }
    }
    /// The tables of `[[key]]`, in file order (none when absent).
    pub fn tables(&self, key: &str) -> &[Spanned<Table>] {
        match self.entries.get(key) {
            Some(Value::Tables(v)) => v,
            _ => &[],
        }
    }
}

/// A problem found while walking the document against the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file (bytes).
    pub span: Range<usize>,
    /// Key path such as `uplink[1].gatway`.
    pub key: String,
    /// What is wrong, and what would be valid.
    pub message: String,
}

/// The document walked against [`SCHEMA`].
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// The top level of the file.
    pub root: Table,
    /// Unknown keys and wrongly typed values, in file order.
    pub problems: Vec<Problem>,
    /// Key paths whose value was rejected: validation must not report them again (as
    /// "missing", say).
    pub rejected: BTreeSet<String>,
    /// Integers written beyond 64 bits, by the byte offset of their value, as written. Such a
    /// value is `i64::MAX` (`i64::MIN` when negative) where an integer or a number is
    /// expected, so that its range check fails, and the text written where a number or a
    /// string is (`"99999999999999999999"`): messages show what was written.
    pub too_large: BTreeMap<usize, String>,
}

/// The file could not be parsed as TOML at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where in the file (bytes).
    pub span: Range<usize>,
    /// The parser's description.
    pub message: String,
}

/// Parses TOML text and walks it against [`SCHEMA`].
pub fn parse(text: &str) -> Result<Parsed, SyntaxError> {
    let mut working = Cow::Borrowed(text);
    let mut too_large = BTreeMap::new();
    let doc = loop {
        let e = match toml_edit::ImDocument::parse(working.as_ref()) {
            Ok(doc) => break doc,
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        // toml_edit stops at an integer beyond 64 bits: put one of the same sign in its place
        // and parse again, so that the key is known and the rest of the file still checked.
        let placed = (too_large.len() < MAX_TOO_LARGE && is_too_large(&message))
            .then(|| replace_too_large(working.to_mut(), span.start))
            .flatten();
        match placed {
            Some(literal) => {
                too_large.insert(span.start, literal);
            }
            None => return Err(SyntaxError { span, message }),
        }
    };
    let mut walk = Walk {
        problems: Vec::new(),
        rejected: BTreeSet::new(),
        too_large: &too_large,
    };
    let root = walk.table(&SCHEMA, doc.as_table(), "", 0..0);
    crate::order::sort_by_key(&mut walk.problems, |p| p.span.start);
    Ok(Parsed {
        root,
        problems: walk.problems,
        rejected: walk.rejected,
        too_large,
    })
}

/// At most this many integers beyond 64 bits are replaced (each costs a parse of the whole
/// file); the next one is reported as toml_edit's syntax error, without its key.
const MAX_TOO_LARGE: usize = 64;

/// Whether toml_edit's error is an integer literal beyond `i64` (the standard library's
/// `ParseIntError` texts, which toml_edit passes on).
fn is_too_large(message: &str) -> bool {
    message == "number too large to fit in target type"
        || message == "number too small to fit in target type"
}

/// Replaces the integer literal at byte `start` of `text` by `i64::MAX` (or `i64::MIN` for a
/// negative one) padded with spaces to its length, so that every span stays where it was;
/// the literal as written, or `None` when what is there is no such literal.
fn replace_too_large(text: &mut String, start: usize) -> Option<String> {
    let rest = text.get(start..)?;
    let len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '+' || c == '-'))
        .unwrap_or(rest.len());
    let literal = &rest[..len];
    let digits = literal.trim_start_matches(['+', '-']);
    if digits.is_empty() || !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // Every literal beyond 64 bits is at least as long as its placeholder.
    let placeholder = if literal.starts_with('-') {
        "-9223372036854775808"
    } else {
        "0x7fffffffffffffff"
    };
    let pad = len.checked_sub(placeholder.len())?;
    let literal = literal.to_string();
    text.replace_range(
        start..start + len,
        &format!("{placeholder}{}", " ".repeat(pad)),
    );
    Some(literal)
}

struct Walk<'a> {
    problems: Vec<Problem>,
    rejected: BTreeSet<String>,
    /// [`Parsed::too_large`].
    too_large: &'a BTreeMap<usize, String>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// What the user wrote, for messages.
fn written(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => match v {
            toml_edit::Value::String(_) => "a string",
            toml_edit::Value::Integer(_) => "an integer",
            toml_edit::Value::Float(_) => "a float",
            toml_edit::Value::Boolean(_) => "a boolean",
            toml_edit::Value::Datetime(_) => "a date-time",
            toml_edit::Value::Array(_) => "an array",
            toml_edit::Value::InlineTable(_) => "an inline table",
        },
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

impl Walk<'_> {
    fn table(
        &mut self,
        section: &'static Section,
        t: &dyn TableLike,
        path: &str,
        fallback: Range<usize>,
    ) -> Table {
        let mut out = Table::default();
        for (key, item) in t.iter() {
            let key_span = t.key(key).and_then(|k| k.span());
            let value_span = item.span().or_else(|| key_span.clone());
            let key_span = key_span
                .or_else(|| value_span.clone())
                .unwrap_or(fallback.clone());
            let value_span = value_span.unwrap_or(key_span.clone());
            let full = join(path, key);
            let Some(field) = section.field(key) else {
                self.problems.push(Problem {
                    span: key_span,
                    key: full,
                    message: unknown_key_message(section, key),
                });
                continue;
            };
            match self.value(field.kind, item, &full, value_span.clone()) {
                Some(v) => {
                    out.entries.insert(field.name, v);
                }
                None => {
                    self.rejected.insert(full);
                }
            }
        }
        out
    }

    /// Converts `item` to `kind`; `None` (and a reported problem) when it has another type.
    fn value(&mut self, kind: Kind, item: &Item, path: &str, span: Range<usize>) -> Option<Value> {
        let scalar = item.as_value();
        let converted = match kind {
            Kind::Str => scalar
                .and_then(|v| v.as_str())
                .map(|s| Value::Str(Spanned::new(span.clone(), s.to_string()))),
            Kind::Int => scalar
                .and_then(|v| v.as_integer())
                .map(|n| Value::Int(Spanned::new(span.clone(), n))),
            Kind::Bool => scalar
                .and_then(|v| v.as_bool())
                .map(|b| Value::Bool(Spanned::new(span.clone(), b))),
            Kind::Number => scalar
                .and_then(number)
                .map(|n| Value::Number(Spanned::new(span.clone(), n))),
            Kind::IntOrStr => scalar
                .and_then(|v| num_or_str(v, self.too_large))
                .map(|n| Value::IntOrStr(Spanned::new(span.clone(), n))),
            Kind::StrList => {
                return self
                    .list(item, path, span, kind, |v| v.as_str().map(str::to_string))
                    .map(Value::StrList)
            }
            Kind::IntOrStrList => {
                let too_large = self.too_large;
                return self
                    .list(item, path, span, kind, |v| num_or_str(v, too_large))
                    .map(Value::IntOrStrList);
            }
            Kind::Table(section) => item.as_table_like().map(|t| {
                Value::Table(Spanned::new(
                    span.clone(),
                    self.table(section, t, path, span.clone()),
                ))
            }),
            Kind::Tables(section) => {
                return self.tables(section, item, path, span).map(Value::Tables)
            }
        };
        if converted.is_none() {
            self.problems.push(Problem {
                span,
                key: path.to_string(),
                message: format!("expected {}, found {}", kind.expected(), written(item)),
            });
        }
        converted
    }

    /// A list whose every element converts with `elem`; one bad element rejects the list.
    fn list<T>(
        &mut self,
        item: &Item,
        path: &str,
        span: Range<usize>,
        kind: Kind,
        elem: impl Fn(&toml_edit::Value) -> Option<T>,
    ) -> Option<Spanned<Vec<Spanned<T>>>> {
        let Some(arr) = item.as_array() else {
            self.problems.push(Problem {
                span,
                key: path.to_string(),
                message: format!("expected {}, found {}", kind.expected(), written(item)),
            });
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in arr.iter().enumerate() {
            let vspan = v.span().unwrap_or(span.clone());
            match elem(v) {
                Some(x) => out.push(Spanned::new(vspan, x)),
                None => {
                    let what = written(&Item::Value(v.clone()));
                    self.problems.push(Problem {
                        span: vspan,
                        key: format!("{path}[{i}]"),
                        message: format!("expected {}, found {what}", element(kind)),
                    });
                    ok = false;
                }
            }
        }
        ok.then(|| Spanned::new(span, out))
    }

    /// `[[section]]`, or an array of inline tables.
    fn tables(
        &mut self,
        section: &'static Section,
        item: &Item,
        path: &str,
        span: Range<usize>,
    ) -> Option<Vec<Spanned<Table>>> {
        let mut out = Vec::new();
        if let Some(aot) = item.as_array_of_tables() {
            for (i, t) in aot.iter().enumerate() {
                let tspan = t.span().unwrap_or(span.clone());
                let table = self.table(section, t, &format!("{path}[{i}]"), tspan.clone());
                out.push(Spanned::new(tspan, table));
            }
            return Some(out);
        }
        let arr = item
            .as_array()
            .filter(|a| a.iter().all(|v| v.is_inline_table()));
        let Some(arr) = arr else {
            self.problems.push(Problem {
                span,
                key: path.to_string(),
                message: format!(
                    "expected {}, found {}",
                    Kind::Tables(section).expected(),
                    written(item)
                ),
            });
            return None;
        };
        for (i, v) in arr.iter().enumerate() {
            let tspan = v.span().unwrap_or(span.clone());
            if let Some(t) = v.as_inline_table() {
                let table = self.table(section, t, &format!("{path}[{i}]"), tspan.clone());
                out.push(Spanned::new(tspan, table));
            }
        }
        Some(out)
    }
}

fn element(kind: Kind) -> &'static str {
    match kind {
        Kind::IntOrStrList => "a number or a string",
        _ => "a string",
    }
}

fn number(v: &toml_edit::Value) -> Option<RawNumber> {
    v.as_integer()
        .map(RawNumber::Int)
        .or_else(|| v.as_float().map(RawNumber::Float))
}

/// A number or a string; an integer beyond 64 bits is the text written (see
/// [`Parsed::too_large`]).
fn num_or_str(v: &toml_edit::Value, too_large: &BTreeMap<usize, String>) -> Option<NumOrStr> {
    let written = v
        .span()
        .and_then(|s| too_large.get(&s.start))
        .filter(|_| v.is_integer());
    if let Some(w) = written {
        return Some(NumOrStr::Str(w.clone()));
    }
    v.as_integer()
        .map(NumOrStr::Num)
        .or_else(|| v.as_str().map(|s| NumOrStr::Str(s.to_string())))
}

/// Where the key belongs when another section has exactly this key (a key written in the
/// wrong section: that beats any similar spelling here), else "unknown key; did you mean
/// `gateway`?", else what is known here.
fn unknown_key_message(section: &Section, key: &str) -> String {
    let homes = homes_of(key, section);
    if let Some((last, rest)) = homes.split_last() {
        let home = if rest.is_empty() {
            last.to_string()
        } else {
            format!("{} or {last}", rest.join(", "))
        };
        return format!(
            "unknown key in {}; `{key}` belongs in {home}",
            section.title
        );
    }
    if let Some(best) = closest(key, section.fields.iter().map(|f| f.name)) {
        return format!("unknown key; did you mean `{best}`?");
    }
    let known: Vec<&str> = section.fields.iter().map(|f| f.name).collect();
    format!(
        "unknown key in {} (known keys: {})",
        section.title,
        known.join(", ")
    )
}

/// The most similar candidate, when it is similar enough to be a likely typo and no other
/// candidate is as similar (a guess between equals would mislead).
pub fn closest<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    let mut tie = false;
    for c in candidates {
        let score = strsim::jaro_winkler(key, c);
        match best {
            Some((b, _)) if score < b => {}
            Some((b, _)) if score == b => tie = true,
            _ => {
                best = Some((score, c));
                tie = false;
            }
        }
    }
    best.filter(|(score, _)| *score >= 0.8 && !tie)
        .map(|(_, c)| c)
}

/// The titles of the other sections that know `key`, outer sections first and each level in
/// [`SCHEMA`]'s order.
fn homes_of(key: &str, not: &Section) -> Vec<&'static str> {
    let mut queue: Vec<&'static Section> = vec![&SCHEMA];
    let mut homes = Vec::new();
    let mut next = 0;
    while let Some(section) = queue.get(next).copied() {
        next += 1;
        if !std::ptr::eq(section, not) && section.field(key).is_some() {
            homes.push(section.title);
        }
        for f in section.fields {
            if let Kind::Table(s) | Kind::Tables(s) = f.kind {
                queue.push(s);
            }
        }
    }
    homes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_in_one_pass() {
        let text = "[lan]\ninterfaces = [\"eth0\", 3]\nbogus = 1\n[[uplink]]\nname = 5\ngatway = \"x\"\ntargets = []\n";
        let p = parse(text).expect("toml");
        let keys: Vec<&str> = p.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "lan.interfaces[1]",
                "lan.bogus",
                "uplink[0].name",
                "uplink[0].gatway",
                "uplink[0].targets"
            ]
        );
        assert!(
            p.problems[3].message.contains("did you mean `gateway`?"),
            "{:?}",
            p.problems
        );
        assert!(
            p.problems[4].message.contains("belongs in [uplink.check]"),
            "{:?}",
            p.problems
        );
        assert!(p.rejected.contains("lan.interfaces") && p.rejected.contains("uplink[0].name"));
        assert!(p.root.tables("uplink")[0].get_ref().str("name").is_none());
    }

    #[test]
    fn inline_tables_are_tables() {
        let text = "lan = { interfaces = [\"eth0\"] }\nuplink = [{ name = \"a\", check = { window = \"1s\" } }]\n";
        let p = parse(text).expect("toml");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let up = &p.root.tables("uplink")[0];
        let check = up.get_ref().table("check").expect("check");
        assert_eq!(
            check.get_ref().str("window").map(|s| s.get_ref().as_str()),
            Some("1s")
        );
    }

    #[test]
    fn suggestions_need_similarity() {
        let keys = ["name", "interface", "gateway"];
        assert_eq!(closest("gatway", keys.into_iter()), Some("gateway"));
        assert_eq!(closest("interfaces", keys.into_iter()), Some("interface"));
        assert_eq!(closest("zzz", keys.into_iter()), None);
    }

    /// An integer beyond 64 bits keeps its key and lets the rest of the file be walked; past
    /// `MAX_TOO_LARGE` of them (a parse each) toml_edit's error is the answer.
    #[test]
    fn integers_beyond_64_bits_are_replaced_in_place() {
        let p = parse(
            "a = [1, 99999999999999999999 ]\nb = -99999999999999999999\nc = 0x8000000000000000\n",
        )
        .expect("parsed");
        let written: Vec<(usize, &str)> =
            p.too_large.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            written,
            [
                (8, "99999999999999999999"),
                (35, "-99999999999999999999"),
                (61, "0x8000000000000000")
            ]
        );
        let keys: Vec<&str> = p.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        let many = format!(
            "x = [{}]\n",
            "99999999999999999999, ".repeat(MAX_TOO_LARGE + 1)
        );
        let e = parse(&many).expect_err("too many to replace");
        assert_eq!(e.message, "number too large to fit in target type");
        assert_eq!(e.span.start, 5 + MAX_TOO_LARGE * 22);
    }

    /// A key of another section is placed there, even when a key here is spelt like it; a key
    /// of several sections names them all.
    #[test]
    fn an_exact_key_elsewhere_beats_a_similar_one_here() {
        let p = parse(
            "[lan]\nmethod = \"random\"\n[[uplink]]\ninterval = \"1s\"\n[balance]\nname = \"x\"\n",
        )
        .expect("toml");
        let messages: Vec<(&str, &str)> = p
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            [
                (
                    "lan.method",
                    "unknown key in [lan]; `method` belongs in [balance] or [uplink.check]"
                ),
                (
                    "uplink[0].interval",
                    "unknown key in [[uplink]]; `interval` belongs in [uplink.check]"
                ),
                (
                    "balance.name",
                    "unknown key in [balance]; `name` belongs in [[uplink]] or [[rule]]"
                ),
            ]
        );
    }
}
