//! Fails when the modules of a workspace crate import one another in a circle (issue 8).
//!
//! Run it alone with `cargo test -p devstack --test import_circles`; `make lint` and `make test`
//! run it too. It lives here because `devstack` is the workspace's development-tool crate and has
//! no dependents, so this check adds no crate and no dependency.
//!
//! It reads the source, not the compiler's output: a small lexer drops comments, string and char
//! literals and `#[cfg(test)]` items (a test module reaching into its neighbours shapes no
//! production dependency), then collects paths — `use` trees and every `crate::…`, `self::…`,
//! `super::…` or `child::…` path in the code — and resolves them to modules, following `use`
//! bindings and re-exports (`crate::Stats` counts as the module that defines `Stats`).
//!
//! There is one graph per module that has children (the crate root and every directory). Its
//! nodes are the module's children, each standing for its whole subtree: a reference from file
//! F to module T is an edge between the two children of their deepest common ancestor that
//! hold F and T. The parent's own file (`lib.rs`, `mod.rs`) is not a node: children using the
//! types their parent defines while the parent wires them together (re-exports, a router) is
//! a facade, not a circle. A circle is reported with one line of evidence (file:line and path)
//! per edge.
//!
//! Deliberately simple: inline `mod x { … }` blocks count as part of their file, `#[path]`
//! attributes and macros that build paths are not followed, and glob re-exports are not
//! resolved. None of these is used by the crates checked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A module path without the leading `crate` (the root is the empty path).
type ModPath = Vec<String>;

#[test]
fn the_receiver_has_no_import_circle() {
    assert_no_circle("receiver/src/lib.rs");
}

#[test]
fn the_development_tools_have_no_import_circle() {
    for root in [
        "devstack/src/lib.rs",
        "cosmos-proxy/src/lib.rs",
        "bench/src/main.rs",
    ] {
        assert_no_circle(root);
    }
}

#[test]
fn the_handler_crate_has_no_import_circle() {
    assert_no_circle("src/lib.rs");
}

#[test]
fn a_circle_is_reported_with_the_path_of_each_edge() {
    let dir = Fixture::new(
        "circle",
        &[
            ("lib.rs", "mod a;\nmod b;\nmod c;\npub use c::Thing;\n"),
            ("a.rs", "use crate::b::{self, f};\n"),
            ("b.rs", "pub fn f() { crate::Thing::new(); }\n"),
            ("c.rs", "pub struct Thing;\nfn g() { super::a::h(); }\n"),
        ],
    );
    let report = circles(&dir.0.join("lib.rs")).expect("the fixture parses");
    assert!(report.contains("a → b → c → a"), "{report}");
    assert!(report.contains("b.rs:1 crate::Thing::new"), "{report}");
    assert!(report.contains("c.rs:2 super::a::h"), "{report}");
}

#[test]
fn a_circle_between_submodules_of_one_directory_is_reported() {
    let dir = Fixture::new(
        "nested",
        &[
            ("lib.rs", "pub mod d;\n"),
            ("d/mod.rs", "mod x;\nmod y;\n"),
            ("d/x.rs", "use super::y::Y;\npub struct X;\n"),
            ("d/y.rs", "pub struct Y(crate::d::x::X);\n"),
        ],
    );
    let report = circles(&dir.0.join("lib.rs")).expect("the fixture parses");
    assert!(report.contains("d::x → d::y → d::x"), "{report}");
}

#[test]
fn comments_strings_tests_and_re_exports_make_no_edge() {
    let dir = Fixture::new(
        "no-circle",
        &[
            ("lib.rs", "mod a;\nmod b;\npub use a::A;\npub use b::B;\n"),
            (
                "a.rs",
                "//! Not [`crate::b::B`].\npub struct A;\n\
                 fn s() -> &'static str { \"crate::b::B\" }\n\
                 fn r() -> &'static str { r#\"crate::b::B\"# }\nfn c() -> char { '\"' }\n\
                 #[cfg(test)]\nmod tests {\n    use crate::b::B;\n    fn t() { let _ = '{'; }\n}\n",
            ),
            (
                "b.rs",
                "/* crate::a::A /* nested */ */\npub struct B(crate::A);\n",
            ),
        ],
    );
    let report = circles(&dir.0.join("lib.rs")).expect("the fixture parses");
    assert_eq!(report, "", "b → a only, so no circle");
}

