//! How a failed command reads to a person, the same in every ftu binary: `error: …`, then one
//! `caused by: …` line per underlying error, exit status 1; a backtrace only when
//! `FTU_BACKTRACE=1` asks for one (clap's usage errors exit 2 before any of this).

use std::error::Error;
use std::process::ExitCode;

/// The variable that asks for a backtrace after a failed command's message.
pub const BACKTRACE_VAR: &str = "FTU_BACKTRACE";

/// Runs a binary's `main` body and reports its error, if any, on stderr.
///
/// Backtraces are captured (by anyhow, by Candle's errors, by anything calling
/// `Backtrace::capture`) only with `FTU_BACKTRACE=1`: `RUST_LIB_BACKTRACE` is set to match before
/// `run` starts, so a `RUST_BACKTRACE=1` left in a user's shell does not put stack frames into
/// error messages. Panics still follow `RUST_BACKTRACE` (a panic is a bug in ftu, not in the input).
pub fn run(run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    let wanted = backtrace_wanted();
    // SAFETY (of the call, which is safe in edition 2021): it runs first in `main`, before any
    // thread that could read the environment exists.
    std::env::set_var("RUST_LIB_BACKTRACE", if wanted { "1" } else { "0" });
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut text = render(error.as_ref());
            if wanted {
                text.push_str(&format!("backtrace:\n{}\n", error.backtrace()));
            }
            eprint!("{text}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `FTU_BACKTRACE` asks for a backtrace (`1`, `true`, `yes` or `full`).
fn backtrace_wanted() -> bool {
    std::env::var(BACKTRACE_VAR).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "full"))
}

/// `error: MESSAGE` and a `caused by: …` line per error in `error`'s source chain, each line ended
/// by a newline. A cause whose text the line above already carries (an error that prints its
/// source inside its own message) is not repeated.
pub fn render(error: &(dyn Error + 'static)) -> String {
    let mut text = format!("error: {error}\n");
    let mut shown = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !message.is_empty() && !shown.contains(&message) {
            text.push_str(&format!("caused by: {message}\n"));
        }
        shown = message;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the manifest")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("model.onnx: no such file")]
    struct Inner(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("bad value: {0}")]
    struct Repeats(#[source] std::num::ParseIntError);

    #[test]
    fn every_cause_gets_its_own_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "os error 2");
        assert_eq!(
            render(&Outer(Inner(io))),
            "error: reading the manifest\ncaused by: model.onnx: no such file\ncaused by: os error 2\n"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let parse = "x".parse::<i32>().unwrap_err();
        assert_eq!(
            render(&Repeats(parse)),
            "error: bad value: invalid digit found in string\n"
        );
    }

    #[test]
    fn anyhow_context_reads_as_a_chain() {
        let e = anyhow::anyhow!("ONNX Runtime library not found").context("loading the runtime");
        assert_eq!(
            render(e.as_ref()),
            "error: loading the runtime\ncaused by: ONNX Runtime library not found\n"
        );
    }
}
