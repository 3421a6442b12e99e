//! The layers only look down: a module of the crate may use modules of a lower
//! rank, never one of its own rank or a higher one, so nothing a module needs
//! can need it back.
//!
//! ```text
//!  10  cli                  the command line
//!   9  ops                  one operation per subcommand
//!   8  ui                   renders plans and progress
//!   7  steps                gather, plan, apply
//!   6  plan                 step ids, plans, changes, diffs
//!   5  pds                  the PDS's environment and API
//!   4  nomad                Nomad's config, release, jobs, API
//!   3  host, state          the droplet; what is kept locally
//!   2  settings             the run's resolved settings
//!   1  inputs, secret, assets   validated values, secrets, embedded files
//!   0  error                the one error type
//! ```
//! ```
//!
//! `lib.rs` and `main.rs` declare and start everything and are exempt; the files
//! of one module (`src/host/ssh/auth.rs` and `src/host/known_hosts.rs` are both
//! `host`) may use each other. The imports are read from the source: `use`
//! lines and inline paths (`crate::pds::env::x(..)`, `super::super::nomad`),
//! not comments or string literals. `cargo test --test layers -- --nocapture`
//! prints the whole module graph; so does `scripts/module-graph`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module and its layer. A new module must be added here.
const RANKS: &[(&str, u8)] = &[
    ("error", 0),
    ("inputs", 1),
    ("secret", 1),
    ("assets", 1),
    ("settings", 2),
    ("host", 3),
    ("state", 3),
    ("nomad", 4),
    ("pds", 5),
    ("plan", 6),
    ("steps", 7),
    ("ui", 8),
    ("ops", 9),
    ("cli", 10),
];

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The source with comments and the insides of string and char literals
/// blanked out (newlines kept, so line numbers still hold).
fn code_only(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let is_ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = at(i + 1);
        let prev = if i == 0 { None } else { at(i - 1) };
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == Some('*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == Some('/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"..", r#".."#, br#".."#.
        if (c == 'r' || (c == 'b' && next == Some('r'))) && !is_ident(prev) {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(j) == Some('#') {
                hashes += 1;
                j += 1;
            }
            if at(j) == Some('"') {
                let closes =
                    |k: usize| chars[k] == '"' && (0..hashes).all(|h| at(k + 1 + h) == Some('#'));
                out.extend(std::iter::repeat_n(' ', j + 1 - i));
                i = j + 1;
                while i < chars.len() && !closes(i) {
                    out.push(blank(chars[i]));
                    i += 1;
                }
                let end = (i + 1 + hashes).min(chars.len());
                out.extend(std::iter::repeat_n(' ', end - i));
                i = end;
                continue;
            }
        }
        if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() {
                match chars[i] {
                    '\\' => {
                        out.push(' ');
                        if let Some(escaped) = at(i + 1) {
                            out.push(blank(escaped));
                        }
                        i += 2;
                    }
                    '"' => {
                        out.push(' ');
                        i += 1;
                        break;
                    }
                    other => {
                        out.push(blank(other));
                        i += 1;
                    }
                }
            }
            continue;
        }
        if c == '\'' {
            if next == Some('\\') {
                // '\n', '\'', '\u{1b}': up to the closing quote after the escape.
                let mut j = i + 3;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                out.extend(std::iter::repeat_n(' ', j + 1 - i));
                i = j + 1;
                continue;
            }
            if at(i + 2) == Some('\'') {
                out.push_str("   ");
                i += 3;
                continue;
            }
            // Otherwise a lifetime ('a): ordinary code.
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A file's module path: `src/host/ssh/auth.rs` is `host::ssh::auth`,
/// `src/host/ssh/mod.rs` is `host::ssh`. `None` for the crate roots.
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// The top-level modules named by the paths in `code` (from [`code_only`]) of
/// the file whose module path is `module`, each with its line number.
/// `crate::x`, `$crate::x`, `crate::{x, y::z}` and enough `super::` to reach
/// the crate root name `x` (and `y`); paths inside the file's own module are
/// not imports of another module. Names that are not top-level modules
/// (`super::Secret` in a test module) are left to the caller to drop.
fn imported_modules(code: &str, module: &[String]) -> Vec<(String, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let word_at = |i: usize| -> String {
        chars[i..]
            .iter()
            .take_while(|c| is_ident(**c))
            .collect::<String>()
    };
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // After `::`: the position past it, if there is one.
    let past_colons = |i: usize| {
        let i = skip_ws(i);
        (chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':')).then(|| skip_ws(i + 2))
    };
    // The first name of each branch of a use tree: `x`, or `{x, y::z}` → x, y.
    let first_names = |i: usize| -> Vec<String> {
        if chars.get(i) != Some(&'{') {
            let w = word_at(i);
            return if w.is_empty() { vec![] } else { vec![w] };
        }
        let mut names = Vec::new();
        let mut depth = 0;
        let mut expect_name = true;
        let mut j = i;
        while j < chars.len() {
            match chars[j] {
                '{' => {
                    depth += 1;
                    expect_name = depth == 1;
                    j += 1;
                }
                '}' => {
                    depth -= 1;
                    j += 1;
                    if depth == 0 {
                        break;
                    }
                }
                ',' if depth == 1 => {
                    expect_name = true;
                    j += 1;
                }
                c if c.is_whitespace() => j += 1,
                c if expect_name && is_ident(c) => {
                    let w = word_at(j);
                    j += w.chars().count();
                    names.push(w);
                    expect_name = false;
                }
                _ => {
                    expect_name = false;
                    j += 1;
                }
            }
        }
        names
    };
    let line_of = |i: usize| chars[..i].iter().filter(|c| **c == '\n').count() + 1;

    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1]));
        if !starts_word {
            i += 1;
            continue;
        }
        let word = word_at(i);
        let after = i + word.chars().count();
        // Only the start of a path: `a::super` is not one.
        let before: String = chars[..i]
            .iter()
            .rev()
            .skip_while(|c| c.is_whitespace())
            .take(2)
            .collect();
        let continues_a_path = before == "::";
        if continues_a_path || (word != "crate" && word != "super") {
            i = after;
            continue;
        }
        let mut pos = after;
        let mut rest = None;
        if word == "crate" {
            rest = past_colons(pos);
        } else {
            let mut supers = 0;
            while let Some(p) = past_colons(pos) {
                supers += 1;
                if word_at(p) == "super" {
                    pos = p + "super".len();
                } else {
                    // Enough `super::` to leave the file's top-level module.
                    if supers >= module.len() {
                        rest = Some(p);
                    }
                    break;
                }
            }
        }
        if let Some(p) = rest {
            for name in first_names(p) {
                found.push((name, line_of(i)));
            }
        }
        i = after;
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `from -> to -> [file:line, ...]` for every import of another module.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let top_level: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(src, f))
        .filter_map(|m| m.first().cloned())
        .collect();
    let mut graph: Graph = top_level
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for file in &files {
        let Some(module) = module_path(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read a source file");
        let shown = file.strip_prefix(src.parent().unwrap()).unwrap().display();
        for (name, line) in imported_modules(&code_only(&text), &module) {
            if name != module[0] && top_level.contains(&name) {
                graph
                    .get_mut(&module[0])
                    .unwrap()
                    .entry(name)
                    .or_default()
                    .push(format!("{shown}:{line}"));
            }
        }
    }
    graph
}

