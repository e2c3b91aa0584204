//! Chat templates: the rendered text and token ids against transformers' `apply_chat_template`
//! (goldens and the Llama-3-style tokenizer made by scripts/make_chat_goldens.py), on
//! SmolLM2-135M-Instruct's own template (from its GGUF), a Llama-3-style template that writes
//! its own BOS, and a template using Jinja's and Python's features; then conversational
//! datasets through the CLI.

use std::path::Path;
use std::process::Command;

use rewardkit::io::chat::{ChatFiles, ChatFormat, ChatTemplate};
use rewardkit::{RewardTokenizer, SharedModel, SharedModelOptions};
use serde_json::{json, Value};

use crate::common::{repo, scratch, smollm2_dir, tiny_model};

fn fixture(name: &str) -> std::path::PathBuf {
    repo().join("tests/fixtures/chat").join(name)
}

fn goldens() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("goldens.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every golden case: the rendering, and its token ids as scoring encodes a whole text.
fn check_cases(name: &str, chat: &ChatFormat, tok: &RewardTokenizer) {
    let cases = goldens()[name]["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 5, "{name}: {} cases", cases.len());
    for case in cases {
        let turns = case["messages"].as_array().unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let text = chat.render(turns, gen).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap(), "{name}: text of {turns:?} (gen {gen})");
        let got = tok.encode_text(&text, false, 1 << 16).unwrap();
        assert_eq!(got, ids(&case["ids"]), "{name}: ids of {text:?}");
    }
}

fn llama3_style() -> (ChatFormat, RewardTokenizer) {
    let dir = fixture("llama3-style");
    let files = ChatFiles::read(&dir).unwrap();
    let template = ChatTemplate::from_files(&dir, &files, None).unwrap().expect("a template");
    let tok = RewardTokenizer::from_file(&dir.join("tokenizer.json"), None).unwrap();
    (ChatFormat::Template(template.into()), tok)
}

#[test]
fn smollm2_template_matches_transformers() {
    let model = SharedModel::load(smollm2_dir(), &SharedModelOptions::default()).unwrap();
    let chat = model.chat_format().unwrap();
    assert!(matches!(chat, ChatFormat::Template(_)), "the GGUF's template is carried over");
    check_cases("smollm2", &chat, model.tokenizer().unwrap());
    // The template text itself is what transformers' GGUF loader reads.
    let config: Value = serde_json::from_slice(
        &std::fs::read(smollm2_dir().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["chat_template"], goldens()["smollm2"]["template"]);
}

#[test]
fn a_template_that_writes_its_own_bos_gets_no_second_one() {
    let (chat, tok) = llama3_style();
    check_cases("llama3-style", &chat, &tok);
    let bos = tok.inner().token_to_id("<|begin_of_text|>").unwrap();
    // A plain text still gets the BOS the post-processor adds (what `tokenizer(text)` does).
    assert_eq!(tok.encode_text("hello there", false, 64).unwrap()[0], bos);
    // Cut from the left, a rendered conversation keeps its BOS first and no other.
    let turns = [json!({"role": "user", "content": "a long question ".repeat(40)})];
    let text = chat.render(&turns, true).unwrap();
    let full = tok.encode_text(&text, false, 1 << 16).unwrap();
    let cut = tok.encode_text(&text, false, 24).unwrap();
    assert_eq!(cut.len(), 24);
    assert_eq!(cut[0], bos);
    assert_eq!(cut[1..], full[full.len() - 23..]);
    assert_eq!(cut.iter().filter(|&&t| t == bos).count(), 1);
    // Joined from a (prompt, response) pair, as training sees it: the same ids.
    let (prompt, responses) =
        chat.split(&turns, &[&[json!({"role": "assistant", "content": "An answer."})]]).unwrap();
    let whole = chat
        .render(&[turns[0].clone(), json!({"role": "assistant", "content": "An answer."})], false)
        .unwrap();
    let opts = rewardkit::TextOptions::default();
    assert_eq!(
        tok.encode_pair(&prompt, &responses[0], &opts, 1 << 16).unwrap(),
        tok.encode_text(&whole, false, 1 << 16).unwrap()
    );
}

#[test]
fn jinja_and_python_features_render_as_in_transformers() {
    let (_, tok) = llama3_style();
    let dir = fixture("llama3-style");
    let files = ChatFiles::read(&dir).unwrap();
    let source = goldens()["features"]["template"].as_str().unwrap().to_string();
    let template = ChatTemplate::from_files(&dir, &files, Some(&source)).unwrap().unwrap();
    check_cases("features", &ChatFormat::Template(template.into()), &tok);
}

/// The tiny model with a ChatML-style template in `chat_template.jinja`.
fn templated_tiny(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_model().join(f), dir.join(f)).unwrap();
    }
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}\
         {% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    )
    .unwrap();
}

