//! The house has no circle between modules: this reads `src/**/*.rs` (following `mod`
//! declarations from `lib.rs` and `main.rs`), builds the graph of `crate::<module>`
//! dependencies between top-level modules and fails on any arrow that [`ALLOWED`] does
//! not list, on any cycle, and on an exit code decided outside `main` and `cli`.
//!
//! Test code (`#[cfg(test)]`) is left out: it is not shipped, and a test may reach across
//! on purpose (a `render` test builds the MIME message to check its encoding).
//! `docs/operations.md` ("Architecture") explains the same table in words.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Who may use whom, by top-level module of the library (and `main`, the binary). Data
/// flows input (`cli`, `http`, `import`) → `store` → `jobs` → `recommend` → `render` →
/// `mail`; `jobs` is the only module that orchestrates a send, `app` the only one that
/// puts a process together. Every module of `lib.rs` has a row; a new one needs one.
const ALLOWED: &[(&str, &[&str])] = &[
    // Pure parsed values: nothing of the crate.
    ("domain", &[]),
    // Owner-only files (a helper of store and mail).
    ("files", &[]),
    ("config", &["domain"]),
    ("unsubscribe", &["domain"]),
    // Measuring: tracked links, holdout, attribution and the report (pure).
    ("measure", &["domain", "unsubscribe"]),
    // The parts `jobs` calls; none knows jobs, the faces, or (but the store) the store.
    ("store", &["domain", "files", "measure"]),
    ("recommend", &["domain"]),
    ("render", &["domain"]),
    ("mail", &["domain", "files"]),
    // Records in: parsed, then stored (with their follow-ups scheduled).
    ("import", &["domain", "store"]),
    (
        "jobs",
        &[
            "config",
            "domain",
            "store",
            "recommend",
            "render",
            "mail",
            "unsubscribe",
            "measure",
        ],
    ),
    // The HTTP face: given a ready engine by `app`; knows neither `app` nor `cli`.
    (
        "http",
        &[
            "config",
            "domain",
            "store",
            "import",
            "jobs",
            "render",
            "unsubscribe",
            "measure",
        ],
    ),
    // Start-up wiring: settings, store, engine, mailer, signals, worker and server.
    (
        "app",
        &[
            "config",
            "domain",
            "store",
            "jobs",
            "render",
            "mail",
            "unsubscribe",
            "http",
        ],
    ),
    // The command line: calls `app` to open what a command needs, never `http`.
    (
        "cli",
        &[
            "app",
            "config",
            "domain",
            "store",
            "import",
            "jobs",
            "recommend",
            "render",
            "mail",
            "unsubscribe",
            "measure",
        ],
    ),
    // The thin binary.
    ("main", &["cli"]),
];

/// Modules that may decide an exit code (`std::process::exit`, `ExitCode`).
const EXIT_DECIDERS: &[&str] = &["main", "cli"];

#[test]
fn modules_depend_only_in_the_documented_direction() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = Graph::read(&src, "aftercart");
    let problems = graph.problems(ALLOWED, EXIT_DECIDERS);
    // `cargo test --test architecture -- --nocapture` shows it.
    println!("{}", graph.describe());
    // Not blind: arrows the code is known to have are found.
    let edges = graph.edges();
    for (from, to) in [
        ("main", "cli"),
        ("cli", "app"),
        ("app", "http"),
        ("app", "jobs"),
        ("http", "jobs"),
        ("jobs", "store"),
        ("jobs", "mail"),
        ("store", "domain"),
    ] {
        assert!(
            edges.get(from).is_some_and(|t| t.contains(to)),
            "{from} → {to} not found in:\n{}",
            graph.describe()
        );
    }
    assert!(
        problems.is_empty(),
        "module dependencies against tests/architecture.rs ALLOWED \
         (and docs/operations.md, Architecture):\n{}\n\nthe graph found:\n{}",
        problems.join("\n"),
        graph.describe()
    );
}

#[test]
fn the_table_itself_has_no_cycle() {
    let edges: BTreeMap<String, BTreeSet<String>> = ALLOWED
        .iter()
        .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
        .collect();
    assert_eq!(find_cycle(&edges), None);
}

/// The test SMTP server lives in the dev-only `aftercart-testkit` crate: nothing a
/// release build compiles may depend on it.
#[test]
fn the_testkit_is_a_dev_dependency_only() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        manifest["dev-dependencies"]
            .as_table()
            .unwrap()
            .contains_key("aftercart-testkit")
    );
    for section in ["dependencies", "build-dependencies"] {
        let deps = manifest.get(section).and_then(|d| d.as_table());
        assert!(
            !deps.is_some_and(|d| d.contains_key("aftercart-testkit")),
            "[{section}] must not name aftercart-testkit"
        );
    }
    assert!(!root.join("src/mail/sink.rs").exists());
}

