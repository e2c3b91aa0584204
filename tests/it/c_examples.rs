//! The C header and examples: the committed header is what cbindgen generates, it compiles as
//! C99 and C++17, and examples/c/score.c builds against the library and agrees with Rust.

use std::process::Command;

use crate::common::{build_against_library, lib_dir, repo, run, scratch, tiny_model};

#[test]
fn committed_header_matches_the_code() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/rewardkit.h"));
    let committed = std::fs::read_to_string(repo().join("include/rewardkit.h")).unwrap();
    assert!(
        generated == committed,
        "include/rewardkit.h is stale: regenerate it with `REWARDKIT_WRITE_HEADER=1 cargo build --release` and commit it"
    );
    assert!(
        committed.contains(&format!("#define RK_VERSION_STRING \"{}\"", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn header_compiles_as_c99_and_cpp17() {
    let include = repo().join("include");
    let dir = scratch("header");
    let c = dir.join("h.c");
    std::fs::write(&c, "#include \"rewardkit.h\"\nint main(void) { rk_model_params p; if (rk_model_params_init(&p, sizeof p) != RK_OK) return 1; return (int)p.dtype; }\n").unwrap();
    run(Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
        .arg(&include)
        .arg(&c));
    let cpp = dir.join("h.cpp");
    std::fs::write(&cpp, "#include \"rewardkit.h\"\nint main() { rk_model_params p; rk_status s = rk_model_params_init(&p, sizeof p); return (int)p.dtype + (int)s; }\n").unwrap();
    run(Command::new("c++")
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(&include)
        .arg(&cpp)
        .arg("-L")
        .arg(lib_dir())
        .arg("-lrewardkit")
        .arg("-o")
        .arg(dir.join("h_cpp")));
}

#[test]
fn c_score_example_builds_runs_and_agrees_with_rust() {
    let dir = scratch("c-score");
    let exe = dir.join("score");
    build_against_library(
        "cc",
        &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"],
        &repo().join("examples/c/score.c"),
        &exe,
    );
    let tsv = repo().join("examples/data/pairs.tsv");
    let stdout = run(Command::new(&exe).arg(tiny_model()).arg(&tsv).arg("2"));
    let got: Vec<f32> =
        stdout.lines().map(|l| l.split('\t').nth(1).unwrap().parse().unwrap()).collect();
    assert_eq!(got.len(), 12);

    // The same pairs scored in Rust.
    let text = std::fs::read_to_string(&tsv).unwrap();
    let unescape = |s: &str| s.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\");
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (p, r) = l.split_once('\t').unwrap();
            (unescape(p), unescape(r))
        })
        .collect();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let model = rewardkit::SharedModel::load(tiny_model(), &Default::default()).unwrap();
    crate::common::assert_close(
        &got,
        &model.score_pairs(&refs).unwrap(),
        1e-5,
        "C example vs Rust",
    );

    // A bad model path: a clean error message and a non-zero exit, not a crash.
    let out = Command::new(&exe).arg("/no/model").arg(&tsv).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RK_ERR_NOT_FOUND"));
}

#[test]
fn c_train_vote_example_builds_and_runs() {
    let dir = scratch("c-train");
    let exe = dir.join("train_vote");
    build_against_library(
        "cc",
        &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"],
        &repo().join("examples/c/train_vote.c"),
        &exe,
    );
    let stdout = run(Command::new(&exe).arg(tiny_model()).arg(dir.join("saved")));
    let value = |key: &str| -> f64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no `{key}` in:\n{stdout}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("loss_last ") < value("loss_first "), "{stdout}");
    assert!(
        stdout.contains("expected refusal, a second trainer on one model: RK_ERR_INVALID_ARGUMENT"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().filter(|l| l.starts_with("vote pair")).count(), 4);
    assert!(
        dir.join("saved/optimizer.safetensors").exists()
            && dir.join("saved/tokenizer.json").exists()
    );
}

#[test]
fn cpp_iterative_rlhf_example_builds_and_runs() {
    let dir = scratch("cpp-rlhf");
    let exe = dir.join("iterative_rlhf");
    build_against_library(
        "c++",
        &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"],
        &repo().join("examples/cpp/iterative_rlhf.cpp"),
        &exe,
    );
    let stdout =
        run(Command::new(&exe).arg(tiny_model()).arg("3").arg("2").arg(dir.join("checkpoint")));
    let rows: Vec<Vec<f64>> = stdout
        .lines()
        .filter(|l| l.split_whitespace().next().is_some_and(|w| w.parse::<u32>().is_ok()))
        .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for r in &rows {
        // J of k = 4 samples lies in [0.375, 0.75]; accuracy in [0, 1]; everything finite.
        assert!(
            (0.375..=0.75).contains(&r[1])
                && (0.0..=1.0).contains(&r[2])
                && r.iter().all(|x| x.is_finite()),
            "{r:?}"
        );
    }
    assert!(
        stdout.contains(
            "expected refusal, prompts and responses of different lengths: RK_ERR_INVALID_ARGUMENT"
        ),
        "{stdout}"
    );
    // 3 rounds of 2 meta steps, saved and taken back by a restarted trainer.
    assert!(stdout.contains("checkpoint at step 6"), "{stdout}");
}

/// The PPO example scores its policy's samples with a two-member ensemble's conservative
/// reward (mean - λ·variance) and improves it.
#[test]
fn cpp_ppo_conservative_reward_example_builds_and_runs() {
    let dir = scratch("cpp-ppo");
    let exe = dir.join("ppo_conservative_reward");
    build_against_library(
        "c++",
        &["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"],
        &repo().join("examples/cpp/ppo_conservative_reward.cpp"),
        &exe,
    );
    // A second member: the tiny model from another seed.
    let second = dir.join("member-1");
    run(Command::new(env!("CARGO_BIN_EXE_rewardkit"))
        .args(["init-tiny", "--seed", "1", "--out"])
        .arg(&second));
    let stdout = run(Command::new(&exe).arg("1.0").arg(tiny_model()).arg(&second));
    assert!(stdout.contains("2 members, conservative reward = mean - 1.00 * variance"), "{stdout}");
    // Candidates: conservative reward <= the mean, with equality only where the members agree.
    let candidates: Vec<Vec<f64>> = stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() > 4 && w[0].parse::<u32>().is_ok() && w[1].parse::<u32>().is_ok())
                .then(|| w[2..4].iter().map(|x| x.parse().unwrap()).collect())
        })
        .collect();
    assert_eq!(candidates.len(), 12, "{stdout}");
    assert!(candidates.iter().all(|c| c[1] <= c[0] + 1e-4), "{stdout}");
    let iterations: Vec<Vec<f64>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("iteration"))
        .skip(1)
        .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
        .collect();
    assert_eq!(iterations.len(), 5, "{stdout}");
    assert!(iterations.iter().flatten().all(|x: &f64| x.is_finite()), "{stdout}");
    // PPO moves probability toward each prompt's best conservative response (uniform: 0.25).
    assert!(iterations[4][3..].iter().all(|&p| p > 0.25), "{stdout}");

    // Members as LoRA adapters over one base: two adapters `train --trainable lora` wrote.
    let adapter = |seed: &str| {
        let out = dir.join(format!("adapter-{seed}"));
        run(Command::new(env!("CARGO_BIN_EXE_rewardkit"))
            .args(["train", "--threads", "1", "--trainable", "lora", "--lora-r", "2"])
            .args(["--lr", "1e-2", "--epochs", "1", "--limit", "16", "--skip-bad-rows"])
            .args(["--seed", seed, "--model"])
            .arg(tiny_model())
            .arg("--data")
            .arg(crate::common::hh_data())
            .arg("--out")
            .arg(&out));
        out.join("final")
    };
    let (a, b) = (adapter("1"), adapter("2"));
    let stdout = run(Command::new(&exe).arg("1.0").arg("--base").arg(tiny_model()).arg(&a).arg(&b));
    assert!(stdout.contains("2 members, conservative reward"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("iteration")), "{stdout}");
}
