//! Bindings and packaging: the exported symbols, an install under a temporary prefix that
//! pkg-config and CMake find, the C++ examples (also under AddressSanitizer and UBSan), and
//! the Python package's tests. scripts/test.sh provides cmake and a Python with pytest and
//! numpy (REWARDKIT_PYTHON).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{lib_dir, repo, run, scratch, tiny_model};

#[test]
fn exported_symbols_match_the_committed_list() {
    let nm = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib_dir().join("librewardkit.so")));
    let mut exported: Vec<&str> = nm
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("rk_"))
        .collect();
    exported.sort();
    let committed = std::fs::read_to_string(repo().join("include/rewardkit.symbols")).unwrap();
    let committed: Vec<&str> = committed.lines().collect();
    let missing: Vec<_> = committed.iter().filter(|s| !exported.contains(s)).collect();
    let added: Vec<_> = exported.iter().filter(|s| !committed.contains(s)).collect();
    assert!(missing.is_empty(), "symbols removed or renamed (an ABI break): {missing:?}");
    assert!(added.is_empty(), "new exports {added:?}: add them to include/rewardkit.symbols");
    // Every exported function is declared in the header.
    let header = std::fs::read_to_string(repo().join("include/rewardkit.h")).unwrap();
    for s in &exported {
        assert!(
            header.contains(&format!(" {s}(")) || header.contains(&format!("*{s}(")),
            "{s} is exported but not in rewardkit.h"
        );
    }
}

fn install(prefix: &Path) {
    run(Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .arg(prefix)
        .env("REWARDKIT_PREBUILT", lib_dir())
        .env("REWARDKIT_CLI", env!("CARGO_BIN_EXE_rewardkit")));
}

#[test]
fn installed_package_works_with_pkg_config_and_cmake() {
    let dir = scratch("install");
    let prefix = dir.join("prefix");
    install(&prefix);
    for f in [
        "include/rewardkit.h",
        "include/rewardkit.hpp",
        "lib/librewardkit.so.0.2",
        "lib/librewardkit.a",
        "lib/pkgconfig/rewardkit.pc",
        "lib/cmake/rewardkit/rewardkitConfig.cmake",
        "bin/rewardkit",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }
    let pc = |arg: &str| {
        run(Command::new("pkg-config")
            .args([arg, "rewardkit"])
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig")))
    };
    assert_eq!(pc("--modversion").trim(), env!("CARGO_PKG_VERSION"));
    assert!(pc("--libs").contains("-lrewardkit") && pc("--cflags").contains("/include"));
    // Linked with pkg-config's flags alone, a program finds the library at run time (the
    // .pc carries an rpath): no LD_LIBRARY_PATH.
    let exe = dir.join("score_c");
    let mut cc = Command::new("cc");
    cc.arg("-std=c99").arg(repo().join("examples/c/score.c")).arg("-o").arg(&exe);
    cc.args(pc("--cflags").split_whitespace()).args(pc("--libs").split_whitespace());
    run(&mut cc);
    let out = run(Command::new(&exe)
        .arg(tiny_model())
        .arg(repo().join("examples/data/pairs.tsv"))
        .env_remove("LD_LIBRARY_PATH"));
    assert!(out.lines().count() >= 10, "{out}");

    let build = dir.join("build");
    run(Command::new("cmake")
        .arg("-S")
        .arg(repo().join("examples/cpp"))
        .arg("-B")
        .arg(&build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())));
    run(Command::new("cmake").arg("--build").arg(&build));
    let out = run(Command::new(build.join("score"))
        .arg(tiny_model())
        .arg(repo().join("examples/data/pairs.tsv")));
    assert!(out.contains("threads agree: yes") && out.lines().count() == 13, "{out}");
    let out = run(Command::new(build.join("iterative_rlhf")).arg(tiny_model()).arg("2").arg("2"));
    assert!(
        out.contains(
            "expected refusal, prompts and responses of different lengths: RK_ERR_INVALID_ARGUMENT"
        ),
        "{out}"
    );
    // The installed CLI runs.
    run(Command::new(prefix.join("bin/rewardkit")).arg("--version"));
}

