//! The `rewardkit` command line: scoring a file, errors that name the line.

use std::process::Command;

use crate::common::{hh_data, scratch, tiny_model};

fn rewardkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rewardkit"))
}

#[test]
fn score_prints_one_line_per_row_in_order() {
    let dir = scratch("cli-score");
    let input = dir.join("rows.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"Q?\", \"response\": \" A.\", \"id\": \"a\"}\n\n{\"text\": \"whole text\"}\n{\"ids\": [1, 5, 9]}\n{\"prompt\": \"P\", \"chosen\": \" yes\", \"rejected\": \" no\"}\n",
    )
    .unwrap();
    let out = rewardkit()
        .args(["score", "--threads", "1", "--model"])
        .arg(tiny_model())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!((lines[0]["line"].as_u64(), lines[0]["id"].as_str()), (Some(1), Some("a")));
    assert_eq!(lines[1]["line"], 3);
    assert!(lines[2]["reward"].is_f64());
    let (c, r, m) = (
        lines[3]["chosen_reward"].as_f64().unwrap(),
        lines[3]["rejected_reward"].as_f64().unwrap(),
        lines[3]["margin"].as_f64().unwrap(),
    );
    assert!((c - r - m).abs() < 1e-6);

    // The same pair through the library gives the same reward.
    let model = rewardkit::SharedModel::load(tiny_model(), &Default::default()).unwrap();
    let want = model.score_pairs(&[("Q?", " A.")]).unwrap()[0] as f64;
    assert!((lines[0]["reward"].as_f64().unwrap() - want).abs() < 1e-5);
}

