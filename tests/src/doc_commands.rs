//! The `ftu-infer …` and `ftu-train …` command lines the docs show, checked against what the
//! binary's own `--help` says it takes, so the docs cannot drift from the CLI.
//!
//! Std only: `infer/tests/docs_cli.rs` and `trainer/tests/docs_cli.rs` include this file, each
//! with its own binary (integration tests only see their own package's binaries).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root, from the including crate's manifest folder (one level below it).
pub fn repo_root(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir)
        .parent()
        .expect("a crate folder has a parent")
        .to_path_buf()
}

/// The docs whose command lines are checked: README.md, CONTRIBUTING.md, BENCHMARKS.md and every
/// Markdown file under docs/, sorted.
pub fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "BENCHMARKS.md"]
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.is_file())
        .collect();
    let mut stack = vec![root.join("docs")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// One command line of `binary` in a doc: where it starts and the words after the binary.
#[derive(Debug)]
pub struct DocCommand {
    pub line: usize,
    pub words: Vec<String>,
}

/// Every command line of `binary` in a Markdown text: in fenced code blocks (continuation lines
/// joined, `#` comments dropped, a command ending at a pipe, `;`, `&&` or a redirection), and
/// inline code spans that start with the binary (spans may wrap across the lines of a paragraph).
pub fn commands_in(text: &str, binary: &str) -> Vec<DocCommand> {
    let mut found = Vec::new();
    let mut in_code = false;
    let mut pending: Option<(usize, String)> = None; // a code line continued with `\`
    let mut paragraph: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        if raw.trim_start().starts_with("```") {
            if let Some((start, p)) = paragraph.take() {
                spans(&p, start, binary, &mut found);
            }
            in_code = !in_code;
            pending = None;
            continue;
        }
        if in_code {
            let (start, mut line) = pending.take().unwrap_or((n, String::new()));
            let piece = raw.trim_end();
            if let Some(head) = piece.strip_suffix('\\') {
                line.push_str(head);
                line.push(' ');
                pending = Some((start, line));
                continue;
            }
            line.push_str(piece);
            code_line(&line, start, binary, &mut found);
        } else if raw.trim().is_empty() {
            if let Some((start, p)) = paragraph.take() {
                spans(&p, start, binary, &mut found);
            }
        } else {
            let p = paragraph.get_or_insert((n, String::new()));
            p.1.push(' ');
            p.1.push_str(raw.trim());
        }
    }
    if let Some((start, p)) = paragraph.take() {
        spans(&p, start, binary, &mut found);
    }
    found
}

fn is_binary(token: &str, binary: &str) -> bool {
    let token = token.trim_start_matches(['!', '"', '\'', '(', '[', '$']);
    token.rsplit('/').next() == Some(binary)
}

fn code_line(line: &str, n: usize, binary: &str, found: &mut Vec<DocCommand>) {
    let line = match line.find('#') {
        Some(0) => return,
        Some(i) if line[..i].ends_with(char::is_whitespace) => &line[..i],
        _ => line,
    };
    let tokens: Vec<&str> = line.split_whitespace().collect();
    for (k, token) in tokens.iter().enumerate() {
        // `cargo build --bin ftu-infer`, `cargo test -p ftu-infer`: a name, not a command.
        if !is_binary(token, binary) || (k > 0 && tokens[k - 1].starts_with('-')) {
            continue;
        }
        let words = tokens[k + 1..]
            .iter()
            .take_while(|t| !matches!(**t, "|" | "||" | "&&" | ";") && !t.starts_with(['>', '<']) && !t.contains(">&"))
            .map(|t| t.to_string())
            .collect();
        found.push(DocCommand { line: n, words });
    }
}

