//! What other nftables tables do with the packet and connection marks, read from
//! `nft -j list ruleset`: every statement that matches or writes `meta mark` / `ct mark`, with
//! the hook and priority its chain runs at (followed from the base chains through `jump`,
//! `goto` and verdict maps), so doctor can tell a write that breaks multiwan from one that
//! multiwan undoes. Pure: the JSON goes in, [`MarkUse`]s come out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// What one statement does with a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkOp {
    /// Matches these bits of the packet or connection mark.
    Read { bits: u32 },
    /// Writes the connection mark (`ct`) or the packet mark.
    Write(Write),
}

/// The effect of `meta mark set …` / `ct mark set …` on each bit of the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Write {
    /// The connection mark (else the packet mark).
    pub ct: bool,
    /// Bits it may clear.
    pub clear: u32,
    /// Bits it may set.
    pub set: u32,
    /// Bits it copies from the other mark (`meta mark set ct mark` copies all 32).
    pub copied: u32,
    /// The constant of an absolute write (`ct mark set 0x20`).
    pub absolute: Option<u32>,
}

impl Write {
    /// Every bit the statement may change.
    pub fn touched(&self) -> u32 {
        self.clear | self.set | self.copied
    }
}

/// A mark statement in another table, where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkUse {
    /// `family name` of the table (`inet fw`).
    pub table: String,
    pub chain: String,
    /// Hook and priority of a base chain that reaches the statement; `None` when no base
    /// chain does (a statement reached from several hooks is listed once per hook).
    pub hook: Option<(String, i64)>,
    /// The rule acts only on packets whose whole packet mark is this value
    /// (`meta mark 0xca6c`, as wg-quick writes it).
    pub only_mark: Option<u32>,
    pub op: MarkOp,
}

fn is_mark(v: &Value, source: &str) -> bool {
    v.get(source)
        .and_then(|k| k.get("key"))
        .and_then(Value::as_str)
        == Some("mark")
}