fn assert_no_circle(root: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(root);
    match circles(&path) {
        Ok(report) => assert!(report.is_empty(), "import circles under {root}:\n{report}"),
        Err(error) => panic!("cannot read the modules of {root}: {error}"),
    }
}

/// The circles among the modules of the crate rooted at `root` (a `lib.rs` or `main.rs`),
/// described one per line with evidence; empty when there is none.
fn circles(root: &Path) -> Result<String, String> {
    let krate = Crate::read(root)?;
    let mut report = String::new();
    for edges in krate.graphs().values() {
        for (component, cycle) in find_cycles(edges) {
            let names: Vec<String> = cycle.iter().map(display).collect();
            let _ = writeln!(report, "circle: {} → {}", names.join(" → "), names[0]);
            if component.len() > cycle.len() {
                let all: Vec<String> = component.iter().map(display).collect();
                let _ = writeln!(report, "    (one of several among: {})", all.join(", "));
            }
            for (from, to) in cycle.iter().zip(cycle.iter().cycle().skip(1)) {
                let evidence = &edges[from][to];
                let _ = writeln!(
                    report,
                    "    {} → {}: {evidence}",
                    display(from),
                    display(to)
                );
            }
        }
    }
    Ok(report)
}

fn display(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// Every module file of a crate, parsed.
struct Crate {
    modules: BTreeMap<ModPath, ModuleFile>,
    base: PathBuf,
}

struct ModuleFile {
    file: PathBuf,
    children: Vec<String>,
    /// Names its `use` declarations bind (re-exports, and private imports its children may
    /// reach through `super::`) → the absolute path each points to.
    bindings: BTreeMap<String, ModPath>,
    /// Absolute paths referred to.
    references: Vec<Reference>,
}

struct Reference {
    target: ModPath,
    line: usize,
    /// The path as written.
    text: String,
}

impl Crate {
    fn read(root: &Path) -> Result<Self, String> {
        let base = root
            .parent()
            .ok_or("the root has no directory")?
            .to_path_buf();
        let mut krate = Self {
            modules: BTreeMap::new(),
            base,
        };
        let mut queue = vec![(ModPath::new(), root.to_path_buf())];
        while let Some((path, file)) = queue.pop() {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let parsed = parse_module(&path, &lex(&text));
            // `x.rs` (not `mod.rs`, `lib.rs`, `main.rs`) keeps its children in `x/`.
            let dir = match file.file_stem().and_then(|s| s.to_str()) {
                Some("mod" | "lib" | "main") => file.parent().map(Path::to_path_buf),
                _ => Some(file.with_extension("")),
            }
            .ok_or("a module file has no directory")?;
            for child in &parsed.children {
                let flat = dir.join(format!("{child}.rs"));
                let child_file = if flat.exists() {
                    flat
                } else {
                    dir.join(child).join("mod.rs")
                };
                let mut child_path = path.clone();
                child_path.push(child.clone());
                queue.push((child_path, child_file));
            }
            krate.modules.insert(path, ModuleFile { file, ..parsed });
        }
        Ok(krate)
    }

    /// The deepest known module that `target` lies in, following `use` bindings (so
    /// `crate::Stats` is the module that defines `Stats`).
    fn module_of(&self, target: &[String]) -> ModPath {
        let mut target = target.to_vec();
        for _ in 0..8 {
            let mut module = ModPath::new();
            for segment in &target {
                let mut deeper = module.clone();
                deeper.push(segment.clone());
                if !self.modules.contains_key(&deeper) {
                    break;
                }
                module = deeper;
            }
            let next = target
                .get(module.len())
                .and_then(|name| self.modules[&module].bindings.get(name));
            match next {
                Some(re_exported) if re_exported.as_slice() != target.as_slice() => {
                    target.clone_from(re_exported);
                }
                _ => return module,
            }
        }
        ModPath::new()
    }

    /// For each module with children: edges between its children (each standing for its
    /// subtree), with the first evidence of each edge.
    fn graphs(&self) -> BTreeMap<ModPath, Edges> {
        let mut graphs: BTreeMap<ModPath, Edges> = BTreeMap::new();
        for (from, module) in &self.modules {
            for reference in &module.references {
                let to = self.module_of(&reference.target);
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                if from.len() == common || to.len() == common {
                    // From or to the common ancestor's own file: not an edge between children.
                    continue;
                }
                let (source, sink) = (from[..=common].to_vec(), to[..=common].to_vec());
                let file = module.file.strip_prefix(&self.base).unwrap_or(&module.file);
                let evidence = format!("{}:{} {}", file.display(), reference.line, reference.text);
                graphs
                    .entry(from[..common].to_vec())
                    .or_default()
                    .entry(source)
                    .or_default()
                    .entry(sink)
                    .or_insert(evidence);
            }
        }
        graphs
    }
}

/// from → to → first evidence.
type Edges = BTreeMap<ModPath, BTreeMap<ModPath, String>>;

/// Each strongly connected component of more than one node, with one circle through it
/// starting at its smallest node (a shortest way back, found breadth-first).
fn find_cycles(edges: &Edges) -> Vec<(BTreeSet<ModPath>, Vec<ModPath>)> {
    let mut cycles = Vec::new();
    let mut done: BTreeSet<ModPath> = BTreeSet::new();
    for start in edges.keys() {
        if done.contains(start) {
            continue;
        }
        let component: BTreeSet<ModPath> = reachable(edges, start)
            .intersection(&reaching(edges, start))
            .cloned()
            .collect();
        done.extend(component.iter().cloned());
        if component.len() < 2 {
            continue;
        }
        // Breadth-first from `start` inside the component until an edge leads back to it.
        let mut previous: BTreeMap<ModPath, ModPath> = BTreeMap::new();
        let mut queue = VecDeque::from([start.clone()]);
        let mut last = None;
        while let Some(node) = queue.pop_front() {
            if edges.get(&node).is_some_and(|e| e.contains_key(start)) {
                last = Some(node);
                break;
            }
            for next in edges.get(&node).into_iter().flat_map(BTreeMap::keys) {
                if component.contains(next) && next != start && !previous.contains_key(next) {
                    previous.insert(next.clone(), node.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut cycle = Vec::new();
        let mut node = last.expect("a component of two or more nodes has a way back");
        while &node != start {
            let before = previous[&node].clone();
            cycle.push(node);
            node = before;
        }
        cycle.push(start.clone());
        cycle.reverse();
        cycles.push((component, cycle));
    }
    cycles
}

fn reachable(edges: &Edges, start: &ModPath) -> BTreeSet<ModPath> {
    let mut seen = BTreeSet::from([start.clone()]);
    let mut stack = vec![start.clone()];
    while let Some(node) = stack.pop() {
        for next in edges.get(&node).into_iter().flat_map(BTreeMap::keys) {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

fn reaching(edges: &Edges, start: &ModPath) -> BTreeSet<ModPath> {
    let mut reversed: Edges = BTreeMap::new();
    for (from, tos) in edges {
        for to in tos.keys() {
            reversed
                .entry(to.clone())
                .or_default()
                .insert(from.clone(), String::new());
        }
    }
    reachable(&reversed, start)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Punct(char),
}

#[derive(Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Identifiers, `::` and punctuation with their line; comments, string, char and number
/// literals and lifetimes are dropped.
fn lex(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let (mut tokens, mut line, mut i) = (Vec::new(), 1, 0);
    // Skips from `from` to the end of a literal or comment, counting newlines.
    let skip = |from: usize, to: usize, line: &mut usize| {
        *line += chars[from..to.min(chars.len())]
            .iter()
            .filter(|c| **c == '\n')
            .count();
        to
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && at(i + 1) == '/' {
            let end = (i..chars.len())
                .find(|&j| chars[j] == '\n')
                .unwrap_or(chars.len());
            i = skip(i, end, &mut line);
        } else if c == '/' && at(i + 1) == '*' {
            let (mut depth, mut j) = (0usize, i);
            while j < chars.len() {
                if chars[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            i = skip(i, j, &mut line);
        } else if let Some(end) = raw_string_end(&chars, i) {
            i = skip(i, end, &mut line);
        } else if c == '"' || (matches!(c, 'b' | 'c') && at(i + 1) == '"') {
            let mut j = if c == '"' { i + 1 } else { i + 2 };
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            i = skip(i, j + 1, &mut line);
        } else if c == '\'' || (c == 'b' && at(i + 1) == '\'') {
            let j = if c == 'b' { i + 1 } else { i };
            if at(j + 1) == '\\' {
                // `'\''`, `'\n'`, `'\u{1F600}'`: the closing quote comes after the escaped char.
                let end = (j + 3..chars.len())
                    .find(|&k| chars[k] == '\'')
                    .unwrap_or(chars.len());
                i = end + 1;
            } else if at(j + 2) == '\'' {
                i = j + 3;
            } else {
                // A lifetime or label: the quote and its name make no path.
                i = j + 1;
                while is_ident(at(i)) {
                    i += 1;
                }
            }
        } else if c == 'r' && at(i + 1) == '#' && (at(i + 2).is_alphabetic() || at(i + 2) == '_') {
            let start = i + 2;
            i = start;
            while is_ident(at(i)) {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                line,
            });
        } else if c.is_ascii_digit() {
            while is_ident(at(i)) {
                i += 1;
            }
        } else if is_ident(c) {
            let start = i;
            while is_ident(at(i)) {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Ident(chars[start..i].iter().collect()),
                line,
            });
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            if c == '\n' {
                line += 1;
            } else if !c.is_whitespace() {
                tokens.push(Token {
                    tok: Tok::Punct(c),
                    line,
                });
            }
            i += 1;
        }
    }
    strip_test_items(&tokens)
}

/// The index just past a raw string (`r"…"`, `r#"…"#`, `br"…"`, `cr#"…"#`) starting at `i`.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(chars.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if chars.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|c| **c == '#').count();
    j += hashes;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    let closing: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    (j + 1..chars.len())
        .find(|&k| chars[k..].starts_with(&closing))
        .map(|k| k + closing.len())
}

/// Drops every item under `#[cfg(test)]` (its other attributes, then up to its `;` or its
/// closing brace).
fn strip_test_items(tokens: &[Token]) -> Vec<Token> {
    let pattern = ["#", "[", "cfg", "(", "test", ")", "]"];
    let text = |t: &Token| match &t.tok {
        Tok::Ident(s) => s.clone(),
        Tok::Punct(c) => c.to_string(),
        Tok::PathSep => "::".to_owned(),
    };
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let is_test_attr = tokens.len() >= i + pattern.len()
            && pattern
                .iter()
                .enumerate()
                .all(|(k, p)| text(&tokens[i + k]) == *p);
        if !is_test_attr {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        i += pattern.len();
        let mut depth = 0i32;
        while i < tokens.len() {
            match tokens[i].tok {
                Tok::Punct('(' | '[') => depth += 1,
                Tok::Punct(')' | ']') => depth -= 1,
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                Tok::Punct(';') if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    out
}

/// Children (`mod x;`), re-exports and references of one module file.
fn parse_module(current: &ModPath, tokens: &[Token]) -> ModuleFile {
    let ident = |i: usize| match tokens.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let is = |i: usize, tok: &Tok| tokens.get(i).is_some_and(|t| &t.tok == tok);
    let children: Vec<String> = (0..tokens.len())
        .filter(|&i| ident(i) == Some("mod") && is(i + 2, &Tok::Punct(';')))
        .filter_map(|i| ident(i + 1).map(str::to_owned))
        .collect();
    let mut module = ModuleFile {
        file: PathBuf::new(),
        children,
        bindings: BTreeMap::new(),
        references: Vec::new(),
    };
    let mut i = 0;
    while i < tokens.len() {
        if ident(i) == Some("use") {
            let end = (i..tokens.len())
                .find(|&k| is(k, &Tok::Punct(';')))
                .unwrap_or(tokens.len());
            let mut leaves = Vec::new();
            use_tree(&tokens[i + 1..end], &[], &mut leaves);
            for (path, bound) in leaves {
                let Some(target) = resolve(current, &module.children, &path) else {
                    continue;
                };
                if bound != "*" {
                    module.bindings.insert(bound, target.clone());
                }
                let text = path.join("::");
                module.references.push(Reference {
                    target,
                    line: tokens[i].line,
                    text,
                });
            }
            i = end;
            continue;
        }
        let starts_path =
            ident(i).is_some() && !is(i.wrapping_sub(1), &Tok::PathSep) && is(i + 1, &Tok::PathSep);
        if starts_path {
            let mut path = vec![ident(i).unwrap_or_default().to_owned()];
            let mut k = i + 1;
            while is(k, &Tok::PathSep) && ident(k + 1).is_some() {
                path.push(ident(k + 1).unwrap_or_default().to_owned());
                k += 2;
            }
            if let Some(target) = resolve(current, &module.children, &path) {
                let text = path.join("::");
                module.references.push(Reference {
                    target,
                    line: tokens[i].line,
                    text,
                });
            }
            i = k;
            continue;
        }
        i += 1;
    }
    module
}

/// Flattens a `use` tree into (path, the name it binds): `use a::{self, b::C as D, e::*}`
/// gives (`a`, `a`), (`a::b::C`, `D`), (`a::e::*`, `*`).
fn use_tree(tokens: &[Token], prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let mut path = prefix.to_vec();
    for (i, token) in tokens.iter().enumerate() {
        match &token.tok {
            Tok::Punct('{') => {
                // Split the group at its top-level commas.
                let (mut depth, mut start) = (0, i + 1);
                for (j, inner) in tokens.iter().enumerate().skip(i + 1) {
                    match inner.tok {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') if depth > 0 => depth -= 1,
                        Tok::Punct(',' | '}') if depth == 0 => {
                            use_tree(&tokens[start..j], &path, out);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            Tok::Punct('*') => {
                path.push("*".to_owned());
                out.push((path, "*".to_owned()));
                return;
            }
            Tok::Ident(word) if word == "as" => {
                if let Some(Tok::Ident(alias)) = tokens.get(i + 1).map(|t| &t.tok) {
                    out.push((path, alias.clone()));
                }
                return;
            }
            // `self` in a group names the group's own module.
            Tok::Ident(word) if word == "self" && i == 0 && !prefix.is_empty() => {}
            Tok::Ident(word) => path.push(word.clone()),
            Tok::PathSep | Tok::Punct(_) => {}
        }
    }
    if let Some(bound) = path.last().cloned().filter(|_| !tokens.is_empty()) {
        out.push((path, bound));
    }
}

/// The absolute module path a path written in module `current` starts from, with the rest
/// of the path appended; `None` for paths into other crates.
fn resolve(current: &ModPath, children: &[String], path: &[String]) -> Option<ModPath> {
    let (first, rest) = path.split_first()?;
    let mut target = match first.as_str() {
        "crate" => Vec::new(),
        "self" => current.clone(),
        "super" => {
            let supers = path.iter().take_while(|s| *s == "super").count();
            let base = current.len().checked_sub(supers)?;
            let mut target = current[..base].to_vec();
            target.extend(path[supers..].iter().cloned());
            return Some(target);
        }
        name if children.iter().any(|c| c == name) => {
            let mut target = current.clone();
            target.push(name.to_owned());
            target
        }
        _ => return None,
    };
    target.extend(rest.iter().cloned());
    Some(target)
}

/// A throw-away crate under the system's temporary directory, removed on drop.
struct Fixture(PathBuf);

impl Fixture {
    fn new(name: &str, files: &[(&str, &str)]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("import-circles-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().expect("a file in a directory"))
                .expect("create the fixture");
            std::fs::write(&file, text).expect("write the fixture");
        }
        Self(dir)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
