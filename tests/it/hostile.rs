//! The hostile-input suite (tests/hostile/hostile.c): every export of the C ABI and the CLI's
//! file readers fed NULLs, overflowing sizes, bad UTF-8, bad ids, non-finite floats, corrupt
//! and oversized files, and concurrent scorers, each case in its own child process. Built and
//! run twice: plainly (under an address-space limit, so a runaway allocation fails its case)
//! and under AddressSanitizer + UBSan.

use std::process::Command;

use crate::common::{lib_dir, repo, scratch, tiny_model};

fn build(out: &std::path::Path, sanitize: bool) {
    let lib = lib_dir();
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-format-truncation", "-O1", "-g"]);
    if sanitize {
        cc.args([
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined",
        ]);
    }
    cc.arg("-I").arg(repo().join("include")).arg(repo().join("tests/hostile/hostile.c"));
    cc.arg("-L")
        .arg(&lib)
        .args(["-lrewardkit", "-lpthread", "-lm"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out);
    crate::common::run(&mut cc);
}

/// Runs the suite; returns (passed, failed) and prints its report.
fn run_suite(exe: &std::path::Path, name: &str, sanitize: bool) -> (usize, usize) {
    let mut cmd = Command::new(exe);
    cmd.arg(tiny_model()).arg(scratch(name)).arg(env!("CARGO_BIN_EXE_rewardkit")).arg(repo());
    if sanitize {
        cmd.env("HOSTILE_ASAN", "1")
            .env("ASAN_OPTIONS", "detect_leaks=0:hard_rss_limit_mb=6000:abort_on_error=1")
            .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{name}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    let mut words = last.split_whitespace();
    let passed = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let failed = words.nth(1).and_then(|w| w.parse().ok()).unwrap();
    (passed, failed)
}

#[test]
fn hostile_suite_passes_plain_and_under_sanitizers() {
    for (name, sanitize) in [("hostile", false), ("hostile-asan", true)] {
        let exe = scratch(&format!("{name}-bin")).join(name);
        build(&exe, sanitize);
        let (passed, failed) = run_suite(&exe, name, sanitize);
        assert_eq!(failed, 0, "{name}: {failed} hostile cases failed (see the report above)");
        assert!(passed >= 150, "{name}: only {passed} cases ran");
    }
}
