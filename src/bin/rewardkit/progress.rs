//! Progress bars for long jobs: rate and ETA on a terminal, nothing when not a terminal.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Prints above a progress bar, or plainly when the bar is hidden (no terminal).
pub fn log(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() {
        eprintln!("{msg}")
    } else {
        pb.println(msg)
    }
}
