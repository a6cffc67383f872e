//! The dependency rules of `docs/architecture.md`, checked on the source: every file under
//! `src/` is parsed (syn), every path it names (`use` trees, expressions, types, macros,
//! attributes) is resolved to the file that defines the module it points into, and the rules
//! are checked on that graph:
//!
//! - domain code (`engine`, `train`, `data`, `metrics`) imports only domain code and none of the
//!   HTTP, SQL, storage or async-runtime crates;
//! - `api` does not import the engine or training;
//! - nothing below `api` (everything but `api` and `app`) imports `api` or `app`;
//! - `sqlx` is named only in `store`, `object_store` only in `artifacts`, the HTTP crates only in
//!   `api` and `app`;
//! - no import circle between files. A folder's `mod.rs` and the files inside it are one
//!   module's face and insides (the parent declares and re-exports, a child reads its parent's
//!   items), so edges between a file and its own ancestors do not count as circles; circles
//!   between siblings or across folders do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

const DOMAIN: &[&str] = &["engine", "train", "data", "metrics"];
const HTTP_CRATES: &[&str] =
    &["axum", "tower", "tower_http", "hyper", "multer", "utoipa_axum", "utoipa_swagger_ui", "reqwest"];
const RUNTIME_CRATES: &[&str] = &["tokio", "tokio_util", "tokio_stream", "futures"];

/// A source file and the module path it defines (`["engine", "fast"]`; `[]` for lib.rs).
struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
}

fn source_files() -> Vec<SourceFile> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(&src).unwrap();
                if rel == Path::new("main.rs") {
                    continue; // the binary: a client of the library, like the tests
                }
                let mut module: Vec<String> =
                    rel.iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                    module.pop();
                }
                out.push(SourceFile { path: p, module });
            }
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// Collects the module paths a file names (resolved to absolute crate paths) and the external
/// crates it names.
struct Collector {
    /// The module the visitor is in: the file's, plus inline `mod x { }` it entered.
    scope: Vec<String>,
    crate_paths: Vec<Vec<String>>,
    externals: BTreeSet<String>,
}