fn spans(paragraph: &str, n: usize, binary: &str, found: &mut Vec<DocCommand>) {
    for (k, span) in paragraph.split('`').enumerate() {
        let mut tokens = span.split_whitespace();
        if k % 2 == 1 && tokens.next().is_some_and(|t| is_binary(t, binary)) {
            let words: Vec<String> = tokens.map(|t| t.to_string()).collect();
            if !words.is_empty() {
                found.push(DocCommand { line: n, words });
            }
        }
    }
}

/// A subcommand path (`["rle", "encode"]`) and what its `--help` says.
#[derive(Debug, Default)]
pub struct Help {
    pub subcommands: BTreeSet<String>,
    pub flags: BTreeSet<String>,
}

/// The CLI as the binary describes it: every subcommand path (the root is `[]`) with its help.
pub fn read_cli(exe: &Path) -> BTreeMap<Vec<String>, Help> {
    let mut cli = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let out = Command::new(exe)
            .args(&path)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("running {} {} --help: {e}", exe.display(), path.join(" ")));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} {} --help failed: {text}",
            exe.display(),
            path.join(" ")
        );
        let help = parse_help(&text);
        for sub in &help.subcommands {
            let mut p = path.clone();
            p.push(sub.clone());
            todo.push(p);
        }
        cli.insert(path, help);
    }
    cli
}

/// Subcommands (two-space-indented names under `Commands:`, clap's own `help` left out) and long
/// flags (every `--name` before an option line's description) of clap's help text.
pub fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.trim_end().ends_with(':') {
            section = line.trim_end();
            continue;
        }
        let trimmed = line.trim_start();
        if section == "Commands:" && line.len() - trimmed.len() == 2 {
            let name = trimmed.split_whitespace().next().unwrap_or("");
            if !name.is_empty() && name != "help" {
                help.subcommands.insert(name.to_string());
            }
        } else if trimmed.starts_with('-') {
            let spec = trimmed.split("  ").next().unwrap_or("");
            for token in spec.split([' ', ',', '=', '[', ']']) {
                if let Some(name) = token.strip_prefix("--") {
                    let name: String = name
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    if !name.is_empty() {
                        help.flags.insert(name);
                    }
                }
            }
        }
    }
    help
}

/// What is wrong with one command line: a word that is not a subcommand where one is expected,
/// or a `--flag` its subcommand does not take. `None` when it matches the CLI.
pub fn check_command(cli: &BTreeMap<Vec<String>, Help>, binary: &str, words: &[String]) -> Option<String> {
    let mut path: Vec<String> = Vec::new();
    let mut rest = words;
    while let Some((word, tail)) = rest.split_first() {
        let help = &cli[&path];
        if help.subcommands.is_empty() || word.starts_with('-') || word.starts_with('<') || word == "…" {
            break;
        }
        if !help.subcommands.contains(word) {
            let known: Vec<&str> = help.subcommands.iter().map(String::as_str).collect();
            let at = if path.is_empty() {
                String::new()
            } else {
                format!(" {}", path.join(" "))
            };
            return Some(format!(
                "`{binary}{at}` has no subcommand `{word}` (it has: {})",
                known.join(", ")
            ));
        }
        path.push(word.clone());
        rest = tail;
    }
    let help = &cli[&path];
    let command = std::iter::once(binary.to_string())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    for word in rest {
        let word = word.trim_start_matches(['[', '(', '"']);
        let Some(flag) = word.strip_prefix("--") else { continue };
        let flag: String = flag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if flag.is_empty() || flag == "help" || help.flags.contains(&flag) {
            continue;
        }
        return Some(format!("`{command}` has no flag `--{flag}`"));
    }
    None
}

/// Every problem with `binary`'s command lines in the docs under `root`, as `file:line: what`.
pub fn check_docs(root: &Path, binary: &str, exe: &Path) -> (usize, Vec<String>) {
    let cli = read_cli(exe);
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in doc_files(root) {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let shown = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        for c in commands_in(&text, binary) {
            checked += 1;
            if let Some(p) = check_command(&cli, binary, &c.words) {
                problems.push(format!("{shown}:{}: {p}\n    {binary} {}", c.line, c.words.join(" ")));
            }
        }
    }
    (checked, problems)
}