/// The checker catches what it is for: an arrow against the table, a cycle (through a
/// nested `use` group, a `super` path and a macro body), an exit code decided in the
/// wrong place, a glob import of the crate root; and it ignores test code.
#[test]
fn the_checker_finds_cycles_wrong_arrows_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\nmod d;\n");
    write(
        "a/mod.rs",
        "mod inner;\nuse crate::{c::X, domain_free as _};\n",
    );
    write(
        "a/inner.rs",
        "fn f() { tracing::info!(x = ?super::super::b::Y); }\n",
    );
    write(
        "b.rs",
        "pub struct Y;\nfn g() { let _ = crate::a::Z; std::process::exit(3); }\n\
         #[cfg(test)]\nmod tests { use crate::c::X; }\n",
    );
    write(
        "c.rs",
        "pub struct X;\n#[cfg(test)]\nfn only_in_tests() { crate::b::Y; }\n",
    );
    write("d.rs", "use super::*;\n");
    write("main.rs", "fn main() { mylib::a::run(); }\n");
    let graph = Graph::read(dir.path(), "mylib");
    let allowed: &[(&str, &[&str])] = &[
        ("a", &["b", "c"]),
        ("b", &[]),
        ("c", &[]),
        ("d", &[]),
        ("main", &["a"]),
    ];
    let problems = graph.problems(allowed, &["main"]);
    let all = problems.join("\n");
    assert!(all.contains("b → a"), "{all}");
    assert!(all.contains("b.rs:2"), "{all}");
    assert!(all.contains("cycle: a → b → a"), "{all}");
    assert!(
        all.contains("b decides an exit code") && all.contains("b.rs:2"),
        "{all}"
    );
    assert!(all.contains("d.rs:1") && all.contains("glob"), "{all}");
    // a → b (through the macro and `super::super`) and a → c (nested group) are allowed;
    // c → b and b → c exist only in test code.
    assert!(
        !all.contains("a → b is") && !all.contains("a → c is"),
        "{all}"
    );
    assert!(!all.contains("c → b") && !all.contains("b → c"), "{all}");
    assert_eq!(problems.len(), 4, "{all}");
    let edges = graph.edges();
    assert!(
        edges["a"].contains("b") && edges["a"].contains("c"),
        "{edges:?}"
    );
    assert!(edges["main"].contains("a"), "{edges:?}");
}

/// One use of another top-level module, where it is.
#[derive(Debug)]
struct Use {
    from: String,
    to: String,
    at: String,
}

#[derive(Debug, Default)]
struct Graph {
    /// Top-level modules declared in `lib.rs`.
    modules: BTreeSet<String>,
    uses: Vec<Use>,
    /// Exit codes decided: (module, where).
    exits: Vec<(String, String)>,
    /// What the reader could not follow (a `#[path]` module, a missing file, a glob
    /// import of the crate root): each is a problem, so the check never goes blind.
    unreadable: Vec<String>,
}