fn rewardkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rewardkit"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn conversational_datasets_use_the_model_template_everywhere() {
    let dir = scratch("chat-cli");
    let model_dir = dir.join("model");
    templated_tiny(&model_dir);
    // TRL's conversational formats: implicit prompt (whole conversations) and explicit prompt.
    let turn = |role: &str, content: &str| json!({"role": role, "content": content});
    let mut rows = Vec::new();
    for i in 0..12 {
        let q = format!("Question {i}: is tea good?");
        let (good, bad) = (format!("Yes, tea {i} is good."), format!("No {i}."));
        rows.push(if i % 2 == 0 {
            json!({"chosen": [turn("user", &q), turn("assistant", &good)],
                   "rejected": [turn("user", &q), turn("assistant", &bad)]})
        } else {
            json!({"prompt": [turn("user", &q)], "chosen": [turn("assistant", &good)],
                   "rejected": [turn("assistant", &bad)]})
        });
    }
    rows.push(json!({"messages": [turn("user", "hi"), turn("assistant", "hello")]}));
    let data = dir.join("conv.jsonl");
    let text: Vec<String> = rows.iter().map(Value::to_string).collect();
    std::fs::write(&data, text.join("\n") + "\n").unwrap();

    let model = SharedModel::load(&model_dir, &SharedModelOptions::default()).unwrap();
    let out = run_ok(
        rewardkit()
            .args(["score", "--threads", "1", "--model"])
            .arg(&model_dir)
            .arg("--input")
            .arg(&data),
    );
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 13);
    let want = model
        .score_pairs(&[
            ("<|user|>\nQuestion 0: is tea good?\n<|assistant|>\n", "Yes, tea 0 is good.\n"),
            ("<|user|>\nQuestion 1: is tea good?\n<|assistant|>\n", "No 1.\n"),
            ("<|user|>\nhi\n<|assistant|>\n", "hello\n"),
        ])
        .unwrap();
    let got = [
        lines[0]["chosen_reward"].as_f64().unwrap(),
        lines[1]["rejected_reward"].as_f64().unwrap(),
        lines[12]["reward"].as_f64().unwrap(),
    ];
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f32 - w).abs() < 1e-4, "CLI {g} vs rendered by hand {w}");
    }
    // --chat-template hh scores the HH rendering instead.
    let hh = run_ok(
        rewardkit()
            .args(["score", "--threads", "1", "--chat-template", "hh", "--model"])
            .arg(&model_dir)
            .arg("--input")
            .arg(&data),
    );
    let hh0: Value = serde_json::from_str(hh.lines().next().unwrap()).unwrap();
    let want_hh = model
        .score_pairs(&[(
            "\n\nHuman: Question 0: is tea good?\n\nAssistant:",
            " Yes, tea 0 is good.",
        )])
        .unwrap()[0];
    assert!((hh0["chosen_reward"].as_f64().unwrap() as f32 - want_hh).abs() < 1e-4);

    // Training on the conversations saves a checkpoint that keeps the template.
    let pref = dir.join("pref.jsonl");
    std::fs::write(&pref, text[..12].join("\n") + "\n").unwrap();
    let trained = dir.join("trained");
    run_ok(
        rewardkit()
            .args(["train", "--threads", "1", "--max-steps", "2", "--batch-pairs", "4", "--model"])
            .arg(&model_dir)
            .arg("--data")
            .arg(&pref)
            .arg("--out")
            .arg(&trained),
    );
    assert_eq!(
        std::fs::read(trained.join("final/chat_template.jinja")).unwrap(),
        std::fs::read(model_dir.join("chat_template.jinja")).unwrap()
    );
    let eval = run_ok(
        rewardkit()
            .args(["eval", "--threads", "1", "--model"])
            .arg(trained.join("final"))
            .arg("--data")
            .arg(&pref),
    );
    assert!(eval.contains("pairs 12"), "eval reads the 12 conversational pairs:\n{eval}");

    // A template that fails names the problem; the model itself still loads and scores text.
    std::fs::write(model_dir.join("chat_template.jinja"), "{{ raise_exception('no chats here') }}")
        .unwrap();
    let broken = SharedModel::load(&model_dir, &SharedModelOptions::default()).unwrap();
    let e = broken.score_chats(&[&[turn("user", "x")]]).unwrap_err();
    assert!(e.message().contains("no chats here"), "{}", e.message());
    assert!(broken.score_pairs(&[("a", "b")]).is_ok());
    std::fs::write(model_dir.join("chat_template.jinja"), "{% for %}").unwrap();
    let e = SharedModel::load(&model_dir, &SharedModelOptions::default())
        .unwrap()
        .score_chats(&[&[turn("user", "x")]])
        .unwrap_err();
    assert!(
        e.message().contains("chat_template.jinja") && e.message().contains("compile"),
        "{}",
        e.message()
    );
}