fn print_graph(graph: &Graph) {
    let mut modules: Vec<&String> = graph.keys().collect();
    modules.sort_by_key(|m| (rank(m).unwrap_or(u8::MAX), m.to_string()));
    println!("module graph (module -> the modules it imports), lowest layer first:");
    for m in modules {
        let rank = rank(m).map_or("?".to_string(), |r| r.to_string());
        let deps: Vec<&str> = graph[m].keys().map(String::as_str).collect();
        println!("  {rank} {m:<9} -> {}", deps.join(", "));
    }
}

fn violations(graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, deps) in graph {
        let Some(from_rank) = rank(from) else {
            out.push(format!(
                "module `{from}` has no layer: add it to RANKS in tests/layers.rs (and ARCHITECTURE.md)"
            ));
            continue;
        };
        for (to, places) in deps {
            let to_rank = rank(to).unwrap_or(u8::MAX);
            if to_rank >= from_rank {
                let how = if to_rank == from_rank {
                    "its own layer"
                } else {
                    "a higher layer"
                };
                out.push(format!(
                    "{from} (layer {from_rank}) imports {to} ({how}, {to_rank}) at {}",
                    places.join(", ")
                ));
            }
        }
    }
    out
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    print_graph(&graph);
    let wrong = violations(&graph);
    assert!(
        wrong.is_empty(),
        "imports that look up or sideways (move the shared thing down a layer):\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn every_module_has_a_layer_once() {
    let names: BTreeSet<&str> = RANKS.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        names.len(),
        RANKS.len(),
        "a module is listed twice in RANKS"
    );
}

