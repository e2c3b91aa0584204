//! Next-token logits of the SmolLM2 GGUF run two ways: candle's quantized llama (Q4_1 weights,
//! quantized matmuls) and rewardkit's model converted by `rewardkit import-gguf` (weights
//! dequantized to f32). Prompts and their ids are those of tests/fixtures/gguf (the ids
//! transformers' GGUF tokenizer produced), so transformers' top-20 logits are a third column.
//!
//! Usage: gguf-vs-candle GGUF CONVERTED_DIR [GOLDENS_JSON]

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use rewardkit::{LoadOptions, RewardModel};

fn top(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().map(|&x| x as f64).sum::<f64>() / n, b.iter().map(|&x| x as f64).sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: {} GGUF CONVERTED_DIR [GOLDENS_JSON]", args[0]);
        std::process::exit(2);
    }
    let goldens = args.get(3).map(String::as_str).unwrap_or("tests/fixtures/gguf/smollm2_goldens.json");
    let golden: serde_json::Value = serde_json::from_slice(&std::fs::read(goldens)?)?;
    let mut file = std::fs::File::open(&args[1])?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut quantized = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
    let converted = RewardModel::load(Path::new(&args[2]), &LoadOptions::default())?;

    println!("| prompt | tokens | argmax q / rk / hf | top-20 overlap q vs rk | pearson r (all 49,152) | max abs diff of rk vs hf top-20 | max abs diff of q vs hf top-20 |");
    println!("|---|---|---|---|---|---|---|");
    for case in golden["logit_cases"].as_array().ok_or("goldens without logit_cases")? {
        let ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let q: Vec<f32> = quantized.forward(&Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?, 0)?.squeeze(0)?.to_vec1()?;
        let rk_all = converted.lm_logits(&converted.make_batch(&[&ids])?)?;
        let rk: Vec<f32> = rk_all.get(0)?.get(ids.len() - 1)?.to_vec1()?;
        let hf_ids: Vec<usize> = case["top_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let hf_vals: Vec<f32> = case["top_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let (tq, trk) = (top(&q, 20), top(&rk, 20));
        let overlap = tq.iter().filter(|i| trk.contains(i)).count();
        let diff = |v: &[f32]| hf_ids.iter().zip(&hf_vals).map(|(&i, &h)| (v[i] - h).abs()).fold(0f32, f32::max);
        println!(
            "| {:?} | {} | {} / {} / {} | {overlap}/20 | {:.4} | {:.2e} | {:.3} |",
            case["prompt"].as_str().unwrap_or(""),
            ids.len(),
            tq[0],
            trk[0],
            hf_ids[0],
            pearson(&q, &rk),
            diff(&rk),
            diff(&q)
        );
    }
    Ok(())
}
