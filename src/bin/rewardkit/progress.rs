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

/// Runs a scoring job with a bar over its `total` sequences (rate and ETA on a terminal,
/// nothing otherwise), fed by the job's `OnScored` callback: a vote of 10 members over 2,000
/// pairs scores 40,000.
pub fn scoring<T>(
    total: usize,
    job: impl FnOnce(rewardkit::train::OnScored) -> rewardkit::Result<T>,
) -> rewardkit::Result<T> {
    let pb = bar(total as u64, "sequences");
    let out = job(&|n| pb.inc(n as u64));
    pb.finish_and_clear();
    out
}
