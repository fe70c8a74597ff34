//! Every dependency a crate of the workspace (and fuzz/) declares is used by that crate: a normal
//! dependency by its library or binaries, a dev-dependency by its tests, benches or test modules.
//! "Used" is read from the sources as cargo-machete reads them: the crate's name followed by
//! `::`, or `use name` / `extern crate name`. A dependency kept for another reason (a feature it
//! turns on elsewhere in the graph) is listed in `KEPT` with that reason.

use ftu_tests::doc_commands::repo_root;
use std::path::{Path, PathBuf};

/// (crate folder, dependency, why it stays although no source names it).
const KEPT: &[(&str, &str, &str)] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether `text` names the crate `name` as a path root or in a `use`/`extern crate`.
fn names(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(i) = text[from..].find(name) {
        let at = from + i;
        let end = at + name.len();
        from = end;
        if text[..at].chars().next_back().is_some_and(|c| ident(c) || c == ':') {
            continue;
        }
        let rest = &text[end..];
        if rest.starts_with("::") {
            return true;
        }
        let before = text[..at].trim_end();
        let whole = !rest.chars().next().is_some_and(ident);
        if whole && (before.ends_with("use") || before.ends_with("extern crate")) {
            return true;
        }
    }
    false
}

/// The dependency tables of a manifest: (table name, dependency keys).
fn tables(manifest: &toml::Table) -> Vec<(&'static str, Vec<String>)> {
    let keys = |t: Option<&toml::Value>| -> Vec<String> {
        t.and_then(|v| v.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    vec![
        ("dependencies", keys(manifest.get("dependencies"))),
        ("dev-dependencies", keys(manifest.get("dev-dependencies"))),
    ]
}

/// The Rust sources that may use a normal dependency (`src/`, `build.rs`, the `[[bin]]` and
/// `[[bench]]`/fuzz-target paths outside `src/`) and those that may use a dev-dependency (all of
/// them, with `tests/`, `benches/` and `examples/`).
fn sources(dir: &Path) -> (String, String) {
    let read = |files: Vec<PathBuf>| -> String {
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut normal = Vec::new();
    rust_files(&dir.join("src"), &mut normal);
    rust_files(&dir.join("fuzz_targets"), &mut normal);
    if dir.join("build.rs").exists() {
        normal.push(dir.join("build.rs"));
    }
    let mut all = normal.clone();
    for d in ["tests", "benches", "examples"] {
        rust_files(&dir.join(d), &mut all);
    }
    (read(normal), read(all))
}

#[test]
fn every_declared_dependency_is_used() {
    let root = repo_root(env!("CARGO_MANIFEST_DIR"));
    let workspace: toml::Table = toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let mut members: Vec<String> = workspace["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    members.push("fuzz".into());
    let mut unused = Vec::new();
    let mut checked = 0;
    for member in &members {
        let dir = root.join(member);
        let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        let (normal, all) = sources(&dir);
        for (table, deps) in tables(&manifest) {
            for dep in deps {
                checked += 1;
                if KEPT.iter().any(|&(m, d, _)| m == member && d == dep) {
                    continue;
                }
                let name = dep.replace('-', "_");
                let used = if table == "dependencies" {
                    names(&normal, &name)
                } else {
                    names(&all, &name)
                };
                if used {
                    continue;
                }
                let hint = if table == "dependencies" && names(&all, &name) {
                    " (only its tests use it: a dev-dependency)"
                } else {
                    ""
                };
                unused.push(format!("{member}/Cargo.toml [{table}] {dep}{hint}"));
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} dependencies found: the manifests were not read"
    );
    assert!(
        unused.is_empty(),
        "dependencies that no source of their crate uses (remove them, or list them in KEPT in \
         tests/tests/deps.rs with the reason):\n  {}",
        unused.join("\n  ")
    );
}

#[test]
fn a_crate_counts_as_used_only_as_a_path_root_or_an_import() {
    assert!(names("let x = memchr::memchr(b'a', s);", "memchr"));
    assert!(names("use rayon::prelude::*;", "rayon"));
    assert!(names("  use half;", "half"));
    assert!(names("extern crate flate2;", "flate2"));
    assert!(!names("// memchr is fast", "memchr"));
    assert!(!names("my_memchr::find()", "memchr"));
    assert!(!names("crate::tiff::read()", "tiff"));
    assert!(!names("use tiffany::x;", "tiff"));
}
