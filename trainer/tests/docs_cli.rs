//! Every `ftu-train …` command line in README.md, CONTRIBUTING.md, BENCHMARKS.md and docs/ names
//! a subcommand and flags `ftu-train` has, and docs/reference/commands.md describes them all.

#[allow(dead_code)]
#[path = "../../tests/src/doc_commands.rs"]
mod doc_commands;

use std::path::Path;

const BINARY: &str = "ftu-train";

#[test]
fn command_lines_in_the_docs_exist() {
    let root = doc_commands::repo_root(env!("CARGO_MANIFEST_DIR"));
    let (checked, problems) = doc_commands::check_docs(&root, BINARY, Path::new(env!("CARGO_BIN_EXE_ftu-train")));
    assert!(
        checked >= 20,
        "only {checked} `{BINARY}` command lines found in the docs"
    );
    assert!(
        problems.is_empty(),
        "{} command lines the CLI does not take:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_commands_reference_names_every_subcommand_and_flag() {
    let root = doc_commands::repo_root(env!("CARGO_MANIFEST_DIR"));
    let problems = doc_commands::check_reference(&root, BINARY, Path::new(env!("CARGO_BIN_EXE_ftu-train")));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
