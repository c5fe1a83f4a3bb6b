//! The architecture invariants ARCHITECTURE.md states, checked on the source text.
//!
//! A module here is a top-level module of the crate (`src/<name>.rs` or `src/<name>/`), except
//! under `src/core/`, whose children (`core::spec`, `core::plan`, …) count as modules of their
//! own. An edge is a `crate::<module>` path in the module's code (comments and `#[cfg(test)]`
//! blocks at the end of a file are left out: a test may reach across layers).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo_root;

/// Where one module uses another: the file and line of the first use.
type Edges = BTreeMap<String, BTreeMap<String, (PathBuf, usize)>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to: `reconcile` for src/reconcile/run.rs, `core::spec` for
/// src/core/spec/load.rs, `` for src/lib.rs and src/main.rs (the crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let parts: Vec<String> =
        rel.components().map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    match parts.as_slice() {
        [only] if only == "lib" || only == "main" => String::new(),
        [first, second, ..] if first == "core" && second != "mod" => format!("core::{second}"),
        [first, ..] => first.clone(),
        [] => String::new(),
    }
}

/// The module a `crate::` path names: `core::plan` for `crate::core::plan::Plan`, `db` for
/// `crate::db::Db`.
fn target_of(path: &[&str]) -> Option<String> {
    match path {
        ["core", child, ..] => Some(format!("core::{child}")),
        [first, ..] if !first.is_empty() => Some((*first).to_string()),
        _ => None,
    }
}

/// The code of a file with comments blanked and its trailing `#[cfg(test)] mod tests` cut off;
/// lines keep their numbers.
fn code_text(text: &str) -> String {
    code_lines(text).into_iter().map(|(_, line)| line).collect::<Vec<_>>().join("\n")
}

/// The lines of [`code_text`], numbered from 1.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines.get(i + 1).is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            out.push((i + 1, String::new()));
            continue;
        }
        let code = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// Every `crate::a::b…` path in a text, with the byte offset where it starts, including the
/// members of `crate::{a, b::{c, d}}` groups (which rustfmt may spread over several lines).
fn crate_paths(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        if text[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // part of a longer name, not a crate path
        }
        for path in expand(&text[from..], Vec::new()) {
            out.push((at, path));
        }
    }
    out
}

/// The paths a use tree starting at `text` names, each prefixed with `prefix`.
fn expand(text: &str, prefix: Vec<String>) -> Vec<Vec<String>> {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 0usize;
        let mut member_start = 0;
        let mut out = Vec::new();
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.extend(expand(&group[member_start..i], prefix.clone()));
                    return out;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(expand(&group[member_start..i], prefix.clone()));
                    member_start = i + 1;
                }
                _ => {}
            }
        }
        return out;
    }
    let name: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    if name.is_empty() {
        return if prefix.is_empty() { Vec::new() } else { vec![prefix] };
    }
    let mut path = prefix;
    path.push(name.clone());
    match text[name.len()..].strip_prefix("::") {
        Some(rest) => expand(rest, path),
        None => vec![path],
    }
}

