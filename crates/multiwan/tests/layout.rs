//! The workspace's shape, checked from its sources: no function over 120 lines outside tests,
//! the `multiwan` crate's modules follow the layering of ARCHITECTURE.md with no import cycle,
//! and the lab depends on nothing of the router.
//!
//! The sources are parsed with `syn` (not scanned as text), so strings, comments, raw strings
//! and lifetimes cannot fool the counts. Modules are found the way rustc finds them: from each
//! crate root along its `mod` declarations, skipping `#[cfg(test)]` ones, so unit-test files
//! and `#[test]` functions are not counted.
//!
//! The allow-lists below name only code in files that were off limits when the check was
//! written; each entry must still be an offender, so the lists can only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::{self, Visit};

/// The longest a function may be, from `fn` to its closing brace.
const MAX_LINES: usize = 120;

/// Functions over the limit that live in files another engineer owns (the lead shrinks this
/// list as they are split): (file from the workspace root, function).
const LONG_ALLOWED: &[(&str, &str)] = &[];

/// Import cycles inside files another engineer owns: each entry is the set of modules of one
/// cycle (the lead shrinks this list).
const CYCLES_ALLOWED: &[&[&str]] = &[];

/// The layering of the `multiwan` crate (ARCHITECTURE.md, "Layers"): the top-level modules each
/// one may use. A module not listed here may not exist; `multiwan_core` is below them all.
const LAYERS: &[(&str, &[&str])] = &[
    // The leaves. `args` is the command line's definition, which build.rs compiles alone.
    ("args", &[]),
    // Reads argv into `args`' types, from the table build.rs derives from it.
    ("cmdline", &["args"]),
    ("settings", &["args"]),
    // tracing's set-up (filter, stderr or journald); only the command line starts it.
    ("logging", &[]),
    ("rundir", &[]),
    ("control", &[]),
    // The kernel edge writes the saved sysctls and the known-good ruleset into the run dir.
    ("kernel", &["rundir"]),
    // The plan for this namespace from the live kernel (plan --live, apply, doctor).
    ("live", &["args", "settings", "kernel", "rundir"]),
    // The two halves a command runs: talking to a daemon, and being one.
    (
        "operator",
        &["args", "settings", "control", "kernel", "rundir", "live"],
    ),
    (
        "daemon",
        &["args", "settings", "control", "kernel", "rundir"],
    ),
    // The command line wires everything.
    (
        "cli",
        &[
            "args", "cmdline", "settings", "logging", "control", "kernel", "rundir", "live",
            "operator", "daemon",
        ],
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One module (a file, or an inline `mod x { … }`) and what it refers to.
#[derive(Default)]
struct Module {
    /// Workspace-relative file.
    file: String,
    /// Child modules declared here (file or inline).
    children: BTreeSet<String>,
    /// Paths that start with `crate`, `super`, `self` or a child module: (segments, line).
    refs: Vec<(Vec<String>, usize)>,
    /// Names this module re-exports (`pub use`) → the path they come from.
    reexports: BTreeMap<String, Vec<String>>,
    /// Every other path of two segments or more (into other crates): (segments, line).
    foreign: Vec<(Vec<String>, usize)>,
}

/// A function's extent.
struct Func {
    file: String,
    name: String,
    line: usize,
    lines: usize,
}

/// A whole crate: module path (`["daemon", "server"]`, the root is `[]`) → module.
#[derive(Default)]
struct Crate {
    modules: BTreeMap<Vec<String>, Module>,
    funcs: Vec<Func>,
    /// Calls of the standard library's slice sorts outside tests: (file, line, method).
    sorts: Vec<(String, usize, String)>,
}

/// The slice methods that compile a sort per element type (`multiwan_core::order` instead).
const SORTS: &[&str] = &[
    "sort",
    "sort_by",
    "sort_by_key",
    "sort_by_cached_key",
    "sort_unstable",
    "sort_unstable_by",
    "sort_unstable_by_key",
];

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string() == "test")
    })
}

