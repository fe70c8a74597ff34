//! What the CLI tests share: running the ftu-infer binary, `predict`'s usual arguments, and
//! checking that a failure reads as an error, not a crash.

// Each test file is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The ftu-infer binary with `args`, not yet run.
pub fn ftu_infer_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ftu-infer"));
    c.args(args);
    c
}

/// [`ftu_infer_command`] with stdout and stderr discarded, for runs that are timed or killed and
/// whose files are all that is read.
pub fn ftu_infer_quiet(args: &[&str]) -> Command {
    let mut c = ftu_infer_command(args);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// `ftu-infer ARGS` run to completion; RUST_BACKTRACE=0 keeps its errors short.
pub fn ftu_infer(args: &[&str]) -> Output {
    ftu_infer_with(args, &[])
}

/// [`ftu_infer`] with `env` added.
pub fn ftu_infer_with(args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    ftu_infer_command(args)
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// [`ftu_infer`] with `stdin` written to its standard input.
pub fn ftu_infer_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = ftu_infer_command(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `predict --manifest MANIFEST --data DATA --out OUT`: what every test's predict run starts from.
pub fn predict_args<'a>(manifest: &'a Path, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let s = |p: &'a Path| p.to_str().unwrap();
    vec!["predict", "--manifest", s(manifest), "--data", s(data), "--out", s(out)]
}

/// The stderr of a run that failed as a user should see it fail: a non-zero exit, and neither a
/// panic nor a backtrace.
pub fn failure(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "should have failed:\n{}", text(o));
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(!err.to_lowercase().contains("backtrace"), "a backtrace: {err}");
    err
}

/// What a run printed, stdout then stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