impl Collector {
    fn add(&mut self, segments: Vec<String>) {
        let Some(first) = segments.first() else { return };
        let mut base: Vec<String> = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.scope.clone(),
            "super" => self.scope.clone(),
            "secateur" => Vec::new(),
            _ => {
                if segments.len() > 1 || self.scope.is_empty() {
                    self.externals.insert(first.clone());
                }
                return;
            }
        };
        let mut rest = &segments[..];
        if matches!(first.as_str(), "crate" | "secateur" | "self") {
            rest = &rest[1..];
        }
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        self.crate_paths.push(base);
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut v = prefix.clone();
                if n.ident != "self" {
                    v.push(n.ident.to_string());
                }
                self.add(v);
            }
            syn::UseTree::Rename(r) => {
                let mut v = prefix.clone();
                if r.ident != "self" {
                    v.push(r.ident.to_string());
                }
                self.add(v);
            }
            syn::UseTree::Glob(_) => self.add(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// Paths inside token streams that syn keeps unparsed (attributes, macro bodies).
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let toks: Vec<proc_macro2::TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < toks.len() {
            match &toks[i] {
                proc_macro2::TokenTree::Group(g) => self.tokens(g.stream()),
                proc_macro2::TokenTree::Ident(id) => {
                    let mut segs = vec![id.to_string()];
                    let mut j = i + 1;
                    loop {
                        match (toks.get(j), toks.get(j + 1), toks.get(j + 2)) {
                            (
                                Some(proc_macro2::TokenTree::Punct(a)),
                                Some(proc_macro2::TokenTree::Punct(b)),
                                Some(proc_macro2::TokenTree::Ident(n)),
                            ) if a.as_char() == ':' && b.as_char() == ':' => {
                                segs.push(n.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 {
                        self.add(segs);
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.scope.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.scope.pop();
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        if u.leading_colon.is_some() {
            // `use ::x` names an external crate
            if let syn::UseTree::Path(p) = &u.tree {
                self.externals.insert(p.ident.to_string());
            }
            return;
        }
        self.use_tree(&mut prefix, &u.tree);
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() > 1 {
            self.add(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }
    fn visit_attribute(&mut self, a: &'ast syn::Attribute) {
        self.tokens(quote::ToTokens::to_token_stream(&a.meta));
    }
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

struct Graph {
    /// module path of each file
    modules: Vec<Vec<String>>,
    files: Vec<PathBuf>,
    /// file index → files it imports (not itself)
    edges: Vec<BTreeSet<usize>>,
    externals: Vec<BTreeSet<String>>,
}

fn graph() -> Graph {
    let files = source_files();
    let modules: Vec<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let index: BTreeMap<Vec<String>, usize> = modules.iter().cloned().enumerate().map(|(i, m)| (m, i)).collect();
    let mut edges = Vec::new();
    let mut externals = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(&f.path).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", f.path.display()));
        let mut c = Collector { scope: f.module.clone(), crate_paths: Vec::new(), externals: BTreeSet::new() };
        c.visit_file(&ast);
        let mut to = BTreeSet::new();
        for p in &c.crate_paths {
            // the longest prefix that is a file's module
            let target = (0..=p.len()).rev().find_map(|n| index.get(&p[..n]).copied());
            if let Some(t) = target {
                if t != i {
                    to.insert(t);
                }
            }
        }
        edges.push(to);
        externals.push(c.externals);
    }
    Graph { modules, files: files.into_iter().map(|f| f.path).collect(), edges, externals }
}

fn top(m: &[String]) -> &str {
    m.first().map(String::as_str).unwrap_or("")
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

fn is_ancestor(a: &[String], b: &[String]) -> bool {
    a.len() < b.len() && b.starts_with(a)
}

#[test]
fn dependency_rules_hold() {
    let g = graph();
    assert!(g.files.len() > 20, "the source tree was not found");
    let mut faults: Vec<String> = Vec::new();
    for (i, m) in g.modules.iter().enumerate() {
        let layer = top(m);
        for &t in &g.edges[i] {
            let to = &g.modules[t];
            let target = top(to);
            if to.is_empty() {
                continue;
            }
            let domain = DOMAIN.contains(&layer);
            let bad = (domain && !DOMAIN.contains(&target))
                || (layer == "api" && (target == "engine" || target == "train"))
                || (!matches!(layer, "api" | "app" | "") && matches!(target, "api" | "app"));
            if bad {
                faults.push(format!("{} imports {}", name(m), name(to)));
            }
        }
        for ext in &g.externals[i] {
            let e = ext.as_str();
            let bad = (e == "sqlx" && layer != "store")
                || (e == "object_store" && layer != "artifacts")
                || (HTTP_CRATES.contains(&e) && !matches!(layer, "api" | "app"))
                || (DOMAIN.contains(&layer) && RUNTIME_CRATES.contains(&e));
            if bad {
                faults.push(format!("{} names the crate {e}", name(m)));
            }
        }
    }
    // Circles: strongly connected components of the file graph, without ancestor edges.
    let n = g.modules.len();
    let adj: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            g.edges[i]
                .iter()
                .copied()
                .filter(|&t| !is_ancestor(&g.modules[t], &g.modules[i]) && !is_ancestor(&g.modules[i], &g.modules[t]))
                .collect()
        })
        .collect();
    for comp in strongly_connected(&adj) {
        if comp.len() > 1 {
            let names: Vec<String> = comp.iter().map(|&i| name(&g.modules[i])).collect();
            faults.push(format!("import circle between {}", names.join(", ")));
        }
    }
    assert!(faults.is_empty(), "dependency rules broken:\n  {}", faults.join("\n  "));
}

/// The checker itself finds what it is meant to find (else the rules above could pass on a
/// tree it cannot read).
#[test]
fn the_checker_sees_imports_of_every_form() {
    let text = r#"
        use crate::engine::{arch, st::{self, Header}};
        use super::spec::JobRequest;
        mod inner { fn f() { let _ = super::super::super::store::now_ms(); } }
        #[derive(sqlx::FromRow)]
        struct S;
        fn g() { tokio::spawn(async {}); let _ = crate::api::problem::Problem::x(); }
    "#;
    let ast = syn::parse_file(text).unwrap();
    let mut c =
        Collector { scope: vec!["jobs".into(), "prune".into()], crate_paths: Vec::new(), externals: BTreeSet::new() };
    c.visit_file(&ast);
    let got: BTreeSet<String> = c.crate_paths.iter().map(|p| p.join("::")).collect();
    for want in [
        "engine::arch",
        "engine::st",
        "engine::st::Header",
        "jobs::spec::JobRequest",
        "store::now_ms",
        "api::problem::Problem::x",
    ] {
        assert!(got.contains(want), "{want} not seen in {got:?}");
    }
    assert!(c.externals.contains("sqlx") && c.externals.contains("tokio"), "{:?}", c.externals);
}

/// Tarjan's algorithm, iteratively.
fn strongly_connected(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = adj.len();
    let (mut index, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut out, mut next) = (Vec::new(), Vec::new(), 0);
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0usize)];
        while let Some(&(v, k)) = work.last() {
            if index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on[v] = true;
            }
            if k < adj[v].len() {
                work.last_mut().unwrap().1 += 1;
                let w = adj[v][k];
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(p, _)) = work.last() {
                low[p] = low[p].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                loop {
                    let w = stack.pop().unwrap();
                    on[w] = false;
                    comp.push(w);
                    if w == v {
                        break;
                    }
                }
                out.push(comp);
            }
        }
    }
    out
}