/// The file of `#[path = "…"] mod x;`.
fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

fn is_test_fn(attrs: &[syn::Attribute]) -> bool {
    is_cfg_test(attrs) || attrs.iter().any(|a| a.path().is_ident("test"))
}

/// Walks one file's items for one module (recursing into inline modules).
struct Walker<'a> {
    krate: &'a mut Crate,
    file: String,
    /// The module being walked, and whether we are at its item level (for `pub use`).
    module: Vec<String>,
    depth: usize,
    /// The impl's type, for method names.
    self_ty: Option<String>,
    /// File modules declared in this file: (module path, its file), loaded after the walk.
    pending: Vec<(Vec<String>, PathBuf)>,
    dir: PathBuf,
}

impl Walker<'_> {
    fn module(&mut self) -> &mut Module {
        let file = self.file.clone();
        self.krate
            .modules
            .entry(self.module.clone())
            .or_insert_with(|| Module {
                file,
                ..Module::default()
            })
    }

    fn func(&mut self, name: String, sig: &syn::Signature, block: &syn::Block) {
        let line = sig.fn_token.span().start().line;
        let end = block.brace_token.span.close().end().line;
        self.krate.funcs.push(Func {
            file: self.file.clone(),
            name,
            line,
            lines: end + 1 - line,
        });
    }

    fn reference(&mut self, segs: Vec<String>, line: usize) {
        let first = segs.first().map(String::as_str).unwrap_or_default();
        let relative = matches!(first, "crate" | "super" | "self");
        let child = segs.len() > 1 && self.module().children.contains(first);
        if relative || child {
            self.module().refs.push((segs, line));
        } else if segs.len() > 1 {
            self.module().foreign.push((segs, line));
        }
    }

    /// Paths inside token streams (macro bodies and attribute arguments, which syn does not
    /// parse): every `a::b::c` run whose first segment is not itself after a `::`.
    fn tokens(&mut self, ts: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let toks: Vec<TokenTree> = ts.into_iter().collect();
        let sep = |i: usize| {
            matches!((toks.get(i), toks.get(i + 1)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                    if a.as_char() == ':' && b.as_char() == ':')
        };
        let mut i = 0;
        while i < toks.len() {
            match &toks[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if !(i >= 2 && sep(i - 2)) => {
                    let line = id.span().start().line;
                    let mut segs = vec![id.to_string()];
                    let mut j = i;
                    while sep(j + 1) {
                        match toks.get(j + 3) {
                            Some(TokenTree::Ident(next)) => segs.push(next.to_string()),
                            _ => break,
                        }
                        j += 3;
                    }
                    if segs.len() > 1 {
                        self.reference(segs, line);
                    }
                    i = j;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) if n.ident == "self" => {
            out.push((prefix.clone(), prefix.last().cloned().unwrap_or_default()))
        }
        syn::UseTree::Name(n) => {
            let mut p = prefix.clone();
            p.push(n.ident.to_string());
            out.push((p, n.ident.to_string()));
        }
        syn::UseTree::Rename(r) => {
            let mut p = prefix.clone();
            p.push(r.ident.to_string());
            out.push((p, r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), "*".into())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten(t, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Walker<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_cfg_test(&m.attrs) {
            return;
        }
        let name = m.ident.to_string();
        self.module().children.insert(name.clone());
        let mut path = self.module.clone();
        path.push(name.clone());
        match &m.content {
            None => {
                let base = self.dir.join(&name);
                let file = if let Some(p) = path_attr(&m.attrs) {
                    // `#[path]` on a crate root's declaration is relative to the root's folder
                    // (build.rs compiles src/args.rs this way).
                    self.dir.join(p)
                } else if base.with_extension("rs").exists() {
                    base.with_extension("rs")
                } else {
                    base.join("mod.rs")
                };
                self.pending.push((path, file));
            }
            Some((_, items)) => {
                let outer = std::mem::replace(&mut self.module, path);
                let depth = std::mem::replace(&mut self.depth, 0);
                self.module();
                for it in items {
                    self.visit_item(it);
                }
                self.module = outer;
                self.depth = depth;
            }
        }
    }

    fn visit_item(&mut self, i: &'ast syn::Item) {
        self.depth += 1;
        visit::visit_item(self, i);
        self.depth -= 1;
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if is_test_fn(&f.attrs) {
            return;
        }
        self.func(f.sig.ident.to_string(), &f.sig, &f.block);
        visit::visit_item_fn(self, f);
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if is_cfg_test(&i.attrs) {
            return;
        }
        let ty = match &*i.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        let outer = std::mem::replace(&mut self.self_ty, ty);
        visit::visit_item_impl(self, i);
        self.self_ty = outer;
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if is_test_fn(&f.attrs) {
            return;
        }
        let ty = self.self_ty.clone().unwrap_or_else(|| "?".into());
        self.func(format!("{ty}::{}", f.sig.ident), &f.sig, &f.block);
        visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.func(f.sig.ident.to_string(), &f.sig, block);
        }
        visit::visit_trait_item_fn(self, f);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        flatten(&u.tree, &mut Vec::new(), &mut out);
        let line = u.span().start().line;
        let public = !matches!(u.vis, syn::Visibility::Inherited);
        for (segs, name) in out {
            if public && self.depth == 1 && name != "*" {
                self.module().reexports.insert(name, segs.clone());
            }
            self.reference(segs, line);
        }
    }

    fn visit_expr_method_call(&mut self, c: &'ast syn::ExprMethodCall) {
        let name = c.method.to_string();
        if SORTS.contains(&name.as_str()) {
            let line = c.method.span().start().line;
            self.krate.sorts.push((self.file.clone(), line, name));
        }
        visit::visit_expr_method_call(self, c);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.reference(segs, p.span().start().line);
        visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        visit::visit_macro(self, m);
    }

    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        if let syn::Meta::List(l) = &a.meta {
            self.tokens(l.tokens.clone());
        }
    }
}

/// Loads a crate from its root file along its (non-test) `mod` declarations.
fn load_crate(root: &Path) -> Crate {
    let mut krate = Crate::default();
    let mut todo = vec![(Vec::new(), root.to_path_buf())];
    while let Some((module, file)) = todo.pop() {
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // `a.rs` and `a/mod.rs` keep their children in `a/`; a crate root and `mod.rs` beside
        // themselves.
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let parent = file.parent().unwrap_or(Path::new("."));
        let dir = if module.is_empty() || stem == "mod" {
            parent.to_path_buf()
        } else {
            parent.join(stem)
        };
        let rel = relative(&file);
        let mut w = Walker {
            krate: &mut krate,
            file: rel,
            module,
            depth: 0,
            self_ty: None,
            pending: Vec::new(),
            dir,
        };
        w.module();
        // Declarations first, so paths through child modules are recognised wherever they are.
        for it in &ast.items {
            if let syn::Item::Mod(m) = it {
                if !is_cfg_test(&m.attrs) {
                    w.module().children.insert(m.ident.to_string());
                }
            }
        }
        for it in &ast.items {
            w.visit_item(it);
        }
        todo.extend(w.pending);
    }
    krate
}

fn relative(file: &Path) -> String {
    let ws = workspace().canonicalize().expect("workspace");
    let f = file.canonicalize().expect("file");
    f.strip_prefix(&ws)
        .unwrap_or(&f)
        .to_string_lossy()
        .into_owned()
}

/// Every crate root whose functions are measured, with the crate's own files.
fn roots() -> Vec<PathBuf> {
    let ws = workspace();
    let mut r: Vec<PathBuf> = [
        "crates/multiwan-core/src/lib.rs",
        "crates/multiwan-core/benches/core.rs",
        "crates/multiwan/src/lib.rs",
        "crates/multiwan/src/main.rs",
        "crates/multiwan-lab/src/lib.rs",
        "crates/multiwan-lab/src/main.rs",
    ]
    .iter()
    .map(|p| ws.join(p))
    .collect();
    let mut fuzz: Vec<PathBuf> = std::fs::read_dir(ws.join("fuzz/fuzz_targets"))
        .expect("fuzz targets")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    fuzz.sort();
    r.extend(fuzz);
    for build in [
        "crates/multiwan-core",
        "crates/multiwan",
        "crates/multiwan-lab",
    ] {
        let b = ws.join(build).join("build.rs");
        if b.exists() {
            r.push(b);
        }
    }
    r
}

#[test]
fn no_function_over_120_lines_outside_tests() {
    let mut long = Vec::new();
    let mut seen = BTreeSet::new();
    for root in roots() {
        for f in load_crate(&root).funcs {
            if f.lines <= MAX_LINES {
                continue;
            }
            let allowed = LONG_ALLOWED
                .iter()
                .any(|(file, name)| *file == f.file && *name == f.name);
            if allowed {
                seen.insert((f.file.clone(), f.name.clone()));
            } else {
                long.push(format!(
                    "{}:{}: fn {} is {} lines (at most {MAX_LINES}): split it",
                    f.file, f.line, f.name, f.lines
                ));
            }
        }
    }
    let stale: Vec<String> = LONG_ALLOWED
        .iter()
        .filter(|(file, name)| !seen.contains(&(file.to_string(), name.to_string())))
        .map(|(file, name)| format!("{file}: fn {name} is no longer over {MAX_LINES} lines (or gone): remove it from LONG_ALLOWED"))
        .collect();
    long.extend(stale);
    assert!(long.is_empty(), "\n{}\n", long.join("\n"));
}

/// Follows `segs`, seen from module `from`, to the module that defines what it names.
fn resolve(krate: &Crate, from: &[String], segs: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String> = from.to_vec();
    let mut rest = segs;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    loop {
        let m = krate.modules.get(&base)?;
        match rest.first() {
            Some(s) if m.children.contains(s) => {
                base.push(s.clone());
                rest = &rest[1..];
            }
            // A parent's re-export is a facade for its children: naming `super::Event` depends
            // on the module that defines it. Any other module's re-export is that module's
            // own surface, so `crate::cli::load_config` depends on `cli`.
            Some(s) if m.reexports.contains_key(s) && from.starts_with(&base) => {
                return resolve(krate, &base, &m.reexports[s]);
            }
            _ => return Some(base),
        }
    }
}

/// Every module-to-module edge of a crate: (from, to) → the first (file:line, path) for it.
type Edges = BTreeMap<(Vec<String>, Vec<String>), (String, String)>;

fn edges(krate: &Crate) -> Edges {
    let mut e = Edges::new();
    for (from, m) in &krate.modules {
        for (segs, line) in &m.refs {
            let Some(to) = resolve(krate, from, segs) else {
                continue;
            };
            // A module's own items, and the crate root's (it only declares modules), are no
            // dependency.
            if &to == from || to.is_empty() {
                continue;
            }
            e.entry((from.clone(), to))
                .or_insert_with(|| (format!("{}:{line}", m.file), segs.join("::")));
        }
    }
    e
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn router_modules_follow_the_layers() {
    let krate = load_crate(&workspace().join("crates/multiwan/src/lib.rs"));
    let layers: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for top in &krate.modules[&Vec::new()].children {
        if !layers.contains_key(top.as_str()) {
            wrong.push(format!(
                "module {top} has no place in LAYERS (add it, and to ARCHITECTURE.md)"
            ));
        }
    }
    for ((from, to), (at, path)) in edges(&krate) {
        let (Some(a), Some(b)) = (from.first(), to.first()) else {
            continue;
        };
        if a != b
            && !layers
                .get(a.as_str())
                .is_some_and(|ok| ok.contains(&b.as_str()))
        {
            wrong.push(format!(
                "{at}: `{path}`: {} uses {} — module {a} may use only {:?}",
                name(&from),
                name(&to),
                layers.get(a.as_str()).copied().unwrap_or_default()
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}\n", wrong.join("\n"));
}

/// The strongly connected components of a graph with more than one node (Tarjan).
fn cycles(
    nodes: &[Vec<String>],
    adj: &BTreeMap<Vec<String>, Vec<Vec<String>>>,
) -> Vec<Vec<Vec<String>>> {
    struct T<'a> {
        adj: &'a BTreeMap<Vec<String>, Vec<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn strong(t: &mut T, v: &Vec<String>) {
        let i = t.index.len();
        t.index.insert(v.clone(), i);
        t.low.insert(v.clone(), i);
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.adj.get(v).cloned().unwrap_or_default() {
            if !t.index.contains_key(&w) {
                strong(t, &w);
                let l = t.low[&w].min(t.low[v]);
                t.low.insert(v.clone(), l);
            } else if t.on.contains(&w) {
                let l = t.index[&w].min(t.low[v]);
                t.low.insert(v.clone(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = &w == v;
                scc.push(w);
                if done {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for n in nodes {
        if !t.index.contains_key(n) {
            strong(&mut t, n);
        }
    }
    t.out
}

#[test]
fn router_modules_have_no_import_cycle() {
    let krate = load_crate(&workspace().join("crates/multiwan/src/lib.rs"));
    let e = edges(&krate);
    let mut adj: BTreeMap<Vec<String>, Vec<Vec<String>>> = BTreeMap::new();
    for (from, to) in e.keys() {
        adj.entry(from.clone()).or_default().push(to.clone());
    }
    let nodes: Vec<Vec<String>> = krate.modules.keys().cloned().collect();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for scc in cycles(&nodes, &adj) {
        let names: BTreeSet<String> = scc.iter().map(|m| name(m)).collect();
        let allowed = CYCLES_ALLOWED
            .iter()
            .any(|c| c.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>() == names);
        if allowed {
            seen.insert(names);
            continue;
        }
        let mut text = format!("import cycle between {names:?}:");
        for ((from, to), (at, path)) in &e {
            if scc.contains(from) && scc.contains(to) {
                text += &format!("\n    {at}: `{path}`: {} → {}", name(from), name(to));
            }
        }
        wrong.push(text);
    }
    for c in CYCLES_ALLOWED {
        let names: BTreeSet<String> = c.iter().map(|s| s.to_string()).collect();
        if !seen.contains(&names) {
            wrong.push(format!(
                "{names:?} is no longer a cycle: remove it from CYCLES_ALLOWED"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}\n", wrong.join("\n"));
}

/// The lab drives the router as a user does: no dependency on the router crate, and no path
/// into it from its sources.
#[test]
fn the_lab_depends_on_nothing_of_the_router() {
    let ws = workspace();
    let manifest =
        std::fs::read_to_string(ws.join("crates/multiwan-lab/Cargo.toml")).expect("lab manifest");
    let doc: toml_edit::ImDocument<String> = manifest.parse().expect("lab manifest parses");
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = doc.get(table).and_then(|t| t.as_table_like()) {
            for (dep, _) in deps.iter() {
                assert_ne!(
                    dep, "multiwan",
                    "multiwan-lab [{table}] names the router crate"
                );
            }
        }
    }
    let mut uses = Vec::new();
    for root in [
        "crates/multiwan-lab/src/lib.rs",
        "crates/multiwan-lab/src/main.rs",
    ] {
        let k = load_crate(&ws.join(root));
        // Any path that starts with the router crate's name.
        for m in k.modules.values() {
            uses.extend(
                m.foreign
                    .iter()
                    .filter(|(s, _)| s.first().is_some_and(|f| f == "multiwan"))
                    .map(|(s, l)| format!("{}:{l}: `{}`", m.file, s.join("::"))),
            );
        }
    }
    assert!(
        uses.is_empty(),
        "the lab uses the router crate:\n{}",
        uses.join("\n")
    );
}

/// The checks themselves, on a small crate written for them: a long function is found, test
/// code is not counted, a cycle through `super::` is found, a parent's facade re-export is
/// followed and another module's is not.
/// The router's and the core's code sort through `multiwan_core::order`: each of the standard
/// library's sorts costs ~4 KiB of binary per element type (ARCHITECTURE.md, "resident pages").
#[test]
fn the_router_sorts_through_order() {
    let ws = workspace();
    let mut found = Vec::new();
    for root in [
        "crates/multiwan-core/src/lib.rs",
        "crates/multiwan/src/lib.rs",
        "crates/multiwan/src/main.rs",
    ] {
        for (file, line, method) in load_crate(&ws.join(root)).sorts {
            if file != "crates/multiwan-core/src/order.rs" {
                found.push(format!(
                    "{file}:{line}: .{method}(): use multiwan_core::order (one sort in the binary)"
                ));
            }
        }
    }
    assert!(found.is_empty(), "\n{}\n", found.join("\n"));
}

#[test]
fn the_checks_find_what_they_forbid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = |n: usize| "    let _ = 1;\n".repeat(n);
    let write = |p: &str, text: String| {
        let path = dir.path().join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "lib.rs",
        format!(
            "mod a;\nmod b;\nmod c;\npub fn long() {{\n{}}}\n#[test]\nfn long_test() {{\n{}}}\n#[cfg(test)]\nmod tests {{\n    fn long_helper() {{\n{}}}\n}}\n",
            body(119),
            body(200),
            body(200)
        ),
    );
    write(
        "a.rs",
        "pub use self::inner::Thing;\nmod inner;\npub fn f() { crate::b::g(); }\n".into(),
    );
    // `super::Thing` names the facade, which is followed to `a::inner`.
    write(
        "a/inner.rs",
        "pub struct Thing;\npub fn h() -> super::Thing { super::Thing }\n".into(),
    );
    write(
        "b.rs",
        "pub fn g() { let s: &str = \"crate::c::x\"; let _ = s; crate::a::f(); }\npub fn s(v: &mut [u8]) { v.sort_by_key(|x| *x); }\n#[cfg(test)]\nmod tests {\n    fn t(v: &mut [u8]) { v.sort(); }\n}\n".into(),
    );
    // `c` names `a`'s re-export: a dependency on `a` itself.
    write(
        "c.rs",
        "pub fn x() -> crate::a::Thing { crate::a::Thing }\n".into(),
    );
    let k = load_crate(&dir.path().join("lib.rs"));
    let long: Vec<(&str, usize)> = k
        .funcs
        .iter()
        .filter(|f| f.lines > MAX_LINES)
        .map(|f| (f.name.as_str(), f.lines))
        .collect();
    assert_eq!(long, [("long", 121)], "only the non-test function counts");
    let sorts: Vec<(usize, &str)> = k.sorts.iter().map(|(_, l, m)| (*l, m.as_str())).collect();
    assert_eq!(sorts, [(2, "sort_by_key")], "only the non-test sort counts");
    let e = edges(&k);
    let m = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
    let has = |a: &str, b: &str| e.contains_key(&(m(a), m(b)));
    assert!(has("a", "b") && has("b", "a"), "{:?}", e.keys());
    assert!(!has("a::inner", "a"), "a facade is followed to its origin");
    assert!(
        has("c", "a"),
        "another module's re-export is a dependency on it"
    );
    assert!(!has("b", "c"), "a path in a string is no import");
    let mut adj: BTreeMap<Vec<String>, Vec<Vec<String>>> = BTreeMap::new();
    for (from, to) in e.keys() {
        adj.entry(from.clone()).or_default().push(to.clone());
    }
    let nodes: Vec<Vec<String>> = k.modules.keys().cloned().collect();
    assert_eq!(cycles(&nodes, &adj), vec![vec![m("a"), m("b")]]);
}
