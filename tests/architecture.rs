//! The shape of `src/`, checked: the rules of the README's "Architecture" section that a
//! reviewer would otherwise have to check by eye.
//!
//! - The top-level modules import each other without a cycle.
//! - Only `main`, `agent` and `config` itself name `config`: every other module owns its settings.
//! - No file's production code is longer than a reader takes in at once ([`LONGEST_FILE`]).
//! - The pure modules (decisions, the window, durations, the lock's wire format and policy, label
//!   selectors, the published agent state) name no crate that does I/O and import only each
//!   other, so their tests need no runtime, no cluster and no clock.
//!
//! It reads the source as text: `crate::NAME`, `super::NAME` and `use` lines of the production
//! part of each file (up to its first `#[cfg(test)]`; files named `tests.rs` are test code).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files (relative to `src/`, without `.rs`) whose code decides and never does I/O.
const PURE: &[&str] = &[
    "decide",
    "duration",
    "window",
    "lock/record",
    "lock/policy",
    "lock/admit",
    "lock/labels",
    "lock/gate",
    "selector",
    "controls",
    "agent_state",
    "events/reason",
    "events/series",
    "condition",
];

/// Crates and standard modules whose use means I/O (or a runtime) in a pure file. The Kubernetes
/// API types (`k8s_openapi`) are plain data and may be read.
const IO_PATHS: &[&str] = &[
    "kube::",
    "tokio::",
    "reqwest::",
    "hyper::",
    "axum::",
    "inotify::",
    "rustls::",
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::io",
    "Timestamp::now",
    "SystemTime::now",
    "Instant::now",
];

/// The most lines of production code (before the tests) a file may have. A module that grows
/// past it is doing more than one thing and is split by what it does.
const LONGEST_FILE: usize = 550;

/// Modules that may name `config`.
const CONFIG_USERS: &[&str] = &["config", "agent"];

struct SourceFile {
    /// Relative to `src/`, without `.rs`, `/mod` stripped: `lock/record`, `config`.
    module: String,
    /// The production code, comments removed.
    code: String,
    /// Lines of production code, comments and blank lines included.
    lines: usize,
    /// The path, for messages: `src/lock/record.rs`.
    path: String,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn sources() -> Vec<SourceFile> {
    let root = src_dir();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|path| {
            let text =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let relative = path.strip_prefix(&root).expect("below src/").with_extension("");
            let module = relative.to_string_lossy().trim_end_matches("/mod").to_owned();
            let lines = text.lines().take_while(|l| l.trim() != "#[cfg(test)]").count();
            let code = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .map(|l| match l.find("//") {
                    // A `//` inside a string literal (a URL) is rare in these files and only
                    // shortens what is read of that line.
                    Some(i) => &l[..i],
                    None => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            let path = format!("src/{}", relative.with_extension("rs").display());
            SourceFile {
                module,
                code,
                lines,
                path,
            }
        })
        .collect()
}

/// The words that follow each occurrence of `prefix` (`crate::` → `lock`, `drain`, …), including
/// every name of a `prefix{a, b::c}` group.
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let word = |s: &'a str| {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        &s[..end]
    };
    let mut names = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(group.split(',').map(|n| word(n.trim())).filter(|n| !n.is_empty()));
        } else {
            names.push(word(rest));
        }
    }
    names
}

fn top_level(module: &str) -> &str {
    module.split('/').next().unwrap_or(module)
}

