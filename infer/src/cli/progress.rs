//! The progress bars of `predict` and `pseudo`: slides, and the current slide's tissue windows.

use indicatif::{ProgressBar, ProgressStyle};

use crate::predict;

/// Runs `f` with progress bars: slides, and the current slide's tissue windows.
pub fn with_progress<T>(f: impl FnOnce(predict::SlideProgress) -> T) -> T {
    let bars = indicatif::MultiProgress::new();
    let bar = bars.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} slides {elapsed_precise} eta {eta} {msg}")
            .expect("a valid template"),
    );
    let windows = bars.add(ProgressBar::new(0));
    windows.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tissue windows of this slide, eta {eta}")
            .expect("a valid template"),
    );
    let result = f(&mut |event| match event {
        predict::Event::Slide { done, total, id } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(id.to_string());
        }
        predict::Event::Windows { done, total } => {
            if done == 0 {
                windows.reset();
            }
            windows.set_length(total as u64);
            windows.set_position(done as u64);
        }
    });
    windows.finish_and_clear();
    bar.finish_and_clear();
    result
}
