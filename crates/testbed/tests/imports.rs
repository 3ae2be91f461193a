//! The modules of each crate import one another without circles: in every folder (the
//! crate's root included), the modules side by side form a DAG, where module `a` depends
//! on module `b` when any file under `a` names a path under `b` (`crate::b::…`,
//! `super::b::…`). A new circle fails this test with the modules that form it, and for
//! each step one line that makes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules must form a DAG.
const CRATES: &[&str] = &[
    "proto", "pki", "store", "manager", "agent", "compose", "shoal",
];

/// One source file: its module path from the crate root, and its text without comments.
struct File {
    module: Vec<String>,
    path: PathBuf,
    text: String,
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    // Binaries under src/bin are crates of their own.
    if parts.first().is_some_and(|p| p == "bin") {
        return vec![];
    }
    parts
}

fn strip_comments(s: &str) -> String {
    s.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal (a URL) is rare in paths; keep the line's
            // code before it either way.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn files(src: &Path) -> Vec<File> {
    let mut out = vec![];
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                let module = module_of(src, &p);
                let mut text = std::fs::read_to_string(&p).unwrap();
                // A file's unit tests (at its end, by our style) may use anything.
                if let Some(i) = text.find("\n#[cfg(test)]\nmod ") {
                    text.truncate(i);
                }
                let text = strip_comments(&text);
                out.push(File {
                    module,
                    path: p,
                    text,
                });
            }
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a file names that start at the crate root or go up from the file's module,
/// made absolute (the leading segments of each; a `{…}` group gives one path per entry).
fn paths_named(f: &File) -> Vec<(Vec<String>, String)> {
    let mut out = vec![];
    let t = &f.text;
    let starts = t
        .match_indices("crate::")
        .chain(t.match_indices("super::"))
        .map(|(i, _)| i)
        .filter(|&i| {
            // The start of a path, not `self::super::…` or the tail of another word.
            i == 0 || {
                let c = t[..i].chars().next_back().unwrap();
                !is_ident(c) && c != ':'
            }
        });
    for i in starts {
        let (base, rest) = if let Some(r) = t[i..].strip_prefix("crate::") {
            (vec![], r)
        } else {
            let mut m = f.module.clone();
            let mut r = &t[i..];
            while let Some(x) = r.strip_prefix("super::") {
                m.pop();
                r = x;
            }
            (m, r)
        };
        let line = t[..i].matches('\n').count() + 1;
        let at = format!("{}:{line}", f.path.display());
        let segs = |r: &str| -> Vec<String> {
            r.split("::")
                .map(|x| x.chars().take_while(|c| is_ident(*c)).collect::<String>())
                .take_while(|x| !x.is_empty())
                .collect()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for entry in group[..end].split(',') {
                let mut p = base.clone();
                p.extend(segs(entry.trim()));
                out.push((p, at.clone()));
            }
        } else {
            let mut p = base;
            p.extend(segs(rest));
            out.push((p, at));
        }
    }
    out
}

/// Circles among sibling modules: for each folder, the strongly connected parts of the
/// graph of its child modules, each with one example line per edge inside it.
fn circles(src: &Path) -> Vec<String> {
    let files = files(src);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .flat_map(|f| (1..=f.module.len()).map(|n| f.module[..n].to_vec()))
        .collect();
    // folder -> (child a -> child b -> an example line)
    let mut edges: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for f in &files {
        for (p, at) in paths_named(f) {
            let common = f.module.iter().zip(&p).take_while(|(a, b)| a == b).count();
            if common >= f.module.len() || common >= p.len() {
                continue; // a path into the file's own module or below it
            }
            let folder = f.module[..common].to_vec();
            let mut target = folder.clone();
            target.push(p[common].clone());
            if !modules.contains(&target) {
                continue; // an item of the folder's own module, not a sibling
            }
            edges
                .entry(folder)
                .or_default()
                .entry(f.module[common].clone())
                .or_default()
                .entry(p[common].clone())
                .or_insert(at);
        }
    }
    let mut found = vec![];
    for (folder, g) in &edges {
        for comp in strongly_connected(g) {
            let mut msg = format!(
                "an import circle in {}::{{{}}}:",
                if folder.is_empty() {
                    "crate".to_string()
                } else {
                    format!("crate::{}", folder.join("::"))
                },
                comp.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            for a in &comp {
                for (b, at) in g.get(a).into_iter().flatten() {
                    if comp.contains(b) {
                        msg.push_str(&format!("\n  {a} -> {b} ({at})"));
                    }
                }
            }
            found.push(msg);
        }
    }
    found
}

/// Tarjan's algorithm; only components of more than one module.
fn strongly_connected(g: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<BTreeSet<String>> {
    struct S<'a> {
        g: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        if let Some(next) = s.g.get(v) {
            for w in next.keys() {
                if !s.index.contains_key(w.as_str()) {
                    visit(s, w);
                    let lw = s.low[w.as_str()];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(lw));
                } else if s.on.contains(w.as_str()) {
                    let iw = s.index[w.as_str()];
                    let lv = s.low[v];
                    s.low.insert(v, lv.min(iw));
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = S {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        out: vec![],
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

#[test]
fn every_crates_modules_import_one_another_without_circles() {
    let mut all = vec![];
    for c in CRATES {
        for m in circles(&crate_src(c)) {
            all.push(format!("{c}: {m}"));
        }
    }
    assert!(
        all.is_empty(),
        "{}\nmove what both sides need into a module of its own that neither imports back",
        all.join("\n")
    );
}

#[test]
fn a_circle_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("api")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod api; mod leaf; mod security;\n").unwrap();
    std::fs::write(src.join("leaf.rs"), "pub const X: u8 = 1;\n").unwrap();
    std::fs::write(
        src.join("security.rs"),
        "use crate::leaf::X;\nuse crate::{api::nodes::Api, leaf};\n",
    )
    .unwrap();
    std::fs::write(src.join("api/mod.rs"), "mod nodes; mod tasks;\n").unwrap();
    std::fs::write(
        src.join("api/nodes.rs"),
        "// crate::security::nothing (a comment)\nuse super::tasks::t;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("api/tasks.rs"),
        "fn f() { crate::security::check(); super::nodes::n(); }\n",
    )
    .unwrap();
    let found = circles(src);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("an import circle in crate::{api, security}:")
            && found[0].contains("api -> security (")
            && found[0].contains("security -> api ("),
        "{}",
        found[0]
    );
    assert!(
        found[1].starts_with("an import circle in crate::api::{nodes, tasks}:")
            && found[1].contains("tasks.rs:1)"),
        "{}",
        found[1]
    );
    // Without the way back, no circle.
    std::fs::write(src.join("security.rs"), "use crate::leaf::X;\n").unwrap();
    std::fs::write(src.join("api/nodes.rs"), "use crate::leaf::X;\n").unwrap();
    assert!(circles(src).is_empty(), "{:#?}", circles(src));
}