impl Graph {
    /// Reads the library from `src/lib.rs` and the binary from `src/main.rs` (which names
    /// the library `lib_name`).
    fn read(src: &Path, lib_name: &str) -> Graph {
        let mut g = Graph::default();
        let lib = parse(&src.join("lib.rs"));
        g.modules = lib
            .items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Mod(m) if !is_test(&m.attrs) => Some(m.ident.to_string()),
                _ => None,
            })
            .collect();
        let mut queue = vec![(src.join("lib.rs"), Vec::new(), src.to_path_buf(), None)];
        if src.join("main.rs").exists() {
            queue.push((
                src.join("main.rs"),
                Vec::new(),
                src.to_path_buf(),
                Some(lib_name.to_owned()),
            ));
        }
        while let Some((file, module, dir, extern_name)) = queue.pop() {
            let ast = parse(&file);
            let shown = file
                .strip_prefix(src.parent().unwrap_or(src))
                .unwrap_or(&file)
                .display()
                .to_string();
            let mut w = Walker {
                graph: &mut g,
                file: shown,
                module,
                dir,
                extern_name,
                children: Vec::new(),
            };
            w.visit_file(&ast);
            for (module, dir, declared_at) in std::mem::take(&mut w.children) {
                let name = module.last().unwrap().clone();
                let candidates = [
                    dir.join(format!("{name}.rs")),
                    dir.join(&name).join("mod.rs"),
                ];
                match candidates.iter().find(|p| p.exists()) {
                    Some(p) => {
                        let child_dir = if p.ends_with("mod.rs") {
                            p.parent().unwrap().to_path_buf()
                        } else {
                            dir.join(&name)
                        };
                        queue.push((p.clone(), module, child_dir, None));
                    }
                    None => g
                        .unreadable
                        .push(format!("{declared_at}: no file for `mod {name};`")),
                }
            }
        }
        g
    }

    /// Arrows between top-level modules (self-uses left out).
    fn edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for u in &self.uses {
            edges
                .entry(u.from.clone())
                .or_default()
                .insert(u.to.clone());
        }
        edges
    }

    fn problems(&self, allowed: &[(&str, &[&str])], exit_deciders: &[&str]) -> Vec<String> {
        let mut problems = self.unreadable.clone();
        let table: BTreeMap<&str, &[&str]> = allowed.iter().copied().collect();
        for m in &self.modules {
            if !table.contains_key(m.as_str()) {
                problems.push(format!(
                    "module `{m}` has no row in ALLOWED: decide where it sits"
                ));
            }
        }
        let mut against: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for u in &self.uses {
            let ok = table
                .get(u.from.as_str())
                .is_some_and(|to| to.contains(&u.to.as_str()));
            if !ok {
                against
                    .entry((u.from.as_str(), u.to.as_str()))
                    .or_default()
                    .push(&u.at);
            }
        }
        for ((from, to), at) in against {
            let more = if at.len() > 3 {
                format!(" and {} more", at.len() - 3)
            } else {
                String::new()
            };
            let at: Vec<&str> = at.into_iter().take(3).collect();
            problems.push(format!(
                "{from} → {to} is not allowed: {}{more}",
                at.join(", ")
            ));
        }
        if let Some(cycle) = find_cycle(&self.edges()) {
            problems.push(format!("cycle: {}", cycle.join(" → ")));
        }
        for (m, at) in &self.exits {
            if !exit_deciders.contains(&m.as_str()) {
                problems.push(format!(
                    "{m} decides an exit code ({at}): only {} may",
                    exit_deciders.join(" and ")
                ));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        self.edges()
            .iter()
            .map(|(from, to)| {
                format!(
                    "  {from} → {}",
                    to.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A cycle as a closed walk (first = last), if the graph has one.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        n: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, done, path) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

fn parse(file: &Path) -> syn::File {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: cannot read: {e}", file.display()));
    syn::parse_file(&text).unwrap_or_else(|e| {
        let at = e.span().start();
        panic!(
            "{}:{}:{}: cannot parse: {e}",
            file.display(),
            at.line,
            at.column + 1
        )
    })
}

/// `#[cfg(test)]` or `#[cfg(all(test, …))]`: compiled for tests only. (`any(test, …)`
/// and `not(test)` may be shipped, so they count.)
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let Ok(list) = a.meta.require_list() else {
            return false;
        };
        let cfg = list.tokens.to_string().replace(' ', "");
        a.path().is_ident("cfg")
            && (cfg == "test"
                || cfg
                    .strip_prefix("all(")
                    .is_some_and(|rest| rest.split([',', ')']).any(|w| w == "test")))
    })
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Walks one file, recording uses of other top-level modules and the `mod x;` files to
/// read next.
struct Walker<'g> {
    graph: &'g mut Graph,
    /// The file, relative to the crate's root, for messages.
    file: String,
    /// The module being walked, from the crate root (`["cli", "commands"]`).
    module: Vec<String>,
    /// Where `mod x;` inside the current module finds `x.rs` or `x/mod.rs`.
    dir: PathBuf,
    /// For the binary: the library's name (`aftercart::cli` is a use of `cli`).
    extern_name: Option<String>,
    /// (module path, directory, where declared) of `mod x;` declarations.
    children: Vec<(Vec<String>, PathBuf, String)>,
}

impl Walker<'_> {
    fn at(&self, span: proc_macro2::Span) -> String {
        format!("{}:{}", self.file, span.start().line)
    }

    /// The top-level module that uses others: for the binary, `main`.
    fn from(&self) -> Option<String> {
        match (&self.extern_name, self.module.first()) {
            (Some(_), _) => Some("main".into()),
            (None, m) => m.cloned(),
        }
    }

    /// Records a path (its segments as written, e.g. `["super", "store", "Store"]`).
    fn record(&mut self, segments: &[String], span: proc_macro2::Span) {
        let Some(first) = segments.first() else {
            return;
        };
        let absolute: Vec<String> = match (first.as_str(), &self.extern_name) {
            ("crate", None) => segments[1..].to_vec(),
            (name, Some(lib)) if name == lib => segments[1..].to_vec(),
            ("super", None) => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let base = self.module.len().saturating_sub(ups);
                let mut p = self.module[..base].to_vec();
                p.extend_from_slice(&segments[ups..]);
                p
            }
            ("self", None) => {
                let mut p = self.module.clone();
                p.extend_from_slice(&segments[1..]);
                p
            }
            // Relative names (locals, child modules, std, other crates) stay inside.
            _ => return,
        };
        if absolute.first().is_some_and(|s| s == "*") {
            let at = self.at(span);
            self.graph.unreadable.push(format!(
                "{at}: glob import of the crate root: name the module"
            ));
            return;
        }
        let (Some(from), Some(to)) = (self.from(), absolute.first()) else {
            return;
        };
        if self.graph.modules.contains(to) && *to != from {
            let at = self.at(span);
            self.graph.uses.push(Use {
                from,
                to: to.clone(),
                at,
            });
        }
    }

    fn note_exit(&mut self, segments: &[String], span: proc_macro2::Span) {
        let exits = segments
            .windows(2)
            .any(|w| w[0] == "process" && w[1] == "exit")
            || segments.iter().any(|s| s == "ExitCode");
        if exits && let Some(from) = self.from() {
            let at = self.at(span);
            self.graph.exits.push((from, at));
        }
    }

    /// `use a::{b::C, d}` → `a::b::C`, `a::d`.
    fn flatten(
        tree: &syn::UseTree,
        prefix: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, proc_macro2::Span)>,
    ) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                Self::flatten(&p.tree, prefix, out);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut p = prefix.clone();
                p.push(n.ident.to_string());
                out.push((p, n.ident.span()));
            }
            syn::UseTree::Rename(r) => {
                let mut p = prefix.clone();
                p.push(r.ident.to_string());
                out.push((p, r.ident.span()));
            }
            syn::UseTree::Glob(g) => {
                let mut p = prefix.clone();
                p.push("*".into());
                out.push((p, g.star_token.span));
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    Self::flatten(t, prefix, out);
                }
            }
        }
    }

    /// Paths inside macro bodies (`tracing::info!(x = %crate::store::redact(..))`,
    /// `$crate::…` in `macro_rules!`): runs of `ident :: ident …`.
    fn scan_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    let span = id.span();
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    while j + 2 < trees.len() && is_colon(&trees[j]) && is_colon(&trees[j + 1]) {
                        match &trees[j + 2] {
                            TokenTree::Ident(next) => {
                                segs.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 {
                        self.record(&segs, span);
                        self.note_exit(&segs, span);
                    }
                    i = j.max(i + 1);
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
            }
        }
    }
}