fn names(found: Vec<(String, usize)>) -> Vec<String> {
    found.into_iter().map(|(n, _)| n).collect()
}

fn scan(src: &str, module: &[&str]) -> Vec<String> {
    let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
    names(imported_modules(&code_only(src), &module))
}

#[test]
fn use_lines_groups_and_inline_paths_are_imports() {
    let src = "use crate::nomad::job::Job;\n\
               use crate::{secret::EnvValue, settings, inputs::{Email, Handle}};\n\
               pub use crate :: host;\n\
               fn f() { let x = crate::pds::env::parse(1); $crate::ui::x!(); }\n";
    assert_eq!(
        scan(src, &["state", "env_file"]),
        ["nomad", "secret", "settings", "inputs", "host", "pds", "ui"]
    );
    let found = imported_modules(&code_only(src), &["state".to_string()]);
    assert_eq!(found[0], ("nomad".to_string(), 1));
    assert_eq!(found[5], ("pds".to_string(), 4));
}

#[test]
fn comments_strings_and_chars_are_not_imports() {
    let src = "// crate::a\n/// crate::b\n//! crate::c\n/* crate::d /* crate::e */ crate::f */\n\
               let s = \"crate::g \\\" crate::h\";\n\
               let r = r#\"crate::i \" crate::j\"#;\n\
               let b = br\"crate::k\";\n\
               let q = '\"'; let e = '\\''; fn l<'a>(x: &'a str) { crate::real::x(); }\n";
    assert_eq!(scan(src, &["cli"]), ["real"]);
}

#[test]
fn super_counts_only_when_it_leaves_the_module() {
    let src = "use super::known_hosts::PinPolicy;\nuse super::super::nomad::api;\n\
               use super::super::{pds, state::x};\nfn f() { a::super::b(); }\n";
    // In host::ssh::auth, one `super` stays in host::ssh, two stay in host.
    assert!(scan(src, &["host", "ssh", "auth"]).is_empty());
    // In host::ssh, two `super` reach the crate root.
    assert_eq!(scan(src, &["host", "ssh"]), ["nomad", "pds", "state"]);
}

#[test]
fn a_file_maps_to_its_module_path() {
    let src = Path::new("/r/src");
    let path = |p: &str| module_path(src, &src.join(p));
    assert_eq!(path("lib.rs"), None);
    assert_eq!(path("main.rs"), None);
    assert_eq!(path("secret.rs").unwrap(), ["secret"]);
    assert_eq!(path("host/mod.rs").unwrap(), ["host"]);
    assert_eq!(path("host/ssh/mod.rs").unwrap(), ["host", "ssh"]);
    assert_eq!(path("host/ssh/auth.rs").unwrap(), ["host", "ssh", "auth"]);
}

#[test]
fn a_higher_or_sideways_import_is_a_violation() {
    let mut graph = Graph::new();
    let edge = |graph: &mut Graph, from: &str, to: &str| {
        graph
            .entry(from.into())
            .or_default()
            .insert(to.into(), vec![format!("src/{from}.rs:1")]);
    };
    edge(&mut graph, "pds", "state");
    assert!(violations(&graph).is_empty());
    edge(&mut graph, "state", "pds");
    edge(&mut graph, "host", "state");
    edge(&mut graph, "brand_new", "secret");
    let wrong = violations(&graph);
    assert_eq!(wrong.len(), 3, "{wrong:#?}");
    assert!(wrong
        .iter()
        .any(|w| w.contains("module `brand_new` has no layer")));
    assert!(wrong
        .iter()
        .any(|w| w.starts_with("host (layer 3) imports state (its own layer, 3)")));
    assert!(wrong.iter().any(
        |w| w.starts_with("state (layer 3) imports pds (a higher layer, 5) at src/state.rs:1")
    ));
}