fn edges() -> Edges {
    let src = repo_root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges = Edges::new();
    for file in files {
        let from = module_of(&src, &file);
        if from.is_empty() {
            continue; // lib.rs declares the modules; main.rs is the binary's glue
        }
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let code = code_text(&text);
        for (at, path) in crate_paths(&code) {
            let segs: Vec<&str> = path.iter().map(String::as_str).collect();
            let Some(to) = target_of(&segs) else { continue };
            if to == from || to == "core" {
                continue;
            }
            let line_no = code[..at].matches('\n').count() + 1;
            edges.entry(from.clone()).or_default().entry(to).or_insert_with(|| (file.clone(), line_no));
        }
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a Edges,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    impl Walk<'_> {
        fn visit(&mut self, v: &str) {
            self.index.insert(v.to_string(), self.next);
            self.low.insert(v.to_string(), self.next);
            self.next += 1;
            self.stack.push(v.to_string());
            self.on_stack.insert(v.to_string());
            let targets: Vec<String> = self.edges.get(v).map(|t| t.keys().cloned().collect()).unwrap_or_default();
            for w in targets {
                if !self.index.contains_key(&w) {
                    self.visit(&w);
                    let low = self.low[v].min(self.low[&w]);
                    self.low.insert(v.to_string(), low);
                } else if self.on_stack.contains(&w) {
                    let low = self.low[v].min(self.index[&w]);
                    self.low.insert(v.to_string(), low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(&w);
                    let done = w == v;
                    component.push(w);
                    if done {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    let nodes: BTreeSet<String> = edges.keys().chain(edges.values().flat_map(|t| t.keys())).cloned().collect();
    for v in nodes {
        if !walk.index.contains_key(&v) {
            walk.visit(&v);
        }
    }
    walk.found
}

/// A file named from the repository root, as a reader would look it up.
fn shown(file: &Path) -> String {
    file.strip_prefix(repo_root()).unwrap_or(file).display().to_string()
}

fn describe(edges: &Edges, component: &[String]) -> String {
    let mut out = format!("cycle among {}:\n", component.join(", "));
    for from in component {
        for (to, (file, line)) in edges.get(from).into_iter().flatten() {
            if component.contains(to) {
                out.push_str(&format!("  {from} -> {to} ({}:{line})\n", shown(file)));
            }
        }
    }
    out
}

#[test]
fn no_module_imports_form_a_cycle() {
    let edges = edges();
    assert!(edges.len() > 5, "the source walk found too few modules: {:?}", edges.keys().collect::<Vec<_>>());
    let found = cycles(&edges);
    let report: Vec<String> = found.iter().map(|c| describe(&edges, c)).collect();
    assert!(found.is_empty(), "module imports form cycles:\n{}", report.join("\n"));
}

/// What each layer may use. A module not named here may use anything below `app`.
fn allowed(from: &str, to: &str) -> bool {
    let leaf = ["secret", "core::diag"];
    if leaf.contains(&from) {
        return false;
    }
    if from.starts_with("core::") {
        return to.starts_with("core::") || leaf.contains(&to);
    }
    if from == "config" {
        return to.starts_with("core::") || leaf.contains(&to);
    }
    if from == "reconcile" {
        return to.starts_with("core::") || leaf.contains(&to) || to == "config";
    }
    match to {
        "cli" => false,
        "app" => from == "cli",
        _ => true,
    }
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let edges = edges();
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        for (to, (file, line)) in targets {
            if !allowed(from, to) {
                wrong.push(format!("{from} -> {to} ({}:{line})", shown(file)));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that run against the layering in ARCHITECTURE.md:\n{}", wrong.join("\n"));
}

#[test]
fn the_core_does_no_io() {
    let src = repo_root().join("src/core");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(!files.is_empty(), "src/core/ holds no file");
    let io =
        ["tokio::", "sqlx::", "git2::", "axum::", "notify::", "std::net::", "std::process::", "std::fs::", "File::"];
    // The two file reads the core keeps, as ARCHITECTURE.md says: the spec files it is pointed
    // at, and a directory of custom templates checked against the catalogue.
    let reads_files = ["src/core/spec/load.rs", "src/core/render.rs"];
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let may_read = reads_files.iter().any(|f| shown(&file) == *f);
        for (line_no, line) in code_lines(&text) {
            for name in io {
                if (name == "std::fs::" || name == "File::") && may_read {
                    continue;
                }
                if line.contains(name) {
                    found.push(format!("{}:{line_no}: {name}", shown(&file)));
                }
            }
        }
    }
    assert!(found.is_empty(), "the core uses I/O crates:\n{}", found.join("\n"));
}

#[test]
fn the_walk_sees_edges_through_groups_and_nested_paths() {
    // The checker itself: a cycle it cannot see would make the tests above pass vacuously.
    let text = "use crate::{\n    core::{plan::Plan, spec},\n    db,\n};\nlet x = crate::reconcile::run();";
    let paths: Vec<Vec<String>> = crate_paths(text).into_iter().map(|(_, p)| p).collect();
    let want: Vec<Vec<String>> = [&["core", "plan", "Plan"][..], &["core", "spec"], &["db"], &["reconcile", "run"]]
        .iter()
        .map(|p| p.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(paths, want);
    let mut edges = Edges::new();
    edges.entry("a".into()).or_default().insert("b".into(), (PathBuf::from("a.rs"), 1));
    edges.entry("b".into()).or_default().insert("c".into(), (PathBuf::from("b.rs"), 2));
    edges.entry("c".into()).or_default().insert("a".into(), (PathBuf::from("c.rs"), 3));
    edges.entry("c".into()).or_default().insert("d".into(), (PathBuf::from("c.rs"), 4));
    assert_eq!(cycles(&edges), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    assert_eq!(module_of(Path::new("src"), Path::new("src/core/spec/load.rs")), "core::spec");
    assert_eq!(module_of(Path::new("src"), Path::new("src/reconcile/run.rs")), "reconcile");
}