/// What docs/reference/commands.md leaves out: every subcommand of `binary` needs a `##` section
/// whose heading names it in code (`` `ftu-infer predict` ``), and that section must name each of
/// its flags.
pub fn check_reference(root: &Path, binary: &str, exe: &Path) -> Vec<String> {
    let file = root.join("docs/reference/commands.md");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut sections: Vec<(String, String)> = Vec::new(); // (heading, body)
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            sections.push((h.to_string(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let mut problems = Vec::new();
    for (path, help) in read_cli(exe) {
        if path.is_empty() || !help.subcommands.is_empty() {
            continue; // the root and groups such as `rle` only hold subcommands
        }
        let name = format!("`{binary} {}`", path.join(" "));
        let Some((_, body)) = sections.iter().find(|(h, _)| h.contains(&name)) else {
            problems.push(format!("docs/reference/commands.md has no section for {name}"));
            continue;
        };
        for flag in help.flags.iter().filter(|f| *f != "help" && *f != "version") {
            let named = body.match_indices(&format!("--{flag}")).any(|(i, _)| {
                let after = body[i + 2 + flag.len()..].chars().next();
                !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            });
            if !named {
                problems.push(format!(
                    "docs/reference/commands.md, {name}: `--{flag}` is not described"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_code_lines_and_spans_but_not_cargo_arguments() {
        let md = "Run `ftu-infer score --truth t.csv`\nor `ftu-infer\npredict --probs p/`.\n\n\
                  ```sh\n# ftu-infer predict --not-this\nftu-infer predict --manifest m \\\n    --out s.csv # --nor-this\n\
                  cargo build --bin ftu-infer --release\n!/k/ftu/ftu-infer merge --test t a.csv | tee x\n```\n";
        let found: Vec<String> = commands_in(md, "ftu-infer")
            .iter()
            .map(|c| format!("{}:{}", c.line, c.words.join(" ")))
            .collect();
        assert_eq!(
            found,
            [
                "1:score --truth t.csv",
                "1:predict --probs p/",
                "7:predict --manifest m --out s.csv",
                "10:merge --test t a.csv"
            ]
        );
    }

    #[test]
    fn reads_clap_help() {
        let help = parse_help(
            "Usage: x <COMMAND>\n\nCommands:\n  predict  Predict\n            wrapped --text\n  help     Print\n\n\
             Options:\n      --spin <on|off>\n          Whether --threads spins\n  -o, --out-dir <OUT>  Out\n  -h, --help  Print help\n",
        );
        assert_eq!(help.subcommands.iter().collect::<Vec<_>>(), ["predict"]);
        assert_eq!(help.flags.iter().collect::<Vec<_>>(), ["help", "out-dir", "spin"]);
    }

    #[test]
    fn flags_a_wrong_subcommand_and_a_wrong_flag() {
        let mut cli = BTreeMap::new();
        cli.insert(
            vec![],
            Help {
                subcommands: ["rle".to_string()].into(),
                flags: ["help".to_string()].into(),
            },
        );
        cli.insert(
            vec!["rle".to_string()],
            Help {
                subcommands: ["encode".to_string()].into(),
                flags: BTreeSet::new(),
            },
        );
        cli.insert(
            vec!["rle".to_string(), "encode".to_string()],
            Help {
                subcommands: BTreeSet::new(),
                flags: ["max-pixels".to_string()].into(),
            },
        );
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            check_command(&cli, "b", &words("rle encode m.png --max-pixels=9 [--help]")),
            None
        );
        assert!(check_command(&cli, "b", &words("rle decode"))
            .unwrap()
            .contains("no subcommand `decode`"));
        assert!(check_command(&cli, "b", &words("rle encode --max"))
            .unwrap()
            .contains("no flag `--max`"));
        assert!(check_command(&cli, "b", &words("score")).is_some());
    }
}