/// The files each file imports from this crate: `crate::a::b` resolves to `a/b` where that file
/// exists, else `a`; `super::x` to the sibling `x` where it exists, else the parent module.
fn imports(files: &[SourceFile]) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<&str> = files.iter().map(|f| f.module.as_str()).collect();
    let mut graph = BTreeMap::new();
    for file in files {
        let mut to = BTreeSet::new();
        for path in crate_paths(&file.code) {
            let segments: Vec<&str> = path.split("::").collect();
            let resolved = (1..=segments.len())
                .rev()
                .map(|n| segments[..n].join("/"))
                .find(|m| known.contains(m.as_str()));
            to.extend(resolved);
        }
        let parent = match file.module.rsplit_once('/') {
            Some((parent, _)) => parent.to_owned(),
            // `super::` in a top-level module is the crate root.
            None => String::new(),
        };
        for name in names_after(&file.code, "super::") {
            let sibling = if parent.is_empty() {
                name.to_owned()
            } else {
                format!("{parent}/{name}")
            };
            if known.contains(sibling.as_str()) {
                to.insert(sibling);
            } else if !parent.is_empty() {
                to.insert(parent.clone());
            }
        }
        to.remove(&file.module);
        graph.insert(file.module.clone(), to);
    }
    graph
}

/// Every `crate::a::b::c` path in `code` as `a::b::c` (groups expanded one level).
fn crate_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':');
        if rest[end..].starts_with('{') {
            let group = &rest[end + 1..];
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for member in group.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                let member = member.split_whitespace().next().unwrap_or(member);
                paths.push(format!("{path}::{member}").trim_start_matches("::").to_owned());
            }
        } else if !path.is_empty() {
            paths.push(path.to_owned());
        }
    }
    paths
}

/// A cycle in `graph`, as the path that closes it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let files = sources();
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, to) in imports(&files) {
        let from = top_level(&file).to_owned();
        let entry = modules.entry(from.clone()).or_default();
        entry.extend(
            to.iter()
                .map(|t| top_level(t).to_owned())
                .filter(|t| *t != from && !t.is_empty()),
        );
    }
    assert!(modules.len() > 10, "the sources were not found: {modules:?}");
    if let Some(cycle) = find_cycle(&modules) {
        panic!("an import cycle between modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn no_file_is_longer_than_a_reader_takes_in() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|f| f.lines > LONGEST_FILE)
        .map(|f| format!("{}: {} lines before its tests", f.path, f.lines))
        .collect();
    assert!(
        long.is_empty(),
        "split these by what they do (at most {LONGEST_FILE} lines each):\n{}",
        long.join("\n")
    );
}

#[test]
fn only_the_agent_and_main_use_config() {
    let files = sources();
    let offenders: Vec<&str> = files
        .iter()
        .filter(|f| !CONFIG_USERS.contains(&top_level(&f.module)))
        .filter(|f| names_after(&f.code, "crate::").contains(&"config"))
        .map(|f| f.module.as_str())
        .collect();
    assert!(
        offenders.is_empty(),
        "these modules import config instead of taking their own settings: {offenders:?}"
    );
}

#[test]
fn the_pure_modules_do_no_io_and_import_only_each_other() {
    let files = sources();
    let pure = |module: &str| {
        PURE.iter()
            .any(|p| module == *p || module.starts_with(&format!("{p}/")))
    };
    let graph = imports(&files);
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in files.iter().filter(|f| pure(&f.module)) {
        checked += 1;
        for io in IO_PATHS {
            if file.code.contains(io) {
                problems.push(format!("{} names {io}", file.module));
            }
        }
        for to in &graph[&file.module] {
            if !pure(to) {
                problems.push(format!("{} imports {to}, which is not pure", file.module));
            }
        }
    }
    assert!(
        checked >= PURE.len() - 1,
        "fewer pure files than listed were found"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_import_reader_sees_groups_paths_and_cycles() {
    let code = "use crate::{lock::record, drain};\nuse crate::node::NodeLabel;\nlet x = crate::window::RebootWindow::new();";
    assert_eq!(
        crate_paths(code),
        [
            "lock::record",
            "drain",
            "node::NodeLabel",
            "window::RebootWindow::new"
        ]
    );
    assert_eq!(names_after("use super::{a, b::c};", "super::"), ["a", "b"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", &["b"][..]), ("b", &["c"][..]), ("c", &["a"][..])]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(find_cycle(&graph).expect("a cycle"), ["a", "b", "c", "a"]);
}