fn is_colon(t: &proc_macro2::TokenTree) -> bool {
    matches!(t, proc_macro2::TokenTree::Punct(p) if p.as_char() == ':')
}

impl<'ast> Visit<'ast> for Walker<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test(item_attrs(item)) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Fn(f) => &f.attrs[..],
            syn::ImplItem::Const(c) => &c.attrs[..],
            _ => &[],
        };
        if !is_test(attrs) {
            syn::visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let name = m.ident.to_string();
        if m.attrs.iter().any(|a| a.path().is_ident("path")) {
            let at = self.at(m.ident.span());
            self.graph.unreadable.push(format!(
                "{at}: `#[path]` on `mod {name}`: not followed by this check"
            ));
            return;
        }
        let mut module = self.module.clone();
        module.push(name.clone());
        match &m.content {
            None => {
                let at = self.at(m.ident.span());
                self.children.push((module, self.dir.clone(), at));
            }
            Some((_, items)) => {
                let outer = std::mem::replace(&mut self.module, module);
                let outer_dir = self.dir.clone();
                self.dir = self.dir.join(&name);
                for i in items {
                    self.visit_item(i);
                }
                self.module = outer;
                self.dir = outer_dir;
            }
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        Self::flatten(&u.tree, &mut Vec::new(), &mut out);
        for (segs, span) in out {
            self.record(&segs, span);
            self.note_exit(&segs, span);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.record(&segs, first.ident.span());
            self.note_exit(&segs, first.ident.span());
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.scan_tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}