fn number(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// Mark bits that constants in `v` (an nft JSON expression) name.
fn constant_bits(v: &Value) -> u32 {
    match v {
        Value::Number(_) => number(v).unwrap_or(u32::MAX),
        Value::Array(a) => a.iter().map(constant_bits).fold(0, |x, y| x | y),
        Value::Object(m) => m.values().map(constant_bits).fold(0, |x, y| x | y),
        _ => 0,
    }
}

fn mentions_mark(v: &Value) -> bool {
    v.to_string().contains(r#""key":"mark""#)
}

/// What `value` does when written to the connection mark (`ct`) or the packet mark.
fn effect(value: &Value, ct: bool) -> Write {
    let (own, other) = if ct { ("ct", "meta") } else { ("meta", "ct") };
    let unknown = Write {
        ct,
        clear: u32::MAX,
        set: u32::MAX,
        ..Write::default()
    };
    if let Some(n) = number(value) {
        return Write {
            ct,
            clear: !n,
            set: n,
            copied: 0,
            absolute: Some(n),
        };
    }
    if is_mark(value, own) {
        return Write {
            ct,
            ..Write::default()
        };
    }
    if is_mark(value, other) {
        return Write {
            ct,
            copied: u32::MAX,
            ..Write::default()
        };
    }
    let Some((op, args)) = value.as_object().and_then(|m| m.iter().next()) else {
        return unknown;
    };
    let (Some(inner), Some(b)) = (args.get(0), args.get(1).and_then(number)) else {
        return unknown;
    };
    let e = effect(inner, ct);
    match op.as_str() {
        "|" => Write {
            clear: e.clear & !b,
            set: e.set | b,
            copied: e.copied & !b,
            ..e
        },
        "&" => Write {
            clear: e.clear | !b,
            set: e.set & b,
            copied: e.copied & b,
            ..e
        },
        "^" => Write {
            clear: e.clear | b,
            set: e.set | b,
            copied: e.copied & !b,
            ..e
        },
        _ => unknown,
    }
}

/// The mark statements of one rule's expressions, and the whole packet mark it requires.
fn ops(expr: &[Value]) -> (Vec<MarkOp>, Option<u32>) {
    let mut out = Vec::new();
    let mut only = None;
    for stmt in expr {
        if let Some(m) = stmt.get("mangle").filter(|m| mentions_mark(&m["key"])) {
            out.push(MarkOp::Write(effect(&m["value"], is_mark(&m["key"], "ct"))));
        } else if let Some(m) = stmt.get("match").filter(|m| mentions_mark(&m["left"])) {
            let bare = is_mark(&m["left"], "meta") || is_mark(&m["left"], "ct");
            if bare && is_mark(&m["left"], "meta") && m["op"] == "==" {
                only = number(&m["right"]);
            }
            // A bare `meta mark == V` compares all 32 bits.
            let bits = if bare {
                u32::MAX
            } else {
                constant_bits(&m["left"]) | constant_bits(&m["right"])
            };
            out.push(MarkOp::Read { bits });
        }
    }
    (out, only)
}

/// Chains `v` jumps or goes to (also from verdict maps).
fn targets(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x.get("target").and_then(Value::as_str)) {
                    ("jump" | "goto", Some(t)) => {
                        out.insert(t.to_string());
                    }
                    _ => targets(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| targets(x, out)),
        _ => {}
    }
}

type ChainKey = (String, String);

/// The hooks (with priority) from which each chain runs.
fn reach(
    base: &BTreeMap<ChainKey, (String, i64)>,
    edges: &BTreeMap<ChainKey, BTreeSet<String>>,
) -> BTreeMap<ChainKey, BTreeSet<(String, i64)>> {
    let mut out: BTreeMap<ChainKey, BTreeSet<(String, i64)>> = BTreeMap::new();
    for (start, hook) in base {
        let mut todo = vec![start.clone()];
        while let Some(k) = todo.pop() {
            if !out.entry(k.clone()).or_default().insert(hook.clone()) {
                continue;
            }
            for t in edges.get(&k).into_iter().flatten() {
                todo.push((k.0.clone(), t.clone()));
            }
        }
    }
    out
}

/// Every mark statement in tables other than multiwan's, with where it runs.
pub fn marks_in_ruleset(json: &Value) -> Vec<MarkUse> {
    let items = json["nftables"].as_array().cloned().unwrap_or_default();
    let table_of = |o: &Value, key: &str| {
        format!(
            "{} {}",
            o["family"].as_str().unwrap_or("?"),
            o[key].as_str().unwrap_or("?")
        )
    };
    let mut base = BTreeMap::new();
    let mut edges: BTreeMap<ChainKey, BTreeSet<String>> = BTreeMap::new();
    let mut rules = Vec::new();
    for item in &items {
        if let Some(c) = item.get("chain") {
            if let (Some(h), Some(p)) = (c["hook"].as_str(), c["prio"].as_i64()) {
                let key = (
                    table_of(c, "table"),
                    c["name"].as_str().unwrap_or("?").into(),
                );
                base.insert(key, (h.to_string(), p));
            }
        }
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let table = table_of(rule, "table");
        if table == "inet multiwan" {
            continue;
        }
        let key = (table, rule["chain"].as_str().unwrap_or("?").to_string());
        targets(&rule["expr"], edges.entry(key.clone()).or_default());
        rules.push((key, rule["expr"].as_array().cloned().unwrap_or_default()));
    }
    let hooks = reach(&base, &edges);
    let mut out = Vec::new();
    for ((table, chain), expr) in rules {
        let (found, only_mark) = ops(&expr);
        let at: Vec<Option<(String, i64)>> = match hooks.get(&(table.clone(), chain.clone())) {
            Some(h) => h.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        for op in found {
            for hook in &at {
                out.push(MarkUse {
                    table: table.clone(),
                    chain: chain.clone(),
                    hook: hook.clone(),
                    only_mark,
                    op,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(items: &str) -> Vec<MarkUse> {
        let json: Value =
            serde_json::from_str(&format!(r#"{{"nftables":[{items}]}}"#)).expect("json");
        marks_in_ruleset(&json)
    }

    fn write(value: &str, ct: bool) -> Write {
        effect(&serde_json::from_str(value).expect("json"), ct)
    }

    #[test]
    fn writes_are_read_bit_by_bit() {
        let w = write("32", true);
        assert_eq!((w.clear, w.set, w.absolute), (!0x20, 0x20, Some(0x20)));
        assert_eq!(w.touched(), u32::MAX);
        // ct mark set ct mark and 0xff00ffff or 0x20: only 0x00ff0000 and 0x20.
        let w = write(
            r#"{"|":[{"&":[{"ct":{"key":"mark"}},4278255615]},32]}"#,
            true,
        );
        assert_eq!(w.touched(), 0x00ff_0020);
        assert_eq!(w.absolute, None);
        let w = write(r#"{"|":[{"meta":{"key":"mark"}},64]}"#, false);
        assert_eq!((w.clear, w.set), (0, 0x40));
        let w = write(r#"{"&":[{"meta":{"key":"mark"}},4095]}"#, false);
        assert_eq!((w.clear, w.set), (!0xfff, 0));
        // meta mark set ct mark: a copy, every bit.
        let w = write(r#"{"ct":{"key":"mark"}}"#, false);
        assert_eq!((w.clear, w.set, w.copied), (0, 0, u32::MAX));
        // A map or anything else: every bit, either way.
        let w = write(r#"{"map":{"key":{"meta":{"key":"iifname"}}}}"#, false);
        assert_eq!((w.clear, w.set), (u32::MAX, u32::MAX));
    }

    #[test]
    fn statements_carry_the_hooks_that_reach_them() {
        let m = parse(
            r#"{"chain":{"family":"inet","table":"fw","name":"pre","type":"filter","hook":"prerouting","prio":-155}},
            {"chain":{"family":"inet","table":"fw","name":"sub"}},
            {"chain":{"family":"inet","table":"fw","name":"lost"}},
            {"rule":{"family":"inet","table":"fw","chain":"pre","expr":[
              {"mangle":{"key":{"ct":{"key":"mark"}},"value":32}},
              {"vmap":{"key":{"meta":{"key":"iifname"}},"data":{"set":[["a",{"jump":{"target":"sub"}}]]}}}]}},
            {"rule":{"family":"inet","table":"fw","chain":"sub","expr":[
              {"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":51820}},
              {"mangle":{"key":{"meta":{"key":"mark"}},"value":16}}]}},
            {"rule":{"family":"inet","table":"fw","chain":"lost","expr":[
              {"mangle":{"key":{"meta":{"key":"mark"}},"value":1}}]}},
            {"rule":{"family":"inet","table":"multiwan","chain":"c","expr":[
              {"mangle":{"key":{"ct":{"key":"mark"}},"value":65536}}]}}"#,
        );
        let pre = Some(("prerouting".to_string(), -155));
        assert_eq!(m.len(), 4, "{m:#?}");
        assert!(m.iter().all(|u| u.table == "inet fw"), "{m:#?}");
        assert_eq!((m[0].chain.as_str(), &m[0].hook), ("pre", &pre));
        assert!(matches!(m[0].op, MarkOp::Write(w) if w.ct && w.absolute == Some(0x20)));
        assert_eq!(m[1].op, MarkOp::Read { bits: u32::MAX });
        assert_eq!((m[2].chain.as_str(), &m[2].hook), ("sub", &pre));
        assert_eq!(m[2].only_mark, Some(0xca6c));
        assert_eq!((m[3].chain.as_str(), &m[3].hook), ("lost", &None));
    }
}