#[test]
fn score_errors_name_the_line() {
    let dir = scratch("cli-errors");
    for (content, needle) in [
        ("{\"text\": \"ok\"}\n{\"prompt\": \"p\"}\n", "line 2"),
        ("{\"text\": \"ok\"}\nnot json\n", "line 2"),
        ("{\"ids\": [1, 999999]}\n", "line 1"),
    ] {
        let input = dir.join("bad.jsonl");
        std::fs::write(&input, content).unwrap();
        let out = rewardkit()
            .args(["score", "--model"])
            .arg(tiny_model())
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn readme_main_job_scores_real_hh_pairs() {
    let out = rewardkit()
        .args(["score", "--limit", "5", "--model"])
        .arg(tiny_model())
        .arg("--input")
        .arg(hh_data())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 5);
    assert!(text.lines().all(|l| l.contains("chosen_reward")));
}

#[test]
fn train_vote_eval_and_meta_train_run_end_to_end() {
    let dir = scratch("cli-train");
    let data = hh_data();
    let base = [
        "--model",
        tiny_model().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "24",
        "--skip-bad-rows",
        "--threads",
        "1",
    ];
    let ok = |args: &[&str]| {
        let out = rewardkit().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out_dir = dir.join("run");
    let table = ok(&[
        &["train"],
        &base[..],
        &[
            "--eval-fraction",
            "0.25",
            "--trainable",
            "top:1",
            "--lr",
            "1e-4",
            "--save-every",
            "1",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(table.contains("accuracy") && out_dir.join("final/config.json").exists());
    let ens = dir.join("ens");
    let vote = ok(&[
        &["ensemble"],
        &base[..],
        &["--members", "2", "--trainable", "head", "--lr", "1e-3", "--out", ens.to_str().unwrap()],
    ]
    .concat());
    assert!(
        vote.contains("likely wrong")
            && ens.join("vote.jsonl").exists()
            && ens.join("bucket_std.svg").exists()
    );
    let first = std::fs::read_to_string(ens.join("vote.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(row["chosen score list"].as_array().unwrap().len(), 2);
    // Train again with the strengths, flipping pairs the vote disagrees with.
    ok(&[
        &["train"],
        &base[..],
        &[
            "--trainable",
            "head",
            "--strengths",
            ens.join("vote.jsonl").to_str().unwrap(),
            "--flip-below",
            "0",
            "--margin-scale",
            "0.5",
        ],
    ]
    .concat());
    let eval = ok(&[
        "eval",
        "--model",
        out_dir.join("final").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "16",
        "--skip-bad-rows",
    ]);
    assert!(eval.contains("reward min/mean/max/std"));
    let policy = crate::common::repo().join("examples/data/policy_samples.jsonl");
    let meta = ok(&[
        &["meta-train"],
        &base[..],
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--rounds",
            "2",
            "--steps-per-round",
            "2",
            "--trainable",
            "top:1",
            "--meta-lr",
            "0.1",
        ],
    ]
    .concat());
    let rounds = |out: &str| {
        out.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count()
    };
    assert_eq!(rounds(&meta), 2, "{meta}");
    assert!(meta.contains("J after*") && meta.contains("first-order prediction"), "{meta}");
    let measured = ok(&[
        &["meta-train"],
        &base[..],
        &["--policy", policy.to_str().unwrap(), "--rounds", "1", "--steps-per-round", "1"],
        &["--trainable", "top:1", "--meta-lr", "0.1", "--measure-j-after"],
    ]
    .concat());
    assert_eq!(rounds(&measured), 1, "{measured}");
    assert!(!measured.contains("J after*"), "{measured}");
}

#[test]
fn benchmarks_print_where_the_time_went() {
    let model = tiny_model().to_str().unwrap().to_string();
    let data = hh_data().to_str().unwrap().to_string();
    let score = rewardkit()
        .args([
            "bench",
            "--threads",
            "1",
            "--limit",
            "8",
            "--repeats",
            "1",
            "--profile",
            "--model",
            &model,
            "--input",
            &data,
        ])
        .output()
        .unwrap();
    let train = rewardkit()
        .args([
            "bench-train",
            "--threads",
            "1",
            "--limit",
            "8",
            "--batch-pairs",
            "2",
            "--steps",
            "2",
            "--max-length",
            "64",
            "--profile",
            "--model",
            &model,
            "--input",
            &data,
        ])
        .output()
        .unwrap();
    for (out, phases) in [
        (score, vec!["embed", "attention core", "mlp gate/up projections", "qkv projections"]),
        (
            train,
            vec![
                "engine forward: projections (GEMM)",
                "engine forward: attention",
                "engine backward: projections (GEMM)",
                "engine backward: weight gradients (GEMM)",
                "engine backward: attention",
                "engine: norms, rope, SwiGLU, dropout, residuals",
                "optimizer (clip, AdamW)",
            ],
        ),
    ] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let table: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("| phase |")).collect();
        for phase in phases {
            let row = table
                .iter()
                .find(|l| l.starts_with(&format!("| {phase} |")))
                .unwrap_or_else(|| panic!("no `{phase}` row in\n{text}"));
            let seconds: f64 = row.split('|').nth(3).unwrap().trim().parse().unwrap();
            assert!(seconds > 0.0, "{row}");
        }
        assert!(table.last().unwrap().starts_with("| total |"), "{text}");
    }
}

/// Issue: sharded offline jobs. `ensemble --shard i/n` trains the members an unsharded run
/// trains (bit for bit), and `vote --shard i/n` + `vote --merge` writes the unsharded vote file
/// byte for byte, for any shard count and any merge order; a wrong set of shards is refused.
#[test]
fn sharded_ensemble_and_vote_merge_to_the_unsharded_files() {
    let dir = scratch("cli-shard");
    let data = hh_data();
    let run = |args: &[&str]| {
        let out = rewardkit().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let fails = |args: &[&str], want: &str| {
        let out = rewardkit().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    };
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (whole, sharded) = (dir.join("whole"), dir.join("sharded"));
    let ensemble = |out: &std::path::Path, shard: Option<&str>| {
        let mut args: Vec<String> = [
            "ensemble",
            "--model",
            tiny_model().to_str().unwrap(),
            "--data",
            &s(&data),
            "--skip-bad-rows",
            "--limit",
            "24",
            "--members",
            "3",
            "--epochs",
            "1",
            "--batch-pairs",
            "8",
            "--trainable",
            "top:1",
            "--threads",
            "1",
            "--out",
            &s(out),
        ]
        .map(String::from)
        .to_vec();
        if let Some(sh) = shard {
            args.extend(["--shard".to_string(), sh.to_string()]);
        }
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    ensemble(&whole, None);
    assert!(ensemble(&sharded, Some("0/2")).contains("members [0, 2]"));
    assert!(ensemble(&sharded, Some("1/2")).contains("members [1]"));
    for m in 0..3 {
        let w = std::fs::read(whole.join(format!("member-{m}/final/model.safetensors"))).unwrap();
        let sh =
            std::fs::read(sharded.join(format!("member-{m}/final/model.safetensors"))).unwrap();
        assert!(w == sh, "member {m} differs between the sharded and the whole ensemble");
    }
    assert!(!sharded.join("vote.jsonl").exists(), "a shard of an ensemble votes on nothing");

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let mut vote: Vec<String> = vec!["vote".into()];
    for m in 0..3 {
        vote.extend(["--member".into(), s(&sharded.join(format!("member-{m}/final")))]);
    }
    // A small token budget: many scoring batches, so every shard scores several.
    for a in ["--data", &s(&data), "--skip-bad-rows", "--limit", "24", "--batch-tokens", "600"] {
        vote.push(a.into());
    }
    let with =
        |extra: &[&str]| [vote.clone(), extra.iter().map(|x| x.to_string()).collect()].concat();
    let one = s(&dir.join("vote.jsonl"));
    run(&strs(&with(&["--output", &one])));
    let want = std::fs::read(&one).unwrap();
    assert_eq!(want.iter().filter(|&&b| b == b'\n').count(), 24);
    for n in [2usize, 3] {
        let parts: Vec<String> =
            (0..n).map(|i| s(&dir.join(format!("shard-{i}-of-{n}.jsonl")))).collect();
        for (i, p) in parts.iter().enumerate() {
            run(&strs(&with(&["--shard", &format!("{i}/{n}"), "--output", p])));
        }
        let merged = s(&dir.join(format!("merged-{n}.jsonl")));
        let mut merge: Vec<String> = vec!["vote".into(), "--merge".into()];
        merge.extend(parts.iter().rev().cloned());
        merge.extend(["--output".into(), merged.clone()]);
        run(&strs(&merge));
        assert!(std::fs::read(&merged).unwrap() == want, "{n} shards merge to a different file");
    }
    let p0 = s(&dir.join("shard-0-of-3.jsonl"));
    let p1 = s(&dir.join("shard-1-of-3.jsonl"));
    let out = s(&dir.join("bad.jsonl"));
    fails(&["vote", "--merge", &p0, &p1, "--output", &out], "shard 2/3 is missing");
    fails(&["vote", "--merge", &p0, &p1, &p0, "--output", &out], "given twice");
    fails(
        &["vote", "--merge", &p0, &s(&dir.join("shard-1-of-2.jsonl")), "--output", &out],
        "not of the same job",
    );
    fails(&["vote", "--merge", &s(&data), "--output", &out], "not a vote shard");
    fails(&strs(&with(&["--shard", "3/3", "--output", &out])), "need 0 <= i < n");
}

/// `ensemble --folds K`: members vote only on the fold they held out (`voters` per pair), the
/// layout is saved, and sharded members voted with `vote --folds` give the same strengths.
#[test]
fn out_of_fold_ensemble_whole_and_sharded() {
    let dir = scratch("cli-oof");
    let data = hh_data();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (whole, sharded) = (dir.join("whole"), dir.join("sharded"));
    let args = |out: &std::path::Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "ensemble",
            "--model",
            &s(tiny_model()),
            "--data",
            &s(&data),
            "--skip-bad-rows",
            "--limit",
            "24",
            "--epochs",
            "1",
            "--batch-pairs",
            "8",
            "--trainable",
            "top:1",
            "--threads",
            "1",
            "--out",
            &s(out),
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run = |a: &[String]| {
        let out = rewardkit().args(a).output().unwrap();
        assert!(out.status.success(), "{a:?}\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let fails = |a: &[String], want: &str| {
        let out = rewardkit().args(a).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{a:?}: {err}");
    };
    let layout = ["--members", "4", "--folds", "2"];
    assert!(run(&args(&whole, &layout)).contains("2 voters per pair"));
    let rows = |p: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let whole_rows = rows(&whole.join("vote.jsonl"));
    assert_eq!(whole_rows.len(), 24);
    assert!(whole_rows
        .iter()
        .all(|r| r["voters"] == 2 && r["chosen score list"].as_array().unwrap().len() == 2));
    assert!(whole.join("folds.json").exists());

    let said = run(&args(&sharded, &[&layout[..], &["--shard", "0/2"]].concat()));
    assert!(said.contains("--folds"), "{said}");
    run(&args(&sharded, &[&layout[..], &["--shard", "1/2"]].concat()));
    let mut vote: Vec<String> = vec!["vote".into()];
    for m in 0..4 {
        vote.extend(["--member".into(), s(&sharded.join(format!("member-{m}/final")))]);
    }
    let out = s(&dir.join("vote.jsonl"));
    vote.extend(
        ["--data", &s(&data), "--skip-bad-rows", "--limit", "24", "--output", &out]
            .map(String::from),
    );
    let with_folds = |p: &std::path::Path| [vote.clone(), vec!["--folds".into(), s(p)]].concat();
    run(&with_folds(&sharded.join("folds.json")));
    // The ensemble lists pairs in its training order, the vote in file order: match by line.
    let by_line: std::collections::HashMap<u64, f64> = rows(std::path::Path::new(&out))
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["mean preference difference"].as_f64().unwrap()))
        .collect();
    assert_eq!(by_line.len(), 24);
    for a in &whole_rows {
        let x = a["mean preference difference"].as_f64().unwrap();
        let y = by_line[&a["line"].as_u64().unwrap()];
        assert!((x - y).abs() < 1e-4, "line {}: whole {x} vs sharded {y}", a["line"]);
    }
    fails(&args(&dir.join("few"), &["--members", "1", "--folds", "2"]), "needs at least 2 members");
    fails(
        &args(&dir.join("multi"), &[&layout[..], &["--shared-backbone"]].concat()),
        "cannot be used with",
    );
    // A layout for other data, and a file that is not a layout, are refused.
    let mut other: Vec<String> =
        vote.iter().map(|a| if a == "24" { "20".to_string() } else { a.clone() }).collect();
    other.extend(["--folds".into(), s(&sharded.join("folds.json"))]);
    fails(&other, "the folds cover 24 pairs, the data has 20");
    fails(&with_folds(&data), "not a fold layout");
}

/// The bundled file's first malformed row is line 1255: a run over the whole file stops there
/// and says how to go on; `--limit` stops reading before it.
#[test]
fn a_bad_row_names_the_flag_and_a_limit_stops_before_it() {
    let model = tiny_model().to_str().unwrap().to_string();
    let data = hh_data().to_str().unwrap().to_string();
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", &model, "--data", &data];
        args.extend(extra);
        rewardkit().args(&args).output().unwrap()
    };
    let whole = eval(&[]);
    let err = String::from_utf8_lossy(&whole.stderr);
    assert!(
        !whole.status.success() && err.contains("line 1255") && err.contains("--skip-bad-rows"),
        "{err}"
    );
    let limited = eval(&["--limit", "16"]);
    assert!(limited.status.success(), "{}", String::from_utf8_lossy(&limited.stderr));
}

/// `train --max-steps` stops there, and a held-out evaluation at the last step is printed once.
#[test]
fn train_stops_at_max_steps_and_reports_the_last_step_once() {
    let dir = scratch("cli-max-steps");
    let out = rewardkit()
        .args([
            "train",
            "--model",
            tiny_model().to_str().unwrap(),
            "--data",
            hh_data().to_str().unwrap(),
            "--limit",
            "64",
            "--eval-fraction",
            "0.25",
            "--batch-pairs",
            "4",
            "--eval-every",
            "1",
            "--max-steps",
            "3",
            "--trainable",
            "head",
            "--lr",
            "1e-3",
            "--threads",
            "1",
            "--out",
            dir.join("run").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("3 optimizer steps"), "{err}");
    assert_eq!(err.matches("step      3").count(), 1, "{err}");
    assert!(!err.contains("step      4"), "{err}");
}

/// `train --trainable lora` reports the LoRA settings it was given and writes them into the
/// PEFT adapter_config.json as given.
#[test]
fn lora_training_reports_and_saves_the_settings_given() {
    let dir = scratch("cli-lora-settings");
    let run = dir.join("run");
    let out = rewardkit()
        .args(["train", "--model", tiny_model().to_str().unwrap()])
        .args(["--data", hh_data().to_str().unwrap(), "--limit", "8", "--max-steps", "1"])
        .args(["--trainable", "lora", "--lora-r", "4", "--lora-alpha", "16"])
        .args(["--lora-targets", "v,q", "--lora-dropout", "0.05", "--threads", "1", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("lora (r 4, alpha 16, dropout 0.05, on q,v)"), "{err}");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.join("final").join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 16.0);
    assert_eq!(config["lora_dropout"], 0.05);
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
}

/// `train --write-reward-stats` records the held-out rewards' mean and std in the final
/// config.json (OpenRLHF's layout); `score` then serves (r - mean) / std, `--normalize off` raw.
#[test]
fn train_writes_reward_stats_and_score_serves_normalised_rewards() {
    let dir = scratch("cli-reward-stats");
    let data = hh_data();
    let out = dir.join("run");
    let run = |args: &[&str]| {
        let o = rewardkit().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}\n{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let base = [
        "train",
        "--model",
        tiny_model().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--limit",
        "40",
        "--batch-pairs",
        "8",
        "--trainable",
        "head",
        "--lr",
        "1e-3",
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--write-reward-stats",
    ];
    let refused = rewardkit().args(base).output().unwrap();
    assert!(!refused.status.success(), "no held-out pairs: nothing to measure");
    run(&[&base[..], &["--eval-fraction", "0.25"]].concat());
    let final_dir = out.join("final");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(final_dir.join("config.json")).unwrap()).unwrap();
    let (mean, std) = (cfg["mean"].as_f64().unwrap(), cfg["std"].as_f64().unwrap());
    assert!(std > 0.0 && cfg["normalize_reward"] == true, "{cfg}");
    let score = |extra: &[&str]| -> Vec<f64> {
        let mut args = vec![
            "score",
            "--model",
            final_dir.to_str().unwrap(),
            "--input",
            data.to_str().unwrap(),
            "--limit",
            "4",
        ];
        args.extend(extra);
        run(&args)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["chosen_reward"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (served, raw) = (score(&[]), score(&["--normalize", "off"]));
    assert_eq!(served.len(), 4);
    for (s, r) in served.iter().zip(&raw) {
        assert!((s - (r - mean) / std).abs() < 1e-5, "served {s}, raw {r}, mean {mean}, std {std}");
    }
}

/// `score --skip-bad-rows` skips invalid JSON too; without it the error names the file's line
/// (not the JSON parser's "line 1") and the flag.
#[test]
fn score_skips_invalid_json_rows_when_asked() {
    let dir = scratch("cli-score-bad-json");
    let input = dir.join("rows.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"a\", \"response\": \" b\"}\n{bad json\n{\"prompt\": \"c\", \"response\": \" d\"}\n",
    )
    .unwrap();
    let score = |extra: &[&str]| {
        let mut args = vec![
            "score",
            "--model",
            tiny_model().to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ];
        args.extend(extra);
        rewardkit().args(&args).output().unwrap()
    };
    let stopped = score(&[]);
    let err = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        !stopped.status.success() && err.contains("line 2") && err.contains("--skip-bad-rows"),
        "{err}"
    );
    assert!(!err.contains("line 1 column"), "{err}");
    let skipped = score(&["--skip-bad-rows"]);
    assert!(skipped.status.success(), "{}", String::from_utf8_lossy(&skipped.stderr));
    let lines: Vec<u64> = String::from_utf8(skipped.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![1, 3]);
    assert!(String::from_utf8_lossy(&skipped.stderr).contains("line 2: not valid JSON"));
}

/// `ensemble --trainable lora`: members are PEFT adapters over the one base (saved as
/// adapters), and `vote --base MODEL --member ADAPTER ...` scores them over one loaded base
/// to the strengths the ensemble's own vote gave.
#[test]
fn lora_ensemble_members_vote_as_adapters_over_one_base() {
    let dir = scratch("cli-lora-ensemble");
    let data = hh_data();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let out = dir.join("ens");
    let common = ["--data", &s(&data), "--skip-bad-rows", "--limit", "16", "--threads", "1"];
    let mut args: Vec<String> = ["ensemble", "--model", &s(tiny_model()), "--members", "2"]
        .iter()
        .chain(&common)
        .map(|x| x.to_string())
        .collect();
    args.extend(
        ["--epochs", "1", "--batch-pairs", "8", "--trainable", "lora", "--lora-r", "2"]
            .iter()
            .chain(&["--lora-dropout", "0.1", "--lr", "1e-3", "--out", &s(&out)])
            .map(|x| x.to_string()),
    );
    let run = |a: &[String]| {
        let o = rewardkit().args(a).output().unwrap();
        assert!(o.status.success(), "{a:?}\n{}", String::from_utf8_lossy(&o.stderr));
    };
    run(&args);
    let member = |m: usize| out.join(format!("member-{m}/final"));
    assert!(member(0).join("adapter_model.safetensors").is_file());
    assert!(!member(0).join("model.safetensors").exists(), "a member is an adapter, not a model");
    let vote_file = dir.join("vote.jsonl");
    let mut vote: Vec<String> =
        ["vote", "--base", &s(tiny_model())].iter().map(|x| x.to_string()).collect();
    for m in 0..2 {
        vote.extend(["--member".to_string(), s(&member(m))]);
    }
    vote.extend(common.iter().chain(&["--output", &s(&vote_file)]).map(|x| x.to_string()));
    run(&vote);
    let rows = |p: &std::path::Path| -> std::collections::HashMap<u64, f64> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| {
                (r["line"].as_u64().unwrap(), r["mean preference difference"].as_f64().unwrap())
            })
            .collect()
    };
    let (whole, again) = (rows(&out.join("vote.jsonl")), rows(&vote_file));
    assert_eq!(whole.len(), 16);
    let spread = whole.values().map(|x| x.abs()).fold(0f64, f64::max);
    assert!(spread > 0.0, "the members disagree with nothing");
    for (line, x) in &whole {
        assert!(
            (x - again[line]).abs() < 1e-4,
            "line {line}: ensemble {x} vs vote {}",
            again[line]
        );
    }
}
