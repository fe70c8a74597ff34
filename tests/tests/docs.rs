//! The docs and the tracked text speak of ftu only: no words about how it was made, no links
//! between the pages that lead nowhere, and a code map in docs/explanation/crates.md that is
//! each module's own first `//!` sentence (`FTU_UPDATE_DOCS=1` rewrites it).

use ftu_tests::doc_commands::{doc_files, repo_root};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Words about how ftu was built rather than what it is, each split in two so this file does not
/// match itself. ONNX Runtime's sessions are not among them.
const MAKING_OF: &[(&str, &str)] = &[
    ("this", " stop"),
    ("its", " stop"),
    ("the", " issue's"),
    ("the issue", " names"),
    ("this", " session"),
    ("been", " lent"),
    ("lent", " gpu"),
    ("lent", " machine"),
    ("no gpu", " lent"),
    ("device", " call"),
    ("evidence for", " issue"),
    ("../", "shared/"),
];

fn root() -> PathBuf {
    repo_root(env!("CARGO_MANIFEST_DIR"))
}

/// The tracked files (`git ls-files`), or, without git, every file outside hidden folders and
/// target/.
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    if let Ok(out) = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
    {
        if out.status.success() {
            return out
                .stdout
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
                .filter(|p| p.is_file())
                .collect();
        }
    }
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    stack.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Whether `phrase` occurs in `line` starting at a word (`a cat`, not `ba cat`).
fn contains_words(line: &str, phrase: &str) -> bool {
    line.match_indices(phrase)
        .any(|(i, _)| !line[..i].chars().next_back().is_some_and(char::is_alphanumeric))
}

/// The word `issue`, a space and a digit.
fn issue_number(line: &str) -> bool {
    line.match_indices("issue ").any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + 6..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn tracked_text_has_no_words_about_how_ftu_was_made() {
    let root = root();
    let phrases: Vec<String> = MAKING_OF.iter().map(|(a, b)| format!("{a}{b}")).collect();
    let mut found = Vec::new();
    let mut read = 0;
    for file in tracked_files(&root) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        }; // not UTF-8: not text
        if text.contains('\0') {
            continue;
        }
        read += 1;
        let shown = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            for p in &phrases {
                if contains_words(&lower, p) {
                    found.push(format!("{shown}:{}: \"{p}\": {}", n + 1, line.trim()));
                }
            }
            if issue_number(&lower) {
                found.push(format!("{shown}:{}: an issue number: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(read > 100, "only {read} text files read");
    assert!(
        found.is_empty(),
        "say what ftu is and does, not how it was built:\n{}",
        found.join("\n")
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// The targets of a text's inline links, `[text](target)`, outside code blocks.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut in_code = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        for (i, _) in line.match_indices("](") {
            if let Some(end) = line[i + 2..].find(')') {
                out.push((n + 1, line[i + 2..i + 2 + end].to_string()));
            }
        }
    }
    out
}

#[test]
fn links_between_the_pages_lead_somewhere() {
    let root = root();
    let mut broken = Vec::new();
    let files = doc_files(&root);
    assert!(files.len() >= 10, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a doc");
        let shown = file.strip_prefix(&root).unwrap_or(file).display().to_string();
        for (n, link) in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{shown}:{n}: {link}: no such file"));
            } else if !fragment.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&target).expect("a linked doc");
                if !anchors(&text).contains(fragment) {
                    broken.push(format!("{shown}:{n}: {link}: no heading with that anchor"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

const CRATES: &[(&str, &str)] = &[
    ("formats/src", "ftu-formats"),
    ("infer/src", "ftu-infer"),
    ("models/src", "ftu-models"),
    ("onnx/src", "ftu-onnx"),
    ("trainer/src", "ftu-train"),
];
const MAP: &str = "docs/explanation/crates.md";
const START: &str = "<!-- code-map:start -->";
const END: &str = "<!-- code-map:end -->";

/// A module's first sentence: its leading `//!` lines up to the first blank one, joined, cut
/// after the first full stop followed by a space (not that of "e.g." or "i.e."); rustdoc's link
/// brackets dropped.
fn first_sentence(source: &str) -> Option<String> {
    let lines: Vec<&str> = source
        .lines()
        .map_while(|l| l.strip_prefix("//!"))
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let text = lines.join(" ").replace("[`", "`").replace("`]", "`");
    let end = text
        .match_indices(". ")
        .map(|(i, _)| i)
        .find(|&i| !text[..i].ends_with("e.g") && !text[..i].ends_with("i.e"))
        .map_or(text.len(), |i| i + 1);
    Some(text[..end].to_string())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

/// The code map as it should read now.
fn code_map(root: &Path) -> String {
    let mut map = String::new();
    for (dir, name) in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        files.sort();
        map.push_str(&format!("\n### `{dir}/` ({name})\n\n"));
        for file in files {
            let rel = file.strip_prefix(root.join(dir)).unwrap().display().to_string();
            let source = std::fs::read_to_string(&file).expect("a source file");
            match first_sentence(&source) {
                Some(s) => map.push_str(&format!("- `{rel}`: {s}\n")),
                None => map.push_str(&format!("- `{rel}`\n")),
            }
        }
    }
    map.push('\n');
    map
}

#[test]
fn the_code_map_is_each_modules_own_first_sentence() {
    let root = root();
    let path = root.join(MAP);
    let text = std::fs::read_to_string(&path).expect("the crates page");
    let (Some(start), Some(end)) = (text.find(START), text.find(END)) else {
        panic!("{MAP} has no {START} … {END} section");
    };
    let (head, current, tail) = (
        &text[..start + START.len()],
        &text[start + START.len()..end],
        &text[end..],
    );
    let wanted = code_map(&root);
    if current == wanted {
        return;
    }
    if std::env::var_os("FTU_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{head}{wanted}{tail}")).expect("writing the code map");
        return;
    }
    panic!("{MAP}'s code map is stale: FTU_UPDATE_DOCS=1 cargo test -p ftu-tests --test docs rewrites it");
}

#[test]
fn first_sentences() {
    assert_eq!(
        first_sentence("//! One. Two.\n//! Three.\n\nfn x() {}").as_deref(),
        Some("One.")
    );
    assert_eq!(
        first_sentence("//! Reads [`Mask`]s, e.g. a.png, at once\n//! and more.\n//!\n//! Later.").as_deref(),
        Some("Reads `Mask`s, e.g. a.png, at once and more.")
    );
    assert_eq!(first_sentence("//! Keeps it. (not this)").as_deref(), Some("Keeps it."));
    assert_eq!(first_sentence("use x;\n"), None);
    assert!(
        issue_number(&format!("see {} 18.", "issue")) && !issue_number("min_tissue 0.9") && !issue_number("the issue")
    );
    assert!(contains_words("at a cat", "a cat") && !contains_words("ba cat", "a cat"));
}
