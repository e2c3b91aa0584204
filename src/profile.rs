//! Opt-in phase timing of the forward pass, for finding where scoring time goes on a device
//! this project cannot profile interactively (the GPU machine has no Nsight).
//!
//! Off unless `REWARDKIT_PROFILE=1`: then every phase synchronises the device before and after
//! it, so asynchronous GPU work is charged to the phase that launched it, and its wall time is
//! added to a process-wide table. The synchronisation itself slows the pass down a little (a
//! few microseconds per phase); the table is for shares, not for throughput. Off, a phase
//! costs one atomic load.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;

use crate::error::Result;

/// 0: not read yet, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
/// (phase, calls, seconds), in first-seen order.
static TABLE: Mutex<Vec<(&'static str, u64, f64)>> = Mutex::new(Vec::new());

/// Whether phases are being timed (`REWARDKIT_PROFILE=1`, read once).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("REWARDKIT_PROFILE").is_ok_and(|v| v == "1");
            set_enabled(on);
            on
        }
        s => s == 2,
    }
}

/// Turns timing on or off for the whole process (the environment variable's default aside).
pub fn set_enabled(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

thread_local! {
    /// Phases open on this thread: a phase inside another is part of the outer one's time.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` as phase `name` on `device`. Nested phases are charged to the outermost one, so
/// the table's rows add up to the timed total.
pub fn phase<R>(name: &'static str, device: &Device, f: impl FnOnce() -> Result<R>) -> Result<R> {
    if !enabled() || DEPTH.get() > 0 {
        return f();
    }
    device.synchronize()?;
    let (out, seconds) = outermost(|| -> Result<R> {
        let out = f()?;
        device.synchronize()?;
        Ok(out)
    });
    let out = out?;
    record(name, seconds);
    Ok(out)
}

/// [`phase`] for host code that cannot fail and launches no device work (the CPU training
/// engine's kernels): no synchronisation, no `Result`.
pub fn host_phase<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() || DEPTH.get() > 0 {
        return f();
    }
    let (out, seconds) = outermost(f);
    record(name, seconds);
    out
}

/// Runs `f` as the outermost open phase (phases inside it run untimed) and measures it.
fn outermost<R>(f: impl FnOnce() -> R) -> (R, f64) {
    struct Open;
    impl Drop for Open {
        fn drop(&mut self) {
            DEPTH.set(0); // also when `f` unwinds
        }
    }
    let started = Instant::now();
    let out = {
        DEPTH.set(1);
        let _open = Open;
        f()
    };
    (out, started.elapsed().as_secs_f64())
}

fn record(name: &'static str, seconds: f64) {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    match table.iter_mut().find(|(n, _, _)| *n == name) {
        Some(row) => {
            row.1 += 1;
            row.2 += seconds;
        }
        None => table.push((name, 1, seconds)),
    }
}

/// The table so far: (phase, calls, seconds).
pub fn snapshot() -> Vec<(&'static str, u64, f64)> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Empties the table.
pub fn reset() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The table as Markdown, largest phase first, with each phase's share of the timed total.
pub fn report() -> String {
    let mut rows = snapshot();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = rows.iter().map(|r| r.2).sum();
    let mut out = String::from("| phase | calls | seconds | share |\n|---|---|---|---|\n");
    for (name, calls, secs) in rows {
        out += &format!(
            "| {name} | {calls} | {secs:.4} | {:.1}% |\n",
            100.0 * secs / total.max(1e-12)
        );
    }
    out + &format!("| total | | {total:.4} | |\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_accumulate_only_when_enabled() {
        // Other tests in this process may record model phases while this one has timing on,
        // so only this test's own phase names are checked.
        set_enabled(false);
        phase("off", &Device::Cpu, || Ok(())).unwrap();
        assert!(!snapshot().iter().any(|r| r.0 == "off"));
        set_enabled(true);
        for _ in 0..3 {
            phase("a", &Device::Cpu, || {
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            })
            .unwrap();
        }
        phase("b", &Device::Cpu, || phase("inside b", &Device::Cpu, || Ok(()))).unwrap();
        set_enabled(false);
        let rows: Vec<_> = snapshot().into_iter().filter(|r| r.0 == "a" || r.0 == "b").collect();
        assert_eq!(rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![("a", 3), ("b", 1)]);
        assert!(rows[0].2 >= 0.006, "{rows:?}");
        assert!(
            !snapshot().iter().any(|r| r.0 == "inside b"),
            "a nested phase is part of the outer one"
        );
        assert!(report().lines().any(|l| l.starts_with("| a | 3 |")), "{}", report());
        // An error inside a phase is returned, not recorded.
        set_enabled(true);
        let e =
            phase("c", &Device::Cpu, || -> Result<()> { Err(crate::error::Error::invalid("x")) });
        set_enabled(false);
        assert!(e.is_err() && !snapshot().iter().any(|r| r.0 == "c"));
    }
}
