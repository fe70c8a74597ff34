//! What the CLI tests share: running the ftu-infer binary and showing what it printed.

use std::ffi::OsStr;
use std::process::{Command, Output};

/// `ftu-infer ARGS` run to completion with `env` added; RUST_BACKTRACE=0 keeps its errors short.
pub fn ftu_infer_with(args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftu-infer"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// What a run printed, stdout then stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