#[test]
fn cpp_examples_and_wrapper_tests_are_clean_under_address_and_ub_sanitizers() {
    let dir = scratch("asan");
    let lib = lib_dir();
    let programs: [(&str, PathBuf, Vec<PathBuf>); 3] = [
        (
            "score",
            repo().join("examples/cpp/score.cpp"),
            vec![tiny_model().to_path_buf(), repo().join("examples/data/pairs.tsv")],
        ),
        (
            "iterative_rlhf",
            repo().join("examples/cpp/iterative_rlhf.cpp"),
            vec![tiny_model().to_path_buf(), "2".into(), "2".into(), dir.join("checkpoint")],
        ),
        (
            "wrapper_test",
            repo().join("tests/cpp/wrapper_test.cpp"),
            vec![tiny_model().to_path_buf(), dir.clone()],
        ),
    ];
    for (name, source, args) in programs {
        let exe = dir.join(name);
        run(Command::new("c++")
            .args([
                "-std=c++17",
                "-g",
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=undefined",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-I",
            ])
            .arg(repo().join("include"))
            .arg("-I")
            .arg(repo().join("bindings/cpp"))
            .arg(source)
            .arg("-L")
            .arg(&lib)
            .arg("-lrewardkit")
            .arg("-pthread")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-o")
            .arg(&exe));
        let out = run(Command::new(&exe)
            .args(&args)
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
            .env("UBSAN_OPTIONS", "print_stacktrace=1"));
        if name == "wrapper_test" {
            assert!(out.contains("wrapper: all checks passed"), "{out}");
        }
    }
}

#[test]
fn python_package_tests_and_example() {
    let python = std::env::var("REWARDKIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let lib = lib_dir().join("librewardkit.so");
    let py = |args: &[&str]| {
        run(Command::new(&python)
            .args(args)
            .current_dir(repo())
            .env("REWARDKIT_LIBRARY", &lib)
            .env("REWARDKIT_TEST_MODEL", tiny_model())
            .env("PYTHONPATH", repo().join("bindings/python")))
    };
    let out = py(&["-m", "pytest", "-q", "-p", "no:cacheprovider", "bindings/python/tests"]);
    assert!(out.contains("passed") && !out.contains("failed"), "{out}");
    let out = py(&["examples/python/score.py", tiny_model().to_str().unwrap()]);
    assert!(out.contains("vote mean"), "{out}");
}

/// `scripts/build_wheel.sh` builds a manylinux wheel carrying the library: installed, the
/// package imports and scores with no `REWARDKIT_LIBRARY`, from any directory, and leaves the
/// source tree clean.
#[test]
fn wheel_carries_the_library() {
    let python = std::env::var("REWARDKIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = scratch("wheel");
    let out = dir.join("dist");
    let listing = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(repo().join("bindings/python"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    run(Command::new(repo().join("scripts/build_wheel.sh"))
        .arg(&out)
        .current_dir(repo())
        .env("REWARDKIT_PREBUILT", lib_dir()));
    let wheels: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    let name = wheels[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("rewardkit-") && name.contains("-py3-none-manylinux_"), "{name}");
    let site = dir.join("site");
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
        ])
        .arg(&site)
        .arg(&wheels[0]));
    let said = run(Command::new(&python)
        .args([
            "-c",
            "import sys, rewardkit; m = rewardkit.Model(sys.argv[1]); \
             print(rewardkit.__file__, rewardkit.version(), m.score(['Hi'], [' Hello'])[0])",
        ])
        .arg(tiny_model())
        .current_dir(&dir)
        .env_remove("REWARDKIT_LIBRARY")
        .env("PYTHONPATH", &site));
    let words: Vec<&str> = said.split_whitespace().collect();
    assert!(words[0].starts_with(site.to_str().unwrap()), "{said}");
    assert!(words[2].parse::<f32>().unwrap().is_finite(), "{said}");
    assert_eq!(listing(), before, "the build left files in bindings/python");
}
